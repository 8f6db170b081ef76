"""Multipart both ways, in both modes: FormData and MultipartWriter read by aiohttp.web's
own parser, and a multipart response read part by part with ``MultipartReader``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from worker_client import (
    AsyncIterablePayload,
    BodyPartReader,
    FormData,
    MultipartReader,
    MultipartWriter,
)


def _form_app() -> tuple[web.Application, list[dict[str, Any]]]:
    """``/form`` parses the body with aiohttp.web and records each field."""
    received: list[dict[str, Any]] = []
    app = web.Application(client_max_size=1 << 26)

    async def form(request: web.Request) -> web.Response:
        fields = []
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                fields.append(await _describe(part))
        else:
            post = await request.post()
            fields = [{"name": k, "text": v} for k, v in post.items()]
        received.append(
            {"content_type": request.headers["Content-Type"],
             "length": request.headers.get("Content-Length"), "fields": fields}
        )
        return web.json_response({"fields": len(fields)})

    app.router.add_post("/form", form)
    return app, received


async def _describe(part: Any) -> dict[str, Any]:
    if isinstance(part, aiohttp.MultipartReader):
        return {"nested": [await _describe(p) async for p in part]}
    data = await part.read(decode=True)
    return {
        "name": part.name,
        "filename": part.filename,
        "content_type": part.headers.get("Content-Type"),
        "body": bytes(data),
    }


async def test_form_data_with_several_files(serve_app, session, tmp_path):
    app, received = _form_app()
    base = await serve_app(app)
    big = os.urandom(700_000)
    path = tmp_path / "photo.png"
    path.write_bytes(big)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"gen"
        yield b"erated"

    form = FormData()
    form.add_field("title", "héllo")
    form.add_field("doc", io.BytesIO(b"%PDF-1"), filename="report.pdf",
                   content_type="application/pdf")
    form.add_field("photo", path.open("rb"))
    form.add_field("stream", AsyncIterablePayload(chunks()), filename="g.bin")
    form.add_field("raw", b"\x00\x01", filename="raw.dat")
    async with session.post(base + "/form", data=form) as resp:
        assert resp.status == 200
    got = received[0]
    assert got["content_type"].startswith("multipart/form-data; boundary=")
    assert got["length"] is None  # an async iterable part: size unknown, sent chunked
    fields = {f["name"]: f for f in got["fields"]}
    assert [f["name"] for f in got["fields"]] == ["title", "doc", "photo", "stream", "raw"]
    assert fields["title"]["body"] == "héllo".encode() and fields["title"]["filename"] is None
    assert fields["doc"] == {"name": "doc", "filename": "report.pdf",
                             "content_type": "application/pdf", "body": b"%PDF-1"}
    assert fields["photo"]["filename"] == "photo.png"
    assert fields["photo"]["content_type"] == "image/png"
    assert hashlib.sha256(fields["photo"]["body"]).digest() == hashlib.sha256(big).digest()
    assert fields["stream"]["body"] == b"generated"
    assert fields["stream"]["filename"] == "g.bin"
    assert fields["raw"]["body"] == b"\x00\x01"


async def test_form_data_of_files_has_a_length_and_follows_a_307(serve_app, session, tmp_path):
    app, received = _form_app()

    async def redirect(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=307, headers={"Location": "/form"})

    app.router.add_post("/go", redirect)
    base = await serve_app(app)
    path = tmp_path / "a.txt"
    path.write_bytes(b"file a")
    form = FormData([("f", path.open("rb")), ("n", "1")])
    async with session.post(base + "/go", data=form) as resp:
        assert resp.status == 200
        assert [r.status for r in resp.history] == [307]
    got = received[0]
    assert got["length"] is not None
    assert [(f["name"], f["body"]) for f in got["fields"]] == [("f", b"file a"), ("n", b"1")]


async def test_urlencoded_form_data_and_its_charset(serve_app, session):
    app, received = _form_app()
    base = await serve_app(app)
    async with session.post(base + "/form", data=FormData({"a": "é b"})) as resp:
        assert resp.status == 200
    assert received[0]["content_type"] == "application/x-www-form-urlencoded"
    assert received[0]["fields"] == [{"name": "a", "text": "é b"}]
    form = FormData({"a": "é"}, charset="latin-1")
    payload = form()
    assert payload.content_type == "application/x-www-form-urlencoded; charset=latin-1"
    assert await payload.as_bytes() == b"a=%E9"


async def test_default_to_multipart_and_quote_fields(serve_app, session):
    app, received = _form_app()
    base = await serve_app(app)
    form = FormData(quote_fields=False, default_to_multipart=True)
    form.add_field("naïve", "v")
    async with session.post(base + "/form", data=form) as resp:
        assert resp.status == 200
    assert received[0]["content_type"].startswith("multipart/form-data")
    assert received[0]["fields"][0]["name"] == "naïve"


async def test_nested_multipart_writer(serve_app, session):
    app, received = _form_app()

    async def mixed(request: web.Request) -> web.Response:
        reader = await request.multipart()
        parts = [await _describe(p) async for p in reader]
        received.append({"type": request.headers["Content-Type"], "parts": parts})
        return web.Response(text="ok")

    app.router.add_post("/mixed", mixed)
    base = await serve_app(app)
    with MultipartWriter("mixed") as outer:
        outer.append("plain text")
        outer.append_json({"k": [1, 2]})
        outer.append_form([("a", "b c")])
        inner = MultipartWriter("related")
        inner.append(b"\x89PNG", {"Content-Type": "image/png"})
        inner.append(io.BytesIO(b"inner bytes"))
        outer.append(inner)
        part = outer.append(io.BytesIO(b"attached"))
        part.set_content_disposition("attachment", filename="a.bin")
    async with session.post(base + "/mixed", data=outer) as resp:
        assert resp.status == 200
    got = received[0]
    assert got["type"] == f"multipart/mixed; boundary={outer.boundary}"
    parts = got["parts"]
    assert parts[0]["body"] == b"plain text"
    assert json.loads(parts[1]["body"]) == {"k": [1, 2]}
    assert parts[1]["content_type"] == "application/json"
    assert parts[2]["body"] == b"a=b+c"
    assert [p["body"] for p in parts[3]["nested"]] == [b"\x89PNG", b"inner bytes"]
    assert parts[3]["nested"][0]["content_type"] == "image/png"
    assert parts[4]["filename"] == "a.bin" and parts[4]["body"] == b"attached"


# -- reading a multipart response ---------------------------------------------------------


BIG_PART = os.urandom(1 << 20)


def _multipart_app() -> web.Application:
    app = web.Application()

    async def parts(request: web.Request) -> web.Response:
        with aiohttp.MultipartWriter("mixed", boundary="OUTER-b") as mw:
            mw.append("first ü", {"Content-Type": "text/plain; charset=utf-8"})
            mw.append_json({"n": 1})
            p = mw.append(BIG_PART, {"Content-Type": "application/octet-stream"})
            p.set_content_disposition("attachment", filename="big.bin")
            inner = aiohttp.MultipartWriter("related", boundary="INNER-b")
            inner.append("in 1")
            inner.append("in 2")
            mw.append(inner)
            mw.append(b"", {"Content-Type": "application/x-empty"})
            mw.append("aGVsbG8=", {"Content-Transfer-Encoding": "base64"})
            mw.append_form({"x": "1"})
        body = await mw.as_bytes()
        return web.Response(body=body, content_type=None,
                            headers={"Content-Type": mw.headers["Content-Type"]})

    app.router.add_get("/parts", parts)
    return app


async def test_a_multipart_response_read_part_by_part(serve_app, session):
    base = await serve_app(_multipart_app())
    async with session.get(base + "/parts") as resp:
        reader = MultipartReader.from_response(resp)
        first = await reader.next()
        assert isinstance(first, BodyPartReader)
        assert await first.text() == "first ü"
        second = await reader.next()
        assert await second.json() == {"n": 1}
        third = await reader.next()
        assert third.filename == "big.bin"
        sizes = []
        data = bytearray()
        while chunk := await third.read_chunk(8192):
            sizes.append(len(chunk))
            data += chunk
        assert bytes(data) == BIG_PART and max(sizes) <= 8192
        nested = await reader.next()
        assert isinstance(nested, MultipartReader)
        assert [await p.text() async for p in nested] == ["in 1", "in 2"]
        empty = await reader.next()
        assert empty.headers["Content-Type"] == "application/x-empty"
        assert await empty.read() == b""
        b64 = await reader.next()
        assert await b64.read(decode=True) == b"hello"
        form = await reader.next()
        assert await form.form() == [("x", "1")]
        assert await reader.next() is None
        assert reader.at_eof()


async def test_parts_left_unread_are_skipped(serve_app, session):
    base = await serve_app(_multipart_app())
    async with session.get(base + "/parts") as resp:
        reader = MultipartReader(resp.headers, resp.content)
        names = []
        async for part in reader:
            names.append(type(part).__name__)
        assert names == ["BodyPartReader"] * 3 + ["MultipartReader"] + ["BodyPartReader"] * 3
        assert reader.at_eof()


async def test_our_writer_read_back_by_our_reader(serve_app, session):
    """MultipartWriter -> server echoes the body -> MultipartReader: the same parts."""
    app = web.Application()

    async def echo(request: web.Request) -> web.Response:
        return web.Response(
            body=await request.read(), headers={"Content-Type": request.headers["Content-Type"]}
        )

    app.router.add_post("/echo", echo)
    base = await serve_app(app)
    payloads = [b"", b"\r\n--not-a-boundary\r\n", os.urandom(70_000), b"--", b"x" * 8191]
    with MultipartWriter("mixed") as mw:
        for p in payloads:
            mw.append(p)
    async with session.post(base + "/echo", data=mw) as resp:
        got = [await part.read() async for part in MultipartReader(resp.headers, resp.content)]
    assert got == payloads


async def test_base64_part_decoded_in_pieces(serve_app, session):
    app = web.Application()
    raw = os.urandom(100_000)

    async def b64(request: web.Request) -> web.Response:
        body = (
            b"--b\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.b64encode(raw)
            + b"\r\n--b--\r\n"
        )
        return web.Response(body=body, headers={"Content-Type": "multipart/mixed; boundary=b"})

    app.router.add_get("/b64", b64)
    base = await serve_app(app)
    async with session.get(base + "/b64") as resp:
        part = await MultipartReader(resp.headers, resp.content).next()
        assert await part.read(decode=True) == raw


async def test_a_truncated_multipart_response_is_an_error(raw_server, session):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"--b\r\nContent-Type: text/plain\r\n\r\nno end"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: multipart/mixed; boundary=b\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        await writer.drain()

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        part = await MultipartReader(resp.headers, resp.content).next()
        with pytest.raises(ValueError, match="ended inside a part"):
            await part.read()
