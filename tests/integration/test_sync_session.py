"""``SyncSession`` (worker_client/sync.py) in both modes, against real servers.

The tests are plain functions, as a WSGI worker's code is: the aiohttp.web servers run on
a loop of their own in a background thread (``ServerThread``). A representative set of
the async session's request and response tests, redone through the sync API, then what is
the sync API's own: threads, its loop thread, interrupts, close, fork.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.cookies import SimpleCookie
from typing import Any, TypeVar

import pytest
from aiohttp import web
from yarl import URL

from tests.integration.apps import closed_port, echo, echo_app, header, text_app
from tests.integration.counting_server import CountingServer
from tests.integration.test_session_cookies import cookie_app
from worker_client import (
    ClientConnectionError,
    ClientConnectorError,
    ClientResponseError,
    ClientSession,
    ClientTimeout,
    InvalidUrlClientError,
    NonHttpUrlClientError,
    ServerTimeoutError,
    SocketTimeoutError,
    SyncResponse,
    SyncSession,
    TCPConnector,
    TooManyRedirects,
    TraceConfig,
)

T = TypeVar("T")
WAIT = 10.0  # seconds any wait on the server thread may take before the test fails


class ServerThread:
    """aiohttp.web apps (and a ``CountingServer``) served by a loop in its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []
        self.counting: list[CountingServer] = []

    def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        async def call() -> T:
            return await factory()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(WAIT)

    def serve(self, app: web.Application, host: str = "127.0.0.1") -> str:
        """Serve ``app``; its base URL, naming ``host``."""

        async def start() -> str:
            runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.runners.append(runner)
            return f"http://{host}:{runner.addresses[0][1]}"

        return self.run(start)

    def counting_server(self, open_at: int | None = 1) -> tuple[CountingServer, str]:
        async def start() -> tuple[CountingServer, str]:
            server = CountingServer(open_at)
            self.counting.append(server)
            return server, f"http://127.0.0.1:{await server.start()}"

        return self.run(start)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def close(self) -> None:
        async def stop() -> None:
            for server in self.counting:
                await server.stop()
            for runner in self.runners:
                await runner.cleanup()

        try:
            self.run(stop)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT)
            self.loop.close()


@pytest.fixture(params=("embedded", "broker-wire", "broker-loop"))
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Embedded; through a broker on the blocking wire path (``worker_client.sync_wire``);
    through a broker on the background loop (the wire path switched off)."""
    if request.param == "broker-loop":
        monkeypatch.setenv("HTTP_BROKER_FAST_PATH", "0")
    elif request.param == "broker-wire":
        monkeypatch.delenv("HTTP_BROKER_FAST_PATH", raising=False)
    return str(request.param)


@pytest.fixture
def servers() -> Iterator[ServerThread]:
    threaded = ServerThread()
    yield threaded
    threaded.close()


@pytest.fixture
def make_sync(broker_address: str | None) -> Iterator[Callable[..., SyncSession]]:
    """``make_sync(**kwargs)``: a SyncSession in the test's mode, closed afterwards."""
    sessions: list[SyncSession] = []

    def factory(*args: Any, **kwargs: Any) -> SyncSession:
        kwargs.setdefault("broker", broker_address)
        s = SyncSession(*args, **kwargs)
        sessions.append(s)
        return s

    yield factory
    for s in sessions:
        s.close()


@pytest.fixture
def sync(make_sync: Callable[..., SyncSession]) -> SyncSession:
    return make_sync()


def pool_host(s: SyncSession, base: str) -> dict[str, Any]:
    """The engine's figures for ``base``'s host in the session's pool ({} if none)."""
    pools = [p for p in s.stats().pools if base in p["hosts"]]
    return dict(pools[0]["hosts"][base]) if pools else {}


# -- requests -------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["get", "post", "put", "patch", "delete", "options"])
def test_each_verb_sends_its_method(servers, sync, verb):
    base = servers.serve(echo_app())
    with getattr(sync, verb)(base + "/v") as resp:
        assert isinstance(resp, SyncResponse)
        assert resp.status == 200
        assert resp.json()["method"] == verb.upper() == resp.method


