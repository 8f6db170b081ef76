"""shared.rules: one row per rule and per kind of input, for the request line and Host."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.http_writer import _py_serialize_headers as aiohttp_serialize_head
from multidict import CIMultiDict
from yarl import URL

from shared.rules import (
    HOST_PROBLEM,
    TARGET_PROBLEM,
    TOKEN_RE,
    check_host_port,
    host_header_problem,
    url_problem,
)

# URL (as a worker may send it: already encoded, so yarl keeps it byte for byte) -> the
# problem url_problem reports, or None. yarl drops CR, LF and HTAB when it parses a string
# (as the WHATWG URL standard does) but not in ``URL.build``: "build:" rows use that.
URL_CASES: list[tuple[str, str | None]] = [
    # accepted: what yarl produces, and what an encoded=True URL may carry harmlessly
    ("http://example.com/", None),
    ("http://example.com:8080/a/b?x=1&y=%20z", None),
    ("https://EXAMPLE.com./~user/a;b,c!d$e'f(g)h*i+j=k@l:m", None),
    ("http://127.0.0.1:1/", None),
    ("http://[::1]:8080/", None),
    ("http://[fe80::1%25eth0]/", None),  # RFC 6874 zone
    ("http://[v1.fe80::a+en1]/", None),  # IPvFuture
    ("http://xn--caf-dma.example/", None),
    ("http://a%2Db.example/", None),  # a percent-escape in a reg-name
    ('http://h/{"a"}|^`\\<>', None),  # RFC 3986 would escape them; they end no line
    ("http://h/caf\u00e9?q=\u00fc", None),  # non-ASCII, sent as UTF-8 (as aiohttp does)
    # the request target: control bytes, DEL, spaces
    ("http://h/a\x00b", TARGET_PROBLEM),
    ("http://h/a?b= HTTP/1.0 HTTP/1.1", TARGET_PROBLEM),
    ("http://h/a b", TARGET_PROBLEM),
    ("http://h/a?b=\r\nX-Injected: 1", TARGET_PROBLEM),  # CR LF dropped, the space stays
    ("build:/a\r\nGET /b", TARGET_PROBLEM),
    ("build:/a\nb", TARGET_PROBLEM),
    ("build:/a\tb", TARGET_PROBLEM),
    ("http://h/a\nb", None),  # parsed: /ab
    ("http://h/a\x0bb", TARGET_PROBLEM),
    ("http://h/a\x1fb", TARGET_PROBLEM),
    ("http://h/a\x7fb", TARGET_PROBLEM),
    ("http://h/a?b=\x00", TARGET_PROBLEM),
    ("http://h/a\x85b", None),  # NEL is no HTTP line end; sent as UTF-8 C2 85
    # the host and port
    ("http://a b/", HOST_PROBLEM),
    ("http://a\x00b/", HOST_PROBLEM),
    ("http://a\x7fb/", HOST_PROBLEM),
    ("http://a\tb/", None),  # parsed: ab
    ("build-host:a\r\nX-Injected", HOST_PROBLEM),
    ("http://a%0/", HOST_PROBLEM),  # a broken percent-escape
    ("http://a%zzb/", HOST_PROBLEM),
    ('http://a"b/', HOST_PROBLEM),
    ("http://a<b>/", HOST_PROBLEM),
    ("http://caf\u00e9.example/", HOST_PROBLEM),  # yarl leaves it unencoded when encoded=True
    ("http://[::1 ]/", HOST_PROBLEM),
]


def make_url(case: str) -> URL:
    kind, _, rest = case.partition(":")
    if kind == "build":
        path, _, query = rest.partition("?")
        return URL.build(scheme="http", host="h", path=path, query_string=query, encoded=True)
    if kind == "build-host":
        return URL.build(scheme="http", host=rest, path="/", encoded=True)
    return URL(case, encoded=True)


@pytest.mark.parametrize(("url", "problem"), URL_CASES)
def test_url_rule(url: str, problem: str | None) -> None:
    assert url_problem(make_url(url)) == problem


@pytest.mark.parametrize(
    "target",
    [make_url(url).raw_path_qs for url, problem in URL_CASES if problem == TARGET_PROBLEM],
)
def test_every_target_aiohttps_writer_refuses_is_refused(target: str) -> None:
    """aiohttp refuses control bytes but HTAB in a request line when it writes it; we
    refuse those and also SP and HTAB (RFC 9112 section 3), before anything is written."""
    try:
        aiohttp_serialize_head(f"GET {target} HTTP/1.1", CIMultiDict())
    except ValueError:
        pass
    else:
        assert " " in target or "\t" in target  # what aiohttp lets through and we do not
    assert url_problem(URL.build(scheme="http", host="h", path=target, encoded=True)) == (
        TARGET_PROBLEM
    )


def test_url_without_a_host_is_a_host_problem() -> None:
    assert url_problem(URL("/relative")) == HOST_PROBLEM


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("example.com", True),
        ("example.com:8080", True),
        ("[::1]:80", True),
        ("", True),  # RFC 9112 section 3.2: empty when the target has no authority
        ("a b", False),
        ("example.com:80 x", False),
        ("example.com:port", False),
        ("example.com:123456", False),
        ("example.com\x00", False),
        ("a/b", False),
        ("a@b", False),  # userinfo is not part of Host
    ],
)
def test_host_header_rule(value: str, ok: bool) -> None:
    problem = host_header_problem(value)
    assert (problem is None) == ok
    if not ok:
        assert repr(value) in str(problem)


@pytest.mark.parametrize(
    ("method", "ok"),
    [("GET", True), ("M-SEARCH", True), ("GET /x", False), ("GET\r\n", False), ("", False)],
)
def test_method_rule(method: str, ok: bool) -> None:
    assert (TOKEN_RE.fullmatch(method) is not None) == ok


@pytest.mark.parametrize(
    ("host", "port", "ok"),
    [(None, None, True), ("h", 80, True), ("h", None, False), (None, 80, False)],
)
def test_host_and_port_go_together(host: str | None, port: int | None, ok: bool) -> None:
    if ok:
        check_host_port(host, port)
    else:
        with pytest.raises(ValueError, match="either both host and port or none"):
            check_host_port(host, port)


@pytest.mark.parametrize(("host", "port"), [("h", None), (None, 80)])
async def test_every_clear_dns_cache_applies_the_pairing_rule_as_aiohttp(
    host: str | None, port: int | None
) -> None:
    import aiohttp

    from broker.resolver import CachedResolver
    from shared.specs import ResolverSpec
    from worker_client import TCPConnector

    theirs = aiohttp.TCPConnector()
    try:
        with pytest.raises(ValueError) as expected:
            theirs.clear_dns_cache(host, port)
    finally:
        await theirs.close()
    resolver = CachedResolver(ResolverSpec(), asyncio.get_running_loop())
    try:
        for clear in (TCPConnector().clear_dns_cache, resolver.clear):
            with pytest.raises(ValueError) as got:
                clear(host, port)
            assert str(got.value) == str(expected.value)
    finally:
        await resolver.close()
