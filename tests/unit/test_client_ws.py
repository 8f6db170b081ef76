"""ClientWebSocketResponse against an in-memory channel: aiohttp 3.14's semantics.

The behaviours of aiohttp's tests/test_client_ws.py and test_client_ws_functional.py
that need no connection: the close handshake from either side, autoclose, autoping,
timeouts, the heartbeat (on a clock the test advances), errors and iteration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import pickle
import struct
from typing import Any

import aiohttp
import aiohttp.client_ws
import pytest

from shared.websocket import WebSocketError, WebSocketProtocolError
from worker_client.exceptions import (
    ClientConnectionResetError,
    ServerDisconnectedError,
    ServerTimeoutError,
    WSMessageTypeError,
)
from worker_client.websocket import (
    DEFAULT_WS_CLIENT_TIMEOUT,
    ClientWebSocketResponse,
    ClientWSTimeout,
    IncomingMessages,
    WSCloseCode,
    WSMessage,
    WSMsgType,
)


class FakeChannel:
    """A channel whose peer is the test: what the WebSocket sends lands in ``sent``."""

    def __init__(self, *, echo_close: bool = True, limit: int = 2**16) -> None:
        self.incoming = IncomingMessages(self._pause, self._resume, limit)
        self.echo_close = echo_close  # the peer answers our CLOSE with the same code
        self.sent: asyncio.Queue[tuple[bytes, WSMsgType, int | None]] = asyncio.Queue()
        self.send_error: BaseException | None = None
        self.blocked: dict[WSMsgType, asyncio.Future[None]] = {}
        self.pauses: list[str] = []
        self.closes = 0

    def _pause(self) -> None:
        self.pauses.append("pause")

    def _resume(self) -> None:
        self.pauses.append("resume")

    async def send(self, payload: bytes, opcode: WSMsgType, compress: int | None = None) -> None:
        if self.send_error is not None:
            raise self.send_error
        if opcode in self.blocked:
            await self.blocked[opcode]
        self.sent.put_nowait((bytes(payload), opcode, compress))
        if opcode is WSMsgType.CLOSE and self.echo_close:
            (code,) = struct.unpack("!H", payload[:2])
            self.peer_close(code)

    def close(self) -> None:
        self.closes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 8080)}.get(name, default)

    # the peer's side
    def peer(self, type: WSMsgType, data: Any = None, extra: str | None = None) -> None:
        size = len(data) if isinstance(data, (bytes, str)) else 0
        self.incoming.feed_data(WSMessage(type, data, extra), size)

    def peer_close(self, code: int = 1000, message: str = "") -> None:
        self.peer(WSMsgType.CLOSE, code, message)

    def sent_now(self) -> list[tuple[bytes, WSMsgType, int | None]]:
        out = []
        while not self.sent.empty():
            out.append(self.sent.get_nowait())
        return out


def close_frame(code: int, message: bytes = b"") -> tuple[bytes, WSMsgType, None]:
    return struct.pack("!H", code) + message, WSMsgType.CLOSE, None


class Timer:
    def __init__(self, when: float, callback: Any, args: tuple[Any, ...]) -> None:
        self.when, self.callback, self.args = when, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ClockLoop:
    """The running loop with a clock the test moves: ``time()`` and ``call_at()`` are
    its own, the rest goes to the real loop."""

    def __init__(self) -> None:
        self.real = asyncio.get_running_loop()
        self.now = 1000.25
        self.timers: list[Timer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any, *args: Any) -> Timer:
        timer = Timer(when, callback, args)
        self.timers.append(timer)
        return timer

    def call_soon(self, callback: Any, *args: Any) -> asyncio.Handle:
        return self.real.call_soon(callback, *args)

    def create_task(self, coro: Any) -> asyncio.Task[Any]:
        return self.real.create_task(coro)

    def create_future(self) -> asyncio.Future[Any]:
        return self.real.create_future()

    async def advance(self, seconds: float) -> None:
        await settle()
        self.now += seconds
        while due := [t for t in self.timers if not t.cancelled and t.when <= self.now]:
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            timer.callback(*timer.args)
            await settle()

    def pending(self) -> list[Timer]:
        return [t for t in self.timers if not t.cancelled]


async def settle() -> None:
    """Let callbacks and tasks that are ready run (no time passes)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def reader_waiting(ws: ClientWebSocketResponse[Any]) -> None:
    while not ws._waiting:
        await asyncio.sleep(0)


