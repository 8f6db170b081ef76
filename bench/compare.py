"""http-broker beside aiohttp and httpx: one command, one process tree, a table and a chart.

    apt-get install -y nginx-light         # optional: the fast server (else aiohttp.web)
    pip install -e '.[bench]'              # httpx, matplotlib (uvloop: a dependency)
    python bench/compare.py                # 5 rounds, about 10 minutes; rewrites docs/
    python bench/compare.py --loop uvloop  # the same with uvloop in the client processes
    python bench/compare.py --quick --out /tmp/x   # smoke run: 1 round, small sizes
    python bench/compare.py --pin 0 --workloads get_seq,get_64   # every process on CPU 0

The server: nginx when the ``nginx`` binary is found (a private config in a temporary
directory, loopback ports, one worker process, ``daemon off``; no root needed), else an
aiohttp.web server in its own process (``--server`` chooses); the report says which. It
serves ``/small`` (2 bytes), ``/1m`` and ``/100m`` (1 MiB and 100 MiB files), takes a
POST on ``/upload`` and answers with the number of body bytes it read (nginx buffers the
whole body before it answers: a ``proxy_pass`` to itself without the body; aiohttp.web
reads and discards), and serves ``/small`` over TLS on a second port with a certificate
of a test CA made with the ``openssl`` command line (``tests/tls_certs.py``). A small
aiohttp.web server in its own process also answers ``/hold``: it holds every request of a
group until the whole group has arrived (for the idle-connection figure).

The clients: aiohttp's ``ClientSession``, httpx's ``AsyncClient``, http-broker embedded
(``worker_client.ClientSession(broker=None)``), and http-broker through a broker
(``broker.start()``) with 1 and with 4 worker processes that split the same total work.
Every client runs in worker processes of its own (a team of 4 per client and round, each
cell in a new session, commanded over pipes; a worker that fails or hangs costs one
failed cell and a new team). Each round runs every workload for every client, the
clients in a rotating order; each workload has a short untimed warm-up (the pool's
connections) except the TLS, idle and start-up ones. The workloads:

- ``get_64``: small GETs, 64 in flight (4 processes: 16 each) for 3 s: req/s;
- ``get_seq``: sequential small GETs (4 processes: each sequential) for 2 s: p50 and p99
  latency;
- ``dl_1m``, ``dl_100m``: downloads with ``read()`` (httpx: ``.content``), one after the
  other (4 processes: the count split): GB/s (10^9 bytes) of all bodies over wall time;
- ``up_100m``: POSTs of a 100 MiB ``bytes`` body: GB/s;
- ``tls``: 4 processes x 25 sequential https GETs (broker x1: 1 process x 100), verified
  against the test CA; total time from the first start to the last end, and the TLS
  connections the server accepted (nginx: its access log; aiohttp.web: ``sni_callback``);
- ``idle``: 1,000 requests held open together, then RSS of the process that holds the
  1,000 idle keep-alive connections: the client process (the first cell of its round, so
  a fresh one), or the broker (a fresh one), and its growth over the cell;
- ``startup``: a fresh process imports the client and makes a session and one small GET:
  import time and RSS (broker x4: the same as x1, not run). Every client is imported
  from bytecode, compiled by an untimed import first into a cache of the run's.

Output: a table of medians with each one's ratio to aiohttp's (value / aiohttp's; the
table says per row whether higher or lower is better), a JSON file with every sample, and
a PNG chart; a full run writes them under ``docs/`` and rewrites the section of
``docs/benchmarks.md`` between its markers (one section per event loop). ``--out DIR``
writes the JSON and PNG there and leaves ``docs/`` alone (``--quick`` defaults to a new
temporary directory). The client processes run on asyncio, or uvloop with ``--loop
uvloop``; the broker process runs on uvloop whenever it is installed (``broker.cli``).
Every child process is in a process group of its own and is ended when the run ends,
also on Ctrl-C or SIGTERM. Loopback only.

``--pin CPU`` runs the whole process tree (server, broker, client processes) on that one
CPU (``os.sched_setaffinity`` of this process, inherited by every child). Unpinned on a
shared VM a wake-up across cores costs a scheduler's whim (about 0.4 ms here), and a
chain of three processes (worker, broker, server) pays it twice per request; pinned, the
figures measure the code rather than the scheduler (issue 12). A pinned full run writes
its own section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)

CLIENTS = {
    "aiohttp": "aiohttp",
    "httpx": "httpx",
    "embedded": "http-broker embedded",
    "broker1": "http-broker, broker x1",
    "broker4": "http-broker, broker x4",
}
BROKER_CLIENTS = {"broker1": 1, "broker4": 4}  # worker processes per cell
TEAM = 4  # worker processes per client and round
# idle first: its RSS is the one of fresh worker processes (a team lives for a round)
WORKLOADS = ["idle", "get_64", "get_seq", "dl_1m", "dl_100m", "up_100m", "tls", "startup"]
NOT_RUN = {("broker4", "startup")}  # a fresh process's figures: the same as broker1's


@dataclass(frozen=True)
class Sizes:
    get_64: float = 3.0  # seconds (every process of a cell stops at the same time)
    get_seq: float = 2.0
    dl_1m: int = 100  # downloads in all
    dl_100m: int = 4
    big: int = 100 * 2**20  # the "100 MiB" body, both directions
    up_100m: int = 4
    tls_per_process: int = 25
    idle: int = 1_000
    cell_timeout: float = 180.0


QUICK = Sizes(
    get_64=0.5, get_seq=0.3, dl_1m=5, dl_100m=2, big=4 * 2**20, up_100m=2,
    tls_per_process=5, idle=40, cell_timeout=60.0,
)

# (metric, workload, sample field, label, unit, higher is better, format)
METRICS = [
    ("get_64", "get_64", "req_s", "small GET, 64 in flight", "req/s", True, "{:,.0f}"),
    ("seq_p50", "get_seq", "p50_ms", "sequential GET, p50", "ms", False, "{:.3f}"),
    ("seq_p99", "get_seq", "p99_ms", "sequential GET, p99", "ms", False, "{:.3f}"),
    ("dl_1m", "dl_1m", "gb_s", "1 MiB download", "GB/s", True, "{:.2f}"),
    ("dl_100m", "dl_100m", "gb_s", "100 MiB download", "GB/s", True, "{:.2f}"),
    ("up_100m", "up_100m", "gb_s", "100 MiB upload", "GB/s", True, "{:.2f}"),
    ("tls_ms", "tls", "ms", "https GETs (4 proc x 25), total", "ms", False, "{:,.0f}"),
    ("tls_hs", "tls", "handshakes", "https: TLS connections accepted", "", False, "{:.0f}"),
    ("idle_rss", "idle", "rss_mib", "RSS holding 1,000 idle conns", "MiB", False, "{:.1f}"),
    ("idle_growth", "idle", "growth_mib", "  of which the 1,000 conns", "MiB", False, "{:.1f}"),
    ("import_ms", "startup", "import_ms", "import time", "ms", False, "{:.0f}"),
    ("start_rss", "startup", "rss_mib", "RSS of a fresh session", "MiB", False, "{:.1f}"),
]

_children: list[subprocess.Popen[Any]] = []  # every process this run started
_stop = {"asked": False, "deferred": 0}


def _on_signal(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM: KeyboardInterrupt, once no child is being started (a child whose
    Popen was interrupted would be known to nobody, and outlive the run)."""
    _stop["asked"] = True
    if not _stop["deferred"]:
        raise KeyboardInterrupt


