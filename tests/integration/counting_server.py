"""A keep-alive HTTP/1.1 server that counts, per Host, open connections and requests
in flight, and remembers the highest of each: what a pool limit test needs to see.

Every request waits at a gate before it is answered. The gate opens for good once
``open_at`` requests are in flight at once (1 by default: no wait), or when ``release()``
is called (with ``open_at=None``, only then). A limit test sets ``open_at`` to the limit,
so the limit is reached for sure, however fast the machine is; a test that needs a
request held sets ``open_at=None`` and waits for it with ``arrived()``."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Counts:
    open: Counter[str] = field(default_factory=Counter)
    inflight: Counter[str] = field(default_factory=Counter)
    max_open: Counter[str] = field(default_factory=Counter)
    max_inflight: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    arrivals: list[tuple[float, str]] = field(default_factory=list)
    workers: Counter[str] = field(default_factory=Counter)  # by X-Worker header
    # The most this server's loop ran late (a 5 ms tick's lateness): how late an arrival
    # can have been stamped on a loaded machine, for a test that measures gaps.
    max_lag: float = 0.0

    def total(self, c: Counter[str]) -> int:
        return sum(c.values())


class CountingServer:
    ALL = "*"

    def __init__(self, open_at: int | None = 1) -> None:
        self.open_at = open_at
        self.counts = Counts()
        self._gate = asyncio.Event()
        self._arrival_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._tick: asyncio.TimerHandle | None = None
        self.port = 0

    def _watch_lag(self, due: float) -> None:
        loop = asyncio.get_running_loop()
        self.counts.max_lag = max(self.counts.max_lag, loop.time() - due)
        self._tick = loop.call_at(due + 0.005, self._watch_lag, due + 0.005)

    def _bump(self, which: Counter[str], top: Counter[str], host: str, delta: int) -> None:
        for key in (host, self.ALL):
            which[key] += delta
            top[key] = max(top[key], which[key])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        c = self.counts
        host = None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                if host is None:
                    host = headers.get("host", "?").rsplit(":", 1)[0]
                    self._bump(c.open, c.max_open, host, 1)
                c.requests += 1
                if "x-worker" in headers:
                    c.workers[headers["x-worker"]] += 1
                c.arrivals.append((asyncio.get_running_loop().time(), host))
                self._bump(c.inflight, c.max_inflight, host, 1)
                self._announce()
                await self._gate.wait()
                self._bump(c.inflight, c.max_inflight, host, -1)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        finally:
            if host is not None:
                self._bump(c.open, c.max_open, host, -1)
            self._writers.discard(writer)
            writer.close()

    def _announce(self) -> None:
        c = self.counts
        if self.open_at is not None and c.inflight[self.ALL] >= self.open_at:
            self._gate.set()
        for n, arrived in self._arrival_waiters:
            if c.requests >= n and not arrived.done():
                arrived.set_result(None)

    def release(self) -> None:
        """Open the gate: every held request is answered, and every later one at once."""
        self._gate.set()

    async def arrived(self, n: int) -> None:
        """Wait until ``n`` requests in all have arrived."""
        if self.counts.requests >= n:
            return
        waiter = (n, asyncio.get_running_loop().create_future())
        self._arrival_waiters.append(waiter)
        try:
            await waiter[1]
        finally:
            self._arrival_waiters.remove(waiter)

    async def start(self, hosts: tuple[str, ...] = ("127.0.0.1",)) -> int:
        first = await asyncio.start_server(self._handle, hosts[0], self.port)
        self.port = first.sockets[0].getsockname()[1]
        self._servers.append(first)
        for h in hosts[1:]:
            self._servers.append(await asyncio.start_server(self._handle, h, self.port))
        self._watch_lag(asyncio.get_running_loop().time())
        return self.port

    async def stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
        for w in list(self._writers):
            w.close()
        for s in self._servers:
            s.close()
            await s.wait_closed()
