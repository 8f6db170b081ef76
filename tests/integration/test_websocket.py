"""``ClientSession.ws_connect`` end to end, against aiohttp.web WebSocket servers (and raw
asyncio servers for broken handshakes) on loopback.

Every case runs with three clients (``kind``): aiohttp's own ClientSession (the
reference: what it does is what ours must do), ours embedded (no broker) and ours
through a real broker process. A test uses the client's own names (``client.lib``:
``aiohttp`` or ``worker_client``) for messages, codes and errors.

Where aiohttp's behaviour is not what one would guess, the test's docstring says what
it does; ours must do the same.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import read_request_head
from tests.integration.proxy_server import ProxyServer
from tests.tls_certs import Certs, server_context

from .ws_support import CountingRelay, accept_key

KINDS = ("aiohttp", "embedded", "broker")
MiB = 1 << 20


@dataclass
class Client:
    """A client under test: ``lib`` exports its names; ``session(**kw)`` makes a session
    that is closed after the test."""

    kind: str
    lib: Any
    make: Callable[..., Any]
    sessions: list[Any] = field(default_factory=list)

    def session(self, **kw: Any) -> Any:
        s = self.make(**kw)
        self.sessions.append(s)
        return s


@pytest.fixture(params=KINDS)
async def client(request: pytest.FixtureRequest, serve_app: Any) -> AsyncIterator[Client]:
    # (``serve_app`` first: servers stop after the sessions closed, as in use.)
    if request.param == "aiohttp":
        c = Client("aiohttp", aiohttp, aiohttp.ClientSession)
    else:
        import worker_client

        broker = None
        if request.param == "broker":
            broker = request.getfixturevalue("broker_process").socket_path

        def make(**kw: Any) -> Any:
            return worker_client.ClientSession(broker=broker, **kw)

        c = Client(request.param, worker_client, make)
    yield c
    for s in c.sessions:
        await s.close()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
def serve_ws(serve_app: Callable[..., Awaitable[str]]) -> Callable[..., Awaitable[str]]:
    """``await serve_ws(handler, ssl_context=None, **routes)``: an aiohttp.web app with
    ``handler`` at ``/`` (and ``routes``: path name -> handler at ``/name``); the ``ws://``
    (``wss://``) URL of ``/``."""

    async def start(
        handler: Handler, *, ssl_context: ssl.SSLContext | None = None, **routes: Handler
    ) -> str:
        app = web.Application()
        app.router.add_get("/", handler)
        for name, h in routes.items():
            app.router.add_get(f"/{name}", h)
        base = await serve_app(app, ssl_context=ssl_context)
        return base.replace("http", "ws", 1) + "/"

    return start


def echo(seen: list[web.Request] | None = None, **ws_kw: Any) -> Handler:
    """A WebSocket handler answering each TEXT/BINARY message with it + ``/answer``;
    ``seen`` collects the handshake requests; ``ws_kw`` go to WebSocketResponse."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        if seen is not None:
            seen.append(request)
        ws = web.WebSocketResponse(**ws_kw)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is web.WSMsgType.TEXT:
                await ws.send_str(msg.data + "/answer")
            elif msg.type is web.WSMsgType.BINARY:
                await ws.send_bytes(msg.data + b"/answer")
        return ws

    return handler


def future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


# -- messages --------------------------------------------------------------------------


async def test_text_round_trip(client, serve_ws):
    url = await serve_ws(echo())
    async with client.session().ws_connect(url) as ws:
        await ws.send_str("ask")
        assert await ws.receive_str() == "ask/answer"
        await ws.send_str("again")
        msg = await ws.receive()
        assert msg.type is client.lib.WSMsgType.TEXT
        assert msg.data == "again/answer"
    assert ws.closed


async def test_binary_round_trip(client, serve_ws):
    url = await serve_ws(echo())
    async with client.session().ws_connect(url) as ws:
        await ws.send_bytes(b"\x00ask\xff")
        assert await ws.receive_bytes() == b"\x00ask\xff/answer"
        await ws.send_frame(b"frame", client.lib.WSMsgType.BINARY)
        msg = await ws.receive()
        assert msg.type is client.lib.WSMsgType.BINARY
        assert msg.data == b"frame/answer"


async def test_json_round_trip(client, serve_ws):
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        data = await ws.receive_json()
        await ws.send_json({"got": data, "n": len(data["items"])})
        await ws.receive()
        return ws

    url = await serve_ws(handler)
    async with client.session().ws_connect(url) as ws:
        await ws.send_json({"items": [1, "two", None], "é": True})
        assert await ws.receive_json() == {"got": {"items": [1, "two", None], "é": True}, "n": 3}


async def test_send_json_bytes_and_decode_text_false(client, serve_ws):
    """aiohttp 3.14: ``send_json_bytes`` sends what its ``dumps`` returns as a BINARY
    message; with ``decode_text=False`` TEXT messages come as bytes (``receive_str``
    returns bytes, ``receive_json`` still parses)."""
    url = await serve_ws(echo())
    async with client.session().ws_connect(url, decode_text=False) as ws:
        await ws.send_json_bytes({"b": 2}, dumps=lambda d: json.dumps(d).encode())
        msg = await ws.receive()
        assert (msg.type, msg.data) == (client.lib.WSMsgType.BINARY, b'{"b": 2}/answer')
        await ws.send_str("é")
        assert await ws.receive_str() == "é/answer".encode()
        await ws.send_str('{"a": ')
        with pytest.raises(json.JSONDecodeError):
            await ws.receive_json()  # '{"a": /answer'


async def test_receiving_the_wrong_type_raises(client, serve_ws):
    """aiohttp: ``receive_str`` of a BINARY message (``receive_bytes`` of a TEXT one)
    raises WSMessageTypeError naming the message; the WebSocket stays open."""
    url = await serve_ws(echo())
    async with client.session().ws_connect(url) as ws:
        await ws.send_bytes(b"b")
        with pytest.raises(client.lib.WSMessageTypeError, match="is not WSMsgType.TEXT"):
            await ws.receive_str()
        await ws.send_str("t")
        with pytest.raises(client.lib.WSMessageTypeError, match="is not WSMsgType.BINARY"):
            await ws.receive_bytes()
        assert not ws.closed
        await ws.send_str("still open")
        assert await ws.receive_str() == "still open/answer"


async def test_async_iteration_ends_when_the_server_closes(client, serve_ws):
    items = ["q1", "q2", "q3"]

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for item in items:
            await ws.send_str(item)
        await ws.close()
        return ws

    url = await serve_ws(handler)
    ws = await client.session().ws_connect(url)
    got = [msg.data async for msg in ws]
    assert got == items
    assert ws.closed
    assert ws.close_code == 1000
    assert (await ws.receive()).type is client.lib.WSMsgType.CLOSED


@pytest.mark.parametrize("size", [MiB, MiB + 7])
async def test_big_messages_come_back_intact(client, serve_ws, size):
    text = ("aé€𝄞" * (size // 4 + 1))[:size]
    binary = bytes(range(256)) * (size // 256 + 1)
    binary = binary[:size]
    url = await serve_ws(echo())
    async with client.session().ws_connect(url) as ws:
        await ws.send_str(text)
        assert await ws.receive_str() == text + "/answer"
        await ws.send_bytes(binary)
        assert await ws.receive_bytes() == binary + b"/answer"


# -- ping and pong ---------------------------------------------------------------------


async def test_autoping_answers_a_server_ping_and_swallows_pongs(client, serve_ws):
    """With ``autoping`` (the default) a server's PING is answered with its payload and a
    PONG to the client's ping never reaches ``receive()``."""
    pong: asyncio.Future[bytes] = future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        msg = await ws.receive()
        assert msg.type is web.WSMsgType.PING  # the client's ping, answered by hand
        await ws.pong(msg.data)
        await ws.ping(b"server ping")
        msg = await ws.receive()
        pong.set_result(msg.data if msg.type is web.WSMsgType.PONG else msg)
        await ws.send_str("after the pong")
        await ws.receive()
        return ws

    url = await serve_ws(handler)
    async with client.session().ws_connect(url) as ws:
        await ws.ping(b"client ping")
        assert await ws.receive_str() == "after the pong"
        assert await pong == b"server ping"


async def test_without_autoping_pings_and_pongs_are_messages(client, serve_ws):
    pong: asyncio.Future[bytes] = future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        msg = await ws.receive()
        assert msg.type is web.WSMsgType.PING
        await ws.pong(msg.data)
        await ws.ping(b"server ping")
        msg = await ws.receive()
        pong.set_result(msg.data if msg.type is web.WSMsgType.PONG else msg)
        await ws.receive()
        return ws

    url = await serve_ws(handler)
    WSMsgType = client.lib.WSMsgType
    async with client.session().ws_connect(url, autoping=False) as ws:
        await ws.ping(b"client ping")
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"client ping")
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.PING, b"server ping")
        await ws.pong(msg.data)
        assert await pong == b"server ping"


