"""The option rules of ``worker_client.request_options``, without a server."""

from __future__ import annotations

import gzip
import warnings
import zlib

import pytest
from multidict import CIMultiDict
from yarl import URL

from worker_client.request_builder import PreparedRequest
from worker_client.request_options import (
    UNSET,
    bounded,
    compress_and_chunk,
    expects_continue,
    is_http10,
    session_timeout,
)


def prepared(body=None, stream=None, **headers) -> PreparedRequest:
    return PreparedRequest("POST", URL("http://h/"), CIMultiDict(headers), body, stream)


def test_bounded():
    assert bounded("x", 10, 100) == 10
    assert bounded("x", 10**9, 100) == 100
    with pytest.raises(ValueError, match="x must be at least 1"):
        bounded("x", 0, 100)
    for bad in (True, 1.5, "3"):
        with pytest.raises(TypeError):
            bounded("x", bad, 100)


@pytest.mark.parametrize(
    ("version", "http10"), [((1, 0), True), ((1, 1), False), ("1.0", True), (" 1 . 1", False)]
)
def test_versions(version, http10):
    assert is_http10(version) is http10


@pytest.mark.parametrize("version", [(2, 0), (0, 9), "x.y", "2"])
def test_other_versions_are_refused(version):
    with pytest.raises(ValueError):
        is_http10(version)


def test_expects_continue():
    headers: CIMultiDict[str] = CIMultiDict()
    assert expects_continue(headers, True) and headers["Expect"] == "100-continue"
    assert expects_continue(CIMultiDict(expect="100-Continue"), False)
    assert not expects_continue(CIMultiDict(), False)
    assert not expects_continue(CIMultiDict(Expect="something"), False)


@pytest.mark.parametrize(
    ("compress", "decode"),
    [(True, zlib.decompress), ("deflate", zlib.decompress), ("gzip", gzip.decompress)],
)
def test_compress_a_body_in_memory(compress, decode):
    req, chunked = compress_and_chunk(prepared(b"x" * 1000), b"x" * 1000, None, compress, None, {})
    assert chunked and decode(req.body) == b"x" * 1000
    assert req.headers["Content-Encoding"] == ("deflate" if compress is True else compress)


async def test_compress_a_stream_piece_by_piece():
    closed = []

    async def source():
        try:
            for _ in range(10):
                yield b"y" * 10_000
        finally:
            closed.append(True)

    req, chunked = compress_and_chunk(
        prepared(stream=source()), object(), None, "gzip", None, {}
    )
    assert chunked and req.body is None
    out = b"".join([piece async for piece in req.stream])
    assert gzip.decompress(out) == b"y" * 100_000 and closed == [True]


def test_nothing_to_compress():
    req, chunked = compress_and_chunk(prepared(None), None, None, True, None, {})
    assert not chunked and "Content-Encoding" not in req.headers
    req, chunked = compress_and_chunk(prepared(b""), b"", None, True, None, {})
    assert not chunked and req.body == b""


def test_chunked_rules_and_warning():
    with pytest.raises(ValueError, match="Content-Length header is set"):
        given = {"Content-Length": "1"}
        compress_and_chunk(prepared(b"x", **given), b"x", None, None, True, given)
    with pytest.raises(ValueError, match="Transfer-Encoding: chunked"):
        compress_and_chunk(
            prepared(b"x", **{"Transfer-Encoding": "chunked"}), b"x", None, None, True, {}
        )
    with pytest.warns(DeprecationWarning, match="Chunk size is deprecated #1615"):
        assert compress_and_chunk(prepared(b"x"), b"x", None, None, 100, {})[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not compress_and_chunk(prepared(b"x"), b"x", None, None, False, {})[1]


async def test_a_stream_of_known_size_compressed_goes_chunked_and_replays_compressed():
    # The body's own size set Content-Length (aiohttp sets it only when not chunked);
    # a Rewind must send the compressed stream again, not the raw one.
    async def source():
        yield b"z" * 5000

    req = prepared(stream=source(), **{"Content-Length": "5000"})
    req = req._replace(rewind=source)
    req, chunked = compress_and_chunk(req, object(), None, "gzip", None, {})
    assert chunked and "Content-Length" not in req.headers
    again = b"".join([piece async for piece in req.rewind()])
    assert gzip.decompress(again) == b"z" * 5000


def test_compress_with_a_chunked_header_is_refused_as_aiohttp():
    with pytest.raises(ValueError, match="Transfer-Encoding: chunked"):
        compress_and_chunk(
            prepared(b"x", **{"Transfer-Encoding": "chunked"}), b"x", None, True, None, {}
        )


def test_session_timeout():
    assert session_timeout(None, UNSET, None).total == 300
    with pytest.raises(ValueError, match="cannot be of <class 'float'> type"):
        session_timeout(1.5, UNSET, None)
