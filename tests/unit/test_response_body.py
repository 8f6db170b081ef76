"""The response body's lifecycle, driven by hand: one state, one release of the slot.

The connection, pool and stream are in-memory stand-ins that record what the body does
to them; the body itself is the real ``broker.body.ResponseBody``.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest

from broker.body import MAX_DATA, BodyState, ResponseBody
from broker.decoding import make_decoder
from broker.failures import ConnectionFailure
from broker.stream import BrokerStream
from shared.messages import STREAM_WINDOW, Failure, Head, Request


class FakeConn:
    def __init__(self, loop: asyncio.AbstractEventLoop, early: list[bytes], complete: bool):
        self.loop = loop
        self.early = early
        self.complete = complete
        self.failure: ConnectionFailure | None = None
        self.consumer = None
        self.in_use = True
        self.closed = False
        self.reading_paused = False
        self.last_read = loop.time()
        self._done: asyncio.Future[None] | None = None
        self.ended = 0

    # what the body uses
    def set_body_consumer(self, consumer, sink=None):
        self.consumer = consumer
        self.sink = sink
        early, self.early = self.early, []
        for chunk in early:
            (consumer or (lambda b: None))(chunk)

    @property
    def exchange_over(self) -> bool:
        return self.complete or self.failure is not None

    @property
    def exchange_error(self):
        return None if self.complete else self.failure

    @property
    def done_future(self):
        if self._done is None:
            self._done = self.loop.create_future()
        return self._done

    def pause_reading(self):
        if not self.complete:
            self.reading_paused = True

    def resume_reading(self):
        self.reading_paused = False

    def end_exchange(self) -> bool:
        self.ended += 1
        return self.complete and not self.closed

    def close(self):
        self.closed = True

    def fail_exchange(self, failure):
        self.failure = failure

    # what the test drives
    def arrive(self, chunk: bytes) -> None:
        self.consumer(chunk)

    def finish(self) -> None:
        self.complete = True
        self.done_future.set_result(None)

    def lose(self, failure: ConnectionFailure) -> None:
        self.failure = failure
        self.done_future.set_exception(failure)


class FakePool:
    def __init__(self):
        self.released: list[tuple[FakeConn, bool]] = []

    def give_back(self, conn) -> None:
        """As ``Pool.give_back``: once per lease, reusable after a complete exchange."""
        if conn.in_use:
            conn.in_use = False
            self.released.append((conn, conn.end_exchange()))


class RecordingStream(BrokerStream):
    def __init__(self):
        super().__init__(1)
        self.sent: list[object] = []

    def _send_head(self, msg: Head) -> None:
        self.sent.append("head")

    def _send_data(self, chunk: bytes) -> None:
        self.sent.append(len(chunk))

    def _send_end(self) -> None:
        self.sent.append("end")

    def _send_failure(self, failure: Failure) -> None:
        self.sent.append(failure.code)

    @property
    def body_bytes(self) -> int:
        return sum(x for x in self.sent if isinstance(x, int))


async def settled(conn: FakeConn) -> None:
    """Past the done future's callbacks: the body's ran first, as it registered first."""
    await asyncio.wait([conn.done_future])


REQ = Request(stream=1, method="GET", url="http://h/")


def make(early: list[bytes], complete: bool, encoding: str | None = None):
    loop = asyncio.get_running_loop()
    conn = FakeConn(loop, early, complete)
    pool = FakePool()
    stream = RecordingStream()
    stream.head(Head(1, 200, "OK", (1, 1), [], "http://h/", "GET"))
    decoder = make_decoder(encoding) if encoding else None
    body = ResponseBody(loop, REQ, stream, conn, pool, decoder, [])  # type: ignore[arg-type]
    return body, conn, pool, stream


async def test_a_whole_small_response_ends_at_once_and_is_reused():
    body, conn, pool, stream = make([b"hello"], complete=True)
    body.start()
    assert stream.sent == ["head", 5, "end"]
    assert pool.released == [(conn, True)] and body.state is BodyState.ENDED


async def test_a_body_that_keeps_coming_ends_with_its_last_byte():
    body, conn, pool, stream = make([b"ab"], complete=False)
    body.start()
    conn.arrive(b"cd")
    assert pool.released == [] and body.state is BodyState.FLOWING
    conn.finish()
    await settled(conn)
    assert stream.sent == ["head", 2, 2, "end"]
    assert pool.released == [(conn, True)]


@pytest.mark.parametrize("read_acks", [0, 1, 3])
async def test_the_worker_leaving_a_decoding_body_frees_the_slot(read_acks):
    """Issue 6's leak: gzip that came whole with its head and decodes past the window."""
    packed = gzip.compress(bytes(8 * STREAM_WINDOW))
    body, conn, pool, stream = make([packed], complete=True, encoding="gzip")
    body.start()
    assert body.state is BodyState.DRAINING  # waiting for the worker's acknowledgements
    assert stream.unacked >= STREAM_WINDOW and pool.released == []
    for _ in range(read_acks):
        stream.on_ack(stream.unacked)
    stream.give_up()  # the worker leaves
    assert body.state is BodyState.ENDED
    assert pool.released == [(conn, True)], "the slot must be freed, exactly once"
    stream.give_up()
    assert len(pool.released) == 1 and "end" not in stream.sent


