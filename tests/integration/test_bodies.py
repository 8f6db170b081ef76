"""Request bodies (every kind of ``data``), response decompression, streaming both ways."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import zlib

import brotli
import pytest
from aiohttp import web

from tests.conftest import read_request_head
from tests.integration.apps import echo_app, header, read_body
from worker_client import ClientPayloadError


def _upload_app() -> tuple[web.Application, list[dict]]:
    """``/upload`` records what it received: headers, size, digest, and form fields."""
    received: list[dict] = []
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def upload(request: web.Request) -> web.Response:
        body = await request.read()
        received.append(
            {
                "method": request.method,
                "headers": dict(request.headers),
                "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "body": body,
            }
        )
        return web.json_response({"size": len(body)})

    app.router.add_route("*", "/upload", upload)
    return app, received


# -- data= and json= ---------------------------------------------------------------------


async def test_str_data_is_utf8_text(serve_app, session):
    base = await serve_app(echo_app())
    async with session.post(base + "/", data="héllo") as resp:
        got = await resp.json()
    assert header(got, "Content-Type") == "text/plain; charset=utf-8"
    assert header(got, "Content-Length") == str(len("héllo".encode()))
    assert got["body"].encode("latin-1") == "héllo".encode()


@pytest.mark.parametrize(
    "data", [b"\x00\x01bytes", bytearray(b"\x00\x01bytes"), memoryview(b"\x00\x01bytes")],
    ids=["bytes", "bytearray", "memoryview"],
)
async def test_binary_data_is_octet_stream(serve_app, session, data):
    base = await serve_app(echo_app())
    async with session.post(base + "/", data=data) as resp:
        got = await resp.json()
    assert header(got, "Content-Type") == "application/octet-stream"
    assert header(got, "Content-Length") == "7"
    assert header(got, "Transfer-Encoding") is None
    assert got["body"] == "\x00\x01bytes"


async def test_explicit_content_type_wins(serve_app, session):
    base = await serve_app(echo_app())
    headers = {"Content-Type": "application/x-custom"}
    async with session.post(base + "/", data=b"{}", headers=headers) as resp:
        got = await resp.json()
    assert header(got, "Content-Type") == "application/x-custom"


async def test_form_data_dict_and_pairs(serve_app, session):
    app = web.Application()

    async def form(request: web.Request) -> web.Response:
        fields = await request.post()
        return web.json_response(
            {"ctype": request.content_type, "fields": [[k, v] for k, v in fields.items()]}
        )

    app.router.add_post("/", form)
    base = await serve_app(app)
    async with session.post(base + "/", data={"a": "1", "b": "x y&z"}) as resp:
        got = await resp.json()
    assert got["ctype"] == "application/x-www-form-urlencoded"
    assert got["fields"] == [["a", "1"], ["b", "x y&z"]]
    async with session.post(base + "/", data=[("k", "1"), ("k", "2")]) as resp:
        assert (await resp.json())["fields"] == [["k", "1"], ["k", "2"]]


async def test_json_argument(serve_app, session):
    base = await serve_app(echo_app())
    payload = {"a": [1, 2, {"b": None}], "u": "ünï"}
    async with session.post(base + "/", json=payload) as resp:
        got = await resp.json()
    assert header(got, "Content-Type") == "application/json"
    assert json.loads(got["body"].encode("latin-1")) == payload


async def test_session_json_serialize(serve_app, make_session):
    base = await serve_app(echo_app())
    session = make_session(json_serialize=lambda obj: json.dumps(obj, separators=(",", ":")))
    async with session.post(base + "/", json={"a": 1, "b": 2}) as resp:
        assert (await resp.json())["body"] == '{"a":1,"b":2}'


async def test_data_and_json_together_is_an_error(session):
    with pytest.raises(ValueError):
        await session.post("http://127.0.0.1:1/", data=b"x", json={})


async def test_post_without_body_sends_content_length_zero(serve_app, session):
    base = await serve_app(echo_app())
    async with session.post(base + "/") as resp:
        got = await resp.json()
    assert header(got, "Content-Length") == "0"
    assert got["body"] == ""


async def test_bad_data_type_is_a_type_error(session):
    with pytest.raises(TypeError):
        await session.post("http://127.0.0.1:1/", data=12345)


# -- streamed uploads -------------------------------------------------------------------------


async def test_file_object_upload_is_streamed_with_its_length(serve_app, session, tmp_path):
    """As aiohttp 3.14: a file whose size is known is sent with a Content-Length."""
    app, received = _upload_app()
    base = await serve_app(app)
    data = os.urandom(300_000)
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    with open(path, "rb") as f:
        async with session.post(base + "/upload", data=f) as resp:
            assert (await resp.json())["size"] == len(data)
    got = received[0]
    assert got["headers"]["Content-Length"] == str(len(data))
    assert "Transfer-Encoding" not in got["headers"]
    assert got["body"] == data


async def test_text_file_upload(serve_app, session, tmp_path):
    app, received = _upload_app()
    base = await serve_app(app)
    path = tmp_path / "notes.txt"
    path.write_text("línea\n" * 1000, encoding="utf-8")
    with open(path, encoding="utf-8") as f:
        async with session.put(base + "/upload", data=f) as resp:
            assert resp.status == 200
    assert received[0]["body"] == ("línea\n" * 1000).encode()
    assert received[0]["headers"]["Content-Type"].startswith("text/plain")


async def test_bytesio_upload(serve_app, session):
    app, received = _upload_app()
    base = await serve_app(app)
    async with session.post(base + "/upload", data=io.BytesIO(b"in memory")) as resp:
        assert resp.status == 200
    assert received[0]["body"] == b"in memory"


async def test_async_generator_upload_is_chunked(serve_app, session):
    app, received = _upload_app()
    base = await serve_app(app)
    parts = [b"alpha-", b"", b"beta-", b"x" * 100_000, b"-omega"]

    async def gen():
        for part in parts:
            await asyncio.sleep(0)
            yield part

    async with session.post(base + "/upload", data=gen()) as resp:
        assert resp.status == 200
    got = received[0]
    assert got["headers"].get("Transfer-Encoding") == "chunked"
    assert got["headers"]["Content-Type"] == "application/octet-stream"
    assert got["body"] == b"".join(parts)


async def test_async_generator_with_explicit_content_length(serve_app, session):
    app, received = _upload_app()
    base = await serve_app(app)

    async def gen():
        yield b"12345"
        yield b"67890"

    async with session.post(base + "/upload", data=gen(), headers={"Content-Length": "10"}) as r:
        assert r.status == 200
    got = received[0]
    assert got["headers"]["Content-Length"] == "10"
    assert "Transfer-Encoding" not in got["headers"]
    assert got["body"] == b"1234567890"


async def test_upload_is_streamed_while_produced(serve_app, session):
    """The server sees the first chunk before the generator produces the second."""
    first_seen = asyncio.Event()
    app = web.Application()

    async def consume(request: web.Request) -> web.Response:
        first = await request.content.readany()
        first_seen.set()
        rest = await request.content.read()
        return web.Response(body=first + rest)

    app.router.add_post("/", consume)
    base = await serve_app(app)

    async def gen():
        yield b"first;"
        await asyncio.wait_for(first_seen.wait(), 5)
        yield b"second"

    async with session.post(base + "/", data=gen()) as resp:
        assert await resp.read() == b"first;second"


async def test_failing_generator_fails_the_request(serve_app, session):
    app, _ = _upload_app()
    base = await serve_app(app)

    async def gen():
        yield b"start"
        raise RuntimeError("producer broke")

    with pytest.raises(Exception) as info:  # noqa: B017 - the cause is checked below
        async with session.post(base + "/upload", data=gen()) as resp:
            await resp.read()
    assert "producer broke" in repr(info.value) + repr(info.value.__cause__)
    async with session.get(base + "/upload") as resp:
        assert resp.status == 200


async def test_large_upload(serve_app, session):
    app, received = _upload_app()
    base = await serve_app(app)
    data = os.urandom(1 << 20) * 5  # 5 MiB
    async with session.post(base + "/upload", data=data) as resp:
        assert (await resp.json())["size"] == len(data)
    assert received[0]["headers"]["Content-Length"] == str(len(data))
    assert received[0]["sha256"] == hashlib.sha256(data).hexdigest()


async def test_large_streamed_upload(serve_app, session):
    app, received = _upload_app()
    base = await serve_app(app)
    block = os.urandom(1 << 16)

    async def gen():
        for _ in range(80):  # 5 MiB
            yield block

    async with session.post(base + "/upload", data=gen()) as resp:
        assert (await resp.json())["size"] == 80 * len(block)
    assert received[0]["sha256"] == hashlib.sha256(block * 80).hexdigest()


async def test_response_content_as_upload_body(serve_app, session):
    """A response's StreamReader is a valid ``data=``: a body proxied as it arrives."""
    data = os.urandom(1 << 20) * 3
    app, received = _upload_app()

    async def source(request: web.Request) -> web.Response:
        return web.Response(body=data)

    app.router.add_get("/source", source)
    base = await serve_app(app)
    async with session.get(base + "/source") as src:
        async with session.post(base + "/upload", data=src.content) as resp:
            assert (await resp.json())["size"] == len(data)
    assert received[0]["sha256"] == hashlib.sha256(data).hexdigest()


