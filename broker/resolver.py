"""Name resolution in the broker: getaddrinfo in a thread or c-ares, behind a shared cache.

How this works. A ``CachedResolver`` is one resolver spec plus one cache policy (ttl, size
cap, on/off); ``broker.registry`` hands out one per distinct policy, so every pool, in
every worker, whose settings are equal shares one cache. A lookup that misses the cache
runs as a task of its own, not inside the caller: ``lookup`` returns the addresses from
the cache, or that task, which concurrent callers of one (host, port, family) all wait
on without ever cancelling it. So a caller that is cancelled (a connect timeout, a
worker that went away) leaves the lookup running for the others, and a failure reaches
every waiter and is never cached. ``clear()`` bumps a generation number, so a lookup
that was already in flight when the cache was cleared does not put its (possibly stale)
answer back.

Failures are ``socket.gaierror`` for both kinds: getaddrinfo raises it already, and
c-ares errors are mapped onto the matching ``EAI_*`` code with c-ares' own message (as
aiohttp's ``AsyncResolver`` turns them into ``OSError``), so the pool makes one
``ClientConnectorDNSError`` out of either.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from shared.rules import check_host_port
from shared.specs import ResolverSpec

from .dns_cache import DNSCache

if TYPE_CHECKING:
    import aiodns

__all__ = ["CachedResolver", "ResolvedAddress", "make_lookup"]

CacheKey = tuple[str, int, int]  # (host, port, family)

_NUMERIC_FLAGS = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
_NAME_FLAGS = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
_AI_ADDRCONFIG = socket.AI_ADDRCONFIG & getattr(socket, "AI_MASK", -1)
_FAMILIES = (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6)


class ResolvedAddress(msgspec.Struct, frozen=True, gc=False):
    """One address of a name: aiohttp's ``ResolvedAddress`` fields, ``host`` an IP string."""

    hostname: str
    host: str
    port: int
    family: int
    proto: int = 0
    flags: int = _NUMERIC_FLAGS

    def as_dict(self) -> dict[str, Any]:
        """aiohttp's ``ResolvedAddress`` dict."""
        return msgspec.structs.asdict(self)



def literal_family(host: str) -> int | None:
    """The address family of an IP literal (an IPv6 zone such as ``%eth0`` allowed)."""
    for family, text in ((socket.AF_INET, host), (socket.AF_INET6, host.partition("%")[0])):
        try:
            socket.inet_pton(family, text)
        except OSError:
            continue
        return family
    return None


def _is_localhost(host: str) -> bool:
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


class Lookup(Protocol):
    """One way of asking the system for addresses, without caching."""

    async def lookup(self, host: str, port: int, family: int) -> list[ResolvedAddress]: ...

    async def close(self) -> None: ...


