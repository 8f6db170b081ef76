"""The engine's pools and resolvers: one per spec, evicted when idle, capped, closed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref

import psutil
import pytest

import broker
from broker.connector import Pool
from broker.failures import ConnectionFailure
from broker.registry import MAX_POOLS, MAX_RESOLVERS, POOL_IDLE_TTL, Registry
from shared.specs import ClientTimeout, PoolSpec, ResolverSpec
from worker_client import AsyncResolver, ClientSession, TCPConnector

from ..conftest import wait_until
from .apps import text_app
from .test_dns import FakeDNS, dns_server  # noqa: F401  (the fixture)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def port(raw_server) -> int:
    """A server that accepts connections and keeps them open."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    base = await raw_server(handler)
    return int(base.rsplit(":", 1)[1])


async def _use(pool: Pool, host: str, port: int, keep: bool = False) -> None:
    """One connection taken from ``pool`` and given back (closed unless ``keep``)."""
    conn = await pool.acquire(("http", host, port, b""), ClientTimeout(connect=5))
    conn.in_use = False
    pool.release(conn, reusable=keep)


async def _closed(registry: Registry) -> None:
    """Wait for the evicted pools and resolvers to finish closing."""
    while registry._closing:
        await asyncio.gather(*registry._closing)


def _names(registry: Registry) -> list[str]:
    return sorted(f["pool"] for f in registry.figures())


def test_the_caps_are_written_down():
    assert (MAX_POOLS, MAX_RESOLVERS, POOL_IDLE_TTL) == (512, 64, 60.0)


async def test_a_pool_unused_for_idle_ttl_is_evicted(port):
    clock = Clock()
    registry = Registry(asyncio.get_running_loop(), clock=clock, idle_ttl=60)
    idle, kept, busy = PoolSpec(name="idle"), PoolSpec(name="kept"), PoolSpec(name="busy")
    try:
        pool = registry.pool(idle)
        await _use(pool, "127.0.0.1", port)
        await _use(registry.pool(kept), "127.0.0.1", port, keep=True)  # one idle connection
        conn = await registry.pool(busy).acquire(("http", "127.0.0.1", port, b""), ClientTimeout())
        clock.now += 59.9
        assert registry.sweep() == 0
        assert registry.pool(idle) is pool
        clock.now += 0.1
        assert registry.sweep() == 1  # only the pool with nothing open and nothing to do
        assert pool.closed and _names(registry) == ["busy", "kept"]
        assert registry.pool(idle) is not pool  # a fresh one, should the spec come back
        conn.in_use = False
        registry.pool(busy).release(conn, reusable=False)
        clock.now += 60
        assert registry.sweep() == 2  # "busy" now, and the fresh "idle"
        assert len(registry) == 1
        await _closed(registry)
    finally:
        await registry.close()


async def test_over_the_cap_the_least_recently_used_quiet_pool_goes(port):
    registry = Registry(asyncio.get_running_loop(), max_pools=3)
    a, b, c, d, e = (PoolSpec(name=n) for n in "abcde")
    try:
        for spec in (a, b, c):
            await _use(registry.pool(spec), "127.0.0.1", port, keep=True)
        registry.pool(a)  # used again: b is now the least recently used
        registry.pool(d)
        assert _names(registry) == ["a", "c", "d"]
        conn = await registry.pool(c).acquire(("http", "127.0.0.1", port, b""), ClientTimeout())
        registry.pool(e)  # a is the least recently used: it goes, its idle connection closed
        assert _names(registry) == ["c", "d", "e"]
        conn_e = await registry.pool(e).acquire(("http", "127.0.0.1", port, b""), ClientTimeout())
        connecting = asyncio.ensure_future(_use(registry.pool(d), "127.0.0.1", port))
        await asyncio.sleep(0)  # d is connecting: busy too
        with pytest.raises(ConnectionFailure) as info:
            registry.pool(PoolSpec(name="f"))
        assert info.value.code == "connection"
        assert "too many connection pools in use at once (at most 3)" in info.value.message
        assert len(registry) == 3 and len(registry.resolvers) == 1
        await connecting
        registry.pool(PoolSpec(name="f"))  # d is quiet again, with one idle connection
        assert _names(registry) == ["c", "e", "f"]
        conn_e.in_use = False
        registry.pool(e).release(conn_e, reusable=False)
        conn.in_use = False
        registry.pool(c).release(conn, reusable=False)
        await _closed(registry)
        assert registry.evicted == 3  # b, a, d
    finally:
        await registry.close()


