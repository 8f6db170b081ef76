"""``SyncSession``'s blocking path through a broker: the wire protocol on a blocking
Unix socket, with no event loop and no thread hand-off.

Which requests: a ``SyncSession`` whose session talks to a broker and has no
middlewares, trace configs, proxy (nor ``trust_env``) or connector ``ssl=`` of its own,
with ``HTTP_BROKER_FAST_PATH`` not 0/no/off/false (read when the session is made), for
a call naming only ``WIRE_KEYS`` with a body that is bytes, str or a form dict (or
``json=``) of at most ``INLINE_MAX`` bytes and a bool ``raise_for_status``. Any other
call goes to the session's background loop (``worker_client.sync``), which is never
started by this path.

How this works. Each thread has its own connection per session (a ``threading.local``,
made on the thread's first request: connect, the broker's uid checked before a byte is
sent, ``Hello`` without shared memory, ``Welcome``). A request is one write (a
``JarOpen`` before the first request naming the session's jar on that connection, the
pool and timeout named by id as ``IPCTransport`` names them; a call the async fast path
would take is made from ``BrokerFastPath``'s cached plans, at most ``PLANS_MAX`` per
session) and the frames that answer it are read on the calling thread: a whole ``Head``
(the body in it), or a head followed by ``Data`` and ``End``. The response is a
``ClientResponse`` built on a ``StreamReader`` that this module feeds (``WireResponse``
wraps it as ``SyncResponse`` does, so every attribute, method and exception is the async
one's); its body is read from the socket only when ``read()``/``text()``/``json()`` or
``iter_content()`` asks for it (``Ack`` every ``STREAM_WINDOW // 4`` bytes, see below).
A ``Failure`` becomes the async session's exception; the request's total timeout is a
deadline on every wait of the request and its body, after which the stream is cancelled
and ``asyncio.TimeoutError`` raised, as a ``StreamHandle``'s deadline does
(``sock_read`` and the rest are the broker's, as for the async session). An interrupt
(``KeyboardInterrupt``) while waiting cancels the stream; one that lands between a
``recv`` and the frame reader has lost bytes of a frame, so that connection ends (what
waits on it fails, the thread's next request connects again). After a ``Cancel`` the
connection stays in use: the broker sends nothing new for the stream, and what was
already on its way is dropped by stream id.

Several responses of one thread may be open at once (streams multiplexed on its
connection, as on the async session's): the frames of a stream that arrive while the
thread waits for another wait in that stream's reader, acknowledged only as the caller
reads them, so the broker sends no more than its window (``STREAM_WINDOW``) ahead for
any of them; ``read()`` acknowledges as it receives (it takes the whole body). A
response may be read from another thread: the connection's lock keeps one reader on
its socket at a time.

The connection is lost when the broker goes away: the request or body read waiting on it
fails with ``BrokerConnectionError`` ("the broker went away"), and the thread's next
request connects again (a request whose write finds the connection closed, nothing of it
sent, goes on a new connection at once). ``SyncSession.close()`` shuts every thread's
connection down (a thread waiting on one gets ``ClientConnectionError("Connection
closed")``, as from the async session's close) and closes them; a thread that died
takes its connection with it (closed when its thread-local goes, unless a response of
it is still open). A forked child never
touches its parent's connections (it makes its own) and closes its copies of their
descriptors.

A write that finds the socket full reads what the broker sent meanwhile into the
connection's queue (the broker stops reading a connection whose replies it cannot write,
so a writer that did not read could wait for ever); the frames are delivered, in order,
by the next wait for a message.

Bounds: per connection, the frame reader's partial frame (under ``MAX_FRAME``) and the
frames received but not yet delivered (those of one ``recv``, ``_READ_SIZE`` bytes, or
while a write waits what the broker may send unacknowledged, its window per open
stream); per open response, the broker's window
of unread bytes (``STREAM_WINDOW``: ``iter_content`` and a response not being read),
or the whole body for ``read()`` (as the async ``read()``). Waits: the connect and
handshake ``CONNECT_TIMEOUT``, ``stats()`` ``CALL_TIMEOUT``, a request its total timeout
(none without one, as the async session).
"""

