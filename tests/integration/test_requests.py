"""Request-level behaviour: URL, headers, auth, methods, keep-alive, errors, timeouts."""

from __future__ import annotations

import asyncio
import errno
import gc
import sys
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from tests.conftest import read_request_head
from tests.integration.apps import (
    UNRESOLVABLE_HOST,
    Answering,
    closed_port,
    counting_app,
    echo_app,
    header,
    headers_named,
    text_app,
)
from worker_client import (
    BasicAuth,
    ClientConnectionError,
    ClientConnectorDNSError,
    ClientConnectorError,
    ClientResponseError,
    ClientTimeout,
    InvalidUrlClientError,
    NonHttpUrlClientError,
    ServerTimeoutError,
    SocketTimeoutError,
    encode_basic_auth,
)

# -- URL ------------------------------------------------------------------------------


async def test_params_dict_are_added_to_the_query(serve_app, session):
    base = await serve_app(echo_app())
    async with session.get(base + "/p?a=0", params={"b": "1", "c": "x y"}) as resp:
        got = await resp.json()
    assert got["query"] == [["a", "0"], ["b", "1"], ["c", "x y"]]
    assert resp.url.query == {"a": "0", "b": "1", "c": "x y"}


async def test_params_pairs_keep_repeated_keys(serve_app, session):
    base = await serve_app(echo_app())
    async with session.get(base + "/p", params=[("k", "1"), ("k", "2")]) as resp:
        got = await resp.json()
    assert got["query"] == [["k", "1"], ["k", "2"]]


async def test_base_url_joins_relative_urls(serve_app, make_session):
    base = await serve_app(echo_app())
    session = make_session(base_url=base + "/api/")
    async with session.get("items", params={"q": "1"}) as resp:
        got = await resp.json()
    assert got["path"] == "/api/items"
    assert got["query_string"] == "q=1"
    assert str(resp.url) == base + "/api/items?q=1"
    async with session.get("/root") as resp:  # RFC 3986 join, as aiohttp 3.14
        assert (await resp.json())["path"] == "/root"


async def test_fragment_is_not_sent(serve_app, session):
    base = await serve_app(echo_app())
    async with session.get(base + "/f#frag") as resp:
        got = await resp.json()
    assert got["path"] == "/f"
    assert resp.url.fragment == ""


# -- auth -----------------------------------------------------------------------------


AUTH_DEPRECATED = "The 'auth' parameter is deprecated and will be removed in v4"


async def test_basic_auth_argument(serve_app, session):
    base = await serve_app(echo_app())
    with pytest.warns(DeprecationWarning, match=AUTH_DEPRECATED):  # aiohttp 3.14's word
        resp = await session.get(base + "/", auth=BasicAuth("user", "pass"))
    async with resp:
        got = await resp.json()
    assert header(got, "Authorization") == "Basic dXNlcjpwYXNz"


async def test_what_aiohttp_suggests_instead_of_auth(serve_app, session):
    base = await serve_app(echo_app())
    value = encode_basic_auth("user", "pass")
    async with session.get(base + "/", headers={"Authorization": value}) as resp:
        got = await resp.json()
    assert header(got, "Authorization") == "Basic dXNlcjpwYXNz" == value


async def test_credentials_in_the_url(serve_app, session):
    base = await serve_app(echo_app())
    url = base.replace("http://", "http://user:p%40ss@") + "/secret"
    async with session.get(url) as resp:
        got = await resp.json()
    assert header(got, "Authorization") == BasicAuth("user", "p@ss").encode()
    assert got["path"] == "/secret"
    assert resp.url.user is None and resp.url.password is None


async def test_session_auth_applies_and_request_auth_wins(serve_app, make_session):
    base = await serve_app(echo_app())
    with pytest.warns(DeprecationWarning, match=AUTH_DEPRECATED):
        session = make_session(auth=BasicAuth("s", "1"))
    async with session.get(base + "/") as resp:
        assert header(await resp.json(), "Authorization") == BasicAuth("s", "1").encode()
    with pytest.warns(DeprecationWarning, match=AUTH_DEPRECATED):
        resp = await session.get(base + "/", auth=BasicAuth("r", "2"))
    async with resp:
        assert header(await resp.json(), "Authorization") == BasicAuth("r", "2").encode()


