"""The fast paths, in both modes: embedded (``worker_client.fast``, ``broker.fast``), taken
for the common request on an idle keep-alive connection; through a broker
(``worker_client.fast_broker``), one Request frame and one head future once the session's
transport is up. Whatever is not simple goes on in the general machinery with the
behaviour unchanged. The tests of both modes run in each (the ``mode`` fixture); those of
one mode's own machinery say so (``embedded_only``; the broker's are in
test_fast_path_broker.py). Raw servers for the peers that misbehave or hold answers
back. The request-level test files also run with the fast path off (.ci/run)."""

from __future__ import annotations

import asyncio
import enum
import gzip
from collections.abc import Callable

import pytest
from aiohttp import web

import worker_client
from broker import fast as broker_fast
from tests.conftest import read_request_head
from worker_client import ClientPayloadError, ClientSession, ClientTimeout
from worker_client.fast import FastPath
from worker_client.fast_broker import BrokerFastPath
from worker_client.session import ClientSession as _Session
from worker_client.transport import EmbeddedTransport, IPCTransport

embedded_only = pytest.mark.parametrize("mode", ["embedded"])


async def hi(request: web.Request) -> web.Response:
    return web.Response(text="hi", headers={"X-Seen": request.headers.get("X-A", "")})


@pytest.fixture(autouse=True)
def _fast_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_BROKER_FAST_PATH", "1")  # whatever the run's environment


@pytest.fixture
def session(make_session: Callable[..., ClientSession], mode: str) -> ClientSession:
    """A session in the test's mode (``mode``), its fast path on."""
    s = make_session()
    assert isinstance(s._fast, {"embedded": FastPath, "broker": BrokerFastPath}[mode])
    return s


@pytest.fixture
def general_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What went the general way: the URL of each ``ClientSession._request``, and "send"
    for each Request a transport's ``send`` carried (either mode's)."""
    calls: list[str] = []
    request = _Session._request

    async def spy(self, method, url, **kw):  # type: ignore[no-untyped-def]
        calls.append(str(url))
        return await request(self, method, url, **kw)

    monkeypatch.setattr(_Session, "_request", spy)
    for transport in (EmbeddedTransport, IPCTransport):
        send = transport.send

        async def sent(self, *args, send=send):  # type: ignore[no-untyped-def]
            calls.append("send")
            return await send(self, *args)

        monkeypatch.setattr(transport, "send", sent)
    return calls


@pytest.fixture
def after_answer(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[..., None]], None]:
    """``after_answer(hook)``: the next embedded fast start, once its answer is told, runs
    ``hook(pool, key)`` in the loop pass that brought it, before the request resumes;
    the starts after it are as before."""

    def install(hook: Callable[..., None]) -> None:
        original = broker_fast.start

        def start(pool, key, method, head, body, on_response, limits):  # type: ignore[no-untyped-def]
            monkeypatch.setattr(broker_fast, "start", original)

            def told(result):  # type: ignore[no-untyped-def]
                on_response(result)
                hook(pool, key)

            return original(pool, key, method, head, body, told, limits)

        monkeypatch.setattr(broker_fast, "start", start)

    return install


def fast_count(session: ClientSession) -> int:
    assert session._fast is not None
    return session._fast.requests


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class OkServer:
    """A raw server's handler that answers every request ``ok()`` and keeps the
    connection: the heads it read, and how many connections it took."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.connections = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while True:
            self.heads.append(await read_request_head(reader))
            writer.write(ok())


# -- both modes ----------------------------------------------------------------------


async def test_taken_when_on_and_the_response_is_whole(serve_app, session, general_calls):
    app = web.Application()
    app.router.add_get("/", hi)
    base = await serve_app(app)
    for _ in range(4):
        async with session.get(base + "/", headers={"X-A": "1"}, params={"q": "v"}) as resp:
            assert resp.status == 200 and resp.reason == "OK"
            assert await resp.text() == "hi"
            assert resp.headers["X-Seen"] == "1"
            assert resp.request_info.headers["X-A"] == "1"
            assert str(resp.url) == base + "/?q=v" and resp.history == ()
            assert resp.version == worker_client.HttpVersion11
    for _ in range(2):
        async with session.get(base + "/#frag") as resp:  # as aiohttp: real_url keeps it
            assert str(resp.url) == base + "/" and str(resp.real_url) == base + "/#frag"
            assert str(resp.request_info.real_url) == base + "/#frag"
    # the first opened the connection (and made the transport); the others went fast
    assert general_calls == [base + "/", "send"]
    assert fast_count(session) == 5
    assert not session._handles and not session._transport.handles  # type: ignore[union-attr]