class ThreadedLookup:
    """``getaddrinfo`` in the loop's default executor, as aiohttp's ``ThreadedResolver``."""

    def __init__(self, spec: ResolverSpec, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def lookup(self, host: str, port: int, family: int) -> list[ResolvedAddress]:
        try:
            infos = await self._getaddrinfo(host, port, family, _AI_ADDRCONFIG)
        except socket.gaierror:
            # AI_ADDRCONFIG ignores loopback: on a host whose only interface is lo,
            # "localhost" would not resolve at all.
            if not _is_localhost(host):
                raise
            infos = await self._getaddrinfo(host, port, family, 0)
        results: list[ResolvedAddress] = []
        for fam, _, proto, _, address in infos:
            if fam == socket.AF_INET6:
                if len(address) < 3:  # a Python built without IPv6
                    continue
                if address[3]:  # link-local: the scope must travel in the host string
                    ip, service = await self._loop.getnameinfo(address, _NAME_FLAGS)
                    results.append(ResolvedAddress(host, ip, int(service), fam, proto))
                    continue
            elif fam != socket.AF_INET:
                continue
            results.append(ResolvedAddress(host, str(address[0]), int(address[1]), fam, proto))
        if not results:
            raise socket.gaierror(socket.EAI_NONAME, f"no usable address for {host!r}")
        return results

    async def _getaddrinfo(
        self, host: str, port: int, family: int, flags: int
    ) -> list[tuple[Any, ...]]:
        infos = await self._loop.getaddrinfo(
            host, port, family=family, type=socket.SOCK_STREAM, flags=flags
        )
        return list(infos)

    async def close(self) -> None:
        pass


@functools.cache
def _ares_to_eai() -> dict[int, int]:
    from aiodns import error as e

    nodata = getattr(socket, "EAI_NODATA", socket.EAI_NONAME)
    return {
        e.ARES_ENODATA: nodata,
        e.ARES_ENOTFOUND: socket.EAI_NONAME,
        e.ARES_ENONAME: socket.EAI_NONAME,
        e.ARES_EBADNAME: socket.EAI_NONAME,
        e.ARES_EBADQUERY: socket.EAI_NONAME,
        e.ARES_ESERVFAIL: socket.EAI_AGAIN,
        e.ARES_ETIMEOUT: socket.EAI_AGAIN,
        e.ARES_ECONNREFUSED: socket.EAI_AGAIN,
        e.ARES_ECANCELLED: socket.EAI_AGAIN,
        e.ARES_EDESTRUCTION: socket.EAI_AGAIN,
        e.ARES_EBADFAMILY: socket.EAI_FAMILY,
        e.ARES_EBADFLAGS: socket.EAI_BADFLAGS,
        e.ARES_ESERVICE: socket.EAI_SERVICE,
        e.ARES_ENOMEM: socket.EAI_MEMORY,
    }


def _gaierror(exc: aiodns.error.DNSError) -> socket.gaierror:
    """aiodns raises DNSError(ares_code, message); anything unmapped is EAI_FAIL."""
    code = exc.args[0] if exc.args else None
    message = str(exc.args[1]) if len(exc.args) > 1 else "DNS lookup failed"
    eai = _ares_to_eai().get(code, socket.EAI_FAIL) if isinstance(code, int) else socket.EAI_FAIL
    return socket.gaierror(eai, message)


@functools.cache
def _channel_options() -> frozenset[str]:
    import inspect

    import pycares

    names = inspect.signature(pycares.Channel).parameters
    return frozenset(names) - {"sock_state_cb", "servers"}


class AresLookup:
    """c-ares through aiodns, as aiohttp's ``AsyncResolver``; one channel per spec."""

    def __init__(self, spec: ResolverSpec, loop: asyncio.AbstractEventLoop) -> None:
        import aiodns
        import pycares

        options = dict(spec.options)
        unknown = sorted(set(options) - _channel_options())
        if unknown:  # a half-made pycares.Channel would complain in its __del__
            raise ValueError(f"unknown c-ares options {unknown} in {spec!r}")
        try:
            self._resolver: aiodns.DNSResolver | None = aiodns.DNSResolver(
                nameservers=list(spec.nameservers) or None, loop=loop, **options
            )
        except (pycares.AresError, ArithmeticError, TypeError, ValueError) as exc:
            raise ValueError(f"cannot build a c-ares resolver from {spec!r}: {exc}") from None

    async def lookup(self, host: str, port: int, family: int) -> list[ResolvedAddress]:
        import aiodns

        resolver = self._resolver
        if resolver is None:
            raise socket.gaierror(socket.EAI_FAIL, "the resolver is closed")
        # flags stay 0: c-ares' ARES_AI_* bits are not the socket module's AI_* bits.
        try:
            answer = await resolver.getaddrinfo(
                host, family=socket.AddressFamily(family), port=port, type=socket.SOCK_STREAM
            )
            results: list[ResolvedAddress] = []
            for node in answer.nodes:
                address = node.addr
                ip = address[0].decode("ascii")
                if node.family == socket.AF_INET6 and len(address) > 3 and address[3]:
                    named = await resolver.getnameinfo((ip, *address[1:]), _NAME_FLAGS)
                    ip = named.node
                results.append(ResolvedAddress(host, ip, int(address[1]), node.family))
        except aiodns.error.DNSError as exc:
            raise _gaierror(exc) from exc
        if not results:
            raise socket.gaierror(socket.EAI_NONAME, f"no usable address for {host!r}")
        return results

    async def close(self) -> None:
        resolver, self._resolver = self._resolver, None
        if resolver is not None:
            await resolver.close()


LOOKUPS: dict[str, Callable[[ResolverSpec, asyncio.AbstractEventLoop], Lookup]] = {
    "threaded": ThreadedLookup,
    "async": AresLookup,
}


def make_lookup(spec: ResolverSpec, loop: asyncio.AbstractEventLoop) -> Lookup:
    """The uncached lookup that ``spec`` describes."""
    return LOOKUPS[spec.kind](spec, loop)


class CachedResolver:
    """One resolver spec behind a TTL + size-capped cache, with single-flight lookups."""

    def __init__(
        self,
        spec: ResolverSpec,
        loop: asyncio.AbstractEventLoop,
        *,
        ttl: float | None = 10,
        max_size: int = 1000,
        use_cache: bool = True,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.spec = spec
        self.loop = loop
        self._lookup = make_lookup(spec, loop)
        self.cache: DNSCache[ResolvedAddress] | None = (
            DNSCache(ttl, max_size, clock or loop.time) if use_cache else None
        )
        self._inflight: dict[CacheKey, asyncio.Task[list[ResolvedAddress]]] = {}
        self._generation = 0
        self.closed = False

    def __repr__(self) -> str:
        f = self.figures()
        servers = ",".join(self.spec.nameservers) or "system"
        return (
            f"<CachedResolver {self.spec.kind} [{servers}] | {f['size']} hosts, "
            f"{f['hits']} hits, {f['misses']} misses, {f['inflight']} in flight>"
        )

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[ResolvedAddress]:
        """Addresses of ``host``; an IP literal is returned as is, without DNS."""
        got = self.lookup(host, port, family)
        if isinstance(got, list):
            return got
        return await asyncio.shield(got)

    def lookup(
        self, host: str, port: int = 0, family: int = 0
    ) -> list[ResolvedAddress] | asyncio.Task[list[ResolvedAddress]]:
        """The addresses at once (an IP literal, a cache hit), or the lookup in flight:
        a task shared by every caller, which a caller waits on but must not cancel."""
        literal = literal_family(host)
        if literal is not None:
            return [ResolvedAddress(host, host, port, literal)]
        if self.closed:
            raise socket.gaierror(socket.EAI_FAIL, "the resolver is closed")
        key = (host, port, family)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        task = self._inflight.get(key)
        if task is None:
            task = self.loop.create_task(self._fetch(key))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        return task

    def traced_lookup(
        self, host: str, port: int = 0, family: int = 0
    ) -> tuple[list[ResolvedAddress] | asyncio.Task[list[ResolvedAddress]], str]:
        """``lookup``, and how it went (``dialer.DNS_TRACE``): ``literal`` (no DNS),
        ``uncached`` (the cache is off), ``hit``, ``joined`` (a lookup in flight) or
        ``miss`` (a lookup started)."""
        if literal_family(host) is not None:
            how = "literal"
        elif self.cache is None:
            how = "uncached"
        else:
            how = "joined" if (host, port, family) in self._inflight else "miss"
        got = self.lookup(host, port, family)
        if isinstance(got, list) and how != "literal":
            how = "hit"
        return got, how

    async def _fetch(self, key: CacheKey) -> list[ResolvedAddress]:
        generation = self._generation
        try:
            results = await self._lookup.lookup(*key)
        except asyncio.CancelledError:
            if not self.closed:
                raise
            # close() cancelled us: waiters were not cancelled themselves, so they get a
            # lookup failure rather than a CancelledError they did not ask for.
            raise socket.gaierror(socket.EAI_AGAIN, "the resolver was closed") from None
        if self.cache is not None and generation == self._generation:
            self.cache.put(key, results)
        return results

    def _done(self, key: CacheKey, task: asyncio.Task[list[ResolvedAddress]]) -> None:
        # Runs before any waiter resumes (it was the first callback added), so a caller
        # that retries after a failure starts a fresh lookup.
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # every waiter may have gone: mark the outcome as retrieved

    def clear(self, host: str | None = None, port: int | None = None) -> None:
        """Forget one (host, port) or everything, as aiohttp's ``clear_dns_cache``."""
        check_host_port(host, port)
        self._generation += 1
        if self.cache is None:
            return
        if host is None:
            self.cache.clear()
        else:
            for family in _FAMILIES:
                self.cache.clear((host, port, family))

    def figures(self) -> dict[str, int]:
        cache = self.cache  # not "if cache": an empty DNSCache is falsy
        return {
            "hits": 0 if cache is None else cache.hits,
            "misses": 0 if cache is None else cache.misses,
            "size": 0 if cache is None else len(cache),
            "inflight": len(self._inflight),
        }

    async def close(self) -> None:
        """Fail lookups in flight and close the c-ares channel, if any."""
        if self.closed:
            return
        self.closed = True
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._lookup.close()