from __future__ import annotations

import asyncio
import math
import os
import select
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDictProxy

from broker.peercred import peer_uid
from shared.framing import MAX_FRAME, FrameError, FrameReader, encode
from shared.messages import (
    PROTOCOL_VERSION,
    STREAM_WINDOW,
    Ack,
    Cancel,
    Data,
    End,
    ErrorFrame,
    Failure,
    Head,
    Hello,
    JarClose,
    JarDone,
    JarFailed,
    JarOpen,
    Request,
    Stats,
    StatsRequest,
    TraceEvent,
    Welcome,
)

from . import jar_channel
from .cookies import request_cookies, request_jar
from .exceptions import (
    BrokerConnectionError,
    BrokerProtocolError,
    ClientConnectionError,
    RequestInfo,
    exception_from_failure,
)
from .fast_broker import BrokerFastPath
from .fast_rules import BODY_MAX, FAST_KEYS, PlanCache, forks
from .request_options import expects_continue
from .response import ClientResponse, StreamReader
from .session import _request_timeout, _warn_auth
from .sync import SyncResponse, _without_loop
from .transport import IPCTransport, _closed_error, check_broker_uid

if TYPE_CHECKING:
    from shared.specs import ClientTimeout

    from .session import ClientSession

__all__ = ["INLINE_MAX", "WIRE_KEYS", "WirePath", "WireResponse", "wire_path"]

WIRE_KEYS = frozenset((
    "params", "headers", "data", "json", "cookies", "allow_redirects", "max_redirects",
    "timeout", "raise_for_status", "auth", "read_until_eof", "auto_decompress",
    "skip_auto_headers", "max_line_size", "max_field_size", "max_headers", "read_bufsize",
))
"""The only keywords a call on this path may name."""
INLINE_MAX = 1 << 20  # a request body that fits one frame (IPCTransport's inline bound)
CONNECT_TIMEOUT = 10.0
# A dead broker is an EPIPE here, not a SIGPIPE that a host embedding Python may not
# ignore (the interpreter ignores it; mod_wsgi-like hosts need not).
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
CALL_TIMEOUT = 10.0
_READ_SIZE = 1 << 18
_ACK_BATCH = STREAM_WINDOW // 4
_BODY_TYPES = (type(None), bytes, bytearray, str, dict)
_TOTAL = "Timeout on request (total)"

_paths: weakref.WeakSet[WirePath] = weakref.WeakSet()


def _after_fork() -> None:
    for path in list(_paths):
        path._lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork)


def wire_path(session: ClientSession) -> WirePath | None:
    """The blocking path of ``session``'s ``SyncSession``: where the async session has
    its broker fast path (the same session options allow both), else None."""
    if not isinstance(session._fast, BrokerFastPath):
        return None
    return WirePath(session)


class _Gone(Exception):
    """The connection ended (its ``error`` says why to the caller)."""


class _Expired(Exception):
    """The request's deadline passed."""


class _Stream:
    """One request on a connection: its head, then its body fed into ``content``."""

    __slots__ = ("id", "conn", "head", "error", "content", "limit", "done", "deadline",
                 "unacked", "make_error", "__weakref__")

    def __init__(self, conn: _Conn, sid: int, deadline: float | None,
                 make_error: Callable[[Failure], BaseException], limit: int) -> None:
        self.id = sid
        self.conn = conn
        self.head: Head | None = None
        self.error: BaseException | None = None  # the request failed before its head
        self.content: StreamReader | None = None
        self.limit = limit
        self.done = False  # nothing more of it comes (ended, failed or cancelled)
        self.deadline = deadline
        self.unacked = 0
        self.make_error = make_error

    def fail(self, exc: BaseException) -> None:
        self.done = True
        if self.content is None:
            self.error = exc
        else:
            self.content.set_exception(exc)

    def consumed(self, size: int) -> None:
        """The reader handed ``size`` bytes out: acknowledge them (in batches)."""
        if not self.done:
            with self.conn:
                try:
                    self.conn._ack(self, size)
                except _Gone:  # the stream failed with it: its reader says so next
                    pass

    def released(self, complete: bool) -> None:
        """``ClientResponse``'s ``on_release``: a release before the end cancels."""
        if not complete and not self.done:
            self.conn.cancel(self, None)


