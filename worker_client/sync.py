"""``SyncSession``: the client for threads and WSGI workers, with no ``await``.

How this works: a ``SyncSession`` owns one daemon thread running a private event loop
(started on first use) and, on it, an ordinary ``ClientSession`` built with the same
keywords. Each sync call hands the matching coroutine to that loop
(``asyncio.run_coroutine_threadsafe``) and waits for its result, so every keyword,
default and exception is the async session's own. Any number of threads may call one
``SyncSession`` at once: their requests are multiplexed on the loop over its one broker
connection (or its one embedded engine) and share its pool.

The rules at the seam:

- a call from the loop's own thread (a trace handler or middleware calling the sync API)
  would wait on itself: it raises ``RuntimeError`` instead;
- a wait in the calling thread that ends in an exception (``KeyboardInterrupt``, a signal
  handler's timeout) cancels the coroutine on the loop; a response that was already made
  for it is closed, so nothing is left holding a connection;
- ``close()`` closes the async session on the loop (a request in flight in another
  thread fails as it does there), cancels every other call still running (its caller gets
  ``RuntimeError("Session is closed")``), then stops and joins the thread; calls are
  started under the session's lock, so none lands on the loop after that;
- a response of a closed session still does what needs no loop (a read body's
  ``text()``, ``raise_for_status()``, a release), as an async response does;
- the thread does not survive ``fork``: a session used before a fork raises
  ``RuntimeError`` in the child (make one ``SyncSession`` per process);
- gevent and eventlet monkey-patching are not supported (the loop thread would be a
  greenlet).

Bounds: nothing is buffered here; a response's body is the async response's
(``iter_content`` reads it one chunk at a time on the loop); ``close()`` waits at most
``CLOSE_TIMEOUT`` seconds for the loop to finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json as _json
import os
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .exceptions import ClientConnectionError
from .session import ClientSession

if TYPE_CHECKING:
    from http.cookies import SimpleCookie

    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    from .cookies import AbstractCookieJar
    from .exceptions import RequestInfo
    from .helpers import HttpVersion
    from .response import ClientResponse
    from .session import _RequestOptions
    from .sync_wire import WirePath

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover
    from typing_extensions import Unpack

__all__ = ["SyncResponse", "SyncSession"]

T = TypeVar("T")

CLOSE_TIMEOUT = 10.0
"""Seconds ``close()`` waits for the loop to close the session and its thread to end."""

DEFAULT_CHUNK_SIZE = 2**16
"""``iter_content``'s chunk size when none is given."""


