"""A WebSocket's channel over an upgraded stream: the codec runs here, in the worker.

``session.ws_connect`` sends the upgrade as a request whose body is an ``Outgoing`` (the
frame bytes the WebSocket writes, an async iterator the transport pumps as Data within
the stream's credit) and, once the 101 is in, puts a ``StreamChannel`` in the place of
the stream's body reader: the handle then feeds it the tunnel's bytes (the origin's
frames) as they arrive, in the transport's callback, and it parses them into messages
for the ``ClientWebSocketResponse`` with no task of its own. The broker (or, embedded,
the engine in this process) relays bytes and knows nothing of frames but their headers.

Bounds:
- outgoing: ``Outgoing`` holds what the WebSocket wrote and the transport has not taken
  yet; ``send`` waits (``drain``) while that is over ``OUTGOING_LIMIT`` bytes, so at most
  that plus one message is held here, and the transport's credit (``STREAM_WINDOW``)
  bounds what is in flight beyond.
- incoming: the messages not yet received are ``IncomingMessages``' (it pauses its
  channel above ``2 * 2**16`` bytes); while paused, the bytes fed are parsed but not
  acknowledged, so the broker stops after ``STREAM_WINDOW`` unacknowledged bytes and
  pauses the origin. So at most ``STREAM_WINDOW`` plus the reader's one message in the
  making (``max_msg_size``, refused from the frame's header before it is buffered) wait
  here beyond the messages' own limit.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

from shared.websocket import (
    WebSocketError,
    WebSocketProtocolError,
    WebSocketReader,
    WebSocketWriter,
    WSCloseCode,
    WSMsgType,
)

from .exceptions import ClientConnectionResetError
from .websocket import IncomingMessages

if TYPE_CHECKING:
    from .handle import StreamHandle

__all__ = ["OUTGOING_LIMIT", "CodecOptions", "Outgoing", "SocketChannel", "StreamChannel"]

OUTGOING_LIMIT = 2**16
"""Bytes a WebSocket may have written that the transport has not taken, before ``send``
waits (aiohttp's writer waits on the socket's high-water mark, 64 KiB)."""


class Outgoing:
    """The upgrade request's body: the frame bytes written, until ``end``.

    One consumer (the transport's pump) iterates it; each step takes everything written
    so far, joined. A second consumer (the upgrade sent again, by a middleware or for a
    redirect) takes its place, and the first one's iteration ends."""

    __slots__ = ("_chunks", "_size", "_ended", "_error", "_waiter", "_drained", "handle")

    def __init__(self) -> None:
        self.handle: StreamHandle | None = None  # the upgrade's stream, once it is sent
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None  # the consumer, for more
        self._drained: asyncio.Future[None] | None = None  # a writer, for room

    def __repr__(self) -> str:
        state = "ended" if self._ended else "open"
        return f"<Outgoing [{len(self._chunks)} chunks, {self._size} bytes | {state}]>"

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        if self._ended:
            raise ClientConnectionResetError("Cannot write to closing transport")
        self._chunks.append(data)
        self._size += len(data)
        _wake(self._waiter)
        self._waiter = None

    async def drain(self) -> None:
        """Wait until what is held is at most ``OUTGOING_LIMIT`` bytes (or it ended)."""
        while self._size > OUTGOING_LIMIT and not self._ended:
            if self._drained is None or self._drained.done():
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)
        if self._error is not None:
            raise ClientConnectionResetError("Cannot write to closing transport")

    def end(self, error: BaseException | None = None) -> None:
        """No more bytes: the consumer gets what is held, then the end (``error``: what
        a writer waiting for room is told; the held bytes are dropped)."""
        if self._ended:
            return
        self._ended = True
        self._error = error
        if error is not None:
            self._chunks.clear()
            self._size = 0
        _wake(self._waiter)
        self._waiter = None
        _wake(self._drained)
        self._drained = None

    def __aiter__(self) -> Outgoing:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._ended:
                raise StopAsyncIteration
            older = self._waiter
            if older is not None and not older.done():
                # A newer stream took over (a middleware sent the upgrade again): the
                # older one's upload ends; nothing was taken from it before a 101.
                older.set_exception(StopAsyncIteration())
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        _wake(self._drained)
        self._drained = None
        return data


