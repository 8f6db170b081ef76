import itertools
import random

import pytest

from broker.pool_state import NEW, NOTHING, PoolState


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


A = ("http", "a", 80)
B = ("http", "b", 80)


def test_limit_counts_every_open_connection_and_queues_fifo():
    s: PoolState[str] = PoolState(limit=2)
    assert s.acquire(A, "w1")[0] is NEW
    assert s.acquire(A, "w2")[0] is NEW
    assert s.acquire(A, "w3")[0] is None
    assert s.acquire(A, "w4")[0] is None
    assert repr(s) == (
        "<PoolState [Requests: 2 active, 2 queued | Connections: 2 open, 0 idle]>"
    )
    d = s.release(A, "c1", reusable=True)
    assert d.grants == [("w3", A, "c1")] and d.close == []
    d = s.release(A, "c2", reusable=False)
    assert d.grants == [("w4", A, NEW)] and d.close == ["c2"]
    assert s.total == 2 and not s.waiters


def test_idle_connection_is_reused_newest_first():
    s: PoolState[str] = PoolState(limit=10)
    s.acquire(A, "w1")
    s.acquire(A, "w2")
    s.release(A, "old", True)
    s.release(A, "new", True)
    assert s.acquire(A, "w3")[0] == "new"
    assert s.n_idle == 1


def test_limit_per_host_does_not_block_other_hosts():
    s: PoolState[str] = PoolState(limit=10, limit_per_host=1)
    assert s.acquire(A, "a1")[0] is NEW
    assert s.acquire(A, "a2")[0] is None
    assert s.acquire(B, "b1")[0] is NEW  # queued A does not hold back B
    d = s.release(B, "cb", True)
    assert d.grants == []  # the waiting A request is still held by A's limit
    d = s.release(A, "ca", True)
    assert d.grants == [("a2", A, "ca")]


def test_idle_connection_of_another_host_is_closed_to_make_room():
    s: PoolState[str] = PoolState(limit=1)
    s.acquire(A, "a1")
    s.release(A, "ca", True)
    got, d = s.acquire(B, "b1")
    assert got is NEW and d.close == ["ca"]
    assert s.per_key == {B: 1} and s.total == 1


def test_new_request_does_not_jump_the_queue():
    s: PoolState[str] = PoolState(limit=1)
    s.acquire(A, "a1")
    s.acquire(A, "a2")  # queued
    d = s.release(A, "c", True)
    assert d.grants == [("a2", A, "c")]
    s.acquire(A, "a3")  # queued behind nobody, but the connection is taken
    assert list(s.waiters) == ["a3"]


def test_cancel_leaves_the_queue():
    s: PoolState[str] = PoolState(limit=1)
    s.acquire(A, "a1")
    s.acquire(A, "a2")
    s.acquire(A, "a3")
    assert s.cancel("a2") is True
    assert s.cancel("a2") is False
    assert s.release(A, "c", True).grants == [("a3", A, "c")]


def test_discard_frees_the_slot():
    s: PoolState[str] = PoolState(limit=1)
    s.acquire(A, "a1")
    s.acquire(A, "a2")
    d = s.discard(A)
    assert d.grants == [("a2", A, NEW)]
    assert s.total == 1


def test_keepalive_expiry_with_injected_clock():
    clock = Clock()
    s: PoolState[str] = PoolState(limit=5, keepalive_timeout=15, clock=clock)
    s.acquire(A, "w")
    s.release(A, "c", True)
    clock.now = 14.9
    assert s.expire().close == []
    clock.now = 15.0
    assert s.expire().close == ["c"]
    assert s.total == 0 and s.n_idle == 0


def test_idle_lost_and_longest_wait():
    clock = Clock()
    s: PoolState[str] = PoolState(limit=1, clock=clock)
    s.acquire(A, "w")
    s.release(A, "c", True)
    s.idle_lost(A, "c")
    assert s.total == 0 and s.idle == {}
    s.acquire(B, "b1")
    s.acquire(B, "b2")
    clock.now = 2.5
    assert s.longest_wait() == 2.5


def test_unlimited():
    s: PoolState[str] = PoolState(limit=0, limit_per_host=0)
    for i in range(500):
        assert s.acquire(A, i)[0] is NEW
    assert s.total == 500


def test_queued_per_key():
    clock = Clock()
    s: PoolState[str] = PoolState(limit=1, clock=clock)
    s.acquire(A, "a1")
    s.acquire(A, "a2")
    clock.now = 1.0
    s.acquire(B, "b1")
    clock.now = 3.0
    assert s.queued_per_key() == {A: (1, 3.0), B: (1, 2.0)}


def test_keepalive_none_never_expires():
    clock = Clock()
    s: PoolState[str] = PoolState(limit=5, keepalive_timeout=None, clock=clock)
    s.acquire(A, "w")
    s.release(A, "c", True)
    clock.now = 1e9
    assert s.expire().close == []
    assert s.n_idle == 1


