"""prepare_request and BasicAuth, compared with aiohttp where it decides the same thing."""

from __future__ import annotations

import asyncio
import io
import json
import pickle
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict, MultiDict
from yarl import URL

from worker_client.exceptions import InvalidURL, InvalidUrlClientError, NonHttpUrlClientError
from worker_client.helpers import BasicAuth
from worker_client.request_builder import (
    DEFAULT_HEADERS,
    USER_AGENT,
    PreparedRequest,
    prepare_request,
)
from worker_client.response import StreamReader


def prep(url: str | URL = "http://example.com/path", **kwargs) -> PreparedRequest:  # type: ignore[no-untyped-def]
    return prepare_request(kwargs.pop("method", "get"), url, **kwargs)


async def collect(stream: AsyncIterator[bytes] | None) -> list[bytes]:
    assert stream is not None
    return [chunk async for chunk in stream]


def aiohttp_form(data) -> bytes:  # type: ignore[no-untyped-def]
    return aiohttp.FormData(data)()._value  # type: ignore[attr-defined,no-any-return]


# -- BasicAuth ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "login, password, encoding",
    [
        ("user", "pass", "latin1"),
        ("us er", "pässword", "latin1"),
        ("ü", "€", "utf-8"),
        ("u", "", "latin1"),
    ],
)
def test_basic_auth_encode_like_aiohttp(login: str, password: str, encoding: str) -> None:
    ours = BasicAuth(login, password, encoding)
    assert ours.encode() == aiohttp.encode_basic_auth(login, password, encoding)
    assert BasicAuth.decode(ours.encode(), encoding) == ours
    assert tuple(aiohttp.BasicAuth.decode(ours.encode(), encoding)) == tuple(ours)


def test_basic_auth_defaults_and_validation() -> None:
    auth = BasicAuth("user")
    assert (auth.login, auth.password, auth.encoding) == ("user", "", "latin1")
    assert pickle.loads(pickle.dumps(auth)) == auth
    with pytest.raises(ValueError, match="None is not allowed as login"):
        BasicAuth(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="None is not allowed as password"):
        BasicAuth("u", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='":" is not allowed'):
        BasicAuth("a:b")


@pytest.mark.parametrize(
    "header, message",
    [
        ("Basic", "Could not parse authorization header."),
        ("Bearer abc", "Unknown authorization method Bearer"),
        ("Basic !!!", "Invalid base64 encoding."),
        ("Basic dXNlcg==", "Invalid credentials."),  # "user", no colon
    ],
)
def test_basic_auth_decode_errors_like_aiohttp(header: str, message: str) -> None:
    with pytest.raises(ValueError) as theirs:
        aiohttp.BasicAuth.decode(header)
    with pytest.raises(ValueError) as ours:
        BasicAuth.decode(header)
    assert str(ours.value) == str(theirs.value) == message


def test_basic_auth_from_url() -> None:
    url = URL("http://us%20er:p%40ss@host/")
    assert BasicAuth.from_url(url) == BasicAuth("us er", "p@ss")
    assert tuple(aiohttp.BasicAuth.from_url(url)) == tuple(BasicAuth.from_url(url))  # type: ignore[arg-type]
    assert BasicAuth.from_url(URL("http://host/")) is None
    assert BasicAuth.from_url(URL("http://u@host/")) == BasicAuth("u", "")
    with pytest.raises(TypeError):
        BasicAuth.from_url("http://u:p@host/")  # type: ignore[arg-type]


# -- method and URL -------------------------------------------------------------------------


def test_result_is_frozen_and_method_upper_cased() -> None:
    req = prep(method="post")
    assert req.method == "POST"
    assert req.url == URL("http://example.com/path")
    assert req.body is None and req.stream is None and req.skip_host is False
    with pytest.raises(AttributeError):
        req.method = "GET"  # type: ignore[misc]


@pytest.mark.parametrize("method", ["GE T", "GET\r\n", "", "G:ET"])
def test_method_must_be_a_token(method: str) -> None:
    with pytest.raises(ValueError, match="Method"):
        prep(method=method)