async def test_auth_argument_and_url_credentials_conflict(serve_app, session):
    base = await serve_app(echo_app())
    with pytest.raises(ValueError), pytest.warns(DeprecationWarning, match=AUTH_DEPRECATED):
        await session.get(base.replace("http://", "http://u:p@"), auth=BasicAuth("a", "b"))


# -- headers --------------------------------------------------------------------------


async def test_default_auto_headers(serve_app, session):
    base = await serve_app(echo_app())
    async with session.get(base + "/") as resp:
        got = await resp.json()
    assert header(got, "User-Agent").startswith("Python/3.")
    assert header(got, "Accept") == "*/*"
    encodings = {e.strip() for e in header(got, "Accept-Encoding").split(",")}
    assert {"gzip", "deflate"} <= encodings
    assert header(got, "Host") == base.removeprefix("http://")
    # A GET without a body announces none.
    assert header(got, "Content-Length") is None
    assert header(got, "Transfer-Encoding") is None


async def test_skip_auto_headers_per_request_and_per_session(serve_app, make_session):
    base = await serve_app(echo_app())
    session = make_session(skip_auto_headers=["User-Agent"])
    async with session.get(base + "/") as resp:
        got = await resp.json()
    assert header(got, "User-Agent") is None
    assert header(got, "Accept") == "*/*"
    async with session.get(base + "/", skip_auto_headers=["Accept-Encoding"]) as resp:
        got = await resp.json()
    assert header(got, "User-Agent") is None
    assert header(got, "Accept-Encoding") is None
    # An explicit header is sent even if its auto version is skipped.
    async with session.get(base + "/", headers={"User-Agent": "mine/1"}) as resp:
        assert header(await resp.json(), "User-Agent") == "mine/1"


async def test_session_headers_merge_with_request_headers(serve_app, make_session):
    base = await serve_app(echo_app())
    session = make_session(headers={"X-Session": "s", "X-Both": "session"})
    async with session.get(base + "/", headers={"x-both": "request", "X-Req": "r"}) as resp:
        got = await resp.json()
    assert header(got, "X-Session") == "s"
    assert headers_named(got, "X-Both") == ["request"]
    assert header(got, "X-Req") == "r"


async def test_repeated_request_headers_are_all_sent(serve_app, session):
    base = await serve_app(echo_app())
    async with session.get(base + "/", headers=[("X-Multi", "1"), ("X-Multi", "2")]) as resp:
        got = await resp.json()
    assert headers_named(got, "X-Multi") == ["1", "2"]


@pytest.mark.parametrize(
    "headers",
    [{"X-A": "a\r\nX-Injected: b"}, {"X-A": "a\nb"}, {"X-A\r\nX-B": "x"}],
    ids=["crlf-value", "lf-value", "crlf-name"],
)
async def test_header_injection_is_rejected_before_sending(raw_server, session, headers):
    server = Answering()
    base = await raw_server(server)
    with pytest.raises(ValueError):
        await session.get(base + "/", headers=headers)
    async with session.get(base + "/after") as resp:  # what was sent before comes first
        assert resp.status == 200
    assert len(server.heads) == 1 and server.heads[0].startswith(b"GET /after ")


# -- methods and bodiless responses -------------------------------------------------------


@pytest.mark.parametrize("verb", ["get", "post", "put", "patch", "delete", "options"])
async def test_verb_methods(serve_app, session, verb):
    base = await serve_app(echo_app())
    async with getattr(session, verb)(base + "/v") as resp:
        got = await resp.json()
    assert got["method"] == verb.upper()
    assert resp.method == verb.upper()