@contextlib.contextmanager
def starting_children() -> Iterator[None]:
    _stop["deferred"] += 1
    try:
        yield
    finally:
        _stop["deferred"] -= 1
    if _stop["asked"] and not _stop["deferred"]:
        raise KeyboardInterrupt


def spawn(
    cmd: list[str], env_changes: dict[str, str | None] | None = None, **kw: Any
) -> subprocess.Popen[Any]:
    """``env_changes``: variables to set in the child's environment (None: to unset)."""
    env = {k: v for k, v in os.environ.items() if k != "HTTP_BROKER"}  # embedded = embedded
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    for name, value in (env_changes or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    with starting_children():
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, **kw)
        _children.append(proc)
    return proc


def end(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM, SIGKILL after ``grace`` seconds: to the child's process group when it
    leads one (what this module spawns), else to the child alone (a broker)."""
    try:
        group = os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        group = False

    def signal_it(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        signal_it(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    if group:  # what the child may have left in its group (nginx's worker)
        signal_it(signal.SIGKILL)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def end_all() -> None:
    while _children:
        end(_children.pop(), grace=2.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def run_loop(main: Any, loop: str) -> Any:
    import asyncio

    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


# -- the aiohttp.web server (the fallback, and /hold) -----------------------------------


def serve(spec: dict[str, Any]) -> None:
    """``--serve JSON``: print {"http": port, "https": port}; serve until stdin closes."""
    import asyncio
    import ssl

    from aiohttp import web

    counts = {"handshakes": 0}
    bodies = {"/small": b"ok", "/1m": b"\x01" * 2**20, "/100m": b"\x02" * spec["big"]}
    groups: dict[str, list[Any]] = {}

    async def body(request: web.Request) -> web.Response:
        return web.Response(body=bodies[request.path])

    async def upload(request: web.Request) -> web.Response:
        n = 0
        while chunk := await request.content.readany():
            n += len(chunk)
        return web.Response(text=str(n))

    async def hold(request: web.Request) -> web.Response:
        """Answer when ``n`` requests of group ``g`` have arrived (at most 60 s)."""
        group = groups.setdefault(request.query["g"], [0, asyncio.Event()])
        group[0] += 1
        if group[0] >= int(request.query["n"]):
            group[1].set()
        try:
            await asyncio.wait_for(group[1].wait(), 60)
        except asyncio.TimeoutError:
            return web.Response(status=503, text=f"only {group[0]} arrived")
        return web.Response(body=b"ok")

    async def counted(request: web.Request) -> web.Response:
        return web.json_response(counts)

    def hello(ssl_object: Any, name: str | None, ctx: Any) -> None:
        counts["handshakes"] += 1

    async def main() -> None:
        app = web.Application(client_max_size=2 * spec["big"])
        if spec["full"]:
            for path in bodies:
                app.router.add_get(path, body)
            app.router.add_post("/upload", upload)
            app.router.add_get("/_counts", counted)
        app.router.add_get("/hold", hold)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
        ports = {"http": runner.addresses[0][1]}
        if spec["full"]:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(spec["cert"], spec["key"])
            ctx.sni_callback = hello
            await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096, ssl_context=ctx).start()
            ports["https"] = runner.addresses[1][1]
        print(json.dumps(ports), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    try:
        import uvloop  # the server should not be the bottleneck

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def start_python_server(spec: dict[str, Any]) -> tuple[subprocess.Popen[str], dict[str, int]]:
    proc = spawn(
        [sys.executable, os.path.abspath(__file__), "--serve", json.dumps(spec)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = _readline(proc, 30.0)
    if not line:
        raise RuntimeError("the aiohttp.web server did not start")
    return proc, json.loads(line)


# -- nginx --------------------------------------------------------------------------

NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    log_format tls '$connection $connection_requests';
    server {{
        listen 127.0.0.1:{http} backlog=4096;
        root {d}/www;
        location = /small {{ return 200 "ok"; }}
        location = /1m {{ }}
        location = /100m {{ }}
        location = /upload {{
            # the whole body is read (into memory) before the upstream is asked
            client_max_body_size 0;
            client_body_buffer_size {buffer};
            proxy_request_buffering on;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Body-Length $content_length;
            proxy_pass http://127.0.0.1:{http}/uploaded;
        }}
        location = /uploaded {{ return 200 $http_x_body_length; }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        access_log {d}/tls.log tls;
        location = /small {{ return 200 "ok"; }}
    }}
}}
"""


class Server:
    """The server under test (nginx or aiohttp.web) and the /hold helper."""

    def __init__(self, kind: str, tmp: Path, certs: Any, big: int) -> None:
        self.kind = kind
        self.tmp = tmp
        self.procs: list[subprocess.Popen[Any]] = []
        if kind == "nginx":
            self._start_nginx(certs, big)
            helper, ports = start_python_server({"full": False, "big": 0})
            self.procs.append(helper)
        else:
            proc, ports = start_python_server(
                {"full": True, "big": big, "cert": str(certs.server), "key": str(certs.server_key)}
            )
            self.procs.append(proc)
            self.http = f"http://127.0.0.1:{ports['http']}"
            self.https = f"https://127.0.0.1:{ports['https']}"
        self.hold = f"http://127.0.0.1:{ports['http']}/hold"

    def _start_nginx(self, certs: Any, big: int) -> None:
        d = self.tmp / "nginx"
        www = d / "www"
        www.mkdir(parents=True)
        (www / "1m").write_bytes(b"\x01" * 2**20)
        with open(www / "100m", "wb") as f:
            f.truncate(big)  # zeros
        for p in (self.tmp, d, www):
            p.chmod(0o755)  # nginx's worker may run as another user
        http, https = free_port(), free_port()
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = NGINX_CONF.format(
            user=user, d=d, http=http, https=https, cert=certs.server, key=certs.server_key,
            buffer=big + 2**20,
        )
        (d / "nginx.conf").write_text(conf)
        (d / "tls.log").touch()
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        proc = spawn(
            [binary, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        try:
            wait_listening(http, proc)
            wait_listening(https, proc)
        except RuntimeError as exc:
            log = (d / "error.log").read_text() if (d / "error.log").exists() else ""
            raise RuntimeError(f"nginx did not start: {exc}\n{log[-2000:]}") from None
        self.http = f"http://127.0.0.1:{http}"
        self.https = f"https://127.0.0.1:{https}"
        version = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr
        self.version = version.strip().replace("nginx version: nginx/", "nginx ")

    def tls_counts(self) -> tuple[int, int]:
        """(TLS connections accepted that carried a request, https requests) so far."""
        if self.kind == "nginx":
            lines = (self.tmp / "nginx" / "tls.log").read_text().split("\n")
            rows = [line.split() for line in lines if line]
            return sum(1 for r in rows if r[1] == "1"), len(rows)
        with urllib.request.urlopen(self.http + "/_counts", timeout=10) as r:
            return int(json.load(r)["handshakes"]), -1

    def stop(self) -> None:
        for proc in self.procs:
            end(proc)


def pick_server(choice: str) -> str:
    if choice == "auto":
        return "nginx" if shutil.which("nginx") or os.path.exists("/usr/sbin/nginx") else "aiohttp"
    return choice


# -- the worker process -------------------------------------------------------------


class Client:
    """aiohttp's API (aiohttp, ours) and httpx's behind three methods."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import ssl

        name, self.name = spec["client"], spec["client"]
        limit = spec.get("limit", 100)
        cafile = spec.get("cafile")
        self.ssl: Any = None
        if name == "httpx":
            import httpx

            verify: Any = ssl.create_default_context(cafile=cafile) if cafile else True
            self.session: Any = httpx.AsyncClient(
                timeout=httpx.Timeout(120.0),
                limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
                verify=verify,
            )
        elif name == "aiohttp":
            import aiohttp

            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))
            self.ssl = ssl.create_default_context(cafile=cafile) if cafile else None
        else:
            import worker_client

            self.session = worker_client.ClientSession(
                broker=spec.get("broker"), connector=worker_client.TCPConnector(limit=limit)
            )
            if cafile:
                self.ssl = worker_client.create_default_context(cafile=cafile)

    async def get(self, url: str) -> bytes:
        if self.name == "httpx":
            r = await self.session.get(url)
            status, body = r.status_code, r.content
        else:
            kw = {"ssl": self.ssl} if self.ssl is not None else {}
            async with self.session.get(url, **kw) as resp:
                status, body = resp.status, await resp.read()
        if status != 200:
            raise RuntimeError(f"GET {url}: {status} {body[:100]!r}")
        return cast(bytes, body)  # no copy: read() may hand out what it likes

    async def post(self, url: str, data: bytes) -> bytes:
        if self.name == "httpx":
            r = await self.session.post(url, content=data)
            status, body = r.status_code, r.content
        else:
            async with self.session.post(url, data=data) as resp:
                status, body = resp.status, await resp.read()
        if status != 200:
            raise RuntimeError(f"POST {url}: {status} {body[:100]!r}")
        return cast(bytes, body)  # no copy: read() may hand out what it likes

    async def close(self) -> None:
        if self.name == "httpx":
            await self.session.aclose()
        else:
            await self.session.close()


def _rss_mib(pid: int | None = None) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / 2**20


async def _downloads(c: Client, url: str, n: int, size: int) -> dict[str, Any]:
    for _ in range(n):
        if len(await c.get(url)) != size:
            raise RuntimeError(f"GET {url}: a short body")
    return {"bytes": n * size}


async def _uploads(c: Client, url: str, n: int, payload: bytes) -> dict[str, Any]:
    for _ in range(n):
        answer = await c.post(url, payload)
        if answer != str(len(payload)).encode():
            raise RuntimeError(f"the server read {answer[:40]!r} bytes of {len(payload)}")
    return {"bytes": n * len(payload)}


async def _concurrent(c: Client, url: str, seconds: float, conc: int) -> dict[str, Any]:
    import asyncio

    done = [0]
    clock = time.perf_counter
    end = clock() + seconds

    async def loop() -> None:
        while clock() < end:
            await c.get(url)
            done[0] += 1

    await asyncio.gather(*(loop() for _ in range(conc)))
    return {"requests": done[0]}


async def _sequential(c: Client, url: str, n: int, seconds: float) -> dict[str, Any]:
    """``n`` GETs one after the other, or as many as fit in ``seconds`` when n is 0."""
    latencies: list[float] = []
    clock = time.perf_counter
    end = clock() + seconds
    while (len(latencies) < n) if n else (clock() < end):
        t = clock()
        await c.get(url)
        latencies.append(clock() - t)
    return {"latencies": latencies}


async def _idle(c: Client, url: str, n: int) -> dict[str, Any]:
    import asyncio

    await asyncio.gather(*(c.get(url) for _ in range(n)))
    return {"rss_mib": _rss_mib()}


async def _warm_up(c: Client, spec: dict[str, Any]) -> None:
    import asyncio

    kind, url = spec["workload"], spec["url"]
    if kind == "get_64":
        await asyncio.gather(*(c.get(url) for _ in range(spec["conc"])))
    elif kind == "get_seq":
        for _ in range(20):
            await c.get(url)
    elif kind in ("dl_1m", "dl_100m", "up_100m"):
        await c.get(spec["small"])


def _run(c: Client, spec: dict[str, Any], payload: bytes | None) -> Any:
    kind, url, n = spec["workload"], spec["url"], spec["n"]
    if kind == "get_64":
        return _concurrent(c, url, spec["seconds"], spec["conc"])
    if kind in ("get_seq", "tls"):
        return _sequential(c, url, n, spec.get("seconds", 0.0))
    if kind in ("dl_1m", "dl_100m"):
        return _downloads(c, url, n, spec["size"])
    if kind == "up_100m":
        assert payload is not None
        return _uploads(c, url, n, payload)
    if kind == "idle":
        return _idle(c, url, n)
    raise ValueError(kind)


async def _cell(spec: dict[str, Any], say: Callable[[dict[str, Any]], None]) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    payload = b"\x03" * spec["size"] if spec["workload"] == "up_100m" else None
    c = Client(spec)
    try:
        await _warm_up(c, spec)
        before = _rss_mib()
        say({"ready": True})
        if (await loop.run_in_executor(None, sys.stdin.readline)).strip() != "go":
            return
        start = time.perf_counter()  # CLOCK_MONOTONIC: one clock for every process
        result = await _run(c, spec, payload)
        result.update(start=start, end=time.perf_counter(), rss_before=before)
        say(result)
        await loop.run_in_executor(None, sys.stdin.readline)  # "close": the RSS is taken
    finally:
        await c.close()


def worker(loop: str) -> None:
    """``--worker LOOP``: run each cell read from stdin (one JSON line), answer on stdout."""
    import traceback

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    say({"up": True})
    while line := sys.stdin.readline():
        try:
            run_loop(_cell(json.loads(line), say), loop)
            say({"done": True})
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            say({"error": f"{type(exc).__name__}: {exc}"})


STARTUP = """
import time
t = time.perf_counter()
import {module}
import_ms = (time.perf_counter() - t) * 1000
import json, sys
sys.path.insert(0, {root!r})
from bench.compare import Client, run_loop

spec = json.loads(sys.argv[1])

async def main():
    c = Client(spec)
    try:
        await c.get(spec["url"])
        with open("/proc/self/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return rss / 1024
    finally:
        await c.close()

print(json.dumps({{"import_ms": import_ms, "rss_mib": run_loop(main(), spec["loop"])}}))
"""


def startup_module(client: str) -> str:
    return {"httpx": "httpx", "aiohttp": "aiohttp"}.get(client, "worker_client")


def startup_code(client: str) -> str:
    """A fresh process: the client's import timed first, then a session and one GET
    (this module is imported only after the timed import)."""
    return STARTUP.format(module=startup_module(client), root=ROOT)


# -- the orchestrator ---------------------------------------------------------------


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of the child's stdout, or "" at its end or after ``timeout`` seconds."""
    stdout = proc.stdout
    assert stdout is not None
    box: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: box.put(stdout.readline()), daemon=True).start()
    try:
        return box.get(timeout=timeout)
    except queue.Empty:
        return ""


class Failed(Exception):
    pass


class Worker:
    def __init__(self, loop: str, log: Path) -> None:
        self.stderr = open(log, "ab")  # noqa: SIM115
        self.proc = spawn(
            [sys.executable, os.path.abspath(__file__), "--worker", loop],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise Failed(f"worker {self.proc.pid} is gone ({exc})") from None

    def receive(self, deadline: float) -> dict[str, Any]:
        line = _readline(self.proc, max(0.1, deadline - time.monotonic()))
        if not line:
            code = self.proc.poll()
            why = f"exited with {code}" if code is not None else "timed out"
            raise Failed(f"worker {self.proc.pid} {why}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise Failed(answer["error"])
        return answer

    def stop(self) -> None:
        end(self.proc, grace=1.0)
        self.stderr.close()


@dataclass
class Team:
    """A client's worker processes (and broker) for a round; rebuilt after a failure."""

    client: str
    loop: str
    log: Path
    workers: list[Worker] = field(default_factory=list)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    broker: Any = None

    def start(self) -> None:
        if self.client in BROKER_CLIENTS:
            self.broker = self.stack.enter_context(new_broker())
        self.workers = [Worker(self.loop, self.log) for _ in range(TEAM)]
        deadline = time.monotonic() + 60
        for w in self.workers:
            w.receive(deadline)  # {"up": true}

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers = []
        self.stack.close()
        self.broker = None


@contextlib.contextmanager
def new_broker() -> Iterator[Any]:
    import broker

    with contextlib.ExitStack() as stack:
        with starting_children():
            proc = stack.enter_context(broker.start(export=False, drain_timeout=2.0))
            _children.append(proc.process)
        yield proc


def run_cell(
    team: Team, specs: list[dict[str, Any]], timeout: float, measure: Callable[[], Any] | None
) -> tuple[list[dict[str, Any]], Any]:
    """Send each spec to a worker, start them together, collect their results."""
    workers = team.workers[: len(specs)]
    deadline = time.monotonic() + timeout
    for w, spec in zip(workers, specs, strict=True):
        w.send(json.dumps(spec))
    for w in workers:
        w.receive(deadline)  # ready
    for w in workers:
        w.send("go")
    results = [w.receive(deadline) for w in workers]
    extra = measure() if measure else None
    for w in workers:
        w.send("close")
    for w in workers:
        w.receive(deadline)  # done
    return results, extra


def share(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class Bench:
    def __init__(self, args: argparse.Namespace, server: Server, tmp: Path, cafile: str) -> None:
        self.args, self.server, self.tmp, self.cafile = args, server, tmp, cafile
        self.sizes: Sizes = args.sizes
        self.teams: dict[str, Team] = {}
        self.cells: list[dict[str, Any]] = []
        self.log = tmp / "workers.log"
        # The start-up processes import every client from bytecode, as an installed
        # package does: compiled once (untimed) into a cache of this run's, whatever
        # PYTHONDONTWRITEBYTECODE says (else a checkout's modules would be compiled in
        # every timed import while the site-packages' come compiled).
        self.bytecode: dict[str, str | None] = {
            "PYTHONDONTWRITEBYTECODE": None, "PYTHONPYCACHEPREFIX": str(tmp / "pycache"),
        }
        self.compiled: set[str] = set()

    def team(self, client: str) -> Team:
        team = self.teams.get(client)
        if team is None or not team.workers:
            team = Team(client, self.args.loop, self.log)
            self.teams[client] = team
            team.start()
        return team

    def end_round(self) -> None:
        for team in self.teams.values():
            team.stop()
        self.teams.clear()

    def processes(self, client: str, workload: str) -> int:
        if workload == "tls":
            return 1 if client == "broker1" else 4
        return BROKER_CLIENTS.get(client, 1)

    def specs(
        self, client: str, workload: str, broker: str | None, group: str
    ) -> list[dict[str, Any]]:
        s, http = self.sizes, self.server.http
        p = self.processes(client, workload)
        base: dict[str, Any] = {
            "client": client, "workload": workload, "broker": broker,
            "small": f"{http}/small", "url": f"{http}/small",
        }
        if workload == "get_64":
            return [{**base, "n": 0, "seconds": s.get_64, "conc": 64 // p}] * p
        if workload == "get_seq":
            return [{**base, "n": 0, "seconds": s.get_seq}] * p
        if workload in ("dl_1m", "dl_100m"):
            size = 2**20 if workload == "dl_1m" else s.big
            url = f"{http}/1m" if workload == "dl_1m" else f"{http}/100m"
            total = s.dl_1m if workload == "dl_1m" else s.dl_100m
            return [{**base, "url": url, "n": n, "size": size} for n in share(total, p)]
        if workload == "up_100m":
            url = f"{http}/upload"
            return [{**base, "url": url, "n": n, "size": s.big} for n in share(s.up_100m, p)]
        if workload == "tls":
            url = f"{self.server.https}/small"
            n = s.tls_per_process * 4 // p
            return [{**base, "url": url, "n": n, "cafile": self.cafile} for _ in range(p)]
        if workload == "idle":
            url = f"{self.server.hold}?g={group}&n={s.idle}"
            limit = s.idle + 10  # the 4 workers of a broker share its pool, and its limit
            return [{**base, "url": url, "n": n, "limit": limit} for n in share(s.idle, p)]
        raise ValueError(workload)

    def measure(self, client: str, workload: str, rnd: int) -> dict[str, Any]:
        if workload == "startup":
            return self.startup(client)
        if workload == "idle" and client in BROKER_CLIENTS:
            with new_broker() as fresh:  # its RSS without the other workloads' residue
                return self.cell(client, workload, rnd, fresh)
        team = self.team(client)
        return self.cell(client, workload, rnd, team.broker)

    def cell(self, client: str, workload: str, rnd: int, broker: Any) -> dict[str, Any]:
        team = self.team(client)
        address = broker.socket_path if broker is not None else None
        specs = self.specs(client, workload, address, f"{client}-{rnd}-{time.monotonic_ns()}")
        tls_before = self.server.tls_counts() if workload == "tls" else None
        rss_before = _rss_mib(broker.pid) if broker is not None else None
        measure = (lambda: _rss_mib(broker.pid)) if broker is not None else None
        try:
            results, broker_rss = run_cell(team, specs, self.sizes.cell_timeout, measure)
        except (Failed, OSError, ValueError) as exc:
            team.stop()  # a failed or hung worker: a new team for the next cell
            raise Failed(str(exc)) from None
        wall = max(r["end"] for r in results) - min(r["start"] for r in results)
        sample: dict[str, Any] = {"seconds": wall, "processes": len(specs)}
        if workload == "get_64":
            sample["req_s"] = sum(r["requests"] for r in results) / wall
        elif workload == "get_seq":
            lat = sorted(x for r in results for x in r["latencies"])
            sample["p50_ms"] = lat[len(lat) // 2] * 1000
            sample["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
            sample["mean_ms"] = statistics.fmean(lat) * 1000
        elif workload in ("dl_1m", "dl_100m", "up_100m"):
            sample["gb_s"] = sum(r["bytes"] for r in results) / wall / 1e9
        elif workload == "tls":
            sample["ms"] = wall * 1000
            sample.update(self.tls_delta(tls_before, sum(s["n"] for s in specs)))
        elif workload == "idle":
            if broker is not None:
                sample["rss_mib"], sample["growth_mib"] = broker_rss, broker_rss - rss_before
            else:
                sample["rss_mib"] = results[0]["rss_mib"]
                sample["growth_mib"] = results[0]["rss_mib"] - results[0]["rss_before"]
        return sample

    def tls_delta(self, before: Any, requests: int) -> dict[str, int]:
        deadline = time.monotonic() + 5  # nginx logs a request just after answering it
        while True:
            after = self.server.tls_counts()
            if after[1] < 0 or after[1] - before[1] >= requests or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if after[1] >= 0 and after[1] - before[1] != requests:
            raise Failed(f"the server logged {after[1] - before[1]} https requests of {requests}")
        return {"handshakes": after[0] - before[0]}

    def startup(self, client: str) -> dict[str, Any]:
        broker = self.team(client).broker if client in BROKER_CLIENTS else None
        spec = {
            "client": client, "loop": self.args.loop, "url": f"{self.server.http}/small",
            "broker": broker.socket_path if broker is not None else None,
        }
        module = startup_module(client)
        if module not in self.compiled:
            warm = spawn(
                [sys.executable, "-c", f"import {module}"], self.bytecode,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                warm.wait(60)
            finally:
                end(warm)
            self.compiled.add(module)
        proc = spawn(
            [sys.executable, "-c", startup_code(client), json.dumps(spec)], self.bytecode,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            raise Failed("the start-up process timed out") from None
        finally:
            end(proc)
        if proc.returncode != 0:
            raise Failed(f"the start-up process failed: {err.strip()[-500:]}")
        result: dict[str, Any] = json.loads(out)
        return result

    def run(self) -> None:
        clients = self.args.clients
        for rnd in range(self.args.rounds):
            for i, workload in enumerate(self.args.workloads):
                k = (rnd + i) % len(clients)
                for client in clients[k:] + clients[:k]:
                    if (client, workload) in NOT_RUN:
                        continue
                    cell: dict[str, Any] = {"client": client, "workload": workload, "round": rnd}
                    try:
                        cell["sample"] = self.measure(client, workload, rnd)
                    except Exception as exc:  # one failed cell, reported; the run goes on
                        if not isinstance(exc, Failed):
                            exc = Failed(f"{type(exc).__name__}: {exc}")
                            self.teams.pop(client, Team(client, "", self.log)).stop()
                        cell["error"] = str(exc)
                        print(f"  {client} {workload}: FAILED: {exc}", file=sys.stderr)
                    self.cells.append(cell)
            self.end_round()
            print(f"  round {rnd + 1}/{self.args.rounds} done", file=sys.stderr, flush=True)


# -- the report ---------------------------------------------------------------------


def medians(cells: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for metric, workload, key, *_ in METRICS:
        for client in CLIENTS:
            xs = [
                c["sample"][key] for c in cells
                if c["client"] == client and c["workload"] == workload and "sample" in c
            ]
            if xs:
                out.setdefault(client, {})[metric] = statistics.median(xs)
    return out


def table(
    meds: dict[str, dict[str, float]],
    clients: list[str],
    cells: list[dict[str, Any]],
    workloads: list[str] | None = None,
) -> str:
    """The markdown table: a row per metric of the workloads run (all: None)."""
    failed = {(c["client"], c["workload"]) for c in cells if "error" in c}
    head = "| | " + " | ".join(CLIENTS[c] for c in clients) + " |"
    rows = [head, "| --- |" + " ---: |" * len(clients)]
    for metric, workload, _, label, unit, higher, fmt in METRICS:
        if workloads is not None and workload not in workloads:
            continue
        arrow = "higher is better" if higher else "lower is better"
        name = f"{label} ({unit}, {arrow})" if unit else f"{label} ({arrow})"
        if metric == "tls_hs":
            name = label
        base = meds.get("aiohttp", {}).get(metric)
        row = []
        for client in clients:
            v = meds.get(client, {}).get(metric)
            if v is None:
                row.append("failed" if (client, workload) in failed else "-")
            elif metric == "tls_hs" or not base:
                row.append(fmt.format(v))
            else:
                row.append(f"{fmt.format(v)} ({v / base:.2f}x)")
        rows.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(rows)


def chart(meds: dict[str, dict[str, float]], clients: list[str], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install -e '.[bench]')", file=sys.stderr)
        return False
    shown = [m for m in METRICS if m[0] not in ("tls_hs", "idle_growth")]
    base = meds.get("aiohttp", {})
    fig, ax = plt.subplots(figsize=(13, 6.5), dpi=100)
    width = 0.8 / len(clients)
    for i, client in enumerate(clients):
        heights = []
        for metric, _, _, _, _, higher, _ in shown:
            v, b = meds.get(client, {}).get(metric), base.get(metric)
            heights.append(((v / b) if higher else (b / v)) if v and b else 0.0)
        xs = [j + (i - (len(clients) - 1) / 2) * width for j in range(len(shown))]
        ax.bar(xs, heights, width, label=CLIENTS[client])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(shown)))
    ax.set_xticklabels([textwrap.fill(m[3].strip(), 16) for m in shown], fontsize=8)
    ax.set_ylabel("relative to aiohttp (higher is better)")
    ax.set_title(textwrap.fill(title, 150), fontsize=8)
    ax.legend(fontsize=8, ncol=len(clients), loc="upper center", bbox_to_anchor=(0.5, -0.13))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("aiohttp", "httpx", "uvloop", "http-broker"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["commit"] = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    return out


def describe(meta: dict[str, Any]) -> str:
    v = meta["versions"]
    loop = "uvloop" if meta["loop"] == "uvloop" else "asyncio (the default loop)"
    pinned = (
        f" Every process pinned to CPU {meta['pin']}." if meta.get("pin") is not None else ""
    )
    broker_loop = "uvloop" if "uvloop" in v else "asyncio"
    return (
        f"Server: {meta['server']}. Client event loop: {loop}; broker process: "
        f"{broker_loop}. {meta['rounds']} rounds, medians; Python {v['python']}, "
        f"aiohttp {v.get('aiohttp', '?')}, httpx {v.get('httpx', '?')}, "
        f"{meta['cpus']} CPUs, commit {v.get('commit', '?')}, {meta['date']}.{pinned}"
    )


def write_docs(text: str, loop: str) -> None:
    path = Path(ROOT) / "docs" / "benchmarks.md"
    begin, stop = f"<!-- compare.py {loop}: begin -->", f"<!-- compare.py {loop}: end -->"
    doc = path.read_text()
    block = f"{begin}\n{text}\n{stop}"
    if begin in doc and stop in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(stop) + len(stop) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)


def report(bench: Bench, args: argparse.Namespace, out: Path, seconds: float) -> None:
    meds = medians(bench.cells)
    meta = {
        "server": bench.server.kind if bench.server.kind != "nginx"
        else getattr(bench.server, "version", "nginx"),
        "loop": args.loop, "rounds": args.rounds, "quick": args.quick, "pin": args.pin,
        "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "sizes": dataclasses.asdict(bench.sizes), "versions": versions(), "seconds": round(seconds),
    }
    if meta["server"] == "aiohttp":
        meta["server"] = "aiohttp.web (nginx not found)"
    text = table(meds, args.clients, bench.cells, args.workloads)
    section = args.loop if args.pin is None else f"{args.loop}-pinned"
    stem = f"benchmarks-compare-{section}"
    (out / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "medians": meds, "cells": bench.cells}, indent=1) + "\n"
    )
    has_chart = chart(meds, args.clients, out / f"{stem}.png", describe(meta))
    print("\n" + describe(meta) + "\n\n" + text + "\n")
    charted = f"; chart: {out / (stem + '.png')}" if has_chart else ""
    print(f"JSON: {out / (stem + '.json')}{charted}")
    if args.docs:
        body = (
            f"#### `{' '.join(['python bench/compare.py', *args.argv])}`"
            f"\n\n{describe(meta)}\n\n{text}\n\n"
            + (f"![ratios to aiohttp]({stem}.png)\n\n" if has_chart else "")
            + f"All samples: [{stem}.json]({stem}.json)."
        )
        write_docs(body, section)
        print("docs/benchmarks.md updated")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="5 (--quick: 1)")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--server", choices=["auto", "nginx", "aiohttp"], default="auto")
    parser.add_argument("--quick", action="store_true", help="1 round, small sizes")
    parser.add_argument("--out", type=Path, help="where the JSON and PNG go (not docs/)")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    parser.add_argument("--pin", type=int, metavar="CPU", default=None,
                        help="run every process of the run on this one CPU")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the heading's command line
    args.clients = args.clients.split(",")
    args.workloads = args.workloads.split(",")
    for given, known in ((args.clients, CLIENTS), (args.workloads, WORKLOADS)):
        if set(given) - set(known):
            parser.error(f"unknown {sorted(set(given) - set(known))}; choose from {list(known)}")
    if args.pin is not None and args.pin not in os.sched_getaffinity(0):
        parser.error(f"--pin {args.pin}: not one of this process's CPUs "
                     f"{sorted(os.sched_getaffinity(0))}")
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.sizes = QUICK if args.quick else Sizes()
    args.docs = args.out is None and not args.quick
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="compare-")) if args.quick else Path(ROOT) / "docs"
    if args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            parser.error("uvloop is not installed: pip install -e '.[speed]'")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    kind = pick_server(args.server)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})  # every child inherits it

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    started = time.monotonic()
    from tests.tls_certs import make_certs

    tmp = Path(tempfile.mkdtemp(prefix="compare-run-"))
    server: Server | None = None
    try:
        certs = make_certs(tmp / "certs")
        server = Server(kind, tmp, certs, args.sizes.big)
        print(f"server: {kind} ({server.http}, {server.https}); client loop: {args.loop}",
              file=sys.stderr, flush=True)
        bench = Bench(args, server, tmp, str(certs.ca))
        try:
            bench.run()
        finally:
            bench.end_round()
        args.out.mkdir(parents=True, exist_ok=True)
        report(bench, args, args.out, time.monotonic() - started)
    except KeyboardInterrupt:
        print("interrupted: ending every child process", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            server.stop()
        end_all()
        log = tmp / "workers.log"
        if log.exists() and log.stat().st_size:
            print(f"the workers' stderr, its end:\n{log.read_text()[-3000:]}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"(run took {time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(json.loads(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        sys.exit(main())