class _Conn:
    """One thread's blocking connection to the broker (see the module docstring)."""

    # IPCTransport's: a request with its pool and timeout by id (opened first if new).
    _send_request = IPCTransport._send_request

    def __init__(self, path: str, trusted: frozenset[int]) -> None:
        self.path = path
        self.forks = forks[0]
        self.lock = threading.RLock()
        self.closed = False
        self.closing = False  # the session closes it: a waiter gets "Connection closed"
        self.reader = FrameReader()
        self.pending: deque[Any] = deque()
        self.streams: dict[int, _Stream] = {}  # open: their frames are awaited
        self.jars_open: set[bytes] = set()
        self._jar_opens: dict[int, bytes] = {}
        self._next_call = 1
        self._next = 1
        self._pool_ids: dict[bytes, int] = {}
        self._timeout_ids: dict[Any, int] = {}
        self._next_spec_id = 1
        self._stats: Stats | None = None
        self.unsent = False  # the connection was found gone before a byte of a write went
        # Between a recv and the frame reader: an exception (an interrupt) there drops
        # the bytes received, so nothing more can be read here.
        self.torn = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._connect(trusted)
        except BaseException:
            self.closed = True
            self.sock.close()
            raise

    def _connect(self, trusted: frozenset[int]) -> None:
        sock = self.sock
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(self.path)
        except OSError as exc:
            raise BrokerConnectionError(
                f"cannot reach the broker at {self.path}: {exc.strerror or exc}"
            ) from None
        check_broker_uid(self.path, peer_uid(sock, self.path), trusted)
        sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        deadline = time.monotonic() + CONNECT_TIMEOUT
        try:
            self._write(encode(Hello(PROTOCOL_VERSION, os.getpid(), False)), deadline)
            welcome = self._next_msg(deadline)
        except _Expired:
            raise BrokerConnectionError(
                f"the broker at {self.path} did not answer the handshake"
            ) from None
        except _Gone:
            raise self._error from None
        if type(welcome) is ErrorFrame:
            raise _closed_error(welcome)
        if type(welcome) is not Welcome or welcome.version != PROTOCOL_VERSION:
            raise BrokerProtocolError(f"the broker sent {welcome!r} instead of a Welcome")

    def __del__(self) -> None:
        sock = getattr(self, "sock", None)  # its thread ended, or close() let it go
        if sock is not None:
            sock.close()

    def __enter__(self) -> _Conn:
        self.lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
        # shut() found it in use: the last one on it closes it.
        if self.closing and not self.closed and self.lock.acquire(blocking=False):
            try:
                self._lose(None)
            finally:
                self.lock.release()

    # -- the socket ---------------------------------------------------------------------

    def _write(self, data: bytes, deadline: float | None) -> None:
        view = memoryview(data)
        sent = 0
        self.unsent = False
        try:
            while sent < len(view):
                try:
                    sent += self.sock.send(view[sent:], _NOSIGNAL)
                except BlockingIOError:
                    # The broker may be waiting for us to read before it reads again.
                    if self._wait(select.POLLOUT | select.POLLIN, deadline) & select.POLLIN:
                        self._take_in()
        except OSError as exc:
            self.unsent = not sent
            self._lose(exc)
            raise _Gone from None
        except BaseException:
            if sent:  # part of a frame went: nothing can follow it on this connection
                self._lose(None)
            raise

    def _wait(self, events: int, deadline: float | None) -> int:
        """Until the socket is ready for ``events`` (those it is ready for)."""
        if deadline is None:
            ms = -1
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Expired
            ms = math.ceil(left * 1000)
        if events != select.POLLIN:
            poll = select.poll()
            poll.register(self.sock.fileno(), events)
            ready = poll.poll(ms)
        else:
            ready = self._poll.poll(ms)
        if not ready and deadline is not None and deadline <= time.monotonic():
            raise _Expired
        return ready[0][1] if ready else 0

    def _take_in(self) -> None:
        """What the broker sent while a write waits, queued for ``_next_msg`` (an OSError
        ends the write as the socket's own would)."""
        self._check_torn()
        self.torn = True
        try:
            data = self.sock.recv(_READ_SIZE)
        except BlockingIOError:
            self.torn = False
            return
        if not data:
            raise ConnectionResetError("the broker closed the connection")
        self._feed(data)
        self.torn = False

    def _check_torn(self) -> None:
        if self.torn:
            self._lose(BrokerConnectionError(
                "a read from the broker was interrupted (bytes of a frame are lost); "
                "the next request connects again"
            ))
            raise _Gone

    def _feed(self, data: bytes) -> None:
        try:
            self.pending.extend(self.reader.feed(data))
        except FrameError as exc:
            self._lose(BrokerProtocolError(f"the broker sent a bad frame: {exc}"))
            raise _Gone from None
        except Exception as exc:  # RecursionError for a frame nested too deep
            self._lose(BrokerProtocolError(f"the broker sent an undecodable frame: {exc!r}"))
            raise _Gone from None

    def _next_msg(self, deadline: float | None, wait: bool = False) -> Any:
        """The next message from the broker; ``_Expired`` past ``deadline``, ``_Gone``
        when the connection ended. ``wait``: nothing can be there yet (a request was
        just sent), so wait before reading."""
        pending = self.pending
        if wait and not pending and not self.closed:
            self._wait(select.POLLIN, deadline)
        while not pending:
            if self.closed:
                raise _Gone
            self._check_torn()
            self.torn = True
            try:
                data = self.sock.recv(_READ_SIZE)
            except BlockingIOError:
                self.torn = False
                self._wait(select.POLLIN, deadline)
                continue
            except OSError as exc:
                self._lose(exc)
                raise _Gone from None
            if not data:
                self._lose(None)
                raise _Gone
            self._feed(data)
            self.torn = False
        return pending.popleft()

    @property
    def _error(self) -> BaseException:
        if self.closing:
            return ClientConnectionError("Connection closed")
        return BrokerConnectionError(
            f"the broker went away (lost the connection to {self.path}); "
            "the next request reconnects"
        )

    def _lose(self, why: BaseException | OSError | None) -> None:
        """The connection is over: its stream fails with why (or the usual words)."""
        if self.closed:
            return
        self.closed = True
        exc = why if isinstance(why, (BrokerProtocolError, BrokerConnectionError)) else self._error
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if not stream.done:
                stream.fail(exc)
        self.sock.close()

    def shut(self) -> None:
        """From ``close()`` (any thread): wake a waiter, which then closes the socket."""
        self.closing = True
        if self.forks != forks[0]:
            self.closed = True
            self.sock.close()  # this process's copy of the parent's descriptor
            return
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.lock.acquire(blocking=False):  # nobody is on it: close it now
            try:
                self._lose(None)
            finally:
                self.lock.release()

    def _send(self, *msgs: Any) -> None:
        """``msgs`` in one write (``IPCTransport._send``'s frame check)."""
        frames = []
        for msg in msgs:
            frame = encode(msg)
            if len(frame) > MAX_FRAME + 4:
                raise ValueError(
                    f"{type(msg).__name__} of {len(frame)} bytes is over the broker's frame "
                    f"cap of {MAX_FRAME} (headers or URL too large)"
                )
            frames.append(frame)
        self._write(frames[0] if len(frames) == 1 else b"".join(frames), None)

    def _new_spec_id(self) -> int:
        sid = self._next_spec_id
        self._next_spec_id += 1
        return sid

    # -- what arrives ---------------------------------------------------------------------

    def pump(
        self, deadline: float | None, eager: _Stream | None = None, wait: bool = False
    ) -> None:
        """Take one message and deliver it. ``eager``: its body bytes are acknowledged as
        they arrive (the caller takes them all), else as they are read."""
        msg = self._next_msg(deadline, wait)
        kind = type(msg)
        if kind is Data:
            stream = self.streams.get(msg.stream)
            if stream is not None and stream.content is not None:
                stream.content.feed_data(msg.data)
                if stream is eager:
                    stream.content._prepaid += len(msg.data)
                    self._ack(stream, len(msg.data))
        elif kind is Head:
            stream = self.streams.get(msg.stream)
            if stream is None:
                return  # a cancelled stream's
            if stream.head is not None:
                self._lose(BrokerProtocolError(f"stream {stream.id}: a second Head"))
                raise _Gone
            stream.head = msg
            if msg.body is not None:
                stream.done = True
                del self.streams[stream.id]
            else:
                stream.content = StreamReader(stream.consumed, limit=stream.limit)
        elif kind is End:
            stream = self.streams.pop(msg.stream, None)
            if stream is not None and stream.content is not None:
                stream.done = True
                if msg.raw:
                    stream.content.total_compressed_bytes = msg.raw
                stream.content.feed_eof()
        elif kind is Failure:
            stream = self.streams.pop(msg.stream, None)
            if stream is not None:
                stream.fail(stream.make_error(msg))
        elif kind is JarDone or kind is JarFailed:
            token = self._jar_opens.pop(msg.call, None)
            if kind is JarFailed and token is not None:
                self.jars_open.discard(token)  # the next request opens it again
        elif kind is Stats:
            self._stats = msg
        elif kind is ErrorFrame:
            self._lose(_closed_error(msg))
            raise _Gone
        elif kind is not TraceEvent and kind is not Ack:
            self._lose(BrokerProtocolError(f"the broker sent an unexpected {kind.__name__}"))
            raise _Gone

    def _ack(self, stream: _Stream, size: int) -> None:
        stream.unacked += size
        if stream.unacked >= _ACK_BATCH and not stream.done and not self.closed:
            self._send(Ack(stream.id, stream.unacked))
            stream.unacked = 0

    def cancel(self, stream: _Stream, exc: BaseException | None) -> None:
        """Give ``stream`` up: the broker is told, its late frames are dropped."""
        with self:
            if stream.done:
                return
            if exc is not None:
                stream.fail(exc)
            stream.done = True
            if self.streams.pop(stream.id, None) is not None and not self.closed:
                try:
                    self._send(Cancel(stream.id))
                except _Gone:
                    pass

    # -- requests ---------------------------------------------------------------------------

    def open(self, req: Request, jar: tuple[bytes, Any, Any], stream: _Stream) -> None:
        """Send ``req`` (its jar opened first on this connection)."""
        if jar_channel.closing:
            tokens = jar_channel.take_closes(self.path)
            if tokens:
                self._send(*(JarClose(t) for t in tokens))
                self.jars_open.difference_update(tokens)
        token = jar[0]
        if token and token not in self.jars_open:
            call = self._next_call
            self._next_call += 1
            self._send(JarOpen(call, token, jar[2]))
            self._jar_opens[call] = token
            self.jars_open.add(token)
        self.streams[stream.id] = stream
        self._send_request(req)  # type: ignore[misc]

    def head(self, stream: _Stream) -> Head:
        """Wait for the stream's head; its failure raises."""
        try:
            wait = True
            while stream.head is None and stream.error is None:
                self.pump(stream.deadline, None, wait)
                wait = False
        except _Expired:
            self.cancel(stream, asyncio.TimeoutError(_TOTAL))
        except _Gone:
            pass
        except BaseException:
            self.cancel(stream, None)  # an interrupt: the broker stops it
            raise
        if stream.head is None:
            exc = stream.error or self._error
            stream.error = None  # its traceback would hold this frame
            raise exc
        return stream.head

    def fill(self, stream: _Stream, one: bool = False) -> None:
        """Receive the stream's body to its end (``one``: one more message)."""
        with self:
            content = stream.content
            if not one and content is not None and content._size > content._prepaid:
                # What waits in the reader: acknowledged now, as the rest will be.
                owed = content._size - content._prepaid
                content._prepaid = content._size
                self._ack(stream, owed)
            try:
                while not stream.done:
                    self.pump(stream.deadline, None if one else stream)
                    if one:
                        return
            except _Expired:
                self.cancel(stream, asyncio.TimeoutError(_TOTAL))
            except _Gone:
                if not stream.done:
                    stream.fail(self._error)
            except BaseException:
                self.cancel(stream, ClientConnectionError("Connection closed"))
                raise

    def stats(self) -> Stats:
        with self:
            self._stats = None
            deadline = time.monotonic() + CALL_TIMEOUT
            try:
                self._send(StatsRequest())
                while self._stats is None:
                    self.pump(deadline)
            except _Expired:
                self._lose(None)  # a late answer could not be told from the next one
                raise BrokerConnectionError(
                    f"the broker at {self.path} did not answer in time"
                ) from None
            except _Gone:
                raise self._error from None
            stats, self._stats = self._stats, None
            return stats


