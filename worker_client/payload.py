"""Request bodies as aiohttp's payloads: what ``data=`` becomes, with its headers and size.

A payload knows its Content-Type (and Content-Disposition for files), its size when it
can tell, and how to produce its bytes. aiohttp writes a payload into a stream writer
(``write``/``write_with_length``); here the transport pulls it as an async iterator of
chunks (``Payload._chunks``), so a file or a generator is read a chunk at a time as the
broker's credit allows, never held whole. The built-in payloads produce chunks directly;
a user's subclass that implements only ``write`` is driven through a hand-off of one
chunk (``_WriterBridge``), so both kinds are streamed with the same bound.

Replay (a 307/308 redirect sends the body again): ``_replayable`` says up front whether
``_chunks`` can be called a second time and give the same bytes (bytes and strings
always; a file if it can seek back to where it started; an async iterable only if
``as_bytes`` cached it); ``consumed`` says, at the time, that it no longer can.

Bounds: ``FILE_CHUNK_SIZE`` bytes per chunk read from a file; one chunk in the
hand-off of a ``write``-based payload.
"""

from __future__ import annotations

import asyncio
import codecs
import enum
import io
import json
import mimetypes
import os
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from itertools import chain
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from multidict import CIMultiDict

from shared.rules import FORBIDDEN_VALUE_RE

from .helpers import parse_content_type
from .response import StreamReader

__all__ = [
    "EMPTY_PAYLOAD",
    "PAYLOAD_REGISTRY",
    "AsyncIterablePayload",
    "BufferedReaderPayload",
    "BytesIOPayload",
    "BytesPayload",
    "IOBasePayload",
    "JsonPayload",
    "LookupError",
    "Order",
    "Payload",
    "StringIOPayload",
    "StringPayload",
    "TextIOPayload",
    "get_payload",
    "payload_type",
    "register_payload",
]

FILE_CHUNK_SIZE = 2**16

_CHAR = {chr(i) for i in range(128)}
_CTL = {chr(i) for i in range(32)} | {chr(127)}
_SEPARATORS = set('()<>@,;:\\"/[]?={} \t')
TOKEN = _CHAR ^ _CTL ^ _SEPARATORS
_QCONTENT = {chr(i) for i in range(0x20, 0x7F)} | {"\t"}
_NOT_QTEXT_RE = re.compile(r"[^\041\043-\133\135-\176]")


class _Sentinel(enum.Enum):
    sentinel = enum.auto()


sentinel = _Sentinel.sentinel


class LookupError(Exception):  # noqa: A001 - aiohttp's name
    """No payload factory is registered for the given data type."""


class Order(str, enum.Enum):
    normal = "normal"
    try_first = "try_first"
    try_last = "try_last"


def guess_filename(obj: Any, default: str | None = None) -> str | None:
    name = getattr(obj, "name", None)
    if name and isinstance(name, str) and name[0] != "<" and name[-1] != ">":
        return Path(name).name
    return default


def _quoted_string(content: str) -> str:
    if not (_QCONTENT > set(content)):
        raise ValueError(f"bad content for quoted-string {content!r}")
    return _NOT_QTEXT_RE.sub(lambda m: "\\" + m.group(0), content)


def content_disposition_header(
    disptype: str, quote_fields: bool = True, _charset: str = "utf-8", **params: str
) -> str:
    """A MIME Content-Disposition value (RFC 2183, RFC 7578 4.2), as aiohttp builds it."""
    if not disptype or not (TOKEN > set(disptype)):
        raise ValueError(f"bad content disposition type {disptype!r}")
    value = disptype
    if params:
        pairs = []
        for key, val in params.items():
            if not key or not (TOKEN > set(key)):
                raise ValueError(f"bad content disposition parameter {key!r}={val!r}")
            if not quote_fields:
                escaped = val.replace("\\", "\\\\").replace('"', '\\"')
                pairs.append((key, f'"{escaped}"'))
            elif key.lower() == "filename":
                pairs.append((key, f'"{quote(val, "", encoding=_charset)}"'))
            else:
                try:
                    pairs.append((key, f'"{_quoted_string(val)}"'))
                except ValueError:
                    pairs.append((key + "*", f"{_charset}''{quote(val, '', encoding=_charset)}"))
        value = "; ".join((value, *("=".join(pair) for pair in pairs)))
    return value


