"""shared.rawbytes: a bytes object filled in place, and its copying fallback."""

from __future__ import annotations

import mmap
import resource
import sys

import pytest

from shared.rawbytes import INPLACE, RawBytes

PATHS = pytest.mark.parametrize("inplace", [True, False], ids=["in place", "fallback"])


def test_cpython_fills_in_place():
    assert INPLACE


@PATHS
def test_filled_in_pieces_it_is_the_bytes_written(inplace):
    raw = RawBytes(10, inplace=inplace)
    raw.view[:4] = b"0123"
    raw.view[4:10] = memoryview(b"456789")
    out = raw.finish(10)
    assert type(out) is bytes and out == b"0123456789"
    assert hash(out) == hash(b"0123456789")
    assert len(raw.view) == 0  # nothing more goes into it


def test_in_place_the_result_is_the_object_written_into():
    raw = RawBytes(3)
    keep = raw.view  # a view that outlives finish keeps the memory alive, not writable use
    keep[:] = b"abc"
    out = raw.finish(3)
    assert out == b"abc" and keep.obj is not None


@PATHS
def test_a_part_filled_buffer_gives_a_copy_of_that_part(inplace):
    raw = RawBytes(8, inplace=inplace)
    raw.view[:3] = b"abc"
    assert raw.finish(3) == b"abc"


@PATHS
def test_sizes_that_cannot_be_had(inplace):
    with pytest.raises(ValueError):
        RawBytes(0, inplace=inplace)
    with pytest.raises((MemoryError, OverflowError)):
        RawBytes(1 << 62, inplace=inplace)


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "never"


@pytest.mark.skipif(_thp_mode() == "never", reason="no transparent huge pages here")
def test_a_large_buffer_is_first_touched_in_huge_pages():
    size = 64 << 20
    piece = b"p" * (1 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    raw = RawBytes(size)
    for i in range(0, size, len(piece)):
        raw.view[i : i + len(piece)] = piece
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert raw.finish(size).count(b"p") == size
    assert faults < size // mmap.PAGESIZE // 2  # 16,384 with 4 KiB pages only


@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("size", [sys.maxsize + 1, (1 << 64) - 1])
def test_a_size_past_ssize_t_is_an_overflow(size: int, inplace: bool) -> None:
    with pytest.raises(OverflowError):
        RawBytes(size, inplace=inplace)
