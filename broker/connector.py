"""Connection pools: the asyncio side of ``pool_state``. Opening a connection is the
pool's ``Dialer``'s (``broker/dialer.py``).

A traced request (``acquire``'s ``trace``: its stream) is told what aiohttp's
``BaseConnector.connect`` reports: ``connection_queued_start``/``_end`` around each wait
for a slot, ``connection_reuseconn`` for an idle connection, ``connection_create_start``
/``_end`` around opening one (the DNS events in between are the dialer's, none for a
connection through a proxy, as in aiohttp; a failed connect has no ``_end``).

A connection the pool closes (not reusable, expired, evicted) stays in its ``_closing``
until its socket is closed: a TLS close waits for the peer's close_notify or end of
stream, on Python 3.11+ at most the pool's ``ssl_shutdown_timeout`` when set (else
asyncio's 30 s); the pool aborts one still open after ``CLOSE_LIMIT`` (30 s, or the
``ssl_shutdown_timeout`` if longer), which is what bounds it on 3.10, whose TLS close
waits as long as the peer takes. Closing the pool aborts those still open, and waits for
them as for the rest: no socket outlives its pool.

The broker-wide cap on open connections (``pool_state.OpenCap``, one for all pools, the
registry's): a connect takes a place in it before dialing, waiting for one in arrival
order within the same ``timeout.connect`` deadline, and holds it until its socket is
closed. A connection that goes idle (released by its request, or a grant handed back)
while connects of its pool and host wait there goes to the first of them, leased
(``_hand_idle``: keep-alive holds under the cap); else, while requests wait, the oldest
idle connection of any pool is closed to make room (``make_room``: once per waiter, and
once per connection released idle)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from shared.messages import PoolFigures, TraceEvent
from shared.specs import ClientTimeout, PoolSpec, TlsSpec

from .dialer import NO_TLS, ConnKey, Dialer, connect_timeout
from .failures import ConnectionFailure
from .http1 import HTTP1Connection
from .pool_state import NEW, NOTHING, Decision, OpenCap, PoolState, _New
from .proxy import dial_proxy, proxy_label
from .rate_limit import RateLimiter
from .resolver import CachedResolver
from .stream import BrokerStream
from .tls import TlsContexts

__all__ = ["Pool", "ConnKey", "CLOSE_LIMIT"]

CLOSE_LIMIT = 30.0  # seconds a connection the pool closed may take to close its socket


class Pool:
    """One pool of connections, shared by every request whose ``PoolSpec`` is equal.

    Every wait here survives a cancel, or a give-up of the requesting stream, that lands
    together with what it waits for: the pool waiter is a future that a ``call_at``
    timer fails, awaited through ``BrokerStream.wait`` (a grant that raced the give-up
    goes back to the pool); a connect is a task whose end settles its slot
    (``_opened``), awaited through ``BrokerStream.stoppable`` (a connection made for
    nobody is closed: ``_orphan``); within it, the attempts and the lookup are tasks
    watched with ``asyncio.wait`` (never ``wait_for``, which on Python 3.11 and older
    loses a cancel that meets a result), and one that connected all the same after a
    cancel or a timeout is closed (``_abandon``).
    """

    connection_class = HTTP1Connection

    def __init__(
        self,
        spec: PoolSpec,
        loop: asyncio.AbstractEventLoop,
        resolver: CachedResolver,
        clock: Callable[[], float] | None = None,
        tls: TlsContexts | None = None,
        cap: OpenCap | None = None,
        make_room: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        self.cap = cap if cap is not None else OpenCap()
        self._make_room = make_room or _nothing
        self._loop = loop
        self._resolver = resolver
        self._clock = clock or loop.time
        self.state: PoolState[HTTP1Connection] = PoolState(
            spec.limit,
            spec.limit_per_host,
            spec.keepalive_timeout,
            clock=self._clock,
        )
        # connects waiting for a place under the cap: their key and since when; the
        # waiter's result is None for a place, or a connection of its key freed meanwhile
        self._cap_waiting: dict[_CapWaiter, tuple[ConnKey, float]] = {}
        self._active: set[HTTP1Connection] = set()
        # closed by the pool, the socket not yet: a TLS close waits for the peer's
        # close_notify (3.10 without end); ``close`` cuts those short
        self._closing: set[HTTP1Connection] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self.rate = (
            RateLimiter(spec.rate_limit_per_host, clock=loop.time)
            if spec.rate_limit_per_host
            else None
        )
        self._turns = 0  # requests waiting in wait_turn
        self.dialer = Dialer(spec, loop, resolver, self.connection_class, tls)
        self.picked = 0  # stamped by the registry on each use, for its LRU eviction
        self.closed = False

    def __repr__(self) -> str:
        return f"<Pool {self.spec.name or self.spec.kind} {self.state!r}>"

    @property
    def quiet(self) -> bool:
        """No connection active or being opened, no request waiting (idle ones allowed)."""
        return self.state.quiet and not self._turns

    # -- acquire / release ----------------------------------------------------------

    def wait_turn(self, key: ConnKey) -> asyncio.Future[None] | None:
        """Under ``rate_limit_per_host``: a future to await for this host's next start,
        or None to go at once. A cancelled wait hands its turn back."""
        rate = self.rate
        if rate is None:
            return None
        delay, start = rate.reserve(key[1])
        if delay <= 0:
            return None
        turn: asyncio.Future[None] = self._loop.create_future()
        timer = self._loop.call_at(start, _set_done, turn)
        self._turns += 1
        turn.add_done_callback(functools.partial(self._turn_over, key[1], start, timer))
        return turn

    def _turn_over(
        self, host: str, start: float, timer: asyncio.TimerHandle, turn: asyncio.Future[None]
    ) -> None:
        self._turns -= 1
        if turn.cancelled() or turn.exception() is not None:  # given up: hand it back
            timer.cancel()
            assert self.rate is not None
            self.rate.cancel(host, start)

    async def acquire(
        self,
        key: ConnKey,
        timeout: ClientTimeout,
        stream: BrokerStream | None = None,
        tls: TlsSpec | None = None,
        trace: BrokerStream | None = None,
    ) -> HTTP1Connection:
        """A connection for ``key``: an idle one, else a new one when the limits allow,
        else the next one freed. ``timeout.connect`` bounds the wait and the connect.
        Waiting and connecting end at once if ``stream`` is given up (``StreamStopped``).
        ``tls``: the spec that the key's tls id names, for a new connection. ``trace``:
        where a traced request's events go (see the module's docstring)."""
        got = self._take(key)
        if isinstance(got, HTTP1Connection):
            if trace is not None:
                trace.trace(TraceEvent(trace.id, "connection_reuseconn"))
            return got
        deadline = self._loop.time() + timeout.connect if timeout.connect else None
        while got is None:
            got = self._granted(key, await self._wait_grant(key, deadline, stream, trace))
        if got is NEW:
            return await self._open(key, timeout, deadline, stream, tls, trace)
        assert isinstance(got, HTTP1Connection)
        if trace is not None:
            trace.trace(TraceEvent(trace.id, "connection_reuseconn"))
        return got

    def take_idle(self, key: ConnKey) -> HTTP1Connection | None:
        """A live idle connection for ``key``, leased, or None: the fast path's take
        (``broker.fast``). Never waits, opens nor queues; None under a rate limit (its
        turn is ``wait_turn``'s) and from a closed pool."""
        if self.closed or self.rate is not None:
            return None
        state = self.state
        while True:
            conn = state.take_idle(key)
            if conn is None:
                return None
            if not conn.closed:
                conn.reused = True
                conn.in_use = True
                self._active.add(conn)
                return conn
            self._apply(state.discard(key))  # closed while idle, not yet noticed

    def _take(self, key: ConnKey) -> HTTP1Connection | _New | None:
        """``try_acquire`` without waiting: a live idle connection, NEW, or None."""
        while True:
            if self.closed:
                raise ConnectionFailure("connection", "the connection pool is closed")
            got, decision = self.state.try_acquire(key)
            if decision.close or decision.grants:
                self._apply(decision)
            if got is None or got is NEW:
                return got
            assert isinstance(got, HTTP1Connection)
            if not got.closed:
                got.reused = True
                got.in_use = True
                self._active.add(got)
                return got
            self._apply(self.state.discard(key))  # closed while idle, not yet noticed

    def _granted(self, key: ConnKey, got: HTTP1Connection | _New) -> HTTP1Connection | _New | None:
        if got is NEW:
            return got
        assert isinstance(got, HTTP1Connection)
        if got.closed:
            self._apply(self.state.discard(key))
            return self._take(key)
        got.reused = True
        got.in_use = True
        self._active.add(got)
        return got

    async def _wait_grant(
        self,
        key: ConnKey,
        deadline: float | None,
        stream: BrokerStream | None,
        trace: BrokerStream | None = None,
    ) -> HTTP1Connection | _New:
        waiter: asyncio.Future[HTTP1Connection | _New] = self._loop.create_future()
        self.state.enqueue(key, waiter)
        timer = None
        if deadline is not None:
            timer = self._loop.call_at(deadline, self._wait_expired, key, waiter)
        try:
            if trace is None:
                return await (waiter if stream is None else stream.wait(waiter))
            trace.trace(TraceEvent(trace.id, "connection_queued_start"))
            got = await (waiter if stream is None else stream.wait(waiter))
            trace.trace(TraceEvent(trace.id, "connection_queued_end"))
            return got
        except BaseException:
            # A grant that came as we were cancelled is ours to hand back.
            if (
                not self.state.cancel(waiter)
                and waiter.done()
                and not waiter.cancelled()
                and waiter.exception() is None
            ):
                self._return_grant(key, waiter.result())
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _wait_expired(self, key: ConnKey, waiter: asyncio.Future[Any]) -> None:
        if self.state.cancel(waiter):
            waiter.set_exception(connect_timeout(key))

    async def _open(
        self,
        key: ConnKey,
        timeout: ClientTimeout,
        deadline: float | None,
        stream: BrokerStream | None,
        tls: TlsSpec | None = None,
        trace: BrokerStream | None = None,
    ) -> HTTP1Connection:
        """Open a connection in the slot just granted.

        The connect is a task whose end settles the slot (``_opened``) whatever stops
        it, even a cancel before it ran at all; a connection nobody waits for any more
        (its requester cancelled or given up as it completed) is closed."""
        if trace is not None:
            trace.trace(TraceEvent(trace.id, "connection_create_start"))
        connect = self._loop.create_task(self._connect(key, timeout, deadline, tls, trace))
        connect.add_done_callback(functools.partial(self._opened, key))
        if stream is not None:
            conn = await stream.stoppable(connect, self._orphan)
            if trace is not None:
                trace.trace(TraceEvent(trace.id, "connection_create_end"))
            return conn
        try:
            return await connect
        except BaseException:
            if connect.done() and not connect.cancelled() and connect.exception() is None:
                self._orphan(connect.result())
            raise

    def _opened(self, key: ConnKey, connect: asyncio.Future[HTTP1Connection]) -> None:
        if connect.cancelled() or connect.exception() is not None:
            self._apply(self.state.discard(key))
            return
        conn = connect.result()
        if self.closed:
            conn.abort()
            self._apply(self.state.discard(key))
            return
        conn.in_use = True
        self._active.add(conn)

    def _orphan(self, conn: HTTP1Connection) -> None:
        """A connection opened for a request that went away meanwhile: closed, its slot
        given back at once (as a cancelled connect in aiohttp)."""
        if conn.in_use:
            conn.in_use = False
            self.release(conn, False)

    def give_back(self, conn: HTTP1Connection) -> None:
        """End ``conn``'s lease (its ``in_use``): back to the pool, reusable only after a
        complete exchange. Once per lease, whichever path gets here first."""
        if conn.in_use:
            conn.in_use = False
            self.release(conn, conn.end_exchange())

    def release(self, conn: HTTP1Connection, reusable: bool) -> None:
        self._active.discard(conn)
        # keepalive_timeout=0 is aiohttp's "idle for no time at all": no reuse.
        reusable = (
            reusable
            and not self.spec.force_close
            and self.spec.keepalive_timeout != 0
            and not self.closed
        )
        decision = self.state.release(conn.key, conn, reusable)
        if decision is not NOTHING:
            self._apply(decision)
        if reusable and self.cap.waiters and not self._hand_idle(conn.key):
            self._make_room()
        if reusable and self._expiry is None:
            self._schedule_expiry()

    def _closed_one(
        self, conn: HTTP1Connection, timer: asyncio.TimerHandle, _lost: asyncio.Future[None]
    ) -> None:
        timer.cancel()
        self._closing.discard(conn)

    def _return_grant(self, key: Any, got: Any) -> None:
        if got is NEW:
            self._apply(self.state.discard(key))
        else:
            self.release(got, not got.closed)

    def _apply(self, decision: Decision[HTTP1Connection]) -> None:
        for conn in decision.close:
            conn.on_idle_lost = None  # the pool is done with it
            conn.close()
            if not conn.lost.done():
                self._closing.add(conn)
                limit = max(CLOSE_LIMIT, self.spec.ssl_shutdown_timeout or 0)
                timer = self._loop.call_later(limit, conn.abort)
                conn.lost.add_done_callback(functools.partial(self._closed_one, conn, timer))
        for waiter, key, got in decision.grants:
            assert isinstance(waiter, asyncio.Future)
            if waiter.done():  # cancelled, its task not yet out of the queue
                self._return_grant(key, got)
            else:
                waiter.set_result(got)

    # -- connect ----------------------------------------------------------------

    async def _connect(
        self,
        key: ConnKey,
        timeout: ClientTimeout,
        deadline: float | None,
        tls: TlsSpec | None = None,
        trace: BrokerStream | None = None,
    ) -> HTTP1Connection:
        if not self.cap.take():
            handed = await self._cap_place(key, deadline)
            if handed is not None:  # instead of a new one: the slot for it goes
                self._apply(self.state.discard(key))
                return handed
        try:
            if key[4]:  # through a proxy (broker.proxy); aiohttp traces none of its lookup
                conn = await dial_proxy(self.dialer, key, timeout, deadline, tls)
            else:
                conn = await self.dialer.dial(key, timeout, deadline, tls, trace)
        except BaseException:
            self._cap_free()
            raise
        conn.lost.add_done_callback(self._cap_closed)
        return self._adopt(conn, key)

    async def _cap_place(self, key: ConnKey, deadline: float | None) -> HTTP1Connection | None:
        """Wait for a place under the broker-wide cap (see the module's docstring): None,
        or a connection of ``key`` that went idle meanwhile (``_hand_idle``), leased."""
        cap = self.cap
        waiter: _CapWaiter = self._loop.create_future()
        cap.enqueue(waiter)
        self._cap_waiting[waiter] = (key, self._clock())
        self._make_room()
        timer = None
        if deadline is not None:
            timer = self._loop.call_at(deadline, self._cap_expired, key, waiter)
        try:
            return await waiter
        except BaseException:
            # A place or a connection granted as we were cancelled is given back.
            if not cap.cancel(waiter) and waiter.done() and not waiter.cancelled() and (
                waiter.exception() is None
            ):
                handed = waiter.result()
                if handed is None:
                    self._cap_free()
                else:
                    self.release(handed, not handed.closed)
            raise
        finally:
            del self._cap_waiting[waiter]
            if timer is not None:
                timer.cancel()

    def _hand_idle(self, key: ConnKey) -> bool:
        """A connection of ``key`` went idle while connects wait for the cap: the first
        of this pool's for ``key`` takes it, rather than it being closed to make room
        for a new one to the same place (keep-alive holds under the cap)."""
        for waiter, (k, _) in self._cap_waiting.items():
            if k == key and not waiter.done():
                conn = self.state.take_idle(key)
                if conn is None:
                    return False
                if conn.closed:  # closed while idle, not yet noticed
                    self._apply(self.state.discard(key))
                    return False
                self.cap.cancel(waiter)
                conn.reused = True
                waiter.set_result(conn)
                return True
        return False

    def _cap_expired(self, key: ConnKey, waiter: _CapWaiter) -> None:
        if self.cap.cancel(waiter):
            waiter.set_exception(connect_timeout(key))

    def _cap_closed(self, _lost: asyncio.Future[None]) -> None:
        self._cap_free()

    def _cap_free(self) -> None:
        grant_places(self.cap, self.cap.closed())

    def _adopt(self, conn: HTTP1Connection, key: ConnKey) -> HTTP1Connection:
        conn.key = key
        conn.on_idle_lost = self._idle_lost
        return conn

    def close_oldest_idle(self) -> None:
        self._apply(self.state.close_oldest_idle())

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

    def figures(self) -> PoolFigures:
        """A connect waiting for the cap holds its slot in ``state`` (as one being
        opened): here it is a queued request, not an open connection."""
        s = self.state
        queued: dict[Any, tuple[int, float]] = s.queued_per_key()
        capped: dict[Any, int] = {}
        if self._cap_waiting:
            now = self._clock()
            for k, since in self._cap_waiting.values():
                capped[k] = capped.get(k, 0) + 1
                n, longest = queued.get(k, (0, 0.0))
                queued[k] = (n + 1, max(longest, now - since))
        waiting = len(self._cap_waiting)
        return {
            "pool": self.spec.name or self.spec.kind,
            "options": _options(self.spec),
            "limit": s.limit,
            "limit_per_host": s.limit_per_host,
            "open": s.total - waiting,
            "idle": s.n_idle,
            "active": s.total - s.n_idle - waiting,
            "queued": len(s.waiters) + waiting,
            "longest_wait": max((w for _, w in queued.values()), default=0.0),
            "hosts": {
                _label(k): {
                    "open": s.per_key.get(k, 0) - capped.get(k, 0),
                    "active": s.active_per_key.get(k, 0) - capped.get(k, 0),
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
        attempts = self.dialer.abandon_all()
        conns = self.state.close_all_idle() + list(self._active)
        graceful = self.spec.ssl_shutdown_timeout != 0
        for conn in conns:
            conn.on_idle_lost = None  # a connection must not keep a closed pool alive
            if graceful and _is_tls(conn):  # aiohttp 3.14: close_notify, within the grace
                conn.close()
            else:
                conn.abort()
        closing = list(self._closing)
        for conn in closing:  # as aiohttp's close aborts its cleanup_closed transports
            conn.abort()
        conns += closing
        for waiter in self.state.drain_waiters():
            assert isinstance(waiter, asyncio.Future)
            if not waiter.done():
                waiter.set_exception(ConnectionFailure("connection", "the pool was closed"))
        await asyncio.gather(*attempts, return_exceptions=True)
        # connection_lost runs on a later loop pass; wait for it so that no transport
        # outlives the loop (a ResourceWarning otherwise).
        conns += self.dialer.closing
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
    label = f"{key[0]}://{key[1]}:{key[2]}"
    tls = key[3]
    if tls is not NO_TLS and tls != NO_TLS:  # a TLS choice of its own: a key apart
        tls_id, fingerprint, server_hostname = tls
        label += f" tls={(tls_id.hex()[:12] or 'default')}"
        if fingerprint:
            label += f" fingerprint={fingerprint.hex()[:12]}"
        if server_hostname:
            label += f" server_hostname={server_hostname}"
    if key[4]:
        label += f" via {proxy_label(key[4])}"
    return label


def _is_tls(conn: HTTP1Connection) -> bool:
    transport = conn.transport
    return transport is not None and transport.get_extra_info("sslcontext") is not None


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _nothing() -> None:
    pass


_CapWaiter = asyncio.Future[HTTP1Connection | None]


def grant_places(cap: OpenCap, granted: list[object]) -> None:
    """Wake the waiters ``cap`` granted a place; a place granted to one that gave up
    meanwhile goes on to the next."""
    while granted:
        waiter = granted.pop(0)
        assert isinstance(waiter, asyncio.Future)
        if waiter.done():
            granted += cap.closed()
        else:
            waiter.set_result(None)
