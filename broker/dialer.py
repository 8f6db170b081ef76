"""Opening a pool's connections: resolve, happy eyeballs, TLS, Unix sockets.

A ``Dialer`` belongs to one pool (its spec and resolver). ``dial`` resolves the host
through the pool's cached resolver (a lookup is shared: a caller that gives up waits no
more but never cancels it), then runs the connection attempts as tasks, staggered by
``happy_eyeballs_delay`` with address families interleaved (RFC 8305), each bounded by
``sock_connect`` and all of them by the request's connect deadline. The first to
connect wins; an attempt nobody waits for any more is cancelled, or closed if it
connected all the same (``closing`` holds those until they are). Nothing here uses
``asyncio.wait_for``, which on Python 3.11 and older loses a cancel that meets a result.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import socket
import ssl as ssl_mod
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from shared.specs import ClientTimeout, PoolSpec

from .failures import ConnectionFailure
from .http1 import HTTP1Connection
from .resolver import CachedResolver, ResolvedAddress

__all__ = ["ConnKey", "Dialer", "connect_timeout", "default_ssl_context"]

ConnKey = tuple[str, str, int, bytes]  # (scheme, host, port, proxy: broker.proxy; b"" direct)
_Connected = tuple[asyncio.BaseTransport, HTTP1Connection]  # what create_connection returns

_default_ssl: ssl_mod.SSLContext | None = None


def default_ssl_context() -> ssl_mod.SSLContext:
    global _default_ssl
    if _default_ssl is None:  # ~20 ms: made on first use, never at import
        _default_ssl = ssl_mod.create_default_context()
    return _default_ssl


def connect_timeout(key: ConnKey) -> ConnectionFailure:
    scheme, host, port = key[:3]
    return ConnectionFailure(
        "connect_timeout", f"Connection timeout to host {scheme}://{host}:{port}"
    )


class Dialer:
    """Opens the connections of one pool."""

    def __init__(
        self,
        spec: PoolSpec,
        loop: asyncio.AbstractEventLoop,
        resolver: CachedResolver,
        connection_class: Callable[[asyncio.AbstractEventLoop], HTTP1Connection],
    ) -> None:
        self.spec = spec
        self._loop = loop
        self._resolver = resolver
        self._connection_class = connection_class
        self.attempts: set[asyncio.Task[_Connected]] = set()  # connects in flight
        self._abandoned: set[asyncio.Task[_Connected]] = set()  # ... nobody waits for
        self.closing: set[HTTP1Connection] = set()  # abandoned, connected, being closed

    def abandon_all(self) -> list[asyncio.Task[_Connected]]:
        """Cancel every attempt in flight (the pool is closing); the attempts, to await."""
        attempts = list(self.attempts)
        for task in attempts:
            self._abandon(task)
        return attempts

    def _remaining(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return max(deadline - self._loop.time(), 0.0)

    async def dial(
        self, key: ConnKey, timeout: ClientTimeout, deadline: float | None
    ) -> HTTP1Connection:
        scheme, host, port = key[:3]
        is_ssl = scheme in ("https", "wss")
        fields: dict[str, Any] = {"host": host, "port": port, "ssl": is_ssl}
        loop = self._loop
        factory = functools.partial(self._connection_class, loop)
        ssl_ctx = default_ssl_context() if is_ssl else None
        server_hostname = host if is_ssl else None
        starts: list[Callable[[], Coroutine[Any, Any, _Connected]]]
        if self.spec.kind == "unix":
            path = self.spec.path
            assert path is not None
            starts = [
                functools.partial(
                    loop.create_unix_connection,
                    factory,
                    path,
                    ssl=ssl_ctx,
                    server_hostname=server_hostname,
                )
            ]
            delay, code, fields["url"] = None, "unix_connect", path
        else:
            try:
                addrs = await self._resolve(host, port, deadline)
            except TimeoutError:
                raise connect_timeout(key) from None
            except OSError as exc:
                raise ConnectionFailure(
                    "dns", exc.strerror or str(exc), errno=exc.errno or 0, **fields
                ) from None
            starts = [
                functools.partial(
                    loop.create_connection,
                    factory,
                    addr.host,
                    addr.port,
                    family=addr.family,
                    ssl=ssl_ctx,
                    server_hostname=server_hostname,
                    local_addr=self.spec.local_addr,
                )
                for addr in _interleave(addrs)
            ]
            delay, code = self.spec.happy_eyeballs_delay, "connect"
        try:
            return await self.first_connected(starts, delay, timeout.sock_connect, deadline)
        except TimeoutError:
            raise connect_timeout(key) from None
        except OSError as exc:
            raise ConnectionFailure(
                code, exc.strerror or str(exc), errno=exc.errno or 0, **fields
            ) from None

    async def _resolve(self, host: str, port: int, deadline: float | None) -> list[ResolvedAddress]:
        got = self._resolver.lookup(host, port, self.spec.family)
        if isinstance(got, list):
            return got
        # The lookup is shared: wait for it, never cancel it.
        done, _ = await asyncio.wait((got,), timeout=self._remaining(deadline))
        if not done:
            raise TimeoutError(f"DNS lookup of {host} timed out")
        if got.cancelled():  # the resolver closed before the lookup began
            raise socket.gaierror(socket.EAI_AGAIN, "the resolver was closed")
        return got.result()

    async def first_connected(
        self,
        starts: Sequence[Callable[[], Coroutine[Any, Any, _Connected]]],
        delay: float | None,
        step: float | None,
        deadline: float | None,
    ) -> HTTP1Connection:
        """Happy eyeballs (RFC 8305): start the attempts ``delay`` seconds apart, or the
        next one when one fails (one at a time if ``delay`` is None), each for at most
        ``step`` seconds and all of them until ``deadline``. The first to connect wins;
        the others are cancelled, or closed if they connected too. Raises the last
        error, TimeoutError when time ran out."""
        if not starts:
            raise OSError("no addresses to connect to")
        loop = self._loop
        todo = collections.deque(starts)
        running: dict[asyncio.Task[_Connected], float | None] = {}  # attempt -> deadline
        last: BaseException | None = None
        next_start = 0.0
        try:
            while todo or running:
                now = loop.time()
                if deadline is not None and now >= deadline:
                    raise TimeoutError("connect timeout")
                while todo and (not running or (delay is not None and now >= next_start)):
                    task = self._attempt(todo.popleft()())
                    running[task] = _earliest(deadline, now + step if step else None)
                    next_start = now + (delay or 0.0)
                wake = _earliest(*running.values(), next_start if todo and delay else None)
                await asyncio.wait(
                    running,
                    timeout=None if wake is None else max(wake - now, 0.0),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                now = loop.time()
                for task, until in list(running.items()):
                    if task.done():
                        del running[task]
                        if task.cancelled():
                            raise ConnectionFailure("connection", "the connection pool was closed")
                        error = task.exception()
                        if error is None:
                            return task.result()[1]
                        last = error
                    elif until is not None and now >= until:
                        del running[task]
                        self._abandon(task)
                        last = TimeoutError("connect timeout")
        finally:
            for task in running:
                self._abandon(task)
        assert last is not None
        raise last

    def _attempt(self, connect: Coroutine[Any, Any, _Connected]) -> asyncio.Task[_Connected]:
        task = self._loop.create_task(connect)
        self.attempts.add(task)
        task.add_done_callback(self._attempt_over)
        return task

    def _attempt_over(self, task: asyncio.Task[_Connected]) -> None:
        self.attempts.discard(task)
        if task in self._abandoned:
            self._abandoned.discard(task)
            self._close_connected(task)

    def _abandon(self, task: asyncio.Task[_Connected]) -> None:
        """Nobody waits for this attempt any more: cancel it, or close what it made."""
        if task.done():
            self._close_connected(task)
        else:
            self._abandoned.add(task)
            task.cancel()

    def _close_connected(self, task: asyncio.Task[_Connected]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        conn = task.result()[1]
        if conn not in self.closing:
            self.closing.add(conn)
            conn.on_idle_lost = self.closing.discard
            conn.close()


def _interleave(addrs: list[ResolvedAddress]) -> list[ResolvedAddress]:
    """Alternate address families, the first one first (RFC 8305's interleaving)."""
    by_family: dict[int, list[ResolvedAddress]] = {}
    for a in addrs:
        by_family.setdefault(a.family, []).append(a)
    groups = list(by_family.values())
    out: list[ResolvedAddress] = []
    for i in range(max(map(len, groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def _earliest(*times: float | None) -> float | None:
    return min((t for t in times if t is not None), default=None)
