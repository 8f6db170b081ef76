"""The broker's figures: assembled in one place for both modes, and asked for from outside.

Nothing here runs on the request path. The pools keep their counts as they go (their
``PoolState``: open, idle and active per key, and each waiter's enqueue time, from which
the longest wait is worked out when asked); the engine and the server count requests
with an integer each. What costs more is read when the figures are asked for: the
worker processes' and the broker's own CPU time and RSS (psutil: a few reads of
``/proc`` per process), grouped from the worker connections open then.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Sequence

from shared import __version__
from shared.messages import (
    PROTOCOL_VERSION,
    BrokerFigures,
    JarFigures,
    Stats,
    StatsRequest,
    Totals,
    WorkerFigures,
)

from .blocking import BlockingPeer
from .engine import Engine

__all__ = ["build_stats", "fetch_stats", "worker_figures", "usage"]


def build_stats(
    engine: Engine,
    workers: int,
    streams: int,
    jars: Sequence[JarFigures] = (),
    processes: Sequence[WorkerFigures] = (),
    totals: Totals | None = None,
) -> Stats:
    """The figures of ``engine`` in this process, serving ``workers`` connections with
    ``streams`` open; ``jars``: the cookie jars' figures (``JarTable.figures``);
    ``processes``: the worker processes' (``worker_figures``); ``totals``: the server's
    counts (else the engine's requests only)."""
    return Stats(
        pid=os.getpid(),
        workers=workers,
        streams=streams,
        requests=engine.requests,
        pools=engine.figures(),
        dns=engine.dns_figures(),
        jars=list(jars),
        broker=broker_figures(),
        processes=list(processes),
        totals=totals or Totals(requests=engine.requests),
    )


def worker_figures(connections: Iterable[tuple[int, int]]) -> list[WorkerFigures]:
    """One entry per worker process, from its connections' ``(process, streams)``:
    ``process`` is the kernel's pid for it (> 0), or minus the pid its ``Hello`` claimed
    (``WorkerConnection.process``), whose CPU and RSS are not read. Sorted by pid."""
    grouped: dict[int, list[int]] = {}
    for process, streams in connections:
        counts = grouped.setdefault(process, [0, 0])
        counts[0] += 1
        counts[1] += streams
    out = []
    for process, (conns, streams) in sorted(grouped.items(), key=lambda kv: abs(kv[0])):
        cpu, rss = usage(process) if process > 0 else (None, None)
        out.append(WorkerFigures(abs(process), conns, streams, cpu, rss))
    return out


def usage(pid: int | None = None) -> tuple[float | None, int | None]:
    """CPU seconds (user + system) and RSS bytes of ``pid`` (None: this process), or
    ``(None, None)`` for a process that is gone or may not be read."""
    import psutil  # here: a worker that never asks for figures never loads it

    try:
        process = psutil.Process(pid)
        with process.oneshot():
            times = process.cpu_times()
            rss = int(process.memory_info().rss)
    except (psutil.Error, OSError):
        return None, None
    return times.user + times.system, rss


def broker_figures() -> BrokerFigures:
    """This process: the broker's (a worker's own, for an embedded session)."""
    import psutil

    try:
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
    except RuntimeError:
        loop = "none"
    try:
        uptime = max(0.0, time.time() - psutil.Process().create_time())
    except (psutil.Error, OSError):
        uptime = 0.0
    cpu, rss = usage()
    return BrokerFigures(os.getpid(), __version__, PROTOCOL_VERSION, loop, uptime, cpu, rss)


def fetch_stats(path: str, timeout: float = 10.0) -> Stats:
    """Ask the broker at ``path`` for its figures (blocking; ``PeerError`` if it fails)."""
    with BlockingPeer(path, timeout) as peer:
        peer.handshake()
        return peer.ask(StatsRequest(), Stats)
