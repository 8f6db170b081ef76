"""A response body, from its head to its end: the one owner of the pool slot meanwhile.

``ResponseBody`` takes over a connection once the engine has sent the final response's
head. It is driven by callbacks (no task per body, as aiohttp's protocol feeds its
reader) and has one state and one way out::

    FLOWING --upstream complete--> DRAINING --decoded output all sent--> ENDED
    FLOWING/DRAINING --upstream error, decode error, worker left--> ENDED

Whatever ends it, ``_end`` runs once: it gives the connection back to the pool (reusable
only after a complete response), and tells the worker ``End`` or ``Failure`` unless the
worker is the one who left. The worker-left hook is installed before anything else, so
no path can return without it (issue 6's leak: a gzip body that came whole with its head
but decoded past the window had no hook, and its slot was never freed).

A plain body (no decoder) may instead be read straight into the stream's memory: the
body is the connection's ``DirectSink`` (``body_buffer``/``body_filled``, see
``http1``), and those bytes count against the window as ``data`` does.

A tunnel (a 101 that answered an upgrade, ``broker.tunnel``) is such a body too: the
origin's bytes until it closes, with no ``sock_read`` watch (an open WebSocket may be
silent for long), and its ``Tunnel`` is closed in ``_end`` before the connection goes.

Bounds: the body is decoded (or, plain, cut) in pieces of at most ``MAX_DATA`` bytes.
When the worker has ``STREAM_WINDOW`` bytes unacknowledged the body stops: it pauses
reading the upstream socket, keeps the compressed input it has not decoded yet, and goes
on when the worker's acknowledgements open the window again. Broker memory per stream is
therefore about one window plus one piece, whatever the server sends and however slowly
the worker reads.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from logging import ERROR
from typing import TYPE_CHECKING

from shared.messages import HistoryItem, Request

from .decoding import DecodeError, Decoder
from .failures import ConnectionFailure, failure_message
from .http1 import HTTP1Connection, watch_silence
from .logs import event
from .stream import BrokerStream

if TYPE_CHECKING:
    from .connector import Pool
    from .tunnel import Tunnel

__all__ = ["ResponseBody", "BodyState", "MAX_DATA"]

log = logging.getLogger("broker.body")

MAX_DATA = 256 * 1024


class BodyState(enum.IntEnum):
    FLOWING = 0  # the upstream is still sending
    DRAINING = 1  # the upstream is done; decoded output is still owed to the worker
    ENDED = 2


class ResponseBody:
    """The body of one response, streamed from ``conn`` to ``stream``."""

    __slots__ = ("_loop", "req", "stream", "conn", "pool", "decoder", "history", "state",
                 "_unwatch", "_raw", "tunnel")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        req: Request,
        stream: BrokerStream,
        conn: HTTP1Connection,
        pool: Pool,
        decoder: Decoder | None,
        history: list[HistoryItem],
        tunnel: Tunnel | None = None,
    ) -> None:
        self._loop = loop
        self.req = req
        self.stream = stream
        self.conn = conn
        self.pool = pool
        self.decoder = decoder
        self.history = history
        self.state = BodyState.FLOWING
        self._unwatch: Callable[[], None] | None = None
        self._raw = 0  # bytes fed to the decoder (aiohttp's total_raw_bytes)
        self.tunnel = tunnel
        stream.on_halt = self._worker_left  # first: every later path can end by it

    def __repr__(self) -> str:
        return f"<ResponseBody stream={self.stream.id} {self.state.name.lower()}>"

    def start(self) -> None:
        """Take the body: bytes that came with the head first, then the rest as it comes."""
        conn = self.conn
        conn.set_body_consumer(self._feed, self if self.decoder is None else None)
        if self.state is BodyState.ENDED:
            return
        if conn.exchange_over:  # the whole response came with its head: the common case
            self._upstream_done(conn.exchange_error)
            return
        self.stream.flush()  # the body is still coming: the worker gets the head now
        done = conn.done_future
        if self.req.timeout.sock_read and self.tunnel is None:
            self._unwatch = watch_silence(self._loop, conn, done, self.req.timeout.sock_read)
        done.add_done_callback(self._on_done)

    # -- the flow ---------------------------------------------------------------------

    def _feed(self, chunk: bytes) -> None:
        if self.state is not BodyState.FLOWING:
            return
        decoder = self.decoder
        if decoder is None:
            self._emit(chunk)
            self._pump()
            return
        self._raw += len(chunk)
        if decoder.pending or self.stream.window_full:
            # Output is owed already: keep the input for ``_pump``, which decodes as the
            # window opens. (Decoding here would add a piece per chunk past the window:
            # one upstream read can hold thousands of tiny chunks.)
            decoder.push(chunk)
        else:
            try:
                self._emit(decoder.decode(chunk, MAX_DATA))
            except DecodeError as exc:
                self._decode_failed(exc)
                return
        self._pump()

    def body_buffer(self) -> memoryview | None:
        """For a plain body: the stream's memory to read into (``http1.DirectSink``)."""
        return self.stream.body_buffer() if self.state is BodyState.FLOWING else None

    def body_filled(self, size: int) -> None:
        self.stream.body_filled(size)
        self._pump()

    def _emit(self, data: bytes) -> None:
        if len(data) <= MAX_DATA:
            if data:
                self.stream.data(data)
            return
        view = memoryview(data)
        for i in range(0, len(data), MAX_DATA):
            self.stream.data(bytes(view[i : i + MAX_DATA]))

    def _pump(self) -> None:
        """Send pending decoded output while the window allows; wait for acks if not."""
        if self.state is BodyState.ENDED:
            return
        decoder = self.decoder
        stream = self.stream
        try:
            while decoder is not None and decoder.pending and not stream.window_full:
                out = decoder.decode(b"", MAX_DATA)
                if not out and decoder.pending:  # no progress: never spin the loop
                    raise DecodeError("the decoder makes no progress on its input")
                self._emit(out)
        except DecodeError as exc:
            self._decode_failed(exc)
            return
        if stream.window_full:
            self.conn.pause_reading()
            stream.park(self._pump)
            stream.flush()  # we wait for acknowledgements: what is held must go out
            return
        self.conn.resume_reading()
        if self.state is BodyState.DRAINING:
            self._finish()

    def _on_done(self, fut: asyncio.Future[None]) -> None:
        self._upstream_done(fut.exception())

    def _upstream_done(self, exc: BaseException | None) -> None:
        if self.state is not BodyState.FLOWING:
            return
        self._stop_watch()
        if exc is not None:
            self._end(exc)
            return
        self.state = BodyState.DRAINING
        decoder = self.decoder
        if decoder is None or not decoder.pending:
            self._finish()
        # else: the parked ``_pump`` finishes once the worker has taken the rest

    def _finish(self) -> None:
        error: ConnectionFailure | None = None
        if self.decoder is not None:
            try:
                self._emit(self.decoder.flush())
            except DecodeError as exc:
                error = ConnectionFailure("payload", str(exc))
        self._end(error)

    def _decode_failed(self, exc: DecodeError) -> None:
        self.conn.close()  # the rest of this body is unreadable: never reuse
        self._end(ConnectionFailure("payload", str(exc)))

    def _worker_left(self) -> None:
        self._end(None)  # the stream is cancelled already: no message goes out

    # -- the one way out ----------------------------------------------------------------

    def _end(self, error: BaseException | None) -> None:
        if self.state is BodyState.ENDED:
            return
        self.state = BodyState.ENDED
        stream = self.stream
        stream.on_halt = None
        self._stop_watch()
        conn = self.conn
        conn.set_body_consumer(None)
        if self.tunnel is not None:
            self.tunnel.close()
        self.pool.give_back(conn)
        if stream.finished:
            return
        try:
            if error is None:
                if self.decoder is not None:
                    stream.raw_bytes = self._raw
                stream.end()
            else:
                stream.fail(failure_message(self.req, error, self.history))
        except Exception as exc:  # a carrier bug: log it, never raise into the loop
            event(log, ERROR, "stream_end_failed", stream=self.req.stream, exc_info=exc)

    def _stop_watch(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
