"""Requests-per-second limits per host, across every worker of a pool (no I/O).

A token bucket with a burst of one: request n to a host may start no earlier than
1/rate seconds after request n-1 was allowed to. ``reserve`` books the next free start
time and returns how long the caller has to wait for it; a caller that gives up before
its turn hands it back with ``cancel`` so that the requests behind it are not delayed.
Hosts whose next start is past are forgotten in a sweep that runs each time the table
has doubled since the last one, so the table stays bounded by twice the hosts that are
still waiting (at least ``_SWEEP_AT``) at an amortized O(1) per booking.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

__all__ = ["RateLimiter"]

_SWEEP_AT = 1024


class RateLimiter:
    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 requests per second")
        self.interval = 1.0 / rate
        self._clock = clock
        self._next: dict[Hashable, float] = {}
        self._sweep_at = _SWEEP_AT

    def __repr__(self) -> str:
        return f"<RateLimiter {1 / self.interval:g}/s, {len(self._next)} hosts>"

    def reserve(self, key: Hashable) -> tuple[float, float]:
        """Book a start for ``key``: (seconds to wait, the booked start time)."""
        now = self._clock()
        start = max(now, self._next.get(key, now))
        self._next[key] = start + self.interval
        self._forget_old(now)
        return start - now, start

    def cancel(self, key: Hashable, start: float) -> None:
        """Give back a booked start that was not used (only the latest can be)."""
        if self._next.get(key) == start + self.interval:
            self._next[key] = start

    def _forget_old(self, now: float) -> None:
        if len(self._next) > self._sweep_at:
            self._next = {k: t for k, t in self._next.items() if t > now}
            self._sweep_at = max(_SWEEP_AT, 2 * len(self._next))
