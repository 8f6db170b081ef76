"""Length-prefixed MessagePack frames, sans-IO.

A frame is a 4-byte little-endian body length followed by the body, one ``Message``. The
reader is fed whatever bytes arrived, in any split, and returns the whole messages; it
raises ``FrameError`` for a frame over the size cap (before buffering it) or a body that
does not decode into a known message, whatever the decoder raised (a value out of its
range, nesting too deep for the interpreter's recursion limit...). After an error the
reader is unusable: the connection it reads is to be closed.

A reader keeps at most one unfinished frame: at most ``max_frame`` bytes, a cap the
owner may lower (the broker does until a worker's Hello, which is tiny).
"""

from __future__ import annotations

import functools
import struct

import msgspec

from .messages import Message, Outgoing

__all__ = ["FrameError", "FrameReader", "encode", "MAX_FRAME"]

MAX_FRAME = 4 << 20
_LEN = struct.Struct("<I")
# enc_hook: header names may be multidict.istr (a str subclass msgspec does not take).
_encoder = msgspec.msgpack.Encoder(enc_hook=str)
_encode = _encoder.encode
_pack = _LEN.pack


@functools.cache
def _decoder() -> msgspec.msgpack.Decoder[Message]:
    """Decoders are stateless: one for every reader (a broker has a reader per worker),
    made by the first reader (its tables cost milliseconds an embedded worker never needs)."""
    return msgspec.msgpack.Decoder(Message)


class FrameError(Exception):
    """The peer sent something that is not a valid frame."""


def encode(msg: Outgoing) -> bytes:
    """One message as a complete frame."""
    body = _encode(msg)  # then a copy behind its length: cheaper than encode_into and bytes()
    return _pack(len(body)) + body


class FrameReader:
    """Turns a byte stream into messages."""

    __slots__ = ("_buf", "max_frame", "_broken", "_decode")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame
        self._broken = False
        self._decode = _decoder().decode

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """The whole messages in what has arrived so far.

        ``data`` may be a view of the caller's reused read buffer: it is decoded in
        place when nothing is pending (the usual case, whole frames per read), and only
        an unfinished frame's bytes are copied to be kept."""
        if self._broken:
            raise FrameError("the frame reader already failed")
        if self._buf:
            self._buf += data
            with memoryview(self._buf) as view:
                out, pos = self._parse(view)
            del self._buf[:pos]
            return out
        with memoryview(data) as view:
            out, pos = self._parse(view)
            if pos < len(view):
                self._buf[:] = view[pos:]
        return out

    def _parse(self, view: memoryview) -> tuple[list[Message], int]:
        out: list[Message] = []
        pos = 0
        end = len(view)
        decode = self._decode
        cap = self.max_frame
        while end - pos >= 4:
            (size,) = _LEN.unpack_from(view, pos)
            if size > cap:
                self._broken = True
                raise FrameError(f"frame of {size} bytes is over the cap of {cap}")
            if end - pos - 4 < size:
                break
            start = pos + 4
            try:
                out.append(decode(view[start : start + size]))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self._broken = True
                raise FrameError(f"malformed frame: {exc}") from None
            except Exception as exc:  # RecursionError, MemoryError... : still the peer's
                self._broken = True
                raise FrameError(f"malformed frame: {type(exc).__name__}: {exc}") from None
            pos = start + size
        return out, pos

    @property
    def buffered(self) -> int:
        return len(self._buf)
