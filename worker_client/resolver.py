"""Resolvers with aiohttp's names; each is a description (``ResolverSpec``) for the broker.

Resolution runs in the broker, next to its DNS cache, so a resolver object never leaves
the worker: only its spec does. That is why a resolver of your own (an
``aiohttp.abc.AbstractResolver`` subclass, or one of these with ``resolve`` overridden)
is refused with a ``TypeError``: its code would have to run in another process.

``resolve()`` and ``close()`` still work in-process for code that calls a resolver
directly, as one can with aiohttp's; that path has no cache.
"""

from __future__ import annotations

import abc
import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from shared.specs import DEFAULT_RESOLVER, ResolverOption, ResolverSpec

if TYPE_CHECKING:
    from broker.resolver import CachedResolver

__all__ = [
    "AbstractResolver",
    "AsyncResolver",
    "DefaultResolver",
    "ThreadedResolver",
    "resolver_spec",
]

# pycares.Channel options that are plain values; the rest (servers, domains,
# sock_state_cb) cannot be, or have a better spelling here (nameservers=).
_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "timeout": (int, float),
    "tries": (int,),
    "ndots": (int,),
    "udp_port": (int,),
    "tcp_port": (int,),
    "flags": (int,),
    "rotate": (bool,),
    "lookups": (str,),
    "socket_send_buffer_size": (int,),
    "socket_receive_buffer_size": (int,),
    "local_ip": (str,),
    "local_dev": (str,),
    "resolvconf_path": (str,),
}
_PORTS = ("udp_port", "tcp_port")

_FOREIGN = (
    "{what} cannot be used as a resolver: resolution runs in the broker process, and a "
    "resolver object cannot cross the process boundary. Pass "
    "worker_client.ThreadedResolver() or worker_client.AsyncResolver(nameservers=[...], "
    "timeout=..., tries=...) instead."
)


class AbstractResolver(abc.ABC):
    """The resolver interface, as ``aiohttp.abc.AbstractResolver``."""

    @abc.abstractmethod
    async def resolve(
        self, host: str, port: int = 0, family: int = socket.AF_INET
    ) -> list[dict[str, Any]]:
        """Addresses of ``host`` as aiohttp's ``ResolveResult`` dicts."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what the resolver holds."""


class _SpecResolver(AbstractResolver):
    """A resolver that is a ``ResolverSpec``; resolves in-process only when asked to."""

    def __init__(self, spec: ResolverSpec) -> None:
        self._spec = spec
        self._local: CachedResolver | None = None

    @property
    def spec(self) -> ResolverSpec:
        return self._spec

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._spec!r}>"

    async def resolve(
        self, host: str, port: int = 0, family: int = socket.AF_INET
    ) -> list[dict[str, Any]]:
        """Resolve in this process (no cache); sessions resolve in the broker instead."""
        loop = asyncio.get_running_loop()
        local = self._local
        if local is None or local.loop is not loop or local.closed:
            from broker.resolver import CachedResolver

            local = self._local = CachedResolver(self._spec, loop, use_cache=False)
        return [addr.as_dict() for addr in await local.resolve(host, port, family)]

    async def close(self) -> None:
        local, self._local = self._local, None
        if local is not None:
            await local.close()


class ThreadedResolver(_SpecResolver):
    """``getaddrinfo`` in a thread of the broker, as aiohttp's ``ThreadedResolver``."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        # ``loop`` is accepted for aiohttp compatibility; the broker's loop is used.
        super().__init__(ResolverSpec(kind="threaded"))


class AsyncResolver(_SpecResolver):
    """c-ares (aiodns) in the broker, as aiohttp's ``AsyncResolver``.

    ``options`` are pycares channel options with plain values: timeout, tries, ndots,
    udp_port, tcp_port, flags, rotate, lookups, socket_send_buffer_size,
    socket_receive_buffer_size, local_ip, local_dev, resolvconf_path. A nameserver may
    carry its own port: ``"127.0.0.1:5353"``, ``"[::1]:5353"``.
    """

    def __init__(
        self,
        nameservers: Iterable[str] | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            ResolverSpec(
                kind="async",
                nameservers=_check_nameservers(nameservers),
                options=_check_options(options),
            )
        )


DefaultResolver = ThreadedResolver


def resolver_spec(resolver: object | None) -> ResolverSpec:
    """The spec to send for a connector's ``resolver=`` argument."""
    if resolver is None:
        return DEFAULT_RESOLVER
    if isinstance(resolver, _SpecResolver):
        if type(resolver).resolve is _SpecResolver.resolve:
            return resolver.spec
        what = f"{type(resolver).__qualname__} (it overrides resolve())"
    else:
        what = f"A {type(resolver).__qualname__} object"
    raise TypeError(_FOREIGN.format(what=what))


def _check_nameservers(nameservers: Iterable[str] | None) -> tuple[str, ...]:
    if nameservers is None:
        return ()
    if isinstance(nameservers, (str, bytes)):
        raise TypeError(
            f"nameservers must be a list of addresses, not one string: use [{nameservers!r}]"
        )
    result = tuple(nameservers)
    for server in result:
        if not isinstance(server, str):
            raise TypeError(f"a nameserver must be a str, got {server!r}")
        if not _is_server_address(server):
            raise ValueError(
                f"nameserver {server!r} is not an IP address (optionally with a port, as "
                "'127.0.0.1:5353' or '[::1]:5353')"
            )
    return result


def _is_server_address(server: str) -> bool:
    """c-ares' forms: ``ip``, ``ipv4:port``, ``[ipv6]:port``, ``ipv6%zone``,
    ``[ipv6]:port%zone``."""
    host, port = server, None
    if server.startswith("["):
        host, sep, rest = server[1:].partition("]")
        rest, _, zone = rest.partition("%")
        if not sep or "%" in host or (rest and not rest.startswith(":")):
            return False
        port = rest[1:] if rest else None
        host = f"{host}%{zone}" if zone else host
    elif server.count(":") == 1:
        host, _, port = server.partition(":")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        return False
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


def _is_a(value: object, types: tuple[type, ...]) -> bool:
    """isinstance, except that a bool is not an int here."""
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _check_options(options: Mapping[str, Any]) -> tuple[ResolverOption, ...]:
    unknown = sorted(set(options) - set(_OPTION_TYPES))
    if unknown:
        raise TypeError(
            f"AsyncResolver got unsupported option(s) {', '.join(unknown)}; the broker's "
            f"c-ares channel accepts {', '.join(_OPTION_TYPES)} (and nameservers=[...])"
        )
    result: list[ResolverOption] = []
    for name in sorted(options):
        value = options[name]
        if value is None:  # as pycares: None leaves the c-ares default
            continue
        types = _OPTION_TYPES[name]
        if not _is_a(value, types):
            expected = " or ".join(t.__name__ for t in types)
            raise TypeError(f"AsyncResolver option {name} must be {expected}, got {value!r}")
        if bool not in types and str not in types:
            low = 1 if name in _PORTS else 0
            high = 65535 if name in _PORTS else float("inf")
            if not low <= value <= high:
                raise ValueError(
                    f"AsyncResolver option {name} must be in [{low}, {high}], got {value!r}"
                )
        result.append((name, value))
    return tuple(result)
