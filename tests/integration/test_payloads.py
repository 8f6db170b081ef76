"""Every kind of payload at a real server, byte for byte, and bodies across redirects.

Each case says what aiohttp 3.14 sends for it: the bytes, the Content-Type (with its
charset) and the Content-Length (None: sent chunked). 307/308 send the body again when
it can be re-read; 301/302 after a POST and 303 drop it; a body that cannot be re-read
is aiohttp's ``ClientPayloadError``. Every payload is closed when the request ends.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import MultiDict

from worker_client import (
    AsyncIterablePayload,
    BufferedReaderPayload,
    BytesIOPayload,
    BytesPayload,
    ClientConnectorError,
    ClientPayloadError,
    FormData,
    JsonPayload,
    Payload,
    StringIOPayload,
    StringPayload,
    TextIOPayload,
    payload_type,
    streamer,
)

TEXT = "héllo wörld\n" * 50


def _app() -> tuple[web.Application, list[dict[str, Any]]]:
    """``/echo`` records the request; ``/redirect/{status}?to=`` redirects."""
    received: list[dict[str, Any]] = []
    app = web.Application(client_max_size=1 << 26)

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        received.append(
            {"method": request.method, "headers": request.headers.copy(), "body": body}
        )
        return web.json_response({"method": request.method, "size": len(body)})

    async def redirect(request: web.Request) -> web.Response:
        await request.read()
        status = int(request.match_info["status"])
        return web.Response(status=status, headers={"Location": request.query["to"]})

    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/redirect/{status}", redirect)
    return app, received


async def _agen(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _file(tmp: Path, name: str, data: bytes, mode: str = "rb", **kw: Any) -> Any:
    path = tmp / name
    path.write_bytes(data)
    return path.open(mode, **kw)


class Custom:
    """A user's own type, registered with ``payload_type``."""

    def __init__(self, text: str) -> None:
        self.text = text


@payload_type(Custom)
class CustomPayload(Payload):
    """Only ``write``, as a subclass written for aiohttp would have it."""

    async def write(self, writer: Any) -> None:
        for word in self._value.text.split():
            await writer.write(word.encode() + b";")

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._value.text