def test_a_host_blocked_waiter_keeps_its_place_in_the_queue():
    s: PoolState[str] = PoolState(limit=2, limit_per_host=1)
    s.acquire(A, "a1")
    s.acquire(B, "b1")
    s.acquire(A, "a2")  # waits on A's limit (and the pool's)
    s.acquire(B, "b2")
    C_ = ("http", "c", 80)
    s.acquire(C_, "c1")  # waits on the pool's limit only
    d = s.release(B, "cb", reusable=False)  # frees a pool slot and B's: b2 and c1 want it
    assert d.grants == [("b2", B, NEW)]  # b2 came first; a2 is still held by A's limit
    d = s.release(A, "ca", reusable=False)
    assert d.grants == [("a2", A, NEW)]  # a2 came before c1
    assert list(s.waiters) == ["c1"]


def test_cancelling_the_head_lets_the_next_one_go():
    s: PoolState[str] = PoolState(limit=1, clock=Clock())
    s.acquire(A, "a1")
    s.acquire(A, "a2")
    s.acquire(B, "b1")
    s.acquire(A, "a3")
    s.cancel("a2")
    assert s.release(A, "c", reusable=False).grants == [("b1", B, NEW)]
    assert s.queued_per_key() == {A: (1, 0.0)}


def test_the_oldest_idle_connection_of_another_host_makes_room():
    clock = Clock()
    s: PoolState[str] = PoolState(limit=3, clock=clock)
    for key, conn in ((A, "a-old"), (B, "b"), (A, "a-new")):
        s.acquire(key, conn)
    for key, conn in ((A, "a-old"), (B, "b"), (A, "a-new")):
        clock.now += 1
        s.release(key, conn, reusable=True)
    C_ = ("http", "c", 80)
    got, d = s.acquire(C_, "c1")
    assert got is NEW and d.close == ["a-old"]
    got, d = s.acquire(C_, "c2")
    assert got is NEW and d.close == ["b"]
    assert s.acquire(A, "a")[0] == "a-new"


def test_expiry_closes_the_oldest_of_every_host():
    clock = Clock()
    s: PoolState[str] = PoolState(limit=5, keepalive_timeout=10, clock=clock)
    for key, conn in ((A, "a1"), (B, "b1"), (A, "a2")):
        s.acquire(key, conn)
    for key, conn in ((A, "a1"), (B, "b1"), (A, "a2")):
        clock.now += 1
        s.release(key, conn, reusable=True)
    clock.now = 12
    assert s.expire().close == ["a1", "b1"]
    assert s.total == s.n_idle == 1 and s.acquire(A, "a")[0] == "a2"


class CountingKey:
    """A key that counts how often the state hashes or compares it: its work."""

    ops = 0

    def __init__(self, name: int) -> None:
        self.name = name

    def __hash__(self) -> int:
        CountingKey.ops += 1
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        CountingKey.ops += 1
        return isinstance(other, CountingKey) and other.name == self.name


def _queue_work(n: int) -> int:
    """Key operations to queue ``n`` requests on distinct hosts and a hot one, then
    serve them all, one release at a time."""
    CountingKey.ops = 0
    s: PoolState[str] = PoolState(limit=2, limit_per_host=1)
    hot = CountingKey(-1)
    s.acquire(hot, "hot-first")
    s.acquire(CountingKey(-2), "other-first")
    for i in range(n):  # the hot host's waiters sit in front of every other host's
        s.acquire(hot, ("hot", i))
    for i in range(n):
        s.acquire(CountingKey(i), ("w", i))
    active = [(hot, "c"), (CountingKey(-2), "c")]
    served = 0
    while active:
        key, conn = active.pop()
        for _, k, _ in s.release(key, conn, reusable=False).grants:
            served += 1
            active.append((k, "c"))
    assert served == 2 * n and not s.waiters and s.total == 0
    return CountingKey.ops


def test_queue_work_grows_linearly_not_quadratically():
    # A scan of the queue per acquire or per release costs n * n key operations
    # (2.5e7 here); the per-key queues with a heap of heads cost a few per request.
    n = 5_000
    assert _queue_work(n) < 30 * (2 * n)
    assert _queue_work(2 * n) < 2.2 * _queue_work(n)