def make_ws(
    channel: FakeChannel | None = None,
    *,
    timeout: ClientWSTimeout = DEFAULT_WS_CLIENT_TIMEOUT,
    autoclose: bool = True,
    autoping: bool = True,
    loop: Any = None,
    **kwargs: Any,
) -> tuple[ClientWebSocketResponse[Any], FakeChannel]:
    channel = channel if channel is not None else FakeChannel()
    ws: ClientWebSocketResponse[Any] = ClientWebSocketResponse(
        channel, "chat", timeout, autoclose, autoping, loop, **kwargs
    )
    return ws, channel


# -- ClientWSTimeout ---------------------------------------------------------------------


def test_timeout_fields_and_defaults_are_aiohttps():
    assert ClientWSTimeout() == ClientWSTimeout(None, None)
    ours = dataclasses.astuple(DEFAULT_WS_CLIENT_TIMEOUT)
    theirs = aiohttp.client_ws.DEFAULT_WS_CLIENT_TIMEOUT
    assert ours == (theirs.ws_receive, theirs.ws_close) == (None, 10.0)
    assert ClientWSTimeout(1.5) == ClientWSTimeout(ws_receive=1.5)


def test_timeout_is_frozen_hashable_and_picklable():
    timeout = ClientWSTimeout(ws_receive=3, ws_close=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        timeout.ws_close = 5  # type: ignore[misc]
    assert dataclasses.replace(timeout, ws_close=5) == ClientWSTimeout(3, 5)
    assert {timeout: 1}[ClientWSTimeout(3, 4)] == 1
    assert pickle.loads(pickle.dumps(timeout)) == timeout


@pytest.mark.parametrize("bad", [-1, "10", [1]])
def test_timeout_refuses_a_bad_value_by_name(bad):
    with pytest.raises(ValueError, match="ClientWSTimeout.ws_close must be None or a number"):
        ClientWSTimeout(ws_close=bad)


# -- the API's shape ---------------------------------------------------------------------


def _params(func: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]


def test_public_methods_have_aiohttps_signatures():
    theirs = aiohttp.ClientWebSocketResponse
    public = {n for n in dir(theirs) if not n.startswith("_")} | {"__aiter__", "__anext__"}
    for name in public:
        ours_attr = getattr(ClientWebSocketResponse, name)
        theirs_attr = getattr(theirs, name)
        if callable(theirs_attr):
            assert _params(ours_attr) == _params(theirs_attr), name
        else:
            assert isinstance(ours_attr, property), name
    ours = {n for n in dir(ClientWebSocketResponse) if not n.startswith("_")}
    assert ours == public - {"__aiter__", "__anext__"}


async def test_properties_and_extra_info():
    ws, channel = make_ws(compress=15, client_notakeover=True)
    assert (ws.protocol, ws.compress, ws.client_notakeover) == ("chat", 15, True)
    assert (ws.closed, ws.close_code) == (False, None)
    assert ws.exception() is None
    assert ws.get_extra_info("peername") == ("127.0.0.1", 8080)
    assert ws.get_extra_info("socket", "none") == "none"
    await ws.close()
    assert ws.get_extra_info("peername", "gone") == "gone"
    assert repr(ws) == "<ClientWebSocketResponse [closed, close_code=1000]>"


# -- sending -----------------------------------------------------------------------------


async def test_send_methods_send_one_message_each():
    ws, channel = make_ws()
    await ws.send_str("héllo")
    await ws.send_bytes(bytearray(b"\x00\x01"), compress=9)
    await ws.send_json({"a": [1, 2]})
    await ws.send_json({"a": 1}, dumps=lambda d: "custom")
    await ws.send_json_bytes([1], dumps=lambda d: b"[1]")
    await ws.send_frame(b"raw", WSMsgType.BINARY, compress=0)
    await ws.ping(b"p")
    await ws.pong()
    assert channel.sent_now() == [
        ("héllo".encode(), WSMsgType.TEXT, None),
        (b"\x00\x01", WSMsgType.BINARY, 9),
        (b'{"a": [1, 2]}', WSMsgType.TEXT, None),
        (b"custom", WSMsgType.TEXT, None),
        (b"[1]", WSMsgType.BINARY, None),
        (b"raw", WSMsgType.BINARY, 0),
        (b"p", WSMsgType.PING, None),
        (b"", WSMsgType.PONG, None),
    ]


async def test_send_type_errors_send_nothing():
    ws, channel = make_ws()
    with pytest.raises(TypeError, match="data argument must be str"):
        await ws.send_str(b"s")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="data argument must be byte-ish"):
        await ws.send_bytes("b")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await ws.send_json(set())
    assert channel.sent_now() == []


