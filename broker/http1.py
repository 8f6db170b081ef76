"""One HTTP/1.1 client connection: the asyncio side of an ``exchange.Exchange``.

The protocol is an ``asyncio.BufferedProtocol`` reading into one reused buffer (a fresh
buffer per read costs the default loop three extra syscalls). It feeds what it reads to
its ``Exchange``, which decides everything about HTTP/1.1, and carries out the events:
``begin`` puts a request on the wire (``send_body``/``end_body`` for a streamed body,
which wait while the socket's write buffer is over its high-water mark),
``continue_future`` (with ``expect_continue``) resolves True at ``100 Continue``, when
a whole body held back is written, or False if the final head came first;
``head_future`` resolves with the response head, body chunks go to the consumer given
to ``set_body_consumer``, and ``done_future``, made only if someone asks, resolves at
the end of the response. ``begin(upgrade=True)`` asks for an upgrade: after a 101 the
exchange is a tunnel (``tunnel``), whose bytes come as body until the connection closes,
and ``send_raw`` writes the other way (as ``send_body`` waits, with no framing).

Direct reads (issue 11): while the exchange counts a plain body (``Exchange.body_left``)
and the consumer was set with a ``DirectSink`` (a body with nothing to decode),
``get_buffer`` hands out the sink's ``body_buffer()`` (the stream's memory: the worker's
final buffer embedded, a shared-memory slot through a broker), cut to the bytes still
owed, so the socket is read straight into it and no read takes a byte past the body;
``buffer_updated`` then tells the exchange (``body_received``) and the sink
(``body_filled``). The last piece that fits in the connection's own buffer is read
there instead, with room to spare, so that bytes a server sends past its Content-Length
are seen in the same read and spoil the connection as they always did. When the sink
has no memory, the body is read into the connection's own buffer and delivered as
bytes. Window, pauses, ``sock_read`` and early bytes are the same either way.

The connection's own buffer is one per event loop, shared by its connections: a read
is handled entirely inside ``buffer_updated``, so nothing refers to it afterwards, and
1,000 idle connections hold no read buffer each.

Body bytes that arrive before there is a consumer (the engine is still sending the
request body, or has not yet taken the head) are kept for it, up to ``EARLY_LIMIT``:
past that, reading pauses until a consumer is set. So at most ``EARLY_LIMIT`` plus one
read (``_BUFSIZE``) is held per connection.

The read size, ``_BUFSIZE``, by measurement (``bench/download.py --bufsizes``: a 100 MiB
body from nginx on loopback, embedded, medians of 5 alternating rounds on a loaded
2-CPU VM). Read in chunks (``--read any``: the parser path, each read copied once;
aiohttp 1.38 GB/s in the same run): 64 KiB 0.93 GB/s, 128 KiB 1.35, 256 KiB 1.54,
512 KiB 1.26, 1 MiB 1.26 (past ``body.MAX_DATA`` each read is cut again). Before direct
reads, ``read()`` took the same path: 64 KiB 0.70, 256 KiB 0.89, 1 MiB 0.86 (aiohttp
0.89). A whole-body ``read()`` now reads straight into its result, whatever this size.
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from .exchange import (
    CONTINUE,
    DEFAULT_LIMITS,
    END,
    R_DONE,
    R_IDLE,
    S_EXPECTING,
    S_IDLE,
    ConnectionFailure,
    Exchange,
    HeadLimits,
    ResponseHead,
)
from .stream import BrokerStream

__all__ = ["HTTP1Connection", "DirectSink", "EARLY_LIMIT", "watch_silence"]

_BUFSIZE = 1 << 18
EARLY_LIMIT = 256 * 1024


class DirectSink(Protocol):
    """Where a plain body may be read straight into (``broker.body.ResponseBody``)."""

    def body_buffer(self) -> memoryview | None: ...
    def body_filled(self, size: int) -> None: ...


def _drop_body(data: bytes) -> None:
    pass


_buffers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, memoryview] = (
    weakref.WeakKeyDictionary()
)


def _read_buffer(loop: asyncio.AbstractEventLoop) -> memoryview:
    """The loop's one read buffer of ``_BUFSIZE`` bytes (see the module docstring)."""
    view = _buffers.get(loop)
    if view is None or len(view) != _BUFSIZE:
        view = _buffers[loop] = memoryview(bytearray(_BUFSIZE))
    return view


def _disconnected() -> ConnectionFailure:
    return ConnectionFailure("disconnected", "Server disconnected")

_MARK_TLS_CLOSED = sys.version_info < (3, 11)