class Naive:
    """The rules of the module docstring, written the obvious way: each change walks
    the whole queue. Slow, and easy to check by reading."""

    def __init__(self, limit: int, limit_per_host: int, keepalive: float | None, clock) -> None:
        self.limit, self.per_host = limit, limit_per_host
        self.keepalive, self.clock = keepalive, clock
        self.open: dict = {}  # key -> connections open (active, opening or idle)
        self.idle: list = []  # (since, key, conn), the oldest first
        self.queue: list = []  # (waiter, key), in arrival order
        self.grants: list = []
        self.closed: list = []

    def _try(self, key):
        mine = [entry for entry in self.idle if entry[1] == key]
        if mine:
            self.idle.remove(mine[-1])
            return mine[-1][2]
        if self.per_host and self.open.get(key, 0) >= self.per_host:
            return None
        if self.limit and sum(self.open.values()) >= self.limit:
            if not self.idle:
                return None
            _, other, conn = self.idle.pop(0)
            self.open[other] -= 1
            self.closed.append(conn)
        self.open[key] = self.open.get(key, 0) + 1
        return NEW

    def _dispatch(self):
        for waiter, key in list(self.queue):
            got = self._try(key)
            if got is not None:
                self.queue.remove((waiter, key))
                self.grants.append((waiter, key, got))

    def acquire(self, key, waiter):
        got = None if any(k == key for _, k in self.queue) else self._try(key)
        if got is None:
            self.queue.append((waiter, key))
        return got

    def cancel(self, waiter):
        for entry in self.queue:
            if entry[0] == waiter:
                self.queue.remove(entry)
                return True
        return False

    def release(self, key, conn, reusable):
        if reusable:
            self.idle.append((self.clock(), key, conn))
        else:
            self.open[key] -= 1
            self.closed.append(conn)
        self._dispatch()

    def discard(self, key):
        self.open[key] -= 1
        self._dispatch()

    def idle_lost(self, key, conn):
        for entry in self.idle:
            if entry[2] == conn:
                self.idle.remove(entry)
                self.open[key] -= 1
        self._dispatch()

    def expire(self):
        if self.keepalive is not None:
            while self.idle and self.idle[0][0] <= self.clock() - self.keepalive:
                _, key, conn = self.idle.pop(0)
                self.open[key] -= 1
                self.closed.append(conn)
        self._dispatch()


@pytest.mark.parametrize("seed", range(200))
def test_decides_as_the_naive_rules_do(seed):
    """Random requests, releases, gives-up, losses and expiries on a few hosts: every
    grant and every close is the one the naive walk of the queue makes."""
    rnd = random.Random(seed)
    clock = Clock()
    limit, per_host = rnd.choice([0, 1, 2, 3, 5]), rnd.choice([0, 1, 2])
    keepalive = rnd.choice([None, 5.0, 20.0])
    s: PoolState[str] = PoolState(limit, per_host, keepalive, clock=clock)
    naive = Naive(limit, per_host, keepalive, clock)
    keys = [("http", f"h{i}", 80) for i in range(rnd.randint(1, 4))]
    active: list = []  # (key, connection or None for a slot still opening)
    queued: list = []
    names = itertools.count()

    def check(decision) -> None:
        assert decision.grants == naive.grants
        assert sorted(decision.close) == sorted(naive.closed)
        naive.grants, naive.closed = [], []
        for waiter, key, got in decision.grants:
            queued.remove(waiter)
            active.append((key, None if got is NEW else got))

    for _ in range(150):
        clock.now += 1
        op = rnd.random()
        if op < 0.35:
            key, waiter = rnd.choice(keys), f"w{next(names)}"
            got, decision = s.acquire(key, waiter)
            assert got == naive.acquire(key, waiter)
            check(decision)
            if got is None:
                queued.append(waiter)
            else:
                active.append((key, None if got is NEW else got))
        elif op < 0.45 and queued:
            waiter = queued.pop(rnd.randrange(len(queued)))
            assert s.cancel(waiter) is naive.cancel(waiter) is True
        elif op < 0.75 and active:
            key, conn = active.pop(rnd.randrange(len(active)))
            if conn is None and rnd.random() < 0.2:
                naive.discard(key)
                check(s.discard(key))
                continue
            conn = conn or f"c{next(names)}"
            reusable = rnd.random() < 0.7
            naive.release(key, conn, reusable)
            check(s.release(key, conn, reusable))
        elif op < 0.85 and naive.idle:
            _, key, conn = rnd.choice(naive.idle)
            naive.idle_lost(key, conn)
            check(s.idle_lost(key, conn))
        elif op < 0.9:
            clock.now += 7
            naive.expire()
            check(s.expire())
        assert list(s.waiters) == [waiter for waiter, _ in naive.queue]
        assert s.per_key == {k: n for k, n in naive.open.items() if n}
        assert s.n_idle == len(naive.idle) and s.total == sum(naive.open.values())


def test_take_idle_gives_an_idle_connection_or_nothing():
    """The fast path's take: never a slot for a new connection, never past a queue."""
    s: PoolState[str] = PoolState(limit=1)
    assert s.take_idle(A) is None and s.total == 0  # nothing idle: no slot taken either
    assert s.acquire(A, "w1")[0] is NEW
    assert s.release(A, "c1", reusable=True) is NOTHING  # nothing to do, nothing made
    assert s.take_idle(B) is None
    assert s.take_idle(A) == "c1"
    assert repr(s) == (
        "<PoolState [Requests: 1 active, 0 queued | Connections: 1 open, 0 idle]>"
    )
    assert s.acquire(A, "w2")[0] is None  # queued behind the taken one
    d = s.release(A, "c1", reusable=True)
    assert d.grants == [("w2", A, "c1")]
