"""Deadlines: total timeouts with one timer per second of the clock (aiohttp's ceiling)."""

from __future__ import annotations

import asyncio

from worker_client.transport import Deadlines


class Handle:
    def __init__(self) -> None:
        self.fired = 0

    def _timed_out(self) -> None:
        self.fired += 1


async def test_long_timeouts_share_a_timer_on_the_whole_second():
    loop = asyncio.get_running_loop()
    d = Deadlines(loop)
    handles = [Handle() for _ in range(50)]
    tokens = [d.add(h, 0.3 + 5, ceil_threshold=0.3) for h in handles]  # type: ignore[arg-type]
    assert len(set(tokens)) <= 2 and all(isinstance(t, int) for t in tokens)
    assert len(d._timers) <= 2  # one per second, not one per stream
    d.cancel_all()


async def test_short_timeouts_are_exact_and_discard_disarms():
    loop = asyncio.get_running_loop()
    d = Deadlines(loop)
    keep, drop = Handle(), Handle()
    d.add(keep, 0.05, ceil_threshold=5)  # type: ignore[arg-type]
    token = d.add(drop, 0.05, ceil_threshold=5)  # type: ignore[arg-type]
    d.discard(drop, token)  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert (keep.fired, drop.fired) == (1, 0)


async def test_a_whole_second_fires_every_handle_left_in_it():
    loop = asyncio.get_running_loop()
    d = Deadlines(loop)
    a, b, c = Handle(), Handle(), Handle()
    # threshold 0: rounded up to the next whole second of loop.time(), at most 1 s away
    tokens = [d.add(h, 0.0, ceil_threshold=0) for h in (a, b, c)]  # type: ignore[arg-type]
    d.discard(b, tokens[1])  # type: ignore[arg-type]
    await asyncio.sleep(1.05)
    assert (a.fired, b.fired, c.fired) == (1, 0, 1)
    assert d._timers == {} and d._seconds == {}
