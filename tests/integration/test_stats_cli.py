"""``http-broker stats --json`` and ``http-broker top --once`` against a real broker with
two worker processes whose requests a server holds open: every field checked."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

import broker
from broker.stats import fetch_stats, usage, worker_figures
from shared import __version__
from shared.messages import PROTOCOL_VERSION
from tests.conftest import wait_until
from tests.integration import _stats_workers
from tests.integration._workers import run_in_processes
from worker_client import ClientSession

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def held_app(arrived: asyncio.Queue[int], release: asyncio.Event) -> web.Application:
    """``/hold`` waits for ``release`` (telling ``arrived`` the pid it names first);
    ``/login`` sets two cookies."""

    async def hold(request: web.Request) -> web.Response:
        arrived.put_nowait(int(request.query["pid"]))
        await release.wait()
        return web.Response(text="released")

    async def login(request: web.Request) -> web.Response:
        resp = web.Response(text="in")
        resp.set_cookie("session", "s1")
        resp.set_cookie("user", "u1")
        return resp

    app = web.Application()
    app.router.add_get("/hold", hold)
    app.router.add_get("/login", login)
    return app


async def _cli(*args: str) -> tuple[int, str]:
    """Run ``http-broker`` with ``args``: its pid and its output (it must succeed)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return proc.pid, out.decode()


def _pool(figures: dict[str, Any], name: str) -> dict[str, Any]:
    (pool,) = [p for p in figures["pools"] if p["pool"] == name]
    return pool


