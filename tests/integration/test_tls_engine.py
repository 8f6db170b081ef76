"""TLS in the engine, in both modes, below the session: requests built by hand with a
``TlsSpec`` opened on the transport (``open_tls``), against real TLS servers on loopback
with the test certificates. The server counts its connections (each one a handshake) and
reports what it saw of each: ALPN, SNI, the client's certificate."""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from aiohttp import web

from broker.connector import Pool
from broker.http1 import HTTP1Connection
from broker.registry import Registry
from shared.messages import End, ErrorFrame, Failure, Head, Request, TlsOpen
from shared.specs import (
    UNVERIFIED_TLS,
    ClientTimeout,
    PoolSpec,
    TlsSpec,
    encode_pool,
    encode_tls,
    tls_id,
)
from tests.tls_certs import CLIENT_KEY_PASSWORD, Certs, fingerprint_of, server_context
from worker_client.handle import StreamHandle
from worker_client.transport import Transport, get_transport, release_transport

from .raw_worker import RawWorker, raw_workers  # noqa: F401  (the fixture)


class Failed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class Server(NamedTuple):
    url: str
    conns: list[Any]  # one transport per connection the server accepted
    sni: list[str | None]  # the SNI of each handshake


def _der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def trusting(certs: Certs, **kw: Any) -> TlsSpec:
    """Verified against the test CA only (as ``create_default_context(cafile=ca)``)."""
    return TlsSpec(system_store=False, ca_certs=(_der(certs.ca),), **kw)


@pytest.fixture
async def tls_server(
    serve_app: Callable[..., Awaitable[str]], tls_certs: Certs
) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Aborts its connections at the end: the broker keeps its own open, and a server's
    graceful close would wait for their close_notify past the test's loop."""
    servers: list[Server] = []

    async def start(
        cert: Path | None = None,
        key: Path | None = None,
        *,
        client_ca: Path | None = None,
        host: str = "127.0.0.1",
    ) -> Server:
        ctx = server_context(
            cert or tls_certs.server, key or tls_certs.server_key, client_ca=client_ca
        )
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        sni: list[str | None] = []

        def on_sni(obj: Any, name: str | None, c: ssl.SSLContext) -> None:
            sni.append(name)

        ctx.sni_callback = on_sni
        conns: list[Any] = []

        async def handler(request: web.Request) -> web.Response:
            t = request.transport
            if not any(t is c for c in conns):
                conns.append(t)
            sslobj = t.get_extra_info("ssl_object")
            peer = sslobj.getpeercert()
            return web.json_response(
                {
                    "conn": next(i for i, c in enumerate(conns) if c is t),
                    "alpn": sslobj.selected_alpn_protocol(),
                    "client": dict(x[0] for x in peer["subject"])["commonName"] if peer else None,
                }
            )

        app = web.Application()
        app.router.add_get("/", handler)
        servers.append(Server(await serve_app(app, ssl_context=ctx, host=host), conns, sni))
        return servers[-1]

    yield start
    for server in servers:
        for t in server.conns:
            t.abort()


@pytest.fixture
async def transport(broker_address: str | None, serve_app: Any) -> AsyncIterator[Transport]:
    """Closed before the servers (``serve_app``): a server closing first would wait for
    our close_notify past the test's loop."""
    t = await get_transport(broker_address)
    yield t
    await release_transport(t)


async def fetch(
    transport: Transport,
    url: str,
    spec: TlsSpec | None = None,
    *,
    open_spec: bool = True,
    **fields: Any,
) -> dict[str, Any]:
    """GET ``url`` under ``spec`` (None: the default); the JSON answer, or raises
    ``Failed`` with the broker's Failure."""
    tls = b""
    if spec is not None:
        tls = tls_id(encode_tls(spec))
        if open_spec and tls not in transport.tls_open:
            transport.open_tls(tls, spec)
    sid = transport.next_stream_id()
    handle = StreamHandle(transport, sid, Failed)
    timeout = ClientTimeout(total=20, connect=10)
    await transport.send(Request(sid, "GET", url, timeout=timeout, tls=tls, **fields), None, handle)
    head = await handle.head
    assert head.status == 200
    return dict(json.loads(await handle.content.read()))


async def failure(coro: Awaitable[Any]) -> Failure:
    with pytest.raises(Failed) as info:
        await coro
    return info.value.failure


# -- pool keys ---------------------------------------------------------------------------


