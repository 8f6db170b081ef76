"""Connectors: descriptions of a pool in the broker (``shared.specs.PoolSpec``).

A connector holds no sockets. Every connector in the process group with equal arguments
names the same pool in the broker, so ``TCPConnector(limit=8)`` in sixteen processes
means eight connections in all; ``name=`` keeps otherwise equal pools apart.
"""

from __future__ import annotations

import socket
from typing import Any

from shared.specs import PoolSpec

__all__ = ["BaseConnector", "TCPConnector", "UnixConnector"]


class BaseConnector:
    """A pool description; closing it only marks it closed for its sessions."""

    def __init__(self, spec: PoolSpec) -> None:
        self._spec = spec
        self._closed = False

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
        self._closed = True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._spec!r}>"


class TCPConnector(BaseConnector):
    """aiohttp's ``TCPConnector`` options, enforced by the broker across the group."""

    def __init__(
        self,
        *,
        limit: int = 100,
        limit_per_host: int = 0,
        force_close: bool = False,
        keepalive_timeout: float | None | Any = ...,
        use_dns_cache: bool = True,
        ttl_dns_cache: float | None = 10,
        family: int = socket.AF_UNSPEC,
        enable_cleanup_closed: bool = False,
        name: str = "",
    ) -> None:
        if force_close and keepalive_timeout not in (..., None):
            raise ValueError("keepalive_timeout cannot be set if force_close is True")
        if keepalive_timeout is ... or keepalive_timeout is None:
            keepalive_timeout = 0.0 if force_close else 15.0
        super().__init__(
            PoolSpec(
                kind="tcp",
                limit=limit,
                limit_per_host=limit_per_host,
                force_close=force_close,
                keepalive_timeout=float(keepalive_timeout),
                use_dns_cache=use_dns_cache,
                ttl_dns_cache=ttl_dns_cache,
                family=int(family),
                name=name,
            )
        )

    @property
    def use_dns_cache(self) -> bool:
        return self._spec.use_dns_cache

    @property
    def family(self) -> int:
        return self._spec.family


class UnixConnector(BaseConnector):
    """Every request goes to the HTTP server listening on the Unix socket ``path``."""

    def __init__(
        self,
        path: str,
        *,
        limit: int = 100,
        limit_per_host: int = 0,
        force_close: bool = False,
        keepalive_timeout: float | None | Any = ...,
        name: str = "",
    ) -> None:
        if force_close and keepalive_timeout not in (..., None):
            raise ValueError("keepalive_timeout cannot be set if force_close is True")
        if keepalive_timeout is ... or keepalive_timeout is None:
            keepalive_timeout = 0.0 if force_close else 15.0
        super().__init__(
            PoolSpec(
                kind="unix",
                path=str(path),
                limit=limit,
                limit_per_host=limit_per_host,
                force_close=force_close,
                keepalive_timeout=float(keepalive_timeout),
                name=name,
            )
        )

    @property
    def path(self) -> str:
        assert self._spec.path is not None
        return self._spec.path