# -- pre-compressed upload ----------------------------------------------------------------


async def test_precompressed_upload_is_sent_untouched(raw_server, session):
    payload = b"compress me " * 1000
    compressed = zlib.compress(payload)
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader, writer):
        head = await read_request_head(reader)
        body = await read_body(reader, head)
        seen.append((head, body))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await reader.read()

    base = await raw_server(handler)
    headers = {"Content-Encoding": "deflate"}
    async with session.post(base + "/", data=compressed, headers=headers) as resp:
        assert resp.status == 200
    head, body = seen[0]
    assert body == compressed
    assert zlib.decompress(body) == payload
    assert b"\r\nContent-Encoding: deflate\r\n" in head
    assert f"\r\nContent-Length: {len(compressed)}\r\n".encode() in head


# -- response decompression -----------------------------------------------------------------

_PLAIN = b"decompressed content, " * 2000


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


_ENCODED = {
    "gzip": gzip.compress(_PLAIN),
    "deflate": zlib.compress(_PLAIN),
    "raw-deflate": _raw_deflate(_PLAIN),
    "br": brotli.compress(_PLAIN),
}


def _compressed_app() -> web.Application:
    app = web.Application()

    async def compressed(request: web.Request) -> web.StreamResponse:
        name = request.match_info["enc"]
        body = _ENCODED[name]
        resp = web.StreamResponse(
            headers={
                "Content-Encoding": "deflate" if name == "raw-deflate" else name,
                "Content-Type": "text/plain",
            }
        )
        if request.query.get("chunked"):
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(body)
        await resp.prepare(request)
        for i in range(0, len(body), 1000):
            await resp.write(body[i : i + 1000])
        await resp.write_eof()
        return resp

    app.router.add_get("/{enc}", compressed)
    return app


