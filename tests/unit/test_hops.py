"""The redirect policy: the next hop from a hop and a redirect response (aiohttp's rules)."""

import pytest
from yarl import URL

from broker.failures import ConnectionFailure
from broker.hops import Hop, follow, redirect_location

BASE = URL("http://a.example:8080/dir/page?q=1")
HEADERS = [("Authorization", "Bearer s"), ("Cookie", "c=1"), ("Content-Length", "3"),
           ("Proxy-Authorization", "Basic x"), ("X-Keep", "yes")]


def hop(method: str = "POST", body: bytes | None = b"abc", streamed: bool = False) -> Hop:
    return Hop(method, BASE, HEADERS, body, streamed)


@pytest.mark.parametrize(
    "status, method, new_method, keeps_body",
    [
        (301, "POST", "GET", False),
        (302, "POST", "GET", False),
        (303, "POST", "GET", False),
        (303, "PUT", "GET", False),
        (303, "HEAD", "HEAD", True),
        (301, "PUT", "PUT", True),
        (302, "DELETE", "DELETE", True),
        (307, "POST", "POST", True),
        (308, "PUT", "PUT", True),
    ],
)
def test_method_rewrite_and_body(status, method, new_method, keeps_body):
    nxt = follow(hop(method), status, b"/next")
    assert nxt.method == new_method
    assert (nxt.body == b"abc") is keeps_body
    names = [k for k, _ in nxt.headers]
    assert ("Content-Length" in names) is keeps_body


def test_a_streamed_body_is_to_be_sent_again_only_when_kept():
    assert follow(hop("POST", None, True), 307, b"/n").streamed
    assert not follow(hop("POST", None, True), 303, b"/n").streamed


@pytest.mark.parametrize(
    "location, expected",
    [
        (b"/other", "http://a.example:8080/other"),
        (b"sibling", "http://a.example:8080/dir/sibling"),
        (b"?x=2", "http://a.example:8080/dir/page?x=2"),
        (b"http:/abs", "http://a.example:8080/abs"),  # same scheme, no host: joined
        (b"https://b.example/x", "https://b.example/x"),
        (b"//c.example/y", "http://c.example/y"),
    ],
)
def test_locations_are_joined_as_aiohttp_joins_them(location, expected):
    assert str(follow(hop("GET", None), 302, location).url) == expected


def test_same_origin_keeps_credentials_other_origin_drops_them():
    same = follow(hop("GET", None), 302, b"/again")
    assert [k for k, _ in same.headers] == [k for k, _ in HEADERS]
    other = follow(hop("GET", None), 302, b"http://b.example/")
    assert [k for k, _ in other.headers] == ["Content-Length", "X-Keep"]
    port = follow(hop("GET", None), 302, b"http://a.example:9090/")
    assert "Authorization" not in [k for k, _ in port.headers]


def test_request_cookies_follow_same_origin_hops_and_are_dropped_for_good_across():
    # aiohttp's _request: ``cookies = None`` once a redirect leaves the origin, and a
    # later hop back to the origin does not bring them back.
    first = Hop("GET", BASE, [], None, False, [("a", "1")])
    same = follow(first, 302, b"/again")
    assert same.cookies == [("a", "1")]
    away = follow(same, 302, b"http://b.example/")
    assert away.cookies == []
    back = follow(away, 302, b"http://a.example:8080/dir/")
    assert back.cookies == []


@pytest.mark.parametrize(
    "location, code",
    [
        (b"ftp://x.example/", "non_http_redirect"),
        (b"javascript:alert(1)", "non_http_redirect"),
        (b"http://[::1/", "invalid_redirect"),
        (b"http://h\x01st/", "invalid_redirect"),
    ],
)
def test_unusable_locations_fail(location, code):
    with pytest.raises(ConnectionFailure) as info:
        follow(hop("GET", None), 302, location)
    assert info.value.code == code


def test_the_policy_does_not_change_the_hop_it_was_given():
    before = hop()
    headers = list(before.headers)
    follow(before, 303, b"http://b.example/")
    assert before == Hop("POST", BASE, headers, b"abc", False)


def test_redirect_location_prefers_location_then_uri():
    assert redirect_location([(b"URI", b"/u"), (b"Location", b"/l")]) == b"/l"
    assert redirect_location([(b"Location", b""), (b"uri", b"/u")]) == b"/u"
    assert redirect_location([(b"Content-Type", b"text/plain")]) is None


def test_control_bytes_and_spaces_in_a_location_are_percent_encoded():
    """yarl encodes a Location, so what could end the request line cannot reach it."""
    assert follow(hop("GET", None), 302, b"/a\x00b").url.raw_path == "/a%00b"
    assert follow(hop("GET", None), 302, b"/a?b= HTTP/1.0").url.raw_path_qs == "/a?b=+HTTP/1.0"
