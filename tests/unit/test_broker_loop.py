"""The broker's event loop: uvloop when installed ("auto"), or the one named by ``--loop``
or ``HTTP_BROKER_LOOP`` (``broker.cli``)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys

import pytest

from broker import cli

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def test_asyncio_is_asyncio_run():
    assert cli._runner("asyncio") is asyncio.run


def test_auto_is_uvloop_when_installed():
    if HAVE_UVLOOP:
        import uvloop

        assert cli._runner("auto") is uvloop.run
    else:
        assert cli._runner("auto") is asyncio.run


def test_without_uvloop_auto_falls_back_and_uvloop_refuses(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop: ImportError
    assert cli._runner("auto") is asyncio.run
    with pytest.raises(ImportError):
        cli._runner("uvloop")
    assert cli.main(["serve", "--socket", str(tmp_path / "b.sock"), "--loop", "uvloop"]) == 1
    assert "--loop uvloop" in capsys.readouterr().err


def test_an_unknown_loop_in_the_environment_is_a_usage_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HTTP_BROKER_LOOP", "trio")
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--socket", str(tmp_path / "b.sock")])
    assert exc.value.code == 2
    assert "trio" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "expected"),
    [("asyncio", "asyncio"), ("", "uvloop" if HAVE_UVLOOP else "asyncio")],
)
def test_the_broker_process_runs_on_the_loop_chosen(tmp_path, env, expected):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", "--socket", str(tmp_path / "b.sock"),
         "--log-level", "INFO"],
        cwd=root, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HTTP_BROKER_LOOP": env},
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the first INFO line: "... event=serving ... loop=LOOP"
        assert "event=serving" in line, line
        assert f" loop={expected} " in line, line
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
