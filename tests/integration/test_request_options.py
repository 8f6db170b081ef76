"""aiohttp's request options, in both modes: 100-continue, head limits, HTTP/1.0,
read_bufsize (each against a real server on loopback)."""

from __future__ import annotations

import asyncio
import os

import pytest
from aiohttp import web

from shared.messages import HEAD_LIMIT_MAX, HEADERS_LIMIT_MAX, STREAM_WINDOW
from tests.conftest import read_request_head
from worker_client import ClientPayloadError, ClientResponseError, HttpVersion10


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


class Expecting:
    """A raw server for ``Expect: 100-continue``: answers ``early`` at once (the body
    must not come), or ``100 Continue`` then echoes the body it reads."""

    def __init__(self, early: bytes | None = None) -> None:
        self.early = early
        self.heads: list[bytes] = []
        self.after_early: list[bytes] = []
        self.closed = asyncio.Event()
        self.connections = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.connections += 1
        try:
            while True:
                try:
                    head = await read_request_head(reader)
                except asyncio.IncompleteReadError:
                    return
                self.heads.append(head)
                assert b"expect: 100-continue" in head.lower()
                if self.early is not None:
                    writer.write(self.early)
                    await writer.drain()
                    # What the client sends after the early answer: nothing, and then
                    # it closes the connection (it is not reused).
                    self.after_early.append(await reader.read())
                    return
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if b"transfer-encoding: chunked" in head.lower():
                    body = b""
                    while True:
                        size = int((await reader.readline()).strip(), 16)
                        data = await reader.readexactly(size + 2)
                        if size == 0:
                            break
                        body += data[:-2]
                else:
                    body = await reader.readexactly(_content_length(head))
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        finally:
            self.closed.set()


