"""A worker that misbehaves on the wire (raw frames over the broker's socket) costs the
broker a bounded amount and hurts no other worker: see the bounds in broker/server.py."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import psutil
import pytest

from broker.http1 import _BUFSIZE as READ_SIZE
from shared.framing import encode
from shared.messages import (
    PROTOCOL_VERSION,
    STREAM_WINDOW,
    Ack,
    Cancel,
    ClearDNS,
    Data,
    End,
    ErrorFrame,
    Failure,
    Head,
    Hello,
    PoolOpen,
    Request,
    Stats,
    StatsRequest,
    TimeoutOpen,
)
from shared.specs import ClientTimeout, PoolSpec, ResolverSpec, decode_pool, encode_pool
from worker_client import ClientSession

from ..conftest import ROOT, read_request_head, wait_until
from .raw_worker import RawWorker, raw_workers  # noqa: F401  (the fixture)

MiB = 1 << 20
pytestmark = pytest.mark.usefixtures("raw_workers")
WRITE_HIGH = MiB  # broker.server.WRITE_HIGH, where the worker socket pauses writing


def _error(msgs: list[Any]) -> ErrorFrame:
    errors = [m for m in msgs if isinstance(m, ErrorFrame)]
    assert len(errors) == 1, msgs
    return errors[0]


async def _workers_at_least(session: ClientSession, n: int) -> bool:
    return bool((await session.stats()).workers >= n)


@pytest.fixture
async def local_broker() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await local_broker(**limits)``: a ``BrokerServer`` in this process and loop, so
    a test can set its limits and look at its state."""
    from broker import server as server_module

    folder = tempfile.mkdtemp(prefix="hb-")  # short: a socket path has ~100 bytes
    servers: list[Any] = []

    async def start(**limits: Any) -> Any:
        path = os.path.join(folder, f"{len(servers)}.sock")
        if limits:
            server = server_module.BrokerServer(path, limits=server_module.Limits(**limits))
        else:
            server = server_module.BrokerServer(path)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(drain_timeout=0)
    shutil.rmtree(folder, ignore_errors=True)


async def _good_worker_still_served(path: str, url: str) -> None:
    async with ClientSession(broker=path) as good:
        async with good.get(url) as resp:
            assert await resp.text() == "hello"


@pytest.fixture
async def hello_url(serve_app) -> str:
    from .apps import text_app

    return str(await serve_app(text_app("hello"))) + "/"


def _streaming_server(total: int, piece: int = 16 << 10):
    """A raw handler that answers every request on its connection with ``total`` bytes,
    written ``piece`` by piece as the socket takes them."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
            chunk = b"x" * piece
            for _ in range(total // piece):
                writer.write(chunk)
                await writer.drain()

    return handler


async def _silent_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request head, then neither reads nor answers, until the test's
    teardown closes it (the fixture closes every writer)."""
    await read_request_head(reader)
    await writer.wait_closed()


# -- 1. handshake ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "first_bytes",
    [b"", encode(Hello(PROTOCOL_VERSION, 1))[:5], b"\x02\x00"],
    ids=["silent", "half-a-hello", "half-a-length"],
)
async def test_no_hello_within_the_deadline_closes_the_connection(local_broker, first_bytes):
    server = await local_broker(handshake_timeout=0.2)
    worker = await RawWorker.connect(server.path, hello=False)
    worker.writer.write(first_bytes)
    msgs = await worker.until(lambda m: False)
    assert "no Hello within 0.2 s" in _error(msgs).message
    worker.writer.close()
    await wait_until(lambda: not server.workers)


async def test_two_thousand_silent_connections_are_all_closed(local_broker):
    server = await local_broker(handshake_timeout=0.3)
    conns = [await asyncio.open_unix_connection(server.path) for _ in range(2000)]
    try:
        closing = [reader.read() for reader, _ in conns]  # to EOF
        answers = await asyncio.wait_for(asyncio.gather(*closing), 10)
        assert set(answers) == {
            encode(ErrorFrame("protocol", "no Hello within 0.3 s of connecting"))
        }
    finally:
        for _, writer in conns:
            writer.close()
    await wait_until(lambda: not server.workers)


