"""TLS on the worker side: aiohttp's ``ssl=`` values, and their translation into the
``shared.specs.TlsSpec`` the engine builds its contexts from.

An ``ssl.SSLContext`` cannot cross a process boundary, so a request names its TLS
settings by a spec: ``Request.tls`` is b"" for aiohttp's default (``ssl=True``), else
the spec's id, the spec itself sent once per connection (``Transport.open_tls``).

How a context is translated (``tls_spec``):

- verify mode, hostname check (and ``hostname_checks_common_name``), protocol bounds,
  options, verify flags and ciphers (with the security level, ``@SECLEVEL``) are read
  from it; each one equal to ``ssl.create_default_context()``'s is None (the
  engine's default), so equal settings give equal specs, and a context set up as the
  default one gives the default spec (b"": the same connections as ``ssl=True``).
  Without verification the trusted certificates do not matter and are left out.
- A context made by this module's ``create_default_context`` records what is loaded into
  it: the certificates of ``load_verify_locations`` (cafile and cadata, and each
  certificate file of capath that OpenSSL would look up: ``<hash>.<n>``, read at the
  call), the system store (``load_default_certs``, ``set_default_verify_paths``) and the
  client certificate (``load_cert_chain``: its PEM files read at the call, a callable
  password called then). Its spec is exact.
- Any other context shows only its CA certificates (``get_ca_certs(binary_form=True)``),
  never a client certificate. The rule: none visible means the system store where this
  process's own store is unseen too (``ssl.create_default_context()`` shows none when
  OpenSSL reads the store lazily from a directory), else nothing trusted (a bare context,
  or one given only a capath: trusting the system store would accept what it refuses);
  all of the system store's (as this process loads it) and more means the system store
  plus the others; otherwise exactly the visible ones.

A context's translation is cached per context object (weakly), beside a snapshot of its
state (verify mode, hostname checks, options, verify flags, protocol bounds, and a
recording context's count of changes): a reused context costs a dict lookup and seven
getters per request (about 1.5 us), and a context changed after its first use is translated again.
Two changes are not seen on a context that does not record, because OpenSSL offers no
cheap way to see them: certificates loaded, and ``set_ciphers``, after its first request
(newly loaded certificates are then not trusted: it fails closed). Set a context up before
using it, or make it with ``create_default_context``, which sees every change.
"""

from __future__ import annotations

import base64
import os
import re
import ssl
import sys
import warnings
import weakref
from _ssl import _SSLContext
from typing import Any, NamedTuple

import msgspec

from shared.framing import MAX_FRAME
from shared.messages import Request
from shared.rules import sni_name_ok
from shared.specs import DEFAULT_TLS, UNVERIFIED_TLS, TlsSpec, encode_tls, tls_id

__all__ = [
    "Fingerprint",
    "RecordingSSLContext",
    "create_default_context",
    "tls_spec",
    "context_tls",
    "request_tls",
    "merge_ssl",
    "check_server_hostname",
    "with_tls",
    "UNVERIFIED_ID",
]

UNVERIFIED_ID = tls_id(encode_tls(UNVERIFIED_TLS))
_MAX_SERVER_HOSTNAME = 255  # Request.server_hostname's bound on the wire


class Fingerprint:
    """A pinned SHA-256 digest of the server certificate's DER form (aiohttp's)."""

    _INSECURE = frozenset((16, 20))  # md5, sha1

    def __init__(self, fingerprint: bytes) -> None:
        length = len(fingerprint)
        if length in self._INSECURE:
            raise ValueError("md5 and sha1 are insecure and not supported. Use sha256.")
        if length != 32:
            raise ValueError("fingerprint has invalid length")
        self._fingerprint = bytes(fingerprint)

    @property
    def fingerprint(self) -> bytes:
        return self._fingerprint

    def __repr__(self) -> str:
        return f"<Fingerprint sha256={self._fingerprint.hex()}>"


# -- aiohttp's ssl= arguments ------------------------------------------------------------

