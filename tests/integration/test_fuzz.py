"""Fuzzing the broker's socket while a well-behaved worker keeps working.

A broker process of its own gets, from raw Unix-socket clients, a seeded random mix of
garbage: random bytes, truncated frames, frames nested a thousand levels deep, messages
in the wrong order or the wrong direction, out-of-range credits, streams it never asked
for, hundreds of distinct pool specs, and a crowd of connections that never say Hello.
Throughout, a real ``ClientSession`` in this process sends requests through the same
broker: every one must succeed, the broker must stay up, and its RSS must stay under
the bound written in docs/architecture.md.

The run is bounded by a count of cases (seeded, so a failure replays), not by time.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct

import msgspec
import psutil
import pytest

import broker
from broker.registry import MAX_RESOLVERS
from shared.framing import FrameError, FrameReader, encode
from shared.messages import (
    PROTOCOL_VERSION,
    Cancel,
    ClearDNS,
    Data,
    End,
    ErrorFrame,
    Head,
    Hello,
    Request,
    Stats,
    StatsRequest,
    Welcome,
)
from shared.specs import PoolSpec, ResolverSpec, encode_pool
from worker_client import ClientSession

from ..conftest import wait_until
from .apps import text_app

SEED = 20261201
CASES = 400
IDLE_CONNECTIONS = 1000
RSS_GROWTH_BOUND = 150 << 20  # over the broker's RSS after its first requests


@pytest.fixture
def fuzz_broker():
    with broker.start(export=False, drain_timeout=1) as proc:
        yield proc


def _frame(body: bytes) -> bytes:
    return struct.pack("<I", len(body)) + body


HELLO = encode(Hello(PROTOCOL_VERSION, 1))


def _nested(depth: int) -> bytes:
    """A Stats frame (a message only the broker sends) whose free-form field nests
    ``depth`` levels deep: decoding it recurses."""
    deep = b"\x91" * depth + b"\xc0"
    head = b"\x96" + msgspec.msgpack.encode("stats") + b"\x01\x01\x01\x01\x91\x81\xa1a"
    return _frame(head + deep)


def _case(rng: random.Random, url: str, sink: str) -> tuple[bytes, bool]:
    """One hostile conversation, as the bytes a raw client sends, and whether the broker
    must answer it (an ``ErrorFrame`` saying why it hangs up, or a reply to the last
    question) rather than fall silent."""
    sid = rng.randrange(1, 1 << 31) | 1
    good_req = encode(Request(sid, "GET", url))
    kind = rng.randrange(12)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 300)), False
    if kind == 1:
        return HELLO + rng.randbytes(rng.randrange(1, 300)), False
    if kind == 2:  # a frame that says more than comes
        return HELLO + struct.pack("<I", rng.randrange(10, 4 << 20)) + rng.randbytes(5), False
    if kind == 3:
        return HELLO + _nested(rng.choice((100, 1000, 10000))), True
    if kind == 4:  # wrong order: a request before Hello; data before a request
        return good_req + HELLO, True
    if kind == 5:
        return HELLO + encode(Data(sid, b"x" * 100)) + encode(End(sid)), False
    if kind == 6:  # messages only the broker sends
        head = Head(sid, 200, "OK", (1, 1), [], url, "GET")
        return HELLO + encode(rng.choice([Welcome(PROTOCOL_VERSION, 1), head])), True
    if kind == 7:  # out-of-range and unsolicited credits
        size = rng.choice((2**62, 2**63 - 1, -1, -(2**62), 0))
        return HELLO + good_req + _frame(msgspec.msgpack.encode(["ack", sid, size])), size != 0
    if kind == 8:  # a stream id reused, a cancel of nothing
        return HELLO + good_req + good_req + encode(Cancel(sid + 2)), True
    if kind == 9:  # a distinct pool spec per request
        spec = PoolSpec(name=f"fuzz-{rng.randrange(1 << 30)}", limit=rng.randrange(0, 5))
        return HELLO + encode(Request(sid, "GET", url, pool=encode_pool(spec))), False
    if kind == 10:  # a resolver option the resolver library refuses, then a question
        resolver = ResolverSpec(kind="async", options=(("timeout", "soon"),))
        clear = ClearDNS(PoolSpec(resolver=resolver), "h", 1)
        return HELLO + encode(clear) + encode(StatsRequest()), True
    # a streamed request to a server that never reads, with a body that floods past
    # any credit: whatever the broker accepts beyond its window it must not buffer
    req = encode(Request(sid, "POST", sink, streamed=True))
    return HELLO + req + encode(Data(sid, b"y" * (1 << 20))) * 48, False


async def _converse(path: str, data: bytes, expect_error: bool = False) -> None:
    """Send ``data``, then read all the broker says. On a bare socket: the broker may
    hang up while we still write (a bad frame early in ``data``), and what it said
    before is still to be read, where an asyncio stream would drop it for the write's
    error."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, path)
        try:
            await loop.sock_sendall(sock, data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the broker hung up on us mid-write: read what it said
            pass
        # The broker either closes on us (an ErrorFrame first) or answers and waits for
        # more; either way it must not hang up on anyone else. Read what it says.
        chunks: list[bytes] = []

        async def read_all() -> None:
            while chunk := await loop.sock_recv(sock, 1 << 16):
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read_all(), 5)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        answer = b"".join(chunks)
    if expect_error:
        try:
            said = FrameReader().feed(answer)
        except FrameError:
            said = []
        assert any(isinstance(m, (ErrorFrame, Stats)) for m in said), (data[:80], answer[:200])