@pytest.mark.parametrize(
    "url, expected",
    [
        ("sub/x?y=1", "https://api.example.com/v1/sub/x?y=1"),
        ("/root", "https://api.example.com/root"),
        ("", "https://api.example.com/v1/"),
        ("http://other.example/a", "http://other.example/a"),
    ],
)
def test_base_url_joins_relative_urls(url: str, expected: str) -> None:
    assert prep(url, base_url="https://api.example.com/v1/").url == URL(expected)
    assert prep(url, base_url=URL("https://api.example.com/v1/")).url == URL(expected)


@pytest.mark.parametrize("base, message", [("https://h/v1", "trailing '/'"), ("/v1/", "absolute")])
def test_base_url_must_be_absolute_with_trailing_slash(base: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prep("x", base_url=base)


@pytest.mark.parametrize("base, message", [("https://h/v1", "trailing '/'"), ("/v1/", "absolute")])
def test_session_checks_base_url_as_prepare_request(base: str, message: str) -> None:
    from worker_client import ClientSession

    with pytest.raises(ValueError, match=message):
        ClientSession(base)


@pytest.mark.parametrize("url", ["http://[::1", "http://exa mple.com:99999999/"])
def test_invalid_url_string(url: str) -> None:
    with pytest.raises(InvalidUrlClientError) as info:
        prep(url)
    assert isinstance(info.value, InvalidURL) and isinstance(info.value, ValueError)
    assert info.value.url == url


@pytest.mark.parametrize("url", ["example.com/path", "/path", "http:///path"])
def test_url_without_host_is_invalid(url: str) -> None:
    with pytest.raises(InvalidUrlClientError):
        prep(url)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/f", "ws://example.com/", "file:///etc/passwd", "//example.com/p"]
)
def test_non_http_scheme(url: str) -> None:
    with pytest.raises(NonHttpUrlClientError) as info:
        prep(url)
    assert info.value.args[0] == URL(url)


@pytest.mark.parametrize(
    "url",
    [
        URL("http://h/a\x00b", encoded=True),
        URL("http://h/a?b= HTTP/1.0 HTTP/1.1", encoded=True),
        URL("http://h/a\x7f", encoded=True),
        URL.build(scheme="http", host="h", path="/a\r\nGET /b", encoded=True),
        URL.build(scheme="http", host="h\r\nX-Injected", path="/", encoded=True),
        "http://a b/",  # yarl leaves a host as it is
        "http://a\x00b/",
    ],
    ids=repr,
)
def test_url_unfit_for_a_request_line_is_refused(url: str | URL) -> None:
    # aiohttp raises a ValueError for a control byte in the request line; ours is also
    # an InvalidURL saying why.
    with pytest.raises(InvalidUrlClientError, match="control character|valid RFC 3986 host"):
        prep(url)


def test_params_with_control_bytes_are_encoded_not_refused() -> None:
    assert prep("http://h/a", params={"q": "a b\x00"}).url.raw_query_string == "q=a+b%00"


@pytest.mark.parametrize(
    ("host", "ok"), [("example.com:8080", True), ("[::1]", True), ("a b", False), ("a/b", False)]
)
def test_host_header_must_be_a_host(host: str, ok: bool) -> None:
    if ok:
        assert prep(headers={"Host": host}).headers["Host"] == host
    else:
        with pytest.raises(ValueError, match="Host header"):
            prep(headers={"Host": host})


def test_https_and_yarl_urls_accepted() -> None:
    url = URL("https://example.com:8443/a%20b?x=%2F")
    assert prep(url).url is url


@pytest.mark.parametrize(
    "params",
    [{"b": "2", "c": 3}, [("b", "2"), ("b", "3")], "b=2&c", MultiDict([("a", "x"), ("a", "y")])],
)
def test_params_extend_the_existing_query(params) -> None:  # type: ignore[no-untyped-def]
    url = URL("http://example.com/p?a=1")
    assert prep(url, params=params).url == url.extend_query(params)
    assert prep(url, params=params).url.query_string.startswith("a=1&")


def test_empty_params_leave_the_url_alone() -> None:
    url = URL("http://example.com/p?a=1")
    assert prep(url, params={}).url is url
    assert prep(url, params=None).url is url