async def test_urls_equal_but_written_otherwise_keep_their_own_form(serve_app, session):
    """yarl's URL("http://h") equals (and hashes as) URL("http://h/"), but the response's
    url is the one asked for, as in the general path: a plan must not be shared."""
    from yarl import URL

    app = web.Application()
    app.router.add_get("/", hi)
    base = await serve_app(app)
    for url in (base + "/", base + "/", base, base, base + "/"):
        async with session.get(URL(url)) as resp:
            assert await resp.text() == "hi"
            assert str(resp.url) == url and str(resp.request_info.url) == url
    assert fast_count(session) == 4


async def test_not_taken_when_off(serve_app, make_session, monkeypatch):
    monkeypatch.setenv("HTTP_BROKER_FAST_PATH", "0")
    app = web.Application()
    app.router.add_get("/", hi)
    base = await serve_app(app)
    s = make_session()
    assert s._fast is None
    for _ in range(2):
        async with s.get(base + "/") as resp:
            assert await resp.text() == "hi"


async def test_a_post_a_gzip_body_and_raise_for_status(serve_app, session):
    got: list[bytes] = []

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        got.append(body)
        return web.Response(
            body=gzip.compress(body), headers={"Content-Encoding": "gzip"},
            status=200 if body != b"bad" else 418,
        )

    app = web.Application()
    app.router.add_post("/", echo)
    base = await serve_app(app)
    await (await session.post(base + "/", data=b"x")).read()
    bodies = (b"hello", b"world", b"hallo", b"one", b"three")  # one plan a length
    for body in bodies:
        async with session.post(base + "/", data=body) as resp:
            assert await resp.read() == body
            assert resp.content.total_raw_bytes == len(gzip.compress(body))
            assert resp.request_info.headers["Content-Length"] == str(len(body))
    with pytest.raises(worker_client.ClientResponseError) as info:
        await session.post(base + "/", data=b"bad", raise_for_status=True)
    assert info.value.status == 418
    assert got == [b"x", *bodies, b"bad"]
    assert fast_count(session) == 6


