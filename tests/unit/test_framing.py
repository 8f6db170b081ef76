import msgspec
import pytest

from shared.framing import FrameError, FrameReader, encode
from shared.messages import (
    Ack,
    BrokerFigures,
    Data,
    End,
    Failure,
    Head,
    Hello,
    HistoryItem,
    PoolOpen,
    Request,
    RequestFrame,
    Rewind,
    Stats,
    TimeoutOpen,
    Totals,
    WorkerFigures,
)
from shared.specs import ClientTimeout, PoolSpec, decode_pool, encode_pool

MESSAGES = [
    Hello(1, 1234),
    Request(
        stream=1,
        method="POST",
        url="http://127.0.0.1:8080/a?b=c",
        headers=[("X-A", "1"), ("X-A", "2")],
        body=b"\x00\xffpayload",
        pool=encode_pool(PoolSpec(limit=8, limit_per_host=2, name="p")),
        timeout=ClientTimeout(total=3, sock_read=1.5),
        allow_redirects=False,
    ),
    Head(
        3, 200, "OK", (1, 1), [(b"Content-Type", b"text/plain")], "http://h/", "GET",
        history=[HistoryItem(302, "Found", (1, 1), [(b"Location", b"/")], "http://h/r", "GET",
                             [("Accept", "*/*")])],
    ),
    Data(3, b"x" * 1000),
    End(3),
    PoolOpen(1, encode_pool(PoolSpec(limit=8))),
    TimeoutOpen(2, ClientTimeout(total=3)),
    Request(stream=9, method="GET", url="http://h/", pool_id=1, timeout_id=2),
    Head(11, 200, "OK", (1, 1), [], "http://h/", "GET", body=b"ok", raw=40),
    Head(13, 204, "No Content", (1, 1), [], "http://h/", "GET", body=b""),
    Ack(3, 1000),
    Failure(5, "connect", "Connection refused", host="h", port=1, errno=111),
    Rewind(7),
    Stats(
        pid=1, workers=2, streams=3, requests=4,
        pools=[{
            "pool": "p", "options": {"limit": 8}, "limit": 8, "limit_per_host": 0, "open": 1,
            "idle": 0, "active": 1, "queued": 2, "longest_wait": 0.5,
            "hosts": {"http://h:80": {"open": 1, "active": 1, "idle": 0, "queued": 2,
                                      "longest_wait": 0.5}},
        }],
        jars=[{"name": None, "jars": 1, "cookies": 0}],
        broker=BrokerFigures(1, "0.1.0", 5, "uvloop", 2.5, 0.25, 1 << 20),
        processes=[WorkerFigures(7, 2, 3, None, None)],
        totals=Totals(4, 1),
    ),
    Stats(1, 1, 0),  # defaults left off the wire, as an older broker leaves the new fields
]


def _sent(msgs):
    """What the receiver decodes: a ``Request`` arrives as a ``RequestFrame``."""
    return [
        RequestFrame(**msgspec.structs.asdict(m)) if type(m) is Request else m for m in msgs
    ]


def test_round_trip_fed_one_byte_at_a_time():
    wire = b"".join(encode(m) for m in MESSAGES)
    reader = FrameReader()
    out = []
    for i in range(len(wire)):
        out.extend(reader.feed(wire[i : i + 1]))
    assert out == _sent(MESSAGES)
    assert reader.buffered == 0


def test_round_trip_in_one_piece_and_in_odd_splits():
    wire = b"".join(encode(m) for m in MESSAGES)
    assert FrameReader().feed(wire) == _sent(MESSAGES)
    reader = FrameReader()
    out = []
    for i in range(0, len(wire), 7):
        out.extend(reader.feed(memoryview(wire)[i : i + 7]))
    assert out == _sent(MESSAGES)


def test_partial_frame_waits_for_the_rest():
    frame = encode(Data(1, b"abc"))
    reader = FrameReader()
    assert reader.feed(frame[:-1]) == []
    assert reader.buffered == len(frame) - 1
    assert reader.feed(frame[-1:]) == [Data(1, b"abc")]


def test_oversized_frame_is_refused_before_it_is_buffered():
    reader = FrameReader(max_frame=100)
    with pytest.raises(FrameError, match="over the cap"):
        reader.feed((101).to_bytes(4, "little"))
    with pytest.raises(FrameError, match="already failed"):
        reader.feed(encode(End(1)))


@pytest.mark.parametrize(
    "body",
    [
        b"garbage",
        msgspec.msgpack.encode(["nosuchtag", 1]),
        msgspec.msgpack.encode(["data", "not-an-int", b""]),
        msgspec.msgpack.encode({"stream": 1}),
    ],
)
def test_malformed_frame_is_a_frame_error(body):
    with pytest.raises(FrameError, match="malformed"):
        FrameReader().feed(len(body).to_bytes(4, "little") + body)


def test_messages_are_frozen_and_specs_hashable():
    with pytest.raises(AttributeError):
        End(1).stream = 2  # type: ignore[misc]
    assert hash(PoolSpec(limit=8)) == hash(PoolSpec(limit=8))
    assert {PoolSpec(limit=8): 1}[PoolSpec(limit=8)] == 1
    assert PoolSpec(limit=8) != PoolSpec(limit=8, name="other")


def test_spec_validation():
    with pytest.raises(ValueError):
        ClientTimeout(total=-1)
    with pytest.raises(ValueError):
        PoolSpec(limit=-1)
    with pytest.raises(ValueError):
        PoolSpec(kind="unix")


