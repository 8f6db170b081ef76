"""Multipart, pure parts: Content-Disposition parsing (against aiohttp's own results for
the cases of its tests), the writer's bytes and size, FormData's rules, and the reader fed
a byte at a time."""

from __future__ import annotations

import io
import warnings
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from worker_client import (
    BadContentDispositionHeader,
    BadContentDispositionParam,
    BodyPartReader,
    FormData,
    MultipartReader,
    MultipartWriter,
    StreamReader,
    content_disposition_filename,
    parse_content_disposition,
)

# The Content-Disposition values of aiohttp 3.14's tests/test_multipart_helpers.py.
HEADERS = [
    '"attachment"',
    '"foo; filename=bar;baz"; filename=qux',
    '"inline"',
    ': inline; attachment; filename=foo.html',
    '; filename=foo.html',
    'ATTACHMENT',
    'attachment',
    'attachment filename=bar',
    'attachment; ;filename=foo',
    'attachment; FILENAME="foo.html"',
    'attachment; creation-date="Wed, 12 Feb 1997 16:29:51 -0500"',
    'attachment; example="filename=example.txt"',
    "attachment; filename *=UTF-8''foo-%c3%a4.html",
    'attachment; filename ="foo.html"',
    "attachment; filename* =UTF-8''foo-%c3%a4.html",
    "attachment; filename*0*=ISO-8859-15''euro-sign%3d%a4; "
    "filename*=ISO-8859-1''currency-sign%3d%a4",
    'attachment; filename*0="foo"; filename*01="bar"',
    'attachment; filename*0="foo"; filename*2="bar"',
    'attachment; filename*0="foo."; filename*1="html"',
    'attachment; filename*0="foo."; filename*2="html"',
    'attachment; filename*0=foo bar',
    'attachment; filename*1="bar"; filename*0="foo"',
    "attachment; filename*= UTF-8''foo-%c3%a4.html",
    'attachment; filename*="UTF-8\'\'foo-%c3%a4.html"',
    'attachment; filename*="foo%20bar.html"',
    "attachment; filename*=''foo-%c3%a4-%e2%82%ac.html",
    "attachment; filename*=UTF-8''%5cfoo.html",
    "attachment; filename*=UTF-8''A-%2541.html",
    "attachment; filename*=UTF-8''f%oo.html",
    "attachment; filename*=UTF-8''foo%",
    "attachment; filename*=UTF-8''foo-%c3%a4-%e2%82%ac.html",
    "attachment; filename*=UTF-8''foo-a%cc%88.html",
    "attachment; filename*=UTF-8'foo-%c3%a4.html",
    "attachment; filename*=iso-8859-1''foo-%E4.html",
    "attachment; filename*=iso-8859-1''foo-%c3%a4-%e2%82%ac.html",
    "attachment; filename*=utf-8''foo-%E4.html",
    'attachment; filename=',
    'attachment; filename=""quoting" tested.html"',
    'attachment; filename="/foo.html"',
    'attachment; filename="0000000000111111111122222"',
    'attachment; filename="00000000001111111111222222222233333"',
    'attachment; filename="50%.html"',
    'attachment; filename="=?ISO-8859-1?Q?foo-=E4.html?="',
    'attachment; filename="Here\'s a semicolon;.html"',
    'attachment; filename="\\foo.html"',
    'attachment; filename="bar',
    'attachment; filename="foo-%41.html"',
    'attachment; filename="foo-%c3%a4-%e2%82%ac.html"',
    'attachment; filename="foo-Ã¤.html"',
    'attachment; filename="foo-ä.html"',
    'attachment; filename="foo.html"',
    'attachment; filename="foo.html".txt',
    'attachment; filename="foo.html"; filename="bar.html"',
    'attachment; filename="foo.pdf"',
    'attachment; filename="test.txt" ; name="field"',
    'attachment; filename="ä-%41.html"',
    "attachment; filename='foo.html'",
    'attachment; filename==?ISO-8859-1?Q?foo-=E4.html?=',
    'attachment; filename=bar foo=foo',
    'attachment; filename=foo bar.html',
    'attachment; filename=foo"bar;baz"qux',
    'attachment; filename=foo,bar.html',
    'attachment; filename=foo-Ã¤.html',
    'attachment; filename=foo-ä.html',
    'attachment; filename=foo.html',
    'attachment; filename=foo.html ;',
    'attachment; filename=foo.html, attachment; filename=bar.html',
    'attachment; filename=foo[1](2).html',
    'attachment; foo=""\\";filename="foo.html"',
    'attachment; foo="bar"; filename="foo.html"',
    'attachment; foo=foo filename=bar',
    'attachment; foobar=x; filename="foo.html"',
    'attachment; inline; filename=foo.html',
    'attachment; modification-date="Wed, 12 Feb 1997 16:29:51 -0500"',
    'attachment; name=foo; filename=',
    'attachment; xfilename=foo.html',
    'filename=foo.html',
    'filename=foo.html, filename=bar.html',
    'filename=foo.html; attachment',
    'foobar',
    'form-data ; name="field"',
    'form-data; name="data"; filename="file ; name.mp4"',
    'inline',
    'inline ',
    'inline; attachment; filename=foo.html',
    'inline; filename="Not an attachment!"',
    'inline; filename="foo.html"',
    'x=y; filename=foo.html',
]