async def test_heartbeat_pings_a_server_that_answers(client, serve_ws):
    """The heartbeat PINGs (empty payload) keep coming while the server answers them;
    the WebSocket stays open."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        for _ in range(3):
            msg = await ws.receive()
            assert (msg.type, msg.data) == (web.WSMsgType.PING, b"")
            await ws.pong(msg.data)
        await ws.send_str("three pings")
        await ws.receive()
        return ws

    url = await serve_ws(handler)
    async with client.session().ws_connect(url, heartbeat=0.05) as ws:
        assert await ws.receive_str() == "three pings"
        assert not ws.closed
        assert ws.exception() is None


# What the server sees when the client drops a WebSocket without a close handshake:
# aiohttp's client just closes the connection, and so does ours where the worker owns
# the socket (embedded; a plain ws:// through a broker, handed over). A relayed one
# (wss:// through a broker) has the broker write a CLOSE with 1001 (GOING_AWAY) first:
# test_upgrade_broker.py.
DROPPED_WITHOUT_A_CLOSE = {
    "aiohttp": (web.WSMsgType.CLOSED, None),
    "embedded": (web.WSMsgType.CLOSED, None),
    "broker": (web.WSMsgType.CLOSED, None),
}


async def test_heartbeat_closes_when_the_server_never_answers(client, serve_ws):
    """aiohttp: no PONG within ``heartbeat / 2`` after its PING: a waiting ``receive()``
    returns an ERROR message whose data is a ServerTimeoutError ("No PONG received after
    0.025 seconds"), the WebSocket is closed with 1006 (no CLOSE frame is sent: the
    connection is dropped), ``exception()`` is that error, and ``close()`` returns
    False. What the server sees: ``DROPPED_WITHOUT_A_CLOSE``."""
    pinged = asyncio.Event()
    ended: asyncio.Future[tuple[Any, Any]] = future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        msg = await ws.receive()
        if msg.type is web.WSMsgType.PING:
            pinged.set()
        msg = await ws.receive()
        ended.set_result((msg.type, msg.data))
        return ws

    url = await serve_ws(handler)
    ws = await client.session().ws_connect(url, heartbeat=0.05)
    msg = await ws.receive()
    assert msg.type is client.lib.WSMsgType.ERROR
    assert isinstance(msg.data, client.lib.ServerTimeoutError)
    assert str(msg.data) == "No PONG received after 0.025 seconds"
    await asyncio.wait_for(pinged.wait(), 10)
    assert ws.closed
    assert ws.close_code == 1006
    assert ws.exception() is msg.data
    assert await ws.close() is False
    assert (await ws.receive()).type is client.lib.WSMsgType.CLOSED
    assert await asyncio.wait_for(ended, 10) == DROPPED_WITHOUT_A_CLOSE[client.kind]


# -- closing ---------------------------------------------------------------------------


async def test_a_server_close_code_reaches_the_client(client, serve_ws):
    """The server's CLOSE ends ``receive()`` with a CLOSE message (data: the code, extra:
    the reason as str); with ``autoclose`` the client answers it at once, so ``closed``
    is already true, ``close()`` returns False and every later ``receive()`` is
    CLOSED."""
    answered: asyncio.Future[bool] = future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_str()
        answered.set_result(await ws.close(code=4001, message=b"bye now"))
        return ws

    url = await serve_ws(handler)
    ws = await client.session().ws_connect(url)
    await ws.send_str("close please")
    msg = await ws.receive()
    assert msg.type is client.lib.WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (4001, "bye now")
    assert ws.close_code == 4001
    assert ws.closed
    assert await answered is True
    assert await ws.close() is False
    assert (await ws.receive()).type is client.lib.WSMsgType.CLOSED
    assert ws.exception() is None


async def test_without_autoclose_the_client_answers_the_close_itself(client, serve_ws):
    """aiohttp: with ``autoclose=False`` the server's CLOSE is returned as a message and
    sets ``close_code`` (4003), but the WebSocket stays open until ``close()``, which
    answers it (the server's own ``close()`` returns True then), returns True and keeps
    the server's code."""
    server_closed: asyncio.Future[bool] = future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        server_closed.set_result(await ws.close(code=4003, message=b"manual"))
        return ws

    url = await serve_ws(handler)
    ws = await client.session().ws_connect(url, autoclose=False)
    msg = await ws.receive()
    assert (msg.type, msg.data, msg.extra) == (client.lib.WSMsgType.CLOSE, 4003, "manual")
    assert ws.close_code == 4003
    assert not ws.closed
    assert not server_closed.done()
    assert await ws.close() is True
    assert ws.closed
    assert ws.close_code == 4003
    assert await server_closed is True


async def test_a_client_close_code_reaches_the_server(client, serve_ws):
    """aiohttp: ``close(code=4002, ...)`` returns True once the server's CLOSE came back;
    ``close_code`` is then the code of the server's answer (aiohttp's server answers
    1000), not the one the client sent."""
    seen: asyncio.Future[tuple[int, str]] = future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        msg = await ws.receive()
        seen.set_result((msg.data, msg.extra) if msg.type is web.WSMsgType.CLOSE else msg)
        return ws

    url = await serve_ws(handler)
    ws = await client.session().ws_connect(url)
    assert await ws.close(code=4002, message=b"client says bye") is True
    assert await seen == (4002, "client says bye")
    assert ws.closed
    assert ws.close_code == 1000
    assert ws.exception() is None


async def test_close_return_values_and_state(client, serve_ws):
    url = await serve_ws(echo())
    ws = await client.session().ws_connect(url)
    assert not ws.closed
    assert ws.close_code is None
    assert ws.exception() is None
    assert await ws.close() is True
    assert ws.closed
    assert ws.close_code == 1000
    assert await ws.close() is False
    msg = await ws.receive()
    assert msg.type is client.lib.WSMsgType.CLOSED
    assert ws.exception() is None


async def test_sending_after_close_raises(client, serve_ws):
    """aiohttp: once its CLOSE is sent, every send (PING and PONG too) raises
    ClientConnectionResetError("Cannot write to closing transport")."""
    url = await serve_ws(echo())
    ws = await client.session().ws_connect(url)
    await ws.close()
    sends = [ws.send_str, ws.send_bytes, ws.send_json, ws.ping, ws.pong]
    for send, arg in zip(sends, ["x", b"x", 1, b"", b""], strict=True):
        with pytest.raises(client.lib.ClientConnectionResetError, match="closing transport"):
            await send(arg)


async def test_close_from_another_task_while_receive_waits(client, serve_ws):
    """aiohttp: a second ``receive()`` meanwhile raises RuntimeError; the waiting
    ``receive()`` returns a CLOSING message, then ``close()`` completes the handshake
    and returns True. (The client's receive is known to wait once the server has its
    PONG: answering the server's PING is what that receive did before it went back to
    waiting.)"""
    ponged = asyncio.Event()
    close_seen: asyncio.Future[int] = future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.ping(b"are you there")
        if (await ws.receive()).type is web.WSMsgType.PONG:
            ponged.set()
        msg = await ws.receive()
        close_seen.set_result(msg.data if msg.type is web.WSMsgType.CLOSE else msg)
        await ws.close()
        return ws

    url = await serve_ws(handler)
    ws = await client.session().ws_connect(url)
    receiving = asyncio.ensure_future(ws.receive())
    await asyncio.wait_for(ponged.wait(), 10)
    assert not receiving.done()
    with pytest.raises(RuntimeError, match="Concurrent call to receive"):
        await ws.receive()
    assert await ws.close() is True
    msg = await receiving
    assert msg.type is client.lib.WSMsgType.CLOSING
    assert ws.closed
    assert ws.close_code == 1000
    assert await close_seen == 1000


async def test_close_gives_up_on_a_server_that_never_answers(client, serve_ws):
    """aiohttp: ``close()`` waits ``ClientWSTimeout.ws_close`` for the server's CLOSE,
    then drops the connection and returns True, with ``close_code`` 1006 and
    ``exception()`` a TimeoutError."""
    close_seen = asyncio.Event()
    test_done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoclose=False)
        await ws.prepare(request)
        if (await ws.receive()).type is web.WSMsgType.CLOSE:
            close_seen.set()
        await test_done.wait()  # (a handler that returns closes its WebSocket)
        return ws

    url = await serve_ws(handler)
    timeout = client.lib.ClientWSTimeout(ws_close=0.05)
    ws = await client.session().ws_connect(url, timeout=timeout)
    assert await ws.close() is True
    assert close_seen.is_set()
    assert ws.closed
    assert ws.close_code == 1006
    assert isinstance(ws.exception(), asyncio.TimeoutError)
    test_done.set()