def test_a_pool_spec_crosses_as_its_canonical_encoding():
    """Equal specs, equal bytes (the broker keys its pools by them); a spec decodes back
    with its checks."""
    a = encode_pool(PoolSpec(limit=8, name="x"))
    assert a == encode_pool(PoolSpec(name="x", limit=8))
    assert a != encode_pool(PoolSpec(limit=8, name="y"))
    assert decode_pool(a) == PoolSpec(limit=8, name="x")
    with pytest.raises(ValueError):
        decode_pool(encode_pool(PoolSpec())[:-1] + b"\xff")


def test_jar_calls_are_bounded_as_they_decode():
    from shared.messages import MAX_JAR_RECORDS, JarOpen, JarUpdate
    from shared.specs import MAX_SECURE_ORIGINS

    def raw(*fields) -> bytes:
        body = msgspec.msgpack.encode(list(fields))
        return len(body).to_bytes(4, "little") + body

    token = b"t" * 16
    many_origins = [None, False, True, ["http://a"] * (MAX_SECURE_ORIGINS + 1)]
    long_origin = [None, False, True, ["http://" + "a" * 2100]]
    long_name = ["n" * 201, False, True, []]
    for spec in (many_origins, long_origin, long_name):
        with pytest.raises(FrameError):
            FrameReader().feed(raw("jaropen", 1, token, spec))
    ok = [None, False, True, ["http://a"] * MAX_SECURE_ORIGINS]
    assert isinstance(FrameReader().feed(raw("jaropen", 1, token, ok))[0], JarOpen)
    record = {"key": "a", "value": "1", "coded_value": "1"}
    over = [["a", record]] * (MAX_JAR_RECORDS + 1)
    with pytest.raises(FrameError):
        FrameReader().feed(raw("jarupdate", 1, token, "http://x/", over))
    assert isinstance(
        FrameReader().feed(raw("jarupdate", 1, token, "http://x/", over[1:]))[0], JarUpdate
    )
    with pytest.raises(FrameError):
        FrameReader().feed(raw("jardelete", 1, token, [["d", "/", "n"]] * (MAX_JAR_RECORDS + 1)))


def test_a_request_naming_ids_carries_neither_pool_nor_timeout():
    """As a worker sends it (``IPCTransport``): b"" and nil instead of the spec and the
    timeout, which decode to no ``ClientTimeout`` at all (none checked per request)."""
    named = Request(
        stream=1, method="GET", url="http://h/", pool_id=1, timeout_id=1, pool=b"",
        timeout=None,  # type: ignore[arg-type]
    )
    inline = Request(
        stream=1, method="GET", url="http://h/", pool=encode_pool(PoolSpec(limit=8)),
        timeout=ClientTimeout(total=3),
    )
    assert len(encode(named)) < len(encode(inline)) - 50
    (got,) = FrameReader().feed(encode(named))
    assert type(got) is RequestFrame and isinstance(got, Request)
    assert (got.pool_id, got.timeout_id, got.pool, got.timeout) == (1, 1, b"", None)


@pytest.mark.parametrize(
    "msg",
    [
        ["poolopen", 0, b""],  # ids start at 1 (0 names the inline field)
        ["poolopen", 1, b"x" * (16 * 1024 + 1)],  # over MAX_POOL_SPEC
        ["timeoutopen", 1, [-1]],  # the ClientTimeout is checked as it decodes
        ["req", 1, "GET", "http://h/", [], -1],  # a pool id out of range
    ],
)
def test_spec_ids_are_bounded_as_they_decode(msg):
    body = msgspec.msgpack.encode(msg)
    with pytest.raises(FrameError, match="malformed"):
        FrameReader().feed(len(body).to_bytes(4, "little") + body)


def test_a_request_of_its_first_fields_decodes_with_the_defaults():
    """What a worker sends for the common request (``IPCTransport._send_request``)."""
    short = msgspec.msgpack.encode(["req", 3, "GET", "http://h/", [["A", "b"]], 1, 2])
    (got,) = FrameReader().feed(len(short).to_bytes(4, "little") + short)
    full = RequestFrame(3, "GET", "http://h/", [("A", "b")], pool_id=1, timeout_id=2)
    assert got == full and got.timeout is None


@pytest.mark.parametrize(
    "fields",
    [{}, {"pool": encode_pool(PoolSpec(limit=3))}, {"upgrade": True}, {"handover": True}],
    ids=["defaults", "a-pool-by-id", "upgrade", "handover"],
)
async def test_the_workers_short_request_leaves_out_only_defaults(fields):
    """``IPCTransport._send_request`` sends the common request as its first fields: a
    pool named by id still qualifies, a field after the pool and timeout
    (``upgrade``, ``handover``) set does not, and nothing set is ever lost."""
    import asyncio

    from worker_client.transport import IPCTransport

    transport = IPCTransport(asyncio.get_running_loop(), "/nonexistent")
    sent: list[object] = []
    transport._send = lambda *msgs: sent.extend(msgs)  # type: ignore[method-assign]
    req = Request(stream=1, method="GET", url="http://h/", **fields)
    transport._send_request(req)
    wire = sent[-1]
    assert isinstance(wire, list) == (not fields or "pool" in fields)  # the short form
    body = msgspec.msgpack.encode(wire)
    (got,) = FrameReader().feed(len(body).to_bytes(4, "little") + body)
    assert (got.upgrade, got.handover) == (req.upgrade, req.handover)
    assert got.pool_id == (1 if "pool" in fields else 0)
