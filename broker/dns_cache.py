"""The DNS cache table, without I/O: host -> addresses with a TTL and a size cap."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["DNSCache"]

Addr = TypeVar("Addr")


class DNSCache(Generic[Addr]):
    """Entries expire ``ttl`` seconds after they were stored (None: never); when
    ``max_size`` entries are held the least recently used one makes room."""

    def __init__(
        self,
        ttl: float | None = 10,
        max_size: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._clock = clock
        self._table: OrderedDict[Hashable, tuple[list[Addr], float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"<DNSCache {len(self)} hosts, {self.hits} hits, {self.misses} misses>"

    def get(self, key: Hashable) -> list[Addr] | None:
        entry = self._table.get(key)
        if entry is not None:
            addrs, stored = entry
            if self.ttl is None or self._clock() - stored < self.ttl:
                self._table.move_to_end(key)
                self.hits += 1
                return addrs
            del self._table[key]
        self.misses += 1
        return None

    def put(self, key: Hashable, addrs: list[Addr]) -> None:
        self._table[key] = (addrs, self._clock())
        self._table.move_to_end(key)
        while self.max_size and len(self._table) > self.max_size:
            self._table.popitem(last=False)

    def clear(self, key: Hashable | None = None) -> None:
        if key is None:
            self._table.clear()
        else:
            self._table.pop(key, None)
