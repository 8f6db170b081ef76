"""The broker's trace events (``TraceEvent``) in both modes, below the session: requests
built by hand with ``trace=True`` and a sink on their ``StreamHandle``. Each sequence is
checked against what aiohttp 3.14 emits for the same requests through a ``TraceConfig``
(its signal names without ``on_``), for the kinds the broker sends (``TRACE_KINDS``)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shared.messages import TRACE_KINDS, Data, End, Failure, Head, Request, TraceEvent
from shared.specs import ClientTimeout, PoolSpec, ProxyRoute, ProxySpec, encode_pool, encode_proxy
from worker_client.exceptions import BrokerProtocolError
from worker_client.handle import StreamHandle
from worker_client.transport import IPCTransport, Transport, get_transport, release_transport

from .raw_worker import RawWorker, raw_workers  # noqa: F401  (the fixture)
from .test_dns import FakeDNS, dns_server, make_resolver  # noqa: F401  (the fixtures)

TIMEOUT = ClientTimeout(total=20, connect=10)


class Failed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class Recorder:
    """The trace events of one request: kinds in order, the events, and a wake-up."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.events: list[Any] = []
        self.changed = asyncio.Event()

    def add(self, kind: str, event: Any = None) -> None:
        self.kinds.append(kind)
        self.events.append(event)
        self.changed.set()

    async def until(self, kind: str) -> None:
        while kind not in self.kinds:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)

    def of(self, kind: str) -> list[TraceEvent]:
        return [e for k, e in zip(self.kinds, self.events, strict=True) if k == kind]


