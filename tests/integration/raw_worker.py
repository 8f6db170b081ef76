"""A worker's side of the broker socket, spoken by hand: for tests that send what a real
worker never would (bad frames, floods, wrong orders) and read every frame back.

A small response comes as one ``Head`` frame carrying its body and its end
(``shared.messages``); ``next`` gives it as the ``Head``, ``Data`` and ``End`` it stands
for (what most tests look at: a stream's events), unless the worker was made with
``split=False`` (tests of the frames themselves)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from msgspec.structs import replace

from shared.arena import Arena
from shared.framing import FrameReader, encode
from shared.messages import PROTOCOL_VERSION, Data, End, Failure, Head, Hello, Message, Welcome


class RawWorker:
    """A worker process's side of the socket, spoken by hand."""

    opened: list[RawWorker] = []

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened.append(self)
        self.reader = reader
        self.writer = writer
        self._frames = FrameReader()
        self._pending: list[Any] = []
        self.welcome: Welcome | None = None
        self.down: Arena | None = None  # with shm=True, the arenas the broker gave
        self.up: Arena | None = None
        self.split = True

    @classmethod
    async def connect(
        cls,
        path: str,
        *,
        hello: bool = True,
        rcvbuf: int | None = None,
        shm: bool = False,
        split: bool = True,
    ) -> RawWorker:
        """``shm``: ask for shared memory (a blocking handshake on the bare socket, which
        alone can receive the arenas' descriptors). ``split``: see the module's docstring."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(path)
        frames = FrameReader()
        msgs: list[Any] = []
        fds: list[int] = []
        if shm:
            sock.settimeout(10)
            sock.sendall(encode(Hello(PROTOCOL_VERSION, os.getpid(), shm=True)))
            while not msgs:
                data, got, _, _ = socket.recv_fds(sock, 1 << 16, 2)
                fds += got
                assert data, "the broker hung up during the handshake"
                msgs = frames.feed(data)
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        worker = cls(reader, writer)
        worker.split = split
        if shm:
            worker._frames = frames
            welcome = msgs.pop(0)
            assert isinstance(welcome, Welcome)
            worker.welcome = welcome
            worker._pending = msgs
            if welcome.slot_size:
                worker.down = Arena.attach(fds[0], welcome.slot_size, welcome.down_slots, False)
                worker.up = Arena.attach(fds[1], welcome.slot_size, welcome.up_slots, True)
            else:
                for fd in fds:
                    os.close(fd)
        elif hello:
            worker.send(Hello(PROTOCOL_VERSION, os.getpid()))
            assert isinstance(await worker.next(), Welcome)
        return worker

    def send(self, *msgs: Message) -> None:
        self.writer.write(b"".join(encode(m) for m in msgs))

    async def next(self) -> Any:
        """The next message; None once the broker closed the connection."""
        while not self._pending:
            data = await asyncio.wait_for(self.reader.read(1 << 16), 10)
            if not data:
                return None
            self._pending.extend(self._frames.feed(data))
        msg = self._pending.pop(0)
        if self.split and type(msg) is Head and msg.body is not None:
            events: list[Any] = [Data(msg.stream, msg.body)] if msg.body else []
            self._pending[:0] = [*events, End(msg.stream, msg.raw)]
            msg = replace(msg, body=None, raw=0)
        return msg

    async def until(self, done: Callable[[Any], bool]) -> list[Any]:
        """Messages up to the first for which ``done`` is true (included), or to EOF."""
        out = []
        while True:
            msg = await self.next()
            if msg is None:
                return out
            out.append(msg)
            if done(msg):
                return out

    async def until_end_of(self, stream: int) -> list[Any]:
        """Messages up to the End or Failure of ``stream`` (included; unsplit, a whole
        response's Head), or to EOF."""
        return await self.until(
            lambda m: getattr(m, "stream", None) == stream
            and (isinstance(m, End | Failure) or (type(m) is Head and m.body is not None))
        )

    def close(self) -> None:
        self.writer.close()
        for arena in (self.down, self.up):
            if arena is not None:
                arena.close()


@pytest.fixture
async def raw_workers() -> AsyncIterator[None]:
    """Closes every ``RawWorker`` a test opened."""
    yield
    while RawWorker.opened:
        RawWorker.opened.pop().close()
