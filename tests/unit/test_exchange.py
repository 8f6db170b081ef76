"""The HTTP/1.1 exchange without sockets: requests to bytes, bytes to events. Every
response is also fed one byte at a time (h11's test_io style)."""

from __future__ import annotations

import pytest

from broker.exchange import (
    CONTINUE,
    END,
    MAX_FIELD_SIZE,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_HEADERS_LIMIT,
    MAX_LIMIT,
    ConnectionFailure,
    Exchange,
    HeadLimits,
    RecvState,
    ResponseHead,
    SendState,
    declared_length,
)

HEAD = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


def feed(ex: Exchange, data: bytes, *, one_byte: bool) -> list:
    """Feed ``data`` whole or byte by byte; consecutive body bytes merged."""
    events: list = []
    pieces = [data[i : i + 1] for i in range(len(data))] if one_byte else [data]
    for piece in pieces:
        for ev in ex.receive_data(piece):
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


def started(method: str = "GET", **kwargs) -> Exchange:
    ex = Exchange()
    ex.start(method, HEAD, **kwargs)
    return ex


byte_by_byte = pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "bytewise"])


@byte_by_byte
def test_content_length_response_then_next_cycle(one_byte):
    ex = Exchange()
    assert ex.start("GET", HEAD) == HEAD
    assert (ex.send, ex.recv) == (SendState.SENT, RecvState.AWAITING_HEAD)
    events = feed(ex, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello",
                  one_byte=one_byte)
    assert shape(events) == [("head", 200), b"hello", END]
    head = events[0]
    assert (head.reason, head.version, head.keep_alive, head.eof_body) == (
        "OK", (1, 1), True, False
    )
    assert head.headers == [(b"Content-Length", b"5"), (b"X", b"y")]
    assert ex.reusable and ex.end()
    assert (ex.send, ex.recv) == (SendState.IDLE, RecvState.IDLE)
    ex.start("GET", HEAD)
    assert shape(feed(ex, b"HTTP/1.1 404 Nope\r\nContent-Length: 0\r\n\r\n",
                      one_byte=one_byte)) == [("head", 404), END]
    assert ex.end()


@byte_by_byte
def test_chunked_response(one_byte):
    ex = started()
    events = feed(
        ex,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: t\r\n\r\n",
        one_byte=one_byte,
    )
    assert shape(events) == [("head", 200), b"hello world", END]
    assert ex.reusable


@byte_by_byte
def test_informational_heads_are_skipped(one_byte):
    ex = started()
    events = feed(
        ex,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        one_byte=one_byte,
    )
    assert shape(events) == [("head", 200), b"ok", END]
    assert events[0].headers == [(b"Content-Length", b"2")] and events[0].reason == "OK"


@byte_by_byte
def test_head_request_has_no_body_and_the_parser_is_replaced(one_byte):
    ex = started("HEAD")
    events = feed(ex, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", one_byte=one_byte)
    assert shape(events) == [("head", 200), END]
    assert ex.end()
    ex.start("GET", HEAD)  # a parser still waiting for 1000 body bytes would eat this
    assert shape(feed(ex, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                      one_byte=one_byte)) == [("head", 200), b"ok", END]


@pytest.mark.parametrize("status", [204, 304])
@byte_by_byte
def test_no_body_statuses(status, one_byte):
    ex = started()
    events = feed(ex, b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status,
                  one_byte=one_byte)
    assert shape(events) == [("head", status), END]
    assert not events[0].eof_body


@byte_by_byte
def test_body_until_close(one_byte):
    ex = started()
    events = feed(ex, b"HTTP/1.1 200 OK\r\n\r\nall of it", one_byte=one_byte)
    assert shape(events) == [("head", 200), b"all of it"]
    assert events[0].eof_body and not events[0].keep_alive
    assert ex.connection_lost(None) is END
    assert ex.recv is RecvState.DONE and not ex.reusable


def test_read_until_eof_false_means_no_body():
    ex = Exchange()
    ex.read_until_eof = False
    ex.start("GET", HEAD)
    events = feed(ex, b"HTTP/1.1 200 OK\r\n\r\n", one_byte=False)
    assert shape(events) == [("head", 200), END]
    assert not ex.end()


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_no_keep_alive_no_reuse(response):
    ex = started()
    assert shape(feed(ex, response, one_byte=False)) == [("head", 200), END]
    assert not ex.reusable and not ex.end()


@pytest.mark.parametrize(
    "head, detail",
    [
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_FIELD_SIZE + 1) + b"\r\n\r\n",
         f"Got more than {MAX_FIELD_SIZE} bytes when reading: b'aaa"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_HEADERS + 1) + b"\r\n",
         "Too many headers received"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 8000 + b"\r\n" * 0 + b"\r\n" * 1
         + (b"Y: " + b"z" * 8000 + b"\r\n") * 40, f"the head is over {MAX_HEAD_BYTES}"),
        (b"HTTP/1.1 abc\r\n\r\n", "invalid HTTP response"),
    ],
)
@byte_by_byte
def test_head_limits_and_garbage_fail(head, detail, one_byte):
    ex = started()
    events = feed(ex, head, one_byte=one_byte)
    assert shape(events)[-1] == ("failure", "bad_response")
    assert detail in events[-1].message
    assert ex.recv is RecvState.FAILED and not ex.end()
    assert ex.receive_data(b"more") == []  # a failed exchange takes nothing further


