"""The seed's examples (aiohttp's "Advanced Client Usage"), each run with our session and
with ``aiohttp.ClientSession`` against the same server in the same test: same results."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import read_request_head
from tests.integration.apps import echo_app, header, headers_named, read_body

Example = Callable[[Any], Awaitable[Any]]


@pytest.fixture
async def aio() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def same_result(ours: Any, theirs: aiohttp.ClientSession, example: Example) -> Any:
    """Run ``example`` with both sessions; assert equal results; return ours."""
    got = await example(ours)
    expected = await example(theirs)
    assert got == expected
    return got


def outcome(exc: BaseException) -> dict[str, Any]:
    """An exception as comparable facts: class name (and status when it has one)."""
    return {"error": type(exc).__name__, "status": getattr(exc, "status", None)}


# -- custom request headers ---------------------------------------------------------------

GIF = b"GIF89a\x01\x00\x01\x00\x00\xff\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x00;"


async def test_custom_headers(serve_app, session, aio):
    url = await serve_app(echo_app()) + "/image"

    async def example(s):
        headers = {"content-type": "image/gif"}
        async with s.post(url, data=GIF, headers=headers) as resp:
            got = await resp.json()
        return {
            "status": resp.status,
            "content-type": headers_named(got, "Content-Type"),
            "content-length": header(got, "Content-Length"),
            "body": got["body"].encode("latin-1"),
        }

    got = await same_result(session, aio, example)
    assert got["content-type"] == ["image/gif"]
    assert got["body"] == GIF


async def test_default_session_headers(serve_app, make_session, aio):
    url = await serve_app(echo_app()) + "/headers"
    headers = {"Authorization": "Basic bG9naW46cGFzcw=="}
    ours = make_session(headers=headers)

    async def example(s):
        async with s.get(url) as r:
            json_body = await r.json()
        return {
            "authorization": header(json_body, "Authorization"),
            "accept": header(json_body, "Accept"),
            "sent": sorted({k.lower() for k, _ in json_body["headers"]}),
        }

    async with aiohttp.ClientSession(headers=headers) as theirs:
        got = await same_result(ours, theirs, example)
    assert got["authorization"] == "Basic bG9naW46cGFzcw=="


# -- request bodies -------------------------------------------------------------------------


async def test_json_body(serve_app, session, aio):
    url = await serve_app(echo_app()) + "/post"

    async def example(s):
        async with s.post(url, json={"test": "object"}) as resp:
            got = await resp.json()
        return {
            "content-type": header(got, "Content-Type"),
            "content-length": header(got, "Content-Length"),
            "json": json.loads(got["body"]),
        }

    got = await same_result(session, aio, example)
    assert got["json"] == {"test": "object"}
    assert got["content-type"] == "application/json"


async def test_text_body(serve_app, session, aio):
    url = await serve_app(echo_app()) + "/post"

    async def example(s):
        async with s.post(url, data="Тест") as resp:
            got = await resp.json()
        return {
            "content-type": header(got, "Content-Type"),
            "content-length": header(got, "Content-Length"),
            "body": got["body"].encode("latin-1").decode("utf-8"),
        }

    got = await same_result(session, aio, example)
    assert got["content-type"] == "text/plain; charset=utf-8"
    assert got["body"] == "Тест"


async def test_precompressed_upload(raw_server, session, aio):
    received: list[tuple[bytes, bytes]] = []

    async def handler(reader, writer):
        while True:  # keep-alive: serve every request on this connection
            head = await read_request_head(reader)
            received.append((head, await read_body(reader, head)))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    url = await raw_server(handler) + "/upload"
    my_data = b"some data to compress " * 500

    async def example(s):
        data = zlib.compress(my_data)
        headers = {"Content-Encoding": "deflate"}
        async with s.post(url, data=data, headers=headers) as resp:
            text = await resp.text()
        head, body = received.pop()
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        return {
            "status": resp.status,
            "text": text,
            "body": body,
            "content-encoding": fields.get("content-encoding"),
            "content-length": fields.get("content-length"),
            "transfer-encoding": fields.get("transfer-encoding"),
            "content-type": fields.get("content-type"),
        }

    got = await same_result(session, aio, example)
    assert got["body"] == zlib.compress(my_data)
    assert got["content-encoding"] == "deflate"


# -- response headers -------------------------------------------------------------------------


def _headers_app() -> web.Application:
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        resp = web.Response(text="hi", headers={"Date": "Sun, 06 Nov 1994 08:49:37 GMT"})
        resp.headers.add("X-Multi", "first")
        resp.headers.add("X-Multi", "second")
        resp.set_cookie("session", "abc")
        resp.set_cookie("theme", "dark")
        return resp

    app.router.add_get("/", page)
    return app


async def test_response_headers(serve_app, session, aio):
    url = await serve_app(_headers_app()) + "/"

    async def example(s):
        async with s.get(url) as resp:
            return {
                "type": type(resp.headers).__name__,
                "content-type": resp.headers["Content-Type"],
                "lower": resp.headers["content-type"],
                "upper": resp.headers["CONTENT-TYPE"],
                "multi": resp.headers.getall("x-multi"),
                "set-cookie": resp.headers.getall("Set-Cookie"),
                "cookies": {k: v.value for k, v in resp.cookies.items()},
                "keys": sorted(resp.headers.keys()),
            }

    got = await same_result(session, aio, example)
    assert got["type"] == "CIMultiDictProxy"
    assert got["multi"] == ["first", "second"]
    assert len(got["set-cookie"]) == 2


async def test_raw_headers(serve_app, session, aio):
    url = await serve_app(_headers_app()) + "/"

    async def example(s):
        async with s.get(url) as resp:
            raw = resp.raw_headers
            return {
                "type": type(raw).__name__,
                "pair_types": {(type(k).__name__, type(v).__name__) for k, v in raw},
                "raw": [(k, v) for k, v in raw if k.lower() != b"server"],
            }

    got = await same_result(session, aio, example)
    assert got["type"] == "tuple"
    assert got["pair_types"] == {("bytes", "bytes")}
    assert (b"X-Multi", b"first") in got["raw"]


# -- redirects ----------------------------------------------------------------------------


def _redirect_app() -> web.Application:
    app = web.Application()

    async def some_redirect(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/some/other/url/")

    async def other(request: web.Request) -> web.Response:
        return web.Response(text="landed")

    async def two_hops(request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/some/redirect/")

    async def to_ftp(request: web.Request) -> web.Response:
        raise web.HTTPFound("ftp://127.0.0.1/file")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    app.router.add_get("/some/redirect/", some_redirect)
    app.router.add_route("*", "/some/other/url/", other)
    app.router.add_route("*", "/two-hops", two_hops)
    app.router.add_get("/ftp", to_ftp)
    app.router.add_get("/loop", loop)
    return app


async def test_redirect_history(serve_app, session, aio):
    base = await serve_app(_redirect_app())

    async def example(s):
        resp = await s.get(base + "/some/redirect/")
        try:
            return {
                "status": resp.status,
                "url": str(resp.url),
                "text": await resp.text(),
                "history": [(r.status, str(r.url), r.method) for r in resp.history],
            }
        finally:
            resp.release()

    got = await same_result(session, aio, example)
    assert got["status"] == 200
    assert got["url"] == base + "/some/other/url/"
    assert got["history"] == [(301, base + "/some/redirect/", "GET")]


async def test_redirect_post_two_hops(serve_app, session, aio):
    base = await serve_app(_redirect_app())

    async def example(s):
        async with s.post(base + "/two-hops", data=b"body") as resp:
            return {
                "status": resp.status,
                "method": resp.method,
                "url": str(resp.url),
                "history": [(r.status, str(r.url), r.method) for r in resp.history],
            }

    got = await same_result(session, aio, example)
    assert [h[0] for h in got["history"]] == [303, 301]
    assert got["method"] == "GET"


async def test_allow_redirects_false(serve_app, session, aio):
    base = await serve_app(_redirect_app())

    async def example(s):
        async with s.get(base + "/some/redirect/", allow_redirects=False) as resp:
            return {
                "status": resp.status,
                "location": resp.headers["Location"],
                "history": len(resp.history),
                "url": str(resp.url),
            }

    got = await same_result(session, aio, example)
    assert got["status"] == 301
    assert got["history"] == 0


async def test_redirect_errors(serve_app, session, aio):
    base = await serve_app(_redirect_app())

    async def example(s):
        results = []
        for path, kwargs in [("/ftp", {}), ("/loop", {"max_redirects": 4})]:
            try:
                async with s.get(base + path, **kwargs) as resp:
                    results.append({"status": resp.status})
            except Exception as exc:
                results.append({"error": type(exc).__name__, "status": getattr(
                    exc, "status", None), "message": getattr(exc, "message", None)})
        return results

    got = await same_result(session, aio, example)
    assert got[0]["error"] == "NonHttpUrlRedirectClientError"
    assert got[1] == {"error": "TooManyRedirects", "status": 0, "message": ""}


# -- JSON content-type validation ---------------------------------------------------------


def _json_app() -> web.Application:
    app = web.Application()

    async def typed(request: web.Request) -> web.Response:
        return web.Response(
            body=b'{"key": "value"}', headers={"Content-Type": request.match_info["ctype"]}
        )

    app.router.add_get("/{ctype:.+}", typed)
    return app


@pytest.mark.parametrize(
    ("ctype", "kwargs"),
    [
        ("application/json", {}),
        ("text/plain", {}),
        ("text/plain", {"content_type": None}),
        ("application/problem+json", {}),
        ("special/content/type", {"content_type": "special/content/type"}),
        ("special/content/type", {}),
        ("application/json; charset=utf-8", {}),
    ],
)
async def test_json_content_type_validation(serve_app, session, aio, ctype, kwargs):
    base = await serve_app(_json_app())
    url = str(URL(base) / ctype)

    async def example(s):
        async with s.get(url) as resp:
            try:
                return {"json": await resp.json(**kwargs)}
            except Exception as exc:
                return {**outcome(exc), "message": getattr(exc, "message", None)}

    got = await same_result(session, aio, example)
    if ctype == "text/plain" and not kwargs or ctype == "special/content/type" and not kwargs:
        assert got["error"] == "ContentTypeError"
    else:
        assert got == {"json": {"key": "value"}}
