"""Flow control: a slow reader holds the upstream socket; memory stays bounded."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket

from aiohttp import web

from ..conftest import read_request_head


async def _io_turn() -> None:
    """One pass of this loop's I/O poll: every socket ready before the call has had its
    callback by the time this returns."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    polled: asyncio.Future[None] = loop.create_future()
    try:
        loop.add_reader(b, polled.set_result, None)
        a.send(b"x")
        await polled
    finally:
        loop.remove_reader(b)
        a.close()
        b.close()


async def test_a_reader_that_stops_holds_the_server(make_session, raw_server):
    """The server can push only about a window (plus socket buffers) ahead of the reader."""
    sent = [0]
    total = 64 << 20
    waiting = asyncio.Event()  # set while the server waits for its socket to take more

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        chunk = b"x" * 65536
        transport = writer.transport
        while sent[0] < total:
            writer.write(chunk)
            if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
                waiting.set()  # the socket is full: drain() waits until the peer reads
            await writer.drain()
            waiting.clear()
            sent[0] += len(chunk)
        waiting.set()  # all sent: a reader that never held it back fails below

    async def stays_stopped(rounds: int) -> bool:
        """Whether the server stays stopped while the reading side, the broker or this
        loop (the embedded reader's), has ``rounds`` turns: a reader that keeps reading
        frees the server's socket within a few."""
        at = sent[0]
        for _ in range(rounds):
            await session.stats()  # a turn of the broker's loop
            await _io_turn()
            if sent[0] != at or not waiting.is_set():
                return False
        return True

    base = await raw_server(handler)
    session = make_session()
    resp = await session.get(base + "/")
    got = len(await resp.content.readexactly(1 << 20))
    while True:  # the reader stops: the server must stop, and stay stopped
        await asyncio.wait_for(waiting.wait(), 10)
        stalled_at = sent[0]
        if await stays_stopped(50):
            break
    assert stalled_at < 24 << 20, "the server kept writing while nobody read"
    while True:  # reading again lets it go on, to the end
        data = await resp.content.read(1 << 20)
        if not data:
            break
        got += len(data)
    assert got == total == sent[0]


async def test_gzip_bomb_arrives_whole_in_bounded_pieces(make_session, serve_app):
    """32 MiB of zeros gzip to 32 KiB and come in one read: decoded piece by piece."""
    plain = bytes(32 << 20)
    packed = gzip.compress(plain, compresslevel=9)
    app = web.Application()

    async def bomb(request: web.Request) -> web.Response:
        return web.Response(body=packed, headers={"Content-Encoding": "gzip"})

    async def small(request: web.Request) -> web.Response:
        return web.Response(text="after")

    app.router.add_get("/bomb", bomb)
    app.router.add_get("/small", small)
    base = await serve_app(app)
    session = make_session()
    async with session.get(base + "/bomb") as resp:
        digest = hashlib.sha256()
        biggest = 0
        async for chunk in resp.content.iter_any():
            biggest = max(biggest, len(chunk))
            digest.update(chunk)
    assert digest.digest() == hashlib.sha256(plain).digest()
    assert biggest <= 1 << 20
    # The connection went back to the pool in a usable state (not paused).
    async with session.get(base + "/small") as resp:
        assert await resp.text() == "after"