def get_payload(data: Any, *args: Any, **kwargs: Any) -> Payload:
    """The payload for ``data``, from the registry (``LookupError`` if none fits)."""
    return PAYLOAD_REGISTRY.get(data, *args, **kwargs)


def register_payload(factory: type[Payload], type: Any, *, order: Order = Order.normal) -> None:
    PAYLOAD_REGISTRY.register(factory, type, order=order)


class payload_type:  # noqa: N801 - aiohttp's name
    """Class decorator: register a ``Payload`` subclass for values of ``type``."""

    def __init__(self, type: Any, *, order: Order = Order.normal) -> None:
        self.type = type
        self.order = order

    def __call__(self, factory: type[Payload]) -> type[Payload]:
        register_payload(factory, self.type, order=self.order)
        return factory


class PayloadRegistry:
    """Which payload class wraps which type: try_first, then exact type, then in order."""

    __slots__ = ("_first", "_normal", "_last", "_normal_lookup")

    def __init__(self) -> None:
        self._first: list[tuple[type[Payload], Any]] = []
        self._normal: list[tuple[type[Payload], Any]] = []
        self._last: list[tuple[type[Payload], Any]] = []
        self._normal_lookup: dict[Any, type[Payload]] = {}

    def get(self, data: Any, *args: Any, **kwargs: Any) -> Payload:
        for factory, type_ in self._first:
            if isinstance(data, type_):
                return factory(data, *args, **kwargs)
        if (exact := self._normal_lookup.get(type(data))) is not None:
            return exact(data, *args, **kwargs)
        if isinstance(data, Payload):
            return data
        for factory, type_ in chain(self._normal, self._last):
            if isinstance(data, type_):
                return factory(data, *args, **kwargs)
        raise LookupError()

    def register(self, factory: type[Payload], type: Any, *, order: Order = Order.normal) -> None:
        if order is Order.try_first:
            self._first.append((factory, type))
        elif order is Order.normal:
            self._normal.append((factory, type))
            for t in type if isinstance(type, Iterable) else (type,):
                self._normal_lookup[t] = factory
        elif order is Order.try_last:
            self._last.append((factory, type))
        else:
            raise ValueError(f"Unsupported order {order!r}")