def test_head_and_request(servers, sync):
    base = servers.serve(echo_app())
    with sync.head(base + "/h") as resp:
        assert (resp.status, resp.method, resp.read()) == (200, "HEAD", b"")
    with sync.request("PROPFIND", base + "/x") as resp:
        assert resp.json()["method"] == "PROPFIND"


def test_params_are_added_to_the_query(servers, sync):
    base = servers.serve(echo_app())
    with sync.get(base + "/p?a=0", params={"b": "1", "c": "x y"}) as resp:
        assert resp.json()["query"] == [["a", "0"], ["b", "1"], ["c", "x y"]]
        assert resp.url.query == {"a": "0", "b": "1", "c": "x y"}
    with sync.get(base + "/p", params=[("k", "1"), ("k", "2")]) as resp:
        assert resp.json()["query"] == [["k", "1"], ["k", "2"]]


def test_base_url_joins_relative_urls(servers, make_sync):
    base = servers.serve(echo_app())
    s = make_sync(base + "/api/")
    with s.get("items", params={"q": "1"}) as resp:
        assert resp.json()["path"] == "/api/items"
        assert str(resp.url) == base + "/api/items?q=1"


def test_json_and_data_bodies(servers, sync):
    base = servers.serve(echo_app())
    with sync.post(base + "/j", json={"a": [1, 2]}) as resp:
        got = resp.json()
    assert json.loads(got["body"]) == {"a": [1, 2]}
    assert header(got, "Content-Type") == "application/json"
    with sync.put(base + "/f", data={"x": "1", "y": "a b"}) as resp:
        got = resp.json()
    assert got["body"] == "x=1&y=a+b"
    assert header(got, "Content-Type") == "application/x-www-form-urlencoded"
    with sync.patch(base + "/b", data=b"\x00raw") as resp:
        got = resp.json()
    assert got["body"] == "\x00raw"
    assert header(got, "Content-Length") == "4"


def test_session_and_request_headers(servers, make_sync):
    base = servers.serve(echo_app())
    s = make_sync(headers={"X-Session": "s", "X-Both": "session"})
    s.headers["X-Added"] = "later"
    with s.get(base + "/", headers={"X-Both": "request"}) as resp:
        got = resp.json()
    assert header(got, "X-Session") == "s"
    assert header(got, "X-Both") == "request"
    assert header(got, "X-Added") == "later"


def test_an_unknown_keyword_is_the_async_sessions_error(servers, sync):
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        sync.get("http://127.0.0.1:1/", bogus=1)
    with pytest.raises(TypeError):
        SyncSession(bogus=1)


# -- responses ------------------------------------------------------------------------------


def test_response_attributes(servers, sync):
    async def answer(request: web.Request) -> web.Response:
        return web.Response(
            text="héllo", status=201, reason="Made", charset="latin-1",
            headers={"X-Multi": "1"},
        )

    app = web.Application()
    app.router.add_get("/a", answer)
    base = servers.serve(app)
    with sync.get(base + "/a#frag") as resp:
        assert (resp.status, resp.reason, resp.ok) == (201, "Made", True)
        assert resp.headers["x-multi"] == resp.headers["X-MULTI"] == "1"
        assert resp.content_type == "text/plain"
        assert resp.charset == "latin-1"
        assert resp.url == URL(base + "/a")
        assert resp.real_url == URL(base + "/a#frag")
        assert resp.request_info.method == "GET"
        assert resp.history == ()
        assert resp.read() == "héllo".encode("latin-1")
        assert resp.text() == "héllo"
        assert resp.text(encoding="ascii", errors="replace") == "h\ufffdllo"
        assert "SyncResponse" in repr(resp)