@pytest.mark.parametrize("enc", list(_ENCODED))
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
async def test_compressed_responses_are_decoded(serve_app, session, enc, chunked):
    base = await serve_app(_compressed_app())
    params = {"chunked": "1"} if chunked else {}
    async with session.get(f"{base}/{enc}", params=params) as resp:
        assert resp.headers["Content-Encoding"] in ("gzip", "deflate", "br")
        assert await resp.read() == _PLAIN
    async with session.get(f"{base}/{enc}", params=params) as resp:
        chunks = [c async for c in resp.content.iter_chunked(4096)]
    assert b"".join(chunks) == _PLAIN


@pytest.mark.parametrize("enc", list(_ENCODED))
async def test_auto_decompress_false_on_the_session(serve_app, make_session, enc):
    base = await serve_app(_compressed_app())
    session = make_session(auto_decompress=False)
    async with session.get(f"{base}/{enc}") as resp:
        assert await resp.read() == _ENCODED[enc]


async def test_auto_decompress_false_per_request(serve_app, session):
    base = await serve_app(_compressed_app())
    async with session.get(f"{base}/gzip", auto_decompress=False) as resp:
        assert await resp.read() == _ENCODED["gzip"]
    async with session.get(f"{base}/gzip") as resp:
        assert await resp.read() == _PLAIN


async def test_unknown_content_encoding_is_passed_through(raw_server, session):
    async def handler(reader, writer):
        await read_request_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: zstd-ish\r\nContent-Length: 4\r\n\r\nabcd"
        )
        await reader.read()

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        assert await resp.read() == b"abcd"


@pytest.mark.parametrize("enc", ["gzip", "deflate", "br"])
async def test_corrupt_compressed_body(raw_server, serve_app, session, enc):
    async def handler(reader, writer):
        await read_request_head(reader)
        body = b"this is not compressed at all" * 10
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (enc.encode(), len(body), body)
        )
        await reader.read()

    base = await raw_server(handler)
    resp = await session.get(base + "/")
    with pytest.raises(ClientPayloadError):
        await resp.read()
    resp.release()
    good = await serve_app(_compressed_app())
    async with session.get(good + "/gzip") as resp:
        assert await resp.read() == _PLAIN


async def test_truncated_gzip_body(raw_server, session):
    truncated = _ENCODED["gzip"][:-20]

    async def handler(reader, writer):
        await read_request_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
            % (len(truncated), truncated)
        )
        await reader.read()

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        with pytest.raises(ClientPayloadError):
            await resp.read()


# -- response streaming ----------------------------------------------------------------------


async def test_response_is_streamed_while_produced(serve_app, session):
    """The client reads the first chunk before the server writes the second."""
    got_first = asyncio.Event()
    app = web.Application()

    async def produce(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"first;")
        await asyncio.wait_for(got_first.wait(), 5)
        await resp.write(b"second")
        await resp.write_eof()
        return resp

    app.router.add_get("/", produce)
    base = await serve_app(app)
    async with session.get(base + "/") as resp:
        assert await resp.content.readexactly(6) == b"first;"
        got_first.set()
        assert await resp.content.read() == b"second"
