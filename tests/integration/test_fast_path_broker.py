"""The broker-mode fast path on the worker's side (``worker_client.fast_broker``): taken
for the common request once the session's transport is up, one Request frame and one
head future; whatever is not a whole one-frame response goes on in the general
``StreamHandle`` machinery, with the behaviour unchanged. Real broker process, real
servers (raw ones for the answers a test needs to hold back). The request-level test
files also run with the fast path off (.ci/run)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import msgspec
import pytest
from aiohttp import web

import broker
import worker_client
from tests.conftest import read_request_head
from worker_client import ClientSession, ClientTimeout
from worker_client.fast_broker import BrokerFastPath
from worker_client.session import ClientSession as _Session


async def hi(request: web.Request) -> web.Response:
    return web.Response(text="hi", headers={"X-Seen": request.headers.get("X-A", "")})


@pytest.fixture(autouse=True)
def _fast_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_BROKER_FAST_PATH", "1")


@pytest.fixture
async def session(broker_process: broker.BrokerProcess) -> AsyncIterator[ClientSession]:
    s = ClientSession(broker=broker_process.socket_path)
    assert isinstance(s._fast, BrokerFastPath)
    yield s
    await s.close()


@pytest.fixture
def general_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs that went the general way (``ClientSession._request``)."""
    calls: list[str] = []
    original = _Session._request

    async def spy(self, method, url, **kw):  # type: ignore[no-untyped-def]
        calls.append(str(url))
        return await original(self, method, url, **kw)

    monkeypatch.setattr(_Session, "_request", spy)
    return calls


def fast_count(session: ClientSession) -> int:
    assert isinstance(session._fast, BrokerFastPath)
    return session._fast.requests


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


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
    assert general_calls == [base + "/"]  # the first made the transport
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


async def test_not_taken_when_off(serve_app, broker_process, monkeypatch):
    monkeypatch.setenv("HTTP_BROKER_FAST_PATH", "0")
    app = web.Application()
    app.router.add_get("/", hi)
    base = await serve_app(app)
    async with ClientSession(broker=broker_process.socket_path) as s:
        assert s._fast is None
        for _ in range(2):
            async with s.get(base + "/") as resp:
                assert await resp.text() == "hi"


async def test_a_post_a_gzip_body_and_raise_for_status(serve_app, session):
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(
            body=gzip.compress(body), headers={"Content-Encoding": "gzip"},
            status=200 if body != b"bad" else 418,
        )

    app = web.Application()
    app.router.add_post("/", echo)
    base = await serve_app(app)
    await (await session.post(base + "/", data=b"x")).read()
    for body in (b"hello", b"world", b"hallo"):  # one plan (one length), three bodies
        async with session.post(base + "/", data=body) as resp:
            assert await resp.read() == body
            assert resp.content.total_raw_bytes == len(gzip.compress(body))
    with pytest.raises(worker_client.ClientResponseError) as info:
        await session.post(base + "/", data=b"bad", raise_for_status=True)
    assert info.value.status == 418
    assert fast_count(session) == 4


async def test_a_body_that_streams(serve_app, session):
    release = asyncio.Event()
    big = bytes(range(256)) * 2048  # over what one frame carries with the head

    async def later(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"head-")
        await release.wait()
        await resp.write(b"tail")
        await resp.write_eof()
        return resp

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=big)

    app = web.Application()
    app.router.add_get("/", hi)
    app.router.add_get("/later", later)
    app.router.add_get("/big", large)
    base = await serve_app(app)
    await (await session.get(base + "/")).read()
    for _ in range(2):
        async with session.get(base + "/big") as resp:
            assert await resp.read() == big
    async with session.get(base + "/later") as resp:
        assert resp.status == 200
        assert await resp.content.readexactly(5) == b"head-"
        release.set()
        assert await resp.read() == b"tail"
    assert fast_count(session) == 3
    assert (await session.stats()).streams == 0


async def test_a_redirect_comes_in_the_history(raw_server, session):
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


async def test_set_cookie_then_the_broker_sends_it(raw_server, broker_process):
    heads: list[bytes] = []

    async def handler(reader, writer):
        while True:
            heads.append(await read_request_head(reader))
            extra = b"Set-Cookie: a=1; Path=/\r\n" if len(heads) == 2 else b""
            writer.write(ok(extra=extra))
            await writer.drain()

    base = await raw_server(handler)
    jar = worker_client.CookieJar(unsafe=True)
    async with ClientSession(broker=broker_process.socket_path, cookie_jar=jar) as s:
        for _ in range(3):
            async with s.get(base + "/") as resp:
                assert await resp.read() == b"ok"
        assert fast_count(s) == 2  # the jar lives in the broker: no reason to leave
        assert {c.key: c.value for c in jar} == {"a": "1"}
    assert b"Cookie: a=1" not in heads[1]
    assert b"Cookie: a=1\r\n" in heads[2]


