import pytest

from broker.rate_limit import RateLimiter


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_of_one_then_one_per_interval():
    clock = Clock()
    rl = RateLimiter(4, clock)  # one per 0.25 s
    waits = [rl.reserve("h")[0] for _ in range(4)]
    assert waits == [0.0, 0.25, 0.5, 0.75]


def test_hosts_are_independent():
    rl = RateLimiter(1, Clock())
    assert rl.reserve("a")[0] == 0.0
    assert rl.reserve("b")[0] == 0.0
    assert rl.reserve("a")[0] == 1.0


def test_idle_time_does_not_accumulate_burst():
    clock = Clock()
    rl = RateLimiter(2, clock)
    rl.reserve("h")
    clock.now += 10
    assert rl.reserve("h")[0] == 0.0
    assert rl.reserve("h")[0] == 0.5


def test_cancel_gives_back_the_latest_booking():
    clock = Clock()
    rl = RateLimiter(1, clock)
    rl.reserve("h")
    wait, start = rl.reserve("h")
    assert wait == 1.0
    rl.cancel("h", start)
    assert rl.reserve("h")[0] == 1.0  # the freed turn is handed to the next caller


def test_rate_must_be_positive():
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_past_hosts_are_forgotten_at_an_amortized_constant_cost():
    clock = Clock()
    rl = RateLimiter(1, clock)
    sizes = []
    for i in range(10_000):  # every host still waiting: nothing can be forgotten
        rl.reserve(i)
        sizes.append(len(rl._next))
    assert sizes[-1] == 10_000
    assert rl._sweep_at >= 10_000  # swept at 1024, 2048, 4096, 8192: not at every booking
    clock.now += 2
    rl.reserve("late")
    for i in range(rl._sweep_at):
        rl.reserve(("new", i))
    assert len(rl._next) <= rl._sweep_at  # the 10,000 past hosts were dropped