async def test_the_server_dropping_the_connection_ends_the_websocket(client, serve_ws):
    """aiohttp: the connection's end without a CLOSE: what was sent before still
    arrives, then ``receive()`` returns CLOSED and ``close_code`` is 1006."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("last words")
        assert request.transport is not None
        request.transport.close()
        await ws.receive()
        return ws

    url = await serve_ws(handler)
    ws = await client.session().ws_connect(url)
    assert await ws.receive_str() == "last words"
    msg = await ws.receive()
    assert msg.type is client.lib.WSMsgType.CLOSED
    assert ws.closed
    assert ws.close_code == 1006
    assert await ws.close() is False


async def test_a_protocol_error_from_the_server(client, serve_ws):
    """Bytes that are no valid frame: ``receive()`` returns an ERROR message with a
    WebSocketError (code 1002); the client sends CLOSE with that code and, its
    ``close_code`` being set, drops the connection without waiting for an answer."""
    close_seen: asyncio.Future[int] = future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        assert request.transport is not None
        request.transport.write(b"01234" * 100)  # RSV bits set
        msg = await ws.receive()
        close_seen.set_result(msg.data if msg.type is web.WSMsgType.CLOSE else msg)
        return ws

    url = await serve_ws(handler)
    ws = await client.session().ws_connect(url)
    msg = await ws.receive()
    assert msg.type is client.lib.WSMsgType.ERROR
    assert type(msg.data) is client.lib.WebSocketError
    assert msg.data.code == 1002
    assert str(msg.data) == "Received frame with non-zero reserved bits"
    assert ws.close_code == 1002
    assert ws.closed
    assert await close_seen == 1002


# -- timeouts --------------------------------------------------------------------------


async def test_receive_timeout(client, serve_ws):
    """aiohttp: a receive that times out raises TimeoutError and sets ``close_code`` to
    1006, yet the WebSocket stays open and usable: a message sent after still arrives.
    And since ``close_code`` is set, a later ``close()`` sends its CLOSE (1000) but
    drops the connection without waiting for the server's answer: it returns True and
    ``close_code`` stays 1006."""
    go_on = asyncio.Event()
    close_seen: asyncio.Future[int] = future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await go_on.wait()
        await ws.send_str("late")
        msg = await ws.receive()
        close_seen.set_result(msg.data if msg.type is web.WSMsgType.CLOSE else msg)
        return ws

    url = await serve_ws(handler)
    timeout = client.lib.ClientWSTimeout(ws_receive=0.05)
    ws = await client.session().ws_connect(url, timeout=timeout)
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive()
    assert ws.close_code == 1006
    assert not ws.closed
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive_str(timeout=0.05)
    go_on.set()
    assert await ws.receive_str(timeout=10) == "late"
    assert await ws.close() is True
    assert ws.close_code == 1006
    assert await close_seen == 1000


async def test_receive_timeout_as_a_float_is_deprecated(client, serve_ws):
    url = await serve_ws(echo())
    with pytest.warns(DeprecationWarning, match="float parameter 'receive_timeout'"):
        ws = await client.session().ws_connect(url, receive_timeout=0.05)
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive()
    await ws.close()


# -- limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["TEXT", "BINARY"])
async def test_max_msg_size_refuses_a_bigger_message(client, serve_ws, kind):
    """aiohttp refuses a message of ``max_msg_size`` bytes already (``>=``: the largest
    accepted is one byte less): ``receive()`` returns an ERROR message with a
    WebSocketError, code 1009 (MESSAGE_TOO_BIG), "Message size 1024 exceeds limit
    1024"; the client closes with 1009 and the server sees that code."""
    close_seen: asyncio.Future[int] = future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        send = ws.send_str if kind == "TEXT" else ws.send_bytes
        await send("x" * 1023 if kind == "TEXT" else b"x" * 1023)  # type: ignore[operator]
        await send("y" * 1024 if kind == "TEXT" else b"y" * 1024)  # type: ignore[operator]
        msg = await ws.receive()
        close_seen.set_result(msg.data if msg.type is web.WSMsgType.CLOSE else msg)
        return ws

    url = await serve_ws(handler)
    ws = await client.session().ws_connect(url, max_msg_size=1024)
    msg = await ws.receive()
    assert msg.type is getattr(client.lib.WSMsgType, kind)
    assert len(msg.data) == 1023
    msg = await ws.receive()
    assert msg.type is client.lib.WSMsgType.ERROR
    assert type(msg.data) is client.lib.WebSocketError
    assert msg.data.code == client.lib.WSCloseCode.MESSAGE_TOO_BIG == 1009
    assert str(msg.data) == "Message size 1024 exceeds limit 1024"
    assert ws.close_code == 1009
    assert ws.closed
    assert await close_seen == 1009


