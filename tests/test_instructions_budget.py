"""bench/instructions.py's regression check: the budget arithmetic, the committed budget
file, the floor client against a real server (without valgrind), and a loud failure when
valgrind is missing. The measurement itself runs in .ci/run's last step."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from bench import instructions as bench

from .conftest import ROOT

SCRIPT = os.path.join(ROOT, "bench", "instructions.py")
BUDGET = os.path.join(ROOT, "bench", "instructions_budget.json")
PER = {"floor": 50_000.0, "aiohttp": 300_000.0, "embedded": 330_000.0,
       "broker_worker": 240_000.0, "broker_process": 360_000.0}


def test_within_budget_finds_nothing():
    budget = {"reference": "aiohttp", "budgets": {"embedded": 1.1, "broker_worker": 0.8}}
    assert bench.over_budget(PER, budget) == []


def test_over_budget_names_the_figure_and_by_how_much():
    budget = {"reference": "aiohttp", "budgets": {"embedded": 1.0, "broker_process": 1.25}}
    [line] = bench.over_budget(PER, budget)
    assert line.startswith("embedded: 1.100x aiohttp (330,000 instructions/request")
    assert "over its budget of 1.000x by 10.0%" in line


def test_a_budget_for_an_unknown_figure_is_an_error():
    with pytest.raises(ValueError, match="does not measure: \\['threads'\\]"):
        bench.over_budget(PER, {"reference": "aiohttp", "budgets": {"threads": 1.0}})


def test_new_budget_is_the_ratios_plus_the_margin_and_passes_its_own_run():
    budget = bench.new_budget(PER, 0.15)
    assert budget["budgets"] == {"embedded": 1.265, "broker_worker": 0.92,
                                 "broker_process": 1.38}
    assert bench.over_budget(PER, budget) == []
    slower = dict(PER, broker_worker=PER["broker_worker"] * 1.2)
    assert [line.split(":")[0] for line in bench.over_budget(slower, budget)] == ["broker"]


def test_the_committed_budget_file_covers_every_figure_of_ours():
    budget = bench.load_budget(BUDGET)
    assert budget["reference"] == "aiohttp"
    assert set(budget["budgets"]) == {"embedded", "broker_worker", "broker_process"}
    measured = budget["measured"]
    for key, limit in budget["budgets"].items():
        assert measured[key] / measured["aiohttp"] < limit


def test_the_floor_client_reads_whole_replies_on_one_connection(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", bench.SERVER, str(port)])
    try:
        bench._wait_for(lambda: bench._accepts(port), 30)
        client = tmp_path / "client.py"
        client.write_text(bench.CLIENT.format(root=ROOT))
        out = subprocess.run(
            [sys.executable, str(client), "floor", f"http://127.0.0.1:{port}/", "20", "2"],
            capture_output=True, text=True, timeout=30, env=bench.ENV,
        )
    finally:
        server.terminate()
        server.wait()
    assert out.returncode == 0, out.stderr


def test_check_without_valgrind_fails_loudly(tmp_path):
    budget = tmp_path / "budget.json"
    budget.write_text(json.dumps(bench.new_budget(PER, 0.15)))
    env = dict(os.environ, PATH=str(tmp_path))
    out = subprocess.run([sys.executable, SCRIPT, "--check", str(budget)],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 2
    assert "valgrind is not installed" in out.stderr
