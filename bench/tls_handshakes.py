"""TLS handshakes: 4 worker processes, 100 sequential https GETs each, to one loopback
TLS server; aiohttp in each process against http-broker (issue 9's measurement).

The server (aiohttp.web in a subprocess, on uvloop when installed) serves ``GET /`` with
2 bytes over TLS with a certificate of a test CA made with the ``openssl`` command line
(``tests/tls_certs.make_certs``, in a temporary directory), and counts the TLS
handshakes it sees (every ClientHello: its context's ``sni_callback``) and the requests.
Each run starts ``--workers`` fresh processes (spawned, outside the timing); once all are
ready (imports done, session made) they start together, and each makes ``--requests``
sequential GETs verified against the test CA. A run's time is from the first worker's
start to the last one's end. The clients:

- **aiohttp**: ``aiohttp.ClientSession()`` in each process (its own pool),
  ``ssl=ssl.create_default_context(cafile=CA)``;
- **one broker, new**: ``worker_client.ClientSession(broker=...)`` in each process, all
  through one broker started for the run (``broker.start()``, outside the timing), so
  its pool starts empty; ``ssl=worker_client.create_default_context(cafile=CA)``;
- **one broker, warm**: the same through one broker kept for the whole bench (its idle
  connections from the run before are reused: a long-lived broker's steady state);
- **embedded**: ``worker_client.ClientSession(broker=None)`` in each process.

The clients alternate in a rotating order for ``--rounds`` rounds; the report gives the
median time per run, its ratio to aiohttp's, and the handshakes and requests the server
counted per run. About 30 s with the defaults. Loopback only.

    python bench/tls_handshakes.py [--rounds 5] [--requests 100] [--workers 4]
                                   [--clients aiohttp,broker-new,broker-warm,embedded]

A client whose option is missing (``worker_client.create_default_context``, ``ssl=``)
stops the bench with the worker's error; ``--clients aiohttp`` runs aiohttp alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import platform
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)

CLIENTS = {
    "aiohttp": "aiohttp in each process",
    "broker-new": "http-broker, one new broker",
    "broker-warm": "http-broker, one warm broker",
    "embedded": "http-broker, embedded",
}
WORKER_TIMEOUT = 120.0  # seconds for a run's workers to get ready, and then to finish


# -- the server subprocess ----------------------------------------------------------


def serve(cert: str, key: str) -> None:
    """``--serve CERT KEY``: print the port; then answer each line on stdin with
    "handshakes requests" so far; stop when stdin closes (the parent ended)."""
    from aiohttp import web

    counts = {"handshakes": 0, "requests": 0}

    def hello(ssl_object: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        counts["handshakes"] += 1

    async def answer(request: web.Request) -> web.Response:
        counts["requests"] += 1
        return web.Response(body=b"ok")

    async def main() -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.sni_callback = hello
        app = web.Application()
        app.router.add_get("/", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024, ssl_context=ctx).start()
        print(runner.addresses[0][1], flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            print(counts["handshakes"], counts["requests"], flush=True)
        await runner.cleanup()

    try:
        import uvloop  # the server should not be the bottleneck

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


class Server:
    def __init__(self, cert: Path, key: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", str(cert), str(key)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"the server subprocess did not start (printed {line!r})")
        self.url = f"https://127.0.0.1:{line}/"

    def counts(self) -> tuple[int, int]:
        """(handshakes, requests) the server has seen so far."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        handshakes, requests = self.proc.stdout.readline().split()
        return int(handshakes), int(requests)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- a worker process ---------------------------------------------------------------


def _session_and_ssl(client: str, cafile: str, broker: str | None) -> tuple[Any, Any]:
    if client == "aiohttp":
        import aiohttp

        return aiohttp.ClientSession(), ssl.create_default_context(cafile=cafile)
    import worker_client

    make_context = getattr(worker_client, "create_default_context", None)
    if make_context is None:
        raise RuntimeError("worker_client.create_default_context is missing (issue 9's TLS)")
    return worker_client.ClientSession(broker=broker), make_context(cafile=cafile)


async def _run(
    client: str, url: str, cafile: str, broker: str | None, n: int, barrier: Any
) -> tuple[float, float]:
    session, ssl_arg = _session_and_ssl(client, cafile, broker)
    async with session:
        barrier.wait(WORKER_TIMEOUT)  # everyone ready: start together
        start = time.perf_counter()  # CLOCK_MONOTONIC: one clock for every process
        for _ in range(n):
            async with session.get(url, ssl=ssl_arg) as resp:
                body = await resp.read()
                if resp.status != 200 or body != b"ok":
                    raise RuntimeError(f"unexpected answer {resp.status} {body[:50]!r}")
        return start, time.perf_counter()


