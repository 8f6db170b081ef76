"""The response side of a request: ``StreamReader`` and ``ClientResponse``, as aiohttp's.

How the body flows: the transport calls ``feed_data``/``feed_eof``/``set_exception`` as
``Data``/``End``/``Failure`` frames arrive; the reader keeps a deque of the chunks (no
copying until a read asks for a slice) and calls ``on_consumed(n)`` once for every n
bytes it hands out, which the transport turns into flow-control credit (``Ack``).
So what a reader buffers is bounded by the sender, not here: the engine stops sending a
stream once ``STREAM_WINDOW`` bytes are unacknowledged (plus the one chunk that crossed
it), and only what the caller reads is acknowledged.

Whole-body reads (issue 11): ``read()`` with no size, on a body of known length (one
plain Content-Length, nothing decoded: ``plain_length``) of at least
``CLAIM_MIN`` bytes still to come, claims the body: it makes the final ``bytes`` once
(``shared.rawbytes.RawBytes``, filled in place), copies in what is buffered, and from
then on bytes land there as they arrive: ``feed_data`` copies into it (a memoryview
from a shared-memory slot too), and embedded, the engine reads the socket straight into
it (``claim_buffer``/``claim_filled``, the carrier's ``body_buffer``), so the body is
never copied again nor joined. Claimed bytes are acknowledged as they arrive (the
caller asked for all of them: the claim, the body's own length, is the bound). A body
that turns out longer than claimed, or a read cancelled while it waits, gives the claim
back as one buffered chunk (already acknowledged: ``_prepaid``), so nothing is lost.

Measured (``bench/download.py``: 100 MiB from nginx on loopback, ``await resp.read()``,
medians of 5 alternating rounds in one process, a loaded 2-CPU VM): embedded 1.54 GB/s
and 562 page faults per download against aiohttp's 0.49 GB/s and 51,196 (3.2x); through
a broker 0.40 GB/s (0.83x: frames over the socket until the shared-memory slots land).

A response is released once: when its body has been read to the end (complete), or by
``release()``/``close()``/leaving ``async with``; ``on_release(complete)`` then tells the
transport whether the stream finished or must be cancelled.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json as _json
import re
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from http.cookies import SimpleCookie
from types import TracebackType
from typing import Any, Generic, TypeVar

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy
from yarl import URL

from broker.cookie_store import parse_set_cookie_headers
from shared.messages import Head, HistoryItem
from shared.rawbytes import RawBytes

from .exceptions import (
    ClientConnectionError,
    ClientPayloadError,
    ClientResponseError,
    ContentTypeError,
    RequestInfo,
)
from .helpers import (
    HttpVersion,
    HttpVersion10,
    HttpVersion11,
    is_json_content_type,
    parse_content_type,
)

__all__ = ["ClientResponse", "StreamReader"]

_T = TypeVar("_T")

_RELEASED: Any = Exception("released: a read raises _released()")  # a marker, never raised


def _released() -> ClientConnectionError:
    return ClientConnectionError("Connection closed")


CLAIM_MIN = 1 << 16  # a smaller whole-body read joins its chunks as before
_NO_BODY_STATUSES = frozenset((204, 304))


class _AsyncStreamIterator(Generic[_T]):
    __slots__ = ("_read",)

    def __init__(self, read: Callable[[], Awaitable[_T]]) -> None:
        self._read = read

    def __aiter__(self) -> _AsyncStreamIterator[_T]:
        return self

    async def __anext__(self) -> _T:
        value = await self._read()
        if not value or value == (b"", False):
            raise StopAsyncIteration
        return value


class StreamReader:
    """A response body being received, with aiohttp's reading API."""

    __slots__ = (
        "_buffer",
        "_offset",
        "_size",
        "_limit",
        "_eof",
        "_exception",
        "_waiter",
        "_on_consumed",
        "_on_drained",
        "_head",
        "_claim",
        "_filled",
        "_prepaid",
        "total_bytes",
        "total_compressed_bytes",
    )

    def __init__(
        self, on_consumed: Callable[[int], None] | None = None, *, limit: int = 2**16
    ) -> None:
        self._buffer: deque[bytes] = deque()
        self._offset = 0  # bytes of _buffer[0] already handed out
        self._size = 0  # bytes buffered and not yet handed out
        self._limit = limit
        self._eof = False
        self._exception: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._on_consumed = on_consumed
        # Called once when the body has been fed to EOF and entirely handed out.
        self._on_drained: Callable[[], None] | None = None
        # (method, status, raw headers) of the response, for ``plain_length``; set by
        # ClientResponse (a tuple, not the response: no reference cycle).
        self._head: tuple[str, int, tuple[tuple[bytes, bytes], ...]] | None = None
        self._claim: RawBytes | None = None  # the final buffer of a whole-body read
        self._filled = 0  # bytes of it written
        self._prepaid = 0  # buffered bytes already acknowledged (a claim given back)
        self.total_bytes = 0
        self.total_compressed_bytes: int | None = None  # set at the end of a decoded body

    @classmethod
    def whole(cls, body: bytes, limit: int = 2**16) -> StreamReader:
        """A reader of a body received whole already (``feed_data`` then ``feed_eof``,
        with nobody to wake)."""
        reader = cls(limit=limit)
        if body:
            reader._buffer.append(body)
            reader._size = reader.total_bytes = len(body)
        reader._eof = True
        return reader

    def __repr__(self) -> str:
        info = [type(self).__name__]
        if self._size:
            info.append(f"{self._size} bytes")
        if self._eof:
            info.append("eof")
        if self._waiter is not None:
            info.append("waiting")
        if self._exception is not None:
            info.append(f"e={self._exception!r}")
        return "<{}>".format(" ".join(info))

    # -- feeding side (the transport) --

    @property
    def total_raw_bytes(self) -> int:
        """The body's bytes as received (before decompression, once it has ended)."""
        if self.total_compressed_bytes is None:
            return self.total_bytes
        return self.total_compressed_bytes

    def feed_data(self, data: bytes | memoryview) -> None:
        """Append received bytes and wake a waiting reader. A memoryview is valid only
        during the call: its bytes are copied."""
        assert not self._eof, "feed_data after feed_eof"
        if not data:
            return
        claim = self._claim
        if claim is not None:
            filled = self._filled
            end = filled + len(data)
            if end <= claim.size:
                claim.view[filled:end] = data
                self._filled = end
                self.total_bytes += len(data)
                self._report(len(data))
                return
            self._unclaim()
        if type(data) is not bytes:
            data = bytes(data)
        self._buffer.append(data)
        self._size += len(data)
        self.total_bytes += len(data)
        self._wake()

    def claim_buffer(self) -> memoryview | None:
        """The free part of a claimed whole-body buffer, for body bytes to be written
        into directly (then ``claim_filled``); None when there is none."""
        claim = self._claim
        if claim is None or self._filled >= claim.size:
            return None
        return claim.view[self._filled :]

    def claim_filled(self, size: int) -> None:
        """``size`` bytes were written at the start of the last ``claim_buffer()``."""
        claim = self._claim
        if claim is None or self._filled + size > claim.size:
            raise RuntimeError(f"{size} bytes filled in {self!r}")
        self._filled += size
        self.total_bytes += size
        self._report(size)

    def feed_eof(self) -> None:
        """Mark the end of the body."""
        self._eof = True
        self._wake()
        self._check_drained()

    def poison(self) -> None:
        """The response was released: every read from now on raises aiohttp's
        ``ClientConnectionError("Connection closed")``, made when raised."""
        if self._exception is None:
            self._exception = _RELEASED
            self._on_drained = None
            if self._waiter is not None:
                self.set_exception(_released())

    def _failure(self) -> BaseException:
        exc = self._exception
        assert exc is not None
        return _released() if exc is _RELEASED else exc

    def set_exception(self, exc: BaseException) -> None:
        """Fail the body: every read from now on raises ``exc``."""
        self._exception = exc
        self._on_drained = None
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_exception(exc)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- state --

    def exception(self) -> BaseException | None:
        """The exception set with ``set_exception``, if any."""
        return None if self._exception is None else self._failure()

    def is_eof(self) -> bool:
        """True once ``feed_eof`` was called."""
        return self._eof

    def at_eof(self) -> bool:
        """True once ``feed_eof`` was called and the buffer is empty."""
        return self._eof and not self._buffer

    async def wait_eof(self) -> None:
        """Wait until ``feed_eof`` is called."""
        while not self._eof:
            await self._wait("wait_eof")

    # -- reading side (the user) --

    def __aiter__(self) -> _AsyncStreamIterator[bytes]:
        return _AsyncStreamIterator(self.readline)

    def iter_chunked(self, n: int) -> _AsyncStreamIterator[bytes]:
        """Iterate over chunks of at most n bytes."""
        return _AsyncStreamIterator(lambda: self.read(n))

    def iter_any(self) -> _AsyncStreamIterator[bytes]:
        """Iterate over the data as it arrives."""
        return _AsyncStreamIterator(self.readany)

    def iter_chunks(self) -> _AsyncStreamIterator[tuple[bytes, bool]]:
        """Iterate over ``readchunk()`` tuples."""
        return _AsyncStreamIterator(self.readchunk)

    async def read(self, n: int = -1) -> bytes:
        """Read up to n bytes, or everything until EOF if n < 0."""
        if self._exception is not None:
            raise self._failure()
        if not n:
            return b""
        if n < 0:
            if self._eof:  # all of it is buffered
                return self._consume(self._take(-1))
            if self._head is not None and self._claim is None:
                body = await self._read_claimed()
                if body is not None:
                    return body
            blocks = []
            while block := await self.readany():
                blocks.append(block)
            return b"".join(blocks)
        while not self._buffer and not self._eof:
            await self._wait("read")
        return self._consume(self._take(n))

    async def readany(self) -> bytes:
        """Read whatever is buffered, waiting for at least one byte unless at EOF."""
        if self._exception is not None:
            raise self._failure()
        while not self._buffer and not self._eof:
            await self._wait("readany")
        return self._consume(self._take(-1))

    async def readchunk(self) -> tuple[bytes, bool]:
        """Read one received chunk as ``(data, False)``; ``(b"", False)`` at EOF.

        HTTP chunk boundaries do not cross the broker, so the flag is always False.
        """
        if self._exception is not None:
            raise self._failure()
        while not self._buffer and not self._eof:
            await self._wait("readchunk")
        if not self._buffer:
            return b"", False
        return self._consume(self._take_chunk(-1)), False

    async def readexactly(self, n: int) -> bytes:
        """Read exactly n bytes; raise ``asyncio.IncompleteReadError`` at an early EOF."""
        if self._exception is not None:
            raise self._failure()
        blocks: list[bytes] = []
        while n > 0:
            block = await self.read(n)
            if not block:
                partial = b"".join(blocks)
                raise asyncio.IncompleteReadError(partial, len(partial) + n)
            blocks.append(block)
            n -= len(block)
        return b"".join(blocks)

    async def readline(self, *, max_line_length: int | None = None) -> bytes:
        """Read one line including its ``\\n`` (the rest of the body at EOF)."""
        return await self.readuntil(max_size=max_line_length)

    async def readuntil(self, separator: bytes = b"\n", *, max_size: int | None = None) -> bytes:
        """Read up to and including ``separator`` (the rest of the body at EOF).

        A line longer than ``max_size`` (default twice the limit) raises
        ``ClientPayloadError``, as aiohttp's ``LineTooLong``.
        """
        seplen = len(separator)
        if seplen == 0:
            raise ValueError("Separator should be at least one-byte string")
        if self._exception is not None:
            raise self._failure()
        max_size = max_size or 2 * self._limit
        parts: list[bytes] = []
        size = unreported = 0
        tail = b""  # the last seplen - 1 bytes taken, for a separator split across chunks
        try:
            while True:
                while self._buffer:
                    chunk, offset = self._buffer[0], self._offset
                    n = -1
                    if tail:
                        i = (tail + chunk[offset : offset + seplen - 1]).find(separator)
                        if i != -1:
                            n = i + seplen - len(tail)
                    if n == -1:
                        i = chunk.find(separator, offset)
                        if i != -1:
                            n = i - offset + seplen
                    data = self._take_chunk(n)
                    parts.append(data)
                    size += len(data)
                    unreported += len(data)
                    if size > max_size:
                        line = b"".join(parts)[:100] + b"..."
                        raise ClientPayloadError(
                            f"Got more than {max_size} bytes when reading: {line!r}."
                        )
                    if n != -1:
                        return b"".join(parts)
                    if seplen > 1:
                        tail = (tail + data[-(seplen - 1) :])[-(seplen - 1) :]
                if self._eof:
                    return b"".join(parts)
                # Report before waiting: the sender may be waiting for this credit.
                self._report(unreported)
                unreported = 0
                await self._wait("readuntil")
        finally:
            self._report(unreported)
            self._check_drained()

    def read_nowait(self, n: int = -1) -> bytes:
        """Read up to n bytes (all if n < 0) of what is buffered, without waiting."""
        if self._exception is not None:
            raise self._failure()
        if self._waiter is not None:
            raise RuntimeError("Called while some coroutine is waiting for incoming data.")
        return self._consume(self._take(n))

    # -- internals --

    async def _read_claimed(self) -> bytes | None:
        """The rest of the body through a claim; None: not claimed, or given back (the
        caller reads on as usual)."""
        assert self._head is not None
        length = plain_length(*self._head)
        if length is None:
            return None
        owed = length - (self.total_bytes - self._size)  # not yet handed out
        if owed - self._size < CLAIM_MIN:
            return None
        try:
            claim = RawBytes(owed)
        except (MemoryError, OverflowError):
            return None
        held = self._size
        view, filled = claim.view, 0
        offset = self._offset
        for chunk in self._buffer:
            part = memoryview(chunk)[offset:] if offset else chunk
            offset = 0
            view[filled : filled + len(part)] = part
            filled += len(part)
        self._buffer.clear()
        self._offset = self._size = 0
        self._claim, self._filled = claim, filled
        self._report(held)
        try:
            while self._claim is claim and not self._eof:
                await self._wait("read")
        except BaseException:
            if self._claim is claim:
                if self._exception is not None:
                    self._claim = None  # failed: the partial body is dropped unseen
                else:
                    self._unclaim()  # cancelled: the bytes stay for the next read
            raise
        if self._claim is not claim:
            return None  # the body was longer than its length: read on as usual
        self._claim = None
        self._check_drained()
        return claim.finish(self._filled)

    def _unclaim(self) -> None:
        """Give the claim back as one buffered chunk, already acknowledged."""
        claim, self._claim = self._claim, None
        if claim is not None and self._filled:
            data = claim.finish(self._filled)
            self._buffer.appendleft(data)
            self._size += len(data)
            self._prepaid += len(data)
            self._wake()

    async def _wait(self, func_name: str) -> None:
        # One future links feed_data() to the one reader; two concurrent readers
        # could not tell which of them gets the data.
        if self._waiter is not None:
            raise RuntimeError(
                f"{func_name}() called while another coroutine is already waiting for incoming data"
            )
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _take_chunk(self, n: int) -> bytes:
        """Up to n bytes (all if n == -1) from the first buffered chunk only."""
        chunk = self._buffer[0]
        offset = self._offset
        if n != -1 and len(chunk) - offset > n:
            data = chunk[offset : offset + n]
            self._offset += n
        else:
            self._buffer.popleft()
            data = chunk[offset:] if offset else chunk
            self._offset = 0
        self._size -= len(data)
        return data

    def _take(self, n: int) -> bytes:
        """Up to n bytes (all if n == -1) from the buffer."""
        buffer = self._buffer
        if not buffer:
            return b""
        if n == -1 or n >= self._size:
            if len(buffer) == 1:
                if not self._offset:  # the whole chunk, as ``_take_chunk`` would give it
                    self._size = 0
                    return buffer.popleft()
                return self._take_chunk(-1)
            n = self._size
        chunks = []
        while n > 0 and self._buffer:
            chunk = self._take_chunk(n)
            chunks.append(chunk)
            n -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _consume(self, data: bytes) -> bytes:
        self._report(len(data))
        self._check_drained()
        return data

    def _report(self, n: int) -> None:
        if self._prepaid:
            paid = min(n, self._prepaid)
            self._prepaid -= paid
            n -= paid
        if n and self._on_consumed is not None:
            self._on_consumed(n)

    def _check_drained(self) -> None:
        if (
            self._on_drained is not None
            and self._eof
            and not self._buffer
            and self._claim is None
        ):
            callback, self._on_drained = self._on_drained, None
            callback()