async def test_request_with_custom_method(serve_app, session):
    base = await serve_app(echo_app())
    async with session.request("PROPFIND", base + "/") as resp:
        assert (await resp.json())["method"] == "PROPFIND"


async def test_invalid_method_is_rejected(session):
    with pytest.raises(ValueError):
        await session.request("GE T", "http://127.0.0.1:1/")


async def test_head_has_no_body_and_the_connection_is_reused(serve_app, session):
    app, ports = counting_app()

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1000)

    app.router.add_get("/", page)  # also answers HEAD, with Content-Length: 1000
    base = await serve_app(app)
    async with session.head(base + "/") as resp:
        assert resp.status == 200
        assert resp.method == "HEAD"
        assert resp.headers["Content-Length"] == "1000"
        assert await resp.read() == b""
    async with session.get(base + "/") as resp:
        assert await resp.read() == b"x" * 1000
    assert len(ports) == 2
    assert len(set(ports)) == 1, "HEAD then GET should use one connection"


async def test_head_does_not_follow_redirects_by_default(serve_app, session):
    app = web.Application()

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    app.router.add_get("/", moved)
    base = await serve_app(app)
    async with session.head(base + "/") as resp:
        assert resp.status == 302
        assert resp.history == ()


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_status_then_reuse(serve_app, session, status):
    app, ports = counting_app()

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"ETag": '"v1"'})

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="after")

    app.router.add_get("/empty", empty)
    app.router.add_get("/page", page)
    base = await serve_app(app)
    async with session.get(base + "/empty") as resp:
        assert resp.status == status
        assert await resp.read() == b""
        assert resp.content.at_eof()
    async with session.get(base + "/page") as resp:
        assert await resp.text() == "after"
    assert len(set(ports)) == 1


# -- keep-alive --------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(serve_app, session):
    app, ports = counting_app()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=request.path)

    app.router.add_get("/{n}", page)
    base = await serve_app(app)
    for n in range(5):
        async with session.get(f"{base}/{n}") as resp:
            assert await resp.text() == f"/{n}"
    assert len(ports) == 5
    assert len(set(ports)) == 1


async def test_the_figures_count_every_request(serve_app, session):
    """``stats().requests`` counts the requests on a kept-alive connection too (the
    fast path's), a redirect's hops once, as docs/operations.md says."""
    app, _ = counting_app()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=request.path)

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/0")

    app.router.add_get("/r", moved)
    app.router.add_get("/{n}", page)
    base = await serve_app(app)
    before = (await session.stats()).requests
    for n in range(3):
        async with session.get(f"{base}/{n}") as resp:
            assert await resp.text() == f"/{n}"
    async with session.get(f"{base}/r") as resp:
        assert await resp.text() == "/0"
    assert (await session.stats()).requests - before == 4


async def test_concurrent_requests_each_get_an_answer(serve_app, session):
    app, ports = counting_app()
    all_in = asyncio.Event()

    async def page(request: web.Request) -> web.Response:
        if len(ports) == 10:
            all_in.set()
        await all_in.wait()  # no answer until all ten are in flight at once
        return web.Response(text=request.path)

    app.router.add_get("/{n}", page)
    base = await serve_app(app)

    async def one(n: int) -> str:
        async with session.get(f"{base}/{n}") as resp:
            return await resp.text()

    answers = await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(10))), 10)
    assert answers == [f"/{n}" for n in range(10)]
    assert len(set(ports)) == 10  # one connection each



