"""Large downloads (issue 11): head limits with large reads, direct reads of plain
bodies, and ``read()`` into one preallocated buffer; both modes where users see it."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

import broker.http1
from tests.conftest import read_request_head


def _body(size: int) -> bytes:
    return hashlib.sha256(b"seed").digest() * (size // 32) + b"x" * (size % 32)


@pytest.mark.parametrize("mode", ["embedded"])  # the read size is this process's
async def test_a_head_and_a_big_body_in_one_write_with_a_large_read_buffer(
    raw_server, make_session, monkeypatch
):
    monkeypatch.setattr(broker.http1, "_BUFSIZE", 1 << 20)
    body = _body(3 << 20)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()

    base = await raw_server(handler)
    session = make_session()
    for _ in range(2):
        async with session.get(base + "/") as resp:
            assert resp.status == 200
            assert await resp.read() == body