def test_fragment_removed_but_kept_in_real_url() -> None:
    req = prep("http://example.com/p#section", params={"q": "1"})
    assert req.url == URL("http://example.com/p?q=1")
    assert req.url.raw_fragment == ""
    assert req.real_url == URL("http://example.com/p?q=1#section")


# -- headers -----------------------------------------------------------------------------------


def test_auto_headers() -> None:
    req = prep()
    assert req.headers["Accept"] == "*/*"
    try:
        import brotli  # noqa: F401

        expected_encoding = "gzip, deflate, br"
    except ImportError:
        expected_encoding = "gzip, deflate"
    assert req.headers["Accept-Encoding"] == expected_encoding
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert req.headers["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith(f"Python/{version} http-broker/")
    assert USER_AGENT.split("/")[-1][0].isdigit()
    assert list(req.headers) == ["Accept", "Accept-Encoding", "User-Agent"]
    assert "Host" not in req.headers and "Content-Length" not in req.headers


def test_skip_auto_headers_is_case_insensitive() -> None:
    req = prep(skip_auto_headers=["user-agent", "ACCEPT-ENCODING"])
    assert list(req.headers) == ["Accept"]
    assert prep(skip_auto_headers=None).headers.keys() == DEFAULT_HEADERS.keys()


def test_given_headers_win_over_auto_headers() -> None:
    req = prep(headers={"user-agent": "mine/1.0", "Accept": "text/html"})
    assert req.headers.getall("User-Agent") == ["mine/1.0"]
    assert req.headers.getall("Accept") == ["text/html"]
    assert req.headers["Accept-Encoding"]


def test_headers_keep_duplicates_and_accept_several_shapes() -> None:
    pairs = [("X-A", "1"), ("x-a", "2"), ("Host", "h1"), ("host", "h2")]
    for headers in (pairs, CIMultiDict(pairs), MultiDict(pairs)):
        req = prep(headers=headers)
        assert isinstance(req.headers, CIMultiDict)
        assert req.headers.getall("X-A") == ["1", "2"]
        assert req.headers.getall("Host") == ["h2"]  # Host replaces, as aiohttp


def test_skip_host() -> None:
    assert prep(skip_auto_headers={"HOST"}).skip_host is True
    assert prep().skip_host is False


@pytest.mark.parametrize("value", ["a\r\nEvil: 1", "a\nb", "a\rb", "a\x00b", "a\x7fb", "a\x1bb"])
def test_header_value_injection_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="X-Custom"):
        prep(headers={"X-Custom": value})


@pytest.mark.parametrize("name", ["X-A\r\nEvil", "X\nA", "X\x00", "X:Y", "X Y", ""])
def test_header_name_injection_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="header name"):
        prep(headers={name: "v"})


def test_tab_in_header_value_is_allowed() -> None:
    assert prep(headers={"X": "a\tb"}).headers["X"] == "a\tb"


@pytest.mark.parametrize("value", [1, b"bytes", None, 1.5])
def test_non_str_header_values_are_refused(value: object) -> None:
    # aiohttp raises TypeError when it serializes such a header.
    with pytest.raises(TypeError, match="X-Num"):
        prep(headers={"X-Num": value})


def test_non_str_header_name_is_refused() -> None:
    with pytest.raises(TypeError):
        prep(headers=[(b"X", "v")])


# -- auth ---------------------------------------------------------------------------------------


def test_auth_argument() -> None:
    req = prep(auth=BasicAuth("user", "pässword"))
    assert req.headers["Authorization"] == aiohttp.encode_basic_auth("user", "pässword", "latin1")


def test_credentials_in_url_become_authorization_and_are_stripped() -> None:
    req = prep("http://us%20er:p%40ss@example.com:8080/p?q=1#f")
    assert req.url == URL("http://example.com:8080/p?q=1")
    assert req.url.user is None and req.url.password is None
    assert req.real_url is not None and req.real_url.user is None
    assert BasicAuth.decode(req.headers["Authorization"]) == BasicAuth("us er", "p@ss")


