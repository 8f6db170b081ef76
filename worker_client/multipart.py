"""Multipart bodies: ``FormData`` and ``MultipartWriter`` to send, ``MultipartReader`` to
read a multipart response part by part, with aiohttp's names and rules.

Sending: a ``MultipartWriter`` is a ``Payload`` whose chunks are each part's boundary
line and headers, then that part's own chunks (``Payload._chunks``), so a file or an
async iterable in a part is read as it is sent, never joined in memory. Its size is
known when every part's is (and no part is re-encoded), and it can be sent again (a
307/308) when every part can.

Reading: ``MultipartReader`` reads the response's ``StreamReader`` through one small
buffer (``_Source``) that it shares with its parts and nested readers. A part's body
ends at CRLF + ``--boundary``: ``BodyPartReader.read_chunk`` hands out what cannot be
the start of that delimiter and keeps the rest. Bounds: a line of the part headers or a
boundary line is at most ``MAX_LINE`` bytes (else ``ValueError``); the buffer holds at
most one chunk asked for, plus the delimiter, plus one piece of the response.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import io
import json
import re
import uuid
import warnings
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from shared.rules import FORBIDDEN_VALUE_RE

from .helpers import parse_content_type
from .payload import (
    TOKEN,
    JsonPayload,
    LookupError,
    Order,
    Payload,
    StringPayload,
    get_payload,
    guess_filename,
    payload_type,
)

__all__ = [
    "BadContentDispositionHeader",
    "BadContentDispositionParam",
    "BodyPartReader",
    "FormData",
    "MultipartReader",
    "MultipartWriter",
    "content_disposition_filename",
    "parse_content_disposition",
]

MAX_LINE = 2**16
_CHAR = "".join(re.escape(chr(i)) for i in range(128))


class BadContentDispositionHeader(RuntimeWarning):
    pass


class BadContentDispositionParam(RuntimeWarning):
    pass


def _is_token(string: str) -> bool:
    return bool(string) and TOKEN >= set(string)


def _is_quoted(string: str) -> bool:
    return len(string) >= 2 and string[0] == string[-1] == '"'


def _is_continuous_param(string: str) -> bool:
    pos = string.find("*") + 1
    if not pos:
        return False
    substring = string[pos:-1] if string.endswith("*") else string[pos:]
    return substring.isdigit()


def _unescape(text: str) -> str:
    return re.sub(f"\\\\([{_CHAR}])", "\\1", text)


def parse_content_disposition(header: str | None) -> tuple[str | None, dict[str, str]]:
    """(disposition type, parameters) of a Content-Disposition value; a malformed one
    warns ``BadContentDispositionHeader`` and gives ``(None, {})``, a bad parameter
    warns ``BadContentDispositionParam`` and is skipped."""
    if not header:
        return None, {}
    disptype, *parts = header.split(";")
    disptype = disptype.strip()
    if not _is_token(disptype):
        warnings.warn(BadContentDispositionHeader(header), stacklevel=2)
        return None, {}
    params: dict[str, str] = {}
    while parts:
        item = parts.pop(0)
        if not item:
            warnings.warn(BadContentDispositionHeader(header), stacklevel=2)
            continue
        if "=" not in item:
            warnings.warn(BadContentDispositionHeader(header), stacklevel=2)
            return None, {}
        key, value = item.split("=", 1)
        key = key.lower().strip()
        value = value.lstrip()
        if key in params:
            warnings.warn(BadContentDispositionHeader(header), stacklevel=2)
            return None, {}
        if not _is_token(key):
            warnings.warn(BadContentDispositionParam(item), stacklevel=2)
            continue
        if _is_continuous_param(key):
            if _is_quoted(value):
                value = _unescape(value[1:-1])
            elif not _is_token(value):
                warnings.warn(BadContentDispositionParam(item), stacklevel=2)
                continue
        elif key.endswith("*"):
            if not (_is_token(value) and value.count("'") == 2):
                warnings.warn(BadContentDispositionParam(item), stacklevel=2)
                continue
            encoding, _, value = value.split("'", 2)
            try:
                value = unquote(value, encoding or "utf-8", "strict")
            except (builtins.LookupError, UnicodeDecodeError):
                warnings.warn(BadContentDispositionParam(item), stacklevel=2)
                continue
        else:
            rstripped = value.rstrip()
            if _is_quoted(rstripped):
                value = _unescape(rstripped[1:-1].lstrip("\\/"))
            elif _is_token(value):
                pass
            elif parts and _is_quoted(f"{value};{parts[0]}"):  # a ";" inside quotes
                value = _unescape(f"{value};{parts.pop(0)}"[1:-1].lstrip("\\/"))
            else:
                warnings.warn(BadContentDispositionHeader(header), stacklevel=2)
                return None, {}
        params[key] = value
    return disptype.lower(), params


def content_disposition_filename(params: Mapping[str, str], name: str = "filename") -> str | None:
    """The ``name`` parameter (``name*``, or RFC 2231 continuations ``name*0``...)."""
    name_suf = f"{name}*"
    if not params:
        return None
    if name_suf in params:
        return params[name_suf]
    if name in params:
        return params[name]
    parts = []
    fnparams = sorted((k, v) for k, v in params.items() if k.startswith(name_suf))
    for num, (key, value) in enumerate(fnparams):
        _, tail = key.split("*", 1)
        if tail.endswith("*"):
            tail = tail[:-1]
        if tail != str(num):
            break
        parts.append(value)
    if not parts:
        return None
    value = "".join(parts)
    if "'" in value:
        encoding, _, value = value.split("'", 2)
        try:
            return unquote(value, encoding or "utf-8", "strict")
        except (builtins.LookupError, UnicodeDecodeError):
            return None
    return value


# -- writing ---------------------------------------------------------------------------


class _PartEncoder:
    """Content-Encoding (deflate, gzip) then Content-Transfer-Encoding (base64,
    quoted-printable) of one part, a chunk at a time."""

    def __init__(self, encoding: str | None, te_encoding: str | None) -> None:
        self._zlib = None
        if encoding:
            wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else -zlib.MAX_WBITS
            self._zlib = zlib.compressobj(wbits=wbits)
        self._te = te_encoding
        self._b64_tail = b""

    def _transfer(self, data: bytes, last: bool) -> bytes:
        if self._te == "base64":
            data = self._b64_tail + data
            cut = len(data) if last else len(data) // 3 * 3
            self._b64_tail = data[cut:]
            return base64.b64encode(data[:cut])
        if self._te == "quoted-printable":
            return binascii.b2a_qp(data)
        return data

    def feed(self, chunk: bytes) -> bytes:
        if self._zlib is not None:
            chunk = self._zlib.compress(chunk)
        return self._transfer(chunk, False)

    def finish(self) -> bytes:
        tail = self._zlib.flush() if self._zlib is not None else b""
        return self._transfer(tail, True)


class MultipartWriter(Payload):
    """A multipart body (``multipart/<subtype>``), parts appended in order."""

    _value: None
    _autoclose = True
    _valid_tchar_regex = re.compile(rb"\A[!#$%&'*+\-.^_`|~\w]+\Z")
    _invalid_qdtext_char_regex = re.compile(rb"[\x00-\x08\x0A-\x1F\x7F]")

    def __init__(self, subtype: str = "mixed", boundary: str | None = None) -> None:
        boundary = boundary if boundary is not None else uuid.uuid4().hex
        try:
            self._boundary = boundary.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("boundary should contain ASCII only chars") from None
        super().__init__(None, content_type=f"multipart/{subtype}; boundary={self._boundary_value}")
        self._parts: list[tuple[Payload, str | None, str | None]] = []
        self._is_form_data = subtype == "form-data"

    def __enter__(self) -> MultipartWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        pass

    def __iter__(self) -> Iterator[tuple[Payload, str | None, str | None]]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def __bool__(self) -> bool:
        return True

    @property
    def consumed(self) -> bool:
        return self._consumed or any(part.consumed for part, _, _ in self._parts)

    @property
    def _replayable(self) -> bool:
        return not self._consumed and all(part._replayable for part, _, _ in self._parts)

    @property
    def _boundary_value(self) -> str:
        value = self._boundary
        if self._valid_tchar_regex.match(value):
            return value.decode("ascii")
        if self._invalid_qdtext_char_regex.search(value):
            raise ValueError("boundary value contains invalid characters")
        quoted = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return '"' + quoted.decode("ascii") + '"'

    @property
    def boundary(self) -> str:
        return self._boundary.decode("ascii")

    def append(self, obj: Any, headers: Mapping[str, str] | None = None) -> Payload:
        """Add a part: a payload, or anything ``get_payload`` makes one of."""
        if headers is None:
            headers = CIMultiDict()
        if isinstance(obj, Payload):
            obj.headers.update(headers)
            return self.append_payload(obj)
        try:
            payload = get_payload(obj, headers=headers)
        except LookupError:
            raise TypeError(f"Cannot create payload from {obj!r}") from None
        return self.append_payload(payload)

    def append_payload(self, payload: Payload) -> Payload:
        encoding: str | None = None
        te_encoding: str | None = None
        headers = payload.headers
        if self._is_form_data:
            # RFC 7578 4.7, 4.8: no per-part encodings or lengths in form data.
            banned = {"content-encoding", "content-length", "content-transfer-encoding"}
            if banned & {k.lower() for k in headers.keys()}:
                raise ValueError(f"a form-data part may not have {sorted(banned)} headers")
            if "Content-Disposition" not in headers:
                payload.set_content_disposition("form-data", name=f"section-{len(self._parts)}")
        else:
            encoding = headers.get("Content-Encoding", "").lower() or None
            if encoding and encoding not in ("deflate", "gzip", "identity"):
                raise RuntimeError(f"unknown content encoding: {encoding}")
            if encoding == "identity":
                encoding = None
            te_encoding = headers.get("Content-Transfer-Encoding", "").lower() or None
            if te_encoding not in (None, "base64", "quoted-printable", "binary"):
                raise RuntimeError(f"unknown content transfer encoding: {te_encoding}")
            if te_encoding == "binary":
                te_encoding = None
            size = payload.size
            if size is not None and not (encoding or te_encoding):
                headers["Content-Length"] = str(size)
        self._parts.append((payload, encoding, te_encoding))
        return payload

    def append_json(self, obj: Any, headers: Mapping[str, str] | None = None) -> Payload:
        return self.append_payload(JsonPayload(obj, headers=headers or CIMultiDict()))

    def append_form(
        self,
        obj: Sequence[tuple[str, str]] | Mapping[str, str],
        headers: Mapping[str, str] | None = None,
    ) -> Payload:
        if not isinstance(obj, (Sequence, Mapping)):
            raise TypeError(f"a form is a mapping or a sequence of pairs, got {obj!r}")
        pairs = list(obj.items()) if isinstance(obj, Mapping) else obj
        return self.append_payload(
            StringPayload(
                urlencode(pairs, doseq=True),
                headers=headers or CIMultiDict(),
                content_type="application/x-www-form-urlencoded",
            )
        )

    @property
    def size(self) -> int | None:
        total = 0
        for part, encoding, te_encoding in self._parts:
            part_size = part.size
            if encoding or te_encoding or part_size is None:
                return None
            total += 2 + len(self._boundary) + 2 + part_size + len(part._binary_headers) + 2
        return total + 2 + len(self._boundary) + 4

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return "".join(
            "--" + self.boundary + "\r\n" + part._binary_headers.decode(encoding, errors)
            + part.decode()
            for part, _, _ in self._parts
        )

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"".join([chunk async for chunk in self._chunks()])

    async def _chunks(self, close_boundary: bool = True) -> AsyncIterator[bytes]:
        for part, encoding, te_encoding in self._parts:
            yield b"--" + self._boundary + b"\r\n" + part._binary_headers
            if encoding or te_encoding:
                encoder = _PartEncoder(encoding, te_encoding)
                async for chunk in part._chunks():
                    if out := encoder.feed(chunk):
                        yield out
                if out := encoder.finish():
                    yield out
            else:
                async for chunk in part._chunks():
                    yield chunk
            yield b"\r\n"
        if close_boundary:
            yield b"--" + self._boundary + b"--\r\n"

    async def write(self, writer: Any, close_boundary: bool = True) -> None:
        async for chunk in self._chunks(close_boundary):
            await writer.write(chunk)

    async def close(self) -> None:
        """Close the parts that hold a resource (files)."""
        if self._consumed:
            return
        self._consumed = True
        for part, _, _ in self._parts:
            if not part.autoclose and not part.consumed:
                try:
                    await part.close()
                except Exception:  # one part's failure must not keep the others open
                    pass


class FormData:
    """A form: ``application/x-www-form-urlencoded``, or ``multipart/form-data`` as soon
    as a field is a file, has a filename or a content type."""

    def __init__(
        self,
        fields: Iterable[Any] = (),
        quote_fields: bool = True,
        charset: str | None = None,
        *,
        default_to_multipart: bool = False,
    ) -> None:
        self._writer = MultipartWriter("form-data")
        self._fields: list[tuple[MultiDict[str], dict[str, str], Any]] = []
        self._is_multipart = default_to_multipart
        self._quote_fields = quote_fields
        self._charset = charset
        if isinstance(fields, dict):
            fields = list(fields.items())
        elif not isinstance(fields, (list, tuple)):
            fields = (fields,)
        self.add_fields(*fields)

    @property
    def is_multipart(self) -> bool:
        return self._is_multipart

    def add_field(
        self,
        name: str,
        value: Any,
        *,
        content_type: str | None = None,
        filename: str | None = None,
        content_transfer_encoding: str | None = None,
    ) -> None:
        if isinstance(value, io.IOBase):
            self._is_multipart = True
        elif isinstance(value, (bytes, bytearray, memoryview)):
            if filename is None and content_transfer_encoding is None:
                warnings.warn(
                    "In v4, passing bytes will no longer create a file field. "
                    "Please explicitly use the filename parameter or pass a BytesIO object.",
                    DeprecationWarning,
                    stacklevel=2,
                )
                filename = name
        _safe_header(name)
        type_options: MultiDict[str] = MultiDict({"name": name})
        if filename is not None and not isinstance(filename, str):
            raise TypeError(f"filename must be an instance of str. Got: {filename}")
        if filename is None and isinstance(value, io.IOBase):
            filename = guess_filename(value, name)
        if filename is not None:
            _safe_header(filename)
            type_options["filename"] = filename
            self._is_multipart = True
        headers = {}
        if content_type is not None:
            if not isinstance(content_type, str):
                raise TypeError(f"content_type must be an instance of str. Got: {content_type}")
            _safe_header(content_type)
            headers["Content-Type"] = content_type
            self._is_multipart = True
        if content_transfer_encoding is not None:
            if not isinstance(content_transfer_encoding, str):
                raise TypeError(
                    "content_transfer_encoding must be an instance of str. "
                    f"Got: {content_transfer_encoding}"
                )
            warnings.warn(
                "content_transfer_encoding is deprecated. "
                "To maintain compatibility with v4 please pass a BytesPayload.",
                DeprecationWarning,
                stacklevel=2,
            )
            self._is_multipart = True
        self._fields.append((type_options, headers, value))

    def add_fields(self, *fields: Any) -> None:
        to_add = list(fields)
        while to_add:
            rec = to_add.pop(0)
            if isinstance(rec, io.IOBase):
                self.add_field(guess_filename(rec, "unknown"), rec)  # type: ignore[arg-type]
            elif isinstance(rec, (MultiDictProxy, MultiDict)):
                to_add.extend(rec.items())
            elif isinstance(rec, (list, tuple)) and len(rec) == 2:
                self.add_field(rec[0], rec[1])
            else:
                raise TypeError(
                    "Only io.IOBase, multidict and (name, file) pairs allowed, use "
                    f".add_field() for passing more complex parameters, got {rec!r}"
                )

    def _gen_form_urlencoded(self) -> Payload:
        data = [(options["name"], value) for options, _, value in self._fields]
        charset = self._charset if self._charset is not None else "utf-8"
        content_type = "application/x-www-form-urlencoded"
        if charset != "utf-8":
            content_type += f"; charset={charset}"
        from .payload import BytesPayload

        return BytesPayload(
            urlencode(data, doseq=True, encoding=charset).encode(), content_type=content_type
        )

    def _gen_form_data(self) -> MultipartWriter:
        for dispparams, headers, value in self._fields:
            try:
                if "Content-Type" in headers:
                    part = get_payload(
                        value,
                        content_type=headers["Content-Type"],
                        headers=headers,
                        encoding=self._charset,
                    )
                else:
                    part = get_payload(value, headers=headers, encoding=self._charset)
            except Exception as exc:
                raise TypeError(
                    f"Can not serialize value type: {type(value)!r}\n headers: {headers!r}\n "
                    f"value: {value!r}"
                ) from exc
            if dispparams:
                part.set_content_disposition(
                    "form-data", quote_fields=self._quote_fields, **dispparams
                )
                part.headers.popall("Content-Length", None)
            self._writer.append_payload(part)
        self._fields.clear()
        return self._writer

    def __call__(self) -> Payload:
        return self._gen_form_data() if self._is_multipart else self._gen_form_urlencoded()


def _safe_header(value: str) -> str:
    if FORBIDDEN_VALUE_RE.search(value):
        raise ValueError(
            "Forbidden control character detected in headers. Potential header injection attack."
        )
    return value


# -- reading ---------------------------------------------------------------------------


class _Source:
    """The response body with a small push-back buffer, shared by a reader and its parts."""

    __slots__ = ("content", "buf", "eof")

    def __init__(self, content: Any) -> None:
        self.content = content
        self.buf = bytearray()
        self.eof = False

    async def fill(self) -> bool:
        """Read one more piece of the body into the buffer; False at its end."""
        if self.eof:
            return False
        chunk = await self.content.readany()
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    async def readline(self) -> bytes:
        start = 0
        while (end := self.buf.find(b"\n", start)) < 0:
            if len(self.buf) > MAX_LINE:
                raise ValueError(f"a multipart line is longer than {MAX_LINE} bytes")
            start = len(self.buf)
            if not await self.fill():
                end = len(self.buf) - 1
                break
        line = bytes(self.buf[: end + 1])
        del self.buf[: end + 1]
        return line


class BodyPartReader:
    """One part of a multipart response: its ``headers``, and its body to read."""

    chunk_size = 8192

    def __init__(
        self,
        boundary: bytes,
        headers: CIMultiDictProxy[str],
        content: Any,
        *,
        subtype: str = "mixed",
        default_charset: str | None = None,
    ) -> None:
        self.headers = headers
        self._boundary = boundary
        self._delimiter = b"\r\n" + boundary
        self._source = content if isinstance(content, _Source) else _Source(content)
        self._content = self._source.content
        self._default_charset = default_charset
        self._is_form_data = subtype == "form-data"
        self._at_eof = False
        self._started = False

    def __repr__(self) -> str:
        eof = " eof" if self._at_eof else ""
        return f"<BodyPartReader {self.headers.get('Content-Type', '')!r}{eof}>"

    def __aiter__(self) -> BodyPartReader:
        return self

    async def __anext__(self) -> bytes:
        part = await self.next()
        if part is None:
            raise StopAsyncIteration
        return part

    async def next(self) -> bytes | None:
        item = await self.read()
        return item or None

    async def read(self, *, decode: bool = False) -> bytes:
        """The rest of the part's body (decoded by its encodings with ``decode``)."""
        if self._at_eof:
            return b""
        data = bytearray()
        while not self._at_eof:
            data += await self.read_chunk(self.chunk_size)
        return self.decode(bytes(data)) if decode else bytes(data)

    async def read_chunk(self, size: int = chunk_size) -> bytes:
        """Up to ``size`` bytes of the body; b"" once it ended."""
        return await self._read(size, None)

    async def readline(self) -> bytes:
        """One line of the body (its last without the CRLF of the delimiter)."""
        out = bytearray()
        while not self._at_eof and not out.endswith(b"\n"):
            out += await self._read(self.chunk_size, b"\n")
        return bytes(out)

    async def _read(self, size: int, stop: bytes | None) -> bytes:
        """Up to ``size`` bytes of the body, up to and with ``stop`` if it comes first."""
        if self._at_eof:
            return b""
        src = self._source
        skip = 0
        if not self._started:
            # The body begins right after the headers' blank line: put back the CRLF
            # of that line so that an empty body is found as "\r\n--boundary" too.
            src.buf[:0] = b"\r\n"
            self._started = True
            skip = 2
        size = max(size, 1)
        while len(src.buf) < size + skip + len(self._delimiter) and await src.fill():
            pass
        idx = src.buf.find(self._delimiter)
        if idx < 0 and src.eof:
            raise ValueError("the multipart body ended inside a part")
        end = idx if idx >= 0 else len(src.buf) - len(self._delimiter) + 1
        take = min(size + skip, end)
        if stop is not None and (at := src.buf.find(stop, skip, take)) >= 0:
            take = at + len(stop)
        chunk = bytes(src.buf[skip:take])
        if take == idx:
            del src.buf[: idx + 2]  # the delimiter's CRLF; "--boundary" is the reader's
            self._at_eof = True
        else:
            del src.buf[:take]
        return chunk

    async def release(self) -> None:
        """Read the rest of the body to the void."""
        while not self._at_eof:
            await self.read_chunk(self.chunk_size)

    async def text(self, *, encoding: str | None = None) -> str:
        data = await self.read(decode=True)
        return data.decode(encoding or self.get_charset(default="utf-8"))

    async def json(self, *, encoding: str | None = None) -> Any:
        data = await self.read(decode=True)
        if not data:
            return None
        return json.loads(data.decode(encoding or self.get_charset(default="utf-8")))

    async def form(self, *, encoding: str | None = None) -> list[tuple[str, str]]:
        data = await self.read(decode=True)
        if not data:
            return []
        real_encoding = encoding if encoding is not None else self.get_charset(default="utf-8")
        try:
            decoded = data.rstrip().decode(real_encoding)
        except UnicodeDecodeError:
            raise ValueError(f"data cannot be decoded with {real_encoding} encoding") from None
        return parse_qsl(decoded, keep_blank_values=True, encoding=real_encoding)

    def at_eof(self) -> bool:
        return self._at_eof

    def decode(self, data: bytes) -> bytes:
        """Undo the part's Content-Transfer-Encoding, then its Content-Encoding."""
        te = self.headers.get("Content-Transfer-Encoding", "").lower()
        if te == "base64":
            data = base64.b64decode(data)
        elif te == "quoted-printable":
            data = binascii.a2b_qp(data)
        elif te not in ("", "binary", "8bit", "7bit"):
            raise RuntimeError(f"unknown content transfer encoding: {te}")
        if self._is_form_data or "Content-Encoding" not in self.headers:
            return data
        encoding = self.headers["Content-Encoding"].lower()
        if encoding == "identity":
            return data
        if encoding in ("deflate", "gzip"):
            wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else -zlib.MAX_WBITS
            return zlib.decompress(data, wbits)
        raise RuntimeError(f"unknown content encoding: {encoding}")

    def get_charset(self, default: str) -> str:
        params = parse_content_type(self.headers.get("Content-Type", ""))[1]
        return params.get("charset", self._default_charset or default)

    @property
    def name(self) -> str | None:
        _, params = parse_content_disposition(self.headers.get("Content-Disposition"))
        return content_disposition_filename(params, "name")

    @property
    def filename(self) -> str | None:
        _, params = parse_content_disposition(self.headers.get("Content-Disposition"))
        return content_disposition_filename(params, "filename")


