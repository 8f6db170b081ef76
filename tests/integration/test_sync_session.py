"""``SyncSession`` (worker_client/sync.py) in both modes, against real servers.

The tests are plain functions, as a WSGI worker's code is: the aiohttp.web servers run on
a loop of their own in a background thread (``ServerThread``). A representative set of
the async session's request and response tests, redone through the sync API, then what is
the sync API's own: threads, its loop thread, interrupts, close, fork.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from http.cookies import SimpleCookie
from typing import Any, TypeVar

import pytest
from aiohttp import web
from yarl import URL

from tests.integration.apps import closed_port, echo, echo_app, header, text_app
from tests.integration.counting_server import CountingServer
from tests.integration.test_session_cookies import cookie_app
from worker_client import (
    ClientConnectorError,
    ClientResponseError,
    ClientTimeout,
    InvalidUrlClientError,
    NonHttpUrlClientError,
    ServerTimeoutError,
    SocketTimeoutError,
    SyncResponse,
    SyncSession,
    TooManyRedirects,
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
    """The engine's figures for ``base``'s host in the session's pool."""
    (pool,) = [p for p in s.stats().pools if base in p["hosts"]]
    return dict(pool["hosts"][base])


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
    assert pool_host(sync, base)["active"] == 0
    resp = sync.get(base + "/")
    resp.close()
    assert resp.closed
    assert pool_host(sync, base)["active"] == 0


def test_leaving_the_with_unread_releases(servers, sync):
    base = servers.serve(text_app("x" * 100_000))
    with sync.get(base + "/") as resp:
        assert resp.status == 200
    assert resp.closed
    assert pool_host(sync, base)["active"] == 0
    with sync.get(base + "/") as again:
        assert again.read() == b"x" * 100_000


def test_iter_content_reads_chunk_by_chunk(servers, sync):
    half = 512 * 1024
    body = os.urandom(2 * half)
    rest = asyncio.Event()
    held = threading.Event()

    async def two_halves(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(body))})
        await resp.prepare(request)
        await resp.write(body[:half])
        held.set()
        await rest.wait()
        await resp.write(body[half:])
        return resp

    app = web.Application()
    app.router.add_get("/big", two_halves)
    base = servers.serve(app)
    with sync.get(base + "/big") as resp:
        chunks = resp.iter_content(chunk_size=65536)
        got = [next(chunks)]  # arrives while the server still holds the second half
        assert held.is_set() and not rest.is_set()
        servers.call_soon(rest.set)
        got.extend(chunks)
    assert b"".join(got) == body
    assert all(0 < len(c) <= 65536 for c in got)
    assert len(got) >= 16
    with sync.get(base + "/big") as resp:  # a read body is handed out in chunks too
        servers.call_soon(rest.set)
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
    assert pool_host(strict, base)["active"] == 0


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