async def test_a_connection_is_reused_only_under_the_same_tls_choice(
    transport: Transport, tls_server: Callable[..., Awaitable[Server]], tls_certs: Certs
) -> None:
    server = await tls_server()
    a = trusting(tls_certs)
    b = TlsSpec(system_store=False, ca_certs=(_der(tls_certs.ca), _der(tls_certs.other_ca)))
    right = fingerprint_of(tls_certs.server)
    seen = [
        (await fetch(transport, server.url, a))["conn"],
        (await fetch(transport, server.url, a))["conn"],  # reused
        (await fetch(transport, server.url, b))["conn"],  # another spec: a new one
        (await fetch(transport, server.url, a, fingerprint=right))["conn"],
        (await fetch(transport, server.url, a, server_hostname="localhost"))["conn"],
        (await fetch(transport, server.url, UNVERIFIED_TLS))["conn"],  # ssl=False
        (await fetch(transport, server.url, UNVERIFIED_TLS, fingerprint=right))["conn"],
        (await fetch(transport, server.url, a))["conn"],  # the first one still
        (await fetch(transport, server.url, b))["conn"],
    ]
    assert seen == [0, 0, 1, 2, 3, 4, 5, 0, 1]
    assert len(server.conns) == 6  # one handshake per TLS choice, not per request
    assert server.sni.count("localhost") == 1  # only server_hostname= named it (an IP URL)


async def test_every_https_hop_of_a_request_uses_its_tls_choice(
    transport: Transport,
    tls_server: Callable[..., Awaitable[Server]],
    serve_app: Callable[..., Awaitable[str]],
    tls_certs: Certs,
) -> None:
    server = await tls_server()

    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPFound(server.url + "/")

    app = web.Application()
    app.router.add_get("/", bounce)
    plain = await serve_app(app)
    a = trusting(tls_certs)  # the default would refuse the test CA
    assert (await fetch(transport, plain, a))["conn"] == 0
    assert (await fetch(transport, server.url, a))["conn"] == 0  # the redirect's, reused
    f = await failure(fetch(transport, plain))  # the default spec on the https hop
    assert f.code == "certificate" and len(f.history) == 1


async def test_the_figures_tell_tls_choices_apart(
    transport: Transport, tls_server: Callable[..., Awaitable[Server]], tls_certs: Certs
) -> None:
    server = await tls_server()
    a = trusting(tls_certs)
    await fetch(transport, server.url, a)
    await fetch(transport, server.url, a, server_hostname="localhost")
    await fetch(transport, server.url, UNVERIFIED_TLS, fingerprint=fingerprint_of(tls_certs.server))
    port = server.url.rsplit(":", 1)[1]
    labels = [
        label
        for pool in (await transport.stats()).pools
        for label in pool["hosts"]  # type: ignore[attr-defined]
        if f":{port}" in label
    ]
    assert len(labels) == 3 and all(" tls=" in label for label in labels)
    assert sum("server_hostname=localhost" in label for label in labels) == 1
    assert sum("fingerprint=" in label for label in labels) == 1


async def test_every_connection_offers_alpn_http11(
    transport: Transport, tls_server: Callable[..., Awaitable[Server]], tls_certs: Certs
) -> None:
    server = await tls_server()
    for spec in (trusting(tls_certs), UNVERIFIED_TLS):
        assert (await fetch(transport, server.url, spec))["alpn"] == "http/1.1"


async def test_server_hostname_names_sni_and_the_checked_host(
    transport: Transport, tls_server: Callable[..., Awaitable[Server]], tls_certs: Certs
) -> None:
    server = await tls_server(tls_certs.wrong_host, tls_certs.wrong_host_key)
    a = trusting(tls_certs)
    got = await fetch(transport, server.url, a, server_hostname="other.invalid")
    assert got["alpn"] == "http/1.1" and server.sni == ["other.invalid"]
    f = await failure(fetch(transport, server.url, a))  # checked against 127.0.0.1
    assert f.code == "certificate"


async def test_a_trailing_dot_is_stripped_for_sni_and_the_check(
    transport: Transport, tls_server: Callable[..., Awaitable[Server]], tls_certs: Certs
) -> None:
    server = await tls_server()
    spec = trusting(tls_certs)
    assert (await fetch(transport, server.url, spec, server_hostname="localhost."))["conn"] == 0
    assert server.sni == ["localhost"]


# -- failures ----------------------------------------------------------------------------