def test_json_checks_the_content_type_and_takes_loads(servers, sync):
    base = servers.serve(text_app('{"n": 1}'))
    with sync.get(base + "/") as resp:
        with pytest.raises(ClientResponseError, match="unexpected mimetype: text/plain"):
            resp.json()
        assert resp.json(content_type=None) == {"n": 1}
        assert resp.json(content_type=None, loads=lambda s: ("mine", s)) == ("mine", '{"n": 1}')


def test_a_response_read_without_with_is_released(servers, sync):
    base = servers.serve(text_app("plain"))
    resp = sync.get(base + "/")
    assert resp.text() == "plain"
    assert resp.closed
    assert pool_host(sync, base).get("active", 0) == 0
    resp = sync.get(base + "/")
    resp.close()
    assert resp.closed
    assert pool_host(sync, base).get("active", 0) == 0


def test_leaving_the_with_unread_releases(servers, sync):
    base = servers.serve(text_app("x" * 100_000))
    with sync.get(base + "/") as resp:
        assert resp.status == 200
    assert resp.closed
    assert pool_host(sync, base).get("active", 0) == 0
    with sync.get(base + "/") as again:
        assert again.read() == b"x" * 100_000


def test_iter_content_reads_chunk_by_chunk(servers, sync):
    half = 512 * 1024
    body = os.urandom(2 * half)
    rest = asyncio.Event()

    async def two_halves(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(body))})
        await resp.prepare(request)
        await resp.write(body[:half])
        await rest.wait()
        await resp.write(body[half:])
        return resp

    app = web.Application()
    app.router.add_get("/big", two_halves)
    base = servers.serve(app)
    with sync.get(base + "/big") as resp:
        chunks = resp.iter_content(chunk_size=65536)
        got = [next(chunks)]  # arrives while the server holds back the second half
        servers.call_soon(rest.set)
        got.extend(chunks)
    assert b"".join(got) == body
    assert all(0 < len(c) <= 65536 for c in got)
    assert len(got) >= 16
    with sync.get(base + "/big") as resp:  # a read body is handed out in chunks too
        resp.read()
        assert b"".join(resp.iter_content(300_000)) == body
    with pytest.raises(ValueError, match="chunk_size"):
        resp.iter_content(0)


def test_raise_for_status(servers, make_sync):
    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404, reason="Nope", text="gone")

    app = web.Application()
    app.router.add_get("/missing", missing)
    base = servers.serve(app)
    s = make_sync()
    with s.get(base + "/missing") as resp:
        assert not resp.ok
        with pytest.raises(ClientResponseError) as info:
            resp.raise_for_status()
        assert (info.value.status, info.value.message) == (404, "Nope")
        assert resp.text() == "gone"  # in the with: not released by raise_for_status
    resp = s.get(base + "/missing")
    with pytest.raises(ClientResponseError):
        resp.raise_for_status()
    assert resp.closed  # outside a with: released, as aiohttp
    strict = make_sync(raise_for_status=True)
    with pytest.raises(ClientResponseError) as info:
        strict.get(base + "/missing")
    assert info.value.status == 404
    assert pool_host(strict, base).get("active", 0) == 0


# -- redirects and cookies ------------------------------------------------------------------


