"""Client tracing against real servers, through aiohttp itself and through us (both
modes): the worker's signals (request start/end/exception, response chunks), contexts,
the docs' examples, middlewares, and the whole sequence of signals beside aiohttp's.

The tests named ``test_sequence_*`` and ``test_body_pieces_*`` need the broker's
``TraceEvent``s (connection, DNS, headers and pieces sent, redirects); the others hold
with the worker's signals alone."""

from __future__ import annotations

import asyncio
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

import worker_client

CLIENTS = ("aiohttp", "embedded", "broker")
BIG = 4 << 20  # a response body over the stream's window: the broker holds it for the worker
WORKER_SIGNALS = {"request_start", "request_end", "request_exception", "response_chunk_received"}
SIGNALS = [
    "request_start", "request_chunk_sent", "response_chunk_received", "request_end",
    "request_exception", "request_redirect", "connection_queued_start",
    "connection_queued_end", "connection_create_start", "connection_create_end",
    "connection_reuseconn", "dns_resolvehost_start", "dns_resolvehost_end",
    "dns_cache_hit", "dns_cache_miss", "request_headers_sent",
]


class Client(SimpleNamespace):
    """A client under test: its module (``TraceConfig``...) and its sessions."""

    name: str
    mod: Any
    make: Callable[..., Any]


@pytest.fixture(params=CLIENTS)
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    sessions: list[Any] = []
    if request.param == "aiohttp":
        mod, kw = aiohttp, {}
    else:
        address = None
        if request.param == "broker":
            address = request.getfixturevalue("broker_process").socket_path
        mod, kw = worker_client, {"broker": address}

    def make(**more: Any) -> Any:
        session = mod.ClientSession(**kw, **more)
        sessions.append(session)
        return session

    yield Client(name=request.param, mod=mod, make=make)
    for session in sessions:
        await session.close()


class Recorder:
    """A TraceConfig of ``client`` recording every signal: (name, ctx, params)."""

    def __init__(self, client: Client, **kw: Any) -> None:
        self.seen: list[tuple[str, Any, Any, Any]] = []
        self.config = client.mod.TraceConfig(**kw)
        for signal in SIGNALS:
            getattr(self.config, "on_" + signal).append(self._handler(signal))

    def _handler(self, signal: str) -> Callable[..., Awaitable[None]]:
        async def handler(session: Any, ctx: Any, params: Any) -> None:
            self.seen.append((signal, session, ctx, params))

        return handler

    def names(self, only: set[str] | None = None) -> list[str]:
        return [s for s, *_ in self.seen if only is None or s in only]

    def params(self, signal: str) -> list[Any]:
        return [p for s, _, _, p in self.seen if s == signal]

    def take(self, only: set[str] | None = None) -> list[str]:
        names = self.names(only)
        self.seen.clear()
        return names