async def test_a_redirect_is_followed_and_comes_in_the_history(raw_server, session):
    async def handler(reader, writer):
        while True:
            head = await read_request_head(reader)
            if head.startswith(b"GET /r "):
                writer.write(
                    b"HTTP/1.1 302 Found\r\nLocation: /done\r\nContent-Length: 0\r\n\r\n"
                )
            else:
                writer.write(ok(head.split(b" ")[1]))
            await writer.drain()

    base = await raw_server(handler)
    assert await (await session.get(base + "/")).read() == b"/"
    async with session.get(base + "/r") as resp:
        assert await resp.read() == b"/done"
        assert resp.status == 200 and str(resp.url) == base + "/done"
        assert [h.status for h in resp.history] == [302]
        assert str(resp.history[0].url) == base + "/r"
    async with session.get(base + "/r", allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/done"
    assert fast_count(session) == 2


async def test_set_cookie_is_stored_and_sent(raw_server, make_session, mode):
    heads: list[bytes] = []

    async def handler(reader, writer):
        while True:
            heads.append(await read_request_head(reader))
            extra = b"Set-Cookie: a=1; Path=/\r\n" if len(heads) == 2 else b""
            writer.write(ok(extra=extra))
            await writer.drain()

    base = await raw_server(handler)
    jar = worker_client.CookieJar(unsafe=True)
    s = make_session(cookie_jar=jar)
    for _ in range(3):
        async with s.get(base + "/") as resp:
            assert await resp.read() == b"ok"
    # embedded, the second only: the third has a cookie to send, which the general path
    # writes; through a broker the jar lives in the broker: no reason to leave
    assert fast_count(s) == {"embedded": 1, "broker": 2}[mode]
    assert {c.key: c.value for c in jar} == {"a": "1"}
    assert b"Cookie: a=1" not in heads[1]
    assert b"Cookie: a=1\r\n" in heads[2]


async def test_total_and_sock_read_timeouts_fail_it_and_free_the_stream(
    raw_server, session, mode
):
    lost = asyncio.Event()
    connections: list[int] = []

    async def handler(reader, writer):
        connections.append(1)
        await read_request_head(reader)
        writer.write(ok())
        await read_request_head(reader)  # never answered
        await reader.read()
        lost.set()

    base = await raw_server(handler)
    for timeout, exc in (
        (ClientTimeout(total=0.1), asyncio.TimeoutError),
        (ClientTimeout(sock_read=0.1), worker_client.ServerTimeoutError),
    ):
        lost.clear()
        assert await (await session.get(base + "/")).read() == b"ok"
        with pytest.raises(exc):
            await session.get(base + "/", timeout=timeout)
        await lost.wait()  # the connection was given up with the stream, never pooled
        assert (await session.stats()).streams == 0
        assert not session._handles
    # through a broker, the request on a new connection goes fast too
    assert fast_count(session) == {"embedded": 2, "broker": 3}[mode]
    assert len(connections) == 2


async def test_a_cancel_mid_request_frees_the_connection_and_the_stream(
    raw_server, session, mode
):
    asked = asyncio.Event()
    lost = asyncio.Event()
    connections: list[int] = []

    async def handler(reader, writer):
        connections.append(1)
        await read_request_head(reader)
        writer.write(ok())
        if len(connections) > 1:
            while True:
                await read_request_head(reader)
                writer.write(ok())
        await read_request_head(reader)
        asked.set()
        await reader.read()
        lost.set()

    base = await raw_server(handler)
    assert await (await session.get(base + "/")).read() == b"ok"
    task = asyncio.ensure_future(session.get(base + "/"))
    await asked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await lost.wait()
    assert (await session.stats()).streams == 0
    assert fast_count(session) == 1
    assert await (await session.get(base + "/")).read() == b"ok"
    # through a broker, the request on a new connection goes fast too
    assert fast_count(session) == {"embedded": 1, "broker": 2}[mode]
    assert len(connections) == 2


async def test_closing_the_session_fails_a_fast_request(raw_server, session):
    asked = asyncio.Event()

    async def handler(reader, writer):
        await read_request_head(reader)
        writer.write(ok())
        await read_request_head(reader)
        asked.set()
        await reader.read()

    base = await raw_server(handler)
    assert await (await session.get(base + "/")).read() == b"ok"
    task = asyncio.ensure_future(session.get(base + "/"))
    await asked.wait()
    await session.close()
    with pytest.raises(worker_client.ClientConnectionError, match="Connection closed"):
        await task
    assert fast_count(session) == 1


class _Str(str, enum.Enum):
    """A str that equals (and hashes as) its value but is written as ``_Str.X``."""

    VALUE = "v"
    URL = "http://127.0.0.1:1/"


@pytest.mark.parametrize("fast", ["0", "1"])
async def test_a_str_subclass_equal_to_a_cached_request_is_not_taken_for_it(
    raw_server, monkeypatch, fast, make_session
):
    """A plan is for requests written the same: a header, a query value or a URL of a
    str subclass that equals another request's plain str (an Enum member) is written
    as the general path (and aiohttp) writes it, not as the plain one was (the plans
    of both modes: ``worker_client.fast_rules.key``); through a broker too, where the
    header crosses the wire (msgspec would send an Enum member's value)."""
    monkeypatch.setenv("HTTP_BROKER_FAST_PATH", fast)
    server = OkServer()
    heads = server.heads
    base = await raw_server(server)
    s = make_session()
    for _ in range(2):
        assert await (await s.get(base + "/", headers={"X-A": "v"})).read() == b"ok"
        assert await (await s.get(base + "/", params={"q": "v"})).read() == b"ok"
        with pytest.raises(worker_client.ClientConnectionError):
            await s.get("http://127.0.0.1:1/")
    assert await (await s.get(base + "/", headers={"X-A": _Str.VALUE})).read() == b"ok"
    assert f"\r\nX-A: {_Str.VALUE}\r\n".encode() in heads[-1]  # (Python's format)
    assert await (await s.get(base + "/", params={"q": _Str.VALUE})).read() == b"ok"
    assert heads[-1].startswith(b"GET /?q=_Str.VALUE ")
    with pytest.raises(worker_client.InvalidUrlClientError):
        await s.get(_Str.URL)


# -- embedded only: the engine's own connections, in the worker ---------------------


@embedded_only
async def test_a_server_that_lies_about_content_length(raw_server, session):
    """Fewer bytes than declared, then close: the body fails as on the general path;
    more than declared: the response is cut at its length, the connection not reused."""
    connections: list[int] = []

    async def handler(reader, writer):
        connections.append(1)
        await read_request_head(reader)
        writer.write(ok())
        await read_request_head(reader)
        if len(connections) == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
            await writer.drain()
            return  # closed
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
        await writer.drain()
        await reader.read()

    base = await raw_server(handler)
    assert await (await session.get(base + "/")).read() == b"ok"
    resp = await session.get(base + "/")
    with pytest.raises(ClientPayloadError):
        await resp.read()
    assert fast_count(session) == 1
    assert await (await session.get(base + "/")).read() == b"ok"
    async with session.get(base + "/") as resp:
        assert await resp.read() == b"ok"
    assert fast_count(session) == 2
    async with session.get(base + "/") as resp:  # the spoiled one was not pooled
        assert await resp.read() == b"ok"
    assert len(connections) == 3


@embedded_only
async def test_a_stale_connection_is_retried_once(raw_server, session):
    connections: list[int] = []

    async def handler(reader, writer):
        connections.append(1)
        n = len(connections)
        await read_request_head(reader)
        writer.write(ok(b"conn%d" % n))
        await writer.drain()
        if n == 1:
            await read_request_head(reader)  # the next request: dropped unanswered
            return
        await reader.read()

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        assert await resp.text() == "conn1"
    async with session.get(base + "/") as resp:
        assert await resp.text() == "conn2"
    assert fast_count(session) == 1
    assert len(connections) == 2


@embedded_only
async def test_a_connection_closed_while_idle_is_not_taken(raw_server, session):
    closed = asyncio.Event()
    connections: list[int] = []

    async def handler(reader, writer):
        connections.append(1)
        await read_request_head(reader)
        writer.write(ok())
        await writer.drain()
        if len(connections) == 1:
            writer.close()
            await writer.wait_closed()
            closed.set()
            return
        await reader.read()

    base = await raw_server(handler)
    assert await (await session.get(base + "/")).read() == b"ok"
    await closed.wait()
    pool = session._transport.engine.registry.pool_for(session._pool)  # type: ignore[union-attr]
    for _ in range(100):  # the close reaches the idle connection's protocol
        if not pool.state.n_idle:
            break
        await asyncio.sleep(0)
    assert await (await session.get(base + "/")).read() == b"ok"
    assert len(connections) == 2


@embedded_only
async def test_a_server_that_refuses_keep_alive(raw_server, session):
    connections: list[int] = []

    async def handler(reader, writer):
        connections.append(1)
        await read_request_head(reader)
        writer.write(ok(extra=b"Connection: close\r\n"))
        await writer.drain()

    base = await raw_server(handler)
    for _ in range(3):
        async with session.get(base + "/") as resp:
            assert await resp.read() == b"ok"
    assert len(connections) == 3
    assert fast_count(session) == 0  # never an idle connection to take


@embedded_only
async def test_a_body_longer_than_what_came_with_the_head(raw_server, session):
    more = asyncio.Event()
    connections: list[int] = []
    big = b"x" * 300_000

    async def handler(reader, writer):
        connections.append(1)
        await read_request_head(reader)
        writer.write(ok())
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big[:10])
        await more.wait()
        writer.write(big[10:])
        await read_request_head(reader)
        writer.write(ok())
        await reader.read()

    base = await raw_server(handler)
    assert await (await session.get(base + "/")).read() == b"ok"
    async with session.get(base + "/") as resp:
        assert resp.content_length == len(big)
        more.set()
        assert await resp.read() == big
    assert await (await session.get(base + "/")).read() == b"ok"
    assert fast_count(session) == 2
    assert len(connections) == 1