class WirePath(PlanCache[Any]):
    """The blocking path of one ``SyncSession`` (see the module docstring). A call the
    async fast path would take (``FAST_KEYS``) is made from a cached plan, as there
    (``BrokerFastPath``'s plans and ``Request``)."""

    keys = WIRE_KEYS
    _make_plan = BrokerFastPath._make_plan

    def __init__(self, session: ClientSession) -> None:
        assert session._broker is not None
        super().__init__(session)
        self.path: str = session._broker
        self._local = threading.local()
        self._lock = threading.Lock()
        # Every live thread's, under the lock; a finished thread's goes with its locals.
        self._conns: weakref.WeakSet[_Conn] = weakref.WeakSet()
        self._closed = False
        _paths.add(self)

    def takes(self, kwargs: Mapping[str, Any]) -> bool:
        """Whether a call with these keywords may go this way."""
        if not kwargs.keys() <= WIRE_KEYS:
            return False
        if type(kwargs.get("data")) not in _BODY_TYPES:
            return False
        rfs = kwargs.get("raise_for_status")
        if rfs is None:
            rfs = self._session._raise_for_status
        return type(rfs) is bool and not self._session._trace_configs

    # -- connections ------------------------------------------------------------------

    def _conn(self) -> _Conn:
        conn: _Conn | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed and not conn.torn and conn.forks == forks[0]:
            return conn
        if conn is not None:
            self._forget(conn)
        if self._closed:
            raise RuntimeError("Session is closed")
        conn = _Conn(self.path, self._session._broker_uids)
        with self._lock:
            if self._closed:
                conn._lose(None)
                raise RuntimeError("Session is closed")
            self._conns.add(conn)
        self._local.conn = conn
        return conn

    def _forget(self, conn: _Conn) -> None:
        self._local.conn = None
        if conn.forks != forks[0]:
            conn.shut()  # the parent's: only this process's copy of its descriptor closes
        elif conn.torn:
            with conn:
                try:
                    conn._check_torn()
                except _Gone:
                    pass
        with self._lock:
            self._conns.discard(conn)

    def close(self) -> bool:
        """Shut and close every thread's connection; whether there were any."""
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns), weakref.WeakSet()
        for conn in conns:
            conn.shut()
        return bool(conns)

    def abandon(self) -> bool:
        """``close()`` for a finalizer: takes no lock."""
        self._closed = True
        conns = list(self._conns)
        for conn in conns:
            conn.shut()
        return bool(conns)

    def stats(self) -> Stats:
        if self._closed:
            raise RuntimeError("Session is closed")
        return self._conn().stats()

    # -- requests ---------------------------------------------------------------------------

    def request(self, method: str, url: Any, kw: Mapping[str, Any]) -> WireResponse | None:
        """The call's response, or None: not one for this path (nothing was sent)."""
        s = self._session
        if self._closed or s.closed:
            raise RuntimeError("Session is closed")
        jar = s._jar_ref
        if jar is None or self._forks != forks[0]:
            # A forked child names its own jar, as the async session does after a fork.
            self._forks = forks[0]
            jar = s._jar_ref = request_jar(s._cookie_jar)
        if kw.keys() <= FAST_KEYS:  # the async fast path's calls: a cached plan
            data = kw.get("data")
            if data is None or (type(data) is bytes and len(data) <= BODY_MAX):
                plan = self._plan(method, url, kw.get("headers"), kw.get("params"), data)
                if plan is not None:
                    tmo = s._timeout if "timeout" not in kw else _request_timeout(kw["timeout"])
                    redirects = kw.get("allow_redirects", True)

                    def build(sid: int) -> Request:
                        return BrokerFastPath._build(
                            self, plan, sid, data, tmo, redirects, jar[0]  # type: ignore[arg-type]
                        )

                    return self._exchange(
                        plan.info, plan.url_str, s._read_bufsize, tmo, jar, build,
                        kw.get("raise_for_status"),
                    )
        return self._general(method, url, kw, jar)

    def _general(
        self, method: str, url: Any, kw: Mapping[str, Any], jar: tuple[bytes, Any, Any]
    ) -> WireResponse | None:
        """A call with no plan: made as ``ClientSession._request`` makes it."""
        s = self._session
        auth = kw.get("auth")
        if auth is not None:
            _warn_auth(auth, None, 6)
        timeout = s._timeout if "timeout" not in kw else _request_timeout(kw["timeout"])
        _, prepared, _ = s._prepare(
            method, url, kw.get("params"), kw.get("data"), kw.get("headers"), kw.get("json"),
            kw.get("skip_auto_headers"), auth,
        )
        body = prepared.body
        if (
            prepared.stream is not None
            or prepared.payload is not None
            or (body is not None and len(body) > INLINE_MAX)
        ):
            return None
        expect100 = expects_continue(prepared.headers, False)
        limits = s._limits(
            kw.get("max_line_size"), kw.get("max_field_size"), kw.get("max_headers"),
            kw.get("read_bufsize"),
        )
        cookies = kw.get("cookies")
        own_cookies = (
            request_cookies(cookies, s._cookie_jar, prepared.url) if cookies is not None else []
        )
        info = RequestInfo(
            prepared.url, prepared.method, CIMultiDictProxy(prepared.headers),
            prepared.real_url or prepared.url,
        )
        max_redirects = kw.get("max_redirects")
        auto_decompress = kw.get("auto_decompress")
        url_str = str(prepared.url)

        def build(sid: int) -> Request:
            return Request(
                stream=sid,
                method=prepared.method,
                url=url_str,
                headers=list(prepared.headers.items()),
                body=body,
                pool=s._pool,
                timeout=timeout,
                allow_redirects=kw.get("allow_redirects", True),
                max_redirects=s._max_redirects if max_redirects is None else max_redirects,
                auto_decompress=s._auto_decompress if auto_decompress is None else auto_decompress,
                read_until_eof=kw.get("read_until_eof", True),
                skip_host=prepared.skip_host,
                jar=jar[0],
                cookies=own_cookies,
                expect100=expect100,
                max_line_size=limits[0],
                max_field_size=limits[1],
                max_headers=limits[2],
                http10=s._http10,
                requote_redirect_url=s._requote_redirect_url,
            )

        return self._exchange(
            info, url_str, limits[3], timeout, jar, build, kw.get("raise_for_status")
        )

    def _exchange(
        self,
        info: RequestInfo,
        url_str: str,
        limit: int,
        timeout: ClientTimeout,
        jar: tuple[bytes, Any, Any],
        build: Callable[[int], Request],
        rfs: Any,
    ) -> WireResponse:
        """Send the request ``build`` makes on this thread's connection; its response."""

        def make_error(failure: Failure) -> BaseException:
            return exception_from_failure(failure, info, self._history(failure.history, info))

        deadline = None
        total = timeout.total
        if total:
            deadline = time.monotonic() + total
            if total >= timeout.ceil_threshold:  # as Deadlines: on a whole second
                deadline = float(math.ceil(deadline))
        conn = self._conn()
        stream = _Stream(conn, 0, deadline, make_error, limit)
        try:  # until the caller has the response, an exception (an interrupt) cancels
            with conn:
                if not self._open(conn, build, jar, stream):
                    # The broker went away since: the request went nowhere.
                    conn = self._conn()
                    stream = _Stream(conn, 0, deadline, make_error, limit)
                    with conn:
                        if not self._open(conn, build, jar, stream):
                            raise conn._error
                head = conn.head(stream)
            with self._lock:
                self.requests += 1
            resp = self._response(stream, head, info, url_str)
            if rfs is None:
                rfs = self._session._raise_for_status
            if rfs and not resp.ok:
                try:
                    resp.raise_for_status()
                finally:
                    resp.release()
            return WireResponse(_NO_LOOP, resp, stream if head.body is None else None)
        except BaseException:
            stream.conn.cancel(stream, None)
            raise

    @staticmethod
    def _open(
        conn: _Conn, build: Callable[[int], Request], jar: tuple[bytes, Any, Any],
        stream: _Stream,
    ) -> bool:
        """Send the request as ``stream`` (given its id) on ``conn``; False if the
        connection was found closed before any of it went (the caller sends it on a
        new one)."""
        sid = stream.id = conn._next
        conn._next = sid + 2
        try:
            conn.open(build(sid), jar, stream)
        except _Gone:
            conn.streams.pop(sid, None)
            if conn.unsent and not conn.closing:
                return False
            raise conn._error from None
        return True

    def _history(self, items: Any, info: RequestInfo) -> tuple[ClientResponse, ...]:
        """``ClientSession._history_response``'s responses, made without a loop."""
        info_for = self._session._info_for
        return tuple(
            ClientResponse.from_head(
                item, request_info=info_for(item, info), content=None, history=(),
                on_release=None, loop=None,  # type: ignore[arg-type]
            )
            for item in items
        )

    def _response(
        self, stream: _Stream, head: Head, info: RequestInfo, url_str: str
    ) -> ClientResponse:
        s = self._session
        if head.body is not None:
            content = StreamReader.whole(head.body, stream.limit)
            if head.raw:
                content.total_compressed_bytes = head.raw
            on_release = None
        else:
            assert stream.content is not None
            content = stream.content
            on_release = stream.released
        resp = ClientResponse.from_head(
            head,
            request_info=s._info_for(head, info),
            content=content,
            history=self._history(head.history, info),
            on_release=on_release,
            loop=None,  # type: ignore[arg-type]
            request_url=url_str,
        )
        if s._resolve_charset is not None:
            resp._resolve_charset = s._resolve_charset
        return resp