async def test_a_pool_spec_per_request_does_not_leak(port):
    """2,000 connectors, each with a new ``name=``: the pools stay under the cap, and an
    evicted pool is freed (by reference counting alone, no garbage collection)."""
    registry = Registry(asyncio.get_running_loop(), max_pools=64)
    refs: list[weakref.ref[Pool]] = []
    try:
        for i in range(2000):
            pool = registry.pool(PoolSpec(name=f"request-{i}"))
            if i % 4 == 0:  # a connection for one in four: kept idle, or closed
                await _use(pool, "127.0.0.1", port, keep=i % 8 == 0)
            if i % 100 == 0:
                refs.append(weakref.ref(pool))
            assert len(registry) <= 64
        del pool
        await _closed(registry)
        assert registry.evicted == 2000 - 64
        assert [r() for r in refs[:-1]] == [None] * (len(refs) - 1)
        assert len(registry.resolvers) == 1
    finally:
        await registry.close()


def _resources() -> tuple[int, int]:
    me = psutil.Process(os.getpid())
    return me.num_threads(), me.num_fds()


async def test_a_resolver_no_pool_uses_is_closed(dns_server: FakeDNS, port):  # noqa: F811
    """250 distinct c-ares resolver settings, each used for a lookup and a connect: at
    most ``max_resolvers`` channels live at once, and each evicted one gives back its
    thread and descriptors (without eviction: +251 threads, +877 fds)."""
    registry = Registry(asyncio.get_running_loop(), max_resolvers=8)
    threads0, fds0 = _resources()
    dns_threads = threading.active_count()  # the fake DNS server's own threads vary
    try:
        for i in range(250):
            resolver = AsyncResolver(
                nameservers=["127.0.0.1"],
                **{**dns_server.resolver_options, "timeout": 1 + i / 1000},
            )
            pool = registry.pool(PoolSpec(resolver=resolver.spec))
            await _use(pool, "svc.test", port)
            assert len(registry.resolvers) <= 8
        await _closed(registry)
        assert len(registry) == 8 and registry.evicted == 242

        def bounded() -> bool:
            threads, fds = _resources()
            slack = threading.active_count() - dns_threads + 2  # + pycares' destroyer
            return threads <= threads0 + 8 + slack and fds <= fds0 + 8 * 4 + slack

        # pycares destroys a closed channel (joining its thread, closing its fds) in a
        # thread of its own and tells no one: no event to wait on
        await wait_until(bounded, 10, _resources)
    finally:
        await registry.close()

    def released() -> bool:
        threads, fds = _resources()
        slack = threading.active_count() - dns_threads + 2
        return threads <= threads0 + slack and fds <= fds0 + slack

    await wait_until(released, 10, _resources)


async def test_the_resolver_cap_refuses_when_every_resolver_is_busy(port):
    registry = Registry(asyncio.get_running_loop(), max_resolvers=2)
    c_ares = ResolverSpec(kind="async", nameservers=("127.0.0.1",))
    specs = [PoolSpec(ttl_dns_cache=t, resolver=c_ares) for t in (1, 2, 3)]
    try:
        busy = [
            await registry.pool(s).acquire(("http", "127.0.0.1", port, b""), ClientTimeout())
            for s in specs[:2]
        ]
        with pytest.raises(ConnectionFailure, match=r"too many resolvers .*at most 2"):
            registry.pool(specs[2])
        assert len(registry) == 2 and len(registry.resolvers) == 2
        # threaded resolvers are not capped: the default one can always be had
        registry.pool(PoolSpec())
        assert len(registry.resolvers) == 3
        busy[0].in_use = False
        registry.pool(specs[0]).release(busy[0], reusable=False)
        first_resolver = registry.pool(specs[0])._resolver
        registry.pool(specs[1])  # specs[0] is now the least recently used, and quiet
        registry.pool(specs[2])
        assert len(registry.resolvers) == 3 and first_resolver not in registry.resolvers
        await _closed(registry)
        assert first_resolver.closed
    finally:
        await registry.close()