def worker(
    queue: Any, client: str, url: str, cafile: str, broker: str | None, n: int, barrier: Any
) -> None:
    try:
        queue.put(asyncio.run(_run(client, url, cafile, broker, n, barrier)))
    except BaseException as exc:
        barrier.abort()  # the others stop waiting for this one
        queue.put(f"{type(exc).__name__}: {exc}")


# -- the run ------------------------------------------------------------------------


def one_run(
    client: str, server: Server, cafile: str, broker: str | None, args: argparse.Namespace
) -> tuple[float, int, int]:
    """(seconds, handshakes, requests) of one run of ``args.workers`` fresh processes."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    barrier = ctx.Barrier(args.workers + 1)
    procs = [
        ctx.Process(
            target=worker,
            args=(queue, client, server.url, cafile, broker, args.requests, barrier),
        )
        for _ in range(args.workers)
    ]
    before = server.counts()
    for p in procs:
        p.start()
    try:
        try:
            barrier.wait(WORKER_TIMEOUT)
        except threading.BrokenBarrierError:
            pass  # a worker failed before starting: its error is in the queue
        results = [queue.get(timeout=WORKER_TIMEOUT) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    errors = [r for r in results if isinstance(r, str)]
    if errors:  # the cause, rather than the others' broken barrier
        errors.sort(key=lambda e: e.startswith("BrokenBarrierError"))
        raise SystemExit(f"{CLIENTS[client]}: a worker failed: {errors[0]}")
    after = server.counts()
    seconds = max(end for _, end in results) - min(start for start, _ in results)
    return seconds, after[0] - before[0], after[1] - before[1]


@contextlib.contextmanager
def broker_for(client: str, warm: Any) -> Iterator[str | None]:
    if client == "broker-new":
        import broker

        with broker.start(export=False) as proc:
            yield proc.socket_path
    elif client == "broker-warm":
        yield warm.socket_path
    else:
        yield None


def measure(
    server: Server, cafile: str, args: argparse.Namespace
) -> dict[str, list[tuple[float, int, int]]]:
    results: dict[str, list[tuple[float, int, int]]] = {c: [] for c in args.clients}
    with contextlib.ExitStack() as stack:
        warm = None
        if "broker-warm" in args.clients:
            import broker

            warm = stack.enter_context(broker.start(export=False))
            with broker_for("broker-warm", warm) as address:  # fills its pool
                one_run("broker-warm", server, cafile, address, args)
        for r in range(args.rounds):
            order = args.clients[r % len(args.clients) :] + args.clients[: r % len(args.clients)]
            for client in order:
                with broker_for(client, warm) as address:
                    results[client].append(one_run(client, server, cafile, address, args))
            print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    return results


def report(results: dict[str, list[tuple[float, int, int]]], args: argparse.Namespace) -> None:
    print(
        f"\n{args.workers} worker processes x {args.requests} sequential https GETs to "
        f"aiohttp.web on 127.0.0.1 (TLS, test CA, server in its own process); "
        f"{args.rounds} rounds, medians"
    )
    print(f"Python {platform.python_version()}, {ssl.OPENSSL_VERSION}, {os.cpu_count()} CPUs\n")
    base = statistics.median(s for s, _, _ in results["aiohttp"]) if "aiohttp" in results else 0
    print(f"  {'client':30} {'ms/run':>8} {'vs aiohttp':>10} {'min..max ms':>14}  handshakes/run")
    for client, runs in results.items():
        times = [s * 1000 for s, _, _ in runs]
        med = statistics.median(times)
        ratio = f"{med / (base * 1000):9.2f}x" if base else f"{'-':>10}"
        spread = f"{min(times):,.0f}..{max(times):,.0f}"
        handshakes = sorted({h for _, h, _ in runs})
        shown = ",".join(map(str, handshakes))
        print(f"  {CLIENTS[client]:30} {med:8,.1f} {ratio} {spread:>14}  {shown}")
        for _, _, requests in runs:
            if requests != args.workers * args.requests:
                raise SystemExit(f"{CLIENTS[client]}: the server counted {requests} requests")


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=100, help="GETs per worker")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated")
    args = parser.parse_args()
    args.clients = args.clients.split(",")
    unknown = set(args.clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown clients {sorted(unknown)}; choose from {list(CLIENTS)}")

    from tests.tls_certs import make_certs

    os.environ.pop("HTTP_BROKER", None)  # embedded must mean embedded
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tls-bench-") as tmp:
        certs = make_certs(Path(tmp))
        server = Server(certs.server, certs.server_key)
        try:
            results = measure(server, str(certs.ca), args)
        finally:
            server.stop()
    report(results, args)
    print(f"\n(run took {time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