def fresh_pool(**kw: Any) -> PoolSpec:
    """A pool of its own, and a DNS cache of its own (its policy differs by the ttl):
    the broker process outlives the test."""
    ttl = 30 + uuid.uuid4().int % 10_000 / 7
    return PoolSpec(name=f"trace-{uuid.uuid4().hex}", ttl_dns_cache=ttl, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


# -- the two clients, the same requests -------------------------------------------------


class Ours:
    """Requests through our transport, traced; the body read to its end."""

    def __init__(self, transport: Transport, pool: PoolSpec) -> None:
        self.transport = transport
        self.pool = encode_pool(pool)

    async def fetch(
        self,
        url: str,
        rec: Recorder,
        method: str = "GET",
        data: bytes | None = None,
        parts: list[bytes] | None = None,
        sink: Callable[[TraceEvent], None] | None = None,
        **fields: Any,
    ) -> Head:
        t = self.transport
        sid = t.next_stream_id()
        handle = StreamHandle(t, sid, Failed)
        handle.on_trace = sink or (lambda ev: rec.add(ev.kind, ev))
        req = Request(
            sid,
            method,
            url,
            body=data,
            streamed=parts is not None,
            pool=self.pool,
            timeout=TIMEOUT,
            trace=True,
            **fields,
        )
        await t.send(req, None if parts is None else _chunks(parts), handle)
        head = await handle.head
        await handle.content.read()
        return head


class Theirs:
    """The same requests through aiohttp, with a TraceConfig on every broker-side signal."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def fetch(
        self,
        url: str,
        rec: Recorder,
        method: str = "GET",
        data: bytes | None = None,
        parts: list[bytes] | None = None,
        **kw: Any,
    ) -> None:
        body: Any = data if parts is None else _chunks(parts)
        async with self.session.request(method, url, data=body, trace_request_ctx=rec, **kw) as r:
            await r.read()


def trace_config() -> aiohttp.TraceConfig:
    config = aiohttp.TraceConfig()
    for kind in TRACE_KINDS:

        async def record(session: Any, ctx: Any, params: Any, kind: str = kind) -> None:
            ctx.trace_request_ctx.add(kind, params)

        getattr(config, f"on_{kind}").append(record)
    return config


@pytest.fixture
async def transport(broker_address: str | None, serve_app: Any) -> AsyncIterator[Transport]:
    t = await get_transport(broker_address)
    yield t
    await release_transport(t)


@pytest.fixture
async def aiohttp_session() -> AsyncIterator[Callable[..., aiohttp.ClientSession]]:
    sessions: list[aiohttp.ClientSession] = []

    def make(**connector: Any) -> aiohttp.ClientSession:
        s = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(**connector), trace_configs=[trace_config()]
        )
        sessions.append(s)
        return s

    yield make
    for s in sessions:
        await s.close()


@pytest.fixture
async def app_url(serve_app: Callable[..., Awaitable[str]]) -> Callable[[], Awaitable[Any]]:
    """An app at ``http://localhost:PORT`` (a name to resolve): ``/`` answers, ``/redirect``
    sends to ``/``, ``/post`` reads the body, ``/hold`` answers once ``release`` is set."""

    async def start() -> Any:
        got_hold = asyncio.Event()
        release = asyncio.Event()

        async def ok(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound("/")

        async def nowhere(request: web.Request) -> web.Response:
            return web.Response(status=302, text="no Location")

        async def loop(request: web.Request) -> web.Response:
            raise web.HTTPFound("/loop")

        async def post(request: web.Request) -> web.Response:
            return web.Response(text=str(len(await request.read())))

        async def refuse(request: web.Request) -> web.Response:
            return web.Response(status=417, text="no")

        async def hold(request: web.Request) -> web.Response:
            got_hold.set()
            await release.wait()
            return web.Response(text="held")

        app = web.Application()
        app.router.add_get("/", ok)
        app.router.add_get("/redirect", redirect)
        app.router.add_get("/nowhere", nowhere)
        app.router.add_get("/loop", loop)
        app.router.add_post("/post", post)
        app.router.add_post("/refuse", post, expect_handler=refuse)
        app.router.add_get("/hold", hold)
        url = await serve_app(app, host="localhost")
        return url, got_hold, release

    return start


# -- the sequences, against aiohttp's ----------------------------------------------------

FIRST = [
    "connection_create_start",
    "dns_cache_miss",
    "dns_resolvehost_start",
    "dns_resolvehost_end",
    "connection_create_end",
    "request_headers_sent",
]
SECOND = ["connection_reuseconn", "request_headers_sent"]
REDIRECT = [*SECOND, "request_redirect", *SECOND]
POST = [*SECOND, "request_chunk_sent"]


async def test_first_second_redirect_and_post_sequences_match_aiohttp(
    transport: Transport, app_url: Any, aiohttp_session: Any
) -> None:
    url, _, _ = await app_url()
    script = [
        (url + "/", "GET", None),
        (url + "/", "GET", None),
        (url + "/redirect", "GET", None),
        (url + "/post", "POST", b"x" * 1000),
    ]
    ours, theirs = Ours(transport, fresh_pool()), Theirs(aiohttp_session())
    got: list[Recorder] = []
    for target, method, data in script:
        got.append(Recorder())
        await ours.fetch(target, got[-1], method, data)
    want: list[Recorder] = []
    for target, method, data in script:
        want.append(Recorder())
        await theirs.fetch(target, want[-1], method, data)
    assert [r.kinds for r in want] == [FIRST, SECOND, REDIRECT, POST]  # aiohttp's
    assert [r.kinds for r in got] == [r.kinds for r in want]

    first, _, redirect, post = got
    host, port = "localhost", int(url.rsplit(":", 1)[1])
    for event in first.events[1:4]:
        assert (event.host, event.port) == (host, port)
    sent = first.of("request_headers_sent")[0]
    assert (sent.method, sent.url) == ("GET", url + "/")
    assert ("Host", f"localhost:{port}") in sent.headers
    hops = redirect.of("request_headers_sent")
    assert [e.url for e in hops] == [url + "/redirect", url + "/"]
    followed = redirect.of("request_redirect")[0].redirect
    assert (followed.status, followed.url, followed.method) == (302, url + "/redirect", "GET")
    assert (b"Location", b"/") in followed.headers
    assert [e.size for e in post.of("request_chunk_sent")] == [1000]
    assert ("Content-Length", "1000") in post.of("request_headers_sent")[0].headers


async def test_a_new_connection_to_a_cached_name_is_a_dns_cache_hit_as_in_aiohttp(
    transport: Transport, app_url: Any, aiohttp_session: Any
) -> None:
    url, _, _ = await app_url()
    ours, theirs = (
        Ours(transport, fresh_pool(force_close=True)),
        Theirs(aiohttp_session(force_close=True)),
    )
    got, want = [Recorder(), Recorder()], [Recorder(), Recorder()]
    for rec in got:
        await ours.fetch(url + "/", rec)
    for rec in want:
        await theirs.fetch(url + "/", rec)
    assert (
        [r.kinds for r in got]
        == [r.kinds for r in want]
        == [
            FIRST,
            [
                "connection_create_start",
                "dns_cache_hit",
                "connection_create_end",
                "request_headers_sent",
            ],
        ]
    )


async def test_a_redirect_without_location_and_too_many_redirects_as_in_aiohttp(
    transport: Transport, app_url: Any, aiohttp_session: Any
) -> None:
    url, _, _ = await app_url()
    ours, theirs = Ours(transport, fresh_pool()), Theirs(aiohttp_session())
    await ours.fetch(url + "/", Recorder())
    await theirs.fetch(url + "/", Recorder())
    mine, want = Recorder(), Recorder()
    head = await ours.fetch(url + "/nowhere", mine)
    await theirs.fetch(url + "/nowhere", want)
    assert head.status == 302 and not head.history  # the response itself, as aiohttp
    assert mine.kinds == want.kinds == [*SECOND, "request_redirect"]
    assert mine.of("request_redirect")[0].redirect.status == 302

    mine, want = Recorder(), Recorder()
    with pytest.raises(Failed) as info:
        await ours.fetch(url + "/loop", mine, max_redirects=2)
    assert info.value.failure.code == "too_many_redirects"
    with pytest.raises(aiohttp.TooManyRedirects):
        await theirs.fetch(url + "/loop", want, max_redirects=2)
    assert mine.kinds == want.kinds == [*SECOND, "request_redirect"] * 2


async def test_a_connection_through_a_proxy_has_no_dns_events_as_in_aiohttp(
    transport: Transport, app_url: Any, aiohttp_session: Any
) -> None:
    """aiohttp traces none of the proxy's lookup (its connection to the proxy is made
    with no traces); the origin's name is the proxy's to resolve. The app plays the
    proxy: it answers the absolute-form request itself."""
    proxy, _, _ = await app_url()
    origin = "http://origin.invalid/"
    route = encode_proxy(ProxyRoute(http=ProxySpec(url=proxy)))
    mine, want = Recorder(), Recorder()
    await Ours(transport, fresh_pool()).fetch(origin, mine, proxy=route)
    await Theirs(aiohttp_session()).fetch(origin, want, proxy=proxy)
    assert (
        mine.kinds
        == want.kinds
        == [
            "connection_create_start",
            "connection_create_end",
            "request_headers_sent",
        ]
    )
    assert mine.of("request_headers_sent")[0].url == origin


async def test_a_body_held_for_100_continue_is_a_chunk_once_sent_as_in_aiohttp(
    transport: Transport, app_url: Any, aiohttp_session: Any
) -> None:
    url, _, _ = await app_url()
    ours, theirs = Ours(transport, fresh_pool()), Theirs(aiohttp_session())
    mine, want = Recorder(), Recorder()
    expect = [("Expect", "100-continue")]
    head = await ours.fetch(
        url + "/post", mine, "POST", b"y" * 300, headers=expect, expect100=True
    )
    await theirs.fetch(url + "/post", want, "POST", b"y" * 300, expect100=True)
    assert head.status == 200
    assert mine.kinds == want.kinds == [*FIRST, "request_chunk_sent"]
    assert [e.size for e in mine.of("request_chunk_sent")] == [300]

    mine, want = Recorder(), Recorder()  # a final answer first: the body never goes
    head = await ours.fetch(
        url + "/refuse", mine, "POST", b"y" * 300, headers=expect, expect100=True
    )
    await theirs.fetch(url + "/refuse", want, "POST", b"y" * 300, expect100=True)
    assert head.status == 417
    assert mine.kinds == want.kinds == [*SECOND]


async def test_traced_lookup_says_how_each_lookup_went(
    dns_server: FakeDNS,  # noqa: F811
    make_resolver: Any,  # noqa: F811
) -> None:
    cached, uncached = make_resolver(), make_resolver(use_cache=False)
    assert cached.traced_lookup("127.0.0.1", 80)[1] == "literal"
    dns_server.hold()
    first, how = cached.traced_lookup("svc.test", 80, socket.AF_INET)
    second, joined = cached.traced_lookup("svc.test", 80, socket.AF_INET)
    assert (how, joined) == ("miss", "joined") and first is second
    dns_server.release()
    assert isinstance(first, asyncio.Task) and await first
    assert cached.traced_lookup("svc.test", 80, socket.AF_INET)[1] == "hit"
    lookup, how = uncached.traced_lookup("svc.test", 80, socket.AF_INET)
    assert how == "uncached" and isinstance(lookup, asyncio.Task) and await lookup
    assert cached.figures()["hits"] == 1  # told apart without counting a hit or a miss


async def test_joining_a_lookup_in_flight_is_a_cache_hit_as_in_aiohttp(
    transport: Transport,
    app_url: Any,
    aiohttp_session: Any,
    dns_server: FakeDNS,  # noqa: F811
) -> None:
    url, _, _ = await app_url()
    url = url.replace("localhost", "svc.test")
    resolver = aiohttp.AsyncResolver(nameservers=["127.0.0.1"], **dns_server.resolver_options)
    ours = Ours(transport, fresh_pool(resolver=dns_server.resolver_spec()))
    theirs = Theirs(aiohttp_session(resolver=resolver))
    for client in (ours, theirs):
        dns_server.hold()
        first, second = Recorder(), Recorder()
        a = asyncio.ensure_future(client.fetch(url + "/", first))
        await first.until("dns_resolvehost_start")
        b = asyncio.ensure_future(client.fetch(url + "/", second))
        await second.until("dns_cache_hit")
        dns_server.release()
        await asyncio.wait_for(asyncio.gather(a, b), 10)
        assert first.kinds == FIRST
        assert second.kinds == [
            "connection_create_start",
            "dns_cache_hit",
            "connection_create_end",
            "request_headers_sent",
        ]


async def test_a_failed_connection_has_no_create_end_as_in_aiohttp(
    transport: Transport, aiohttp_session: Any
) -> None:
    url = f"http://localhost:{free_port()}/"
    mine, theirs = Recorder(), Recorder()
    with pytest.raises(Failed) as info:
        await Ours(transport, fresh_pool()).fetch(url, mine)
    assert info.value.failure.code == "connect"
    with pytest.raises(aiohttp.ClientConnectorError):
        await Theirs(aiohttp_session()).fetch(url, theirs)
    assert theirs.kinds == FIRST[:4]
    assert mine.kinds == theirs.kinds


async def test_an_ip_literal_is_not_resolved_and_an_uncached_name_has_no_cache_events(
    transport: Transport, app_url: Any, aiohttp_session: Any
) -> None:
    url, _, _ = await app_url()
    literal = url.replace("localhost", "127.0.0.1") + "/"
    runs = [
        (fresh_pool(), {}, literal),
        (fresh_pool(use_dns_cache=False), {"use_dns_cache": False}, url + "/"),
    ]
    for pool, connector, target in runs:
        mine, theirs = Recorder(), Recorder()
        await Ours(transport, pool).fetch(target, mine)
        await Theirs(aiohttp_session(**connector)).fetch(target, theirs)
        assert mine.kinds == theirs.kinds
    assert mine.kinds == [
        "connection_create_start",
        "dns_resolvehost_start",
        "dns_resolvehost_end",
        "connection_create_end",
        "request_headers_sent",
    ]


async def test_a_wait_for_a_slot_is_queued_start_and_end_as_in_aiohttp(
    transport: Transport, app_url: Any, aiohttp_session: Any
) -> None:
    ours = Ours(transport, fresh_pool(limit=1))
    theirs = Theirs(aiohttp_session(limit=1))
    kinds = []
    for client in (ours, theirs):
        url, got_hold, release = await app_url()
        first, second = Recorder(), Recorder()
        holder = asyncio.ensure_future(client.fetch(url + "/hold", first))
        await asyncio.wait_for(got_hold.wait(), 10)
        waiter = asyncio.ensure_future(client.fetch(url + "/", second))
        await second.until("connection_queued_start")
        assert second.kinds == ["connection_queued_start"]
        release.set()
        await asyncio.wait_for(asyncio.gather(holder, waiter), 10)
        kinds.append(second.kinds)
    assert (
        kinds[0]
        == kinds[1]
        == [
            "connection_queued_start",
            "connection_queued_end",
            "connection_reuseconn",
            "request_headers_sent",
        ]
    )


async def test_a_streamed_body_sends_a_chunk_event_per_piece_written(
    transport: Transport, app_url: Any, aiohttp_session: Any, mode: str
) -> None:
    url, _, _ = await app_url()
    parts = [b"a" * 10, b"b" * 20, b"c" * 30]
    mine, theirs = Recorder(), Recorder()
    ours = Ours(transport, fresh_pool())
    await ours.fetch(url + "/", Recorder())  # the connection exists: a plain reuse
    await ours.fetch(url + "/post", mine, "POST", parts=parts)
    await Theirs(aiohttp_session()).fetch(url + "/post", theirs, "POST", parts=parts)
    sizes = [e.size for e in mine.of("request_chunk_sent")]
    assert sum(sizes) == 60 and all(sizes)
    assert mine.kinds[:2] == SECOND
    assert set(mine.kinds[2:]) == {"request_chunk_sent"}
    if mode == "embedded":  # through a broker, pieces that came together go together
        assert sizes == [10, 20, 30]
        assert [len(p.chunk) for p in theirs.of("request_chunk_sent")] == sizes


# -- delivery ----------------------------------------------------------------------------


async def test_a_raising_sink_fails_the_request_and_frees_the_slot(
    transport: Transport, app_url: Any
) -> None:
    url, _, _ = await app_url()
    ours = Ours(transport, fresh_pool(limit=1))

    def sink(event: TraceEvent) -> None:
        if event.kind == "request_headers_sent":
            raise LookupError("the handler broke")

    with pytest.raises(LookupError, match="the handler broke"):
        await ours.fetch(url + "/", Recorder(), sink=sink)
    rec = Recorder()
    await asyncio.wait_for(ours.fetch(url + "/", rec), 10)  # the one slot is free again
    assert rec.kinds[-1] == "request_headers_sent"


@pytest.mark.usefixtures("raw_workers")
async def test_an_untraced_request_gets_no_trace_frame(broker_process: Any, app_url: Any) -> None:
    url, _, _ = await app_url()
    w = await RawWorker.connect(broker_process.socket_path)
    pool = encode_pool(fresh_pool())
    w.send(Request(1, "GET", url + "/", pool=pool, timeout=TIMEOUT))
    plain = await w.until_end_of(1)
    w.send(Request(3, "GET", url + "/", pool=pool, timeout=TIMEOUT, trace=True))
    traced = await w.until_end_of(3)
    assert [type(m) for m in plain] == [Head, Data, End]
    assert [m.kind for m in traced if isinstance(m, TraceEvent)] == SECOND
    assert [type(m) for m in traced] == [TraceEvent, TraceEvent, Head, Data, End]


@pytest.mark.usefixtures("raw_workers")
async def test_unread_trace_events_hold_no_pool_slot(broker_process: Any, app_url: Any) -> None:
    """aiohttp issue 5259: a worker that has not handled its events yet (here: has read
    nothing at all) does not keep the connection from the next request."""
    url, _, _ = await app_url()
    pool = encode_pool(fresh_pool(limit=1))
    slow = await RawWorker.connect(broker_process.socket_path)
    other = await RawWorker.connect(broker_process.socket_path)
    slow.send(Request(1, "GET", url + "/", pool=pool, timeout=TIMEOUT, trace=True))
    other.send(Request(1, "GET", url + "/", pool=pool, timeout=TIMEOUT, trace=True))
    done = await other.until_end_of(1)
    assert isinstance(done[-1], End)
    mine = await slow.until_end_of(1)
    kinds = [m.kind for m in mine + done if isinstance(m, TraceEvent)]
    assert kinds.count("connection_create_start") == 1  # one connection, for both
    assert isinstance(mine[-1], End)


async def test_a_trace_event_for_an_unknown_stream_is_ignored(
    broker_process: Any, app_url: Any
) -> None:
    url, _, _ = await app_url()
    t = await get_transport(broker_process.socket_path)
    try:
        assert isinstance(t, IPCTransport)
        t.dispatch(TraceEvent(999_999, "connection_reuseconn"))
        rec = Recorder()
        await Ours(t, fresh_pool()).fetch(url + "/", rec)
        assert rec.kinds == FIRST
    finally:
        await release_transport(t)


async def test_the_handle_takes_trace_events_only_before_its_head(transport: Transport) -> None:
    handle = StreamHandle(transport, transport.next_stream_id(), Failed)
    early = TraceEvent(handle.id, "connection_reuseconn")
    handle.on_trace_event(early)  # no sink yet: dropped
    got: list[TraceEvent] = []
    handle.on_trace = got.append
    handle.on_trace_event(early)
    handle.on_head(Head(handle.id, 200, "OK", (1, 1), [], "http://x/", "GET"))
    handle.on_trace_event(TraceEvent(handle.id, "request_headers_sent"))  # a broker's bug
    assert got == [early]
    handle.give_up()

    handle = StreamHandle(transport, transport.next_stream_id(), Failed)
    handle.on_trace = got.append
    handle.on_trace_event(TraceEvent(handle.id, "connection_teleported"))
    with pytest.raises(BrokerProtocolError, match="connection_teleported"):
        await handle.head
    assert got == [early]