async def test_acknowledgements_drain_a_decoding_body_to_its_end():
    plain = bytes(3 * STREAM_WINDOW + 123)
    body, conn, pool, stream = make([gzip.compress(plain)], complete=True, encoding="gzip")
    body.start()
    while body.state is not BodyState.ENDED:
        assert stream.unacked <= STREAM_WINDOW + MAX_DATA  # the bound per stream
        stream.on_ack(stream.unacked)
    assert stream.body_bytes == len(plain) and stream.sent[-1] == "end"
    assert all(x <= MAX_DATA for x in stream.sent if isinstance(x, int))
    assert pool.released == [(conn, True)]


async def test_a_full_window_pauses_the_upstream_and_an_ack_resumes_it():
    body, conn, pool, stream = make([], complete=False)
    body.start()
    conn.arrive(bytes(STREAM_WINDOW))
    assert conn.reading_paused
    stream.on_ack(STREAM_WINDOW)
    assert not conn.reading_paused
    conn.finish()
    await settled(conn)
    assert stream.sent[-1] == "end"


async def test_an_upstream_error_fails_the_stream_and_closes_the_connection():
    body, conn, pool, stream = make([b"ab"], complete=False)
    body.start()
    conn.lose(ConnectionFailure("payload", "cut short"))
    await settled(conn)
    assert stream.sent[-1] == "payload"
    assert pool.released == [(conn, False)]


async def test_a_body_that_does_not_decode_fails_and_is_never_reused():
    body, conn, pool, stream = make([b"not gzip at all"], complete=True, encoding="gzip")
    body.start()
    assert stream.sent[-1] == "payload"
    assert conn.closed and pool.released == [(conn, False)]


async def test_a_truncated_compressed_body_fails_at_its_end():
    packed = zlib.compress(b"x" * 1000)[:-4]
    body, conn, pool, stream = make([packed], complete=True, encoding="deflate")
    body.start()
    assert stream.sent[-1] == "payload"
    assert len(pool.released) == 1


async def test_the_worker_leaving_before_the_end_drops_the_rest():
    body, conn, pool, stream = make([b"ab"], complete=False)
    body.start()
    stream.give_up()
    assert pool.released == [(conn, False)]  # incomplete: never reused
    conn.finish()
    await settled(conn)
    assert len(pool.released) == 1 and stream.sent == ["head", 2]


@pytest.mark.parametrize("encoding", ["gzip", "br"])
async def test_a_compressed_body_in_tiny_chunks_stays_within_one_window(encoding):
    """Thousands of chunks in one upstream read, none acknowledged: at most one window
    and one piece go out (each chunk used to add a decoded piece past the window)."""
    plain = bytes(16 * STREAM_WINDOW)
    if encoding == "gzip":
        packed = gzip.compress(plain)
    else:
        brotli = pytest.importorskip("brotli")
        packed = brotli.compress(plain, quality=5)
    body, conn, pool, stream = make([], complete=False, encoding=encoding)
    body.start()
    step = max(1, len(packed) // 4000)
    for i in range(0, len(packed), step):
        conn.arrive(packed[i : i + step])
    assert stream.unacked <= STREAM_WINDOW + MAX_DATA
    conn.finish()
    await settled(conn)
    while body.state is not BodyState.ENDED:
        stream.on_ack(stream.unacked)
        assert stream.unacked <= STREAM_WINDOW + MAX_DATA
    assert stream.body_bytes == len(plain) and stream.sent[-1] == "end"
