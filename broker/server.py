"""The broker's Unix-socket server: one ``WorkerConnection`` per worker process.

A worker connection reads frames, checks the handshake, and runs one engine task per
stream. Anything wrong with what a worker sends (a bad frame, a wrong protocol version,
a stream id reused) closes that worker's connection with an ``ErrorFrame`` and nothing
else; when a worker goes away its streams are cancelled, which closes their upstream
connections and frees their pool slots.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator
from typing import Any

import psutil

from shared.errors import ErrorCode
from shared.framing import MAX_FRAME, FrameError, FrameReader, encode
from shared.messages import (
    PROTOCOL_VERSION,
    Ack,
    Cancel,
    ClearDNS,
    Data,
    End,
    ErrorFrame,
    Failure,
    Head,
    Hello,
    Request,
    Rewind,
    Stats,
    StatsRequest,
    Welcome,
)
from shared.stream_state import State

from .engine import Engine
from .stats import build_stats
from .stream import BrokerStream

__all__ = ["BrokerServer", "WorkerConnection", "IPCStream"]

log = logging.getLogger("broker.server")

_BUFSIZE = 1 << 18


def peer_credentials(sock: socket.socket) -> tuple[int, int] | None:
    """(pid, uid) of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return int(pid), int(uid)


class IPCStream(BrokerStream):
    """A stream carried over a worker's socket.

    The head is held back until the engine flushes or the stream ends, so that a
    response that arrived whole (the common case) goes out as one write of its Head,
    Data and End frames instead of three.
    """

    __slots__ = ("conn", "task", "_body_q", "_held")

    def __init__(self, stream_id: int, conn: WorkerConnection) -> None:
        super().__init__(stream_id)
        self.conn = conn
        self.task: asyncio.Task[None] | None = None
        self._body_q: asyncio.Queue[bytes | None] | None = None
        self._held: list[bytes] | None = None

    def _send_head(self, msg: Head) -> None:
        self._held = [encode(msg)]

    def _send_data(self, chunk: bytes) -> None:
        frame = encode(Data(self.id, chunk))
        if self._held is not None:
            self._held.append(frame)
        else:
            self.conn.write(frame)

    def _send_end(self) -> None:
        self._send_last(encode(End(self.id)))

    def _send_failure(self, failure: Failure) -> None:
        self._send_last(encode(failure))

    def _send_last(self, frame: bytes) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.append(frame)
            self.conn.write(b"".join(held))
        else:
            self.conn.write(frame)
        self.conn.forget(self)

    def stop(self) -> None:
        """The worker cancelled or went away: in the head phase the task is cancelled,
        in the body phase (no task) the engine's abort hook runs."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        else:
            self.abort()
        self.conn.forget(self)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self.conn.write(b"".join(held))

    def feed_body(self, chunk: bytes | None) -> None:
        if self._body_q is None:
            self._body_q = asyncio.Queue()
        self._body_q.put_nowait(chunk)

    async def request_body(self) -> AsyncIterator[bytes]:
        if self._body_q is None:
            self._body_q = asyncio.Queue()
        while True:
            chunk = await self._body_q.get()
            if chunk is None:
                return
            yield chunk

    def body_written(self, size: int) -> None:
        self.conn.send(Ack(self.id, size))

    def rewind(self) -> bool:
        self._body_q = asyncio.Queue()
        self.conn.send(Rewind(self.id))
        return True


class WorkerConnection(asyncio.BufferedProtocol):
    def __init__(self, server: BrokerServer) -> None:
        self.server = server
        self.engine = server.engine
        self._buf = bytearray(_BUFSIZE)
        self._view = memoryview(self._buf)
        self._reader = FrameReader(MAX_FRAME)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, IPCStream] = {}
        self.pid = 0
        self.peer_pid = 0  # from the kernel (SO_PEERCRED), in the broker's pid namespace
        self.greeted = False
        self.closed = False

    def __repr__(self) -> str:
        return f"<WorkerConnection pid={self.pid} streams={len(self.streams)}>"

    # -- asyncio --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        creds = peer_credentials(sock) if sock is not None else None
        if creds is not None:
            self.peer_pid, uid = creds
            if uid != os.getuid() and uid != 0:
                log.warning("refused a worker of uid %s (broker uid %s)", uid, os.getuid())
                self.abort("permission", "the broker serves only its own user")
                return
        self.server.workers.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self.closed:
            return  # refused or aborted: drain and drop until the peer hangs up
        try:
            msgs = self._reader.feed(self._view[:nbytes])
        except FrameError as exc:
            self.abort("protocol", str(exc))
            return
        for msg in msgs:
            if self.closed:
                return
            self._dispatch(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.workers.discard(self)
        for stream in list(self.streams.values()):
            stream.stop()
        self.streams.clear()
        self.server.connection_gone(self)

    # -- messages -------------------------------------------------------------------

    def _dispatch(self, msg: Any) -> None:
        if not self.greeted:
            if type(msg) is not Hello:
                self.abort("protocol", "the first message must be Hello")
            elif msg.version != PROTOCOL_VERSION:
                self.abort(
                    "version",
                    f"protocol version {msg.version} is not supported by this broker "
                    f"(it speaks {PROTOCOL_VERSION}); upgrade http-broker on both sides",
                )
            else:
                self.greeted = True
                self.pid = msg.pid
                self.send(Welcome(PROTOCOL_VERSION, os.getpid()))
            return
        kind = type(msg)
        if kind is Request:
            self._start(msg)
        elif kind is Ack:
            s = self.streams.get(msg.stream)
            if s is not None:
                s.on_ack(msg.size)
        elif kind is Data:
            s = self.streams.get(msg.stream)
            if s is not None:
                s.feed_body(msg.data)
        elif kind is End:
            s = self.streams.get(msg.stream)
            if s is not None:
                s.feed_body(None)
        elif kind is Cancel:
            s = self.streams.get(msg.stream)
            if s is not None:
                s.stop()
        elif kind is StatsRequest:
            self.send(self.server.stats())
        elif kind is ClearDNS:
            self.engine.clear_dns(msg.pool, msg.host, msg.port)
        else:
            self.abort("protocol", f"a worker may not send {kind.__name__}")

    def _start(self, req: Request) -> None:
        if req.stream in self.streams:
            self.abort("protocol", f"stream {req.stream} is already open")
            return
        if self.server.draining:
            self.send(Failure(req.stream, ErrorCode.BROKER, "the broker is shutting down"))
            return
        stream = IPCStream(req.stream, self)
        self.streams[req.stream] = stream
        stream.task = asyncio.get_running_loop().create_task(self._run(req, stream))

    async def _run(self, req: Request, stream: IPCStream) -> None:
        try:
            await self.engine.perform(req, stream)
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

    def abort(self, code: str, message: str) -> None:
        """Say why, then close this worker's connection."""
        log.warning("closing worker connection pid=%s: %s", self.pid, message)
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


