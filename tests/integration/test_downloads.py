"""Large downloads (issue 11): head limits with large reads, direct reads of plain
bodies, and ``read()`` into one preallocated buffer; both modes where users see it."""

from __future__ import annotations

import asyncio
import gzip
import hashlib

import pytest

import broker.http1
from tests.conftest import read_request_head, wait_until
from worker_client import (
    ClientConnectionError,
    ClientPayloadError,
    ClientTimeout,
    ServerTimeoutError,
)


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


MiB = 1 << 20


def _ok(body: bytes, extra: bytes = b"", length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n + body + extra


@pytest.fixture
async def big_url(serve_app):
    from aiohttp import web

    body = _body(100 * MiB)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/big", handler)
    return await serve_app(app) + "/big", hashlib.sha256(body).hexdigest()


async def test_a_100_mib_body_arrives_byte_for_byte(big_url, session):
    url, digest = big_url
    async with session.get(url) as resp:
        body = await resp.read()
    assert type(body) is bytes and len(body) == 100 * MiB
    assert hashlib.sha256(body).hexdigest() == digest
    async with session.get(url) as resp:  # content.read() claims the body too
        body = await resp.content.read()
    assert hashlib.sha256(body).hexdigest() == digest


async def test_a_100_mib_body_in_chunks_arrives_byte_for_byte(big_url, session):
    url, digest = big_url
    h = hashlib.sha256()
    async with session.get(url) as resp:
        async for chunk in resp.content.iter_chunked(1 << 18):
            assert type(chunk) is bytes and 0 < len(chunk) <= 1 << 18
            h.update(chunk)
    assert h.hexdigest() == digest


async def test_a_body_shorter_than_its_content_length_fails(raw_server, session):
    body = _body(3 * MiB)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(_ok(body, length=len(body) + 1000))
        await writer.drain()

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        with pytest.raises(ClientPayloadError):
            await resp.read()


@pytest.mark.parametrize("length", [(1 << 63) + 5, (1 << 64) - 616])
async def test_a_length_past_any_buffer_is_read_until_the_server_stops(
    raw_server, session, length
):
    """httptools takes a Content-Length up to 2**64 - 1: no buffer of that size can be
    had, so ``read()`` reads on as usual, and the body cut short fails as any does (it
    raised SystemError from making the buffer)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(_ok(_body(MiB), length=length))
        await writer.drain()

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        with pytest.raises(ClientPayloadError):
            await resp.read()


async def test_bytes_past_the_content_length_are_never_a_response(raw_server, session):
    body = _body(3 * MiB)
    conns = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        while True:
            await read_request_head(reader)
            writer.write(_ok(body, extra=_ok(b"a lie")))
            await writer.drain()

    base = await raw_server(handler)
    for _ in range(3):
        async with session.get(base + "/") as resp:
            assert await resp.read() == body
    assert len(conns) == 3  # each connection was spoiled by its extra bytes


async def test_a_silent_server_times_out_a_whole_body_read(raw_server, session):
    body = _body(4 * MiB)
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(_ok(body)[: 2 * MiB])
        await writer.drain()
        await release.wait()

    base = await raw_server(handler)
    try:
        async with session.get(base + "/", timeout=ClientTimeout(sock_read=0.3)) as resp:
            with pytest.raises(ServerTimeoutError):
                await resp.read()
    finally:
        release.set()


async def test_a_cancelled_whole_body_read_then_release(raw_server, session):
    """Half the body comes, then the server waits for ``go``: a ``content.read()``
    cancelled meanwhile loses nothing; a cancelled ``resp.read()`` closes the response
    (as aiohttp's), and its connection is not reused."""
    body = _body(4 * MiB)
    go = asyncio.Event()
    conns = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        while True:
            await read_request_head(reader)
            gate = go
            writer.write(_ok(body)[: 2 * MiB])
            await writer.drain()
            await gate.wait()
            writer.write(_ok(body)[2 * MiB :])
            await writer.drain()

    async def cancel_once_half_is_in(resp, read) -> None:
        task = asyncio.ensure_future(read())
        head = len(_ok(b"", length=len(body)))
        await wait_until(lambda: resp.content.total_bytes == 2 * MiB - head)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        await cancel_once_half_is_in(resp, resp.content.read)
        go.set()
        assert await resp.content.read() == body  # what the cancelled read held is kept
    go = asyncio.Event()
    async with session.get(base + "/") as resp:
        await cancel_once_half_is_in(resp, resp.read)
        with pytest.raises(ClientConnectionError):
            await resp.read()
    go.set()
    async with session.get(base + "/") as resp:
        assert await resp.read() == body
    assert len(conns) == 2


async def test_a_gzip_body_with_a_length_is_still_decoded(serve_app, session):
    from aiohttp import web

    plain = _body(8 * MiB)
    packed = gzip.compress(plain, 1)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=packed, headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/", handler)
    url = await serve_app(app) + "/"
    async with session.get(url) as resp:
        assert resp.headers["Content-Length"] == str(len(packed))
        assert await resp.read() == plain
    async with session.get(url, auto_decompress=False) as resp:
        assert await resp.read() == packed


async def test_a_big_body_over_tls_arrives_byte_for_byte(serve_app, session, tls_certs):
    """TLS hands the decrypted bytes to the same buffers (asyncio's SSL protocol reads
    into what ``get_buffer`` gives)."""
    import ssl

    from aiohttp import web

    from tests.tls_certs import server_context

    body = _body(16 * MiB)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/", handler)
    ctx = server_context(tls_certs.server, tls_certs.server_key)
    url = await serve_app(app, ssl_context=ctx, host="localhost") + "/"
    client_ctx = ssl.create_default_context(cafile=str(tls_certs.ca))
    for _ in range(2):
        async with session.get(url, ssl=client_ctx) as resp:
            got = await resp.read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()


@pytest.mark.parametrize("inplace", [True, False], ids=["in place", "copying fallback"])
async def test_whole_body_reads_with_either_kind_of_result_buffer(
    big_url, session, monkeypatch, inplace
):
    import shared.rawbytes

    monkeypatch.setattr(shared.rawbytes, "INPLACE", inplace)
    made = []
    real = shared.rawbytes.RawBytes

    class Recorded(real):
        def __init__(self, size: int, inplace: bool | None = None) -> None:
            super().__init__(size, inplace)
            made.append(type(self._obj))

    monkeypatch.setattr("worker_client.response.RawBytes", Recorded)
    url, digest = big_url
    async with session.get(url) as resp:
        body = await resp.read()
    assert type(body) is bytes and hashlib.sha256(body).hexdigest() == digest
    assert made == [bytes if inplace else bytearray]
