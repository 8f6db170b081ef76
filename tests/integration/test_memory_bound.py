"""The broker's memory bound, under three attacks at once (docs/architecture.md, "Bounds").

While one worker floods Data frames past its credit toward a server that never reads,
another opens a hundred streams of large bodies and never reads its socket, and a server
answers a third with a brotli bomb, the broker's RSS stays under the stated bound and a
well-behaved worker's requests keep succeeding.
"""

from __future__ import annotations

import asyncio

import brotli
import psutil
import pytest
from aiohttp import web

import broker
from shared.framing import encode
from shared.messages import PROTOCOL_VERSION, Data, Hello, Request
from shared.specs import PoolSpec, encode_pool
from worker_client import ClientSession

BIG = 64 << 20  # each large body
STREAMS = 100  # the unread streams of the second attacker
FLOOD = 256 << 20  # what the first attacker tries to push
RSS_BOUND = 200 << 20  # growth over the broker's RSS after warm-up (docs/architecture.md)
ROUNDS = 40  # well-behaved requests during the attacks


@pytest.fixture
def own_broker():
    with broker.start(export=False, drain_timeout=1) as proc:
        yield proc


def _app() -> web.Application:
    app = web.Application()
    bomb = brotli.compress(bytes(256 << 20), quality=1)

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(BIG)})
        await resp.prepare(request)
        chunk = bytes(1 << 20)
        for _ in range(BIG >> 20):
            await resp.write(chunk)
        return resp

    async def brotli_bomb(request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "br"})

    async def small(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    app.router.add_get("/big", big)
    app.router.add_get("/bomb", brotli_bomb)
    app.router.add_get("/small", small)
    return app


async def _flooder(path: str, sink: str) -> None:
    """A streamed upload that never waits for credit."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(encode(Hello(PROTOCOL_VERSION, 1)))
        writer.write(encode(Request(1, "POST", sink, streamed=True)))
        frame = encode(Data(1, bytes(1 << 20)))
        for _ in range(FLOOD >> 20):
            writer.write(frame)
            await writer.drain()
    except ConnectionError:
        pass  # the broker hung up on it: fine
    finally:
        writer.close()


async def _hoarder(path: str, url: str) -> asyncio.StreamWriter:
    """Opens STREAMS streams of large bodies and never reads its socket."""
    _, writer = await asyncio.open_unix_connection(path)
    writer.write(encode(Hello(PROTOCOL_VERSION, 1)))
    spec = PoolSpec(name="hoard", limit=STREAMS)
    for i in range(STREAMS):
        writer.write(encode(Request(2 * i + 1, "GET", url, pool=encode_pool(spec))))
    await writer.drain()
    return writer


async def test_three_attacks_at_once_stay_under_the_bound(own_broker, serve_app, raw_server):
    base = await serve_app(_app())
    release = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()

    sink = await raw_server(never_reads) + "/upload"
    proc = psutil.Process(own_broker.pid)
    async with ClientSession(broker=own_broker.socket_path) as good, ClientSession(
        broker=own_broker.socket_path
    ) as bombed:
        for _ in range(5):
            async with good.get(base + "/small") as resp:
                await resp.read()
        baseline = proc.memory_info().rss
        peak = baseline

        flood = asyncio.ensure_future(_flooder(own_broker.socket_path, sink))
        hoard = await _hoarder(own_broker.socket_path, base + "/big")
        bomb_resp = await bombed.get(base + "/bomb")  # held open, read a little
        assert len(await bomb_resp.content.read(1000)) > 0
        try:
            for _ in range(ROUNDS):
                async with good.get(base + "/small") as resp:
                    assert await resp.text() == "fine"
                peak = max(peak, proc.memory_info().rss)
        finally:
            release.set()
            hoard.close()
            bomb_resp.release()
            await flood
    assert peak - baseline < RSS_BOUND, f"broker RSS grew by {(peak - baseline) >> 20} MiB"
    assert own_broker.process.poll() is None
