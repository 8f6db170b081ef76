"""Requests through a real forward proxy (proxy.py, ``tests/integration/proxy_server.py``),
in both modes: plain http forwarded in absolute form, https through a CONNECT tunnel,
basic auth (argument, URL, netrc), the proxy's errors, trust_env and NO_PROXY, and the
pool keeping proxied and direct connections apart.

The https origins and the https proxy use the test CA, trusted through the sessions'
``TCPConnector(ssl=...)`` (``ca_trusting_session``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from broker import connector
from broker.proxy import hop_proxy
from broker.registry import Registry
from shared.specs import (
    PoolSpec,
    ProxyRoute,
    ProxySpec,
    TlsSpec,
    encode_pool,
    encode_proxy,
    encode_tls,
    tls_id,
)
from tests.conftest import read_request_head
from tests.integration.proxy_server import ProxyServer
from tests.tls_certs import Certs, fingerprint_of, server_context
from worker_client import (
    BasicAuth,
    ClientConnectionError,
    ClientConnectorCertificateError,
    ClientHandlerType,
    ClientHttpProxyError,
    ClientProxyConnectionError,
    ClientRequest,
    ClientResponse,
    ClientSession,
    ClientTimeout,
    ConnectionTimeoutError,
    Fingerprint,
    InvalidURL,
    ServerFingerprintMismatch,
    TCPConnector,
    create_default_context,
    encode_basic_auth,
)

USER, PASSWORD = "user", "pass"

# aiohttp 3.14 deprecates proxy_auth= and auth= (test_proxy_auth_is_deprecated_as_in_aiohttp
# checks the warning); these tests are about where the credentials go.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The '(proxy_)?auth' parameter is deprecated:DeprecationWarning"
)


@pytest.fixture(scope="module")
def open_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    proxy = ProxyServer.start(tmp_path_factory.mktemp("open_proxy"))
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def auth_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    proxy = ProxyServer.start(tmp_path_factory.mktemp("auth_proxy"), f"{USER}:{PASSWORD}")
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def tls_proxy(tmp_path_factory: pytest.TempPathFactory, tls_certs: Certs) -> Iterator[ProxyServer]:
    """An https:// proxy (TLS to the proxy itself), with the test CA's certificate."""
    proxy = ProxyServer.start(
        tmp_path_factory.mktemp("tls_proxy"), tls=(tls_certs.server, tls_certs.server_key)
    )
    yield proxy
    proxy.stop()


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (bound, never listened, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No proxy or netrc of the machine's leaks into a test."""
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "ws_proxy", "wss_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    empty = tmp_path / "empty_netrc"
    empty.write_text("")
    monkeypatch.setenv("NETRC", str(empty))


def _echo_app(proxies: list[ProxyServer], close: bool = False) -> web.Application:
    """Answers what the origin saw: the Via header, a few others, its peer's port, and
    which of ``proxies`` that peer is a connection of ("through", "" for none).
    ``close``: each connection ends with its response (the https origin: a TLS
    connection still open when the test's loop closes would leak its socket)."""

    async def echo(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        through = [p.url for p in proxies if peer and peer[1] in p.sockets()]
        resp = web.json_response(
            {
                "via": request.headers.get("Via", ""),
                "proxy_authorization": request.headers.get("Proxy-Authorization", ""),
                "authorization": request.headers.get("Authorization", ""),
                "note": request.headers.get("X-Proxy-Note", ""),
                "path": request.path_qs,
                "peer": peer[1] if peer else 0,
                "through": through[0] if through else "",
            }
        )
        if close:  # the whole answer out, then the socket closed now, not after a TLS goodbye
            resp.force_close()
            await resp.prepare(request)
            await resp.write_eof()
            assert request.transport is not None
            request.transport.abort()
        return resp

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/{tail:.*}", echo)
    return app


@pytest.fixture
async def origin(
    serve_app: Callable[..., Any],
    open_proxy: ProxyServer,
    auth_proxy: ProxyServer,
    tls_proxy: ProxyServer,
) -> str:
    return str(await serve_app(_echo_app([open_proxy, auth_proxy, tls_proxy])))


@pytest.fixture
async def https_origin(
    serve_app: Callable[..., Any],
    tls_certs: Certs,
    open_proxy: ProxyServer,
    auth_proxy: ProxyServer,
    tls_proxy: ProxyServer,
) -> str:
    ctx = server_context(tls_certs.server, tls_certs.server_key)
    app = _echo_app([open_proxy, auth_proxy, tls_proxy], close=True)
    return str(await serve_app(app, ssl_context=ctx, host="localhost"))


@pytest.fixture
def ca_trusting_session(
    make_session: Callable[..., ClientSession], tls_certs: Certs
) -> Callable[..., ClientSession]:
    """Sessions whose connector verifies https origins (and https proxies) against the
    test CA: ``TCPConnector(ssl=create_default_context(cafile=...))``."""
    ctx = create_default_context(cafile=str(tls_certs.ca))

    def factory(**kwargs: Any) -> ClientSession:
        return make_session(connector=TCPConnector(ssl=ctx), **kwargs)

    return factory


# -- plain http through the proxy ---------------------------------------------------------


async def test_http_origin_goes_through_the_proxy_in_absolute_form(
    origin: str,
    make_session: Callable[..., ClientSession],
    open_proxy: ProxyServer,
) -> None:
    session = make_session()
    async with session.get(
        origin + "/path?q=1", proxy=open_proxy.url, proxy_headers={"X-Proxy-Note": "hi"}
    ) as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert "proxy.py" in seen["via"]
    assert seen["path"] == "/path?q=1"
    assert seen["note"] == "hi"  # proxy_headers went to the proxy, which passed them on
    # Without proxy=, the same session goes direct.
    async with session.get(origin + "/") as resp:
        assert (await resp.json())["via"] == ""


async def test_session_proxy_is_the_default_and_a_request_may_name_another(
    origin: str,
    make_session: Callable[..., ClientSession],
    open_proxy: ProxyServer,
    auth_proxy: ProxyServer,
) -> None:
    session = make_session(proxy=open_proxy.url)
    for _ in range(2):  # the second on the same connection to the proxy
        async with session.get(origin + "/") as resp:
            assert (await resp.json())["through"] == open_proxy.url
    async with session.get(origin + "/", proxy=auth_proxy.url) as resp:
        assert resp.status == 407  # plain http: the proxy's answer is the response
    authed = make_session(proxy=auth_proxy.url, proxy_auth=BasicAuth(USER, PASSWORD))
    async with authed.get(origin + "/") as resp:
        assert (await resp.json())["through"] == auth_proxy.url
    async with authed.get(origin + "/", proxy_auth=BasicAuth(USER, "wrong")) as resp:
        assert resp.status == 407  # the request's proxy_auth wins over the session's


async def test_basic_auth_from_proxy_auth_or_the_proxy_url(
    origin: str,
    make_session: Callable[..., ClientSession],
    auth_proxy: ProxyServer,
) -> None:
    session = make_session()
    async with session.get(
        origin + "/", proxy=auth_proxy.url, proxy_auth=BasicAuth(USER, PASSWORD)
    ) as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert "proxy.py" in seen["via"] and seen["authorization"] == ""
    with_creds = auth_proxy.url.replace("http://", f"http://{USER}:{PASSWORD}@")
    async with session.get(origin + "/", proxy=with_creds) as resp:
        assert resp.status == 200
    # proxy_auth wins over the URL's credentials, as in aiohttp
    bad = auth_proxy.url.replace("http://", f"http://{USER}:wrong@")
    async with session.get(
        origin + "/", proxy=bad, proxy_auth=BasicAuth(USER, PASSWORD)
    ) as resp:
        assert resp.status == 200
    async with session.get(origin + "/", proxy=bad) as resp:
        assert resp.status == 407
        assert resp.headers["Proxy-Authenticate"].startswith("Basic")


# -- https through a CONNECT tunnel ---------------------------------------------------------


async def test_https_origin_goes_through_a_connect_tunnel(
    https_origin: str,
    ca_trusting_session: Callable[..., ClientSession],
    open_proxy: ProxyServer,
) -> None:
    session = ca_trusting_session(proxy=open_proxy.url)
    for _ in range(2):
        async with session.get(https_origin + "/secret", proxy_headers={"X-Proxy-Note": "x"}) as r:
            assert r.status == 200
            seen = await r.json()
            assert seen["through"] == open_proxy.url  # the origin's peer is the proxy
    assert seen["via"] == "" and seen["note"] == ""  # the tunnel carries our bytes only
    assert seen["path"] == "/secret"


async def test_https_through_an_authenticating_proxy(
    https_origin: str,
    ca_trusting_session: Callable[..., ClientSession],
    auth_proxy: ProxyServer,
) -> None:
    session = ca_trusting_session()
    async with session.get(
        https_origin + "/", proxy=auth_proxy.url, proxy_auth=BasicAuth(USER, PASSWORD)
    ) as resp:
        seen = await resp.json()
    assert seen["through"] == auth_proxy.url
    assert seen["proxy_authorization"] == ""  # nothing of it inside the tunnel
    with pytest.raises(ClientHttpProxyError) as info:
        await session.get(
            https_origin + "/", proxy=auth_proxy.url, proxy_auth=BasicAuth(USER, "wrong")
        )
    err = info.value
    assert err.status == 407
    assert err.message == "Proxy Authentication Required"
    # aiohttp's request_info is the CONNECT request's, without its credentials
    assert err.request_info.method == "CONNECT"
    assert err.request_info.url == URL(https_origin + "/")
    assert "Proxy-Authorization" not in err.request_info.headers
    assert err.headers is not None and err.headers["Proxy-Authenticate"].startswith("Basic")


async def test_https_proxy_and_tls_in_tls(
    https_origin: str,
    origin: str,
    ca_trusting_session: Callable[..., ClientSession],
    tls_proxy: ProxyServer,
) -> None:
    """An https:// proxy: TLS to the proxy, then for an https origin TLS inside it (which
    asyncio has from Python 3.11: on 3.10 a clear refusal, as aiohttp's)."""
    session = ca_trusting_session(proxy=tls_proxy.url)
    if sys.version_info < (3, 11):
        with pytest.raises(ClientConnectionError, match="needs TLS in TLS"):
            await session.get(https_origin + "/tls-in-tls")
        return
    async with session.get(https_origin + "/tls-in-tls") as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert seen["path"] == "/tls-in-tls" and seen["through"] == tls_proxy.url
    async with session.get(origin + "/plain") as resp:
        seen = await resp.json()
    assert "proxy.py" in seen["via"] and seen["path"] == "/plain"


async def test_middlewares_see_the_proxy_and_may_change_it(
    origin: str, make_session: Callable[..., ClientSession], open_proxy: ProxyServer
) -> None:
    seen_proxies: list[Any] = []

    async def direct(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        seen_proxies.append((req.proxy, req.proxy_auth, req.proxy_headers))
        req.proxy = None
        return await handler(req)

    async def proxied(req: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        req.proxy = URL(open_proxy.url)
        return await handler(req)

    session = make_session(proxy=open_proxy.url, proxy_auth=BasicAuth("a", "b"))
    async with session.get(origin + "/", middlewares=(direct,)) as resp:
        assert (await resp.json())["through"] == ""
    assert seen_proxies == [(URL(open_proxy.url), BasicAuth("a", "b"), None)]
    async with make_session().get(origin + "/", middlewares=(proxied,)) as resp:
        assert (await resp.json())["through"] == open_proxy.url
    async with session.get(origin + "/", middlewares=(proxied,)) as resp:  # unchanged
        assert (await resp.json())["through"] == open_proxy.url


# -- failures -----------------------------------------------------------------------------


async def test_unreachable_proxy_is_a_proxy_connection_error(
    origin: str,
    make_session: Callable[..., ClientSession],
    unused_port: int,
) -> None:
    session = make_session()
    for url in (origin + "/", "https://localhost:1/"):
        with pytest.raises(ClientProxyConnectionError) as info:
            await session.get(url, proxy=f"http://127.0.0.1:{unused_port}")
        assert info.value.host == "127.0.0.1" and info.value.port == unused_port


async def test_bad_proxy_settings_are_aiohttps_errors(
    origin: str,
    make_session: Callable[..., ClientSession],
) -> None:
    session = make_session()
    with pytest.raises(InvalidURL):
        await session.get(origin, proxy="http://[bad")
    with pytest.raises(InvalidURL):
        await session.get(origin, proxy="socks5://127.0.0.1:1080")
    with pytest.raises(ValueError, match=r"proxy_auth must be None or BasicAuth\(\) tuple"):
        await session.get(origin, proxy="http://127.0.0.1:1", proxy_auth=("u", "p"))


async def test_an_untrusted_origin_through_the_tunnel_is_a_certificate_error(
    https_origin: str, make_session: Callable[..., ClientSession], open_proxy: ProxyServer
) -> None:
    """TLS to the origin inside the tunnel is verified: the test CA is not trusted here."""
    with pytest.raises(ClientConnectorCertificateError) as info:
        await make_session().get(https_origin + "/", proxy=open_proxy.url)
    assert info.value.host == "localhost"
    assert isinstance(info.value.certificate_error, ssl.SSLCertVerificationError)


async def test_an_untrusted_https_proxy_is_a_certificate_error(
    origin: str, make_session: Callable[..., ClientSession], tls_proxy: ProxyServer
) -> None:
    """TLS to an https:// proxy is verified too (the test CA is not trusted here)."""
    with pytest.raises(ClientConnectorCertificateError) as info:
        await make_session().get(origin + "/", proxy=tls_proxy.url)
    assert (info.value.host, info.value.port) == ("127.0.0.1", tls_proxy.port)


async def test_a_pin_is_checked_on_an_https_proxy_when_it_is_the_only_tls(
    origin: str,
    make_session: Callable[..., ClientSession],
    tls_proxy: ProxyServer,
    tls_certs: Certs,
) -> None:
    """ssl=Fingerprint(...) means an unverified context: for a plain-http origin the
    https:// proxy is the only TLS peer, so the pin is checked on it (as aiohttp checks
    the request's ssl= on its proxy request), before any credential goes to it."""
    session = make_session()
    wrong = Fingerprint(b"\x01" * 32)
    with pytest.raises(ServerFingerprintMismatch) as info:
        await session.get(
            origin + "/", proxy=tls_proxy.url, proxy_auth=BasicAuth(USER, PASSWORD), ssl=wrong
        )
    assert info.value.got == fingerprint_of(tls_certs.server)
    assert info.value.port == tls_proxy.port
    right = Fingerprint(fingerprint_of(tls_certs.server))
    async with session.get(origin + "/pinned", proxy=tls_proxy.url, ssl=right) as resp:
        seen = await resp.json()
    assert seen["path"] == "/pinned" and "proxy.py" in seen["via"]


async def test_a_proxy_silent_after_connect_times_out_and_is_closed(
    make_session: Callable[..., ClientSession], raw_server: Callable[..., Any]
) -> None:
    """The wait for the answer to CONNECT ends at the connect timeout; the connection
    to the proxy is closed then."""
    heads: list[bytes] = []
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.read()  # until the client closes
        closed.set()

    proxy = await raw_server(silent)
    session = make_session()
    with pytest.raises(ConnectionTimeoutError):
        await session.get(
            "https://origin.test/", proxy=proxy, timeout=ClientTimeout(total=30, connect=0.5)
        )
    await asyncio.wait_for(closed.wait(), 10)
    assert heads[0].startswith(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n")


async def test_the_tls_handshake_in_the_tunnel_is_bounded_by_sock_connect(
    make_session: Callable[..., ClientSession], raw_server: Callable[..., Any]
) -> None:
    """aiohttp's _start_tls_connection: the handshake to the origin inside the tunnel
    ends at sock_connect (a proxy that says 200 and then nothing)."""
    closed = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        while await reader.read(65536):  # the ClientHello, unanswered
            pass
        closed.set()

    proxy = await raw_server(mute)
    session = make_session()
    with pytest.raises(ConnectionTimeoutError):
        await session.get(
            "https://origin.test/", proxy=proxy, timeout=ClientTimeout(total=20, sock_connect=0.3)
        )
    await asyncio.wait_for(closed.wait(), 10)


async def test_a_tunnel_takes_the_pools_ssl_shutdown_timeout(
    https_origin: str, open_proxy: ProxyServer, tls_certs: Certs
) -> None:
    """Below the session: TLS inside the tunnel gets the pool's ssl_shutdown_timeout (the
    close_notify's grace, aiohttp 3.14), as a direct TLS connection does."""
    registry = Registry(asyncio.get_running_loop())
    pool = registry.pool_for(encode_pool(PoolSpec(ssl_shutdown_timeout=2.5)))
    ca = ssl.PEM_cert_to_DER_cert(tls_certs.ca.read_text())
    tls = TlsSpec(system_store=False, ca_certs=(ca,))
    proxy = hop_proxy(
        encode_proxy(ProxyRoute(https=ProxySpec(url=open_proxy.url))),
        URL(https_origin), URL(https_origin).port or 443,
    )
    assert proxy is not None
    url = URL(https_origin)
    key = ("https", url.raw_host, url.port, (tls_id(encode_tls(tls)), b"", ""), proxy.key)
    conn = await pool.acquire(key, ClientTimeout(connect=10), None, tls)  # type: ignore[arg-type]
    try:
        assert conn.transport is not None and conn.transport.get_extra_info("ssl_object")
        if sys.version_info >= (3, 11):
            assert conn.transport._ssl_protocol._ssl_shutdown_timeout == 2.5  # type: ignore[attr-defined]
    finally:
        conn.abort()
        pool.give_back(conn)
        await registry.close()


async def test_a_request_cancelled_while_waiting_for_connect_closes_the_connection(
    make_session: Callable[..., ClientSession], raw_server: Callable[..., Any]
) -> None:
    got_connect = asyncio.Event()
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        got_connect.set()
        await reader.read()
        closed.set()

    proxy = await raw_server(silent)
    session = make_session()
    task = asyncio.ensure_future(session.get("https://origin.test/", proxy=proxy))
    await asyncio.wait_for(got_connect.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(closed.wait(), 10)


# -- the pool -------------------------------------------------------------------------


async def test_proxied_and_direct_requests_never_share_a_connection(
    origin: str,
    make_session: Callable[..., ClientSession],
    open_proxy: ProxyServer,
) -> None:
    session = make_session()

    async def peer(**kw: Any) -> tuple[int, str]:
        async with session.get(origin + "/", **kw) as resp:
            seen = await resp.json()
            return int(seen["peer"]), seen["through"]

    direct = await peer()
    assert direct[1] == ""
    a = await peer(proxy=open_proxy.url, proxy_auth=BasicAuth("a", "1"))
    assert a[1] == open_proxy.url
    assert await peer() == direct  # the direct connection, reused
    assert await peer(proxy=open_proxy.url, proxy_auth=BasicAuth("a", "1")) == a
    b = await peer(proxy=open_proxy.url, proxy_auth=BasicAuth("b", "2"))
    assert b[1] == open_proxy.url
    assert len({direct[0], a[0], b[0]}) == 3  # other credentials: another connection


# -- trust_env ----------------------------------------------------------------------------


async def test_trust_env_takes_the_proxy_from_the_environment_and_no_proxy_bypasses_it(
    origin: str,
    make_session: Callable[..., ClientSession],
    open_proxy: ProxyServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", open_proxy.url)
    plain = make_session()
    async with plain.get(origin + "/") as resp:
        assert (await resp.json())["via"] == ""  # trust_env=False: the environment unread
    session = make_session(trust_env=True)
    assert session.trust_env
    async with session.get(origin + "/") as resp:
        assert "proxy.py" in (await resp.json())["via"]
    monkeypatch.setenv("no_proxy", "localhost, 127.0.0.1")
    async with session.get(origin + "/") as resp:
        seen = await resp.json()
    assert seen["via"] == "" and seen["through"] == ""
    monkeypatch.setenv("no_proxy", "localhost")  # per host: 127.0.0.1 goes through again
    async with session.get(origin + "/") as resp:
        assert (await resp.json())["through"] == open_proxy.url


async def test_trust_env_proxy_credentials_from_netrc(
    origin: str,
    make_session: Callable[..., ClientSession],
    auth_proxy: ProxyServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("http_proxy", auth_proxy.url)
    session = make_session(trust_env=True)
    async with session.get(origin + "/") as resp:
        assert resp.status == 407
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    monkeypatch.setenv("NETRC", str(netrc))
    async with session.get(origin + "/") as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert "proxy.py" in seen["via"]
    # trust_env also gives the request itself its host's netrc entry (aiohttp 3.14)
    assert seen["authorization"] == BasicAuth(USER, PASSWORD).encode()


async def test_trust_env_netrc_auth_for_the_origin(
    origin: str,
    make_session: Callable[..., ClientSession],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password wonder\n")
    monkeypatch.setenv("NETRC", str(netrc))
    async with make_session(trust_env=True).get(origin + "/") as resp:
        assert (await resp.json())["authorization"] == BasicAuth("alice", "wonder").encode()
    async with make_session(trust_env=True).get(
        origin + "/", auth=BasicAuth("bob", "x")
    ) as resp:
        assert (await resp.json())["authorization"] == BasicAuth("bob", "x").encode()
    async with make_session().get(origin + "/") as resp:
        assert (await resp.json())["authorization"] == ""


async def test_trust_env_proxy_is_chosen_per_hop_with_its_own_credentials(
    https_origin: str,
    origin: str,
    ca_trusting_session: Callable[..., ClientSession],
    auth_proxy: ProxyServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiohttp's test_proxy_from_env_auth_scoped_to_redirect_selected_proxy: a redirect
    from http to https goes through https_proxy, without http_proxy's credentials."""
    with_creds = auth_proxy.url.replace("http://", f"http://{USER}:{PASSWORD}@")
    monkeypatch.setenv("http_proxy", with_creds)
    monkeypatch.setenv("https_proxy", auth_proxy.url)
    session = ca_trusting_session(trust_env=True)
    async with session.get(origin + "/direct") as resp:
        assert (await resp.json())["through"] == auth_proxy.url
    with pytest.raises(ClientHttpProxyError) as info:
        await session.get(origin + "/redirect", params={"to": https_origin + "/to"})
    assert info.value.status == 407
    assert info.value.request_info.url == URL(https_origin + "/to")  # the hop's, not the first
    monkeypatch.setenv("https_proxy", with_creds)
    async with session.get(origin + "/redirect", params={"to": https_origin + "/x"}) as resp:
        seen = await resp.json()
    assert seen["path"] == "/x" and seen["through"] == auth_proxy.url
    assert len(resp.history) == 1


async def test_trust_env_https_proxy_tunnel(
    https_origin: str,
    ca_trusting_session: Callable[..., ClientSession],
    open_proxy: ProxyServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", open_proxy.url)
    session = ca_trusting_session(trust_env=True)
    async with session.get(https_origin + "/") as resp:
        assert (await resp.json())["through"] == open_proxy.url
    monkeypatch.setenv("NO_PROXY", "localhost")
    async with session.get(https_origin + "/") as resp:
        assert (await resp.json())["through"] == ""


@pytest.mark.filterwarnings("error")
async def test_proxy_auth_is_deprecated_as_in_aiohttp(
    origin: str, make_session: Callable[..., ClientSession], auth_proxy: ProxyServer
) -> None:
    with pytest.warns(DeprecationWarning, match="'proxy_auth' parameter is deprecated"):
        session = make_session(proxy=auth_proxy.url, proxy_auth=BasicAuth(USER, PASSWORD))
    with pytest.warns(DeprecationWarning, match="'proxy_auth' parameter is deprecated"):
        resp = await session.get(origin + "/", proxy_auth=BasicAuth(USER, PASSWORD))
    async with resp:
        assert resp.status == 200
    # what aiohttp suggests instead works as well
    value = encode_basic_auth(USER, PASSWORD)
    plain = make_session()
    async with plain.get(
        origin + "/", proxy=auth_proxy.url, proxy_headers={"Proxy-Authorization": value}
    ) as resp:
        assert resp.status == 200


async def test_a_pinned_fingerprint_is_checked_on_an_https_proxy_too(
    origin: str,
    https_origin: str,
    make_session: Callable[..., ClientSession],
    tls_proxy: ProxyServer,
    tls_certs: Certs,
) -> None:
    """As aiohttp's proxy request takes the request's ssl: ssl=Fingerprint(...) means no
    verification, so the pin is what guards the leg to the proxy (and its credentials).
    The test proxy and the https origin share a certificate: the right pin passes both."""
    session = make_session(proxy=tls_proxy.url)
    wrong = Fingerprint(bytes(32))
    tls_in_tls = sys.version_info >= (3, 11)  # (3.10 refuses it: test_https_proxy_and_tls_in_tls)
    for url in (origin + "/", https_origin + "/")[: 2 if tls_in_tls else 1]:
        with pytest.raises(ServerFingerprintMismatch) as info:
            await session.get(url, ssl=wrong)
        assert (info.value.host, info.value.port) == ("127.0.0.1", tls_proxy.port)
    right = Fingerprint(fingerprint_of(tls_certs.server))
    for url in (origin + "/plain", https_origin + "/tls")[: 2 if tls_in_tls else 1]:
        async with session.get(url, ssl=right) as resp:
            assert resp.status == 200 and (await resp.json())["through"] == tls_proxy.url


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio takes the grace from 3.11")
@pytest.mark.parametrize("through", ["tunnel", "https-proxy"])
async def test_ssl_shutdown_timeout_reaches_tls_through_a_proxy(
    through: str,
    origin: str,
    https_origin: str,
    open_proxy: ProxyServer,
    tls_proxy: ProxyServer,
    tls_certs: Certs,
) -> None:
    """aiohttp 3.14 gives the close_notify grace to the TLS inside a tunnel and to an
    https:// proxy's TLS too, not only to direct connections."""
    tunnel = through == "tunnel"
    proxy_server, url = (open_proxy, URL(https_origin)) if tunnel else (tls_proxy, URL(origin))
    assert url.host is not None and url.port is not None
    registry = Registry(asyncio.get_running_loop())
    pool = registry.pool_for(encode_pool(PoolSpec(ssl_shutdown_timeout=2.5)))
    ca = ssl.PEM_cert_to_DER_cert(tls_certs.ca.read_text())
    spec = TlsSpec(system_store=False, ca_certs=(ca,))
    proxy_spec = ProxySpec(url=proxy_server.url)
    proxy = hop_proxy(encode_proxy(ProxyRoute(http=proxy_spec, https=proxy_spec)), url, url.port)
    assert proxy is not None
    key = (url.scheme, url.host, url.port, (tls_id(encode_tls(spec)), b"", ""), proxy.key)
    conn = await pool.acquire(key, ClientTimeout(total=20, connect=10), None, spec)
    try:
        assert conn.transport is not None
        grace = conn.transport._ssl_protocol._ssl_shutdown_timeout  # type: ignore[attr-defined]
        assert grace == 2.5
    finally:
        conn.abort()
        await registry.close()


@pytest.mark.parametrize("mode", ["embedded"])  # the pool of the test's own process
@pytest.mark.parametrize("by", ["pool_close", "close_limit"])
async def test_a_tls_close_its_peer_never_answers_ends_with_the_pool(
    by: str,
    monkeypatch: pytest.MonkeyPatch,
    https_origin: str,
    raw_server: Callable[..., Any],
    ca_trusting_session: Callable[..., ClientSession],
) -> None:
    """A tunnel whose proxy keeps our side open after the origin left: the TLS close we
    begin when the origin's ``Connection: close`` answer ends the exchange gets no
    close_notify back, nor an end of stream. Closing the session (its pool) still closes
    that connection's socket, before it returns: none outlives the pool (3.10's TLS waits
    for the peer without end, 3.11's for 30 s; past the test's loop, a ResourceWarning
    blamed on whichever test collects the socket). While the pool lives, the socket is
    aborted after ``CLOSE_LIMIT`` (made short here): a long-lived broker on 3.10 would
    keep it for ever."""
    if by == "close_limit":
        monkeypatch.setattr(connector, "CLOSE_LIMIT", 0.05)
    client_left: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def lazy_tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = (await read_request_head(reader)).split()[1]
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", int(target.rsplit(b":", 1)[1])
        )
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def client_to_origin() -> None:
            try:
                while data := await reader.read(65536):
                    if not up_writer.is_closing():
                        up_writer.write(data)
            finally:
                if not client_left.done():
                    client_left.set_result(None)

        async def origin_to_client() -> None:  # the origin leaving is not passed on
            while data := await up_reader.read(65536):
                writer.write(data)
            up_writer.close()

        await asyncio.gather(client_to_origin(), origin_to_client())

    proxy = await raw_server(lazy_tunnel)
    session = ca_trusting_session(proxy=proxy)
    async with session.get(https_origin + "/") as resp:
        assert resp.status == 200 and resp.headers["Connection"] == "close"
        await resp.read()
    if by == "pool_close":
        assert not client_left.done()
        await session.close()
    await asyncio.wait_for(client_left, 5)
    await session.close()