@embedded_only
async def test_a_change_to_the_session_headers_reaches_the_next_request(raw_server, session):
    server = OkServer()
    base = await raw_server(server)
    for value in ("1", "1", "2"):
        session.headers["X-Session"] = value
        async with session.get(base + "/") as resp:
            assert await resp.read() == b"ok"
            assert resp.request_info.headers["X-Session"] == value
    assert [h.count(b"X-Session: 2") for h in server.heads] == [0, 0, 1]
    assert fast_count(session) == 2


@embedded_only
async def test_a_timeout_after_the_head_came_still_fails_the_request(
    raw_server, session, after_answer
):
    """The total timeout fires in the loop pass that brought the whole response, before
    the request resumes: it fails all the same, and the connection (its exchange
    complete) goes back to the pool once, for the next request."""
    server = OkServer()
    base = await raw_server(server)
    assert await (await session.get(base + "/")).read() == b"ok"

    def time_out(pool, key):  # type: ignore[no-untyped-def]
        for call in list(session._handles):
            call._timed_out()

    after_answer(time_out)
    with pytest.raises(asyncio.TimeoutError):
        await session.get(base + "/")
    async with session.get(base + "/") as resp:
        assert await resp.read() == b"ok"
    assert fast_count(session) == 2
    assert server.connections == 1


