"""The broker-wide cap on open connections on the pools' asyncio side: waiting for a
place is cancellation-safe, bounded by the connect timeout, and an idle connection of
another pool is closed to make room."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from broker.dialer import NO_TLS, ConnKey
from broker.failures import ConnectionFailure
from broker.registry import Registry
from broker.stream import BrokerStream
from shared.messages import TraceEvent
from shared.specs import ClientTimeout, PoolSpec

from ..conftest import wait_until

# A connect waiting for the cap announces nothing (its trace's connection_create_start
# comes before the connect task runs, let alone reaches the cap; the server sees no
# connection): the tests poll ``cap.waiters`` for it, the one wait with no event.


@pytest.fixture
def accepted() -> list[asyncio.StreamWriter]:
    return []


@pytest.fixture
async def key(raw_server: Any, accepted: list[asyncio.StreamWriter]) -> ConnKey:
    """The connection key of a raw server that holds every connection it takes
    (``accepted``) open, reading."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()

    port = int((await raw_server(handler)).rsplit(":", 1)[1])
    return ("http", "127.0.0.1", port, NO_TLS, b"")


class QueueTrace(BrokerStream):
    """Where a traced acquire's events go: ``queued`` is set by its
    ``connection_queued_start``, as it waits in its pool's queue."""

    def __init__(self) -> None:
        super().__init__(1)
        self.queued = asyncio.Event()

    def _send_trace(self, event: TraceEvent) -> None:
        if event.kind == "connection_queued_start":
            self.queued.set()


async def test_waiting_for_the_cap_is_cancellation_safe_and_bounded(key):
    registry = Registry(asyncio.get_running_loop(), max_connections=1)
    one, two = registry.pool(PoolSpec(limit=10)), registry.pool(PoolSpec(limit=20))
    cap = registry.cap
    try:
        first = await one.acquire(key, ClientTimeout())
        assert cap.open == 1

        waiting = asyncio.ensure_future(two.acquire(key, ClientTimeout()))
        await wait_until(lambda: cap.waiters, what="a connect waiting for the cap")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not cap.waiters and cap.open == 1 and two.state.total == 0

        with pytest.raises(ConnectionFailure) as info:
            await two.acquire(key, ClientTimeout(connect=0.05))
        assert info.value.code == "connect_timeout"
        assert not cap.waiters and cap.open == 1 and two.state.total == 0

        waiting = asyncio.ensure_future(two.acquire(key, ClientTimeout()))
        await wait_until(lambda: cap.waiters, what="a connect waiting for the cap")
        first.in_use = False
        one.release(first, reusable=True)  # idle in pool one: closed to make room
        second = await asyncio.wait_for(waiting, 5)
        assert one.state.total == 0 and two.state.total == 1 and cap.open == 1
        second.in_use = False
        two.release(second, reusable=False)
        await second.wait_closed()
        assert cap.open == 0
    finally:
        with contextlib.suppress(Exception):
            await registry.close()
    assert cap.open == 0 and not cap.waiters


async def test_raising_the_cap_lets_the_waiters_through(key):
    registry = Registry(asyncio.get_running_loop(), max_connections=1)
    pool = registry.pool(PoolSpec(limit=10))
    try:
        first = await pool.acquire(key, ClientTimeout())
        waiting = asyncio.ensure_future(pool.acquire(key, ClientTimeout()))
        await wait_until(lambda: registry.cap.waiters, what="a connect waiting for the cap")
        registry.set_max_connections(2)
        second = await asyncio.wait_for(waiting, 5)
        assert registry.cap.open == 2 and second is not first
        for conn in (first, second):
            conn.in_use = False
            pool.release(conn, reusable=False)
    finally:
        await registry.close()


async def test_a_grant_handed_back_idle_makes_room_for_a_waiter(key):
    """A connection granted to a pool waiter that was cancelled as it got it goes back
    idle (``_return_grant``): with a connect waiting for the cap, it is closed to make
    room, not left idle until its keep-alive ends."""

    registry = Registry(asyncio.get_running_loop(), max_connections=1)
    one = registry.pool(PoolSpec(limit=1, keepalive_timeout=3600))
    two = registry.pool(PoolSpec(limit=10))
    try:
        first = await one.acquire(key, ClientTimeout())
        trace = QueueTrace()
        queued = asyncio.ensure_future(one.acquire(key, ClientTimeout(), trace=trace))
        await trace.queued.wait()
        assert one.state.waiters
        waiting = asyncio.ensure_future(two.acquire(key, ClientTimeout()))
        await wait_until(lambda: registry.cap.waiters, what="a connect waiting for the cap")
        first.in_use = False
        one.release(first, reusable=True)  # granted to the queued request...
        queued.cancel()  # ...which is cancelled before it runs: the grant comes back
        with pytest.raises(asyncio.CancelledError):
            await queued
        second = await asyncio.wait_for(waiting, 5)
        assert one.state.total == 0 and two.state.total == 1 and registry.cap.open == 1
        second.in_use = False
        two.release(second, reusable=False)
    finally:
        await registry.close()


