"""``UploadTracker``: the upload progress of one request, as aiohttp 3.14's.

Where the numbers come from: the body is written to the server by the engine (in the
broker, or embedded), so ``bytes_written`` counts what the engine reports written to the
server's socket (through a broker: its ``Ack`` frames, which it sends for exactly that).
A streamed body (a file, a generator, a multipart) is counted as it goes; an in-memory
body sent inline (bytes, str, a form, at most 1 MiB) is counted once the request's
answer shows it was sent. ``attempts`` counts the times the body began to be sent: a
307/308 that sends it again is another attempt, and ``bytes_written`` restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from .exceptions import UploadAbortedError

__all__ = ["UploadTracker"]


class UploadTracker:
    """Upload progress of one request: pass a fresh one as ``upload_tracker=`` and read
    ``bytes_written``, ``attempts`` and ``upload_complete`` while the request runs.

    Made inside a running event loop; it observes exactly one request (a second raises
    ``RuntimeError``)."""

    def __init__(self) -> None:
        self.attempts = 0
        self.upload_complete: asyncio.Future[None] = (
            asyncio.get_running_loop().create_future()
        )
        self._bound = False
        self._handed = 0  # bytes of this attempt given to the engine
        self._written = 0  # of those, written to the server's socket
        self._ended = False  # this attempt's body was given in full
        self._exc: BaseException | None = None

    def __repr__(self) -> str:
        state = "done" if self.upload_complete.done() else "running"
        return f"<UploadTracker {state}: attempt {self.attempts}, {self.bytes_written} bytes>"

    @property
    def bytes_written(self) -> int:
        """Body bytes of the current attempt written to the server's socket."""
        return min(self._written, self._handed)

    def _bind(self) -> None:
        if self._bound:
            raise RuntimeError("UploadTracker is already bound to a request")
        self._bound = True

    def _attempt_started(self) -> None:
        self.attempts += 1
        self._handed = self._written = 0
        self._ended = False
        self._exc = None

    def _wrote(self, size: int) -> None:
        self._written += size

    def _start(
        self,
        body: AsyncIterator[bytes] | None,
        rewind: Callable[[], AsyncIterator[bytes]] | None,
    ) -> tuple[AsyncIterator[bytes] | None, Callable[[], AsyncIterator[bytes]] | None]:
        """The request begins (its arguments were good): the tracker is bound to it, and
        a streamed ``body`` and its ``rewind`` (another attempt) are counted as sent."""
        self._bind()
        self._attempt_started()
        if body is None:
            return None, rewind
        if rewind is None:
            return self._count(body), None

        def again() -> AsyncIterator[bytes]:
            chunks = rewind()
            self._attempt_started()
            return self._count(chunks)

        return self._count(body), again

    async def _count(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in body:
                self._handed += len(chunk)
                yield chunk
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._exc = exc
            raise
        self._ended = True

    def _inline(self, size: int, history: Sequence[Any]) -> None:
        """The answer came: an inline body (or none) was sent in full, by the first hop
        and by each redirect that kept it."""
        kept = True
        for item in history:
            if (item.status == 303 and item.method != "HEAD") or (
                item.status in (301, 302) and item.method == "POST"
            ):
                kept = False
            elif kept:
                self.attempts += 1
        self._handed = self._written = size
        self._ended = True

    def _finish(self, exc: BaseException | None = None) -> None:
        """The request is over: the response came (``exc`` None), or it failed. The
        attempt is complete if its body was all given and all written: the engine
        acknowledges what it writes before it reports the end of a stream."""
        fut = self.upload_complete
        if fut.done():
            return
        if exc is None:  # the engine reads the answer once the body is sent
            self._written = self._handed
            self._ended = True
        if self._ended and self._written >= self._handed:
            fut.set_result(None)
            return
        if self._exc is not None:  # the body's own error (reading the file...)
            fut.set_exception(self._exc)
        else:
            fut.set_exception(UploadAbortedError("The request body was not fully sent"))
        fut.exception()  # no "exception was never retrieved" for a tracker only polled