async def _settle(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


def _without_loop(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a response's coroutine in this thread, for a session closed already: what
    needs no waiting (a read body's text, a release) works as in the async session;
    what would wait finds the connection gone."""
    steps = factory().__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    steps.close()
    raise ClientConnectionError("Connection closed")


async def _next_or_none(chunks: AsyncIterator[bytes]) -> bytes | None:
    return await anext(chunks, None)


class _Loop:
    """The private loop and its thread; it holds no reference to its ``SyncSession``, so
    an unclosed session can still be collected (and warn)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()
        started = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(self.loop, started), name="http-broker-sync", daemon=True
        )
        self.thread.start()
        if not started.wait(CLOSE_TIMEOUT):
            raise RuntimeError("the SyncSession's loop thread did not start")

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(
        self, factory: Callable[[], Awaitable[T]], call: _Call
    ) -> concurrent.futures.Future[T]:
        """Hand ``factory()``'s awaitable to the loop (it is called there)."""
        fut = asyncio.run_coroutine_threadsafe(_own(factory, call), self.loop)
        call.future = fut
        return fut

    def wait(self, fut: concurrent.futures.Future[T], discard: Callable[[T], Any] | None) -> T:
        """The call's result; if waiting ends in an exception, the call is cancelled."""
        try:
            return fut.result()
        except BaseException:
            if not fut.cancel() and discard is not None and not fut.cancelled():
                # It finished as we gave up: what it made is ours to let go of.
                if fut.exception() is None:
                    self.loop.call_soon_threadsafe(discard, fut.result())
            raise

    async def shutdown(self, session: ClientSession) -> None:
        """Close ``session``, cancel every other call still running, stop the loop."""
        try:
            await session.close()
        finally:
            me = asyncio.current_task()
            others = [t for t in asyncio.all_tasks() if t is not me]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            asyncio.get_running_loop().stop()


async def _own(factory: Callable[[], Awaitable[T]], call: _Call) -> T:
    """``await factory()`` on the loop, watched by ``call``."""
    task = asyncio.current_task()
    assert task is not None
    if call.gone:  # its caller was interrupted before it had the future to cancel
        raise asyncio.CancelledError
    call.task = task
    task.add_done_callback(call.finished)
    return await factory()


class _Call:
    """One sync call: if its caller gave up (cancelled the concurrent future) by the time
    the coroutine finished, what it made is discarded here, since nobody will take it."""

    __slots__ = ("discard", "future", "gone", "task")

    def __init__(self, discard: Callable[[Any], Any] | None) -> None:
        self.discard = discard
        self.future: concurrent.futures.Future[Any] | None = None
        self.gone = False
        self.task: asyncio.Task[Any] | None = None

    def give_up(self, loop: asyncio.AbstractEventLoop) -> None:
        """The caller is gone, whether or not it got the future (an interrupt can land
        between the hand-over and the wait): the call is cancelled on the loop."""
        self.gone = True
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing runs there
            loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def finished(self, task: asyncio.Task[Any]) -> None:
        # Runs after run_coroutine_threadsafe's own callback (added before the task's
        # first step): the concurrent future has the result by now, unless cancelled.
        if task.cancelled():
            return
        exc = task.exception()  # retrieved: a caller that gave up never asks for it
        fut = self.future
        if exc is None and self.discard is not None and fut is not None and fut.cancelled():
            self.discard(task.result())


class SyncSession:
    """``ClientSession``'s API without ``await``, for threads and WSGI workers."""

    def __init__(self, base_url: str | URL | None = None, **kwargs: Any) -> None:
        # Built here, so a bad keyword fails here; it needs no loop until its first call.
        self._session = ClientSession(base_url, **kwargs)
        self._lock = threading.Lock()
        self._loop: _Loop | None = None
        self._closed = False
        self._wire: WirePath | None = None
        if self._session._broker is not None:
            from .sync_wire import wire_path  # it imports this module

            self._wire = wire_path(self._session)

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed or self._session.closed

    def close(self) -> None:
        """Close the session on its loop, then stop and join the loop's thread."""
        runner = self._loop
        if runner is not None:
            self._check_thread(runner)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            runner = self._loop
        if self._wire is not None:
            self._wire.close()
        if runner is None:  # it never ran on a loop: its close does not wait
            _without_loop(self._session.close)
            return
        if runner.pid != os.getpid():
            return  # the parent's thread: not ours to stop
        fut = asyncio.run_coroutine_threadsafe(runner.shutdown(self._session), runner.loop)
        try:
            fut.result(CLOSE_TIMEOUT)
        except concurrent.futures.CancelledError:
            pass  # stopped with the rest
        finally:
            runner.thread.join(CLOSE_TIMEOUT)

    def __del__(self, _warnings: Any = warnings) -> None:
        if getattr(self, "_closed", True):
            return
        wire = getattr(self, "_wire", None)
        wired = wire is not None and wire.abandon()
        runner = getattr(self, "_loop", None)
        if runner is None or runner.pid != os.getpid():
            if wired:
                self._closed = True
                _warnings.warn(f"Unclosed sync session {self!r}", ResourceWarning, source=self)
            return
        self._closed = True
        shutdown = runner.shutdown(self._session)
        try:
            asyncio.run_coroutine_threadsafe(shutdown, runner.loop)
        except RuntimeError:  # its loop is closed already (interpreter exit)
            shutdown.close()
        _warnings.warn(f"Unclosed sync session {self!r}", ResourceWarning, source=self)

    # -- running on the loop ----------------------------------------------------------

    def _runner(self) -> _Loop:
        """The loop thread, started on first use; call with the lock held."""
        if self._closed:
            raise RuntimeError("Session is closed")
        runner = self._loop
        if runner is None:
            runner = self._loop = _Loop()
        if runner.pid != os.getpid():
            raise RuntimeError(
                "this SyncSession was used in process "
                f"{runner.pid}; its loop thread does not exist in this forked child: "
                "make a SyncSession per process (after the fork)"
            )
        self._check_thread(runner)
        return runner

    @staticmethod
    def _check_thread(runner: _Loop) -> None:
        if threading.current_thread() is runner.thread:
            raise RuntimeError(
                "SyncSession called from its own background loop's thread (in a trace "
                "handler or middleware?): it would wait on itself; use the async "
                "ClientSession there"
            )

    def _run(
        self,
        factory: Callable[[], Awaitable[T]],
        discard: Callable[[T], Any] | None = None,
        when_closed: Callable[[Callable[[], Awaitable[T]]], T] | None = None,
    ) -> T:
        """``factory()``'s result, awaited on the loop. Started under the lock, so that
        every call ``close()`` did not refuse is on the loop before its shutdown is."""
        call, runner = _Call(discard), None
        try:
            with self._lock:
                if not (self._closed and when_closed is not None):
                    runner = self._runner()
                    fut = runner.start(factory, call)
            if runner is None:
                assert when_closed is not None
                return when_closed(factory)
            return runner.wait(fut, discard)
        except concurrent.futures.CancelledError:
            if self._closed:
                raise RuntimeError("Session is closed") from None
            raise
        except BaseException:
            if runner is not None:  # an interrupt anywhere after the hand-over
                call.give_up(runner.loop)
            raise

    def _run_response(self, factory: Callable[[], Awaitable[T]]) -> T:
        """A response's call; once the session is closed, run here as far as it can go
        with no loop (a read body, a release)."""
        return self._run(factory, when_closed=_without_loop)

    # -- what the async session has -------------------------------------------------

    @property
    def cookie_jar(self) -> AbstractCookieJar:
        return self._session.cookie_jar

    @property
    def headers(self) -> CIMultiDict[str]:
        return self._session.headers

    @property
    def broker(self) -> str | None:
        return self._session.broker

    @property
    def session(self) -> ClientSession:
        """The async session on the loop thread (use it only from that thread)."""
        return self._session

    def stats(self) -> Any:
        """The engine's figures (pools, streams) as a ``Stats`` message."""
        if self._wire is not None:
            return self._wire.stats()
        return self._run(self._session.stats)

    # -- requests ---------------------------------------------------------------------

    def request(
        self, method: str, url: str | URL, **kwargs: Unpack[_RequestOptions]
    ) -> SyncResponse:
        """Perform an HTTP request; the response works with or without ``with``."""
        wire = self._wire
        if wire is not None and wire.takes(kwargs):  # the blocking path (sync_wire)
            made = wire.request(method, url, kwargs)
            if made is not None:
                return made
        session = self._session
        resp = self._run(lambda: session.request(method, url, **kwargs), _close_response)
        return SyncResponse(self, resp)

    def get(self, url: str | URL, **kwargs: Unpack[_RequestOptions]) -> SyncResponse:
        return self.request("GET", url, **kwargs)

    def options(self, url: str | URL, **kwargs: Unpack[_RequestOptions]) -> SyncResponse:
        return self.request("OPTIONS", url, **kwargs)

    def head(self, url: str | URL, **kwargs: Unpack[_RequestOptions]) -> SyncResponse:
        kwargs.setdefault("allow_redirects", False)
        return self.request("HEAD", url, **kwargs)

    def post(self, url: str | URL, **kwargs: Unpack[_RequestOptions]) -> SyncResponse:
        return self.request("POST", url, **kwargs)

    def put(self, url: str | URL, **kwargs: Unpack[_RequestOptions]) -> SyncResponse:
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str | URL, **kwargs: Unpack[_RequestOptions]) -> SyncResponse:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str | URL, **kwargs: Unpack[_RequestOptions]) -> SyncResponse:
        return self.request("DELETE", url, **kwargs)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SyncSession {state} broker={self._session.broker!r}>"


