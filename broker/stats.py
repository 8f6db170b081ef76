"""The broker's figures: assembled in one place for both modes, and asked for from outside."""

from __future__ import annotations

import os
from collections.abc import Sequence

from shared.messages import Stats, StatsRequest

from .blocking import BlockingPeer
from .engine import Engine

__all__ = ["build_stats", "fetch_stats"]


def build_stats(
    engine: Engine,
    workers: int,
    streams: int,
    jars: Sequence[dict[str, object]] = (),
) -> Stats:
    """The figures of ``engine`` in this process, serving ``workers`` with ``streams``
    open; ``jars``: the figures of the cookie jars (``JarTable.figures``)."""
    return Stats(
        pid=os.getpid(),
        workers=workers,
        streams=streams,
        requests=engine.requests,
        pools=engine.figures(),
        dns=engine.dns_figures(),
        jars=list(jars),
    )


def fetch_stats(path: str, timeout: float = 10.0) -> Stats:
    """Ask the broker at ``path`` for its figures (blocking; ``PeerError`` if it fails)."""
    with BlockingPeer(path, timeout) as peer:
        peer.handshake()
        return peer.ask(StatsRequest(), Stats)
