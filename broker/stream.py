"""The broker's end of one stream (one request), whatever carries it.

The engine drives a ``BrokerStream``: ``head``, ``data``..., then ``end`` or ``fail``.
Subclasses deliver the messages: over a worker's socket (``server.IPCStream``) or
straight into the worker's objects in the same process (``worker_client.transport``).

A stream ends in one of three ways: completed (``end``), failed by the broker (``fail``)
or given up by the worker (``give_up``: it cancelled, or it is gone).

Giving up: the engine must let go of the stream at once, in both modes and without
cancelling anybody's task (in embedded mode the head phase runs in the caller's own
task). So the engine awaits on a stream's behalf only through ``wait`` (a pool slot, a
rate-limit turn, the request body, a drain, the response head) or ``stoppable`` (a
connect, the caller's body iterator): ``halt`` fails the pending future with
``StreamStopped``, and a future that had resolved before the give-up but whose waiter
had not resumed yet is caught when it does. In the body phase, ``on_halt`` ends the
body.

Tracing: for a request with ``trace`` only, the engine, the pool and the dialer hand
``trace`` the ``TraceEvent``s of aiohttp's connection-level signals as they happen. A
carrier sends each at once and never waits for the worker to handle it (a slow trace
handler must not hold a pool slot: aiohttp issue 5259); events come only while the
stream is open, so always before its head or failure, and at most a handful per hop
(one per request body piece written), so they are bounded by the request's own progress.

Direct reads (issue 11): for a plain body (nothing to decode) the engine asks
``body_buffer()`` for memory to read the upstream socket straight into (``recv_into``):
a carrier that has some returns a writable view (embedded mode: the worker's final
buffer, once its reader wants the whole body; broker mode: a shared-memory slot), the
engine reads at most its length into it and calls ``body_filled(n)``, which counts and
delivers those n bytes as ``data`` would. ``None``: no such memory now, use ``data``.

Response flow control: ``data`` (and ``body_filled``) counts bytes the worker has not yet
acknowledged. When that reaches ``STREAM_WINDOW`` the engine pauses reading the upstream
socket and parks a resume callback here, which ``on_ack`` calls once the worker has
consumed half of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from shared.messages import STREAM_WINDOW, Failure, Head, TraceEvent
from shared.stream_state import FINAL, Event, State, step

__all__ = ["BrokerStream", "StreamStopped"]

T = TypeVar("T")


class StreamStopped(Exception):
    """The worker gave the stream up while the engine waited on its behalf."""


class BrokerStream:
    __slots__ = ("id", "unacked", "_resume", "state", "on_halt", "waiting", "raw_bytes")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.unacked = 0
        self._resume: Callable[[], None] | None = None
        self.state = State.OPEN
        # Set by the engine while the body flows without a task: what stops it.
        self.on_halt: Callable[[], None] | None = None
        # The future the engine awaits for this stream (see ``wait``), if any.
        self.waiting: asyncio.Future[Any] | None = None
        # The body's size as received when it was decoded (sent with End; 0: not).
        self.raw_bytes = 0

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.id} {self.state.name.lower()}, "
            f"{self.unacked} bytes unacked>"
        )

    @property
    def finished(self) -> bool:
        return self.state in FINAL

    async def wait(self, fut: asyncio.Future[T]) -> T:
        """Await ``fut`` on this stream's behalf: the one way the engine waits for it.

        Giving the stream up ends the wait with ``StreamStopped``: at once if ``fut`` is
        pending (``halt`` fails it), and also when ``fut`` had resolved but the waiting
        code had not resumed yet. The caller's cleanup for an exception runs then too
        (a pool slot granted in that gap is handed back by the pool's own handler)."""
        if self.state in FINAL:
            raise StreamStopped()
        self.waiting = fut
        try:
            result = await fut
        finally:
            self.waiting = None
        if self.state in FINAL:
            raise StreamStopped()
        return result

    async def stoppable(
        self, aw: Awaitable[T], orphan: Callable[[T], None] | None = None
    ) -> T:
        """Await ``aw`` (a coroutine the engine cannot hand a future for: a connect, the
        worker's own body iterator) in a task, so that giving the stream up ends the
        wait at once: the task is cancelled, and a result it had already produced is
        passed to ``orphan`` to be disposed of."""
        task = asyncio.ensure_future(aw)  # even when given up already: ``aw`` settles
        waiter: asyncio.Future[T] = task.get_loop().create_future()

        def done(t: asyncio.Future[T], waiter: asyncio.Future[T] = waiter) -> None:
            if waiter.done():
                if orphan is not None and not t.cancelled() and t.exception() is None:
                    orphan(t.result())
                elif not t.cancelled():
                    t.exception()  # retrieved: nobody waits for it any more
                return
            if t.cancelled():
                waiter.cancel()
            elif (exc := t.exception()) is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(t.result())

        task.add_done_callback(done)
        if self.finished:
            task.cancel()
            waiter.set_exception(StreamStopped())
            waiter.exception()
        else:
            self.waiting = waiter
        try:
            result = await waiter
        except BaseException:
            task.cancel()
            raise
        finally:
            self.waiting = None
            # An exception raised here keeps this frame in its traceback; the task and
            # the waiter (and so ``done``) hold that exception: no cycle for the collector.
            del task, waiter, done
        if self.finished:  # given up after the result came, before we resumed
            if orphan is not None:
                orphan(result)
            raise StreamStopped()
        return result

    # -- called by the engine (each step checked against shared.stream_state) -------

    def head(self, msg: Head) -> None:
        self.state = step(self.state, Event.HEAD)
        self._send_head(msg)

    def data(self, chunk: bytes) -> None:
        self.state = step(self.state, Event.DATA)
        self.unacked += len(chunk)
        self._send_data(chunk)

    def body_buffer(self) -> memoryview | None:
        """Writable memory that the next bytes of a plain response body may be read into
        directly, or None (use ``data``). The view is valid until the next call on this
        stream; nothing is written past its length."""
        return None

    def body_filled(self, size: int) -> None:
        """``size`` bytes were read into the start of the last ``body_buffer()``: deliver
        them, counted against the window as ``data`` counts."""
        self.state = step(self.state, Event.DATA)
        self.unacked += size
        self._send_filled(size)

    @property
    def window_full(self) -> bool:
        return self.unacked >= STREAM_WINDOW

    def park(self, resume: Callable[[], None]) -> None:
        self._resume = resume

    def end(self) -> None:
        self.state = step(self.state, Event.END)
        self._resume = None
        self._send_end()

    def fail(self, failure: Failure) -> None:
        self.state = step(self.state, Event.FAIL)
        self._resume = None
        self._send_failure(failure)

    def trace(self, event: TraceEvent) -> None:
        """Send one trace event of this (traced) stream; dropped once the stream has its
        head, has failed or was given up."""
        if self.state is State.OPEN:
            self._send_trace(event)

    def flush(self) -> None:
        """Deliver what a carrier may have held back to send in one piece."""

    def request_body(self) -> AsyncIterator[bytes]:
        """The streamed request body, chunk by chunk."""
        raise NotImplementedError

    def rewind(self) -> bool:
        """Have the streamed request body sent again for another hop; False if it can't."""
        return False

    def body_written(self, size: int) -> None:
        """``size`` bytes of the streamed request body are on the upstream socket."""

    def adopt(self, conn: Any, pool: Any) -> bytes:
        """Take the upgraded connection ``conn`` (of ``pool``) whole for the worker
        (``broker.handover``): the token the worker claims it with, or b"" if this
        carrier cannot (the engine relays its bytes instead)."""
        return b""

    @property
    def orphaned(self) -> bool:
        """The worker is gone (not merely done with this stream)."""
        return False

    # -- called by the carrier -------------------------------------------------------

    def give_up(self) -> None:
        """The worker gave this stream up (it cancelled it, or it is gone)."""
        self.state = step(self.state, Event.CANCEL)
        self.halt()

    def halt(self) -> None:
        """Stop the engine's work on this stream, in whichever phase, without a message:
        the body's hook in the body phase, the registered wait in the head phase."""
        self._resume = None
        hook, self.on_halt = self.on_halt, None
        if hook is not None:
            hook()
        fut, self.waiting = self.waiting, None
        if fut is not None and not fut.done():
            fut.set_exception(StreamStopped())
            fut.exception()  # retrieved: the engine may be past awaiting it

    def on_ack(self, size: int) -> None:
        self.unacked -= size
        if self._resume is not None and self.unacked < STREAM_WINDOW // 2:
            resume, self._resume = self._resume, None
            resume()

    # -- to implement ---------------------------------------------------------------

    def _send_head(self, msg: Head) -> None:
        raise NotImplementedError

    def _send_data(self, chunk: bytes) -> None:
        raise NotImplementedError

    def _send_filled(self, size: int) -> None:
        raise NotImplementedError  # only a carrier whose body_buffer gives memory

    def _send_end(self) -> None:
        raise NotImplementedError

    def _send_failure(self, failure: Failure) -> None:
        raise NotImplementedError

    def _send_trace(self, event: TraceEvent) -> None:
        raise NotImplementedError
