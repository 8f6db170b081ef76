"""Instructions per request, counted by valgrind (callgrind): repeatable on a noisy VM.

Wall-clock figures on a shared 2-core machine move by tens of percent from run to run;
an instruction count does not. This runs one client process under callgrind twice, with
N1 and N2 sequential GETs against the same local aiohttp.web server (in its own process,
not counted), and reports (I(N2) - I(N1)) / (N2 - N1): the cost of one more request with
start-up taken out. It does so for:

- floor: a minimal client, plain asyncio and httptools (a BufferedProtocol reading into one
  reused buffer, keep-alive, a GET with a Host header, the whole small body read); what
  the interpreter, the event loop and the parser cost with no client library around them;
- aiohttp's ClientSession (the reference);
- ours in embedded mode;
- broker mode on each side: the worker process (the broker running normally), then the
  broker process (under callgrind itself, the client running normally).

Each figure is printed with its ratio to the floor and to aiohttp.

    apt-get install valgrind     # once
    python bench/instructions.py [--conc 1] [--n1 100] [--n2 600]

Slow by nature (valgrind runs Python about 50x slower): a few minutes in all.

The regression check (CI runs it: .ci/run):

    python bench/instructions.py --check bench/instructions_budget.json --n1 50 --n2 300

measures the same figures and exits 1, naming each figure over its budget and by how
much, when one of ours costs more than its budget. The budgets are ratios to aiohttp
measured in the same run, not absolute counts: an absolute count moves with the Python
version, the CPU's instruction set and the libraries' builds, while aiohttp (pinned to
3.14) spends its time in the same interpreter, event loop and kind of Python code as ours
and so moves with them. The floor is not the reference because most of its cost is C
(httptools, the loop's C parts): an interpreter change would move it unlike ours.
The broker process runs on uvloop when it is installed and on asyncio's loop otherwise;
the budgets were set on asyncio's loop (the slower), so they hold on either.

With the hash seed fixed (ENV below), two runs of one tree here agreed within 0.3%; the
budgets allow 15% above the figures they were set from, so only a real change of cost
trips the check. Costs per second of wall time (the timer per second, the broker's
polling of worker pids under valgrind) show as cost per request, so a loaded machine
counts a little more, never less. To set the budgets again (after a change that makes a
figure cheaper, or one whose cost is meant), run on a machine as CI's:

    python bench/instructions.py --write-budget bench/instructions_budget.json [--margin 0.15]

and commit the file with the figures it printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

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


def floor_session():
    import httptools
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    request = f"GET {{parts.path or '/'}} HTTP/1.1\\r\\nHost: {{parts.netloc}}\\r\\n\\r\\n".encode()

    class Connection(asyncio.BufferedProtocol):
        def __init__(self):
            self.buffer = memoryview(bytearray(65536))
            self.parser = httptools.HttpResponseParser(self)
            self.body = []
            self.done = None

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            return self.buffer

        def buffer_updated(self, nbytes):
            self.parser.feed_data(self.buffer[:nbytes])

        def on_body(self, data):
            self.body.append(data)

        def on_message_complete(self):
            if not self.parser.should_keep_alive():
                raise RuntimeError("the server did not keep the connection alive")
            self.done.set_result(b"".join(self.body))

        def connection_lost(self, exc):
            if self.done is not None and not self.done.done():
                self.done.set_exception(exc or ConnectionError("closed"))

        def get(self):
            self.body = []
            self.done = asyncio.get_running_loop().create_future()
            self.transport.write(request)
            return self.done

    async def one(k):
        loop = asyncio.get_running_loop()
        transport, conn = await loop.create_connection(Connection, parts.hostname, parts.port)
        try:
            for _ in range(k):
                body = await conn.get()
                if conn.parser.get_status_code() != 200 or body != b"ok":
                    raise RuntimeError(f"unexpected reply: {{body!r}}")
        finally:
            transport.close()

    return one


async def main():
    if kind == "floor":
        one = floor_session()
        await asyncio.gather(*(one(n // conc) for _ in range(conc)))
        return
    if kind == "aiohttp":
        import aiohttp
        session = aiohttp.ClientSession()
    else:
        import worker_client
        session = worker_client.ClientSession(broker=None if kind == "embedded" else kind)
    async with session:
        async def one(k):
            for _ in range(k):
                async with session.get(url) as resp:
                    await resp.read()
        await asyncio.gather(*(one(n // conc) for _ in range(conc)))

asyncio.run(main())
"""