def _app() -> web.Application:
    app = web.Application(client_max_size=8 << 20)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/")

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["n"]), text="status")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app.router.add_get("/", hello)
    app.router.add_get("/r", redirect)
    app.router.add_get("/status/{n}", status)
    async def redirect307(request: web.Request) -> web.Response:
        await request.read()
        raise web.HTTPTemporaryRedirect("/echo")

    async def no_location(request: web.Request) -> web.Response:
        return web.Response(status=302, text="no Location")

    async def to_nowhere(request: web.Request) -> web.Response:
        await request.read()
        raise web.HTTPSeeOther("http://127.0.0.1:1/gone#frag")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * BIG)

    async def big_redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, body=b"x" * BIG, headers={"Location": "/"})

    app.router.add_post("/echo", echo)
    app.router.add_post("/307", redirect307)
    app.router.add_get("/no-location", no_location)
    app.router.add_post("/to-nowhere", to_nowhere)
    app.router.add_get("/big", big)
    app.router.add_get("/big-redirect", big_redirect)

    async def to(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["u"])

    app.router.add_get("/to", to)

    async def refuse(request: web.Request) -> web.Response:
        raise web.HTTPExpectationFailed(text="no")

    app.router.add_post("/refuse", echo, expect_handler=refuse)

    async def chain(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        await request.read()
        if n == 0:
            return web.Response(text="end")
        redirect = web.HTTPTemporaryRedirect if n % 2 else web.HTTPSeeOther
        raise redirect(f"/chain/{n - 1}#f{n}")

    app.router.add_route("*", "/chain/{n}", chain)
    return app


# -- the worker's signals -------------------------------------------------------------


async def test_start_end_and_response_chunk(client, serve_app):
    base = await serve_app(_app())
    rec = Recorder(client)
    session = client.make(trace_configs=[rec.config], headers={"X-Session": "s"})
    assert rec.config.on_request_start.frozen  # frozen by the session
    resp = await session.get(base + "/?a=1#frag", params={"b": "2"}, headers={"X-Req": "r"})
    assert rec.names(WORKER_SIGNALS) == ["request_start", "request_end"]
    (start,) = rec.params("request_start")
    assert (start.method, start.url) == ("GET", URL(base + "/?a=1&b=2#frag"))
    assert dict(start.headers) == {"X-Session": "s", "X-Req": "r"}
    (end,) = rec.params("request_end")
    assert end.response is resp and end.headers is start.headers
    assert (end.method, end.url) == ("GET", start.url)
    assert all(s is session for _, s, _, _ in rec.seen)
    assert len({id(ctx) for _, _, ctx, _ in rec.seen}) == 1
    assert await resp.read() == b"hello"
    assert await resp.read() == b"hello"  # once, as aiohttp: the whole body
    assert [p.chunk for p in rec.params("response_chunk_received")] == [b"hello"]
    (chunk,) = rec.params("response_chunk_received")
    assert (chunk.method, chunk.url) == ("GET", resp.url)
    rec.seen.clear()
    async with session.get(base + "/") as resp:
        assert [c async for c in resp.content.iter_chunked(2)]  # not read(): no signal
    assert rec.names(WORKER_SIGNALS) == ["request_start", "request_end"]


async def test_a_config_added_to_the_session_later_traces_its_requests(client, serve_app):
    """As aiohttp reads ``session.trace_configs`` per request: a (frozen) config added
    after the session was made traces the next requests, on a kept-alive connection too."""
    base = await serve_app(_app())
    session = client.make()
    for _ in range(2):
        async with session.get(base + "/") as resp:
            assert await resp.text() == "hello"
    rec = Recorder(client)
    rec.config.freeze()
    session.trace_configs.append(rec.config)
    for _ in range(2):
        async with session.get(base + "/") as resp:
            assert await resp.text() == "hello"
    assert rec.names(WORKER_SIGNALS) == [
        "request_start", "request_end", "response_chunk_received"
    ] * 2


async def test_redirect_ends_at_the_last_url(client, serve_app):
    base = await serve_app(_app())
    rec = Recorder(client)
    session = client.make(trace_configs=[rec.config])
    async with session.get(base + "/r") as resp:
        assert resp.status == 200
    (end,) = rec.params("request_end")
    assert end.url == URL(base + "/") and end.response is resp
    assert rec.names(WORKER_SIGNALS) == ["request_start", "request_end"]


async def test_failed_connection_and_raise_for_status_send_the_exception(client, serve_app):
    base = await serve_app(_app())
    rec = Recorder(client)
    session = client.make(trace_configs=[rec.config])
    with pytest.raises(client.mod.ClientConnectorError) as info:
        await session.get("http://127.0.0.1:1/x")
    (exc,) = rec.params("request_exception")
    assert exc.exception is info.value
    assert (exc.method, exc.url) == ("GET", URL("http://127.0.0.1:1/x"))
    assert rec.take(WORKER_SIGNALS) == ["request_start", "request_exception"]
    with pytest.raises(client.mod.ClientResponseError):
        await session.get(base + "/status/500", raise_for_status=True)
    assert rec.names(WORKER_SIGNALS) == ["request_start", "request_exception"]


async def test_each_config_has_its_own_context_per_request(client, serve_app):
    base = await serve_app(_app())
    made: list[Any] = []

    def factory(**kw: Any) -> SimpleNamespace:
        made.append(kw)
        return SimpleNamespace(**kw)

    first, second = Recorder(client, trace_config_ctx_factory=factory), Recorder(client)
    session = client.make(trace_configs=[first.config, second.config])
    marker = {"request": 1}
    async with session.get(base + "/", trace_request_ctx=marker):
        pass
    async with session.get(base + "/"):
        pass
    assert made == [{"trace_request_ctx": marker}, {"trace_request_ctx": None}]
    for rec in (first, second):
        ctxs = [ctx for s, _, ctx, _ in rec.seen if s == "request_start"]
        assert [c.trace_request_ctx for c in ctxs] == [marker, None]
        assert ctxs[0] is not ctxs[1]
    assert {id(c) for *_, c, _ in first.seen}.isdisjoint({id(c) for *_, c, _ in second.seen})


async def test_handlers_awaited_in_order_config_by_config(client, serve_app):
    base = await serve_app(_app())
    order: list[str] = []
    configs = []
    for name in ("a", "b"):
        config = client.mod.TraceConfig()

        async def slow(session: Any, ctx: Any, params: Any, name: str = name) -> None:
            await asyncio.sleep(0)
            order.append(name + "1")

        async def fast(session: Any, ctx: Any, params: Any, name: str = name) -> None:
            order.append(name + "2")

        config.on_request_start.append(slow)
        config.on_request_start.append(fast)
        configs.append(config)
    session = client.make(trace_configs=configs)
    async with session.get(base + "/"):
        assert order == ["a1", "a2", "b1", "b2"]
    with pytest.raises(RuntimeError):
        configs[0].on_request_start.append(fast)


async def test_docs_start_end_timing_through_trace_config_ctx(client, serve_app):
    """aiohttp's "Client Tracing": the start time kept in ``trace_config_ctx``."""
    base = await serve_app(_app())
    took: list[float] = []

    async def on_request_start(session: Any, trace_config_ctx: Any, params: Any) -> None:
        trace_config_ctx.start = asyncio.get_running_loop().time()

    async def on_request_end(session: Any, trace_config_ctx: Any, params: Any) -> None:
        took.append(asyncio.get_running_loop().time() - trace_config_ctx.start)

    trace_config = client.mod.TraceConfig()
    trace_config.on_request_start.append(on_request_start)
    trace_config.on_request_end.append(on_request_end)
    async with client.make(trace_configs=[trace_config]) as session:
        for path in ("/", "/r"):
            async with session.get(base + path) as resp:
                assert resp.status == 200
    assert len(took) == 2 and all(t >= 0 for t in took)


async def test_docs_trace_request_ctx(client, serve_app):
    base = await serve_app(_app())
    seen: list[Any] = []

    async def on_request_start(session: Any, trace_config_ctx: Any, params: Any) -> None:
        seen.append(trace_config_ctx.trace_request_ctx)

    trace_config = client.mod.TraceConfig()
    trace_config.on_request_start.append(on_request_start)
    async with client.make(trace_configs=[trace_config]) as session:
        for verb in ("get", "post", "put", "delete"):
            await getattr(session, verb)(base + "/", trace_request_ctx={"foo": verb})
        await session.request("GET", base + "/", trace_request_ctx={"foo": "request"})
    assert seen == [{"foo": v} for v in ("get", "post", "put", "delete", "request")]


async def retry_once(req: Any, handler: Any) -> Any:
    """A middleware that sends every request twice, keeping the second answer."""
    resp = await handler(req)
    resp.release()
    return await handler(req)


async def test_middleware_retry_is_one_request_start(client, serve_app):
    """aiohttp 3.14 sends ``on_request_start`` once per request, before its
    middlewares: a retry is a second exchange (connection and headers sent again),
    not a second request start."""
    base = await serve_app(_app())
    rec = Recorder(client)

    session = client.make(trace_configs=[rec.config], middlewares=[retry_once])
    async with session.get(base + "/") as resp:
        assert await resp.read() == b"hello"
    assert rec.names(WORKER_SIGNALS) == [
        "request_start", "request_end", "response_chunk_received"
    ]
    assert rec.params("request_end")[0].response is resp


async def test_middleware_redirect_and_failure(client, serve_app):
    base = await serve_app(_app())
    rec = Recorder(client)

    async def passthrough(req: Any, handler: Any) -> Any:
        return await handler(req)

    session = client.make(trace_configs=[rec.config], middlewares=[passthrough])
    async with session.get(base + "/r") as resp:
        assert resp.status == 200
    assert rec.take({*WORKER_SIGNALS, "request_redirect"}) == [
        "request_start", "request_redirect", "request_end"
    ]
    with pytest.raises(client.mod.ClientConnectorError):
        await session.get("http://127.0.0.1:1/")
    assert rec.names(WORKER_SIGNALS) == ["request_start", "request_exception"]


async def test_untraced_session_asks_for_no_events(make_session, serve_app, monkeypatch):
    """A session without trace_configs sends ``Request.trace`` False (the broker then
    sends no TraceEvent), even beside a traced session."""
    base = await serve_app(_app())
    traced = make_session(trace_configs=[worker_client.TraceConfig()])
    plain = make_session()
    async with traced.get(base + "/"), plain.get(base + "/"):
        pass
    transport = await plain._get_transport()
    sent: list[tuple[bool, Any]] = []
    original = type(transport).send

    async def spy(self: Any, req: Any, body: Any, handle: Any, *rest: Any) -> Any:
        sent.append((req.trace, handle.on_trace))
        return await original(self, req, body, handle, *rest)

    monkeypatch.setattr(type(transport), "send", spy)
    for session in (plain, traced):
        async with session.get(base + "/"):
            pass
    # the plain session's request may take the fast path (worker_client.fast): no
    # Request at all, so nothing to trace either
    assert sent[:-1] in ([], [(False, None)])
    assert sent[-1][0] is True and sent[-1][1] is not None


# -- the whole sequence, beside aiohttp's (needs the broker's TraceEvents) -------------


async def test_sequence_matches_aiohttp(client, serve_app):
    """A first request (DNS miss, new connection), a second (reuse), a redirect, and a
    failed connection: the same signals in the same order as aiohttp 3.14's."""
    base = await serve_app(_app(), host="localhost")
    rec = Recorder(client)
    session = client.make(trace_configs=[rec.config])
    for path in ("/", "/", "/r"):
        async with session.get(base + path) as resp:
            await resp.read()
    with pytest.raises(client.mod.ClientConnectorError):
        await session.get("http://127.0.0.1:1/")
    assert rec.names() == [
        "request_start", "connection_create_start", "dns_cache_miss",
        "dns_resolvehost_start", "dns_resolvehost_end", "connection_create_end",
        "request_headers_sent", "request_end", "response_chunk_received",
        "request_start", "connection_reuseconn", "request_headers_sent", "request_end",
        "response_chunk_received",
        "request_start", "connection_reuseconn", "request_headers_sent", "request_redirect",
        "connection_reuseconn", "request_headers_sent", "request_end",
        "response_chunk_received",
        "request_start", "connection_create_start", "request_exception",
    ]
    (redirect,) = rec.params("request_redirect")
    assert redirect.response.status == 302 and redirect.url == URL(base + "/r")
    sent = rec.params("request_headers_sent")
    assert [p.url for p in sent] == [URL(base + p) for p in ("/", "/", "/r", "/")]
    assert all(p.method == "GET" and "Host" in p.headers for p in sent)


async def test_sequence_of_a_middleware_retry_matches_aiohttp(client, serve_app):
    base = await serve_app(_app())
    rec = Recorder(client)

    session = client.make(trace_configs=[rec.config], middlewares=[retry_once])
    async with session.get(base + "/") as resp:
        await resp.read()
    assert rec.names() == [
        "request_start", "connection_create_start", "connection_create_end",
        "request_headers_sent", "connection_reuseconn", "request_headers_sent",
        "request_end", "response_chunk_received",
    ]


async def test_body_pieces_sent_follow_the_headers(client, serve_app):
    """Inline bodies and a streamed one: ``on_request_chunk_sent`` after the headers,
    the pieces making up the body."""
    base = await serve_app(_app())
    rec = Recorder(client)
    session = client.make(trace_configs=[rec.config])

    async def stream() -> AsyncIterator[bytes]:
        for piece in (b"ab", b"cd", b"ef"):
            yield piece

    # inline, inline over 1 MiB (sent in pieces by the worker, still inline), streamed
    for data in (b"0123456789", bytes(range(256)) * 4100, stream()):
        with warnings.catch_warnings():  # aiohttp's ResourceWarning for a large bytes
            warnings.simplefilter("ignore", ResourceWarning)
            async with session.post(base + "/echo", data=data) as resp:
                body = await resp.read()
        names = rec.names({"request_headers_sent", "request_chunk_sent", "request_end"})
        assert names[0] == "request_headers_sent" and names[-1] == "request_end"
        assert set(names[1:-1]) == {"request_chunk_sent"}
        assert b"".join(p.chunk for p in rec.params("request_chunk_sent")) == body
        assert all(p.method == "POST" for p in rec.params("request_chunk_sent"))
        rec.seen.clear()


async def test_broker_events_fed_by_hand_reach_the_handlers(make_session, serve_app, monkeypatch):
    """The session's side of the broker's events, whoever sends them: events handed to
    a traced stream's ``on_trace`` before its head become their signals, in order, with
    their params (the redirect's response built as history's, a piece of an inline body
    sliced from it), all before ``on_request_end``."""
    from shared.messages import HistoryItem, TraceEvent

    base = await serve_app(_app())
    rec = Recorder(Client(name="ours", mod=worker_client, make=make_session))
    session = make_session(trace_configs=[rec.config])
    transport = await session._get_transport()
    original = type(transport).send
    item = HistoryItem(307, "Temporary", (1, 1), [(b"Location", b"/echo")],
                       base + "/old", "POST", [])

    async def feeding(self: Any, req: Any, body: Any, handle: Any, *rest: Any) -> Any:
        for event in (
            TraceEvent(req.stream, "dns_cache_hit", host="fed.test", port=80),
            TraceEvent(req.stream, "request_headers_sent", method="POST", url=base + "/old",
                       headers=[("Host", "fed.test")]),
            TraceEvent(req.stream, "request_chunk_sent", size=4),
            TraceEvent(req.stream, "request_redirect", redirect=item),
        ):
            handle.on_trace(event)
        return await original(self, req, body, handle, *rest)

    monkeypatch.setattr(type(transport), "send", feeding)
    async with session.post(base + "/echo", data=b"0123456789") as resp:
        assert await resp.read() == b"0123456789"
    names = rec.names()
    fed = ["dns_cache_hit", "request_headers_sent", "request_chunk_sent", "request_redirect"]
    at = names.index("dns_cache_hit")
    assert names[0] == "request_start" and names[at : at + 4] == fed
    assert names[-2:] == ["request_end", "response_chunk_received"]
    assert rec.params("dns_cache_hit")[0] == worker_client.TraceDnsCacheHitParams("fed.test")
    assert rec.params("request_chunk_sent")[0].chunk == b"0123"
    redirect = rec.params("request_redirect")[0]
    assert redirect.response.status == 307 and redirect.response.url == URL(base + "/old")
    assert redirect.response.request_info.url == URL(base + "/echo")
    assert (redirect.method, redirect.url) == ("POST", URL(base + "/echo"))


async def test_streamed_pieces_wait_for_their_signal(make_session, serve_app, monkeypatch):
    """A streamed body's pieces, once the broker said the headers went: each waits for
    its ``on_request_chunk_sent`` (run by the request's task) before it goes on."""
    from shared.messages import TraceEvent

    base = await serve_app(_app())
    order: list[Any] = []
    config = worker_client.TraceConfig()

    async def on_chunk(session: Any, ctx: Any, params: Any) -> None:
        await asyncio.sleep(0)
        order.append(("signal", params.chunk))

    config.on_request_chunk_sent.append(on_chunk)
    session = make_session(trace_configs=[config])
    transport = await session._get_transport()
    original = type(transport).send

    async def feeding(self: Any, req: Any, body: Any, handle: Any, *rest: Any) -> Any:
        handle.on_trace(TraceEvent(req.stream, "request_headers_sent", url=base + "/echo"))
        return await original(self, req, body, handle, *rest)

    monkeypatch.setattr(type(transport), "send", feeding)

    async def stream() -> AsyncIterator[bytes]:
        for piece in (b"ab", b"cd", b"ef"):
            order.append(("pulled", piece))
            yield piece

    async with session.post(base + "/echo", data=stream()) as resp:
        assert await resp.read() == b"abcdef"
    signals = [chunk for what, chunk in order if what == "signal"]
    assert signals[:3] == [b"ab", b"cd", b"ef"]
    for piece, following in ((b"ab", b"cd"), (b"cd", b"ef")):
        # the next piece is pulled only once this one's signal was sent
        assert order.index(("signal", piece)) < order.index(("pulled", following))


async def test_body_pieces_sent_again_after_a_307(client, serve_app):
    """A re-readable streamed body followed through a 307: its pieces after each hop's
    headers, the redirect between them."""
    import io

    base = await serve_app(_app())
    rec = Recorder(client)
    session = client.make(trace_configs=[rec.config])
    data = b"0123456789" * 1000
    async with session.post(base + "/307", data=io.BytesIO(data)) as resp:
        assert await resp.read() == data
    names = rec.names({"request_headers_sent", "request_chunk_sent", "request_redirect"})
    at = names.index("request_redirect")
    for hop in (names[:at], names[at + 1 :]):
        assert hop[0] == "request_headers_sent"
        assert set(hop[1:]) == {"request_chunk_sent"}
    chunks = [p.chunk for p in rec.params("request_chunk_sent")]
    first = names[:at].count("request_chunk_sent")
    assert b"".join(chunks[:first]) == b"".join(chunks[first:]) == data
    urls = [p.url.path for p in rec.params("request_chunk_sent")]
    assert set(urls[:first]) == {"/307"} and set(urls[first:]) == {"/echo"}


# -- a handler that raises, redirects that fail, compressed bodies: as aiohttp ---------


async def passthrough(req: Any, handler: Any) -> Any:
    return await handler(req)


@pytest.mark.parametrize("mw", [(), (passthrough,)], ids=["plain", "middleware"])
async def test_an_exception_after_a_redirect_names_the_hop_tried(client, serve_app, mw):
    """``on_request_exception`` carries aiohttp's method and URL of the hop being tried:
    the redirect's target once it is followed (a 303 made the POST a GET), the redirected
    hop's own while it is not (too many redirects)."""
    base = await serve_app(_app())
    rec = Recorder(client)
    session = client.make(trace_configs=[rec.config], middlewares=mw)
    with pytest.raises(client.mod.ClientConnectorError):
        await session.post(base + "/to-nowhere", data=b"abc")
    (exc,) = rec.params("request_exception")
    assert (exc.method, exc.url) == ("GET", URL("http://127.0.0.1:1/gone#frag"))
    rec.seen.clear()
    with pytest.raises(client.mod.TooManyRedirects):
        await session.get(base + "/r#frag", max_redirects=1)
    (exc,) = rec.params("request_exception")
    assert (exc.method, exc.url) == ("GET", URL(base + "/r#frag"))


async def test_a_redirect_without_location_is_signalled_with_middlewares(client, serve_app):
    """aiohttp sends ``on_request_redirect`` for a redirect status it then returns (no
    Location), with or without middlewares."""
    base = await serve_app(_app())
    rec = Recorder(client)
    for mw in ((), (passthrough,)):
        session = client.make(trace_configs=[rec.config], middlewares=mw)
        async with session.get(base + "/no-location") as resp:
            assert resp.status == 302
        assert rec.take(WORKER_SIGNALS | {"request_redirect"}) == [
            "request_start", "request_redirect", "request_end"
        ]


@pytest.mark.parametrize(
    "signal", ["connection_create_end", "request_headers_sent", "request_redirect"]
)
async def test_a_raising_handler_is_the_last_signal_before_the_exception(
    client, serve_app, signal
):
    """A handler that raises fails its request with that exception, as in aiohttp:
    the events that were still to come are not signalled, only the exception is."""
    base = await serve_app(_app())
    rec = Recorder(client)

    async def boom(session: Any, ctx: Any, params: Any) -> None:
        raise LookupError(signal)

    getattr(rec.config, "on_" + signal).append(boom)
    session = client.make(trace_configs=[rec.config])
    with pytest.raises(LookupError):
        await session.post(base + "/307", data=b"abc")
    names = rec.names()
    assert names[-2:] == [signal, "request_exception"]
    assert names.count(signal) == 1
    assert type(rec.params("request_exception")[0].exception) is LookupError


async def test_a_raising_chunk_handler_fails_the_request_as_a_connection_error(
    client, serve_app
):
    """aiohttp's writer turns an exception from ``on_request_chunk_sent`` into a
    ``ClientConnectionError`` caused by it."""
    base = await serve_app(_app())
    rec = Recorder(client)

    async def boom(session: Any, ctx: Any, params: Any) -> None:
        raise LookupError("chunk")

    rec.config.on_request_chunk_sent.append(boom)
    session = client.make(trace_configs=[rec.config])

    async def stream() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cd"

    for data in (b"abc", stream()):
        with pytest.raises(client.mod.ClientConnectionError) as info:
            await session.post(base + "/echo", data=data)
        assert isinstance(info.value.__cause__, LookupError)
        assert rec.take({"request_chunk_sent", "request_exception"}) == [
            "request_chunk_sent", "request_exception"
        ]


@pytest.mark.parametrize("signal", ["request_end", "request_redirect"])
async def test_a_raising_end_or_redirect_handler_frees_the_pool_slot(
    client, serve_app, signal
):
    """The response a raising ``on_request_end`` (or, with middlewares, a raising
    ``on_request_redirect``) never returns gives its connection back, as aiohttp's
    does: a pool of one serves the next request."""
    base = await serve_app(_app())
    rec = Recorder(client)

    async def boom(session: Any, ctx: Any, params: Any) -> None:
        raise LookupError(signal)

    getattr(rec.config, "on_" + signal).append(boom)
    mw = () if signal == "request_end" else (passthrough,)
    named = {} if client.name == "aiohttp" else {"name": uuid.uuid4().hex}
    connector = client.mod.TCPConnector(limit=1, **named)
    session = client.make(
        connector=connector, trace_configs=[rec.config], middlewares=mw
    )
    other = client.make(connector=connector, connector_owner=False)
    path = "/big" if signal == "request_end" else "/big-redirect"
    for _ in range(2):
        try:
            await session.get(base + path)
        except LookupError:
            pass
        else:
            raise AssertionError("the handler's exception was not raised")
        resp = await asyncio.wait_for(other.get(base + "/"), 10)
        assert await resp.read() == b"hello"


async def test_pieces_of_a_compressed_body_are_the_body_as_given(client, serve_app):
    """With ``compress=``, aiohttp's writer signals each piece before compressing it."""
    base = await serve_app(_app())
    rec = Recorder(client)
    data = b"0123456789" * 1000

    async def stream() -> AsyncIterator[bytes]:
        for at in range(0, len(data), 4000):
            yield data[at : at + 4000]

    for mw in ((), (passthrough,)):
        session = client.make(trace_configs=[rec.config], middlewares=mw)
        for body in (data, stream()):
            async with session.post(base + "/echo", data=body, compress="deflate") as resp:
                assert resp.status == 200
            chunks = [p.chunk for p in rec.params("request_chunk_sent")]
            assert b"".join(chunks) == data
            rec.seen.clear()


async def test_request_start_url_keeps_the_credentials_as_aiohttp(client, serve_app):
    """aiohttp's ``on_request_start`` gets the URL as given (its user and password
    included); the request's other signals get it without them."""
    base = await serve_app(_app())
    rec = Recorder(client)
    session = client.make(trace_configs=[rec.config])
    given = base.replace("http://", "http://u%20:p%40ss@") + "/?a=1"
    async with session.get(given, params={"b": "2"}) as resp:
        assert resp.status == 200
    (start,) = rec.params("request_start")
    assert start.url == URL(given + "&b=2")
    assert (start.url.user, start.url.password) == ("u ", "p@ss")
    (end,) = rec.params("request_end")
    assert end.url == URL(base + "/?a=1&b=2")


@pytest.mark.parametrize("mw", [(), (passthrough,)], ids=["plain", "middleware"])
async def test_closing_the_session_while_a_handler_runs_fails_the_request(
    client, serve_app, mw
):
    """``close()`` while a traced request's handler runs (its head may be in already):
    the request fails, as aiohttp's, and nothing else is signalled but the exception."""
    base = await serve_app(_app())
    rec = Recorder(client)
    entered, gate = asyncio.Event(), asyncio.Event()

    async def slow(session: Any, ctx: Any, params: Any) -> None:
        entered.set()
        await gate.wait()

    rec.config.on_request_headers_sent.append(slow)
    session = client.make(trace_configs=[rec.config], middlewares=mw)
    request = asyncio.ensure_future(session.get(base + "/big"))
    await entered.wait()
    await session.close()
    gate.set()
    with pytest.raises(client.mod.ClientConnectionError):
        await request
    assert rec.names()[-2:] == ["request_headers_sent", "request_exception"]


@pytest.mark.parametrize("mw", [(), (passthrough,)], ids=["plain", "middleware"])
async def test_a_redirect_to_another_origin_drops_credentials_from_the_headers(
    client, serve_app, mw
):
    """aiohttp's request ``headers`` (the params' of start, redirect and end alike) lose
    ``Authorization`` and ``Cookie`` when a redirect leaves the origin."""
    base = await serve_app(_app())
    other = base.replace("127.0.0.1", "localhost")
    rec = Recorder(client)
    session = client.make(trace_configs=[rec.config], middlewares=mw)
    sent = {"Authorization": "Basic eDp5", "Cookie": "a=b", "X-Kept": "1"}
    async with session.get(other + "/to", params={"u": base + "/"}, headers=sent) as resp:
        assert resp.status == 200
    (end,) = rec.params("request_end")
    assert dict(end.headers) == {"X-Kept": "1"}
    rec.seen.clear()
    async with session.get(base + "/r", headers=sent) as resp:  # same origin: kept
        assert resp.status == 200
    (end,) = rec.params("request_end")
    assert dict(end.headers) == sent


async def test_a_streamed_body_refused_before_100_continue_sends_no_pieces(client, serve_app):
    """``expect100=True`` and a final answer before ``100 Continue``: the body is never
    written, so no ``on_request_chunk_sent``, as in aiohttp (and none after a go-ahead
    before it)."""
    base = await serve_app(_app())
    rec = Recorder(client)
    session = client.make(trace_configs=[rec.config])

    async def stream() -> AsyncIterator[bytes]:
        for piece in (b"ab", b"cd", b"ef"):
            yield piece

    async with session.post(base + "/refuse", data=stream(), expect100=True) as resp:
        assert resp.status == 417
    assert "request_chunk_sent" not in rec.names()
    assert rec.take()[-1] == "request_end"
    async with session.post(base + "/echo", data=stream(), expect100=True) as resp:
        assert await resp.read() == b"abcdef"
    names = rec.names({"request_headers_sent", "request_chunk_sent", "request_end"})
    assert names == ["request_headers_sent", *["request_chunk_sent"] * 3, "request_end"]


@pytest.mark.parametrize("mw", [(), (passthrough,)], ids=["plain", "middleware"])
async def test_urls_along_redirects_with_fragments_as_aiohttp(client, serve_app, mw):
    """Three redirects (307, 303, 307) to Locations with fragments: the hops' headers and
    pieces sent carry their URLs without the fragment, the redirects and the end
    aiohttp's ``url`` with it."""
    base = await serve_app(_app())
    rec = Recorder(client)
    session = client.make(trace_configs=[rec.config], middlewares=mw)
    async with session.post(base + "/chain/3", data=b"xyz") as resp:
        assert await resp.read() == b"end"
    sent = rec.params("request_headers_sent")
    assert [(p.method, p.url) for p in sent] == [
        ("POST", URL(base + "/chain/3")), ("POST", URL(base + "/chain/2")),
        ("GET", URL(base + "/chain/1")), ("GET", URL(base + "/chain/0")),
    ]
    chunks = rec.params("request_chunk_sent")
    assert [(p.url, p.chunk) for p in chunks] == [
        (URL(base + "/chain/3"), b"xyz"), (URL(base + "/chain/2"), b"xyz")
    ]
    redirects = rec.params("request_redirect")
    assert [(p.method, p.url) for p in redirects] == [
        ("POST", URL(base + "/chain/3")), ("POST", URL(base + "/chain/2#f3")),
        ("GET", URL(base + "/chain/1#f2")),
    ]
    (end,) = rec.params("request_end")
    assert (end.method, end.url) == ("GET", URL(base + "/chain/0#f1"))