@pytest.mark.parametrize("streamed", [False, True], ids=["bytes", "stream"])
async def test_expect100_early_417_does_not_send_the_body(make_session, raw_server, streamed):
    server = Expecting(early=b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 4\r\n\r\nnope")
    base = await raw_server(server)
    session = make_session()
    data = _chunks(b"secret-", b"body") if streamed else b"secret-body"
    async with session.post(base + "/", data=data, expect100=True) as resp:
        assert resp.status == 417
        assert await resp.read() == b"nope"
        assert resp.request_info.headers["Expect"] == "100-continue"
    await asyncio.wait_for(server.closed.wait(), 10)
    assert server.after_early == [b""]  # the body never came; the connection was closed
    assert len(server.heads) == 1


@pytest.mark.parametrize("streamed", [False, True], ids=["bytes", "stream"])
async def test_expect100_continue_then_200_sends_the_body_once(make_session, raw_server, streamed):
    server = Expecting()
    base = await raw_server(server)
    session = make_session()
    for i in range(2):  # the same connection carries the second request
        data = _chunks(b"hello ", b"world %d" % i) if streamed else b"hello world %d" % i
        async with session.put(base + "/", data=data, expect100=True) as resp:
            assert resp.status == 200
            assert await resp.read() == b"hello world %d" % i
    assert len(server.heads) == 2
    assert server.connections == 1


async def test_expect100_early_answer_to_a_large_stream_stops_the_upload(
    make_session, raw_server
):
    """The worker stops pushing a body the server refused (it would wait for credit
    forever otherwise); the broker held at most the stream's credit of it."""
    server = Expecting(early=b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    base = await raw_server(server)
    session = make_session()
    produced = 0

    async def big():
        nonlocal produced
        for _ in range(64):
            produced += 1 << 16
            yield b"z" * (1 << 16)

    async with session.post(base + "/", data=big(), expect100=True) as resp:
        assert resp.status == 413
    await asyncio.wait_for(server.closed.wait(), 10)
    assert server.after_early == [b""]
    transport = session._transport
    assert not getattr(transport, "_pumps", {})
    assert produced < 4 << 20


async def test_expect100_header_given_by_hand_waits_too(make_session, raw_server):
    server = Expecting(early=b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
    base = await raw_server(server)
    session = make_session()
    headers = {"Expect": "100-Continue"}
    async with session.post(base + "/", data=b"x" * 100_000, headers=headers) as resp:
        assert resp.status == 401
    await asyncio.wait_for(server.closed.wait(), 10)
    assert server.after_early == [b""]


async def test_expect100_against_aiohttp_web(make_session, serve_app):
    app = web.Application()

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app.router.add_post("/", echo)
    base = await serve_app(app)
    session = make_session()
    async with session.post(base + "/", data=b"payload", expect100=True) as resp:
        assert await resp.read() == b"payload"


# -- head limits ---------------------------------------------------------------------


def _answer(response: bytes):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request_head(reader)
            writer.write(response)
            await writer.drain()

    return handler


LONG_REASON = b"HTTP/1.1 200 " + b"O" * 9000 + b"\r\nContent-Length: 0\r\n\r\n"
LONG_FIELD = b"HTTP/1.1 200 OK\r\nX-A: " + b"v" * 9000 + b"\r\nContent-Length: 0\r\n\r\n"
MANY = (
    b"HTTP/1.1 200 OK\r\n"
    + b"".join(b"X-%d: v\r\n" % i for i in range(200))
    + b"Content-Length: 0\r\n\r\n"
)
SMALL = (
    b"HTTP/1.1 200 " + b"O" * 150 + b"\r\nX-A: " + b"v" * 200 + b"\r\n"
    + b"".join(b"X-%d: v\r\n" % i for i in range(10)) + b"Content-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (LONG_REASON, "Got more than 8190 bytes when reading: b'OOOO"),
        (LONG_FIELD, "Got more than 8190 bytes when reading: b'vvvv"),
        (MANY, "Too many headers received"),
    ],
    ids=["line", "field", "count"],
)
async def test_default_head_limits_are_aiohttps(make_session, raw_server, response, message):
    base = await raw_server(_answer(response))
    session = make_session()
    with pytest.raises(ClientResponseError) as info:
        await session.get(base + "/")
    assert info.value.status == 400
    assert message in info.value.message
    assert info.value.message.endswith("...'.")  or message == "Too many headers received"


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_line_size": 100}, "Got more than 100 bytes when reading: b'OOO"),
        ({"max_field_size": 100}, "Got more than 100 bytes when reading: b'vvv"),
        ({"max_headers": 5}, "Too many headers received"),
    ],
    ids=["line", "field", "count"],
)
async def test_head_limits_per_request_and_per_session(
    make_session, raw_server, limits, message
):
    base = await raw_server(_answer(SMALL))
    async with make_session().get(base + "/") as resp:  # within the defaults
        assert resp.status == 200
    with pytest.raises(ClientResponseError, match=message) as info:
        await make_session().get(base + "/", **limits)
    assert info.value.status == 400
    with pytest.raises(ClientResponseError, match=message):
        await make_session(**limits).get(base + "/")
    # A request may raise the session's limit again.
    big = {name: 100_000 for name in limits}
    async with make_session(**limits).get(base + "/", **big) as resp:
        assert resp.status == 200


async def test_larger_limits_let_big_heads_through(make_session, raw_server):
    base = await raw_server(_answer(LONG_FIELD))
    async with make_session(max_field_size=10_000).get(base + "/") as resp:
        assert len(resp.headers["X-A"]) == 9000


async def test_limits_are_bounded_and_checked(make_session):
    session = make_session(max_field_size=10**9, max_headers=10**9, read_bufsize=10**12)
    assert session._max_field_size == HEAD_LIMIT_MAX  # the broker's bound
    assert session._max_headers == HEADERS_LIMIT_MAX
    assert session._read_bufsize == STREAM_WINDOW
    with pytest.raises(ValueError, match="max_field_size"):
        make_session(max_field_size=0)
    with pytest.raises(ValueError, match="max_headers"):
        await session.get("http://127.0.0.1:1/", max_headers=0)
    with pytest.raises(TypeError, match="max_line_size"):
        await session.get("http://127.0.0.1:1/", max_line_size="8190")


# -- version, read_bufsize ---------------------------------------------------------------