_EXCLUSIVE = "verify_ssl, ssl_context, fingerprint and ssl parameters are mutually exclusive"
_ALLOWED = (ssl.SSLContext, bool, Fingerprint, type(None))
_DEPRECATED = {
    "verify_ssl": "verify_ssl is deprecated, use ssl=False instead",
    "ssl_context": "ssl_context is deprecated, use ssl=context instead",
    "fingerprint": "fingerprint is deprecated, use ssl=Fingerprint(fingerprint) instead",
}


def merge_ssl(
    ssl_: Any, verify_ssl: bool | None, ssl_context: Any, fingerprint: bytes | None
) -> Any:
    """aiohttp's ``_merge_ssl_params``: the deprecated ``verify_ssl``, ``ssl_context`` and
    ``fingerprint`` folded into one ``ssl`` value (each with its DeprecationWarning)."""
    if ssl_ is None:
        ssl_ = True
    if verify_ssl is not None or ssl_context is not None or fingerprint is not None:
        # (given?, its warning, the ssl value it stands for), in aiohttp's order
        for given, warning, value in (
            (verify_ssl is not None and not verify_ssl, "verify_ssl", lambda: False),
            (ssl_context is not None, "ssl_context", lambda: ssl_context),
            (fingerprint is not None, "fingerprint", lambda: Fingerprint(fingerprint)),
        ):
            if given:
                warnings.warn(_DEPRECATED[warning], DeprecationWarning, stacklevel=3)
                if ssl_ is not True:
                    raise ValueError(_EXCLUSIVE)
                ssl_ = value()
    if not isinstance(ssl_, _ALLOWED):
        raise TypeError(
            f"ssl should be SSLContext, bool, Fingerprint or None, got {ssl_!r} instead."
        )
    return ssl_


def check_server_hostname(server_hostname: Any) -> str:
    """``server_hostname=`` as a request carries it ("": the URL's host)."""
    if server_hostname is None:
        return ""
    if not isinstance(server_hostname, str):
        raise TypeError(f"server_hostname must be a str or None, got {server_hostname!r}")
    if len(server_hostname) > _MAX_SERVER_HOSTNAME:
        raise ValueError(f"server_hostname is longer than {_MAX_SERVER_HOSTNAME} characters")
    if not sni_name_ok(server_hostname):
        raise ValueError(f"server_hostname {server_hostname!r} is not a host name (SNI)")
    return server_hostname


def request_tls(ssl_: Any, connector_ssl: Any) -> tuple[bytes, TlsSpec, bytes]:
    """A request's (tls id, spec, pinned digest) from its merged ``ssl`` and its
    connector's, chosen as aiohttp's ``_get_ssl_context``/``_get_fingerprint``: the
    request's wins unless it is True; False or a Fingerprint means the unverified
    context; a Fingerprint on either side is checked."""
    chosen = ssl_ if ssl_ is not True else connector_ssl
    if isinstance(chosen, ssl.SSLContext):
        ident, spec = context_tls(chosen)
    elif chosen is True:
        ident, spec = b"", DEFAULT_TLS
    else:
        ident, spec = UNVERIFIED_ID, UNVERIFIED_TLS
    pin = ssl_ if isinstance(ssl_, Fingerprint) else connector_ssl
    return ident, spec, pin.fingerprint if isinstance(pin, Fingerprint) else b""


def with_tls(req: Request, tls: tuple[bytes, TlsSpec, bytes] | None, sni: str) -> Request:
    """``req`` with its TLS fields: a request with the default ones is built without them
    (msgspec matches keyword arguments by name, and these are the last of many)."""
    if tls is None:
        return msgspec.structs.replace(req, server_hostname=sni)
    return msgspec.structs.replace(req, tls=tls[0], fingerprint=tls[2], server_hostname=sni)


# -- the recording context ---------------------------------------------------------------

_PEM_CERT = re.compile(
    rb"-----BEGIN (?:TRUSTED )?CERTIFICATE-----(.+?)-----END (?:TRUSTED )?CERTIFICATE-----",
    re.DOTALL,
)
_HASHED_NAME = re.compile(r"[0-9a-f]{8}\.[0-9]+")  # OpenSSL's by-hash lookup names
_NOWHERE = "/nonexistent/http-broker"  # a capath that loads nothing (see _template)