async def test_max_msg_size_refuses_a_message_that_decompresses_bigger(client, serve_ws):
    """aiohttp: a compressed message is measured after decompression, and there the
    limit is ``>``: ``max_msg_size`` bytes pass, one more is refused (1009, "Decompressed
    message exceeds size limit 1024")."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=True)
        await ws.prepare(request)
        await ws.send_str("z" * 1024)
        await ws.send_str("z" * 1025)
        await ws.receive()
        return ws

    url = await serve_ws(handler)
    ws = await client.session().ws_connect(url, compress=15, max_msg_size=1024)
    assert ws.compress == 15
    assert await ws.receive_str() == "z" * 1024
    msg = await ws.receive()
    assert msg.type is client.lib.WSMsgType.ERROR
    assert msg.data.code == 1009
    assert str(msg.data) == "Decompressed message exceeds size limit 1024"
    assert ws.close_code == 1009


# -- negotiation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "asked, server_compress, offered, negotiated",
    [
        (15, True, "permessage-deflate; client_max_window_bits", 15),
        # aiohttp asks the server for a 9-bit window; its server answers 15 (it has no
        # other) and the client takes that
        (9, True, "permessage-deflate; client_max_window_bits; server_max_window_bits=9", 15),
        (0, True, None, 0),
        (15, False, "permessage-deflate; client_max_window_bits", 0),
    ],
)
async def test_compression(client, serve_ws, asked, server_compress, offered, negotiated):
    """What the client offers, what it ends with (``ws.compress``), and that it is what
    goes on the wire: 64 KiB of one letter each way, counted by a relay."""
    seen: list[web.Request] = []
    url = URL(await serve_ws(echo(seen, compress=server_compress)))
    relay = CountingRelay()
    relay_port = await relay.start(url.port)
    try:
        ws = await client.session().ws_connect(url.with_port(relay_port), compress=asked)
        try:
            assert ws.compress == negotiated
            text = "a" * 65536
            await ws.send_str(text)
            assert await ws.receive_str() == text + "/answer"
            if negotiated:
                assert relay.up < 4096 and relay.down < 4096
            else:
                assert relay.up > 65536 and relay.down > 65536
        finally:
            await ws.close()
    finally:
        await relay.stop()
    assert seen[0].headers.get("Sec-WebSocket-Extensions") == offered


async def test_compress_with_a_window_too_small_is_refused(client, serve_ws):
    """aiohttp: ``compress`` below 9 raises ValueError before any request is made."""
    seen: list[web.Request] = []
    url = await serve_ws(echo(seen))
    with pytest.raises(ValueError):
        await client.session().ws_connect(url, compress=1)
    assert seen == []


@pytest.mark.parametrize(
    "asked, server_has, chosen",
    [
        (("a", "b"), ("b", "c"), "b"),
        (("b", "a"), ("a", "b"), "b"),  # aiohttp's server takes the client's first it has
        (("a",), ("z",), None),
        (("a",), (), None),
    ],
)
async def test_protocol_negotiation(client, serve_ws, asked, server_has, chosen):
    seen: list[web.Request] = []
    url = await serve_ws(echo(seen, protocols=server_has))
    async with client.session().ws_connect(url, protocols=asked) as ws:
        assert ws.protocol == chosen
        await ws.send_str("x")
        assert await ws.receive_str() == "x/answer"
    assert seen[0].headers["Sec-WebSocket-Protocol"] == ",".join(asked)


# -- the handshake ---------------------------------------------------------------------


async def test_a_non_101_answer_raises_WSServerHandshakeError(client, serve_ws):
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no", headers={"X-Why": "because"})

    base = await serve_ws(echo(), refuse=refuse)
    with pytest.raises(client.lib.WSServerHandshakeError) as info:
        await client.session().ws_connect(base + "refuse")
    exc = info.value
    assert exc.status == 403
    assert exc.message == "Invalid response status"
    assert exc.headers["X-Why"] == "because"
    assert exc.request_info.url == URL(base + "refuse")
    # a plain page that does not upgrade
    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="just a page")

    base = await serve_ws(echo(), plain=plain)
    with pytest.raises(client.lib.WSServerHandshakeError) as info:
        await client.session().ws_connect(base + "plain")
    assert info.value.status == 200


def _answer_101(accept: str | None, upgrade: str | None, connection: str | None):
    """A raw server's handler answering the handshake with a 101 whose headers are
    these (None: left out; ``accept`` "right": the correct key)."""
    requests: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_request_head(reader)
        requests.append(head)
        key = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        lines = ["HTTP/1.1 101 Switching Protocols"]
        if upgrade is not None:
            lines.append(f"Upgrade: {upgrade}")
        if connection is not None:
            lines.append(f"Connection: {connection}")
        if accept is not None:
            value = accept_key(key) if accept == "right" else accept
            lines.append(f"Sec-WebSocket-Accept: {value}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        # a client that took the 101 closes with code 1000: a masked CLOSE of 8 bytes
        close = await reader.readexactly(8)
        assert close[:2] == b"\x88\x82"
        writer.write(b"\x88\x02\x03\xe8")
        await reader.read()  # until the client goes

    return handler, requests


@pytest.mark.parametrize(
    "accept, upgrade, connection, message",
    [
        ("d3JvbmcgYWNjZXB0IGtleQ==", "websocket", "Upgrade", "Invalid challenge response"),
        (None, "websocket", "Upgrade", "Invalid challenge response"),
        ("right", None, "Upgrade", "Invalid upgrade header"),
        ("right", "h2c", "Upgrade", "Invalid upgrade header"),
        ("right", "websocket", None, "Invalid connection header"),
        ("right", "websocket", "keep-alive", "Invalid connection header"),
    ],
)
async def test_a_bad_101_raises_WSServerHandshakeError(
    client, raw_server, accept, upgrade, connection, message
):
    handler, requests = _answer_101(accept, upgrade, connection)
    base = await raw_server(handler)
    with pytest.raises(client.lib.WSServerHandshakeError) as info:
        await client.session().ws_connect(base.replace("http", "ws") + "/chat")
    assert info.value.status == 101
    assert info.value.message == message
    assert len(requests) == 1 and requests[0].startswith(b"GET /chat HTTP/1.1\r\n")


async def test_a_right_101_from_a_raw_server_is_accepted(client, raw_server):
    """The raw server of the cases above with every header right: the failures are
    each header's, not the server's."""
    handler, _ = _answer_101("right", "WebSocket", "upgrade")  # matched case-insensitively
    base = await raw_server(handler)
    ws = await client.session().ws_connect(base.replace("http", "ws") + "/chat")
    assert not ws.closed
    assert ws.protocol is None and ws.compress == 0
    assert await ws.close() is True
    assert ws.close_code == 1000


# aiohttp 3.14.5 also warns when a BasicAuth is made; the 'auth' parameter's own
# warning is what the test checks.
@pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning")
async def test_the_handshake_request_carries_headers_origin_auth_and_params(client, serve_ws):
    """aiohttp's defaults (Upgrade, Connection, Sec-WebSocket-Version 13, a fresh
    16-byte key) and what the call adds; a caller's header overrides a default one
    (aiohttp's test_override_default_headers: Sec-WebSocket-Version 8). ``auth=`` is
    deprecated in aiohttp 3.14 (a DeprecationWarning) but still sent."""
    import base64

    seen: list[web.Request] = []
    url = await serve_ws(echo(seen))
    session = client.session(headers={"X-Session": "s"})
    with pytest.warns(DeprecationWarning, match="'auth' parameter is deprecated"):
        ws = await session.ws_connect(
            url,
            headers={"X-Custom": "c", "Sec-WebSocket-Version": "8"},
            origin="http://origin.test",
            auth=client.lib.BasicAuth("user", "pass"),
            params={"q": "1 2"},
        )
    await ws.send_str("x")
    assert await ws.receive_str() == "x/answer"
    await ws.close()
    h = seen[0].headers
    assert seen[0].method == "GET"
    assert seen[0].path_qs == "/?q=1+2"
    assert h["Upgrade"] == "websocket"
    assert h["Connection"] == "Upgrade"
    assert h["Sec-WebSocket-Version"] == "8"
    assert len(base64.b64decode(h["Sec-WebSocket-Key"])) == 16
    assert h["Origin"] == "http://origin.test"
    assert h["Authorization"] == "Basic dXNlcjpwYXNz"
    assert (h["X-Custom"], h["X-Session"]) == ("c", "s")
    assert "Sec-WebSocket-Protocol" not in h and "Sec-WebSocket-Extensions" not in h

    # a second handshake has a key of its own
    ws = await session.ws_connect(url)
    await ws.close()
    assert seen[1].headers["Sec-WebSocket-Key"] != h["Sec-WebSocket-Key"]
    assert seen[1].headers["Sec-WebSocket-Version"] == "13"


async def test_method_goes_on_the_handshake(client, serve_app):
    """``method=`` is the handshake request's method (aiohttp's server upgrades a POST
    too when the route takes it)."""
    seen: list[web.Request] = []
    app = web.Application()
    app.router.add_route("*", "/", echo(seen))
    url = (await serve_app(app)).replace("http", "ws", 1) + "/"
    async with client.session().ws_connect(url, method="POST") as ws:
        await ws.send_str("posted")
        assert await ws.receive_str() == "posted/answer"
    assert seen[0].method == "POST"


async def test_cookies_go_with_the_handshake_and_come_from_it(client, serve_ws):
    """The session's jar sends a cookie set by an earlier response with the handshake
    request, and a cookie set on the 101 lands in the jar."""
    seen: list[web.Request] = []

    async def login(request: web.Request) -> web.Response:
        resp = web.Response(text="in")
        resp.set_cookie("login", "yes")
        return resp

    async def handler(request: web.Request) -> web.WebSocketResponse:
        seen.append(request)
        ws = web.WebSocketResponse()
        ws.set_cookie("from_101", "hello")
        await ws.prepare(request)
        await ws.receive()
        return ws

    async def show(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(dict(request.cookies)))

    url = await serve_ws(handler, login=login, show=show)
    http = url.replace("ws", "http", 1)
    session = client.session(cookie_jar=client.lib.CookieJar(unsafe=True), cookies={"s": "1"})
    async with session.get(http + "login") as resp:
        assert await resp.text() == "in"
    ws = await session.ws_connect(url)
    await ws.close()
    assert dict(seen[0].cookies) == {"login": "yes", "s": "1"}
    async with session.get(http + "show") as resp:
        assert json.loads(await resp.text()) == {"login": "yes", "s": "1", "from_101": "hello"}


async def test_an_http_url_works_too(client, serve_ws):
    url = await serve_ws(echo())
    async with client.session().ws_connect(url.replace("ws", "http", 1)) as ws:
        await ws.send_str("via http://")
        assert await ws.receive_str() == "via http:///answer"


# -- the connection --------------------------------------------------------------------

# What ``get_extra_info("peername")`` gives while open: aiohttp's is the socket's peer.
# Ours: the worker holds no socket; ``None`` is what the lead's channel is expected to
# give (adjust here if it reports the origin's address).
# Ours owns the socket embedded and for a plain ws:// through a broker (handed over); a
# relayed wss:// through a broker has no transport in the worker: None.
PEERNAME = {"aiohttp": "the server", "embedded": "the server", "broker": "the server"}


async def test_get_extra_info_peername(client, serve_ws):
    url = URL(await serve_ws(echo()))
    ws = await client.session().ws_connect(url)
    peer = ws.get_extra_info("peername")
    if PEERNAME[client.kind] == "the server":
        assert peer is not None and tuple(peer[:2]) == ("127.0.0.1", url.port)
    else:
        assert peer is PEERNAME[client.kind]
    assert ws.get_extra_info("no such thing", "dflt") == "dflt"
    await ws.close()
    assert ws.get_extra_info("peername") is None  # aiohttp: the connection is gone


@pytest.fixture
def tls_ws(serve_ws, tls_certs: Certs) -> Callable[..., Awaitable[str]]:
    async def start(handler: Handler) -> str:
        ctx = server_context(tls_certs.server, tls_certs.server_key)
        return await serve_ws(handler, ssl_context=ctx)

    return start


async def test_wss_through_tls(client, tls_ws, tls_certs):
    seen: list[web.Request] = []
    url = await tls_ws(echo(seen))
    assert url.startswith("wss://")
    ctx = ssl.create_default_context(cafile=str(tls_certs.ca))
    session = client.session()
    async with session.ws_connect(url, ssl=ctx) as ws:
        await ws.send_str("secret")
        assert await ws.receive_str() == "secret/answer"
        await ws.send_bytes(b"\x00" * 100_000)
        assert await ws.receive_bytes() == b"\x00" * 100_000 + b"/answer"
    assert seen[0].secure
    # the default verification does not know the test CA
    with pytest.raises(client.lib.ClientConnectorCertificateError):
        await session.ws_connect(url)
    assert len(seen) == 1


@pytest.fixture(scope="module")
def open_proxy(tmp_path_factory: pytest.TempPathFactory) -> Any:
    proxy = ProxyServer.start(tmp_path_factory.mktemp("ws_proxy"))
    yield proxy
    proxy.stop()


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable of this machine's environment in the way."""
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "ws_proxy", "wss_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def echo_noting_peers(peers: list[int]) -> Handler:
    """``echo()``, noting the port each handshake came from (a proxy's, or ours)."""
    inner = echo()

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername")[1])
        return await inner(request)

    return handler


