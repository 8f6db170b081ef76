"""gunicorn workers share one broker: the upstream sees one pool for the whole group.

A real gunicorn with four workers runs the examples (``examples/gunicorn/``) with the
one-line hooks (``broker.gunicorn``): every worker keeps a session with
``TCPConnector(limit=2)`` and bursts ten requests through it as it starts
(``gunicorn_burst_conf.py``). Sessions that did not share the broker's pool would keep
two connections each; the counting upstream sees two in all. A reload (HUP) replaces
the workers and keeps the broker; SIGTERM to the master stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp
import psutil
import pytest

import broker
from broker import gunicorn as hooks

from ..conftest import ROOT
from .counting_server import CountingServer

WORKERS = 4
BURST = 10  # gunicorn_burst_conf.BURST


@dataclass(frozen=True)
class Kind:
    worker_class: str
    app: str


KINDS = {
    "sync": Kind("sync", "examples.gunicorn.wsgi_app:app"),
    "aiohttp": Kind("aiohttp.GunicornWebWorker", "examples.gunicorn.app:app"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _brokers(parent: int) -> list[psutil.Process]:
    """The children of ``parent`` that run a broker."""
    found = []
    for p in psutil.Process(parent).children():
        with contextlib.suppress(psutil.Error):  # a child that is just gone
            if p.cmdline()[1:4] == ["-m", "broker", "serve"]:
                found.append(p)
    return found


def _broker_option(proc: psutil.Process, option: str) -> str:
    cmdline = proc.cmdline()
    return cmdline[cmdline.index(option) + 1]


async def _fetch_all(port: int, upstream_url: str, n: int) -> list[dict[str, object]]:
    """``n`` requests at once at the app's ``GET /fetch``."""
    async with aiohttp.ClientSession() as client:

        async def one() -> dict[str, object]:
            async with client.get(
                f"http://127.0.0.1:{port}/fetch", params={"url": upstream_url}
            ) as resp:
                assert resp.status == 200, await resp.text()
                got: dict[str, object] = await resp.json()
                return got

        return await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.parametrize("kind", KINDS)
async def test_gunicorn_workers_share_one_pool_across_a_reload(kind: str) -> None:
    upstream = CountingServer(open_at=2)  # the limit: reached for sure
    up_port = await upstream.start()
    upstream_url = f"http://127.0.0.1:{up_port}/"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("HTTP_BROKER", hooks.MASTER_VAR)}
    env["PYTHONPATH"] = ROOT
    env["BURST_URL"] = upstream_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gunicorn",
        "-c", "tests/integration/gunicorn_burst_conf.py",
        "-w", str(WORKERS), "-k", KINDS[kind].worker_class,
        "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
        KINDS[kind].app,
        cwd=ROOT, env=env,
    )
    counts = upstream.counts
    broker_path = None
    try:
        await asyncio.wait_for(upstream.arrived(WORKERS * BURST), 30)
        assert sorted(counts.workers.values()) == [BURST] * WORKERS
        assert counts.max_open["*"] == 2
        assert counts.max_inflight["*"] == 2
        [broker_proc] = _brokers(proc.pid)
        first = await _fetch_all(port, upstream_url, 8)
        broker_path = first[0]["broker"]
        assert isinstance(broker_path, str) and broker_path.endswith("broker.sock")
        assert os.path.exists(broker_path)
        assert _broker_option(broker_proc, "--socket") == broker_path

        # A reload replaces every worker: the old ones exit, and the broker (the
        # master's) outlives them. The new workers burst through it again.
        proc.send_signal(signal.SIGHUP)
        await asyncio.wait_for(upstream.arrived(2 * WORKERS * BURST + 8), 30)
        assert len(counts.workers) == 2 * WORKERS
        assert counts.max_open["*"] == 2
        assert _brokers(proc.pid) == [broker_proc]
        after = await _fetch_all(port, upstream_url, 8)
        assert {(g["status"], g["body"], g["broker"]) for g in first + after} == {
            (200, "ok", broker_path)
        }
        assert counts.max_open["*"] == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await upstream.stop()
    assert broker_path is not None and not os.path.exists(broker_path)
    assert not broker_proc.is_running()  # the broker stopped with the master


# The hooks by themselves, called as gunicorn calls them, with a stand-in for the arbiter.
ARBITER = SimpleNamespace(log=logging.getLogger("test-gunicorn"))


