"""gunicorn workers share one broker: the upstream sees one pool for the whole group."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import aiohttp

from ..conftest import ROOT
from .counting_server import CountingServer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_gunicorn_workers_share_one_pool():
    upstream = CountingServer(open_at=2)  # the limit: reached for sure
    up_port = await upstream.start()
    upstream_url = f"http://127.0.0.1:{up_port}/"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "HTTP_BROKER"}
    env["PYTHONPATH"] = ROOT
    env["BURST_URL"] = upstream_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gunicorn",
        "-c", "tests/integration/gunicorn_burst_conf.py",
        "-w", "3", "-k", "aiohttp.GunicornWebWorker",
        "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
        "examples.gunicorn.app:app",
        cwd=ROOT, env=env,
    )
    broker_path = None
    try:
        # every worker sends 10 requests as it starts
        await asyncio.wait_for(upstream.arrived(30), 15)
        # Three processes with TCPConnector(limit=2) each: two upstream connections.
        assert len(upstream.counts.workers) == 3
        assert sorted(upstream.counts.workers.values()) == [10, 10, 10]
        assert upstream.counts.max_open["*"] == 2
        assert upstream.counts.max_inflight["*"] == 2
        # A reload replaces every worker: the old ones exit normally, and the broker (the
        # master's) must outlive them. The new workers burst through it again.
        proc.send_signal(signal.SIGHUP)
        await asyncio.wait_for(upstream.arrived(60), 15)
        assert len(upstream.counts.workers) == 6
        assert upstream.counts.max_open["*"] == 2
        # And the app itself fetches through the same broker.
        async with aiohttp.ClientSession() as client, client.get(
            f"http://127.0.0.1:{port}/fetch", params={"url": upstream_url}
        ) as resp:
            got = await resp.json()
        assert got["status"] == 200 and got["body"] == "ok"
        broker_path = got["broker"]
        assert broker_path.endswith("broker.sock") and os.path.exists(broker_path)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await upstream.stop()
    assert not os.path.exists(broker_path)  # the broker stopped with the master