async def test_an_expired_certificate_fails_with_its_verify_code(
    transport: Transport, tls_server: Callable[..., Awaitable[Server]], tls_certs: Certs
) -> None:
    server = await tls_server(tls_certs.expired, tls_certs.expired_key)
    f = await failure(fetch(transport, server.url, trusting(tls_certs)))
    port = int(server.url.rsplit(":", 1)[1])
    assert (f.code, f.message, f.verify_code) == ("certificate", "certificate has expired", 10)
    assert (f.host, f.port, f.ssl) == ("127.0.0.1", port, True)
    # ssl=False takes it, on the same server
    assert (await fetch(transport, server.url, UNVERIFIED_TLS))["alpn"] == "http/1.1"


async def test_the_default_spec_verifies_against_the_system_store(
    transport: Transport, tls_server: Callable[..., Awaitable[Server]]
) -> None:
    server = await tls_server()
    f = await failure(fetch(transport, server.url))  # the test CA is not the system's
    assert f.code == "certificate" and f.verify_code == 20 and f.ssl


async def test_a_fingerprint_mismatch_names_both_digests(
    transport: Transport, tls_server: Callable[..., Awaitable[Server]], tls_certs: Certs
) -> None:
    server = await tls_server()
    wrong = bytes(32)
    f = await failure(fetch(transport, server.url, UNVERIFIED_TLS, fingerprint=wrong))
    port = int(server.url.rsplit(":", 1)[1])
    assert f.code == "fingerprint"
    assert (f.expected, f.got) == (wrong, fingerprint_of(tls_certs.server))
    assert (f.host, f.port) == ("127.0.0.1", port)
    right = fingerprint_of(tls_certs.server)
    # the first connection was closed before its request: the server saw none
    assert (await fetch(transport, server.url, UNVERIFIED_TLS, fingerprint=right))["conn"] == 0


async def test_a_spec_that_cannot_be_built_fails_its_requests_only(
    transport: Transport, tls_server: Callable[..., Awaitable[Server]], tls_certs: Certs
) -> None:
    server = await tls_server()
    bad = TlsSpec(system_store=False, ciphers="NO-SUCH-CIPHER")
    for _ in range(2):
        f = await failure(fetch(transport, server.url, bad))
        assert f.code == "ssl" and "cannot use these TLS settings" in f.message
    locked = trusting(
        tls_certs,
        cert_chain=tls_certs.client.read_bytes(),
        key=tls_certs.client_key_encrypted.read_bytes(),
        password=b"wrong",
    )
    assert (await failure(fetch(transport, server.url, locked))).code == "ssl"
    assert (await fetch(transport, server.url, trusting(tls_certs)))["conn"] == 0


async def test_a_server_requiring_a_client_certificate_accepts_the_given_one(
    transport: Transport, tls_server: Callable[..., Awaitable[Server]], tls_certs: Certs
) -> None:
    server = await tls_server(client_ca=tls_certs.ca)
    spec = trusting(
        tls_certs,
        cert_chain=tls_certs.client.read_bytes(),
        key=tls_certs.client_key_encrypted.read_bytes(),
        password=CLIENT_KEY_PASSWORD.encode(),
    )
    got = await fetch(transport, server.url, spec)
    assert got["client"] == "http-broker test client"
    # Without it: no connection made under the other spec is lent to this request.
    with pytest.raises(Failed):
        await fetch(transport, server.url, trusting(tls_certs))


# -- registration ------------------------------------------------------------------------


async def test_a_request_naming_tls_settings_never_opened_fails(
    transport: Transport, tls_server: Callable[..., Awaitable[Server]], tls_certs: Certs
) -> None:
    server = await tls_server()
    f = await failure(fetch(transport, server.url, trusting(tls_certs), open_spec=False))
    assert f.code == "protocol" and "never opened" in f.message
    assert (await fetch(transport, server.url, trusting(tls_certs)))["alpn"] == "http/1.1"


async def test_tls_settings_over_the_cap_fail_their_requests(
    transport: Transport, tls_server: Callable[..., Awaitable[Server]], tls_certs: Certs
) -> None:
    server = await tls_server()
    specs = [trusting(tls_certs, ciphers=f"HIGH:!aNULL:!NOSUCH{i}") for i in range(63)]
    specs += [trusting(tls_certs, options=i) for i in range(2)]
    for spec in specs:
        transport.open_tls(tls_id(encode_tls(spec)), spec)
    f = await failure(fetch(transport, server.url, specs[64]))
    assert f.code == "broker" and "max_tls_specs = 64" in f.message
    assert (await fetch(transport, server.url, specs[0]))["alpn"] == "http/1.1"


