"""Bookkeeping of one connection pool, without I/O.

Every connection the pool has open counts against ``limit`` (0 = none) and against the
``limit_per_host`` of its key (0 = none), whether it is active, being opened, or idle.
Requests that cannot get a connection wait in one FIFO queue per pool. When capacity
frees up, waiters are granted in queue order, each one that can go now: an idle
connection of its own key first, else a slot to open a new one (closing the oldest idle
connection of another key when that is all that stands in the way). A waiter held back
only by its own host's limit does not hold back the waiters behind it.

How this stays O(log n) per operation with a long queue. The queue is kept per key (an
``OrderedDict`` per key, in arrival order, each waiter with a sequence number); only the
head of a key can ever be granted, since the others wait on the same key. A heap holds
the heads that may go, ordered by sequence number: that is the pool's FIFO order. Whether
a head may go depends on two things only. Its own host: when that is full (and it has no
idle connection of its own), the key leaves the heap for ``_blocked`` until a connection
of that key is released or closed. And the pool as a whole: when every slot is taken and
no idle connection could be closed to make room, no head at all can go, so dispatching
stops at once. Idle connections sit in one ``OrderedDict`` per key (reused newest first)
and in one for the whole pool in the order they became idle (closed oldest first when
another key needs the slot, and by the keep-alive expiry).

Methods return what the caller must do (waiters to wake with what, connections to
close); the asyncio layer in ``broker.connector`` carries it out.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

C = TypeVar("C", bound=Hashable)
K = Hashable

__all__ = ["NEW", "NOTHING", "Decision", "OpenCap", "PoolState"]


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


NOTHING: Decision[Any] = Decision()
"""A decision with nothing to do (never changed: whoever gets it only reads it)."""


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
        # key -> idle connection -> idle since; the newest last (reused first)
        self.idle: dict[K, dict[C, float]] = {}
        # every idle connection -> (its key, idle since), the oldest first
        self._idle_order: OrderedDict[C, tuple[K, float]] = OrderedDict()
        # waiter token -> its key, in arrival order
        self.waiters: OrderedDict[object, K] = OrderedDict()
        # key -> waiter -> (sequence number, queued at), in arrival order
        self._queues: dict[K, OrderedDict[object, tuple[int, float]]] = {}
        self._heads: list[tuple[int, K]] = []  # (sequence number, key); stale ones skipped
        self._blocked: set[K] = set()  # keys whose head waits on its own host's limit
        self._seq = itertools.count()
        self.last_used = clock()  # when a connection was last released or discarded

    def __repr__(self) -> str:
        return (
            f"<PoolState [Requests: {self.total - self.n_idle} active, "
            f"{len(self.waiters)} queued | Connections: {self.total} open, "
            f"{self.n_idle} idle]>"
        )

    @property
    def n_idle(self) -> int:
        return len(self._idle_order)

    @property
    def quiet(self) -> bool:
        """Nothing active, being opened or queued (idle connections allowed)."""
        return self.total == len(self._idle_order) and not self.waiters

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
        if delta < 0 and key in self._blocked:
            self._unblock(key)

    def _active(self, key: K, delta: int) -> None:
        n = self.active_per_key.get(key, 0) + delta
        if n:
            self.active_per_key[key] = n
        else:
            self.active_per_key.pop(key, None)

    def _add_idle(self, key: K, conn: C, now: float) -> None:
        conns = self.idle.get(key)
        if conns is None:
            self.idle[key] = {conn: now}
        else:
            conns[conn] = now
        self._idle_order[conn] = (key, now)
        if key in self._blocked:
            self._unblock(key)

    def _remove_idle(self, key: K, conn: C) -> None:
        conns = self.idle[key]
        del conns[conn]
        if not conns:
            del self.idle[key]
        del self._idle_order[conn]

    def _pop_idle(self, key: K) -> C | None:
        conns = self.idle.get(key)
        if not conns:
            return None
        conn, _ = conns.popitem()
        if not conns:
            del self.idle[key]
        del self._idle_order[conn]
        return conn

    def _close_idle(self, key: K, conn: C, decision: Decision[C]) -> None:
        self._remove_idle(key, conn)
        self._count(key, -1)
        decision.close.append(conn)

    def _evict_other_idle(self, decision: Decision[C]) -> bool:
        """Close the oldest idle connection to free a total slot. It is never of the
        key that asks: that key would have taken its own idle connection instead."""
        if not self._idle_order:
            return False
        conn, (key, _) = next(iter(self._idle_order.items()))
        self._close_idle(key, conn, decision)
        return True

    def _try(self, key: K, decision: Decision[C]) -> C | _New | None:
        conn = self._pop_idle(key)
        if conn is not None:
            self._active(key, 1)
            return conn
        if self._host_full(key):
            return None
        if self._total_full() and not self._evict_other_idle(decision):
            return None
        self._count(key, 1)
        self._active(key, 1)
        return NEW

    # -- the queue ---------------------------------------------------------------

    def _push_head(self, key: K, queue: OrderedDict[object, tuple[int, float]]) -> None:
        seq, _ = next(iter(queue.values()))
        heapq.heappush(self._heads, (seq, key))

    def _unblock(self, key: K) -> None:
        self._blocked.discard(key)
        self._push_head(key, self._queues[key])

    def _dispatch(self, decision: Decision[C]) -> None:
        heads = self._heads
        while heads and (self._idle_order or not self._total_full()):
            seq, key = heads[0]
            queue = self._queues.get(key)
            if queue is None or next(iter(queue.values()))[0] != seq:
                heapq.heappop(heads)  # that head left (granted or gave up)
                continue
            if self._host_full(key) and key not in self.idle:
                heapq.heappop(heads)
                self._blocked.add(key)
                continue
            got = self._try(key, decision)
            assert got is not None  # the pool has room, and this host too
            heapq.heappop(heads)
            waiter, _ = queue.popitem(last=False)
            del self.waiters[waiter]
            if queue:
                self._push_head(key, queue)
            else:
                del self._queues[key]
            decision.grants.append((waiter, key, got))

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
        if key in self._queues:
            return None, decision
        return self._try(key, decision), decision

    def take_idle(self, key: K) -> C | None:
        """An idle connection of ``key``, made active, or None (none idle, or requests
        already queued on ``key``): never a slot for a new one, never a decision."""
        if key in self._queues:
            return None
        # ``_pop_idle`` and ``_active``, inline: this runs once per fast request
        conns = self.idle.get(key)
        if not conns:
            return None
        conn, _ = conns.popitem()
        if not conns:
            del self.idle[key]
        del self._idle_order[conn]
        active = self.active_per_key
        active[key] = active.get(key, 0) + 1
        return conn

    def enqueue(self, key: K, waiter: object) -> None:
        seq = next(self._seq)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = OrderedDict()
            heapq.heappush(self._heads, (seq, key))
        queue[waiter] = (seq, self._clock())
        self.waiters[waiter] = key

    def cancel(self, waiter: object) -> bool:
        """A queued request gave up; True if it was still queued."""
        key = self.waiters.pop(waiter, _MISSING)
        if key is _MISSING:
            return False
        queue = self._queues[key]
        was_head = next(iter(queue)) is waiter
        del queue[waiter]
        if not queue:
            del self._queues[key]
            self._blocked.discard(key)
        elif was_head and key not in self._blocked:
            self._push_head(key, queue)
        return True

    def drain_waiters(self) -> list[object]:
        """Empty the queue (the pool is closing); the waiters, in order."""
        out = list(self.waiters)
        self.waiters.clear()
        self._queues.clear()
        self._heads.clear()
        self._blocked.clear()
        return out

    def release(self, key: K, conn: C, reusable: bool) -> Decision[C]:
        """An active connection is done with; keep it idle if ``reusable``."""
        now = self.last_used = self._clock()
        self._active(key, -1)
        if reusable:
            self._add_idle(key, conn, now)
            if not self._heads:
                return NOTHING  # the usual case: no Decision made
        decision: Decision[C] = Decision()
        if not reusable:
            self._count(key, -1)
            decision.close.append(conn)
        if self._heads:
            self._dispatch(decision)
        return decision

    def discard(self, key: K) -> Decision[C]:
        """A granted slot produced no connection, or an active one died."""
        self.last_used = self._clock()
        self._active(key, -1)
        self._count(key, -1)
        decision: Decision[C] = Decision()
        self._dispatch(decision)
        return decision

    def idle_lost(self, key: K, conn: C) -> Decision[C]:
        """An idle connection was closed by its peer."""
        decision: Decision[C] = Decision()
        entry = self._idle_order.get(conn)
        if entry is not None:
            self._remove_idle(entry[0], conn)
            self._count(entry[0], -1)
        self._dispatch(decision)
        return decision

    def expire(self) -> Decision[C]:
        """Close idle connections older than ``keepalive_timeout`` (None: never)."""
        decision: Decision[C] = Decision()
        if self.keepalive_timeout is None:
            return decision
        deadline = self._clock() - self.keepalive_timeout
        order = self._idle_order
        while order:
            conn, (key, since) = next(iter(order.items()))
            if since > deadline:
                break
            self._close_idle(key, conn, decision)
        self._dispatch(decision)
        return decision

    def oldest_idle(self) -> float | None:
        """Since when the pool's oldest idle connection is idle; None: none is."""
        for _, since in self._idle_order.values():
            return since
        return None

    def close_oldest_idle(self) -> Decision[C]:
        """Close the oldest idle connection (to free a place under ``OpenCap``)."""
        decision: Decision[C] = Decision()
        if self._evict_other_idle(decision):
            self._dispatch(decision)
        return decision

    def close_all_idle(self) -> list[C]:
        out = list(self._idle_order)
        for key, _ in self._idle_order.values():
            self._count(key, -1)
        self.idle.clear()
        self._idle_order.clear()
        return out

    # -- figures -------------------------------------------------------------

    def queued_per_key(self) -> dict[K, tuple[int, float]]:
        """key -> (requests queued, longest current wait)."""
        now = self._clock()
        return {
            key: (len(queue), now - next(iter(queue.values()))[1])
            for key, queue in self._queues.items()
        }

    def longest_wait(self) -> float:
        if not self.waiters:
            return 0.0
        waiter, key = next(iter(self.waiters.items()))
        return self._clock() - self._queues[key][waiter][1]


