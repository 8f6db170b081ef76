"""Deadlines: total timeouts with one timer per second of the clock (aiohttp's ceiling)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from worker_client.handle import Deadlines


class Handle:
    def __init__(self) -> None:
        self.fired = 0

    def _timed_out(self) -> None:
        self.fired += 1


class _Timer:
    def __init__(self, when: float, callback: Callable[..., object], args: tuple) -> None:
        self.when, self.callback, self.args = when, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualLoop:
    """The two things Deadlines asks of its loop, ``time()`` and ``call_at()``, on a clock
    that moves only when the test calls ``advance()``."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.timers: list[_Timer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., object], *args: object) -> _Timer:
        timer = _Timer(when, callback, args)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move the clock on, running the timers due by then in order."""
        self.now += seconds
        due = sorted((t for t in self.timers if t.when <= self.now), key=lambda t: t.when)
        for timer in due:
            self.timers.remove(timer)
            if not timer.cancelled:
                timer.callback(*timer.args)


async def test_long_timeouts_share_a_timer_on_the_whole_second():
    loop = asyncio.get_running_loop()
    d = Deadlines(loop)
    handles = [Handle() for _ in range(50)]
    tokens = [d.add(h, 0.3 + 5, ceil_threshold=0.3) for h in handles]  # type: ignore[arg-type]
    assert len(set(tokens)) <= 2 and all(isinstance(t, int) for t in tokens)
    assert len(d._timers) <= 2  # one per second, not one per stream
    d.cancel_all()


def test_short_timeouts_are_exact_and_discard_disarms():
    loop = ManualLoop(now=100.0)
    d = Deadlines(loop)  # type: ignore[arg-type]
    keep, drop = Handle(), Handle()
    d.add(keep, 0.25, ceil_threshold=5)  # type: ignore[arg-type]
    token = d.add(drop, 0.25, ceil_threshold=5)  # type: ignore[arg-type]
    d.discard(drop, token)  # type: ignore[arg-type]
    loop.advance(0.125)
    assert (keep.fired, drop.fired) == (0, 0)
    loop.advance(0.125)  # 100.25, not rounded to a whole second
    assert (keep.fired, drop.fired) == (1, 0)


def test_a_whole_second_fires_every_handle_left_in_it():
    loop = ManualLoop(now=100.25)
    d = Deadlines(loop)  # type: ignore[arg-type]
    a, b, c = Handle(), Handle(), Handle()
    # threshold 0: rounded up to the next whole second of loop.time(), at most 1 s away
    tokens = [d.add(h, 0.0, ceil_threshold=0) for h in (a, b, c)]  # type: ignore[arg-type]
    assert len(loop.timers) == 1  # the second's one timer
    d.discard(b, tokens[1])  # type: ignore[arg-type]
    loop.advance(0.5)
    assert (a.fired, b.fired, c.fired) == (0, 0, 0)
    loop.advance(0.25)  # 101.0
    assert (a.fired, b.fired, c.fired) == (1, 0, 1)
    assert d._timers == {} and d._seconds == {}