@pytest.mark.parametrize(
    "head, detail",
    [
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_FIELD_SIZE + 1) + b"\r\nY: z\r\n",
         f"Got more than {MAX_FIELD_SIZE} bytes when reading: b'aaa"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_HEADERS + 2), "Too many headers received"),
    ],
    ids=["long", "many"],
)
@byte_by_byte
def test_a_field_over_a_limit_fails_before_the_head_ends(head, detail, one_byte):
    """As a parser that checks each field as it comes (aiohttp's): the read that brought
    the field over a limit fails the exchange, with no wait for the rest of the head."""
    ex = started()
    events = feed(ex, head, one_byte=one_byte)
    assert shape(events) == [("failure", "bad_response")]
    assert detail in events[-1].message
    assert ex.recv is RecvState.FAILED


def test_connection_lost_before_and_inside_the_body():
    ex = started()
    assert ex.connection_lost(None).code == "disconnected"
    ex = started()
    failure = ex.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    assert (failure.code, failure.message, failure.fields) == (
        "os", "Connection reset by peer", {"errno": 104}
    )
    ex = started()
    feed(ex, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", one_byte=False)
    assert ex.connection_lost(None).code == "payload"


def test_a_second_response_spoils_the_connection():
    ex = started()
    events = feed(
        ex,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nyours",
        one_byte=False,
    )
    assert shape(events) == [("head", 200), b"a", END]
    assert not ex.reusable and not ex.end()


def test_garbage_after_a_whole_response_spoils_the_connection_only():
    ex = started()
    events = feed(ex, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naGARBAGE\r\n\r\n",
                  one_byte=False)
    assert shape(events) == [("head", 200), b"a", END]
    assert ex.error is None and not ex.end()


def test_bytes_after_a_head_response_spoil_the_connection():
    ex = started("HEAD")
    feed(ex, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", one_byte=False)
    assert not ex.end()


def test_bytes_on_an_idle_exchange_fail():
    ex = started()
    feed(ex, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", one_byte=False)
    assert ex.end()
    (failure,) = ex.receive_data(b"HTTP/1.1 200 OK\r\n")
    assert failure.code == "bad_response" and ex.spoiled


# -- the request half -----------------------------------------------------------------


def test_whole_body_goes_with_the_head():
    ex = Exchange()
    assert ex.start("POST", HEAD, b"small") == HEAD + b"small"
    big = b"x" * 20000
    ex = Exchange()
    assert ex.start("POST", HEAD, big) == (HEAD, big)
    assert ex.send is SendState.SENT


def test_streamed_body_with_a_length_is_sent_as_is():
    ex = started("POST", streamed=True, length=8)
    assert ex.send is SendState.SENDING
    assert b"".join(ex.send_body(b"abc")) == b"abc"
    assert b"".join(ex.send_body(b"defgh")) == b"defgh"
    assert ex.end_body() == b""
    assert ex.send is SendState.SENT


def test_streamed_body_without_a_length_is_chunked():
    ex = started("POST", streamed=True)
    assert b"".join(ex.send_body(b"hello")) == b"5\r\nhello\r\n"
    assert b"".join(ex.send_body(b"x" * 26)) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert ex.end_body() == b"0\r\n\r\n"


def test_a_body_longer_than_declared_puts_no_byte_past_it_on_the_wire():
    ex = started("POST", streamed=True, length=5)
    wire = b"".join(ex.send_body(b"hel"))
    smuggled = b"lo" + b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
    with pytest.raises(ConnectionFailure) as err:
        wire += b"".join(ex.send_body(smuggled))
    assert wire == b"hel"
    assert err.value.code == "connection" and "longer than its Content-Length" in str(err.value)
    assert ex.send is SendState.FAILED and ex.recv is RecvState.FAILED
    with pytest.raises(ConnectionFailure):
        ex.send_body(b"x")
    assert not ex.end()


def test_a_body_shorter_than_declared_fails_at_its_end():
    ex = started("POST", streamed=True, length=10)
    ex.send_body(b"abc")
    with pytest.raises(ConnectionFailure, match="3 of 10 bytes"):
        ex.end_body()
    assert not ex.end()


def test_an_unfinished_upload_is_never_reused_even_if_the_server_answered():
    ex = started("POST", streamed=True, length=10)
    ex.send_body(b"abc")
    events = feed(ex, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", one_byte=False)
    assert shape(events) == [("head", 200), b"ok", END]
    assert ex.over and not ex.reusable
    assert not ex.end()  # the worker cancelled: the next request must not follow the body


def test_connection_lost_while_uploading_after_the_answer():
    ex = started("POST", streamed=True)
    feed(ex, b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n", one_byte=False)
    assert ex.connection_lost(None) is None
    assert ex.send is SendState.FAILED and ex.recv is RecvState.DONE
    with pytest.raises(ConnectionFailure, match="Server disconnected"):
        ex.send_body(b"more")


def test_start_needs_an_idle_exchange():
    ex = started()
    with pytest.raises(RuntimeError):
        ex.start("GET", HEAD)


@pytest.mark.parametrize(
    "headers, expected",
    [
        ([], None),
        ([("Content-Length", "10")], 10),
        ([("content-length", " 7 ")], 7),
        ([("Content-Length", "1"), ("Content-Length", "2")], 2),
    ],
)
def test_declared_length(headers, expected):
    assert declared_length(headers) == expected


@pytest.mark.parametrize("value", ["abc", "-1", "+5", "0x10", "1,1", "", "9" * 19])
def test_declared_length_refuses_what_is_not_a_length(value):
    with pytest.raises(ConnectionFailure, match="invalid Content-Length"):
        declared_length([("Content-Length", value)])


# -- Expect: 100-continue -----------------------------------------------------------------


@byte_by_byte
def test_expect_continue_holds_the_body_until_100(one_byte):
    ex = Exchange()
    assert ex.start("POST", HEAD, b"body", expect_continue=True) == HEAD
    assert ex.send is SendState.EXPECTING
    events = feed(ex, b"HTTP/1.1 100 Continue\r\n\r\n", one_byte=one_byte)
    assert events == [CONTINUE]
    assert ex.proceed() == b"body"
    assert ex.send is SendState.SENT
    events = feed(ex, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", one_byte=one_byte)
    assert shape(events) == [("head", 200), b"ok", END]
    assert ex.end()


def test_two_100_continue_in_one_read_are_one_continue():
    # Several 1xx heads are legal; the body goes once.
    ex = Exchange()
    ex.start("POST", HEAD, b"body", expect_continue=True)
    events = ex.receive_data(b"HTTP/1.1 100 Continue\r\n\r\n" * 2)
    assert events == [CONTINUE]
    assert ex.proceed() == b"body"
    assert ex.receive_data(b"HTTP/1.1 100 Continue\r\n\r\n") == []


@byte_by_byte
def test_expect_continue_streamed_body_follows_after_100(one_byte):
    ex = Exchange()
    ex.start("PUT", HEAD, streamed=True, length=None, expect_continue=True)
    with pytest.raises(RuntimeError):
        ex.send_body(b"early")  # nothing may go before 100 Continue
    assert feed(ex, b"HTTP/1.1 100 Continue\r\n\r\n", one_byte=one_byte) == [CONTINUE]
    assert ex.proceed() == b""
    assert ex.send_body(b"ab") == (b"2\r\n", b"ab", b"\r\n")
    assert ex.end_body() == b"0\r\n\r\n"
    feed(ex, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", one_byte=one_byte)
    assert ex.end()


@byte_by_byte
def test_expect_continue_early_final_answer_is_the_response_and_spoils(one_byte):
    ex = Exchange()
    ex.start("POST", HEAD, b"body", expect_continue=True)
    events = feed(
        ex, b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n", one_byte=one_byte
    )
    assert shape(events) == [("head", 417), END]
    assert ex.send is SendState.EXPECTING  # the body was never given out
    assert not ex.reusable and not ex.end()


def test_expect_continue_without_a_body_sends_at_once():
    ex = Exchange()
    assert ex.start("POST", HEAD, None, expect_continue=True) == HEAD
    assert ex.send is SendState.SENT
    # A 100 is then just an informational head.
    assert feed(ex, b"HTTP/1.1 100 Continue\r\n\r\n", one_byte=False) == []


def test_a_100_not_asked_for_is_skipped_and_lost_connection_fails_the_wait():
    ex = started("POST", body=b"x")
    assert feed(ex, b"HTTP/1.1 100 Continue\r\n\r\n", one_byte=False) == []
    ex = Exchange()
    ex.start("POST", HEAD, b"x", expect_continue=True)
    assert ex.connection_lost(None).code == "disconnected"
    assert ex.send is SendState.FAILED
    with pytest.raises(RuntimeError):
        ex.proceed()


# -- per-request head limits ------------------------------------------------------------------


@pytest.mark.parametrize(
    "head, limits, detail",
    [
        (b"HTTP/1.1 200 " + b"O" * 11 + b"\r\n\r\n", HeadLimits(line=10),
         "Got more than 10 bytes when reading: b'OOOOOOOOOOO...'."),
        (b"HTTP/1.1 200 OK\r\nX: " + b"v" * 10 + b"\r\n\r\n", HeadLimits(field=10),
         "Got more than 10 bytes when reading: b'vvvvvvvvvv...'."),
        (b"HTTP/1.1 200 OK\r\n" + b"X" * 11 + b": v\r\n\r\n", HeadLimits(field=10),
         "Got more than 10 bytes when reading: b'XXXXXXXXXXX...'."),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 3 + b"\r\n", HeadLimits(headers=2),
         "Too many headers received"),
    ],
    ids=["line", "value", "name", "count"],
)
@byte_by_byte
def test_per_request_limits_give_aiohttps_messages(head, limits, detail, one_byte):
    ex = Exchange()
    ex.start("GET", HEAD, limits=limits)
    events = feed(ex, head, one_byte=one_byte)
    assert shape(events)[-1] == ("failure", "bad_response")
    assert events[-1].message == detail
    # The next exchange on a new connection is back to the defaults.
    ex = Exchange()
    ex.start("GET", HEAD)
    assert shape(feed(ex, head + b"", one_byte=False))[0] == ("head", 200)


def test_limits_are_bounded_by_the_request_message():
    import msgspec

    from shared.messages import Request

    ok = msgspec.msgpack.encode(Request(1, "GET", "http://h/", max_field_size=MAX_LIMIT))
    assert msgspec.msgpack.decode(ok, type=Request).max_field_size == MAX_LIMIT
    for field, value in (("max_field_size", MAX_LIMIT + 1), ("max_line_size", 0),
                         ("max_headers", MAX_HEADERS_LIMIT + 1)):
        bad = msgspec.structs.replace(Request(1, "GET", "http://h/"), **{field: value})
        with pytest.raises(msgspec.ValidationError):
            msgspec.msgpack.decode(msgspec.msgpack.encode(bad), type=Request)


def test_http10_head_asks_for_keep_alive_unless_told():
    from yarl import URL

    from broker.exchange import build_head

    url = URL("http://h/p")
    head = build_head("GET", url, [], None, False, False, (1, 0))
    assert head == b"GET /p HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"
    head = build_head("GET", url, [("Connection", "close")], None, False, False, (1, 0))
    assert head == b"GET /p HTTP/1.0\r\nHost: h\r\nConnection: close\r\n\r\n"
    head = build_head("GET", url, [], None, False, False, (1, 0), force_close=True)
    assert head == b"GET /p HTTP/1.0\r\nHost: h\r\n\r\n"


def _head_of(size: int, length: int) -> bytes:
    """A response head of exactly ``size`` bytes announcing a ``length``-byte body."""
    start = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Fill: " % length
    return start + b"f" * (size - len(start) - 4) + b"\r\n\r\n"


@pytest.mark.parametrize("piece", [None, 4096], ids=["one read", "4 KiB reads"])
def test_body_bytes_read_with_the_head_do_not_count_towards_the_head_cap(piece):
    body = bytes(range(256)) * 4096  # 1 MiB, in the same read as the head
    data = _head_of(200, len(body)) + body
    ex = started()
    events = []
    for i in range(0, len(data), piece or len(data)):
        events += ex.receive_data(data[i : i + (piece or len(data))])
    assert shape(events)[0] == ("head", 200) and events[-1] is END
    assert b"".join(ev for ev in events if type(ev) is bytes) == body
    assert ex.reusable and ex.end()


def test_the_head_cap_is_exact_whatever_follows_in_the_same_read():
    limits = HeadLimits(field=MAX_LIMIT)
    ex = started(limits=limits)
    events = ex.receive_data(_head_of(MAX_HEAD_BYTES, 3) + b"abc" + b"z" * 100)
    assert shape(events) == [("head", 200), b"abc", END]
    assert ex.spoiled  # what followed the body: no request asked for it
    ex = started(limits=limits)
    events = ex.receive_data(_head_of(MAX_HEAD_BYTES + 1, 3) + b"abc")
    assert shape(events) == [("failure", "bad_response")]
    assert f"the head is over {MAX_HEAD_BYTES}" in events[0].message
    ex = started(limits=limits)  # the cap counts across reads too
    head = _head_of(MAX_HEAD_BYTES + 1, 3)
    assert ex.receive_data(head[:-1]) == []
    assert shape(ex.receive_data(head[-1:] + b"abc")) == [("failure", "bad_response")]


def test_a_plain_length_body_is_counted_and_can_bypass_the_parser():
    ex = started()
    events = ex.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
    assert shape(events) == [("head", 200), b"ab"]
    assert ex.body_left == 8
    assert ex.receive_data(memoryview(b"cd")) == [b"cd"]  # bytes, not the view
    assert ex.body_left == 6
    assert ex.body_received(3) is False and ex.body_left == 3
    assert shape(ex.receive_data(b"hij")) == [b"hij", END]  # counted from now on
    assert ex.body_left is None and ex.reusable and ex.end()
    # the parser saw only part of that body: the next exchange gets a fresh one
    ex.start("GET", HEAD)
    assert shape(feed(ex, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", one_byte=False)) == [
        ("head", 200), b"ok", END
    ]


def test_a_counted_body_ends_by_body_received_and_takes_no_more():
    ex = started()
    ex.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    with pytest.raises(RuntimeError):
        ex.body_received(6)  # never more than owed: the connection cuts its reads
    assert ex.body_received(5) is True
    assert ex.recv is RecvState.DONE and ex.body_left is None and ex.reusable
    assert ex.receive_data(b"x") == [] and ex.spoiled  # a byte past the body


def test_bytes_past_a_counted_body_in_the_same_read_spoil_the_connection():
    ex = started()
    ex.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert shape(ex.receive_data(b"helloHTTP/1.1 200 OK\r\n")) == [b"hello", END]
    assert ex.spoiled and not ex.end()


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",  # until the connection closes
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    ],
)
def test_only_a_plain_content_length_is_counted(head):
    ex = started()
    ex.receive_data(head)
    assert ex.body_left is None


def test_a_counted_body_cut_short_is_a_payload_failure():
    ex = started()
    ex.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    ex.receive_data(b"abc")
    assert ex.connection_lost(None).code == "payload"
    assert ex.body_left is None and not ex.end()
