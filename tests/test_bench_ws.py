"""``bench/ws_bench.py`` runs end to end with tiny counts: every way gives a sample each
round (ours once ``ClientSession.ws_connect`` exists; until then a line says they were
skipped), the JSON holds them, and no process of the run outlives it. The table's ratios
read > 1 as faster than aiohttp, for latency as for throughput."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import psutil

from .conftest import ROOT

SCRIPT = os.path.join(ROOT, "bench", "ws_bench.py")

from bench.ws_bench import METRICS, WAYS, has_ws_connect, table  # noqa: E402


def _left_behind(token: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get("WS_BENCH_TEST_RUN") == token:
                found.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def test_a_tiny_run_measures_every_way_it_can(tmp_path):
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != "HTTP_BROKER"}
    env["WS_BENCH_TEST_RUN"] = token  # every descendant inherits it: found if left behind
    out = subprocess.run(
        [sys.executable, SCRIPT, "--rounds", "2", "--messages", "20", "--big", "3",
         "--json", str(tmp_path / "ws.json")],
        capture_output=True, text=True, timeout=50, env=env, cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    ways = list(WAYS) if has_ws_connect() else ["aiohttp"]
    if not has_ws_connect():
        assert "embedded, broker: skipped: worker_client.ClientSession has no ws_connect yet" \
            in out.stdout
    data = json.loads((tmp_path / "ws.json").read_text())
    assert [(c["way"], c["round"]) for c in data["cells"]] == [
        (way, r) for r in range(2) for way in ways[r % len(ways):] + ways[: r % len(ways)]
    ]
    assert not [c["error"] for c in data["cells"] if "error" in c]
    for way in ways:
        assert set(data["medians"][way]) == {key for key, *_ in METRICS}
        assert all(v > 0 for v in data["medians"][way].values())
    header = "| | " + " | ".join(WAYS[w] for w in ways) + " |"
    assert header in out.stdout
    assert "| 64 KiB binary echo, 32 in flight (MB/s, higher is better) |" in out.stdout
    assert _left_behind(token) == []


def test_ratios_above_one_mean_faster_than_aiohttp():
    meds = {
        "aiohttp": {"rtt_p50_us": 100.0, "msgs_s": 1000.0},
        "embedded": {"rtt_p50_us": 50.0, "msgs_s": 500.0},
    }
    text = table(meds, ["aiohttp", "embedded", "broker"], failed={"broker"})
    assert "| round trip, median (µs, lower is better) | 100.0 | 50.0 (2.00x) | failed |" in text
    assert "| 16 B messages, 32 in flight (msgs/s, higher is better) | 1,000 | 500 (0.50x) |" \
        in text
    assert "p99" not in text  # no way has it: no row