async def test_fuzzed_frames_do_not_hurt_a_well_behaved_worker(
    fuzz_broker, serve_app, raw_server
):
    base = await serve_app(text_app("ok"))
    never_reads = asyncio.Event()

    async def sink_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await never_reads.wait()

    sink = await raw_server(sink_handler) + "/upload"
    proc = psutil.Process(fuzz_broker.pid)
    rng = random.Random(SEED)
    good: list[int] = []
    stop = asyncio.Event()

    async with ClientSession(broker=fuzz_broker.socket_path) as session:

        async def well_behaved() -> None:
            while not stop.is_set():
                async with session.get(base + "/") as resp:
                    assert await resp.text() == "ok"
                    good.append(resp.status)

        for _ in range(5):  # warm up before taking the baseline
            async with session.get(base + "/") as resp:
                await resp.read()
        baseline = proc.memory_info().rss
        threads, fds = proc.num_threads(), proc.num_fds()
        peak = baseline
        worker = asyncio.ensure_future(well_behaved())

        idle = [await asyncio.open_unix_connection(fuzz_broker.socket_path)
                for _ in range(IDLE_CONNECTIONS)]
        for _, w in idle[: IDLE_CONNECTIONS // 2]:
            w.write(HELLO[:3])  # half a Hello, then nothing
        try:
            for i in range(CASES):
                await _converse(fuzz_broker.socket_path, *_case(rng, base + "/", sink))
                if i % 20 == 0:
                    peak = max(peak, proc.memory_info().rss)
                    assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
            peak = max(peak, proc.memory_info().rss)
            await _many_specs(fuzz_broker.socket_path, base + "/", rng)
            peak = max(peak, proc.memory_info().rss)
        finally:
            for _, w in idle:
                w.close()
            stop.set()
            never_reads.set()
            await worker

        assert len(good) >= 10 and set(good) == {200}
        assert peak - baseline < RSS_GROWTH_BOUND, (
            f"broker RSS grew by {(peak - baseline) >> 20} MiB"
        )
        stats = await session.stats()
        assert stats.pid == fuzz_broker.pid
        # Distinct resolver settings start c-ares channels (a thread and a few
        # descriptors each): at most MAX_RESOLVERS live at once, whatever a worker asks
        # for (without the cap: a thread per setting, +251).
        # (The broker closes the idle connections' sockets as it sees them go: a moment.)
        await wait_until(
            lambda: proc.num_threads() - threads <= MAX_RESOLVERS + 8
            and proc.num_fds() - fds <= 4 * MAX_RESOLVERS + 100,
            10,
            lambda: (proc.num_threads() - threads, proc.num_fds() - fds),
        )
    assert fuzz_broker.process.poll() is None


SPECS = 2000
RESOLVERS = 250


async def _many_specs(path: str, url: str, rng: random.Random) -> None:
    """One worker asks for thousands of distinct pools and hundreds of distinct
    resolvers, pipelined on one connection, then goes away."""
    frames = [HELLO]
    for i in range(SPECS):
        if i < RESOLVERS:
            resolver = ResolverSpec(
                kind="async", nameservers=("127.0.0.1",), options=(("timeout", 1 + i),)
            )
            spec = PoolSpec(name=f"spec-{i}", resolver=resolver)
        else:
            spec = PoolSpec(name=f"spec-{i}-{rng.randrange(1 << 30)}")
        frames.append(encode(Request(2 * i + 1, "GET", url, pool=encode_pool(spec))))
    await _converse(path, b"".join(frames))
