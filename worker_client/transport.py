"""How a worker's requests reach the engine: over the broker's socket, or in-process.

``IPCTransport`` is one Unix-socket connection from this process to the broker, shared by
every session of this process on this event loop and multiplexing their streams.
``EmbeddedTransport`` runs the broker's engine inside this process and hands it the same
message objects without encoding them; its streams' ``body_buffer`` is the reader's
claimed whole-body buffer (``response.StreamReader``), so a plain body that ``read()``
waits for is read from the socket straight into the ``bytes`` it returns. Both deliver
into a ``StreamHandle`` (``worker_client.handle``).

Transports are counted: each session that uses one holds it, and the last one to close
closes it, so that nothing outlives the event loop. A transport made in another process
(before a fork) is never reused: the cache is keyed by pid.

Losing the broker (it died, or stopped): every stream on the connection fails at once
with ``BrokerConnectionError`` ("the broker went away ..."), its upload pumps stop, the
old broker's shared memory is unmapped, and the transport leaves the cache, so that the
next request makes a new one (ids of pools, timeouts, jars and TLS settings are per
connection: they are opened again there). Nothing in flight is sent again: how far the
broker got with it is unknown. A request that provably reached no broker does go on the
new connection: one whose frame the dead socket refused before the loop read the
hang-up (``IPCTransport.write``), and one about to use a connection that a zero-timeout
poll finds hung up with nothing left unread, or with nothing open on it
(``IPCTransport.stale``).

Trust: whatever listens on the broker path receives every request of this process, its
credentials included. So before the first byte (the ``Hello``), the worker asks the
kernel who serves the socket (``SO_PEERCRED``: the uid that called ``listen``) and talks
only to a broker of its own uid, or of a uid listed in ``broker_uid=`` /
``HTTP_BROKER_UID``. Root gets no exception: a root broker admits only root workers (the
broker serves its own uid and root), so a worker of another uid would be refused after
sending its ``Hello`` anyway, and a process that is not ours is not trusted unasked.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import os
import select
import socket
import sys
import termios
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from yarl import URL

from broker.failures import ConnectionFailure, failure_message
from broker.peercred import peer_uid, trusted_broker_uids, untrusted_broker
from broker.stream import BrokerStream
from shared.arena import Arena, ArenaError, SlotError, SlotTable
from shared.framing import MAX_FRAME, FrameError, FrameReader, encode
from shared.messages import (
    MAX_POOL_SPEC,
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
    JarClose,
    JarDone,
    JarFailed,
    JarOpen,
    PoolOpen,
    Release,
    Request,
    Rewind,
    Slot,
    Stats,
    StatsRequest,
    TimeoutOpen,
    TlsOpen,
    TraceEvent,
    Welcome,
)
from shared.specs import (
    DEFAULT_POOL_BYTES,
    DEFAULT_TIMEOUT,
    ClientTimeout,
    JarSpec,
    PoolSpec,
    TlsSpec,
)
from shared.stream_state import State

from . import jar_channel
from .exceptions import BrokerConnectionError, BrokerProtocolError
from .handle import Deadlines, StreamHandle

if TYPE_CHECKING:  # the engine's modules are imported by the first EmbeddedTransport
    from broker.cookie_store import CookieStore
    from broker.fast import Resumed
    from broker.handover import Adoption

__all__ = [
    "StreamHandle", "Transport", "get_transport", "broker_address", "trusted_broker_uids",
]

T = TypeVar("T")
_INLINE_BODY_MAX = 1 << 20  # a bigger request body would not fit in one frame
Rewinder = Callable[[], AsyncIterator[bytes]]
_BUFSIZE = 1 << 18
# A request body piece smaller than this goes inline (a Data frame), a larger one into
# an up-arena slot when one is free (the figures: docs/protocol.md).
_SLOT_MIN = 32 * 1024
_POOL_IDS = 1024  # pool specs named by id per connection (the broker caps them lower)
# Request's fields from ``body`` to ``trace`` at their defaults: a request with these
# (and its pool and timeout by id or the defaults) goes as its first six fields.
_POOL_AT = Request.__struct_fields__.index("pool")  # then timeout, then the rest
_DEFAULT_FIELDS = msgspec.structs.astuple(Request(0, "", ""))[6:_POOL_AT]
_DEFAULT_TAIL = msgspec.structs.astuple(Request(0, "", ""))[_POOL_AT + 2 :]


_OFF = ("0", "no", "off", "false")
_CMSG_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_INT = array.array("i")


def _closed_error(msg: ErrorFrame) -> BaseException:
    text = f"the broker closed the connection: {msg.message}"
    if msg.code in ("protocol", "version"):
        return BrokerProtocolError(text)
    return BrokerConnectionError(text)


def _recv_fds(sock: socket.socket, maxfds: int) -> tuple[bytes, list[int], int]:
    """``socket.recv_fds``, but with the descriptors close-on-exec as they arrive
    (``recv_fds`` ignores its ``flags``: they would be inheritable until closed)."""
    data, ancdata, flags, _ = sock.recvmsg(
        _BUFSIZE, socket.CMSG_LEN(maxfds * _INT.itemsize), _CMSG_FLAGS
    )
    fds = array.array("i")
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
    return data, fds.tolist(), flags


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


def broker_address(explicit: str | None) -> str | None:
    """Discovery: ``broker=`` wins, then ``HTTP_BROKER``, else None (embedded)."""
    addr = explicit if explicit is not None else os.environ.get("HTTP_BROKER") or None
    if addr and addr.startswith("unix:"):
        addr = addr[5:]
    return addr


def check_broker_uid(path: str, uid: int | None, trusted: frozenset[int]) -> None:
    """Refuse a broker that runs under a uid this process does not trust."""
    problem = untrusted_broker(path, uid, trusted)
    if problem is not None:
        raise BrokerConnectionError(problem)


class Transport:
    """What sessions use: open streams, cancel them, acknowledge body bytes."""

    kind = "abstract"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.deadlines = Deadlines(loop)
        self.handles: dict[int, StreamHandle] = {}
        self.users = 0
        self.closed = False
        self._next = 1
        self.jars_open: set[bytes] = set()  # jar tokens opened on this connection
        self.tls_open: set[bytes] = set()  # tls ids opened on this connection

    def next_stream_id(self) -> int:
        sid = self._next
        self._next += 2
        return sid

    def forget(self, stream_id: int) -> None:
        self.handles.pop(stream_id, None)

    def stale(self) -> bool:
        """Whether this transport is known to be dead though it does not say so yet."""
        return False

    async def send(
        self,
        req: Request,
        body: AsyncIterator[bytes] | None,
        handle: StreamHandle,
        url: URL | None = None,
        jar: CookieStore | None = None,
        rewind: Rewinder | None = None,
        written: Callable[[int], None] | None = None,
    ) -> None:
        """Start a stream; the head arrives on ``handle.head``. ``url`` is ``req.url``
        already parsed and checked, when the caller has it. ``jar``: embedded, the
        request's cookie store (through a broker, ``req.jar`` names it instead).
        ``rewind``: for a ``replayable`` streamed body, makes it again from its start
        (a 307/308); it raises if the body can no longer be made. ``written(n)``: n more
        bytes of the streamed body are on the server's socket (``UploadTracker``)."""
        raise NotImplementedError

    def cancel(self, stream_id: int) -> None:
        """The worker gives up the stream: whatever it holds in the engine is released,
        and nothing more of it reaches its handle."""
        raise NotImplementedError

    async def claim(self, token: bytes) -> tuple[Any, bytes]:
        """The upgraded connection that a ``Head.handover`` named (a socket through a
        broker, the engine's asyncio transport embedded) and the bytes read past its
        101."""
        raise NotImplementedError

    def open_jar(self, token: bytes, spec: JarSpec) -> None:
        """Open a cookie jar on this connection before the first request that names it."""
        raise NotImplementedError

    def open_tls(self, tls: bytes, spec: TlsSpec) -> None:
        """Make ``spec`` known under its id ``tls`` (``shared.specs.tls_id``) before the
        first request that names it (``Request.tls``); once per connection."""
        raise NotImplementedError

    def ack(self, stream_id: int, size: int) -> None:
        raise NotImplementedError

    async def stats(self) -> Stats:
        raise NotImplementedError

    def clear_dns(self, pool: PoolSpec, host: str | None, port: int | None) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


