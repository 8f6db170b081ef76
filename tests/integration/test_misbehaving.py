"""Misbehaving peers (raw asyncio servers): each failure is the aiohttp exception, and the
session carries on with a good server afterwards."""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time

import pytest
from aiohttp import web

from tests.conftest import read_request_head
from worker_client import (
    ClientOSError,
    ClientPayloadError,
    ClientResponseError,
    ClientTimeout,
    ServerDisconnectedError,
)


@pytest.fixture
async def good_url(serve_app) -> str:
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="good")

    app.router.add_get("/", page)
    return await serve_app(app) + "/"


async def assert_still_works(session, good_url: str) -> None:
    for _ in range(2):
        async with session.get(good_url) as resp:
            assert resp.status == 200
            assert await resp.text() == "good"


def answer_then_close(
    response: bytes, *, abort: bool = False, after: asyncio.Event | None = None
):
    """A raw handler: read the request head, write ``response``, close (or reset), once
    ``after`` is set if given (a test that reads part of the body first sets it then).

    TCP delivers the bytes before the end of the connection, so the client gets them
    first; but an error ends a body even with bytes still unread, as in aiohttp."""

    async def handler(reader, writer):
        await read_request_head(reader)
        writer.write(response)
        await writer.drain()
        if after is not None:
            await after.wait()
        if abort:
            writer.transport.abort()
        else:
            writer.close()

    return handler


async def test_body_shorter_than_content_length(raw_server, session, good_url):
    base = await raw_server(
        answer_then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
    )
    resp = await session.get(base + "/")
    assert resp.status == 200
    assert resp.content_length == 100
    with pytest.raises(ClientPayloadError):
        await resp.read()
    await assert_still_works(session, good_url)


async def test_huge_content_length_then_close(raw_server, session, good_url):
    read_first = asyncio.Event()
    base = await raw_server(
        answer_then_close(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\nabc", after=read_first
        )
    )
    started = time.monotonic()
    async with session.get(base + "/") as resp:
        assert resp.content_length == 1_000_000_000_000
        assert await resp.content.readexactly(3) == b"abc"
        read_first.set()
        with pytest.raises(ClientPayloadError):
            await resp.read()
    assert time.monotonic() - started < 1
    await assert_still_works(session, good_url)


async def test_reset_in_the_middle_of_the_body(raw_server, session, good_url):
    base = await raw_server(
        answer_then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", abort=True)
    )
    async with session.get(base + "/") as resp:
        with pytest.raises(ClientPayloadError):
            await resp.read()
    await assert_still_works(session, good_url)


async def test_chunked_body_cut_short(raw_server, session, good_url):
    base = await raw_server(
        answer_then_close(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nwo"
        )
    )
    async with session.get(base + "/") as resp:
        with pytest.raises(ClientPayloadError):
            await resp.read()
    await assert_still_works(session, good_url)


async def test_close_without_answering(raw_server, session, good_url):
    base = await raw_server(answer_then_close(b""))
    with pytest.raises(ServerDisconnectedError):
        await session.get(base + "/")
    await assert_still_works(session, good_url)


async def test_close_in_the_middle_of_the_head(raw_server, session, good_url):
    base = await raw_server(answer_then_close(b"HTTP/1.1 200 OK\r\nContent-Le"))
    with pytest.raises(ServerDisconnectedError):
        await session.get(base + "/")
    await assert_still_works(session, good_url)


async def test_reset_without_answering(raw_server, session, good_url):
    async def handler(reader, writer):
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await read_request_head(reader)
        writer.transport.abort()  # with SO_LINGER 0: a TCP reset

    base = await raw_server(handler)
    with pytest.raises(ClientOSError) as info:
        await session.get(base + "/")
    assert info.value.errno == errno.ECONNRESET  # as aiohttp
    await assert_still_works(session, good_url)


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not http at all\r\n\r\n",
        b"\x00\x01\x02\xff garbage",
        b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
    ],
    ids=["text", "binary", "bad-status", "bad-length", "bad-chunk-size"],
)
async def test_garbage_instead_of_http(raw_server, session, good_url, garbage):
    base = await raw_server(answer_then_close(garbage))
    with pytest.raises(ClientResponseError) as info:
        async with session.get(base + "/") as resp:
            await resp.read()
    assert info.value.status == 400  # as aiohttp's parser errors
    assert info.value.request_info.url.path == "/"
    await assert_still_works(session, good_url)


