"""broker/top.py: a frame of figures as aligned text, rates between two frames, and the
live loop (its clock and its figures injected)."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable

import pytest

from broker import top
from shared.messages import BrokerFigures, PoolFigures, Stats, Totals, WorkerFigures


def pool(name: str = "crawl", **hosts: dict[str, float]) -> PoolFigures:
    return {
        "pool": name, "options": {"limit": 4}, "limit": 4, "limit_per_host": 2,
        "open": 3, "idle": 1, "active": 2, "queued": 5, "longest_wait": 1.25,
        "hosts": {
            host: {
                "open": int(h["open"]), "active": int(h["active"]), "idle": int(h["idle"]),
                "queued": int(h["queued"]), "longest_wait": h["wait"],
            }
            for host, h in hosts.items()
        },
    }


def stats(
    uptime: float = 10.0,
    requests: int = 100,
    cpu: float | None = 2.0,
    worker_cpu: float | None = 1.0,
    broker_pid: int = 42,
) -> Stats:
    return Stats(
        pid=broker_pid,
        workers=3,
        streams=7,
        requests=requests,
        pools=[
            pool(
                **{"http://a.test:80": {"open": 2, "active": 2, "idle": 0, "queued": 5,
                                        "wait": 1.25},
                   "http://b.test:80": {"open": 1, "active": 0, "idle": 1, "queued": 0,
                                        "wait": 0.0}}
            )
        ],
        dns=[{"kind": "threaded", "nameservers": [], "ttl": 10.0, "max_size": 1000,
              "use_cache": True, "hits": 9, "misses": 2, "size": 2, "inflight": 0}],
        jars=[
            {"name": "site", "unsafe": False, "quote_cookie": True,
             "treat_as_secure_origin": [], "cookies": 3, "open": 2},
            {"name": None, "jars": 4, "cookies": 1},
        ],
        broker=BrokerFigures(broker_pid, "1.2.3", 5, "uvloop", uptime, cpu, 50 << 20),
        processes=[
            WorkerFigures(1001, 2, 7, worker_cpu, 30 << 20),
            WorkerFigures(1002, 1, 0, None, None),
        ],
        totals=Totals(requests=requests, fast_requests=60, failures=2),
    )


def test_a_frame_has_every_table_aligned():
    frame = top.render(stats())
    lines = frame.splitlines()
    assert lines[:2] == [
        "http-broker 1.2.3  pid 42  uvloop  protocol 5  up 10.0s  cpu 2.00s  rss 50.0 MiB",
        "requests 100 (60 fast, 2 failed)  connections 3  processes 2  streams 7",
    ]
    assert "\n".join(lines[3:7]) == (
        "POOL / HOST         LIMIT/HOST  OPEN  ACTIVE  IDLE  QUEUED  LONGEST WAIT\n"
        "crawl                      4/2     3       2     1       5         1.25s\n"
        "  http://a.test:80                 2       2     0       5         1.25s\n"
        "  http://b.test:80                 1       0     1       0             -"
    )
    assert "\n".join(lines[8:11]) == (
        "WORKER PID  CONNS  STREAMS    CPU  CPU%       RSS\n"
        "1001            2        7  1.00s     -  30.0 MiB\n"
        "1002            1        0      -     -         -"  # unreadable: no figures
    )
    assert "\n".join(lines[12:14]) == (
        "DNS CACHE  ENTRIES  HITS  MISSES  INFLIGHT\n"
        "threaded         2     9       2         0"
    )
    assert "\n".join(lines[15:]) == (
        "COOKIE JAR      COOKIES  OPEN\n"
        "site                  3     2\n"
        "(unnamed jars)        1     4"
    )


def test_rates_come_from_the_previous_frame_over_the_brokers_uptime():
    before = stats(uptime=10.0, requests=100, cpu=2.0, worker_cpu=1.0)
    now = stats(uptime=12.0, requests=350, cpu=2.5, worker_cpu=1.5)
    lines = top.render(now, before).splitlines()
    assert "cpu 2.50s (25.0%)" in lines[0]
    assert lines[1].startswith("requests 350 (60 fast, 2 failed)  125.0 req/s  ")
    (row,) = [ln.split() for ln in lines if ln.startswith("1001")]
    assert row[4] == "25.0%"
    # A restarted broker (another pid) or no time passed: no rates.
    for other in (stats(broker_pid=43), stats(uptime=12.0)):
        lines = top.render(now, other).splitlines()
        assert "req/s" not in lines[1] and "%" not in lines[0]


def test_an_idle_broker_says_so():
    empty = Stats(pid=1, workers=0, streams=0)
    assert top.render(empty) == (
        "http-broker  pid 1\n"
        "requests 0  connections 0  processes 0  streams 0\n\n"
        "no pools\n\n"
        "no worker processes\n"
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [(None, "-"), (512, "512 B"), (1536, "1.5 KiB"), (3 << 30, "3.0 GiB"), (5 << 40, "5120.0 GiB")],
)
def test_bytes(value: int | None, shown: str):
    assert top._bytes(value) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(4.25, "4.2s"), (75, "1m15s"), (3600 + 62, "1h01m02s"), (2 * 86400 + 3700, "2d01h01m")],
)
def test_durations(seconds: float, shown: str):
    assert top._duration(seconds) == shown


def frames(figures: list[Stats | OSError]) -> tuple[Callable[[], Stats], Callable[[float], None]]:
    """A fetch that gives ``figures`` in turn, and a wait that presses Ctrl-C once they
    are used up; the waits asked for go in ``waits``."""
    queue = list(figures)

    def fetch() -> Stats:
        got = queue.pop(0)
        if isinstance(got, OSError):
            raise got
        return got

    def wait(seconds: float) -> None:
        waits.append(seconds)
        if not queue:
            raise KeyboardInterrupt

    waits: list[float] = []
    wait.waits = waits  # type: ignore[attr-defined]
    return fetch, wait


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_top_without_rich_redraws_with_ansi_until_ctrl_c(monkeypatch):
    monkeypatch.setitem(sys.modules, "rich.live", None)  # as if rich were not installed
    out = Terminal()
    first, second = stats(uptime=10.0), stats(uptime=11.0, requests=150)
    fetch, wait = frames([first, second])
    assert top.run_top(fetch, interval=0.5, out=out, wait=wait) == 0
    assert wait.waits == [0.5, 0.5]  # type: ignore[attr-defined]
    drawn = out.getvalue().split(top.CLEAR)
    assert drawn == ["", top.render(first), top.render(second, first)]
    assert "50.0 req/s" in drawn[2]


def test_top_once_prints_one_plain_frame():
    out = io.StringIO()
    fetch, wait = frames([stats()])
    assert top.run_top(fetch, once=True, out=out, wait=wait) == 0
    assert out.getvalue() == top.render(stats()) and wait.waits == []  # type: ignore[attr-defined]


def test_top_ends_when_the_broker_cannot_be_asked(capsys):
    out = io.StringIO()
    fetch, wait = frames([OSError("cannot reach the broker at /x.sock")])
    assert top.run_top(fetch, out=out, wait=wait) == 1
    assert capsys.readouterr().err == "http-broker: cannot reach the broker at /x.sock\n"
    fetch, wait = frames([stats(), ConnectionResetError("the broker went away")])
    assert top.run_top(fetch, out=io.StringIO(), wait=wait) == 1
    assert capsys.readouterr().err == "http-broker: the broker went away\n"


def test_top_with_rich_draws_each_frame_live():
    pytest.importorskip("rich.live")
    out = Terminal()
    first, second = stats(uptime=10.0), stats(uptime=11.0, requests=150)
    fetch, wait = frames([first, second])
    assert top.run_top(fetch, out=out, wait=wait) == 0
    drawn = out.getvalue()
    assert top.CLEAR not in drawn
    assert "50.0 req/s" in drawn and "crawl" in drawn


@pytest.mark.parametrize("rich", [True, False])
def test_top_without_a_terminal_prints_every_frame_plainly(monkeypatch, rich):
    """``top > file`` or ``top | grep``: each frame as it comes, whole, with no terminal
    codes (rich's Live wrote nothing until Ctrl-C, then only the last frame, wrapped at
    80 columns; the ANSI fallback wrote its clear codes into the file)."""
    if rich:
        pytest.importorskip("rich.live")
    else:
        monkeypatch.setitem(sys.modules, "rich.live", None)
    out = io.StringIO()
    a, b, c = stats(uptime=10.0), stats(uptime=11.0, requests=150), stats(uptime=12.0)
    fetch, wait = frames([a, b, c])
    assert top.run_top(fetch, out=out, wait=wait) == 0
    assert out.getvalue() == "\n".join([top.render(a), top.render(b, a), top.render(c, b), ""])


def test_top_into_a_pipe_whose_reader_left_ends_quietly():
    """``http-broker top | head``: the reader goes, the next frame meets EPIPE: top ends
    (0) rather than with a traceback."""

    class Pipe(io.StringIO):
        def write(self, text: str) -> int:
            if self.getvalue():
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)

    out = Pipe()
    fetch, wait = frames([stats(), stats(uptime=11.0), stats(uptime=12.0)])
    assert top.run_top(fetch, out=out, wait=wait) == 0
    assert out.getvalue() == top.render(stats()) + "\n"
