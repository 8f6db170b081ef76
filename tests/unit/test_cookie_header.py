"""A hop's Cookie header: the caller's, the jar's and the request's cookies, as aiohttp
3.14's ``ClientRequest.update_cookies`` writes them."""

from http.cookies import SimpleCookie

import pytest
from aiohttp._cookie_helpers import parse_cookie_header as aiohttp_parse

from broker.cookie_header import with_cookies
from broker.cookie_store import parse_cookie_header


@pytest.mark.parametrize(
    "header",
    [
        "a=1; b=2",
        'a=1; b="x;y"; c=3',
        "bad name=3; c; d=Wed, 09 Jun 2021 10:18:14 GMT; e=5",
        'a="unclosed; b=2',
        " ; ;x=1;;y",
        "\u00fc=1; a=2",
        "a=1,b=2",
        "path=/; secure; domain=x",
        "",
        "=; =1; a==b",
    ],
)
def test_parse_agrees_with_aiohttp(header):
    assert parse_cookie_header(header) == [(k, m.coded_value) for k, m in aiohttp_parse(header)]


def jar(**cookies: str) -> SimpleCookie:
    c = SimpleCookie()
    for name, value in cookies.items():
        c[name] = value
    return c


HEADERS = [("Accept", "*/*"), ("Cookie", "z=9; a=0"), ("X-After", "1")]


def test_nothing_added_leaves_the_headers_as_they_are():
    assert with_cookies(HEADERS, None, []) is HEADERS
    assert with_cookies(HEADERS, jar(), []) is HEADERS


def test_the_callers_cookie_header_is_merged_sorted_and_moved_last():
    out = with_cookies(HEADERS, jar(b="2"), [])
    assert out == [("Accept", "*/*"), ("X-After", "1"), ("Cookie", "a=0; b=2; z=9")]


def test_jar_replaces_a_callers_cookie_and_request_cookies_replace_the_jars():
    out = with_cookies(HEADERS, jar(a="jar", q="1"), [("q", "req"), ("r", "2")])
    assert out[-1] == ("Cookie", "a=jar; q=req; r=2; z=9")


def test_only_the_first_cookie_header_is_read_and_all_are_replaced():
    headers = [("Cookie", "a=1"), ("cookie", "b=2")]
    assert with_cookies(headers, jar(c="3"), []) == [("Cookie", "a=1; c=3")]


def test_jar_values_go_out_as_coded():
    out = with_cookies([], jar(sp="a b"), [])
    assert out == [("Cookie", 'sp="a b"')]


def test_agrees_with_the_simplecookie_output_aiohttp_writes():
    # aiohttp's update_cookies: SimpleCookie of the caller's header, updated with the
    # cookies, written by ``output(header="", sep=";")``.
    c = SimpleCookie()
    c.update(aiohttp_parse("z=9; a=0"))
    cookies = jar(a="jar", q="1")
    for name, morsel in cookies.items():
        c[name] = morsel
    expected = c.output(header="", sep=";").strip()
    assert with_cookies(HEADERS, cookies, [])[-1] == ("Cookie", expected)