def _chain_app() -> web.Application:
    async def chain(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n == 0:
            return web.Response(text="end of chain")
        raise web.HTTPFound(f"/chain/{n - 1}")

    app = web.Application()
    app.router.add_get("/chain/{n}", chain)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def test_redirects_and_history(servers, sync):
    base = servers.serve(_chain_app())
    with sync.get(base + "/chain/3") as resp:
        assert (resp.status, resp.text()) == (200, "end of chain")
        assert str(resp.url) == base + "/chain/0"
        assert all(isinstance(r, SyncResponse) for r in resp.history)
        assert [r.status for r in resp.history] == [302, 302, 302]
        assert [str(r.url) for r in resp.history] == [
            base + "/chain/3", base + "/chain/2", base + "/chain/1"
        ]
        assert [r.headers["Location"] for r in resp.history] == [
            "/chain/2", "/chain/1", "/chain/0"
        ]
    with sync.get(base + "/chain/1", allow_redirects=False) as resp:
        assert (resp.status, resp.headers["Location"], resp.history) == (302, "/chain/0", ())
    with pytest.raises(TooManyRedirects) as info:
        sync.get(base + "/chain/3", max_redirects=2)
    assert [r.url.path for r in info.value.history] == ["/chain/3", "/chain/2"]


def test_cookies_set_by_the_server_are_sent_back(servers, make_sync):
    base = servers.serve(cookie_app(), host="localhost")
    s = make_sync(cookies={"given": "0"})
    with s.get(base + "/set", params={"sid": "abc"}) as resp:
        assert isinstance(resp.cookies, SimpleCookie)
        assert {k: m.value for k, m in resp.cookies.items()} == {"sid": "abc"}
    with s.get(base + "/echo") as resp:
        assert resp.json()["cookies"] == {"given": "0", "sid": "abc"}
    assert {m.key for m in s.cookie_jar} == {"given", "sid"}
    url = URL(base + "/redirect").with_query(to="/echo", set=["hop=1"])
    with s.get(url, cookies={"once": "2"}) as resp:
        assert resp.json()["cookies"] == {"given": "0", "sid": "abc", "hop": "1", "once": "2"}
        (hop,) = resp.history
        assert {k: m.value for k, m in hop.cookies.items()} == {"hop": "1"}


# -- errors ---------------------------------------------------------------------------------


def test_bad_urls_raise_the_async_sessions_errors(sync):
    with pytest.raises(InvalidUrlClientError):
        sync.get("http://")
    with pytest.raises(NonHttpUrlClientError):
        sync.get("ftp://127.0.0.1/")
    with pytest.raises(ClientConnectorError):
        sync.get(f"http://127.0.0.1:{closed_port()}/")


def _never_app() -> tuple[web.Application, threading.Event, threading.Event]:
    """``/`` holds every request until its client goes away (``left`` is set then)."""
    arrived, left = threading.Event(), threading.Event()

    async def never(request: web.Request) -> web.Response:
        arrived.set()
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            left.set()
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/", never)
    return app, arrived, left


def test_timeouts_raise_the_async_sessions_exceptions(servers, sync):
    app, _, _ = _never_app()
    base = servers.serve(app)
    with pytest.raises(asyncio.TimeoutError) as total:
        sync.get(base + "/", timeout=ClientTimeout(total=0.2))
    assert not isinstance(total.value, ServerTimeoutError)  # aiohttp's is the plain one
    with pytest.raises(SocketTimeoutError):
        sync.get(base + "/", timeout=ClientTimeout(sock_read=0.2))
    fine = servers.serve(text_app("fine"))
    assert sync.get(fine + "/", timeout=5).text() == "fine"


def test_every_failure_is_the_async_sessions_own(servers, broker_address):
    """The same failing calls through ``ClientSession`` and ``SyncSession``: the same
    exception class and message each time."""
    never, _, _ = _never_app()
    slow = servers.serve(never)
    base = servers.serve(_chain_app())
    echo_url = base + "/echo"
    calls: list[tuple[str, dict[str, Any]]] = [
        ("http://", {}),
        ("ftp://127.0.0.1/", {}),
        (f"http://127.0.0.1:{closed_port()}/", {}),
        (slow + "/", {"timeout": ClientTimeout(total=0.1)}),
        (slow + "/", {"timeout": ClientTimeout(sock_read=0.1)}),
        (base + "/chain/3", {"max_redirects": 1}),
        (base + "/chain/x", {"raise_for_status": True}),  # the handler fails: a 500
        (echo_url, {"bogus": 1}),
        (echo_url, {"timeout": -1}),
        (echo_url, {"json": {}, "data": b"x"}),
    ]

    def outcome(exc: BaseException) -> tuple[type, str]:
        return type(exc), str(exc)

    async def async_outcomes() -> list[tuple[type, str]]:
        out = []
        async with ClientSession(broker=broker_address) as session:
            for url, kwargs in calls:
                with pytest.raises(Exception) as info:
                    await session.get(url, **kwargs)
                out.append(outcome(info.value))
        return out

    expected = asyncio.run(async_outcomes())
    got = []
    with SyncSession(broker=broker_address) as s:
        for url, kwargs in calls:
            with pytest.raises(Exception) as info:
                s.get(url, **kwargs)
            got.append(outcome(info.value))
    assert got == expected
    assert len({kind for kind, _ in got}) >= 8  # the calls fail in different ways
    for keywords in ({"timeout": 5}, {"bogus": 1}, {"max_line_size": -1}):
        with pytest.raises(Exception) as sync_error:
            SyncSession(**keywords)
        with pytest.raises(Exception) as async_error:
            ClientSession(**keywords)
        assert outcome(sync_error.value) == outcome(async_error.value)


# -- threads --------------------------------------------------------------------------------


def test_eight_threads_share_one_session_within_the_pool_limit(servers, make_sync):
    server, base = servers.counting_server(open_at=2)  # held until 2 are in flight
    s = make_sync(connector=TCPConnector(limit=2))

    def fifty(worker: int) -> list[tuple[int, str]]:
        out = []
        for _ in range(50):
            with s.get(base + "/", headers={"X-Worker": str(worker)}) as resp:
                out.append((resp.status, resp.text()))
        return out

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(fifty, range(8)))
    assert results == [[(200, "ok")] * 50] * 8
    counts = server.counts
    assert counts.requests == 400
    assert counts.workers == {str(w): 50 for w in range(8)}
    assert counts.max_open[server.ALL] == 2
    assert counts.max_inflight[server.ALL] == 2


