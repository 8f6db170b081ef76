"""A worker connection's tables (``broker.known``): settings by id, and the checks it
need not repeat, which must never let through what a fresh check refuses."""

from __future__ import annotations

import pytest

from broker.engine import _checked
from broker.failures import ConnectionFailure
from broker.known import CHECKED_HEADERS, CHECKED_URL_LENGTH, CHECKED_URLS, Checked, SpecIds
from shared.messages import Request
from shared.specs import ClientTimeout


def _req(url: str = "http://h/a", headers=(), method: str = "GET") -> Request:
    return Request(1, method, url, headers=list(headers))


def test_a_url_checked_once_is_parsed_once():
    known = Checked()
    first = _checked(_req(), known)
    assert _checked(_req(), known) is first
    assert known.urls == {"http://h/a": first}


def test_what_was_checked_never_excuses_what_was_not():
    known = Checked()
    good = [("X-A", "1"), ("Host", "h")]
    _checked(_req(headers=good), known)
    for bad, code in [
        (_req(headers=[*good, ("X-B", "a\r\nGET /x HTTP/1.1")]), "protocol"),
        (_req(headers=[("X-A", "1"), ("Host", "h x")]), "protocol"),
        (_req(url="http://h/a b"), "invalid_url"),
        (_req(method="GET /x HTTP/1.1\r\nX:"), "protocol"),
    ]:
        with pytest.raises(ConnectionFailure) as info:
            _checked(bad, known)
        assert info.value.code == code
    assert len(known.headers) == 1 and list(known.urls) == ["http://h/a"]


def test_the_tables_are_bounded():
    known = Checked()
    for i in range(CHECKED_URLS + 1):
        _checked(_req(url=f"http://h/{i}"), known)
    assert len(known.urls) == 1  # full: started afresh
    _checked(_req(url="http://h/" + "a" * CHECKED_URL_LENGTH), known)
    assert len(known.urls) == 1  # too long to keep
    for i in range(CHECKED_HEADERS + 1):
        _checked(_req(headers=[("X", str(i))]), known)
    assert len(known.headers) == 1
    _checked(_req(headers=[("X", "v" * 4096)]), known)
    assert len(known.headers) == 1


def test_a_list_of_many_short_headers_counts_its_pairs():
    """Each pair is a tuple of its own (tens of bytes) whatever its characters: a list of
    a thousand one-character headers is no small list to keep (the documented bound
    counts bytes)."""
    import sys

    known = Checked()
    headers = [(f"{chr(65 + i % 26)}", "") for i in range(1000)]
    kept = sum(sys.getsizeof(pair) for pair in headers)
    assert kept > 2 * 2048  # many times what its characters say
    _checked(_req(headers=headers), known)
    assert not known.headers
    known.head(_req(headers=headers), _checked(_req(), known), False)
    assert not known.heads


def test_spec_ids():
    ids = SpecIds(max_pools=1, max_timeouts=1)
    ids.open_pool(1, b"a")
    ids.open_pool(2, b"b")  # over the cap: refused
    ids.open_timeout(1, ClientTimeout(total=1))
    with pytest.raises(ValueError, match="open already"):
        ids.open_pool(1, b"a")
    assert ids.pool(1) == b"a" and ids.timeout(1).total == 1
    with pytest.raises(ConnectionFailure) as info:
        ids.pool(2)
    assert info.value.code == "broker"
    with pytest.raises(ConnectionFailure) as info:
        ids.timeout(2)
    assert info.value.code == "protocol"  # none was refused: never opened
    assert repr(ids) == "<SpecIds 1/1 pool specs, 1/1 timeouts>"