async def test_bad_chunk_after_the_head(raw_server, session, good_url):
    head_seen = asyncio.Event()

    async def handler(reader, writer):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await head_seen.wait()
        writer.write(b"zz\r\nhello\r\n")
        await reader.read()

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        assert resp.status == 200
        head_seen.set()
        with pytest.raises((ClientPayloadError, ClientResponseError)):
            await resp.read()
    await assert_still_works(session, good_url)


async def test_stale_keep_alive_connection_is_retried(raw_server, session):
    """The server drops a kept-alive connection as the next request arrives: an
    idempotent request is retried once on a fresh connection, as aiohttp does."""
    connections: list[int] = []

    async def handler(reader, writer):
        connections.append(1)
        n = len(connections)
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nconn%d" % (5, n))
        await writer.drain()
        if n == 1:
            await read_request_head(reader)  # the second request: dropped unanswered
            return
        await reader.read()

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        assert await resp.text() == "conn1"
    async with session.get(base + "/") as resp:
        assert await resp.text() == "conn2"
    assert len(connections) == 2


async def test_post_is_not_retried_on_a_stale_connection(raw_server, session):
    connections: list[int] = []

    async def handler(reader, writer):
        connections.append(1)
        head = await read_request_head(reader)
        if b"Content-Length: 4" in head:
            await reader.readexactly(4)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request_head(reader)  # the next request: dropped unanswered

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        assert await resp.text() == "ok"
    with pytest.raises(ServerDisconnectedError):
        await session.post(base + "/", data=b"data")
    assert len(connections) == 1


async def test_extra_bytes_after_a_response_spoil_the_connection(raw_server, session):
    connections: list[int] = []

    async def handler(reader, writer):
        connections.append(1)
        while True:
            await read_request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK AFTER")
            await writer.drain()

    base = await raw_server(handler)
    for _ in range(3):
        async with session.get(base + "/") as resp:
            assert await resp.text() == "ok"
    # the junk never shows up as the next response
    assert 1 <= len(connections) <= 3


async def test_informational_response_before_the_real_one(raw_server, session):
    async def handler(reader, writer):
        await read_request_head(reader)
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nX-Final: yes\r\nContent-Length: 4\r\n\r\ndone"
        )
        await reader.read()

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        assert resp.status == 200
        assert resp.headers["X-Final"] == "yes"
        assert "Link" not in resp.headers
        assert await resp.read() == b"done"


async def test_head_sent_one_byte_at_a_time(raw_server, session):
    async def handler(reader, writer):
        await read_request_head(reader)
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nslow!":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0)
        await reader.read()

    base = await raw_server(handler)
    async with session.get(base + "/") as resp:
        assert await resp.read() == b"slow!"


async def test_many_failures_do_not_leak_streams(raw_server, session, good_url):
    base = await raw_server(answer_then_close(b""))
    for _ in range(20):
        with pytest.raises(ServerDisconnectedError):
            await session.get(base + "/")
    await assert_still_works(session, good_url)
    assert not session._handles


@pytest.mark.parametrize(
    ("head", "needle"),
    [
        (
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
            "Got more than 8190 bytes when reading",
        ),
        (
            b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n",
            "Too many headers received",
        ),
        (b"HTTP/1.1 200 OK\r\nX-Endless: " + b"a" * (400 * 1024), "the head is over"),
    ],
)
async def test_oversized_heads_are_refused(make_session, raw_server, head, needle):
    """aiohttp's header limits; a head that never ends cannot grow broker memory."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head)
        await writer.drain()
        await reader.read()  # the connection stays open until the client drops it

    base = await raw_server(handler)
    session = make_session()
    with pytest.raises(ClientResponseError, match=needle) as info:
        await session.get(base + "/")
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("head", "needle"),
    [
        (
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\nX-Next: b\r\n",
            "Got more than 8190 bytes when reading",
        ),
        (
            b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)),
            "Too many headers received",
        ),
    ],
    ids=["long", "many"],
)
async def test_a_head_over_a_limit_fails_before_it_ends(make_session, raw_server, head, needle):
    """As aiohttp: the fields that broke a limit fail the request at once, though the
    server never ends the head (no wait for the total timeout)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head)
        await writer.drain()
        await reader.read()

    base = await raw_server(handler)
    session = make_session()
    with pytest.raises(ClientResponseError, match=needle) as info:
        await session.get(base + "/", timeout=ClientTimeout(total=20))
    assert info.value.status == 400