async def test_send_after_close_is_a_connection_reset():
    ws, channel = make_ws()
    await ws.close()
    channel.sent_now()
    for send, args in (
        (ws.ping, ()),
        (ws.pong, ()),
        (ws.send_str, ("s",)),
        (ws.send_bytes, (b"b",)),
        (ws.send_json, ({},)),
        (ws.send_frame, (b"", WSMsgType.BINARY)),
    ):
        with pytest.raises(ClientConnectionResetError, match="Cannot write to closing"):
            await send(*args)
        with pytest.raises(ConnectionResetError):
            await send(*args)
    assert channel.sent_now() == []


async def test_while_closing_data_is_refused_but_control_frames_pass():
    # aiohttp's writer tests ``opcode & CLOSE`` once its CLOSE is out: PING/PONG pass.
    ws, channel = make_ws(FakeChannel(echo_close=False))
    closing = asyncio.create_task(ws.close())
    assert await channel.sent.get() == close_frame(1000)
    with pytest.raises(ClientConnectionResetError):
        await ws.send_str("late")
    await ws.ping(b"still")
    assert await channel.sent.get() == (b"still", WSMsgType.PING, None)
    channel.peer_close(1000)
    assert await closing is True


# -- the close handshake -----------------------------------------------------------------


async def test_close_sends_close_and_waits_for_the_peers():
    ws, channel = make_ws(FakeChannel(echo_close=False))
    closing = asyncio.create_task(ws.close(code=4000, message=b"bye"))
    assert await channel.sent.get() == close_frame(4000, b"bye")
    assert ws.closed and not closing.done()
    assert channel.closes == 0
    channel.peer(WSMsgType.TEXT, "skipped while closing")
    channel.peer_close(4001, "ok")
    assert await closing is True
    assert ws.close_code == 4001
    assert ws.exception() is None
    assert channel.closes == 1


async def test_close_is_idempotent():
    ws, channel = make_ws()
    assert await ws.close() is True
    assert await ws.close() is False
    assert channel.sent_now() == [close_frame(1000)]
    assert (await ws.receive()).type is WSMsgType.CLOSED


async def test_close_message_may_be_str():
    ws, channel = make_ws()
    await ws.close(code=WSCloseCode.GOING_AWAY, message="été")  # type: ignore[arg-type]
    assert channel.sent_now() == [close_frame(1001, "été".encode())]


@pytest.mark.parametrize("ws_close", [0.01, 0])  # 0: at once, as aiohttp's timeout(0)
async def test_close_times_out_without_the_peers_close(ws_close):
    ws, channel = make_ws(
        FakeChannel(echo_close=False), timeout=ClientWSTimeout(ws_close=ws_close)
    )
    assert await ws.close() is True
    assert ws.closed
    assert ws.close_code == WSCloseCode.ABNORMAL_CLOSURE
    assert isinstance(ws.exception(), asyncio.TimeoutError)
    assert channel.closes == 1


async def test_close_when_sending_close_fails():
    ws, channel = make_ws()
    channel.send_error = exc = ValueError("write failed")
    assert await ws.close() is True
    assert ws.closed and ws.exception() is exc
    assert ws.close_code == WSCloseCode.ABNORMAL_CLOSURE
    assert channel.closes == 1


async def test_close_cancelled_drops_the_connection_and_propagates():
    ws, channel = make_ws(FakeChannel(echo_close=False))
    closing = asyncio.create_task(ws.close())
    await channel.sent.get()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert ws.closed and ws.exception() is None
    assert ws.close_code == WSCloseCode.ABNORMAL_CLOSURE
    assert channel.closes == 1


async def test_close_reads_through_an_error_after_its_close():
    ws, channel = make_ws(FakeChannel(echo_close=False))
    closing = asyncio.create_task(ws.close())
    await channel.sent.get()
    channel.incoming.set_exception(exc := ServerDisconnectedError())
    assert await closing is True
    assert ws.exception() is exc and ws.close_code == WSCloseCode.ABNORMAL_CLOSURE