async def test_wss_through_an_http_proxy(client, tls_ws, tls_certs, open_proxy, no_proxy_env):
    """``proxy=`` with a wss:// URL: a CONNECT tunnel through the proxy, TLS to the
    origin inside it. The origin's peer is one of the proxy's connections."""
    peers: list[int] = []
    url = await tls_ws(echo_noting_peers(peers))
    ctx = ssl.create_default_context(cafile=str(tls_certs.ca))
    async with client.session().ws_connect(url, ssl=ctx, proxy=open_proxy.url) as ws:
        await ws.send_str("tunnelled")
        assert await ws.receive_str() == "tunnelled/answer"
        assert peers[0] in open_proxy.sockets()


async def test_trust_env_takes_wss_proxy_for_a_websocket(
    client, tls_ws, tls_certs, open_proxy, no_proxy_env
):
    """aiohttp, ``trust_env=True``: a wss:// WebSocket goes through the proxy that
    ``wss_proxy`` names (not ``https_proxy``, which an https request would take)."""
    no_proxy_env.setenv("wss_proxy", open_proxy.url)
    peers: list[int] = []
    url = await tls_ws(echo_noting_peers(peers))
    ctx = ssl.create_default_context(cafile=str(tls_certs.ca))
    session = client.session(trust_env=True)
    async with session.ws_connect(url, ssl=ctx) as ws:
        await ws.send_str("from the environment")
        assert await ws.receive_str() == "from the environment/answer"
        assert peers[0] in open_proxy.sockets()  # the proxy's, while it is open
        # and an https request of the same session does not take it
        async with session.get(url.replace("wss://", "https://", 1), ssl=ctx) as resp:
            assert resp.status == 400  # aiohttp.web: a plain GET to a WebSocket route
            assert len(peers) == 2 and peers[1] not in open_proxy.sockets()


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_heartbeats_keep_working_under_load(
    broker_process, serve_app, tls_certs, scheme
):
    """Through a broker, with the same worker connection busy downloading big bodies
    (the relay of wss:// shares it; a handed-over ws:// socket does not): the client's
    heartbeat pings reach the server and its pongs come back in time, three times over,
    and the WebSocket stays open."""
    from worker_client import ClientSession

    pings = downloads = 0
    three: asyncio.Future[None] = future()
    big = b"x" * (8 << 20)

    async def handler(request: web.Request) -> web.WebSocketResponse:
        nonlocal pings
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is web.WSMsgType.PING:
                await ws.pong(msg.data)
                pings += 1
                if pings == 3 and not three.done():
                    three.set_result(None)
        return ws

    async def body(request: web.Request) -> web.Response:
        return web.Response(body=big)

    app = web.Application()
    app.router.add_get("/", handler)
    app.router.add_get("/big", body)
    ctx = server_context(tls_certs.server, tls_certs.server_key) if scheme == "wss" else None
    base = await serve_app(app, ssl_context=ctx)
    client_ctx = ssl.create_default_context(cafile=str(tls_certs.ca))
    async with ClientSession(broker=broker_process.socket_path) as session:
        ws = await session.ws_connect(base.replace("http", "ws", 1) + "/", heartbeat=0.3,
                                      ssl=client_ctx)

        async def load() -> None:
            nonlocal downloads
            while not three.done():
                async with session.get(base + "/big", ssl=client_ctx) as resp:
                    assert len(await resp.read()) == len(big)
                downloads += 1

        loaders = [asyncio.ensure_future(load()) for _ in range(3)]
        try:
            await asyncio.wait_for(asyncio.shield(three), 20)
        finally:
            for task in loaders:
                task.cancel()
            await asyncio.gather(*loaders, return_exceptions=True)
        assert downloads >= 3  # the load was real: 24 MiB and more beside the pings
        assert not ws.closed and ws.exception() is None
        await ws.send_str("still here")
        await ws.close()
        assert ws.close_code == 1000


