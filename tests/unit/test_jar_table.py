"""The broker's jar table: who may name which jar, the calls' replies, the caps."""

from __future__ import annotations

import msgspec
import pytest

from broker.jars import PIECE_SIZE, UNKNOWN_JAR, JarTable, split_cookie_data
from shared.framing import MAX_FRAME, encode
from shared.messages import (
    JarClose,
    JarCookies,
    JarCount,
    JarData,
    JarDelete,
    JarDone,
    JarDump,
    JarFailed,
    JarFilter,
    JarLoad,
    JarOpen,
    JarUpdate,
)
from shared.specs import JarSpec

A, B = object(), object()  # two worker connections
PID_A, PID_B = 100, 200
T1, T2 = b"1" * 16, b"2" * 16
UNNAMED = JarSpec()
NOW = 1_700_000_000.0


def cookie(key: str, value: str, **attrs: str | bool) -> dict[str, str | bool | float]:
    return {"key": key, "value": value, "coded_value": value, **attrs}


@pytest.fixture
def table() -> JarTable:
    return JarTable(max_jars=4, max_named=2, clock=lambda: NOW)


def call(table: JarTable, msg, owner=A, pid=PID_A):
    replies = table.apply(owner, pid, msg)
    assert len(replies) == 1
    return replies[0]


def opened(table: JarTable, token=T1, spec=UNNAMED, owner=A, pid=PID_A) -> None:
    assert isinstance(call(table, JarOpen(1, token, spec), owner, pid), JarDone)


def set_cookie(table: JarTable, token=T1, name="a", value="1", url="http://example.com/",
               owner=A, pid=PID_A):
    return call(table, JarUpdate(2, token, url, [(name, cookie(name, value))]), owner, pid)


def test_open_update_filter_count(table):
    opened(table)
    assert set_cookie(table) == JarDone(2, 1)
    assert call(table, JarFilter(3, T1, "http://example.com/x")) == JarCookies(3, [("a", "1", "1")])
    assert call(table, JarFilter(4, T1, "http://other.org/")) == JarCookies(4, [])
    assert call(table, JarCount(5, T1)) == JarDone(5, 1)


def test_a_request_finds_only_its_own_processes_jars(table):
    opened(table)
    assert table.find(T1, PID_A) is not None
    assert table.find(T1, PID_B) is None
    assert table.find(T2, PID_A) is None


def test_another_process_cannot_call_on_a_token(table):
    opened(table)
    set_cookie(table)
    reply = call(table, JarFilter(3, T1, "http://example.com/"), B, PID_B)
    assert reply == JarFailed(3, UNKNOWN_JAR)
    # the same token opened by another process is another jar
    opened(table, owner=B, pid=PID_B)
    assert call(table, JarCount(4, T1), B, PID_B) == JarDone(4, 0)
    assert call(table, JarCount(5, T1)) == JarDone(5, 1)


def test_unnamed_jars_are_apart_and_named_jars_shared(table):
    opened(table, T1)
    opened(table, T2)
    set_cookie(table, T1)
    assert call(table, JarCount(3, T2)) == JarDone(3, 0)
    site = JarSpec(name="site")
    opened(table, T1, site, owner=B, pid=PID_B)
    set_cookie(table, T1, owner=B, pid=PID_B)
    opened(table, T2, site, owner=A, pid=PID_A + 1)
    assert call(table, JarCount(4, T2), A, PID_A + 1) == JarDone(4, 1)
    # other arguments, other jar
    opened(table, b"3" * 16, JarSpec(name="site", unsafe=True), owner=B, pid=PID_B)
    assert call(table, JarCount(5, b"3" * 16), B, PID_B) == JarDone(5, 0)


def test_drop_owner_frees_its_unnamed_jars_and_keeps_named_ones(table):
    opened(table, T1)
    opened(table, T2, JarSpec(name="site"))
    set_cookie(table, T2)
    table.drop_owner(A)
    assert table.find(T1, PID_A) is None and table.find(T2, PID_A) is None
    opened(table, T2, JarSpec(name="site"), owner=B, pid=PID_B)
    assert call(table, JarCount(3, T2), B, PID_B) == JarDone(3, 1)


def test_close_forgets_the_token_only(table):
    opened(table, T1, JarSpec(name="site"))
    set_cookie(table, T1)
    assert table.apply(A, PID_A, JarClose(T1)) == []
    assert table.find(T1, PID_A) is None
    assert table.apply(A, PID_A, JarClose(T1)) == []  # twice: nothing
    opened(table, T2, JarSpec(name="site"))
    assert call(table, JarCount(3, T2)) == JarDone(3, 1)