def _parse(module: Any, header: str) -> tuple[Any, list[type[Warning]]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        disptype, params = module.parse_content_disposition(header)
        names = (
            module.content_disposition_filename(params, "filename"),
            module.content_disposition_filename(params, "name"),
        )
    return (disptype, params, names), [w.category.__name__ for w in caught]


@pytest.mark.parametrize("header", HEADERS)
def test_content_disposition_as_aiohttp(header: str) -> None:
    assert _parse(__import__("worker_client"), header) == _parse(aiohttp, header)


def test_content_disposition_warnings() -> None:
    with pytest.warns(BadContentDispositionHeader):
        assert parse_content_disposition("inline; filename") == (None, {})
    with pytest.warns(BadContentDispositionParam):
        assert parse_content_disposition("inline; filename*=bad''%zz%") == ("inline", {})
    assert parse_content_disposition(None) == (None, {})
    params = {"filename*0": "a", "filename*1": "b"}
    assert content_disposition_filename(params) == "ab"
    assert content_disposition_filename({}) is None


class Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.data += chunk

    async def write_eof(self, chunk: bytes = b"") -> None:
        self.data += chunk

    async def drain(self) -> None:
        pass


def _build(module: Any) -> Any:
    mw = module.MultipartWriter("mixed", boundary="B0und")
    mw.append("text ü")
    mw.append(b"\x00bin", {"Content-Type": "application/x-bin"})
    mw.append_json({"a": [1]})
    mw.append_form({"f": "g h"})
    inner = module.MultipartWriter("related", boundary="inner:b")
    inner.append(io.BytesIO(b"nested"))
    mw.append(inner)
    mw.append("z" * 5000, {"Content-Encoding": "deflate"})
    mw.append("q=p\u00e9" * 40, {"Content-Transfer-Encoding": "quoted-printable"})
    mw.append(bytes(range(256)) * 9, {"Content-Transfer-Encoding": "base64"})
    return mw


async def test_writer_bytes_are_aiohttps() -> None:
    ours, theirs = Collect(), Collect()
    await _build(__import__("worker_client")).write(ours)
    await _build(aiohttp).write(theirs)
    assert bytes(ours.data) == bytes(theirs.data)
    assert _build(__import__("worker_client")).headers == _build(aiohttp).headers


async def test_writer_size_is_what_it_writes() -> None:
    mw = MultipartWriter("form-data", boundary="x")
    mw.append("a")
    mw.append(io.BytesIO(b"bb"))
    out = Collect()
    await mw.write(out)
    assert mw.size == len(out.data)
    assert await mw.as_bytes() == bytes(out.data)


def test_boundary_quoting_and_checks() -> None:
    assert MultipartWriter(boundary="a b").headers["Content-Type"] == (
        'multipart/mixed; boundary="a b"'
    )
    with pytest.raises(ValueError, match="ASCII"):
        MultipartWriter(boundary="ü")
    with pytest.raises(ValueError, match="invalid characters"):
        MultipartWriter(boundary="a\nb")


def test_form_data_part_rules() -> None:
    mw = MultipartWriter("form-data")
    part = mw.append("x")
    assert part.headers["Content-Disposition"] == 'form-data; name="section-0"'
    with pytest.raises(ValueError):
        mw.append("y", {"Content-Length": "1"})
    with pytest.raises(RuntimeError, match="unknown content encoding"):
        MultipartWriter().append("y", {"Content-Encoding": "br"})
    with pytest.raises(TypeError, match="Cannot create payload"):
        MultipartWriter().append(object())


def test_form_data_chooses_multipart_as_aiohttp() -> None:
    assert not FormData({"a": "1"}).is_multipart
    assert FormData([("f", io.BytesIO(b"x"))]).is_multipart
    form = FormData()
    form.add_field("a", "1", content_type="text/plain")
    assert form.is_multipart
    form = FormData()
    form.add_field("a", "1", filename="a.txt")
    assert form.is_multipart
    with pytest.warns(DeprecationWarning, match="passing bytes"):
        FormData().add_field("b", b"raw")
    with pytest.raises(TypeError, match="Only io.IOBase"):
        FormData([1])
    with pytest.raises(TypeError, match="filename must be"):
        FormData().add_field("a", "1", filename=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="header injection"):
        FormData().add_field("a\r\nX: y", "1")


async def test_form_data_bytes_are_aiohttps() -> None:
    def build(module: Any) -> Any:
        form = module.FormData(quote_fields=False, charset="utf-8")
        form.add_field("name", "välue")
        form.add_field("file", io.BytesIO(b"data"), filename="f i.txt", content_type="text/x")
        writer = form()
        writer._boundary = b"FIXED"
        return writer

    ours, theirs = Collect(), Collect()
    await build(__import__("worker_client")).write(ours)
    await build(aiohttp).write(theirs)
    assert bytes(ours.data) == bytes(theirs.data)


BODY = (
    b"preamble\r\n--b\r\nContent-Type: text/plain; charset=latin-1\r\n"
    b'Content-Disposition: form-data; name="t"; filename="a.txt"\r\n\r\n'
    b"caf\xe9\r\n--b\r\n"
    b"Content-Type: multipart/related; boundary=in\r\n\r\n"
    b"--in\r\n\r\none\r\n--in\r\n\r\ntwo\r\n--in--\r\n"
    b"\r\n--b\r\n\r\n\r\n--b\r\nContent-Type: application/json\r\n\r\n"
    b'{"k": 1}\r\n--b--\r\nepilogue'
)


def _reader(body: bytes, step: int) -> StreamReader:
    reader = StreamReader()
    for i in range(0, len(body), step):
        reader.feed_data(body[i : i + step])
    reader.feed_eof()
    return reader


@pytest.mark.parametrize("step", [1, 2, 7, 1 << 16])
async def test_reader_fed_in_pieces(step: int) -> None:
    reader = MultipartReader(
        {"Content-Type": "multipart/form-data; boundary=b"}, _reader(BODY, step)
    )
    first = await reader.next()
    assert isinstance(first, BodyPartReader)
    assert (first.name, first.filename) == ("t", "a.txt")
    assert await first.text() == "café"
    nested = await reader.next()
    assert isinstance(nested, MultipartReader)
    assert [await p.read() async for p in nested] == [b"one", b"two"]
    empty = await reader.next()
    assert await empty.read() == b""
    last = await reader.next()
    assert await last.json() == {"k": 1}
    assert await reader.next() is None


async def test_reader_readline_and_chunks() -> None:
    body = b"--b\r\n\r\nline 1\nline 2\r\n--b--\r\n"
    part = await MultipartReader(
        {"Content-Type": "multipart/mixed; boundary=b"}, _reader(body, 3)
    ).next()
    assert await part.readline() == b"line 1\n"
    assert await part.readline() == b"line 2"
    assert await part.readline() == b""
    long = b"y" * 300_000 + b"\n"
    body = b"--b\r\n\r\n" + long + b"tail\r\n--b--\r\n"
    part = await MultipartReader(
        {"Content-Type": "multipart/mixed; boundary=b"}, _reader(body, 1 << 16)
    ).next()
    assert await part.readline() == long
    assert await part.read_chunk(2) == b"ta"
    assert await part.readline() == b"il"
    assert part.at_eof()


async def test_reader_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="boundary missed"):
        MultipartReader({"Content-Type": "multipart/mixed"}, _reader(b"", 1))
    with pytest.raises(ValueError, match="not a multipart"):
        MultipartReader({"Content-Type": "text/plain"}, _reader(b"", 1))
    reader = MultipartReader(
        {"Content-Type": "multipart/mixed; boundary=b"},
        _reader(b"--b\r\nno colon\r\n\r\n", 4),
    )
    with pytest.raises(ValueError, match="Invalid multipart header"):
        await reader.next()
    long_line = MultipartReader(
        {"Content-Type": "multipart/mixed; boundary=b"}, _reader(b"x" * (1 << 17), 1 << 12)
    )
    with pytest.raises(ValueError, match="longer than"):
        await long_line.next()


async def test_part_decodings() -> None:
    headers = CIMultiDictProxy(CIMultiDict({"Content-Encoding": "gzip"}))
    import gzip

    part = BodyPartReader(b"--b", headers, _reader(b"", 1))
    assert part.decode(gzip.compress(b"zipped")) == b"zipped"
    form_part = BodyPartReader(b"--b", headers, _reader(b"", 1), subtype="form-data")
    assert form_part.decode(b"as is") == b"as is"  # RFC 7578 4.8: no encodings in forms