async def cyclic_garbage(run: Callable[[], Awaitable[None]], times: int) -> list[str]:
    """The kinds of object that ``times`` runs of ``run`` leave to the cyclic collector
    (none: reference counting alone freed everything)."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(times):
            await run()
        gc.collect()
        return sorted({type(o).__qualname__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_a_finished_request_leaves_no_cyclic_garbage(serve_app, session):
    """Reference counting alone frees a request that was read to its end: nothing is
    left for the cyclic collector (a handle and its reader pointing at each other was)."""
    base = await serve_app(text_app("hello"))

    async def both_styles() -> None:
        resp = await session.get(base + "/")
        assert await resp.read() == b"hello"
        async with session.get(base + "/") as resp:
            assert await resp.text() == "hello"

    await both_styles()  # the first connection and anything made once
    assert await cyclic_garbage(both_styles, 5) == []


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="on 3.10 asyncio's Future.result() re-raises with a traceback that holds the "
    "future (a cycle asyncio itself makes; 3.11 keeps the traceback apart)",
)
async def test_a_failed_request_leaves_no_cyclic_garbage_in_the_worker(broker_process):
    """The error path too (through a broker, so that only the worker's objects are
    counted): the exception's traceback must not hold the stream that holds it."""
    from worker_client import ClientSession

    refused = f"http://127.0.0.1:{closed_port()}/"
    async with ClientSession(broker=broker_process.socket_path) as session:

        async def fail() -> None:
            with pytest.raises(ClientConnectorError):
                await session.get(refused)

        await fail()
        assert await cyclic_garbage(fail, 3) == []

# -- calling styles ---------------------------------------------------------------------


async def test_await_style_and_context_manager_style(serve_app, session):
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="body")

    app.router.add_get("/", page)
    base = await serve_app(app)

    resp = await session.get(base + "/")
    assert resp.status == 200
    assert await resp.text() == "body"
    resp.release()

    async with session.get(base + "/") as resp2:
        assert resp2.status == 200
        assert await resp2.text() == "body"
    assert resp2.closed

    async with await session.get(base + "/") as resp3:  # a response is a context manager too
        assert await resp3.read() == b"body"


# -- raise_for_status ---------------------------------------------------------------------


def _not_found_app() -> web.Application:
    app = web.Application()

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404, text="nope", headers={"X-Why": "gone"})

    async def fine(request: web.Request) -> web.Response:
        return web.Response(text="fine")

    app.router.add_get("/missing", missing)
    app.router.add_get("/fine", fine)
    return app


async def test_raise_for_status_on_the_session(serve_app, make_session):
    base = await serve_app(_not_found_app())
    session = make_session(raise_for_status=True)
    with pytest.raises(ClientResponseError) as info:
        await session.get(base + "/missing")
    exc = info.value
    assert exc.status == 404
    assert exc.message == "Not Found"
    assert exc.headers["X-Why"] == "gone"
    assert exc.request_info.method == "GET"
    assert str(exc.request_info.url) == base + "/missing"
    assert exc.history == ()
    # per request False wins over the session's True
    async with session.get(base + "/missing", raise_for_status=False) as resp:
        assert resp.status == 404
        assert await resp.text() == "nope"
    async with session.get(base + "/fine") as resp:
        assert await resp.text() == "fine"


async def test_raise_for_status_per_request(serve_app, session):
    base = await serve_app(_not_found_app())
    async with session.get(base + "/missing") as resp:
        assert resp.status == 404
        assert not resp.ok
        with pytest.raises(ClientResponseError) as info:
            resp.raise_for_status()
        assert info.value.status == 404
    with pytest.raises(ClientResponseError) as info:
        async with session.get(base + "/missing", raise_for_status=True):
            pytest.fail("the body should not be reached")
    assert info.value.status == 404
    assert info.value.request_info.url.path == "/missing"


async def test_raise_for_status_callable(serve_app, make_session):
    base = await serve_app(_not_found_app())
    seen: list[int] = []

    async def check(resp) -> None:
        seen.append(resp.status)
        if resp.status >= 400:
            raise RuntimeError(f"bad {resp.status}")

    session = make_session(raise_for_status=check)
    with pytest.raises(RuntimeError, match="bad 404"):
        await session.get(base + "/missing")
    async with session.get(base + "/fine") as resp:
        assert await resp.text() == "fine"
    assert seen == [404, 200]


# -- timeouts ------------------------------------------------------------------------------


async def _silent(reader, writer):
    await read_request_head(reader)
    await reader.read()  # never answer; return when the client goes away