def test_reopen_by_the_same_process_moves_the_jar_to_the_new_connection(table):
    opened(table, T1)
    set_cookie(table)
    opened(table, T1, owner=B, pid=PID_A)  # a reconnected channel of the same process
    table.drop_owner(A)
    assert call(table, JarCount(3, T1), B, PID_A) == JarDone(3, 1)
    reply = call(table, JarOpen(4, T1, JarSpec(unsafe=True)), B, PID_A)
    assert isinstance(reply, JarFailed) and "other settings" in reply.message


def test_cap_on_jars_per_owner(table):
    for i in range(4):
        opened(table, bytes([i]) * 16)
    reply = call(table, JarOpen(9, b"x" * 16, JarSpec()))
    assert isinstance(reply, JarFailed) and "max_jars" in reply.message
    assert not reply.invalid
    opened(table, b"x" * 16, owner=B, pid=PID_B)  # another connection has its own
    table.apply(A, PID_A, JarClose(bytes([0]) * 16))
    opened(table, b"x" * 16)


def test_a_refused_open_is_remembered_for_the_requests_that_name_it(table):
    # The worker pipelines JarOpen before a request and does not wait for its answer:
    # the request that finds no jar says why the open was refused.
    for i in range(4):
        opened(table, bytes([i]) * 16)
    call(table, JarOpen(9, b"x" * 16, JarSpec()))
    assert table.find(b"x" * 16, PID_A) is None
    assert "max_jars" in (table.refusal(b"x" * 16, PID_A) or "")
    assert table.refusal(b"x" * 16, PID_B) is None  # another process's token is not it
    assert table.refusal(T2, PID_A) is None
    for i in range(100):  # only the latest are kept
        call(table, JarOpen(10 + i, i.to_bytes(16, "big"), JarSpec()))
    assert table.refusal(b"x" * 16, PID_A) is None
    assert table.refusal((99).to_bytes(16, "big"), PID_A) is not None


def test_cap_on_named_jars(table):
    opened(table, T1, JarSpec(name="one"))
    opened(table, T2, JarSpec(name="two"))
    reply = call(table, JarOpen(9, b"3" * 16, JarSpec(name="three")), B, PID_B)
    assert isinstance(reply, JarFailed) and "named cookie jars" in reply.message
    opened(table, b"3" * 16, JarSpec(name="one"), owner=B, pid=PID_B)  # an existing one


@pytest.mark.parametrize(
    "record",
    [
        "text",
        {"key": "a", "value": 1, "coded_value": "1"},
        {"key": "a b", "value": "1", "coded_value": "1"},
        cookie("a", "1", path="/" + "p" * 2000),
        cookie("a", "1", path="/\n"),
        {"key": "a", "value": "1", "coded_value": "x" * 20000},
    ],
)
def test_bad_update_records_are_refused_and_change_nothing(table, record):
    opened(table)
    msg = JarUpdate(2, T1, "http://example.com/", [("ok", cookie("ok", "1")), ("a", record)])
    reply = call(table, msg)
    assert isinstance(reply, JarFailed) and reply.invalid
    assert call(table, JarCount(3, T1)) == JarDone(3, 0)


def test_update_ignores_saved_fields_and_takes_attributes(table):
    opened(table)
    record = cookie("a", "1", domain="example.com", path="/x", secure=True, host_only=True,
                    expires_timestamp=1.0)
    call(table, JarUpdate(2, T1, "https://www.example.com/", [("a", record)]))
    assert call(table, JarFilter(3, T1, "https://sub.example.com/x/y")).cookies == [
        ("a", "1", "1")
    ]
    assert call(table, JarFilter(4, T1, "http://sub.example.com/x/y")).cookies == []


def test_calls_on_an_unknown_token(table):
    for msg in (JarUpdate(1, T1, "http://a.com/", []), JarFilter(1, T1, "http://a.com/"),
                JarCount(1, T1), JarDump(1, T1), JarLoad(1, T1, {}), JarDelete(1, T1)):
        assert call(table, msg) == JarFailed(1, UNKNOWN_JAR)


def test_dump_load_round_trip(table):
    opened(table, T1)
    opened(table, T2)
    set_cookie(table, T1, "a", "1")
    set_cookie(table, T1, "b", "2", url="http://other.org/p/q")
    dumped = call(table, JarDump(3, T1))
    assert isinstance(dumped, JarData) and not dumped.more
    assert call(table, JarLoad(4, T2, dumped.data)) == JarDone(4, 2)
    assert call(table, JarFilter(5, T2, "http://other.org/p/r")).cookies == [("b", "2", "2")]