async def test_http10_request_line(make_session, raw_server):
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            heads.append(await read_request_head(reader))
            writer.write(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
            )
            await writer.drain()

    base = await raw_server(handler)
    session = make_session(version=HttpVersion10)
    assert session.version == HttpVersion10
    for _ in range(2):
        async with session.get(base + "/x") as resp:
            assert resp.version == HttpVersion10
            assert await resp.read() == b"ok"
    assert heads[0].startswith(b"GET /x HTTP/1.0\r\n")
    assert b"\r\nConnection: keep-alive\r\n" in heads[0]
    assert len(heads) == 2


async def test_read_bufsize_sets_the_readers_limit(make_session, serve_app):
    app = web.Application()

    async def line(request: web.Request) -> web.Response:
        return web.Response(body=b"a" * 300 + b"\n")

    app.router.add_get("/", line)
    base = await serve_app(app)
    session = make_session(read_bufsize=100)
    async with session.get(base + "/") as resp:
        with pytest.raises(ClientPayloadError, match="Got more than 200 bytes"):
            await resp.content.readline()
    async with session.get(base + "/", read_bufsize=1000) as resp:
        assert await resp.content.readline() == b"a" * 300 + b"\n"


# -- compress=, chunked= --------------------------------------------------------------------


@pytest.fixture
async def echo_url(serve_app) -> str:
    """An aiohttp.web handler that answers what it received: the body (decoded by
    aiohttp's server, which undoes Content-Encoding) and the framing headers."""
    app = web.Application(client_max_size=8 << 20)

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "body": body.decode("latin-1"),
                "encoding": request.headers.get("Content-Encoding"),
                "te": request.headers.get("Transfer-Encoding"),
                "length": request.headers.get("Content-Length"),
            }
        )

    app.router.add_route("*", "/{tail:.*}", echo)
    return await serve_app(app)


BIG = os.urandom(2 << 20)  # compressed still over the inline frame cap (through a broker)


@pytest.mark.parametrize("compress", [True, "deflate", "gzip"])
@pytest.mark.parametrize("body", ["bytes", "big", "stream", "file"])
async def test_compressed_uploads_are_decoded_by_the_server(
    make_session, echo_url, compress, body, tmp_path
):
    payload = {
        "bytes": b"hello " * 1000, "big": BIG, "stream": b"a" * 100_000 + b"b", "file": BIG
    }[body]
    data: object = payload
    if body == "stream":
        data = _chunks(payload[:50_000], payload[50_000:])
    elif body == "file":  # a payload of known size: no Content-Length once chunked
        (tmp_path / "up.bin").write_bytes(payload)
        data = open(tmp_path / "up.bin", "rb")  # noqa: SIM115 (the request closes it)
    async with make_session().post(echo_url + "/", data=data, compress=compress) as resp:
        got = await resp.json()
    assert got["body"].encode("latin-1") == payload
    assert got["encoding"] == ("deflate" if compress is True else compress)
    assert got["te"] == "chunked" and got["length"] is None


async def test_compress_rules_are_aiohttps(make_session, echo_url):
    session = make_session()
    async with session.post(echo_url + "/", data=b"", compress=True) as resp:
        assert (await resp.json())["encoding"] is None  # an empty body is not compressed
    with pytest.raises(ValueError, match="Content-Encoding header is set"):
        await session.post(echo_url + "/", data=b"x", compress=True,
                           headers={"Content-Encoding": "br"})
    with pytest.raises(ValueError, match="Content-Length header is set"):
        await session.post(echo_url + "/", data=b"x", chunked=True,
                           headers={"Content-Length": "1"})
    with pytest.raises(ValueError, match="'deflate' or 'gzip'"):
        await session.post(echo_url + "/", data=b"x", compress="br")