async def test_session_middlewares_run_around_the_upgrade(client, serve_ws):
    """aiohttp 3.12+: ``ws_connect`` goes through the session's middlewares like any
    request. One adds a header; another answers a 401 by sending the upgrade again with
    credentials (a retry), and the WebSocket then works."""
    seen: list[tuple[str | None, str | None]] = []
    inner = echo()

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append((request.headers.get("X-Mw"), request.headers.get("Authorization")))
        if "Authorization" not in request.headers:
            return web.Response(status=401)
        return await inner(request)

    calls: list[str] = []
    statuses: list[int] = []

    async def tag(req: Any, handler: Any) -> Any:
        req.headers["X-Mw"] = "yes"
        calls.append(req.method)
        return await handler(req)

    async def auth(req: Any, handler: Any) -> Any:
        resp = await handler(req)
        if resp.status == 401:
            resp.release()
            req.headers["Authorization"] = "Bearer token"
            resp = await handler(req)
        statuses.append(resp.status)
        return resp

    url = await serve_ws(handler)
    session = client.session(middlewares=(tag, auth))
    async with session.ws_connect(url) as ws:
        await ws.send_str("through the middlewares")
        assert await ws.receive_str() == "through the middlewares/answer"
    assert seen == [("yes", None), ("yes", "Bearer token")]
    assert calls == ["GET"]
    assert statuses == [101]  # the middleware sees the 101, as aiohttp's do


