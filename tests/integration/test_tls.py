"""TLS end to end, against real https servers on loopback with the test CA
(``tests/tls_certs.py``): every case runs with aiohttp's own ClientSession (the
reference: what it does is what ours must do) and with ours in both modes.

The server side records what it saw (``tls_server.Seen``): handshakes, SNI, the
connection each request came on, ALPN, TLS version and cipher, the client certificate.

Where ours differs by design, the test says so: ours offers ALPN ``http/1.1`` from a
caller's context too (aiohttp leaves a caller's context as it is), and keys its pool by
what a context says (its ``TlsSpec``), so two equal contexts share connections, as
workers do through a broker (aiohttp keys by the context object).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.tls_certs import CLIENT_KEY_PASSWORD, Certs, fingerprint_of

from . import _tls_workers, _workers
from .apps import text_app
from .tls_server import Seen, recording_app, recording_context

CLIENTS = ("aiohttp", "embedded", "broker")

# OpenSSL's verify results (X509_V_ERR_*), as aiohttp's certificate_error carries them
UNKNOWN_CA = 20  # unable to get local issuer certificate
EXPIRED = 10
HOSTNAME_MISMATCH = 62
IP_MISMATCH = 64


@dataclass
class Client:
    """A client under test: ``lib`` exports its names (``aiohttp`` or ``worker_client``);
    ``create_default_context`` is the one its documentation gives for client
    certificates (``ssl``'s for aiohttp); ``session(**kw)`` is closed after the test."""

    name: str
    lib: Any
    create_default_context: Callable[..., ssl.SSLContext]
    session: Callable[..., Any]


@pytest.fixture(params=CLIENTS)
async def client(request: pytest.FixtureRequest, serve_app: Any) -> AsyncIterator[Client]:
    # (``serve_app`` first: the servers stop after the sessions closed, as in use; a
    # server gone first leaves aiohttp's idle TLS transports unclosed on Python 3.10.)
    sessions: list[Any] = []
    if request.param == "aiohttp":
        lib: Any = aiohttp
        make_context = ssl.create_default_context

        def make(**kw: Any) -> Any:
            return aiohttp.ClientSession(**kw)

    else:
        import worker_client

        lib = worker_client
        make_context = worker_client.create_default_context  # type: ignore[attr-defined]
        broker = None
        if request.param == "broker":
            broker = request.getfixturevalue("broker_process").socket_path

        def make(**kw: Any) -> Any:
            return worker_client.ClientSession(broker=broker, **kw)

    def session(**kw: Any) -> Any:
        s = make(**kw)
        sessions.append(s)
        return s

    yield Client(request.param, lib, make_context, session)
    for s in sessions:
        await s.close()


Https = Callable[..., Awaitable[tuple[str, Seen]]]


@pytest.fixture
def https(serve_app: Callable[..., Awaitable[str]], tls_certs: Certs) -> Https:
    """``await https(cert="server", host=..., client_cert=False, configure=None)``: an
    https server with that certificate of ``tls_certs`` (``server``, ``expired``,
    ``wrong_host``); with ``client_cert`` it requires a client certificate signed by the
    test CA; ``configure(ctx)`` adjusts its context. Returns (URL of ``/``, Seen)."""

    async def start(
        cert: str = "server",
        *,
        host: str = "127.0.0.1",
        client_cert: bool = False,
        configure: Callable[[ssl.SSLContext], None] | None = None,
    ) -> tuple[str, Seen]:
        seen = Seen()
        ctx = recording_context(
            getattr(tls_certs, cert),
            getattr(tls_certs, f"{cert}_key"),
            seen,
            client_ca=tls_certs.ca if client_cert else None,
        )
        if configure is not None:
            configure(ctx)
        base = await serve_app(recording_app(seen), ssl_context=ctx, host=host)
        return base + "/", seen

    return start


async def get_ok(session: Any, url: str, **kw: Any) -> None:
    async with session.get(url, **kw) as resp:
        assert resp.status == 200
        assert await resp.text() == "ok"


async def certificate_error(client: Client, session: Any, url: str, **kw: Any) -> Any:
    """The ClientConnectorCertificateError a GET raises, checked as aiohttp's is."""
    with pytest.raises(client.lib.ClientConnectorCertificateError) as info:
        await session.get(url, **kw)
    exc = info.value
    assert isinstance(exc, ssl.CertificateError)
    assert isinstance(exc, client.lib.ClientSSLError)
    assert isinstance(exc, client.lib.ClientConnectorError)
    assert isinstance(exc.certificate_error, ssl.SSLCertVerificationError)
    return exc


# -- verification ------------------------------------------------------------------------


@pytest.mark.parametrize("maker", ["client's", "ssl module's"])
async def test_a_trusted_certificate_passes(client, https, tls_certs, maker):
    # ours translates a plain ssl.SSLContext too (its CA certificates, via get_ca_certs)
    make = client.create_default_context if maker == "client's" else ssl.create_default_context
    url, seen = await https()
    await get_ok(client.session(), url, ssl=make(cafile=tls_certs.ca))
    assert seen.handshakes == 1 and seen.requests == [0]


async def test_a_context_loaded_with_cadata_passes(client, https, tls_certs):
    ctx = client.create_default_context()
    ctx.load_verify_locations(cadata=tls_certs.ca.read_text())
    url, _ = await https()
    await get_ok(client.session(), url, ssl=ctx)


@pytest.mark.parametrize("ssl_arg", ["omitted", True, None])
async def test_the_default_verification_does_not_know_the_test_ca(client, https, ssl_arg):
    url, seen = await https()
    kw = {} if ssl_arg == "omitted" else {"ssl": ssl_arg}
    exc = await certificate_error(client, client.session(), url, **kw)
    assert exc.certificate_error.verify_code == UNKNOWN_CA
    assert (exc.host, exc.port) == ("127.0.0.1", URL(url).port)
    assert seen.requests == []


async def test_a_context_trusting_another_ca_fails(client, https, tls_certs):
    url, _ = await https()
    ctx = client.create_default_context(cafile=tls_certs.other_ca)
    exc = await certificate_error(client, client.session(), url, ssl=ctx)
    assert exc.certificate_error.verify_code == UNKNOWN_CA


async def test_an_expired_certificate_fails(client, https, tls_certs):
    url, seen = await https("expired")
    ctx = client.create_default_context(cafile=tls_certs.ca)
    exc = await certificate_error(client, client.session(), url, ssl=ctx)
    assert exc.certificate_error.verify_code == EXPIRED
    assert exc.certificate_error.verify_message == "certificate has expired"
    assert "certificate has expired" in str(exc)
    assert seen.requests == []


@pytest.mark.parametrize(
    "host, code, message",
    [
        ("localhost", HOSTNAME_MISMATCH, "Hostname mismatch"),
        ("127.0.0.1", IP_MISMATCH, "IP address mismatch"),
    ],
)
async def test_a_certificate_for_another_host_fails(client, https, tls_certs, host, code, message):
    url, seen = await https("wrong_host", host=host)
    ctx = client.create_default_context(cafile=tls_certs.ca)
    exc = await certificate_error(client, client.session(), url, ssl=ctx)
    assert exc.certificate_error.verify_code == code
    assert message in exc.certificate_error.verify_message
    assert exc.host == host
    assert seen.requests == []


async def test_check_hostname_off_accepts_another_host_but_still_checks_dates(
    client, https, tls_certs
):
    ctx = client.create_default_context(cafile=tls_certs.ca)
    ctx.check_hostname = False
    wrong, _ = await https("wrong_host")
    await get_ok(client.session(), wrong, ssl=ctx)
    expired, _ = await https("expired")
    exc = await certificate_error(client, client.session(), expired, ssl=ctx)
    assert exc.certificate_error.verify_code == EXPIRED


@pytest.mark.parametrize("cert", ["server", "expired", "wrong_host"])
async def test_ssl_false_passes_without_verifying(client, https, cert):
    url, seen = await https(cert)
    await get_ok(client.session(), url, ssl=False)
    assert seen.handshakes == 1


async def test_a_cert_none_context_passes_without_verifying(client, https):
    ctx = client.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    url, _ = await https("expired")
    await get_ok(client.session(), url, ssl=ctx)


@pytest.mark.parametrize("kind", ["context", "fingerprint", "ssl=False"])
async def test_ssl_settings_leave_plain_http_alone(client, serve_app, tls_certs, kind):
    # a wrong fingerprint too: aiohttp checks it on TLS connections only
    base = await serve_app(text_app())
    ssl_arg = {
        "context": client.create_default_context(cafile=tls_certs.other_ca),
        "fingerprint": client.lib.Fingerprint(b"\x00" * 32),
        "ssl=False": False,
    }[kind]
    await get_ok(client.session(), base + "/", ssl=ssl_arg)


# -- fingerprints ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["request", "connector"])
async def test_the_right_fingerprint_passes_unverified(client, https, tls_certs, where):
    # aiohttp pins the digest on an unverified connection: the expired certificate passes
    url, seen = await https("expired")
    pin = client.lib.Fingerprint(fingerprint_of(tls_certs.expired))
    if where == "request":
        await get_ok(client.session(), url, ssl=pin)
    else:
        await get_ok(client.session(connector=client.lib.TCPConnector(ssl=pin)), url)
    assert seen.requests == [0]


@pytest.mark.parametrize("where", ["request", "connector"])
async def test_a_wrong_fingerprint_raises_the_mismatch(client, https, tls_certs, where):
    url, seen = await https()
    wrong = b"\x00" * 32
    if where == "request":
        session, kw = client.session(), {"ssl": client.lib.Fingerprint(wrong)}
    else:
        connector = client.lib.TCPConnector(ssl=client.lib.Fingerprint(wrong))
        session, kw = client.session(connector=connector), {}
    with pytest.raises(client.lib.ServerFingerprintMismatch) as info:
        await session.get(url, **kw)
    exc = info.value
    assert isinstance(exc, client.lib.ServerConnectionError)
    assert exc.expected == wrong
    assert exc.got == fingerprint_of(tls_certs.server)
    assert (exc.host, exc.port) == ("127.0.0.1", URL(url).port)
    assert seen.requests == []


@pytest.mark.parametrize(
    "digest, message",
    [
        (b"\x01" * 16, "md5 and sha1 are insecure"),
        (b"\x01" * 20, "md5 and sha1 are insecure"),
        (b"\x01" * 31, "invalid length"),
        (b"\x01" * 64, "invalid length"),
        (b"", "invalid length"),
    ],
)
def test_a_fingerprint_of_the_wrong_length_is_a_value_error(client, digest, message):
    with pytest.raises(ValueError, match=message):
        client.lib.Fingerprint(digest)


# -- client certificates -----------------------------------------------------------------


@pytest.mark.parametrize("key", ["plain", "encrypted"])
async def test_a_client_certificate_from_create_default_context(client, https, tls_certs, key):
    url, seen = await https(client_cert=True)
    ctx = client.create_default_context(cafile=tls_certs.ca)
    if key == "plain":
        ctx.load_cert_chain(tls_certs.client, tls_certs.client_key)
    else:
        ctx.load_cert_chain(
            tls_certs.client, tls_certs.client_key_encrypted, password=CLIENT_KEY_PASSWORD
        )
    await get_ok(client.session(), url, ssl=ctx)
    assert seen.client_cns == ["http-broker test client"]


def test_a_wrong_key_password_fails_at_load_cert_chain(client, tls_certs):
    ctx = client.create_default_context(cafile=tls_certs.ca)
    with pytest.raises(ssl.SSLError):
        ctx.load_cert_chain(tls_certs.client, tls_certs.client_key_encrypted, password="wrong")


@pytest.mark.filterwarnings(  # aiohttp's own client leaves its TLS transport on 3.10
    "ignore::pytest.PytestUnraisableExceptionWarning" if sys.version_info < (3, 11) else "default"
)
async def test_a_server_requiring_a_client_certificate_refuses_none(client, https, tls_certs):
    # TLS 1.3: the client's handshake completes before the server checks; its alert
    # then ends the connection (aiohttp: ServerDisconnectedError), no answer
    url, seen = await https(client_cert=True)
    ctx = client.create_default_context(cafile=tls_certs.ca)
    with pytest.raises(client.lib.ClientConnectionError) as info:
        await client.session().get(url, ssl=ctx)
    assert not isinstance(info.value, client.lib.ClientConnectorCertificateError)
    assert not isinstance(info.value, getattr(client.lib, "BrokerConnectionError", ()))
    assert seen.requests == []


async def test_one_session_keeps_client_certificates_apart(client, https, tls_certs):
    # a connection made with a client certificate is not one for a request without it
    url, seen = await https()
    with_cert = client.create_default_context(cafile=tls_certs.ca)
    with_cert.load_cert_chain(tls_certs.client, tls_certs.client_key)
    without = client.create_default_context(cafile=tls_certs.ca)
    session = client.session()
    for ctx in (with_cert, without, with_cert, without):
        await get_ok(session, url, ssl=ctx)
    assert seen.requests == [0, 1, 0, 1]


# -- server_hostname and SNI -------------------------------------------------------------


async def test_sni_names_the_host_and_not_an_ip_address(client, https, tls_certs):
    ctx = client.create_default_context(cafile=tls_certs.ca)
    by_name, seen_name = await https(host="localhost")
    await get_ok(client.session(), by_name, ssl=ctx)
    by_ip, seen_ip = await https()
    await get_ok(client.session(), by_ip, ssl=ctx)
    assert seen_name.sni == ["localhost"]
    assert seen_ip.sni == [None]  # RFC 6066: no IP addresses in SNI


async def test_server_hostname_is_used_for_sni_and_the_hostname_check(client, https, tls_certs):
    url, seen = await https()  # https://127.0.0.1:port/
    ctx = client.create_default_context(cafile=tls_certs.ca)
    await get_ok(client.session(), url, ssl=ctx, server_hostname="localhost")
    assert seen.sni == ["localhost"]
    exc = await certificate_error(
        client, client.session(), url, ssl=ctx, server_hostname="other.invalid"
    )
    assert exc.certificate_error.verify_code == HOSTNAME_MISMATCH
    assert seen.sni == ["localhost", "other.invalid"]


async def test_a_connection_is_not_reused_for_another_server_hostname(client, https, tls_certs):
    # aiohttp's test_server_hostname_override_not_reused: one connection allowed, and
    # still a new handshake (which fails) for the other name
    url, seen = await https()
    ctx = client.create_default_context(cafile=tls_certs.ca)
    session = client.session(connector=client.lib.TCPConnector(limit=1, limit_per_host=1))
    await get_ok(session, url, ssl=ctx, server_hostname="localhost")
    exc = await certificate_error(client, session, url, ssl=ctx, server_hostname="other.invalid")
    assert exc.certificate_error.verify_code == HOSTNAME_MISMATCH
    assert seen.handshakes == 2


# -- the connector's ssl and the request's -----------------------------------------------


async def test_the_connectors_context_is_used_by_default(client, https, tls_certs):
    url, _ = await https()
    ctx = client.create_default_context(cafile=tls_certs.ca)
    session = client.session(connector=client.lib.TCPConnector(ssl=ctx))
    await get_ok(session, url)
    await get_ok(session, url, ssl=True)  # True: the connector's setting


async def test_a_requests_ssl_wins_over_the_connectors(client, https, tls_certs):
    url, seen = await https("expired")
    ctx = client.create_default_context(cafile=tls_certs.ca)
    verifying = client.session(connector=client.lib.TCPConnector(ssl=ctx))
    exc = await certificate_error(client, verifying, url)
    assert exc.certificate_error.verify_code == EXPIRED
    await get_ok(verifying, url, ssl=False)
    trusting = client.session(connector=client.lib.TCPConnector(ssl=False))
    await get_ok(trusting, url)
    exc = await certificate_error(client, trusting, url, ssl=ctx)
    assert exc.certificate_error.verify_code == EXPIRED


async def test_ssl_false_on_the_connector_skips_verification(client, https):
    url, _ = await https("wrong_host")
    await get_ok(client.session(connector=client.lib.TCPConnector(ssl=False)), url)


# -- pooling: never across TLS settings --------------------------------------------------


async def test_verified_and_unverified_requests_never_share_a_connection(client, https, tls_certs):
    url, seen = await https()
    ctx = client.create_default_context(cafile=tls_certs.ca)
    session = client.session()
    for ssl_arg in (ctx, False, ctx, False, ctx):
        await get_ok(session, url, ssl=ssl_arg)
    assert seen.requests == [0, 1, 0, 1, 0]
    assert seen.handshakes == 2


async def test_equal_contexts_share_connections_in_ours(client, https, tls_certs):
    url, seen = await https()
    session = client.session()
    for _ in range(3):
        await get_ok(session, url, ssl=client.create_default_context(cafile=tls_certs.ca))
    assert seen.requests == ([0, 1, 2] if client.name == "aiohttp" else [0, 0, 0])


@pytest.mark.parametrize("unverified", ["ssl=False", "fingerprint"])
async def test_an_unverified_connection_never_serves_a_verified_request(
    client, https, tls_certs, unverified
):
    # The server's certificate has expired: a verified request must fail, even with an
    # idle connection to the same host:port at hand.
    url, seen = await https("expired")
    ctx = client.create_default_context(cafile=tls_certs.ca)
    pin = client.lib.Fingerprint(fingerprint_of(tls_certs.expired))
    loose = False if unverified == "ssl=False" else pin
    session = client.session()
    await get_ok(session, url, ssl=loose)
    exc = await certificate_error(client, session, url, ssl=ctx)
    assert exc.certificate_error.verify_code == EXPIRED
    exc = await certificate_error(client, session, url)  # the default too
    await get_ok(session, url, ssl=loose)
    assert seen.requests == [0, 0]  # the unverified connection, kept for its own kind


async def test_different_trust_stores_never_share_a_connection(client, https, tls_certs):
    url, seen = await https()
    trusting = client.create_default_context(cafile=tls_certs.ca)
    other = client.create_default_context(cafile=tls_certs.other_ca)
    session = client.session()
    await get_ok(session, url, ssl=trusting)
    exc = await certificate_error(client, session, url, ssl=other)
    assert exc.certificate_error.verify_code == UNKNOWN_CA
    assert seen.handshakes == 2


async def in_worker(broker_process: Any, url: str, *args: Any) -> tuple[int, str]:
    """``_tls_workers.get(socket, url, *args)`` in a process of its own."""
    loop = asyncio.get_running_loop()
    (result,) = await loop.run_in_executor(
        None,
        _workers.run_in_processes,
        _tls_workers.get,
        [(broker_process.socket_path, url, *args)],
    )
    return result


async def test_a_verified_connection_is_reused_by_another_worker_through_the_broker(
    broker_process, https, tls_certs
):
    url, seen = await https()
    ca = str(tls_certs.ca)
    first = await in_worker(broker_process, url, ca)
    second = await in_worker(broker_process, url, ca)
    assert first[0] != second[0]  # two processes, one after the other
    assert first[1] == second[1] == "200 ok"
    assert seen.handshakes == 1 and seen.requests == [0, 0]
    unverified = await in_worker(broker_process, url, None)  # another spec: its own
    assert unverified[1] == "200 ok"
    assert seen.handshakes == 2 and seen.requests == [0, 0, 1]


async def test_a_client_certificate_connection_is_never_lent_to_another_worker(
    broker_process, https, tls_certs
):
    url, seen = await https(client_cert=True)
    ca = str(tls_certs.ca)
    cert = (str(tls_certs.client), str(tls_certs.client_key))
    (_, with_cert) = await in_worker(broker_process, url, ca, cert)
    assert with_cert == "200 ok"
    (_, without) = await in_worker(broker_process, url, ca)  # same CA, no certificate
    assert without.startswith("refused: ")
    assert seen.requests == [0] and seen.client_cns == ["http-broker test client"]
    assert seen.handshakes == 2


# -- what every TLS connection offers ----------------------------------------------------


@pytest.mark.parametrize("kind", ["context", "ssl=False", "fingerprint", "connector"])
async def test_alpn_http11_is_offered(client, https, tls_certs, kind):
    # aiohttp offers ALPN from its own contexts (ssl=True, False, Fingerprint) and leaves
    # a caller's context as it is; ours offers it on every TLS connection (the issue),
    # a caller's context included: the one documented difference.
    url, seen = await https()
    ctx = client.create_default_context(cafile=tls_certs.ca)
    session = client.session()
    if kind == "context":
        await get_ok(session, url, ssl=ctx)
    elif kind == "ssl=False":
        await get_ok(session, url, ssl=False)
    elif kind == "fingerprint":
        await get_ok(session, url, ssl=client.lib.Fingerprint(fingerprint_of(tls_certs.server)))
    else:
        await get_ok(client.session(connector=client.lib.TCPConnector(ssl=ctx)), url)
    callers_context = kind in ("context", "connector")
    assert seen.alpn == [None if client.name == "aiohttp" and callers_context else "http/1.1"]


async def test_the_contexts_protocol_bounds_and_ciphers_are_kept(client, https, tls_certs):
    url, seen = await https()
    ctx = client.create_default_context(cafile=tls_certs.ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    await get_ok(client.session(), url, ssl=ctx)
    assert seen.versions == ["TLSv1.2"]
    assert seen.ciphers == ["ECDHE-ECDSA-AES128-GCM-SHA256"]


async def test_a_server_outside_the_contexts_protocol_bounds_fails(client, https, tls_certs):
    def tls13_only(ctx: ssl.SSLContext) -> None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3

    url, seen = await https(configure=tls13_only)
    ctx = client.create_default_context(cafile=tls_certs.ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(client.lib.ClientConnectorError) as info:
        await client.session().get(url, ssl=ctx)
    assert not isinstance(info.value, client.lib.ClientConnectorCertificateError)
    assert seen.requests == []


# -- aiohttp's deprecated spellings ------------------------------------------------------


async def test_verify_ssl_false_is_deprecated_and_skips_verification(client, https):
    url, _ = await https("expired")
    session = client.session()
    with pytest.warns(DeprecationWarning, match="verify_ssl is deprecated, use ssl=False"):
        await get_ok(session, url, verify_ssl=False)


async def test_ssl_context_is_deprecated_and_verifies(client, https, tls_certs):
    good, _ = await https()
    expired, _ = await https("expired")
    ctx = client.create_default_context(cafile=tls_certs.ca)
    session = client.session()
    with pytest.warns(DeprecationWarning, match="ssl_context is deprecated, use ssl=context"):
        await get_ok(session, good, ssl_context=ctx)
    with pytest.warns(DeprecationWarning, match="ssl_context is deprecated"):
        exc = await certificate_error(client, session, expired, ssl_context=ctx)
    assert exc.certificate_error.verify_code == EXPIRED


async def test_fingerprint_is_deprecated_and_pins(client, https, tls_certs):
    url, _ = await https("expired")
    session = client.session()
    with pytest.warns(DeprecationWarning, match="use ssl=Fingerprint"):
        await get_ok(session, url, fingerprint=fingerprint_of(tls_certs.expired))
    with pytest.warns(DeprecationWarning, match="use ssl=Fingerprint"):
        with pytest.raises(client.lib.ServerFingerprintMismatch):
            await session.get(url, fingerprint=b"\x00" * 32)


async def test_the_connectors_deprecated_verify_ssl(client, https):
    url, _ = await https("expired")
    with pytest.warns(DeprecationWarning, match="verify_ssl is deprecated"):
        connector = client.lib.TCPConnector(verify_ssl=False)
    await get_ok(client.session(connector=connector), url)


@pytest.mark.parametrize(
    "kw",
    [
        {"verify_ssl": False},
        {"ssl_context": "ctx"},
        {"fingerprint": b"\x00" * 32},
    ],
)
async def test_a_deprecated_spelling_beside_ssl_is_a_value_error(client, https, tls_certs, kw):
    url, seen = await https()
    ctx = client.create_default_context(cafile=tls_certs.ca)
    kw = {k: ctx if v == "ctx" else v for k, v in kw.items()}
    session = client.session()
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="mutually exclusive"):
        await session.get(url, ssl=ctx, **kw)
    assert seen.handshakes == 0


@pytest.mark.parametrize("ssl_arg", ["yes", 1.5, b"\x00" * 32])
async def test_ssl_of_another_type_is_a_type_error(client, https, ssl_arg):
    url, seen = await https()
    with pytest.raises(TypeError, match="ssl should be SSLContext, bool, Fingerprint or None"):
        await client.session().get(url, ssl=ssl_arg)
    assert seen.handshakes == 0


async def test_ssl_shutdown_timeout_is_deprecated_and_accepted(client, https, tls_certs):
    url, _ = await https()
    old = (  # aiohttp's word that Python 3.10 cannot honour it
        pytest.warns(RuntimeWarning, match="ignored on Python < 3.11")
        if sys.version_info < (3, 11)
        else contextlib.nullcontext()
    )
    deprecated = pytest.warns(DeprecationWarning, match="ssl_shutdown_timeout parameter is")
    with old, deprecated:
        connector = client.lib.TCPConnector(ssl_shutdown_timeout=0.1)
    session = client.session(connector=connector)
    await get_ok(session, url, ssl=client.create_default_context(cafile=tls_certs.ca))
    await session.close()
    assert connector.closed
