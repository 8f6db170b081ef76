"""http-broker in one screen: several worker processes, one shared connection pool and
one shared cookie jar.

What happens:

1. a small aiohttp.web server starts on 127.0.0.1 (a free port) in a background thread;
   it notes which TCP connection served each request and for which worker;
2. ``broker.start()`` spawns a broker process and exports ``HTTP_BROKER``;
3. the parent logs in once (``/login`` sets a session cookie) with
   ``CookieJar(name="demo")``: the group's jar of that name, kept in the broker;
4. four worker processes (multiprocessing, "spawn") each open
   ``ClientSession(connector=TCPConnector(limit=4), cookie_jar=CookieJar(name="demo"))``
   and make GETs, a POST with ``json=`` and a GET that is redirected; they find the
   broker through ``HTTP_BROKER``. Equal connector arguments name the same pool in the
   broker, so ``limit=4`` holds for the four processes together, and equal jar
   arguments name the same jar, so every request carries the parent's login;
5. the demo prints what each worker did, what the server saw (how many TCP connections
   for how many requests, how many connections carried requests of several workers, how
   many requests came logged in), and the broker's own figures.

Run from the repository root: ``python examples/demo.py``. Only loopback traffic.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import os
import sys
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)

from worker_client import ClientSession, CookieJar, TCPConnector  # noqa: E402

WORKERS = 4
CONCURRENT_GETS = 12  # per worker, all in flight at once
POOL_LIMIT = 4  # TCPConnector(limit=4) in every worker: 4 connections for the group
LOGIN = "demo-login-token"


def group_jar() -> CookieJar:
    """The group's jar: the same arguments in every process name the same jar in the
    broker (unsafe=True: the demo server is an IP address, 127.0.0.1)."""
    return CookieJar(name="demo", unsafe=True)


# -- the server (a thread of the parent process) ---------------------------------------


class DemoServer:
    """aiohttp.web on 127.0.0.1 in its own thread and event loop."""

    def __init__(self) -> None:
        self.requests = 0
        self.logged_in = 0
        self.connections: dict[Any, set[str]] = collections.defaultdict(set)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="demo-server", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> DemoServer:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        if not self.port:
            raise RuntimeError("the demo server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by __enter__
            self._error = exc
            self._ready.set()

    def _note(self, request: Any) -> None:
        self.requests += 1
        if request.cookies.get("session") == LOGIN:
            self.logged_in += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.connections[peer].add(request.headers.get("X-Worker", "?"))

    async def _serve(self) -> None:
        from aiohttp import web

        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            self._note(request)
            return await handler(request)

        async def hello(request: web.Request) -> web.Response:
            await asyncio.sleep(0.005)  # a little server time, so requests overlap
            return web.json_response({"hello": request.query.get("n", "")})

        async def echo(request: web.Request) -> web.Response:
            return web.json_response({"echo": await request.json()}, status=201)

        async def old(request: web.Request) -> web.Response:
            raise web.HTTPFound("/hello?n=redirected")

        async def login(request: web.Request) -> web.Response:
            resp = web.Response(text="welcome")
            resp.set_cookie("session", LOGIN, httponly=True)
            return resp

        app = web.Application(middlewares=[count])
        app.router.add_get("/hello", hello)
        app.router.add_post("/echo", echo)
        app.router.add_get("/old", old)
        app.router.add_post("/login", login)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()


# -- a worker process ----------------------------------------------------------------


async def work(index: int, base: str) -> dict[str, Any]:
    statuses: collections.Counter[int] = collections.Counter()
    hdrs = {"X-Worker": str(index)}
    notes: list[str] = []
    async with ClientSession(
        base, connector=TCPConnector(limit=POOL_LIMIT), headers=hdrs, cookie_jar=group_jar()
    ) as session:

        async def get(n: int) -> None:
            async with session.get("hello", params={"n": f"{index}.{n}"}) as resp:
                await resp.json()
                statuses[resp.status] += 1

        await asyncio.gather(*(get(n) for n in range(CONCURRENT_GETS)))

        async with session.post("echo", json={"worker": index, "pid": os.getpid()}) as resp:
            body = await resp.json()
            statuses[resp.status] += 1
            notes.append(f"POST json echoed {body['echo']['worker']}")

        async with session.get("old") as resp:
            body = await resp.json()
            statuses[resp.status] += 1
            hops = " -> ".join(str(h.status) for h in resp.history)
            notes.append(f"redirect {hops} -> {resp.status} {resp.url.path_qs}")

        broker = session.broker
    return {
        "worker": index,
        "pid": os.getpid(),
        "broker": broker,
        "requests": sum(statuses.values()),
        "statuses": dict(sorted(statuses.items())),
        "notes": notes,
    }


def worker_main(index: int, base: str, results: Any) -> None:
    try:
        results.put(asyncio.run(work(index, base)))
    except BaseException as exc:
        results.put({"worker": index, "error": f"{type(exc).__name__}: {exc}"})
        raise


# -- the parent ------------------------------------------------------------------------


async def log_in(base: str) -> None:
    connector = TCPConnector(limit=POOL_LIMIT)  # the workers' pool: equal arguments
    async with ClientSession(base, connector=connector, cookie_jar=group_jar()) as session:
        async with session.post("login", data={"user": "demo"}) as resp:
            await resp.read()


async def broker_figures() -> Any:
    async with ClientSession() as session:  # finds the broker through HTTP_BROKER
        return await session.stats()


def main() -> int:
    import broker

    started = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    with DemoServer() as server, broker.start() as proc:
        base = f"http://127.0.0.1:{server.port}/"
        print(f"server  http://127.0.0.1:{server.port} (aiohttp.web, in a thread)")
        print(f"broker  pid {proc.pid}, HTTP_BROKER={os.environ['HTTP_BROKER']}")
        print(
            f"workers {WORKERS} processes (spawn), each: {CONCURRENT_GETS} concurrent GETs, "
            f"1 POST json=, 1 redirected GET; TCPConnector(limit={POOL_LIMIT}), "
            f'CookieJar(name="demo")'
        )
        asyncio.run(log_in(base))
        print('parent  logged in once: POST /login set a session cookie in the jar "demo"\n')
        results_q = ctx.Queue()
        workers = [
            ctx.Process(target=worker_main, args=(i, base, results_q), name=f"worker-{i}")
            for i in range(WORKERS)
        ]
        for w in workers:
            w.start()
        results = [results_q.get(timeout=60) for _ in workers]
        for w in workers:
            w.join(10)
        stats = asyncio.run(broker_figures())

        failed = False
        for r in sorted(results, key=lambda r: r["worker"]):
            if "error" in r:
                failed = True
                print(f"worker {r['worker']}: FAILED {r['error']}")
                continue
            statuses = ", ".join(f"{s} x{n}" for s, n in r["statuses"].items())
            print(
                f"worker {r['worker']} (pid {r['pid']}): {r['requests']} requests, "
                f"statuses {statuses}; via broker {r['broker']}"
            )
            for note in r["notes"]:
                print(f"    {note}")
        failed |= any(w.exitcode != 0 for w in workers)

        client_requests = sum(r.get("requests", 0) for r in results)
        conns = server.connections
        shared = sum(1 for seen in conns.values() if len(seen) > 1)
        print(
            f"\nserver: {server.requests} requests served (the login, {client_requests} worker "
            f"requests + the redirects' first hops) over {len(conns)} TCP connections; "
            f"{shared} of them carried requests of more than one worker process"
        )
        print(
            f"        (aiohttp with TCPConnector(limit={POOL_LIMIT}) in each process could open "
            f"up to {POOL_LIMIT * WORKERS}: one pool per process)"
        )
        worker_requests = server.requests - 1  # all but the parent's login
        print(
            f"        {server.logged_in} of the workers' {worker_requests} requests came with "
            f"the session cookie of the parent's login (one jar for the group)"
        )
        print(
            f"broker (pid {stats.pid}): {stats.requests} requests (the login and the workers'), "
            f"{stats.streams} in flight now; its pools:"
        )
        for pool in stats.pools:
            print(
                f"    pool {pool['pool']!r}: limit {pool['limit']}, open {pool['open']}, "
                f"idle {pool['idle']}, active {pool['active']}, queued {pool['queued']}"
            )
            for host, counts in pool["hosts"].items():
                print(f"        {host}: {counts}")
        for jar in stats.jars:
            if jar["name"] is not None:
                print(f"    cookie jar {jar['name']!r}: {jar['cookies']} cookie(s)")
    ok = (
        not failed
        and len(conns) <= POOL_LIMIT
        and server.logged_in == worker_requests
    )
    print(f"\n{'ok' if ok else 'FAILED'} in {time.monotonic() - started:.1f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