@embedded_only
async def test_a_request_given_up_twice_lets_go_of_its_connection_once(
    raw_server, session, after_answer
):
    """Given up after the head came (its total timeout), the connection back in the pool
    and leased by another request, then given up again (the session's close, or a
    cancel, before it resumes): the other request's lease is left alone."""
    server = OkServer()
    base = await raw_server(server)
    assert await (await session.get(base + "/")).read() == b"ok"
    leased: list[object] = []

    def give_up_twice(pool, key):  # type: ignore[no-untyped-def]
        (call,) = session._handles
        call._timed_out()
        leased.append(pool.take_idle(key))  # another request's, in the meantime
        call.give_up(worker_client.ClientConnectionError("Connection closed"))

    after_answer(give_up_twice)
    with pytest.raises(asyncio.TimeoutError):
        await session.get(base + "/")
    (conn,) = leased
    assert conn.in_use and not conn.closed  # type: ignore[attr-defined]
    pool = session._transport.engine.registry.pool_for(session._pool)  # type: ignore[union-attr]
    pool.give_back(conn)
    assert await (await session.get(base + "/")).read() == b"ok"
    assert server.connections == 1


@pytest.mark.parametrize("fast", ["0", "1"])
async def test_a_cancel_as_the_answer_arrives(raw_server, monkeypatch, fast):
    """Cancelled in the loop pass that brings the whole response, before the request
    resumes: as on the general path, nothing fails in the connection's callbacks (the
    answer finds the request's future cancelled) and the connection, its exchange
    complete, is kept for the next request."""
    monkeypatch.setenv("HTTP_BROKER_FAST_PATH", fast)
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    answered = asyncio.Event()
    connections: list[int] = []

    async def handler(reader, writer):
        connections.append(1)
        await read_request_head(reader)
        writer.write(ok())
        await read_request_head(reader)
        writer.write(ok(b"late"))  # in the socket before the test resumes: read after it
        answered.set()
        await read_request_head(reader)
        writer.write(ok(b"next"))
        await reader.read()

    base = await raw_server(handler)
    async with ClientSession(broker=None) as s:
        assert await (await s.get(base + "/")).read() == b"ok"
        task = asyncio.ensure_future(s.get(base + "/"))
        await answered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await (await s.get(base + "/")).read() == b"next"
    assert errors == []
    assert len(connections) == 1
