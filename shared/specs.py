"""Frozen, hashable descriptions of things that live in the broker.

"Equal arguments, same state": a worker never holds a pool or a resolver, only a spec of
one. Two specs that compare equal name the same object in the broker, so a spec is a
dict key there.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = [
    "ClientTimeout", "DEFAULT_TIMEOUT", "PoolSpec", "ResolverSpec", "encode_pool", "decode_pool",
    "DEFAULT_POOL", "DEFAULT_POOL_BYTES", "JarSpec", "MAX_SECURE_ORIGINS",
    "TlsSpec", "DEFAULT_TLS", "UNVERIFIED_TLS", "encode_tls", "tls_id", "ProxySpec",
    "ProxyRoute", "encode_proxy", "decode_proxy",
]

ResolverOption = tuple[str, bool | int | float | str | None]


def _check_non_negative(owner: str, name: str, value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{owner}.{name} must be None or >= 0, got {value!r}")


class ClientTimeout(msgspec.Struct, frozen=True, array_like=True):
    """Timeouts of one request, as aiohttp's ``ClientTimeout``; None or 0 disables one.

    ``total`` covers the whole request including reading the body; ``connect`` covers
    getting a connection (the wait for a pool slot included); ``sock_connect`` one
    connection attempt; ``sock_read`` the longest pause between two reads.
    """

    total: float | None = None
    connect: float | None = None
    sock_read: float | None = None
    sock_connect: float | None = None
    ceil_threshold: float = 5

    def __post_init__(self) -> None:
        for name in ("total", "connect", "sock_read", "sock_connect"):
            _check_non_negative("ClientTimeout", name, getattr(self, name))


DEFAULT_TIMEOUT = ClientTimeout(total=5 * 60, sock_connect=30)


class ResolverSpec(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A resolver in the broker: ``threaded`` (getaddrinfo in a thread) or ``async``
    (c-ares through aiodns, with ``nameservers`` and pycares channel ``options``)."""

    kind: str = "threaded"
    nameservers: tuple[str, ...] = ()
    options: tuple[ResolverOption, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("threaded", "async"):
            raise ValueError(f"ResolverSpec.kind must be 'threaded' or 'async', got {self.kind!r}")


DEFAULT_RESOLVER = ResolverSpec()


class PoolSpec(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A connection pool in the broker: what a ``TCPConnector``/``UnixConnector`` sends.

    ``limit`` counts connections across every worker using this pool; 0 means no limit.
    ``limit_per_host`` counts per (host, port, is_ssl); 0 means no limit.
    """

    kind: str = "tcp"
    limit: int = 100
    limit_per_host: int = 0
    force_close: bool = False
    keepalive_timeout: float | None = 15.0
    use_dns_cache: bool = True
    ttl_dns_cache: float | None = 10
    dns_cache_max_size: int = 1000
    resolver: ResolverSpec = DEFAULT_RESOLVER
    family: int = 0
    local_addr: tuple[str, int] | None = None
    happy_eyeballs_delay: float | None = 0.25
    rate_limit_per_host: float = 0
    path: str | None = None
    name: str = ""
    # aiohttp 3.14's (deprecated) grace period for the TLS close_notify when the pool
    # closes its connections; 0 aborts them (aiohttp's default).
    ssl_shutdown_timeout: float | None = 0

    def __post_init__(self) -> None:
        if self.kind not in ("tcp", "unix"):
            raise ValueError(f"PoolSpec.kind must be 'tcp' or 'unix', got {self.kind!r}")
        if self.kind == "unix" and not self.path:
            raise ValueError("a unix pool needs a path")
        if self.limit < 0 or self.limit_per_host < 0:
            raise ValueError("limit and limit_per_host must be >= 0 (0 means no limit)")
        _check_non_negative("PoolSpec", "keepalive_timeout", self.keepalive_timeout)
        _check_non_negative("PoolSpec", "ttl_dns_cache", self.ttl_dns_cache)
        _check_non_negative("PoolSpec", "happy_eyeballs_delay", self.happy_eyeballs_delay)
        _check_non_negative("PoolSpec", "rate_limit_per_host", self.rate_limit_per_host)
        _check_non_negative("PoolSpec", "ssl_shutdown_timeout", self.ssl_shutdown_timeout)
        if self.dns_cache_max_size < 0:
            raise ValueError("dns_cache_max_size must be >= 0 (0 means no cap)")


DEFAULT_POOL = PoolSpec()


_pool_encoder = msgspec.msgpack.Encoder()
_pool_decoder = msgspec.msgpack.Decoder(PoolSpec)


def encode_pool(spec: PoolSpec) -> bytes:
    """``spec`` as a request carries it: its MessagePack encoding, which is canonical
    (equal specs, equal bytes), so the broker keys its pools by these bytes and decodes
    a spec once, not per request."""
    return _pool_encoder.encode(spec)


def decode_pool(data: bytes) -> PoolSpec:
    """The spec in ``data``, checked; ``msgspec.ValidationError``/``DecodeError`` (or a
    ``ValueError`` from its checks) if it is not one."""
    return _pool_decoder.decode(data)


DEFAULT_POOL_BYTES = encode_pool(DEFAULT_POOL)


MAX_SECURE_ORIGINS = 32
Origin = Annotated[str, msgspec.Meta(max_length=2048)]
JarName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class JarSpec(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A cookie jar in the broker, as a worker's ``CookieJar(...)`` describes it.

    With a ``name`` it is the group's jar: every worker that sends an equal spec uses the
    same jar (and the broker's cookie file keeps it). Without one it is a jar of its own,
    owned by the worker connection that opened it. ``treat_as_secure_origin`` holds
    origins (``scheme://host[:port]``), as ``yarl.URL.origin()`` prints them.
    """

    name: JarName | None = None
    unsafe: bool = False
    quote_cookie: bool = True
    treat_as_secure_origin: Annotated[
        tuple[Origin, ...], msgspec.Meta(max_length=MAX_SECURE_ORIGINS)
    ] = ()

    def __post_init__(self) -> None:
        # Checked as a frame decodes (the Annotated bounds); checked here when made.
        if self.name is not None and not 0 < len(self.name) <= 200:
            raise ValueError("a cookie jar's name must be 1 to 200 characters long")
        origins = self.treat_as_secure_origin
        if len(origins) > MAX_SECURE_ORIGINS or any(len(o) > 2048 for o in origins):
            raise ValueError(
                f"treat_as_secure_origin takes at most {MAX_SECURE_ORIGINS} origins "
                "of at most 2048 characters"
            )


# -- TLS ---------------------------------------------------------------------------------

MAX_CA_CERTS = 1024
DerCert = Annotated[bytes, msgspec.Meta(max_length=64 * 1024)]


class TlsSpec(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """How the broker makes TLS connections for a request: the worker's ``ssl=`` setting
    (an ``SSLContext`` cannot cross a process boundary) as the broker rebuilds it.

    ``verify``: the server's certificate is verified (CERT_REQUIRED; else CERT_NONE).
    ``system_store``: the system's CA certificates are trusted; ``ca_certs`` (DER) are
    trusted besides, or alone without it. ``minimum_version``/``maximum_version`` are
    ``ssl.TLSVersion`` values; ``options``, ``verify_flags``, ``ciphers`` (an OpenSSL
    cipher string, ``@SECLEVEL`` included) and ``hostname_checks_common_name`` None keep
    the defaults of ``ssl.create_default_context()``.
    ``cert_chain``/``key``/``password``: a client certificate (PEM, as
    ``load_cert_chain`` read it; the key may be encrypted with ``password``). Every TLS
    connection offers ALPN ``http/1.1``.

    A request names a spec by its ``tls_id`` (``Request.tls``) after the worker has sent
    it once on that connection (``TlsOpen``); the broker builds one ``SSLContext`` per
    spec. Equal specs, equal encodings (MessagePack of a frozen struct), equal ids.
    """

    verify: bool = True
    check_hostname: bool = True
    system_store: bool = True
    ca_certs: Annotated[tuple[DerCert, ...], msgspec.Meta(max_length=MAX_CA_CERTS)] = ()
    minimum_version: int | None = None
    maximum_version: int | None = None
    options: int | None = None
    verify_flags: int | None = None
    ciphers: Annotated[str, msgspec.Meta(max_length=8192)] | None = None
    cert_chain: Annotated[bytes, msgspec.Meta(max_length=1 << 20)] = b""
    key: Annotated[bytes, msgspec.Meta(max_length=256 * 1024)] = b""
    password: Annotated[bytes, msgspec.Meta(max_length=4096)] = b""
    hostname_checks_common_name: bool | None = None

    def __post_init__(self) -> None:
        if self.check_hostname and not self.verify:
            raise ValueError("check_hostname needs verify (as ssl.SSLContext's)")
        if self.key and not self.cert_chain:
            raise ValueError("a client key needs its certificate chain")

    def __repr__(self) -> str:  # never the key or its password, even in a log
        secret = " with client certificate" if self.cert_chain else ""
        return (
            f"TlsSpec(verify={self.verify}, check_hostname={self.check_hostname}, "
            f"system_store={self.system_store}, ca_certs={len(self.ca_certs)}{secret})"
        )


DEFAULT_TLS = TlsSpec()
"""``ssl=True``: verified against the system's store (a request's ``tls`` is b"")."""
UNVERIFIED_TLS = TlsSpec(verify=False, check_hostname=False)
"""``ssl=False`` and ``Fingerprint(...)``: aiohttp's unverified context."""

_tls_encoder = msgspec.msgpack.Encoder()


def encode_tls(spec: TlsSpec) -> bytes:
    return _tls_encoder.encode(spec)


def tls_id(encoded: bytes) -> bytes:
    """The id a request names an encoded ``TlsSpec`` by: its SHA-256. The broker computes
    it itself from what ``TlsOpen`` carries, so no worker can name another's spec."""
    import hashlib  # here: only a TLS setting needs it

    return hashlib.sha256(encoded).digest()


# -- proxies -----------------------------------------------------------------------------

HeaderPair = tuple[
    Annotated[str, msgspec.Meta(max_length=8190)], Annotated[str, msgspec.Meta(max_length=8190)]
]


class ProxySpec(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One proxy: ``url`` (``http://host:port`` or ``https://``, without credentials),
    the ``Proxy-Authorization`` value to send it (from ``proxy_auth=``, the URL's
    credentials or ``~/.netrc``; "" for none), and ``headers`` (``proxy_headers=``). A
    plain-http origin gets absolute-form requests with them; an https origin a
    ``CONNECT`` tunnel whose request carries them, and nothing of them inside."""

    url: Annotated[str, msgspec.Meta(max_length=2048)]
    authorization: Annotated[str, msgspec.Meta(max_length=8190)] = ""
    headers: Annotated[tuple[HeaderPair, ...], msgspec.Meta(max_length=128)] = ()

    def __repr__(self) -> str:  # credentials never in a log
        auth = " with credentials" if self.authorization else ""
        return f"ProxySpec({self.url!r}{auth})"


class ProxyRoute(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Which proxy each hop of a request goes through, decided per hop in the broker (a
    redirect may change the scheme or the host): ``http`` for http URLs, ``https`` for
    https URLs (None: direct), except hosts matching ``no_proxy`` (entries as the
    ``NO_PROXY`` variable has them, read by ``shared.rules.proxy_bypass``). ``proxy=``
    gives both schemes the same proxy; ``trust_env=True`` gives the environment's."""

    http: ProxySpec | None = None
    https: ProxySpec | None = None
    no_proxy: Annotated[
        tuple[Annotated[str, msgspec.Meta(max_length=1024)], ...], msgspec.Meta(max_length=256)
    ] = ()


_proxy_encoder = msgspec.msgpack.Encoder()
_proxy_decoder = msgspec.msgpack.Decoder(ProxyRoute)


def encode_proxy(route: ProxyRoute) -> bytes:
    """``route`` as a request carries it (``Request.proxy``; b"": no proxy)."""
    return _proxy_encoder.encode(route)


def decode_proxy(data: bytes) -> ProxyRoute:
    return _proxy_decoder.decode(data)
