"""Content-Encoding decoders: every codec bounds its output per call, bombs included."""

from __future__ import annotations

import gzip
import os
import zlib

import brotli
import pytest

from broker.decoding import DecodeError, make_decoder

LIMIT = 256 * 1024
BOMB_SIZE = 64 << 20


@pytest.fixture(scope="module")
def zeros() -> bytes:
    return bytes(BOMB_SIZE)


def compress(encoding: str, data: bytes) -> bytes:
    if encoding == "br":
        return brotli.compress(data, quality=5)  # quick, and still a bomb (about 100 bytes)
    if encoding == "gzip":
        return gzip.compress(data, compresslevel=1)
    return zlib.compress(data, 1)


def decode_all(encoding: str, payload: bytes, step: int, limit: int) -> tuple[bytes, int]:
    """Feed ``payload`` ``step`` bytes at a time as BodyPipe does; the output and the
    largest single decode."""
    decoder = make_decoder(encoding)
    assert decoder is not None
    out: list[bytes] = []
    for i in range(0, len(payload), step):
        out.append(decoder.decode(payload[i : i + step], limit))
        while decoder.pending:
            out.append(decoder.decode(b"", limit))
    out.append(decoder.flush())
    return b"".join(out), max(map(len, out))


@pytest.mark.parametrize("encoding", ["br", "gzip", "deflate"])
def test_a_bomb_decodes_in_bounded_pieces(encoding, zeros):
    payload = compress(encoding, zeros)
    assert len(payload) < BOMB_SIZE // 200
    decoder = make_decoder(encoding)
    assert decoder is not None
    first = decoder.decode(payload, LIMIT)
    assert 0 < len(first) <= LIMIT and decoder.pending
    total, calls = len(first), 1
    while decoder.pending:
        piece = decoder.decode(b"", LIMIT)
        assert len(piece) <= LIMIT
        total += len(piece)
        calls += 1
    assert decoder.flush() == b""
    assert total == BOMB_SIZE and calls >= BOMB_SIZE // LIMIT


@pytest.mark.parametrize("encoding", ["br", "gzip", "deflate"])
@pytest.mark.parametrize("step", [1, 1000, 1 << 20])
@pytest.mark.parametrize("limit", [1000, LIMIT])
def test_round_trip_whatever_the_input_pieces(encoding, step, limit):
    plain = os.urandom(100_000) + b"abc" * 200_000
    payload = compress(encoding, plain)
    out, largest = decode_all(encoding, payload, step, limit)
    assert out == plain and largest <= limit


@pytest.mark.parametrize("encoding", ["br", "gzip", "deflate"])
def test_truncated_and_corrupt_bodies_fail(encoding):
    payload = compress(encoding, os.urandom(50_000))
    decoder = make_decoder(encoding)
    assert decoder is not None
    decoder.decode(payload[: len(payload) // 2], LIMIT)
    while decoder.pending:
        decoder.decode(b"", LIMIT)
    with pytest.raises(DecodeError, match="truncated"):
        decoder.flush()
    decoder = make_decoder(encoding)
    assert decoder is not None
    with pytest.raises(DecodeError):
        decoder.decode(b"\xff" * 64, LIMIT)
        while decoder.pending:
            decoder.decode(b"", LIMIT)
        decoder.flush()


def test_unknown_encodings_pass_through():
    assert make_decoder("zstd-ish") is None
    assert make_decoder("identity") is None


@pytest.mark.parametrize("tail", [b"junk", gzip.compress(b"second member")])
def test_bytes_after_the_end_of_a_gzip_stream_are_dropped_not_owed(tail):
    """Trailing bytes once the stream has ended: nothing is pending, nothing grows (the
    body's pump used to loop for ever on them)."""
    plain = bytes(8 << 20)
    decoder = make_decoder("gzip")
    assert decoder is not None
    out = [decoder.decode(gzip.compress(plain) + tail, 1 << 18)]
    for _ in range(100):
        if not decoder.pending:
            break
        out.append(decoder.decode(b"", 1 << 18))
    assert not decoder.pending
    assert b"".join(out) == plain
    assert decoder.decode(b"more", 1 << 18) == b"" and not decoder.pending
    assert decoder.flush() == b""
