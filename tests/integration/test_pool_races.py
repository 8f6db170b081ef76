"""The pool's asyncio side under races that the pure bookkeeping cannot see."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from broker.connector import Pool
from broker.http1 import HTTP1Connection
from broker.resolver import CachedResolver
from broker.stream import BrokerStream, StreamStopped
from shared.specs import ClientTimeout, PoolSpec, ResolverSpec

from ..conftest import wait_until


async def test_a_grant_to_a_waiter_that_just_gave_up_goes_back_to_its_host(raw_server):
    """The waiter's future is already cancelled when a slot frees up: the slot must be
    handed back under the waiter's own key, or its host would stay full for ever."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    base = await raw_server(handler)
    port = int(base.rsplit(":", 1)[1])
    loop = asyncio.get_running_loop()
    resolver = CachedResolver(ResolverSpec(), loop)
    pool = Pool(PoolSpec(limit_per_host=1), loop, resolver)
    key = ("http", "127.0.0.1", port, b"")
    timeout = ClientTimeout()
    try:
        first = await pool.acquire(key, timeout)
        waiting = asyncio.ensure_future(pool.acquire(key, timeout))
        await asyncio.sleep(0)
        assert len(pool.state.waiters) == 1
        waiting.cancel()  # cancels the waiter's future now; its task leaves the queue later
        first.in_use = False
        pool.release(first, reusable=False)  # in between: the freed slot goes to the quitter
        try:
            await waiting
        except asyncio.CancelledError:
            pass
        assert pool.state.per_key.get(key, 0) == 0 and None not in pool.state.per_key
        second = await asyncio.wait_for(pool.acquire(key, timeout), 2)
        assert pool.state.per_key == {key: 1}
        second.in_use = False
        pool.release(second, reusable=False)
    finally:
        await pool.close()
        await resolver.close()


class _Hooked(HTTP1Connection):
    """A connection that runs ``on_made`` as soon as its transport is made."""

    on_made: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if _Hooked.on_made is not None:
            _Hooked.on_made()


class _HookedPool(Pool):
    connection_class = _Hooked


def _after(
    loop: asyncio.AbstractEventLoop, passes: int, stop: Callable[[], bool],
    accepted: asyncio.Future[bool],
) -> None:
    """Run ``stop`` after ``passes`` more passes of the loop's ready queue; whether it
    landed before the acquire ended (what ``stop`` returns) goes to ``accepted``."""
    if passes:
        loop.call_soon(_after, loop, passes - 1, stop, accepted)
    else:
        accepted.set_result(stop())


async def _idle_server(raw_server) -> int:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    base = await raw_server(handler)
    return int(base.rsplit(":", 1)[1])


async def test_a_cancel_that_lands_as_the_connect_completes_is_never_lost(raw_server):
    """Cancel the acquire at every loop pass around the moment the connection is made:
    a cancel that was accepted must cancel the acquire (``wait_for`` on Python 3.11
    swallowed it when the connect finished first), and the slot and the connection
    must be given back at once, with no garbage collection."""
    port = await _idle_server(raw_server)
    loop = asyncio.get_running_loop()
    resolver = CachedResolver(ResolverSpec(), loop)
    pool = _HookedPool(PoolSpec(limit=1), loop, resolver)
    key = ("http", "127.0.0.1", port, b"")
    outcomes = set()
    try:
        for passes in range(12):
            task = asyncio.ensure_future(pool.acquire(key, ClientTimeout(connect=30)))
            accepted: asyncio.Future[bool] = loop.create_future()
            _Hooked.on_made = functools.partial(_after, loop, passes, task.cancel, accepted)
            try:
                conn = await task
            except asyncio.CancelledError:
                conn = None
            _Hooked.on_made = None
            if await accepted:
                assert task.cancelled(), f"a cancel after {passes} passes was swallowed"
                assert pool.state.total == 0 and not pool._active
                outcomes.add("cancelled")
            else:
                assert conn is not None and pool.state.total == 1
                conn.in_use = False
                pool.release(conn, reusable=False)
                outcomes.add("connected")
            assert repr(pool.state) == (
                "<PoolState [Requests: 0 active, 0 queued | Connections: 0 open, 0 idle]>"
            )
        assert outcomes == {"cancelled", "connected"}  # both sides of the race were seen
        # and the pool still works: its one slot is free
        conn = await pool.acquire(key, ClientTimeout(connect=2))
        conn.in_use = False
        pool.release(conn, reusable=False)
    finally:
        _Hooked.on_made = None
        await pool.close()
        await resolver.close()
    assert not pool.dialer.closing and not pool.dialer.attempts