def test_auth_both_ways_is_refused() -> None:
    with pytest.raises(ValueError, match="Cannot combine AUTH argument with credentials"):
        prep("http://u:p@example.com/", auth=BasicAuth("other"))


def test_auth_with_an_authorization_header_is_refused() -> None:
    for kwargs in (
        {"auth": BasicAuth("u")},
        {"url": "http://u:p@example.com/"},
        {"session_auth": BasicAuth("s")},
    ):
        with pytest.raises(ValueError, match="Cannot combine AUTHORIZATION header"):
            prep(headers={"Authorization": "Bearer t"}, **kwargs)
    assert prep(headers={"Authorization": "Bearer t"}).headers["Authorization"] == "Bearer t"


def test_session_auth() -> None:
    session_auth = BasicAuth("session")
    assert prep(session_auth=session_auth).headers["Authorization"] == session_auth.encode()
    # The request's own auth (argument or URL) wins over the session's.
    req = prep(auth=BasicAuth("mine"), session_auth=session_auth)
    assert req.headers["Authorization"] == BasicAuth("mine").encode()
    req = prep("http://url@example.com/", session_auth=session_auth)
    assert req.headers["Authorization"] == BasicAuth("url").encode()


def test_session_auth_only_for_the_base_url_origin() -> None:
    base = "https://api.example.com/v1/"
    session_auth = BasicAuth("session")
    same = prep("x", base_url=base, session_auth=session_auth)
    assert same.headers["Authorization"] == session_auth.encode()
    other = prep("https://elsewhere.example/x", base_url=base, session_auth=session_auth)
    assert "Authorization" not in other.headers


def test_auth_must_be_basic_auth() -> None:
    with pytest.raises(TypeError, match="BasicAuth"):
        prep(auth=("user", "pass"))  # type: ignore[arg-type]


# -- body ----------------------------------------------------------------------------------------


def test_data_and_json_together_are_refused() -> None:
    with pytest.raises(ValueError, match="data and json parameters can not be used"):
        prep(data=b"x", json={"a": 1})


def test_no_body() -> None:
    req = prep(method="POST")
    assert req.body is None and req.stream is None
    assert "Content-Type" not in req.headers


@pytest.mark.parametrize(
    "data, body, content_type",
    [
        ("héllo", "héllo".encode(), "text/plain; charset=utf-8"),
        (b"\x00\x01", b"\x00\x01", "application/octet-stream"),
        (bytearray(b"ba"), b"ba", "application/octet-stream"),
        (memoryview(b"mv"), b"mv", "application/octet-stream"),
        (b"", b"", "application/octet-stream"),
        (io.StringIO("sïo"), "sïo".encode(), "text/plain; charset=utf-8"),
        (io.BytesIO(b"bio"), b"bio", "application/octet-stream"),
    ],
)
def test_in_memory_data(data, body: bytes, content_type: str) -> None:  # type: ignore[no-untyped-def]
    req = prep(method="POST", data=data)
    assert req.body == body and type(req.body) is bytes
    assert req.stream is None
    assert req.headers["Content-Type"] == content_type


def test_bytesio_is_read_from_its_position() -> None:
    data = io.BytesIO(b"skip-rest")
    data.seek(5)
    assert prep(data=data).body == b"rest"


def test_given_content_type_wins_and_can_be_skipped() -> None:
    req = prep(data=b"{}", headers={"content-type": "application/x-custom"})
    assert req.headers.getall("Content-Type") == ["application/x-custom"]
    req = prep(data=b"x", skip_auto_headers={"Content-Type"})
    assert "Content-Type" not in req.headers and req.body == b"x"


@pytest.mark.parametrize(
    "data",
    [
        {"a": "1", "b": "x y&z"},
        [("a", "1"), ("a", "2"), ("é", "ü")],
        (("k", 3),),
        {"list": ["1", "2"]},
        MultiDict([("m", "1"), ("m", "2")]),
        {},
    ],
)
def test_form_data_like_aiohttp(data) -> None:  # type: ignore[no-untyped-def]
    req = prep(method="POST", data=data)
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert req.body == aiohttp_form(data)


