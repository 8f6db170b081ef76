"""examples/crawl.py, the README's first command: a crawl by several processes whose
limits and login hold for the group, as the crawled site itself counts them."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from typing import Any

import pytest

from .conftest import ROOT

pytest.importorskip("tqdm")  # the examples extra: python3 -m pip install -e '.[examples]'

SMALL = ["--pages", "200", "--workers", "3", "--limit-per-host", "3", "--rate", "100"]


def crawl(*args: str, tty: bool = False) -> tuple[int, dict[str, Any], str]:
    """Run the crawler: (exit code, its JSON summary, what it wrote on stderr), with
    stderr on a terminal of 100 columns (``tty``) or a pipe."""
    env = {k: v for k, v in os.environ.items() if k != "HTTP_BROKER"}
    cmd = [sys.executable, "examples/crawl.py", *SMALL, "--json", *args]
    if not tty:
        out = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
        )
        assert out.stdout.lstrip().startswith("{"), out.stdout + out.stderr
        return out.returncode, json.loads(out.stdout), out.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    seen: list[bytes] = []

    def drain() -> None:  # a full terminal would stop the bar, and the crawl with it
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        with subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=slave, text=True, env=env
        ) as proc:
            os.close(slave)
            stdout, _ = proc.communicate(timeout=60)
        reader.join(10)
    finally:
        os.close(master)
    stderr = b"".join(seen).decode(errors="replace")
    assert stdout.lstrip().startswith("{"), stdout + stderr
    return proc.returncode, json.loads(stdout), stderr


def test_crawl_through_the_broker_holds_the_group_limits() -> None:
    code, s, bar = crawl(tty=True)
    assert code == 0 and s["ok"], s
    assert s["pages_found"] == s["site_pages"] == 200
    assert s["pages_fetched_more_than_once"] == 0
    assert s["errors"] == s["errors_expected"]  # the site's 404s and 500s, no 403
    # what the workers sent is what the site saw, all of it with the main process's login
    assert sum(s["worker_requests"]) == s["requests"] == s["requests_with_login_cookie"]
    assert s["requests_after_login"] == s["requests"]
    assert all(n > 0 for n in s["worker_requests"])  # every process took part
    assert 1 <= s["most_connections_at_once"] <= 3
    # the rate limit was reached (it is what paced the crawl) and held
    assert 0.8 * 100 <= s["highest_requests_in_window"] <= s["rate_allowed_in_window"]
    # the bound: rate + 1 starts in 1 s, stretched by the arrival jitter the site allowed
    assert abs(s["rate_allowed_in_window"] - (100 * (1 + s["rate_slack_seconds"]) + 1)) <= 1
    assert s["requests_per_second"] <= 100 * 1.2
    # on a terminal, the live bar: its last state counts every URL answered
    urls = sum(s["errors"].values()) + s["pages_ok"]
    assert "crawl: 100%" in bar and f"{urls}/{urls} [" in bar, bar[-500:]
    assert bar.count("crawl: ") >= 3  # redrawn while the crawl ran, not only at the end


def test_crawl_without_broker_is_caught_by_the_site() -> None:
    """The same crawl with a pool and a jar per process: the site's counts catch it, so
    the checks above can fail."""
    code, s, stderr = crawl("--no-broker")
    assert code == 1 and not s["ok"]
    assert s["requests_with_login_cookie"] == 0 < s["requests_after_login"]
    assert s["errors"]["403"] > 0 and s["pages_found"] < s["site_pages"]
    assert s["highest_requests_in_window"] > 100 + 1  # more than one pool's rate
    assert not s["checks"]["login_cookie_on_every_request"]
    assert "%|" not in stderr  # no bar when stderr is not a terminal


def test_a_worker_that_dies_mid_crawl_ends_the_crawl_at_once() -> None:
    """A worker killed while the others keep answering: the crawl stops within a second
    or so and says which worker died, rather than crawling on without it."""
    import psutil

    env = {k: v for k, v in os.environ.items() if k != "HTTP_BROKER"}
    cmd = [sys.executable, "examples/crawl.py", "--pages", "2000", "--workers", "3",
           "--rate", "200", "--json"]
    master, slave = pty.openpty()  # the bar says how far the crawl is
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        with subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=slave, text=True, env=env
        ) as proc:
            os.close(slave)
            bar, deadline = b"", time.monotonic() + 30
            while not _pages_done(bar) >= 20:  # crawling (the whole crawl takes 10 s)
                ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
                assert ready, bar[-500:]
                bar += os.read(master, 65536)
            workers = [
                c for c in psutil.Process(proc.pid).children()
                if "--multiprocessing-fork" in c.cmdline()
            ]
            assert len(workers) == 3
            workers[0].kill()
            killed = time.monotonic()
            drain = threading.Thread(target=_drain, args=(master,), daemon=True)
            drain.start()  # a full terminal would stop the bar, and the crawl with it
            stdout, _ = proc.communicate(timeout=30)
            took = time.monotonic() - killed
    finally:
        os.close(master)
    s = json.loads(stdout)
    assert proc.returncode == 1 and not s["ok"]
    assert any("exited with -9" in f for f in s["failures"]), s["failures"]
    assert 20 <= s["pages_found"] < s["site_pages"]  # it did not crawl on to the end
    assert s["worker_requests"][0] is None  # a count it never reported is not shown as 0
    assert took < 4, took


def _pages_done(bar: bytes) -> int:
    """The count the last drawn frame of the bar shows (``  42/2000 [``), 0 before one."""
    counts = re.findall(rb"(\d+)/\d+ \[", bar)
    return int(counts[-1]) if counts else 0


def _drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 65536):
                return
        except OSError:  # EIO: the last writer closed, or the test closed it
            return