async def test_a_frame_before_hello_is_capped_small(local_broker):
    server = await local_broker()
    worker = await RawWorker.connect(server.path, hello=False)
    worker.writer.write((64 << 10).to_bytes(4, "little") + b"\x00" * 100)
    msgs = await worker.until(lambda m: False)
    assert "over the cap of 1024" in _error(msgs).message


async def test_two_thousand_idle_connections_cost_little(broker_process, hello_url):
    """Connections that never speak hold no read buffer each (one was 256 KiB)."""
    path = broker_process.socket_path
    broker = psutil.Process(broker_process.pid)
    async with ClientSession(broker=path) as good:
        before = (await good.stats()).workers
        rss = broker.memory_info().rss
        idle = []
        try:
            for _ in range(2000):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                idle.append(s)
                s.connect(path)
                s.send(b"\x05\x00")  # and half a frame length, to be read into a buffer
            await wait_until(
                lambda: _workers_at_least(good, before + 2000), 10, "2,000 connections seen"
            )
            grown = broker.memory_info().rss - rss
            async with good.get(hello_url) as resp:
                assert await resp.text() == "hello"
        finally:
            for s in idle:
                s.close()
    assert grown < 24 * MiB, f"2,000 idle connections grew the broker by {grown >> 20} MiB"


# -- 2. anything while decoding or handling a frame --------------------------------------


def _nested_stats(depth: int) -> bytes:
    e = msgspec.msgpack.encode
    body = b"\x96" + e("stats") + e(1) * 3 + e(0) + b"\x91\x81" + e("a") + b"\x91" * depth + b"\x90"
    return len(body).to_bytes(4, "little") + body


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        (_nested_stats(1000), "RecursionError"),
        (encode(Ack(1, 1 << 62)), "<= 4294967296"),
        (encode(Ack(1, -1)), ">= 0"),
        (encode(ClearDNS(PoolSpec(), "h", 70000)), "<= 65535"),
    ],
    ids=["nested", "ack-2**62", "ack-negative", "port"],
)
async def test_a_frame_the_broker_cannot_take_is_an_error_frame(
    broker_process, hello_url, frames, needle
):
    path = broker_process.socket_path
    worker = await RawWorker.connect(path)
    worker.writer.write(frames)
    msgs = await worker.until(lambda m: False)
    assert needle in _error(msgs).message
    assert broker_process.process.poll() is None
    await _good_worker_still_served(path, hello_url)


async def test_a_resolver_option_the_library_refuses_fails_that_request_only(
    broker_process, hello_url
):
    """A resolver the library cannot make (pycares raises TypeError for an unknown
    option): ClearDNS has nothing to clear, a request on it fails alone, and the same
    worker is served on."""
    bad = PoolSpec(resolver=ResolverSpec(kind="async", options=(("bogus", 1),)))
    worker = await RawWorker.connect(broker_process.socket_path)
    worker.send(ClearDNS(bad), Request(1, "GET", hello_url, pool=encode_pool(bad)), StatsRequest())
    got = {type(m): m for m in (await worker.next(), await worker.next())}
    assert "cannot make the resolver" in got[Failure].message
    assert Stats in got
    worker.send(Request(3, "GET", hello_url))
    assert isinstance(await worker.next(), Head)
    assert broker_process.process.poll() is None


# -- 3. acknowledgements -------------------------------------------------------------------


@pytest.mark.parametrize("size", [1 << 62, 3 * STREAM_WINDOW])
async def test_an_ack_for_more_than_was_sent_is_a_protocol_error(
    broker_process, raw_server, size
):
    """Credit that was never earned must not let the broker push a body it buffers."""
    base = await raw_server(_streaming_server(64 * MiB))
    worker = await RawWorker.connect(broker_process.socket_path)
    worker.send(Request(1, "GET", base + "/"))
    assert isinstance(await worker.next(), Head)
    worker.send(Ack(1, size))
    received = 0
    while (msg := await worker.next()) is not None and not isinstance(msg, ErrorFrame):
        assert isinstance(msg, Data), msg
        received += len(msg.data)
        assert received < 2 * STREAM_WINDOW, "the broker sent past the window"
    assert isinstance(msg, ErrorFrame)