class CodecOptions(TypedDict):
    """A channel's codec settings (``_Channel``'s keywords)."""

    max_msg_size: int
    compress: int
    notakeover: bool
    decode_text: bool


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class _Channel:
    """What both channels share: the codec (our writer masks, our reader expects
    unmasked frames) and the incoming messages."""

    def __init__(
        self,
        *,
        max_msg_size: int,
        compress: int,
        notakeover: bool,
        decode_text: bool,
    ) -> None:
        self._reader = WebSocketReader(
            max_msg_size=max_msg_size, compress=bool(compress), decode_text=decode_text
        )
        self._writer = WebSocketWriter(compress=compress, notakeover=notakeover)
        self.incoming = IncomingMessages(self._pause, self._resume)
        self._closed = False
        self._ended = False  # the connection ended (the origin's EOF): nothing goes out
        self._close_sent = False

    def _frame(self, payload: bytes, opcode: WSMsgType, compress: int | None) -> bytes:
        if self._closed or self._ended:
            raise ClientConnectionResetError("Cannot write to closing transport")
        writer = self._writer
        if opcode < 8:
            # aiohttp's: an int compresses this message with its own context, else the
            # agreed context does when one was agreed
            how: bool | int = compress if compress else bool(writer.compress)
            return writer.frame(opcode, payload, mask=True, compress=how)
        if opcode == WSMsgType.CLOSE:
            self._close_sent = True
        return writer.frame(opcode, payload, mask=True)

    def feed_early(self, data: bytes | memoryview) -> None:
        """Bytes of the connection read before this channel took it (with the 101, or by
        the stream's first reader, which acknowledged them): parsed first."""
        self._parse(data)

    def _parse(self, data: bytes | memoryview) -> None:
        messages = self.incoming
        try:
            got = self._reader.feed(data)
        except WebSocketProtocolError as exc:
            for message in exc.messages:
                messages.feed_data(message, _size(message))
            # aiohttp's reader raises WebSocketError itself, not a subclass
            messages.set_exception(WebSocketError(exc.code, str(exc)))
            return
        if got:
            for message in got:
                messages.feed_data(message, _size(message))
        else:
            messages.data_received()

    def _pause(self) -> None:
        raise NotImplementedError

    def _resume(self) -> None:
        raise NotImplementedError


class StreamChannel(_Channel):
    """A ``MessageChannel`` on an upgraded stream (the broker relays the bytes): it
    takes the place of the stream's body reader (``StreamHandle.content``) and writes
    frames into its ``Outgoing``."""

    def __init__(
        self,
        handle: StreamHandle,
        outgoing: Outgoing,
        drop: Callable[[], None],
        *,
        max_msg_size: int,
        compress: int,
        notakeover: bool,
        decode_text: bool,
        extra: dict[str, Any],
    ) -> None:
        super().__init__(
            max_msg_size=max_msg_size,
            compress=compress,
            notakeover=notakeover,
            decode_text=decode_text,
        )
        self._handle = handle
        self._out = outgoing
        self._drop = drop
        self._extra = extra
        self._paused = False
        self._held = 0  # bytes parsed while paused: acknowledged on resume
        # what StreamHandle expects of its content
        self._on_consumed: Callable[[int], None] | None = handle._consumed
        self.total_compressed_bytes = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "paused" if self._paused else "open"
        return f"<StreamChannel stream {self._handle.id} [{state}]>"

    # -- MessageChannel ----------------------------------------------------------------

    async def send(self, payload: bytes, opcode: WSMsgType, compress: int | None = None) -> None:
        out = self._out
        out.write(self._frame(payload, opcode, compress))
        if out.size > OUTGOING_LIMIT:
            await out.drain()

    def close(self) -> None:
        """As aiohttp's ``transport.close()``: what was written still goes, then the
        connection closes. The ``Outgoing`` ends (the worker's End), on which the broker
        writes what it has and closes the upstream connection; the stream's end that
        follows releases the response. A stream that ended already is released now."""
        if self._closed:
            return
        self._closed = True
        if self._ended or self._handle.done:
            self._drop()
        else:
            self._out.end()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    # -- the stream's body reader, as StreamHandle feeds it ------------------------------

    def feed_data(self, data: bytes | memoryview) -> None:
        self._parse(data)
        if self._paused:
            self._held += len(data)
        elif self._on_consumed is not None:
            self._on_consumed(len(data))

    def claim_buffer(self) -> None:
        return None

    def claim_filled(self, size: int) -> None:  # never: claim_buffer gives no memory
        raise RuntimeError("a WebSocket stream has no claimed buffer")

    def feed_eof(self) -> None:
        self._ended = True  # as aiohttp's transport after the end: a write fails
        self.incoming.feed_eof()
        if self._closed:
            self._drop()

    def set_exception(self, exc: BaseException) -> None:
        self._ended = True
        self._out.end(exc)
        self.incoming.set_exception(exc)
        if self._closed:
            self._drop()

    def _pause(self) -> None:
        self._paused = True

    def _resume(self) -> None:
        self._paused = False
        held, self._held = self._held, 0
        if held and self._on_consumed is not None:
            self._on_consumed(held)


