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