@payload_type(BodyPartReader, order=Order.try_first)
class BodyPartReaderPayload(Payload):
    """A part read from a response, sent on as a body (or a part) as it is read."""

    _value: BodyPartReader

    def __init__(self, value: BodyPartReader, *args: Any, **kwargs: Any) -> None:
        super().__init__(value, *args, **kwargs)
        params: dict[str, str] = {}
        if value.name is not None:
            params["name"] = value.name
        if value.filename is not None:
            params["filename"] = value.filename
        if params:
            self.set_content_disposition("attachment", True, **params)

    @property
    def _replayable(self) -> bool:
        return False

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("Unable to decode.")

    async def _chunks(self) -> AsyncIterator[bytes]:
        self._consumed = True
        while chunk := await self._value.read_chunk(2**16):
            yield chunk

    async def write(self, writer: Any) -> None:
        async for chunk in self._chunks():
            await writer.write(chunk)


class MultipartReader:
    """Reads a multipart body (a response's) part by part; a part that is itself
    multipart is read by a nested ``MultipartReader``."""

    response_wrapper_cls: type[MultipartResponseWrapper]
    multipart_reader_cls: type[MultipartReader] | None = None
    part_reader_cls = BodyPartReader

    def __init__(self, headers: Mapping[str, str], content: Any) -> None:
        self._mimetype, params = parse_content_type(headers.get("Content-Type"))
        if not self._mimetype.startswith("multipart/"):
            raise ValueError(f"{headers.get('Content-Type')!r} is not a multipart type")
        self._subtype = self._mimetype.partition("/")[2]
        boundary = params.get("boundary")
        if not boundary:
            raise ValueError(f"boundary missed for Content-Type: {headers.get('Content-Type')}")
        if len(boundary) > 70:
            raise ValueError(f"boundary {boundary!r} is too long (70 chars max)")
        self.headers = headers
        self._boundary = ("--" + boundary).encode()
        self._source = content if isinstance(content, _Source) else _Source(content)
        self._content = self._source.content
        self._default_charset: str | None = None
        self._last_part: MultipartReader | BodyPartReader | None = None
        self._at_eof = False
        self._at_bof = True

    def __repr__(self) -> str:
        return f"<MultipartReader {self._boundary[2:]!r}{' eof' if self._at_eof else ''}>"

    def __aiter__(self) -> MultipartReader:
        return self

    async def __anext__(self) -> MultipartReader | BodyPartReader:
        part = await self.next()
        if part is None:
            raise StopAsyncIteration
        return part

    @classmethod
    def from_response(cls, response: Any) -> MultipartResponseWrapper:
        """A reader of ``response``'s body, that releases the response at its end."""
        return MultipartResponseWrapper(response, cls(response.headers, response.content))

    def at_eof(self) -> bool:
        return self._at_eof

    async def next(self) -> MultipartReader | BodyPartReader | None:
        """The next part, or None after the last."""
        if self._at_eof:
            return None
        if self._last_part is not None:
            await self._last_part.release()
            self._last_part = None
        if not await self._read_boundary():
            self._at_eof = True
            return None
        headers = await self._read_headers()
        self._last_part = self._get_part_reader(headers)
        return self._last_part

    async def fetch_next_part(self) -> MultipartReader | BodyPartReader | None:
        return await self.next()

    async def release(self) -> None:
        """Read the remaining parts to the void."""
        while not self._at_eof:
            item = await self.next()
            if item is None:
                break
            await item.release()

    def _get_part_reader(self, headers: CIMultiDictProxy[str]) -> MultipartReader | BodyPartReader:
        mimetype, _ = parse_content_type(headers.get("Content-Type", ""))
        if mimetype.startswith("multipart/"):
            cls = self.multipart_reader_cls or type(self)
            return cls(headers, self._source)
        return self.part_reader_cls(
            self._boundary,
            headers,
            self._source,
            subtype=self._subtype,
            default_charset=self._default_charset,
        )

    async def _read_boundary(self) -> bool:
        """Skip to the next boundary line (the preamble, or what a nested part left):
        True for a part to come, False for the closing one."""
        boundary = self._boundary
        while True:
            line = await self._source.readline()
            if not line:
                raise ValueError(f"the multipart body ended before its boundary {boundary!r}")
            line = line.rstrip()
            if line == boundary:
                self._at_bof = False
                return True
            if line == boundary + b"--":
                return False
            if not self._at_bof and line:
                raise ValueError(f"Invalid boundary {line!r}, expected {boundary!r}")

    async def _read_headers(self) -> CIMultiDictProxy[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        while True:
            line = await self._source.readline()
            if not line:
                raise ValueError("the multipart body ended inside the headers of a part")
            line = line.rstrip(b"\r\n")
            if not line:
                return CIMultiDictProxy(headers)
            name, sep, value = line.decode("utf-8", "surrogateescape").partition(":")
            if not sep or not name.strip():
                raise ValueError(f"Invalid multipart header line {line!r}")
            headers.add(name.strip(), value.strip())


class MultipartResponseWrapper:
    """``MultipartReader.from_response``: reads the parts, releases the response after."""

    def __init__(self, resp: Any, stream: MultipartReader) -> None:
        self.resp = resp
        self.stream = stream

    def __aiter__(self) -> MultipartResponseWrapper:
        return self

    async def __anext__(self) -> MultipartReader | BodyPartReader:
        part = await self.next()
        if part is None:
            raise StopAsyncIteration
        return part

    def at_eof(self) -> bool:
        return self.stream.at_eof()

    async def next(self) -> MultipartReader | BodyPartReader | None:
        item = await self.stream.next()
        if self.stream.at_eof():
            await self.release()
        return item

    async def release(self) -> None:
        await self.resp.release()


MultipartReader.response_wrapper_cls = MultipartResponseWrapper
MultipartReader.multipart_reader_cls = MultipartReader