async def test_peer_close_with_autoclose_answers_it_at_once():
    ws, channel = make_ws()
    channel.peer_close(4001, "server going")
    msg = await ws.receive()
    assert msg == (WSMsgType.CLOSE, 4001, "server going")
    assert ws.closed and ws.close_code == 4001
    assert channel.sent_now() == [close_frame(1000)]
    assert channel.closes == 1
    assert (await ws.receive()).type is WSMsgType.CLOSED


async def test_peer_close_without_autoclose_leaves_the_answer_to_the_caller():
    ws, channel = make_ws(autoclose=False)
    channel.peer(WSMsgType.TEXT, "test")
    channel.peer_close(1000, "")
    assert (await ws.receive()).data == "test"
    msg = await ws.receive()
    assert msg == (WSMsgType.CLOSE, 1000, "")
    assert not ws.closed and channel.sent_now() == []
    assert await ws.close() is True
    assert ws.closed and ws.close_code == 1000
    assert channel.sent_now() == [close_frame(1000)]


async def test_receive_after_peer_close_without_autoclose_closes():
    ws, channel = make_ws(autoclose=False)
    channel.peer_close(1001)
    assert (await ws.receive()).type is WSMsgType.CLOSE
    assert (await ws.receive()).type is WSMsgType.CLOSED
    assert ws.closed and ws.close_code == 1001
    assert channel.sent_now() == [close_frame(1000)]


async def test_close_from_another_task_wakes_the_receiver_with_closing():
    ws, channel = make_ws()
    receiving = asyncio.create_task(ws.receive())
    await reader_waiting(ws)
    assert await ws.close() is True
    assert (await receiving).type is WSMsgType.CLOSING
    assert ws.closed and ws.close_code == 1000
    assert channel.sent_now() == [close_frame(1000)]
    assert (await ws.receive()).type is WSMsgType.CLOSED


async def test_concurrent_closes_send_one_close():
    ws, channel = make_ws()
    first, second = asyncio.create_task(ws.close()), asyncio.create_task(ws.close())
    assert (await ws.receive()).type is WSMsgType.CLOSED
    assert sorted([await first, await second]) == [False, True]
    assert channel.sent_now() == [close_frame(1000)]


async def test_async_with_closes():
    ws, channel = make_ws()
    async with ws as entered:
        assert entered is ws
    assert ws.closed and channel.sent_now() == [close_frame(1000)]


# -- receiving ---------------------------------------------------------------------------


async def test_receive_returns_data_messages_in_order():
    ws, channel = make_ws()
    channel.peer(WSMsgType.TEXT, "one")
    channel.peer(WSMsgType.BINARY, b"two")
    channel.peer(WSMsgType.TEXT, '{"three": 3}')
    assert await ws.receive() == (WSMsgType.TEXT, "one", None)
    assert await ws.receive_bytes() == b"two"
    assert await ws.receive_json() == {"three": 3}


async def test_receive_str_json_bytes_refuse_other_types():
    ws, channel = make_ws()
    channel.peer(WSMsgType.BINARY, b"x")
    with pytest.raises(WSMessageTypeError, match=r"Received message 2:b'x' is not WSMsgType.TEXT"):
        await ws.receive_str()
    channel.peer(WSMsgType.TEXT, "x")
    with pytest.raises(WSMessageTypeError, match="is not WSMsgType.BINARY"):
        await ws.receive_bytes()
    channel.peer_close()
    with pytest.raises(WSMessageTypeError, match="Received message 8:1000 is not WSMsgType.TEXT"):
        await ws.receive_json()


async def test_receive_json_with_custom_loads():
    ws, channel = make_ws()
    channel.peer(WSMsgType.TEXT, "[1]")
    assert await ws.receive_json(loads=lambda s: ("loaded", s)) == ("loaded", "[1]")


async def test_concurrent_receive_is_refused():
    ws, channel = make_ws()
    first = asyncio.create_task(ws.receive())
    await reader_waiting(ws)
    with pytest.raises(RuntimeError, match="Concurrent call to receive"):
        await ws.receive()
    channel.peer(WSMsgType.TEXT, "for the first")
    assert (await first).data == "for the first"


