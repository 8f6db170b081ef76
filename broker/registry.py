"""The pools and resolvers that the engine holds: one per distinct spec, evicted when idle.

How this works. A pool is keyed by its ``PoolSpec``, a resolver by its settings (the
``ResolverSpec`` and the pool's DNS cache policy); each resolver counts the pools that
use it. A pool is *quiet* when no connection of it is active or being opened and no
request waits on it (see ``Pool.quiet``): only a quiet pool is ever evicted, and the
engine takes a pool from ``pool()`` and acquires from it with no ``await`` in between,
so no request holds a pool that can go away.

- Idle eviction: a sweep every ``idle_ttl / 2`` seconds (and on demand, ``sweep()``)
  evicts each quiet pool without idle connections whose last connection was released
  ``idle_ttl`` seconds ago or more (time from the injected ``clock``).
- Caps: at most ``max_pools`` pools and ``max_resolvers`` c-ares resolvers live at once. A new
  one over the cap evicts the least recently used quiet pool (closing its idle
  connections), or for a resolver the least recently used quiet pools that free one;
  when every one is busy the request fails with a ``ConnectionFailure`` that says so.
- A resolver whose last pool is evicted is closed: its lookups in flight fail, its
  c-ares channel (a thread and a few descriptors) is released.

The only cost on the request path is one counter: ``pool()`` numbers its calls and
stamps the pool it returns, so the least recently used quiet pool is the quiet one with
the smallest stamp, found by a scan that runs only when a new spec meets the cap.
Closing an evicted pool or resolver runs as a task, which ``close()`` waits for.
The TLS contexts (``broker.tls.TlsContexts``, bounded there) are one cache for all pools,
and so is the cap on open connections (``cap``, ``pool_state.OpenCap``; 0: none): when a
connect waits for it, ``make_room`` closes the oldest idle connection of all pools (a
scan of the pools, only then).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec

from shared.messages import DnsFigures, PoolFigures
from shared.specs import PoolSpec, ResolverSpec, decode_pool

from .connector import Pool, grant_places
from .failures import ConnectionFailure
from .pool_state import OpenCap
from .resolver import CachedResolver
from .tls import TlsContexts

__all__ = ["MAX_POOLS", "MAX_RESOLVERS", "POOL_IDLE_TTL", "Registry"]

MAX_POOLS = 512
"""Pools alive at once (each distinct ``TCPConnector``/``UnixConnector`` spec is one)."""
MAX_RESOLVERS = 64
"""``async`` resolvers alive at once (each holds a c-ares thread and a few fds). A
``threaded`` one is a cache table in front of the loop's shared executor: it is bounded
by the pools that use it, and never refused, so no worker can take the resolver that
every default ``ClientSession`` uses away from the others."""
CAPPED_KINDS = frozenset(("async",))
POOL_IDLE_TTL = 60.0
"""Seconds a pool with no connection and no request is kept before it is evicted."""

ResolverKey = tuple[ResolverSpec, float | None, int, bool]  # spec, ttl, max_size, use_cache


def _picked(pool: Pool) -> int:
    return pool.picked


def resolver_key(spec: PoolSpec) -> ResolverKey:
    return (spec.resolver, spec.ttl_dns_cache, spec.dns_cache_max_size, spec.use_dns_cache)


class _Held:
    __slots__ = ("resolver", "users")

    def __init__(self, resolver: CachedResolver) -> None:
        self.resolver = resolver
        self.users = 0


class Registry:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        clock: Callable[[], float] | None = None,
        max_pools: int = MAX_POOLS,
        max_resolvers: int = MAX_RESOLVERS,
        idle_ttl: float = POOL_IDLE_TTL,
        max_connections: int = 0,
    ) -> None:
        if max_pools < 1 or max_resolvers < 1 or idle_ttl <= 0:
            raise ValueError("max_pools, max_resolvers and idle_ttl must be > 0")
        self._loop = loop
        self._clock = clock or loop.time
        self.max_pools = max_pools
        self.max_resolvers = max_resolvers
        self.idle_ttl = idle_ttl
        self._pools: dict[PoolSpec, Pool] = {}
        # encoded spec -> its pool, as requests name it; at most 2 x max_pools entries
        self._encoded: dict[bytes, Pool] = {}
        self._picks = 0  # pool() calls: a pool's ``picked`` is the last one's number
        self._resolvers: dict[ResolverKey, _Held] = {}
        self.tls = TlsContexts()  # every pool's TLS contexts, by tls id
        self.cap = OpenCap(max_connections)  # upstream connections open, over all pools
        self._closing: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.evicted = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._pools)

    def __repr__(self) -> str:
        return (
            f"<Registry {len(self._pools)}/{self.max_pools} pools, "
            f"{len(self._resolvers)}/{self.max_resolvers} resolvers, {self.evicted} evicted>"
        )

    @property
    def pools(self) -> list[Pool]:
        return list(self._pools.values())

    @property
    def resolvers(self) -> list[CachedResolver]:
        return [held.resolver for held in self._resolvers.values()]

    # -- lookups -------------------------------------------------------------------

    def pool_for(self, data: bytes) -> Pool:
        """The pool for the spec encoded in ``data`` (``shared.specs.encode_pool``):
        a request's own key, so a spec is decoded and checked once, not per request."""
        pool = self._encoded.get(data)
        if pool is None or pool.closed:
            try:
                spec = decode_pool(data)
            except (msgspec.MsgspecError, ValueError) as exc:
                raise ConnectionFailure(
                    "protocol", f"invalid connector settings: {exc}"
                ) from None
            pool = self.pool(spec)
            if len(self._encoded) >= 2 * self.max_pools:
                self._encoded.clear()  # evicted pools' entries go with the rest
            self._encoded[data] = pool
            return pool
        self._picks += 1
        pool.picked = self._picks
        return pool

    def pool(self, spec: PoolSpec) -> Pool:
        """The pool for ``spec``, made (and room made for it) if needed."""
        pool = self._pools.get(spec)
        if pool is None:
            pool = self._new_pool(spec)
        self._picks += 1
        pool.picked = self._picks
        return pool

    def _new_pool(self, spec: PoolSpec) -> Pool:
        if self.closed:
            raise ConnectionFailure("connection", "the broker's engine is closed")
        # Room first: evicting a pool may close the very resolver the new one would use.
        if len(self._pools) >= self.max_pools and not self._evict_lru_pool():
            raise ConnectionFailure(
                "connection",
                f"too many connection pools in use at once (at most {self.max_pools}): "
                "every one has requests in flight",
            )
        held = self._resolver_for(resolver_key(spec))
        pool = self._pools[spec] = Pool(
            spec, self._loop, held.resolver, clock=self._clock, tls=self.tls, cap=self.cap,
            make_room=self.make_room,
        )
        held.users += 1
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self.idle_ttl / 2, self._sweep_tick)
        return pool

    def _resolver_for(self, key: ResolverKey) -> _Held:
        held = self._resolvers.get(key)
        if held is not None:
            return held
        if (
            key[0].kind in CAPPED_KINDS
            and self._capped_resolvers() >= self.max_resolvers
            and not self._free_a_resolver()
        ):
            raise ConnectionFailure(
                "connection",
                f"too many resolvers in use at once (at most {self.max_resolvers}): "
                "every one serves pools with requests in flight",
            )
        spec, ttl, max_size, use_cache = key
        try:
            resolver = CachedResolver(
                spec, self._loop, ttl=ttl, max_size=max_size, use_cache=use_cache,
                clock=self._clock,
            )
        except (TypeError, ValueError) as exc:
            raise ConnectionFailure("connection", f"cannot make the resolver: {exc}") from None
        held = self._resolvers[key] = _Held(resolver)
        return held

    def clear_dns(self, spec: PoolSpec, host: str | None, port: int | None) -> None:
        """``TCPConnector.clear_dns_cache`` for the resolver that ``spec`` uses, if any
        (a resolver not made yet, or evicted, has nothing cached)."""
        if (host is None) != (port is None):
            return  # the worker checked this; a bad message must not raise here
        held = self._resolvers.get(resolver_key(spec))
        if held is not None:
            held.resolver.clear(host, port)

    # -- the cap on open connections -------------------------------------------------

    def set_max_connections(self, limit: int) -> None:
        """A new cap (0: none); waiters it lets through go at once."""
        grant_places(self.cap, self.cap.set_limit(limit))

    def make_room(self) -> None:
        """Close the oldest idle connection of all pools, if any is idle."""
        oldest: Pool | None = None
        since = 0.0
        for pool in self._pools.values():
            t = pool.state.oldest_idle()
            if t is not None and (oldest is None or t < since):
                oldest, since = pool, t
        if oldest is not None:
            oldest.close_oldest_idle()

    # -- eviction --------------------------------------------------------------------

    def sweep(self) -> int:
        """Evict the pools idle for ``idle_ttl`` or more; how many were."""
        now = self._clock()
        stale = [
            spec
            for spec, pool in self._pools.items()
            if pool.quiet and not pool.state.n_idle and now - pool.state.last_used >= self.idle_ttl
        ]
        for spec in stale:
            self._evict(spec)
        return len(stale)

    def _sweep_tick(self) -> None:
        self._sweeper = None
        self.sweep()
        if self._pools and not self.closed:
            self._sweeper = self._loop.call_later(self.idle_ttl / 2, self._sweep_tick)

    def _evict_lru_pool(self) -> bool:
        quiet = [pool for pool in self._pools.values() if pool.quiet]
        if not quiet:
            return False
        self._evict(min(quiet, key=_picked).spec)
        return True

    def _capped_resolvers(self) -> int:
        return sum(1 for key in self._resolvers if key[0].kind in CAPPED_KINDS)

    def _free_a_resolver(self) -> bool:
        """Evict the least recently used quiet pools that are all the users of one
        capped resolver, closing it; False if every one serves a busy pool."""
        quiet: dict[ResolverKey, list[PoolSpec]] = {}
        for pool in sorted(self._pools.values(), key=_picked):
            if not pool.quiet:
                continue
            key = resolver_key(pool.spec)
            if key[0].kind not in CAPPED_KINDS:
                continue
            specs = quiet.setdefault(key, [])
            specs.append(pool.spec)
            if len(specs) == self._resolvers[key].users:
                for spec in specs:
                    self._evict(spec)
                return True
        return False

    def _evict(self, spec: PoolSpec) -> None:
        pool = self._pools.pop(spec)
        pool.closed = True  # at once: its close() runs as a task
        self.evicted += 1
        self._later(pool.close())
        key = resolver_key(spec)
        self._resolvers[key].users -= 1
        self._drop_unused_resolver(key)

    def _drop_unused_resolver(self, key: ResolverKey) -> None:
        held = self._resolvers.get(key)
        if held is not None and not held.users:
            del self._resolvers[key]
            self._later(held.resolver.close())

    def _later(self, closing: Any) -> None:
        task: asyncio.Task[None] = self._loop.create_task(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- figures and shutdown -----------------------------------------------------------

    def figures(self) -> list[PoolFigures]:
        return [pool.figures() for pool in self._pools.values()]

    def dns_figures(self) -> list[DnsFigures]:
        out: list[DnsFigures] = []
        for (spec, ttl, max_size, use_cache), held in self._resolvers.items():
            counts = held.resolver.figures()
            out.append({
                "kind": spec.kind,
                "nameservers": list(spec.nameservers),
                "ttl": ttl,
                "max_size": max_size,
                "use_cache": use_cache,
                "hits": counts["hits"],
                "misses": counts["misses"],
                "size": counts["size"],
                "inflight": counts["inflight"],
            })
        return out

    async def close(self) -> None:
        """Close every pool, then every resolver; wait for evictions in progress."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        pools = list(self._pools.values())
        self._pools.clear()
        await asyncio.gather(*(p.close() for p in pools))
        resolvers = [held.resolver for held in self._resolvers.values()]
        self._resolvers.clear()
        for resolver in resolvers:
            await resolver.close()
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
