"""An upgraded connection (a WebSocket) as a byte tunnel between a worker and an origin.

After a 101 answers an upgrade (``Request.upgrade``), the engine hands the connection
to a ``ResponseBody`` (``broker.body``: the origin's bytes go to the worker as an
until-EOF body, with the stream's credit, the upstream socket paused while the window is
full) and to a ``Tunnel``, which pumps the worker's bytes the other way: one task that
takes ``stream.request_body()`` piece by piece, writes each as it is
(``HTTP1Connection.send_raw``, which waits while the socket is over its high-water
mark) and then acks it (``stream.body_written``). The worker's End ends the pump and
closes the connection once what it sent is written (the worker let its WebSocket go,
as aiohttp's ``transport.close()`` does); the tunnel ends with the body, whatever ends
that (the origin closed, a failure, the worker cancelled or died): ``ResponseBody``
calls ``Tunnel.close`` before the connection goes back to the pool, which closes it (a
tunnel is never reused). ``close`` stops the pump
and, if the worker's bytes stand between two frames and held no CLOSE frame, writes a
masked CLOSE with code 1001 (going away) first, so the origin learns why.

``FrameTracker`` follows the frame headers of the worker's bytes for that. It keeps at
most one partial frame header (14 bytes) and skips payloads by their length, holding
none of their bytes. It is fed each piece just before the piece is written, so what it
says is true of what the socket was given.

Bounds: the pump holds one piece of the worker's body (at most the stream's credit,
``STREAM_WINDOW``, which the carrier holds anyway) and one drain wait.
"""

from __future__ import annotations

import asyncio
import logging
from logging import WARNING

from .failures import ConnectionFailure
from .handover import GOING_AWAY
from .http1 import HTTP1Connection
from .logs import event
from .stream import BrokerStream, StreamStopped

__all__ = ["FrameTracker", "Tunnel", "MAX_FRAME_HEADER"]

log = logging.getLogger("broker.tunnel")

MAX_FRAME_HEADER = 14  # 2 + an 8-byte length + a 4-byte mask
_OP_CLOSE = 0x8


class FrameTracker:
    """Where a stream of WebSocket frames stands: between frames (``at_boundary``), and
    whether a CLOSE frame began (``close_seen``)."""

    __slots__ = ("_header", "_skip", "close_seen")

    def __init__(self) -> None:
        self._header = bytearray()  # a frame header not complete yet
        self._skip = 0  # payload bytes of the current frame still to come
        self.close_seen = False

    def __repr__(self) -> str:
        where = "at a boundary" if self.at_boundary else "inside a frame"
        return f"<FrameTracker {where}{', close seen' if self.close_seen else ''}>"

    @property
    def at_boundary(self) -> bool:
        return not self._header and not self._skip

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        pos, size = 0, len(data)
        header = self._header
        while pos < size:
            if self._skip:
                step = min(self._skip, size - pos)
                self._skip -= step
                pos += step
                continue
            need = _header_size(header)
            take = min(need - len(header), size - pos)
            header += data[pos : pos + take]
            pos += take
            if len(header) == need and _header_size(header) == need:
                self._end_header(header)

    def _end_header(self, header: bytearray) -> None:
        if header[0] & 0x0F == _OP_CLOSE:
            self.close_seen = True
        length = header[1] & 0x7F
        if length == 126:
            length = int.from_bytes(header[2:4], "big")
        elif length == 127:
            length = int.from_bytes(header[2:10], "big")
        self._skip = length
        header.clear()


def _header_size(header: bytearray) -> int:
    """The size of the header that begins with ``header`` (2 until its second byte)."""
    if len(header) < 2:
        return 2
    second = header[1]
    length = second & 0x7F
    extra = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extra + (4 if second & 0x80 else 0)


class Tunnel:
    """The worker-to-origin half of an upgraded connection (see the module docstring)."""

    __slots__ = ("stream", "conn", "tracker", "_task", "closed")

    def __init__(self, stream: BrokerStream, conn: HTTP1Connection) -> None:
        self.stream = stream
        self.conn = conn
        self.tracker = FrameTracker()
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Tunnel stream={self.stream.id} {state} {self.tracker!r}>"

    def start(self) -> None:
        """Begin pumping the worker's bytes (unless the tunnel ended already)."""
        if not self.closed:
            self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        stream, conn, tracker = self.stream, self.conn, self.tracker
        try:
            async for chunk in stream.request_body():
                if chunk:
                    tracker.feed(chunk)
                    await conn.send_raw(chunk, stream)
                    stream.body_written(len(chunk))
        except (StreamStopped, ConnectionFailure):
            return  # the stream was given up, or the connection is gone: the body ends it
        except Exception as exc:  # the worker's own body iterator (embedded), or a bug
            event(log, WARNING, "tunnel_pump_failed", stream=stream.id, exc_info=exc)
            conn.close()  # the body then ends with the connection
            return
        # The worker's End: it let its WebSocket go (aiohttp's transport.close()). What
        # it sent is written; the connection closes after it, which ends the body.
        self.close()
        conn.close()

    def close(self) -> None:
        """The tunnel ends, before its connection is closed: stop the pump, and say
        "going away" to the origin if the worker did not close and may be cut here."""
        if self.closed:
            return
        self.closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        tracker = self.tracker
        if not tracker.close_seen and tracker.at_boundary:
            self.conn.write_last(GOING_AWAY)