# -- 4. request-side credit ----------------------------------------------------------------


async def test_data_beyond_the_credit_fails_that_stream_only(
    broker_process, raw_server, hello_url
):
    """A worker flooding Data (64 MiB at a server that reads none of it) loses that
    stream, not its connection, and the broker does not keep the flood."""
    base = await raw_server(_silent_server)
    broker = psutil.Process(broker_process.pid)
    worker = await RawWorker.connect(broker_process.socket_path)
    rss = broker.memory_info().rss
    worker.send(Request(1, "POST", base + "/", streamed=True))
    piece = encode(Data(1, b"x" * MiB))
    for _ in range(64):
        worker.writer.write(piece)
        await worker.writer.drain()
    worker.send(StatsRequest())
    msgs = await worker.until(lambda m: isinstance(m, Stats))
    assert [type(m) for m in msgs if not isinstance(m, Ack)] == [Failure, Stats]
    failure = msgs[-2]
    assert (failure.stream, failure.code) == (1, "protocol")
    assert "beyond its credit" in failure.message
    grown = broker.memory_info().rss - rss
    assert grown < 24 * MiB, f"the flood grew the broker by {grown >> 20} MiB"
    worker.send(Request(3, "GET", hello_url))  # the same connection carries on
    msgs = await worker.until(lambda m: isinstance(m, End | Failure))
    assert [type(m) for m in msgs] == [Head, Data, End]


@pytest.mark.parametrize(
    ("streamed", "frames"),
    [(False, [Data(1, b"x")]), (False, [End(1)]), (True, [End(1), Data(1, b"x")])],
    ids=["data-without-a-body", "end-without-a-body", "data-after-end"],
)
async def test_body_frames_on_a_stream_that_sends_no_body(
    broker_process, raw_server, streamed, frames
):
    base = await raw_server(_silent_server)
    worker = await RawWorker.connect(broker_process.socket_path)
    worker.send(Request(1, "POST", base + "/", streamed=streamed), *frames, StatsRequest())
    msgs = await worker.until(lambda m: isinstance(m, Stats))
    failures = [m for m in msgs if isinstance(m, Failure)]
    assert len(failures) == 1, msgs
    assert failures[0].code == "protocol"
    assert "not sending a request body" in failures[0].message