class Payload(ABC):
    """A request body (or a part of a multipart one), as aiohttp's ``Payload``."""

    _default_content_type: str = "application/octet-stream"
    _size: int | None = None
    _consumed: bool = False
    _autoclose: bool = False

    def __init__(
        self,
        value: Any,
        headers: CIMultiDict[str] | dict[str, str] | Iterable[tuple[str, str]] | None = None,
        content_type: str | None | _Sentinel = sentinel,
        filename: str | None = None,
        encoding: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._encoding = encoding
        self._filename = filename
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._value = value
        if content_type is not sentinel and content_type is not None:
            self._headers["Content-Type"] = content_type
        elif self._filename is not None:
            guess = (
                mimetypes.guess_file_type  # type: ignore[attr-defined]
                if sys.version_info >= (3, 13)
                else mimetypes.guess_type
            )
            self._headers["Content-Type"] = guess(self._filename)[0] or self._default_content_type
        else:
            self._headers["Content-Type"] = self._default_content_type
        if headers:
            self._headers.update(headers)

    def __repr__(self) -> str:
        size = "unknown size" if self.size is None else f"{self.size} bytes"
        return f"<{type(self).__name__} {self.content_type} {size}>"

    @property
    def size(self) -> int | None:
        """Bytes the body will have on the wire, if known."""
        return self._size

    @property
    def filename(self) -> str | None:
        return self._filename

    @property
    def headers(self) -> CIMultiDict[str]:
        return self._headers

    @property
    def _binary_headers(self) -> bytes:
        lines = []
        for k, v in self.headers.items():
            if FORBIDDEN_VALUE_RE.search(k) or FORBIDDEN_VALUE_RE.search(v):
                raise ValueError(
                    "Forbidden control character detected in headers. "
                    "Potential header injection attack."
                )
            lines.append(f"{k}: {v}\r\n")
        return ("".join(lines) + "\r\n").encode("utf-8")

    @property
    def encoding(self) -> str | None:
        return self._encoding

    @property
    def content_type(self) -> str:
        return self._headers["Content-Type"]

    @property
    def consumed(self) -> bool:
        """The payload has been consumed and cannot be sent again."""
        return self._consumed

    @property
    def autoclose(self) -> bool:
        """Holds no resource that ``close`` must release."""
        return self._autoclose

    @property
    def _replayable(self) -> bool:
        """Whether ``_chunks`` can be run again from the start (a 307/308 redirect)."""
        return not self._consumed

    def set_content_disposition(
        self, disptype: str, quote_fields: bool = True, _charset: str = "utf-8", **params: Any
    ) -> None:
        """Set the ``Content-Disposition`` header."""
        self._headers["Content-Disposition"] = content_disposition_header(
            disptype, quote_fields=quote_fields, _charset=_charset, **params
        )

    @abstractmethod
    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The value as a string."""

    @abstractmethod
    async def write(self, writer: Any) -> None:
        """Write the body into ``writer`` (anything with ``async write(bytes)``)."""

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        """``write``, at most ``content_length`` bytes (None: all)."""
        await self.write(writer)

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        actual = self._encoding or encoding
        return self.decode(actual, errors).encode(actual)

    def _chunks(self) -> AsyncIterator[bytes]:
        """The body from its start, chunk by chunk: how the transport reads it."""
        return _WriterBridge(self).chunks()

    def _close(self) -> None:  # noqa: B027 - a no-op by default, as aiohttp's
        """Release what the payload holds without blocking (sync, for old callers)."""

    async def close(self) -> None:
        """Release what the payload holds (a file is closed); never waits long."""
        self._close()


class _WriterBridge:
    """Runs a ``write``-based payload in a task and hands its chunks over one at a time."""

    _DONE = object()

    def __init__(self, payload: Payload) -> None:
        self.payload = payload
        self.queue: asyncio.Queue[Any] = asyncio.Queue(1)
        self.output_size = 0
        self.buffer_size = 0

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if chunk:
            self.output_size += len(chunk)
            await self.queue.put(bytes(chunk))

    async def drain(self) -> None:
        pass

    async def write_eof(self, chunk: bytes = b"") -> None:
        await self.write(chunk)

    def enable_compression(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("compression is the transport's job here")

    def enable_chunking(self) -> None:
        pass

    async def _run(self) -> None:
        try:
            await self.payload.write(self)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await self.queue.put(exc)
        else:
            await self.queue.put(self._DONE)

    async def chunks(self) -> AsyncIterator[bytes]:
        task = asyncio.get_running_loop().create_task(self._run())
        try:
            while True:
                item = await self.queue.get()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            task.cancel()


class _Collect:
    """A writer that keeps what it is given (``Payload.write`` to bytes)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self.parts.append(bytes(chunk))


async def _write_chunks(payload: Payload, writer: Any, content_length: int | None) -> None:
    remaining = content_length
    async for chunk in payload._chunks():
        if remaining is None:
            await writer.write(chunk)
            continue
        if remaining > 0:
            await writer.write(chunk[:remaining])
        remaining -= len(chunk)


class BytesPayload(Payload):
    """``bytes``, ``bytearray`` or ``memoryview``."""

    _value: bytes
    _autoclose = True

    def __init__(self, value: bytes | bytearray | memoryview, *args: Any, **kwargs: Any) -> None:
        if "content_type" not in kwargs:
            kwargs["content_type"] = "application/octet-stream"
        super().__init__(value, *args, **kwargs)
        if isinstance(value, memoryview):
            self._size = value.nbytes
        elif isinstance(value, (bytes, bytearray)):
            self._size = len(value)
        else:
            raise TypeError(f"value argument must be byte-ish, not {type(value)!r}")

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._value).decode(encoding, errors)

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self._value

    async def write(self, writer: Any) -> None:
        await writer.write(self._value)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        await writer.write(self._value if content_length is None else self._value[:content_length])

    @property
    def _replayable(self) -> bool:
        return True

    async def _chunks(self) -> AsyncIterator[bytes]:
        view = memoryview(self._value).cast("B")
        for start in range(0, len(view), FILE_CHUNK_SIZE):
            yield bytes(view[start : start + FILE_CHUNK_SIZE])


