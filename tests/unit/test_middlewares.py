"""The middleware chain and ``ClientRequest`` (pure parts)."""

from __future__ import annotations

from multidict import CIMultiDict
from yarl import URL

from worker_client import ClientRequest, ClientSession
from worker_client.middlewares import build_client_middlewares


async def test_no_middlewares_leave_the_handler_as_it_is():
    async def handler(req):  # type: ignore[no-untyped-def]
        raise AssertionError("not called")

    assert build_client_middlewares(handler, ()) is handler


async def test_the_first_middleware_is_the_outermost():
    calls = []

    def mw(name):  # type: ignore[no-untyped-def]
        async def middleware(req, handler):  # type: ignore[no-untyped-def]
            calls.append(name)
            return await handler(req)

        return middleware

    async def handler(req):  # type: ignore[no-untyped-def]
        calls.append("handler")
        return "response"

    chain = build_client_middlewares(handler, [mw("a"), mw("b"), mw("c")])
    assert await chain(None) == "response"
    assert calls == ["a", "b", "c", "handler"]


async def test_client_request_attributes():
    req = ClientRequest(
        "post", URL("https://example.com:8443/p?q=1#frag"), headers={"X-A": "1"}, data=b"abc"
    )
    assert req.method == "POST"
    assert str(req.url) == "https://example.com:8443/p?q=1"
    assert str(req.original_url) == "https://example.com:8443/p?q=1#frag"
    assert req.is_ssl() and req.host == "example.com" and req.port == 8443
    assert isinstance(req.headers, CIMultiDict)
    assert req.headers["Content-Length"] == "3"
    assert req.headers["Content-Type"] == "application/octet-stream"
    assert req.body.decode() == "abc"
    info = req.request_info
    assert info.method == "POST" and info.real_url == req.original_url
    assert info.headers["X-A"] == "1"
    assert repr(req) == "<ClientRequest(POST https://example.com:8443/p?q=1)>"


async def test_update_body_sets_the_length_and_keeps_the_content_type():
    req = ClientRequest("POST", URL("http://h/"), data=b"original body")
    await req.update_body("now a string, longer")
    assert req.headers["Content-Length"] == "20"
    assert req.headers["Content-Type"] == "application/octet-stream"  # as aiohttp
    assert await req.body.as_bytes() == b"now a string, longer"
    await req.update_body(None)
    assert req.body == b"" and req.headers["Content-Length"] == "0"
    get = ClientRequest("GET", URL("http://h/"), data=b"x")
    await get.update_body(None)
    assert "Content-Length" not in get.headers


async def test_session_takes_middlewares():
    async def mw(req, handler):  # type: ignore[no-untyped-def]
        return await handler(req)

    async with ClientSession(middlewares=[mw]) as session:
        assert session._middlewares == (mw,)
    async with ClientSession(middlewares=None) as session:
        assert session._middlewares == ()
