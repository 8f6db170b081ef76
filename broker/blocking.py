"""A blocking connection to a broker, for a peer without an event loop.

It speaks what a worker speaks (``Hello`` first, then messages, frames from
``shared.framing``), one question and one answer at a time; ``receive`` is the one
frame-reading loop for such a peer. Every wait is bounded: the whole conversation must
fit in ``timeout`` seconds, so a broker that trickles bytes cannot hold the caller.
Used by ``http-broker stats``; the broker package never imports the worker's.
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

__all__ = ["BlockingPeer", "PeerError"]

_READ_SIZE = 1 << 16
_Reply = TypeVar("_Reply")


class PeerError(ConnectionError):
    """The broker is unreachable, closed the connection, or answered out of turn."""


class BlockingPeer:
    """One blocking Unix-socket connection to the broker at ``path``."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
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
        problem = untrusted_broker(path, peer_uid(self._sock, path), trusted_broker_uids())
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
        self._settimeout()
        try:
            self._sock.sendall(encode(msg))
        except OSError as exc:
            raise PeerError(f"lost the broker at {self.path}: {exc.strerror or exc}") from None

    def receive(self) -> Message:
        """The next message; an ``ErrorFrame``, the end of the stream, a bad frame or the
        deadline is a ``PeerError``."""
        while not self._pending:
            self._settimeout()
            try:
                data = self._sock.recv(_READ_SIZE)
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
            raise PeerError(f"the broker at {self.path} did not answer in time")
        self._sock.settimeout(left)