async def test_a_tls_open_under_another_specs_id_hangs_up(
    broker_process: Any, raw_workers: None, tls_certs: Certs  # noqa: F811
) -> None:
    worker = await RawWorker.connect(broker_process.socket_path)
    honest = trusting(tls_certs)
    worker.send(TlsOpen(tls_id(encode_tls(honest)), UNVERIFIED_TLS))
    msg = await worker.next()
    assert isinstance(msg, ErrorFrame) and msg.code == "protocol" and "SHA-256" in msg.message
    assert await worker.next() is None


async def test_raw_frames_tls_open_then_request(
    broker_process: Any,
    raw_workers: None,  # noqa: F811
    tls_server: Callable[..., Awaitable[Server]],
    tls_certs: Certs,
) -> None:
    server = await tls_server()
    worker = await RawWorker.connect(broker_process.socket_path)
    spec = trusting(tls_certs)
    tls = tls_id(encode_tls(spec))
    worker.send(TlsOpen(tls, spec), Request(1, "GET", server.url, tls=tls))
    msgs = await worker.until_end_of(1)
    assert isinstance(msgs[0], Head) and msgs[0].status == 200 and isinstance(msgs[-1], End)


# -- shutdown of TLS connections ----------------------------------------------------------


class _Recording(HTTP1Connection):
    ends: list[str] = []

    def abort(self) -> None:
        self.ends.append("abort")
        super().abort()

    def close(self) -> None:
        self.ends.append("close")
        super().close()


@pytest.mark.parametrize(("grace", "end"), [(0, "abort"), (2.5, "close")])
async def test_ssl_shutdown_timeout_as_aiohttp_3_14(
    tls_server: Callable[..., Awaitable[Server]],
    tls_certs: Certs,
    monkeypatch: pytest.MonkeyPatch,
    grace: float,
    end: str,
) -> None:
    """0 aborts TLS connections when the pool closes; more is the close_notify's grace,
    given to the transport on Python 3.11+."""
    server = await tls_server()
    monkeypatch.setattr(Pool, "connection_class", _Recording)
    _Recording.ends = []
    registry = Registry(asyncio.get_running_loop())
    pool = registry.pool_for(encode_pool(PoolSpec(ssl_shutdown_timeout=grace)))
    host, port = server.url.rsplit("//", 1)[1].split(":")
    tls = trusting(tls_certs)
    key = ("https", host, int(port), (tls_id(encode_tls(tls)), b"", ""), b"")
    conn = await pool.acquire(key, ClientTimeout(), None, tls)
    assert conn.transport is not None and conn.transport.get_extra_info("ssl_object")
    if grace and sys.version_info >= (3, 11):
        assert conn.transport._ssl_protocol._ssl_shutdown_timeout == grace  # type: ignore[attr-defined]
    pool.give_back(conn)
    await registry.close()
    assert _Recording.ends[-1] == end


async def test_a_fingerprint_mismatch_over_a_unix_socket_is_the_mismatch(
    transport: Transport, tls_certs: Certs, tmp_path: Path
) -> None:
    """A Unix socket's peer name is its path, not (host, port): the mismatch names the
    URL's host and port instead of failing as an internal error."""
    ctx = server_context(tls_certs.server, tls_certs.server_key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    path = str(tmp_path / "tls.sock")
    server = await asyncio.start_unix_server(answer, path, ssl=ctx)
    try:
        pool = encode_pool(PoolSpec(kind="unix", path=path))
        wrong = bytes(32)
        url = "https://localhost:8443/"
        f = await failure(fetch(transport, url, UNVERIFIED_TLS, fingerprint=wrong, pool=pool))
        assert f.code == "fingerprint"
        assert (f.expected, f.got) == (wrong, fingerprint_of(tls_certs.server))
        assert (f.host, f.port) == ("localhost", 8443)
    finally:
        server.close()


@pytest.mark.parametrize("name", ["a..b", "x" * 64 + ".example", "nul\x00.example"])
async def test_a_server_hostname_ssl_refuses_fails_as_ssl(
    transport: Transport, tls_server: Callable[..., Awaitable[Server]], name: str
) -> None:
    """A raw worker's server_hostname that the ssl module refuses for SNI: the request's
    clear failure, not an error inside the broker."""
    server = await tls_server()
    f = await failure(fetch(transport, server.url, UNVERIFIED_TLS, server_hostname=name))
    assert f.code == "ssl" and "server_hostname" in f.message
