"""The jar channel: this process's blocking connection for cookie-jar calls.

How this works. A jar's synchronous methods (``filter_cookies``, ``len``...) are short
blocking round trips to the broker, on one connection per process and broker address
(``channel``), apart from the asyncio connection of the requests: so they work from
inside a running event loop, and a thread waiting on one blocks nobody else. A lock makes
one call at a time; every call has its own deadline (``CALL_TIMEOUT``).

The broker ties a jar to the process that opened it (its pid), on any of its
connections. A ``BrokerJar`` costs nothing
to make: its token is drawn here, and the jar is opened in the broker by whichever
connection needs it first, the session's (``IPCTransport.open_jar``, pipelined before
the first request that names it) or this channel (the opens go out in front of the
call). The channel keeps the spec of every live token, so that on a new connection it
opens them all again before the call. A new connection is made in a forked child (whose
jars in the broker are then its own, empty for an unnamed jar, the group's for a named
one), and when a call finds the connection gone (the broker restarted): that call then
tries once more. A deadline passed or a broker that answered out of turn drops the
connection (a later reply could not be told from the next call's) and raises.

A jar object that is garbage-collected only queues its token (``BrokerJar.close``, safe
from a finalizer or any thread: it takes no lock); the next call, or the next request
on this process's connection to that broker (``take_closes``), sends the ``JarClose``.
The broker keeps a process's jars after its last connection closed, until the process
exits: a jar stays readable after its session (this channel connects then), as in
aiohttp. The connections are closed at exit.

Bounds: the calls are split so that every frame stays below ``MAX_FRAME`` (records in
pieces of about ``broker.jars.PIECE_SIZE``); the replies of one call are what the broker
sends (its own bounds); the close queue holds one token per collected jar until the
next call.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from http.cookies import BaseCookie, Morsel
from typing import TYPE_CHECKING, Any

import msgspec
from yarl import URL

from shared.framing import encode
from shared.messages import (
    MAX_JAR_RECORDS,
    CookieData,
    CookieRecord,
    JarClose,
    JarCookies,
    JarCount,
    JarData,
    JarDelete,
    JarDone,
    JarDump,
    JarFailed,
    JarFilter,
    JarLoad,
    JarOpen,
    JarUpdate,
    Message,
)
from shared.specs import JarSpec

from .exceptions import BrokerConnectionError, BrokerProtocolError

if TYPE_CHECKING:  # the channel's socket and the jar table's rules: imported by the first call
    from broker.blocking import BlockingPeer

__all__ = ["BrokerJar", "JarChannel", "channel", "CALL_TIMEOUT", "take_closes"]

log = logging.getLogger("worker_client.jar_channel")

CALL_TIMEOUT = 10.0
_encode_record = msgspec.msgpack.Encoder().encode


class JarChannel:
    """The jar calls of this process to the broker at ``path`` (of a ``trusted`` uid)."""

    def __init__(self, path: str, trusted: frozenset[int]) -> None:
        self.path = path
        self.trusted = trusted
        self.specs: dict[bytes, JarSpec] = {}  # this process's live jars, to (re)open
        self._unopened: set[bytes] = set()  # not opened by this channel's connection yet
        self._closing: deque[bytes] = deque()  # collected jars, to close
        self._closed: deque[bytes] = deque()  # closed by a request connection: to forget
        self._lock = threading.Lock()
        self._peer: BlockingPeer | None = None
        self._pid = os.getpid()
        self._calls = itertools.count(1)

    def __repr__(self) -> str:
        state = "connected" if self._peer is not None else "not connected"
        return f"<JarChannel {self.path} {state}, {len(self.specs)} jars>"

    def add(self, token: bytes, spec: JarSpec) -> None:
        """A new jar: opened in front of the first call that needs it (no I/O here)."""
        with self._lock:
            self._forget_closed()  # a process that makes jars and never calls forgets here
            self.specs[token] = spec
            self._unopened.add(token)

    def _forget_closed(self) -> None:
        while self._closed:
            token = self._closed.popleft()
            self.specs.pop(token, None)
            self._unopened.discard(token)

    def close_later(self, token: bytes) -> None:
        """Forget ``token`` at the next call (takes no lock: safe from a finalizer)."""
        global closing
        self._closing.append(token)
        closing = True

    def take_closes(self) -> list[bytes]:
        """The tokens queued for closing, for a request connection to send. No lock (the
        event loop must not wait on a call in another thread): each token is popped
        once, by whoever pops it, and forgotten by the next call, under the lock."""
        taken = []
        while self._closing:
            try:
                taken.append(self._closing.popleft())
            except IndexError:
                break
        self._closed.extend(taken)
        return taken

    def call(self, msgs: list[Any]) -> list[list[Message]]:
        """Send the calls ``msgs`` (numbered here) at once; each one's replies. A
        ``JarFailed`` raises (after every reply was read): ``ValueError`` for bad data,
        else ``RuntimeError``; a lost broker ``BrokerConnectionError``."""
        with self._lock:
            return self._run(msgs)

    def close(self) -> None:
        peer, self._peer = self._peer, None
        if peer is not None:
            peer.close()

    # -- under the lock -----------------------------------------------------------------

    def _run(self, msgs: list[Any]) -> list[list[Message]]:
        from broker.blocking import PeerError, PeerTimeout

        if self._pid != os.getpid():
            self._forked()
        closes = [JarClose(token) for token in self.take_closes()]
        self._forget_closed()
        opens = [JarOpen(0, t, self.specs[t]) for t in self._unopened if t in self.specs]
        numbered = [msgspec.structs.replace(m, call=next(self._calls)) for m in [*opens, *msgs]]
        try:
            frames = b"".join(encode(m) for m in [*closes, *numbered])
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"cookie data that cannot be sent: {exc}") from None
        fresh = self._peer is None
        for attempt in (1, 2):
            try:
                peer = self._connected()
                replies = self._exchange(peer, frames, numbered)
                break
            except PeerError as exc:
                self.close()
                if isinstance(exc, PeerTimeout) or fresh or attempt == 2:
                    raise BrokerConnectionError(str(exc)) from None
                fresh = True  # the connection was gone: once more, on a new one
        return self._answers(opens, msgs, replies)

    def _answers(
        self, opens: list[JarOpen], msgs: list[Any], replies: list[list[Message]]
    ) -> list[list[Message]]:
        """The replies of ``msgs``, after the opens sent in front of them. An open
        refused for a cap is tried again in front of the next call; one refused as
        invalid never will be. The caller hears of the refused opens of its own jars
        only: another jar's refusal is not its call's failure."""
        mine = {getattr(m, "jar", None) for m in msgs}
        failure: JarFailed | None = None
        for open_, reply in zip(opens, replies[: len(opens)], strict=True):
            answer = reply[-1]
            if not isinstance(answer, JarFailed):
                self._unopened.discard(open_.jar)
                continue
            if answer.invalid:
                self._unopened.discard(open_.jar)
                self.specs.pop(open_.jar, None)
            if open_.jar in mine:
                failure = failure or answer
            else:
                log.warning("could not open a cookie jar: %s", answer.message)
        for reply in replies[len(opens):]:
            if failure is None and isinstance(reply[-1], JarFailed):
                failure = reply[-1]
        if failure is not None:
            raise (ValueError if failure.invalid else RuntimeError)(failure.message)
        return replies[len(opens):]

    def _forked(self) -> None:
        """This is a forked child: the parent's connection is not ours to use."""
        peer, self._peer = self._peer, None
        if peer is not None:
            peer.close()  # our copy of the descriptor only; the parent's lives on
        self._pid = os.getpid()

    def _connected(self) -> BlockingPeer:
        from broker.blocking import BlockingPeer

        if self._peer is not None:
            return self._peer
        peer = BlockingPeer(self.path, CALL_TIMEOUT, self.trusted)
        try:
            peer.handshake()
            opens = [
                JarOpen(next(self._calls), t, s)
                for t, s in self.specs.items()
                if t not in self._unopened  # those go in front of the call
            ]
            if opens:
                replies = self._exchange(peer, b"".join(map(encode, opens)), opens)
                for open_, reply in zip(opens, replies, strict=True):
                    answer = reply[-1]
                    if isinstance(answer, JarFailed):
                        log.warning("could not reopen a cookie jar: %s", answer.message)
                        if answer.invalid:
                            self.specs.pop(open_.jar, None)
                        else:
                            self._unopened.add(open_.jar)  # tried again before a call
        except BaseException:
            peer.close()
            raise
        self._peer = peer
        return peer

    def _exchange(self, peer: BlockingPeer, frames: bytes, calls: list[Any]) -> list[list[Message]]:
        peer.deadline_in(CALL_TIMEOUT)
        peer.send_frames(frames)
        return [list(self._replies(peer, msg)) for msg in calls]

    def _replies(self, peer: BlockingPeer, msg: Any) -> Iterator[Message]:
        while True:
            reply = peer.receive()
            if getattr(reply, "call", None) != msg.call:
                self.close()
                raise BrokerProtocolError(
                    f"the broker at {self.path} answered {type(reply).__name__} "
                    f"to {type(msg).__name__}"
                )
            yield reply
            if not (isinstance(reply, JarData) and reply.more):
                return