# The figures, in the order measured and printed: (key, label).
FIGURES = (
    ("floor", "floor (httptools)"),
    ("aiohttp", "aiohttp"),
    ("embedded", "embedded"),
    ("broker_worker", "broker: worker"),
    ("broker_process", "broker: broker"),
)
REFERENCE = "aiohttp"
LABELS = dict(FIGURES)
BUDGET_COMMENT = (
    "Budgets for bench/instructions.py --check: instructions per request of each figure as a"
    " ratio to aiohttp's in the same run (see the script's docstring for why ratios). Set by"
    " `python bench/instructions.py --write-budget bench/instructions_budget.json` (the"
    " figures measured times 1 + margin); run it again when a figure moves for good, and"
    " commit the file."
)

# A fixed hash seed: string hashes decide dicts' and sets' layouts, so the instructions
# of start-up (the same in both runs of a figure, which the difference takes out) would
# otherwise move by millions from one process to the next.
ENV = {k: v for k, v in os.environ.items() if k != "HTTP_BROKER"} | {"PYTHONHASHSEED": "0"}


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
            capture_output=True, text=True, env=ENV,
        )
    if out.returncode:
        raise RuntimeError(f"the {kind} client failed:\n{out.stderr[-3000:]}")
    return _collected(out.stderr)


def broker_instructions(client: str, url: str, n: int, conc: int) -> int:
    """Instructions of a broker process serving n requests of a client."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "b.sock")
        broker = subprocess.Popen(
            [*_callgrind(tmp), sys.executable, "-m", "broker", "serve", "--socket", sock],
            cwd=ROOT, stderr=subprocess.PIPE, text=True, env=ENV,
        )
        try:
            # valgrind runs Python ~50x slower: on a loaded machine start-up takes minutes
            _wait_for(lambda: os.path.exists(sock) or broker.poll() is not None, 300)
            if broker.poll() is not None:
                err = broker.stderr.read() if broker.stderr is not None else ""
                raise RuntimeError(f"the broker under callgrind exited:\n{err[-2000:]}")
            subprocess.run(
                [sys.executable, client, sock, url, str(n), str(conc)], check=True, env=ENV
            )
        finally:
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


def measure(n1: int, n2: int, conc: int, jobs: int) -> dict[str, float]:
    """Every figure's instructions per request, by key; `jobs` callgrind runs at a time."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp()
    client, sock = os.path.join(tmp, "client.py"), os.path.join(tmp, "b.sock")
    with open(client, "w") as f:
        f.write(CLIENT.format(root=ROOT))
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    broker = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", "--socket", sock], cwd=ROOT, env=ENV
    )
    url = f"http://127.0.0.1:{port}/"
    runs: dict[str, Callable[[int], int]] = {
        "floor": lambda n: instructions(client, "floor", url, n, conc),
        "aiohttp": lambda n: instructions(client, "aiohttp", url, n, conc),
        "embedded": lambda n: instructions(client, "embedded", url, n, conc),
        "broker_worker": lambda n: instructions(client, sock, url, n, conc),
        "broker_process": lambda n: broker_instructions(client, url, n, conc),
    }
    try:
        _wait_for(lambda: _accepts(port) and os.path.exists(sock), 120)
        with ThreadPoolExecutor(jobs) as pool:
            counts = {key: [pool.submit(run, n) for n in (n1, n2)] for key, run in runs.items()}
            return {key: (b.result() - a.result()) / (n2 - n1) for key, (a, b) in counts.items()}
    finally:
        broker.send_signal(signal.SIGINT)
        server.terminate()
        broker.wait()
        server.wait()
        shutil.rmtree(tmp)


