"""Quick requests-per-second check: aiohttp vs http-broker (embedded, and via a broker).

One aiohttp.web server runs in a subprocess (so that it does not share the client's
CPU) on 127.0.0.1 and answers ``GET /`` with 2 bytes. Against it, in the same run, this
script times a simple GET loop (``async with session.get(url) as r: await r.read()``)

* sequentially (one request in flight), and
* with ``--concurrency`` tasks (32 by default) sharing one session,

for three clients: aiohttp's ``ClientSession``, http-broker's in embedded mode (the
engine inside this process), and http-broker's through a broker process started with
``broker.start()``. Every (client, pattern) pair runs for ``--seconds`` per round, the
clients in a rotating order, for ``--rounds`` rounds; the medians and their ratios to
aiohttp's are printed. The whole run takes about ``6 * rounds * seconds`` plus a few
seconds of start-up (about 45 s by default). Loopback only.

This is the quick measurement of issue 2, not the benchmark suite.

    python bench/quick_rps.py [--rounds 7] [--seconds 1.0] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)


# -- the server subprocess ----------------------------------------------------------


def serve() -> None:
    """``--serve``: print the port, serve until stdin closes (the parent ended)."""
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=b"ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    try:
        import uvloop  # the server should not be the bottleneck

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.isdigit():
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the server subprocess did not start (printed {line!r})")
    return proc, f"http://127.0.0.1:{line}/"


def stop_server(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the loops ----------------------------------------------------------------------


async def sequential(session: Any, url: str, seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        async with session.get(url) as resp:
            await resp.read()
        n += 1
    return n / (time.perf_counter() - start)


async def concurrent(session: Any, url: str, seconds: float, tasks: int) -> float:
    n = 0
    start = time.perf_counter()
    end = start + seconds

    async def loop() -> None:
        nonlocal n
        while time.perf_counter() < end:
            async with session.get(url) as resp:
                await resp.read()
            n += 1

    await asyncio.gather(*(loop() for _ in range(tasks)))
    return n / (time.perf_counter() - start)


# -- the run ------------------------------------------------------------------------


async def measure(
    url: str, broker_socket: str, rounds: int, seconds: float, tasks: int
) -> dict[tuple[str, str], list[float]]:
    import aiohttp

    import worker_client

    makers: dict[str, Callable[[], Any]] = {
        "aiohttp": aiohttp.ClientSession,
        "embedded": lambda: worker_client.ClientSession(broker=None),
        "broker": lambda: worker_client.ClientSession(broker=broker_socket),
    }
    sessions = {name: make() for name, make in makers.items()}
    patterns: dict[str, Callable[[Any], Any]] = {
        "sequential": lambda s: sequential(s, url, seconds),
        f"{tasks} concurrent": lambda s: concurrent(s, url, seconds, tasks),
    }
    results: dict[tuple[str, str], list[float]] = {(c, p): [] for c in sessions for p in patterns}
    try:
        for s in sessions.values():  # warm up: connections, imports, caches
            await sequential(s, url, 0.2)
            await concurrent(s, url, 0.2, tasks)
        names = list(sessions)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for client in order:
                for pattern, run in patterns.items():
                    results[(client, pattern)].append(await run(sessions[client]))
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    finally:
        for s in sessions.values():
            await s.close()
    return results


def report(results: dict[tuple[str, str], list[float]], args: argparse.Namespace) -> None:
    patterns = list(dict.fromkeys(p for _, p in results))
    clients = list(dict.fromkeys(c for c, _ in results))
    label = {
        "aiohttp": "aiohttp ClientSession",
        "embedded": "http-broker, embedded",
        "broker": "http-broker, via broker",
    }
    print(
        f"\nGET loop against aiohttp.web on 127.0.0.1 (server in its own process); "
        f"{args.rounds} rounds x {args.seconds}s per cell, medians"
    )
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, client loop: asyncio "
        f"(the broker process and the server use uvloop when it is installed)\n"
    )
    for pattern in patterns:
        base = statistics.median(results[("aiohttp", pattern)])
        print(f"{pattern}:")
        print(f"  {'client':26} {'req/s':>8} {'vs aiohttp':>10}   {'min..max req/s':>16}")
        for client in clients:
            xs = results[(client, pattern)]
            med = statistics.median(xs)
            spread = f"{min(xs):,.0f}..{max(xs):,.0f}"
            print(f"  {label[client]:26} {med:8,.0f} {med / base:9.2f}x   {spread:>16}")
        print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0

    import broker

    os.environ.pop("HTTP_BROKER", None)  # embedded must mean embedded
    started = time.monotonic()
    server, url = start_server()
    try:
        with broker.start(export=False) as proc:
            results = asyncio.run(
                measure(url, proc.socket_path, args.rounds, args.seconds, args.concurrency)
            )
    finally:
        stop_server(server)
    report(results, args)
    print(f"(run took {time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