_channels: dict[tuple[str, frozenset[int]], JarChannel] = {}
_channels_lock = threading.Lock()


def channel(path: str, trusted: frozenset[int]) -> JarChannel:
    """This process's channel to the broker at ``path``."""
    key = (path, trusted)
    with _channels_lock:
        found = _channels.get(key)
        if found is None:
            found = _channels[key] = JarChannel(path, trusted)
        return found


closing = False
"""Whether any jar of this process waits to be closed: what a request checks, cheaply."""


def take_closes(path: str) -> list[bytes]:
    """The queued closes of jars in the broker at ``path`` (see ``JarChannel.take_closes``)."""
    global closing
    taken: list[bytes] = []
    channels = list(_channels.items())
    for (where, _), ch in channels:
        if where == path and ch._closing:
            taken.extend(ch.take_closes())
    closing = any(ch._closing for _, ch in channels)
    return taken


def _after_fork() -> None:
    global _channels_lock, closing
    _channels_lock = threading.Lock()  # another thread may have held it at the fork
    for ch in _channels.values():
        ch._lock = threading.Lock()
        ch._forked()
        # The parent's jars are the parent's: the child's jar objects open new tokens.
        ch.specs.clear()
        ch._unopened.clear()
        ch._closing.clear()
        ch._closed.clear()
    closing = False


