"""A WebSocket through a broker when a process at either end of the IPC dies (issue 14):
a worker that dies has its WebSockets closed upstream with 1001 (GOING_AWAY) within a
second; a broker that dies fails the worker's WebSockets with a clear error. Ours only
(aiohttp has no broker): skipped by the ws_connect guard until it exists."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

import broker

from .ws_support import open_then_die


async def _serve(serve_app: Callable[..., Awaitable[str]], handler: Any) -> str:
    app = web.Application()
    app.router.add_get("/", handler)
    return (await serve_app(app)).replace("http", "ws", 1) + "/"


async def test_a_dead_worker_closes_its_websocket_upstream_with_1001(serve_app, broker_process):
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[tuple[Any, float]] = loop.create_future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        msg = await ws.receive_str()
        await ws.send_str(msg + "/answer")
        msg = await ws.receive()
        ended.set_result(((msg.type, msg.data), loop.time()))
        return ws

    url = await _serve(serve_app, handler)
    proc = multiprocessing.get_context("spawn").Process(
        target=open_then_die, args=(broker_process.socket_path, url)
    )
    proc.start()
    try:
        await loop.run_in_executor(None, proc.join, 30)
        died = loop.time()
        assert proc.exitcode == -signal.SIGKILL
        what, when = await asyncio.wait_for(ended, 10)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert what == (web.WSMsgType.CLOSE, 1001)
    assert when - died < 1.0


async def test_a_dead_broker_fails_the_websocket_with_a_clear_error(serve_app, tmp_path: Path):
    """The worker's waiting ``receive()`` ends (an ERROR or CLOSED message: the lead's
    choice; aiohttp's lost connection gives CLOSED) and the WebSocket is closed with
    1006; the error (the ERROR message's data, else ``exception()``) is a
    BrokerConnectionError saying the broker went away, as for requests in flight
    (test_broker_restart.py). The origin gets a CLOSE: the worker holds the socket (a
    plain ws:// is handed over) and ends the WebSocket itself, with 1001."""
    from worker_client import BrokerConnectionError, ClientSession, WSMsgType  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    origin_saw: asyncio.Future[Any] = loop.create_future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        msg = await ws.receive_str()
        await ws.send_str(msg + "/answer")
        got = await ws.receive()
        origin_saw.set_result((got.type, got.data))
        return ws

    url = await _serve(serve_app, handler)
    path = str(tmp_path / "broker.sock")
    with broker.start(path, export=False, drain_timeout=0) as proc:
        async with ClientSession(broker=path) as session:
            ws = await session.ws_connect(url)  # type: ignore[attr-defined]
            await ws.send_str("hello")
            assert await ws.receive_str() == "hello/answer"
            receiving = asyncio.ensure_future(ws.receive())
            proc.process.send_signal(signal.SIGKILL)
            await loop.run_in_executor(None, proc.process.wait, 10)
            msg = await asyncio.wait_for(receiving, 10)
            assert msg.type in (WSMsgType.ERROR, WSMsgType.CLOSED)
            error = msg.data if msg.type is WSMsgType.ERROR else ws.exception()
            assert isinstance(error, BrokerConnectionError), (msg, ws.exception())
            assert "the broker went away" in str(error) and path in str(error)
            assert ws.closed
            assert ws.close_code == 1006
            assert (await ws.receive()).type is WSMsgType.CLOSED
    # the socket was handed over: the worker, alive, closes it with 1001 (going away)
    assert await asyncio.wait_for(origin_saw, 10) == (web.WSMsgType.CLOSE, 1001)
