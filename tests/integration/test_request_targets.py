"""A worker that skips its own checks cannot put a request line on an upstream connection
that it was not asked for; and the blocking peer that ``http-broker stats`` uses.

The hostile worker here is a raw Unix socket speaking frames (``broker.blocking``), so
nothing of ``worker_client`` stands between it and the broker; the upstream is a raw
server on loopback that records every request head it receives.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from yarl import URL

from broker.blocking import BlockingPeer, PeerError
from broker.stats import fetch_stats
from shared.errors import ErrorCode
from shared.messages import End, Failure, Head, Request, Stats, StatsRequest, Welcome
from worker_client import InvalidUrlClientError

# Request fields -> the code the broker must fail it with; "{base}" is the upstream.
HOSTILE: list[tuple[dict[str, object], ErrorCode]] = [
    ({"url": "{base}/a\x00b"}, ErrorCode.INVALID_URL),
    ({"url": "{base}/a?b= HTTP/1.0 HTTP/1.1"}, ErrorCode.INVALID_URL),
    ({"url": "{base}/a b"}, ErrorCode.INVALID_URL),
    ({"url": "{base}/a\x7f"}, ErrorCode.INVALID_URL),
    ({"url": "{base}/a?x=\x1b"}, ErrorCode.INVALID_URL),
    ({"url": "http://127.0.0.1\x00.evil:{port}/"}, ErrorCode.INVALID_URL),
    ({"url": "http://127.0.0.1 x:{port}/"}, ErrorCode.INVALID_URL),
    ({"url": "{base}/", "headers": [("Host", "h GET /x HTTP/1.1")]}, ErrorCode.PROTOCOL),
    ({"url": "{base}/", "headers": [("X", "a\x00b")]}, ErrorCode.PROTOCOL),
    ({"url": "{base}/", "method": "GET /smuggled HTTP/1.1\r\nX:"}, ErrorCode.PROTOCOL),
]


class Upstream:
    """Answers every request head with 200 "ok" and records the heads."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    self.heads.append(exc.partial)
                return
            self.heads.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()


def _exchange(path: str, base: str, port: int) -> tuple[list[object], list[object]]:
    """As a hostile worker: every HOSTILE request, then one good one; the answers."""
    with BlockingPeer(path, timeout=10) as peer:
        assert isinstance(peer.handshake(), Welcome)
        answers: list[object] = []
        for i, (fields, _) in enumerate(HOSTILE):
            values = {
                k: v.format(base=base, port=port) if isinstance(v, str) else v
                for k, v in fields.items()
            }
            peer.send(Request(stream=2 * i + 1, **{"method": "GET", **values}))  # type: ignore[arg-type]
            answers.append(peer.receive())
        good = 2 * len(HOSTILE) + 1
        peer.send(Request(stream=good, method="GET", url=base + "/ok"))
        replies = [peer.receive()]
        last = replies[-1]
        while not isinstance(last, (End, Failure)) and getattr(last, "body", None) is None:
            last = peer.receive()
            replies.append(last)
        return answers, replies


async def test_the_upstream_never_sees_a_hostile_request_line(broker_process, raw_server):
    upstream = Upstream()
    base = await raw_server(upstream.handle)
    port = int(base.rsplit(":", 1)[1])
    answers, replies = await asyncio.to_thread(
        _exchange, broker_process.socket_path, base, port
    )
    for (fields, code), answer in zip(HOSTILE, answers, strict=True):
        assert isinstance(answer, Failure), fields
        assert answer.code is code, (fields, answer)
    # The same connection still serves a well-behaved request, and that is all the
    # upstream ever received.
    assert [type(m) for m in replies] == [Head]  # a small response: one frame
    assert isinstance(replies[0], Head) and replies[0].body == b"ok"
    assert len(upstream.heads) == 1
    assert upstream.heads[0].startswith(b"GET /ok HTTP/1.1\r\n")


@pytest.mark.parametrize(
    "url",
    [
        "{base}/a\x00b",
        "{base}/a?b= HTTP/1.0 HTTP/1.1",
        "http://127.0.0.1 x:{port}/",
    ],
)
async def test_a_session_refuses_such_urls_before_sending(make_session, raw_server, url):
    upstream = Upstream()
    base = await raw_server(upstream.handle)
    port = int(base.rsplit(":", 1)[1])
    session = make_session()
    with pytest.raises(InvalidUrlClientError) as info:
        await session.get(URL(url.format(base=base, port=port), encoded=True))
    assert isinstance(info.value, ValueError)  # what aiohttp raises for a control byte
    async with session.get(base + "/ok") as resp:
        assert await resp.read() == b"ok"
    assert len(upstream.heads) == 1


# -- the blocking peer ---------------------------------------------------------------------


def test_fetch_stats_from_a_broker(broker_process) -> None:
    stats = fetch_stats(broker_process.socket_path)
    assert isinstance(stats, Stats)
    assert stats.pid == broker_process.pid
    assert stats.workers >= 1  # this connection


def test_an_unreachable_broker_is_a_peer_error(tmp_path) -> None:
    with pytest.raises(PeerError, match="cannot reach the broker at .*none.sock"):
        BlockingPeer(str(tmp_path / "none.sock"))
    assert issubclass(PeerError, OSError)


def test_an_error_frame_is_a_peer_error_with_its_message(broker_process) -> None:
    with BlockingPeer(broker_process.socket_path) as peer:
        peer.send(StatsRequest())  # before Hello
        with pytest.raises(PeerError, match="the first message must be Hello"):
            peer.receive()


def test_a_silent_broker_fails_within_the_timeout(tmp_path) -> None:
    path = str(tmp_path / "silent.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)  # accepts (in the kernel's backlog) and never answers
    try:
        with BlockingPeer(path, timeout=0.2) as peer:
            with pytest.raises(PeerError, match="timed out|in time"):
                peer.handshake()
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"\x02\x00\x00\x00\xc1\xc1", "bad frame"),  # a frame that is no message
        (b"", "closed the connection"),
    ],
)
def test_garbage_or_a_hang_up_is_a_peer_error(tmp_path, sent: bytes, error: str) -> None:
    path = str(tmp_path / "rude.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    try:
        with BlockingPeer(path, timeout=5) as peer:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(sent)
                conn.shutdown(socket.SHUT_WR)
                with pytest.raises(PeerError, match=error):
                    peer.handshake()
    finally:
        listener.close()
