"""aiohttp 3.14's tests/test_cookiejar.py cases, the shared truth for both layers: the pure
CookieStore (tests/unit/test_cookie_store.py) and the worker's CookieJar API
(tests/unit/test_cookie_jar_api.py) each run every table here, so a case added once is
checked in both."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from http.cookies import BaseCookie, Morsel, SimpleCookie
from typing import Protocol

import pytest
from yarl import URL

COOKIES_TO_SEND = (
    "shared-cookie=first; "
    "domain-cookie=second; Domain=example.com; "
    "subdomain1-cookie=third; Domain=test1.example.com; "
    "subdomain2-cookie=fourth; Domain=test2.example.com; "
    "dotted-domain-cookie=fifth; Domain=.example.com; "
    "different-domain-cookie=sixth; Domain=different.org; "
    "secure-cookie=seventh; Domain=secure.com; Secure; "
    "no-path-cookie=eighth; Domain=pathtest.com; "
    "path1-cookie=ninth; Domain=pathtest.com; Path=/; "
    "path2-cookie=tenth; Domain=pathtest.com; Path=/one; "
    "path3-cookie=eleventh; Domain=pathtest.com; Path=/one/two; "
    "path4-cookie=twelfth; Domain=pathtest.com; Path=/one/two/; "
    "expires-cookie=thirteenth; Domain=expirestest.com; Path=/;"
    " Expires=Tue, 1 Jan {year} 12:00:00 GMT; "
    "max-age-cookie=fourteenth; Domain=maxagetest.com; Path=/;"
    " Max-Age=60; "
    "invalid-max-age-cookie=fifteenth; Domain=invalid-values.com; "
    " Max-Age=string; "
    "invalid-expires-cookie=sixteenth; Domain=invalid-values.com; "
    " Expires=string;"
)
COOKIES_TO_RECEIVE = (
    "unconstrained-cookie=first; Path=/; "
    "domain-cookie=second; Domain=example.com; Path=/; "
    "subdomain1-cookie=third; Domain=test1.example.com; Path=/; "
    "subdomain2-cookie=fourth; Domain=test2.example.com; Path=/; "
    "dotted-domain-cookie=fifth; Domain=.example.com; Path=/; "
    "different-domain-cookie=sixth; Domain=different.org; Path=/; "
    "no-path-cookie=seventh; Domain=pathtest.com; "
    "path-cookie=eighth; Domain=pathtest.com; Path=/somepath; "
    "wrong-path-cookie=ninth; Domain=pathtest.com; Path=somepath;"
)


def to_send(year: int = 2999) -> SimpleCookie:
    return SimpleCookie(COOKIES_TO_SEND.format(year=year))


def to_receive() -> SimpleCookie:
    return SimpleCookie(COOKIES_TO_RECEIVE)


class Jar(Protocol):
    """What the CookieStore and the CookieJar have in common, with the same names."""

    def update_cookies(self, cookies: SimpleCookie, response_url: URL = ...) -> None: ...
    def filter_cookies(self, request_url: URL) -> BaseCookie[str]: ...
    def __len__(self) -> int: ...


def sent(jar: Jar, url: str) -> set[str]:
    return set(jar.filter_cookies(URL(url)))


def by_name(morsels: Iterable[Morsel[str]]) -> dict[str, Morsel[str]]:
    return {m.key: m for m in morsels}


EVERY_PATHTEST_COOKIE = {
    "shared-cookie",
    "no-path-cookie",
    "path1-cookie",
    "path2-cookie",
    "path3-cookie",
    "path4-cookie",
}

# url -> the names sent there by a jar that took to_send() with no response URL
SEND_CASES = [
    ("http://example.com/", {"shared-cookie", "domain-cookie", "dotted-domain-cookie"}),
    (
        "http://test1.example.com/",
        {"shared-cookie", "domain-cookie", "subdomain1-cookie", "dotted-domain-cookie"},
    ),
    ("http://different.example.com/", {"shared-cookie", "domain-cookie", "dotted-domain-cookie"}),
    ("http://different.org/", {"shared-cookie", "different-domain-cookie"}),
    ("http://secure.com/", {"shared-cookie"}),
    ("https://secure.com/", {"shared-cookie", "secure-cookie"}),
    ("http://pathtest.com/", {"shared-cookie", "no-path-cookie", "path1-cookie"}),
    (
        "http://pathtest.com/one/",
        {"shared-cookie", "no-path-cookie", "path1-cookie", "path2-cookie"},
    ),
    (
        "http://pathtest.com/one/two",
        {"shared-cookie", "no-path-cookie", "path1-cookie", "path2-cookie", "path3-cookie"},
    ),
    ("http://pathtest.com/one/two/", EVERY_PATHTEST_COOKIE),
    ("http://pathtest.com/one/two/three/", EVERY_PATHTEST_COOKIE),
    ("http://pathtest.com/hundred/", {"shared-cookie", "no-path-cookie", "path1-cookie"}),
    ("http://expirestest.com/", {"shared-cookie", "expires-cookie"}),
    ("http://maxagetest.com/", {"shared-cookie", "max-age-cookie"}),
    (
        "http://invalid-values.com/",
        {"shared-cookie", "invalid-max-age-cookie", "invalid-expires-cookie"},
    ),
    ("http://1.2.3.4/", {"shared-cookie"}),
]

# url -> the names a jar keeps when to_receive() comes in a response from url
RECEIVE_CASES = [
    ("http://example.com/", {"unconstrained-cookie", "domain-cookie", "dotted-domain-cookie"}),
    (
        "http://test1.example.com/",
        {"unconstrained-cookie", "domain-cookie", "subdomain1-cookie", "dotted-domain-cookie"},
    ),
    (
        "http://different.example.com/",
        {"unconstrained-cookie", "domain-cookie", "dotted-domain-cookie"},
    ),
    ("http://different.org/", {"unconstrained-cookie", "different-domain-cookie"}),
    (
        "http://pathtest.com/",
        {"unconstrained-cookie", "no-path-cookie", "path-cookie", "wrong-path-cookie"},
    ),
    ("http://1.2.3.4/", set()),  # no cookies from IP hosts
]

# (Set-Cookie text, the Cookie header sent to http://127.0.0.1/, quote_cookie), unsafe jar
QUOTE_CASES = [
    pytest.param(
        "shared-cookie=first; ip-cookie=second; Domain=127.0.0.1;",
        "Cookie: ip-cookie=second\r\nCookie: shared-cookie=first",
        True,
        id="IP domain preserved",
    ),
    pytest.param(
        'ip-cookie="second"; Domain=127.0.0.1;',
        'Cookie: ip-cookie="second"',
        True,
        id="no shared cookie",
    ),
    pytest.param(
        "custom-cookie=value/one;",
        'Cookie: custom-cookie="value/one"',
        True,
        id="quoted cookie with special char",
    ),
    pytest.param(
        "custom-cookie=value1;",
        "Cookie: custom-cookie=value1",
        True,
        id="quoted cookie w/o special char",
    ),
    pytest.param(
        "custom-cookie=value/one;",
        "Cookie: custom-cookie=value/one",
        False,
        id="unquoted cookie with special char",
    ),
    pytest.param('foo="quoted_value"', 'Cookie: foo="quoted_value"', True, id="pre-quoted cookie"),
    pytest.param(
        'foo="quoted_value"; domain=127.0.0.1',
        'Cookie: foo="quoted_value"',
        True,
        id="pre-quoted cookie with domain",
    ),
]

# what update_cookies accepts besides a SimpleCookie of Morsels
LOOSE_COOKIES = [
    [("str", BaseCookie())],
    [("str", Morsel())],
    [("str", "str")],
    {"str": BaseCookie()},
    {"str": Morsel()},
    {"str": "str"},
    SimpleCookie(),
    SimpleCookie("a=b"),
]

# Set-Cookie headers from http://example.com/ -> the names stored (and sent back there)
HEADER_CASES = [
    pytest.param([], set(), id="empty"),
    pytest.param(
        ["session-id=123456; Path=/", "user-pref=dark-mode; Domain=.example.com"],
        {"session-id", "user-pref"},
        id="plain",
    ),
    pytest.param(
        [
            "valid-cookie=value123",
            "invalid,cookie=value; HttpOnly; Path=/",
            "another-valid=value456",
        ],
        {"valid-cookie", "another-valid"},
        id="bad name skipped",
    ),
    pytest.param(
        [
            "ISAWPLB{A7F52349-3531-4DA9-8776-F74BC6F4F1BB}="
            "{925EC0B8-CB17-4BEB-8A35-1033813B0523}; HttpOnly; Path=/",
            "regular-cookie=value123",
        ],
        {"ISAWPLB{A7F52349-3531-4DA9-8776-F74BC6F4F1BB}", "regular-cookie"},
        id="curly braces",
    ),
    pytest.param(
        [
            "cookie_with_parens=(value)=test123",
            "cookie-with-brackets[index]=value456",
            "cookie@with@at=value789",
            "cookie:with:colons=value000",
        ],
        {
            "cookie_with_parens",
            "cookie-with-brackets[index]",
            "cookie@with@at",
            "cookie:with:colons",
        },
        id="special chars",
    ),
    pytest.param(["noequals", "=novalue", "a=b\x00c", "ok=1", "", "x=\x01"], {"ok"}, id="junk"),
    pytest.param(['q="a;b"; Path=/'], {"q"}, id="quoted ;"),
]

# forms of treat_as_secure_origin that all name the origin http://127.0.0.1
SECURE_ORIGIN_FORMS = [
    "http://127.0.0.1/index.html",
    URL("http://127.0.0.1/index.html"),
    ["http://127.0.0.1/index.html"],
    [URL("http://127.0.0.1/index.html")],
    URL("http://127.0.0.1/"),
    [URL("http://127.0.0.1/")],
    ["http://127.0.0.1"],
]

# given with no response URL, clear_domain("example.com") leaves foo and other
CLEAR_DOMAIN_COOKIES = (
    "foo=bar; "
    "domain_cookie=value; Domain=example.com; "
    "subdomain_cookie=value; Domain=test.example.com; "
    "other=value; Domain=notexample.com"
)

# Stories both layers play: (jar options, what the jar is given in order as (cookies,
# response URL), how many cookies it then keeps, {request URL: {name: value} sent there}).
# A str is given to update_cookies as a SimpleCookie, a list as Set-Cookie headers; an
# empty response URL is none.
SCENARIOS = [
    pytest.param(
        {},
        [
            (COOKIES_TO_RECEIVE, "http://example.com/"),
            ("subdomain=spam; Path=/;", "http://foo.example.com/"),
        ],
        4,
        {
            "http://foo.example.com/": {
                "domain-cookie": "second",
                "dotted-domain-cookie": "fifth",
                "subdomain": "spam",
            },
            "http://example.com/": {
                "unconstrained-cookie": "first",
                "domain-cookie": "second",
                "dotted-domain-cookie": "fifth",
            },
        },
        id="host-only cookie not sent to subdomains",
    ),
    pytest.param(
        {"unsafe": True},
        [("cookie=val; Domain=example.com.;", "http://www.example.com")],
        1,
        {"http://www.example.com/": {"cookie": "val"}, "http://example.com/": {}},
        id="domain ending with a dot is host-only",
    ),
    pytest.param(
        {},
        [
            (
                [
                    "secure-cookie=value1; Secure; HttpOnly; SameSite=Strict",
                    "expiring-cookie=value2; Max-Age=3600; Path=/app",
                    "domain-cookie=value3; Domain=.example.com; Path=/",
                    "dated-cookie=value4; Expires=Wed, 09 Jun 2999 10:18:14 GMT",
                ],
                "https://secure.example.com/app/page",
            )
        ],
        4,
        {
            "https://secure.example.com/": {"domain-cookie": "value3"},
            "https://secure.example.com/app/": {
                "secure-cookie": "value1",
                "expiring-cookie": "value2",
                "domain-cookie": "value3",
                "dated-cookie": "value4",
            },
            "http://secure.example.com/app/": {
                "expiring-cookie": "value2",
                "domain-cookie": "value3",
                "dated-cookie": "value4",
            },
        },
        id="headers with attributes",
    ),
    pytest.param(
        {},
        [
            ("existing=value1; session=old-value", "http://example.com/"),
            (["new-cookie=value3", "session=new-value"], "http://example.com/"),
        ],
        3,
        {
            "http://example.com/": {
                "existing": "value1",
                "new-cookie": "value3",
                "session": "new-value",
            }
        },
        id="headers keep other cookies and replace the same one",
    ),
    pytest.param(
        {},
        [
            ("idna-domain-first=first; Domain=xn--9caa.com; Path=/;", "http://éé.com/"),
            ("idna-domain-second=second; Domain=xn--9caa.com; Path=/;", "http://xn--9caa.com/"),
        ],
        2,
        {
            url: {"idna-domain-first": "first", "idna-domain-second": "second"}
            for url in ("http://éé.com", "http://xn--9caa.com")
        },
        id="unicode domain matches its IDNA form",
    ),
    pytest.param(
        {"unsafe": True},
        [('foo=""; Max-Age=0', ""), ('foo="bar"', "")],
        1,
        {"http://h.com/": {"foo": "bar"}},
        id="cookie set again after removal is kept",
    ),
    pytest.param(
        {"unsafe": True},
        [
            ("path-cookie=one; Domain=pathtest.com; Path=/one; ", ""),
            ("path-cookie=zero; Domain=pathtest.com; Path=/; ", ""),
            ("path-cookie=two; Domain=pathtest.com; Path=/second; ", ""),
        ],
        3,
        {
            "http://pathtest.com/": {"path-cookie": "zero"},
            "http://pathtest.com/second": {"path-cookie": "two"},
            "http://pathtest.com/one": {"path-cookie": "one"},
        },
        id="same name: the most specific path wins whatever the order",
    ),
]


def play(
    jar: Jar,
    given: Sequence[tuple[str | list[str], str]],
    from_headers: Callable[[list[str], URL], None],
) -> None:
    for cookies, url in given:
        if isinstance(cookies, str):
            jar.update_cookies(SimpleCookie(cookies), URL(url))
        else:
            from_headers(cookies, URL(url))


def sent_by_url(jar: Jar, urls: Iterable[str]) -> dict[str, dict[str, str]]:
    return {url: {n: m.value for n, m in jar.filter_cookies(URL(url)).items()} for url in urls}
