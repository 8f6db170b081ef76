"""Sync requests-per-second check: httpx.Client vs http-broker's SyncSession.

One aiohttp.web server runs in a subprocess (``bench/quick_rps.py --serve``: ``GET /``
answers 2 bytes) on 127.0.0.1. Against it, in the same run, this script times a GET loop
(``with client.get(url) as r: r.read()``; httpx: ``client.get(url).read()``)

* sequentially (one request in flight), and
* from ``--threads`` threads (8 by default) sharing one client,

for these clients: httpx's ``Client`` (the peer: a sync client users of requests and
httpx know), ``SyncSession`` embedded (the engine on its background loop), through a
broker on the blocking wire path (``worker_client/sync_wire.py``) and through a broker on
the background loop (``HTTP_BROKER_FAST_PATH=0``), and for reference the async
``ClientSession`` through the broker (sequential only). Every (client, pattern) pair runs
for ``--seconds`` per round, the clients in a rotating order, for ``--rounds`` rounds; the
medians and their ratios to httpx's are printed. The whole run takes about
``9 * rounds * seconds`` plus a few seconds of start-up (about 70 s by default).
Loopback only.

    python bench/sync_rps.py [--rounds 7] [--seconds 1.0] [--threads 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from quick_rps import start_server, stop_server  # noqa: E402

LABELS = {
    "httpx": "httpx.Client",
    "embedded": "SyncSession, embedded",
    "wire": "SyncSession, broker (wire)",
    "loop": "SyncSession, broker (loop)",
    "async": "async ClientSession, broker",
}


# -- the loops ----------------------------------------------------------------------


def fetch(client: Any, url: str) -> None:
    """One GET, its body read and the response released."""
    if type(client).__module__.startswith("httpx"):
        client.get(url).read()  # httpx reads the body in get() and releases it
        return
    with client.get(url) as resp:
        resp.read()


def sequential(client: Any, url: str, seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        fetch(client, url)
        n += 1
    return n / (time.perf_counter() - start)


def threaded(client: Any, url: str, seconds: float, threads: int) -> float:
    counts = [0] * threads
    start = time.perf_counter()
    end = start + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < end:
            fetch(client, url)
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - start)


def async_sequential(broker_socket: str, url: str, seconds: float) -> float:
    import worker_client

    async def run() -> float:
        async with worker_client.ClientSession(broker=broker_socket) as s:
            for _ in range(50):  # warm up: the connection, the plan cache
                async with s.get(url) as resp:
                    await resp.read()
            n = 0
            start = time.perf_counter()
            end = start + seconds
            while time.perf_counter() < end:
                async with s.get(url) as resp:
                    await resp.read()
                n += 1
            return n / (time.perf_counter() - start)

    return asyncio.run(run())


# -- the run ------------------------------------------------------------------------


def make_clients(broker_socket: str) -> dict[str, Any]:
    import httpx

    from worker_client import SyncSession

    clients: dict[str, Any] = {
        "httpx": httpx.Client(),
        "embedded": SyncSession(broker=None),
        "wire": SyncSession(broker=broker_socket),
    }
    os.environ["HTTP_BROKER_FAST_PATH"] = "0"  # read when a session is made
    try:
        clients["loop"] = SyncSession(broker=broker_socket)
    finally:
        del os.environ["HTTP_BROKER_FAST_PATH"]
    assert clients["wire"]._wire is not None and clients["loop"]._wire is None
    return clients


def measure(
    url: str, broker_socket: str, rounds: int, seconds: float, threads: int
) -> dict[tuple[str, str], list[float]]:
    clients = make_clients(broker_socket)
    patterns: dict[str, Callable[[Any], float]] = {
        "sequential": lambda c: sequential(c, url, seconds),
        f"{threads} threads": lambda c: threaded(c, url, seconds, threads),
    }
    results: dict[tuple[str, str], list[float]] = {
        (c, p): [] for c in clients for p in patterns
    }
    results[("async", "sequential")] = []
    try:
        for c in clients.values():  # warm up: connections, imports, caches
            sequential(c, url, 0.2)
            threaded(c, url, 0.2, threads)
        names = [*clients, "async"]
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                if name == "async":
                    results[(name, "sequential")].append(
                        async_sequential(broker_socket, url, seconds)
                    )
                    continue
                for pattern, run in patterns.items():
                    results[(name, pattern)].append(run(clients[name]))
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
        assert clients["wire"]._loop is None  # the wire path never started the loop
    finally:
        for c in clients.values():
            c.close()
    return results


def report(results: dict[tuple[str, str], list[float]], args: argparse.Namespace) -> None:
    patterns = list(dict.fromkeys(p for _, p in results))
    print(
        f"\nGET loop against aiohttp.web on 127.0.0.1 (server in its own process); "
        f"{args.rounds} rounds x {args.seconds}s per cell, medians"
    )
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs "
        f"(the broker process and the server use uvloop when it is installed)\n"
    )
    for pattern in patterns:
        base = statistics.median(results[("httpx", pattern)])
        print(f"{pattern}:")
        print(f"  {'client':30} {'req/s':>8} {'vs httpx':>9}   {'min..max req/s':>16}")
        for client, label in LABELS.items():
            xs = results.get((client, pattern))
            if not xs:
                continue
            med = statistics.median(xs)
            spread = f"{min(xs):,.0f}..{max(xs):,.0f}"
            print(f"  {label:30} {med:8,.0f} {med / base:8.2f}x   {spread:>16}")
        print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    import broker

    os.environ.pop("HTTP_BROKER", None)  # embedded must mean embedded
    os.environ.pop("HTTP_BROKER_FAST_PATH", None)
    started = time.monotonic()
    server, url = start_server()
    try:
        with broker.start(export=False) as proc:
            results = measure(url, proc.socket_path, args.rounds, args.seconds, args.threads)
    finally:
        stop_server(server)
    report(results, args)
    print(f"(run took {time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
