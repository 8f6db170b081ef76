"""Response-level behaviour: head attributes, headers, body framing, reading APIs."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from tests.conftest import read_request_head
from tests.integration.apps import counting_app
from worker_client import ClientConnectionError, ContentTypeError, HttpVersion

# -- the head ---------------------------------------------------------------------------


async def test_response_attributes(serve_app, session):
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="héllo", content_type="text/html", charset="utf-8")

    app.router.add_get("/page", page)
    base = await serve_app(app)
    async with session.get(base + "/page#top") as resp:
        assert resp.status == 200
        assert resp.reason == "OK"
        assert resp.ok
        assert resp.version == HttpVersion(1, 1)
        assert resp.method == "GET"
        assert str(resp.url) == base + "/page"
        assert str(resp.real_url) == base + "/page#top"
        assert resp.host == "127.0.0.1"
        assert resp.content_type == "text/html"
        assert resp.charset == "utf-8"
        assert resp.content_length == len("héllo".encode())
        assert resp.history == ()
        assert resp.request_info.method == "GET"
        assert resp.request_info.url.path == "/page"
        assert await resp.text() == "héllo"
        assert await resp.read() == "héllo".encode()  # cached


async def test_headers_are_case_insensitive_with_multiple_values(serve_app, session):
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        resp = web.Response(text="ok")
        resp.headers.add("X-Multi", "one")
        resp.headers.add("X-Multi", "two")
        resp.set_cookie("a", "1")
        resp.set_cookie("b", "2")
        return resp

    app.router.add_get("/", page)
    base = await serve_app(app)
    async with session.get(base + "/") as resp:
        assert isinstance(resp.headers, CIMultiDictProxy)
        assert resp.headers.getall("x-multi") == ["one", "two"]
        assert resp.headers["X-MULTI"] == "one"
        assert len(resp.headers.getall("Set-Cookie")) == 2
        assert resp.cookies["a"].value == "1"
        assert resp.cookies["b"].value == "2"
        assert "content-length" in resp.headers


async def test_raw_headers_are_bytes_pairs_in_order(raw_server, session):
    async def handler(reader, writer):
        await read_request_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nX-Multi: 1\r\ncontent-length: 2\r\nX-Multi: 2\r\n"
            b"X-Raw: caf\xc3\xa9 \xff\r\n\r\nok"
        )
        await reader.read()

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        raw = resp.raw_headers
        assert isinstance(raw, tuple)
        assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in raw)
        assert raw[:3] == ((b"X-Multi", b"1"), (b"content-length", b"2"), (b"X-Multi", b"2"))
        assert raw[3] == (b"X-Raw", b"caf\xc3\xa9 \xff")
        # values decode as UTF-8 with surrogateescape, as aiohttp's
        assert resp.headers["x-raw"] == "café \udcff"
        assert resp.headers.getall("X-Multi") == ["1", "2"]
        assert await resp.read() == b"ok"


async def test_reason_and_status_of_an_unusual_response(raw_server, session):
    async def handler(reader, writer):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 599 Custom Reason\r\nContent-Length: 0\r\n\r\n")
        await reader.read()

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        assert resp.status == 599
        assert resp.reason == "Custom Reason"
        assert not resp.ok


# -- text and json ------------------------------------------------------------------------


async def test_text_uses_the_charset(serve_app, session):
    app = web.Application()

    async def latin(request: web.Request) -> web.Response:
        return web.Response(body="déjà".encode("latin-1"), content_type="text/plain",
                            charset="latin-1")

    async def nocharset(request: web.Request) -> web.Response:
        return web.Response(body="déjà".encode(), headers={"Content-Type": "text/plain"})

    app.router.add_get("/latin", latin)
    app.router.add_get("/none", nocharset)
    base = await serve_app(app)
    async with session.get(base + "/latin") as resp:
        assert resp.charset == "latin-1"
        assert await resp.text() == "déjà"
    async with session.get(base + "/none") as resp:
        assert resp.charset is None
        assert await resp.text() == "déjà"
        assert await resp.text(encoding="latin-1") == "déjà".encode().decode("latin-1")


def _typed_app() -> web.Application:
    app = web.Application()

    async def typed(request: web.Request) -> web.Response:
        return web.Response(
            body=request.query.get("body", '{"a": 1}').encode(),
            headers={"Content-Type": request.query["ct"]},
        )

    app.router.add_get("/", typed)
    return app


@pytest.mark.parametrize(
    "ctype",
    ["application/json", "application/json; charset=utf-8", "application/problem+json",
     "application/vnd.api+json"],
)
async def test_json_accepts_json_content_types(serve_app, session, ctype):
    base = await serve_app(_typed_app())
    async with session.get(base + "/", params={"ct": ctype}) as resp:
        assert await resp.json() == {"a": 1}


async def test_json_rejects_other_content_types(serve_app, session):
    base = await serve_app(_typed_app())
    async with session.get(base + "/", params={"ct": "text/plain"}) as resp:
        with pytest.raises(ContentTypeError) as info:
            await resp.json()
        assert info.value.status == 200
        assert "text/plain" in info.value.message
        assert info.value.request_info.url.path == "/"
        # content_type=None disables the check; a custom one is checked
        assert await resp.json(content_type=None) == {"a": 1}
        assert await resp.json(content_type="text/plain") == {"a": 1}


async def test_json_of_an_empty_body_is_none(serve_app, session):
    base = await serve_app(_typed_app())
    async with session.get(base + "/", params={"ct": "application/json", "body": " "}) as resp:
        assert await resp.json() is None


async def test_json_custom_loads(serve_app, session):
    base = await serve_app(_typed_app())
    async with session.get(base + "/", params={"ct": "application/json"}) as resp:
        assert await resp.json(loads=lambda s: ("loaded", s)) == ("loaded", '{"a": 1}')


# -- body framing -----------------------------------------------------------------------------


async def test_chunked_response(serve_app, session):
    app = web.Application()
    parts = [b"first,", b"second,", b"x" * 100_000, b"last"]
    taken: asyncio.Queue[None] = asyncio.Queue()  # one item per part the client has read

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in parts[:-1]:
            await resp.write(part)
            await taken.get()  # each part comes in a read of its own
        await resp.write(parts[-1])
        await resp.write_eof()
        return resp

    app.router.add_get("/", chunked)
    base = await serve_app(app)
    async with session.get(base + "/") as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.content_length is None
        got = []
        for part in parts[:-1]:
            got.append(await resp.content.readexactly(len(part)))
            taken.put_nowait(None)
        got.append(await resp.read())  # the rest, to the end
        assert got == parts


async def test_chunked_response_with_extensions_and_trailers(raw_server, session):
    async def handler(reader, writer):
        await read_request_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        await reader.read()

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        assert await resp.read() == b"hello world"


async def test_read_until_close_body(raw_server, session):
    taken: asyncio.Queue[None] = asyncio.Queue()  # one item per part the client has read
    connections: list[int] = []

    async def handler(reader, writer):
        connections.append(1)
        stepwise = len(connections) == 1  # the first answer in steps, the second at once
        await read_request_head(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for i in range(5):
            writer.write(b"part%d " % i)
            await writer.drain()
            if stepwise and i < 4:
                await taken.get()
        writer.close()

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        assert resp.version == HttpVersion(1, 0)
        assert resp.content_length is None
        got = []
        for _ in range(4):
            got.append(await resp.content.readexactly(6))
            taken.put_nowait(None)
        got.append(await resp.read())  # the last part, then the close
        assert got == [b"part%d " % i for i in range(5)]
    # and again: the closed connection is not reused
    async with session.get(base + "/") as resp:
        assert await resp.text() == "part0 part1 part2 part3 part4 "
    assert len(connections) == 2


async def test_read_until_eof_false_gives_an_empty_body(raw_server, session):
    async def handler(reader, writer):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nunframed")
        writer.close()

    base = await raw_server(handler)
    async with session.get(base + "/", read_until_eof=False) as resp:
        assert resp.status == 200
        assert await resp.read() == b""


async def test_connection_close_response_is_not_reused(serve_app, session):
    app, ports = counting_app()

    async def closing(request: web.Request) -> web.Response:
        resp = web.Response(text="bye")
        resp.force_close()
        return resp

    app.router.add_get("/", closing)
    base = await serve_app(app)
    for _ in range(3):
        async with session.get(base + "/") as resp:
            assert resp.headers["Connection"] == "close"
            assert await resp.text() == "bye"
    assert len(set(ports)) == 3


async def test_http10_response_closes_the_connection(raw_server, session):
    """An HTTP/1.0 answer with Content-Length but no keep-alive closes the connection."""
    connections: list[int] = []

    async def handler(reader, writer):
        connections.append(1)
        await read_request_head(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    base = await raw_server(handler)
    for _ in range(2):
        async with session.get(base + "/") as resp:
            assert await resp.read() == b"ok"
    assert len(connections) == 2


async def test_large_download(serve_app, session):
    data = os.urandom(1 << 20) * 20  # 20 MiB
    digest = hashlib.sha256(data).hexdigest()
    app = web.Application()

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=data)

    app.router.add_get("/", big)
    base = await serve_app(app)
    async with session.get(base + "/") as resp:
        assert resp.content_length == len(data)
        body = await resp.read()
    assert len(body) == len(data)
    assert hashlib.sha256(body).hexdigest() == digest
    async with session.get(base + "/") as resp:
        h = hashlib.sha256()
        async for chunk in resp.content.iter_chunked(1 << 16):
            assert 0 < len(chunk) <= 1 << 16
            h.update(chunk)
    assert h.hexdigest() == digest


# -- the StreamReader API -----------------------------------------------------------------


def _lines_app() -> tuple[web.Application, bytes]:
    body = b"line one\nline two\n" + b"0123456789" * 10 + b"\nlast line without newline"
    app = web.Application()

    async def lines(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = len(body)
        await resp.prepare(request)
        for i in range(0, len(body), 7):  # small writes: reads must span chunks
            await resp.write(body[i : i + 7])
        return resp

    app.router.add_get("/", lines)
    return app, body


async def test_stream_read_n_and_readexactly(serve_app, session):
    app, body = _lines_app()
    base = await serve_app(app)
    async with session.get(base + "/") as resp:
        first = await resp.content.read(4)
        assert 0 < len(first) <= 4
        assert body.startswith(first)
        rest = await resp.content.readexactly(20)
        assert first + rest == body[: len(first) + 20]
        remaining = len(body) - len(first) - 20
        assert await resp.content.readexactly(remaining) == body[len(first) + 20 :]
        # Through a broker the end of the stream is its own frame and may come a little
        # after the last bytes (aiohttp's at_eof() is already True here).
        assert await resp.content.read(10) == b""
        assert resp.content.at_eof()
        assert await resp.content.read() == b""


async def test_stream_readexactly_past_the_end(serve_app, session):
    app, body = _lines_app()
    base = await serve_app(app)
    async with session.get(base + "/") as resp:
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await resp.content.readexactly(len(body) + 5)
        assert info.value.partial == body
        assert info.value.expected == len(body) + 5


async def test_stream_readline_and_line_iteration(serve_app, session):
    app, body = _lines_app()
    base = await serve_app(app)
    async with session.get(base + "/") as resp:
        assert await resp.content.readline() == b"line one\n"
        assert await resp.content.readline() == b"line two\n"
        assert not resp.content.at_eof()
        rest = [line async for line in resp.content]
        assert rest == [b"0123456789" * 10 + b"\n", b"last line without newline"]
        assert resp.content.at_eof()
        assert await resp.content.readline() == b""


async def test_stream_readany_and_iter_any(serve_app, session):
    app, body = _lines_app()
    base = await serve_app(app)
    async with session.get(base + "/") as resp:
        first = await resp.content.readany()
        assert first and body.startswith(first)
        chunks = [chunk async for chunk in resp.content.iter_any()]
        assert all(chunks)
        assert first + b"".join(chunks) == body
        assert resp.content.at_eof()
        assert await resp.content.readany() == b""


async def test_stream_iter_chunked(serve_app, session):
    app, body = _lines_app()
    base = await serve_app(app)
    async with session.get(base + "/") as resp:
        chunks = [chunk async for chunk in resp.content.iter_chunked(16)]
    assert all(0 < len(c) <= 16 for c in chunks)
    assert b"".join(chunks) == body


async def test_at_eof_of_an_empty_body(serve_app, session):
    app = web.Application()

    async def empty(request: web.Request) -> web.Response:
        return web.Response(body=b"")

    app.router.add_get("/", empty)
    base = await serve_app(app)
    async with session.get(base + "/") as resp:
        assert await resp.content.read() == b""
        assert resp.content.at_eof()


# -- release / close mid-body -----------------------------------------------------------


def _big_streaming_app() -> tuple[web.Application, list[int]]:
    app, ports = counting_app()

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 200 * 65536
        await resp.prepare(request)
        try:
            for _ in range(200):
                await resp.write(b"y" * 65536)
        except ConnectionError:
            pass
        return resp

    async def small(request: web.Request) -> web.Response:
        return web.Response(text="small")

    app.router.add_get("/big", big)
    app.router.add_get("/small", small)
    return app, ports


@pytest.mark.parametrize("how", ["release", "close"])
async def test_release_mid_body_then_another_request(serve_app, session, how):
    app, _ = _big_streaming_app()
    base = await serve_app(app)
    resp = await session.get(base + "/big")
    assert await resp.content.readexactly(1000) == b"y" * 1000
    getattr(resp, how)()
    assert resp.closed
    with pytest.raises(ClientConnectionError):
        await resp.content.read()
    for _ in range(3):
        async with session.get(base + "/small") as resp2:
            assert await resp2.text() == "small"


async def test_leaving_the_context_mid_body_then_another_request(serve_app, session):
    app, _ = _big_streaming_app()
    base = await serve_app(app)
    async with session.get(base + "/big") as resp:
        await resp.content.read(10)
    async with session.get(base + "/small") as resp:
        assert await resp.text() == "small"
    # A fully read body gives the connection back for reuse.
    async with session.get(base + "/big") as resp:
        assert len(await resp.read()) == 200 * 65536
