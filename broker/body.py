"""A response body on its way from the upstream socket to a stream.

``BodyPipe.feed`` is the connection's body callback. It decodes the Content-Encoding in
pieces of at most ``MAX_DATA`` bytes of output and cuts plain bodies the same way, so no
``Data`` message is larger than that and a small compressed body that inflates to
gigabytes is never inflated at once. When the worker has ``STREAM_WINDOW`` bytes
unacknowledged, the pipe stops: it pauses reading the upstream socket, keeps the
compressed input it has not decoded yet, and carries on when the worker's
acknowledgements open the window again. Broker memory per stream stays bounded by the
window, whatever the server sends and however slowly the worker reads.
"""

from __future__ import annotations

import asyncio

from .decoding import DecodeError, Decoder
from .http1 import ConnectionFailure, HTTP1Connection
from .stream import BrokerStream

__all__ = ["BodyPipe", "MAX_DATA"]

MAX_DATA = 256 * 1024


class BodyPipe:
    __slots__ = ("_stream", "_conn", "_decoder", "_loop", "error", "_drained")

    def __init__(
        self,
        stream: BrokerStream,
        conn: HTTP1Connection,
        decoder: Decoder | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._stream = stream
        self._conn = conn
        self._decoder = decoder
        self._loop = loop
        self.error: ConnectionFailure | None = None
        self._drained: asyncio.Future[None] | None = None

    def feed(self, chunk: bytes) -> None:
        if self.error is not None:
            return
        if self._decoder is None:
            self._emit(chunk)
        else:
            try:
                self._emit(self._decoder.decode(chunk, MAX_DATA))
            except DecodeError as exc:
                self._fail(exc)
                return
        self._drain()

    def _emit(self, data: bytes) -> None:
        if len(data) <= MAX_DATA:
            if data:
                self._stream.data(data)
            return
        view = memoryview(data)
        for i in range(0, len(data), MAX_DATA):
            self._stream.data(bytes(view[i : i + MAX_DATA]))

    def _drain(self) -> None:
        decoder = self._decoder
        stream = self._stream
        try:
            while decoder is not None and decoder.pending and not stream.window_full:
                self._emit(decoder.decode(b"", MAX_DATA))
        except DecodeError as exc:
            self._fail(exc)
            return
        if stream.window_full:
            self._conn.pause_reading()
            stream.park(self._drain)
            stream.flush()  # we wait for acknowledgements: what is held must go out
            return
        self._conn.resume_reading()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _fail(self, exc: DecodeError) -> None:
        # Body bytes that came with the head are replayed after the exchange completed,
        # when failing the exchange no longer reaches anyone: ``finish`` raises it.
        self.error = ConnectionFailure("payload", str(exc))
        self._conn.fail_exchange(self.error)
        self._conn.close()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def finish(self) -> None:
        """After the last body byte arrived: decode what is left, then flush."""
        decoder = self._decoder
        while self.error is None and decoder is not None and decoder.pending:
            self._drained = self._loop.create_future()
            await self._drained
        if self.error is not None:
            raise self.error
        if decoder is not None:
            try:
                self._emit(decoder.flush())
            except DecodeError as exc:
                raise ConnectionFailure("payload", str(exc)) from None
