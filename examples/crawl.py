"""A crawl by several processes that share one connection pool, one rate limit and one
login: the job http-broker is for.

What happens:

1. a site of ``--pages`` linked pages starts on 127.0.0.1 (aiohttp's low-level server, a
   free port, in a thread). Its link graph comes from ``--seed``: every page links to
   its two children in a binary tree (so all are reachable from ``/page/0``) and to a
   few random pages. Some pages are slow, some moved (301/302 to ``/moved/N``), half are
   for members only (403 without the session cookie that ``POST /login`` sets), a few
   answer 500 and a few links are broken (404). The site counts what a server can see:
   TCP connections open at once, requests in any 1 s window, requests that carried the
   login cookie, and how often each page was fetched;
2. ``broker.start()`` spawns a broker process and exports ``HTTP_BROKER``;
3. the main process logs in once, through the group's pool and ``CookieJar(name="crawl")``;
4. ``--workers`` processes (multiprocessing, "spawn") each open ``ClientSession(
   connector=TCPConnector(limit_per_host=..., rate_limit_per_host=..., name="crawl"),
   cookie_jar=CookieJar(name="crawl"))``: equal arguments name the same pool and the
   same jar in the broker, so the limits hold for the group and every request carries
   the login;
5. the main process keeps the frontier: workers take URLs from one queue and send back
   each page's links; the main process queues each URL it has not seen, counts the URLs
   queued and not yet answered, and stops the workers when none is left (both queues
   hold at most one entry per URL of the site). Each answer moves the progress bar
   (tqdm, on stderr; none when stderr is not a terminal);
6. the summary: pages, errors by kind, requests per second, and what the site saw
   against the limits set. The exit code is 1 when a limit was exceeded, a page was not
   found, or a request after the login came without its cookie.

``rate_limit_per_host`` is the broker's token bucket with a burst of one
(``broker/rate_limit.py``): a request's start comes at least 1/rate seconds after the
previous one's, so any window of 1 s holds at most rate + 1 starts. The site counts
the requests that arrived in any 1 s window and checks them against the same bound
stretched by the arrival jitter: ``JITTER`` for the time from a start to its arrival,
which varies, plus the longest stall of the site's own event loop (a busy machine),
during which arrivals queue and then count as arriving together.

Run from the repository root: ``python examples/crawl.py [--pages N] [--workers N]
[--limit-per-host N] [--rate R] [--no-broker] [--json]``. Only loopback traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import json
import math
import multiprocessing
import os
import queue
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)

from yarl import URL  # noqa: E402

if TYPE_CHECKING:  # the workers do not import aiohttp: only the site uses it
    from aiohttp import web

from worker_client import (  # noqa: E402
    ClientError,
    ClientSession,
    ClientTimeout,
    CookieJar,
    TCPConnector,
)

TOKEN = "crawl-login-token"
WINDOW = 1.0  # seconds: the site's sliding window for the request rate
CHECK_EVERY = 0.5  # seconds between the main process's looks at its workers' health
JITTER = 0.05  # seconds of start-to-arrival variation the rate check allows for
TICK = 0.002  # seconds between the site's checks of its own event loop's stalls
LINK = re.compile(r'href="([^"]+)"')


@dataclass(frozen=True)
class Options:
    pages: int = 2000
    workers: int = 4
    limit_per_host: int = 4
    rate: float = 200.0
    concurrency: int = 8  # requests in flight per worker process (the pool limits them)
    seed: int = 13
    broker: bool = True  # False: every process on its own (--no-broker)
    timeout: float = 300.0  # seconds for the whole crawl


# -- the site: its pages (pure) -----------------------------------------------------------


@dataclass(frozen=True)
class SiteMap:
    """The pages of the site and what each one does, all drawn from the seed."""

    pages: int
    links: tuple[tuple[str, ...], ...]
    slow: dict[int, float]  # page -> seconds it takes
    moved: dict[int, int]  # page -> 301 or 302 to /moved/<page>
    members: frozenset[int]  # 403 without the login cookie
    broken: frozenset[int]  # 500

    @classmethod
    def build(cls, pages: int, seed: int) -> SiteMap:
        rng = random.Random(seed)
        ids = range(pages)
        leaves = range(pages // 2, pages)  # no tree children: a 500 there hides nothing
        slow = {i: rng.uniform(0.005, 0.04) for i in ids if i and rng.random() < 0.1}
        moved = {i: rng.choice((301, 302)) for i in ids if i and rng.random() < 0.03}
        members = frozenset(i for i in ids if i and rng.random() < 0.5)
        broken = frozenset(i for i in leaves if rng.random() < 0.01)
        links = []
        for i in ids:
            out = [c for c in (2 * i + 1, 2 * i + 2) if c < pages]
            out += rng.sample(ids, min(4, pages))
            hrefs = [f"/page/{j}" for j in out]
            if rng.random() < 0.01:
                hrefs.append(f"/page/{pages + i}")  # a broken link: 404
            links.append(tuple(hrefs))
        return cls(pages, tuple(links), slow, moved, members, broken)

    def page_of(self, path: str) -> tuple[int | None, bool]:
        """(the page ``path`` names, whether it is the page's moved address)."""
        match = re.fullmatch(r"/(page|moved)/(\d+)", path)
        if match is None or int(match[2]) >= self.pages:
            return None, False
        return int(match[2]), match[1] == "moved"


# -- the site: the server and what it saw ----------------------------------------------------


@dataclass
class SiteCounts:
    """What the site saw; written by the server's thread only."""

    open_now: int = 0
    open_most: int = 0
    connections: int = 0
    arrivals: list[float] = field(default_factory=list)  # loop time of each request
    page_hits: collections.Counter[int] = field(default_factory=collections.Counter)
    login: int | None = None  # the login's index in ``arrivals``
    longest_stall: float = 0.0  # seconds the site's event loop ran late, at most
    with_cookie: int = 0  # of the requests after the login
    without_cookie: int = 0

    def highest_rate(self) -> int:
        """The most requests that arrived within any ``WINDOW`` seconds."""
        times = sorted(self.arrivals)
        return max(
            (bisect.bisect_left(times, t + WINDOW, i) - i for i, t in enumerate(times)),
            default=0,
        )

    def crawl_span(self) -> float:
        """Seconds from the first request after the login to the last request."""
        after = self.arrivals[(self.login or 0) + 1 :]
        return after[-1] - after[0] if len(after) > 1 else 0.0

    async def watch_stalls(self) -> None:
        """A stalled event loop (the machine is busy) takes the requests that arrived
        meanwhile all at once: their arrival times bunch up by as much as the stall."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + TICK
            await asyncio.sleep(TICK)
            self.longest_stall = max(self.longest_stall, loop.time() - due)


class Site:
    """The site on 127.0.0.1 in its own thread and event loop (aiohttp's low-level
    server, whose connection hooks count the open TCP connections)."""

    def __init__(self, sitemap: SiteMap) -> None:
        self.map = sitemap
        self.counts = SiteCounts()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="crawl-site", daemon=True)

    def __enter__(self) -> Site:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        if not self.port:
            raise RuntimeError("the site did not start")
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

    async def _serve(self) -> None:
        from aiohttp import web

        counts = self.counts

        class CountingServer(web.Server):
            def connection_made(self, handler: Any, transport: Any) -> None:
                super().connection_made(handler, transport)
                counts.connections += 1
                counts.open_now += 1
                counts.open_most = max(counts.open_most, counts.open_now)

            def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
                super().connection_lost(handler, exc)
                counts.open_now -= 1

        loop = asyncio.get_running_loop()

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            counts.arrivals.append(loop.time())
            return await self._answer(request)

        runner = web.ServerRunner(CountingServer(handle, access_log=None))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._loop = loop
        self._stop = asyncio.Event()
        watch = asyncio.create_task(counts.watch_stalls())
        self._ready.set()
        await self._stop.wait()
        watch.cancel()
        await runner.cleanup()

    async def _answer(self, request: web.BaseRequest) -> web.Response:
        from aiohttp import web

        counts, sitemap = self.counts, self.map
        logged_in = request.cookies.get("session") == TOKEN
        if counts.login is not None:
            if logged_in:
                counts.with_cookie += 1
            else:
                counts.without_cookie += 1
        if request.method == "POST" and request.path == "/login":
            counts.login = len(counts.arrivals) - 1
            resp = web.Response(text="welcome")
            resp.set_cookie("session", TOKEN, httponly=True)
            return resp
        page, at_moved = sitemap.page_of(request.path)
        if page is None or request.method != "GET" or (at_moved and page not in sitemap.moved):
            return web.Response(status=404, text="not found")
        if page in sitemap.moved and not at_moved:
            location = {"Location": f"/moved/{page}"}
            return web.Response(status=sitemap.moved[page], headers=location)
        counts.page_hits[page] += 1
        if page in sitemap.members and not logged_in:
            return web.Response(status=403, text="members only: log in first")
        if page in sitemap.slow:
            await asyncio.sleep(sitemap.slow[page])
        if page in sitemap.broken:
            return web.Response(status=500, text="this page is broken")
        anchors = "".join(f'<li><a href="{href}">{href}</a></li>' for href in sitemap.links[page])
        return web.Response(
            text=f"<html><body><h1>page {page}</h1><ul>{anchors}</ul></body></html>",
            content_type="text/html",
        )


# -- a worker process ----------------------------------------------------------------------


def group_session(opts: Options, base: str) -> ClientSession:
    """Every process opens its session with these arguments: equal connector arguments
    name the group's pool in the broker, equal jar arguments the group's jar
    (unsafe=True: the site is an IP address, 127.0.0.1)."""
    connector = TCPConnector(
        limit_per_host=opts.limit_per_host, rate_limit_per_host=opts.rate, name="crawl"
    )
    return ClientSession(
        base,
        connector=connector,
        cookie_jar=CookieJar(name="crawl", unsafe=True),
        timeout=ClientTimeout(total=30),
    )


async def fetch(session: ClientSession, url: str) -> tuple[str, str, str, int, list[str]]:
    """("page", url, status or error kind, redirect hops, absolute links on the page)."""
    try:
        async with session.get(url) as resp:
            body = await resp.text()
            hops = len(resp.history)
            if resp.status != 200:
                return "page", url, str(resp.status), hops, []
            links = {str(resp.url.join(URL(href))) for href in LINK.findall(body)}
            return "page", url, "200", hops, sorted(links)
    except (ClientError, asyncio.TimeoutError) as exc:
        return "page", url, type(exc).__name__, 0, []


async def crawl_worker(opts: Options, base: str, todo: Any, done: Any) -> int:
    requests = 0

    async def fetcher(session: ClientSession) -> None:
        nonlocal requests
        while (url := await asyncio.to_thread(todo.get)) is not None:
            result = await fetch(session, url)
            requests += 1 + result[3]
            done.put(result)

    async with group_session(opts, base) as session:
        await asyncio.gather(*(fetcher(session) for _ in range(opts.concurrency)))
    return requests


def worker_main(index: int, opts: Options, base: str, todo: Any, done: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the main process's to handle
    try:
        requests = asyncio.run(crawl_worker(opts, base, todo, done))
        done.put(("done", index, os.getpid(), requests))
    except BaseException as exc:
        done.put(("failed", index, os.getpid(), f"{type(exc).__name__}: {exc}"))
        raise


# -- the main process ------------------------------------------------------------------------


async def log_in(opts: Options, base: str) -> int:
    async with group_session(opts, base) as session:
        async with session.post("login", data={"user": "crawler"}) as resp:
            await resp.read()
            return resp.status


@dataclass
class Crawl:
    """The main process's side of the crawl: the frontier and what came back."""

    seen: set[str] = field(default_factory=set)
    pending: int = 0  # URLs queued and not answered yet
    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    hops: int = 0
    workers: dict[int, int] = field(default_factory=dict)  # index -> requests made
    failures: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(self.answers.values()) - self.answers["200"]

    def add(self, url: str, todo: Any, base: str) -> None:
        """Queue ``url`` if it is new and on the site (the frontier holds each once)."""
        if url not in self.seen and url.startswith(base):
            self.seen.add(url)
            self.pending += 1
            todo.put(url)


def run_crawl(opts: Options, base: str, bar: Any) -> Crawl:
    ctx = multiprocessing.get_context("spawn")
    todo, done = ctx.Queue(), ctx.Queue()
    crawl = Crawl()
    crawl.add(base + "page/0", todo, base)
    procs = [
        ctx.Process(target=worker_main, args=(i, opts, base, todo, done), name=f"crawler-{i}")
        for i in range(opts.workers)
    ]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + opts.timeout
    check_at = time.monotonic() + CHECK_EVERY
    try:
        while crawl.pending and not crawl.failures:
            with contextlib.suppress(queue.Empty):
                take(crawl, done.get(timeout=CHECK_EVERY), todo, base, bar)
            now = time.monotonic()
            if now < check_at:
                continue
            check_at = now + CHECK_EVERY
            # a worker that died (killed, out of memory) says nothing: its URLs would
            # never be answered, and the others would crawl on without it
            if dead := [p for p in procs if p.exitcode is not None]:
                drain(crawl, todo, done, base, bar)  # its own words, if it left any
                if not crawl.failures:
                    crawl.failures += [f"{p.name} exited with {p.exitcode}" for p in dead]
            if now > deadline:
                crawl.failures.append(f"not finished in {opts.timeout:g} s")
    except KeyboardInterrupt:
        crawl.failures.append("interrupted")
    finally:
        stop_workers(crawl, procs, todo, done, opts.concurrency)
        bar.close()
    return crawl


def drain(crawl: Crawl, todo: Any, done: Any, base: str, bar: Any) -> None:
    """Take what the workers sent so far (at most one answer per URL of the site)."""
    while True:
        try:
            msg = done.get_nowait()
        except queue.Empty:
            return
        take(crawl, msg, todo, base, bar)


def take(crawl: Crawl, msg: tuple[Any, ...], todo: Any, base: str, bar: Any) -> None:
    """One message from a worker: a page's answer and links, or a worker's failure."""
    if msg[0] == "failed":
        crawl.failures.append(f"worker {msg[1]} (pid {msg[2]}): {msg[3]}")
        return
    _, _, answer, hops, links = msg
    crawl.pending -= 1
    crawl.answers[answer] += 1
    crawl.hops += hops
    for link in links:
        crawl.add(link, todo, base)
    if not bar.n:
        bar.reset(len(crawl.seen))  # the clock starts with the first page, not the spawns
    bar.total = len(crawl.seen)
    bar.update(1)
    if answer != "200":
        bar.set_postfix(errors=crawl.errors, refresh=False)


def stop_workers(crawl: Crawl, procs: list[Any], todo: Any, done: Any, concurrency: int) -> None:
    """At the end, a None for each fetcher and each worker's count; after a failure (or
    ^C) the URLs still queued are not worth crawling: the workers are terminated."""
    if crawl.failures:
        for proc in procs:
            proc.terminate()
    else:
        for _ in range(len(procs) * concurrency):
            todo.put(None)
        for _ in procs:
            try:
                msg = done.get(timeout=10)
            except queue.Empty:
                crawl.failures += [
                    f"{p.name} did not report its end (exit code {p.exitcode})"
                    for i, p in enumerate(procs)
                    if i not in crawl.workers
                ]
                break
            if msg[0] == "done":
                crawl.workers[msg[1]] = msg[3]
            else:  # "failed": no page answers are left once none is pending
                crawl.failures.append(f"worker {msg[1]} (pid {msg[2]}): {msg[3]}")
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def summarize(
    opts: Options, sitemap: SiteMap, counts: SiteCounts, crawl: Crawl, wall: float
) -> dict[str, Any]:
    requests = len(counts.arrivals) - 1  # all but the login
    span = counts.crawl_span()
    slack = JITTER + counts.longest_stall
    rate_allowed = math.floor(opts.rate * (WINDOW + slack)) + 1
    broken_links = sum(1 for hrefs in sitemap.links for h in hrefs if sitemap.page_of(h)[0] is None)
    expected = {"404": broken_links, "500": len(sitemap.broken)}
    checks = {
        "all_pages_found": len(counts.page_hits) == sitemap.pages,
        "each_page_fetched_once": all(n == 1 for n in counts.page_hits.values()),
        "limit_per_host_held": counts.open_most <= opts.limit_per_host,
        "rate_limit_held": counts.highest_rate() <= rate_allowed,
        "login_cookie_on_every_request": counts.without_cookie == 0 and counts.with_cookie > 0,
        "workers_ok": not crawl.failures and len(crawl.workers) == opts.workers,
    }
    return {
        "site_pages": sitemap.pages,
        "pages_found": len(counts.page_hits),
        "pages_fetched_more_than_once": sum(1 for n in counts.page_hits.values() if n > 1),
        "pages_ok": crawl.answers["200"],
        "errors": {k: n for k, n in sorted(crawl.answers.items()) if k != "200"},
        "errors_expected": {k: n for k, n in expected.items() if n},
        "requests": requests,
        "redirect_hops": crawl.hops,
        "seconds": round(span, 3),
        "requests_per_second": round(requests / span, 1) if span else 0.0,
        "wall_seconds": round(wall, 3),
        "workers": opts.workers,
        # None: the worker did not report its count (it died, or was stopped by a failure)
        "worker_requests": [crawl.workers.get(i) for i in range(opts.workers)],
        "limit_per_host": opts.limit_per_host,
        "most_connections_at_once": counts.open_most,
        "connections_opened": counts.connections,
        "rate_limit_per_host": opts.rate,
        "rate_window_seconds": WINDOW,
        "highest_requests_in_window": counts.highest_rate(),
        "rate_allowed_in_window": rate_allowed,
        "rate_slack_seconds": round(slack, 4),
        "site_longest_stall_seconds": round(counts.longest_stall, 4),
        "requests_after_login": counts.with_cookie + counts.without_cookie,
        "requests_with_login_cookie": counts.with_cookie,
        "broker": opts.broker,
        "failures": crawl.failures,
        "checks": checks,
        "ok": all(checks.values()),
    }


def report(s: dict[str, Any]) -> None:
    def mark(check: str) -> str:
        return "ok" if s["checks"][check] else "EXCEEDED" if "held" in check else "FAILED"

    def kinds(counts: dict[str, int]) -> str:
        return ", ".join(f"{kind} x{n}" for kind, n in counts.items()) or "none"

    per_worker = ", ".join("?" if n is None else str(n) for n in s["worker_requests"])
    rate = s["rate_limit_per_host"]
    print(
        f"pages     {s['pages_found']} of the site's {s['site_pages']} found "
        f"[{mark('all_pages_found')}], {s['pages_ok']} answered 200, "
        f"{s['pages_fetched_more_than_once']} fetched twice [{mark('each_page_fetched_once')}]"
    )
    print(f"errors    {kinds(s['errors'])} (the site has {kinds(s['errors_expected'])})")
    print(
        f"requests  {s['requests']} ({s['redirect_hops']} redirect hops) in "
        f"{s['seconds']:.1f} s: {s['requests_per_second']:.1f} req/s; per worker {per_worker}"
    )
    print("the site saw")
    print(
        f"  most connections at once: {s['most_connections_at_once']} "
        f"(limit_per_host {s['limit_per_host']}) [{mark('limit_per_host_held')}], "
        f"{s['connections_opened']} opened in all"
    )
    print(
        f"  highest rate: {s['highest_requests_in_window']} requests in any "
        f"{s['rate_window_seconds']:g} s (rate_limit_per_host {rate:g}/s allows "
        f"{math.floor(rate * s['rate_window_seconds']) + 1} starts; "
        f"{s['rate_allowed_in_window']} arrivals with {s['rate_slack_seconds'] * 1000:.0f} ms "
        f"of jitter) [{mark('rate_limit_held')}]"
    )
    print(
        f"  login cookie: on {s['requests_with_login_cookie']} of the "
        f"{s['requests_after_login']} requests after the login "
        f"[{mark('login_cookie_on_every_request')}]"
    )
    for failure in s["failures"]:
        print(f"FAILED: {failure}")
    print(f"{'ok' if s['ok'] else 'FAILED'} in {s['wall_seconds']:.1f} s")


def parse_args(argv: list[str] | None) -> tuple[Options, bool]:
    d = Options()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--pages", type=int, default=d.pages, help="pages of the site (%(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="processes (%(default)s)")
    p.add_argument("--limit-per-host", type=int, default=d.limit_per_host,
                   help="connections to the site for the group (%(default)s)")
    p.add_argument("--rate", type=float, default=d.rate,
                   help="rate_limit_per_host: requests per second for the group (%(default)s)")
    p.add_argument("--concurrency", type=int, default=d.concurrency,
                   help="requests in flight per process (%(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="the site's link graph (%(default)s)")
    p.add_argument("--no-broker", action="store_true",
                   help="no broker: each process its own pool and jar, as with aiohttp")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = p.parse_args(argv)
    for name in ("pages", "workers", "limit_per_host", "concurrency"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.rate <= 0:
        p.error("--rate must be > 0")
    opts = Options(
        a.pages, a.workers, a.limit_per_host, a.rate, a.concurrency, a.seed, not a.no_broker
    )
    return opts, a.json


def main(argv: list[str] | None = None) -> int:
    opts, as_json = parse_args(argv)
    try:
        from tqdm import tqdm
    except ImportError:
        sys.exit("the crawl's progress bar needs tqdm: python3 -m pip install -e '.[examples]'")
    import broker

    started = time.monotonic()
    say = (lambda line: None) if as_json else print
    sitemap = SiteMap.build(opts.pages, opts.seed)
    if not opts.broker:
        os.environ.pop("HTTP_BROKER", None)  # the workers inherit the environment
    with Site(sitemap) as site, broker.start() if opts.broker else contextlib.nullcontext() as proc:
        base = f"http://127.0.0.1:{site.port}/"
        say(f"site    {base} ({opts.pages} pages; aiohttp, in a thread)")
        if proc is not None:
            say(f"broker  pid {proc.pid}, HTTP_BROKER={os.environ['HTTP_BROKER']}")
        else:
            say("broker  none (--no-broker): each process has its own pool, rate limit and jar")
        say(
            f"crawl   {opts.workers} processes, each with TCPConnector(limit_per_host="
            f"{opts.limit_per_host}, rate_limit_per_host={opts.rate:g}, name=\"crawl\") "
            f"and CookieJar(name=\"crawl\")"
        )
        status = asyncio.run(log_in(opts, base))
        say(f"login   POST /login: {status}, the session cookie is in the main process's jar")
        # disable=None: no bar when stderr is not a terminal (CI logs, pipes)
        with tqdm(desc="crawl", unit="page", disable=None, mininterval=0.2) as bar:
            crawl = run_crawl(opts, base, bar)
    summary = summarize(opts, sitemap, site.counts, crawl, time.monotonic() - started)
    if as_json:
        print(json.dumps(summary, indent=1))
    else:
        report(summary)
    return 0 if summary["ok"] else 130 if "interrupted" in crawl.failures else 1


if __name__ == "__main__":
    sys.exit(main())
