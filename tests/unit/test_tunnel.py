"""Upgrades without sockets: the exchange's tunnel mode (a 101 to an upgrade makes the
rest of the connection its body) and the tracker of the worker's frame boundaries."""

from __future__ import annotations

import pytest

from broker.exchange import END, Exchange, RecvState, ResponseHead, SendState
from broker.tunnel import MAX_FRAME_HEADER, FrameTracker
from shared.websocket import WebSocketWriter, WSCloseCode, WSMsgType

HEAD = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: x\r\n\r\n"
)
byte_by_byte = pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "bytewise"])


def feed(ex: Exchange, data: bytes, *, one_byte: bool) -> list:
    events: list = []
    pieces = [data[i : i + 1] for i in range(len(data))] if one_byte else [data]
    for piece in pieces:
        for ev in ex.receive_data(memoryview(piece)):
            if type(ev) is bytes and events and type(events[-1]) is bytes:
                events[-1] += ev
            else:
                events.append(ev)
    return events


def shape(events: list) -> list:
    return [
        ("head", ev.status) if isinstance(ev, ResponseHead)
        else ev if isinstance(ev, bytes) or ev is END
        else ("failure", ev.code)
        for ev in events
    ]


def upgraded() -> Exchange:
    ex = Exchange()
    assert ex.start("GET", HEAD, streamed=True, upgrade=True) == HEAD  # the head alone
    assert ex.send is SendState.SENDING
    return ex


@byte_by_byte
def test_a_101_to_an_upgrade_makes_a_tunnel_with_the_bytes_of_the_same_read(one_byte):
    ex = upgraded()
    events = feed(ex, SWITCH + b"\x81\x02hi", one_byte=one_byte)
    assert shape(events) == [("head", 101), b"\x81\x02hi"]
    assert ex.tunnel and ex.recv is RecvState.TUNNEL
    assert ex.head is not None and ex.head.eof_body and not ex.head.keep_alive
    # later reads are raw bytes too, whatever they look like
    assert ex.receive_data(b"HTTP/1.1 200 OK\r\n\r\n") == [b"HTTP/1.1 200 OK\r\n\r\n"]
    assert ex.send_raw(b"\x88\x80abcd") == b"\x88\x80abcd"
    assert ex.connection_lost(None) is END
    assert ex.recv is RecvState.DONE
    assert not ex.end()  # never reused


def test_a_101_ignores_read_until_eof_false_and_a_content_length():
    ex = upgraded()
    ex.read_until_eof = False  # aiohttp's ws_connect asks so
    events = ex.receive_data(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        b"Content-Length: 3\r\n\r\nabcdef"
    )
    assert shape(events) == [("head", 101), b"abcdef"]
    assert ex.tunnel


def test_a_101_that_httptools_does_not_take_for_an_upgrade_fails():
    ex = upgraded()
    events = ex.receive_data(b"HTTP/1.1 101 Switching Protocols\r\n\r\nxx")
    assert shape(events) == [("head", 101), ("failure", "bad_response")]
    assert "101 without Upgrade" in events[1].message
    assert not ex.tunnel


@byte_by_byte
def test_another_answer_to_an_upgrade_is_an_ordinary_response(one_byte):
    ex = upgraded()
    events = feed(ex, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno", one_byte=one_byte)
    assert shape(events) == [("head", 403), b"no", END]
    assert not ex.tunnel
    with pytest.raises(RuntimeError):
        ex.send_raw(b"x")
    assert not ex.end()  # the request half never ended: not reused


def test_a_101_to_a_request_that_was_not_an_upgrade_ends_at_its_head():
    ex = Exchange()
    ex.start("GET", HEAD)
    events = ex.receive_data(SWITCH + b"\x81\x02hi")
    assert shape(events) == [("head", 101), END]
    assert not ex.tunnel and ex.spoiled


def test_the_head_cap_still_holds_and_bytes_past_it_go_through():
    from broker.exchange import MAX_HEAD_BYTES

    ex = upgraded()
    tail = b"z" * (MAX_HEAD_BYTES + 10)
    events = ex.receive_data(SWITCH + tail)
    assert shape(events)[0] == ("head", 101)
    assert b"".join(e for e in events if type(e) is bytes) == tail


def test_the_tunnel_fails_when_the_exchange_fails():
    ex = upgraded()
    ex.receive_data(SWITCH)
    assert ex.tunnel
    from broker.failures import ConnectionFailure

    ex.fail(ConnectionFailure("disconnected", "x"))
    assert not ex.tunnel
    with pytest.raises(ConnectionFailure):
        ex.send_raw(b"x")


# -- FrameTracker ------------------------------------------------------------------------

writer = WebSocketWriter(random_bytes=lambda n: b"\x01\x02\x03\x04"[:n])


def frames() -> list[bytes]:
    return [
        writer.frame(WSMsgType.TEXT, b"hello", mask=True),
        writer.frame(WSMsgType.BINARY, b"x" * 200, mask=True),  # 16-bit length
        writer.frame(WSMsgType.BINARY, b"y" * 70000, mask=True),  # 64-bit length
        writer.frame(WSMsgType.PING, b"", mask=True),
        writer.frame(WSMsgType.BINARY, b"z" * 3, mask=False),
    ]


@pytest.mark.parametrize("step", [1, 3, 13, 14, 1000, 1 << 20])
def test_the_tracker_finds_every_boundary_whatever_the_pieces(step):
    tracker = FrameTracker()
    data = b"".join(frames())
    ends = set()
    pos = 0
    for f in frames():
        pos += len(f)
        ends.add(pos)
    fed = 0
    while fed < len(data):
        piece = data[fed : fed + step]
        tracker.feed(piece)
        fed += len(piece)
        assert tracker.at_boundary == (fed in ends), fed
        assert len(tracker._header) <= MAX_FRAME_HEADER
    assert tracker.at_boundary and not tracker.close_seen


def test_the_tracker_at_boundaries_byte_by_byte():
    tracker = FrameTracker()
    f = writer.frame(WSMsgType.TEXT, b"abc", mask=True)
    for i in range(len(f)):
        assert tracker.at_boundary == (i == 0)
        tracker.feed(f[i : i + 1])
    assert tracker.at_boundary


@pytest.mark.parametrize("split", [1, 2, 5, 6, 7])
def test_the_tracker_sees_a_close(split):
    # seen once its header (2 bytes + a 4-byte mask) is whole; never at a boundary before
    tracker = FrameTracker()
    close = writer.close(WSCloseCode.OK, mask=True)
    tracker.feed(writer.frame(WSMsgType.TEXT, b"bye", mask=True) + close[:split])
    assert tracker.close_seen == (split >= 6)
    assert not tracker.at_boundary
    tracker.feed(close[split:])
    assert tracker.close_seen and tracker.at_boundary


def test_the_tracker_keeps_no_payload():
    tracker = FrameTracker()
    f = writer.frame(WSMsgType.BINARY, b"p" * 100000, mask=True)
    tracker.feed(f[:50000])
    assert not tracker.at_boundary and not tracker._header
    assert "inside a frame" in repr(tracker)
