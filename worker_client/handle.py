"""The worker's end of a stream (``StreamHandle``), and the total timeouts of many
(``Deadlines``): what a transport delivers into and what a session reads from, the same
in both modes."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from shared.messages import STREAM_WINDOW, TRACE_KINDS, Failure, Head, TraceEvent
from shared.stream_state import Event, State, StreamStateError, step

from .exceptions import BrokerProtocolError
from .response import StreamReader

if TYPE_CHECKING:
    from .transport import Transport

__all__ = ["StreamHandle", "Deadlines"]

_ACK_BATCH = STREAM_WINDOW // 4
_TRACE_KINDS = frozenset(TRACE_KINDS)


class StreamHandle:
    """The worker's end of one stream: the head future and the body reader.

    A stream ends one of three ways, each once: completed (``on_end``), failed by the
    broker or by the loss of the connection (``fail``), or given up by the worker
    (``give_up``: a release before the end, a cancel, a total timeout, a closing session).

    ``on_trace``: where a traced request's ``TraceEvent``s go (None: dropped), in the
    order the broker met them and before the head or the failure is delivered. It runs
    in the transport's callback (embedded: inside the engine), so it must not block; an
    exception from it fails the request with that exception, as a raising trace
    handler does in aiohttp.
    """

    __slots__ = (
        "id", "transport", "head", "content", "done", "state", "_unacked", "make_error",
        "_timer", "on_trace", "__weakref__",
    )

    def __init__(
        self,
        transport: Transport,
        stream_id: int,
        make_error: Callable[[Failure], BaseException],
        read_bufsize: int = 2**16,
    ) -> None:
        self.id = stream_id
        self.transport = transport
        loop = transport.loop
        self.head: asyncio.Future[Head] = loop.create_future()
        self.content = StreamReader(self._consumed, limit=read_bufsize)
        self.done = False
        self.state = State.OPEN  # what the broker said, checked against the table
        self._unacked = 0
        self.make_error = make_error
        self._timer: asyncio.TimerHandle | int | None = None  # see Deadlines
        self.on_trace: Callable[[TraceEvent], None] | None = None

    def __repr__(self) -> str:
        return f"<StreamHandle {self.id} {'done' if self.done else 'open'}>"

    # -- from the transport --------------------------------------------------------

    def _step(self, event: Event) -> bool:
        try:
            self.state = step(self.state, event)
        except StreamStateError as exc:
            self.give_up(BrokerProtocolError(f"stream {self.id}: the broker sent {exc}"))
            return False
        return True

    def on_head(self, msg: Head) -> None:
        if self._step(Event.HEAD) and not self.head.done():
            self.head.set_result(msg)

    def on_whole(self, msg: Head) -> None:
        """The whole response in one frame (``Head.body``): head, body and end."""
        self.on_head(msg)
        if msg.body:
            self.on_data(msg.body)
        self.on_end(msg.raw)

    def on_trace_event(self, event: TraceEvent) -> None:
        """A trace event: to ``on_trace`` while the head is awaited, else dropped (a
        stream given up, or a broker that broke the order); one of a kind this worker
        does not know fails the stream."""
        sink = self.on_trace
        if sink is None or self.done or self.state is not State.OPEN:
            return
        if event.kind not in _TRACE_KINDS:
            self.give_up(BrokerProtocolError(f"stream {self.id}: the broker sent {event!r}"))
            return
        try:
            sink(event)
        except Exception as exc:
            self.give_up(exc)

    def on_data(self, data: bytes | memoryview) -> None:
        """Body bytes. A memoryview (a shared-memory slot) is valid only during this
        call: the reader copies what it keeps (issue 11)."""
        if self._step(Event.DATA):
            self.content.feed_data(data)

    def body_buffer(self) -> memoryview | None:
        """Embedded: memory the engine may read body bytes straight into (the reader's
        claimed whole-body buffer), or None."""
        return None if self.done else self.content.claim_buffer()

    def on_filled(self, size: int) -> None:
        """``size`` body bytes were written into the last ``body_buffer()``."""
        if self._step(Event.DATA):
            self.content.claim_filled(size)

    def on_end(self, raw_bytes: int = 0) -> None:
        """The body ended; ``raw_bytes``: its size before decoding, if it was decoded."""
        if self._step(Event.END):
            if raw_bytes:
                self.content.total_compressed_bytes = raw_bytes
            self._close()
            self.content.feed_eof()

    def on_failure(self, failure: Failure) -> None:
        if self._step(Event.FAIL):
            self.fail(self.make_error(failure))

    def fail(self, exc: BaseException) -> None:
        """The stream failed (the broker said so, or the connection to it broke)."""
        if not self.done:
            self._close()
            self._deliver(exc)

    # -- from the session --------------------------------------------------------------

    def set_deadline(self, seconds: float, ceil_threshold: float = 5) -> None:
        self._timer = self.transport.deadlines.add(self, seconds, ceil_threshold)

    def clear_deadline(self) -> None:
        """The total timeout no longer runs (an upgraded stream: the WebSocket's own
        timeouts take over)."""
        if self._timer is not None:
            self.transport.deadlines.discard(self, self._timer)
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self.give_up(asyncio.TimeoutError("Timeout on request (total)"))

    def give_up(self, exc: BaseException | None = None) -> None:
        """The worker gives up this stream: the engine stops it, and a reader still
        waiting gets ``exc`` (without one, a waiter for the head is cancelled)."""
        if not self.done:
            self._close()
            self.transport.cancel(self.id)
            self._deliver(exc)

    def _deliver(self, exc: BaseException | None) -> None:
        if not self.head.done():
            if exc is None:
                self.head.cancel()
            else:
                self.head.set_exception(exc)
        elif exc is not None:
            self.content.set_exception(exc)

    def _consumed(self, size: int) -> None:
        if self.done:
            return
        self._unacked += size
        if self._unacked >= _ACK_BATCH:
            self.transport.ack(self.id, self._unacked)
            self._unacked = 0

    def _close(self) -> None:
        self.done = True
        self.content._on_consumed = None
        self.clear_deadline()
        self.transport.forget(self.id)


class Deadlines:
    """The total timeouts of many streams, with few timers.

    As aiohttp does (``ClientTimeout.ceil_threshold``), a timeout of ``ceil_threshold``
    seconds or more ends on a whole second of the loop's clock; here the streams that
    end on the same second share that second's one timer, instead of one ``TimerHandle``
    each (about 5 us per request). A shorter timeout gets a timer of its own.
    """

    __slots__ = ("_loop", "_seconds", "_timers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._seconds: dict[int, set[StreamHandle]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def add(
        self, handle: StreamHandle, seconds: float, ceil_threshold: float
    ) -> asyncio.TimerHandle | int:
        """Arm ``handle``'s deadline; what ``discard`` takes to disarm it."""
        when = self._loop.time() + seconds
        if seconds < ceil_threshold:
            return self._loop.call_at(when, handle._timed_out)
        second = math.ceil(when)
        streams = self._seconds.get(second)
        if streams is None:
            streams = self._seconds[second] = set()
            self._timers[second] = self._loop.call_at(second, self._fire, second)
        streams.add(handle)
        return second

    def discard(self, handle: StreamHandle, token: asyncio.TimerHandle | int) -> None:
        if isinstance(token, int):
            streams = self._seconds.get(token)
            if streams is not None:
                streams.discard(handle)
        else:
            token.cancel()

    def _fire(self, second: int) -> None:
        self._timers.pop(second, None)
        for handle in list(self._seconds.pop(second, ())):
            handle._timed_out()

    def cancel_all(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._seconds.clear()
