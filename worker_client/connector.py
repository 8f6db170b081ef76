"""Connectors: descriptions of a pool in the broker (``shared.specs.PoolSpec``).

A connector holds no sockets. Every connector in the process group with equal arguments
names the same pool in the broker, so ``TCPConnector(limit=8)`` in sixteen processes
means eight connections in all; ``name=`` keeps otherwise equal pools apart. Closing a
connector closes it for this process's sessions only: the pool is the group's.
"""

from __future__ import annotations

import socket
import sys
import warnings
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any

from shared.rules import check_host_port
from shared.specs import PoolSpec

from .resolver import resolver_spec

if TYPE_CHECKING:
    from ssl import SSLContext

    from .tls import Fingerprint
    from .transport import Transport

__all__ = ["BaseConnector", "TCPConnector", "UnixConnector"]

_UNSET: Any = object()


def ssl_shutdown(timeout: Any) -> float | None:
    """aiohttp 3.14's (deprecated) ``ssl_shutdown_timeout``: 0 unless given, with its
    warnings."""
    if timeout is _UNSET:
        return 0
    warnings.warn(
        "The ssl_shutdown_timeout parameter is deprecated and will be removed in aiohttp 4.0",
        DeprecationWarning,
        stacklevel=3,
    )
    if sys.version_info < (3, 11) and timeout is not None and timeout != 0:
        warnings.warn(
            f"ssl_shutdown_timeout={timeout} is ignored on Python < 3.11; "
            "only ssl_shutdown_timeout=0 is supported. The timeout will be ignored.",
            RuntimeWarning,
            stacklevel=3,
        )
    return timeout  # type: ignore[no-any-return]


def _keepalive(force_close: bool, keepalive_timeout: Any) -> float | None:
    """aiohttp's rules: 15 s by default, None for no expiry (force_close: no reuse)."""
    if force_close:
        if keepalive_timeout is not _UNSET and keepalive_timeout is not None:
            raise ValueError("keepalive_timeout cannot be set if force_close is True")
        return None
    if keepalive_timeout is _UNSET:
        return 15.0
    return None if keepalive_timeout is None else float(keepalive_timeout)


class BaseConnector:
    """A pool description; the pool itself lives in the broker."""

    _ssl: Any = True  # the connector's ssl= (aiohttp's; a request's own wins over it)

    def __init__(self, spec: PoolSpec) -> None:
        self._spec = spec
        self._closed = False
        self._transports: weakref.WeakSet[Transport] = weakref.WeakSet()

    @property
    def spec(self) -> PoolSpec:
        return self._spec

    @property
    def limit(self) -> int:
        return self._spec.limit

    @property
    def limit_per_host(self) -> int:
        return self._spec.limit_per_host

    @property
    def force_close(self) -> bool:
        return self._spec.force_close

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Close for this process: sessions using it can send no more requests."""
        self._closed = True

    def _bind(self, transport: Transport) -> None:
        self._transports.add(transport)

    async def __aenter__(self) -> BaseConnector:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        exc_traceback: TracebackType | None = None,
    ) -> None:
        await self.close()

    def __enter__(self) -> BaseConnector:
        warnings.warn(
            '"with Connector():" is deprecated, use "async with Connector():" instead',
            DeprecationWarning,
            stacklevel=2,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {state} {self._spec!r}>"


class TCPConnector(BaseConnector):
    """aiohttp's ``TCPConnector`` options, enforced by the broker across the group.

    ``ssl`` (and the deprecated ``verify_ssl``, ``ssl_context``, ``fingerprint``) is the
    default of the requests made through it, as in aiohttp; it is not part of the pool's
    description: the broker keeps connections made under each TLS setting apart.

    Beyond aiohttp: ``rate_limit_per_host`` (requests per second to each host, for the
    whole group) and ``name``.
    """

    def __init__(
        self,
        *,
        verify_ssl: bool = True,
        fingerprint: bytes | None = None,
        ssl_context: SSLContext | None = None,
        ssl: bool | Fingerprint | SSLContext | None = True,
        limit: int = 100,
        limit_per_host: int = 0,
        use_dns_cache: bool = True,
        ttl_dns_cache: float | None = 10,
        dns_cache_max_size: int = 1000,
        family: int = socket.AF_UNSPEC,
        local_addr: tuple[str, int] | None = None,
        resolver: Any = None,
        force_close: bool = False,
        keepalive_timeout: float | None = _UNSET,
        happy_eyeballs_delay: float | None = 0.25,
        enable_cleanup_closed: bool = False,
        ssl_shutdown_timeout: float | None = _UNSET,
        rate_limit_per_host: float = 0,
        name: str = "",
    ) -> None:
        from .tls import merge_ssl

        merged = merge_ssl(ssl, verify_ssl, ssl_context, fingerprint)
        super().__init__(
            PoolSpec(
                kind="tcp",
                limit=limit,
                limit_per_host=limit_per_host,
                force_close=force_close,
                keepalive_timeout=_keepalive(force_close, keepalive_timeout),
                use_dns_cache=use_dns_cache,
                ttl_dns_cache=ttl_dns_cache,
                dns_cache_max_size=dns_cache_max_size,
                resolver=resolver_spec(resolver),
                family=int(family),
                local_addr=tuple(local_addr) if local_addr else None,  # type: ignore[arg-type]
                happy_eyeballs_delay=happy_eyeballs_delay,
                rate_limit_per_host=rate_limit_per_host,
                name=name,
                ssl_shutdown_timeout=ssl_shutdown(ssl_shutdown_timeout),
            )
        )
        self._ssl = merged
        self._enable_cleanup_closed = enable_cleanup_closed

    @property
    def use_dns_cache(self) -> bool:
        return self._spec.use_dns_cache

    @property
    def family(self) -> int:
        return self._spec.family

    def clear_dns_cache(self, host: str | None = None, port: int | None = None) -> None:
        """Forget cached addresses (all, or of ``host``[:``port``]) in the broker's cache
        that this connector's resolver settings share with the group."""
        check_host_port(host, port)
        for transport in list(self._transports):
            if not transport.closed:
                transport.clear_dns(self._spec, host, port)


class UnixConnector(BaseConnector):
    """Every request goes to the HTTP server listening on the Unix socket ``path``."""

    def __init__(
        self,
        path: str,
        *,
        limit: int = 100,
        limit_per_host: int = 0,
        force_close: bool = False,
        keepalive_timeout: float | None = _UNSET,
        name: str = "",
    ) -> None:
        super().__init__(
            PoolSpec(
                kind="unix",
                path=str(path),
                limit=limit,
                limit_per_host=limit_per_host,
                force_close=force_close,
                keepalive_timeout=_keepalive(force_close, keepalive_timeout),
                name=name,
            )
        )

    @property
    def path(self) -> str:
        assert self._spec.path is not None
        return self._spec.path