_MAX_CHAIN = 1 << 20  # TlsSpec.cert_chain's bound
_MAX_KEY = 256 * 1024  # TlsSpec.key's
_MAX_CAFILE = MAX_FRAME  # more could not travel in a TlsOpen anyway


def _read(path: Any, limit: int) -> bytes:
    """A file the context loads, read whole: at most ``limit`` bytes, or a ValueError
    (before the context has loaded it)."""
    with open(os.fspath(path), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        name = os.fsdecode(path)
        raise ValueError(f"{name} is over {limit} bytes: too big to carry to the broker")
    return data


def _der_element(data: bytes, at: int) -> int:
    """The end of the DER element (a certificate: a SEQUENCE) that starts at ``at``."""
    if len(data) < at + 2 or data[at] != 0x30:
        raise ValueError("not a DER certificate")
    length, pos = data[at + 1], at + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(data) < pos + count:
            raise ValueError("not a DER certificate")
        length, pos = int.from_bytes(data[pos : pos + count], "big"), pos + count
    if len(data) < pos + length:
        raise ValueError("a truncated DER certificate")
    return pos + length


def _der_certs(data: bytes) -> list[bytes]:
    """The certificates of concatenated DER (``cadata`` as bytes)."""
    out, at = [], 0
    while at < len(data):
        end = _der_element(data, at)
        out.append(data[at:end])
        at = end
    return out


def _pem_certs(data: bytes) -> list[bytes]:
    """The certificates (DER) of PEM text; a TRUSTED CERTIFICATE without its trust data."""
    out = []
    for match in _PEM_CERT.finditer(data):
        der = base64.b64decode(b"".join(match.group(1).split()))
        out.append(der[: _der_element(der, 0)])
    return out


def _capath_certs(capath: Any) -> list[bytes]:
    path = os.fsdecode(capath)
    try:
        names = sorted(os.listdir(path))
    except OSError:  # as OpenSSL: a directory it cannot read adds nothing
        return []
    out = []
    for name in names:
        if _HASHED_NAME.fullmatch(name):
            try:
                out.extend(_pem_certs(_read(os.path.join(path, name), _MAX_CAFILE)))
            except (OSError, ValueError):
                continue
    return out


def _password_bytes(password: Any) -> bytes:
    if password is None:
        return b""
    if isinstance(password, str):
        return password.encode()
    return bytes(password)


class RecordingSSLContext(ssl.SSLContext):
    """An ``ssl.SSLContext`` that remembers what was loaded into it, so that the broker
    can build the same context (made by ``create_default_context``)."""

    _tls_changes = 0
    _tls_system = False
    _tls_cas: frozenset[bytes] = frozenset()
    _tls_client = (b"", b"", b"")  # chain, key, password

    def _tls_changed(self) -> None:
        self._tls_changes += 1

    def load_cert_chain(
        self, certfile: Any, keyfile: Any = None, password: Any = None
    ) -> None:
        chain = _read(certfile, _MAX_CHAIN)
        key = _read(keyfile, _MAX_KEY) if keyfile is not None else b""
        if callable(password):
            password = password()  # once: the ssl module and the spec get the same
        super().load_cert_chain(certfile, keyfile, password)
        self._tls_client = (chain, key, _password_bytes(password))
        self._tls_changed()

    def load_verify_locations(
        self, cafile: Any = None, capath: Any = None, cadata: Any = None
    ) -> None:
        pem = _read(cafile, _MAX_CAFILE) if cafile is not None else b""
        super().load_verify_locations(cafile, capath, cadata)
        certs = _pem_certs(pem)
        if capath is not None:
            certs += _capath_certs(capath)
        if isinstance(cadata, str):
            certs += _pem_certs(cadata.encode("ascii"))
        elif cadata is not None:
            certs += _der_certs(bytes(cadata))
        self._tls_cas = self._tls_cas.union(certs)
        self._tls_changed()

    def load_default_certs(self, purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH) -> None:
        super().load_default_certs(purpose)
        self._tls_system = True
        self._tls_changed()

    def set_default_verify_paths(self) -> None:
        super().set_default_verify_paths()
        self._tls_system = True
        self._tls_changed()

    def set_ciphers(self, cipherlist: str, /) -> None:
        super().set_ciphers(cipherlist)
        self._tls_changed()


class _Defaults(NamedTuple):
    protocol: int
    verify_mode: int
    check_hostname: bool
    options: int
    verify_flags: int
    minimum_version: int
    maximum_version: int
    ciphers: tuple[str, ...]
    security_level: int
    common_name: bool


_defaults: dict[Any, _Defaults] = {}


def _template(purpose: Any) -> _Defaults:
    """``ssl.create_default_context(purpose)``'s settings on this Python, read from one
    made with a capath that loads nothing (a few ms once, not the store's ~40 ms)."""
    found = _defaults.get(purpose)
    if found is None:
        t = ssl.create_default_context(purpose, capath=_NOWHERE)
        found = _defaults[purpose] = _Defaults(
            t.protocol, t.verify_mode, t.check_hostname, int(t.options), int(t.verify_flags),
            int(t.minimum_version), int(t.maximum_version),
            tuple(c["name"] for c in t.get_ciphers()), t.security_level,
            t.hostname_checks_common_name,
        )
    return found


def create_default_context(
    purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH,
    *,
    cafile: Any = None,
    capath: Any = None,
    cadata: Any = None,
) -> RecordingSSLContext:
    """``ssl.create_default_context``, whose context records what is loaded into it:
    pass it as ``ssl=`` to use a client certificate (``load_cert_chain``) or ``capath``."""
    d = _template(purpose)  # raises as ssl.create_default_context for a bad purpose
    ctx = RecordingSSLContext(d.protocol)
    ctx.options = d.options  # type: ignore[assignment]
    ctx.verify_flags = d.verify_flags  # type: ignore[assignment]
    ctx.minimum_version = d.minimum_version  # type: ignore[assignment]
    ctx.maximum_version = d.maximum_version  # type: ignore[assignment]
    ctx.check_hostname = False
    ctx.verify_mode = d.verify_mode  # type: ignore[assignment]
    ctx.check_hostname = d.check_hostname
    if cafile or capath or cadata:
        ctx.load_verify_locations(cafile, capath, cadata)
    elif ctx.verify_mode != ssl.CERT_NONE:
        ctx.load_default_certs(purpose)
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog and not sys.flags.ignore_environment:
        ctx.keylog_filename = keylog
    return ctx


# -- translation -------------------------------------------------------------------------

_system_cas: frozenset[bytes] | None = None


def _system_store() -> frozenset[bytes]:
    """The CA certificates of the system store as this process loads it (once)."""
    global _system_cas
    if _system_cas is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_default_certs()
        _system_cas = frozenset(ctx.get_ca_certs(binary_form=True))
    return _system_cas


def _visible_store(ctx: ssl.SSLContext) -> tuple[bool, frozenset[bytes]]:
    certs = frozenset(ctx.get_ca_certs(binary_form=True))
    system = _system_store()
    if not certs:  # the system store only where it is unseen here too (else: nothing)
        return not system, certs
    if system and system <= certs:
        return True, certs - system
    return False, certs


def _unless(value: int, default: int) -> int | None:
    return None if value == default else value


def _ciphers(ctx: ssl.SSLContext, d: _Defaults) -> str | None:
    """The cipher string, with the security level (``@SECLEVEL``, which
    ``get_ciphers()`` does not show) when it is not the default's."""
    ciphers = ctx.get_ciphers()
    level = ctx.security_level
    if tuple(c["name"] for c in ciphers) == d.ciphers and level == d.security_level:
        return None
    # set_ciphers names TLS 1.2 and older suites; TLS 1.3's are not set through it.
    names = ":".join(c["name"] for c in ciphers if c["protocol"] != "TLSv1.3")
    if not names:
        raise ValueError("the ssl context allows no cipher below TLS 1.3: not translatable")
    return names if level == d.security_level else f"{names}:@SECLEVEL={level}"


def tls_spec(ctx: ssl.SSLContext) -> TlsSpec:
    """The ``TlsSpec`` an ``SSLContext`` stands for (see the module docstring)."""
    if ctx.protocol == ssl.PROTOCOL_TLS_SERVER:
        raise ValueError("ssl= takes a client's context, not a server's (PROTOCOL_TLS_SERVER)")
    d = _template(ssl.Purpose.SERVER_AUTH)
    verify = ctx.verify_mode != ssl.CERT_NONE
    chain, key, password = b"", b"", b""
    if isinstance(ctx, RecordingSSLContext):
        system, cas = ctx._tls_system, ctx._tls_cas
        chain, key, password = ctx._tls_client
    else:
        system, cas = _visible_store(ctx)
    if not verify:
        system, cas = True, frozenset()
    return TlsSpec(
        verify=verify,
        check_hostname=ctx.check_hostname,
        system_store=system,
        ca_certs=tuple(sorted(cas)),
        minimum_version=_unless(int(ctx.minimum_version), d.minimum_version),
        maximum_version=_unless(int(ctx.maximum_version), d.maximum_version),
        options=_unless(int(ctx.options), d.options),
        verify_flags=_unless(int(ctx.verify_flags), d.verify_flags),
        ciphers=_ciphers(ctx, d),
        cert_chain=chain,
        key=key,
        password=password,
        hostname_checks_common_name=(
            None
            if ctx.hostname_checks_common_name == d.common_name
            else ctx.hostname_checks_common_name
        ),
    )


_spec_decoder = msgspec.msgpack.Decoder(TlsSpec)
_FRAME_ROOM = MAX_FRAME - 1024  # a TlsOpen is the spec, its id and a few bytes


def _spec_id(spec: TlsSpec) -> bytes:
    """The id a request names ``spec`` by; a spec the wire would refuse is a ValueError
    here, before the broker sees it."""
    if spec == DEFAULT_TLS:
        return b""
    encoded = encode_tls(spec)
    if len(encoded) > _FRAME_ROOM:
        raise ValueError(f"the ssl context is too big to carry ({len(encoded)} bytes)")
    try:
        _spec_decoder.decode(encoded)
    except msgspec.ValidationError as exc:
        raise ValueError(f"the ssl context cannot be carried to the broker: {exc}") from None
    return tls_id(encoded)


_B = _SSLContext
_verify_mode = _B.verify_mode.__get__  # type: ignore[attr-defined]
_check_hostname = _B.check_hostname.__get__  # type: ignore[attr-defined]
_options = _B.options.__get__  # type: ignore[attr-defined]
_verify_flags = _B.verify_flags.__get__  # type: ignore[attr-defined]
_minimum = _B.minimum_version.__get__  # type: ignore[attr-defined]
_maximum = _B.maximum_version.__get__  # type: ignore[attr-defined]
_host_flags = _B._host_flags.__get__  # type: ignore[attr-defined]  (hostname_checks_common_name)

_cache: weakref.WeakKeyDictionary[ssl.SSLContext, tuple[tuple[Any, ...], bytes, TlsSpec]] = (
    weakref.WeakKeyDictionary()
)


def _state(ctx: ssl.SSLContext) -> tuple[Any, ...]:
    changes = ctx._tls_changes if isinstance(ctx, RecordingSSLContext) else 0
    return (
        _verify_mode(ctx), _check_hostname(ctx), _options(ctx), _verify_flags(ctx),
        _minimum(ctx), _maximum(ctx), _host_flags(ctx), changes,
    )


def context_tls(ctx: ssl.SSLContext) -> tuple[bytes, TlsSpec]:
    """(tls id, spec) of a context, from the cache while the context is unchanged."""
    state = _state(ctx)
    hit = _cache.get(ctx)
    if hit is not None and hit[0] == state:
        return hit[1], hit[2]
    spec = tls_spec(ctx)
    ident = _spec_id(spec)
    _cache[ctx] = (state, ident, spec)
    return ident, spec
