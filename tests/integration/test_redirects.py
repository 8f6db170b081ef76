"""Redirects followed in the broker: history, method rewriting, limits, origins."""

from __future__ import annotations

import pytest
from aiohttp import web

from tests.integration.apps import echo, header
from worker_client import (
    BasicAuth,
    ClientResponseError,
    NonHttpUrlRedirectClientError,
    RedirectClientError,
    TooManyRedirects,
)


def _redirect_app() -> web.Application:
    """``/redirect/{status}?to=URL`` answers ``status`` with ``Location: URL``; else echo."""
    app = web.Application(client_max_size=8 << 20)

    async def redirect(request: web.Request) -> web.Response:
        if "to" not in request.query:
            return await echo(request)
        await request.read()
        return web.Response(
            status=int(request.match_info["status"]),
            headers={"Location": request.query["to"]},
            text="moving",
        )

    async def chain(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n == 0:
            return web.Response(text="end of chain")
        raise web.HTTPFound(f"/chain/{n - 1}")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    app.router.add_route("*", r"/redirect/{status:\d+}", redirect)
    app.router.add_get("/chain/{n}", chain)
    app.router.add_get("/loop", loop)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def test_history(serve_app, session):
    base = await serve_app(_redirect_app())
    async with session.get(base + "/chain/3") as resp:
        assert resp.status == 200
        assert await resp.text() == "end of chain"
        assert str(resp.url) == base + "/chain/0"
        assert [r.status for r in resp.history] == [302, 302, 302]
        assert [str(r.url) for r in resp.history] == [
            base + "/chain/3",
            base + "/chain/2",
            base + "/chain/1",
        ]
        assert [r.headers["Location"] for r in resp.history] == [
            "/chain/2",
            "/chain/1",
            "/chain/0",
        ]
        assert all(r.method == "GET" for r in resp.history)
        assert resp.request_info.url.path == "/chain/0"


async def test_allow_redirects_false_returns_the_3xx(serve_app, session):
    base = await serve_app(_redirect_app())
    async with session.get(base + "/chain/2", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/chain/1"
        assert resp.history == ()
        assert str(resp.url) == base + "/chain/2"


async def test_redirect_without_location_is_returned(serve_app, session):
    app = web.Application()

    async def nowhere(request: web.Request) -> web.Response:
        return web.Response(status=302, text="no location")

    app.router.add_get("/", nowhere)
    base = await serve_app(app)
    async with session.get(base + "/") as resp:
        assert resp.status == 302
        assert await resp.text() == "no location"


@pytest.mark.parametrize(
    ("status", "method", "expected_method", "body_kept"),
    [
        (301, "POST", "GET", False),
        (302, "POST", "GET", False),
        (303, "POST", "GET", False),
        (303, "PUT", "GET", False),
        (301, "PUT", "PUT", True),
        (302, "PATCH", "PATCH", True),
        (307, "POST", "POST", True),
        (308, "POST", "POST", True),
        (307, "PUT", "PUT", True),
        (308, "DELETE", "DELETE", True),
    ],
)
async def test_method_and_body_after_a_redirect(
    serve_app, session, status, method, expected_method, body_kept
):
    base = await serve_app(_redirect_app())
    url = f"{base}/redirect/{status}"
    async with session.request(method, url, params={"to": "/target"}, data=b"payload") as resp:
        got = await resp.json()
    assert resp.status == 200
    assert [r.status for r in resp.history] == [status]
    assert resp.history[0].method == method
    assert got["path"] == "/target"
    assert got["method"] == expected_method
    assert resp.method == expected_method
    if body_kept:
        assert got["body"] == "payload"
        assert header(got, "Content-Length") == "7"
        assert header(got, "Content-Type") == "application/octet-stream"
    else:
        assert got["body"] == ""
        assert header(got, "Content-Length") is None
        assert header(got, "Transfer-Encoding") is None


async def test_head_redirect_keeps_head(serve_app, session):
    base = await serve_app(_redirect_app())
    url = f"{base}/redirect/303"
    async with session.head(url, params={"to": "/target"}, allow_redirects=True) as resp:
        assert resp.status == 200
        assert resp.method == "HEAD"
        assert await resp.read() == b""


@pytest.mark.parametrize(
    ("location", "path"),
    [("other", "/redirect/other"), ("../up", "/up"), ("/abs/path?x=1", "/abs/path"),
     ("?q=2", "/redirect/302")],
)
async def test_relative_location(serve_app, session, location, path):
    base = await serve_app(_redirect_app())
    async with session.get(f"{base}/redirect/302", params={"to": location}) as resp:
        got = await resp.json()
    assert got["path"] == path
    assert resp.url.path == path


async def test_absolute_location_to_another_server(serve_app, session):
    target = await serve_app(_redirect_app())
    base = await serve_app(_redirect_app())
    async with session.get(f"{base}/redirect/301", params={"to": target + "/there"}) as resp:
        got = await resp.json()
    assert got["path"] == "/there"
    assert str(resp.url) == target + "/there"
    assert header(got, "Host") == target.removeprefix("http://")


async def test_max_redirects(serve_app, session):
    base = await serve_app(_redirect_app())
    with pytest.raises(TooManyRedirects) as info:
        await session.get(base + "/chain/5", max_redirects=3)
    exc = info.value
    assert isinstance(exc, ClientResponseError)
    assert [r.status for r in exc.history] == [302, 302, 302]
    assert [r.url.path for r in exc.history] == ["/chain/5", "/chain/4", "/chain/3"]
    assert exc.request_info.url.path == "/chain/5"
    # exactly at the limit is fine
    async with session.get(base + "/chain/2", max_redirects=3) as resp:
        assert await resp.text() == "end of chain"


async def test_default_max_redirects_is_ten(serve_app, session):
    base = await serve_app(_redirect_app())
    with pytest.raises(TooManyRedirects) as info:
        await session.get(base + "/loop")
    assert len(info.value.history) == 10
    async with session.get(base + "/chain/9") as resp:
        assert len(resp.history) == 9


async def test_session_max_redirects(serve_app, make_session):
    base = await serve_app(_redirect_app())
    session = make_session(max_redirects=2)
    with pytest.raises(TooManyRedirects):
        await session.get(base + "/chain/3")


async def test_non_http_location(serve_app, session):
    base = await serve_app(_redirect_app())
    with pytest.raises(NonHttpUrlRedirectClientError) as info:
        await session.get(f"{base}/redirect/302", params={"to": "ftp://127.0.0.1/file"})
    assert isinstance(info.value, RedirectClientError)
    assert str(info.value) == "ftp://127.0.0.1/file"
    # the session is still fine
    async with session.get(base + "/chain/1") as resp:
        assert await resp.text() == "end of chain"


@pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning")
@pytest.mark.parametrize("how", ["auth", "header"])
async def test_authorization_dropped_on_cross_origin_redirect(serve_app, session, how):
    target = await serve_app(_redirect_app())
    other_origin = target.replace("127.0.0.1", "localhost")
    base = await serve_app(_redirect_app())
    kwargs = (
        {"auth": BasicAuth("user", "pass")}
        if how == "auth"
        else {"headers": {"Authorization": "Bearer secret"}}
    )
    # same origin: kept
    async with session.get(f"{base}/redirect/302", params={"to": "/same"}, **kwargs) as resp:
        same = await resp.json()
    assert same["path"] == "/same"
    assert header(same, "Authorization") is not None
    # another origin: dropped
    async with session.get(
        f"{base}/redirect/302", params={"to": other_origin + "/other"}, **kwargs
    ) as resp:
        other = await resp.json()
    assert str(resp.url) == other_origin + "/other"
    assert other["path"] == "/other"
    assert header(other, "Authorization") is None
    assert header(other, "Host") == other_origin.removeprefix("http://")
    assert resp.history[0].request_info.headers.get("Authorization") is not None


async def test_307_keeps_a_large_body(serve_app, session):
    """Through a broker, a body over 1 MiB crosses the socket as a stream; the broker
    asks the worker to send it again (Rewind) for the next hop."""
    base = await serve_app(_redirect_app())
    data = b"z" * (2 << 20)
    async with session.post(
        f"{base}/redirect/307", params={"to": "/target"}, data=data
    ) as resp:
        got = await resp.json()
    assert got["method"] == "POST"
    assert len(got["body"]) == len(data)
    assert [r.status for r in resp.history] == [307]
