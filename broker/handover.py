"""An upgraded connection taken whole by its worker (a WebSocket's, issue 14).

After a 101 answers an upgrade (``Request.upgrade``), the engine asks the stream's
carrier to take the connection (``BrokerStream.adopt``) before it falls back to relaying
its bytes (``broker.tunnel``):

- embedded, the worker's WebSocket becomes the protocol of the engine's own asyncio
  transport (ws:// and wss:// alike);
- through a broker, a plain (not TLS) socket goes to the worker process over
  SCM_RIGHTS. An asyncio transport cannot receive descriptors, so the worker claims it
  on a connection of its own (``Claim(token)``; the broker answers ``Granted(early)``
  with the descriptor attached and hangs up). A wss:// connection's TLS state lives in
  the broker's process: it is relayed.

Why, measured (``bench/ws_bench.py``, see docs/benchmarks.md): relayed, a small
message's round trip takes about 2.5x aiohttp's and 16-byte messages go at about half
aiohttp's rate; owned by the worker, the codec's own cost is all that is left.

What stays here is the connection's place in the pool: an ``Adoption`` holds the lease
(the WebSocket counts against ``limit`` and ``limit_per_host``) until its stream ends:
the worker releases it (``Cancel``) once its WebSocket is closed, or the worker's
connection to the broker is lost. The broker reads no more of the socket after the 101
(what it had read past the head goes to the worker as ``early``); it writes to it once,
when the worker died with it: a masked CLOSE with 1001 (going away). The worker writes
each frame whole into its socket's buffer, so a worker that dies between two writes
leaves the stream at a frame boundary; one killed inside a write of a frame larger than
the socket's buffer leaves half a frame, and the origin then reads the CLOSE as the
rest of it and fails the connection as malformed (it is closed either way).

Tokens are 16 random bytes, good for one claim, and only from the process that sent
the request (the kernel's pid for the claiming connection, ``SO_PEERCRED``): no worker
can take another's socket. An unclaimed adoption ends with its stream, like a claimed
one.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from shared.websocket import WebSocketWriter, WSCloseCode

if TYPE_CHECKING:
    import asyncio

    from .connector import Pool
    from .http1 import HTTP1Connection
    from .stream import BrokerStream

__all__ = ["Adoption", "GOING_AWAY"]

GOING_AWAY = WebSocketWriter().close(WSCloseCode.GOING_AWAY, mask=True)
"""The CLOSE a dead worker's WebSocket sends its origin (masked, as a client's)."""


class Adoption:
    """One upgraded connection its worker takes (see the module docstring)."""

    __slots__ = ("token", "stream", "conn", "pool", "process", "claimed", "_table")

    def __init__(
        self,
        table: dict[bytes, Adoption],
        stream: BrokerStream,
        conn: HTTP1Connection,
        pool: Pool,
        process: int = 0,
    ) -> None:
        self.token = secrets.token_bytes(16)
        self.stream = stream
        self.conn = conn
        self.pool = pool
        self.process = process  # the worker's (0: in this process)
        self.claimed = False
        self._table = table
        table[self.token] = self
        conn.pause_reading()  # what comes now is the worker's to read
        stream.on_halt = self.end

    def __repr__(self) -> str:
        state = "claimed" if self.claimed else "offered"
        return f"<Adoption stream={self.stream.id} {state} {self.conn!r}>"

    def claim(self) -> tuple[asyncio.Transport, bytes]:
        """Once: the connection's transport and the bytes read past its 101."""
        self._table.pop(self.token, None)
        self.claimed = True
        conn = self.conn
        early = b"".join(conn._early)
        conn._early = []
        conn._early_size = 0
        assert conn.transport is not None
        return conn.transport, early

    def end(self) -> None:
        """The stream ended: the lease ends, and the connection closes (never reused).
        Its worker gone without closing it (``BrokerStream.orphaned``): 1001 first."""
        self._table.pop(self.token, None)
        conn = self.conn
        if self.stream.orphaned:
            conn.write_last(GOING_AWAY)
        self.pool.give_back(conn)
