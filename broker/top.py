"""``http-broker stats`` and ``http-broker top``: a broker's figures as aligned text.

``render(stats, previous)`` is the whole picture as plain text, one frame: the broker's
process, the totals, then a table each for the pools (a row per pool, and one per host
under it), the worker processes, the DNS caches and the cookie jars. With the previous
frame's figures it adds rates: requests per second and each process's CPU percent
between the two, over the time the broker's uptime says passed (no clock of our own).

``run_top`` redraws a frame every ``interval`` seconds until Ctrl-C: through rich's
``Live`` when rich is installed (the ``ops`` extra: ``pip install 'http-broker[ops]'``),
else by clearing the terminal with ANSI codes before each frame; without a terminal (a
file, a pipe) it prints each frame in turn, plain. It ends (1) when the broker cannot be
asked.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from shared.messages import Stats, WorkerFigures

__all__ = ["render", "run_top"]

CLEAR = "\x1b[H\x1b[2J"  # cursor home, erase the screen


def render(stats: Stats, previous: Stats | None = None) -> str:
    """One frame of ``stats``; with ``previous`` (the last frame's) the rates too."""
    elapsed = _elapsed(stats, previous)
    sections = [
        _header(stats, previous, elapsed),
        _pools(stats),
        _processes(stats, previous, elapsed),
        _dns(stats),
        _jars(stats),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"


# -- sections -------------------------------------------------------------------------


def _header(stats: Stats, previous: Stats | None, elapsed: float | None) -> list[str]:
    b = stats.broker
    totals = stats.totals
    requests = totals.requests if totals is not None else stats.requests
    first = f"http-broker  pid {stats.pid}"
    if b is not None:
        cpu_before = previous.broker.cpu if previous and previous.broker else None
        first = (
            f"http-broker {b.version}  pid {b.pid}  {b.loop}  protocol {b.protocol}  "
            f"up {_duration(b.uptime)}  cpu {_seconds(b.cpu)}"
            f"{_percent(b.cpu, cpu_before, elapsed)}  rss {_bytes(b.rss)}"
        )
    rate = ""
    if previous is not None and elapsed:
        before = previous.totals.requests if previous.totals is not None else previous.requests
        rate = f"  {(requests - before) / elapsed:.1f} req/s"
    fast = ""
    if totals is not None:
        fast = f" ({totals.fast_requests} fast, {totals.failures} failed)"
    second = (
        f"requests {requests}{fast}{rate}  connections {stats.workers}  "
        f"processes {len(stats.processes)}  streams {stats.streams}"
    )
    return [first, second]


def _pools(stats: Stats) -> list[str]:
    rows: list[Sequence[object]] = []
    for pool in stats.pools:
        limits = f"{pool['limit'] or '-'}/{pool['limit_per_host'] or '-'}"
        rows.append((
            pool["pool"], limits, pool["open"], pool["active"], pool["idle"],
            pool["queued"], _wait(pool["longest_wait"]),
        ))
        for host, h in sorted(pool["hosts"].items()):
            rows.append((
                "  " + host, "", h["open"], h["active"], h["idle"], h["queued"],
                _wait(h["longest_wait"]),
            ))
    header = ("POOL / HOST", "LIMIT/HOST", "OPEN", "ACTIVE", "IDLE", "QUEUED", "LONGEST WAIT")
    return _table(header, rows) if rows else ["no pools"]


def _processes(stats: Stats, previous: Stats | None, elapsed: float | None) -> list[str]:
    before: dict[int, WorkerFigures] = {}
    if previous is not None:
        before = {p.pid: p for p in previous.processes}
    rows: list[Sequence[object]] = []
    for p in stats.processes:
        prior = before.get(p.pid)
        cpu_pct = _percent(p.cpu, prior.cpu if prior else None, elapsed).strip(" ()") or "-"
        rows.append(
            (p.pid, p.connections, p.streams, _seconds(p.cpu), cpu_pct, _bytes(p.rss))
        )
    header = ("WORKER PID", "CONNS", "STREAMS", "CPU", "CPU%", "RSS")
    return _table(header, rows) if rows else ["no worker processes"]


def _dns(stats: Stats) -> list[str]:
    rows: list[Sequence[object]] = [
        (
            d["kind"] + (" " + ",".join(d["nameservers"]) if d["nameservers"] else ""),
            d["size"], d["hits"], d["misses"], d["inflight"],
        )
        for d in stats.dns
    ]
    header = ("DNS CACHE", "ENTRIES", "HITS", "MISSES", "INFLIGHT")
    return _table(header, rows) if rows else []


def _jars(stats: Stats) -> list[str]:
    rows: list[Sequence[object]] = []
    for jar in stats.jars:
        if jar["name"] is None:
            rows.append(("(unnamed jars)", jar["cookies"], jar.get("jars", 0)))
        else:
            rows.append((jar["name"], jar["cookies"], jar.get("open", 0)))
    header = ("COOKIE JAR", "COOKIES", "OPEN")
    return _table(header, rows) if rows else []


# -- formatting -----------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Aligned columns: the first to the left, the others (figures) to the right."""
    cells = [list(header)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(
            [row[0].ljust(widths[0])]
            + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        ).rstrip()
        for row in cells
    ]


def _elapsed(stats: Stats, previous: Stats | None) -> float | None:
    if previous is None or stats.broker is None or previous.broker is None:
        return None
    if previous.broker.pid != stats.broker.pid:
        return None  # another broker: nothing to compare with
    elapsed = stats.broker.uptime - previous.broker.uptime
    return elapsed if elapsed > 0 else None


def _percent(now: float | None, before: float | None, elapsed: float | None) -> str:
    if now is None or before is None or not elapsed:
        return ""
    return f" ({max(0.0, now - before) / elapsed * 100:.1f}%)"


def _wait(seconds: float) -> str:
    return f"{seconds:.2f}s" if seconds else "-"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{s:02d}s"
    return f"{minutes}m{s:02d}s" if minutes else f"{seconds:.1f}s"


# -- live -------------------------------------------------------------------------------


def run_top(
    fetch: Callable[[], Stats],
    interval: float = 1.0,
    once: bool = False,
    out: TextIO = sys.stdout,
    wait: Callable[[float], object] | None = None,
) -> int:
    """Show ``fetch()``'s figures, a frame every ``interval`` seconds until Ctrl-C
    (``once``: one frame, plain). ``wait`` sleeps between frames (``time.sleep``)."""
    import time

    pause = wait or time.sleep
    try:
        stats = fetch()
    except OSError as exc:
        print(f"http-broker: {exc}", file=sys.stderr)
        return 1
    if once:
        out.write(render(stats))
        return 0
    draw = _live(out)
    previous: Stats | None = None
    try:
        with draw as show:
            while True:
                show(render(stats, previous))
                pause(interval)
                previous = stats
                try:
                    stats = fetch()
                except OSError as exc:
                    print(f"http-broker: {exc}", file=sys.stderr)
                    return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # ``top | head``: the reader went away
        _silence(out)
        return 0


def _silence(out: TextIO) -> None:
    """Point ``out``'s descriptor at /dev/null, so that flushing it at exit does not
    fail again (Python's advice for SIGPIPE)."""
    try:
        fd = out.fileno()
    except (OSError, ValueError):  # not a file (a test's StringIO)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


class _Ansi:
    """Redraws by clearing the terminal first: rich's absence."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __enter__(self) -> Callable[[str], None]:
        return self.show

    def __exit__(self, *exc: object) -> None:
        return None

    def show(self, frame: str) -> None:
        self.out.write(CLEAR + frame)
        self.out.flush()


class _Rich:
    def __init__(self, out: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self._live = Live(console=Console(file=out), auto_refresh=False, screen=False)

    def __enter__(self) -> Callable[[str], None]:
        self._live.__enter__()
        return self.show

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def show(self, frame: str) -> None:
        from rich.text import Text

        self._live.update(Text(frame), refresh=True)


class _Plain(_Ansi):
    """No terminal (a file, a pipe): each frame in turn, whole, a blank line after it."""

    def show(self, frame: str) -> None:
        self.out.write(frame + "\n")
        self.out.flush()


def _live(out: TextIO) -> _Ansi | _Rich:
    if not out.isatty():
        return _Plain(out)
    try:
        return _Rich(out)
    except ImportError:
        return _Ansi(out)
