"""Content-Encoding decoders for response bodies (gzip, deflate, br).

Every decoder bounds its output per call: ``decode(data, limit)`` returns at most
``limit`` bytes, and what it could not get to yet stays ``pending`` for further
``decode(b"", limit)`` calls, so a small compressed body that inflates to gigabytes is
never inflated at once. br needs brotli >= 1.2 (``output_buffer_limit``); with an older
brotli, br is not decoded at all.
"""

from __future__ import annotations

import zlib
from typing import Protocol

try:
    import brotli
except ImportError:  # pragma: no cover - brotli is an optional extra
    brotli = None

if brotli is not None and not hasattr(brotli.Decompressor(), "can_accept_more_data"):
    # brotli < 1.2 decodes a whole input at once, however large the output: a few
    # hundred bytes can become gigabytes. Such a brotli is not used; the br body is
    # passed through undecoded, as with no brotli at all.
    brotli = None  # pragma: no cover

__all__ = ["Decoder", "DecodeError", "make_decoder", "SUPPORTED"]

SUPPORTED = ("gzip", "deflate", "br") if brotli is not None else ("gzip", "deflate")


class DecodeError(Exception):
    """The body does not decode with its Content-Encoding."""


class Decoder(Protocol):
    """``decode`` returns at most ``limit`` bytes; input it could not get to yet stays
    ``pending`` and is worked through by further ``decode(b"", limit)`` calls. ``push``
    only keeps input for later, for a caller that may not take more output now."""

    @property
    def pending(self) -> bool: ...
    def push(self, data: bytes) -> None: ...
    def decode(self, data: bytes, limit: int) -> bytes: ...
    def flush(self) -> bytes: ...


class _ZlibDecoder:
    __slots__ = ("_encoding", "_obj", "_started", "_tail")

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._started = False
        self._tail = b""
        wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        self._obj = zlib.decompressobj(wbits=wbits)

    @property
    def pending(self) -> bool:
        # After the end of the stream, what is left is trailing bytes, not output owed.
        return bool(self._tail) and not self._obj.eof

    def push(self, data: bytes) -> None:
        if data and not self._obj.eof:
            self._sniff(data)
            self._tail = self._tail + data if self._tail else data

    def _sniff(self, data: bytes) -> None:
        if not self._started:
            self._started = True
            # Some servers send raw deflate without the zlib header (as aiohttp, sniff
            # the compression method nibble of the first byte).
            if self._encoding == "deflate" and data[0] & 0x0F != 8:
                self._obj = zlib.decompressobj(wbits=-zlib.MAX_WBITS)

    def decode(self, data: bytes, limit: int) -> bytes:
        if self._obj.eof:
            # Bytes after the end of the compressed stream (a second gzip member, junk):
            # dropped, as aiohttp does, never kept to grow.
            self._tail = b""
            return b""
        if not self._started and data:
            self._sniff(data)
        if self._tail:
            data = self._tail + data
        try:
            out = self._obj.decompress(data, limit)
        except zlib.error as exc:
            raise DecodeError(f"Can not decode content-encoding: {self._encoding}") from exc
        self._tail = self._obj.unconsumed_tail
        return out

    def flush(self) -> bytes:
        try:
            out = self._obj.flush()
        except zlib.error as exc:
            raise DecodeError(f"Can not decode content-encoding: {self._encoding}") from exc
        if self._started and not self._obj.eof:
            raise DecodeError(f"Can not decode content-encoding: {self._encoding} (truncated)")
        return out


class _BrotliDecoder:
    """brotli >= 1.2 bounds each ``process`` call with ``output_buffer_limit``; its
    output buffer grows by doubling blocks, so one call may return up to about twice
    the limit: the excess is kept in ``_spill`` (at most ``limit`` + 32 KiB) and served
    first by the next call. ``can_accept_more_data()`` is False while the decoder holds
    input it has not consumed; output it holds after consuming all input shows only as
    a call that filled its limit (``_more``)."""

    __slots__ = ("_obj", "_input", "_spill", "_more")

    def __init__(self) -> None:
        self._obj = brotli.Decompressor()
        self._input = b""  # input that came while the decoder could not take it
        self._spill = b""
        self._more = False

    @property
    def pending(self) -> bool:
        return bool(self._spill or self._input or self._more)

    def push(self, data: bytes) -> None:
        if data:
            self._input = self._input + data if self._input else data

    def decode(self, data: bytes, limit: int) -> bytes:
        if data:
            self._input = self._input + data if self._input else data
        out = self._spill
        want = limit - len(out)
        if want > 0 and (self._input or self._more):
            obj = self._obj
            feed = b""
            if obj.can_accept_more_data():
                feed, self._input = self._input, b""
            try:
                got = obj.process(feed, output_buffer_limit=want)
                self._more = len(got) >= want or not obj.can_accept_more_data()
            except brotli.error as exc:
                raise DecodeError("Can not decode content-encoding: br") from exc
            out = out + got if out else got
        if len(out) <= limit:
            self._spill = b""
            return out
        self._spill = out[limit:]
        return out[:limit]

    def flush(self) -> bytes:
        if self.pending:  # the caller drains ``pending`` first; never unbounded here
            raise DecodeError("Can not decode content-encoding: br (output left over)")
        try:
            finished = self._obj.is_finished()
        except brotli.error as exc:  # the decoder failed earlier
            raise DecodeError("Can not decode content-encoding: br") from exc
        if not finished:
            raise DecodeError("Can not decode content-encoding: br (truncated)")
        return b""


def make_decoder(content_encoding: str) -> Decoder | None:
    """A decoder for a Content-Encoding value, or None to pass the body through."""
    enc = content_encoding.strip().lower()
    if enc in ("gzip", "x-gzip"):
        return _ZlibDecoder("gzip")
    if enc == "deflate":
        return _ZlibDecoder("deflate")
    if enc == "br" and brotli is not None:
        return _BrotliDecoder()
    return None
