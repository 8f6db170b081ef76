"""An open WebSocket holds its connection, so it counts against ``limit_per_host`` until
it closes (aiohttp's behaviour), and through a broker that holds for the whole group of
workers: four worker processes with ``TCPConnector(limit_per_host=2)`` each, one
server, never more than two WebSockets open on it at once.

The server counts a WebSocket open from its handshake until the client's CLOSE arrives
(before it answers it, so before the client's ``close()`` can return and give its
connection back). Each WebSocket waits at a gate until two are open at once, so the
limit is reached for sure however fast the machine is, while the others press against
it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from . import _workers
from .ws_support import open_websockets

LIMIT = 2


class OpenWebSockets:
    """An aiohttp.web WebSocket handler that counts open WebSockets (``open``, the most
    at once ``max_open``, all ``total``) and echoes one message + ``/echo``."""

    def __init__(self, open_at: int = LIMIT) -> None:
        self.open = self.max_open = self.total = 0
        self.open_at = open_at
        self._gate = asyncio.Event()

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoclose=False)
        await ws.prepare(request)
        self.open += 1
        self.total += 1
        self.max_open = max(self.max_open, self.open)
        if self.open >= self.open_at:
            self._gate.set()
        try:
            await self._gate.wait()
            msg = await ws.receive()
            await ws.send_str(f"{msg.data}/echo")
            await ws.receive()  # the client's CLOSE (or the connection's end)
        finally:
            self.open -= 1
        await ws.close()
        return ws


async def _serve(serve_app: Callable[..., Awaitable[str]], counter: OpenWebSockets) -> str:
    app = web.Application()
    app.router.add_get("/", counter.handler)
    return (await serve_app(app)).replace("http", "ws", 1) + "/"


async def test_aiohttp_open_websockets_count_against_limit_per_host(serve_app):
    """The reference, in one process: six WebSockets at once through aiohttp's
    ``limit_per_host=2``."""
    counter = OpenWebSockets()
    url = await _serve(serve_app, counter)
    connector = aiohttp.TCPConnector(limit_per_host=LIMIT)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> str:
            async with session.ws_connect(url) as ws:
                await ws.send_str(str(i))
                return await ws.receive_str()

        got = await asyncio.gather(*(one(i) for i in range(6)))
    assert got == [f"{i}/echo" for i in range(6)]
    assert counter.total == 6
    assert counter.max_open == LIMIT


async def test_four_workers_share_limit_per_host_for_websockets(serve_app, broker_process):
    workers, each = 4, 3
    counter = OpenWebSockets()
    url = await _serve(serve_app, counter)
    loop = asyncio.get_running_loop()
    results = await loop.run_in_executor(
        None,
        _workers.run_in_processes,
        open_websockets,
        [(broker_process.socket_path, url, each, {"limit_per_host": LIMIT, "name": "ws-2"})]
        * workers,
    )
    assert [len(r) for r in results] == [each] * workers
    assert all(answer.endswith("/echo") for r in results for answer in r)
    assert len({answer.split("/")[0] for r in results for answer in r}) == workers  # pids
    assert counter.total == workers * each
    assert counter.max_open == LIMIT
    assert counter.open == 0


async def test_the_counter_sees_more_than_the_limit_without_one(serve_app):
    """The test's own check: without a shared limit (three aiohttp sessions, one
    connection each), the server does see three at once."""
    counter = OpenWebSockets(open_at=3)
    url = await _serve(serve_app, counter)
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit_per_host=1)) for _ in range(3)
    ]
    try:

        async def one(session: aiohttp.ClientSession) -> str:
            async with session.ws_connect(url) as ws:
                await ws.send_str("x")
                return await ws.receive_str()

        assert await asyncio.gather(*(one(s) for s in sessions)) == ["x/echo"] * 3
    finally:
        for s in sessions:
            await s.close()
    assert counter.max_open == 3