async def test_sock_read_timeout_before_the_head(raw_server, session):
    base = await raw_server(_silent)
    started = time.monotonic()
    with pytest.raises(SocketTimeoutError) as info:
        await session.get(base + "/", timeout=ClientTimeout(sock_read=0.2))
    assert isinstance(info.value, ServerTimeoutError)
    assert isinstance(info.value, asyncio.TimeoutError)
    assert 0.15 < time.monotonic() - started < 1.5


async def test_sock_read_timeout_in_the_body(raw_server, session):
    async def stalls(reader, writer):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        await reader.read()

    base = await raw_server(stalls)
    resp = await session.get(base + "/", timeout=ClientTimeout(sock_read=0.2))
    assert resp.status == 200
    with pytest.raises(SocketTimeoutError):
        await resp.read()


async def test_session_timeout_is_used(raw_server, make_session):
    base = await raw_server(_silent)
    session = make_session(timeout=ClientTimeout(sock_read=0.2))
    with pytest.raises(SocketTimeoutError):
        await session.get(base + "/")


async def test_total_timeout(raw_server, session):
    base = await raw_server(_silent)
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError) as info:
        await session.get(base + "/", timeout=ClientTimeout(total=0.2))
    assert 0.15 < time.monotonic() - started < 1.5
    assert not isinstance(info.value, ServerTimeoutError)  # aiohttp's is the plain one


async def test_total_timeout_while_reading_the_body(raw_server, session):
    async def trickles(reader, writer):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):  # bytes keep coming (the behaviour under test), too slowly
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.02)

    base = await raw_server(trickles)
    resp = await session.get(base + "/", timeout=ClientTimeout(total=0.3, sock_read=1))
    with pytest.raises(asyncio.TimeoutError):
        await resp.read()



async def test_a_number_is_the_total_timeout_as_in_aiohttp(raw_server, serve_app, session):
    base = await raw_server(_silent)
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError) as info:
        await session.get(base + "/", timeout=0.2)
    assert 0.15 < time.monotonic() - started < 1.5
    assert not isinstance(info.value, ServerTimeoutError)  # the total, not sock_read
    fine = await serve_app(text_app("fine"))
    async with session.get(fine + "/", timeout=5) as resp:
        assert await resp.text() == "fine"


async def test_a_request_timeout_of_none_means_no_timeout_not_the_sessions(
    serve_app, make_session
):
    """aiohttp 3.14 reads a request's ``timeout=None`` as ``ClientTimeout(total=None)``."""
    app = web.Application()

    async def late(request: web.Request) -> web.Response:
        answer = asyncio.Event()
        asyncio.get_running_loop().call_later(0.4, answer.set)
        await answer.wait()
        return web.Response(text="late")

    app.router.add_get("/", late)
    base = await serve_app(app)
    session = make_session(timeout=ClientTimeout(total=0.1, sock_read=0.1))
    async with session.get(base + "/", timeout=None) as resp:
        assert await resp.text() == "late"


async def test_a_bad_timeout_is_a_clear_error_that_leaves_nothing(make_session, caplog):
    session = make_session()
    for bad in ("5", True, [5]):
        with pytest.raises(TypeError, match="a ClientTimeout or a number of seconds"):
            await session.get("http://127.0.0.1:1/", timeout=bad)
    with pytest.raises(ValueError, match="must be None or >= 0"):
        await session.get("http://127.0.0.1:1/", timeout=-1)
    assert (await session.stats()).streams == 0
    await session.close()
    gc.collect()
    assert "never retrieved" not in caplog.text


