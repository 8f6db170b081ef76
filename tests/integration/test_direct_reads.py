"""Direct reads on the broker's upstream side (issue 11): a carrier whose
``body_buffer()`` hands out memory gets a plain body read straight into it, with the
window, pauses, ``sock_read``, early bytes and Content-Length lies as with ``data``.

The carrier here is ``SlotStream``: a ``BrokerStream`` that hands out pieces of its own
buffer (as a shared-memory slot would) and acknowledges only when the test says so.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from broker.engine import Engine
from broker.stream import BrokerStream
from shared.messages import STREAM_WINDOW, Failure, Head, Request
from shared.specs import ClientTimeout
from tests.conftest import read_request_head

PIECE = 300 * 1024  # over the connection's own read size: reads land in the slots


def _body(size: int) -> bytes:
    return hashlib.sha256(b"direct").digest() * (size // 32)


class SlotStream(BrokerStream):
    """Hands out ``PIECE`` bytes of memory at a time; keeps what arrives in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, auto_ack: bool = True) -> None:
        super().__init__(1)
        self.auto_ack = auto_ack
        self.slot = bytearray(PIECE)
        self.received = bytearray()
        self.direct = 0  # bytes read straight into the slot
        self.copied = 0  # bytes delivered by ``data``
        self.head_msg: Head | None = None
        self.failure: Failure | None = None
        self.done = loop.create_future()
        self.window_hit = asyncio.Event()
        self.most_unacked = 0

    def body_buffer(self) -> memoryview | None:
        return memoryview(self.slot)

    def _got(self, data: bytes | memoryview) -> None:
        self.received += data
        self.most_unacked = max(self.most_unacked, self.unacked)
        if self.window_full:
            self.window_hit.set()
        if self.auto_ack:
            self.on_ack(len(data))

    def _send_filled(self, size: int) -> None:
        self.direct += size
        self._got(memoryview(self.slot)[:size])

    def _send_data(self, chunk: bytes) -> None:
        self.copied += len(chunk)
        self._got(chunk)

    def _send_head(self, msg: Head) -> None:
        self.head_msg = msg

    def _send_end(self) -> None:
        self.done.set_result(None)

    def _send_failure(self, failure: Failure) -> None:
        self.failure = failure
        self.done.set_result(None)

    def _send_trace(self, event: object) -> None:
        pass


@pytest.fixture
async def engine():
    eng = Engine(asyncio.get_running_loop())
    yield eng
    await eng.close()


def _request(url: str, **kwargs) -> Request:
    return Request(1, "GET", url, **kwargs)


def serving(response: bytes, *, then: str = "wait", gate: asyncio.Event | None = None):
    """A raw handler: per request, write ``response`` (after ``gate`` if given), then
    serve the next request ("wait"), or close."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request_head(reader)
            if gate is not None:
                await gate.wait()
            writer.write(response)
            await writer.drain()
            if then == "close":
                return

    return handler


def _ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


async def test_a_plain_body_is_read_straight_into_the_carrier(raw_server, engine):
    body = _body(8 << 20)
    conns = []
    inner = serving(_ok(body))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        await inner(reader, writer)

    base = await raw_server(handler)
    for _ in range(2):
        stream = SlotStream(asyncio.get_running_loop())
        await engine.perform(_request(base + "/"), stream)
        await stream.done
        assert stream.failure is None
        assert hashlib.sha256(stream.received).digest() == hashlib.sha256(body).digest()
        assert stream.direct > len(body) // 2  # most of it: not through the parser
    assert len(conns) == 1  # the connection was reusable after a counted body


async def test_direct_reads_stop_at_the_window_and_go_on_with_acks(raw_server, engine):
    body = _body(6 << 20)
    base = await raw_server(serving(_ok(body)))
    stream = SlotStream(asyncio.get_running_loop(), auto_ack=False)
    await engine.perform(_request(base + "/"), stream)
    while not stream.done.done():
        waiter = asyncio.ensure_future(stream.window_hit.wait())
        await asyncio.wait((waiter, stream.done), return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if stream.window_hit.is_set():
            # at most one read past the window, and the socket is not read meanwhile
            assert stream.unacked <= STREAM_WINDOW + PIECE
            (conn,) = [c for pool in engine.registry.pools for c in pool._active]
            assert conn.reading_paused
            stream.window_hit.clear()
            stream.on_ack(stream.unacked)
            assert not conn.reading_paused
    assert stream.failure is None and bytes(stream.received) == body
    assert stream.most_unacked <= STREAM_WINDOW + PIECE and stream.direct


async def test_a_body_cut_short_is_a_payload_failure(raw_server, engine):
    body = _body(2 << 20)
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(body) + 1000) + body
    base = await raw_server(serving(response, then="close"))
    stream = SlotStream(asyncio.get_running_loop())
    await engine.perform(_request(base + "/"), stream)
    await stream.done
    assert stream.failure is not None and stream.failure.code == "payload"
    assert bytes(stream.received) == body and stream.direct


async def test_bytes_past_the_content_length_keep_the_connection_out_of_the_pool(
    raw_server, engine
):
    body = _body(1 << 20)  # fits in the socket buffers: all of it is there at once
    gate = asyncio.Event()
    conns = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        await read_request_head(reader)
        writer.write(_ok(body) + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlies!")
        await writer.drain()
        gate.set()
        await reader.read()

    base = await raw_server(handler)
    stream = SlotStream(asyncio.get_running_loop())
    await engine.perform(_request(base + "/"), stream)
    await stream.done
    assert bytes(stream.received) == body and stream.failure is None
    await gate.wait()
    second = SlotStream(asyncio.get_running_loop())
    gate.clear()
    await engine.perform(_request(base + "/"), second)
    await second.done
    assert bytes(second.received) == body  # not the lie: a new connection
    assert conns == 2


async def test_sock_read_still_fires_between_direct_reads(raw_server, engine):
    body = _body(4 << 20)
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(_ok(body)[: 2 << 20])  # half, then silence
        await writer.drain()
        await release.wait()

    base = await raw_server(handler)
    stream = SlotStream(asyncio.get_running_loop())
    timeout = ClientTimeout(sock_read=0.3)
    try:
        await engine.perform(_request(base + "/", timeout=timeout), stream)
        await stream.done
    finally:
        release.set()
    assert stream.failure is not None and stream.failure.code == "sock_read_timeout"
    assert stream.direct


async def test_early_body_bytes_then_direct_reads(raw_server, engine):
    """Body bytes read before the head is taken go by ``data``, the rest direct."""
    body = _body(3 << 20)
    base = await raw_server(serving(_ok(body)))
    stream = SlotStream(asyncio.get_running_loop())
    await engine.perform(_request(base + "/"), stream)
    await stream.done
    assert bytes(stream.received) == body
    assert stream.copied and stream.direct and stream.copied + stream.direct == len(body)
