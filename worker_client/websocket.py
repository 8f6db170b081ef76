"""The client side of a WebSocket: aiohttp 3.14's ``ClientWebSocketResponse`` over a channel.

``ClientWebSocketResponse`` holds what aiohttp's holds (close handshake, autoclose,
autoping, heartbeat, receive timeout, the CLOSING/CLOSED/ERROR messages) and nothing of
the transport: it talks to a ``MessageChannel``, which sends one message (payload and
opcode; it frames, masks and compresses, or has the broker do it) and feeds what arrives
into an ``IncomingMessages`` queue. The transport that builds a channel is not here.

How the close handshake goes (as aiohttp's): ``close()`` sends CLOSE, then reads until
the peer's CLOSE (at most ``ClientWSTimeout.ws_close``) and drops the channel. A
``close()`` from another task while a ``receive()`` waits first wakes that receive with
a CLOSING message and waits for it to return. A CLOSE from the peer ends ``receive()``
with that CLOSE (answered at once under ``autoclose``); after that every ``receive()``
returns CLOSED.

Heartbeat: ``heartbeat`` seconds after the last data arrived a PING goes out; no data
(a PONG or anything else) within ``heartbeat / 2`` more closes the WebSocket with 1006
and a ``ServerTimeoutError``, delivered as an ERROR message to a waiting ``receive()``.
Data that arrives resets the timer once per loop iteration, however many chunks came.

Bounds: ``IncomingMessages`` pauses its channel once it holds more than ``2 * limit``
bytes of payload (aiohttp's ``2 * 2**16``) and resumes it when reading brings it below;
beyond the line it holds only what the channel had under way when paused (one message,
at most the channel's ``max_msg_size``, for a channel that pauses between messages).
Waits: ``close()`` waits at most ``ws_close`` for the peer's CLOSE, ``receive()`` at
most ``ws_receive`` or its ``timeout``; with neither (``DEFAULT_WS_CLIENT_TIMEOUT``:
``ws_receive=None, ws_close=10.0``, aiohttp's), a receive waits for the peer, and the
heartbeat is what notices a peer that went silent.

The names join ``worker_client.__all__`` with ``ws_connect`` (the exports test lists
them as not built yet until then).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import struct
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from shared.websocket import WSCloseCode, WSMessage, WSMsgType

from .exceptions import (
    ClientConnectionResetError,
    ClientError,
    ServerTimeoutError,
    WebSocketError,
    WSMessageTypeError,
    WSServerHandshakeError,
)
from .transport import _within

# aiohttp's: whether TEXT messages come decoded to str (ws_connect(decode_text=)).
_DecodeText = TypeVar("_DecodeText", bound=bool, covariant=True)

__all__ = [
    "DEFAULT_WS_CLIENT_TIMEOUT",
    "ClientWSTimeout",
    "ClientWebSocketResponse",
    "IncomingMessages",
    "MessageChannel",
    "WSCloseCode",
    "WSMessage",
    "WSMsgType",
    "WSServerHandshakeError",
    "WebSocketError",
]

WS_CLOSED_MESSAGE = WSMessage(WSMsgType.CLOSED, None, None)
WS_CLOSING_MESSAGE = WSMessage(WSMsgType.CLOSING, None, None)
# What receive() handles itself rather than returning at once.
_INTERNAL_RECEIVE_TYPES = frozenset(
    (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.PING, WSMsgType.PONG)
)
_END_OF_ITERATION = frozenset((WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED))


@dataclasses.dataclass(frozen=True, slots=True)
class ClientWSTimeout:
    """A WebSocket's timeouts, as aiohttp's: ``ws_receive`` bounds each ``receive()``
    (None: no bound), ``ws_close`` the wait for the peer's CLOSE in ``close()``."""

    ws_receive: float | None = None
    ws_close: float | None = None

    def __post_init__(self) -> None:
        for name in ("ws_receive", "ws_close"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(
                    f"ClientWSTimeout.{name} must be None or a number >= 0, got {value!r}"
                )


DEFAULT_WS_CLIENT_TIMEOUT = ClientWSTimeout(ws_receive=None, ws_close=10.0)


class _EofStream(Exception):
    """The channel ended without a CLOSE (aiohttp's ``EofStream``)."""


class IncomingMessages:
    """The messages a channel received, in order, until the WebSocket reads them.

    The channel calls ``feed_data(message, size)`` per message, ``feed_eof()`` at the
    end, ``set_exception(exc)`` on a failure (a ``WebSocketError`` for a protocol
    error, a ``ClientError`` for a lost connection); above ``2 * limit`` bytes buffered
    it gets ``pause_reading()``, below again ``resume_reading()``.
    """

    def __init__(
        self,
        pause_reading: Callable[[], None],
        resume_reading: Callable[[], None],
        limit: int = 2**16,
    ) -> None:
        self._pause_reading = pause_reading
        self._resume_reading = resume_reading
        self._limit = limit * 2
        self._size = 0
        self._paused = False
        self._eof = False
        self._exception: BaseException | None = None
        self._buffer: deque[tuple[WSMessage, int]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.on_data: Callable[[], None] | None = None

    def __repr__(self) -> str:
        state = "eof" if self._eof else "paused" if self._paused else "open"
        return f"<IncomingMessages [{len(self._buffer)} messages, {self._size} bytes | {state}]>"

    def __len__(self) -> int:
        return len(self._buffer)

    def is_eof(self) -> bool:
        return self._eof

    def exception(self) -> BaseException | None:
        return self._exception

    def data_received(self) -> None:
        """Bytes arrived (a message may not be complete yet): the heartbeat restarts."""
        if self.on_data is not None:
            self.on_data()

    def feed_data(self, message: WSMessage, size: int) -> None:
        self._size += size
        self._buffer.append((message, size))
        self._release_waiter()
        self.data_received()
        if self._size > self._limit and not self._paused:
            self._paused = True
            self._pause_reading()

    def feed_eof(self) -> None:
        self._eof = True
        self._release_waiter()
        self._exception = None

    def set_exception(self, exc: BaseException) -> None:
        self._eof = True
        self._exception = exc
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def read(self) -> WSMessage:
        """The next message; the exception set, or ``_EofStream``, once none is left."""
        if not self._buffer and not self._eof:
            assert self._waiter is None, "one reader at a time"
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            except (asyncio.CancelledError, asyncio.TimeoutError):
                self._waiter = None
                raise
        if self._buffer:
            message, size = self._buffer.popleft()
            self._size -= size
            if self._size < self._limit and self._paused:
                self._paused = False
                self._resume_reading()
            return message
        if self._exception is not None:
            raise self._exception
        raise _EofStream

    def _release_waiter(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class MessageChannel(Protocol):
    """What a ``ClientWebSocketResponse`` needs from its transport."""

    incoming: IncomingMessages

    async def send(self, payload: bytes, opcode: WSMsgType, compress: int | None = None) -> None:
        """Send one message (a CLOSE's payload is its code and reason); raise
        ``ClientConnectionResetError`` if the connection is gone."""

    def close(self) -> None:
        """Drop the connection now (aiohttp's ``response.close()``); idempotent."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's ``get_extra_info``."""


def _timeout_when(now: float, timeout: float, ceil_threshold: float) -> float:
    when = now + timeout
    return math.ceil(when) if timeout > ceil_threshold else when


class ClientWebSocketResponse(Generic[_DecodeText]):
    """A client WebSocket, as aiohttp's (``session.ws_connect`` returns one)."""

    def __init__(
        self,
        channel: MessageChannel,
        protocol: str | None,
        timeout: ClientWSTimeout,
        autoclose: bool,
        autoping: bool,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        heartbeat: float | None = None,
        compress: int = 0,
        client_notakeover: bool = False,
        timeout_ceil_threshold: float = 5,
    ) -> None:
        self._channel = channel
        self._reader = channel.incoming
        self._reader.on_data = self._on_data_received
        self._protocol = protocol
        self._timeout = timeout
        self._autoclose = autoclose
        self._autoping = autoping
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._compress = compress
        self._client_notakeover = client_notakeover
        self._ceil_threshold = timeout_ceil_threshold
        self._closed = False
        self._closing = False
        self._close_code: int | None = None
        self._exception: BaseException | None = None
        self._waiting = False
        self._close_wait: asyncio.Future[None] | None = None
        # aiohttp's writer: after our CLOSE only control frames; after the drop nothing.
        self._close_sent = False
        self._dropped = False
        self._heartbeat = heartbeat
        self._pong_heartbeat = heartbeat / 2.0 if heartbeat is not None else 0.0
        self._heartbeat_when = 0.0
        self._heartbeat_cb: asyncio.TimerHandle | None = None
        self._pong_response_cb: asyncio.TimerHandle | None = None
        self._need_heartbeat_reset = False
        self._heartbeat_reset_handle: asyncio.Handle | None = None
        self._ping_task: asyncio.Task[None] | None = None
        self._reset_heartbeat()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "closing" if self._closing else "open"
        return f"<ClientWebSocketResponse [{state}, close_code={self._close_code}]>"

    # -- heartbeat -------------------------------------------------------------------

    def _cancel_heartbeat(self) -> None:
        self._cancel_pong_response_cb()
        if self._heartbeat_reset_handle is not None:
            self._heartbeat_reset_handle.cancel()
            self._heartbeat_reset_handle = None
        self._need_heartbeat_reset = False
        if self._heartbeat_cb is not None:
            self._heartbeat_cb.cancel()
            self._heartbeat_cb = None
        if self._ping_task is not None:
            self._ping_task.cancel()
            self._ping_task = None

    def _cancel_pong_response_cb(self) -> None:
        if self._pong_response_cb is not None:
            self._pong_response_cb.cancel()
            self._pong_response_cb = None

    def _on_data_received(self) -> None:
        # Also reached by our own CLOSING/ERROR messages and by data after the close
        # began: those must not restart a heartbeat that was cancelled.
        if self._heartbeat is None or self._need_heartbeat_reset or self._closing or self._closed:
            return
        self._need_heartbeat_reset = True
        self._heartbeat_reset_handle = self._loop.call_soon(self._flush_heartbeat_reset)

    def _flush_heartbeat_reset(self) -> None:
        self._heartbeat_reset_handle = None
        if not self._need_heartbeat_reset:
            return
        self._reset_heartbeat()
        self._need_heartbeat_reset = False

    def _reset_heartbeat(self) -> None:
        if self._heartbeat is None:
            return
        self._cancel_pong_response_cb()
        when = _timeout_when(self._loop.time(), self._heartbeat, self._ceil_threshold)
        self._heartbeat_when = when
        if self._heartbeat_cb is None:
            # A timer that fires early reschedules itself (_send_heartbeat) rather than
            # being cancelled on each reset: fewer timer handles.
            self._heartbeat_cb = self._loop.call_at(when, self._send_heartbeat)

    def _send_heartbeat(self) -> None:
        self._heartbeat_cb = None
        if self._need_heartbeat_reset:
            return
        now = self._loop.time()
        if now < self._heartbeat_when:
            self._heartbeat_cb = self._loop.call_at(self._heartbeat_when, self._send_heartbeat)
            return
        when = _timeout_when(now, self._pong_heartbeat, self._ceil_threshold)
        self._cancel_pong_response_cb()
        self._pong_response_cb = self._loop.call_at(when, self._pong_not_received)
        task = self._loop.create_task(self._write(b"", WSMsgType.PING))
        self._ping_task = task
        task.add_done_callback(self._ping_task_done)

    def _ping_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._handle_ping_pong_exception(exc)
        if self._ping_task is task:
            self._ping_task = None

    def _pong_not_received(self) -> None:
        self._handle_ping_pong_exception(
            ServerTimeoutError(f"No PONG received after {self._pong_heartbeat} seconds")
        )

    def _handle_ping_pong_exception(self, exc: BaseException) -> None:
        if self._closed:
            return
        self._set_closed()
        self._close_code = WSCloseCode.ABNORMAL_CLOSURE
        self._exception = exc
        self._drop()
        if self._waiting and not self._closing:
            self._reader.feed_data(WSMessage(WSMsgType.ERROR, exc, None), 0)

    def _set_closed(self) -> None:
        self._closed = True
        self._cancel_heartbeat()

    def _set_closing(self) -> None:
        self._closing = True
        self._cancel_heartbeat()

    def _drop(self) -> None:
        self._dropped = True
        self._channel.close()

    # -- state -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def close_code(self) -> int | None:
        return self._close_code

    @property
    def protocol(self) -> str | None:
        return self._protocol

    @property
    def compress(self) -> int:
        return self._compress

    @property
    def client_notakeover(self) -> bool:
        return self._client_notakeover

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Extra info from the connection's transport (None once it is gone)."""
        if self._dropped:
            return default
        return self._channel.get_extra_info(name, default)

    def exception(self) -> BaseException | None:
        return self._exception

    # -- sending ---------------------------------------------------------------------

    async def _write(self, payload: bytes, opcode: WSMsgType, compress: int | None = None) -> None:
        # aiohttp's test is ``opcode & CLOSE``: PING and PONG pass it too.
        if self._dropped or (self._close_sent and not opcode & WSMsgType.CLOSE):
            raise ClientConnectionResetError("Cannot write to closing transport")
        await self._channel.send(payload, opcode, compress)

    async def _write_close(self, code: int, message: bytes | str) -> None:
        if isinstance(message, str):
            message = message.encode("utf-8")
        try:
            await self._write(struct.pack("!H", code) + message, WSMsgType.CLOSE)
        finally:
            self._close_sent = True

    async def ping(self, message: bytes = b"") -> None:
        await self._write(message, WSMsgType.PING)

    async def pong(self, message: bytes = b"") -> None:
        await self._write(message, WSMsgType.PONG)

    async def send_frame(
        self, message: bytes, opcode: WSMsgType, compress: int | None = None
    ) -> None:
        """Send a frame over the websocket with ``message`` as its payload."""
        await self._write(message, opcode, compress)

    async def send_str(self, data: str, compress: int | None = None) -> None:
        if not isinstance(data, str):
            raise TypeError(f"data argument must be str ({type(data)!r})")
        await self._write(data.encode("utf-8"), WSMsgType.TEXT, compress)

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be byte-ish ({type(data)!r})")
        await self._write(data, WSMsgType.BINARY, compress)

    async def send_json(
        self,
        data: Any,
        compress: int | None = None,
        *,
        dumps: Callable[[Any], str] = json.dumps,
    ) -> None:
        await self.send_str(dumps(data), compress=compress)

    async def send_json_bytes(
        self,
        data: Any,
        compress: int | None = None,
        *,
        dumps: Callable[[Any], bytes],
    ) -> None:
        """Send JSON from a bytes-returning encoder (orjson's) as a BINARY message."""
        await self.send_bytes(dumps(data), compress=compress)

    # -- closing ---------------------------------------------------------------------

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"") -> bool:
        """Close with ``code``; True if this call closed it, False if it was closed."""
        if self._waiting and not self._closing:
            # A receive() in another task returns CLOSING first.
            self._close_wait = self._loop.create_future()
            self._set_closing()
            self._reader.feed_data(WS_CLOSING_MESSAGE, 0)
            await self._close_wait
        if self._closed:
            return False
        self._set_closed()
        try:
            await self._write_close(code, message)
        except asyncio.CancelledError:
            self._abort()
            raise
        except Exception as exc:
            self._abort(exc)
            return True
        if self._close_code:
            self._drop()
            return True
        return await self._await_peer_close()

    async def _await_peer_close(self) -> bool:
        timeout = self._timeout.ws_close
        while True:
            try:
                read = self._reader.read()
                # (0 expires at once, as aiohttp's timeout(0); None waits for the peer)
                msg = await (_within(read, timeout) if timeout is not None else read)
            except asyncio.CancelledError:
                self._abort()
                raise
            except Exception as exc:
                self._abort(exc)
                return True
            if msg.type is WSMsgType.CLOSE:
                self._close_code = msg.data
                self._drop()
                return True

    def _abort(self, exc: BaseException | None = None) -> None:
        self._close_code = WSCloseCode.ABNORMAL_CLOSURE
        if exc is not None:
            self._exception = exc
        self._drop()

    # -- receiving -------------------------------------------------------------------

    async def receive(self, timeout: float | None = None) -> WSMessage:
        """The next message; PING/PONG are answered and skipped under ``autoping``."""
        receive_timeout = timeout or self._timeout.ws_receive
        while True:
            if self._waiting:
                raise RuntimeError("Concurrent call to receive() is not allowed")
            if self._closed:
                return WS_CLOSED_MESSAGE
            if self._closing:
                await self.close()
                return WS_CLOSED_MESSAGE
            try:
                msg = await self._read(receive_timeout)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                self._close_code = WSCloseCode.ABNORMAL_CLOSURE
                raise
            except _EofStream:
                self._close_code = WSCloseCode.OK
                await self.close()
                return WS_CLOSED_MESSAGE
            except ClientError as exc:
                # the connection was lost: as aiohttp, CLOSED with 1006; its error is
                # kept for exception() (ours: the broker went away, the session closed)
                self._exception = exc
                self._set_closed()
                self._close_code = WSCloseCode.ABNORMAL_CLOSURE
                return WS_CLOSED_MESSAGE
            except WebSocketError as exc:
                self._close_code = exc.code
                await self.close(code=exc.code)
                return WSMessage(WSMsgType.ERROR, exc, None)
            except Exception as exc:
                self._exception = exc
                self._set_closing()
                self._close_code = WSCloseCode.ABNORMAL_CLOSURE
                await self.close()
                return WSMessage(WSMsgType.ERROR, exc, None)

            if msg.type not in _INTERNAL_RECEIVE_TYPES:
                return msg
            if msg.type is WSMsgType.CLOSE:
                self._set_closing()
                self._close_code = msg.data
                if not self._closed and self._autoclose:
                    await self.close()
            elif msg.type is WSMsgType.CLOSING:
                self._set_closing()
            elif msg.type is WSMsgType.PING and self._autoping:
                await self.pong(msg.data)
                continue
            elif msg.type is WSMsgType.PONG and self._autoping:
                continue
            return msg

    async def _read(self, timeout: float | None) -> WSMessage:
        self._waiting = True
        try:
            read = self._reader.read()
            return await (_within(read, timeout) if timeout else read)
        finally:
            self._waiting = False
            if self._close_wait is not None and not self._close_wait.done():
                self._close_wait.set_result(None)

    async def receive_str(self, *, timeout: float | None = None) -> str:
        msg = await self.receive(timeout)
        if msg.type is not WSMsgType.TEXT:
            raise WSMessageTypeError(
                f"Received message {msg.type}:{msg.data!r} is not WSMsgType.TEXT"
            )
        return msg.data  # type: ignore[no-any-return]

    async def receive_bytes(self, *, timeout: float | None = None) -> bytes:
        msg = await self.receive(timeout)
        if msg.type is not WSMsgType.BINARY:
            raise WSMessageTypeError(
                f"Received message {msg.type}:{msg.data!r} is not WSMsgType.BINARY"
            )
        return msg.data  # type: ignore[no-any-return]

    async def receive_json(
        self,
        *,
        loads: Callable[[Any], Any] = json.loads,
        timeout: float | None = None,
    ) -> Any:
        data = await self.receive_str(timeout=timeout)
        return loads(data)

    def __aiter__(self) -> ClientWebSocketResponse[_DecodeText]:
        return self

    async def __anext__(self) -> WSMessage:
        msg = await self.receive()
        if msg.type in _END_OF_ITERATION:
            raise StopAsyncIteration
        return msg

    async def __aenter__(self) -> ClientWebSocketResponse[_DecodeText]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()
