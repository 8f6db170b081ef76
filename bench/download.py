"""100 MiB downloads with ``await resp.read()``: aiohttp vs http-broker (issue 11).

A local server in its own process serves one body of ``--size`` MiB (100 by default):
nginx when it is installed (a private config in a temporary directory, one worker,
``sendfile on``), else an aiohttp.web server; the script says which. Against it, in this
one process, the clients take turns (the order rotates each round) for ``--rounds``
rounds (5 by default), one download per client per round, each in a fresh session:

* ``aiohttp``: aiohttp's ``ClientSession``;
* ``embedded``: http-broker with the engine in this process;
* ``broker``: http-broker through a broker process (``--broker``; started here);
* ``embedded/<N>K`` for each ``--bufsizes`` entry: embedded, with the upstream read
  size (``broker.http1._BUFSIZE``) set to N KiB, to choose that size by measurement.

For each it prints the median GB/s (10^9 bytes per second, over the whole request:
connect, head, body, ``read()``), the ratio to aiohttp's median, and the median page
faults per download (``resource.getrusage(RUSAGE_SELF).ru_minflt``, this process only,
so not the broker's for ``broker``). Each body is checked by length; ``--check`` also
compares its SHA-256. ``--read any`` reads with ``async for chunk in
resp.content.iter_any()`` instead of ``read()`` (the path that keeps chunks). Loopback
only.

    python bench/download.py [--rounds 5] [--size 100] [--server auto|nginx|aiohttp]
                             [--broker] [--bufsizes 64,256,1024] [--check]
                             [--read whole|any]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from quick_rps import stop_server  # noqa: E402

MiB = 1 << 20


def make_body(size: int) -> bytes:
    return hashlib.sha256(b"bench").digest() * (size // 32)


# -- the servers --------------------------------------------------------------------

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
    }}
}}
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def nginx_server(size: int) -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="bench-nginx-")
    os.chmod(d, 0o755)  # nginx's workers may run as another user
    try:
        os.makedirs(f"{d}/www")
        os.makedirs(f"{d}/tmp")
        with open(f"{d}/www/body", "wb") as f:
            f.write(make_body(size))
        port = free_port()
        with open(f"{d}/nginx.conf", "w") as f:
            f.write(NGINX_CONF.format(d=d, port=port))
        proc = subprocess.Popen(["nginx", "-c", f"{d}/nginx.conf", "-p", d])
        try:
            wait_port(port, proc)
            yield f"http://127.0.0.1:{port}/body"
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def serve(size: int) -> None:
    """``--serve``: an aiohttp.web server of one body; prints the port, serves until
    stdin closes (the parent ended)."""
    from aiohttp import web

    body = make_body(size)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/body", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(main())


@contextlib.contextmanager
def aiohttp_server(size: int) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", "--size", str(size // MiB)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"the server subprocess did not start (printed {line!r})")
        yield f"http://127.0.0.1:{line}/body"
    finally:
        stop_server(proc)


def wait_port(port: int, proc: subprocess.Popen[Any]) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("nginx exited at start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError("nginx did not start listening")


# -- the clients ----------------------------------------------------------------------


async def download(
    make: Callable[[], Any], url: str, size: int, check: bytes | None, whole: bool = True
) -> tuple[float, int]:
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    async with make() as session, session.get(url) as resp:
        if resp.status != 200:
            raise AssertionError(f"the server answered {resp.status}")
        h = hashlib.sha256() if check is not None else None
        if whole:
            body = await resp.read()
            got = len(body)
        else:
            got = 0
            async for chunk in resp.content.iter_any():
                got += len(chunk)
                if h is not None:
                    h.update(chunk)
    elapsed = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    if whole and h is not None:
        h.update(body)
    if got != size or (h is not None and h.digest() != check):
        raise AssertionError(f"wrong body: {got} bytes")
    return size / elapsed / 1e9, faults


async def measure(args: argparse.Namespace, url: str, broker_socket: str | None) -> dict[
    str, list[tuple[float, int]]
]:
    import aiohttp

    import broker.http1
    import worker_client

    size = args.size * MiB
    check = hashlib.sha256(make_body(size)).digest() if args.check else None
    default_bufsize = broker.http1._BUFSIZE

    def embedded(bufsize: int) -> Callable[[], Any]:
        def make() -> Any:
            broker.http1._BUFSIZE = bufsize
            return worker_client.ClientSession(broker=None)

        return make

    makers: dict[str, Callable[[], Any]] = {
        "aiohttp": aiohttp.ClientSession,
        "embedded": embedded(default_bufsize),
    }
    if broker_socket is not None:
        makers["broker"] = lambda: worker_client.ClientSession(broker=broker_socket)
    for kib in args.bufsizes:
        makers[f"embedded/{kib}K"] = embedded(kib * 1024)
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in makers}
    names = list(makers)
    whole = args.read == "whole"
    for name in names:  # warm up: imports, the server's page cache
        await download(makers[name], url, size, None, whole)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            results[name].append(await download(makers[name], url, size, check, whole))
        print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    broker.http1._BUFSIZE = default_bufsize
    return results


def report(results: dict[str, list[tuple[float, int]]], args: argparse.Namespace,
           server: str) -> None:
    import broker.http1

    print(
        f"\n{args.size} MiB download, "
        f"{'await resp.read()' if args.read == 'whole' else 'iter_any()'}, "
        f"from {server} on 127.0.0.1; "
        f"{args.rounds} alternating rounds, medians"
    )
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, asyncio loop; "
        f"default read size {broker.http1._BUFSIZE // 1024} KiB\n"
    )
    base = statistics.median(g for g, _ in results["aiohttp"])
    print(f"  {'client':16} {'GB/s':>6} {'vs aiohttp':>10} {'min..max GB/s':>14} {'faults':>8}")
    for name, xs in results.items():
        gbs = [g for g, _ in xs]
        med = statistics.median(gbs)
        faults = statistics.median(f for _, f in xs)
        spread = f"{min(gbs):.2f}..{max(gbs):.2f}"
        print(f"  {name:16} {med:6.2f} {med / base:9.2f}x {spread:>14} {faults:8.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=100, help="MiB")
    parser.add_argument("--server", choices=("auto", "nginx", "aiohttp"), default="auto")
    parser.add_argument("--broker", action="store_true", help="also through a broker")
    parser.add_argument(
        "--bufsizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[],
        help="read sizes in KiB to try embedded, e.g. 64,256,1024",
    )
    parser.add_argument("--check", action="store_true", help="compare SHA-256 too")
    parser.add_argument("--read", choices=("whole", "any"), default="whole")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.size * MiB)
        return 0
    use_nginx = args.server == "nginx" or (
        args.server == "auto" and shutil.which("nginx") is not None
    )
    server = "nginx" if use_nginx else "aiohttp.web"
    print(f"server: {server}", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(
            (nginx_server if use_nginx else aiohttp_server)(args.size * MiB)
        )
        broker_socket = None
        if args.broker:
            import broker

            proc = stack.enter_context(broker.start(export=False))
            broker_socket = proc.socket_path
        results = asyncio.run(measure(args, url, broker_socket))
    report(results, args, server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