async def test_a_redirected_handshake_through_middlewares(client, serve_ws):
    """With middlewares the worker follows the redirect (each hop through them): the
    WebSocket is the last hop's."""
    seen: list[web.Request] = []
    hops: list[int] = []

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/")

    async def count(req: Any, handler: Any) -> Any:
        resp = await handler(req)
        hops.append(resp.status)
        return resp

    url = await serve_ws(echo(seen), moved=moved)
    async with client.session(middlewares=(count,)).ws_connect(url + "moved") as ws:
        await ws.send_str("hello")
        assert await ws.receive_str() == "hello/answer"
    assert hops == [307, 101]
    assert len(seen) == 1


class _DeafOrigin(asyncio.Protocol):
    """A raw origin that answers a handshake with its 101 and then reads nothing until
    ``hear()`` (its connection stays open); any other request gets a 200."""

    def __init__(self, opened: list[_DeafOrigin]) -> None:
        self._head = b""
        self.upgraded = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        opened.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def hear(self) -> None:
        """Read (and drop) again: the client's transport can write what it holds."""
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            return
        self._head += data
        if b"\r\n\r\n" not in self._head:
            return
        head, self._head = self._head, b""
        key = next(
            (line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
             if line.lower().startswith(b"sec-websocket-key:")),
            None,
        )
        if key is None:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        self.upgraded = True
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(key.decode()).encode() + b"\r\n\r\n"
        )
        self.transport.pause_reading()