def test_a_call_from_the_loops_own_thread_is_refused(servers, make_sync):
    base = servers.serve(text_app("fine"))
    trace = TraceConfig()
    # Sync calls made in the loop's thread (from a trace handler): each would wait on
    # itself.
    reentries = [lambda: s.close(), lambda: s.get(base + "/")]

    async def reenter(session: ClientSession, ctx: Any, params: Any) -> None:
        if reentries:
            reentries.pop()()

    trace.on_request_start.append(reenter)
    s = make_sync(trace_configs=[trace])
    for _ in range(2):
        with pytest.raises(RuntimeError, match="its own background loop's thread"):
            s.get(base + "/")
    assert not s.closed
    assert s.get(base + "/").text() == "fine"


def test_an_interrupt_while_waiting_cancels_the_request(servers, sync):
    app, arrived, left = _never_app()
    base = servers.serve(app)

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def interrupt_main_when_held() -> None:
        if arrived.wait(WAIT):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    assert threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        helper = threading.Thread(target=interrupt_main_when_held)
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            sync.get(base + "/")
        helper.join(WAIT)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert left.wait(WAIT)  # the request was cancelled on the loop: its connection closed
    assert pool_host(sync, base).get("active", 0) == 0
    fine = servers.serve(text_app("fine"))
    assert sync.get(fine + "/").text() == "fine"


def test_an_interrupt_before_the_wait_began_still_cancels_the_request(servers, monkeypatch):
    """The interrupt lands after the call was handed to the loop but before its caller
    had the future to cancel (a machine busy enough to hold the caller there): the call
    is cancelled on the loop all the same."""
    from worker_client import sync as sync_module

    monkeypatch.delenv("HTTP_BROKER", raising=False)
    app, arrived, left = _never_app()
    base = servers.serve(app)

    def interrupted(self: Any, fut: Any, discard: Any) -> Any:
        assert arrived.wait(WAIT)  # the request is at the server
        raise KeyboardInterrupt  # before the wait: fut is never cancelled here

    s = SyncSession()
    try:
        s.get(base + "/x404")  # the loop runs
        monkeypatch.setattr(sync_module._Loop, "wait", interrupted)
        with pytest.raises(KeyboardInterrupt):
            s.get(base + "/")
        assert left.wait(WAIT)  # cancelled on the loop: its connection closed
    finally:
        monkeypatch.undo()
        s.close()


