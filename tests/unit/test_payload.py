"""Payloads, pure parts: the registry, aiohttp's header and size rules, chunks, replay."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from worker_client import (
    EMPTY_PAYLOAD,
    PAYLOAD_REGISTRY,
    AsyncIterablePayload,
    BufferedReaderPayload,
    BytesIOPayload,
    BytesPayload,
    IOBasePayload,
    JsonPayload,
    Payload,
    StringIOPayload,
    StringPayload,
    TextIOPayload,
    get_payload,
    payload_type,
)
from worker_client.payload import LookupError, Order, content_disposition_header


async def collect(payload: Payload) -> bytes:
    return b"".join([chunk async for chunk in payload._chunks()])


async def _agen(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def test_registry_picks_aiohttps_classes(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x")
    with path.open("rb") as rb, path.open("r") as rt, path.open("rb", buffering=0) as raw:
        cases = [
            (b"b", BytesPayload), (bytearray(b"b"), BytesPayload), (memoryview(b"b"), BytesPayload),
            ("s", StringPayload), (io.StringIO("s"), StringIOPayload),
            (io.BytesIO(b"b"), BytesIOPayload), (rb, BufferedReaderPayload),
            (rt, TextIOPayload), (raw, IOBasePayload), (_agen(), AsyncIterablePayload),
        ]
        for value, cls in cases:
            assert type(get_payload(value)) is cls, value
            assert type(aiohttp.get_payload(value)).__name__ == cls.__name__
    ready = BytesPayload(b"x")
    assert get_payload(ready) is ready
    with pytest.raises(LookupError):
        get_payload(object())


def test_a_user_registers_a_type() -> None:
    class Point:
        pass

    @payload_type(Point)
    class PointPayload(BytesPayload):
        def __init__(self, value: Point, *args: Any, **kwargs: Any) -> None:
            super().__init__(b"point", *args, **kwargs)

    @payload_type(bytes, order=Order.try_first)
    class First(BytesPayload):
        pass

    try:
        assert isinstance(get_payload(Point()), PointPayload)
        assert type(get_payload(b"x")) is First
    finally:
        PAYLOAD_REGISTRY._first.clear()


@pytest.mark.parametrize(
    ("payload", "content_type", "size", "body"),
    [
        (lambda: BytesPayload(b"ab"), "application/octet-stream", 2, b"ab"),
        (lambda: StringPayload("é"), "text/plain; charset=utf-8", 2, "é".encode()),
        (lambda: StringPayload("é", encoding="latin-1"), "text/plain; charset=latin-1", 1,
         b"\xe9"),
        (lambda: StringPayload("é", content_type="text/html; charset=cp1252"),
         "text/html; charset=cp1252", 1, b"\xe9"),
        (lambda: JsonPayload({"a": "é"}), "application/json", None, None),
        (lambda: JsonPayload([1], dumps=lambda v: "custom"), "application/json", 6, b"custom"),
        (lambda: BytesIOPayload(io.BytesIO(b"xyz")), "application/octet-stream", 3, b"xyz"),
        (lambda: AsyncIterablePayload(_agen(b"q")), "application/octet-stream", None, b"q"),
        # as aiohttp: bytes are octet-stream whatever the filename
        (lambda: BytesPayload(b"x", filename="a.png"), "application/octet-stream", 1, b"x"),
    ],
)
async def test_content_type_size_and_bytes(payload, content_type, size, body) -> None:  # type: ignore[no-untyped-def]
    p = payload()
    assert p.content_type == content_type
    if body is None:
        body = json.dumps({"a": "é"}).encode()
        size = len(body)
    assert p.size == size
    assert await collect(p) == body


def test_file_payload_has_a_disposition_and_its_size(tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    path.write_bytes(b"0123456789")
    with path.open("rb") as f:
        f.seek(3)
        p = get_payload(f)
        assert p.filename == "doc.txt"
        assert p.headers["Content-Disposition"] == 'attachment; filename="doc.txt"'
        assert p.content_type == "text/plain"
        assert p.size == 7
        no_disposition = get_payload(f, disposition=None)
        assert "Content-Disposition" not in no_disposition.headers


async def test_a_file_replays_from_where_it_started(tmp_path: Path) -> None:
    path = tmp_path / "r.bin"
    path.write_bytes(b"0123456789")
    with path.open("rb") as f:
        f.seek(2)
        p = get_payload(f)
        assert p._replayable
        assert await collect(p) == b"23456789"
        assert await collect(p) == b"23456789"
        await p.close()
        assert f.closed and p.consumed and not p._replayable


async def test_a_text_file_is_re_encoded_with_one_bom(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("ab" * 50_000, encoding="utf-8")
    with path.open("r", encoding="utf-8") as f:
        p = TextIOPayload(f, encoding="utf-16")
        assert p.size is None  # its bytes are not the file's
        assert await collect(p) == ("ab" * 50_000).encode("utf-16")
    with path.open("r", encoding="utf-8") as f:
        assert TextIOPayload(f).size == 100_000


async def test_an_async_iterable_is_sent_once_unless_cached() -> None:
    p = AsyncIterablePayload(_agen(b"a", b"b"))
    assert not p._replayable
    assert await collect(p) == b"ab"
    assert p.consumed
    assert await collect(p) == b""
    cached = AsyncIterablePayload(_agen(b"c", b"d"))
    assert await cached.as_bytes() == b"cd"
    assert cached._replayable and not cached.consumed
    assert await collect(cached) == b"cd"
    assert await collect(cached) == b"cd"
    with pytest.raises(TypeError):
        AsyncIterablePayload(b"not async")  # type: ignore[arg-type]


async def test_a_write_only_payload_is_streamed_a_chunk_at_a_time() -> None:
    written: list[int] = []

    class Counting(Payload):
        async def write(self, writer: Any) -> None:
            for i in range(5):
                written.append(i)
                await writer.write(b"%d" % i)

        def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
            return ""

    chunks = Counting(None)._chunks()
    assert await anext(chunks) == b"0"
    assert len(written) <= 2  # the writer waits for the reader: one chunk in hand
    assert [c async for c in chunks] == [b"1", b"2", b"3", b"4"]


async def test_a_write_only_payloads_error_reaches_the_reader() -> None:
    class Failing(Payload):
        async def write(self, writer: Any) -> None:
            await writer.write(b"x")
            raise OSError("disk gone")

        def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
            return ""

    with pytest.raises(OSError, match="disk gone"):
        await collect(Failing(None))


async def test_write_with_length_truncates() -> None:
    class Out:
        def __init__(self) -> None:
            self.data = b""

        async def write(self, chunk: bytes) -> None:
            self.data += chunk

    for p in (BytesPayload(b"abcdef"), BytesIOPayload(io.BytesIO(b"abcdef")),
              AsyncIterablePayload(_agen(b"abc", b"def"))):
        out = Out()
        await p.write_with_length(out, 4)
        assert out.data == b"abcd", p


def test_content_disposition_header_as_aiohttp() -> None:
    from aiohttp.helpers import content_disposition_header as theirs

    for params in ({"name": "a b"}, {"filename": "ü x.txt"}, {"name": "ü"}, {"name": 'q"'}):
        for quote in (True, False):
            assert content_disposition_header("form-data", quote, **params) == theirs(
                "form-data", quote, **params
            )
    with pytest.raises(ValueError, match="bad content disposition type"):
        content_disposition_header("bad type")


async def test_empty_payload_is_an_ended_reader() -> None:
    assert EMPTY_PAYLOAD.at_eof()
    assert await EMPTY_PAYLOAD.read() == b""