class BrokerServer:
    """Serves workers on a Unix socket with one engine."""

    def __init__(self, path: str, engine: Engine | None = None) -> None:
        self.path = path
        self.engine = engine or Engine()
        self.workers: set[WorkerConnection] = set()
        self.draining = False
        self._server: asyncio.AbstractServer | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if os.path.exists(self.path):
            _remove_stale_socket(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(512)
        self._server = await loop.create_unix_server(
            lambda: WorkerConnection(self), sock=sock
        )
        self._reaper = loop.create_task(self._reap_dead_workers())

    async def _reap_dead_workers(self, interval: float = 0.5) -> None:
        """A worker's exit normally shows as EOF on its socket at once; but a socket
        inherited by a forked child stays open when the worker dies. Check the pids."""
        while True:
            await asyncio.sleep(interval)
            for w in list(self.workers):
                if w.peer_pid and not _alive(w.peer_pid):
                    log.info("worker %d is gone; closing its connection", w.peer_pid)
                    if w.transport is not None:
                        w.transport.abort()

    @property
    def streams(self) -> int:
        return sum(len(w.streams) for w in self.workers)

    def stream_done(self) -> None:
        if self.draining and not self.streams:
            self._idle.set()

    def connection_gone(self, conn: WorkerConnection) -> None:
        self.stream_done()

    def stats(self) -> Stats:
        return build_stats(self.engine, len(self.workers), self.streams)

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting, let in-flight streams finish (up to a limit), close all."""
        self.draining = True
        if self._reaper is not None:
            self._reaper.cancel()
        if self._server is not None:
            self._server.close()
        if self.streams:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), drain_timeout)
            except asyncio.TimeoutError:
                log.warning("drain timed out with %d streams in flight", self.streams)
        for w in list(self.workers):
            if w.transport is not None:
                w.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        await self.engine.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


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