async def test_a_resolver_that_cannot_be_made_fails_the_request_only():
    registry = Registry(asyncio.get_running_loop())
    try:
        for option in (("no_such_option", 1), ("udp_port", -5), ("tries", "x")):
            bad = PoolSpec(resolver=ResolverSpec(kind="async", options=(option,)))
            with pytest.raises(ConnectionFailure, match="cannot make the resolver"):
                registry.pool(bad)
        assert len(registry) == 0 and registry.resolvers == []
        registry.pool(PoolSpec())
    finally:
        await registry.close()


async def test_clear_dns_never_makes_a_resolver():
    registry = Registry(asyncio.get_running_loop())
    try:
        odd = PoolSpec(resolver=AsyncResolver(nameservers=["127.0.0.1"], tries=3).spec)
        registry.clear_dns(odd, None, None)
        registry.clear_dns(odd, "a.test", 80)
        assert registry.resolvers == [] and registry.dns_figures() == []
    finally:
        await registry.close()


@pytest.mark.parametrize("mode", ["embedded", "broker"])
async def test_distinct_resolver_specs_do_not_pile_up_channels(
    mode, serve_app, dns_server: FakeDNS  # noqa: F811
):
    """250 sessions, each with its own ``AsyncResolver`` settings, one request each:
    the process that resolves (this one, or a broker of the test's own) keeps at most
    ``MAX_RESOLVERS`` c-ares channels, not one per setting (+251 threads, +877 fds
    before)."""
    base = await serve_app(text_app())
    port = int(base.rsplit(":", 1)[1])
    with contextlib.ExitStack() as stack:
        if mode == "broker":
            proc = stack.enter_context(broker.start(export=False, drain_timeout=2))
            address: str | None = proc.socket_path
            resolving = psutil.Process(proc.pid)
        else:
            address, resolving = None, psutil.Process(os.getpid())
        # the holder keeps the embedded engine alive between the sessions
        async with ClientSession(broker=address) as holder:
            async with holder.get(base + "/") as resp:
                await resp.read()
            threads0, fds0 = resolving.num_threads(), resolving.num_fds()
            dns_threads = threading.active_count()
            for i in range(250):
                resolver = AsyncResolver(
                    nameservers=["127.0.0.1"],
                    **{**dns_server.resolver_options, "timeout": 2 + i / 1000},
                )
                connector = TCPConnector(resolver=resolver, force_close=True)
                async with ClientSession(broker=address, connector=connector) as session:
                    async with session.get(f"http://svc.test:{port}/") as resp:
                        assert await resp.text() == "ok"

            def bounded() -> bool:
                slack = 4 + (threading.active_count() - dns_threads if mode == "embedded" else 0)
                return (
                    resolving.num_threads() <= threads0 + MAX_RESOLVERS + slack
                    and resolving.num_fds() <= fds0 + 4 * MAX_RESOLVERS + slack
                )

            await wait_until(bounded, 10, lambda: (resolving.num_threads(), resolving.num_fds()))
            stats = await holder.stats()
            assert sum(d["kind"] == "async" for d in stats.dns) <= MAX_RESOLVERS


async def test_a_pool_evicted_to_make_room_leaves_its_successor_an_open_resolver():
    """At the pool cap, the new pool shares its resolver with the one evicted for it:
    the resolver must be the new pool's, open, not closed with the old one's last use."""
    registry = Registry(asyncio.get_running_loop(), max_pools=1)
    try:
        registry.pool(PoolSpec(name="a"))
        b = registry.pool(PoolSpec(name="b"))
        assert len(registry) == 1
        assert not b._resolver.closed and registry.resolvers == [b._resolver]
    finally:
        await registry.close()