def test_hooks_start_a_broker_with_the_settings_and_stop_it_on_exit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    cookie_file = os.path.join(tmp_path, "jars.json")
    monkeypatch.delenv(hooks.MASTER_VAR, raising=False)
    monkeypatch.setenv("HTTP_BROKER_LOG_LEVEL", "info")
    monkeypatch.setenv("HTTP_BROKER_DRAIN_TIMEOUT", "2.5")
    monkeypatch.setenv("HTTP_BROKER_COOKIE_FILE", cookie_file)
    before = _brokers(os.getpid())  # the suite's own brokers, if any
    hooks.on_starting(ARBITER)
    try:
        address = os.environ["HTTP_BROKER"]
        assert os.path.exists(address)
        assert os.environ[hooks.MASTER_VAR] == str(os.getpid())
        [started] = [p for p in _brokers(os.getpid()) if p not in before]
        assert _broker_option(started, "--socket") == address
        assert _broker_option(started, "--log-level") == "INFO"
        assert _broker_option(started, "--drain-timeout") == "2.5"
        assert _broker_option(started, "--cookie-file") == cookie_file
        hooks.on_starting(ARBITER)  # called again in the same master: nothing new
        assert set(_brokers(os.getpid())) == {*before, started}
    finally:
        hooks.on_exit(ARBITER)
    assert not os.path.exists(address) and not started.is_running()
    assert "HTTP_BROKER" not in os.environ and hooks.MASTER_VAR not in os.environ
    hooks.on_exit(ARBITER)  # and again: nothing to stop


def test_hooks_use_an_operators_broker_and_leave_it_running(
    monkeypatch: pytest.MonkeyPatch, broker_process: broker.BrokerProcess
) -> None:
    monkeypatch.delenv(hooks.MASTER_VAR, raising=False)
    monkeypatch.setenv("HTTP_BROKER", broker_process.socket_path)
    children = _brokers(os.getpid())
    hooks.on_starting(ARBITER)
    assert set(_brokers(os.getpid())) == set(children)
    assert os.environ["HTTP_BROKER"] == broker_process.socket_path
    hooks.on_exit(ARBITER)
    assert broker_process.process.poll() is None
    assert os.environ["HTTP_BROKER"] == broker_process.socket_path


def test_a_reexecuted_master_starts_its_own_broker(
    monkeypatch: pytest.MonkeyPatch, broker_process: broker.BrokerProcess
) -> None:
    # USR2: the new master inherits the old master's HTTP_BROKER, which stops with it.
    old_master = str(os.getpid() + 1)
    monkeypatch.setenv("HTTP_BROKER", broker_process.socket_path)
    monkeypatch.setenv(hooks.MASTER_VAR, old_master)
    hooks.on_starting(ARBITER)
    try:
        address = os.environ["HTTP_BROKER"]
        assert address != broker_process.socket_path and os.path.exists(address)
        assert os.environ[hooks.MASTER_VAR] == str(os.getpid())
    finally:
        hooks.on_exit(ARBITER)
    assert not os.path.exists(address)
    assert os.environ["HTTP_BROKER"] == broker_process.socket_path
    assert os.environ[hooks.MASTER_VAR] == old_master
    assert broker_process.process.poll() is None


@pytest.mark.parametrize(
    ("var", "value", "wants"),
    [
        ("HTTP_BROKER_LOG_LEVEL", "loud", "DEBUG, INFO, WARNING, ERROR"),
        ("HTTP_BROKER_DRAIN_TIMEOUT", "soon", "0 or more"),
        ("HTTP_BROKER_DRAIN_TIMEOUT", "-1", "0 or more"),
        ("HTTP_BROKER_DRAIN_TIMEOUT", "nan", "0 or more"),
    ],
)
def test_a_bad_setting_stops_the_start_and_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, wants: str
) -> None:
    monkeypatch.delenv(hooks.MASTER_VAR, raising=False)
    monkeypatch.setenv(var, value)
    children = _brokers(os.getpid())
    with pytest.raises(RuntimeError, match=f"{var}='{value}' is not valid: want .*{wants}"):
        hooks.on_starting(ARBITER)
    assert set(_brokers(os.getpid())) == set(children) and "HTTP_BROKER" not in os.environ