def big_store(table: JarTable, token: bytes, domains: int = 20) -> None:
    value = "v" * 4000
    for d in range(domains):
        cookies = [(f"c{i}", cookie(f"c{i}", value)) for i in range(150)]
        reply = call(table, JarUpdate(2, token, f"http://d{d}.example.com/", cookies))
        assert isinstance(reply, JarDone)


def test_a_big_dump_comes_in_pieces_below_the_frame_cap():
    table = JarTable()
    opened(table)
    big_store(table, T1)
    pieces = table.apply(A, PID_A, JarDump(3, T1))
    assert len(pieces) > 3
    assert [p.more for p in pieces] == [True] * (len(pieces) - 1) + [False]
    for piece in pieces:
        assert len(encode(piece)) < PIECE_SIZE + 64 * 1024 < MAX_FRAME
    total = sum(len(records) for p in pieces for records in p.data.values())
    assert total == 3000


def test_a_load_in_pieces_changes_the_jar_at_the_last_piece():
    table = JarTable()
    opened(table, T1)
    opened(table, T2)
    big_store(table, T1, domains=4)
    set_cookie(table, T2, "old", "x")
    whole: dict = {}
    for reply in table.apply(A, PID_A, JarDump(3, T1)):
        for compound, records in reply.data.items():
            whole.setdefault(compound, {}).update(records)
    pieces = split_cookie_data(whole, budget=200_000)
    assert len(pieces) > 2
    for i, piece in enumerate(pieces[:-1]):
        assert isinstance(call(table, JarLoad(4, T2, piece, last=False, first=i == 0)), JarDone)
        assert call(table, JarCount(5, T2)) == JarDone(5, 1)  # not yet
    assert call(table, JarLoad(6, T2, pieces[-1], first=False)) == JarDone(6, 600)
    assert call(table, JarCount(7, T2)) == JarDone(7, 600)


def test_a_bad_piece_fails_the_rest_of_its_load_and_nothing_changes(table):
    opened(table)
    set_cookie(table, T1, "old", "x")
    good = {"example.com|": {"a": cookie("a", "1", domain="example.com")}}
    assert isinstance(call(table, JarLoad(2, T1, good, last=False)), JarDone)
    bad = call(table, JarLoad(3, T1, {"nobar": {}}, last=False, first=False))
    assert isinstance(bad, JarFailed) and bad.invalid
    last = call(table, JarLoad(4, T1, good, first=False))
    assert isinstance(last, JarFailed) and "earlier piece" in last.message
    assert call(table, JarFilter(5, T1, "http://example.com/")).cookies == [("old", "x", "x")]
    # the next load starts afresh
    assert call(table, JarLoad(6, T1, good)) == JarDone(6, 1)


def test_a_new_load_drops_what_an_unfinished_one_staged(table):
    # A load cut short (the worker's call timed out after some pieces) leaves nothing
    # that a later load could pick up, good or bad.
    opened(table)
    stale = {"example.com|": {"stale": cookie("stale", "1", domain="example.com")}}
    fresh = {"example.com|": {"fresh": cookie("fresh", "2", domain="example.com")}}
    assert isinstance(call(table, JarLoad(2, T1, stale, last=False)), JarDone)
    assert call(table, JarLoad(3, T1, fresh)) == JarDone(3, 1)
    assert [n for n, _, _ in call(table, JarFilter(4, T1, "http://example.com/")).cookies] == [
        "fresh"
    ]
    assert isinstance(call(table, JarLoad(5, T1, {"nobar": {}}, last=False)), JarFailed)
    assert call(table, JarLoad(6, T1, stale)) == JarDone(6, 1)


def test_a_load_piece_over_the_record_cap_is_refused(table):
    from shared.messages import MAX_JAR_RECORDS

    opened(table)
    many = {"example.com|": {f"c{i}": cookie(f"c{i}", "1") for i in range(MAX_JAR_RECORDS + 1)}}
    reply = call(table, JarLoad(2, T1, many))
    assert isinstance(reply, JarFailed) and reply.invalid and "at most" in reply.message
    assert all(sum(map(len, p.values())) <= MAX_JAR_RECORDS for p in split_cookie_data(many))


