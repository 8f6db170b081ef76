from broker.pool_state import NEW, PoolState


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