def test_a_response_made_as_its_caller_gave_up_is_closed(servers, sync):
    """The race an interrupt cannot time: the caller cancels its wait while the request's
    last step is already queued on the loop, so the task ends with a response that the
    cancelled concurrent future drops. ``_Call`` closes it instead of leaking it."""
    from worker_client.sync import _Call, _own

    base = servers.serve(text_app("x" * 100_000))
    sync._run(lambda: asyncio.sleep(0))  # the loop runs (never on the wire path)
    loop = sync._loop.loop
    session = sync.session
    made: list[Any] = []
    last_step: list[asyncio.Future[None]] = []
    ready, finishing, cancelled = threading.Event(), threading.Event(), threading.Event()

    async def request() -> Any:
        resp = await session.get(base + "/")
        made.append(resp)
        last_step.append(loop.create_future())
        ready.set()
        await last_step[0]
        return resp

    def finish_then_hold_the_loop_until_cancelled() -> None:
        last_step[0].set_result(None)  # the task's last step is queued now
        finishing.set()
        cancelled.wait(WAIT)  # the cancel lands behind that step

    call = _Call(lambda resp: resp.close())
    fut = asyncio.run_coroutine_threadsafe(_own(request, call), loop)
    call.future = fut
    assert ready.wait(WAIT)
    loop.call_soon_threadsafe(finish_then_hold_the_loop_until_cancelled)
    assert finishing.wait(WAIT)
    assert fut.cancel()
    cancelled.set()
    sync._run(lambda: asyncio.sleep(0))  # a round trip: the task's callbacks have run
    (resp,) = made
    assert resp.closed
    assert pool_host(sync, base).get("active", 0) == 0


# -- close, garbage, fork -------------------------------------------------------------------


def _loop_thread(s: SyncSession, mode: str) -> threading.Thread | None:
    """The session's loop thread, alive; None on the wire path, which starts none."""
    if mode == "broker-wire":
        assert s._loop is None
        assert "http-broker-sync" not in {t.name for t in threading.enumerate()}
        return None
    thread = s._loop.thread
    assert thread.daemon and thread.is_alive()
    return thread