async def test_a_bad_timeout_on_a_kept_alive_connection_sends_nothing(raw_server, session):
    """Refused before a byte is sent, also when an idle connection is there to take
    (the fast path's case): the connection stays idle for the next request."""
    heads: list[bytes] = []
    connections: list[int] = []

    async def handler(reader, writer):
        connections.append(1)
        while True:
            heads.append(await read_request_head(reader))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    base = await raw_server(handler)
    assert await (await session.get(base + "/")).read() == b"ok"
    for bad in ("5", True, [5]):
        with pytest.raises(TypeError, match="a ClientTimeout or a number of seconds"):
            await session.get(base + "/bad", timeout=bad)
    with pytest.raises(ValueError, match="must be None or >= 0"):
        await session.get(base + "/bad", timeout=-1)
    assert await (await session.get(base + "/")).read() == b"ok"
    assert [h.split(b" ")[1] for h in heads] == [b"/", b"/"]
    assert len(connections) == 1


async def test_the_session_timeout_must_be_a_client_timeout_as_in_aiohttp():
    import aiohttp

    from worker_client import ClientSession

    with pytest.raises(ValueError, match="please use 'timeout=ClientTimeout") as ours:
        ClientSession(timeout=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as theirs:
        aiohttp.ClientSession(timeout=5)  # type: ignore[arg-type]
    assert str(ours.value) == str(theirs.value)

async def test_timeouts_leave_the_session_usable(raw_server, serve_app, session):
    slow = await raw_server(_silent)
    with pytest.raises(asyncio.TimeoutError):
        await session.get(slow + "/", timeout=ClientTimeout(sock_read=0.1))
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", page)
    base = await serve_app(app)
    async with session.get(base + "/") as resp:
        assert await resp.text() == "ok"


# -- connection errors ------------------------------------------------------------------


async def test_connection_refused(session):
    port = closed_port()
    with pytest.raises(ClientConnectorError) as info:
        await session.get(f"http://127.0.0.1:{port}/")
    exc = info.value
    assert not isinstance(exc, ClientConnectorDNSError)
    assert isinstance(exc, OSError)
    assert exc.host == "127.0.0.1"
    assert exc.port == port
    assert exc.os_error.errno == errno.ECONNREFUSED


async def test_unresolvable_host(session):
    with pytest.raises(ClientConnectorDNSError) as info:
        await session.get(f"http://{UNRESOLVABLE_HOST}:8080/")
    assert info.value.host == UNRESOLVABLE_HOST
    assert info.value.port == 8080


@pytest.mark.parametrize(
    "url", ["http://", "http:///path", "/relative", "http://127.0.0.1:80:x/", "http://[::1/"]
)
async def test_invalid_url(session, url):
    with pytest.raises(InvalidUrlClientError) as info:
        await session.get(url)
    assert isinstance(info.value, ValueError)


async def test_invalid_url_sends_nothing(raw_server, session):
    server = Answering()
    base = await raw_server(server)
    port = base.rsplit(":", 1)[1]
    with pytest.raises(InvalidUrlClientError):
        await session.get(f"http://127.0.0.1:{port}:bad/")
    async with session.get(base + "/after") as resp:  # what was sent before comes first
        assert resp.status == 200
    assert server.connections == 1 and len(server.heads) == 1


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/file", "file:///etc/passwd", "ws://x/"])
async def test_non_http_url(session, url):
    with pytest.raises(NonHttpUrlClientError):
        await session.get(url)


# -- session lifecycle ----------------------------------------------------------------------


async def test_closed_session_raises_runtime_error(make_session):
    session = make_session()
    await session.close()
    assert session.closed
    with pytest.raises(RuntimeError):
        await session.get("http://127.0.0.1:1/")
    await session.close()  # idempotent


async def test_close_with_an_unread_response(serve_app, make_session):
    app = web.Application()
    upstream_gone = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 1 << 40
        await resp.prepare(request)
        try:
            while True:  # held by flow control; stops when the client goes away
                await resp.write(b"x" * 65536)
        except ConnectionError:
            upstream_gone.set()
        return resp

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/endless", endless)
    app.router.add_get("/page", page)
    base = await serve_app(app)
    session = make_session()
    resp = await session.get(base + "/endless")
    assert resp.status == 200
    await resp.content.readexactly(10)
    started = time.monotonic()
    await session.close()
    assert time.monotonic() - started < 0.5
    with pytest.raises(ClientConnectionError):
        await asyncio.wait_for(resp.read(), 2)  # fails at once, never hangs
    await asyncio.wait_for(upstream_gone.wait(), 2)  # the upstream connection was dropped
    del resp
    gc.collect()  # a ResourceWarning would surface here as an error

    # Other sessions are not disturbed.
    other = make_session()
    async with other.get(base + "/page") as resp2:
        assert await resp2.text() == "ok"


async def test_session_as_context_manager(serve_app, broker_address):
    from worker_client import ClientSession

    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", page)
    base = await serve_app(app)
    async with ClientSession(broker=broker_address) as session:
        async with session.get(base + "/") as resp:
            assert await resp.text() == "ok"
        unread = await session.get(base + "/")
    assert session.closed
    del unread
    gc.collect()


async def test_unknown_and_unsupported_request_arguments_are_refused(session):
    """Nothing is silently ignored: a typo is a TypeError."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'parmas'"):
        await session.get("http://127.0.0.1:1/", parmas={"a": 1})


async def test_aiohttp_defaults_passed_explicitly_are_accepted(serve_app, session):
    from aiohttp import web

    app = web.Application()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", ok)
    base = await serve_app(app)
    async with session.get(
        base + "/", proxy=None, ssl=True, cookies=None, trace_request_ctx=None, compress=None
    ) as resp:
        assert await resp.text() == "ok"


async def test_closing_the_session_fails_a_request_waiting_for_its_head(
    make_session, raw_server
):
    """In embedded mode the head phase runs in the caller's task; stopping it must still
    reach the caller as the session's error, and leave its task usable."""
    arrived = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await reader.read()  # no answer, until the client goes

    base = await raw_server(handler)
    session = make_session()

    async def caller() -> str:
        try:
            await session.get(base + "/")
        except ClientConnectionError as exc:
            await asyncio.sleep(0)  # a probe: raises if the task was left cancelled
            return f"{type(exc).__name__}: {exc}"
        return "no error"

    task = asyncio.ensure_future(caller())
    await asyncio.wait_for(arrived.wait(), 5)
    await session.close()
    assert await asyncio.wait_for(task, 5) == "ClientConnectionError: Connection closed"


async def test_total_timeout_while_waiting_for_the_head_leaves_the_task_usable(
    make_session, raw_server
):
    base = await raw_server(_silent)
    session = make_session()
    with pytest.raises(asyncio.TimeoutError):
        await session.get(base + "/", timeout=ClientTimeout(total=0.2))
    await asyncio.sleep(0)  # a probe: raises if the task was left cancelled
    current = asyncio.current_task()
    assert current is not None
    if sys.version_info >= (3, 11):  # Task.cancelling() is new in 3.11
        assert not current.cancelling()


async def test_a_real_cancel_of_the_caller_stays_a_cancel(make_session, raw_server):
    arrived = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await reader.read()  # no answer, until the client goes

    base = await raw_server(handler)
    session = make_session()
    task = asyncio.ensure_future(session.get(base + "/"))
    await asyncio.wait_for(arrived.wait(), 5)  # the request waits for its head
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = await session.stats()
    assert stats.streams == 0


async def test_concurrent_stats_calls_each_get_an_answer(session):
    pid = (await session.stats()).pid  # connected: what follows is only the two calls
    first, second = await asyncio.wait_for(
        asyncio.gather(session.stats(), session.stats()), 10
    )
    assert first.pid == second.pid == pid
    # A caller that gives up leaves the answers of the others in order.
    gone = asyncio.ensure_future(session.stats())
    await asyncio.sleep(0)
    gone.cancel()
    answers = await asyncio.wait_for(asyncio.gather(*(session.stats() for _ in range(3))), 10)
    assert [a.pid for a in answers] == [first.pid] * 3
    (outcome,) = await asyncio.gather(gone, return_exceptions=True)
    # Embedded figures come without a wait: that call may have finished first.
    assert isinstance(outcome, asyncio.CancelledError) or outcome.pid == first.pid
