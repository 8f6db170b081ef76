"""Turn the keyword arguments of a request into what is sent to the broker.

Pure code, as aiohttp's ``ClientSession._request`` + ``ClientRequest`` decide it: the URL
(base_url, params, credentials, fragment), the headers (auto headers, Authorization,
Content-Type) and the body (bytes now, or a stream of bytes read later in the loop).
Per-hop headers (Host, Content-Length, Transfer-Encoding) are the broker's.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import io
import json as _json
import mimetypes
import sys
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlencode

from multidict import CIMultiDict
from yarl import URL

from shared.rules import FORBIDDEN_VALUE_RE, TOKEN_RE, host_header_problem, url_problem

from .exceptions import InvalidUrlClientError, NonHttpUrlClientError
from .helpers import BasicAuth, check_base_url

__all__ = ["DEFAULT_HEADERS", "USER_AGENT", "PreparedRequest", "prepare_request"]


def _package_version() -> str:
    try:
        return importlib.metadata.version("http-broker")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


def _accept_encoding() -> str:
    """What the engine decodes (br only with a brotli that decodes in bounded pieces)."""
    from broker.decoding import SUPPORTED

    return ", ".join(SUPPORTED)


USER_AGENT = f"Python/{sys.version_info[0]}.{sys.version_info[1]} http-broker/{_package_version()}"
DEFAULT_HEADERS = {
    "Accept": "*/*",
    "Accept-Encoding": _accept_encoding(),
    "User-Agent": USER_AGENT,
}
FILE_CHUNK_SIZE = 2**16

_HTTP_SCHEMES = frozenset(("http", "https"))


class PreparedRequest(NamedTuple):
    """A request ready to send: final URL, headers and body (bytes or a stream).

    A NamedTuple: immutable, and made once per request, where a frozen dataclass's
    ``__init__`` costs a ``object.__setattr__`` per field."""

    method: str
    url: URL
    headers: CIMultiDict[str]
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    skip_host: bool = False
    real_url: URL | None = None  # ``url`` with its fragment, for ``RequestInfo.real_url``


def prepare_request(
    method: str,
    str_or_url: str | URL,
    *,
    base_url: str | URL | None = None,
    params: Any = None,
    data: Any = None,
    json: Any = None,
    json_serialize: Callable[[Any], str] = _json.dumps,
    headers: Any = None,
    skip_auto_headers: Iterable[str] | None = frozenset(),
    auth: BasicAuth | None = None,
    session_auth: BasicAuth | None = None,
) -> PreparedRequest:
    """Build the request aiohttp would send for these arguments."""
    if not TOKEN_RE.fullmatch(method):
        raise ValueError(f"Method cannot contain non-token characters {method!r}")
    if data is not None and json is not None:
        raise ValueError("data and json parameters can not be used at the same time")

    base = check_base_url(base_url)
    url, url_auth = _build_url(str_or_url, base)
    if params:
        url = url.extend_query(params)
    real_url = url
    if url.raw_fragment:
        url = url.with_fragment(None)
    problem = url_problem(url)
    if problem is not None:
        raise InvalidUrlClientError(url, problem)

    out = _build_headers(headers)
    skip = {name.lower() for name in skip_auto_headers or ()}
    for name, value in DEFAULT_HEADERS.items():
        if name not in out and name.lower() not in skip:
            out[name] = value

    if auth is not None and url_auth is not None:
        raise ValueError("Cannot combine AUTH argument with credentials encoded in URL")
    if auth is None:
        auth = url_auth
    if auth is None and session_auth is not None:
        # As aiohttp: with a base_url, the session's auth goes only to its origin.
        if base is None or base.origin() == url.origin():
            auth = session_auth
    if auth is not None:
        if "Authorization" in out:
            raise ValueError(
                "Cannot combine AUTHORIZATION header with AUTH argument or "
                "credentials encoded in URL"
            )
        if not isinstance(auth, BasicAuth):
            raise TypeError("BasicAuth() tuple is required instead")
        out["Authorization"] = auth.encode()

    if json is not None:
        serialized = json_serialize(json)
        body: bytes | None = serialized if isinstance(serialized, bytes) else serialized.encode()
        stream = None
        content_type: str | None = "application/json"
    else:
        body, stream, content_type = _encode_data(data)
    if content_type is not None and "Content-Type" not in out and "content-type" not in skip:
        out["Content-Type"] = content_type

    return PreparedRequest(
        method=method.upper(),
        url=url,
        headers=out,
        body=body,
        stream=stream,
        skip_host="host" in skip,
        real_url=real_url,
    )


def _build_url(str_or_url: str | URL, base: URL | None) -> tuple[URL, BasicAuth | None]:
    """The absolute http(s) URL without credentials, and the credentials."""
    try:
        url = URL(str_or_url)
        if base is not None and not url.absolute:
            url = base.join(url)
    except ValueError as exc:
        raise InvalidUrlClientError(str_or_url) from exc
    if url.scheme not in _HTTP_SCHEMES and url.scheme:
        raise NonHttpUrlClientError(url)
    url_auth = None
    if url.raw_user is not None or url.raw_password is not None:
        url_auth = BasicAuth(url.user or "", url.password or "")
        url = url.with_user(None)
    if not url.raw_host:
        raise InvalidUrlClientError(url)
    if not url.scheme:  # "//host/path"
        raise NonHttpUrlClientError(url)
    return url, url_auth


def _build_headers(headers: Any) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    if not headers:
        return out
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, got {name!r}")
        if not isinstance(value, str):
            raise TypeError(f"the value of header {name!r} must be str, got {type(value).__name__}")
        if not TOKEN_RE.fullmatch(name):
            raise ValueError(f"Invalid header name {name!r}: potential header injection")
        if FORBIDDEN_VALUE_RE.search(value):
            raise ValueError(
                f"Forbidden control character in the value of header {name!r}: "
                "potential header injection"
            )
        if name.lower() == "host":
            problem = host_header_problem(value)
            if problem is not None:
                raise ValueError(f"{problem}: potential header injection")
            out[name] = value
        else:
            out.add(name, value)
    return out


def _encode_data(data: Any) -> tuple[bytes | None, AsyncIterator[bytes] | None, str | None]:
    """(body, stream, default Content-Type) for the ``data`` argument."""
    if data is None:
        return None, None, None
    if isinstance(data, bytes):
        return data, None, "application/octet-stream"
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data), None, "application/octet-stream"
    if isinstance(data, str):
        return data.encode(), None, "text/plain; charset=utf-8"
    if isinstance(data, io.StringIO):
        return data.read().encode(), None, "text/plain; charset=utf-8"
    if isinstance(data, io.BytesIO):
        return data.read(), None, "application/octet-stream"
    if isinstance(data, Mapping) or isinstance(data, (list, tuple)):
        return _urlencode(data), None, "application/x-www-form-urlencoded"
    if hasattr(data, "iter_any"):  # a StreamReader (ours or aiohttp's): proxy it as it comes
        return None, _checked_chunks(data.iter_any()), "application/octet-stream"
    if isinstance(data, io.IOBase) or (hasattr(data, "read") and not hasattr(data, "__aiter__")):
        if isinstance(data, io.TextIOBase):
            content_type = "text/plain; charset=utf-8"
        else:
            content_type = _guess_type(data) or "application/octet-stream"
        return None, _file_chunks(data), content_type
    if isinstance(data, AsyncIterable):
        return None, _checked_chunks(data), "application/octet-stream"
    raise TypeError(
        f"data must be bytes, str, a dict or list of pairs, a file object or an async "
        f"iterable of bytes, got {type(data).__name__}"
    )


def _urlencode(data: Any) -> bytes:
    fields = list(data.items()) if isinstance(data, Mapping) else list(data)
    for field in fields:
        if not (isinstance(field, (list, tuple)) and len(field) == 2):
            raise TypeError(f"form data must be a dict or (name, value) pairs, got {field!r}")
        if isinstance(field[1], (bytes, bytearray, memoryview, io.IOBase)):
            raise TypeError(f"form field {field[0]!r}: multipart form data is not supported")
    return urlencode(fields, doseq=True).encode()


def _guess_type(file: Any) -> str | None:
    name = getattr(file, "name", None)
    if isinstance(name, str) and name and name[0] != "<" and name[-1] != ">":
        return mimetypes.guess_type(name)[0]
    return None


async def _file_chunks(file: Any) -> AsyncIterator[bytes]:
    # A blocking read would stall the loop; a thread keeps it responsive.
    while chunk := await asyncio.to_thread(file.read, FILE_CHUNK_SIZE):
        yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)


async def _checked_chunks(chunks: AsyncIterable[Any]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if isinstance(chunk, bytes):
            yield chunk
        elif isinstance(chunk, (bytearray, memoryview)):
            yield bytes(chunk)
        else:
            raise TypeError(f"a streamed body must yield bytes, got {type(chunk).__name__}")
