"""Instructions per request, counted by valgrind (callgrind): repeatable on a noisy VM.

Wall-clock figures on a shared 2-core machine move by tens of percent from run to run;
an instruction count does not. This runs one client process under callgrind twice, with
N1 and N2 sequential GETs against the same local aiohttp.web server (in its own process,
not counted), and reports (I(N2) - I(N1)) / (N2 - N1): the cost of one more request with
start-up taken out. It does so for aiohttp's ClientSession and for ours in embedded mode
(the worker's side of broker mode is a different cost split and is not counted here).

    apt-get install valgrind     # once
    python bench/instructions.py [--conc 1] [--n1 100] [--n2 600]

Slow by nature (valgrind runs Python about 50x slower): about a minute per client.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

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
        session = worker_client.ClientSession(broker=None)
    async with session:
        async def one(k):
            for _ in range(k):
                async with session.get(url) as resp:
                    await resp.read()
        await asyncio.gather(*(one(n // conc) for _ in range(conc)))

asyncio.run(main())
"""


def instructions(client: str, kind: str, url: str, n: int, conc: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
                sys.executable, client, kind, url, str(n), str(conc),
            ],
            capture_output=True, text=True, check=True,
            env={k: v for k, v in os.environ.items() if k != "HTTP_BROKER"},
        )
    match = re.search(r"Collected : (\d+)", out.stderr)
    if not match:
        raise RuntimeError(f"no count from callgrind:\n{out.stderr[-2000:]}")
    return int(match.group(1))


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
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(CLIENT.format(root=ROOT))
        client = f.name
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/"
        per = {}
        for kind in ("aiohttp", "embedded"):
            a = instructions(client, kind, url, args.n1, args.conc)
            b = instructions(client, kind, url, args.n2, args.conc)
            per[kind] = (b - a) / (args.n2 - args.n1)
            print(f"{kind:9} {per[kind]:>10,.0f} instructions/request (conc={args.conc})")
        print(f"ratio embedded/aiohttp: {per['embedded'] / per['aiohttp']:.2f}")
    finally:
        server.terminate()
        server.wait()
        os.unlink(client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
