"""The broker's resolvers against a real DNS server on loopback (dnslib), no outside traffic.

The ``dns_server`` fixture is meant for reuse (end-to-end tests point an
``AsyncResolver`` at it); see ``FakeDNS``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from broker.registry import Registry
from broker.resolver import CachedResolver, ResolvedAddress
from shared.specs import PoolSpec, ResolverSpec
from worker_client.resolver import AsyncResolver, ThreadedResolver


class FakeDNS(BaseResolver):
    """An authoritative server for a few fake names on 127.0.0.1 (UDP and TCP, one port).

    - ``port``: where it listens; point c-ares at it with ``nameservers=["127.0.0.1"]``
      and options ``udp_port=port, tcp_port=port`` (or ``nameservers=[f"127.0.0.1:{port}"]``).
      ``resolver_options`` / ``resolver_spec()`` / ``async_resolver()`` build those.
    - ``queries``: a ``Counter`` of questions seen per name (lower case, no trailing dot),
      every type counted, so resolve with ``family=AF_INET`` to see one query per lookup.
    - ``add_record(name, ip)``: answer ``name`` with an A or AAAA record; other names get
      NXDOMAIN. ``svc.test`` and ``api.test`` -> 127.0.0.1, ``v6.test`` -> ::1 to start.
    - ``hold()`` / ``release()``: while held, answers wait (for single-flight, cancel and
      close tests); ``await asked(name)`` returns once a question for ``name`` has come.
    - ``ttl``: the TTL of answers, 0 by default: c-ares 1.34 keeps a query cache of its
      own that honours record TTLs, which would hide lookups from ``queries``.
    """

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.queries: Counter[str] = Counter()
        self.ttl = 0
        self.port = 0
        self._lock = threading.Lock()
        self._answering = threading.Event()
        self._answering.set()
        self._watchers: list[tuple[str, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        for name in ("svc.test", "api.test"):
            self.add_record(name, "127.0.0.1")
        self.add_record("v6.test", "::1")

    def add_record(self, name: str, ip: str) -> None:
        with self._lock:
            self.records.setdefault(name.lower().rstrip("."), []).append(ip)

    def hold(self) -> None:
        self._answering.clear()

    def release(self) -> None:
        self._answering.set()

    async def asked(self, name: str, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        came: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self.queries[name]:
                return
            self._watchers.append((name, loop, came))
        await asyncio.wait_for(came, timeout)

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        name = str(request.q.qname).lower().rstrip(".")
        qtype = request.q.qtype
        with self._lock:
            self.queries[name] += 1
            ips = list(self.records.get(name, ()))
            ttl = self.ttl
            told = [w for w in self._watchers if w[0] == name]
            self._watchers = [w for w in self._watchers if w[0] != name]
        for _, loop, came in told:
            loop.call_soon_threadsafe(_settle, came)
        self._answering.wait()
        reply = request.reply()
        if not ips:
            reply.header.rcode = RCODE.NXDOMAIN
        for ip in ips:
            if ipaddress.ip_address(ip).version == 4 and qtype in (QTYPE.A, QTYPE.ANY):
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=ttl))
            elif ipaddress.ip_address(ip).version == 6 and qtype in (QTYPE.AAAA, QTYPE.ANY):
                reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(ip), ttl=ttl))
        return reply

    @property
    def resolver_options(self) -> dict[str, Any]:
        """kwargs for ``AsyncResolver`` that reach this server quickly or fail fast."""
        return {"udp_port": self.port, "tcp_port": self.port, "timeout": 1, "tries": 1}

    def resolver_spec(self) -> ResolverSpec:
        return self.async_resolver().spec

    def async_resolver(self) -> AsyncResolver:
        return AsyncResolver(nameservers=["127.0.0.1"], **self.resolver_options)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _start_servers(fake: FakeDNS) -> list[DNSServer]:
    quiet = DNSLogger(logf=lambda _: None)
    for _ in range(20):  # the UDP port picked by the OS may be taken for TCP
        udp = DNSServer(fake, address="127.0.0.1", port=0, logger=quiet)
        port = udp.server.server_address[1]
        try:
            tcp = DNSServer(fake, address="127.0.0.1", port=port, tcp=True, logger=quiet)
        except OSError:
            udp.server.server_close()
            continue
        fake.port = port
        return [udp, tcp]
    raise RuntimeError("no port free for both UDP and TCP")


@pytest.fixture
def dns_server() -> Iterator[FakeDNS]:
    """A ``FakeDNS`` serving on 127.0.0.1:``port`` in background threads for one test."""
    fake = FakeDNS()
    servers = [server.server for server in _start_servers(fake)]
    for server in servers:
        server.daemon_threads = False  # so that server_close() waits for late answers
    threads = [
        # a short poll interval: shutdown() waits for the serving loop to notice
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        for s in servers
    ]
    for thread in threads:
        thread.start()
    yield fake
    fake.release()  # held answers go out now
    for server, thread in zip(servers, threads, strict=True):
        server.shutdown()
        # An answer to a lookup that the test gave up on may meet the closed socket.
        server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        server.server_close()  # joins the handler threads (daemon_threads is False)
        thread.join(timeout=5)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make_resolver(dns_server: FakeDNS):
    """``make_resolver(**kwargs)`` -> a CachedResolver for dns_server, closed afterwards."""
    made: list[CachedResolver] = []

    def make(spec: ResolverSpec | None = None, **kwargs: Any) -> CachedResolver:
        resolver = CachedResolver(
            spec or dns_server.resolver_spec(), asyncio.get_running_loop(), **kwargs
        )
        made.append(resolver)
        return resolver

    yield make
    for resolver in made:
        await resolver.close()


async def test_resolves_through_the_fake_server(dns_server, make_resolver):
    resolver = make_resolver()
    [addr] = await resolver.resolve("svc.test", 80, socket.AF_INET)
    assert addr == ResolvedAddress("svc.test", "127.0.0.1", 80, socket.AF_INET)
    assert set(addr.as_dict()) == {"hostname", "host", "port", "family", "proto", "flags"}
    assert dns_server.queries["svc.test"] == 1


async def test_aaaa_record(dns_server, make_resolver):
    [addr] = await make_resolver().resolve("v6.test", 443, socket.AF_INET6)
    assert (addr.host, addr.port, addr.family) == ("::1", 443, socket.AF_INET6)


async def test_second_resolve_is_a_cache_hit(dns_server, make_resolver):
    resolver = make_resolver()
    first = await resolver.resolve("svc.test", 80, socket.AF_INET)
    assert await resolver.resolve("svc.test", 80, socket.AF_INET) == first
    assert dns_server.queries["svc.test"] == 1
    assert resolver.figures() == {"hits": 1, "misses": 1, "size": 1, "inflight": 0}
    assert "1 hosts, 1 hits, 1 misses" in repr(resolver)


async def test_ttl_expiry(dns_server, make_resolver):
    clock = Clock()
    resolver = make_resolver(ttl=10, clock=clock)
    await resolver.resolve("svc.test", 80, socket.AF_INET)
    clock.now = 9.9
    await resolver.resolve("svc.test", 80, socket.AF_INET)
    assert dns_server.queries["svc.test"] == 1
    clock.now = 10.0
    await resolver.resolve("svc.test", 80, socket.AF_INET)
    assert dns_server.queries["svc.test"] == 2


async def test_without_cache_every_resolve_asks(dns_server, make_resolver):
    resolver = make_resolver(use_cache=False)
    for _ in range(3):
        await resolver.resolve("svc.test", 80, socket.AF_INET)
    assert dns_server.queries["svc.test"] == 3
    assert resolver.figures()["size"] == 0


async def test_single_flight(dns_server, make_resolver):
    dns_server.hold()
    resolver = make_resolver()
    lookups = asyncio.gather(*(resolver.resolve("svc.test", 80, socket.AF_INET) for _ in range(10)))
    await dns_server.asked("svc.test")
    dns_server.release()
    results = await lookups
    assert all(r == results[0] for r in results)
    assert dns_server.queries["svc.test"] == 1
    assert resolver.figures()["inflight"] == 0


async def test_keys_are_host_port_and_family(dns_server, make_resolver):
    resolver = make_resolver()
    await resolver.resolve("svc.test", 80, socket.AF_INET)
    await resolver.resolve("svc.test", 443, socket.AF_INET)
    await resolver.resolve("api.test", 80, socket.AF_INET)
    assert dns_server.queries == Counter({"svc.test": 2, "api.test": 1})
    assert resolver.figures()["size"] == 3


async def test_nxdomain_is_an_oserror_and_not_cached(dns_server, make_resolver):
    resolver = make_resolver()
    for attempt in (1, 2):
        with pytest.raises(OSError) as info:
            await resolver.resolve("missing.test", 80, socket.AF_INET)
        assert dns_server.queries["missing.test"] == attempt
    exc = info.value
    assert isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_NONAME
    assert exc.strerror == "Domain name not found"
    assert resolver.figures()["size"] == 0


async def test_a_failure_fails_every_waiter_once(dns_server, make_resolver):
    dns_server.hold()
    resolver = make_resolver()
    lookups = asyncio.gather(
        *(resolver.resolve("missing.test", 80, socket.AF_INET) for _ in range(5)),
        return_exceptions=True,
    )
    await dns_server.asked("missing.test")
    dns_server.release()
    results = await lookups
    assert all(isinstance(r, socket.gaierror) for r in results)
    assert dns_server.queries["missing.test"] == 1


async def test_a_cancelled_waiter_leaves_the_lookup_to_the_others(dns_server, make_resolver):
    dns_server.hold()
    resolver = make_resolver()
    tasks = [
        asyncio.create_task(resolver.resolve("svc.test", 80, socket.AF_INET)) for _ in range(3)
    ]
    await dns_server.asked("svc.test")
    tasks[0].cancel()  # the one that started the lookup
    dns_server.release()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[0], asyncio.CancelledError)
    assert done[1] == done[2] and done[1][0].host == "127.0.0.1"
    assert dns_server.queries["svc.test"] == 1


async def test_a_timed_out_caller_still_fills_the_cache(dns_server, make_resolver):
    dns_server.hold()
    resolver = make_resolver()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(resolver.resolve("svc.test", 80, socket.AF_INET), 0.01)
    dns_server.release()
    await resolver.resolve("svc.test", 80, socket.AF_INET)  # joins the lookup that went on
    assert dns_server.queries["svc.test"] == 1
    assert resolver.figures()["size"] == 1


async def test_clear(dns_server, make_resolver):
    resolver = make_resolver()
    await resolver.resolve("svc.test", 80, socket.AF_INET)
    await resolver.resolve("svc.test", 80, socket.AF_INET)
    await resolver.resolve("api.test", 80, socket.AF_INET)
    resolver.clear("svc.test", 80)
    assert resolver.figures()["size"] == 1
    resolver.clear()
    assert resolver.figures() == {"hits": 1, "misses": 2, "size": 0, "inflight": 0}
    await resolver.resolve("svc.test", 80, socket.AF_INET)
    assert dns_server.queries["svc.test"] == 2
    with pytest.raises(ValueError, match="both host and port"):
        resolver.clear("svc.test")


async def test_clear_during_a_lookup_keeps_its_answer_out(dns_server, make_resolver):
    dns_server.hold()
    resolver = make_resolver()
    task = asyncio.create_task(resolver.resolve("svc.test", 80, socket.AF_INET))
    await dns_server.asked("svc.test")
    resolver.clear()
    dns_server.release()
    assert (await task)[0].host == "127.0.0.1"
    assert resolver.figures()["size"] == 0


async def test_ip_literal_makes_no_query(dns_server, make_resolver):
    resolver = make_resolver()
    [v4] = await resolver.resolve("127.0.0.1", 80, socket.AF_INET)
    [v6] = await resolver.resolve("::1", 80, 0)
    assert (v4.host, v4.family) == ("127.0.0.1", socket.AF_INET)
    assert (v6.host, v6.family) == ("::1", socket.AF_INET6)
    assert sum(dns_server.queries.values()) == 0
    assert resolver.figures() == {"hits": 0, "misses": 0, "size": 0, "inflight": 0}


async def test_threaded_kind_resolves_localhost(make_resolver):
    resolver = make_resolver(ResolverSpec(kind="threaded"))
    addrs = await resolver.resolve("localhost", 8080, socket.AF_INET)
    assert (addrs[0].host, addrs[0].port, addrs[0].family) == (
        "127.0.0.1", 8080, socket.AF_INET
    )


async def test_nameserver_with_its_own_port(dns_server, make_resolver):
    spec = ResolverSpec(kind="async", nameservers=(f"127.0.0.1:{dns_server.port}",))
    [addr] = await make_resolver(spec).resolve("api.test", 80, socket.AF_INET)
    assert addr.host == "127.0.0.1"


async def test_every_accepted_nameserver_form_builds_a_channel(make_resolver):
    good = ["127.0.0.1", "127.0.0.1:5353", "::1", "[::1]:53", "fe80::1%lo", "[fe80::1]:53%lo"]
    make_resolver(AsyncResolver(nameservers=good, timeout=1).spec)


async def test_pools_share_one_resolver_per_setting(dns_server):
    registry = Registry(asyncio.get_running_loop())
    spec = dns_server.resolver_spec()

    def resolver(**kwargs: Any) -> CachedResolver:
        return registry.pool(PoolSpec(**kwargs))._resolver

    try:
        first = resolver(resolver=spec, name="a")
        assert resolver(resolver=dns_server.resolver_spec(), ttl_dns_cache=10.0) is first
        assert resolver(resolver=spec, ttl_dns_cache=None) is not first
        assert resolver(name="threaded") is not first
        await first.resolve("svc.test", 80, socket.AF_INET)
        await resolver(resolver=spec, name="b").resolve("svc.test", 80, socket.AF_INET)
        assert dns_server.queries["svc.test"] == 1
        figures = registry.dns_figures()
        assert len(figures) == len(registry.resolvers) == 3
        assert figures[0] == {
            "kind": "async",
            "nameservers": ["127.0.0.1"],
            "ttl": 10,
            "max_size": 1000,
            "use_cache": True,
            "hits": 1,
            "misses": 1,
            "size": 1,
            "inflight": 0,
        }
    finally:
        await registry.close()
    assert first.closed and not registry.resolvers


async def test_close_fails_lookups_in_flight(dns_server, make_resolver):
    dns_server.hold()
    resolver = make_resolver()
    task = asyncio.create_task(resolver.resolve("svc.test", 80, socket.AF_INET))
    await dns_server.asked("svc.test")
    await resolver.close()
    with pytest.raises(socket.gaierror, match="closed"):
        await task
    with pytest.raises(OSError, match="closed"):
        await resolver.resolve("svc.test", 80, socket.AF_INET)


async def test_async_resolver_in_process(dns_server):
    resolver = dns_server.async_resolver()
    try:
        [addr] = await resolver.resolve("svc.test", 80)  # aiohttp's dicts, not ours
        assert (addr["host"], addr["port"], addr["family"]) == ("127.0.0.1", 80, socket.AF_INET)
        await resolver.resolve("svc.test", 80)
        assert dns_server.queries["svc.test"] == 2  # no cache in-process
        with pytest.raises(OSError, match="Domain name not found"):
            await resolver.resolve("missing.test")
    finally:
        await resolver.close()


async def test_threaded_resolver_in_process():
    resolver = ThreadedResolver()
    try:
        addrs = await resolver.resolve("localhost", 80)
        assert addrs[0]["host"] == "127.0.0.1"
    finally:
        await resolver.close()