def _close_response(resp: ClientResponse) -> None:
    resp.close()


class SyncResponse:
    """A ``ClientResponse`` read without ``await``; ``with`` (or ``close()``) releases it."""

    __slots__ = ("_owner", "_resp", "_history", "__weakref__")

    def __init__(self, owner: SyncSession, resp: ClientResponse) -> None:
        self._owner = owner
        self._resp = resp
        self._history: tuple[SyncResponse, ...] | None = None

    # -- head ---------------------------------------------------------------------

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def reason(self) -> str:
        return self._resp.reason

    @property
    def ok(self) -> bool:
        return self._resp.ok

    @property
    def method(self) -> str:
        return self._resp.method

    @property
    def version(self) -> HttpVersion:
        return self._resp.version

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._resp.headers

    @property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        return self._resp.raw_headers

    @property
    def url(self) -> URL:
        return self._resp.url

    @property
    def real_url(self) -> URL:
        return self._resp.real_url

    @property
    def history(self) -> tuple[SyncResponse, ...]:
        if self._history is None:
            self._history = tuple(SyncResponse(self._owner, r) for r in self._resp.history)
        return self._history

    @property
    def cookies(self) -> SimpleCookie:
        return self._resp.cookies

    @property
    def content_type(self) -> str:
        return self._resp.content_type

    @property
    def charset(self) -> str | None:
        return self._resp.charset

    @property
    def content_length(self) -> int | None:
        return self._resp.content_length

    @property
    def request_info(self) -> RequestInfo:
        return self._resp.request_info

    @property
    def closed(self) -> bool:
        return self._resp.closed

    @property
    def response(self) -> ClientResponse:
        """The async response on the loop thread (use it only from that thread)."""
        return self._resp

    def __repr__(self) -> str:
        return f"<SyncResponse({self.url}) [{self.status} {self.reason}]>"

    # -- body -----------------------------------------------------------------------

    def read(self) -> bytes:
        """The whole body (cached; the response is released at its end)."""
        resp = self._resp
        return self._owner._run_response(resp.read)

    def text(self, encoding: str | None = None, errors: str = "strict") -> str:
        resp = self._resp
        return self._owner._run_response(lambda: resp.text(encoding, errors))

    def json(
        self,
        *,
        encoding: str | None = None,
        loads: Callable[[str], Any] = _json.loads,
        content_type: str | None = "application/json",
    ) -> Any:
        resp = self._resp
        return self._owner._run_response(
            lambda: resp.json(encoding=encoding, loads=loads, content_type=content_type)
        )

    def iter_content(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """The body chunk by chunk (each at most ``chunk_size`` bytes), read as it goes."""
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive int, not {chunk_size!r}")
        return self._chunks(chunk_size)

    def _chunks(self, chunk_size: int) -> Iterator[bytes]:
        resp = self._resp
        if resp._body is not None:  # read() already took it all
            body = resp._body
            for at in range(0, len(body), chunk_size):
                yield body[at : at + chunk_size]
            return
        chunks = resp.content.iter_chunked(chunk_size)
        while True:
            chunk = self._owner._run_response(lambda: _next_or_none(chunks))
            if chunk is None:
                return
            yield chunk

    # -- release --------------------------------------------------------------------

    def raise_for_status(self) -> None:
        """Raise ``ClientResponseError`` if ``status`` is 400 or more."""
        resp = self._resp
        if not resp.ok:
            self._owner._run_response(lambda: _settle(resp.raise_for_status))

    def release(self) -> None:
        """Give the connection back (complete if the body was read to its end)."""
        self._let_go(self._resp.release)

    def close(self) -> None:
        """Abandon the response (its connection is not reused unless done)."""
        self._let_go(self._resp.close)

    def _let_go(self, how: Callable[[], Any]) -> None:
        self._owner._run_response(lambda: _settle(how))

    def __enter__(self) -> SyncResponse:
        resp = self._resp
        self._owner._run_response(resp.__aenter__)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        resp = self._resp
        self._owner._run_response(lambda: resp.__aexit__(exc_type, exc, tb))
