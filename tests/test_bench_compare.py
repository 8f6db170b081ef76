"""``bench/compare.py --quick`` runs end to end on the aiohttp.web server: every client x
workload gives a sample, the JSON and chart are written, docs/ is left alone, and no
process of the run outlives it (also when it is stopped with SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from .conftest import ROOT

pytest.importorskip("httpx", reason="pip install -e '.[bench]'")
pytest.importorskip("matplotlib", reason="pip install -e '.[bench]'")

SCRIPT = os.path.join(ROOT, "bench", "compare.py")


def _env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HTTP_BROKER"}
    env["COMPARE_TEST_RUN"] = token  # every descendant inherits it: found if left behind
    return env


def _left_behind(token: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get("COMPARE_TEST_RUN") == token:
                found.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


@pytest.mark.timeout(180)
def test_quick_run_has_every_client_and_workload(tmp_path):
    token = uuid.uuid4().hex
    docs = os.path.join(ROOT, "docs", "benchmarks.md")
    with open(docs) as f:
        before = f.read()
    out = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--server", "aiohttp", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=170, env=_env(token), cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "server: aiohttp" in out.stderr
    data = json.loads((tmp_path / "benchmarks-compare-asyncio.json").read_text())
    assert (tmp_path / "benchmarks-compare-asyncio.png").read_bytes()[:4] == b"\x89PNG"

    sys.path.insert(0, ROOT)
    from bench.compare import CLIENTS, METRICS, NOT_RUN, WORKLOADS

    cells = {(c["client"], c["workload"]): c for c in data["cells"]}
    expected = {(c, w) for c in CLIENTS for w in WORKLOADS} - NOT_RUN
    assert set(cells) == expected
    failed = {k: c["error"] for k, c in cells.items() if "error" in c}
    assert not failed, failed
    for client in CLIENTS:
        for metric, workload, *_ in METRICS:
            if (client, workload) not in NOT_RUN:
                assert isinstance(data["medians"][client][metric], (int, float)), (client, metric)
    # what each sample says about the run
    assert all(cells[(c, "tls")]["sample"]["handshakes"] >= 1 for c in CLIENTS)
    assert cells[("broker4", "get_64")]["sample"]["processes"] == 4
    assert cells[("broker1", "tls")]["sample"]["processes"] == 1
    assert data["meta"]["server"].startswith("aiohttp.web")
    assert data["meta"]["loop"] == "asyncio"
    assert "| small GET, 64 in flight" in out.stdout
    with open(docs) as f:
        assert f.read() == before  # --out: docs/ untouched
    assert _left_behind(token) == []


@pytest.mark.timeout(60)
def test_sigterm_ends_every_child(tmp_path):
    token = uuid.uuid4().hex
    with subprocess.Popen(
        [sys.executable, SCRIPT, "--quick", "--server", "aiohttp", "--out", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(token), cwd=ROOT,
    ) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()  # "server: ..." once the server is up
            assert line.startswith("server: aiohttp"), line
            deadline = time.monotonic() + 30
            while not any("--worker" in p for p in _left_behind(token)):  # a team is up
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert _left_behind(token) == []
    assert not (tmp_path / "benchmarks-compare-asyncio.json").exists()