def test_delete_some_or_all(table):
    opened(table)
    set_cookie(table, T1, "a", "1")
    set_cookie(table, T1, "b", "2")
    assert call(table, JarDelete(3, T1, [("example.com", "/", "a")])) == JarDone(3, 1)
    assert call(table, JarFilter(4, T1, "http://example.com/")).cookies == [("b", "2", "2")]
    assert call(table, JarDelete(5, T1)) == JarDone(5, 0)


def test_a_bad_url_is_refused_as_bad_data(table):
    opened(table)
    reply = call(table, JarFilter(2, T1, "http://[::1"))
    assert isinstance(reply, JarFailed) and reply.invalid


def test_bad_secure_origins_are_refused(table):
    reply = call(table, JarOpen(1, T1, JarSpec(treat_as_secure_origin=("",))))
    assert isinstance(reply, JarFailed)
    assert table.find(T1, PID_A) is None


def test_named_jar_changes_are_announced(table):
    changes = []
    table.on_change = lambda: changes.append(1)
    opened(table, T1)
    set_cookie(table, T1)
    assert changes == []  # unnamed jars are not saved
    opened(table, T2, JarSpec(name="site"))
    changes.clear()
    set_cookie(table, T2)
    assert changes
    changes.clear()
    call(table, JarFilter(3, T2, "http://example.com/"))
    assert changes == []  # reading is no change


def test_figures(table):
    opened(table, T1)
    opened(table, T2)
    set_cookie(table, T1)
    opened(table, T1, JarSpec(name="site"), owner=B, pid=PID_B)
    set_cookie(table, T1, "x", "1", owner=B, pid=PID_B)
    set_cookie(table, T1, "y", "1", owner=B, pid=PID_B)
    figures = table.figures()
    assert figures == [
        {"name": "site", "unsafe": False, "quote_cookie": True, "treat_as_secure_origin": [],
         "cookies": 2, "open": 1},
        {"name": None, "jars": 2, "cookies": 1},
    ]
    msgspec.json.encode(figures)


def test_restore_is_all_or_nothing(table):
    good = (JarSpec(name="a"), {"example.com|": {"a": cookie("a", "1", domain="example.com")}})
    bad = (JarSpec(name="b"), {"example.com|": {"a": "no"}})
    with pytest.raises(ValueError, match="jar 'b'"):
        table.restore([good, bad])
    assert table.named == {}
    table.restore([good])
    opened(table, T1, JarSpec(name="a"))
    assert call(table, JarCount(2, T1)) == JarDone(2, 1)
    assert table.named_contents()[0][1]["example.com|"]["a"]["value"] == "1"


def test_loads_are_staged_per_connection_and_a_lost_piece_is_refused(table):
    # Two connections of one process (two jar channels) loading at once, piece by piece,
    # each get their own load; a piece whose load was dropped is refused, not merged.
    one = {"example.com|": {"one": cookie("one", "1", domain="example.com")}}
    two = {"example.com|": {"two": cookie("two", "2", domain="example.com")}}
    opened(table, T1)
    opened(table, T2)
    conn_a, conn_b = object(), object()

    def load(via, msg):
        (reply,) = table.apply(A, PID_A, msg, via)
        return reply

    assert isinstance(load(conn_a, JarLoad(1, T1, one, last=False)), JarDone)
    assert isinstance(load(conn_b, JarLoad(2, T2, two, last=False)), JarDone)
    assert load(conn_a, JarLoad(3, T1, two, first=False)) == JarDone(3, 2)
    assert load(conn_b, JarLoad(4, T2, one, first=False)) == JarDone(4, 2)
    # a later piece on a connection whose load was dropped (closed) finds nothing
    assert isinstance(load(conn_a, JarLoad(5, T1, one, last=False)), JarDone)
    table.drop_connection(conn_a)
    lost = load(conn_a, JarLoad(6, T1, two, first=False))
    assert isinstance(lost, JarFailed) and "earlier pieces" in lost.message
    assert call(table, JarCount(7, T1)) == JarDone(7, 2)  # unchanged


def test_empty_entries_count_toward_a_load_pieces_cap(table):
    from shared.messages import MAX_JAR_RECORDS

    opened(table)
    empty = {f"d{i}.example|": {} for i in range(MAX_JAR_RECORDS + 1)}
    reply = call(table, JarLoad(2, T1, empty))
    assert isinstance(reply, JarFailed) and reply.invalid
    pieces = split_cookie_data(empty)
    assert len(pieces) == 2 and all(len(p) <= MAX_JAR_RECORDS for p in pieces)
