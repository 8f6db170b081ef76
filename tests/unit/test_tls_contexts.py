"""broker/tls.py: contexts rebuilt from TlsSpecs, checked by real handshakes (in memory,
through ``ssl.MemoryBIO``) with the test certificates; the caches and the id table."""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

import pytest

from broker import tls as tls_mod
from broker.failures import ConnectionFailure
from broker.tls import TlsContexts, TlsError, TlsTable, build_context, default_context
from shared.specs import DEFAULT_TLS, UNVERIFIED_TLS, TlsSpec, encode_tls, tls_id
from tests.tls_certs import CLIENT_KEY_PASSWORD, Certs, server_context


def _der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def _handshake(
    client: ssl.SSLContext, server: ssl.SSLContext, name: str = "localhost"
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Both ends of one handshake, their bytes carried by hand; raises the client's
    (or the server's) ssl error."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {c: False, s: False}
    for _ in range(20):
        for end in (c, s):
            if not done[end]:
                try:
                    end.do_handshake()
                    done[end] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server's verdict on a client certificate comes after
            c.write(b"x")
            s_in.write(c_out.read())
            assert s.read(1) == b"x"
            return c, s
    raise AssertionError("the handshake did not finish")


def _trusting(certs: Certs, **kw: object) -> TlsSpec:
    return TlsSpec(system_store=False, ca_certs=(_der(certs.ca),), **kw)  # type: ignore[arg-type]


def _server(certs: Certs, *, client_ca: Path | None = None) -> ssl.SSLContext:
    ctx = server_context(certs.server, certs.server_key, client_ca=client_ca)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def test_default_context_verifies_and_offers_http11(tls_certs: Certs) -> None:
    ctx = default_context()
    assert ctx is default_context()  # one for the process
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    assert ctx.cert_store_stats()["x509_ca"] == system  # the system's store, as aiohttp's
    with pytest.raises(ssl.SSLCertVerificationError):  # the test CA is not in the system store
        _handshake(ctx, _server(tls_certs))


def test_ca_certs_are_trusted_and_alpn_is_http11(tls_certs: Certs) -> None:
    client, server = _handshake(build_context(_trusting(tls_certs)), _server(tls_certs))
    assert client.selected_alpn_protocol() == "http/1.1"
    assert server.selected_alpn_protocol() == "http/1.1"
    assert client.getpeercert()["subject"] == ((("commonName", "localhost"),),)


def test_another_ca_or_another_host_fails_verification(tls_certs: Certs) -> None:
    other = TlsSpec(system_store=False, ca_certs=(_der(tls_certs.other_ca),))
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        _handshake(build_context(other), _server(tls_certs))
    assert info.value.verify_code == 20  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(build_context(_trusting(tls_certs)), _server(tls_certs), "other.invalid")
    # check_hostname=False: the certificate is still verified, the name not
    _handshake(
        build_context(_trusting(tls_certs, check_hostname=False)),
        _server(tls_certs),
        "other.invalid",
    )


def test_unverified_accepts_anything_and_offers_http11(tls_certs: Certs) -> None:
    ctx = build_context(UNVERIFIED_TLS)
    assert ctx.verify_mode is ssl.CERT_NONE and not ctx.check_hostname
    server = server_context(tls_certs.expired, tls_certs.expired_key)
    server.set_alpn_protocols(["http/1.1"])
    client, _ = _handshake(ctx, server, "other.invalid")
    assert client.selected_alpn_protocol() == "http/1.1"


def test_versions_options_flags_and_ciphers_are_applied(tls_certs: Certs) -> None:
    base = ssl.create_default_context()
    spec = _trusting(
        tls_certs,
        minimum_version=int(ssl.TLSVersion.TLSv1_2),
        maximum_version=int(ssl.TLSVersion.TLSv1_2),
        options=int(base.options | ssl.OP_NO_TICKET),
        verify_flags=int(base.verify_flags | ssl.VERIFY_X509_STRICT),
        ciphers="ECDHE-ECDSA-AES128-GCM-SHA256",
    )
    ctx = build_context(spec)
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_TICKET
    assert ctx.verify_flags & ssl.VERIFY_X509_STRICT
    client, _ = _handshake(ctx, _server(tls_certs))
    assert client.version() == "TLSv1.2"
    assert client.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    # None keeps create_default_context()'s
    plain = build_context(_trusting(tls_certs))
    assert plain.options == base.options and plain.verify_flags == base.verify_flags
    assert plain.minimum_version == base.minimum_version


def _client_spec(certs: Certs, *, encrypted: bool = False, password: bytes = b"") -> TlsSpec:
    key = certs.client_key_encrypted if encrypted else certs.client_key
    return _trusting(
        certs, cert_chain=certs.client.read_bytes(), key=key.read_bytes(), password=password
    )


@pytest.mark.parametrize("use_memfd", [True, False], ids=["memfd", "private-dir"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain-key", "encrypted-key"])
def test_a_client_certificate_is_presented(
    tls_certs: Certs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    use_memfd: bool,
    encrypted: bool,
) -> None:
    if use_memfd and not tls_mod._HAS_MEMFD:
        pytest.skip("no memfd here")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    password = CLIENT_KEY_PASSWORD.encode() if encrypted else b""
    ctx = build_context(_client_spec(tls_certs, encrypted=encrypted, password=password),
                        use_memfd=use_memfd)
    _, server = _handshake(ctx, _server(tls_certs, client_ca=tls_certs.ca))
    peer = server.getpeercert()
    assert peer["subject"] == ((("commonName", "http-broker test client"),),)
    assert os.listdir(tmp_path) == []  # no key left behind (none written at all with memfd)


def test_the_key_may_sit_in_the_chain_file(tls_certs: Certs) -> None:
    chain = tls_certs.client.read_bytes() + tls_certs.client_key.read_bytes()
    ctx = build_context(_trusting(tls_certs, cert_chain=chain))
    _handshake(ctx, _server(tls_certs, client_ca=tls_certs.ca))


def test_without_a_client_certificate_a_server_requiring_one_refuses(tls_certs: Certs) -> None:
    with pytest.raises(ssl.SSLError):
        _handshake(build_context(_trusting(tls_certs)), _server(tls_certs, client_ca=tls_certs.ca))


@pytest.mark.parametrize(
    "spec_kw",
    [
        {"cert_chain": b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"},
        {"ciphers": "NO-SUCH-CIPHER"},
        {"minimum_version": 12345},
        {"options": -(2**70)},
        {"ca_certs": (b"not DER",)},
    ],
    ids=["bad-pem", "bad-ciphers", "bad-version", "bad-options", "bad-ca"],
)
def test_a_spec_that_cannot_be_built_is_a_tls_error(spec_kw: dict[str, object]) -> None:
    with pytest.raises(TlsError, match="cannot use these TLS settings"):
        build_context(TlsSpec(system_store=False, **spec_kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("use_memfd", [True, False], ids=["memfd", "private-dir"])
@pytest.mark.parametrize("password", [b"", b"wrong"])
def test_a_wrong_password_is_a_tls_error_not_a_prompt(
    tls_certs: Certs, password: bytes, use_memfd: bool
) -> None:
    spec = _client_spec(tls_certs, encrypted=True, password=password)
    with pytest.raises(TlsError):
        build_context(spec, use_memfd=use_memfd and tls_mod._HAS_MEMFD)


def test_contexts_are_cached_by_id_bounded_and_remember_errors(
    tls_certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[TlsSpec] = []
    real = tls_mod.build_context

    def counting(spec: TlsSpec, **kw: bool) -> ssl.SSLContext:
        built.append(spec)
        return real(spec, **kw)

    monkeypatch.setattr(tls_mod, "build_context", counting)
    contexts = TlsContexts(max_size=2)
    assert contexts.context(b"", None) is default_context()
    specs = [_trusting(tls_certs, ciphers=c) for c in ("HIGH", "AESGCM", "CHACHA20")]
    ids = [tls_id(encode_tls(s)) for s in specs]
    a = contexts.context(ids[0], specs[0])
    assert contexts.context(ids[0], specs[0]) is a and contexts.context(ids[0], None) is a
    contexts.context(ids[1], specs[1])
    contexts.context(ids[0], None)  # a is now the most recently used
    contexts.context(ids[2], specs[2])  # over the bound: the second one goes
    assert len(contexts) == 2 and len(built) == 3
    assert contexts.context(ids[0], None) is a
    with pytest.raises(TlsError):
        contexts.context(ids[1], None)  # evicted, and no spec to make it again
    bad = TlsSpec(system_store=False, ciphers="NO-SUCH-CIPHER")
    bad_id = tls_id(encode_tls(bad))
    for _ in range(3):
        with pytest.raises(TlsError, match="No cipher"):
            contexts.context(bad_id, bad)
    assert built.count(bad) == 1  # the error is cached, not built again per request


def test_the_table_checks_ids_and_caps_specs() -> None:
    table = TlsTable(max_specs=2)
    specs = [TlsSpec(system_store=False, ciphers=c) for c in ("HIGH", "AESGCM", "CHACHA20")]
    ids = [tls_id(encode_tls(s)) for s in specs]
    with pytest.raises(ValueError, match="SHA-256"):
        table.open(ids[0], specs[1])  # another spec's id: never accepted
    with pytest.raises(ValueError):
        table.open(tls_id(encode_tls(DEFAULT_TLS)), UNVERIFIED_TLS)
    with pytest.raises(ConnectionFailure) as unknown:
        table.find(ids[0])
    assert unknown.value.code == "protocol"
    table.open(ids[0], specs[0])
    table.open(ids[0], specs[0])  # again: nothing new
    table.open(ids[1], specs[1])
    table.open(ids[2], specs[2])  # over the cap: not kept
    assert table.find(ids[0]) is specs[0] and len(table) == 2
    with pytest.raises(ConnectionFailure, match="max_tls_specs = 2") as capped:
        table.find(ids[2])
    assert capped.value.code == "broker"


def test_a_spec_never_shows_its_key() -> None:
    spec = TlsSpec(cert_chain=b"CHAIN", key=b"SECRET-KEY", password=b"SECRET-PW")
    assert "SECRET" not in repr(spec) and "client certificate" in repr(spec)


def test_a_failure_of_the_moment_is_not_remembered(
    tls_certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors while a client certificate is loaded: that attempt fails,
    the next one builds the context (only a spec's own fault is cached)."""
    spec = _client_spec(tls_certs)

    def exhausted(*args: object, **kw: object) -> object:
        raise OSError(24, "Too many open files")

    contexts = TlsContexts()
    with monkeypatch.context() as m:
        m.setattr(os, "memfd_create", exhausted, raising=False)
        m.setattr(tempfile, "mkdtemp", exhausted)
        with pytest.raises(TlsError, match="Too many open files"):
            contexts.context(tls_id(encode_tls(spec)), spec)
    ctx = contexts.context(tls_id(encode_tls(spec)), spec)
    _handshake(ctx, _server(tls_certs, client_ca=tls_certs.ca))


def test_the_table_caps_the_bytes_of_its_specs() -> None:
    """Specs of many CA certificates: the one that would pass the byte cap is refused,
    and the requests naming it fail with the broker's cap, not as never opened."""
    big = [TlsSpec(system_store=False, ca_certs=(bytes([n]) * 40_000,)) for n in range(3)]
    ids = [tls_id(encode_tls(s)) for s in big]
    table = TlsTable(max_specs=64, max_bytes=100_000)
    for tls, spec in zip(ids, big, strict=True):
        table.open(tls, spec)
    assert len(table) == 2 and table.find(ids[1]) is big[1]
    with pytest.raises(ConnectionFailure, match="100000 bytes") as capped:
        table.find(ids[2])
    assert capped.value.code == "broker"


def test_the_contexts_cap_the_bytes_of_their_specs(tls_certs: Certs) -> None:
    """Two specs of many CA certificates past the byte cap: building the second drops
    the first (each context holds its CA store), under the count cap."""
    cas = sorted(ssl.create_default_context().get_ca_certs(binary_form=True))
    if len(cas) < 40:
        cas = [_der(tls_certs.ca), _der(tls_certs.other_ca)] * 20
    half = len(cas) // 2
    a, b = (TlsSpec(system_store=False, ca_certs=tuple(part)) for part in (cas[:half], cas[half:]))
    size = max(len(encode_tls(a)), len(encode_tls(b)))
    contexts = TlsContexts(max_size=64, max_bytes=size + size // 2)
    ctx_a = contexts.context(tls_id(encode_tls(a)), a)
    contexts.context(tls_id(encode_tls(b)), b)
    assert len(contexts) == 1 and contexts.bytes == len(encode_tls(b))
    assert contexts.context(tls_id(encode_tls(a)), a) is not ctx_a  # built again
