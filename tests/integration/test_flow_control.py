"""Flow control: a slow reader holds the upstream socket; memory stays bounded."""

from __future__ import annotations

import asyncio
import gzip
import hashlib

from aiohttp import web

from ..conftest import read_request_head


async def test_a_reader_that_stops_holds_the_server(make_session, raw_server):
    """The server can push only about a window (plus socket buffers) ahead of the reader."""
    sent = [0]
    total = 64 << 20

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        chunk = b"x" * 65536
        while sent[0] < total:
            writer.write(chunk)
            await writer.drain()
            sent[0] += len(chunk)

    base = await raw_server(handler)
    session = make_session()
    resp = await session.get(base + "/")
    got = len(await resp.content.readexactly(1 << 20))
    await asyncio.sleep(0.5)  # the reader stops: the server must stall
    stalled_at = sent[0]
    await asyncio.sleep(0.3)
    assert sent[0] == stalled_at, "the server kept writing while nobody read"
    assert stalled_at < 24 << 20
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