async def test_a_request_waiting_for_the_cap_is_queued_in_the_figures(key):
    """``stats``: a request waiting for a place under the cap is a queued request of its
    pool and host (with its wait), not an open, active connection that does not exist."""

    clock = [100.0]
    registry = Registry(asyncio.get_running_loop(), max_connections=1, clock=lambda: clock[0])
    one, two = registry.pool(PoolSpec(limit=10)), registry.pool(PoolSpec(limit=20))
    label = f"http://127.0.0.1:{key[2]}"
    try:
        first = await one.acquire(key, ClientTimeout())
        waiting = asyncio.ensure_future(two.acquire(key, ClientTimeout()))
        await wait_until(lambda: registry.cap.waiters, what="a connect waiting for the cap")
        clock[0] += 2.5
        figures = two.figures()
        assert (figures["open"], figures["active"], figures["idle"]) == (0, 0, 0)
        assert figures["queued"] == 1 and figures["longest_wait"] == 2.5
        host = figures["hosts"][label]
        assert (host["open"], host["active"], host["queued"], host["longest_wait"]) == (
            0, 0, 1, 2.5
        )
        assert one.figures()["open"] == 1 and one.figures()["queued"] == 0
        first.in_use = False
        one.release(first, reusable=False)
        second = await asyncio.wait_for(waiting, 5)
        figures = two.figures()
        assert (figures["open"], figures["active"], figures["queued"]) == (1, 1, 0)
        second.in_use = False
        two.release(second, reusable=False)
    finally:
        await registry.close()


async def test_keep_alive_holds_under_the_cap(key, accepted):
    """A connection released idle goes to a connect of its pool and host waiting for the
    cap, rather than being closed to make room for a new one to the same place: ten
    requests through a cap of one use one connection, as through a pool limit of one."""
    registry = Registry(asyncio.get_running_loop(), max_connections=1)
    pool = registry.pool(PoolSpec(limit=10))
    first = await pool.acquire(key, ClientTimeout())
    try:
        waiting = [asyncio.ensure_future(pool.acquire(key, ClientTimeout())) for _ in range(9)]
        await wait_until(lambda: len(registry.cap.waiters) == 9, what="nine connects waiting")
        conn = first
        for i in range(9):
            conn.in_use = False
            pool.release(conn, reusable=True)
            conn = await asyncio.wait_for(waiting[i], 5)
            assert conn is first and conn.reused
            assert registry.cap.open == 1 and len(registry.cap.waiters) == 8 - i
        figures = pool.figures()
        assert (figures["open"], figures["active"], figures["queued"]) == (1, 1, 0)
        conn.in_use = False
        pool.release(conn, reusable=True)
        assert pool.figures()["idle"] == 1 and len(accepted) == 1
    finally:
        await registry.close()
    assert registry.cap.open == 0


async def test_a_connection_handed_to_a_connect_cancelled_meanwhile_goes_back(key):
    registry = Registry(asyncio.get_running_loop(), max_connections=1)
    pool = registry.pool(PoolSpec(limit=10))
    try:
        first = await pool.acquire(key, ClientTimeout())
        waiting = asyncio.ensure_future(pool.acquire(key, ClientTimeout()))
        await wait_until(lambda: registry.cap.waiters, what="a connect waiting for the cap")
        first.in_use = False
        pool.release(first, reusable=True)  # handed to the waiting connect...
        waiting.cancel()  # ...cancelled before it ran
        with pytest.raises(asyncio.CancelledError):
            await waiting  # its connect settled the slot for a new one first (_opened)
        assert pool.state.total == 1, repr(pool.state)
        figures = pool.figures()
        assert (figures["open"], figures["idle"], figures["active"]) == (1, 1, 0)
        again = await asyncio.wait_for(pool.acquire(key, ClientTimeout()), 5)
        assert again is first and registry.cap.open == 1
        again.in_use = False
        pool.release(again, reusable=False)
    finally:
        await registry.close()
    assert registry.cap.open == 0 and not registry.cap.waiters