class SocketChannel(_Channel, asyncio.Protocol):
    """A ``MessageChannel`` that owns the upgraded connection: the protocol of its
    asyncio transport (embedded: the engine's connection, taken over after the 101;
    through a broker: a plain ``ws://`` socket the broker handed over). Frames are
    written straight to the transport; ``send`` waits while the transport is over its
    high-water mark, and reading pauses while the messages are over their limit.
    ``on_lost(exc)`` runs once, when the connection is gone (whoever lent it learns)."""

    def __init__(
        self,
        on_lost: Callable[[BaseException | None], None],
        *,
        max_msg_size: int,
        compress: int,
        notakeover: bool,
        decode_text: bool,
    ) -> None:
        super().__init__(
            max_msg_size=max_msg_size,
            compress=compress,
            notakeover=notakeover,
            decode_text=decode_text,
        )
        self._transport: asyncio.Transport | None = None
        self._on_lost: Callable[[BaseException | None], None] | None = on_lost
        self._drained: asyncio.Future[None] | None = None
        self._write_paused = False
        self._on_consumed: Callable[[int], None] | None = None  # as StreamHandle's content
        self.total_compressed_bytes = 0

    def __repr__(self) -> str:
        return f"<SocketChannel [{'closed' if self._closed else 'open'}]>"

    # -- MessageChannel ----------------------------------------------------------------

    async def send(self, payload: bytes, opcode: WSMsgType, compress: int | None = None) -> None:
        data = self._frame(payload, opcode, compress)
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ClientConnectionResetError("Cannot write to closing transport")
        transport.write(data)
        if self._write_paused:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)

    def close(self) -> None:
        """As aiohttp's ``response.close()``: the transport closes once it has written
        what it holds, and the connection's place in the pool is given back now (a
        peer that reads nothing would otherwise hold it until the socket gives up)."""
        if self._closed:
            return
        self._closed = True
        transport = self._transport
        if transport is not None:
            held = transport.get_write_buffer_size()  # (a closed TLS transport cannot say)
            transport.close()
            if held:
                self._lost(None)

    def _lost(self, exc: BaseException | None) -> None:
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost(exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    # -- the stream's body reader, as StreamHandle feeds it: the stream holds the
    # connection's place in the pool and carries no bytes; its end is the socket's ---

    def feed_data(self, data: bytes | memoryview) -> None:
        """Never sent on a stream whose socket was handed over: dropped."""

    def feed_eof(self) -> None:
        """The stream ended: the socket lives on until the WebSocket closes it."""

    def claim_buffer(self) -> None:
        return None

    def set_exception(self, exc: BaseException) -> None:
        """The stream failed or was given up (the broker went away, the session closed):
        the WebSocket ends with ``exc``, the peer gets a CLOSE with 1001 (our frames are
        written whole, so this one starts on a frame boundary) and the socket closes."""
        if self._closed:
            return
        self.incoming.set_exception(exc)
        transport = self._transport
        if transport is not None and not transport.is_closing() and not self._close_sent:
            self._close_sent = True
            transport.write(self._writer.close(WSCloseCode.GOING_AWAY, mask=True))
        self.close()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parse(data)

    def eof_received(self) -> bool:
        self._ended = True
        self.incoming.feed_eof()
        return False  # the transport closes itself

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        self.incoming.feed_eof()  # aiohttp's: a lost connection ends the messages
        self._write_paused = False
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_exception(ClientConnectionResetError("Cannot write to closing transport"))
            drained.exception()  # retrieved here: a sender may have gone
        self._lost(exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._drained)
        self._drained = None

    def _pause(self) -> None:
        if not self._closed and self._transport is not None:
            self._transport.pause_reading()

    def _resume(self) -> None:
        if not self._closed and self._transport is not None:
            self._transport.resume_reading()


def _size(message: Any) -> int:
    data = message.data
    return len(data) if isinstance(data, (bytes, bytearray, str)) else 0