class _NoLoop:
    """A wire response's owner: its coroutines run here, their waits done beforehand."""

    __slots__ = ()
    _run_response = staticmethod(_without_loop)


_NO_LOOP: Any = _NoLoop()


class WireResponse(SyncResponse):
    """A ``SyncResponse`` whose body is read from its thread's connection as asked."""

    __slots__ = ("_stream",)

    def __init__(self, owner: Any, resp: ClientResponse, stream: _Stream | None) -> None:
        super().__init__(owner, resp)
        self._stream = stream

    def _fill(self) -> None:
        stream = self._stream
        if stream is not None and not stream.done and self._resp._body is None:
            stream.conn.fill(stream)

    def read(self) -> bytes:
        self._fill()
        return super().read()

    def text(self, encoding: str | None = None, errors: str = "strict") -> str:
        self._fill()
        return super().text(encoding, errors)

    def json(self, **kwargs: Any) -> Any:
        self._fill()
        return super().json(**kwargs)

    def _chunks(self, chunk_size: int) -> Iterator[bytes]:
        resp = self._resp
        stream = self._stream
        if resp._body is not None or stream is None:
            yield from super()._chunks(chunk_size)
            return
        content = resp.content
        conn = stream.conn
        while True:
            # Under the connection's lock: the reader is fed by whichever thread pumps
            # this connection, and its counts make the Acks the broker checks.
            with conn:
                if not (content._buffer or content._eof or content._exception is not None):
                    if stream.done:  # cancelled: the reader raises
                        content.set_exception(ClientConnectionError("Connection closed"))
                    else:
                        conn.fill(stream, one=True)
                    continue
                chunk = _without_loop(lambda: content.read(chunk_size))
            if not chunk:
                return
            yield chunk