def test_close_stops_the_thread_and_later_calls_fail_as_aiohttp(servers, broker_address, mode):
    async def stalls(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100"})
        await resp.prepare(request)
        await resp.write(b"abc")
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")

    app = text_app("fine")
    app.router.add_get("/stalls", stalls)
    base = servers.serve(app)
    with SyncSession(broker=broker_address) as s:
        unread = s.get(base + "/stalls")
        read = s.get(base + "/")
        assert read.read() == b"fine"
        missing = s.get(base + "/missing")
        missing.read()
        thread = _loop_thread(s, mode)
        assert not s.closed
    assert s.closed and (thread is None or not thread.is_alive())
    with pytest.raises(RuntimeError, match="Session is closed"):
        s.get(base + "/")
    s.close()  # again: nothing
    # The responses, as the async session leaves them: a read body stays readable...
    assert (read.text(), read.read()) == ("fine", b"fine")
    with pytest.raises(ClientResponseError) as info:
        missing.raise_for_status()
    assert info.value.status == 404
    # ...one whose body had not all come lost its connection; letting go of it is a no-op
    with pytest.raises(ClientConnectionError, match="Connection closed"):
        unread.read()
    with pytest.raises(ClientConnectionError, match="Connection closed"):
        list(unread.iter_content())
    unread.close()
    with unread:
        pass


def test_close_fails_the_requests_other_threads_wait_for(servers, broker_address):
    app, arrived, _ = _never_app()
    base = servers.serve(app)
    s = SyncSession(broker=broker_address)
    errors: list[BaseException] = []

    def waits() -> None:
        try:
            s.get(base + "/")
        except BaseException as exc:  # noqa: BLE001 (recorded for the assert)
            errors.append(exc)

    waiter = threading.Thread(target=waits)
    waiter.start()
    assert arrived.wait(WAIT)
    s.close()
    waiter.join(WAIT)
    assert not waiter.is_alive()
    (error,) = errors
    # what the async session's close does to a request in flight
    assert type(error) is ClientConnectionError and str(error) == "Connection closed"


def _request_until_closed(s: SyncSession, url: str, outcomes: list[str]) -> None:
    """Request ``url`` again and again; record each failure, return at the first
    ``RuntimeError`` (the session is closed)."""
    while True:
        try:
            with s.get(url) as resp:
                assert resp.text() == "ok"
        except RuntimeError as exc:
            outcomes.append(str(exc))
            return
        except ClientConnectionError as exc:
            outcomes.append(str(exc))


def test_close_under_load_ends_every_threads_call_cleanly(servers, broker_address):
    """Closing while 8 threads keep requesting: each call gives its response or the
    async session's errors for a closed session, and no thread is left waiting."""
    server, base = servers.counting_server()
    for _ in range(3):
        s = SyncSession(broker=broker_address)
        outcomes: list[str] = []
        threads = [
            threading.Thread(target=_request_until_closed, args=(s, base + "/", outcomes))
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        seen = server.counts.requests
        servers.run(lambda seen=seen: server.arrived(seen + 40))
        s.close()
        for thread in threads:
            thread.join(WAIT)
        assert not any(thread.is_alive() for thread in threads)
        assert set(outcomes) <= {"Session is closed", "Connection closed"}
        assert outcomes.count("Session is closed") == 8


def test_an_unused_session_closes_with_its_connector():
    connector = TCPConnector()
    s = SyncSession(connector=connector)
    s.close()  # the async close, which waits for nothing: no loop thread is started for it
    assert s.closed and connector.closed
    assert s._loop is None
    with pytest.raises(RuntimeError, match="Session is closed"):
        s.get("http://127.0.0.1:1/")


def test_an_unclosed_session_warns_and_its_thread_ends(servers, broker_address, mode):
    base = servers.serve(text_app("fine"))
    s = SyncSession(broker=broker_address)
    assert s.get(base + "/").text() == "fine"
    thread = _loop_thread(s, mode)
    socks = [conn.sock for conn in s._wire._conns] if thread is None else []
    with pytest.warns(ResourceWarning, match="Unclosed sync session"):
        del s
        gc.collect()
    if thread is not None:
        thread.join(WAIT)
        assert not thread.is_alive()
    else:  # the wire path's connection is closed
        assert [sock.fileno() for sock in socks] == [-1]


def test_an_unclosed_session_does_not_keep_the_process_alive(servers, broker_address):
    base = servers.serve(text_app("fine"))
    script = (
        "import sys, warnings\n"
        "warnings.simplefilter('ignore', ResourceWarning)\n"
        "from worker_client import SyncSession\n"
        "s = SyncSession(broker=sys.argv[2] or None)\n"
        "print(s.get(sys.argv[1]).text())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, base + "/", broker_address or ""],
        capture_output=True, text=True, timeout=30,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "fine\n", "")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_session_used_before_a_fork_fails_clearly_in_the_child(servers, sync, mode):
    base = servers.serve(text_app("fine"))
    assert sync.get(base + "/").text() == "fine"
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12: fork with threads
        pid = os.fork()
    if pid == 0:  # the child: report what a call does, and leave at once
        try:
            sync.get(base + "/")
            said = "no error"
        except RuntimeError as exc:
            said = str(exc)
        except BaseException as exc:  # noqa: BLE001
            said = repr(exc)
        os.write(write_end, said.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as child:
        said = child.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    if mode == "broker-wire":  # the child makes a connection of its own
        assert said == "no error"
    else:
        assert "forked child" in said and "make a SyncSession per process" in said
    assert sync.get(base + "/").text() == "fine"  # the parent's goes on