_MISSING = object()


class OpenCap:
    """The broker-wide cap on open upstream connections, over all pools (``limit``; 0:
    none), on top of each pool's own limits.

    A pool that got a slot to open a connection (``NEW``) takes a place here first:
    ``take``, or else ``enqueue`` and wait for a grant. A place is held until the
    connection's socket is closed (``closed``), or given back unused (``closed`` too).
    Waiters are granted in arrival order (``OrderedDict``), and nobody takes a place
    while others wait. Connections are counted whatever the limit, so a limit set later
    (``set_limit``, a reload) holds at once against what is open. ``waiters`` holds one
    entry per connect waiting, so it is bounded as the requests are (each worker
    connection's ``max_streams``)."""

    __slots__ = ("limit", "open", "waiters")

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.open = 0
        self.waiters: OrderedDict[object, None] = OrderedDict()

    def __repr__(self) -> str:
        return f"<OpenCap {self.open}/{self.limit or 'no limit'} open, {len(self.waiters)} waiting>"

    def take(self) -> bool:
        if self.waiters or (self.limit and self.open >= self.limit):
            return False
        self.open += 1
        return True

    def enqueue(self, waiter: object) -> None:
        self.waiters[waiter] = None

    def cancel(self, waiter: object) -> bool:
        """A waiter gave up; True if it was still waiting (nothing granted)."""
        return self.waiters.pop(waiter, _MISSING) is not _MISSING

    def closed(self) -> list[object]:
        """A place is free again: the waiters granted one (counted), in order."""
        self.open -= 1
        return self._grant()

    def set_limit(self, limit: int) -> list[object]:
        self.limit = limit
        return self._grant()

    def _grant(self) -> list[object]:
        out: list[object] = []
        waiters = self.waiters
        while waiters and (not self.limit or self.open < self.limit):
            waiter, _ = waiters.popitem(last=False)
            self.open += 1
            out.append(waiter)
        return out
