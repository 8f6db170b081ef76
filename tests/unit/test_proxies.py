"""The pure parts of proxy support: NO_PROXY as urllib reads it, the worker's route from
its arguments and environment, the engine's choice per hop and its checks, the heads."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest
from yarl import URL

from broker.connector import _label
from broker.dialer import NO_TLS
from broker.exchange import build_head
from broker.failures import ConnectionFailure
from broker.http1 import HTTP1Connection
from broker.proxy import (
    MAX_CONNECT_HEAD,
    _connect_head,
    _ConnectAnswer,
    _parse_answer,
    absolute_target,
    hop_proxy,
)
from shared.rules import proxy_bypass
from shared.specs import ProxyRoute, ProxySpec, decode_proxy, encode_proxy
from worker_client import BasicAuth, InvalidURL
from worker_client.proxies import EnvProxies, fixed_route, proxy_spec

BYPASS_CASES = [
    ("example.com", 80, "example.com"),
    ("www.example.com", 80, "example.com"),
    ("www.example.com", 80, ".example.com"),
    ("notexample.com", 80, "example.com"),
    ("EXAMPLE.com", 80, "Example.COM"),
    ("example.com", 8080, "example.com:8080"),
    ("example.com", 80, "example.com:8080"),
    ("a.example.com", 8080, "example.com:8080"),
    ("example.com", 80, "*"),
    ("example.com", 80, "*, other"),
    ("example.com", 80, " other , example.com "),
    ("example.com", 80, ",,"),
    ("127.0.0.1", 80, "127.0.0.1"),
    ("127.0.0.10", 80, "127.0.0.1"),
    ("example.com", 80, ""),
]


@pytest.mark.parametrize(("host", "port", "no_proxy"), BYPASS_CASES)
def test_proxy_bypass_reads_no_proxy_as_urllib(host: str, port: int, no_proxy: str) -> None:
    entries = tuple(no_proxy.split(",")) if no_proxy else ()
    expected = bool(no_proxy) and urllib.request.proxy_bypass_environment(
        f"{host}:{port}", {"no": no_proxy}
    )
    assert proxy_bypass(host, port, entries) == expected


def test_proxy_bypass_ipv6_host() -> None:
    assert proxy_bypass("::1", 80, ("::1",))
    assert proxy_bypass("::1", 8080, ("[::1]:8080",))
    assert not proxy_bypass("::1", 80, ("[::1]:8080",))


# -- the worker --------------------------------------------------------------------------


def test_proxy_spec_takes_credentials_from_the_url_and_proxy_auth_wins() -> None:
    spec = proxy_spec("http://u:p@proxy.test:3128/ignored", None, {"X-A": "1"})
    assert spec.url == "http://proxy.test:3128"
    assert spec.authorization == BasicAuth("u", "p").encode()
    assert spec.headers == (("X-A", "1"),)
    assert "u:p" not in repr(spec) and "credentials" in repr(spec)
    won = proxy_spec("http://u:p@proxy.test:3128", BasicAuth("v", "q"), None)
    assert won.authorization == BasicAuth("v", "q").encode()


@pytest.mark.parametrize(
    ("proxy", "auth", "error"),
    [
        ("http://[bad", None, InvalidURL),
        ("ftp://proxy.test", None, InvalidURL),
        ("http://", None, InvalidURL),
        ("http://proxy.test", ("u", "p"), ValueError),
    ],
)
def test_bad_proxy_arguments(proxy: str, auth: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        fixed_route(proxy, auth, None)


def test_bad_proxy_header_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid proxy header"):
        fixed_route("http://proxy.test", None, {"X-A": "1\r\nEvil: yes"})


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Host"])
def test_framing_headers_are_not_proxy_headers(name: str) -> None:
    """A Content-Length among proxy_headers would frame a forwarded request's streamed
    body (or the CONNECT's) apart from what is sent: the proxy would read the rest of
    it as the next request on a connection other requests share."""
    with pytest.raises(ValueError, match="frames its own"):
        fixed_route("http://proxy.test", None, {name: "5"})
    data = _route(http=ProxySpec(url="http://a.test:1", headers=((name, "5"),)))
    with pytest.raises(ConnectionFailure, match="frames its own"):
        hop_proxy(data, URL("http://site.test/"), 80)


def test_fixed_route_serves_both_schemes_and_is_kept() -> None:
    data = fixed_route("http://proxy.test:3128", None, None)
    assert fixed_route(URL("http://proxy.test:3128"), None, None) is data
    route = decode_proxy(data)
    assert route.http == route.https and route.no_proxy == ()


def _clear_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


async def test_env_route_as_urllib_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clear_env(monkeypatch)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine p2.test login n password m\n")
    monkeypatch.setenv("NETRC", str(netrc))
    env = EnvProxies()
    assert await env.route() == b""
    monkeypatch.setenv("HTTP_PROXY", "http://upper.test:1")
    monkeypatch.setenv("http_proxy", "http://u:p@p1.test:3128")  # lower case wins
    monkeypatch.setenv("HTTPS_PROXY", "http://p2.test:3129")
    monkeypatch.setenv("NO_PROXY", "localhost,.internal")
    route = decode_proxy(await env.route())
    assert route.http == ProxySpec(
        url="http://p1.test:3128", authorization=BasicAuth("u", "p").encode()
    )
    assert route.https == ProxySpec(
        url="http://p2.test:3129", authorization=BasicAuth("n", "m").encode()
    )
    assert route.no_proxy == ("localhost", ".internal")
    assert await env.route() is await env.route()  # unchanged: the same encoding


async def test_env_proxy_without_a_scheme_is_invalid_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp fails such a request with InvalidURL too (the proxy URL has no host)."""
    _clear_env(monkeypatch)
    monkeypatch.setenv("http_proxy", "proxy.test:3128")
    with pytest.raises(InvalidURL):
        await EnvProxies().route()


async def test_env_https_proxy_is_ignored_as_in_aiohttp(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _clear_env(monkeypatch)
    monkeypatch.setenv("https_proxy", "https://secure.test:443")
    route = decode_proxy(await EnvProxies().route())
    assert route.https is None
    assert "HTTPS proxies" in caplog.text


# -- the engine --------------------------------------------------------------------------


def _route(**kw: object) -> bytes:
    return encode_proxy(ProxyRoute(**kw))  # type: ignore[arg-type]


def test_hop_proxy_by_scheme_and_no_proxy() -> None:
    a = ProxySpec(url="http://a.test:1", authorization="Basic eA==")
    b = ProxySpec(url="https://b.test", headers=(("X-B", "1"),))
    data = _route(http=a, https=b, no_proxy=("skip.test",))
    http = hop_proxy(data, URL("http://site.test/"), 80)
    assert http is not None and (http.host, http.port, http.tls) == ("a.test", 1, False)
    assert http.head_headers == [("Proxy-Authorization", "Basic eA==")]
    https = hop_proxy(data, URL("https://site.test/"), 443)
    assert https is not None and (https.host, https.port, https.tls) == ("b.test", 443, True)
    assert https.key != http.key
    assert hop_proxy(data, URL("http://www.skip.test/"), 80) is None
    assert hop_proxy(_route(http=a), URL("https://site.test/"), 443) is None


@pytest.mark.parametrize(
    "spec",
    [
        ProxySpec(url="http://a.test\r\nX: y"),
        ProxySpec(url="socks5://a.test"),
        ProxySpec(url="http://a.test", authorization="Basic x\r\nEvil: 1"),
        ProxySpec(url="http://a.test", headers=(("Bad Name", "v"),)),
        ProxySpec(url="http://a.test", headers=(("X", "v\nw"),)),
        ProxySpec(url="http://user:secret@a.test:1"),  # credentials in a URL figures show
        ProxySpec(url="http://a.test:1/path"),
        ProxySpec(url="http://a.test:1?q=1"),
    ],
)
def test_engine_refuses_proxy_settings_that_could_add_a_line(spec: ProxySpec) -> None:
    with pytest.raises(ConnectionFailure) as info:
        hop_proxy(_route(http=spec), URL("http://site.test/"), 80)
    assert info.value.code == "protocol"
    assert "secret" not in str(info.value)


def test_figures_label_each_set_of_proxy_credentials_apart_without_showing_them() -> None:
    """Two workers' connections through one proxy with their own credentials are two
    entries of a pool's figures (not one overwriting the other), and no label shows a
    credential."""
    auth = [BasicAuth("alice", "s3cret").encode(), BasicAuth("bob", "hunter2").encode()]
    keys = [
        hop_proxy(_route(http=ProxySpec(url="http://p.test:3128", authorization=a)),
                  URL("http://site.test/"), 80)
        for a in (*auth, "")
    ]
    labels = [
        _label(("http", "site.test", 80, NO_TLS, proxy.key)) for proxy in keys if proxy
    ]
    assert len(set(labels)) == 3
    assert labels[2] == "http://site.test:80 via http://p.test:3128"
    for label in labels:
        assert label.startswith("http://site.test:80 via http://p.test:3128")
        for a in auth:
            assert a not in label and a.split()[1] not in label
        assert "s3cret" not in label and "hunter2" not in label


def test_engine_refuses_an_undecodable_route() -> None:
    with pytest.raises(ConnectionFailure):
        hop_proxy(b"\x01garbage", URL("http://site.test/"), 80)


def test_forwarded_head_is_in_absolute_form() -> None:
    url = URL("http://site.test:8080/a%20b?q=1")
    head = build_head(
        "GET", url, [("Proxy-Authorization", "Basic eA==")], None, False, False,
        target=absolute_target(url),
    )
    assert head.startswith(b"GET http://site.test:8080/a%20b?q=1 HTTP/1.1\r\n")
    assert b"Host: site.test:8080\r\n" in head and b"Proxy-Authorization: Basic eA==\r\n" in head
    assert build_head("GET", url, [], None, False, False).startswith(b"GET /a%20b?q=1 HTTP")
    assert absolute_target(URL("http://site.test")) == "http://site.test/"


def test_connect_head() -> None:
    proxy = hop_proxy(
        _route(https=ProxySpec(url="http://p.test", authorization="Basic eA==",
                               headers=(("X-A", "1"),))),
        URL("https://site.test/"), 443,
    )
    assert proxy is not None
    assert _connect_head(proxy, "site.test", 443) == (
        b"CONNECT site.test:443 HTTP/1.1\r\nHost: site.test:443\r\nX-A: 1\r\n"
        b"Proxy-Authorization: Basic eA==\r\n\r\n"
    )
    assert _connect_head(proxy, "::1", 8443).startswith(b"CONNECT [::1]:8443 HTTP/1.1\r\n")


def test_connect_answer_parsing() -> None:
    status, answer = _parse_answer(
        b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n"
    )
    assert status == 407 and answer.reason == "Proxy Authentication Required"
    assert answer.headers == [(b"Proxy-Authenticate", b"Basic")]
    assert _parse_answer(b"HTTP/1.1 200 Connection established\r\n\r\n")[0] == 200
    with pytest.raises(ConnectionFailure):
        _parse_answer(b"NOT HTTP\r\n\r\n")
    many = b"".join(b"X-%d: v\r\n" % i for i in range(200))
    with pytest.raises(ConnectionFailure):
        _parse_answer(b"HTTP/1.1 200 OK\r\n" + many + b"\r\n")


class _Transport:
    """What ``_ConnectAnswer`` asks of its transport."""

    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False


async def test_connect_answer_is_bounded() -> None:
    reader = _ConnectAnswer(asyncio.get_running_loop(), _Transport())  # type: ignore[arg-type]
    reader.data_received(b"HTTP/1.1 200 OK\r\n")
    reader.data_received(b"X: " + b"a" * MAX_CONNECT_HEAD)
    assert reader.done.done()
    with pytest.raises(ConnectionFailure, match="over"):
        reader.done.result()
    reader = _ConnectAnswer(asyncio.get_running_loop(), _Transport())  # type: ignore[arg-type]
    reader.data_received(b"HTTP/1.1 200 OK\r\n\r")
    reader.data_received(b"\n")
    assert reader.done.result() == b"HTTP/1.1 200 OK\r\n\r\n"


async def test_connect_answer_stops_reading_at_the_end_of_its_head() -> None:
    """Bytes after the answer stay in the socket for TLS (which fails on them): none is
    dropped, and none reaches the connection before start_tls takes the transport."""
    transport = _Transport()
    reader = _ConnectAnswer(asyncio.get_running_loop(), transport)  # type: ignore[arg-type]
    for byte in b"HTTP/1.1 200 OK\r\nX: 1\r\n\r\n":  # one byte at a time
        assert transport.reading
        reader.data_received(bytes([byte]))
    assert not transport.reading
    assert reader.done.result() == b"HTTP/1.1 200 OK\r\nX: 1\r\n\r\n"
    reader.data_received(b"\x16\x03")  # came in before the pause took effect
    assert not reader.buf.endswith(b"\r\n\r\n")  # _tunnel refuses such a tunnel


async def test_a_proxied_connections_repr_shows_no_credential() -> None:
    auth = BasicAuth("alice", "s3cret").encode()
    proxy = hop_proxy(
        _route(http=ProxySpec(url="http://p.test:3128", authorization=auth)),
        URL("http://site.test/"), 80,
    )
    assert proxy is not None
    conn = HTTP1Connection(asyncio.get_running_loop())
    conn.key = ("http", "site.test", 80, NO_TLS, proxy.key)
    text = repr(conn)
    assert "site.test:80 via a proxy" in text
    assert auth.split()[1] not in text
    conn.key = ("http", "site.test", 80, NO_TLS, b"")
    assert "site.test" in repr(conn)


async def test_connect_answer_skips_informational_answers_as_aiohttp() -> None:
    """aiohttp's ClientResponse.start reads past 1xx answers (but 101) to the final one;
    the 1xx count against the bound."""
    transport = _Transport()
    reader = _ConnectAnswer(asyncio.get_running_loop(), transport)  # type: ignore[arg-type]
    reader.data_received(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n")
    reader.data_received(b"\r\nHTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    assert reader.done.result() == b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"
    reader = _ConnectAnswer(asyncio.get_running_loop(), _Transport())  # type: ignore[arg-type]
    reader.data_received(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert reader.done.result().startswith(b"HTTP/1.1 101")  # final (and refused)
    reader = _ConnectAnswer(asyncio.get_running_loop(), _Transport())  # type: ignore[arg-type]
    for _ in range(MAX_CONNECT_HEAD // 16):
        reader.data_received(b"HTTP/1.1 100 \r\n\r\n")
    with pytest.raises(ConnectionFailure, match="over"):
        reader.done.result()


async def test_a_proxied_connection_never_shows_its_proxy_credentials() -> None:
    """asyncio's exception handler logs a protocol's repr (a fatal TLS error, say): a
    connection's key holds its proxy's encoded spec, credentials and headers included."""
    spec = ProxySpec(
        url="http://127.0.0.1:3128",
        authorization="Basic dXNlcjpzZWNyZXQ=",
        headers=(("X-Token", "hunter2"),),
    )
    conn = HTTP1Connection(asyncio.get_running_loop())
    proxy = hop_proxy(encode_proxy(ProxyRoute(https=spec)), URL("https://example.com/"), 443)
    assert proxy is not None
    conn.key = ("https", "example.com", 443, NO_TLS, proxy.key)
    shown = repr(conn)
    assert "dXNlcjpzZWNyZXQ" not in shown and "hunter2" not in shown
    assert "https://example.com:443" in shown and "proxy" in shown
