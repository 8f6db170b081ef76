"""What tracing costs an untraced request: instructions per request (callgrind, as
``bench/instructions.py``) of a plain session in embedded mode, alone and beside another
session of the same process that has a ``TraceConfig`` (and made a traced request), and,
for scale, of the traced session's own requests.

    python bench/tracing_overhead.py [--n1 100] [--n2 600] [--kinds alone,beside,traced]
    python bench/tracing_overhead.py --rate [--rounds 7] [--n 3000]

``--rate`` measures requests per second instead (wall clock, sequential GETs after a
warm-up, the kinds alternating within each round) and prints the medians and their
ratio to "alone": noisier than instructions, but what a user sees.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from instructions import ROOT, SERVER, _accepts, _wait_for, instructions  # noqa: E402

CLIENT = """
import asyncio, sys, time
sys.path.insert(0, {root!r})
kind, url, n, conc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import worker_client

async def on_signal(session, ctx, params):
    pass

def traced():
    config = worker_client.TraceConfig()
    for name in ("on_request_start", "on_request_end", "on_response_chunk_received"):
        getattr(config, name).append(on_signal)
    return worker_client.ClientSession(broker=None, trace_configs=[config])

async def main():
    plain = worker_client.ClientSession(broker=None)
    other = traced() if kind != "alone" else worker_client.ClientSession(broker=None)
    async with plain, other:
        async with other.get(url) as resp:
            await resp.read()
        session = other if kind == "traced" else plain
        for _ in range(min(n, 200)):  # warm-up, outside the timing
            async with session.get(url) as resp:
                await resp.read()
        start = time.perf_counter()
        for _ in range(n):
            async with session.get(url) as resp:
                await resp.read()
        print(n / (time.perf_counter() - start))

asyncio.run(main())
"""


KINDS = (
    ("alone", "untraced, alone"),
    ("beside", "untraced, beside a traced session"),
    ("traced", "traced (3 no-op handlers)"),
)


def _rates(client: str, url: str, kinds: list[tuple[str, str]], rounds: int, n: int) -> None:
    samples: dict[str, list[float]] = {kind: [] for kind, _ in kinds}
    for _ in range(rounds):
        for kind, _ in kinds:
            out = subprocess.run(
                [sys.executable, client, kind, url, str(n), "1"],
                check=True, capture_output=True, text=True,
            ).stdout
            samples[kind].append(float(out.split()[-1]))
    base = statistics.median(samples[kinds[0][0]])
    for kind, label in kinds:
        med = statistics.median(samples[kind])
        print(f"{label:36} {med:>10,.0f} req/s (median of {rounds}) {med / base:.3f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n1", type=int, default=100)
    parser.add_argument("--n2", type=int, default=600)
    parser.add_argument("--kinds", default="alone,beside,traced")
    parser.add_argument("--rate", action="store_true", help="req/s instead of instructions")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(CLIENT.format(root=ROOT))
        client = f.name
    try:
        _wait_for(lambda: _accepts(port), 30)
        url = f"http://127.0.0.1:{port}/"
        kinds = [(kind, label) for kind, label in KINDS if kind in args.kinds.split(",")]
        if args.rate:
            _rates(client, url, kinds, args.rounds, args.n)
            return 0
        for kind, label in kinds:
            a, b = (instructions(client, kind, url, n, 1) for n in (args.n1, args.n2))
            print(f"{label:36} {(b - a) / (args.n2 - args.n1):>10,.0f} instructions/request")
    finally:
        server.terminate()
        server.wait()
        os.unlink(client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
