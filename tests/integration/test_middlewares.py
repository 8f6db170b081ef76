"""Client middlewares (aiohttp 3.12+), in both modes: around each request and each
redirect hop, changing, retrying and stopping requests; digest auth against a server
that checks it."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re

import pytest
from aiohttp import web
from yarl import URL

from tests.integration.apps import echo
from worker_client import (
    ClientError,
    ClientHandlerType,
    ClientPayloadError,
    ClientRequest,
    ClientResponse,
    ClientTimeout,
    CookieJar,
    DigestAuthMiddleware,
    InvalidUrlRedirectClientError,
    NonHttpUrlRedirectClientError,
    TooManyRedirects,
)


class Blocked(ClientError):
    pass


def _recording_app() -> tuple[web.Application, list[web.Request]]:
    """Echo at every path, keeping each request; ``/status/{n}`` answers ``n`` (then
    200 from the next call on), ``/to/{n}?to=URL`` redirects with status ``n``,
    ``/hang`` never answers."""
    seen: list[web.Request] = []
    app = web.Application(client_max_size=8 << 20)

    async def status(request: web.Request) -> web.Response:
        seen.append(request)
        n = int(request.match_info["n"])
        answered = sum(1 for r in seen if r.path == request.path)
        return web.Response(status=n if answered == 1 else 200, text=f"call {answered}")

    async def redirect(request: web.Request) -> web.Response:
        seen.append(request)
        await request.read()
        resp = web.Response(
            status=int(request.match_info["n"]), headers={"Location": request.query["to"]}
        )
        resp.set_cookie(f"hop{len(seen)}", "yes")
        return resp

    async def record(request: web.Request) -> web.Response:
        seen.append(request)
        return await echo(request)

    async def hang(request: web.Request) -> web.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    app.router.add_route("*", "/status/{n}", status)
    app.router.add_route("*", "/to/{n}", redirect)
    app.router.add_get("/hang", hang)
    app.router.add_route("*", "/{tail:.*}", record)
    return app, seen


async def test_a_middleware_adds_a_header(serve_app, make_session):
    app, seen = _recording_app()
    base = await serve_app(app)

    async def add(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        assert isinstance(req, ClientRequest)
        assert req.method == "GET" and str(req.url) == base + "/x?a=1"
        assert req.host == "127.0.0.1" and not req.is_ssl()
        req.headers["X-Added"] = "by middleware"
        return await handler(req)

    session = make_session(middlewares=(add,))
    async with session.get(base + "/x", params={"a": "1"}) as resp:
        data = await resp.json()
    assert ["X-Added", "by middleware"] in data["headers"]
    assert resp.request_info.headers["X-Added"] == "by middleware"
    assert len(seen) == 1


async def test_retry_once_on_401(serve_app, make_session):
    app, seen = _recording_app()
    base = await serve_app(app)
    statuses = []

    async def retry(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        resp = await handler(req)
        statuses.append(resp.status)
        if resp.status == 401:
            req.headers["Authorization"] = "Bearer fresh"
            resp = await handler(req)
            statuses.append(resp.status)
        return resp

    session = make_session(middlewares=(retry,))
    async with session.post(base + "/status/401", data=b"payload") as resp:
        assert resp.status == 200
        assert await resp.text() == "call 2"
    assert statuses == [401, 200]
    assert [r.headers.get("Authorization") for r in seen] == [None, "Bearer fresh"]


async def test_retry_sends_a_rereadable_stream_again(serve_app, make_session):
    app, seen = _recording_app()
    bodies = []

    async def retry(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        resp = await handler(req)
        if resp.status == 503:
            resp = await handler(req)
        return resp

    @web.middleware
    async def keep_body(request, handler):  # type: ignore[no-untyped-def]
        bodies.append(await request.read())
        return await handler(request)

    app.middlewares.append(keep_body)
    base = await serve_app(app)
    session = make_session(middlewares=(retry,))
    async with session.put(base + "/status/503", data=io.BytesIO(b"x" * (2 << 20))) as resp:
        assert resp.status == 200
    assert bodies == [b"x" * (2 << 20)] * 2


async def test_a_middleware_stops_a_request_unsent(serve_app, make_session):
    app, seen = _recording_app()
    base = await serve_app(app)

    async def block(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        if req.url.path == "/blocked":
            raise Blocked(f"{req.url} is blocked")
        return await handler(req)

    session = make_session(middlewares=(block,))
    with pytest.raises(Blocked, match="blocked"):
        await session.get(base + "/blocked")
    async with session.get(base + "/open") as resp:
        assert resp.status == 200
    assert [r.path for r in seen] == ["/open"]


async def test_a_middleware_answers_without_sending(serve_app, make_session):
    app, seen = _recording_app()
    base = await serve_app(app)
    cached: dict[str, ClientResponse] = {}

    async def cache(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        if str(req.url) in cached:
            return cached[str(req.url)]
        resp = await handler(req)
        await resp.read()
        cached[str(req.url)] = resp
        return resp

    session = make_session(middlewares=(cache,))
    first = await session.get(base + "/cached")
    second = await session.get(base + "/cached")
    assert second is first
    assert (await second.json())["path"] == "/cached"
    assert len(seen) == 1


async def test_order_of_several_middlewares(serve_app, make_session):
    app, seen = _recording_app()
    base = await serve_app(app)
    calls: list[str] = []

    def named(name: str):  # type: ignore[no-untyped-def]
        async def mw(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
            calls.append(f"before {name}")
            req.headers.add("X-Order", name)
            resp = await handler(req)
            calls.append(f"after {name}")
            return resp

        return mw

    session = make_session(middlewares=(named("1"), named("2"), named("3")))
    async with session.get(base + "/") as resp:
        assert resp.status == 200
    assert calls == ["before 1", "before 2", "before 3", "after 3", "after 2", "after 1"]
    assert seen[0].headers.getall("X-Order") == ["1", "2", "3"]


async def test_middlewares_run_on_each_redirect_hop(serve_app, make_session):
    app, seen = _recording_app()
    base = await serve_app(app)
    hops: list[tuple[str, str]] = []

    async def record(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        hops.append((req.method, str(req.url)))
        req.headers["X-Hop"] = str(len(hops))
        return await handler(req)

    session = make_session(middlewares=(record,), cookie_jar=CookieJar(unsafe=True))
    last = base + "/end"
    second = f"{base}/to/302?to={last}"
    async with session.post(f"{base}/to/307?to={second}", data=b"kept on 307") as resp:
        data = await resp.json()
    assert hops == [
        ("POST", f"{base}/to/307?to={second}"),
        ("POST", second),
        ("GET", last),
    ]
    assert [r.headers["X-Hop"] for r in seen] == ["1", "2", "3"]
    assert [r.method for r in seen] == ["POST", "POST", "GET"]
    assert [r.status for r in resp.history] == [307, 302]
    assert [str(r.url) for r in resp.history] == [hops[0][1], hops[1][1]]
    assert resp.history[0].request_info.method == "POST"
    assert str(resp.url) == last and data["method"] == "GET" and data["body"] == ""
    # The jar (in the engine) stored each hop's Set-Cookie and sent it on the next.
    headers = dict((k.lower(), v) for k, v in data["headers"])
    assert headers["cookie"] == "hop1=yes; hop2=yes"
    assert seen[1].cookies == {"hop1": "yes"}
    assert {c.key for c in session.cookie_jar} == {"hop1", "hop2"}


async def test_worker_followed_redirects_keep_the_limits_and_errors(serve_app, make_session):
    app, seen = _recording_app()
    base = await serve_app(app)
    calls = 0

    async def count(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        nonlocal calls
        calls += 1
        return await handler(req)

    session = make_session(middlewares=(count,))
    loop_url = f"{base}/to/302?to=/to/302%3Fto%3D/again"
    with pytest.raises(TooManyRedirects) as info:
        await session.get(loop_url, max_redirects=2)
    assert len(info.value.history) == 2 and calls == 2

    async def stream():  # type: ignore[no-untyped-def]
        yield b"once"

    with pytest.raises(ClientPayloadError, match="consumed request body"):
        await session.post(f"{base}/to/307?to=/end", data=stream())
    assert [r.path for r in seen][-1] == "/to/307"

    async with session.get(f"{base}/to/302?to=/end", allow_redirects=False) as resp:
        assert resp.status == 302 and resp.history == ()


async def test_cross_origin_hop_drops_credentials(serve_app, make_session):
    app, seen = _recording_app()
    base = await serve_app(app)
    other = base.replace("127.0.0.1", "localhost")
    session = make_session(middlewares=(_passthrough,))
    async with session.get(
        f"{base}/to/302?to={other}/end",
        headers={"Authorization": "Bearer x"},
        cookies={"mine": "1"},
    ) as resp:
        assert resp.status == 200
    assert seen[0].headers["Authorization"] == "Bearer x"
    assert seen[0].cookies == {"mine": "1"}
    assert "Authorization" not in seen[1].headers
    assert "mine" not in seen[1].cookies


async def _passthrough(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
    return await handler(req)


async def test_request_middlewares_replace_the_sessions(serve_app, make_session):
    app, seen = _recording_app()
    base = await serve_app(app)
    calls: list[str] = []

    async def from_session(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        calls.append("session")
        return await handler(req)

    async def from_request(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        calls.append("request")
        return await handler(req)

    session = make_session(middlewares=(from_session,))
    await (await session.get(base + "/")).release()
    await (await session.get(base + "/", middlewares=(from_request,))).release()
    await (await session.get(base + "/", middlewares=())).release()
    assert calls == ["session", "request"]


async def test_middleware_replaces_the_body_and_uses_the_session(serve_app, make_session):
    app, seen = _recording_app()
    base = await serve_app(app)

    async def sign(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        if req.url.path == "/log":
            return await handler(req)
        body = req.body
        assert body and body.decode() == "original"
        await req.update_body(b"replaced, longer")
        async with req.session.post(base + "/log", data=str(req.url)) as log:
            assert log.status == 200
        return await handler(req)

    session = make_session(middlewares=(sign,))
    async with session.post(base + "/api", data=b"original") as resp:
        data = await resp.json()
    assert data["body"] == "replaced, longer"
    assert [r.path for r in seen] == ["/log", "/api"]


async def test_a_body_set_by_a_middleware_on_a_chunked_request_goes_chunked(
    serve_app, make_session
):
    # chunked= (or compress=): the engine frames the body chunked, so a body a
    # middleware sets carries no Content-Length beside the framing.
    app, seen = _recording_app()
    base = await serve_app(app)

    async def replace(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        await req.update_body(b"hello")
        assert "Content-Length" not in req.headers
        return await handler(req)

    session = make_session(middlewares=(replace,))
    async with session.post(base + "/api", data=b"original", chunked=True) as resp:
        data = await resp.json()
    assert data["body"] == "hello"
    assert seen[-1].headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in seen[-1].headers


async def test_a_middleware_that_drops_expect_does_not_leave_the_body_waiting(
    serve_app, make_session
):
    # expect100=True, then a middleware removes the header: the head no longer asks for
    # 100 Continue, so the body goes with it (no wait for an answer never coming).
    app, seen = _recording_app()
    base = await serve_app(app)

    async def drop(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        req.headers.popall("Expect", None)
        return await handler(req)

    session = make_session(middlewares=(drop,))
    async with session.post(
        base + "/api", data=b"body", expect100=True, timeout=ClientTimeout(total=10)
    ) as resp:
        assert (await resp.json())["body"] == "body"
    assert "Expect" not in seen[-1].headers


async def test_update_body_on_a_compressed_request_is_refused(serve_app, make_session):
    app, seen = _recording_app()
    base = await serve_app(app)

    async def replace(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        await req.update_body(b"hello")
        return await handler(req)

    session = make_session(middlewares=(replace,))
    with pytest.raises(ValueError, match="compress"):
        await session.post(base + "/api", data=b"original", compress=True)
    assert seen == []  # nothing sent


# -- digest auth against a server that checks it -----------------------------------------

_PARAM_RE = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def _digest_app(
    password: str, algorithm: str, seen: list[str], nonces: list[str] | None = None
) -> web.Application:
    """Demands Digest auth (qop=auth) for user ``alice`` and checks every answer. The
    last of ``nonces`` is the current one: an answer to an older one gets ``stale``."""
    fn = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]
    nonces = nonces if nonces is not None else ["dcd98b7102dd2f0e8b11d0f600bfb0c093"]
    opaque, realm = "5ccc069c403ebaf9f0", "t@x"

    def h(text: str) -> str:
        return fn(text.encode()).hexdigest()

    async def handler(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        seen.append(auth)
        nonce, stale = nonces[-1], ""
        if auth.startswith("Digest "):
            p = {m[0]: m[1] or m[2] for m in _PARAM_RE.findall(auth)}
            if p.get("nonce") != nonce and p.get("nonce") in nonces:
                nonce, stale = p["nonce"], ", stale=true"
            ha1 = h(f"alice:{realm}:{password}")
            ha2 = h(f"{request.method}:{request.path_qs}")
            expect = h(f"{ha1}:{nonce}:{p.get('nc')}:{p.get('cnonce')}:auth:{ha2}")
            if (
                p.get("username") == "alice" and p.get("uri") == request.path_qs
                and p.get("qop") == "auth" and p.get("opaque") == opaque
                and p.get("algorithm") == algorithm and p.get("response") == expect
            ) and not stale:
                return web.Response(text=f"welcome {p['nc']}")
        challenge = (
            f'Digest realm="{realm}", qop="auth", algorithm={algorithm}, '
            f'nonce="{nonces[-1]}", opaque="{opaque}"{stale}'
        )
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
async def test_digest_auth(serve_app, make_session, algorithm):
    seen: list[str] = []
    base = await serve_app(_digest_app("secret", algorithm, seen))
    session = make_session(middlewares=(DigestAuthMiddleware("alice", "secret"),))
    async with session.get(base + "/private?x=1") as resp:
        assert resp.status == 200
        assert await resp.text() == "welcome 00000001"
    assert seen[0] == "" and seen[1].startswith("Digest ")
    # Preemptive: the next request answers the kept challenge at once, nc going up.
    async with session.post(base + "/other", data=b"body") as resp:
        assert await resp.text() == "welcome 00000002"
    assert len(seen) == 3


async def test_digest_auth_wrong_password_returns_the_401(serve_app, make_session):
    seen: list[str] = []
    base = await serve_app(_digest_app("secret", "MD5", seen))
    session = make_session()
    mw = DigestAuthMiddleware("alice", "wrong")
    async with session.get(base + "/private", middlewares=(mw,)) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Digest ")
    assert len(seen) == 2 and seen[1].startswith("Digest ")


async def test_a_body_set_by_a_middleware_is_sent_and_closed(serve_app, make_session, tmp_path):
    app, seen = _recording_app()
    base = await serve_app(app)
    (tmp_path / "a").write_bytes(b"a" * 10)
    (tmp_path / "b").write_bytes(b"b" * (2 << 20))
    first, second = open(tmp_path / "a", "rb"), open(tmp_path / "b", "rb")

    async def replace(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        await req.update_body(first)
        await req.update_body(second)
        assert first.closed and not second.closed
        assert req.headers["Content-Length"] == str(2 << 20)
        return await handler(req)

    session = make_session(middlewares=(replace,))
    async with session.post(base + "/api", data="text") as resp:
        data = await resp.json()
    assert data["body"] == "b" * (2 << 20)
    assert second.closed


async def test_redirect_errors_and_replay_through_middlewares(serve_app, make_session, tmp_path):
    app, seen = _recording_app()
    base = await serve_app(app)
    session = make_session(middlewares=(_passthrough,))
    with pytest.raises(NonHttpUrlRedirectClientError):
        await session.get(f"{base}/to/302?to=ftp://example.com/x")
    with pytest.raises(InvalidUrlRedirectClientError):
        await session.get(f"{base}/to/302?to=http://exa%20mple.com:99999/")
    (tmp_path / "f").write_bytes(b"f" * 300_000)
    with open(tmp_path / "f", "rb") as f:
        async with session.put(f"{base}/to/308?to=/end", data=f) as resp:
            data = await resp.json()
    assert data["method"] == "PUT" and data["body"] == "f" * 300_000
    assert [r.status for r in resp.history] == [308]


async def test_total_timeout_covers_every_hop(serve_app, make_session):
    app, seen = _recording_app()
    base = await serve_app(app, handler_cancellation=True)
    session = make_session(middlewares=(_passthrough,), timeout=ClientTimeout(total=0.3))
    with pytest.raises(asyncio.TimeoutError):
        await session.get(f"{base}/to/302?to=/hang")
    assert [r.path for r in seen] == ["/to/302"]


async def test_digest_auth_stale_nonce_not_preemptive_and_other_origins(
    serve_app, make_session
):
    seen: list[str] = []
    nonces = ["first-nonce"]
    base = await serve_app(_digest_app("secret", "SHA-256", seen, nonces))
    mw = DigestAuthMiddleware("alice", "secret")
    session = make_session(middlewares=(mw,))
    assert await (await session.get(base + "/a")).text() == "welcome 00000001"
    nonces.append("second-nonce")  # the server moves on: the kept nonce is stale
    assert await (await session.get(base + "/b")).text() == "welcome 00000001"
    assert 'nonce="first-nonce"' in seen[2] and 'nonce="second-nonce"' in seen[3]
    # Another origin never gets an answer computed from these credentials.
    other = base.replace("127.0.0.1", "localhost")
    assert (await session.get(other + "/c")).status == 401
    assert seen[4:] == [""]

    seen.clear()
    lazy = make_session(middlewares=(DigestAuthMiddleware("alice", "secret", preemptive=False),))
    for _ in range(2):
        assert (await lazy.get(base + "/d")).status == 200
    assert [bool(a) for a in seen] == [False, True, False, True]


async def test_a_middleware_that_raises_closes_the_body(serve_app, make_session, tmp_path):
    app, seen = _recording_app()
    base = await serve_app(app)
    (tmp_path / "f").write_bytes(b"f" * 100)

    async def fail(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        raise ValueError("Middleware error")

    session = make_session(middlewares=(fail,))
    with open(tmp_path / "f", "rb") as f:
        with pytest.raises(ValueError, match="Middleware error"):
            await session.post(base + "/x", data=f)
        assert f.closed
    assert seen == []


async def test_a_middleware_changes_url_and_method(serve_app, make_session):
    app, seen = _recording_app()
    base = await serve_app(app)
    other = base.replace("127.0.0.1", "localhost")

    async def reroute(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        req.url = URL(other + "/moved").with_query(was=req.url.path)
        req.method = "PUT"
        return await handler(req)

    session = make_session(middlewares=(reroute,))
    async with session.get(base + "/orig", data=b"b") as resp:
        data = await resp.json()
    assert data["method"] == "PUT" and data["path"] == "/moved"
    assert data["query"] == [["was", "/orig"]] and data["body"] == "b"
    assert str(resp.url) == other + "/moved?was=/orig"
    headers = {k.lower(): v for k, v in data["headers"]}
    assert headers["host"] == other.removeprefix("http://")

    async def inject(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        req.headers["X-Bad"] = "a\r\nX-Smuggled: 1"
        return await handler(req)

    with pytest.raises(ClientError):
        await session.get(base + "/x", middlewares=(inject,))
    assert [r.path for r in seen] == ["/moved"]