async def test_autoping_answers_pings_and_swallows_pongs():
    ws, channel = make_ws()
    channel.peer(WSMsgType.PING, b"are you there")
    channel.peer(WSMsgType.PONG, b"")
    channel.peer(WSMsgType.TEXT, "after")
    assert (await ws.receive()).data == "after"
    assert channel.sent_now() == [(b"are you there", WSMsgType.PONG, None)]


async def test_without_autoping_pings_and_pongs_are_returned():
    ws, channel = make_ws(autoping=False)
    channel.peer(WSMsgType.PONG, b"")
    channel.peer(WSMsgType.PING, b"x")
    assert (await ws.receive()).type is WSMsgType.PONG
    assert await ws.receive() == (WSMsgType.PING, b"x", None)
    assert channel.sent_now() == []


async def test_receive_timeout_argument():
    ws, channel = make_ws(timeout=ClientWSTimeout(ws_receive=30))
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=0.01)
    assert ws.close_code == WSCloseCode.ABNORMAL_CLOSURE
    assert not ws.closed
    channel.peer(WSMsgType.TEXT, "late")
    assert (await ws.receive()).data == "late"


async def test_ws_receive_timeout_bounds_each_receive():
    ws, channel = make_ws(timeout=ClientWSTimeout(ws_receive=0.01))
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive_str()


async def test_receive_cancelled_can_receive_again():
    ws, channel = make_ws()
    receiving = asyncio.create_task(ws.receive())
    await reader_waiting(ws)
    receiving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receiving
    assert ws.close_code == WSCloseCode.ABNORMAL_CLOSURE
    channel.peer(WSMsgType.TEXT, "next")
    assert (await ws.receive()).data == "next"


async def test_protocol_error_closes_with_its_code():
    ws, channel = make_ws()
    exc = WebSocketProtocolError(
        WSCloseCode.PROTOCOL_ERROR, "Received frame with non-zero reserved bits"
    )
    channel.incoming.set_exception(exc)
    msg = await ws.receive()
    assert msg == (WSMsgType.ERROR, exc, None)
    assert isinstance(msg.data, WebSocketError)
    assert str(msg.data) == "Received frame with non-zero reserved bits"
    assert ws.close_code == WSCloseCode.PROTOCOL_ERROR
    assert ws.closed and ws.exception() is None
    assert channel.sent_now() == [close_frame(1002)]


async def test_lost_connection_is_closed_without_a_close():
    ws, channel = make_ws()
    channel.incoming.set_exception(ServerDisconnectedError())
    assert (await ws.receive()).type is WSMsgType.CLOSED
    assert ws.closed and ws.close_code == WSCloseCode.ABNORMAL_CLOSURE
    assert channel.sent_now() == []


async def test_end_of_stream_closes_normally():
    ws, channel = make_ws()
    channel.incoming.feed_eof()
    assert (await ws.receive()).type is WSMsgType.CLOSED
    assert ws.closed and ws.close_code == WSCloseCode.OK
    assert channel.sent_now() == [close_frame(1000)]
    assert channel.closes == 1


async def test_other_reader_error_is_the_exception():
    ws, channel = make_ws()
    channel.incoming.set_exception(exc := ValueError("bad"))
    msg = await ws.receive()
    assert msg == (WSMsgType.ERROR, exc, None)
    assert ws.exception() is exc
    assert ws.closed and ws.close_code == WSCloseCode.ABNORMAL_CLOSURE
    assert channel.sent_now() == [close_frame(1000)]  # as aiohttp: close()'s default code


async def test_messages_before_an_error_are_delivered_first():
    ws, channel = make_ws()
    channel.peer(WSMsgType.TEXT, "before")
    channel.incoming.set_exception(ServerDisconnectedError())
    assert (await ws.receive()).data == "before"
    assert (await ws.receive()).type is WSMsgType.CLOSED


@pytest.mark.parametrize(
    "end",
    [
        lambda ch: ch.peer_close(1000),
        lambda ch: ch.incoming.set_exception(ServerDisconnectedError()),
        lambda ch: ch.incoming.feed_eof(),
    ],
    ids=["close", "lost", "eof"],
)
async def test_iteration_yields_data_and_ends_with_the_websocket(end):
    ws, channel = make_ws()
    channel.peer(WSMsgType.TEXT, "a")
    channel.peer(WSMsgType.BINARY, b"b")
    end(channel)
    assert [msg.data async for msg in ws] == ["a", b"b"]
    assert ws.closed