async def test_a_total_timeout_fails_it_and_frees_the_stream(raw_server, session):
    lost = asyncio.Event()

    async def handler(reader, writer):
        await read_request_head(reader)
        writer.write(ok())
        await read_request_head(reader)  # never answered
        await reader.read()
        lost.set()

    base = await raw_server(handler)
    assert await (await session.get(base + "/")).read() == b"ok"
    with pytest.raises(asyncio.TimeoutError):
        await session.get(base + "/", timeout=ClientTimeout(total=0.1))
    await lost.wait()  # the broker gave the connection up with the stream
    assert fast_count(session) == 1
    assert (await session.stats()).streams == 0
    assert not session._handles


async def test_a_cancel_mid_request_frees_the_brokers_stream(raw_server, session):
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
    assert await (await session.get(base + "/")).read() == b"ok"
    assert fast_count(session) == 2
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


async def test_a_failure_reaches_the_caller_as_in_the_general_path(
    serve_app, session, unused_tcp_port, broker_process, monkeypatch
):
    app = web.Application()
    app.router.add_get("/", hi)
    base = await serve_app(app)
    await (await session.get(base + "/")).read()
    refused = f"http://127.0.0.1:{unused_tcp_port}/"
    errors = []
    for _ in range(2):
        with pytest.raises(worker_client.ClientConnectorError) as info:
            await session.get(refused)
        errors.append((type(info.value), str(info.value), info.value.port))
    assert fast_count(session) == 2
    assert not session._handles
    monkeypatch.setenv("HTTP_BROKER_FAST_PATH", "0")
    async with ClientSession(broker=broker_process.socket_path) as general:
        with pytest.raises(worker_client.ClientConnectorError) as info:
            await general.get(refused)
    assert errors == [(type(info.value), str(info.value), unused_tcp_port)] * 2


async def test_templates_follow_the_timeout_the_pool_and_a_new_connection(
    serve_app, broker_process
):
    app = web.Application()
    app.router.add_get("/", hi)
    base = await serve_app(app)
    path = broker_process.socket_path
    connector = worker_client.TCPConnector(limit=3)
    async with ClientSession(broker=path, connector=connector) as s:
        await (await s.get(base + "/")).read()
        for timeout in (None, ClientTimeout(total=5), ClientTimeout(total=5), 7.0):
            async with s.get(base + "/", timeout=timeout) as resp:
                assert await resp.text() == "hi"
        first = s._transport
        assert first is not None
        first._transport.close()  # type: ignore[attr-defined]  # the connection is lost
        await first._lost  # type: ignore[attr-defined]
        for _ in range(3):  # the first again the general way, on a new connection
            assert await (await s.get(base + "/", timeout=7.0)).text() == "hi"
        assert s._transport is not first
        assert fast_count(s) == 6
        # Another session on that connection, with its own default timeout.
        async with ClientSession(broker=path, timeout=ClientTimeout(total=9)) as other:
            for _ in range(3):
                assert await (await other.get(base + "/")).text() == "hi"
            assert fast_count(other) == 2
        assert (await s.stats()).streams == 0


async def test_the_fast_frame_is_the_general_paths_request(
    serve_app, broker_process, monkeypatch
):
    """Decoded as the broker decodes it, the templated frame is the Request the general
    path sends for the same call (stream id aside)."""
    from shared.framing import FrameReader

    app = web.Application()
    app.router.add_post("/", hi)
    base = await serve_app(app)
    requests = {}
    for on in ("0", "1"):
        monkeypatch.setenv("HTTP_BROKER_FAST_PATH", on)
        frames: list[bytes] = []
        async with ClientSession(
            broker=broker_process.socket_path, connector=worker_client.TCPConnector(limit=4),
            timeout=ClientTimeout(total=8), max_redirects=3, auto_decompress=False,
            requote_redirect_url=False,
        ) as s:
            await (await s.post(base + "/", data=b"first")).read()
            raw = s._transport._transport  # type: ignore[union-attr]
            write = raw.write

            def spy(data: bytes, write=write, frames=frames) -> None:  # type: ignore[no-untyped-def]
                frames.append(bytes(data))
                write(data)

            raw.write = spy
            try:
                for _ in range(3):
                    async with s.post(
                        base + "/", data=b"12345", headers={"X-A": "1"}, allow_redirects=False
                    ) as resp:
                        assert await resp.text() == "hi"
            finally:
                raw.write = write
            if on == "1":
                assert fast_count(s) == 3
        decoded = [m for f in frames for m in FrameReader().feed(f)]
        requests[on] = [
            # each session its own jar; by id, what the pool and timeout fields hold is unread
            msgspec.structs.asdict(m) | {"stream": 0, "jar": bool(m.jar), "pool": 0, "timeout": 0}
            for m in decoded
            if type(m).__name__ == "RequestFrame"
        ]
    assert len(requests["0"]) == len(requests["1"]) == 3
    for r in requests["0"] + requests["1"]:
        assert r == requests["0"][0]
    assert requests["1"][0]["body"] == b"12345" and requests["1"][0]["jar"]
    assert requests["1"][0]["pool_id"] and requests["1"][0]["timeout_id"]
