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

from collections.abc import Callable

from .decoding import DecodeError, Decoder
from .http1 import ConnectionFailure, HTTP1Connection
from .stream import BrokerStream

__all__ = ["BodyPipe", "MAX_DATA"]

MAX_DATA = 256 * 1024


class BodyPipe:
    __slots__ = ("_stream", "_conn", "_decoder", "error", "_on_drained")

    def __init__(
        self, stream: BrokerStream, conn: HTTP1Connection, decoder: Decoder | None
    ) -> None:
        self._stream = stream
        self._conn = conn
        self._decoder = decoder
        self.error: ConnectionFailure | None = None
        self._on_drained: Callable[[ConnectionFailure | None], None] | None = None

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
        self._call_drained()

    def _fail(self, exc: DecodeError) -> None:
        # Body bytes that came with the head are replayed after the exchange completed,
        # when failing the exchange no longer reaches anyone: ``when_drained`` reports it.
        self.error = ConnectionFailure("payload", str(exc))
        self._conn.fail_exchange(self.error)
        self._conn.close()
        self._call_drained()

    def _call_drained(self) -> None:
        callback, self._on_drained = self._on_drained, None
        if callback is not None:
            callback(self.error)

    def when_drained(self, callback: Callable[[ConnectionFailure | None], None]) -> None:
        """After the last body byte arrived: call back (with the pipe's error, if any)
        once no undecoded input is left, which waits for the worker if it is behind."""
        decoder = self._decoder
        self._on_drained = callback
        if self.error is not None or decoder is None or not decoder.pending:
            self._call_drained()

    def flush_tail(self) -> None:
        """The decoder's last output; raises ConnectionFailure for a truncated body."""
        if self._decoder is not None:
            try:
                self._emit(self._decoder.flush())
            except DecodeError as exc:
                raise ConnectionFailure("payload", str(exc)) from None
