"""aiohttp's session and request options, read as aiohttp 3.14 reads them (pure
functions): head limits and buffer sizes (bounded as the broker takes them),
``version=``, ``expect100=``, the session's ``timeout=`` with the deprecated
``read_timeout=``/``conn_timeout=``, and ``compress=``/``chunked=`` on a prepared
request.

``compress=`` compresses the body here, in the worker, as aiohttp's writer does
(``deflate`` is the zlib format, ``gzip`` the gzip one), with ``Content-Encoding`` and
chunked framing. A body in memory is compressed at once and stays in memory (so a
307/308 can send it again); a streamed body is compressed piece by piece as it is
read, holding no more than zlib's own window.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
from multidict import CIMultiDict

from shared.specs import DEFAULT_TIMEOUT, ClientTimeout

from .request_builder import PreparedRequest

__all__ = [
    "UNSET",
    "bounded",
    "compress_and_chunk",
    "expects_continue",
    "is_http10",
    "session_timeout",
]

UNSET: Any = object()
_WBITS = {"deflate": zlib.MAX_WBITS, "gzip": 16 + zlib.MAX_WBITS}


def bounded(name: str, value: Any, top: int) -> int:
    """A head limit or buffer size as the broker takes it: at most ``top`` (more means
    up to the broker's bound: the whole head is capped there anyway)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return min(value, top)


def is_http10(version: Any) -> bool:
    """``version=`` (an ``HttpVersion`` or "1.0"): True for HTTP/1.0."""
    if isinstance(version, str):
        try:
            major, minor = (int(p.strip()) for p in version.split(".", 1))
        except ValueError:
            raise ValueError(f"Can not parse http version number: {version}") from None
        version = (major, minor)
    if tuple(version) not in ((1, 0), (1, 1)):
        raise ValueError(f"http-broker speaks HTTP/1.0 and HTTP/1.1, not {version!r}")
    return tuple(version) == (1, 0)


def session_timeout(timeout: Any, read_timeout: Any, conn_timeout: Any) -> ClientTimeout:
    """A session's ``timeout=`` (a ``ClientTimeout`` only: a number is aiohttp's
    ValueError), or the deprecated ``read_timeout=``/``conn_timeout=`` as aiohttp 3.14
    takes them. ``read_timeout`` is unset when it is this module's ``UNSET``."""
    if timeout is None:
        out: ClientTimeout = DEFAULT_TIMEOUT
        if read_timeout is not UNSET:
            warnings.warn(
                "read_timeout is deprecated, use timeout argument instead",
                DeprecationWarning,
                stacklevel=3,
            )
            out = msgspec.structs.replace(out, total=read_timeout)
        if conn_timeout is not None:
            warnings.warn(
                "conn_timeout is deprecated, use timeout argument instead",
                DeprecationWarning,
                stacklevel=3,
            )
            out = msgspec.structs.replace(out, connect=conn_timeout)
        return out
    if not isinstance(timeout, ClientTimeout):
        raise ValueError(
            f"timeout parameter cannot be of {type(timeout)} type, "
            "please use 'timeout=ClientTimeout(...)'"
        )
    if read_timeout is not UNSET:
        raise ValueError(
            "read_timeout and timeout parameters conflict, please setup timeout.read"
        )
    if conn_timeout is not None:
        raise ValueError(
            "conn_timeout and timeout parameters conflict, please setup timeout.connect"
        )
    return timeout


def expects_continue(headers: CIMultiDict[str], expect100: bool) -> bool:
    """aiohttp's ``expect100=``: sets the ``Expect`` header; the header given by hand
    (any case) means the same."""
    if expect100:
        headers["Expect"] = "100-continue"
        return True
    expect = headers.get("Expect")
    return expect is not None and expect.lower() == "100-continue"


def _empty(data: Any, json: Any) -> bool:
    """aiohttp's ``not data`` (an empty body is never compressed)."""
    if json is not None:
        return False
    try:
        return not data
    except Exception:  # an object without a truth value is a body
        return False


def compress_and_chunk(
    prepared: PreparedRequest,
    data: Any,
    json: Any,
    compress: Any,
    chunked: Any,
    given: Mapping[str, str],
) -> tuple[PreparedRequest, bool]:
    """Apply ``compress=`` and ``chunked=`` with aiohttp's rules; returns the request
    and whether its body (if in memory) goes chunked. ``given``: the caller's own
    headers (a Content-Length there conflicts with chunking; one the body's size gave
    is dropped, as aiohttp sets it only for a body not sent chunked)."""
    if chunked is not None and not isinstance(chunked, bool):
        warnings.warn("Chunk size is deprecated #1615", DeprecationWarning, stacklevel=4)
    headers = prepared.headers
    chunk = bool(chunked)
    if compress and not _empty(data, json):
        if headers.get("Content-Encoding"):
            raise ValueError("compress can not be set if Content-Encoding header is set")
        encoding = compress if isinstance(compress, str) else "deflate"
        wbits = _WBITS.get(encoding.lower())
        if wbits is None:
            raise ValueError(
                f"compress={compress!r}: http-broker compresses with 'deflate' or 'gzip'"
            )
        headers["Content-Encoding"] = encoding
        chunk = True
        if prepared.body is not None:
            c = zlib.compressobj(wbits=wbits)
            prepared = prepared._replace(body=c.compress(prepared.body) + c.flush())
        elif prepared.stream is not None:
            rewind = prepared.rewind
            prepared = prepared._replace(
                stream=_compressing(prepared.stream, wbits),
                rewind=None if rewind is None else lambda: _compressing(rewind(), wbits),
            )
    if chunk:
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            # compress= makes the body chunked as chunked=True does (aiohttp)
            raise ValueError(
                'chunked can not be set if "Transfer-Encoding: chunked" header is set'
            )
        if "Content-Length" in given:
            raise ValueError("chunked can not be set if Content-Length header is set")
        else:
            headers.popall("Content-Length", None)
    return prepared, chunk


async def _compressing(stream: AsyncIterator[bytes], wbits: int) -> AsyncIterator[bytes]:
    c = zlib.compressobj(wbits=wbits)
    try:
        async for chunk in stream:
            out = c.compress(chunk)
            if out:
                yield out
        yield c.flush()
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
