"""Connection pools: the asyncio side of ``pool_state`` plus name resolution and connect."""

from __future__ import annotations

import asyncio
import functools
import ssl as ssl_mod
from collections.abc import Awaitable, Callable
from typing import Any

from shared.specs import ClientTimeout, PoolSpec

from .http1 import ConnectionFailure, HTTP1Connection
from .pool_state import NEW, Decision, PoolState
from .rate_limit import RateLimiter
from .resolver import CachedResolver
from .stream import BrokerStream

__all__ = ["Pool", "ConnKey"]

ConnKey = tuple[str, str, int]  # (scheme, host, port)

_default_ssl: ssl_mod.SSLContext | None = None


def default_ssl_context() -> ssl_mod.SSLContext:
    global _default_ssl
    if _default_ssl is None:  # ~20 ms: made on first use, never at import
        _default_ssl = ssl_mod.create_default_context()
    return _default_ssl


class Pool:
    """One pool of connections, shared by every request whose ``PoolSpec`` is equal."""

    def __init__(
        self, spec: PoolSpec, loop: asyncio.AbstractEventLoop, resolver: CachedResolver
    ) -> None:
        self.spec = spec
        self._loop = loop
        self._resolver = resolver
        self.state: PoolState[HTTP1Connection] = PoolState(
            spec.limit,
            spec.limit_per_host,
            spec.keepalive_timeout,
            clock=loop.time,
        )
        self._active: set[HTTP1Connection] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self.rate = (
            RateLimiter(spec.rate_limit_per_host, clock=loop.time)
            if spec.rate_limit_per_host
            else None
        )
        self.closed = False

    def __repr__(self) -> str:
        return f"<Pool {self.spec.name or self.spec.kind} {self.state!r}>"

    # -- acquire / release ----------------------------------------------------------

    async def wait_turn(self, key: ConnKey) -> None:
        """Wait for this host's next start under ``rate_limit_per_host``."""
        if self.rate is None:
            return
        delay, start = self.rate.reserve(key[1])
        if delay > 0:
            try:
                await asyncio.sleep(delay)
            except BaseException:
                self.rate.cancel(key[1], start)
                raise

    async def acquire(
        self, key: ConnKey, timeout: ClientTimeout, stream: BrokerStream | None = None
    ) -> HTTP1Connection:
        """A connection for ``key``; waiting in the queue ends early if ``stream`` is
        given up (``StreamStopped``)."""
        deadline = self._loop.time() + timeout.connect if timeout.connect else None
        while True:
            conn = await self._acquire_once(key, timeout, deadline, stream)
            if conn is not None:
                return conn

    async def _acquire_once(
        self,
        key: ConnKey,
        timeout: ClientTimeout,
        deadline: float | None,
        stream: BrokerStream | None,
    ) -> HTTP1Connection | None:
        if self.closed:
            raise ConnectionFailure("connection", "the connection pool is closed")
        got, decision = self.state.try_acquire(key)
        self._apply(decision)
        if got is None:
            waiter: asyncio.Future[Any] = self._loop.create_future()
            self.state.enqueue(key, waiter)
            if stream is not None:
                stream.waiting = waiter
            try:
                got = await asyncio.wait_for(waiter, self._remaining(deadline))
            except BaseException as exc:
                if not self.state.cancel(waiter) and waiter.done() and not waiter.cancelled():
                    self._return_grant(key, waiter.result())
                if isinstance(exc, asyncio.TimeoutError):
                    raise self._timeout(key) from None
                raise
            finally:
                if stream is not None:
                    stream.waiting = None
        if got is NEW:
            try:
                conn = await self._connect(key, timeout, deadline)
            except BaseException:
                self._apply(self.state.discard(key))
                raise
            conn.in_use = True
            self._active.add(conn)
            return conn
        assert isinstance(got, HTTP1Connection)
        if got.closed:  # closed while idle, not yet noticed
            self._apply(self.state.discard(key))
            return None
        got.reused = True
        got.in_use = True
        self._active.add(got)
        return got

    def release(self, conn: HTTP1Connection, reusable: bool) -> None:
        self._active.discard(conn)
        # keepalive_timeout=0 is aiohttp's "idle for no time at all": no reuse.
        reusable = (
            reusable
            and not self.spec.force_close
            and self.spec.keepalive_timeout != 0
            and not self.closed
        )
        self._apply(self.state.release(conn.key, conn, reusable))
        if reusable:
            self._schedule_expiry()

    def _return_grant(self, key: Any, got: Any) -> None:
        if got is NEW:
            self._apply(self.state.discard(key))
        else:
            self._apply(self.state.release(key, got, not got.closed))

    def _apply(self, decision: Decision[HTTP1Connection]) -> None:
        for conn in decision.close:
            conn.close()
        for waiter, key, got in decision.grants:
            assert isinstance(waiter, asyncio.Future)
            if waiter.done():  # cancelled, its task not yet out of the queue
                self._return_grant(key, got)
            else:
                waiter.set_result(got)

    # -- connect ----------------------------------------------------------------

    def _remaining(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return max(deadline - self._loop.time(), 0.0)

    def _timeout(self, key: ConnKey) -> ConnectionFailure:
        scheme, host, port = key
        return ConnectionFailure(
            "connect_timeout", f"Connection timeout to host {scheme}://{host}:{port}"
        )

    async def _connect(
        self, key: ConnKey, timeout: ClientTimeout, deadline: float | None
    ) -> HTTP1Connection:
        scheme, host, port = key
        is_ssl = scheme in ("https", "wss")
        fields: dict[str, Any] = {"host": host, "port": port, "ssl": is_ssl}

        def factory() -> HTTP1Connection:
            return HTTP1Connection(self._loop)

        def limit(step: float | None) -> float | None:
            rem = self._remaining(deadline)
            if step and rem is not None:
                return min(step, rem)
            return step or rem

        ssl_ctx = default_ssl_context() if is_ssl else None
        server_hostname = host if is_ssl else None
        if self.spec.kind == "unix":
            assert self.spec.path is not None
            try:
                _, conn = await asyncio.wait_for(
                    self._loop.create_unix_connection(
                        factory, self.spec.path, ssl=ssl_ctx, server_hostname=server_hostname
                    ),
                    limit(timeout.sock_connect),
                )
            except asyncio.TimeoutError:
                raise self._timeout(key) from None
            except OSError as exc:
                raise ConnectionFailure(
                    "unix_connect",
                    exc.strerror or str(exc),
                    url=self.spec.path,
                    errno=exc.errno or 0,
                    **fields,
                ) from None
            return self._adopt(conn, key)

        try:
            addrs = await asyncio.wait_for(
                self._resolver.resolve(host, port, self.spec.family), self._remaining(deadline)
            )
        except asyncio.TimeoutError:
            raise self._timeout(key) from None
        except OSError as exc:
            raise ConnectionFailure(
                "dns", exc.strerror or str(exc), errno=exc.errno or 0, **fields
            ) from None
        local_addr = self.spec.local_addr

        async def attempt(addr: dict[str, Any]) -> HTTP1Connection:
            try:
                _, conn = await asyncio.wait_for(
                    self._loop.create_connection(
                        factory,
                        addr["host"],
                        addr["port"],
                        family=addr["family"],
                        ssl=ssl_ctx,
                        server_hostname=server_hostname,
                        local_addr=local_addr,
                    ),
                    limit(timeout.sock_connect),
                )
            except asyncio.TimeoutError:
                raise TimeoutError(f"Connection timeout to host {host}:{port}") from None
            return conn

        try:
            conn = await _happy_eyeballs(
                [functools.partial(attempt, a) for a in _interleave(addrs)],
                self.spec.happy_eyeballs_delay,
            )
        except TimeoutError:
            raise self._timeout(key) from None
        except OSError as exc:
            raise ConnectionFailure(
                "connect", exc.strerror or str(exc), errno=exc.errno or 0, **fields
            ) from None
        return self._adopt(conn, key)

    def _adopt(self, conn: HTTP1Connection, key: ConnKey) -> HTTP1Connection:
        conn.key = key
        conn.on_idle_lost = self._idle_lost
        return conn

    def _idle_lost(self, conn: HTTP1Connection) -> None:
        self._apply(self.state.idle_lost(conn.key, conn))

    def _schedule_expiry(self) -> None:
        if self._expiry is None and self.spec.keepalive_timeout:
            self._expiry = self._loop.call_later(self.spec.keepalive_timeout, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        self._apply(self.state.expire())
        if self.state.n_idle:
            self._schedule_expiry()

    # -- figures and shutdown --------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        s = self.state
        queued: dict[Any, tuple[int, float]] = s.queued_per_key()
        return {
            "pool": self.spec.name or self.spec.kind,
            "options": _options(self.spec),
            "limit": s.limit,
            "limit_per_host": s.limit_per_host,
            "open": s.total,
            "idle": s.n_idle,
            "active": s.total - s.n_idle,
            "queued": len(s.waiters),
            "longest_wait": s.longest_wait(),
            "hosts": {
                _label(k): {
                    "open": s.per_key.get(k, 0),
                    "active": s.active_per_key.get(k, 0),
                    "idle": len(s.idle.get(k, ())),
                    "queued": queued.get(k, (0, 0.0))[0],
                    "longest_wait": queued.get(k, (0, 0.0))[1],
                }
                for k in set(s.per_key) | set(queued)
            },
        }

    async def close(self) -> None:
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        conns = self.state.close_all_idle() + list(self._active)
        for conn in conns:
            conn.abort()
        for waiter in list(self.state.waiters):
            assert isinstance(waiter, asyncio.Future)
            if not waiter.done():
                waiter.set_exception(ConnectionFailure("connection", "the pool was closed"))
        self.state.waiters.clear()
        # connection_lost runs on a later loop pass; wait for it so that no transport
        # outlives the loop (a ResourceWarning otherwise).
        await asyncio.gather(*(conn.wait_closed() for conn in conns))


def _options(spec: PoolSpec) -> dict[str, Any]:
    """What sets this pool apart: its options that differ from the defaults."""
    default = PoolSpec(kind=spec.kind, path=spec.path)
    out: dict[str, Any] = {}
    for field in spec.__struct_fields__:
        value = getattr(spec, field)
        if field not in ("kind", "name") and value != getattr(default, field):
            out[field] = value if field != "resolver" else value.kind
    return out


def _label(key: Any) -> str:
    scheme, host, port = key
    return f"{scheme}://{host}:{port}"


def _interleave(addrs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alternate address families, the first one first (RFC 8305's interleaving)."""
    by_family: dict[int, list[dict[str, Any]]] = {}
    for a in addrs:
        by_family.setdefault(a["family"], []).append(a)
    groups = list(by_family.values())
    out: list[dict[str, Any]] = []
    for i in range(max(map(len, groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


async def _happy_eyeballs(
    attempts: list[Callable[[], Awaitable[HTTP1Connection]]], delay: float | None
) -> HTTP1Connection:
    """Run connection attempts staggered by ``delay`` (one at a time if None): the first
    to connect wins, the others are cancelled or closed. Raises the last error."""
    if not attempts:
        raise OSError("no addresses to connect to")
    if delay is None or len(attempts) == 1:
        last: BaseException | None = None
        for make in attempts:
            try:
                return await make()
            except OSError as exc:  # TimeoutError is an OSError too
                last = exc
        assert last is not None
        raise last
    pending: set[asyncio.Task[HTTP1Connection]] = set()
    todo = list(attempts)
    last_exc: BaseException | None = None
    winner: HTTP1Connection | None = None
    try:
        while winner is None and (todo or pending):
            if todo:
                pending.add(asyncio.ensure_future(todo.pop(0)()))
            done, pending = await asyncio.wait(
                pending, timeout=delay if todo else None, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                error = task.exception()
                if error is not None:
                    last_exc = error
                elif winner is None:
                    winner = task.result()
                else:
                    task.result().close()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            results = await asyncio.gather(*pending, return_exceptions=True)
            for r in results:
                if isinstance(r, HTTP1Connection):
                    r.close()
    if winner is not None:
        return winner
    assert last_exc is not None
    raise last_exc
