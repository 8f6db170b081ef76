"""A blocking connection to a broker, for a peer without an event loop.

It speaks what a worker speaks (``Hello`` first, then messages, frames from
``shared.framing``), one question and one answer at a time; ``receive`` is the one
frame-reading loop for such a peer. Every wait is bounded: the conversation must fit in
its deadline, ``timeout`` seconds from the start unless ``deadline_in`` sets another (a
long-lived peer sets one per call), so a broker that trickles bytes cannot hold the
caller. Used by ``http-broker stats`` and the worker's jar channel; the broker package
never imports the worker's.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from types import TracebackType
from typing import TypeVar

from shared.framing import FrameError, FrameReader, encode
from shared.messages import PROTOCOL_VERSION, ErrorFrame, Hello, Message, Welcome

from .peercred import peer_uid, trusted_broker_uids, untrusted_broker

__all__ = ["BlockingPeer", "PeerError", "PeerTimeout"]

_READ_SIZE = 1 << 16
_Reply = TypeVar("_Reply")


class PeerError(ConnectionError):
    """The broker is unreachable, closed the connection, or answered out of turn."""


class PeerTimeout(PeerError):
    """The broker did not answer before the deadline."""


class BlockingPeer:
    """One blocking Unix-socket connection to the broker at ``path``."""

    def __init__(
        self, path: str, timeout: float = 10.0, trusted: frozenset[int] | None = None
    ) -> None:
        """``trusted``: the broker uids to talk to (default ``trusted_broker_uids()``)."""
        self.path = path
        self._deadline = time.monotonic() + timeout
        self._reader = FrameReader()
        self._pending: deque[Message] = deque()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise PeerError(
                f"cannot reach the broker at {path}: {exc.strerror or exc}"
            ) from None
        if trusted is None:
            trusted = trusted_broker_uids()
        problem = untrusted_broker(path, peer_uid(self._sock, path), trusted)
        if problem is not None:  # checked before a byte is sent, as a worker checks
            self._sock.close()
            raise PeerError(problem)

    def __enter__(self) -> BlockingPeer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def deadline_in(self, timeout: float) -> None:
        """What follows must be done within ``timeout`` seconds from now."""
        self._deadline = time.monotonic() + timeout

    def handshake(self) -> Welcome:
        """Say Hello; the broker's Welcome."""
        welcome = self.ask(Hello(PROTOCOL_VERSION, os.getpid()), Welcome)
        if welcome.version != PROTOCOL_VERSION:
            raise PeerError(
                f"the broker at {self.path} speaks protocol {welcome.version}, "
                f"this process {PROTOCOL_VERSION}"
            )
        return welcome

    def ask(self, msg: Message, reply: type[_Reply]) -> _Reply:
        """Send ``msg``; the next message, which must be a ``reply``."""
        self.send(msg)
        got = self.receive()
        if not isinstance(got, reply):
            raise PeerError(
                f"the broker at {self.path} sent {type(got).__name__} "
                f"where {reply.__name__} was due"
            )
        return got

    def send(self, msg: Message) -> None:
        self.send_frames(encode(msg))

    def send_frames(self, frames: bytes) -> None:
        """Send encoded frames (several messages in one write)."""
        self._settimeout()
        try:
            self._sock.sendall(frames, getattr(socket, "MSG_NOSIGNAL", 0))  # EPIPE, not SIGPIPE
        except TimeoutError:
            raise PeerTimeout(f"the broker at {self.path} did not take frames in time") from None
        except OSError as exc:
            raise PeerError(f"lost the broker at {self.path}: {exc.strerror or exc}") from None

    def receive(self) -> Message:
        """The next message; an ``ErrorFrame``, the end of the stream, a bad frame or the
        deadline is a ``PeerError``."""
        while not self._pending:
            self._settimeout()
            try:
                data = self._sock.recv(_READ_SIZE)
            except TimeoutError:
                raise PeerTimeout(f"the broker at {self.path} did not answer in time") from None
            except OSError as exc:
                raise PeerError(
                    f"lost the broker at {self.path}: {exc.strerror or exc}"
                ) from None
            if not data:
                raise PeerError(f"the broker at {self.path} closed the connection")
            try:
                self._pending.extend(self._reader.feed(data))
            except FrameError as exc:
                raise PeerError(f"the broker at {self.path} sent a bad frame: {exc}") from None
        msg = self._pending.popleft()
        if isinstance(msg, ErrorFrame):
            raise PeerError(f"the broker closed the connection: {msg.message}")
        return msg

    def _settimeout(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise PeerTimeout(f"the broker at {self.path} did not answer in time")
        self._sock.settimeout(left)