def ratios(per: Mapping[str, float], to: str) -> dict[str, float]:
    return {key: value / per[to] for key, value in per.items()}


def table(per: Mapping[str, float], conc: int) -> str:
    lines = [f"conc={conc:<13} {'instr/request':>13} {'x floor':>8} {'x aiohttp':>10}"]
    to_floor, to_ref = ratios(per, "floor"), ratios(per, REFERENCE)
    for key, label in FIGURES:
        lines.append(f"{label:18} {per[key]:>13,.0f} {to_floor[key]:>8.2f} {to_ref[key]:>10.2f}")
    return "\n".join(lines)


def over_budget(per: Mapping[str, float], budget: Mapping[str, object]) -> list[str]:
    """One line for each figure over its budget (ratios to the budget's reference)."""
    reference = str(budget["reference"])
    limits = budget["budgets"]
    if not isinstance(limits, dict) or not limits:
        raise ValueError("the budget file has no budgets")
    unknown = sorted(set(limits) - set(per))
    if unknown:
        raise ValueError(f"the budget file names figures this script does not measure: {unknown}")
    found = []
    for key, limit in limits.items():
        ratio = per[key] / per[reference]
        if ratio > float(limit):
            found.append(
                f"{LABELS[key]}: {ratio:.3f}x {reference} ({per[key]:,.0f} instructions/request"
                f" against {per[reference]:,.0f}) is over its budget of {float(limit):.3f}x"
                f" by {ratio / float(limit) - 1:.1%}"
            )
    return found


def new_budget(per: Mapping[str, float], margin: float) -> dict[str, object]:
    measured = ratios(per, REFERENCE)
    ours = [key for key, _ in FIGURES if key not in ("floor", REFERENCE)]
    return {
        "comment": BUDGET_COMMENT,
        "reference": REFERENCE,
        "margin": margin,
        "python": platform.python_version(),
        "measured": {key: round(per[key]) for key, _ in FIGURES},
        "budgets": {key: round(measured[key] * (1 + margin), 3) for key in ours},
    }


def load_budget(path: str) -> dict[str, object]:
    with open(path) as f:
        budget = json.load(f)
    if not isinstance(budget, dict) or budget.get("reference") not in LABELS:
        raise ValueError(f"{path}: not a budget file (no known 'reference')")
    return budget


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conc", type=int, default=1)
    parser.add_argument("--n1", type=int, default=100)
    parser.add_argument("--n2", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="callgrind runs at a time (default: one per CPU)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", metavar="BUDGET.json",
                        help="exit 1 when a figure is over its budget in this file")
    action.add_argument("--write-budget", metavar="BUDGET.json",
                        help="write budgets from this run's figures to this file")
    parser.add_argument("--margin", type=float, default=0.15,
                        help="with --write-budget: how far above this run a budget lies")
    args = parser.parse_args()
    if args.n2 <= args.n1:
        parser.error("--n2 must be above --n1")
    budget = load_budget(args.check) if args.check else None
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind): nothing measured",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    per = measure(args.n1, args.n2, args.conc, args.jobs)
    print(table(per, args.conc))
    print(f"({time.monotonic() - started:.0f} s)")
    if args.write_budget:
        with open(args.write_budget, "w") as f:
            json.dump(new_budget(per, args.margin), f, indent=2)
            f.write("\n")
        print(f"budgets written to {args.write_budget}")
    if budget is not None:
        found = over_budget(per, budget)
        for line in found:
            print(f"OVER BUDGET: {line}", file=sys.stderr)
        if found:
            print(f"{len(found)} figure(s) over the budgets in {args.check}; if the cost is"
                  " meant, set them again (see bench/instructions.py's docstring)",
                  file=sys.stderr)
            return 1
        print(f"every figure within the budgets in {args.check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