# name: (make data (tmp_path), bytes sent, Content-Type, Content-Length or None: chunked)
CASES: dict[str, tuple[Callable[[Path], Any], bytes, str, int | None]] = {
    "bytes": (lambda t: b"\x00raw", b"\x00raw", "application/octet-stream", 4),
    "bytearray": (lambda t: bytearray(b"ba"), b"ba", "application/octet-stream", 2),
    "memoryview": (lambda t: memoryview(b"mv!"), b"mv!", "application/octet-stream", 3),
    "str": (lambda t: TEXT, TEXT.encode(), "text/plain; charset=utf-8", len(TEXT.encode())),
    "StringPayload latin-1": (
        lambda t: StringPayload("café", encoding="latin-1"),
        "café".encode("latin-1"), "text/plain; charset=latin-1", 4,
    ),
    "StringPayload content_type charset": (
        lambda t: StringPayload("ü", content_type="text/html; charset=utf-16"),
        "ü".encode("utf-16"), "text/html; charset=utf-16", len("ü".encode("utf-16")),
    ),
    "StringIO": (
        lambda t: io.StringIO(TEXT), TEXT.encode(), "text/plain; charset=utf-8",
        len(TEXT.encode()),
    ),
    "StringIOPayload": (
        lambda t: StringIOPayload(io.StringIO("sio")), b"sio", "text/plain; charset=utf-8", 3,
    ),
    "BytesIO": (lambda t: io.BytesIO(b"bio" * 1000), b"bio" * 1000, "application/octet-stream",
                3000),
    "BytesIO big": (
        lambda t: io.BytesIO(bytes(range(256)) * 8192), bytes(range(256)) * 8192,
        "application/octet-stream", 256 * 8192,
    ),
    "BytesIOPayload content_type": (
        lambda t: BytesIOPayload(io.BytesIO(b"{}"), content_type="application/json"),
        b"{}", "application/json", 2,
    ),
    "binary file": (
        lambda t: _file(t, "data.bin", bytes(range(256)) * 1000), bytes(range(256)) * 1000,
        "application/octet-stream", 256000,
    ),
    "binary file, type from its name": (
        lambda t: _file(t, "page.html", b"<p>x</p>"), b"<p>x</p>", "text/html", 8,
    ),
    "BufferedReaderPayload": (
        lambda t: BufferedReaderPayload(_file(t, "b.bin", b"buffered")), b"buffered",
        "application/octet-stream", 8,
    ),
    "text file": (
        lambda t: _file(t, "t.txt", TEXT.encode(), "r", encoding="utf-8"), TEXT.encode(),
        "text/plain; charset=utf-8", len(TEXT.encode()),
    ),
    "text file in cp1251, sent as utf-8": (
        lambda t: _file(t, "ru.txt", "Тест".encode("cp1251"), "r", encoding="cp1251"),
        "Тест".encode(), "text/plain; charset=utf-8", None,
    ),
    "TextIOPayload encoding": (
        lambda t: TextIOPayload(
            _file(t, "e.txt", "Тест".encode(), "r", encoding="utf-8"), encoding="utf-16"
        ),
        "Тест".encode("utf-16"), "text/plain; charset=utf-16", None,
    ),
    "BytesPayload content_type": (
        lambda t: BytesPayload(b"<a/>", content_type="application/xml"), b"<a/>",
        "application/xml", 4,
    ),
    "JsonPayload": (
        lambda t: JsonPayload({"a": [1, "é"]}), json.dumps({"a": [1, "é"]}).encode(),
        "application/json", len(json.dumps({"a": [1, "é"]})),
    ),
    "async generator": (
        lambda t: _agen(b"one", b"", b"two"), b"onetwo", "application/octet-stream", None,
    ),
    "AsyncIterablePayload content_type": (
        lambda t: AsyncIterablePayload(_agen(b"x"), content_type="text/csv"), b"x",
        "text/csv", None,
    ),
    "dict": (lambda t: {"a": "1", "b": "x y"}, b"a=1&b=x+y",
             "application/x-www-form-urlencoded", 9),
    "list of pairs": (lambda t: [("k", "1"), ("k", "2")], b"k=1&k=2",
                      "application/x-www-form-urlencoded", 7),
    "MultiDict": (lambda t: MultiDict([("m", "é")]), b"m=%C3%A9",
                  "application/x-www-form-urlencoded", 8),
    "registered type (write only)": (
        lambda t: Custom("a b c"), b"a;b;c;", "application/octet-stream", None,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_payload_arrives_byte_for_byte(serve_app, session, tmp_path, name):
    make, body, content_type, length = CASES[name]
    app, received = _app()
    base = await serve_app(app)
    async with session.post(base + "/echo", data=make(tmp_path)) as resp:
        assert resp.status == 200
    got = received[0]
    assert got["body"] == body
    assert got["headers"]["Content-Type"] == content_type
    if length is None:
        assert got["headers"]["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in got["headers"]
    else:
        assert got["headers"]["Content-Length"] == str(length)
        assert "Transfer-Encoding" not in got["headers"]


async def test_streamer_is_deprecated_and_works(serve_app, session):
    with pytest.warns(DeprecationWarning, match="use async generators"):

        @streamer
        async def send(writer: Any, words: list[bytes]) -> None:
            for word in words:
                await writer.write(word)

    app, received = _app()
    base = await serve_app(app)
    async with session.post(base + "/echo", data=send([b"s", b"t"])) as resp:
        assert resp.status == 200
    assert received[0]["body"] == b"st"


async def test_a_payloads_headers_reach_the_request(serve_app, session):
    app, received = _app()
    base = await serve_app(app)
    data = BytesPayload(b"x", headers={"X-Part": "yes", "Content-Type": "text/x-mine"})
    async with session.post(
        base + "/echo", data=data, headers={"X-Part": "given wins"}
    ) as resp:
        assert resp.status == 200
    headers = received[0]["headers"]
    assert headers["X-Part"] == "given wins"
    assert headers["Content-Type"] == "text/x-mine"
    assert headers["Content-Length"] == "1"


async def test_a_file_is_sent_from_where_it_stood(serve_app, session, tmp_path):
    app, received = _app()
    base = await serve_app(app)
    f = _file(tmp_path, "skip.bin", b"skip-the-rest")
    f.seek(5)
    async with session.put(base + "/echo", data=f) as resp:
        assert resp.status == 200
    assert received[0]["body"] == b"the-rest"
    assert received[0]["headers"]["Content-Length"] == "8"


# -- closing -----------------------------------------------------------------------------


async def test_a_file_is_closed_when_the_request_ends(serve_app, session, tmp_path):
    app, _ = _app()
    base = await serve_app(app)
    f = _file(tmp_path, "c.bin", b"close me")
    async with session.post(base + "/echo", data=f) as resp:
        assert resp.status == 200
    assert f.closed


async def test_a_file_is_closed_when_the_request_fails(session, tmp_path):
    f = _file(tmp_path, "c.bin", b"close me")
    with pytest.raises(ClientConnectorError):
        await session.post("http://127.0.0.1:1/", data=f)
    assert f.closed


# -- redirects ----------------------------------------------------------------------------

# name: (make data, bytes the target gets on a 307/308)
REPLAYABLE: dict[str, tuple[Callable[[Path], Any], bytes]] = {
    "bytes": (lambda t: b"b" * 100, b"b" * 100),
    "bytes over 1 MiB": (lambda t: b"B" * (3 << 19), b"B" * (3 << 19)),
    "str": (lambda t: "ß", "ß".encode()),
    "BytesIO big": (lambda t: io.BytesIO(b"i" * (3 << 19)), b"i" * (3 << 19)),
    "binary file": (lambda t: _file(t, "r.bin", os.urandom(300_000)), None),
    "file not at its start": (lambda t: _seeked(_file(t, "s.bin", b"0123456789"), 4), b"456789"),
    "text file": (lambda t: _file(t, "r.txt", b"text", "r"), b"text"),
    "JsonPayload": (lambda t: JsonPayload([1]), b"[1]"),
    "form": (lambda t: {"a": "1"}, b"a=1"),
    "registered type (write only)": (lambda t: Custom("x y"), b"x;y;"),
    "AsyncIterablePayload read with as_bytes": (lambda t: _cached(_agen(b"c", b"d")), b"cd"),
}


def _seeked(f: Any, pos: int) -> Any:
    f.seek(pos)
    return f


def _cached(it: AsyncIterator[bytes]) -> AsyncIterablePayload:
    payload = AsyncIterablePayload(it)
    payload._cache_me = True  # type: ignore[attr-defined]
    return payload


async def _data(make: Callable[[Path], Any], tmp: Path) -> tuple[Any, bytes | None]:
    data = make(tmp)
    if getattr(data, "_cache_me", False):
        await data.as_bytes()
    expected = None
    if hasattr(data, "name") and hasattr(data, "read") and "b" in getattr(data, "mode", ""):
        pos = data.tell()
        expected = Path(data.name).read_bytes()[pos:]
    return data, expected


@pytest.mark.parametrize("status", [307, 308])
@pytest.mark.parametrize("name", list(REPLAYABLE))
async def test_307_308_send_the_body_again(serve_app, session, tmp_path, status, name):
    make, body = REPLAYABLE[name]
    app, received = _app()
    base = await serve_app(app)
    data, from_file = await _data(make, tmp_path)
    async with session.post(
        f"{base}/redirect/{status}", params={"to": "/echo"}, data=data
    ) as resp:
        assert resp.status == 200
        assert [r.status for r in resp.history] == [status]
    got = received[0]
    assert got["method"] == "POST"
    assert got["body"] == (body if body is not None else from_file)


@pytest.mark.parametrize(
    ("status", "method"), [(301, "POST"), (302, "POST"), (303, "POST"), (303, "PUT")]
)
@pytest.mark.parametrize("name", [*REPLAYABLE, "async generator"])
async def test_301_302_303_become_a_get_without_the_body(
    serve_app, session, tmp_path, status, method, name
):
    make = REPLAYABLE[name][0] if name in REPLAYABLE else (lambda t: _agen(b"once"))
    app, received = _app()
    base = await serve_app(app)
    data, _ = await _data(make, tmp_path)
    async with session.request(
        method, f"{base}/redirect/{status}", params={"to": "/echo"}, data=data
    ) as resp:
        assert resp.status == 200
    got = received[0]
    assert got["method"] == "GET"
    assert got["body"] == b""
    assert "Content-Length" not in got["headers"] or got["headers"]["Content-Length"] == "0"


async def test_301_after_a_put_keeps_the_body(serve_app, session, tmp_path):
    app, received = _app()
    base = await serve_app(app)
    f = _file(tmp_path, "p.bin", b"put body")
    async with session.put(f"{base}/redirect/301", params={"to": "/echo"}, data=f) as resp:
        assert resp.status == 200
    assert received[0]["method"] == "PUT"
    assert received[0]["body"] == b"put body"


NOT_REPLAYABLE: dict[str, Callable[[Path], Any]] = {
    "async generator": lambda t: _agen(b"only", b"once"),
    "AsyncIterablePayload": lambda t: AsyncIterablePayload(_agen(b"once")),
    "a pipe (cannot seek)": lambda t: _pipe(b"piped"),
    "FormData with a stream": lambda t: _form_with_stream(t),
}


def _form_with_stream(tmp: Path) -> FormData:
    form = FormData()
    form.add_field("file", _file(tmp, "f.bin", b"file part"))
    form.add_field("stream", _agen(b"s"), filename="s.bin")
    return form


def _pipe(data: bytes) -> Any:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return open(r, "rb")  # noqa: SIM115 - the request closes it


@pytest.mark.parametrize("status", [307, 308])
@pytest.mark.parametrize("name", list(NOT_REPLAYABLE))
async def test_a_body_read_once_cannot_follow_a_307(serve_app, session, tmp_path, status, name):
    app, received = _app()
    base = await serve_app(app)
    data = NOT_REPLAYABLE[name](tmp_path)
    with pytest.raises(ClientPayloadError, match="Cannot follow redirect with a consumed"):
        await session.post(f"{base}/redirect/{status}", params={"to": "/echo"}, data=data)
    assert received == []
    if isinstance(data, FormData):  # its file part was closed all the same
        file_part = next(iter(data._writer))[0]
        assert file_part._value.closed
    async with session.post(
        f"{base}/redirect/{status}", params={"to": "/echo"}, data=NOT_REPLAYABLE[name](tmp_path),
        allow_redirects=False,
    ) as resp:
        assert resp.status == status


async def test_a_file_closed_before_the_replay_gives_aiohttps_error(serve_app, session, tmp_path):
    """A payload the caller closed while the first hop was sent cannot be sent again."""
    app, received = _app()
    base = await serve_app(app)

    class Closing(BytesPayload):
        async def _chunks(self) -> AsyncIterator[bytes]:  # type: ignore[override]
            yield self._value
            self._consumed = True

    with pytest.raises(ClientPayloadError, match="Cannot follow redirect with a consumed"):
        await session.post(
            f"{base}/redirect/307", params={"to": "/echo"}, data=Closing(b"x" * (2 << 20))
        )
    assert received == []


async def test_a_file_is_closed_when_the_request_is_cancelled(raw_server, session, tmp_path):
    """Cancelled mid-upload (the server reads the head, then nothing): the file is closed."""
    got_head = asyncio.Event()
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        got_head.set()
        await release.wait()

    base = await raw_server(handler)
    f = _file(tmp_path, "big.bin", bytes(8 << 20))
    task = asyncio.ensure_future(session.post(base + "/", data=f))
    await got_head.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    assert f.closed


async def test_a_file_is_closed_when_the_broker_cannot_be_reached(tmp_path):
    from worker_client import BrokerConnectionError, ClientSession

    f = _file(tmp_path, "c.bin", b"close me")
    async with ClientSession(broker=str(tmp_path / "no-broker.sock")) as s:
        with pytest.raises(BrokerConnectionError):
            await s.post("http://127.0.0.1:1/", data=f)
    assert f.closed
