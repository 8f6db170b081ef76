"""shared.arena: the slot bookkeeping (pure) and the memfd checks."""

from __future__ import annotations

import os
import tempfile

import pytest

from shared.arena import Arena, ArenaError, SlotError, SlotTable


def test_a_slot_is_free_again_when_filled_and_every_reference_came_back() -> None:
    table = SlotTable(2)
    k = table.take()
    assert k is not None and table.free == 1
    table.lend(k)
    table.lend(k)
    assert not table.give_back(k)  # one reference still out, and it is being filled
    assert not table.filled(k)  # the second reference is out
    assert table.give_back(k)
    assert table.free == 2


def test_the_last_slot_freed_is_the_next_taken() -> None:
    table = SlotTable(4)
    first = table.take()
    second = table.take()
    assert first is not None and second is not None
    table.filled(first)
    assert table.take() == first


def test_no_slot_when_all_are_out() -> None:
    table = SlotTable(1)
    assert table.take() == 0
    assert table.take() is None


@pytest.mark.parametrize("slot", [-1, 2, 1 << 20])
def test_a_slot_out_of_range_is_an_error(slot: int) -> None:
    with pytest.raises(SlotError, match="out of range"):
        SlotTable(2).give_back(slot)


def test_a_reference_given_back_twice_is_an_error() -> None:
    table = SlotTable(2)
    k = table.take()
    assert k is not None
    table.lend(k)
    table.filled(k)
    assert table.give_back(k)
    with pytest.raises(SlotError, match="not out"):
        table.give_back(k)
    assert table.free == 2  # the bookkeeping is intact


def test_a_slot_never_lent_cannot_be_given_back() -> None:
    table = SlotTable(2)
    k = table.take()
    assert k is not None
    with pytest.raises(SlotError, match="not out"):
        table.give_back(k)  # being filled, but no frame named it


def test_an_arena_cannot_shrink_or_grow() -> None:
    arena = Arena.create(4096, 4)
    try:
        assert arena.fd is not None
        with pytest.raises(PermissionError):
            os.ftruncate(arena.fd, 4096)
        with pytest.raises(PermissionError):
            os.ftruncate(arena.fd, 8 * 4096)
    finally:
        arena.close()


def test_an_attached_arena_shares_the_bytes_and_its_descriptor_is_closed() -> None:
    writer = Arena.create(4096, 2)
    assert writer.fd is not None
    fd = os.dup(writer.fd)
    reader = Arena.attach(fd, 4096, 2, writable=False)
    try:
        writer.slot(1, 10, 5)[:] = b"hello"
        assert bytes(reader.slot(1, 10, 5)) == b"hello"
        with pytest.raises(OSError):
            os.fstat(fd)
        with pytest.raises(TypeError):
            reader.slot(0)[:1] = b"x"  # the reader's mapping is read-only
    finally:
        reader.close()
        writer.close()


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_attach_refuses_a_size_other_than_announced_and_closes_the_descriptor() -> None:
    arena = Arena.create(4096, 2)
    assert arena.fd is not None
    fd = os.dup(arena.fd)
    with pytest.raises(ArenaError, match="8192"):
        Arena.attach(fd, 4096, 3, writable=False)
    assert _closed(fd)
    arena.close()


def test_attach_refuses_an_unsealed_memfd() -> None:
    fd = os.memfd_create("test", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 4096)
    with pytest.raises(ArenaError, match="sealed"):
        Arena.attach(fd, 4096, 1, writable=False)
    assert _closed(fd)


def test_attach_refuses_a_plain_file() -> None:
    with tempfile.TemporaryFile() as f:
        f.truncate(4096)
        fd = os.dup(f.fileno())
        with pytest.raises(ArenaError, match="not a memfd"):
            Arena.attach(fd, 4096, 1, writable=False)
        assert _closed(fd)


def test_check_names_what_is_wrong_with_a_reference() -> None:
    arena = Arena.create(4096, 2)
    try:
        assert arena.check(1, 0, 4096) is None
        assert "out of range" in (arena.check(2, 0, 1) or "")
        assert "inside a slot" in (arena.check(0, 4000, 100) or "")
        assert "inside a slot" in (arena.check(0, 0, 0) or "")
    finally:
        arena.close()