def _close_all() -> None:
    for ch in list(_channels.values()):
        ch.close()


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_close_all)


# -- the backend of a CookieJar in a process with a broker ------------------------------------


def _record(morsel: Morsel[str]) -> CookieRecord:
    record: CookieRecord = {
        "key": morsel.key, "value": morsel.value, "coded_value": morsel.coded_value
    }
    for attr, value in morsel.items():
        if value:
            record[attr] = value if isinstance(value, (str, bool)) else str(value)
    return record


def _pieces(items: Iterable[Any], size_of: Any) -> Iterator[list[Any]]:
    """``items`` in pieces of at most ``PIECE_SIZE`` bytes and ``MAX_JAR_RECORDS`` items."""
    from broker.jars import PIECE_SIZE

    piece: list[Any] = []
    size = 0
    for item in items:
        length = size_of(item)
        if length > PIECE_SIZE:
            raise ValueError(f"a cookie of {length} bytes is too big to store")
        if piece and (size + length > PIECE_SIZE or len(piece) >= MAX_JAR_RECORDS):
            yield piece
            piece, size = [], 0
        piece.append(item)
        size += length
    if piece:
        yield piece


class BrokerJar:
    """The broker's side of a ``CookieJar``: one jar in the broker, named by ``token``."""

    __slots__ = ("token", "spec", "_channel", "__weakref__")

    def __init__(self, path: str, trusted: frozenset[int], spec: JarSpec) -> None:
        import secrets

        self.token = secrets.token_bytes(16)
        self.spec = spec
        self._channel = channel(path, trusted)
        self._channel.add(self.token, spec)  # opened by the first call or request

    def __repr__(self) -> str:
        return f"<BrokerJar {self.token.hex()} {self.spec}>"

    def update(self, cookies: list[tuple[str, Morsel[str]]], url: URL) -> None:
        """Store ``cookies`` as if a response from ``url`` set them."""
        records = []
        for name, morsel in cookies:
            if not isinstance(name, str):
                raise ValueError(f"a cookie name must be text, not {type(name).__name__}")
            if isinstance(morsel.key, str) and isinstance(morsel.value, str):
                records.append((name, _record(morsel)))  # else an empty Morsel: nothing
        target = str(url)
        calls = [
            JarUpdate(0, self.token, target, piece)
            for piece in _pieces(records, lambda r: len(_encode_record(r)))
        ]
        if calls:
            self._channel.call(calls)

    def filter(self, url: URL) -> BaseCookie[str]:
        """The cookies to send to ``url``."""
        from broker.cookie_store import new_morsel

        (reply,) = self._channel.call([JarFilter(0, self.token, str(url))])[0]
        assert isinstance(reply, JarCookies)
        out: BaseCookie[str] = BaseCookie()
        for name, value, coded in reply.cookies:
            morsel = new_morsel(name, value, coded)
            if morsel is not None:
                dict.__setitem__(out, name, morsel)
        return out

    def count(self) -> int:
        (reply,) = self._channel.call([JarCount(0, self.token)])[0]
        assert isinstance(reply, JarDone)
        return reply.count

    def dump(self, expiry: bool = False) -> dict[str, dict[str, dict[str, str | bool | float]]]:
        """The jar's contents in aiohttp's cookie file layout (see ``JarDump.expiry``)."""
        data: CookieData = {}
        for reply in self._channel.call([JarDump(0, self.token, expiry)])[0]:
            assert isinstance(reply, JarData)
            for compound, records in reply.data.items():
                data.setdefault(compound, {}).update(records)
        return data

    def load(self, data: dict[str, Any]) -> None:
        """Replace the contents with ``dump()``'s data; ``ValueError`` changes nothing."""
        from broker.jars import split_cookie_data

        checked = msgspec.convert(data, CookieData)  # a ValidationError is a ValueError
        pieces = split_cookie_data(checked)
        last = len(pieces) - 1
        self._channel.call(
            [
                JarLoad(0, self.token, piece, last=i == last, first=i == 0)
                for i, piece in enumerate(pieces)
            ]
        )

    def delete(self, keys: list[tuple[str, str, str]] | None) -> None:
        """Remove the cookies named by (domain, path, name), or all of them (None)."""
        if keys is None:
            self._channel.call([JarDelete(0, self.token)])
            return
        pieces = _pieces(keys, lambda key: len(_encode_record(key)))
        calls = [JarDelete(0, self.token, piece) for piece in pieces]
        if calls:
            self._channel.call(calls)

    def close(self) -> None:
        """Let the broker forget this jar, at the channel's next call (any thread)."""
        self._channel.close_later(self.token)

