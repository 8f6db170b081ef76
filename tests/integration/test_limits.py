"""Pool limits hold for the whole process group, counted by the server."""

from __future__ import annotations

import asyncio
import socket

import pytest

from worker_client import ClientSession, ConnectionTimeoutError, TCPConnector

from ..conftest import wait_until
from . import _workers
from .counting_server import CountingServer


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def _run_workers(broker_path: str, urls: list[str], kw: dict, workers=4, n=50):
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        None, _workers.run_in_processes, _workers.burst, [(broker_path, urls, n, kw)] * workers
    )


async def test_limit_holds_across_four_workers(broker_process):
    server = CountingServer(open_at=8)
    port = await server.start()
    try:
        results = await _run_workers(
            broker_process.socket_path,
            [f"http://127.0.0.1:{port}/"],
            {"limit": 8, "name": "limit-8"},
        )
    finally:
        await server.stop()
    assert [r.count(200) for r in results] == [50] * 4
    c = server.counts
    assert c.requests == 200
    assert c.max_open["*"] == 8
    assert c.max_inflight["*"] == 8


async def test_limit_per_host_over_two_hosts(broker_process):
    server = CountingServer(open_at=6)  # three per host
    hosts = ("127.0.0.1", "::1") if _ipv6_loopback() else ("127.0.0.1",)
    port = await server.start(hosts)
    try:
        results = await _run_workers(
            broker_process.socket_path,
            [f"http://127.0.0.1:{port}/", f"http://localhost:{port}/"],
            {"limit_per_host": 3, "name": "per-host-3"},
        )
    finally:
        await server.stop()
    assert [r.count(200) for r in results] == [50] * 4
    c = server.counts
    assert c.max_open["127.0.0.1"] == 3 and c.max_inflight["127.0.0.1"] == 3
    assert c.max_open["localhost"] == 3 and c.max_inflight["localhost"] == 3
    assert c.max_open["*"] == 6


async def test_connect_timeout_includes_the_wait_for_a_slot(make_session):
    from worker_client import ClientTimeout

    server = CountingServer(open_at=None)
    port = await server.start()
    try:
        connector = TCPConnector(limit=1, name="slot-wait")
        session: ClientSession = make_session(connector=connector)
        first = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/"))
        await asyncio.wait_for(server.arrived(1), 10)  # the one slot is taken
        with pytest.raises(ConnectionTimeoutError):
            await session.get(
                f"http://127.0.0.1:{port}/", timeout=ClientTimeout(connect=0.2)
            )
        server.release()
        resp = await first
        assert await resp.read() == b"ok"
    finally:
        await server.stop()


async def test_cancelled_waiter_leaves_the_queue(make_session):
    server = CountingServer(open_at=None)
    port = await server.start()
    url = f"http://127.0.0.1:{port}/"
    try:
        session: ClientSession = make_session(connector=TCPConnector(limit=1, name="cancel-q"))

        async def queued_are(n: int) -> bool:
            stats = await session.stats()
            pool = next(p for p in stats.pools if p["pool"] == "cancel-q")
            return bool(pool["queued"] == n)

        first = asyncio.ensure_future(session.get(url))
        await asyncio.wait_for(server.arrived(1), 10)  # the one slot is taken
        waiting = asyncio.ensure_future(session.get(url))
        await wait_until(lambda: queued_are(1), 5, "the second request is queued")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await wait_until(lambda: queued_are(0), 1.0, "the cancelled request left the queue")
        server.release()
        assert await (await first).read() == b"ok"
        assert server.counts.requests == 1
    finally:
        await server.stop()
