"""Instructions per request, counted by valgrind (callgrind): repeatable on a noisy VM.

Wall-clock figures on a shared 2-core machine move by tens of percent from run to run;
an instruction count does not. This runs one client process under callgrind twice, with
N1 and N2 sequential GETs against the same local aiohttp.web server (in its own process,
not counted), and reports (I(N2) - I(N1)) / (N2 - N1): the cost of one more request with
start-up taken out. It does so for aiohttp's ClientSession, for ours in embedded mode, and
for broker mode on each side: the worker process (the broker running normally), then the
broker process (under callgrind itself, the client running normally).

    apt-get install valgrind     # once
    python bench/instructions.py [--conc 1] [--n1 100] [--n2 600]

Slow by nature (valgrind runs Python about 50x slower): about four minutes in all.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SERVER = """
import sys
from aiohttp import web
async def hello(request):
    return web.Response(text="ok")
app = web.Application()
app.router.add_get("/", hello)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

CLIENT = """
import asyncio, sys
sys.path.insert(0, {root!r})
kind, url, n, conc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import aiohttp, worker_client

async def main():
    if kind == "aiohttp":
        session = aiohttp.ClientSession()
    else:
        session = worker_client.ClientSession(broker=None if kind == "embedded" else kind)
    async with session:
        async def one(k):
            for _ in range(k):
                async with session.get(url) as resp:
                    await resp.read()
        await asyncio.gather(*(one(n // conc) for _ in range(conc)))

asyncio.run(main())
"""


ENV = {k: v for k, v in os.environ.items() if k != "HTTP_BROKER"}


def _collected(stderr: str) -> int:
    match = re.search(r"Collected : (\d+)", stderr)
    if not match:
        raise RuntimeError(f"no count from callgrind:\n{stderr[-2000:]}")
    return int(match.group(1))


def _callgrind(tmp: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out"]


def instructions(client: str, kind: str, url: str, n: int, conc: int) -> int:
    """Instructions of the client process making n requests."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [*_callgrind(tmp), sys.executable, client, kind, url, str(n), str(conc)],
            capture_output=True, text=True, check=True, env=ENV,
        )
    return _collected(out.stderr)


def broker_instructions(client: str, url: str, n: int, conc: int) -> int:
    """Instructions of a broker process serving n requests of a client."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "b.sock")
        broker = subprocess.Popen(
            [*_callgrind(tmp), sys.executable, "-m", "broker", "serve", "--socket", sock],
            cwd=ROOT, stderr=subprocess.PIPE, text=True, env=ENV,
        )
        _wait_for(lambda: os.path.exists(sock), 60)
        subprocess.run(
            [sys.executable, client, sock, url, str(n), str(conc)], check=True, env=ENV
        )
        broker.send_signal(signal.SIGINT)
        _, err = broker.communicate(timeout=120)
    return _collected(err)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _wait_for(ready: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conc", type=int, default=1)
    parser.add_argument("--n1", type=int, default=100)
    parser.add_argument("--n2", type=int, default=600)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ns = (args.n1, args.n2)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(CLIENT.format(root=ROOT))
        client = f.name
    try:
        _wait_for(lambda: _accepts(port), 30)
        url = f"http://127.0.0.1:{port}/"
        per: dict[str, float] = {}

        def report(label: str, a: int, b: int) -> None:
            per[label] = (b - a) / (args.n2 - args.n1)
            print(f"{label:16} {per[label]:>10,.0f} instructions/request (conc={args.conc})")

        for kind in ("aiohttp", "embedded"):
            report(kind, *(instructions(client, kind, url, n, args.conc) for n in ns))
        with tempfile.TemporaryDirectory() as tmp:
            sock = os.path.join(tmp, "b.sock")
            broker = subprocess.Popen(
                [sys.executable, "-m", "broker", "serve", "--socket", sock], cwd=ROOT, env=ENV
            )
            try:
                _wait_for(lambda: os.path.exists(sock), 30)
                report("broker: worker", *(instructions(client, sock, url, n, args.conc)
                                           for n in ns))
            finally:
                broker.send_signal(signal.SIGINT)
                broker.wait()
        report("broker: broker", *(broker_instructions(client, url, n, args.conc) for n in ns))
        base = per["aiohttp"]
        print(
            f"ratios to aiohttp: embedded {per['embedded'] / base:.2f}, "
            f"broker mode's worker {per['broker: worker'] / base:.2f}, "
            f"broker {per['broker: broker'] / base:.2f}"
        )
    finally:
        server.terminate()
        server.wait()
        os.unlink(client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