async def test_compressed_body_is_sent_again_on_307(make_session, serve_app):
    app = web.Application()
    seen: list[tuple[str, bytes]] = []

    async def first(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/second")

    async def second(request: web.Request) -> web.Response:
        seen.append((request.headers["Content-Encoding"], await request.read()))
        return web.Response(text="ok")

    app.router.add_post("/first", first)
    app.router.add_post("/second", second)
    base = await serve_app(app)
    async with make_session().post(base + "/first", data=b"abc" * 100, compress="gzip") as r:
        assert r.status == 200
    assert seen == [("gzip", b"abc" * 100)]


@pytest.mark.parametrize("body", ["bytes", "none"])
async def test_chunked_true_frames_a_body_in_memory_chunked(make_session, echo_url, body):
    data = b"x" * 1000 if body == "bytes" else None
    async with make_session().post(echo_url + "/", data=data, chunked=True) as resp:
        got = await resp.json()
    assert got["te"] == "chunked" and got["length"] is None
    assert got["body"] == ("x" * 1000 if data else "")


async def test_chunked_size_warns_as_aiohttp(make_session, echo_url):
    with pytest.warns(DeprecationWarning, match="Chunk size is deprecated #1615"):
        async with make_session().post(echo_url + "/", data=b"xyz", chunked=1024) as resp:
            got = await resp.json()
    assert got["te"] == "chunked" and got["body"] == "xyz"


# -- per-request and session options read in the worker ---------------------------------


async def test_auto_decompress_per_request(make_session, serve_app):
    import gzip

    app = web.Application()

    async def gz(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(b"plain"), headers={"Content-Encoding": "gzip"})

    app.router.add_get("/", gz)
    base = await serve_app(app)
    session = make_session()
    async with session.get(base + "/") as resp:
        assert await resp.read() == b"plain"
    async with session.get(base + "/", auto_decompress=False) as resp:
        assert gzip.decompress(await resp.read()) == b"plain"
    async with make_session(auto_decompress=False).get(base + "/", auto_decompress=True) as r:
        assert await r.read() == b"plain"


async def test_json_serialize_bytes(make_session, echo_url):
    calls: list[object] = []

    def dumps(obj: object) -> bytes:
        calls.append(obj)
        return b'{"via": "bytes"}'

    session = make_session(json_serialize_bytes=dumps)
    async with session.post(echo_url + "/", json={"a": 1}) as resp:
        got = await resp.json()
        assert resp.request_info.headers["Content-Type"] == "application/json"
    assert got["body"] == '{"via": "bytes"}' and calls == [{"a": 1}]


async def test_fallback_charset_resolver(make_session, serve_app):
    app = web.Application()

    async def latin(request: web.Request) -> web.Response:
        return web.Response(body="café".encode("cp1252"), content_type="text/plain")

    app.router.add_get("/", latin)
    base = await serve_app(app)
    seen: list[bytes] = []

    def resolver(resp, body: bytes) -> str:
        seen.append(body)
        return "cp1252"

    async with make_session(fallback_charset_resolver=resolver).get(base + "/") as resp:
        assert await resp.text() == "café"
    assert seen == ["café".encode("cp1252")]
    async with make_session().get(base + "/") as resp:
        with pytest.raises(UnicodeDecodeError):
            await resp.text()  # aiohttp's default: utf-8


async def test_requote_redirect_url(make_session, raw_server):
    targets: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_request_head(reader)
            target = head.split(b" ")[1]
            targets.append(target)
            if target == b"/start":
                writer.write(
                    b"HTTP/1.1 302 Found\r\nLocation: /a%2Fb?q=%7e\r\nContent-Length: 0\r\n\r\n"
                )
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    base = await raw_server(handler)
    session = make_session()
    assert session.requote_redirect_url is True
    async with session.get(base + "/start") as resp:
        assert resp.status == 200
    with pytest.warns(DeprecationWarning, match="requote_redirect_url modification"):
        session.requote_redirect_url = False
    async with session.get(base + "/start") as resp:
        assert resp.status == 200
    async with make_session(requote_redirect_url=False).get(base + "/start") as resp:
        assert resp.status == 200
    assert targets == [b"/start", b"/a%2Fb?q=~", b"/start", b"/a%2Fb?q=%7e"] + [
        b"/start", b"/a%2Fb?q=%7e"
    ]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity"])
async def test_total_raw_bytes_counts_the_body_as_received(make_session, serve_app, encoding):
    import gzip
    import zlib

    plain = b"0123456789" * 10_000
    encoded = {
        "gzip": gzip.compress(plain),
        "deflate": zlib.compress(plain),
        "identity": plain,
    }[encoding]
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        headers = {} if encoding == "identity" else {"Content-Encoding": encoding}
        return web.Response(body=encoded, headers=headers)

    app.router.add_get("/", page)
    base = await serve_app(app)
    session = make_session()
    async with session.get(base + "/") as resp:
        assert await resp.read() == plain
        assert resp.content.total_bytes == len(plain)
        assert resp.content.total_raw_bytes == len(encoded)
    async with session.get(base + "/", auto_decompress=False) as resp:
        assert await resp.read() == encoded
        assert resp.content.total_raw_bytes == len(encoded)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_connectors_are_async_context_managers(broker_address, serve_app, kind, tmp_path):
    from worker_client import ClientSession, TCPConnector, UnixConnector

    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", page)
    base = await serve_app(app)
    connector = TCPConnector(limit=3) if kind == "tcp" else UnixConnector(str(tmp_path / "s"))
    async with connector as conn:
        assert conn is connector and not conn.closed
        if kind == "tcp":
            kw = {"connector": conn, "connector_owner": False, "broker": broker_address}
            async with ClientSession(**kw) as s, s.get(base + "/") as resp:
                assert await resp.text() == "ok"
    assert connector.closed
    with pytest.warns(DeprecationWarning, match="async with Connector"):
        with TCPConnector() as sync_conn:
            assert not sync_conn.closed
    assert sync_conn.closed


async def test_session_timeout_as_aiohttp_3_14_takes_it(make_session):
    from worker_client import ClientTimeout

    with pytest.raises(ValueError, match="timeout parameter cannot be of <class 'int'> type"):
        make_session(timeout=5)
    with pytest.warns(DeprecationWarning, match="read_timeout is deprecated"):
        session = make_session(read_timeout=7)
    assert session.timeout.total == 7
    with pytest.warns(DeprecationWarning, match="conn_timeout is deprecated"):
        session = make_session(conn_timeout=3)
    assert session.timeout.connect == 3 and session.timeout.total == 300
    with pytest.raises(ValueError, match="read_timeout and timeout parameters conflict"):
        make_session(timeout=ClientTimeout(total=1), read_timeout=2)
    with pytest.raises(ValueError, match="conn_timeout and timeout parameters conflict"):
        make_session(timeout=ClientTimeout(total=1), conn_timeout=2)


async def test_one_off_request_takes_version(broker_address, raw_server):
    from worker_client import request

    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await read_request_head(reader))
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    base = await raw_server(handler)
    async with request("GET", base + "/", version=HttpVersion10, broker=broker_address) as r:
        assert r.status == 200
    assert heads[0].startswith(b"GET / HTTP/1.0\r\n")


@pytest.mark.parametrize("body", ["stream", "big"])
async def test_expect100_redirect_before_100_sends_the_body_to_the_next_hop(
    make_session, raw_server, body
):
    """A 307 before 100 Continue: nothing of the body was read, so the next hop gets all
    of it (a stream too; a big body through a broker is not asked for again)."""
    target = Expecting()
    target_url = await raw_server(target)
    first = Expecting(
        early=b"HTTP/1.1 307 Temporary Redirect\r\nLocation: %s/next\r\nContent-Length: 0\r\n\r\n"
        % target_url.encode()
    )
    base = await raw_server(first)
    payload = os.urandom(3 << 20) if body == "big" else b"a" * 300_000 + b"b"
    data: object = payload
    if body == "stream":
        data = _chunks(payload[:100_000], payload[100_000:])
    session = make_session()
    async with session.post(base + "/", data=data, expect100=True) as resp:
        assert resp.status == 200
        assert await resp.read() == payload
        assert [h.status for h in resp.history] == [307]
    assert len(target.heads) == 1
    await asyncio.wait_for(first.closed.wait(), 10)
    assert first.after_early == [b""]