async def test_a_streamed_body_within_its_credit_goes_through(broker_process, serve_app):
    """The credit the broker enforces is the one it grants: a raw worker that sends
    exactly what the Acks allow uploads 4 MiB."""
    from aiohttp import web

    async def echo_size(request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        return web.Response(text=str(size))

    app = web.Application()
    app.router.add_post("/", echo_size)
    base = await serve_app(app)
    worker = await RawWorker.connect(broker_process.socket_path)
    worker.send(Request(1, "POST", base + "/", streamed=True))
    credit, left, piece = STREAM_WINDOW, 4 * MiB, 300_000
    while left:
        while credit and left:
            n = min(piece, credit, left)
            worker.send(Data(1, b"y" * n))
            credit -= n
            left -= n
        if left:
            msg = await worker.next()
            assert isinstance(msg, Ack), msg
            credit += msg.size
    worker.send(End(1))
    msgs = await worker.until(lambda m: isinstance(m, End | Failure | ErrorFrame))
    body = b"".join(m.data for m in msgs if isinstance(m, Data))
    assert body == str(4 * MiB).encode(), msgs


# -- 5 and 8. caps on streams and on pool specs --------------------------------------------


async def test_streams_over_the_cap_fail_alone(local_broker, raw_server, hello_url):
    server = await local_broker(max_streams=3)
    slow = await raw_server(_silent_server)
    worker = await RawWorker.connect(server.path)
    worker.send(*(Request(i, "GET", slow + "/") for i in (1, 3, 5)))
    worker.send(Request(7, "GET", hello_url))
    failure = await worker.next()
    assert isinstance(failure, Failure) and failure.stream == 7, failure
    assert failure.code == "broker"
    assert "3 requests open on the broker, its cap" in failure.message
    worker.send(Cancel(1), Request(9, "GET", hello_url))
    msgs = await worker.until(lambda m: isinstance(m, End | Failure))
    assert [(type(m), m.stream) for m in msgs] == [(Head, 9), (Data, 9), (End, 9)]


async def test_pool_specs_over_the_cap_fail(local_broker, hello_url):
    server = await local_broker(max_pool_specs=2)
    worker = await RawWorker.connect(server.path)

    async def get(stream: int, name: str) -> list[type]:
        worker.send(Request(stream, "GET", hello_url, pool=encode_pool(PoolSpec(name=name))))
        return [type(m) for m in await worker.until(lambda m: isinstance(m, End | Failure))]

    assert await get(1, "a") == [Head, Data, End]
    assert await get(3, "b") == [Head, Data, End]
    worker.send(Request(5, "GET", hello_url, pool=encode_pool(PoolSpec(name="c"))))
    failure = await worker.next()
    assert isinstance(failure, Failure) and failure.code == "broker"
    assert "2 distinct connection pools" in failure.message
    assert await get(7, "a") == [Head, Data, End]  # a spec it has is still fine
    assert len(server.engine.registry) == 2
    worker.send(ClearDNS(PoolSpec(name="d")))
    assert "distinct connection pools" in _error(await worker.until(lambda m: False)).message


async def test_pools_and_timeouts_named_by_id(local_broker, hello_url):
    """Opened once, named by id: the request uses that pool and that timeout."""
    server = await local_broker()
    worker = await RawWorker.connect(server.path)
    spec = encode_pool(PoolSpec(name="by-id"))
    worker.send(PoolOpen(7, spec), TimeoutOpen(9, ClientTimeout(total=30, sock_read=5)))
    for stream in (1, 3):
        worker.send(Request(stream, "GET", hello_url, pool_id=7, timeout_id=9, pool=b""))
        msgs = await worker.until_end_of(stream)
        assert [type(m) for m in msgs] == [Head, Data, End], msgs
    (conn,) = server.workers
    assert conn.ids.pools == {7: spec} and conn.ids.timeouts[9].sock_read == 5
    assert [p.spec.name for p in server.engine.registry.pools] == ["by-id"]


@pytest.mark.parametrize("field", ["pool_id", "timeout_id"])
async def test_an_unknown_pool_or_timeout_id_fails_that_request_alone(
    local_broker, hello_url, field
):
    server = await local_broker()
    bad = await RawWorker.connect(server.path)
    other = await RawWorker.connect(server.path)
    bad.send(Request(1, "GET", hello_url, **{field: 5}))
    failure = await bad.next()
    assert isinstance(failure, Failure) and failure.stream == 1, failure
    assert failure.code == "protocol"
    assert f"{field.removesuffix('_id')} id 5, never opened" in failure.message
    # That worker's connection carries on, and so does every other worker.
    for worker in (bad, other):
        worker.send(Request(3, "GET", hello_url))
        assert [type(m) for m in await worker.until_end_of(3)] == [Head, Data, End]


async def test_opens_over_the_caps_are_refused(local_broker, hello_url):
    server = await local_broker(max_pool_specs=1, max_timeouts=1)
    worker = await RawWorker.connect(server.path)
    worker.send(
        PoolOpen(1, encode_pool(PoolSpec(name="a"))),
        PoolOpen(2, encode_pool(PoolSpec(name="b"))),  # over max_pool_specs
        TimeoutOpen(3, ClientTimeout(total=10)),
        TimeoutOpen(4, ClientTimeout(total=20)),  # over max_timeouts
    )
    worker.send(Request(1, "GET", hello_url, pool_id=2))
    failure = await worker.next()
    assert isinstance(failure, Failure) and failure.code == "broker", failure
    assert "1 distinct connection pools" in failure.message
    worker.send(Request(3, "GET", hello_url, pool_id=1, timeout_id=4))
    failure = await worker.next()
    assert isinstance(failure, Failure) and failure.code == "broker", failure
    assert "limits.max_timeouts" in failure.message
    worker.send(Request(5, "GET", hello_url, pool_id=1, timeout_id=3))  # what it has
    assert [type(m) for m in await worker.until_end_of(5)] == [Head, Data, End]
    (conn,) = server.workers
    assert (len(conn.ids.pools), len(conn.ids.timeouts)) == (1, 1)


async def test_pool_ids_are_capped_even_for_one_spec(local_broker, hello_url):
    """Every PoolOpen keeps its spec's bytes under its id: many ids for one spec
    (which ``admit`` lets through: no new spec) must meet the cap too, or a worker grows
    the broker's memory without bound (documented: max_pool_specs specs by id)."""
    server = await local_broker(max_pool_specs=2)
    worker = await RawWorker.connect(server.path)
    spec = encode_pool(PoolSpec(name="a" * 1000))
    worker.send(*(PoolOpen(i, spec) for i in range(1, 101)))
    worker.send(Request(1, "GET", hello_url, pool_id=1))
    assert [type(m) for m in await worker.until_end_of(1)] == [Head, Data, End]
    worker.send(Request(3, "GET", hello_url, pool_id=100))
    failure = await worker.next()
    assert isinstance(failure, Failure) and failure.code == "broker", failure
    (conn,) = server.workers
    assert len(conn.ids.pools) == 2


async def test_an_id_opened_twice_closes_that_worker(local_broker, hello_url):
    server = await local_broker()
    worker = await RawWorker.connect(server.path)
    spec = encode_pool(PoolSpec(name="a"))
    worker.send(PoolOpen(1, spec), PoolOpen(1, spec))
    assert "pool id 1 is open already" in _error(await worker.until(lambda m: False)).message
    await _good_worker_still_served(server.path, hello_url)


async def test_a_worker_client_opens_its_settings_once(local_broker, hello_url):
    """A real session: its connector's spec and its timeout go once per connection."""
    from worker_client import ClientTimeout as Timeout
    from worker_client import TCPConnector

    server = await local_broker()
    connector = TCPConnector(limit=7)
    async with ClientSession(
        broker=server.path, connector=connector, timeout=Timeout(total=40)
    ) as session:
        for _ in range(3):
            async with session.get(hello_url) as resp:
                assert await resp.text() == "hello"
        async with session.get(hello_url, timeout=Timeout(total=41)) as resp:
            assert await resp.text() == "hello"
        (conn,) = server.workers
        assert [decode_pool(p).limit for p in conn.ids.pools.values()] == [7]
        assert sorted(t.total for t in conn.ids.timeouts.values()) == [40, 41]


# -- 5b. one frame for a small response ------------------------------------------------


async def test_a_small_response_is_one_frame_and_a_large_one_streams(local_broker, serve_app):
    """Head, body and end known together, under INLINE_MAX: one Head frame with the
    body; a larger body the usual Head, Data..., End."""
    from .apps import text_app

    base = str(await serve_app(text_app("x" * 1000)))
    big = str(await serve_app(text_app("y" * (64 << 10))))
    server = await local_broker()
    worker = await RawWorker.connect(server.path, split=False)
    worker.send(Request(1, "GET", base + "/"))
    (head,) = await worker.until_end_of(1)
    assert isinstance(head, Head) and head.status == 200 and head.body == b"x" * 1000
    worker.send(Request(3, "HEAD", base + "/"))
    (head,) = await worker.until_end_of(3)
    assert isinstance(head, Head) and head.body == b""
    worker.send(Request(5, "GET", big + "/"))
    msgs = await worker.until_end_of(5)
    assert type(msgs[0]) is Head and msgs[0].body is None
    assert type(msgs[-1]) is End
    assert b"".join(m.data for m in msgs[1:-1]) == b"y" * (64 << 10)


async def test_the_one_frame_reply_reaches_the_response(broker_process, serve_app):
    """Through ``worker_client``: the body, its end, and a decoded body's size as
    received (``End.raw``, carried by the one frame) all arrive."""
    from aiohttp import web

    async def gzipped(request: web.Request) -> web.Response:
        resp = web.Response(text="z" * 5000)
        resp.enable_compression(web.ContentCoding.gzip)
        return resp

    app = web.Application()
    app.router.add_get("/", gzipped)
    base = str(await serve_app(app))
    async with ClientSession(broker=broker_process.socket_path) as session:
        for _ in range(3):
            async with session.get(base + "/") as resp:
                assert resp.headers["Content-Encoding"] == "gzip"
                assert await resp.text() == "z" * 5000
                assert resp.content.at_eof()
                assert 0 < resp.content.total_raw_bytes < 200


# -- 5c. requests started without a task ------------------------------------------------


def _answers_then_silent(answered: int):
    """A raw handler answering the first ``answered`` requests of a connection with
    "ok", then reading the next head and saying nothing."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(answered):
            await read_request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await read_request_head(reader)
        await writer.wait_closed()

    return handler


async def test_a_request_on_an_idle_connection_starts_without_a_task(local_broker, hello_url):
    server = await local_broker()
    worker = await RawWorker.connect(server.path, split=False)
    worker.send(Request(1, "GET", hello_url))  # opens the connection: the general path
    assert [type(m) for m in await worker.until_end_of(1)] == [Head]
    assert server.fast_requests == 0
    worker.send(Request(3, "GET", hello_url))
    (head,) = await worker.until_end_of(3)
    assert head.body == b"hello" and server.fast_requests == 1
    assert server.engine.requests == 2  # counted once each, either way
    (conn,) = server.workers
    assert not conn.streams
    (pool,) = server.engine.registry.pools
    assert pool.figures()["idle"] == 1


async def test_a_fast_request_given_up_frees_its_connection(local_broker, raw_server):
    server = await local_broker()
    base = await raw_server(_answers_then_silent(1))
    worker = await RawWorker.connect(server.path)
    worker.send(Request(1, "GET", base + "/"))
    await worker.until_end_of(1)
    worker.send(Request(3, "GET", base + "/"))
    (conn,) = server.workers
    await wait_until(lambda: 3 in conn.streams)
    assert server.fast_requests == 1 and conn.streams[3].task is None
    (pool,) = server.engine.registry.pools
    assert pool.figures()["active"] == 1
    worker.send(Cancel(3))
    await wait_until(lambda: pool.figures()["active"] == 0 and not conn.streams)
    assert pool.figures()["idle"] == 0  # its exchange unfinished: closed, not reused


async def test_a_fast_request_has_its_sock_read_timeout(local_broker, raw_server):
    server = await local_broker()
    base = await raw_server(_answers_then_silent(1))
    worker = await RawWorker.connect(server.path)
    worker.send(TimeoutOpen(1, ClientTimeout(sock_read=0.2)))
    worker.send(Request(1, "GET", base + "/", timeout_id=1))
    await worker.until_end_of(1)
    worker.send(Request(3, "GET", base + "/", timeout_id=1))
    (failure,) = await worker.until_end_of(3)
    assert isinstance(failure, Failure) and failure.code == "sock_read_timeout", failure
    assert server.fast_requests == 1  # then handed to the engine, which failed it
    assert server.engine.requests == 2


async def test_the_cached_heads_stay_small_whatever_the_urls_carry(local_broker, hello_url):
    """A head is cached by its request's URL and headers: a URL whose fragment (or a
    header dropped from the head) is large makes a small head but a large key, which
    must not be kept (broker.known's bound: about 700 KiB per connection)."""
    from broker.known import CHECKED_HEADS

    server = await local_broker()
    worker = await RawWorker.connect(server.path, split=False)
    worker.send(Request(1, "GET", hello_url))
    await worker.until_end_of(1)
    fragment = "f" * (256 << 10)
    for i in range(CHECKED_HEADS // 2):
        sid = 3 + 2 * i
        worker.send(Request(sid, "GET", f"{hello_url}#{i}{fragment}"))
        (head,) = await worker.until_end_of(sid)
        assert head.body == b"hello"
    assert server.fast_requests == CHECKED_HEADS // 2
    (conn,) = server.workers
    kept = sum(
        len(key[1]) + sum(len(n) + len(v) for n, v in key[2]) for key in conn.checked.heads
    )
    assert kept < 700 << 10, kept >> 10


# -- 6. write backpressure on the worker's socket ------------------------------------------


async def test_a_worker_that_does_not_read_holds_back_its_streams(local_broker, raw_server):
    """16 streams to a worker that reads nothing: the broker stops pulling the bodies
    once the socket is write-paused, instead of buffering a window per stream; they all
    come whole once the worker reads."""
    server = await local_broker()
    total, streams = 2 * MiB, range(1, 33, 2)
    base = await raw_server(_streaming_server(total))
    worker = await RawWorker.connect(server.path, rcvbuf=4096)
    worker.send(*(Request(i, "GET", base + "/") for i in streams))
    (conn,) = server.workers

    def all_parked() -> bool:
        return len(conn.streams) == len(streams) and all(
            s._resume is not None for s in conn.streams.values()
        )

    await wait_until(all_parked)
    buffered = conn.transport.get_write_buffer_size()
    # at most one upstream read per stream past the pause
    assert buffered < WRITE_HIGH + len(streams) * READ_SIZE, buffered >> 10
    got = dict.fromkeys(streams, 0)
    ended: set[int] = set()
    while ended != set(streams):
        msg = await worker.next()
        if isinstance(msg, Data):
            got[msg.stream] += len(msg.data)
            worker.send(Ack(msg.stream, len(msg.data)))
        elif isinstance(msg, End):
            ended.add(msg.stream)
        else:
            assert isinstance(msg, Head), msg
    assert set(got.values()) == {total}


async def test_a_worker_that_floods_requests_for_stats_without_reading(local_broker, hello_url):
    """Replies wait in the socket's buffer only up to its high-water mark: then the
    broker stops taking the worker's frames."""
    server = await local_broker()
    worker = await RawWorker.connect(server.path, rcvbuf=4096)
    worker.send(Request(1, "GET", hello_url))  # a pool and a resolver: longer Stats
    assert [type(m) for m in await worker.until(lambda m: isinstance(m, End))] == [
        Head, Data, End
    ]
    (conn,) = server.workers
    count = 20_000  # replies of ~400 bytes: 8 MB if nothing held them back
    worker.writer.write(encode(StatsRequest()) * count)
    await wait_until(
        lambda: not conn.transport.is_reading()
        or conn.transport.get_write_buffer_size() > 4 * WRITE_HIGH
    )
    assert conn.transport.get_write_buffer_size() < WRITE_HIGH + (64 << 10)
    for _ in range(count):  # reading, the worker gets every reply
        assert isinstance(await worker.next(), Stats)


async def test_concurrent_stats_requests_each_get_a_reply(broker_process):
    worker = await RawWorker.connect(broker_process.socket_path)
    worker.send(StatsRequest(), StatsRequest(), StatsRequest())
    msgs = [await worker.next() for _ in range(3)]
    assert all(isinstance(m, Stats) for m in msgs), msgs


# -- 7. dead workers ------------------------------------------------------------------------


_FORKING_WORKER = textwrap.dedent(
    """
    import os, signal, socket, sys
    sys.path.insert(0, {root!r})
    from shared.framing import encode
    from shared.messages import PROTOCOL_VERSION, Hello
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(encode(Hello(PROTOCOL_VERSION, os.getpid())))
    s.recv(100)
    child = os.fork()
    if child == 0:  # holds the socket open after its parent died
        os.close(1)
        signal.alarm(30)  # sits with the socket open until killed (or 30 s at most)
        signal.pause()
        os._exit(0)
    print(child, flush=True)
    """
)


@pytest.mark.parametrize("use_pidfd", [True, False], ids=["pidfd", "polling"])
async def test_a_dead_worker_is_found_though_a_child_holds_its_socket(local_broker, use_pidfd):
    server = await local_broker()
    server.use_pidfd = use_pidfd
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _FORKING_WORKER.format(root=ROOT), server.path,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    child = int(await asyncio.wait_for(proc.stdout.readline(), 15))
    try:
        await proc.wait()
        await wait_until(lambda: not server.workers, 3)
        assert (server._poller is None) == use_pidfd  # no polling where pidfd serves
    finally:
        os.kill(child, 9)


@pytest.mark.parametrize(
    "pool",
    [b"\xc1", encode_pool(PoolSpec())[:-1], msgspec.msgpack.encode([1, 2, 3])],
    ids=["garbage", "truncated", "not-a-spec"],  # (b"" is the default pool: Request)
)
async def test_connector_settings_that_are_not_a_spec_fail_that_request(
    broker_process, hello_url, pool
):
    worker = await RawWorker.connect(broker_process.socket_path)
    worker.send(Request(1, "GET", hello_url, pool=pool))
    failure = await worker.next()
    assert isinstance(failure, Failure) and failure.code == "protocol"
    assert "invalid connector settings" in failure.message
    worker.send(Request(3, "GET", hello_url))
    assert isinstance(await worker.next(), Head)



async def _pool(worker: RawWorker, name: str) -> dict[str, Any]:
    worker.send(StatsRequest())
    msgs = await worker.until(lambda m: isinstance(m, Stats))
    return next((p for p in msgs[-1].pools if p["pool"] == name), {})


async def test_a_cancel_in_the_same_read_as_the_data_it_waited_for_frees_the_slot(
    broker_process, raw_server, hello_url
):
    """The Data wakes the engine's wait for the body and the Cancel lands before the
    engine runs: the give-up must still end the request (it was lost: the pool's one
    slot and its upstream connection stayed taken for ever)."""
    got_head = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        got_head.set()
        while await reader.read(1 << 16):
            pass

    base = await raw_server(handler)
    spec = PoolSpec(limit=1, name="data-then-cancel")
    worker = await RawWorker.connect(broker_process.socket_path)
    worker.send(Request(1, "POST", base + "/", streamed=True, pool=encode_pool(spec)))
    await got_head.wait()  # the engine now waits for the body
    worker.send(Data(1, b"some"), Cancel(1))

    async def freed() -> bool:
        return (await _pool(worker, "data-then-cancel"))["active"] == 0

    await wait_until(freed, 5, "the slot given back")
    worker.send(Request(3, "GET", hello_url, pool=encode_pool(spec)))
    msgs = await worker.until(lambda m: isinstance(m, End | Failure) and m.stream == 3)
    assert [type(m) for m in msgs if getattr(m, "stream", 0) == 3] == [Head, Data, End]


async def test_requests_cancelled_in_the_same_read_never_queue(broker_process, raw_server):
    """Request and Cancel in one read: the request must not start at all (it went on to
    queue in the shared pool, past the worker's stream cap)."""
    base = await raw_server(_silent_server)
    spec = encode_pool(PoolSpec(limit=1, name="request-then-cancel"))
    worker = await RawWorker.connect(broker_process.socket_path)
    worker.send(Request(1, "GET", base + "/", pool=spec))  # holds the only slot

    async def slot_taken() -> bool:
        return bool((await _pool(worker, "request-then-cancel")).get("active") == 1)

    await wait_until(slot_taken, 5, "the first request holding the slot")
    frames = [Request(2 * i + 3, "GET", base + "/", pool=spec) for i in range(200)]
    worker.send(*(m for r in frames for m in (r, Cancel(r.stream))))
    await _pool(worker, "request-then-cancel")  # answered in the same pass as the pairs
    figures = await _pool(worker, "request-then-cancel")  # after their tasks ran
    assert figures["queued"] == 0 and figures["active"] == 1, figures
