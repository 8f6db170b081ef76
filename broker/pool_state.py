"""Bookkeeping of one connection pool, without I/O.

Every connection the pool has open counts against ``limit`` (0 = none) and against the
``limit_per_host`` of its key (0 = none), whether it is active, being opened, or idle.
Requests that cannot get a connection wait in one FIFO queue per pool. When capacity
frees up, ``_dispatch`` walks the queue in order and grants every waiter that can go now:
an idle connection of its own key first, else a slot to open a new one (closing an idle
connection of another key when that is all that stands in the way). A waiter held back
only by its own host's limit does not hold back the waiters behind it.

Methods return what the caller must do (waiters to wake with what, connections to
close); the asyncio layer in ``broker.connector`` carries it out.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

C = TypeVar("C")
K = Hashable

__all__ = ["NEW", "Decision", "PoolState"]


class _New:
    def __repr__(self) -> str:
        return "NEW"


NEW = _New()
"""Granted: open a new connection (its slot is already counted)."""


class Decision(Generic[C]):
    """What the I/O layer must do after a state change."""

    __slots__ = ("grants", "close")

    def __init__(self) -> None:
        # (waiter, its key, what it gets): the key so that a grant to a waiter that
        # gave up in the meantime can be handed back
        self.grants: list[tuple[object, K, C | _New]] = []
        self.close: list[C] = []


class PoolState(Generic[C]):
    def __init__(
        self,
        limit: int = 100,
        limit_per_host: int = 0,
        keepalive_timeout: float | None = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.limit_per_host = limit_per_host
        self.keepalive_timeout = keepalive_timeout
        self._clock = clock
        self.total = 0
        self.per_key: dict[K, int] = {}
        self.active_per_key: dict[K, int] = {}
        # key -> list of (connection, idle since); the newest last (reused first)
        self.idle: dict[K, list[tuple[C, float]]] = {}
        self.n_idle = 0
        # waiter token -> (key, queued at)
        self.waiters: OrderedDict[object, tuple[K, float]] = OrderedDict()

    def __repr__(self) -> str:
        active = self.total - self.n_idle
        return (
            f"<PoolState [Requests: {active} active, {len(self.waiters)} queued | "
            f"Connections: {self.total} open, {self.n_idle} idle]>"
        )

    # -- capacity --------------------------------------------------------------

    def _host_full(self, key: K) -> bool:
        return bool(self.limit_per_host) and self.per_key.get(key, 0) >= self.limit_per_host

    def _total_full(self) -> bool:
        return bool(self.limit) and self.total >= self.limit

    def _count(self, key: K, delta: int) -> None:
        self.total += delta
        n = self.per_key.get(key, 0) + delta
        if n:
            self.per_key[key] = n
        else:
            self.per_key.pop(key, None)

    def _active(self, key: K, delta: int) -> None:
        n = self.active_per_key.get(key, 0) + delta
        if n:
            self.active_per_key[key] = n
        else:
            self.active_per_key.pop(key, None)

    def _pop_idle(self, key: K) -> C | None:
        conns = self.idle.get(key)
        if not conns:
            return None
        conn, _ = conns.pop()
        if not conns:
            del self.idle[key]
        self.n_idle -= 1
        return conn

    def _evict_other_idle(self, key: K, decision: Decision[C]) -> bool:
        """Close the oldest idle connection of another key to free a total slot."""
        oldest: tuple[float, K] | None = None
        for k, conns in self.idle.items():
            if k != key and (oldest is None or conns[0][1] < oldest[0]):
                oldest = (conns[0][1], k)
        if oldest is None:
            return False
        k = oldest[1]
        conns = self.idle[k]
        conn, _ = conns.pop(0)
        if not conns:
            del self.idle[k]
        self.n_idle -= 1
        self._count(k, -1)
        decision.close.append(conn)
        return True

    def _try(self, key: K, decision: Decision[C]) -> C | _New | None:
        conn = self._pop_idle(key)
        if conn is not None:
            self._active(key, 1)
            return conn
        if self._host_full(key):
            return None
        if self._total_full() and not self._evict_other_idle(key, decision):
            return None
        self._count(key, 1)
        self._active(key, 1)
        return NEW

    # -- transitions -------------------------------------------------------------

    def acquire(self, key: K, waiter: object) -> tuple[C | _New | None, Decision[C]]:
        """A request wants a connection for ``key``: ``try_acquire``, and queue
        ``waiter`` if that gave nothing."""
        got, decision = self.try_acquire(key)
        if got is None:
            self.enqueue(key, waiter)
        return got, decision

    def try_acquire(self, key: K) -> tuple[C | _New | None, Decision[C]]:
        """An idle connection, NEW (a slot to open one), or None: then the caller must
        ``enqueue`` before anything else changes the state. A request never jumps a
        queue that is already waiting on its key."""
        decision: Decision[C] = Decision()
        if self.waiters and any(k == key for k, _ in self.waiters.values()):
            return None, decision
        return self._try(key, decision), decision

    def enqueue(self, key: K, waiter: object) -> None:
        self.waiters[waiter] = (key, self._clock())

    def cancel(self, waiter: object) -> bool:
        """A queued request gave up; True if it was still queued."""
        return self.waiters.pop(waiter, None) is not None

    def release(self, key: K, conn: C, reusable: bool) -> Decision[C]:
        """An active connection is done with; keep it idle if ``reusable``."""
        decision: Decision[C] = Decision()
        self._active(key, -1)
        if reusable:
            self.idle.setdefault(key, []).append((conn, self._clock()))
            self.n_idle += 1
        else:
            self._count(key, -1)
            decision.close.append(conn)
        self._dispatch(decision)
        return decision

    def discard(self, key: K) -> Decision[C]:
        """A granted slot produced no connection, or an active one died."""
        self._active(key, -1)
        self._count(key, -1)
        decision: Decision[C] = Decision()
        self._dispatch(decision)
        return decision

    def idle_lost(self, key: K, conn: C) -> Decision[C]:
        """An idle connection was closed by its peer."""
        conns = self.idle.get(key, [])
        for i, (c, _) in enumerate(conns):
            if c is conn:
                del conns[i]
                if not conns:
                    del self.idle[key]
                self.n_idle -= 1
                self._count(key, -1)
                break
        decision: Decision[C] = Decision()
        self._dispatch(decision)
        return decision

    def expire(self) -> Decision[C]:
        """Close idle connections older than ``keepalive_timeout`` (None: never)."""
        decision: Decision[C] = Decision()
        if self.keepalive_timeout is None:
            return decision
        deadline = self._clock() - self.keepalive_timeout
        for key in list(self.idle):
            conns = self.idle[key]
            while conns and conns[0][1] <= deadline:
                conn, _ = conns.pop(0)
                self.n_idle -= 1
                self._count(key, -1)
                decision.close.append(conn)
            if not conns:
                del self.idle[key]
        self._dispatch(decision)
        return decision

    def close_all_idle(self) -> list[C]:
        out: list[C] = []
        for key, conns in self.idle.items():
            for conn, _ in conns:
                self._count(key, -1)
                out.append(conn)
        self.idle.clear()
        self.n_idle = 0
        return out

    def _dispatch(self, decision: Decision[C]) -> None:
        for waiter, (key, _) in list(self.waiters.items()):
            got = self._try(key, decision)
            if got is not None:
                del self.waiters[waiter]
                decision.grants.append((waiter, key, got))
            elif self._total_full() and not self.n_idle:
                break

    # -- figures -------------------------------------------------------------

    def queued_per_key(self) -> dict[K, tuple[int, float]]:
        """key -> (requests queued, longest current wait)."""
        now = self._clock()
        out: dict[K, tuple[int, float]] = {}
        for key, since in self.waiters.values():
            n, longest = out.get(key, (0, 0.0))
            out[key] = (n + 1, max(longest, now - since))
        return out

    def longest_wait(self) -> float:
        if not self.waiters:
            return 0.0
        _, since = next(iter(self.waiters.values()))
        return self._clock() - since