# -- embedded ---------------------------------------------------------------------------


class _LocalStream(BrokerStream):
    __slots__ = ("handle", "body", "owner", "_rewind", "_written")

    def __init__(
        self,
        handle: StreamHandle,
        body: AsyncIterator[bytes] | None,
        owner: EmbeddedTransport,
        rewind: Rewinder | None = None,
        written: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(handle.id)
        self.handle = handle
        self.body = body
        self.owner = owner
        self._rewind = rewind
        self._written = written

    def body_written(self, size: int) -> None:
        if self._written is not None:
            self._written(size)

    def rewind(self) -> bool:
        if self._rewind is None:
            return False
        try:
            self.body = self._rewind()
        except Exception:  # consumed: the engine fails the request with aiohttp's error
            return False
        return True

    def adopt(self, conn: Any, pool: Any) -> bytes:
        """Embedded, the worker takes any upgraded connection (TLS too): its transport
        is in this process already."""
        from broker.handover import Adoption

        return Adoption(self.owner.adoptions, self, conn, pool).token

    def _send_head(self, msg: Head) -> None:
        self.handle.on_head(msg)

    def _send_data(self, chunk: bytes) -> None:
        self.handle.on_data(chunk)

    def body_buffer(self) -> memoryview | None:
        return self.handle.body_buffer()

    def _send_filled(self, size: int) -> None:
        self.handle.on_filled(size)

    def _send_end(self) -> None:
        self.owner.streams.pop(self.id, None)
        self.handle.on_end(self.raw_bytes)

    def _send_failure(self, failure: Failure) -> None:
        self.owner.streams.pop(self.id, None)
        self.handle.on_failure(failure)

    def _send_trace(self, event: TraceEvent) -> None:
        self.handle.on_trace_event(event)

    async def request_body(self) -> AsyncIterator[bytes]:
        if self.body is None:
            return
        # Each step of the caller's iterator runs stoppable: a stream given up while the
        # iterator waits on the caller's own business ends the upload at once.
        it = aiter(self.body)
        while True:
            try:
                chunk = await self.stoppable(anext(it))
            except StopAsyncIteration:
                return
            yield chunk


class EmbeddedTransport(Transport):
    """The broker's engine in this process.

    The head phase of a request runs in the caller's own task (no task per request, as
    in aiohttp); the body then flows by callbacks. Cancelling a stream gives it up as in
    a broker (``BrokerStream.give_up``): the engine's wait on its behalf ends at once, and
    the caller's task is never cancelled for it.
    """

    kind = "embedded"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        from broker.engine import Engine
        from broker.tls import TlsTable

        super().__init__(loop)
        self.engine = Engine(loop)
        self.streams: dict[int, _LocalStream] = {}
        self.tls = TlsTable()  # as a worker connection's in the broker, with its cap
        self.adoptions: dict[bytes, Adoption] = {}  # upgraded connections to take

    async def claim(self, token: bytes) -> tuple[Any, bytes]:
        """The engine's own transport of the upgraded connection (reading paused), and
        what it read past the 101; its ``HTTP1Connection`` is to be told when the
        transport is lost (``lost``), for the pool."""
        adoption = self.adoptions.get(token)
        if adoption is None:
            raise BrokerProtocolError("no upgraded connection has that token")
        transport, early = adoption.claim()
        return _Taken(transport, adoption.conn.connection_lost), early

    async def send(
        self,
        req: Request,
        body: AsyncIterator[bytes] | None,
        handle: StreamHandle,
        url: URL | None = None,
        jar: CookieStore | None = None,
        rewind: Rewinder | None = None,
        written: Callable[[int], None] | None = None,
    ) -> None:
        await self._perform(req, _LocalStream(handle, body, self, rewind, written), url, jar)

    async def resume(
        self,
        req: Request,
        handle: StreamHandle,
        url: URL,
        jar: CookieStore | None,
        first: Resumed,
    ) -> None:
        """``send`` for a request whose first attempt the fast path made
        (``worker_client.fast``): the engine goes on from ``first``."""
        await self._perform(req, _LocalStream(handle, None, self), url, jar, first)

    async def _perform(
        self,
        req: Request,
        stream: _LocalStream,
        url: URL | None,
        jar: CookieStore | None,
        first: Resumed | None = None,
    ) -> None:
        handle = stream.handle
        self.handles[req.stream] = handle
        self.streams[req.stream] = stream
        tls = None
        if req.tls:
            try:
                tls = self.tls.find(req.tls)
            except ConnectionFailure as exc:
                stream.fail(failure_message(req, exc, []))
                return
        try:
            # Same process, same checks already made: the engine may skip its own.
            await self.engine.perform(req, stream, url, jar, tls, first)
        finally:
            if stream.state is not State.BODY:
                self.streams.pop(req.stream, None)

    def open_tls(self, tls: bytes, spec: TlsSpec) -> None:
        self.tls.open(tls, spec)
        self.tls_open.add(tls)

    def cancel(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.give_up()

    def ack(self, stream_id: int, size: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_ack(size)

    def clear_dns(self, pool: PoolSpec, host: str | None, port: int | None) -> None:
        self.engine.clear_dns(pool, host, port)

    async def stats(self) -> Stats:
        from broker.stats import build_stats

        from .cookies import embedded_jar_figures  # cookies.py imports this module

        return build_stats(
            self.engine, workers=1, streams=len(self.streams), jars=embedded_jar_figures()
        )

    async def aclose(self) -> None:
        self.closed = True
        self.deadlines.cancel_all()
        for stream in list(self.streams.values()):
            if not stream.finished:
                stream.give_up()
        self.streams.clear()
        await self.engine.close()


class _Taken:
    """An upgraded connection's transport taken from the engine, embedded; ``lost`` is
    its ``HTTP1Connection.connection_lost``, for whoever becomes its protocol to call."""

    __slots__ = ("transport", "lost")

    def __init__(
        self, transport: asyncio.Transport, lost: Callable[[Exception | None], None]
    ) -> None:
        self.transport = transport
        self.lost = lost


# -- through a broker process ------------------------------------------------------------


async def _slices(body: bytes, size: int = 1 << 18) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _unread(fd: int) -> int:
    """The bytes waiting to be read on socket ``fd``."""
    n = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, n, True)
    return n[0]


class _BrokerProtocol(asyncio.BufferedProtocol):
    def __init__(self, owner: IPCTransport, reader: FrameReader) -> None:
        self.owner = owner
        self._buf = bytearray(_BUFSIZE)
        self._view = memoryview(self._buf)
        self.reader = reader  # the handshake's, with any bytes it read past the Welcome

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        # Nothing may escape to the event loop (a "Fatal error" with no word to the
        # waiting requests): every failure here ends the connection as the broker's fault.
        try:
            msgs = self.reader.feed(self._view[:nbytes])
        except FrameError as exc:
            self.owner.lost(BrokerProtocolError(f"the broker sent a bad frame: {exc}"))
            return
        except Exception as exc:  # RecursionError for a frame nested too deep
            self.owner.lost(BrokerProtocolError(f"the broker sent an undecodable frame: {exc!r}"))
            return
        owner = self.owner
        dispatch = owner.dispatch
        try:
            for msg in msgs:
                dispatch(msg)
        except Exception as exc:
            owner.lost(BrokerProtocolError(f"the broker's {type(msg).__name__}: {exc!r}"))

    def pause_writing(self) -> None:
        self.owner.pause_writing()

    def resume_writing(self) -> None:
        self.owner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.connection_lost()


class IPCTransport(Transport):
    """This process's connection to a broker process.

    What it buffers, and its bounds: a request body being sent, at most ``STREAM_WINDOW``
    unacknowledged bytes per stream (the broker's credit); an inline body (at most
    ``_INLINE_BODY_MAX``) kept until the stream ends, in case the broker asks for it
    again (``Rewind``), where a streamed payload that can be re-read (a seekable file)
    is not kept but made again from its start; and the socket's write buffer: while it
    is over its high-water mark (``pause_writing``), new requests and body chunks wait
    for it to drain.
    """

    kind = "broker"
    close_grace = 1.0  # seconds that aclose waits for the buffered frames to be sent

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str) -> None:
        super().__init__(loop)
        self.path = path
        self._transport: asyncio.Transport | None = None
        self._lost: asyncio.Future[None] = loop.create_future()
        self._error: BaseException | None = None
        self._credit: dict[int, int] = {}
        self._credit_waiters: dict[int, asyncio.Future[None]] = {}
        self._pumps: dict[int, asyncio.Task[None]] = {}
        self._replay: dict[int, Rewinder] = {}  # bodies the broker may ask for again
        self._progress: dict[int, Callable[[int], None]] = {}  # upload trackers' counters
        self._jar_opens: dict[int, bytes] = {}  # open_jar calls not answered yet: tokens
        # Pool specs and timeouts opened on this connection, by their ids (PoolOpen,
        # TimeoutOpen): at most _POOL_IDS and MAX_TIMEOUT_IDS; past them they go inline.
        self._pool_ids: dict[bytes, int] = {}
        self._timeout_ids: dict[ClientTimeout, int] = {}
        self._next_spec_id = 1
        self._next_jar_call = 1
        # One waiter per StatsRequest sent; the broker answers them in order.
        self._stats: deque[asyncio.Future[Stats]] = deque()
        self._writable: asyncio.Future[None] | None = None  # set while writing is paused
        self.broker_pid = 0
        self.broker_uid: int | None = None
        # Shared memory, if the broker gave it: the down arena (response bodies, read
        # here) and the up arena (request bodies, written here, its slots handed out by
        # ``_up_slots``); down-slot references to give back, and acknowledgements to
        # send, both once per loop pass (``flush``).
        self.down: Arena | None = None
        self.up: Arena | None = None
        self._up_slots: SlotTable | None = None
        self._releases: list[int] = []
        self._acks: dict[int, int] = {}
        self._flush_due = False
        self._hangup: select.poll | None = None  # see stale()
        self._hangup_fd = -1

    async def connect(
        self, timeout: float = 10.0, trusted: frozenset[int] | None = None, shm: bool | None = None
    ) -> None:
        """Connect, check the broker's uid against ``trusted`` (default: this process's
        uid and ``HTTP_BROKER_UID``), then shake hands within ``timeout`` seconds.

        The handshake runs on the bare socket (the broker's Welcome may carry the arenas'
        descriptors, which an asyncio transport cannot receive); ``shm`` (default: unless
        ``HTTP_BROKER_SHM`` is 0/no/off) asks for shared memory."""
        if trusted is None:
            trusted = trusted_broker_uids()
        if shm is None:
            shm = os.environ.get("HTTP_BROKER_SHM", "").strip().lower() not in _OFF
        sock, self.broker_uid = await self._connect_bare(trusted)
        try:
            reader = FrameReader()
            try:
                welcome, more = await _within(self._handshake(sock, reader, shm), timeout)
            except asyncio.TimeoutError:
                raise BrokerConnectionError(
                    f"the broker at {self.path} did not answer the handshake"
                ) from None
            self._transport, _ = await self.loop.create_unix_connection(
                lambda: _BrokerProtocol(self, reader), sock=sock
            )
            self._hangup = select.poll()
            self._hangup_fd = sock.fileno()
            self._hangup.register(self._hangup_fd, select.POLLHUP)
        except BaseException:
            sock.close()
            self._close_arenas()
            raise
        self.broker_pid = welcome.pid
        for msg in more:
            self.dispatch(msg)

    async def _connect_bare(self, trusted: frozenset[int]) -> tuple[socket.socket, int | None]:
        """A new connection to the broker, not yet an asyncio transport, and the uid
        that serves it, checked against ``trusted`` before any byte goes (closed on
        failure; else the caller's to close)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            try:
                await self.loop.sock_connect(sock, self.path)
            except OSError as exc:
                raise BrokerConnectionError(
                    f"cannot reach the broker at {self.path}: {exc.strerror or exc}"
                ) from None
            uid = peer_uid(sock, self.path)
            check_broker_uid(self.path, uid, trusted)
        except BaseException:
            sock.close()
            raise
        return sock, uid

    async def _handshake(
        self, sock: socket.socket, reader: FrameReader, shm: bool
    ) -> tuple[Welcome, list[Any]]:
        """Send Hello, receive the Welcome (and its descriptors): it and what followed."""
        fds: list[int] = []
        try:
            msgs = await self._ask_bare(
                sock, reader, Hello(PROTOCOL_VERSION, os.getpid(), shm), fds, 2
            )
            first = msgs[0]
            if type(first) is ErrorFrame:
                raise _closed_error(first)
            if type(first) is not Welcome:
                raise BrokerProtocolError(
                    f"the broker sent {type(first).__name__} instead of Welcome"
                )
            if first.slot_size:
                if len(fds) != 2:
                    raise BrokerProtocolError(
                        f"the broker announced shared memory with {len(fds)} descriptors"
                    )
                down_fd, up_fd = fds
                fds = []
                self._attach(first, down_fd, up_fd)
            return first, msgs[1:]
        finally:
            for fd in fds:
                os.close(fd)

    async def _ask_bare(
        self, sock: socket.socket, reader: FrameReader, msg: Any, fds: list[int], most: int
    ) -> list[Any]:
        """Send ``msg`` on the bare socket and read until a whole message arrives: the
        messages read, and into ``fds`` (the caller's to close) the descriptors that
        came with them, at most ``most``."""
        await self.loop.sock_sendall(sock, encode(msg))
        while True:
            await _readable(self.loop, sock)
            try:
                data, got, flags = _recv_fds(sock, most)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                raise BrokerConnectionError(f"lost the connection to the broker: {exc}") from None
            fds += got
            if flags & socket.MSG_CTRUNC or len(fds) > most:
                raise BrokerProtocolError(f"the broker sent more descriptors than {most}")
            if not data:
                raise BrokerConnectionError("lost the connection to the broker")
            try:
                msgs = reader.feed(data)
            except FrameError as exc:
                raise BrokerProtocolError(f"the broker sent a bad frame: {exc}") from None
            if msgs:
                return msgs

    async def claim(self, token: bytes, timeout: float = 10.0) -> tuple[socket.socket, bytes]:
        """The upgraded socket that a ``Head.handover`` named, and the bytes the broker
        read past its 101: claimed on a connection of its own (an asyncio transport
        cannot receive descriptors), which the broker closes after answering."""
        sock, _ = await self._connect_bare(trusted_broker_uids())
        try:
            try:
                return await _within(self._claimed(sock, token), timeout)
            except asyncio.TimeoutError:
                raise BrokerConnectionError(
                    f"the broker at {self.path} did not hand the WebSocket over"
                ) from None
        finally:
            sock.close()

    async def _claimed(self, sock: socket.socket, token: bytes) -> tuple[socket.socket, bytes]:
        fds: list[int] = []
        try:
            msgs = await self._ask_bare(sock, FrameReader(), Claim(token), fds, 1)
            first = msgs[0]
            if type(first) is ErrorFrame:
                raise _closed_error(first)
            if type(first) is not Granted or len(fds) != 1:
                raise BrokerProtocolError(
                    f"the broker sent {type(first).__name__} with {len(fds)} descriptors "
                    "instead of the WebSocket's"
                )
            upgraded = socket.socket(fileno=fds.pop())
            upgraded.setblocking(False)
            return upgraded, first.early
        finally:
            for fd in fds:
                os.close(fd)

    def _attach(self, welcome: Welcome, down_fd: int, up_fd: int) -> None:
        try:
            try:
                self.down = Arena.attach(down_fd, welcome.slot_size, welcome.down_slots, False)
            finally:
                self.up = Arena.attach(up_fd, welcome.slot_size, welcome.up_slots, True)
        except ArenaError as exc:
            raise BrokerProtocolError(f"the broker's shared memory: {exc}") from None
        self._up_slots = SlotTable(welcome.up_slots)

    def _close_arenas(self) -> None:
        down, up, self.down, self.up = self.down, self.up, None, None
        self._up_slots = None
        for arena in (down, up):
            if arena is not None:
                arena.close()

    def forget(self, stream_id: int) -> None:
        super().forget(stream_id)
        self._replay.pop(stream_id, None)
        self._progress.pop(stream_id, None)

    def stale(self) -> bool:
        """Whether the broker hung up while this process's loop has not read it yet (a
        loop kept busy when the broker died): a zero-timeout poll, as urllib3 and httpcore
        check an idle keep-alive connection before reusing it. If so the connection ends
        now (what is open on it fails, as it would once the loop read the hang-up), and
        the caller makes a new one; unless something is open on it (a stream, a stats
        call) and the socket still holds unread bytes, which may answer it: the loop
        reads them first."""
        if self.closed or self._hangup is None or not self._hangup.poll(0):
            return False
        if (self.handles or self._stats) and _unread(self._hangup_fd):
            return False
        self.connection_lost()
        return True

    def write(self, data: bytes) -> None:
        """Write ``data`` to the broker; if the write went nowhere (the broker is gone: the
        socket refused it, or the transport had already closed) the connection ends now
        and its error is raised: what was written never reached a broker."""
        transport = self._transport
        assert transport is not None
        transport.write(data)
        if transport.is_closing():
            self.connection_lost()
            assert self._error is not None
            raise self._error

    def _send(self, *msgs: Any) -> None:
        """``msgs`` in one write (see ``write``)."""
        if self._error is not None:
            raise self._error
        frames = []
        for msg in msgs:
            frame = encode(msg)
            if len(frame) > MAX_FRAME + 4:
                # The broker would drop this whole connection, and every stream on it.
                raise ValueError(
                    f"{type(msg).__name__} of {len(frame)} bytes is over the broker's frame "
                    f"cap of {MAX_FRAME} (headers or URL too large)"
                )
            frames.append(frame)
        self.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def dispatch(self, msg: Any) -> None:
        kind = type(msg)
        if kind is Slot:
            self._on_slot(msg)
        elif kind is Data:
            h = self.handles.get(msg.stream)
            if h is not None:
                h.on_data(msg.data)
        elif kind is Head:
            h = self.handles.get(msg.stream)
            if msg.body is not None:  # the whole response: head, body and end
                if self._pumps:
                    self._end_pump(msg.stream)
                if h is not None:
                    h.on_whole(msg)
            elif h is not None:
                h.on_head(msg)
        elif kind is TraceEvent:
            h = self.handles.get(msg.stream)
            if h is not None:  # else a stream given up: its events are dropped
                h.on_trace_event(msg)
        elif kind is End:
            if self._pumps:  # a body the response did not wait for (Expect: 100-continue)
                self._end_pump(msg.stream)
            h = self.handles.get(msg.stream)
            if h is not None:
                h.on_end(msg.raw)
        elif kind is Rewind:
            rewind = self._replay.get(msg.stream)
            if rewind is None or msg.stream in self._pumps:
                self.lost(BrokerProtocolError(f"the broker asked to rewind stream {msg.stream}"))
                return
            try:
                body = rewind()
            except Exception as exc:  # the body can no longer be made: the request fails
                h = self.handles.get(msg.stream)
                if h is not None:
                    h.give_up(exc)
                return
            self._credit[msg.stream] = STREAM_WINDOW
            self._pumps[msg.stream] = self.loop.create_task(self._pump(msg.stream, body))
        elif kind is Failure:
            self._end_pump(msg.stream)
            h = self.handles.get(msg.stream)
            if h is not None:
                h.on_failure(msg)
        elif kind is Ack:
            if not 0 < msg.size <= STREAM_WINDOW:
                self.lost(BrokerProtocolError(f"the broker sent an Ack of {msg.size} bytes"))
                return
            progress = self._progress.get(msg.stream)
            if progress is not None:
                progress(msg.size)
            if msg.stream not in self._credit:
                return  # the body was all sent: a late acknowledgement
            self._credit[msg.stream] += msg.size
            w = self._credit_waiters.pop(msg.stream, None)
            if w is not None and not w.done():
                w.set_result(None)
        elif kind is JarDone or kind is JarFailed:
            token = self._jar_opens.pop(msg.call, None)
            if token is None:
                self.lost(BrokerProtocolError(f"the broker sent {kind.__name__} unasked"))
            elif kind is JarFailed:
                # The requests already sent with it fail with the broker's word for it
                # (a cap); the next request opens it again.
                self.jars_open.discard(token)
        elif kind is Stats:
            if not self._stats:
                self.lost(BrokerProtocolError("the broker sent Stats nobody asked for"))
                return
            waiter = self._stats.popleft()
            if not waiter.done():  # else that caller was cancelled
                waiter.set_result(msg)
        elif kind is Release:
            self._on_release(msg.slots)
        elif kind is ErrorFrame:
            self.lost(_closed_error(msg))
        else:
            self.lost(BrokerProtocolError(f"the broker sent an unexpected {kind.__name__}"))

    def _on_slot(self, msg: Slot) -> None:
        down = self.down
        problem = "no shared memory" if down is None else down.check(
            msg.slot, msg.offset, msg.size
        )
        if problem is not None:
            self.lost(BrokerProtocolError(f"the broker sent a bad Slot: {problem}"))
            return
        assert down is not None
        self._releases.append(msg.slot)
        self._flush_soon()
        h = self.handles.get(msg.stream)
        if h is not None:
            view = down.slot(msg.slot, msg.offset, msg.size)
            h.on_data(view)  # the reader copies what it keeps, during the call

    def _on_release(self, slots: list[int]) -> None:
        table = self._up_slots
        try:
            if table is None:
                raise SlotError("no shared memory")
            for k in slots:
                table.give_back(k)
        except SlotError as exc:
            self.lost(BrokerProtocolError(f"the broker sent a bad Release: {exc}"))
            return

    def flush(self) -> None:
        """Send the acknowledgements and slot references gathered, in one write."""
        self._flush_due = False
        acks, self._acks = self._acks, {}
        slots, self._releases = self._releases, []
        if self.closed or self._transport is None:
            return
        frames = [encode(Ack(sid, size)) for sid, size in acks.items()]
        for i in range(0, len(slots), MAX_RELEASE):
            frames.append(encode(Release(slots[i : i + MAX_RELEASE])))
        if frames:
            self._transport.write(b"".join(frames))

    def lost(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        if self._transport is not None:
            self._transport.close()
        self.connection_lost()

    def connection_lost(self) -> None:
        if self._lost.done():
            return
        self.closed = True
        exc = self._error or BrokerConnectionError(
            f"the broker went away (lost the connection to {self.path}); "
            "the next request reconnects"
        )
        self._error = exc
        waiters: list[asyncio.Future[Any]] = [*self._stats]
        for fut in waiters:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()
        self._stats.clear()
        for h in list(self.handles.values()):
            h.fail(exc)
        for w in self._credit_waiters.values():
            if not w.done():
                w.set_exception(exc)
                w.exception()
        for task in self._pumps.values():
            task.cancel()  # a body waiting on the caller's iterator is read no further
        self.resume_writing()  # whoever waits to write finds the error
        self._lost.set_result(None)
        self._acks.clear()
        self._releases.clear()
        self._close_arenas()
        _drop(self)

    # -- streams -----------------------------------------------------------------

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    async def _until_writable(self) -> None:
        while self._writable is not None:
            # Shielded: one waiter's cancel must not cancel everyone's wait.
            await asyncio.shield(self._writable)

    async def send(
        self,
        req: Request,
        body: AsyncIterator[bytes] | None,
        handle: StreamHandle,
        url: URL | None = None,
        jar: CookieStore | None = None,
        rewind: Rewinder | None = None,
        written: Callable[[int], None] | None = None,
    ) -> None:
        if self._writable is not None:
            await self._until_writable()
        self.open(req, body, handle, rewind, written)

    def open_jar(self, token: bytes, spec: JarSpec) -> None:
        if jar_channel.closing:
            self._send_closes()  # first: they make room under the broker's cap
        call = self._next_jar_call
        self._next_jar_call += 1
        self._send(JarOpen(call, token, spec))  # pipelined: its answer is not waited for
        self._jar_opens[call] = token
        self.jars_open.add(token)

    def open_tls(self, tls: bytes, spec: TlsSpec) -> None:
        self._send(TlsOpen(tls, spec))  # not answered: a spec it cannot use fails its requests
        self.tls_open.add(tls)

    def _send_closes(self) -> None:
        for token in jar_channel.take_closes(self.path):
            self._send(JarClose(token))
            self.jars_open.discard(token)

    def open(
        self,
        req: Request,
        body: AsyncIterator[bytes] | None,
        handle: StreamHandle,
        rewind: Rewinder | None = None,
        written: Callable[[int], None] | None = None,
    ) -> None:
        if jar_channel.closing:
            self._send_closes()
        if rewind is not None and req.replayable:
            self._replay[req.stream] = rewind
        if written is not None:
            self._progress[req.stream] = written
        if req.body is not None and len(req.body) > _INLINE_BODY_MAX:
            # Over the frame cap: send it as a streamed body with its Content-Length.
            body = _slices(req.body)
            headers = req.headers
            if not req.chunked and not any(k.lower() == "content-length" for k, _ in headers):
                headers = [*headers, ("Content-Length", str(len(req.body)))]
            inline = req.body
            self._replay[req.stream] = lambda: _slices(inline)
            req = msgspec.structs.replace(
                req, body=None, streamed=True, replayable=True, headers=headers
            )
        self._send_request(req)
        self.handles[req.stream] = handle
        if body is not None:
            self._credit[req.stream] = STREAM_WINDOW
            self._pumps[req.stream] = self.loop.create_task(self._pump(req.stream, body))

    def _send_request(self, req: Request) -> None:
        """``req`` with its pool and timeout named by id (opened first if new, in the
        same write), or for the defaults by nothing (``Request``: b"" and nil)."""
        opens: list[Any] = []
        pool_id = timeout_id = 0
        pool: bytes = req.pool
        timeout: ClientTimeout | None = req.timeout
        if pool is DEFAULT_POOL_BYTES:
            pool = b""
        else:
            pool_id = self._pool_ids.get(pool, 0)
            if not pool_id and len(pool) <= MAX_POOL_SPEC and len(self._pool_ids) < _POOL_IDS:
                pool_id = self._new_spec_id()
                opens.append(PoolOpen(pool_id, pool))
            if pool_id:
                pool = b""
        if timeout is DEFAULT_TIMEOUT:
            timeout = None
        else:
            timeout_id = self._timeout_ids.get(timeout, 0)  # type: ignore[arg-type]
            if not timeout_id and len(self._timeout_ids) < MAX_TIMEOUT_IDS:
                timeout_id = self._new_spec_id()
                opens.append(TimeoutOpen(timeout_id, timeout))
            if timeout_id:
                timeout = None
        fields = msgspec.structs.astuple(req)
        wire: Any
        if (
            not pool
            and timeout is None
            and fields[6:_POOL_AT] == _DEFAULT_FIELDS
            and fields[_POOL_AT + 2 :] == _DEFAULT_TAIL
        ):
            # The common request: its first fields only, the decoder fills in the rest.
            wire = ["req", fields[0], fields[1], fields[2], fields[3], pool_id, timeout_id]
        else:
            wire = msgspec.structs.replace(
                req, pool_id=pool_id, timeout_id=timeout_id, pool=pool, timeout=timeout
            )
        if not opens:
            self._send(wire)
            return
        self._send(*opens, wire)
        for msg in opens:  # sent: the ids are known to the broker from now on
            if type(msg) is PoolOpen:
                self._pool_ids[msg.pool] = msg.id
            else:
                self._timeout_ids[msg.timeout] = msg.id

    def _new_spec_id(self) -> int:
        sid = self._next_spec_id
        self._next_spec_id += 1
        return sid

    async def _pump(self, stream_id: int, body: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in body:
                view = memoryview(chunk)
                pos, size = 0, len(view)
                while pos < size:
                    while self._credit.get(stream_id, 0) <= 0:
                        w = self._credit_waiters[stream_id] = self.loop.create_future()
                        await w
                    if self._writable is not None:
                        await self._until_writable()
                    n = min(self._credit[stream_id], size - pos)
                    n = self._send_piece(stream_id, view[pos : pos + n])
                    self._credit[stream_id] -= n
                    pos += n
            self._send(End(stream_id))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._pumps.pop(stream_id, None)  # this task: not to be cancelled by cancel()
            h = self.handles.get(stream_id)
            if h is not None:
                h.give_up(exc)  # the caller's body failed: its reader gets why
            else:
                self.cancel(stream_id)
        finally:
            self._pumps.pop(stream_id, None)
            self._credit.pop(stream_id, None)
            self._credit_waiters.pop(stream_id, None)

    def _send_piece(self, stream_id: int, piece: memoryview) -> int:
        """Send the start of ``piece``: into an up-arena slot if it is large enough and
        one is free, else inline; how many bytes went."""
        up, table = self.up, self._up_slots
        if up is not None and table is not None and len(piece) >= _SLOT_MIN:
            k = table.take()
            if k is not None:
                n = min(len(piece), up.slot_size)
                up.slot(k, 0, n)[:] = piece[:n]
                table.lend(k)
                table.filled(k)
                self._send(Slot(stream_id, k, 0, n))
                return n
        self._send(Data(stream_id, bytes(piece)))
        return len(piece)

    def _end_pump(self, stream_id: int) -> None:
        task = self._pumps.pop(stream_id, None)
        if task is not None:
            task.cancel()

    def cancel(self, stream_id: int) -> None:
        """The worker gives up this stream: its upload stops, the broker is told to stop
        it, and nothing more of it reaches its handle."""
        self._end_pump(stream_id)
        self.forget(stream_id)
        if not self.closed:
            with contextlib.suppress(BrokerConnectionError):  # gone now: nothing to stop
                self._send(Cancel(stream_id))

    def ack(self, stream_id: int, size: int) -> None:
        if not self.closed:
            self._acks[stream_id] = self._acks.get(stream_id, 0) + size
            self._flush_soon()

    def _flush_soon(self) -> None:
        """At the next loop pass: after the readers woken by this read took their bytes,
        so that their acknowledgements go in the same write as the slot references."""
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self.flush)

    def clear_dns(self, pool: PoolSpec, host: str | None, port: int | None) -> None:
        if not self.closed:
            with contextlib.suppress(BrokerConnectionError):  # a new broker's cache is empty
                self._send(ClearDNS(pool, host, port))

    async def stats(self) -> Stats:
        self._send(StatsRequest())
        waiter: asyncio.Future[Stats] = self.loop.create_future()
        self._stats.append(waiter)
        return await waiter

    async def aclose(self) -> None:
        self.deadlines.cancel_all()
        pumps = list(self._pumps.values())
        for task in pumps:
            task.cancel()
        if pumps:
            await asyncio.gather(*pumps, return_exceptions=True)
        if self._transport is not None and not self._lost.done():
            # close() first sends what is buffered; a broker that does not read it
            # within the grace loses it (it cancels a gone worker's streams anyway).
            self._transport.close()
            timer = self.loop.call_later(self.close_grace, self._transport.abort)
            try:
                await self._lost
            finally:
                timer.cancel()
        self.closed = True


# -- the per-process, per-loop cache --------------------------------------------------

_cache: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[int, str | None], asyncio.Future[Transport]]
] = weakref.WeakKeyDictionary()


def _drop(transport: Transport) -> None:
    per_loop = _cache.get(transport.loop)
    if not per_loop:
        return
    for key, fut in list(per_loop.items()):
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            if fut.result() is transport:
                del per_loop[key]


async def get_transport(
    address: str | None, trusted: frozenset[int] | None = None
) -> Transport:
    """This process's transport for ``address`` (None: embedded), counted as one user.

    ``trusted``: the broker uids this caller talks to (see ``trusted_broker_uids``); a
    connection that another session opened to a broker of another uid is refused too."""
    if address is not None and trusted is None:
        trusted = trusted_broker_uids()
    loop = asyncio.get_running_loop()
    per_loop = _cache.setdefault(loop, {})
    key = (os.getpid(), address)
    while True:
        fut = per_loop.get(key)
        if fut is None:
            fut = per_loop[key] = loop.create_future()
            await _connect(fut, loop, address, trusted)
        else:
            # Not shield(fut): a connection whose caller was cancelled must not reach
            # the others as a cancel of their own; they try again instead.
            await asyncio.wait((fut,))
        if not fut.cancelled():
            break
    transport = fut.result()
    if isinstance(transport, IPCTransport):
        assert trusted is not None
        check_broker_uid(transport.path, transport.broker_uid, trusted)
    transport.users += 1
    return transport


async def _within(aw: Awaitable[T], seconds: float) -> T:
    """``aw``'s result, or ``asyncio.TimeoutError`` after ``seconds``: what
    ``asyncio.wait_for`` promises, without its flaw on 3.10 and 3.11 (CPython gh-86296):
    a cancel of the caller that lands as ``aw`` finishes is swallowed there, and the
    request whose caller gave up goes on. Here that cancel always propagates."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await aw
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        return await aw
    except asyncio.CancelledError:
        if expired:
            raise asyncio.TimeoutError from None
        raise
    finally:
        timer.cancel()


async def _connect(
    fut: asyncio.Future[Transport],
    loop: asyncio.AbstractEventLoop,
    address: str | None,
    trusted: frozenset[int] | None,
) -> None:
    """Make the transport that ``fut`` (in the cache) stands for."""
    try:
        if address is None:
            transport: Transport = EmbeddedTransport(loop)
        else:
            ipc = IPCTransport(loop, address)
            await ipc.connect(trusted=trusted)
            transport = ipc
    except BaseException as exc:
        _cache[loop].pop((os.getpid(), address), None)
        if isinstance(exc, asyncio.CancelledError):
            fut.cancel()
        else:
            fut.set_exception(exc)
            fut.exception()
        raise
    fut.set_result(transport)


async def release_transport(transport: Transport) -> None:
    """A session is done with ``transport``; the last user closes it."""
    transport.users -= 1
    if transport.users <= 0:
        _drop(transport)
        await transport.aclose()


