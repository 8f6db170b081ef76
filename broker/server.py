"""The broker's Unix-socket server: one ``WorkerConnection`` per worker process.

A worker connection reads frames, checks the handshake, and runs one engine task per
stream. Anything wrong with what a worker sends (a bad frame, a wrong protocol version,
a stream id reused, a frame whose handling raised) closes that worker's connection with
an ``ErrorFrame`` and nothing else; a stream that breaks its own rules (Data beyond its
credit, Data on a stream that sends no body) fails alone, with a ``Failure``. When a
worker goes away its streams are cancelled, which closes their upstream connections and
frees their pool slots.

What one worker connection may hold (``Limits`` and the constants below):

- Handshake: ``Hello`` within ``handshake_timeout`` (5 s) of connecting, in a frame of
  at most ``HELLO_MAX_FRAME`` bytes; a worker sends nothing else before ``Welcome``.
  The read buffer is the server's, one for all connections, so a connection that has
  not spoken costs its socket and a few hundred bytes.
- Frames: one unfinished frame, at most ``MAX_FRAME`` (4 MiB).
- Streams: at most ``max_streams`` (1024) open at once; the next request gets a Failure.
- Replies: a response whose whole body (under ``INLINE_MAX``, 32 KiB) came with its head
  goes as one Head frame carrying it (``shared.messages``); the head and the pieces held
  for it are at most that per stream.
- Cookie jars: at most ``max_jars`` (1024) tokens open per worker process (all its
  connections together; kept until the process closes them or exits, which costs a
  pidfd per process whose last connection closed while it held jars), and the bounds
  of ``broker.jars`` (named jars, stores, staged loads). A jar call is answered at
  once; the largest answer, a ``JarDump``, is one jar's contents (its store's caps).
- Pool specs: at most ``max_pool_specs`` (256) distinct ``PoolSpec`` over the
  connection's life (opened by id, inline in requests, and ClearDNS); over it a request
  gets a Failure, a ClearDNS an ErrorFrame. Timeouts opened by id: at most
  ``max_timeouts`` (64). A request naming an id never opened gets a Failure
  (``protocol``), one opened over a cap a Failure (``broker``); an id opened twice is an
  ErrorFrame. What the connection had checked already: ``broker.known`` (about 700 KiB
  at most: its docstring).
- TLS settings: at most ``max_tls_specs`` (64) distinct ``TlsSpec`` opened
  (``TlsOpen``) over the connection's life, of at most 16 MiB encoded together; a
  request naming one refused for a cap gets a Failure (``broker``), one naming an id
  never opened a Failure (``protocol``),
  and a ``TlsOpen`` whose id is not its spec's SHA-256 an ErrorFrame (``broker/tls.py``).
- Request bodies: the broker gives a streamed request ``STREAM_WINDOW`` (1 MiB) of
  credit and an ``Ack`` per piece written upstream; Data beyond the credit fails the
  stream. So at most ``STREAM_WINDOW`` per stream waits in the broker.
- Response bodies: at most ``STREAM_WINDOW`` unacknowledged per stream, plus one piece
  (one upstream read, 256 KiB, or one decoded piece, ``body.MAX_DATA`` = 256 KiB); an
  Ack for more than is unacknowledged is a protocol error.
- Shared memory (a worker that asked, ``Hello.shm``): two memfd arenas per connection,
  ``down_slots`` (16) and ``up_slots`` (8) slots of ``slot_size`` (1 MiB), made at the
  handshake and unmapped when the connection closes (each mapping holds a descriptor
  until then: two per worker); all workers' arenas together at most ``max_shm_bytes``
  (384 MiB), and at most ``shm_per_process`` (2) connections of one worker process with
  arenas (so no process takes the budget from the others); beyond these (or with
  ``HTTP_BROKER_SHM=0`` in the broker's environment, or no memfd) a worker gets inline
  bodies. A stream has at most
  ``SLOTS_PER_STREAM`` (4) down slots out; at that with no room left its window is full.
  So whatever the workers do, the broker's shared memory is the budget, and a slow
  reader's bytes wait in its own arena or, inline, under the window above. Up slots are
  copied out as their ``Slot`` frames arrive and given back within the loop pass
  (``Release``: one frame per pass); down slots come back from the worker the same way.
  A ``Slot`` or ``Release`` naming a slot out of range, bytes past its slot, or a
  reference that is not out closes the connection (ErrorFrame).
- The worker's socket: the transport pauses writing over ``WRITE_HIGH`` (1 MiB)
  buffered. While paused, every stream of the worker holds back (``window_full``) and
  the connection handles none of the worker's frames and stops reading its socket. A
  worker that reads nothing thus holds at most ``WRITE_HIGH`` + one piece per stream +
  one reply; never more than ``max_streams`` x (``STREAM_WINDOW`` + 256 KiB).
- Dead workers: EOF on the socket; else a pidfd per peer pid (Linux 5.3+); else its pid
  is polled every ``REAP_INTERVAL`` (a read of ``/proc/PID/stat``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from logging import DEBUG, ERROR, INFO, WARNING
from typing import Any, cast

from msgspec.structs import force_setattr, replace
from yarl import URL

from shared.arena import Arena, SlotError, SlotTable, memfd_supported
from shared.errors import ErrorCode
from shared.framing import MAX_FRAME, FrameError, FrameReader, encode
from shared.messages import (
    MAX_RELEASE,
    MAX_TIMEOUT_IDS,
    PROTOCOL_VERSION,
    STREAM_WINDOW,
    Ack,
    Cancel,
    Claim,
    ClearDNS,
    Data,
    End,
    ErrorFrame,
    Failure,
    Granted,
    Head,
    Hello,
    PoolOpen,
    Release,
    Request,
    RequestFrame,
    Rewind,
    Slot,
    Stats,
    StatsRequest,
    TimeoutOpen,
    TlsOpen,
    Totals,
    TraceEvent,
    Welcome,
)
from shared.specs import DEFAULT_POOL_BYTES, DEFAULT_TIMEOUT, ClientTimeout, TlsSpec, encode_pool
from shared.stream_state import Event, State, step

from . import fast as fast_core
from .connector import Pool
from .cookie_store import CookieStore
from .dialer import NO_TLS
from .engine import Engine, _checked
from .exchange import ResponseHead
from .failures import ConnectionFailure, failure_message
from .fast import Resumed
from .handover import Adoption
from .http1 import HTTP1Connection, watch_silence
from .jar_file import CookieFile
from .jars import JAR_CALLS, UNKNOWN_JAR, JarTable
from .known import Checked, SpecIds
from .logs import event
from .peercred import peer_credentials
from .stats import build_stats, worker_figures
from .stream import BrokerStream
from .tls import TlsTable

__all__ = ["BrokerServer", "WorkerConnection", "IPCStream", "Limits"]

log = logging.getLogger("broker.server")

_BUFSIZE = 1 << 18
HELLO_MAX_FRAME = 1024
WRITE_HIGH = 1 << 20
REAP_INTERVAL = 0.5
# Shared memory: see the module's docstring for what these bound, and docs/protocol.md
# ("Shared memory") for the measurements behind the sizes and the threshold.
SLOT_SIZE = 1 << 20
DOWN_SLOTS = 16
UP_SLOTS = 8
SLOTS_PER_STREAM = 4
MAX_SHM_BYTES = 384 << 20
SHM_PER_PROCESS = 2
MIN_ROOM = 64 * 1024  # a slot's tail smaller than this is not filled: a new slot is taken
INLINE_MAX = 32 * 1024  # a body piece smaller than this goes inline (in a Data frame)


class IPCStream(BrokerStream):
    """A stream carried over a worker's socket.

    The head is held back until the engine flushes or the stream ends, with the body
    pieces that come while it is held as long as they stay under ``INLINE_MAX`` bytes
    together: a response that arrived whole (the common case) goes out as one ``Head``
    frame carrying its body and its end. Past that (or on a flush, a slot, a failure),
    the held head and pieces go out as ``Head`` and ``Data`` frames in one write.

    With shared memory (the worker's ``down`` arena), body bytes go into slots: the
    engine reads into ``body_buffer()`` (a slot's free tail), or ``data`` copies a piece
    of at least ``INLINE_MAX`` bytes there; each fill is one ``Slot`` frame. The stream
    has at most ``SLOTS_PER_STREAM`` slots out; at that, with no room left in the one it
    fills, its window is full (the engine pauses the upstream socket) until one comes
    back. Smaller pieces, and any while the arena has no free slot, go inline.

    A streamed request body arrives as Data or Slot frames within the credit this stream
    gave (``STREAM_WINDOW``, then an ``Ack`` per piece written upstream); what has
    arrived and the engine has not taken yet is kept (copied out of the slots), at most
    the credit.
    """

    __slots__ = (
        "conn", "task", "_head", "_small", "_small_size", "_held", "_credit", "_body",
        "_body_end", "_body_waiter",
        "_slot", "_fill", "_told", "_fresh", "_tick_due", "slots_out",
    )

    def __init__(self, stream_id: int, conn: WorkerConnection, streamed: bool) -> None:
        super().__init__(stream_id)
        self.conn = conn
        self.task: asyncio.Task[None] | None = None  # held: the loop keeps only a weak ref
        self._head: Head | None = None  # held, not encoded yet, with ``_small``
        self._small: list[bytes] = []
        self._small_size = 0
        self._held: list[bytes] | None = None  # frames held, once the head went into them
        # None while no Data or End may come: not streamed, or after End until a Rewind.
        self._credit: int | None = STREAM_WINDOW if streamed else None
        self._body: list[bytes] = []
        self._body_end = False
        self._body_waiter: asyncio.Future[None] | None = None
        self._slot = -1  # the down slot this stream fills, if any
        self._fill = 0  # bytes of it filled
        self._told = 0  # bytes of it the worker was told of (Slot frames)
        self._fresh = False  # filled since the last tick (see ``_tick``)
        self._tick_due = False
        self.slots_out = 0  # slots this stream holds (filling, or named by frames out)

    # -- response ---------------------------------------------------------------------

    def _send_head(self, msg: Head) -> None:
        self._head = msg

    def _send_data(self, chunk: bytes) -> None:
        if self._head is not None:
            size = self._small_size + len(chunk)
            if size < INLINE_MAX:
                self._small.append(chunk)
                self._small_size = size
                return
            self._unhold()
        if self.conn.down is not None and len(chunk) >= INLINE_MAX:
            view = memoryview(chunk)
            pos, size = 0, len(view)
            while pos < size:
                room = self._room(min(size - pos, MIN_ROOM))
                if room is None:
                    chunk = bytes(view[pos:])
                    break
                n = min(len(room), size - pos)
                room[:n] = view[pos : pos + n]
                self._send_filled(n)
                pos += n
            else:
                return
        if self._slot >= 0:
            self._tell()
        self._write(encode(Data(self.id, chunk)))

    def body_buffer(self) -> memoryview | None:
        if self.conn.down is None:
            return None
        return self._room(MIN_ROOM)

    def _room(self, need: int) -> memoryview | None:
        """Free memory of at least ``need`` bytes in this stream's slot (a new one if
        its own has less left), or None."""
        down = self.conn.down
        assert down is not None
        if self._slot >= 0:
            if down.slot_size - self._fill >= need:
                return down.slot(self._slot, self._fill)
            self._stop_filling()
        if self.slots_out >= SLOTS_PER_STREAM:
            return None
        k = self.conn.take_slot(self)
        if k is None:
            return None
        self.slots_out += 1
        self._slot, self._fill, self._told = k, 0, 0
        return down.slot(k)

    def _send_filled(self, size: int) -> None:
        """Coalesced: the worker is told when the slot is full, when the engine flushes
        (it waits for the worker) or the stream ends, before an inline piece, and else
        once a loop pass brought no more bytes (``_tick``): one frame and one wake-up of
        the worker per slot or per burst, not per upstream read."""
        self._fill += size
        down = self.conn.down
        if down is not None and self._fill >= down.slot_size:
            self._stop_filling()
            return
        self._fresh = True
        if not self._tick_due:
            self._tick_due = True
            asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        """A loop pass after a fill: tell the worker, unless more was filled since (the
        upstream is still sending: look again a pass later)."""
        if self._fresh and self._slot >= 0:
            self._fresh = False
            asyncio.get_running_loop().call_soon(self._tick)
            return
        self._tick_due = False
        self._tell()

    def _tell(self) -> None:
        """One Slot frame for the bytes filled that the worker was not told of yet."""
        k, told = self._slot, self._told
        if k >= 0 and self._fill > told:
            self._told = self._fill
            self.conn.lend_slot(k)
            self._write(encode(Slot(self.id, k, told, self._fill - told)))

    def _stop_filling(self, tell: bool = True) -> None:
        if tell:
            self._tell()
        k, self._slot = self._slot, -1
        if k >= 0:
            self.conn.slot_filled(k)

    def _unhold(self) -> None:
        """The held head (and pieces) as frames, still held."""
        head, self._head = self._head, None
        if head is None:
            return
        held = self._held = [encode(head)]
        small, self._small = self._small, []
        if small:
            held.append(encode(Data(self.id, small[0] if len(small) == 1 else b"".join(small))))

    def _write(self, frame: bytes) -> None:
        if self._head is not None:
            self._unhold()
        if self._held is not None:
            self._held.append(frame)
        else:
            self.conn.write(frame)

    def whole(self, head: ResponseHead, body: bytes, url: str, method: str) -> None:
        """A whole response (under ``INLINE_MAX``) at once: ``head``, ``data``, ``end``
        in one step and one frame (the fast path's)."""
        self.state = step(step(self.state, Event.HEAD), Event.END)
        self._send_last(
            encode(
                Head(self.id, head.status, head.reason, head.version, head.headers, url,
                     method, [], [], body)
            )
        )

    def _send_end(self) -> None:
        head = self._head
        if head is not None and self._slot < 0:
            self._head = None
            small = self._small
            body = small[0] if len(small) == 1 else b"".join(small)
            self._send_last(encode(replace(head, body=body, raw=self.raw_bytes)))
            return
        self._send_last(encode(End(self.id, self.raw_bytes)))

    def _send_failure(self, failure: Failure) -> None:
        self.conn.server.failures += 1
        self._send_last(encode(failure))

    def _send_trace(self, trace: TraceEvent) -> None:
        """At once, never held: it precedes the head, and nothing waits on its way."""
        try:
            frame = encode(trace)
        except UnicodeError as exc:  # a cookie from the jar that is not UTF-8
            event(log, WARNING, "trace_event_dropped", stream=self.id, kind=trace.kind,
                  reason=str(exc))
            return
        if len(frame) > MAX_FRAME + 4:  # the worker would drop the whole connection
            event(log, WARNING, "trace_event_dropped", stream=self.id, kind=trace.kind,
                  reason="over the frame cap")
            return
        self.conn.write(frame)

    def _send_last(self, frame: bytes) -> None:
        if self._slot >= 0:
            self._stop_filling()
        if self._head is not None:
            self._unhold()
        held, self._held = self._held, None
        if held is not None:
            held.append(frame)
            self.conn.write(b"".join(held))
        else:
            self.conn.write(frame)
        self.conn.forget(self)

    def flush(self) -> None:
        if self._slot >= 0:
            self._tell()
        if self._head is not None:
            self._unhold()
        held, self._held = self._held, None
        if held is not None:
            self.conn.write(b"".join(held))

    @property
    def window_full(self) -> bool:
        """Also while the worker's socket is write-paused (the worker is not reading),
        and while this stream has all the slots it may have out and none to fill."""
        return (
            self.unacked >= STREAM_WINDOW
            or self.conn.write_paused
            or (self.slots_out >= SLOTS_PER_STREAM and self._slot < 0)
        )

    def on_ack(self, size: int) -> None:
        self.unacked -= size
        if self._resume is not None and self.unacked < STREAM_WINDOW // 2:
            self.wake()

    def wake(self) -> None:
        """The worker's socket drained, or a slot came back: carry on if the engine
        parked here."""
        if self._resume is not None and not self.window_full:
            resume, self._resume = self._resume, None
            resume()

    # -- hand-over (broker.handover) ---------------------------------------------------

    def adopt(self, conn: HTTP1Connection, pool: Pool) -> bytes:
        """A plain socket with nothing left to write goes to the worker; a TLS one (its
        state is in this process) is relayed."""
        transport = conn.transport
        if (
            transport is None
            or conn.closed
            or transport.get_extra_info("sslcontext") is not None
            or transport.get_extra_info("socket") is None
            or transport.get_write_buffer_size()
            or not self.conn.peer_pid
        ):
            return b""
        return Adoption(self.conn.server.adoptions, self, conn, pool, self.conn.peer_pid).token

    @property
    def orphaned(self) -> bool:
        return self.conn.peer_left

    # -- the worker's side --------------------------------------------------------------

    def give_up(self) -> None:
        """The worker cancelled or went away: the engine lets go, in either phase."""
        super().give_up()
        self._stop_filling(tell=False)
        self.conn.forget(self)

    def refuse(self, message: str) -> None:
        """The worker broke this stream's rules: the stream fails alone, its work stops."""
        event(log, WARNING, "stream_refused", pid=self.conn.pid, stream=self.id, reason=message)
        if not self.finished:
            self.fail(Failure(self.id, ErrorCode.PROTOCOL, message))
        self._stop_filling(tell=False)
        self.conn.forget(self)
        self.halt()

    def feed_body(self, chunk: bytes) -> None:
        credit = self._credit
        if credit is None:
            self.refuse(f"Data on stream {self.id}, which is not sending a request body")
            return
        if len(chunk) > credit:
            self.refuse(
                f"stream {self.id} sent Data beyond its credit of {credit} bytes "
                f"(a worker may send {STREAM_WINDOW} bytes, then as much as was acknowledged)"
            )
            return
        self._credit = credit - len(chunk)
        if chunk:
            self._body.append(chunk)
            self._wake_body()

    def end_body(self) -> None:
        if self._credit is None:
            self.refuse(f"End on stream {self.id}, which is not sending a request body")
            return
        self._credit = None
        self._body_end = True
        self._wake_body()

    def _wake_body(self) -> None:
        waiter, self._body_waiter = self._body_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def request_body(self) -> AsyncIterator[bytes]:
        while True:
            body = self._body
            if body:
                self._body = []
                yield body[0] if len(body) == 1 else b"".join(body)
            elif self._body_end:
                return
            else:
                waiter = self._body_waiter = asyncio.get_running_loop().create_future()
                await self.wait(waiter)

    def body_written(self, size: int) -> None:
        if self._credit is not None:
            self._credit += size
        self.conn.send(Ack(self.id, size))

    def rewind(self) -> bool:
        self._body = []
        self._body_end = False
        self._credit = STREAM_WINDOW
        self.conn.send(Rewind(self.id))
        return True


class WorkerConnection(asyncio.BufferedProtocol):
    def __init__(self, server: BrokerServer) -> None:
        self.server = server
        self.engine = server.engine
        self.limits = server.limits
        self._reader = FrameReader(HELLO_MAX_FRAME)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, IPCStream] = {}
        # the pools and timeouts it opened by id; what it had checked (``broker.known``)
        self.ids = SpecIds(self.limits.max_pool_specs, self.limits.max_timeouts)
        self.checked = Checked()
        self.tls = TlsTable(self.limits.max_tls_specs)  # the TlsSpecs it opened, by id
        self.pid = 0
        self.process = 0  # see _greet
        self.peer_pid = 0  # from the kernel (SO_PEERCRED), in the broker's pid namespace
        self.uid = -1  # from the kernel too; -1 where it has none to tell
        self.pidfd: int | None = None
        self.greeted = False
        self.claim_only = False  # let in over max_workers to claim a socket (_may_claim)
        self.closed = False
        self.peer_left = False  # see connection_lost
        self.write_paused = False
        self._backlog: list[Any] | None = None  # frames held while write_paused
        self._hello_timer: asyncio.TimerHandle | None = None
        # Shared memory (see the module's docstring), once the handshake gave it.
        self.down: Arena | None = None
        self.up: Arena | None = None
        self._down_slots: SlotTable | None = None
        self._owners: list[IPCStream | None] = []  # the stream holding each down slot
        self._releases: list[int] = []  # up slots to give back, at the end of this pass

    def __repr__(self) -> str:
        return f"<WorkerConnection pid={self.pid} streams={len(self.streams)}>"

    # -- asyncio --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        sock = self.transport.get_extra_info("socket")
        creds = peer_credentials(sock) if sock is not None else None
        if creds is not None:
            self.peer_pid, self.uid = creds
            if not self.server.serves_uid(self.uid):
                event(log, WARNING, "worker_refused", reason="uid", pid=self.peer_pid,
                      uid=self.uid, broker_uid=os.getuid())
                self.hang_up("permission", _NOT_SERVED)
                return
        cap = self.server.max_workers
        if cap and len(self.server.workers) >= cap:
            if not self._may_claim():
                self._refuse_over_cap()
                return
            self.claim_only = True  # over the cap: it may claim a socket, not be a worker
        event(log, INFO, "worker_connected", pid=self.peer_pid, uid=self.uid)
        self.server.workers.add(self)
        self._hello_timer = asyncio.get_running_loop().call_later(
            self.limits.handshake_timeout, self._handshake_late
        )
        self.transport.set_write_buffer_limits(high=WRITE_HIGH)
        self.server.watch_peer(self)

    def _may_claim(self) -> bool:
        """A process with a worker connection may open a hand-over connection beyond
        ``max_workers`` (``broker.handover``: it claims one socket, then it is closed)."""
        pid = self.peer_pid
        return bool(pid) and any(w.greeted and w.peer_pid == pid for w in self.server.workers)

    def _refuse_over_cap(self) -> None:
        cap = self.server.max_workers
        self.server.workers.discard(self)  # not counted while it hangs up
        event(log, WARNING, "worker_refused", reason="max_workers", pid=self.peer_pid,
              uid=self.uid, max_workers=cap)
        self.hang_up(
            "busy",
            f"the broker serves at most {cap} worker connections at once (max_workers "
            "in its configuration), and has that many; try again later",
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.read_view

    def buffer_updated(self, nbytes: int) -> None:
        if self.closed:
            return  # refused or aborted: drain and drop until the peer hangs up
        try:
            msgs = self._reader.feed(self.server.read_view[:nbytes])
        except FrameError as exc:
            self.hang_up("protocol", str(exc))
            return
        self._handle(msgs)

    def _handle(self, msgs: list[Any]) -> None:
        for i, msg in enumerate(msgs):
            if self.closed:
                return
            if self.write_paused:
                # The worker is not reading what we write: take no more work from it.
                self._backlog = msgs[i:]
                if self.transport is not None:
                    self.transport.pause_reading()
                return
            try:
                self._dispatch(msg)
            except Exception as exc:
                event(log, ERROR, "frame_failed", pid=self.pid, frame=type(msg).__name__,
                      exc_info=exc)
                self.hang_up(
                    "protocol",
                    f"the broker could not handle {type(msg).__name__}: "
                    f"{type(exc).__name__}: {exc}",
                )
                return

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        backlog, self._backlog = self._backlog, None
        if backlog is not None:
            self._handle(backlog)
            if self._backlog is None and self.transport is not None and not self.closed:
                self.transport.resume_reading()
        for stream in list(self.streams.values()):
            if self.write_paused or self.closed:
                return
            try:
                stream.wake()
            except Exception as exc:  # an engine bug: that stream fails, not the loop
                event(log, ERROR, "stream_resume_failed", pid=self.pid, stream=stream.id,
                      exc_info=exc)
                stream.refuse(f"the broker failed: {type(exc).__name__}: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        # The worker went (it exited, or closed its end), rather than the broker hanging
        # up on it: its hand-overs then end with a CLOSE 1001 from here (broker.handover).
        self.peer_left = not self.closed
        if self in self.server.workers:
            event(log, INFO, "worker_disconnected", pid=self.peer_pid or self.pid,
                  streams=len(self.streams))
        self.closed = True
        self._cancel_hello_timer()
        self._backlog = None
        self.server.unwatch_peer(self)
        self.server.workers.discard(self)
        for stream in list(self.streams.values()):
            stream.give_up()
        self.streams.clear()
        self._close_arenas()
        self.server.jars.drop_connection(self)
        if self.greeted:
            # A pid the kernel did not give cannot be watched: its jars go at once.
            self.server.process_left(self.process, watchable=bool(self.peer_pid))
        self.server.connection_gone(self)

    def peer_gone(self) -> None:
        """The worker process exited, though its socket may live on in a child."""
        self.server.unwatch_peer(self)
        event(log, INFO, "worker_gone", pid=self.peer_pid)
        if self.transport is not None:
            self.transport.abort()

    # -- messages -------------------------------------------------------------------

    def _dispatch(self, msg: Any) -> None:
        if not self.greeted:
            self._greet(msg)
            return
        kind = type(msg)
        if kind is RequestFrame:
            self._start(msg)
        elif kind is PoolOpen:
            try:
                self.ids.open_pool(msg.id, msg.pool)
            except ValueError as exc:
                self.hang_up("protocol", str(exc))
        elif kind is TimeoutOpen:
            try:
                self.ids.open_timeout(msg.id, msg.timeout)
            except ValueError as exc:
                self.hang_up("protocol", str(exc))
        elif kind is TlsOpen:
            try:
                self.tls.open(msg.id, msg.spec)
            except ValueError as exc:  # no worker may name another's spec
                self.hang_up("protocol", str(exc))
        elif kind is Ack:
            s = self.streams.get(msg.stream)
            if s is None:
                return
            if msg.size > s.unacked:
                self.hang_up(
                    "protocol",
                    f"Ack of {msg.size} bytes on stream {msg.stream}, "
                    f"which has {s.unacked} bytes unacknowledged",
                )
            else:
                s.on_ack(msg.size)
        elif kind is Data:
            s = self.streams.get(msg.stream)
            if s is not None:
                s.feed_body(msg.data)
        elif kind is Slot:
            self._take_up_slot(msg)
        elif kind is Release:
            self._give_back(msg.slots)
        elif kind is End:
            s = self.streams.get(msg.stream)
            if s is not None:
                s.end_body()
        elif kind is Cancel:
            s = self.streams.get(msg.stream)
            if s is not None:
                s.give_up()
        elif kind in JAR_CALLS:
            for reply in self.server.jars.apply(self.process, self.process, msg, self):
                self.send(reply)
        elif kind is StatsRequest:
            self.send(self.server.stats())
        elif kind is ClearDNS:
            if self.ids.admit(encode_pool(msg.pool)):
                self.engine.clear_dns(msg.pool, msg.host, msg.port)
            else:
                self.hang_up("protocol", self.ids.over_specs())
        else:
            self.hang_up("protocol", f"a worker may not send {kind.__name__}")

    def _greet(self, msg: Any) -> None:
        if type(msg) is Claim:
            self._claim(msg.token)
        elif self.claim_only:
            self._refuse_over_cap()
        elif type(msg) is not Hello:
            self.hang_up("protocol", "the first message must be Hello (or Claim)")
        elif msg.version != PROTOCOL_VERSION:
            self.hang_up(
                "version",
                f"protocol version {msg.version} is not supported by this broker "
                f"(it speaks {PROTOCOL_VERSION}); upgrade http-broker on both sides",
            )
        else:
            self.greeted = True
            self._cancel_hello_timer()
            self._reader.max_frame = MAX_FRAME
            self.pid = msg.pid
            # The worker's pid, whose jars it may name: the kernel's word where there is
            # one; a pid only claimed is kept apart from the kernel's (negative).
            self.process = self.peer_pid or -self.pid
            self.server.process_joined(self.process)
            if not (msg.shm and self._welcome_with_arenas()):
                self.send(Welcome(PROTOCOL_VERSION, os.getpid()))

    def _claim(self, token: bytes) -> None:
        """A hand-over connection: the upgraded socket that ``token`` names goes to it,
        if its process is the one whose request got the socket; then it is closed."""
        self._cancel_hello_timer()
        adoption = self.server.adoptions.get(token)
        if adoption is None or not self.peer_pid or adoption.process != self.peer_pid:
            self.hang_up("protocol", "no upgraded connection of this process has that token")
            return
        transport, early = adoption.claim()
        raw = transport.get_extra_info("socket")
        if raw is None or not self._send_with_fds(encode(Granted(early)), [raw.fileno()]):
            self.hang_up("busy", "the upgraded connection could not be handed over")
            return
        event(log, DEBUG, "websocket_handed_over", pid=self.peer_pid, stream=adoption.stream.id)
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    # -- shared memory --------------------------------------------------------------

    def _welcome_with_arenas(self) -> bool:
        """Make this worker's two arenas and send them with the Welcome; False (nothing
        sent, nothing kept) if the budget, the platform or the socket says no."""
        arenas = self.server.open_arenas(self.process)
        if arenas is None:
            return False
        down, up = arenas
        welcome = Welcome(PROTOCOL_VERSION, os.getpid(), down.slot_size, down.slots, up.slots)
        assert down.fd is not None and up.fd is not None
        if not self._send_with_fds(encode(welcome), [down.fd, up.fd]):
            self.server.close_arenas(self.process, down, up)
            return False
        down.close_fd()
        up.close_fd()
        self.down, self.up = down, up
        self._down_slots = SlotTable(down.slots)
        self._owners = [None] * down.slots
        return True

    def _send_with_fds(self, frame: bytes, fds: list[int]) -> bool:
        """``frame`` with ``fds`` attached (SCM_RIGHTS), on a duplicate of the socket:
        an asyncio transport cannot carry descriptors. Only while nothing is queued on
        the transport, so that the frame keeps its place in the stream."""
        transport = self.transport
        if transport is None or transport.get_write_buffer_size():
            return False
        raw = transport.get_extra_info("socket")
        if raw is None:
            return False
        try:
            with socket.socket(fileno=os.dup(raw.fileno())) as dup:
                sent = socket.send_fds(dup, [frame], fds)
        except OSError as exc:  # EAGAIN cannot happen on an idle socket; anything else
            event(log, WARNING, "shm_not_sent", pid=self.pid, reason=str(exc), bodies="inline")
            return False
        if sent < len(frame):
            transport.write(frame[sent:])
        return True

    def take_slot(self, stream: IPCStream) -> int | None:
        assert self._down_slots is not None
        k = self._down_slots.take()
        if k is not None:
            self._owners[k] = stream
        return k

    def lend_slot(self, k: int) -> None:
        assert self._down_slots is not None
        self._down_slots.lend(k)

    def slot_filled(self, k: int) -> None:
        if self._down_slots is not None and self._down_slots.filled(k):
            self._freed(k)

    def _freed(self, k: int) -> IPCStream | None:
        owner, self._owners[k] = self._owners[k], None
        if owner is not None:
            owner.slots_out -= 1
        return owner

    def _give_back(self, slots: list[int]) -> None:
        table = self._down_slots
        if table is None:
            self.hang_up("protocol", "Release from a worker that has no shared memory")
            return
        woken: list[IPCStream] = []
        try:
            for k in slots:
                if table.give_back(k):
                    owner = self._freed(k)
                    if owner is not None and owner._resume is not None:
                        woken.append(owner)
        except SlotError as exc:
            self.hang_up("protocol", f"bad Release: {exc}")
            return
        for stream in woken:
            if self.write_paused or self.closed:
                return
            stream.wake()

    def _take_up_slot(self, msg: Slot) -> None:
        """A piece of a request body in the up arena: copied out, the slot given back."""
        up = self.up
        if up is None:
            self.hang_up("protocol", "Slot from a worker that has no shared memory")
            return
        problem = up.check(msg.slot, msg.offset, msg.size)
        if problem is not None:
            self.hang_up("protocol", f"bad Slot on stream {msg.stream}: {problem}")
            return
        if not self._releases:
            asyncio.get_running_loop().call_soon(self._send_releases)
        self._releases.append(msg.slot)
        s = self.streams.get(msg.stream)
        if s is not None:
            s.feed_body(bytes(up.slot(msg.slot, msg.offset, msg.size)))

    def _send_releases(self) -> None:
        slots, self._releases = self._releases, []
        for i in range(0, len(slots), MAX_RELEASE):
            self.send(Release(slots[i : i + MAX_RELEASE]))

    def _close_arenas(self) -> None:
        down, up, self.down, self.up = self.down, self.up, None, None
        self._down_slots = None
        self._owners = []
        self._releases = []
        if down is not None and up is not None:
            self.server.close_arenas(self.process, down, up)

    def _handshake_late(self) -> None:
        self._hello_timer = None
        self.hang_up(
            "protocol", f"no Hello within {self.limits.handshake_timeout:g} s of connecting"
        )

    def _cancel_hello_timer(self) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None

    def _start(self, req: RequestFrame) -> None:
        if req.stream in self.streams:
            self.hang_up("protocol", f"stream {req.stream} is already open")
            return
        refusal = self._refusal()
        if refusal is not None:
            self.send(Failure(req.stream, ErrorCode.BROKER, refusal))
            return
        try:
            url = self._resolve(req)
        except ConnectionFailure as exc:
            self.send(failure_message(req, exc, []))
            return
        jar = None
        if req.jar:
            jar = self.server.jars.find(req.jar, self.process)
            if jar is None:
                refusal = self.server.jars.refusal(req.jar, self.process)
                if refusal is not None:  # its JarOpen was refused: a cap, say which
                    self.send(Failure(req.stream, ErrorCode.BROKER, refusal))
                else:
                    self.send(Failure(req.stream, ErrorCode.PROTOCOL, UNKNOWN_JAR))
                return
        tls = None
        if req.tls:
            try:
                tls = self.tls.find(req.tls)
            except ConnectionFailure as exc:
                self.send(Failure(req.stream, exc.code, exc.message))
                return
        stream = IPCStream(req.stream, self, req.streamed)
        self.streams[req.stream] = stream
        if self.server.fast and _fast_kind(req) and (jar is None or not len(jar)):
            if _FastStart.begin(self, req, stream, url, jar):
                return
        self.run(req, stream, url, jar, tls)

    def run(
        self,
        req: Request,
        stream: IPCStream,
        url: URL,
        jar: CookieStore | None,
        tls: TlsSpec | None,
        first: Resumed | None = None,
    ) -> None:
        """The general path: the engine in a task of its own."""
        stream.task = asyncio.get_running_loop().create_task(
            self._run(req, stream, url, jar, tls, first)
        )

    def _resolve(self, req: RequestFrame) -> URL:
        """Put the pool and timeout that ``req`` names (by id, or the defaults) in its
        fields (a message just decoded, which nothing else holds yet), check the request
        (cheaply for what this worker sent before, ``broker.known``), and return its URL
        parsed; raises ``ConnectionFailure``."""
        ids = self.ids
        if req.pool_id:
            force_setattr(req, "pool", ids.pool(req.pool_id))
        else:
            if not req.pool:
                force_setattr(req, "pool", DEFAULT_POOL_BYTES)
            if not ids.admit(req.pool):
                raise ConnectionFailure("broker", ids.over_specs())
        if req.timeout_id:
            force_setattr(req, "timeout", ids.timeout(req.timeout_id))
        elif req.timeout is None:
            force_setattr(req, "timeout", self.server.default_timeout)
        return _checked(req, self.checked)

    def _refusal(self) -> str | None:
        if self.server.draining:
            return "the broker is shutting down"
        if len(self.streams) >= self.limits.max_streams:
            return (
                f"this worker has {len(self.streams)} requests open on the broker, its cap "
                f"(BrokerServer limits.max_streams); wait for some to finish"
            )
        return None

    async def _run(
        self,
        req: Request,
        stream: IPCStream,
        url: URL,
        jar: CookieStore | None,
        tls: TlsSpec | None,
        first: Resumed | None = None,
    ) -> None:
        try:
            await self.engine.perform(req, stream, url, jar, tls, first)
        finally:
            # In the body phase the stream lives on without this task, until its end.
            if stream.state is not State.BODY:
                self.forget(stream)

    def forget(self, stream: IPCStream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
            self.server.stream_done()

    # -- output ---------------------------------------------------------------------

    def send(self, msg: Any) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(encode(msg))

    def write(self, frames: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(frames)

    def hang_up(self, code: str, message: str) -> None:
        """Say why, then close this worker's connection."""
        event(log, WARNING, "worker_closed", pid=self.pid, code=code, reason=message)
        self._cancel_hello_timer()
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(encode(ErrorFrame(code, message)))
            # Half-close rather than close: closing with unread input would send a reset
            # that can overtake the error frame. The peer gets a second to hang up.
            if transport.can_write_eof():
                transport.write_eof()
                asyncio.get_running_loop().call_later(1.0, transport.close)
            else:
                transport.close()
        self.closed = True


def _fast_kind(req: Request) -> bool:
    """Whether ``req`` is of the kind the fast path carries (``broker.fast``): a whole
    body or none, not an upgrade, no trace, proxy, TLS settings of its own, cookies of
    its own, 100-continue, chunked framing or HTTP/1.0, the default head limits."""
    return not (
        req.streamed
        or req.upgrade
        or req.trace
        or req.proxy
        or req.tls
        or req.fingerprint
        or req.server_hostname
        or req.cookies
        or req.expect100
        or req.chunked
        or req.http10
        or not req.read_until_eof
        or req.max_line_size != 8190
        or req.max_field_size != 8190
        or req.max_headers != 128
    )


class _FastStart:
    """A request started without a task (``broker.fast``): the head written on an idle
    keep-alive connection as the frame is handled, the response told by callback. A
    response complete with its head, not a redirect to follow, nothing to decode, goes
    to the stream at once (one frame: ``IPCStream``); anything else, or a failure, is
    handed to the engine in a task with the attempt made (``Engine.perform(first=)``),
    which goes on as if it had made it. A stream given up meanwhile gives the
    connection back (``on_halt``); ``sock_read`` is watched as the engine does."""

    __slots__ = ("conn", "req", "stream", "url", "jar", "pool", "upstream", "early", "told",
                 "_unwatch")

    def __init__(
        self,
        conn: WorkerConnection,
        req: Request,
        stream: IPCStream,
        url: URL,
        jar: CookieStore | None,
        pool: Pool,
    ) -> None:
        self.conn = conn
        self.req = req
        self.stream = stream
        self.url = url
        self.jar = jar
        self.pool = pool
        self.upstream: HTTP1Connection | None = None
        self.early: ResponseHead | ConnectionFailure | None = None  # told within start()
        self.told = False
        self._unwatch: Callable[[], None] | None = None

    @classmethod
    def begin(
        cls,
        conn: WorkerConnection,
        req: Request,
        stream: IPCStream,
        url: URL,
        jar: CookieStore | None,
    ) -> bool:
        """Started; False: no idle connection (or a pool the general path must report
        on), nothing sent."""
        try:
            pool = conn.engine.registry.pool_for(req.pool)
        except ConnectionFailure:
            return False
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, url.raw_host or "", port, NO_TLS, b"")
        head = conn.checked.head(req, url, pool.spec.force_close)
        fast = cls(conn, req, stream, url, jar, pool)
        upstream = fast_core.start(pool, key, req.method, head, req.body, fast.on_response)
        if upstream is None:
            return False
        conn.server.fast_requests += 1
        conn.engine.requests += 1  # (``Engine.perform(first=)`` counts none)
        fast.upstream = upstream
        early, fast.early = fast.early, None
        if early is not None:  # a failure as the head was written
            fast.on_response(early)
            return True
        stream.on_halt = fast.abandon
        sock_read = req.timeout.sock_read
        if sock_read:
            loop = asyncio.get_running_loop()
            fast._unwatch = watch_silence(loop, upstream, fast, sock_read)  # type: ignore[arg-type]
        return True

    def done(self) -> bool:
        """For ``watch_silence``: whether the response was told."""
        return self.told

    def abandon(self) -> None:
        """The worker gave the stream up: the connection goes back (closed)."""
        self.told = True
        self._stop()
        if self.upstream is not None:
            fast_core.abandon(self.pool, self.upstream)

    def _stop(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None

    def on_response(self, result: ResponseHead | ConnectionFailure) -> None:
        upstream = self.upstream
        if upstream is None:
            self.early = result
            return
        if self.told:
            return
        self.told = True
        self._stop()
        stream, req = self.stream, self.req
        stream.on_halt = None
        try:
            if type(result) is ResponseHead:
                body = fast_core.finish(
                    self.pool, upstream, result, req.allow_redirects, req.auto_decompress,
                    self.jar, self.url,
                )
                if body is not None:
                    if len(body) < INLINE_MAX:
                        stream.whole(result, body, req.url, req.method)
                    else:
                        fast_core.deliver(stream, result, body, req.url, req.method)
                    return
            self.conn.run(req, stream, self.url, self.jar, None, (upstream, result))
        except Exception as exc:  # a bug: that stream fails, never the upstream's loop
            # The lease ends (once per lease: nothing if finish() gave it back already),
            # the connection closed unless its exchange completed: no slot is lost.
            fast_core.abandon(self.pool, upstream)
            event(log, ERROR, "fast_path_failed", pid=self.conn.pid, stream=stream.id,
                  exc_info=exc)
            if not stream.finished:
                stream.refuse(f"the broker failed: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class Limits:
    """What one worker connection may hold in the broker (see the module's docstring)."""

    handshake_timeout: float = 5.0
    max_streams: int = 1024
    max_pool_specs: int = 256
    max_timeouts: int = MAX_TIMEOUT_IDS
    max_tls_specs: int = 64
    max_jars: int = 1024  # per worker process, all its connections together
    slot_size: int = SLOT_SIZE
    down_slots: int = DOWN_SLOTS
    up_slots: int = UP_SLOTS
    max_shm_bytes: int = MAX_SHM_BYTES  # all workers' arenas together; 0: inline only
    # connections of one worker process that get arenas (a process has one per event
    # loop): no process can take the whole budget from the others
    shm_per_process: int = SHM_PER_PROCESS


class BrokerServer:
    """Serves workers on a Unix socket with one engine."""

    def __init__(
        self,
        path: str,
        engine: Engine | None = None,
        limits: Limits = Limits(),
        cookie_file: str | None = None,
        *,
        socket_mode: int = 0o600,
        allowed_uids: Iterable[int] = (),
        max_workers: int = 0,
        default_timeout: ClientTimeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.path = path
        self.engine = engine or Engine()
        self.limits = limits
        self.socket_mode = socket_mode
        # Set again on a reload (``broker.cli``): read where a worker connects or asks.
        self.allowed_uids = frozenset(allowed_uids)  # besides the broker's own and root
        self.max_workers = max_workers  # worker connections at once; 0: no cap
        # a request's timeout when its session kept the default (sent as none)
        self.default_timeout = default_timeout
        self.jars = JarTable(max_jars=limits.max_jars)
        self.cookie_file = CookieFile(cookie_file, self.jars) if cookie_file else None
        self.workers: set[WorkerConnection] = set()
        # upgraded connections offered to their workers, by token (broker.handover)
        self.adoptions: dict[bytes, Adoption] = {}
        shm = os.environ.get("HTTP_BROKER_SHM", "").strip().lower() not in _OFF and _MEMFD
        self.shm_budget = limits.max_shm_bytes if shm else 0
        self.shm_bytes = 0  # in the workers' arenas now
        self._shm_processes: dict[int, int] = {}  # connections with arenas per process
        self._processes: dict[int, int] = {}  # greeted connections per worker process
        self.draining = False
        # Requests started without a task where they can be (``_FastStart``), unless
        # HTTP_BROKER_FAST_PATH is 0/no/off/false in the broker's environment.
        self.fast = os.environ.get("HTTP_BROKER_FAST_PATH", "1").strip().lower() not in _OFF
        self.fast_requests = 0  # started so: for tests and figures
        self.failures = 0  # streams that ended in a Failure: for the figures
        # One read buffer for every connection: a read is handled to its end before
        # the loop reads another socket, and what a frame reader keeps it copies.
        self.read_view = memoryview(bytearray(_BUFSIZE))
        self.use_pidfd = _PIDFD
        self._server: asyncio.AbstractServer | None = None
        self._socket_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket made
        self._idle = asyncio.Event()
        self._idle.set()
        self._polled: set[WorkerConnection] = set()
        self._poller: asyncio.Task[None] | None = None
        # Processes with no connection left whose cookie jars are kept until they exit:
        # pid -> its pidfd, or None where the pid is polled.
        self._held: dict[int, int | None] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if os.path.exists(self.path):
            _remove_stale_socket(self.path)
        if self.cookie_file is not None:
            self.cookie_file.load()
            self.cookie_file.start()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _bind_with_mode(sock, self.path, self.socket_mode)
        except BaseException:
            sock.close()
            raise
        made = os.lstat(self.path)
        self._socket_id = (made.st_dev, made.st_ino)
        sock.listen(512)
        self._server = await loop.create_unix_server(
            lambda: WorkerConnection(self), sock=sock
        )

    def serves_uid(self, uid: int) -> bool:
        """Whether a worker of ``uid`` is served (-1: the kernel could not tell)."""
        return uid in (-1, 0, os.getuid()) or uid in self.allowed_uids

    def set_allowed_uids(self, uids: Iterable[int]) -> None:
        """A new list (a reload): a uid taken out of it is revoked, its connections
        closed with ``ErrorFrame("permission")``."""
        self.allowed_uids = frozenset(uids)
        for w in list(self.workers):
            if not w.closed and not self.serves_uid(w.uid):
                event(log, WARNING, "worker_refused", reason="uid", pid=w.peer_pid, uid=w.uid,
                      broker_uid=os.getuid())
                w.hang_up("permission", _NOT_SERVED)

    # -- dead workers -------------------------------------------------------------------
    # A worker's exit normally shows as EOF on its socket at once; but a socket inherited
    # by a forked child stays open when the worker dies. So each peer pid is watched.

    def watch_peer(self, conn: WorkerConnection) -> None:
        pid = conn.peer_pid
        if not pid:
            return
        if self.use_pidfd:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                conn.peer_gone()
                return
            except OSError as exc:
                event(log, WARNING, "no_pidfd", pid=pid, reason=str(exc), fallback="polling")
            else:
                conn.pidfd = fd
                asyncio.get_running_loop().add_reader(fd, conn.peer_gone)
                return
        self._polled.add(conn)
        self._ensure_poller()

    def _ensure_poller(self) -> None:
        if self._poller is None and not self.draining:
            self._poller = asyncio.get_running_loop().create_task(self._poll_peers())

    def unwatch_peer(self, conn: WorkerConnection) -> None:
        fd, conn.pidfd = conn.pidfd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
        self._polled.discard(conn)

    async def _poll_peers(self) -> None:
        """Where there is no pidfd: check the pids every ``REAP_INTERVAL``. A check reads
        one small procfs file per worker (no disk, no lock: no blocking I/O), so it runs
        on the loop; a thread hop would cost more than the check."""
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            for w in list(self._polled):
                if _gone(w.peer_pid):
                    w.peer_gone()
            for pid in [p for p, fd in self._held.items() if fd is None]:
                if _gone(pid):
                    self._process_exited(pid)

    # -- figures and lifecycle ------------------------------------------------------------

    @property
    def streams(self) -> int:
        return sum(len(w.streams) for w in self.workers)

    def stream_done(self) -> None:
        if self.draining and not self.streams:
            self._idle.set()

    # -- the cookie jars of a process ---------------------------------------------------
    # A worker process owns its jars on all of its connections. When its last connection
    # closes (its last session closed) while it has jars, they are kept until the process
    # exits: a jar stays readable after its session (the jar channel connects again), as
    # in aiohttp. A process that is gone when its last connection closes (killed, or
    # exited) loses them at once.

    def process_joined(self, pid: int) -> None:
        self._processes[pid] = self._processes.get(pid, 0) + 1
        self._unhold(pid)

    def process_left(self, pid: int, watchable: bool = True) -> None:
        """A connection of ``pid`` closed; after its last one, see above."""
        left = self._processes.pop(pid, 1) - 1
        if left > 0:
            self._processes[pid] = left
        elif not watchable or self.draining:
            self.jars.drop_owner(pid)
        elif self.jars.owns(pid):
            self._hold(pid)

    def _hold(self, pid: int) -> None:
        fd = None
        if self.use_pidfd:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self.jars.drop_owner(pid)
                return
            except OSError as exc:
                event(log, WARNING, "no_pidfd", pid=pid, reason=str(exc), fallback="polling")
            else:
                asyncio.get_running_loop().add_reader(fd, self._process_exited, pid)
        elif _gone(pid):
            self.jars.drop_owner(pid)
            return
        self._held[pid] = fd
        if fd is None:
            self._ensure_poller()

    def _unhold(self, pid: int) -> None:
        if pid not in self._held:
            return
        fd = self._held.pop(pid)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _process_exited(self, pid: int) -> None:
        self._unhold(pid)
        if pid not in self._processes:
            self.jars.drop_owner(pid)

    def open_arenas(self, process: int) -> tuple[Arena, Arena] | None:
        """A new connection's two arenas, within the budget and the share of its worker
        ``process``; None: inline bodies."""
        lim = self.limits
        size = lim.slot_size * (lim.down_slots + lim.up_slots)
        if self.shm_bytes + size > self.shm_budget:
            return None
        if self._shm_processes.get(process, 0) >= lim.shm_per_process:
            return None
        try:
            down = Arena.create(lim.slot_size, lim.down_slots)
            try:
                up = Arena.create(lim.slot_size, lim.up_slots, writable=False)
            except BaseException:
                down.close()
                raise
        except (OSError, ValueError) as exc:  # no memfd; Limits past an arena's bounds
            event(log, WARNING, "no_shm", pid=process, reason=str(exc), bodies="inline")
            return None
        self.shm_bytes += size
        self._shm_processes[process] = self._shm_processes.get(process, 0) + 1
        return down, up

    def close_arenas(self, process: int, down: Arena, up: Arena) -> None:
        self.shm_bytes -= down.size + up.size
        left = self._shm_processes.pop(process, 1) - 1
        if left > 0:
            self._shm_processes[process] = left
        down.close()
        up.close()

    def connection_gone(self, conn: WorkerConnection) -> None:
        self.stream_done()

    def stats(self) -> Stats:
        processes = worker_figures((w.process, len(w.streams)) for w in self.workers if w.greeted)
        return build_stats(
            self.engine, len(self.workers), self.streams, self.jars.figures(), processes,
            Totals(self.engine.requests, self.fast_requests, self.failures),
        )

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting, let in-flight streams finish (up to a limit), close all."""
        self.draining = True
        if self._poller is not None:
            self._poller.cancel()
        if self._server is not None:
            self._server.close()
        if self.streams:
            self._idle.clear()
            idle = asyncio.ensure_future(self._idle.wait())
            try:
                await asyncio.wait({idle}, timeout=drain_timeout)
            finally:
                idle.cancel()
            if self.streams:
                event(log, WARNING, "drain_timed_out", streams=self.streams,
                      drain_timeout=drain_timeout)
        for w in list(self.workers):
            if w.transport is not None:
                w.closed = True  # we hang up: its WebSockets are the worker's to close
                w.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        for pid in list(self._held):
            self._unhold(pid)
        await self.engine.close()
        if self.cookie_file is not None:
            await self.cookie_file.close()
        self._unlink_own_socket()

    def _unlink_own_socket(self) -> None:
        """Remove the socket, unless another broker took the path meanwhile (one started
        during the drain: this broker's listener was closed, so it took the socket for
        a leftover and replaced it)."""
        try:
            now = os.lstat(self.path)
            if (now.st_dev, now.st_ino) == self._socket_id:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def _pidfd_works() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


_NOT_SERVED = (
    "the broker serves only its own user and the allowed_uids of its configuration"
)
_PIDFD = _pidfd_works()
_MEMFD = memfd_supported()
_OFF = ("0", "no", "off", "false")


def _gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs: no such process, or a zombie (``/proc`` is Linux's,
    and so is SO_PEERCRED, the only source of a worker's pid)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    except OSError:
        return False  # cannot tell (no /proc?): never cut off a live worker on a guess
    # "pid (comm) state ...": comm may hold anything, so the state follows the last ")"
    end = stat_line.rfind(b")")
    return stat_line[end + 2 : end + 3] in (b"Z", b"X")


_SUN_PATH_MAX = 107  # Linux's sun_path, less its NUL; the BSDs' is shorter still (103)


def _bind_with_mode(sock: socket.socket, path: str, mode: int) -> None:
    """Bind ``sock`` at ``path`` with ``mode`` from its first moment there, leaving the
    umask alone (it is the whole process's: a thread creating a file meanwhile would get
    it): bound in a fresh directory of mode 0700 beside ``path``, given its mode, then
    linked into place; ``link`` fails on a path taken meanwhile, as ``bind`` would. The
    bind goes through ``/proc/self/fd`` where there is one, so the detour costs nothing
    of the 107 bytes a socket path may have."""
    if len(os.fsencode(path)) > _SUN_PATH_MAX:  # the detour would not find it out
        raise OSError(errno.ENAMETOOLONG, f"AF_UNIX path too long (at most {_SUN_PATH_MAX} "
                      f"bytes): {path}")
    directory = tempfile.mkdtemp(prefix=".hb-", dir=os.path.dirname(path) or ".")
    made = os.path.join(directory, "s")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        short = f"/proc/self/fd/{fd}/s"
        sock.bind(short if os.path.isdir(f"/proc/self/fd/{fd}") else made)
        os.chmod(made, mode)
        try:
            os.link(made, path)
        except FileExistsError:
            raise OSError(errno.EADDRINUSE, f"{path} was taken as the broker started") from None
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(made)
        os.rmdir(directory)


def _remove_stale_socket(path: str) -> None:
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise OSError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover of a broker that died
    else:
        raise OSError(f"a broker is already listening on {path}")
    finally:
        probe.close()