async def test_a_websocket_dropped_with_unsent_bytes_gives_its_slot_back(client):
    """aiohttp's response.close() gives the connection's place in the pool back at once,
    though the transport may still hold bytes for a peer that does not read: a
    WebSocket whose close() was given up (its CLOSE stuck behind them) does not keep
    ``limit_per_host`` taken."""
    opened: list[_DeafOrigin] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _DeafOrigin(opened), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        session = client.session(connector=client.lib.TCPConnector(limit_per_host=1))
        ws = await session.ws_connect(f"ws://127.0.0.1:{port}/")
        big = b"x" * (64 << 20)  # more than the socket buffers hold: the send waits
        with pytest.raises(asyncio.TimeoutError):  # (a caller giving up: no event to wait on)
            await asyncio.wait_for(ws.send_bytes(big), 0.3)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.close(), 0.3)  # its CLOSE waits behind the bytes
        assert ws.closed and ws.close_code == 1006
        # the slot is free (bounded: a slot still held would keep it queued)
        bounded = client.lib.ClientTimeout(total=10)
        async with session.get(f"http://127.0.0.1:{port}/", timeout=bounded) as resp:
            assert await resp.text() == "ok"
        assert [o.upgraded for o in opened] == [True, False]
        opened[0].hear()  # the dropped WebSocket's transport writes its bytes, then closes
        await asyncio.wait_for(opened[0].lost, 10)
    finally:
        server.close()
        for origin in opened:
            origin.transport.abort()
        # closed a loop pass later: wait, or one is left open past the test's loop
        await asyncio.wait_for(asyncio.gather(*(origin.lost for origin in opened)), 10)
        await server.wait_closed()