async def test_stats_json_field_by_field_and_top_once(serve_app, tmp_path):
    arrived: asyncio.Queue[int] = asyncio.Queue()
    release = asyncio.Event()
    base = await serve_app(held_app(arrived, release))
    port = URL(base).port
    held_host, login_host = f"http://127.0.0.1:{port}", f"http://localhost:{port}"
    jar_name = f"jar-{uuid.uuid4().hex[:8]}"
    path = str(tmp_path / "broker.sock")
    loop = asyncio.get_running_loop()
    with broker.start(path, export=False) as proc:
        # Worker A: a login through a named jar (its connection then idle, "localhost"
        # in the DNS cache), a failure, then a request held on pool "stats-one" (limit 1).
        a_job = loop.run_in_executor(
            None, run_in_processes, _stats_workers.login_then_hold,
            [(path, login_host + "/login", held_host + "/hold", jar_name)],
        )
        b_job = None
        try:
            a_pid = await asyncio.wait_for(arrived.get(), 30)
            # Worker B: two requests queued behind A's on the same pool.
            b_job = loop.run_in_executor(
                None, run_in_processes, _stats_workers.queue, [(path, held_host + "/hold", 2)]
            )

            async def queued() -> bool:  # another process's figures: no event says so
                stats = await loop.run_in_executor(None, fetch_stats, path)
                return any(p["pool"] == "stats-one" and p["queued"] == 2 for p in stats.pools)

            await wait_until(queued, timeout=30, what="two requests queued")
            cli_pid, out = await _cli("stats", "--json", "--socket", path)
            figures = json.loads(out)
            top_pid, frame = await _cli("top", "--once", "--socket", path)
        finally:
            release.set()
            results = [await a_job] + ([await b_job] if b_job is not None else [])
        assert results[0] == [a_pid]
        (b_pid,) = results[1]

        assert figures["pid"] == proc.pid
        assert figures["streams"] == 3  # A's held request, B's two queued
        assert figures["requests"] == 5  # A's login, failure and held request, B's two

        one = _pool(figures, "stats-one")
        assert one["options"] == {"limit": 1} and one["limit"] == 1
        assert one["limit_per_host"] == 0
        assert (one["open"], one["active"], one["idle"], one["queued"]) == (1, 1, 0, 2)
        assert one["longest_wait"] > 0
        ((host, h),) = one["hosts"].items()
        assert host == held_host
        assert (h["open"], h["active"], h["idle"], h["queued"]) == (1, 1, 0, 2)
        assert h["longest_wait"] == pytest.approx(one["longest_wait"], abs=0.5)  # one host

        idle = _pool(figures, "stats-idle")
        assert idle["options"] == {} and (idle["limit"], idle["limit_per_host"]) == (100, 0)
        assert (idle["open"], idle["active"], idle["idle"], idle["queued"]) == (1, 0, 1, 0)
        assert idle["longest_wait"] == 0
        assert idle["hosts"] == {
            login_host: {"open": 1, "active": 0, "idle": 1, "queued": 0, "longest_wait": 0.0}
        }
        assert len(figures["pools"]) == 2

        assert figures["dns"] == [
            {
                "kind": "threaded", "nameservers": [], "ttl": 10.0, "max_size": 1000,
                "use_cache": True, "hits": 0, "misses": 1, "size": 1, "inflight": 0,
            }
        ]

        named, unnamed = figures["jars"]
        assert named == {
            "name": jar_name, "unsafe": True, "quote_cookie": True,
            "treat_as_secure_origin": [], "cookies": 2, "open": 1,
        }
        assert unnamed["name"] is None and unnamed["cookies"] == 0
        assert unnamed["jars"] >= 0 and unnamed.keys() == {"name", "jars", "cookies"}

        processes = {p["pid"]: p for p in figures["processes"]}
        assert processes.keys() == {a_pid, b_pid, cli_pid}
        assert [p["pid"] for p in figures["processes"]] == sorted(processes)
        assert {pid: p["streams"] for pid, p in processes.items()} == {
            a_pid: 1, b_pid: 2, cli_pid: 0
        }
        assert sum(p["connections"] for p in processes.values()) == figures["workers"]
        for p in processes.values():
            assert p.keys() == {"pid", "connections", "streams", "cpu", "rss"}
            assert p["connections"] >= 1 and p["cpu"] > 0 and p["rss"] > 1 << 20

        b = figures["broker"]
        assert (b["pid"], b["version"], b["protocol"]) == (proc.pid, __version__, PROTOCOL_VERSION)
        assert b["loop"] in ("asyncio", "uvloop")
        assert b["uptime"] > 0 and b["cpu"] > 0 and b["rss"] > 1 << 20
        # none on the fast path: no idle connection for them
        assert figures["totals"] == {"requests": 5, "fast_requests": 0, "failures": 1}

        lines = frame.splitlines()
        assert lines[0].startswith(f"http-broker {__version__}  pid {proc.pid}  ")
        assert "requests 5 (0 fast, 1 failed)" in lines[1] and "streams 3" in lines[1]
        rows = [ln.split() for ln in lines if ln.startswith(("stats-", "  http"))]
        names = [row[0] for row in rows]
        assert sorted(names) == sorted(["stats-one", held_host, "stats-idle", login_host])
        assert names.index(held_host) == names.index("stats-one") + 1  # under its pool
        assert names.index(login_host) == names.index("stats-idle") + 1
        by_name = {row[0]: row[1:] for row in rows}
        assert by_name["stats-one"][:5] == ["1/-", "1", "1", "0", "2"]
        assert float(by_name["stats-one"][5].removesuffix("s")) > 0  # the longest wait
        assert by_name[held_host][:4] == ["1", "1", "0", "2"]
        assert float(by_name[held_host][4].removesuffix("s")) > 0
        assert by_name["stats-idle"] == ["100/-", "1", "0", "1", "0", "-"]
        assert by_name[login_host] == ["1", "0", "1", "0", "-"]
        cells = [ln.split() for ln in lines]
        workers = {int(row[0]): row for row in cells if row and row[0].isdigit()}
        assert workers.keys() == {a_pid, b_pid, top_pid}  # the one asking is top now
        assert workers[a_pid][2] == "1" and workers[b_pid][2] == "2"  # streams
        assert any(ln.startswith(jar_name) and ln.split()[1] == "2" for ln in lines)

        # Once the workers are done: nothing open or queued, the connections idle, the
        # workers gone from the figures (only the asker left) once the broker has seen
        # their connections close (no event tells this process).
        async def workers_gone() -> bool:
            stats = await loop.run_in_executor(None, fetch_stats, path)
            return [p.pid for p in stats.processes] == [os.getpid()]

        await wait_until(workers_gone, timeout=30, what="the workers' connections closed")
        cli_pid, out = await _cli("stats", "--json", "--socket", path)
        after = json.loads(out)
        assert after["streams"] == 0 and after["requests"] == 5
        assert [p["pid"] for p in after["processes"]] == [cli_pid]
        one = _pool(after, "stats-one")
        assert (one["open"], one["active"], one["idle"], one["queued"]) == (1, 0, 1, 0)
        assert after["jars"][0]["open"] == 0 and after["jars"][0]["cookies"] == 2


def test_a_process_that_is_gone_or_only_claimed_has_no_cpu_or_rss():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert usage(gone.pid) == (None, None)
    cpu, rss = usage(os.getpid())
    assert cpu is not None and cpu > 0 and rss is not None and rss > 1 << 20
    figures = worker_figures([(gone.pid, 1), (-os.getpid(), 0), (gone.pid, 2)])
    assert [(f.pid, f.connections, f.streams, f.cpu, f.rss) for f in figures] == sorted(
        [(gone.pid, 2, 3, None, None), (os.getpid(), 1, 0, None, None)]
    )


async def test_embedded_figures_are_this_process(serve_app):
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    base = await serve_app(app)
    async with ClientSession() as session:
        for _ in range(3):
            async with session.get(base + "/") as resp:
                await resp.read()
        stats = await session.stats()
    assert stats.broker is not None and stats.broker.pid == os.getpid() == stats.pid
    assert stats.broker.cpu is not None and stats.broker.rss is not None
    assert stats.processes == []
    assert stats.totals is not None and stats.totals.requests == stats.requests >= 3
