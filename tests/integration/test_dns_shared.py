"""The broker's DNS cache is the group's: resolved by one worker, a hit for the next."""

from __future__ import annotations

import asyncio

import pytest

from worker_client import (
    AsyncResolver,
    ClientConnectorDNSError,
    ClientSession,
    TCPConnector,
    ThreadedResolver,
)

from . import _workers
from .counting_server import CountingServer
from .test_dns import FakeDNS, dns_server  # noqa: F401  (the fixture)


async def test_a_name_resolved_by_one_worker_is_a_hit_for_another(
    broker_process, dns_server: FakeDNS  # noqa: F811
):
    server = CountingServer()
    port = await server.start()
    loop = asyncio.get_running_loop()
    args = (
        broker_process.socket_path,
        f"http://svc.test:{port}/",
        ["127.0.0.1"],
        dns_server.resolver_options,
    )
    try:
        first = await loop.run_in_executor(
            None, _workers.run_in_processes, _workers.get_with_resolver, [args]
        )
        queries_after_first = dns_server.queries["svc.test"]
        second = await loop.run_in_executor(
            None, _workers.run_in_processes, _workers.get_with_resolver, [args]
        )
    finally:
        await server.stop()
    assert first == second == [200]
    assert queries_after_first >= 1
    assert dns_server.queries["svc.test"] == queries_after_first
    async with ClientSession(broker=broker_process.socket_path) as session:
        stats = await session.stats()
    (fig,) = [d for d in stats.dns if d["kind"] == "async" and d["nameservers"] == ["127.0.0.1"]]
    assert fig["misses"] == 1 and fig["hits"] >= 1


async def test_clear_dns_cache_reaches_the_broker(make_session, dns_server):  # noqa: F811
    server = CountingServer()
    port = await server.start()
    try:
        connector = TCPConnector(
            resolver=dns_server.async_resolver(), force_close=True, name="clear"
        )
        session: ClientSession = make_session(connector=connector)
        url = f"http://api.test:{port}/"
        for _ in range(2):
            async with session.get(url) as resp:
                assert resp.status == 200
        asked = dns_server.queries["api.test"]
        connector.clear_dns_cache()
        async with session.get(url) as resp:
            assert resp.status == 200
        assert dns_server.queries["api.test"] > asked
        with pytest.raises(ValueError):
            connector.clear_dns_cache("api.test")
    finally:
        await server.stop()


async def test_unknown_name_is_a_dns_error(make_session, dns_server):  # noqa: F811
    session: ClientSession = make_session(
        connector=TCPConnector(resolver=dns_server.async_resolver(), name="nx")
    )
    with pytest.raises(ClientConnectorDNSError) as info:
        await session.get("http://nosuch.test:1/")
    assert info.value.host == "nosuch.test"


def test_a_resolver_that_cannot_cross_the_process_boundary_is_refused():
    class Mine(ThreadedResolver):
        async def resolve(self, host, port=0, family=0):  # type: ignore[override]
            return []

    with pytest.raises(TypeError, match="ThreadedResolver"):
        TCPConnector(resolver=Mine())
    assert TCPConnector(resolver=AsyncResolver(nameservers=["127.0.0.1"])).spec == (
        TCPConnector(resolver=AsyncResolver(nameservers=["127.0.0.1"])).spec
    )