async def test_a_cancel_that_lands_as_a_slot_is_granted_gives_the_slot_back(raw_server):
    """The same race for a request queued on a full pool (with a connect timeout, which
    made ``wait_for`` wrap the waiter): the slot granted to a request whose cancel was
    accepted goes to the next request, never to nobody."""
    port = await _idle_server(raw_server)
    loop = asyncio.get_running_loop()
    resolver = CachedResolver(ResolverSpec(), loop)
    pool = Pool(PoolSpec(limit=1), loop, resolver)
    key = ("http", "127.0.0.1", port, b"")
    timeout = ClientTimeout(connect=30)
    try:
        first = await pool.acquire(key, timeout)
        for passes in range(4):
            waiting = asyncio.ensure_future(pool.acquire(key, timeout))
            await asyncio.sleep(0)
            assert len(pool.state.waiters) == 1
            first.in_use = False
            pool.release(first, reusable=True)  # grants the idle connection to `waiting`
            accepted: asyncio.Future[bool] = loop.create_future()
            _after(loop, passes, waiting.cancel, accepted)
            try:
                first = await waiting
            except asyncio.CancelledError:
                assert await accepted
                assert pool.state.n_idle == 1  # handed back, not lost
                first = await pool.acquire(key, timeout)
            else:
                assert not await accepted, f"a cancel after {passes} passes was swallowed"
            assert first.reused and pool.state.total == 1
        first.in_use = False
        pool.release(first, reusable=False)
        assert pool.state.total == 0
    finally:
        await pool.close()
        await resolver.close()


async def test_rate_limited_wait_hands_its_turn_back_when_cancelled():
    loop = asyncio.get_running_loop()
    resolver = CachedResolver(ResolverSpec(), loop)
    pool = Pool(PoolSpec(rate_limit_per_host=20), loop, resolver)
    key = ("http", "h", 80, b"")
    try:
        assert pool.wait_turn(key) is None  # the first start is free: no future at all
        turn = pool.wait_turn(key)
        assert turn is not None and not pool.quiet
        turn.cancel()
        await asyncio.sleep(0)  # the turn's done callback
        assert pool.quiet
        again = pool.wait_turn(key)
        assert again is not None
        # the cancelled turn was handed back: the next one is one interval away, not two
        assert pool.rate is not None and pool.rate._next["h"] - loop.time() <= 0.1
        await again
        assert pool.quiet
    finally:
        await pool.close()
        await resolver.close()


async def test_a_give_up_that_lands_as_the_connect_completes_is_never_lost(raw_server):
    """As the cancel race above, for the way the engine acquires: with the stream, whose
    give-up must end the acquire (StreamStopped) and free the slot at every loop pass
    around the connect's completion, with no garbage collection."""
    port = await _idle_server(raw_server)
    loop = asyncio.get_running_loop()
    resolver = CachedResolver(ResolverSpec(), loop)
    pool = _HookedPool(PoolSpec(limit=1), loop, resolver)
    key = ("http", "127.0.0.1", port, b"")
    outcomes = set()
    try:
        for passes in range(12):
            stream = BrokerStream(1)
            task = asyncio.ensure_future(pool.acquire(key, ClientTimeout(connect=30), stream))
            accepted: asyncio.Future[bool] = loop.create_future()

            def give_up(stream: BrokerStream = stream, task: asyncio.Future = task) -> bool:
                landed = not task.done()
                stream.give_up()
                return landed

            _Hooked.on_made = functools.partial(_after, loop, passes, give_up, accepted)
            try:
                conn = await task
            except StreamStopped:
                conn = None
            _Hooked.on_made = None
            if await accepted:
                assert conn is None, f"a give-up after {passes} passes was lost"
                outcomes.add("given up")
            else:
                assert conn is not None
                conn.in_use = False
                pool.release(conn, reusable=False)
                outcomes.add("connected")
            await wait_until(lambda: pool.state.total == 0, 5, lambda: repr(pool.state))
            assert not pool._active
        assert outcomes == {"given up", "connected"}
    finally:
        _Hooked.on_made = None
        await pool.close()
        await resolver.close()
