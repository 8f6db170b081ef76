"""worker_client.tls: Fingerprint, aiohttp's ssl= arguments, the recording context, and
the translation of SSLContexts into TlsSpecs (checked against aiohttp where it has a rule)."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import ssl
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import client_reqrep as aio_reqrep
from aiohttp import connector as aio_connector

import worker_client.connector as connector_module
import worker_client.tls as tls_mod
from shared.specs import DEFAULT_TLS, UNVERIFIED_TLS, TlsSpec, encode_tls, tls_id
from tests.tls_certs import CLIENT_KEY_PASSWORD, Certs, server_context
from worker_client import ClientSession, Fingerprint, TCPConnector, create_default_context
from worker_client.exceptions import ClientConnectorError, ConnectionKey, with_request_ssl
from worker_client.tls import (
    UNVERIFIED_ID,
    RecordingSSLContext,
    check_server_hostname,
    context_tls,
    merge_ssl,
    request_tls,
    tls_spec,
)

SHA256 = hashlib.sha256(b"foo").digest()


def der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


# -- Fingerprint (aiohttp's tests/test_client_request.py and test_connector.py) ---------


def test_fingerprint_takes_a_sha256_digest():
    assert Fingerprint(SHA256).fingerprint == SHA256
    assert aiohttp.Fingerprint(SHA256).fingerprint == SHA256


@pytest.mark.parametrize("cls", [Fingerprint, aiohttp.Fingerprint])
@pytest.mark.parametrize(
    ("digest", "message"),
    [
        (hashlib.md5(b"foo").digest(), "md5 and sha1 are insecure and not supported. Use sha256."),
        (hashlib.sha1(b"foo").digest(), "md5 and sha1 are insecure and not supported. Use sha256."),
        (b"invalid", "fingerprint has invalid length"),
        (b"0" * 64, "fingerprint has invalid length"),  # the seed's hex-looking bogus pin
        (b"", "fingerprint has invalid length"),
    ],
)
def test_fingerprint_refuses_other_digests_as_aiohttp(cls, digest, message):
    with pytest.raises(ValueError, match=message):
        cls(digest)


# -- merge_ssl: aiohttp's _merge_ssl_params ----------------------------------------------

CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
MERGE_CASES = [
    # (ssl, verify_ssl, ssl_context, fingerprint)
    (True, None, None, None),
    (None, None, None, None),
    (False, None, None, None),
    (CTX, None, None, None),
    (True, True, None, None),
    (True, False, None, None),
    (True, None, CTX, None),
    (True, None, None, SHA256),
    (False, False, None, None),
    (CTX, False, None, None),
    (None, False, CTX, None),
    (False, None, CTX, None),
    (CTX, None, None, SHA256),
    (True, None, None, hashlib.md5(b"x").digest()),
    ("yes", None, None, None),
    (1, None, None, None),
    (object(), None, None, None),
]


def _outcome(func: Any, args: tuple[Any, ...]) -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = func(*args)
        except (TypeError, ValueError) as exc:
            result = (type(exc), str(exc))
        else:
            if isinstance(result, (Fingerprint, aiohttp.Fingerprint)):
                result = ("fingerprint", result.fingerprint)
    return result, [(w.category, str(w.message)) for w in caught]


@pytest.mark.parametrize("args", MERGE_CASES)
def test_merge_ssl_as_aiohttp(args):
    assert _outcome(merge_ssl, args) == _outcome(aio_reqrep._merge_ssl_params, args)


def test_merge_ssl_warnings_name_the_caller():
    with pytest.warns(DeprecationWarning, match="verify_ssl is deprecated") as record:
        TCPConnector(verify_ssl=False)
    assert record[0].filename == __file__


# -- the choice between the request's and the connector's (aiohttp's connector tests) ---

FP = Fingerprint(SHA256)
SETTINGS = [True, False, FP, CTX]


async def test_request_tls_chooses_as_aiohttps_connector():
    for conn_ssl in SETTINGS:
        aio_conn_ssl = aiohttp.Fingerprint(SHA256) if conn_ssl is FP else conn_ssl
        theirs_conn = aiohttp.TCPConnector(ssl=aio_conn_ssl)
        try:
            for req_ssl in SETTINGS:
                aio_req_ssl = aiohttp.Fingerprint(SHA256) if req_ssl is FP else req_ssl
                req = SimpleNamespace(is_ssl=lambda: True, ssl=aio_req_ssl)
                context = theirs_conn._get_ssl_context(req)
                pin = theirs_conn._get_fingerprint(req)
                ident, spec, digest = request_tls(req_ssl, conn_ssl)
                if context is aio_connector._SSL_CONTEXT_VERIFIED:
                    assert (ident, spec) == (b"", DEFAULT_TLS)
                elif context is aio_connector._SSL_CONTEXT_UNVERIFIED:
                    assert (ident, spec) == (UNVERIFIED_ID, UNVERIFIED_TLS)
                else:
                    assert context is CTX
                    assert (ident, spec) == context_tls(CTX)
                assert digest == (pin.fingerprint if pin else b""), (req_ssl, conn_ssl)
        finally:
            await theirs_conn.close()


def test_unverified_id_names_the_unverified_spec():
    assert UNVERIFIED_ID == tls_id(encode_tls(UNVERIFIED_TLS))


# -- translating contexts ----------------------------------------------------------------


def test_a_default_context_is_the_default_spec():
    assert tls_spec(ssl.create_default_context()) == DEFAULT_TLS
    assert tls_spec(create_default_context()) == DEFAULT_TLS
    # ... and names the default: the connections of ssl=True, no TlsOpen
    assert context_tls(ssl.create_default_context())[0] == b""
    assert context_tls(create_default_context())[0] == b""


def test_an_unverifying_context_is_aiohttps_unverified_spec():
    for ctx in (ssl.create_default_context(), create_default_context()):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        assert tls_spec(ctx) == UNVERIFIED_TLS
        assert context_tls(ctx) == (UNVERIFIED_ID, UNVERIFIED_TLS)


def test_check_hostname_off_keeps_verification():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    spec = tls_spec(ctx)
    assert spec.verify and not spec.check_hostname and spec.system_store


def test_a_cafile_context_trusts_that_ca_only(tls_certs: Certs):
    plain = ssl.create_default_context(cafile=tls_certs.ca)
    recording = create_default_context(cafile=tls_certs.ca)
    expected = TlsSpec(system_store=False, ca_certs=(der(tls_certs.ca),))
    assert tls_spec(plain) == expected
    assert tls_spec(recording) == expected
    assert context_tls(plain)[0] == context_tls(recording)[0] == tls_id(encode_tls(expected))


def test_a_ca_loaded_beside_the_system_store_keeps_both(tls_certs: Certs):
    plain = ssl.create_default_context()
    plain.load_verify_locations(cafile=tls_certs.ca)
    recording = create_default_context()
    recording.load_verify_locations(cafile=tls_certs.ca)
    expected = TlsSpec(system_store=True, ca_certs=(der(tls_certs.ca),))
    assert tls_spec(plain) == expected
    assert tls_spec(recording) == expected


def test_a_bare_context_with_nothing_visible_trusts_nothing_here():
    # A context that does not record and shows no CA certificate: the system store only
    # where this process's own loads unseen (lazily, from a directory). Here it is seen,
    # so the context has nothing loaded (or a capath, unseen): trusting the system store
    # instead would accept what the caller's context refuses. One that records knows.
    if not tls_mod._system_store():
        pytest.skip("this system's store is read lazily: nothing visible is the store")
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert tls_spec(bare) == TlsSpec(system_store=False)
    with tempfile.TemporaryDirectory() as capath:  # only a private CA directory, unseen
        bare.load_verify_locations(capath=capath)
        assert not tls_spec(bare).system_store
    assert tls_spec(RecordingSSLContext(ssl.PROTOCOL_TLS_CLIENT)) == TlsSpec(system_store=False)


def test_nothing_visible_means_the_system_store_where_it_loads_unseen(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(tls_mod, "_system_cas", frozenset())
    assert tls_spec(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)).system_store


def test_cadata_as_pem_text_and_as_concatenated_der(tls_certs: Certs):
    both = sorted((der(tls_certs.ca), der(tls_certs.other_ca)))
    pem = tls_certs.ca.read_text() + "\nsome comment\n" + tls_certs.other_ca.read_text()
    from_pem = create_default_context(cadata=pem)
    from_der = create_default_context(cadata=der(tls_certs.ca) + der(tls_certs.other_ca))
    plain = ssl.create_default_context(cadata=pem)
    for ctx in (from_pem, from_der, plain):
        spec = tls_spec(ctx)
        assert (spec.system_store, list(spec.ca_certs)) == (False, both)


def test_equal_trust_in_another_order_is_the_same_spec(tls_certs: Certs):
    one = create_default_context(cafile=tls_certs.ca)
    one.load_verify_locations(cafile=tls_certs.other_ca)
    two = create_default_context(cafile=tls_certs.other_ca)
    two.load_verify_locations(cafile=tls_certs.ca)
    assert context_tls(one) == context_tls(two)


def _hashed_dir(tmp_path: Path, *certs: Path) -> Path:
    d = tmp_path / "capath"
    d.mkdir()
    for cert in certs:
        out = subprocess.run(
            ["openssl", "x509", "-hash", "-noout", "-in", str(cert)],
            check=True, capture_output=True, text=True,
        )
        (d / f"{out.stdout.strip()}.0").write_bytes(cert.read_bytes())
    return d


def test_capath_records_the_certificates_openssl_would_look_up(tls_certs: Certs, tmp_path):
    capath = _hashed_dir(tmp_path, tls_certs.ca)
    (capath / "other_ca.pem").write_bytes(tls_certs.other_ca.read_bytes())  # not by hash
    (capath / "notes.0").write_text("not a certificate")
    ctx = create_default_context(capath=capath)
    assert tls_spec(ctx) == TlsSpec(system_store=False, ca_certs=(der(tls_certs.ca),))
    assert tls_spec(create_default_context(capath=tmp_path / "missing")) == TlsSpec(
        system_store=False
    )


def test_options_versions_flags_and_ciphers_are_carried_when_not_the_defaults():
    for make in (ssl.create_default_context, create_default_context):
        ctx = make()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.options |= ssl.OP_NO_TICKET
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.set_ciphers("ECDHE+AESGCM")
        spec = tls_spec(ctx)
        assert spec.minimum_version == spec.maximum_version == ssl.TLSVersion.TLSv1_3
        assert spec.options == ctx.options and spec.options & ssl.OP_NO_TICKET
        assert spec.verify_flags == ctx.verify_flags
        assert spec.ciphers is not None
        rebuilt = ssl.create_default_context()
        rebuilt.set_ciphers(spec.ciphers)
        assert [c["name"] for c in rebuilt.get_ciphers()] == [
            c["name"] for c in ctx.get_ciphers()
        ]
        assert "TLS_AES_256_GCM_SHA384" not in spec.ciphers  # TLS 1.3 suites: not set_ciphers'


def test_settings_set_to_the_defaults_give_the_default_spec():
    default = ssl.create_default_context()
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_TICKET
    assert tls_spec(ctx) != DEFAULT_TLS
    ctx.minimum_version = default.minimum_version
    ctx.options = default.options
    assert tls_spec(ctx) == DEFAULT_TLS


def test_a_client_certificate_is_recorded(tls_certs: Certs):
    ctx = create_default_context(cafile=tls_certs.ca)
    ctx.load_cert_chain(tls_certs.client, tls_certs.client_key)
    spec = tls_spec(ctx)
    assert spec.cert_chain == tls_certs.client.read_bytes()
    assert spec.key == tls_certs.client_key.read_bytes()
    assert spec.password == b""
    assert "client_key" not in repr(spec) and "PRIVATE" not in repr(spec)
    assert context_tls(ctx)[0] != context_tls(create_default_context(cafile=tls_certs.ca))[0]


@pytest.mark.parametrize(
    "password",
    [CLIENT_KEY_PASSWORD, CLIENT_KEY_PASSWORD.encode(), lambda: CLIENT_KEY_PASSWORD],
    ids=["str", "bytes", "callable"],
)
def test_an_encrypted_client_key_carries_its_password(tls_certs: Certs, password):
    ctx = create_default_context()
    ctx.load_cert_chain(str(tls_certs.client), str(tls_certs.client_key_encrypted), password)
    spec = tls_spec(ctx)
    assert spec.key == tls_certs.client_key_encrypted.read_bytes()
    assert spec.password == CLIENT_KEY_PASSWORD.encode()


def test_a_wrong_password_fails_as_the_ssl_module_and_records_nothing(tls_certs: Certs):
    ctx = create_default_context()
    with pytest.raises(ssl.SSLError):
        ctx.load_cert_chain(tls_certs.client, tls_certs.client_key_encrypted, "wrong")
    assert tls_spec(ctx) == DEFAULT_TLS


def test_a_callable_password_is_called_once(tls_certs: Certs):
    calls = []

    def password() -> str:
        calls.append(1)
        return CLIENT_KEY_PASSWORD

    create_default_context().load_cert_chain(
        tls_certs.client, tls_certs.client_key_encrypted, password
    )
    assert calls == [1]


async def test_the_recording_context_is_a_working_context(tls_certs: Certs):
    """It does what ssl.create_default_context's would: here a handshake with a server
    that requires the client certificate loaded into it."""
    server_ctx = server_context(tls_certs.server, tls_certs.server_key, client_ca=tls_certs.ca)
    peers: list[Any] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peercert"))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    ctx = create_default_context(cafile=tls_certs.ca)
    ctx.load_cert_chain(tls_certs.client, tls_certs.client_key_encrypted, CLIENT_KEY_PASSWORD)
    async with server:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
        )
        await reader.read()
        writer.close()
    assert peers and dict(x[0] for x in peers[0]["subject"])["commonName"] == (
        "http-broker test client"
    )


def test_create_default_context_matches_the_ssl_modules():
    ours, theirs = create_default_context(), ssl.create_default_context()
    for name in ("protocol", "verify_mode", "check_hostname", "options", "verify_flags",
                 "minimum_version", "maximum_version"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.get_ciphers() == theirs.get_ciphers()
    assert ours.cert_store_stats() == theirs.cert_store_stats()
    server = create_default_context(ssl.Purpose.CLIENT_AUTH)
    assert server.protocol == ssl.PROTOCOL_TLS_SERVER and server.verify_mode == ssl.CERT_NONE
    with pytest.raises(TypeError):
        create_default_context("serverAuth")  # type: ignore[arg-type]


def test_a_server_context_is_refused():
    with pytest.raises(ValueError, match="not a server's"):
        tls_spec(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))


def test_what_the_wire_would_refuse_is_a_value_error_here(tls_certs: Certs):
    ctx = create_default_context()
    ctx.load_cert_chain(tls_certs.client, tls_certs.client_key, "x" * 5000)  # unencrypted
    with pytest.raises(ValueError, match="cannot be carried"):
        context_tls(ctx)


# -- the cache --------------------------------------------------------------------------


def test_a_reused_context_is_translated_once():
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    first = context_tls(ctx)
    assert context_tls(ctx)[1] is first[1]


@pytest.mark.parametrize("make", [ssl.create_default_context, create_default_context])
def test_a_context_changed_after_use_is_translated_again(make):
    ctx = make()
    assert context_tls(ctx) == (b"", DEFAULT_TLS)
    ctx.check_hostname = False
    assert not context_tls(ctx)[1].check_hostname
    ctx.verify_mode = ssl.CERT_NONE
    assert context_tls(ctx) == (UNVERIFIED_ID, UNVERIFIED_TLS)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_TICKET
    assert context_tls(ctx)[1].options == ctx.options
    ctx.hostname_checks_common_name = False
    assert context_tls(ctx)[1].hostname_checks_common_name is False


def test_a_recording_context_sees_loads_and_ciphers_after_use(tls_certs: Certs):
    ctx = create_default_context()
    assert context_tls(ctx)[0] == b""
    ctx.load_verify_locations(cafile=tls_certs.ca)
    assert context_tls(ctx)[1].ca_certs == (der(tls_certs.ca),)
    ctx.set_ciphers("ECDHE+AESGCM")
    assert context_tls(ctx)[1].ciphers is not None
    ctx.load_cert_chain(tls_certs.client, tls_certs.client_key)
    assert context_tls(ctx)[1].cert_chain == tls_certs.client.read_bytes()


def test_the_cache_does_not_keep_contexts_alive():
    import gc
    import weakref

    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    context_tls(ctx)
    ref = weakref.ref(ctx)
    del ctx
    gc.collect()
    assert ref() is None


# -- options ----------------------------------------------------------------------------


def test_server_hostname_is_checked_before_it_reaches_the_wire():
    assert check_server_hostname(None) == ""
    assert check_server_hostname("example.com") == "example.com"
    assert check_server_hostname("bücher.example") == "bücher.example"
    for name in ("a..b", "x" * 64 + ".example", "nul\x00.example"):  # the ssl module's refusals
        with pytest.raises(ValueError, match="not a host name"):
            check_server_hostname(name)
    with pytest.raises(TypeError):
        check_server_hostname(b"example.com")
    with pytest.raises(ValueError, match="255"):
        check_server_hostname("a" * 256)


async def test_tcp_connector_ssl_arguments_as_aiohttp():
    assert TCPConnector(ssl=None)._ssl is True
    assert TCPConnector()._ssl is True
    fp = Fingerprint(SHA256)
    assert TCPConnector(ssl=fp)._ssl is fp
    assert TCPConnector(ssl=CTX)._ssl is CTX
    with pytest.raises(TypeError):
        TCPConnector(ssl=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TCPConnector(ssl=Fingerprint(hashlib.md5(b"foo").digest()))
    with pytest.warns(DeprecationWarning, match="fingerprint is deprecated"):
        assert TCPConnector(fingerprint=SHA256)._ssl.fingerprint == SHA256
    with pytest.warns(DeprecationWarning, match="ssl_context is deprecated"):
        assert TCPConnector(ssl_context=CTX)._ssl is CTX
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="mutually"):
        TCPConnector(ssl=False, ssl_context=CTX)
    # the TLS setting is not the pool's: equal pools whatever the ssl=
    assert TCPConnector(ssl=False).spec == TCPConnector().spec


def test_ssl_shutdown_timeout_as_aiohttp_3_14(monkeypatch):
    # (on Python 3.11+: test_ssl_shutdown_timeout_before_python_3_11 has the rest)
    monkeypatch.setattr(connector_module, "sys", SimpleNamespace(version_info=(3, 11, 0)))
    assert TCPConnector().spec.ssl_shutdown_timeout == 0
    with pytest.warns(DeprecationWarning, match="ssl_shutdown_timeout parameter is deprecated"):
        assert TCPConnector(ssl_shutdown_timeout=1.0).spec.ssl_shutdown_timeout == 1.0
    with pytest.warns(DeprecationWarning, match="ssl_shutdown_timeout parameter is deprecated"):
        assert TCPConnector(ssl_shutdown_timeout=None).spec.ssl_shutdown_timeout is None
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError):
        TCPConnector(ssl_shutdown_timeout=-1)


@pytest.mark.parametrize(("timeout", "runtime_warning"), [(5.0, True), (0, False)])
def test_ssl_shutdown_timeout_before_python_3_11(monkeypatch, timeout, runtime_warning):
    monkeypatch.setattr(connector_module, "sys", SimpleNamespace(version_info=(3, 10, 0)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conn = TCPConnector(ssl_shutdown_timeout=timeout)
    categories = [w.category for w in caught]
    assert categories.count(DeprecationWarning) == 1
    assert (RuntimeWarning in categories) is runtime_warning
    if runtime_warning:
        message = str(caught[categories.index(RuntimeWarning)].message)
        assert f"ssl_shutdown_timeout={timeout} is ignored on Python < 3.11" in message
        assert "only ssl_shutdown_timeout=0 is supported" in message
    assert conn.spec.ssl_shutdown_timeout == timeout


async def test_session_ssl_shutdown_timeout_goes_to_its_own_connector(monkeypatch):
    monkeypatch.setattr(connector_module, "sys", SimpleNamespace(version_info=(3, 11, 0)))
    with pytest.warns(DeprecationWarning) as record:
        session = ClientSession(ssl_shutdown_timeout=2.0)
    # as aiohttp: the session's warning, then its connector's
    assert len([w for w in record if "ssl_shutdown_timeout" in str(w.message)]) == 2
    assert session.connector is not None
    assert session.connector.spec.ssl_shutdown_timeout == 2.0
    await session.close()
    given = TCPConnector()
    with pytest.warns(DeprecationWarning):
        session = ClientSession(connector=given, ssl_shutdown_timeout=2.0)
    assert session.connector is given and given.spec.ssl_shutdown_timeout == 0
    await session.close()


# -- connector errors carry the request's ssl -------------------------------------------


def test_connector_errors_carry_the_requests_ssl_and_server_hostname():
    key = ConnectionKey("example.com", 443, True, True, None, None, None)
    exc = ClientConnectorError(key, ConnectionRefusedError(111, "refused"))
    ctx = ssl.create_default_context()
    keyed = with_request_ssl(exc, ctx, "other.example")
    assert keyed.ssl is ctx and keyed._conn_key.server_hostname == "other.example"
    assert keyed.args[0] is keyed._conn_key
    assert "ssl:<ssl.SSLContext" in str(keyed)
    # the key pickles (a context cannot: its repr goes instead)
    back = pickle.loads(pickle.dumps(keyed))
    assert back.host == "example.com" and back.ssl == repr(ctx)
    fp = Fingerprint(SHA256)
    back = pickle.loads(pickle.dumps(with_request_ssl(exc, fp, None)))
    assert isinstance(back.ssl, Fingerprint) and back.ssl.fingerprint == SHA256
    assert str(with_request_ssl(exc, False, None)).endswith("ssl:False [refused]")


@pytest.mark.skipif(sys.platform != "linux", reason="loopback port 1 refuses on Linux")
async def test_a_refused_connection_names_the_requests_ssl():
    async with ClientSession() as session:
        with pytest.raises(ClientConnectorError) as info:
            await session.get("https://127.0.0.1:1/", ssl=False)
        assert info.value.ssl is False
        ctx = ssl.create_default_context()
        with pytest.raises(ClientConnectorError) as info:
            await session.get("https://127.0.0.1:1/", ssl=ctx, server_hostname="localhost")
        assert info.value.ssl is ctx
        assert info.value._conn_key.server_hostname == "localhost"
        with pytest.raises(ClientConnectorError) as info:
            await session.get("https://127.0.0.1:1/")
        assert info.value.ssl is True


async def test_request_tls_arguments_are_checked_before_anything_is_sent():
    async with ClientSession() as session:
        with pytest.raises(TypeError, match="ssl should be"):
            await session.get("https://127.0.0.1:1/", ssl="no")
        with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="mutually"):
            await session.get("https://127.0.0.1:1/", ssl=False, fingerprint=SHA256)
        with pytest.raises(ValueError, match="invalid length"):
            await session.get("https://127.0.0.1:1/", ssl=Fingerprint(b"short"))
        with pytest.raises(TypeError, match="server_hostname"):
            await session.get("https://127.0.0.1:1/", server_hostname=1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="server's"):
            await session.get(
                "https://127.0.0.1:1/",
                ssl=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
            )



# -- what a request carries -------------------------------------------------------------


async def _sent(session: ClientSession, url: str, **kwargs: Any) -> Any:
    """The Request message the session hands its (embedded) transport for one request
    to a closed port; the engine still carries it out."""
    transport = await session._get_transport()
    sent: list[Any] = []
    send = transport.send

    async def recording_send(req: Any, *args: Any, **kw: Any) -> None:
        sent.append(req)
        await send(req, *args, **kw)

    transport.send = recording_send  # type: ignore[method-assign]
    try:
        with pytest.raises(ClientConnectorError):
            await session.get(url, **kwargs)
    finally:
        del transport.send
    (req,) = sent
    return req


async def _mw(req: Any, handler: Any) -> Any:
    return await handler(req)


@pytest.mark.parametrize("middlewares", [(), (_mw,)], ids=["direct", "middlewares"])
async def test_requests_carry_their_tls_fields(middlewares):
    url = "https://127.0.0.1:1/"
    async with ClientSession(middlewares=middlewares) as session:
        transport = await session._get_transport()
        req = await _sent(session, url)
        assert (req.tls, req.fingerprint, req.server_hostname) == (b"", b"", "")
        assert not transport.tls_open
        req = await _sent(session, url, ssl=False)
        assert (req.tls, req.fingerprint) == (UNVERIFIED_ID, b"")
        assert transport.tls_open == {UNVERIFIED_ID}
        req = await _sent(session, url, ssl=Fingerprint(SHA256), server_hostname="localhost")
        assert (req.tls, req.fingerprint, req.server_hostname) == (
            UNVERIFIED_ID, SHA256, "localhost"
        )
        ctx = ssl.create_default_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        req = await _sent(session, url, ssl=ctx)
        assert req.tls == context_tls(ctx)[0] and req.tls in transport.tls_open
        req = await _sent(session, url, ssl=ssl.create_default_context())
        assert req.tls == b""  # a default-built context: the default's connections


async def test_requests_take_their_connectors_ssl():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    url = "https://127.0.0.1:1/"
    async with ClientSession(connector=TCPConnector(ssl=ctx)) as session:
        assert (await _sent(session, url)).tls == context_tls(ctx)[0] != b""
        assert (await _sent(session, url, ssl=False)).tls == UNVERIFIED_ID
    async with ClientSession(connector=TCPConnector(ssl=Fingerprint(SHA256))) as session:
        req = await _sent(session, url, ssl=ctx)
        assert (req.tls, req.fingerprint) == (context_tls(ctx)[0], SHA256)


def test_a_file_too_big_to_carry_is_refused_before_it_is_loaded(tls_certs: Certs, tmp_path):
    big = tmp_path / "big.pem"
    big.write_bytes(tls_certs.client.read_bytes() + b"\n" * (1 << 20))
    ctx = create_default_context()
    with pytest.raises(ValueError, match="too big to carry"):
        ctx.load_cert_chain(big, tls_certs.client_key)
    assert tls_spec(ctx) == DEFAULT_TLS
    with pytest.raises(FileNotFoundError):
        ctx.load_cert_chain(tmp_path / "missing.pem")


def test_a_bad_cafile_fails_as_the_ssl_module(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
    with pytest.raises(ssl.SSLError):
        ssl.create_default_context(cafile=bad)
    with pytest.raises(ssl.SSLError):
        create_default_context(cafile=bad)


async def test_a_middleware_sees_the_requests_ssl_and_may_change_its_server_hostname():
    seen: list[Any] = []

    async def rename(req: Any, handler: Any) -> Any:
        seen.append(req.ssl)
        req.server_hostname = "renamed.example"
        return await handler(req)

    async with ClientSession(middlewares=(rename,)) as session:
        req = await _sent(session, "https://127.0.0.1:1/", ssl=False, server_hostname="a.example")
    assert seen == [False]
    assert (req.tls, req.server_hostname) == (UNVERIFIED_ID, "renamed.example")


def test_fingerprint_mismatch_is_the_seeds_name():
    from worker_client import FingerprintMismatch, ServerFingerprintMismatch

    assert FingerprintMismatch is ServerFingerprintMismatch


def test_a_security_level_is_carried_even_with_the_default_ciphers():
    """``@SECLEVEL`` (key sizes, signature hashes) is not in ``get_ciphers()``: a context
    raised to level 3 must not become the broker's level 2, with or without other
    ciphers."""
    import _ssl

    from broker.tls import build_context

    same = ssl.create_default_context()
    same.set_ciphers(_ssl._DEFAULT_CIPHERS.replace("@SECLEVEL=2", "@SECLEVEL=3"))
    other = ssl.create_default_context()
    other.set_ciphers("DEFAULT:@SECLEVEL=3")
    for ctx in (same, other):
        assert ctx.security_level == 3
        spec = tls_spec(ctx)
        assert spec != DEFAULT_TLS and build_context(spec).security_level == 3


def test_hostname_checks_common_name_off_is_carried():
    from broker.tls import build_context

    ctx = ssl.create_default_context()
    assert tls_spec(ctx) == DEFAULT_TLS
    ctx.hostname_checks_common_name = False
    spec = tls_spec(ctx)
    assert spec != DEFAULT_TLS and not build_context(spec).hostname_checks_common_name