async def test_iteration_ends_on_closing():
    ws, channel = make_ws()
    seen = []

    async def iterate() -> None:
        async for msg in ws:
            seen.append(msg.data)

    iterating = asyncio.create_task(iterate())
    channel.peer(WSMsgType.TEXT, "a")
    await reader_waiting(ws)
    await ws.close()
    await iterating
    assert seen == ["a"]


# -- IncomingMessages --------------------------------------------------------------------


async def test_incoming_pauses_above_twice_its_limit_and_resumes_below():
    channel = FakeChannel(limit=10)
    incoming = channel.incoming
    incoming.feed_data(WSMessage(WSMsgType.BINARY, b"x" * 20, None), 20)
    assert channel.pauses == []
    incoming.feed_data(WSMessage(WSMsgType.BINARY, b"y", None), 1)
    incoming.feed_data(WSMessage(WSMsgType.BINARY, b"z", None), 1)
    assert channel.pauses == ["pause"]
    assert repr(incoming) == "<IncomingMessages [3 messages, 22 bytes | paused]>"
    assert (await incoming.read()).data == b"x" * 20
    assert channel.pauses == ["pause", "resume"]
    assert len(incoming) == 2


async def test_incoming_reader_waits_for_data_and_cancels_cleanly():
    incoming = FakeChannel().incoming
    reading = asyncio.create_task(incoming.read())
    await settle()
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    reading = asyncio.create_task(incoming.read())
    await settle()
    incoming.feed_data(WSMessage(WSMsgType.TEXT, "t", None), 1)
    assert (await reading).data == "t"


async def test_incoming_wakes_its_reader_with_the_exception():
    incoming = FakeChannel().incoming
    reading = asyncio.create_task(incoming.read())
    await settle()
    incoming.set_exception(exc := ServerDisconnectedError())
    with pytest.raises(ServerDisconnectedError):
        await reading
    assert incoming.exception() is exc and incoming.is_eof()


# -- heartbeat ---------------------------------------------------------------------------


async def test_heartbeat_pings_when_no_data_arrived_for_heartbeat_seconds():
    clock = ClockLoop()
    ws, channel = make_ws(loop=clock, heartbeat=1.0)
    await clock.advance(0.999)
    assert channel.sent_now() == []
    await clock.advance(0.001)
    assert channel.sent_now() == [(b"", WSMsgType.PING, None)]


async def test_heartbeat_closes_with_1006_when_no_pong_within_half_of_it():
    clock = ClockLoop()
    ws, channel = make_ws(loop=clock, heartbeat=1.0)
    receiving = asyncio.create_task(ws.receive())
    await clock.advance(1.0)
    assert channel.sent_now() == [(b"", WSMsgType.PING, None)]
    await clock.advance(0.49)
    assert not ws.closed
    await clock.advance(0.01)
    assert receiving.done()
    msg = receiving.result()
    assert msg.type is WSMsgType.ERROR
    assert isinstance(msg.data, ServerTimeoutError)
    assert str(msg.data) == "No PONG received after 0.5 seconds"
    assert ws.exception() is msg.data
    assert ws.closed and ws.close_code is WSCloseCode.ABNORMAL_CLOSURE
    assert channel.closes == 1
    assert (await ws.receive()).type is WSMsgType.CLOSED
    assert clock.pending() == []


async def test_heartbeat_timeout_without_a_receiver_closes_quietly():
    clock = ClockLoop()
    ws, channel = make_ws(loop=clock, heartbeat=1.0)
    await clock.advance(1.0)
    await clock.advance(0.5)
    assert ws.closed and ws.close_code is WSCloseCode.ABNORMAL_CLOSURE
    assert isinstance(ws.exception(), ServerTimeoutError)
    assert (await ws.receive()).type is WSMsgType.CLOSED
    with pytest.raises(ClientConnectionResetError):
        await ws.send_str("after")


async def test_heartbeat_pong_keeps_the_websocket_open():
    clock = ClockLoop()
    ws, channel = make_ws(loop=clock, heartbeat=1.0)
    await clock.advance(1.0)
    for _ in range(3):
        assert channel.sent_now() == [(b"", WSMsgType.PING, None)]
        channel.peer(WSMsgType.PONG, b"")
        await clock.advance(0.5)
        assert not ws.closed and channel.sent_now() == []
        await clock.advance(0.5)  # heartbeat after the pong: the next ping
    assert ws.close_code is None