@pytest.mark.parametrize("data", [[b"a", b"b"], [("a", "1", "extra")]])
def test_unsupported_form_data(data) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError):
        prep(data=data)


def test_unsupported_data_type() -> None:
    with pytest.raises(TypeError, match="Only io.IOBase, multidict and"):  # aiohttp's words
        prep(data=42)


def test_json() -> None:
    value = {"a": [1, "é"], "b": None}
    req = prep(method="POST", json=value)
    assert req.body == json.dumps(value).encode("utf-8")
    assert req.headers["Content-Type"] == "application/json"
    req = prep(json=value, json_serialize=lambda v: "custom")
    assert req.body == b"custom"
    req = prep(json=[], headers={"Content-Type": "application/vnd.api+json"})
    assert req.body == b"[]"
    assert req.headers["Content-Type"] == "application/vnd.api+json"
    # json=None means "no json", as aiohttp; falsy values are still sent.
    assert prep(json=None).body is None
    assert prep(json=0).body == b"0"


async def test_async_generator_is_streamed() -> None:
    async def gen() -> AsyncIterator[bytes]:
        yield b"a"
        yield bytearray(b"b")
        yield memoryview(b"c")

    req = prep(method="POST", data=gen())
    assert req.body is None
    assert req.headers["Content-Type"] == "application/octet-stream"
    chunks = await collect(req.stream)
    assert chunks == [b"a", b"b", b"c"]
    assert all(type(c) is bytes for c in chunks)


async def test_async_iterable_is_streamed() -> None:
    class Body:
        def __aiter__(self) -> AsyncIterator[bytes]:
            return self.gen()

        async def gen(self) -> AsyncIterator[bytes]:
            yield b"x"
            yield b"y"

    assert await collect(prep(data=Body()).stream) == [b"x", b"y"]


async def test_stream_chunks_must_be_bytes() -> None:
    async def gen() -> AsyncIterator[str]:
        yield "text"

    with pytest.raises(TypeError, match="must yield bytes"):
        await collect(prep(data=gen()).stream)


async def test_stream_reader_is_proxied_as_it_arrives() -> None:
    reader = StreamReader()
    reader.feed_data(b"one")
    reader.feed_data(b"two")
    reader.feed_eof()
    req = prep(data=reader)
    assert b"".join(await collect(req.stream)) == b"onetwo"


async def test_binary_file_is_streamed_in_chunks(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 700  # 179200 bytes: three 64 KiB chunks
    path = tmp_path / "data.json"
    path.write_bytes(payload)
    with path.open("rb") as f:
        req = prep(method="PUT", data=f)
        assert req.body is None
        assert req.headers["Content-Type"] == "application/json"  # guessed from the name
        assert f.tell() == 0  # nothing read before the request runs
        chunks = await collect(req.stream)
    assert b"".join(chunks) == payload
    assert [len(c) for c in chunks] == [65536, 65536, len(payload) - 131072]


async def test_file_without_a_known_type(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"raw")
    with path.open("rb") as f:
        req = prep(data=f)
        assert req.headers["Content-Type"] == "application/octet-stream"
        assert await collect(req.stream) == [b"raw"]


async def test_text_file_is_encoded(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("héllo", encoding="utf-8")
    with path.open("r", encoding="utf-8") as f:
        req = prep(data=f)
        assert req.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert b"".join(await collect(req.stream)) == "héllo".encode()


async def test_file_reads_happen_off_the_loop(tmp_path: Path) -> None:
    import threading

    loop_thread = threading.get_ident()
    threads = []

    class Tracking(io.RawIOBase):
        def __init__(self) -> None:
            self.left = 2

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            threads.append(threading.get_ident())
            self.left -= 1
            return b"z" if self.left >= 0 else b""

    assert await collect(prep(data=Tracking()).stream) == [b"z", b"z"]
    assert threads and loop_thread not in threads


def test_prepare_request_needs_no_event_loop() -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    req = prep(data=io.BufferedReader(io.BytesIO(b"later")))  # type: ignore[arg-type]
    assert req.stream is not None
    assert req.headers["Content-Type"] == "application/octet-stream"