def _where(key: Any) -> str:
    """A pool key for a repr (asyncio logs a protocol's): never its proxy's encoded spec,
    which holds the proxy's credentials and headers."""
    if not isinstance(key, tuple) or len(key) < 3:
        return repr(key)
    where = f"{key[0]}://{key[1]}:{key[2]}"
    return where + " via a proxy" if len(key) > 4 and key[4] else where


class HTTP1Connection(asyncio.BufferedProtocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._view = _read_buffer(loop)
        self.transport: asyncio.Transport | None = None
        self.exchange = Exchange()
        self.closed = False
        self.reused = False
        self.in_use = False  # leased from the pool (set by the connector)
        self.last_read = 0.0
        self.on_idle_lost: Callable[[HTTP1Connection], None] | None = None
        self.key: Any = None
        # The current exchange's futures and body. head_future is a plain attribute, read
        # once per request.
        self.head_future: asyncio.Future[ResponseHead] = loop.create_future()
        self._done_fut: asyncio.Future[None] | None = None
        self.continue_future: asyncio.Future[bool] | None = None
        self._on_body: Callable[[bytes], None] | None = None
        self._sink: DirectSink | None = None
        self._direct: memoryview | None = None  # the sink's memory handed to the read
        self._early: list[bytes] = []  # body bytes that came before a consumer was set
        self._early_size = 0
        self._write_paused = False
        self._drain_fut: asyncio.Future[None] | None = None
        self._read_paused = False
        self._lost: asyncio.Future[None] = loop.create_future()
        # The fast path's callback (``begin_fast``): told the head or the failure, once.
        self._on_response: Callable[[ResponseHead | ConnectionFailure], None] | None = None

    def __repr__(self) -> str:
        if self.closed:
            state = "closed"
        else:
            state = "idle" if self.exchange.recv is R_IDLE else "active"
        return f"<HTTP1Connection {_where(self.key)} {state}>"

    # -- asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        left = self.exchange.body_left
        if left is not None and self._sink is not None and left > len(self._view):
            view = self._sink.body_buffer()
            if view:
                if len(view) > left:
                    view = view[:left]
                self._direct = view
                return view
        self._direct = None
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.last_read = self._loop.time()
        if self._direct is not None:
            self._direct = None
            sink = self._sink
            assert sink is not None
            ended = self.exchange.body_received(nbytes)
            sink.body_filled(nbytes)
            if ended and (self._read_paused or self._done_fut is not None):
                self._finish()
            return
        head = None
        for event in self.exchange.receive_data(self._view[:nbytes]):
            kind = type(event)
            if kind is bytes:
                on_body = self._on_body
                if on_body is not None:
                    on_body(event)  # type: ignore[arg-type]
                else:  # kept for the consumer to come, up to EARLY_LIMIT
                    self._early.append(event)  # type: ignore[arg-type]
                    self._early_size += len(event)  # type: ignore[arg-type]
                    if self._early_size > EARLY_LIMIT:
                        self.pause_reading()
            elif kind is ResponseHead:
                if self._on_response is not None:
                    head = event  # told after this read: its body bytes are kept by then
                    continue
                fut = self.head_future
                if not fut.done():
                    fut.set_result(event)  # type: ignore[arg-type]
                cont = self.continue_future
                if cont is not None and not cont.done():
                    cont.set_result(False)  # a final answer first: no body
            elif event is END:
                if self._read_paused or self._done_fut is not None:
                    self._finish()
            elif event is CONTINUE:
                self._proceed()
            else:
                self._fail(event)  # type: ignore[arg-type]
                self.close()
        if head is not None:
            tell, self._on_response = self._on_response, None
            if tell is not None:
                tell(head)  # type: ignore[arg-type]

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost decides what it means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._direct = None
        if _MARK_TLS_CLOSED and self.transport is not None:
            # Python 3.10's TLS transport is not marked closed when its peer leaves (a
            # ResourceWarning when collected); closing it now does nothing else.
            self.transport.close()
        if not self._lost.done():
            self._lost.set_result(None)
        ex = self.exchange
        if ex.recv is R_IDLE and ex.send is S_IDLE:
            if self.on_idle_lost is not None:
                self.on_idle_lost(self)
            return
        event = ex.connection_lost(exc)
        if event is END:
            self._finish()
        elif event is not None:
            self._fail(event)  # type: ignore[arg-type]
        if self._drain_fut is not None and not self._drain_fut.done():
            self._drain_fut.set_exception(_disconnected())
            self._drain_fut.exception()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        fut = self._drain_fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    # -- exchange ----------------------------------------------------------------

    def _finish(self) -> None:
        if self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = False
            self.transport.resume_reading()
        fut = self._done_fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    @property
    def exchange_over(self) -> bool:
        """The response is complete, or the exchange failed."""
        return self.exchange.over

    @property
    def exchange_error(self) -> ConnectionFailure | None:
        """Why the exchange failed, if it did before completing."""
        ex = self.exchange
        return None if ex.recv is R_DONE else ex.error

    def fail_exchange(self, failure: ConnectionFailure) -> None:
        self._fail(self.exchange.fail(failure))

    def _proceed(self) -> None:
        if self.exchange.send is not S_EXPECTING:
            return  # a second 100 Continue: the body is on its way already
        out = self.exchange.proceed()
        if out and self.transport is not None and not self.closed:
            self.transport.write(out)
        cont = self.continue_future
        if cont is not None and not cont.done():
            cont.set_result(True)

    def _fail(self, failure: ConnectionFailure) -> None:
        tell = self._on_response
        if tell is not None and self.exchange.head is None:  # with a head: told the head
            self._on_response = None
            tell(failure)
        for fut in (self.head_future, self._done_fut, self.continue_future):
            if fut is not None and not fut.done():
                fut.set_exception(failure)
                fut.exception()  # retrieved here: one of the two may never be awaited

    def begin(
        self,
        method: str,
        head: bytes,
        body: bytes | None = None,
        streamed: bool = False,
        length: int | None = None,
        expect_continue: bool = False,
        limits: HeadLimits = DEFAULT_LIMITS,
        upgrade: bool = False,
    ) -> None:
        """Start an exchange: write the request head and the whole body, if any; a
        ``streamed`` body follows by ``send_body`` (``length`` bytes; None: chunked).
        ``expect_continue``: the body waits for ``100 Continue`` (``continue_future``).
        ``upgrade``: the head alone; a 101 makes a tunnel (``send_raw``)."""
        if self.closed or self.transport is None:
            raise _disconnected()
        out = self.exchange.start(
            method, head, body, streamed, length, expect_continue, limits, upgrade
        )
        self.continue_future = self._loop.create_future() if expect_continue else None
        self._on_response = None
        self._on_body = None
        self._sink = None
        self._early = []
        self._early_size = 0
        self.last_read = self._loop.time()
        self.head_future = self._loop.create_future()
        self._done_fut = None  # made when someone waits for the end (often nobody)
        if isinstance(out, bytes):
            self.transport.write(out)
        else:
            self.transport.writelines(out)

    def begin_fast(
        self,
        method: str,
        head: bytes,
        body: bytes | None,
        on_response: Callable[[ResponseHead | ConnectionFailure], None],
        limits: HeadLimits = DEFAULT_LIMITS,
    ) -> None:
        """Start an exchange on an idle connection (one that ``end_exchange`` made
        reusable), with a whole body (or none), whose head is told to
        ``on_response`` instead of ``head_future``: once, at the end of the read that
        completed it (the body bytes of that read kept: ``whole_body``), or the failure
        that came first. No future is made."""
        if self.closed or self.transport is None:
            raise _disconnected()
        out = self.exchange.start(method, head, body, False, None, False, limits)
        # The rest of the exchange's state is as ``end_exchange`` left it: only an idle
        # connection starts this way.
        self._on_response = on_response
        self.last_read = self._loop.time()
        if isinstance(out, bytes):
            self.transport.write(out)
        else:
            self.transport.writelines(out)

    def whole_body(self) -> bytes | None:
        """The whole body, when the response is complete and no consumer took it yet
        (the fast path's common case: it came with the head); else None."""
        if self.exchange.recv is not R_DONE or self._on_body is not None:
            return None
        early = self._early
        if not early:
            return b""
        self._early = []
        self._early_size = 0
        return early[0] if len(early) == 1 else b"".join(early)

    async def send_body(self, data: bytes, stream: BrokerStream | None = None) -> None:
        """Write a piece of the streamed body, then wait while the socket is full (a
        wait that ``stream`` being given up ends). Raises ConnectionFailure (the
        connection then closes) past the declared length, or if the connection is gone."""
        if self.closed or self.transport is None:
            raise self.exchange.error or _disconnected()
        try:
            out = self.exchange.send_body(data)
        except ConnectionFailure as exc:
            self._fail(exc)
            self.close()
            raise
        self.transport.writelines(out)
        if self._write_paused:
            await self.drain(stream)

    async def send_raw(self, data: bytes, stream: BrokerStream | None = None) -> None:
        """Write bytes through the tunnel as they are, then wait while the socket is
        full (a wait that ``stream`` being given up ends). Raises ConnectionFailure if
        the connection is gone."""
        if self.closed or self.transport is None:
            raise self.exchange.error or _disconnected()
        self.transport.write(self.exchange.send_raw(data))
        if self._write_paused:
            await self.drain(stream)

    def write_last(self, data: bytes) -> bool:
        """Write bytes through the tunnel just before it is closed (no wait: the
        transport flushes them on close); False if the connection is gone."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        if not self.exchange.tunnel:
            return False
        self.transport.write(data)
        return True

    @property
    def tunnel(self) -> bool:
        """A 101 answered this exchange's upgrade: the connection is a byte pipe."""
        return self.exchange.tunnel

    def end_body(self) -> None:
        """End the streamed body; raises ConnectionFailure (the connection then closes)
        if it is shorter than declared."""
        if self.closed or self.transport is None:
            raise self.exchange.error or _disconnected()
        try:
            out = self.exchange.end_body()
        except ConnectionFailure as exc:
            self._fail(exc)
            self.close()
            raise
        if out:
            self.transport.write(out)

    def set_body_consumer(
        self, consumer: Callable[[bytes], None] | None, sink: DirectSink | None = None
    ) -> None:
        """Where the response body goes (None: dropped); bytes that came early first.
        ``sink``: where a plain body may be read straight into (see the module
        docstring); the same bytes never go to both."""
        consumer = consumer or _drop_body
        self._on_body = consumer
        self._sink = sink
        early = self._early
        if early:
            self._early = []
            self._early_size = 0
            # Only the early bound pauses reading before there is a consumer; the
            # consumer may pause again (asyncio reads nothing before we return).
            if self._read_paused:
                self.resume_reading()
            for chunk in early:
                consumer(chunk)

    async def drain(self, stream: BrokerStream | None = None) -> None:
        if self.closed:
            raise _disconnected()
        if self._write_paused:
            fut = self._drain_fut = self._loop.create_future()
            try:
                await (fut if stream is None else stream.wait(fut))
            finally:
                self._drain_fut = None

    @property
    def body_held(self) -> bool:
        """The request body still waits for ``100 Continue`` (none of it was sent)."""
        return self.exchange.send is S_EXPECTING

    @property
    def got_response_bytes(self) -> bool:
        return self.exchange.got_bytes

    @property
    def early_bytes(self) -> int:
        """Body bytes held until a consumer is set (at most ``EARLY_LIMIT`` + a read)."""
        return self._early_size

    @property
    def done_future(self) -> asyncio.Future[None]:
        fut = self._done_fut
        if fut is None:
            fut = self._done_fut = self._loop.create_future()
            ex = self.exchange
            if ex.recv is R_DONE:
                fut.set_result(None)
            elif ex.error is not None:
                fut.set_exception(ex.error)
                fut.exception()
        return fut

    def end_exchange(self) -> bool:
        """The caller is done with this exchange; True if the connection can be reused."""
        reusable = self.exchange.end() and not self.closed
        self._on_response = None
        self._done_fut = None
        self.continue_future = None
        self._on_body = None
        self._sink = None
        self._direct = None
        self._early = []
        self._early_size = 0
        if not reusable:
            self.close()
        return reusable

    def pause_reading(self) -> None:
        # After the end of the response there is nothing left to hold back (body bytes
        # that came before the consumer was set are replayed after the end), and a
        # pause now would go back to the pool with the connection.
        if self.exchange.recv is R_DONE:
            return
        if not self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = False
            self.last_read = self._loop.time()
            self.transport.resume_reading()

    @property
    def reading_paused(self) -> bool:
        return self._read_paused

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True

    async def wait_closed(self) -> None:
        if self.transport is not None:
            await self._lost

    @property
    def lost(self) -> asyncio.Future[None]:
        """Done once ``connection_lost`` has run: the socket is closed."""
        return self._lost

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True


def watch_silence(
    loop: asyncio.AbstractEventLoop,
    conn: HTTP1Connection,
    fut: asyncio.Future[Any],
    sock_read: float,
) -> Callable[[], None]:
    """Fail the exchange after ``sock_read`` seconds without a byte from the server
    (time paused by our own flow control does not count); returns the stop function."""
    timer: list[asyncio.TimerHandle] = []

    def check() -> None:
        if fut.done():
            return
        if conn.reading_paused:
            timer[0] = loop.call_later(sock_read, check)
            return
        due = conn.last_read + sock_read
        if loop.time() >= due:
            conn.fail_exchange(
                ConnectionFailure("sock_read_timeout", "Timeout on reading data from socket")
            )
            conn.close()
        else:
            timer[0] = loop.call_at(due, check)

    timer.append(loop.call_at(conn.last_read + sock_read, check))
    return lambda: timer[0].cancel()