async def test_heartbeat_any_data_restarts_it():
    clock = ClockLoop()
    ws, channel = make_ws(loop=clock, heartbeat=1.0)
    await clock.advance(0.9)
    channel.peer(WSMsgType.TEXT, "a")
    channel.incoming.data_received()  # part of a large frame
    await clock.advance(0.9)
    assert channel.sent_now() == []  # the first timer fired early and moved
    await clock.advance(0.1)
    assert channel.sent_now() == [(b"", WSMsgType.PING, None)]


async def test_heartbeat_data_after_the_ping_counts_as_the_pong():
    clock = ClockLoop()
    ws, channel = make_ws(loop=clock, heartbeat=1.0)
    await clock.advance(1.0)
    channel.peer(WSMsgType.TEXT, "not a pong, but the peer is alive")
    await clock.advance(0.5)
    assert not ws.closed


async def test_heartbeat_above_the_ceil_threshold_is_rounded_up():
    clock = ClockLoop()  # now = 1000.25
    ws, channel = make_ws(loop=clock, heartbeat=10.0)
    await clock.advance(10.5)
    assert channel.sent_now() == []
    await clock.advance(0.25)  # ceil(1010.25) = 1011
    assert channel.sent_now() == [(b"", WSMsgType.PING, None)]


async def test_heartbeat_stops_when_the_websocket_closes():
    clock = ClockLoop()
    ws, channel = make_ws(loop=clock, heartbeat=1.0)
    await ws.close()
    channel.sent_now()
    channel.peer(WSMsgType.TEXT, "after close")
    await clock.advance(100)
    assert channel.sent_now() == []
    assert clock.pending() == []


async def test_heartbeat_stops_when_the_peer_closes():
    clock = ClockLoop()
    ws, channel = make_ws(loop=clock, heartbeat=1.0, autoclose=False)
    channel.peer_close(1000)
    assert (await ws.receive()).type is WSMsgType.CLOSE
    await clock.advance(100)
    assert channel.sent_now() == []
    assert not ws.closed  # closing, not timed out
    assert ws.close_code == 1000


async def test_heartbeat_ping_that_fails_closes_with_its_error():
    clock = ClockLoop()
    ws, channel = make_ws(loop=clock, heartbeat=1.0)
    channel.send_error = exc = ClientConnectionResetError("Cannot write to closing transport")
    await clock.advance(1.0)
    assert ws.closed and ws.exception() is exc
    assert ws.close_code is WSCloseCode.ABNORMAL_CLOSURE
    assert channel.closes == 1


async def test_close_cancels_a_ping_in_flight():
    clock = ClockLoop()
    ws, channel = make_ws(loop=clock, heartbeat=1.0)
    channel.blocked[WSMsgType.PING] = clock.create_future()
    await clock.advance(1.0)
    assert ws._ping_task is not None
    ping = ws._ping_task
    assert await ws.close() is True
    await settle()
    assert ping.cancelled()
    assert ws.exception() is None and ws.close_code == 1000


async def test_no_heartbeat_no_timers():
    clock = ClockLoop()
    ws, channel = make_ws(loop=clock)
    channel.peer(WSMsgType.TEXT, "a")
    await clock.advance(1000)
    assert clock.pending() == [] and channel.sent_now() == []


# -- the errors --------------------------------------------------------------------------


def test_websocket_errors_have_one_home_and_aiohttps_shape():
    import worker_client.exceptions as exceptions
    import worker_client.websocket as websocket

    assert exceptions.WebSocketError is websocket.WebSocketError is WebSocketError
    assert issubclass(WebSocketProtocolError, WebSocketError)
    exc = WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, "Message size 2 exceeds limit 1")
    theirs = aiohttp.WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, "Message size 2 exceeds limit 1")
    assert (exc.code, exc.args, str(exc)) == (theirs.code, theirs.args, str(theirs))
    assert pickle.loads(pickle.dumps(exc)).code == 1009
    assert [c.__name__ for c in WebSocketError.__mro__] == [
        c.__name__ for c in aiohttp.WebSocketError.__mro__
    ]
    assert [c.__name__ for c in exceptions.WSServerHandshakeError.__mro__] == [
        c.__name__ for c in aiohttp.WSServerHandshakeError.__mro__
    ]