def plain_length(
    method: str, status: int, raw_headers: tuple[tuple[bytes, bytes], ...]
) -> int | None:
    """A response body's exact length, if one plain Content-Length gives it: no body
    for HEAD, 1xx, 204, 304; none known when it is chunked or encoded."""
    if method == "HEAD" or status < 200 or status in _NO_BODY_STATUSES:
        return None
    length = None
    for name, value in raw_headers:
        lname = name.lower()
        if lname == b"content-length":
            if length is not None or not value.strip().isdigit():
                return None
            length = int(value)
        elif lname in (b"transfer-encoding", b"content-encoding"):
            if lname == b"transfer-encoding" or value.strip().lower() != b"identity":
                return None
    return length


def _empty_content() -> StreamReader:
    content = StreamReader()
    content.feed_eof()
    return content


def _decode_headers(raw: tuple[tuple[bytes, bytes], ...]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(
        CIMultiDict(
            [
                (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                for k, v in raw
            ]
        )
    )


_VERSIONS: dict[tuple[int, int], HttpVersion] = {(1, 1): HttpVersion11, (1, 0): HttpVersion10}


_LINK_PARAM_RE = re.compile(r"^([^\s=]+)\s*=\s*(?:(['\"])(.*?)\2|(\S*))$", re.M)


class _Noop:
    # What ``release()`` returns, so that the old ``await resp.release()`` still works.
    def __await__(self) -> Generator[None, None, None]:
        yield from ()


_NOOP = _Noop()


class ClientResponse:
    """A response whose head has arrived; the body streams in through ``content``."""

    _body: bytes | None = None
    _decoded: CIMultiDictProxy[str] | None = None  # the headers, decoded on first use
    _closed = False
    _released = False  # release()/close() was called
    _in_context = False
    _cookies: SimpleCookie | None = None
    _links: MultiDictProxy[MultiDictProxy[str | URL]] | None = None
    _trace: Any = None  # a traced request's RequestTrace (worker_client.tracing)
    # aiohttp's ``fallback_charset_resolver``: a session may set its own on the response.
    _resolve_charset: Callable[[ClientResponse, bytes], str] = staticmethod(
        lambda response, body: "utf-8"
    )

    def __init__(
        self,
        method: str,
        url: URL,
        *,
        status: int,
        reason: str,
        version: HttpVersion,
        raw_headers: tuple[tuple[bytes, bytes], ...],
        content: StreamReader,
        request_info: RequestInfo,
        history: tuple[ClientResponse, ...],
        on_release: Callable[[bool], None] | None,
        loop: asyncio.AbstractEventLoop,
        real_url: URL | None = None,
    ) -> None:
        self.method = method
        self._real_url = url if real_url is None else real_url
        self._url = url.with_fragment(None) if url.raw_fragment else url
        self.status = status
        self.reason = reason
        self.version = version
        self._raw_headers = raw_headers
        self.content = content
        self._request_info = request_info
        self._history = history
        self._on_release = on_release
        self._loop = loop
        content._head = (method, status, raw_headers)
        if content.at_eof() and content.exception() is None:
            self._response_eof()
        else:  # a callback kept only until it runs: the reader and self hold each other
            content._on_drained = self._response_eof

    @classmethod
    def from_head(
        cls,
        head: Head | HistoryItem,
        *,
        request_info: RequestInfo,
        content: StreamReader | None,
        history: tuple[ClientResponse, ...],
        on_release: Callable[[bool], None] | None,
        loop: asyncio.AbstractEventLoop,
        request_url: str | None = None,
    ) -> ClientResponse:
        """Build a response from a broker ``Head`` (or a redirect's ``HistoryItem``).

        ``request_url`` is the URL string that was sent: when the head's URL is that
        string, ``request_info.url`` is reused instead of parsed again."""
        if isinstance(head, HistoryItem):
            content, on_release = _empty_content(), None
        elif content is None:
            content = _empty_content()
        if head.url == request_url and request_info.url is not None:
            url = request_info.url  # the usual case, no redirect: no need to parse again
        else:
            url = URL(head.url, encoded=True)
        # The broker never sees the fragment; keep the caller's if it is the same URL.
        real_url = request_info.real_url
        if real_url is not url and real_url.with_fragment(None) != url:
            real_url = url
        major, minor = head.version
        return cls(
            head.method,
            url,
            status=head.status,
            reason=head.reason,
            version=_VERSIONS.get((major, minor)) or HttpVersion(major, minor),
            raw_headers=tuple(head.headers),
            content=content,
            request_info=request_info,
            history=history,
            on_release=on_release,
            loop=loop,
            real_url=real_url,
        )

    def __repr__(self) -> str:
        reason = (
            self.reason.encode("ascii", "backslashreplace").decode("ascii")
            if self.reason
            else "None"
        )
        return f"<ClientResponse({self.url}) [{self.status} {reason}]>\n{self.headers}\n"

    # -- head --

    @property
    def url(self) -> URL:
        return self._url

    @property
    def real_url(self) -> URL:
        return self._real_url

    @property
    def host(self) -> str:
        assert self._url.host is not None
        return self._url.host

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        headers = self._decoded
        if headers is None:  # decoded on first use: a body-only caller never pays for it
            headers = self._decoded = _decode_headers(self._raw_headers)
        return headers

    _headers = headers

    @property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        return self._raw_headers

    @property
    def request_info(self) -> RequestInfo:
        return self._request_info

    @property
    def history(self) -> tuple[ClientResponse, ...]:
        """The responses of the redirects that led here, oldest first."""
        return self._history

    @property
    def connection(self) -> None:
        """Always None: the connection lives in the broker."""
        return None

    @property
    def ok(self) -> bool:
        """True if ``status`` is below 400."""
        return self.status < 400

    @property
    def content_type(self) -> str:
        """The mimetype of Content-Type (``application/octet-stream`` if absent)."""
        return parse_content_type(self._headers.get("Content-Type"))[0]

    @property
    def charset(self) -> str | None:
        """The charset parameter of Content-Type, if any."""
        return parse_content_type(self._headers.get("Content-Type"))[1].get("charset")

    @property
    def content_length(self) -> int | None:
        """The value of Content-Length, if any."""
        value = self._headers.get("Content-Length")
        return None if value is None else int(value)

    @property
    def cookies(self) -> SimpleCookie:
        """The cookies of this response's Set-Cookie headers, parsed as aiohttp 3.14
        does (a malformed one is skipped)."""
        if self._cookies is None:
            cookies = SimpleCookie()
            cookies.update(parse_set_cookie_headers(self._headers.getall("Set-Cookie", ()), None))
            self._cookies = cookies
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: SimpleCookie) -> None:
        self._cookies = cookies

    @property
    def links(self) -> MultiDictProxy[MultiDictProxy[str | URL]]:
        """The parsed Link headers, keyed by ``rel`` (or URL)."""
        if self._links is None:
            self._links = self._parse_links()
        return self._links

    def _parse_links(self) -> MultiDictProxy[MultiDictProxy[str | URL]]:
        links: MultiDict[MultiDictProxy[str | URL]] = MultiDict()
        links_str = ", ".join(self._headers.getall("Link", ()))
        for val in re.split(r",(?=\s*<)", links_str) if links_str else ():
            match = re.match(r"\s*<(.*)>(.*)", val)
            if match is None:
                continue
            url, params_str = match.groups()
            link: MultiDict[str | URL] = MultiDict()
            for param in params_str.split(";")[1:]:
                param_match = _LINK_PARAM_RE.match(param.strip())
                if param_match is None:
                    continue
                key, _, quoted, unquoted = param_match.groups()
                link.add(key, unquoted if quoted is None else quoted)
            key = link.get("rel", url)
            link.add("url", self._url.join(URL(url)))
            links.add(str(key), MultiDictProxy(link))
        return MultiDictProxy(links)

    # -- release --

    @property
    def closed(self) -> bool:
        return self._closed

    def _response_eof(self) -> None:
        # The body has been handed out to its end: the stream finished normally.
        if not self._closed:
            self._closed = True
            self._notify_release(True)

    def _notify_release(self, complete: bool) -> None:
        callback, self._on_release = self._on_release, None
        if callback is not None:
            callback(complete)

    def _poison_content(self) -> None:
        if not self._released:
            self._released = True
            self.content.poison()

    def release(self) -> Awaitable[None]:
        """Give the stream back: complete if its body fully arrived, else cancelled."""
        if self._released:  # once: nothing is left to give back
            return _NOOP
        content = self.content
        complete = content._eof and content._exception is None
        self._poison_content()
        self._closed = True
        self._notify_release(complete)
        return _NOOP

    def close(self) -> None:
        """Abandon the stream (the broker drops its connection)."""
        self._poison_content()
        self._closed = True
        self._notify_release(False)

    async def wait_for_close(self) -> None:
        """Release the response (nothing else to wait for: uploads end in the broker)."""
        self.release()

    def raise_for_status(self) -> None:
        """Raise ``ClientResponseError`` if ``status`` is 400 or more."""
        if not self.ok:
            if not self._in_context:
                self.release()
            raise ClientResponseError(
                self.request_info,
                self.history,
                status=self.status,
                message=self.reason,
                headers=self.headers,
            )

    async def __aenter__(self) -> ClientResponse:
        self._in_context = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._in_context = False
        self.release()
        await self.wait_for_close()

    # -- body --

    async def read(self) -> bytes:
        """Read the whole body (cached; the response is released at its end)."""
        if self._body is None:
            try:
                content = self.content
                if content._eof and content._exception is None:  # all here: no await
                    self._body = content._consume(content._take(-1))
                else:
                    self._body = await content.read()
                if self._trace is not None:
                    await self._trace.chunk_received(self, self._body)
            except BaseException:
                self.close()
                raise
        elif self._released:
            raise ClientConnectionError("Connection closed")
        return self._body

    def get_encoding(self) -> str:
        """The charset of the body: Content-Type's, else utf-8."""
        mimetype, params = parse_content_type(self._headers.get("Content-Type", "").lower())
        charset = params.get("charset")
        if charset:
            with contextlib.suppress(LookupError, ValueError):
                return codecs.lookup(charset).name
        if is_json_content_type(mimetype):
            return "utf-8"  # RFC 8259
        if self._body is None:
            raise RuntimeError("Cannot compute fallback encoding of a not yet read body")
        return self._resolve_charset(self, self._body)

    async def text(self, encoding: str | None = None, errors: str = "strict") -> str:
        """Read the body and decode it."""
        if self._body is None:
            await self.read()
        assert self._body is not None
        if encoding is None:
            encoding = self.get_encoding()
        return self._body.decode(encoding, errors=errors)

    async def json(
        self,
        *,
        encoding: str | None = None,
        loads: Callable[[str], Any] = _json.loads,
        content_type: str | None = "application/json",
    ) -> Any:
        """Read the body and decode it as JSON (None if empty)."""
        if self._body is None:
            await self.read()
        assert self._body is not None
        if content_type:
            ctype = self._headers.get("Content-Type", "").lower()
            if content_type == "application/json":
                expected = is_json_content_type(parse_content_type(ctype)[0])
            else:
                expected = content_type in ctype
            if not expected:
                raise ContentTypeError(
                    self.request_info,
                    self.history,
                    status=self.status,
                    message=f"Attempt to decode JSON with unexpected mimetype: {ctype}",
                    headers=self.headers,
                )
        stripped = self._body.strip()
        if not stripped:
            return None
        if encoding is None:
            encoding = self.get_encoding()
        return loads(stripped.decode(encoding))
