"""Content-Encoding decoders for response bodies (gzip, deflate, br)."""

from __future__ import annotations

import zlib
from typing import Protocol

try:
    import brotli
except ImportError:  # pragma: no cover - brotli is an optional extra
    brotli = None

__all__ = ["Decoder", "DecodeError", "make_decoder", "SUPPORTED"]

SUPPORTED = ("gzip", "deflate", "br") if brotli is not None else ("gzip", "deflate")


class DecodeError(Exception):
    """The body does not decode with its Content-Encoding."""


class Decoder(Protocol):
    """``decode`` returns at most ``limit`` bytes; input it could not get to yet stays
    ``pending`` and is worked through by further ``decode(b"", limit)`` calls."""

    @property
    def pending(self) -> bool: ...
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
        return bool(self._tail)

    def decode(self, data: bytes, limit: int) -> bytes:
        if not self._started and data:
            self._started = True
            # Some servers send raw deflate without the zlib header (as aiohttp, sniff
            # the compression method nibble of the first byte).
            if self._encoding == "deflate" and data[0] & 0x0F != 8:
                self._obj = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
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
    __slots__ = ("_obj",)

    pending = False  # brotli's decoder has no output limit: all output comes at once

    def __init__(self) -> None:
        self._obj = brotli.Decompressor()

    def decode(self, data: bytes, limit: int) -> bytes:
        try:
            return bytes(self._obj.process(data))
        except brotli.error as exc:
            raise DecodeError("Can not decode content-encoding: br") from exc

    def flush(self) -> bytes:
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
