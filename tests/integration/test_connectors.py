"""TCPConnector / UnixConnector behaviour: options, sharing, Unix sockets, retries, rate."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile

import pytest
from aiohttp import web

from shared.specs import PoolSpec, ResolverSpec
from worker_client import ClientConnectorError, ClientSession, TCPConnector, UnixConnector

from ..conftest import read_request_head
from . import _workers
from .apps import counting_app, text_app
from .counting_server import CountingServer


def test_attributes_and_option_checks():
    conn = TCPConnector(limit=30, limit_per_host=5, use_dns_cache=False)
    assert (conn.limit, conn.limit_per_host, conn.use_dns_cache) == (30, 5, False)
    assert conn.force_close is False and conn.closed is False
    with pytest.raises(ValueError, match="keepalive_timeout cannot be set"):
        TCPConnector(force_close=True, keepalive_timeout=30)
    assert TCPConnector(force_close=True).force_close is True
    assert TCPConnector(enable_cleanup_closed=True).spec == TCPConnector().spec
    # Equal arguments, same pool; name= separates.
    assert TCPConnector(limit=8).spec == TCPConnector(limit=8).spec
    assert TCPConnector(limit=8).spec != TCPConnector(limit=8, name="other").spec


async def test_equal_connectors_share_one_pool(make_session, serve_app):
    app, ports = counting_app()
    base = await serve_app(text_app("hi", app))
    a = make_session(connector=TCPConnector(limit=1, name="shared-pool"))
    b = make_session(connector=TCPConnector(limit=1, name="shared-pool"))
    for s in (a, b, a, b):
        async with s.get(base + "/") as resp:
            assert await resp.text() == "hi"
    assert len(set(ports)) == 1  # one keep-alive connection served both sessions
    stats = await a.stats()
    (pool,) = [p for p in stats.pools if p["pool"] == "shared-pool"]
    assert pool["limit"] == 1 and pool["open"] == 1 and pool["idle"] == 1


async def test_connector_owner_false_leaves_the_connector_open(make_session, serve_app):
    base = await serve_app(text_app())
    connector = TCPConnector(name="not-owned")
    s1 = make_session(connector=connector, connector_owner=False)
    async with s1.get(base + "/") as resp:
        assert resp.status == 200
    await s1.close()
    assert not connector.closed
    s2 = make_session(connector=connector, connector_owner=False)
    async with s2.get(base + "/") as resp:
        assert resp.status == 200
    owner = make_session(connector=connector)
    await owner.close()
    assert connector.closed and s2.closed
    with pytest.raises(RuntimeError, match="closed"):
        await s2.get(base + "/")


async def test_unix_connector_reaches_a_server_on_a_unix_socket(make_session):
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"unix {request.host}")

    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "app.sock")
        site = web.UnixSite(runner, path)
        await site.start()
        try:
            conn = UnixConnector(path=path)
            assert conn.path == path
            session: ClientSession = make_session(connector=conn)
            async with session.get("http://localhost/") as resp:
                assert await resp.text() == "unix localhost"
        finally:
            await runner.cleanup()


async def test_stale_keepalive_connection_is_retried_once(make_session, raw_server):
    """The server drops an idle keep-alive connection as the next request arrives."""
    served = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_no = len(served)
        served.append(0)
        while True:
            await read_request_head(reader)
            if conn_no == 0 and served[0] == 1:
                return  # close without answering the reused connection's request
            served[conn_no] += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    base = await raw_server(handler)
    session: ClientSession = make_session()
    for _ in range(2):
        async with session.get(base + "/") as resp:
            assert await resp.read() == b"ok"
    assert served == [1, 1]  # the second request was retried on a fresh connection


async def test_stale_connection_not_retried_for_post(make_session, raw_server):
    from worker_client import ServerDisconnectedError

    count = [0]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request_head(reader)
            count[0] += 1
            if count[0] == 2:
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    base = await raw_server(handler)
    session: ClientSession = make_session()
    async with session.get(base + "/") as resp:
        await resp.read()
    with pytest.raises(ServerDisconnectedError):
        await session.post(base + "/", data=b"x")
    assert count[0] == 2


async def test_rate_limit_per_host_holds_across_workers(broker_process):
    server = CountingServer()
    port = await server.start()
    rate = 20.0
    loop = asyncio.get_running_loop()
    try:
        done = await loop.run_in_executor(
            None,
            _workers.run_in_processes,
            _workers.paced,
            [(broker_process.socket_path, f"http://127.0.0.1:{port}/", 4, rate)] * 3,
        )
    finally:
        await server.stop()
    assert done == [4, 4, 4]
    times = sorted(t for t, _ in server.counts.arrivals)
    assert len(times) == 12
    # 12 starts at one per 50 ms take at least 11 intervals. An arrival is stamped when
    # the server's loop gets to it: the first may have been stamped late by as much as
    # that loop ever ran late (a loaded machine), never early.
    lag = server.counts.max_lag
    assert times[-1] - times[0] >= 11 / rate - lag - 0.005, lag
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert sorted(gaps)[len(gaps) // 2] >= 0.9 / rate - lag  # the median gap: one interval


async def test_rate_limit_holds_after_a_wait_for_a_connection(make_session, serve_app):
    """A request's rate turn is taken once it has its connection: turns booked while
    limit_per_host held the requests back would have passed, and they would go out
    together when a slow response let the connection go."""
    rate = 50.0
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []

    async def page(request: web.Request) -> web.Response:
        arrivals.append(loop.time())
        if len(arrivals) == 1:  # a slow page holds the only connection for 0.3 s
            slow: asyncio.Future[None] = loop.create_future()
            loop.call_later(0.3, slow.set_result, None)
            await slow
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", page)
    base = await serve_app(app)
    session: ClientSession = make_session(
        connector=TCPConnector(limit_per_host=1, rate_limit_per_host=rate)
    )

    async def get() -> None:
        async with session.get(base + "/") as resp:
            await resp.read()

    await asyncio.gather(*(get() for _ in range(16)))
    assert len(arrivals) == 16
    # 0.3 s held: 15 turns would have passed; at 50/s, 0.1 s holds at most 6 starts
    # (one more for an arrival late by the server's loop).
    most = max(
        sum(1 for t in arrivals[i:] if t < start + 0.1) for i, start in enumerate(arrivals)
    )
    assert most <= 7, [round(t - arrivals[0], 3) for t in arrivals]


async def test_local_addr_and_family(make_session, serve_app):
    peers: list[str] = []
    app = web.Application()

    async def who(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername")[0])
        return web.Response(text="ok")

    app.router.add_get("/", who)
    base = await serve_app(app)
    session: ClientSession = make_session(
        connector=TCPConnector(local_addr=("127.0.0.2", 0), family=socket.AF_INET)
    )
    async with session.get(base + "/") as resp:
        assert resp.status == 200
    assert peers == ["127.0.0.2"]
    v6_only: ClientSession = make_session(connector=TCPConnector(family=socket.AF_INET6))
    with pytest.raises(ClientConnectorError):
        # The server listens on 127.0.0.1 only; AF_INET6 finds no address to reach it.
        await v6_only.get(base.replace("127.0.0.1", "localhost") + "/")


async def test_happy_eyeballs_starts_the_next_address_after_the_delay():
    """A first address that hangs does not hold the connection for long."""
    from broker.connector import Pool
    from broker.resolver import CachedResolver

    started: list[str] = []
    won = object()

    cancelled: list[str] = []

    def attempt(name: str, *, hang: bool = False, fail: bool = False):
        async def run():
            started.append(name)
            if hang:  # an address that never answers
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    cancelled.append(name)
                    raise
            if fail:
                raise OSError(111, f"{name} refused")
            return (name, won)

        return run

    loop = asyncio.get_running_loop()
    resolver = CachedResolver(ResolverSpec(), loop)
    pool = Pool(PoolSpec(), loop, resolver)
    t0 = loop.time()
    result = await pool.dialer.first_connected(
        [attempt("slow", hang=True), attempt("fast")], 0.05, None, None
    )
    assert result is won
    assert started == ["slow", "fast"]
    assert loop.time() - t0 < 1.0
    # A failure starts the next attempt at once; the last error is raised.
    with pytest.raises(OSError, match="b refused"):
        await pool.dialer.first_connected(
            [attempt("a", fail=True), attempt("b", fail=True)], 10, None, None
        )
    with pytest.raises(OSError, match="one refused"):
        await pool.dialer.first_connected([attempt("one", fail=True)], None, None, None)
    # Each attempt has its own time (sock_connect), and all of them the deadline.
    with pytest.raises(TimeoutError):
        await pool.dialer.first_connected([attempt("hangs", hang=True)], None, 0.01, None)
    with pytest.raises(TimeoutError):
        await pool.dialer.first_connected(
            [attempt("x", hang=True), attempt("y", hang=True)], 0.01, None, loop.time() + 0.05
        )
    await pool.close()  # waits for the attempts given up on
    await resolver.close()
    assert not pool.dialer.attempts and started[-2:] == ["x", "y"]
    assert sorted(cancelled) == ["hangs", "slow", "x", "y"]  # none lingers


@pytest.mark.parametrize(
    ("kwargs", "reused"),
    [({}, True), ({"keepalive_timeout": None}, True), ({"keepalive_timeout": 0}, False),
     ({"force_close": True}, False)],
)
async def test_keepalive_timeout_as_aiohttp(make_session, serve_app, kwargs, reused):
    app, ports = counting_app()
    base = await serve_app(text_app("ok", app))
    session: ClientSession = make_session(connector=TCPConnector(**kwargs))
    for _ in range(2):
        async with session.get(base + "/") as resp:
            await resp.read()
    assert (ports[0] == ports[1]) is reused


async def test_figures_tell_unnamed_pools_apart(make_session, serve_app):
    base = await serve_app(text_app())
    for connector in (TCPConnector(limit=7), TCPConnector(limit_per_host=3)):
        session: ClientSession = make_session(connector=connector)
        async with session.get(base + "/") as resp:
            await resp.read()
    stats = await session.stats()
    options = [p["options"] for p in stats.pools]
    assert {"limit": 7} in options and {"limit_per_host": 3} in options
    (pool,) = [p for p in stats.pools if p["options"] == {"limit": 7}]
    (host,) = pool["hosts"].values()
    assert (host["open"], host["idle"], host["active"], host["queued"]) == (1, 1, 0, 0)
