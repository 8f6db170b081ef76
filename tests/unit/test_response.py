"""StreamReader and ClientResponse, checked against aiohttp's behaviour where it applies."""

from __future__ import annotations

import asyncio
import json
import random
from http.cookies import SimpleCookie

import pytest
from aiohttp import streams as aiohttp_streams
from aiohttp.helpers import parse_content_type as aiohttp_parse_content_type
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from shared.messages import Head, HistoryItem
from worker_client.exceptions import (
    ClientConnectionError,
    ClientPayloadError,
    ClientResponseError,
    ContentTypeError,
    RequestInfo,
)
from worker_client.helpers import (
    HttpVersion,
    HttpVersion10,
    HttpVersion11,
    is_json_content_type,
    parse_content_type,
)
from worker_client.response import ClientResponse, StreamReader, plain_length

# -- StreamReader -----------------------------------------------------------------------


class Consumed:
    """An on_consumed callback that records every call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, n: int) -> None:
        assert n > 0
        self.calls.append(n)

    @property
    def total(self) -> int:
        return sum(self.calls)


async def feed_bytewise(reader: StreamReader, data: bytes, *, eof: bool = True) -> None:
    """Feed one byte per loop pass, so that every read has to wait."""
    for i in range(len(data)):
        reader.feed_data(data[i : i + 1])
        await asyncio.sleep(0)
    if eof:
        reader.feed_eof()


BODY = b"first line\r\nsecond\r\n\r\nlast without newline"


async def test_read_all_fed_one_byte_at_a_time() -> None:
    consumed = Consumed()
    reader = StreamReader(consumed)
    feeder = asyncio.create_task(feed_bytewise(reader, BODY))
    assert await reader.read() == BODY
    await feeder
    assert consumed.total == len(BODY) == reader.total_bytes
    assert reader.at_eof()
    assert await reader.read() == b""
    assert consumed.total == len(BODY)


@pytest.mark.parametrize("separator", [b"\n", b"\r\n", b"\r\n\r\n"])
async def test_readuntil_fed_one_byte_at_a_time(separator: bytes) -> None:
    consumed = Consumed()
    reader = StreamReader(consumed)
    feeder = asyncio.create_task(feed_bytewise(reader, BODY))
    parts = []
    while part := await reader.readuntil(separator):
        parts.append(part)
    await feeder
    expected = [p + separator for p in BODY.split(separator)]
    expected[-1] = expected[-1][: -len(separator)]
    assert parts == [p for p in expected if p]
    assert b"".join(parts) == BODY
    assert consumed.total == len(BODY)


async def test_readuntil_separator_split_across_chunks() -> None:
    reader = StreamReader()
    for chunk in (b"ab\r", b"\ncd\r", b"\r", b"\n", b"e"):
        reader.feed_data(chunk)
    reader.feed_eof()
    assert await reader.readuntil(b"\r\n") == b"ab\r\n"
    assert await reader.readuntil(b"\r\n") == b"cd\r\r\n"
    assert await reader.readuntil(b"\r\n") == b"e"
    assert await reader.readuntil(b"\r\n") == b""


async def test_readuntil_rejects_empty_separator() -> None:
    with pytest.raises(ValueError, match="Separator"):
        await StreamReader().readuntil(b"")


async def test_readline_too_long_raises_and_still_counts_bytes() -> None:
    consumed = Consumed()
    reader = StreamReader(consumed, limit=4)
    reader.feed_data(b"0123456789\nrest")
    with pytest.raises(ClientPayloadError, match="Got more than 8 bytes"):
        await reader.readline()
    assert consumed.total == 11  # the line was taken (and counted) before the check
    reader.feed_eof()
    assert await reader.readline(max_line_length=100) == b"rest"


async def test_readline_reports_credit_before_waiting() -> None:
    # A long line must not withhold the credit that lets the sender send its end.
    consumed = Consumed()
    reader = StreamReader(consumed)
    task = asyncio.create_task(reader.readline())
    reader.feed_data(b"x" * 1000)
    await asyncio.sleep(0)
    assert consumed.total == 1000
    assert not task.done()
    reader.feed_data(b"y\nz")
    assert await task == b"x" * 1000 + b"y\n"
    assert consumed.total == 1002


async def test_read_n_slices_chunks_without_losing_bytes() -> None:
    consumed = Consumed()
    reader = StreamReader(consumed)
    reader.feed_data(b"abcdef")
    reader.feed_data(b"gh")
    assert await reader.read(4) == b"abcd"
    assert await reader.read(3) == b"efg"
    assert await reader.read(0) == b""
    assert await reader.read(10) == b"h"
    assert consumed.calls == [4, 3, 1]
    reader.feed_eof()
    assert await reader.read(10) == b""


async def test_readany_returns_a_single_chunk_without_copying() -> None:
    reader = StreamReader()
    chunk = b"z" * 100_000
    reader.feed_data(chunk)
    assert await reader.readany() is chunk
    reader.feed_data(b"a")
    reader.feed_data(b"b")
    assert await reader.readany() == b"ab"


async def test_readexactly() -> None:
    consumed = Consumed()
    reader = StreamReader(consumed)
    feeder = asyncio.create_task(feed_bytewise(reader, b"0123456789"))
    assert await reader.readexactly(4) == b"0123"
    assert await reader.readexactly(0) == b""
    with pytest.raises(asyncio.IncompleteReadError) as info:
        await reader.readexactly(10)
    await feeder
    assert info.value.partial == b"456789"
    assert info.value.expected == 10
    assert consumed.total == 10


async def test_readchunk_and_iter_chunks() -> None:
    reader = StreamReader()
    reader.feed_data(b"one")
    reader.feed_data(b"two")
    assert await reader.readchunk() == (b"one", False)
    reader.feed_eof()
    assert [c async for c in reader.iter_chunks()] == [(b"two", False)]
    assert await reader.readchunk() == (b"", False)


async def test_iterators() -> None:
    for make, expected in [
        (lambda r: r, [b"first line\r\n", b"second\r\n", b"\r\n", b"last without newline"]),
        (lambda r: r.iter_chunked(16), [BODY[i : i + 16] for i in range(0, len(BODY), 16)]),
    ]:
        consumed = Consumed()
        reader = StreamReader(consumed)
        reader.feed_data(BODY)
        reader.feed_eof()
        assert [x async for x in make(reader)] == expected
        assert consumed.total == len(BODY)

    reader = StreamReader()
    feeder = asyncio.create_task(feed_bytewise(reader, b"abc"))
    assert b"".join([x async for x in reader.iter_any()]) == b"abc"
    await feeder


async def test_set_exception_wakes_the_waiting_reader() -> None:
    reader = StreamReader()
    task = asyncio.create_task(reader.read(5))
    await asyncio.sleep(0)
    exc = ClientPayloadError("boom")
    reader.set_exception(exc)
    with pytest.raises(ClientPayloadError) as info:
        await task
    assert info.value is exc
    assert reader.exception() is exc


@pytest.mark.parametrize(
    "op",
    [
        lambda r: r.read(),
        lambda r: r.read(1),
        lambda r: r.readany(),
        lambda r: r.readline(),
        lambda r: r.readuntil(b"x"),
        lambda r: r.readexactly(1),
        lambda r: r.readchunk(),
    ],
)
async def test_exception_wins_over_buffered_data(op) -> None:  # type: ignore[no-untyped-def]
    consumed = Consumed()
    reader = StreamReader(consumed)
    reader.feed_data(b"buffered\n")
    reader.set_exception(ClientPayloadError("broken"))
    with pytest.raises(ClientPayloadError, match="broken"):
        await op(reader)
    assert consumed.calls == []


async def test_two_concurrent_readers_are_refused() -> None:
    reader = StreamReader()
    first = asyncio.create_task(reader.read(1))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already waiting"):
        await reader.readany()
    reader.feed_data(b"x")
    assert await first == b"x"


async def test_no_waiter_when_data_is_buffered() -> None:
    reader = StreamReader()
    reader.feed_data(b"abc")
    reader.feed_eof()
    assert await reader.read(1) == b"a"
    assert reader._waiter is None


async def test_eof_state_and_repr() -> None:
    reader = StreamReader()
    assert repr(reader) == "<StreamReader>"
    reader.feed_data(b"x" * 12)
    assert repr(reader) == "<StreamReader 12 bytes>"
    reader.feed_eof()
    assert repr(reader) == "<StreamReader 12 bytes eof>"
    assert reader.is_eof() and not reader.at_eof()
    assert reader.read_nowait(2) == b"xx"
    assert await reader.read() == b"x" * 10
    assert reader.at_eof()
    assert repr(reader) == "<StreamReader eof>"
    with pytest.raises(AssertionError):
        reader.feed_data(b"late")
    reader.set_exception(ValueError("v"))
    assert repr(reader) == "<StreamReader eof e=ValueError('v')>"


async def test_wait_eof() -> None:
    reader = StreamReader()
    task = asyncio.create_task(reader.wait_eof())
    reader.feed_data(b"data")
    await asyncio.sleep(0)
    assert not task.done()
    reader.feed_eof()
    await task
    assert reader.is_eof()


class _Protocol:
    connected = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


async def _apply(reader, op: str, n: int):  # type: ignore[no-untyped-def]
    try:
        if op == "read":
            return await reader.read(n)
        if op == "readany":
            return await reader.readany()
        if op == "readline":
            return await reader.readline()
        if op == "readuntil":
            return await reader.readuntil(b"\r\n")
        if op == "readchunk":
            return await reader.readchunk()
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        return ("incomplete", exc.partial, exc.expected)


@pytest.mark.parametrize("seed", range(20))
async def test_same_results_as_aiohttp_streamreader(seed: int) -> None:
    rnd = random.Random(seed)
    alphabet = b"ab\r\n"
    chunks = [bytes(rnd.choice(alphabet) for _ in range(rnd.randint(1, 12))) for _ in range(30)]
    ops = [
        (
            rnd.choice(["read", "readany", "readline", "readuntil", "readchunk", "readexactly"]),
            rnd.randint(1, 9),
        )
        for _ in range(60)
    ]
    theirs = aiohttp_streams.StreamReader(
        _Protocol(),
        2**16,
        loop=asyncio.get_running_loop(),  # type: ignore[arg-type]
    )
    consumed = Consumed()
    ours = StreamReader(consumed)
    for reader in (theirs, ours):
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
    got = []
    for op, n in ops:
        expected = await _apply(theirs, op, n)
        assert await _apply(ours, op, n) == expected, (op, n)
        got.append(expected)
    read = sum(len(r) if isinstance(r, bytes) else len(r[1] if len(r) == 3 else r[0]) for r in got)
    assert consumed.total == read
    assert ours.at_eof() == theirs.at_eof()


@pytest.mark.parametrize("seed", range(10))
async def test_random_reads_while_feeding_account_every_byte_once(seed: int) -> None:
    rnd = random.Random(seed)
    data = bytes(rnd.choice(b"xy\n") for _ in range(5000))
    consumed = Consumed()
    reader = StreamReader(consumed)

    async def feed() -> None:
        pos = 0
        while pos < len(data):
            size = rnd.randint(1, 300)
            reader.feed_data(data[pos : pos + size])
            pos += size
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    out = []
    while not reader.at_eof():
        op = rnd.randrange(5)
        if op == 0:
            out.append(await reader.read(rnd.randint(1, 500)))
        elif op == 1:
            out.append(await reader.readany())
        elif op == 2:
            out.append(await reader.readline())
        elif op == 3:
            out.append((await reader.readchunk())[0])
        else:
            try:
                out.append(await reader.readexactly(rnd.randint(1, 50)))
            except asyncio.IncompleteReadError as exc:
                out.append(exc.partial)
    await feeder
    assert b"".join(out) == data
    assert consumed.total == len(data)


# -- Content-Type ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "text/html; charset=UTF-8",
        'Text/HTML;Charset="utf-8"',
        "application/json",
        "",
        "garbage",
        "a/b/c",
        'text/plain; a="x;y"; b=2',
        "text/plain; flag; c = 3 ",
        'text/plain; q="a\\"b"',
        "text/plain;;charset=x",
        "application/problem+json; charset=latin-1",
        "text/plain; charset*=utf-8''%e2%82%ac",
        "text/plain; A=1; a=2",
        "multipart/form-data; boundary=----abc",
    ],
)
def test_parse_content_type_like_aiohttp(raw: str) -> None:
    mimetype, params = aiohttp_parse_content_type(raw)
    assert parse_content_type(raw) == (mimetype, dict(params))


def test_parse_content_type_returns_a_fresh_dict() -> None:
    parse_content_type("text/plain; charset=ascii")[1]["charset"] = "changed"
    assert parse_content_type("text/plain; charset=ascii")[1] == {"charset": "ascii"}
    assert parse_content_type(None) == ("application/octet-stream", {})


@pytest.mark.parametrize(
    "mimetype, expected",
    [
        ("application/json", True),
        ("application/problem+json", True),
        ("application/vnd.api+json", True),
        ("APPLICATION/JSON", True),
        ("application/jsonp", False),
        ("text/json", False),
        ("application/json-seq", False),
        ("text/plain", False),
    ],
)
def test_is_json_content_type(mimetype: str, expected: bool) -> None:
    assert is_json_content_type(mimetype) is expected


def test_http_version() -> None:
    assert HttpVersion(1, 1) == HttpVersion11 == (1, 1)
    assert HttpVersion10.major == 1 and HttpVersion10.minor == 0


# -- ClientResponse -----------------------------------------------------------------------

URL_STR = "http://example.com/path?q=1"


def make_head(
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    status: int = 200,
    reason: str = "OK",
    url: str = URL_STR,
) -> Head:
    return Head(
        stream=1,
        status=status,
        reason=reason,
        version=(1, 1),
        headers=headers or [(b"Content-Type", b"text/plain; charset=utf-8")],
        url=url,
        method="GET",
    )


def request_info(url: str = URL_STR) -> RequestInfo:
    return RequestInfo(URL(url), "GET", CIMultiDictProxy(CIMultiDict()))


class Released:
    def __init__(self) -> None:
        self.calls: list[bool] = []

    def __call__(self, complete: bool) -> None:
        self.calls.append(complete)


def make_response(
    head: Head | None = None,
    body: bytes | None = None,
    *,
    eof: bool = True,
    history: tuple[ClientResponse, ...] = (),
    info: RequestInfo | None = None,
) -> tuple[ClientResponse, StreamReader, Released]:
    released = Released()
    content = StreamReader()
    if body is not None:
        content.feed_data(body)
    if eof:
        content.feed_eof()
    response = ClientResponse.from_head(
        head or make_head(),
        request_info=info or request_info(),
        content=content,
        history=history,
        on_release=released,
        loop=asyncio.get_running_loop(),
    )
    return response, content, released


async def test_properties_from_head() -> None:
    head = make_head(
        [
            (b"Content-Type", b"text/html; charset=ISO-8859-1"),
            (b"Content-Length", b"5"),
            (b"Set-Cookie", b"a=1; Path=/"),
            (b"Set-Cookie", b"b=2; HttpOnly"),
            (b"X-Raw", b"caf\xc3\xa9 \xff"),
            (b"x-raw", b"second"),
        ],
        status=201,
        reason="Created",
    )
    info = RequestInfo(URL(URL_STR), "GET", CIMultiDictProxy(CIMultiDict()), URL(URL_STR + "#top"))
    response, content, _ = make_response(head, b"hello", info=info)
    assert response.status == 201
    assert response.reason == "Created"
    assert response.ok
    assert response.method == "GET"
    assert response.version == HttpVersion11
    assert isinstance(response.version, HttpVersion)
    assert response.url == URL(URL_STR)
    assert response.real_url == URL(URL_STR + "#top")
    assert response.host == "example.com"
    assert response.content is content
    assert response.history == ()
    assert response.request_info is info
    assert response.connection is None
    assert response.content_type == "text/html"
    assert response.charset == "ISO-8859-1"
    assert response.content_length == 5
    assert isinstance(response.headers, CIMultiDictProxy)
    assert response.headers.getall("X-RAW") == ["café \udcff", "second"]
    assert response.raw_headers[4] == (b"X-Raw", b"caf\xc3\xa9 \xff")
    assert isinstance(response.raw_headers, tuple)
    cookies = response.cookies
    assert isinstance(cookies, SimpleCookie)
    assert {k: m.value for k, m in cookies.items()} == {"a": "1", "b": "2"}
    assert cookies["a"]["path"] == "/"
    assert not response.closed


async def test_defaults_without_content_headers() -> None:
    response, _, _ = make_response(make_head([(b"Server", b"x")], status=404, reason="Not Found"))
    assert not response.ok
    assert response.content_type == "application/octet-stream"
    assert response.charset is None
    assert response.content_length is None
    assert len(response.cookies) == 0
    assert len(response.links) == 0


async def test_links() -> None:
    head = make_head(
        [
            (b"Link", b'<https://api.example.com/page/2>; rel="next", </page/9>; rel=last'),
            (b"Link", b"<other>; title='x'"),
        ]
    )
    response, _, _ = make_response(head)
    links = response.links
    assert links["next"]["url"] == URL("https://api.example.com/page/2")
    assert links["last"]["url"] == URL("http://example.com/page/9")
    assert links["last"]["rel"] == "last"
    assert links["other"]["title"] == "x"
    assert links["other"]["url"] == URL("http://example.com/other")


async def test_repr() -> None:
    response, _, _ = make_response(make_head([(b"A", b"b")], reason="Ok\u00e9"))
    assert repr(response) == (
        "<ClientResponse(http://example.com/path?q=1) [200 Ok\\xe9]>\n"
        "<CIMultiDictProxy('A': 'b')>\n"
    )


async def test_history_items_get_an_empty_finished_body() -> None:
    item = HistoryItem(
        status=302,
        reason="Found",
        version=(1, 0),
        headers=[(b"Location", b"/next")],
        url="http://example.com/old",
        method="POST",
        request_headers=[],
    )
    released = Released()
    redirect = ClientResponse.from_head(
        item,
        request_info=request_info("http://example.com/old"),
        content=None,
        history=(),
        on_release=released,
        loop=asyncio.get_running_loop(),
    )
    assert redirect.status == 302 and redirect.method == "POST"
    assert redirect.version == HttpVersion10
    assert redirect.headers["location"] == "/next"
    assert redirect.content.at_eof()
    assert redirect.closed
    assert await redirect.read() == b""
    assert released.calls == []

    final, _, _ = make_response(history=(redirect,))
    assert final.history == (redirect,)


async def test_read_caches_and_releases_complete_once() -> None:
    response, content, released = make_response(body=None, eof=False)
    feeder = asyncio.create_task(feed_bytewise(content, b"payload"))
    body = await response.read()
    await feeder
    assert body == b"payload"
    assert released.calls == [True]
    assert response.closed
    assert await response.read() is body
    response.release()
    response.close()
    assert released.calls == [True]


async def test_release_before_the_end_abandons_the_stream() -> None:
    response, content, released = make_response(body=b"partial", eof=False)
    assert not response.closed
    await response.release()  # awaitable, as aiohttp's
    assert response.closed
    assert released.calls == [False]
    response.release()
    response.close()
    assert released.calls == [False]
    with pytest.raises(ClientConnectionError, match="Connection closed"):
        await content.read()


async def test_release_after_the_body_arrived_is_complete() -> None:
    response, _, released = make_response(body=b"unread")
    assert released.calls == []
    response.release()
    assert released.calls == [True]


async def test_close_is_never_complete() -> None:
    response, _, released = make_response(body=b"unread")
    response.close()
    assert response.closed
    assert released.calls == [False]


async def test_release_when_the_reader_drains_the_content_itself() -> None:
    response, content, released = make_response(body=b"abc", eof=False)
    assert await content.read(3) == b"abc"
    assert released.calls == []
    content.feed_eof()  # nothing left to read: done
    assert released.calls == [True]
    assert response.closed


async def test_empty_body_already_finished_releases_at_once() -> None:
    response, _, released = make_response(body=None, eof=True)
    assert released.calls == [True]
    assert response.closed
    assert await response.read() == b""


async def test_read_error_closes_and_propagates() -> None:
    response, content, released = make_response(body=b"abc", eof=False)
    task = asyncio.create_task(response.read())
    await asyncio.sleep(0)
    content.set_exception(ClientPayloadError("truncated"))
    with pytest.raises(ClientPayloadError, match="truncated"):
        await task
    assert released.calls == [False]
    assert response.closed


async def test_context_manager_releases_on_exit() -> None:
    response, _, released = make_response(body=b"x", eof=False)
    async with response as r:
        assert r is response
        assert released.calls == []
    assert released.calls == [False]


async def test_read_after_explicit_release_raises_but_text_uses_the_cache() -> None:
    # As aiohttp: read() after release() raises even with the body cached.
    response, _, released = make_response(body=b"hi")
    async with response:
        assert await response.read() == b"hi"
    assert released.calls == [True]
    with pytest.raises(ClientConnectionError):
        await response.read()
    assert await response.text() == "hi"


async def test_wait_for_close_releases() -> None:
    response, _, released = make_response(body=b"x", eof=False)
    await response.wait_for_close()
    assert released.calls == [False]


@pytest.mark.parametrize(
    "content_type, body, expected",
    [
        (b"text/plain; charset=latin-1", "café".encode("latin-1"), "café"),
        (b"text/plain; charset=utf-8", "café".encode(), "café"),
        (b"text/plain", "café".encode(), "café"),
        (b"application/json", "café".encode(), "café"),
        (b"text/plain; charset=no-such-codec", "café".encode(), "café"),
    ],
)
async def test_text_charset(content_type: bytes, body: bytes, expected: str) -> None:
    response, _, _ = make_response(make_head([(b"Content-Type", content_type)]), body)
    assert await response.text() == expected


async def test_text_explicit_encoding_and_errors() -> None:
    response, _, _ = make_response(make_head([(b"Content-Type", b"text/plain")]), b"caf\xe9")
    with pytest.raises(UnicodeDecodeError):
        await response.text()
    assert await response.text(errors="replace") == "caf\ufffd"
    assert await response.text("latin-1") == "café"


async def test_get_encoding() -> None:
    response, _, _ = make_response(make_head([(b"Content-Type", b"text/html")]), b"x")
    with pytest.raises(RuntimeError, match="not yet read"):
        response.get_encoding()
    await response.read()
    assert response.get_encoding() == "utf-8"
    for ctype, expected in [
        (b"text/html; charset=LATIN-1", "iso8859-1"),
        (b"application/json", "utf-8"),
        (b"application/problem+json", "utf-8"),
    ]:
        response, _, _ = make_response(make_head([(b"Content-Type", ctype)]), b"x")
        assert response.get_encoding() == expected


@pytest.mark.parametrize(
    "content_type",
    [b"application/json", b"application/json; charset=utf-8", b"application/problem+json"],
)
async def test_json(content_type: bytes) -> None:
    response, _, _ = make_response(make_head([(b"Content-Type", content_type)]), b' {"a": [1]} ')
    assert await response.json() == {"a": [1]}


async def test_json_rejects_an_unexpected_content_type() -> None:
    head = make_head([(b"Content-Type", b"Text/HTML; charset=utf-8")], status=200)
    redirect, _, _ = make_response()
    response, _, released = make_response(head, b'{"a": 1}', history=(redirect,))
    with pytest.raises(ContentTypeError) as info:
        await response.json()
    exc = info.value
    assert isinstance(exc, ClientResponseError)
    assert exc.message == (
        "Attempt to decode JSON with unexpected mimetype: text/html; charset=utf-8"
    )
    assert exc.status == 200
    assert exc.headers is response.headers
    assert exc.history == (redirect,)
    assert exc.request_info is response.request_info
    # content_type=None disables the check; a custom one is a substring match, as aiohttp.
    assert await response.json(content_type=None) == {"a": 1}
    assert await response.json(content_type="text/html") == {"a": 1}
    with pytest.raises(ContentTypeError):
        await response.json(content_type="application/xml")
    assert released.calls == [True]


async def test_json_without_content_type_is_rejected() -> None:
    response, _, _ = make_response(make_head([(b"Server", b"x")]), b"1")
    with pytest.raises(ContentTypeError) as info:
        await response.json()
    assert info.value.message == "Attempt to decode JSON with unexpected mimetype: "


@pytest.mark.parametrize("body", [b"", b"  \r\n "])
async def test_json_empty_body_is_none(body: bytes) -> None:
    response, _, _ = make_response(make_head([(b"Content-Type", b"application/json")]), body)
    assert await response.json() is None


async def test_json_encoding_and_loads() -> None:
    head = make_head([(b"Content-Type", b"application/json")])
    response, _, _ = make_response(head, '"é"'.encode("latin-1"))
    assert await response.json(encoding="latin-1") == "é"
    seen = []

    def loads(text: str) -> str:
        seen.append(text)
        return "custom"

    assert await response.json(encoding="latin-1", loads=loads) == "custom"
    assert seen == ['"é"']
    assert json.loads('"x"') == "x"


async def test_raise_for_status_ok_does_nothing() -> None:
    response, _, released = make_response(body=b"x", eof=False)
    response.raise_for_status()
    assert released.calls == []


async def test_raise_for_status_releases_then_raises() -> None:
    response, _, released = make_response(
        make_head([(b"X", b"y")], status=503, reason="Service Unavailable"), b"x", eof=False
    )
    with pytest.raises(ClientResponseError) as info:
        response.raise_for_status()
    exc = info.value
    assert type(exc) is ClientResponseError
    assert exc.status == 503
    assert exc.message == "Service Unavailable"
    assert exc.headers is response.headers
    assert exc.history == ()
    assert exc.request_info is response.request_info
    assert str(exc) == f"503, message='Service Unavailable', url='{URL_STR}'"
    assert released.calls == [False]


async def test_raise_for_status_in_context_leaves_release_to_exit() -> None:
    response, _, released = make_response(make_head(status=404, reason="Not Found"), eof=False)
    with pytest.raises(ClientResponseError):
        async with response:
            response.raise_for_status()
            assert released.calls == []
    assert released.calls == [False]


async def test_fallback_charset_resolver_can_be_replaced() -> None:
    response, _, _ = make_response(make_head([(b"Content-Type", b"text/plain")]), b"caf\xe9")
    seen = []

    def resolve(resp: ClientResponse, body: bytes) -> str:
        seen.append((resp, body))
        return "latin-1"

    response._resolve_charset = resolve  # type: ignore[method-assign]
    assert await response.text() == "café"
    assert seen == [(response, b"caf\xe9")]


# -- whole-body reads into one claimed buffer (issue 11) ---------------------------------


def claiming_reader(length: int | None) -> tuple[StreamReader, Consumed]:
    consumed = Consumed()
    reader = StreamReader(consumed)
    if length is not None:
        reader._head = ("GET", 200, ((b"Content-Length", b"%d" % length),))
    return reader, consumed


BIG = bytes(range(256)) * 1024  # 256 KiB


async def test_read_claims_the_body_and_takes_the_rest_in_place():
    reader, consumed = claiming_reader(len(BIG))
    reader.feed_data(BIG[:1000])
    reader.read_nowait(10)  # partly handed out before the whole-body read
    reader.feed_data(BIG[1000:5000])
    task = asyncio.ensure_future(reader.read())
    await asyncio.sleep(0)
    view = reader.claim_buffer()
    assert view is not None and len(view) == len(BIG) - 5000
    view[:100_000] = BIG[5000:105_000]
    reader.claim_filled(100_000)
    slot = bytearray(BIG[105_000:200_000])
    reader.feed_data(memoryview(slot))  # a slot: valid only during the call
    slot[:] = b"\0" * len(slot)
    reader.feed_data(BIG[200_000:])
    assert reader.claim_buffer() is None  # full
    assert not task.done()
    reader.feed_eof()
    out = await task
    assert type(out) is bytes and out == BIG[10:]
    assert consumed.total == len(BIG)  # every byte acknowledged once
    assert reader.total_bytes == len(BIG) and reader.at_eof()


async def test_feed_data_copies_a_memoryview_without_a_claim():
    reader, _ = claiming_reader(None)
    slot = bytearray(b"abc")
    reader.feed_data(memoryview(slot))
    slot[:] = b"xyz"
    reader.feed_eof()
    assert await reader.read() == b"abc"


@pytest.mark.parametrize("length", [None, 100])
async def test_no_claim_without_a_length_or_for_a_small_rest(length):
    reader, _ = claiming_reader(length)
    task = asyncio.ensure_future(reader.read())
    await asyncio.sleep(0)
    assert reader.claim_buffer() is None
    reader.feed_data(b"x" * 100)
    reader.feed_eof()
    assert await task == b"x" * 100


async def test_a_body_longer_than_claimed_is_read_whole_all_the_same():
    reader, consumed = claiming_reader(len(BIG) - 10)
    task = asyncio.ensure_future(reader.read())
    await asyncio.sleep(0)
    reader.feed_data(BIG[:200_000])
    reader.feed_data(BIG[200_000:])  # past the claim: it is given back as a chunk
    reader.feed_eof()
    assert await task == BIG
    assert consumed.total == len(BIG)


async def test_a_cancelled_whole_body_read_loses_nothing():
    reader, consumed = claiming_reader(len(BIG))
    task = asyncio.ensure_future(reader.read())
    await asyncio.sleep(0)
    reader.feed_data(BIG[:70_000])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reader.claim_buffer() is None
    assert await reader.read(10) == BIG[:10]
    reader.feed_data(BIG[70_000:])
    reader.feed_eof()
    assert await reader.read() == BIG[10:]
    assert consumed.total == len(BIG)  # the given-back bytes are not acknowledged twice


async def test_a_failed_whole_body_read_raises_and_drops_the_claim():
    reader, _ = claiming_reader(len(BIG))
    task = asyncio.ensure_future(reader.read())
    await asyncio.sleep(0)
    reader.feed_data(BIG[:70_000])
    reader.set_exception(ClientPayloadError("cut short"))
    with pytest.raises(ClientPayloadError):
        await task
    assert reader.claim_buffer() is None


async def test_the_drained_callback_waits_for_the_claimed_read():
    reader, _ = claiming_reader(len(BIG))
    drained = []
    reader._on_drained = lambda: drained.append(True)
    task = asyncio.ensure_future(reader.read())
    await asyncio.sleep(0)
    reader.feed_data(BIG)
    reader.feed_eof()
    assert not drained  # the body is not handed out yet
    assert await task == BIG and drained == [True]


@pytest.mark.parametrize(
    ("method", "status", "headers", "length"),
    [
        ("GET", 200, [(b"Content-Length", b"300000")], 300000),
        ("GET", 200, [(b"content-length", b"5"), (b"Content-Encoding", b"identity")], 5),
        ("HEAD", 200, [(b"Content-Length", b"300000")], None),
        ("GET", 204, [(b"Content-Length", b"300000")], None),
        ("GET", 304, [(b"Content-Length", b"300000")], None),
        ("GET", 200, [(b"Content-Length", b"300000"), (b"Content-Encoding", b"gzip")], None),
        ("GET", 200, [(b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")], None),
        ("GET", 200, [(b"Content-Length", b"3"), (b"Content-Length", b"3")], None),
        ("GET", 200, [(b"Content-Length", b"-3")], None),
        ("GET", 200, [], None),
    ],
)
def test_the_plain_length_of_a_response(method, status, headers, length):
    assert plain_length(method, status, tuple(headers)) == length
