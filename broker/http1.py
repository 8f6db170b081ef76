"""One HTTP/1.1 client connection: serializes requests, parses responses with httptools.

The protocol is an ``asyncio.BufferedProtocol`` reading into one reused buffer (a fresh
buffer per read costs the default loop three extra syscalls). One exchange at a time:
``begin`` (and ``write`` for a streamed body) puts a request on the wire,
``head_future`` resolves with the response head, body chunks go to the consumer given to
``set_body_consumer`` (bytes that came early are kept for it), and ``done_future``, made
only if someone asks, resolves at the end of the response.

httptools cannot be told that a response has no body because it answers a HEAD request,
so for HEAD the exchange is completed at the end of the head and the parser is replaced
before the next request. A body delimited by the connection's close is finished by
``connection_lost``, since httptools has no "end of input" call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httptools

from shared.errors import ErrorCode

__all__ = ["HTTP1Connection", "ResponseHead", "ConnectionFailure"]

_BUFSIZE = 1 << 16
# aiohttp's defaults: max_field_size=8190, max_headers=128. The whole head is capped too,
# counted as it arrives, since httptools buffers a header until it is complete.
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 128
MAX_HEAD_BYTES = 256 * 1024


class ConnectionFailure(Exception):
    """The exchange failed; ``code`` is a wire error code (``shared.errors``)."""

    def __init__(self, code: ErrorCode | str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.fields = fields


class _HeadTooLarge(Exception):
    pass


class ResponseHead:
    __slots__ = ("status", "reason", "version", "headers", "keep_alive", "eof_body")

    def __init__(
        self,
        status: int,
        reason: str,
        version: tuple[int, int],
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        eof_body: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.eof_body = eof_body


def _drop_body(data: bytes) -> None:
    pass


class HTTP1Connection(asyncio.BufferedProtocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buf = bytearray(_BUFSIZE)
        self._view = memoryview(self._buf)
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._replace_parser = False
        self.closed = False
        self.reused = False
        self.in_use = False
        self.read_until_eof = True
        self.last_read = 0.0
        self.on_idle_lost: Callable[[HTTP1Connection], None] | None = None
        self.key: Any = None
        # the current exchange
        self._busy = False
        self._head_only = False
        self._reason = ""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head: ResponseHead | None = None
        self._head_bytes = 0
        self._refused: str | None = None  # which of our head limits the server broke
        self._head_fut: asyncio.Future[ResponseHead] | None = None
        self._done_fut: asyncio.Future[None] | None = None
        self._failure: ConnectionFailure | None = None
        self._complete = False
        self._got_bytes = False
        self._on_body: Callable[[bytes], None] | None = None
        self._early: list[bytes] = []  # body bytes that came before a consumer was set
        self._write_paused = False
        self._drain_fut: asyncio.Future[None] | None = None
        self._read_paused = False
        self._lost: asyncio.Future[None] = loop.create_future()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("active" if self._busy else "idle")
        return f"<HTTP1Connection {self.key} {state}>"

    # -- asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if not self._busy:
            # Bytes on an idle connection: the server is confused; never reuse it.
            self.close()
            return
        self.last_read = self._loop.time()
        self._got_bytes = True
        if self._head is None:
            self._head_bytes += nbytes
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(
                    ConnectionFailure(
                        "bad_response",
                        f"invalid HTTP response: the head is over {MAX_HEAD_BYTES} bytes",
                    )
                )
                self.close()
                return
        try:
            self._parser.feed_data(self._view[:nbytes])
        except httptools.HttpParserUpgrade:
            self._finish()
        except httptools.HttpParserError as exc:
            # A limit of ours raised inside a callback reaches us as a bare "callback
            # error": say which limit it was.
            detail = self._refused or exc
            self._fail(ConnectionFailure("bad_response", f"invalid HTTP response: {detail}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost decides what it means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._lost.done():
            self._lost.set_result(None)
        if not self._busy:
            if self.on_idle_lost is not None:
                self.on_idle_lost(self)
            return
        head = self._head
        if head is None:
            if isinstance(exc, OSError):  # e.g. a reset: aiohttp's ClientOSError
                msg = exc.strerror or str(exc)
                self._fail(ConnectionFailure("os", msg, errno=exc.errno or 0))
            else:
                self._fail(ConnectionFailure("disconnected", "Server disconnected"))
        elif head.eof_body and not self._head_only:
            self._finish()
        elif not self._complete:
            self._fail(
                ConnectionFailure(
                    "payload",
                    "Response payload is not completed: the connection was closed "
                    "before the end of the body (Content-Length or chunked framing)",
                )
            )
        if self._drain_fut is not None and not self._drain_fut.done():
            self._drain_fut.set_exception(ConnectionFailure("disconnected", "Server disconnected"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        fut = self._drain_fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) > MAX_FIELD_SIZE or len(value) > MAX_FIELD_SIZE:
            self._refused = f"a header field is over {MAX_FIELD_SIZE} bytes"
            raise _HeadTooLarge(self._refused)
        if len(self._headers) >= MAX_HEADERS:
            self._refused = f"more than {MAX_HEADERS} headers"
            raise _HeadTooLarge(self._refused)
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        p = self._parser
        status = p.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._headers = []  # informational; the real head follows
            return
        headers = self._headers
        eof_body = True
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-length" or (
                lname == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                eof_body = False
                break
        reuse = p.should_keep_alive()
        if status in (204, 304) or self._head_only:
            eof_body = False
        elif eof_body:
            reuse = False
            if not self.read_until_eof:
                # aiohttp's read_until_eof=False: such a response has no body
                self._head_only = True
                eof_body = False
        version = p.get_http_version()
        head = ResponseHead(
            status,
            self._reason,
            (1, 0) if version == "1.0" else (1, 1),
            headers,
            reuse,
            eof_body,
        )
        self._head = head
        fut = self._head_fut
        if fut is not None and not fut.done():
            fut.set_result(head)
        if self._head_only:
            self._replace_parser = True
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self._head is None or self._complete:
            # Bytes after a HEAD response or an informational head: never reuse.
            if self._head_only and self._head is not None:
                self._head.keep_alive = False
            return
        if self._on_body is None:
            self._early.append(body)
        else:
            self._on_body(body)

    def on_message_complete(self) -> None:
        if self._head is None:
            return  # an informational response ended
        self._finish()

    # -- exchange ----------------------------------------------------------------

    def _finish(self) -> None:
        if self._complete:
            return
        self._complete = True
        if self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = False
            self.transport.resume_reading()
        fut = self._done_fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    @property
    def exchange_over(self) -> bool:
        """The response is complete, or the exchange failed."""
        return self._complete or self._failure is not None

    @property
    def exchange_error(self) -> ConnectionFailure | None:
        """Why the exchange failed, if it did before completing."""
        return None if self._complete else self._failure

    def fail_exchange(self, failure: ConnectionFailure) -> None:
        self._fail(failure)

    def _fail(self, failure: ConnectionFailure) -> None:
        if self._failure is None:
            self._failure = failure
        for fut in (self._head_fut, self._done_fut):
            if fut is not None and not fut.done():
                fut.set_exception(failure)
                fut.exception()  # retrieved here: one of the two may never be awaited

    def begin(self, method: str, head: bytes, body: bytes | None = None) -> None:
        """Start an exchange: write the request head and (optional) whole body."""
        if self.closed or self.transport is None:
            raise ConnectionFailure("disconnected", "Server disconnected")
        if self._replace_parser:
            self._parser = httptools.HttpResponseParser(self)
            self._replace_parser = False
        self._busy = True
        self._head_only = method == "HEAD"
        self._reason = ""
        self._headers = []
        self._head = None
        self._head_bytes = 0
        self._refused = None
        self._complete = False
        self._got_bytes = False
        self._on_body = None
        self._early = []
        self.last_read = self._loop.time()
        self._failure = None
        self._head_fut = self._loop.create_future()
        self._done_fut = None  # made when someone waits for the end (often nobody)
        if body:
            if len(body) < 16384:
                self.transport.write(head + body)
            else:
                self.transport.writelines((head, body))
        else:
            self.transport.write(head)

    def set_body_consumer(self, consumer: Callable[[bytes], None] | None) -> None:
        """Where the response body goes (None: dropped); bytes that came early first."""
        consumer = consumer or _drop_body
        self._on_body = consumer
        early, self._early = self._early, []
        for chunk in early:
            consumer(chunk)

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ConnectionFailure("disconnected", "Server disconnected")
        self.transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionFailure("disconnected", "Server disconnected")
        if self._write_paused:
            self._drain_fut = self._loop.create_future()
            await self._drain_fut

    @property
    def got_response_bytes(self) -> bool:
        return self._got_bytes

    @property
    def head_future(self) -> asyncio.Future[ResponseHead]:
        assert self._head_fut is not None
        return self._head_fut

    @property
    def done_future(self) -> asyncio.Future[None]:
        fut = self._done_fut
        if fut is None:
            fut = self._done_fut = self._loop.create_future()
            if self._complete:
                fut.set_result(None)
            elif self._failure is not None:
                fut.set_exception(self._failure)
                fut.exception()
        return fut

    def end_exchange(self) -> bool:
        """The caller is done with this exchange; True if the connection can be reused."""
        reusable = (
            self._complete
            and not self.closed
            and self._head is not None
            and self._head.keep_alive
        )
        self._busy = False
        self._head_fut = self._done_fut = None
        self._on_body = None
        self._early = []
        if not reusable:
            self.close()
        return reusable

    def pause_reading(self) -> None:
        # After the end of the response there is nothing left to hold back (body bytes
        # that came before the consumer was set are replayed after ``_finish``), and a
        # pause now would go back to the pool with the connection.
        if self._complete:
            return
        if not self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = False
            self.last_read = self._loop.time()
            self.transport.resume_reading()

    @property
    def reading_paused(self) -> bool:
        return self._read_paused

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True

    async def wait_closed(self) -> None:
        if self.transport is not None:
            await self._lost

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True
