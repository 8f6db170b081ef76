"""The examples run, and say what they should: they are part of the user's card."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import ROOT


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HTTP_BROKER"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env
    )


def test_seed_examples_match_aiohttp():
    out = run_example("examples/seed_examples.py")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.rstrip().endswith("all examples give aiohttp's results in both modes")
    assert out.stdout.count("same as aiohttp") >= 2 * 9


@pytest.mark.parametrize("mode", ["broker", "embedded"])
def test_connector_examples_run(mode):
    out = run_example("examples/connectors.py", mode)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 9
    assert all(" 200 " in line for line in lines), out.stdout
    assert "hello from example.test" in out.stdout  # through the local DNS server
    assert "hello from localhost" in out.stdout  # through the Unix socket


def test_demo_runs():
    """examples/demo.py, the one-screen tour (the README's first command runs the crawler)."""
    out = run_example("examples/demo.py")
    assert out.returncode == 0, out.stdout + out.stderr
    # "ok": the demo's own checks held (at most limit=4 connections for the four
    # processes, every worker request carried the parent's login)
    assert out.stdout.rstrip().splitlines()[-1].startswith("ok in ")