class StringPayload(BytesPayload):
    """A ``str``, encoded with ``encoding`` or the charset of ``content_type`` (utf-8)."""

    def __init__(
        self,
        value: str,
        *args: Any,
        encoding: str | None = None,
        content_type: str | None = None,
        **kwargs: Any,
    ) -> None:
        if encoding is None:
            if content_type is None:
                real_encoding = "utf-8"
                content_type = "text/plain; charset=utf-8"
            else:
                real_encoding = parse_content_type(content_type)[1].get("charset", "utf-8")
        else:
            if content_type is None:
                content_type = f"text/plain; charset={encoding}"
            real_encoding = encoding
        super().__init__(
            value.encode(real_encoding),
            *args,
            encoding=real_encoding,
            content_type=content_type,
            **kwargs,
        )


class StringIOPayload(StringPayload):
    """An ``io.StringIO``: what is left of it, read now."""

    def __init__(self, value: IO[str], *args: Any, **kwargs: Any) -> None:
        super().__init__(value.read(), *args, **kwargs)


class IOBasePayload(Payload):
    """A binary file object, read a chunk at a time in a thread, from where it stood."""

    _value: Any
    _start_position: int | None = None

    def __init__(
        self, value: IO[Any], disposition: str = "attachment", *args: Any, **kwargs: Any
    ) -> None:
        if "filename" not in kwargs:
            kwargs["filename"] = guess_filename(value)
        super().__init__(value, *args, **kwargs)
        if self._filename is not None and disposition is not None:
            if "Content-Disposition" not in self.headers:
                self.set_content_disposition(disposition, filename=self._filename)

    def _set_or_restore_start_position(self) -> None:
        if self._start_position is None:
            try:
                self._start_position = self._value.tell()
            except (OSError, AttributeError, ValueError):
                self._consumed = True
            return
        try:
            self._value.seek(self._start_position)
        except (OSError, AttributeError, ValueError):
            self._consumed = True

    @property
    def size(self) -> int | None:
        try:
            if self._start_position is None:
                self._start_position = self._value.tell()
            return os.fstat(self._value.fileno()).st_size - self._start_position
        except (AttributeError, OSError, ValueError):
            return None

    @property
    def _replayable(self) -> bool:
        if self._consumed:
            return False
        try:
            seekable = self._value.seekable()
            if self._start_position is None:
                self._start_position = self._value.tell()
        except (AttributeError, OSError, ValueError):
            return False
        return bool(seekable)

    def _encode(self, chunk: Any) -> bytes:
        return bytes(chunk)

    def _first(self) -> tuple[int | None, bytes]:
        started = self._start_position is not None
        self._set_or_restore_start_position()
        if self._consumed and started:
            raise ValueError("the file cannot seek back to where its body started")
        size = self.size
        return size, self._read(min(FILE_CHUNK_SIZE, size or FILE_CHUNK_SIZE))

    def _read(self, n: int) -> bytes:
        return self._encode(self._value.read(n))

    async def _chunks(self) -> AsyncIterator[bytes]:
        size, chunk = await asyncio.to_thread(self._first)
        sent = 0
        while chunk:
            yield chunk
            sent += len(chunk)
            if size is not None and sent >= size:
                return
            chunk = await asyncio.to_thread(self._read, FILE_CHUNK_SIZE)

    async def write(self, writer: Any) -> None:
        await _write_chunks(self, writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        await _write_chunks(self, writer, content_length)

    def _close(self) -> None:
        if self._consumed and getattr(self._value, "closed", False):
            return
        self._consumed = True
        try:
            self._value.close()
        except Exception:  # closing is best effort: the request is over either way
            pass

    def _read_all(self) -> bytes:
        self._set_or_restore_start_position()
        return self._encode(self._value.read())

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._read_all().decode(encoding, errors)

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return await asyncio.to_thread(self._read_all)


class TextIOPayload(IOBasePayload):
    """A text file object, re-encoded with ``encoding`` (default: the content type's
    charset, else utf-8)."""

    _encoder: codecs.IncrementalEncoder

    def __init__(
        self,
        value: IO[str],
        *args: Any,
        encoding: str | None = None,
        content_type: str | None = None,
        **kwargs: Any,
    ) -> None:
        if encoding is None:
            if content_type is None:
                encoding = "utf-8"
                content_type = "text/plain; charset=utf-8"
            else:
                encoding = parse_content_type(content_type)[1].get("charset", "utf-8")
        elif content_type is None:
            content_type = f"text/plain; charset={encoding}"
        super().__init__(value, *args, content_type=content_type, encoding=encoding, **kwargs)

    @property
    def size(self) -> int | None:
        # The file's bytes are the body's only when they are in the body's encoding.
        try:
            same = codecs.lookup(self._value.encoding).name == codecs.lookup(
                self._encoding or "utf-8"
            ).name
        except (AttributeError, LookupError, TypeError):
            same = False
        return super().size if same else None

    def _first(self) -> tuple[int | None, bytes]:
        # One encoder per sending: a BOM (utf-16) only at the start of the body.
        self._encoder = codecs.getincrementalencoder(self._encoding or "utf-8")()
        return super()._first()

    def _encode(self, chunk: Any) -> bytes:
        return self._encoder.encode(chunk) if chunk else b""

    def _read_all(self) -> bytes:
        self._set_or_restore_start_position()
        return self._value.read().encode(self._encoding or "utf-8")  # type: ignore[no-any-return]

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        self._set_or_restore_start_position()
        return self._value.read()  # type: ignore[no-any-return]


class BytesIOPayload(IOBasePayload):
    """An ``io.BytesIO``, from its current position; its size is known up front."""

    _autoclose = True

    def __init__(self, value: io.BytesIO, *args: Any, **kwargs: Any) -> None:
        super().__init__(value, *args, **kwargs)
        self._size = len(self._value.getbuffer()) - self._value.tell()

    @property
    def size(self) -> int:
        return self._size  # type: ignore[return-value]

    async def _chunks(self) -> AsyncIterator[bytes]:
        self._set_or_restore_start_position()
        first = True
        while chunk := self._value.read(FILE_CHUNK_SIZE):
            if not first:
                await asyncio.sleep(0)  # a big buffer must not hold the loop
            first = False
            yield chunk

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        self._set_or_restore_start_position()
        return self._value.read()  # type: ignore[no-any-return]

    def _close(self) -> None:
        pass


class BufferedReaderPayload(IOBasePayload):
    """A file opened in binary mode (``open(path, "rb")``)."""


class JsonPayload(BytesPayload):
    """A value serialized with ``dumps`` (``json.dumps``), as ``application/json``."""

    def __init__(
        self,
        value: Any,
        encoding: str = "utf-8",
        content_type: str = "application/json",
        dumps: Callable[[Any], str] = json.dumps,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dumps(value).encode(encoding),
            *args,
            content_type=content_type,
            encoding=encoding,
            **kwargs,
        )


class AsyncIterablePayload(Payload):
    """An async iterable of bytes: sent once, as it comes (not replayable unless
    ``as_bytes`` has read it already)."""

    _iter: AsyncIterator[bytes] | None = None
    _cached_chunks: list[bytes] | None = None
    _autoclose = True

    def __init__(self, value: AsyncIterable[bytes], *args: Any, **kwargs: Any) -> None:
        if not isinstance(value, AsyncIterable):
            raise TypeError(
                "value argument must support collections.abc.AsyncIterable interface, "
                f"got {type(value)!r}"
            )
        if "content_type" not in kwargs:
            kwargs["content_type"] = "application/octet-stream"
        super().__init__(value, *args, **kwargs)
        self._iter = value.__aiter__()

    @property
    def _replayable(self) -> bool:
        return self._cached_chunks is not None

    async def _chunks(self) -> AsyncIterator[bytes]:
        if self._cached_chunks is not None:
            for chunk in self._cached_chunks:
                yield chunk
            return
        it, self._iter = self._iter, None
        if it is None:
            return
        self._consumed = True
        async for chunk in it:
            if isinstance(chunk, bytes):
                yield chunk
            elif isinstance(chunk, (bytearray, memoryview)):
                yield bytes(chunk)
            else:
                raise TypeError(f"a streamed body must yield bytes, got {type(chunk).__name__}")

    async def write(self, writer: Any) -> None:
        await _write_chunks(self, writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        await _write_chunks(self, writer, content_length)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        if self._cached_chunks is not None:
            return b"".join(self._cached_chunks).decode(encoding, errors)
        raise TypeError("Unable to decode - content not cached. Call as_bytes() first.")

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        if self._cached_chunks is not None:
            return b"".join(self._cached_chunks)
        if self._iter is None:
            return b""
        chunks = [bytes(chunk) async for chunk in self._iter]
        self._iter = None
        self._cached_chunks = chunks
        return b"".join(chunks)


class StreamReaderPayload(AsyncIterablePayload):
    """A response's ``StreamReader`` (ours or aiohttp's), proxied as it arrives."""

    def __init__(self, value: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(value.iter_any(), *args, **kwargs)


def _empty_reader() -> StreamReader:
    reader = StreamReader()
    reader.feed_eof()
    return reader


EMPTY_PAYLOAD: StreamReader = _empty_reader()

PAYLOAD_REGISTRY = PayloadRegistry()
PAYLOAD_REGISTRY.register(BytesPayload, (bytes, bytearray, memoryview))
PAYLOAD_REGISTRY.register(StringPayload, str)
PAYLOAD_REGISTRY.register(StringIOPayload, io.StringIO)
PAYLOAD_REGISTRY.register(TextIOPayload, io.TextIOBase)
PAYLOAD_REGISTRY.register(BytesIOPayload, io.BytesIO)
PAYLOAD_REGISTRY.register(BufferedReaderPayload, (io.BufferedReader, io.BufferedRandom))
PAYLOAD_REGISTRY.register(IOBasePayload, io.IOBase)
PAYLOAD_REGISTRY.register(StreamReaderPayload, StreamReader)
PAYLOAD_REGISTRY.register(AsyncIterablePayload, AsyncIterable, order=Order.try_last)


# -- payload_streamer: aiohttp's deprecated @streamer ----------------------------------


class _StreamWrapper:
    def __init__(
        self, coro: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.coro = coro
        self.args = args
        self.kwargs = kwargs

    async def __call__(self, writer: Any) -> None:
        await self.coro(writer, *self.args, **self.kwargs)


class streamer:  # noqa: N801 - aiohttp's name
    """Deprecated decorator: ``@streamer async def f(writer, ...)`` makes a body."""

    def __init__(self, coro: Callable[..., Any]) -> None:
        import warnings

        warnings.warn(
            "@streamer is deprecated, use async generators instead",
            DeprecationWarning,
            stacklevel=2,
        )
        self.coro = coro

    def __call__(self, *args: Any, **kwargs: Any) -> _StreamWrapper:
        return _StreamWrapper(self.coro, args, kwargs)


@payload_type(_StreamWrapper)
class StreamWrapperPayload(Payload):
    async def write(self, writer: Any) -> None:
        await self._value(writer)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("Unable to decode.")


@payload_type(streamer)
class StreamPayload(StreamWrapperPayload):
    def __init__(self, value: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(value(), *args, **kwargs)
