"""Turn the keyword arguments of a request into what is sent to the broker.

Pure code, as aiohttp's ``ClientSession._request`` + ``ClientRequest`` decide it: the URL
(base_url, params, credentials, fragment), the headers (auto headers, Authorization,
Content-Type) and the body. ``data`` becomes a payload (``worker_client.payload``, by
aiohttp's registry, else a ``FormData``) whose headers and known size (Content-Length)
join the request's; in-memory bytes go inline, anything else as a stream of chunks read
later in the loop, with a ``rewind`` to make it again when it can be re-read (a
307/308). Host and Transfer-Encoding are the broker's, per hop.
"""

from __future__ import annotations

import io
import json as _json
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlencode

from multidict import CIMultiDict
from yarl import URL

from shared import __version__
from shared.rules import FORBIDDEN_VALUE_RE, TOKEN_RE, host_header_problem, url_problem

from .exceptions import ClientPayloadError, InvalidUrlClientError, NonHttpUrlClientError
from .helpers import BasicAuth, check_base_url

if TYPE_CHECKING:  # .payload and .multipart: imported by the first body that needs them
    from .payload import Payload

__all__ = ["CONSUMED_BODY", "DEFAULT_HEADERS", "USER_AGENT", "PreparedRequest", "prepare_request"]

CONSUMED_BODY = (  # aiohttp's words
    "Cannot follow redirect with a consumed request body. Use bytes, a seekable "
    "file-like object, or set allow_redirects=False."
)


def _accept_encoding() -> str:
    """What the engine decodes (br only with a brotli that decodes in bounded pieces)."""
    from broker.decoding import SUPPORTED

    return ", ".join(SUPPORTED)


USER_AGENT = f"Python/{sys.version_info[0]}.{sys.version_info[1]} http-broker/{__version__}"
DEFAULT_HEADERS = {
    "Accept": "*/*",
    "Accept-Encoding": _accept_encoding(),
    "User-Agent": USER_AGENT,
}

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
    payload: Payload | None = None  # the streamed body's payload, closed when the request ends
    rewind: Callable[[], AsyncIterator[bytes]] | None = None  # the stream again, from its start


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

    payload = None
    if json is not None:
        serialized = json_serialize(json)
        encoded = serialized if isinstance(serialized, bytes) else serialized.encode()
        if "Content-Type" not in out and "content-type" not in skip:
            out["Content-Type"] = "application/json"
        if "Content-Length" not in out:
            out["Content-Length"] = str(len(encoded))
        body: bytes | None = encoded
    else:
        body, payload = _encode_data(data, out, skip)

    return PreparedRequest(
        method=method.upper(),
        url=url,
        headers=out,
        body=body,
        stream=payload._chunks() if payload is not None else None,
        skip_host="host" in skip,
        real_url=real_url,
        payload=payload,
        rewind=_rewinder(payload) if payload is not None and payload._replayable else None,
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
        if type(value) is not str:  # a str subclass (a str Enum member) is written as it
            value = format(value)  # formats, as aiohttp does, in both modes (not its .value)
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


_INLINE_MAX = 1 << 20  # an in-memory body up to this size goes inline, whole


def _payload_for(data: Any) -> Payload:
    """aiohttp's ``update_body_from_data``: the registry, else a form of the pairs."""
    from .multipart import FormData
    from .payload import PAYLOAD_REGISTRY, LookupError, Payload, StreamReaderPayload

    if isinstance(data, FormData):
        data = data()
    if hasattr(data, "iter_any") and not isinstance(data, Payload):
        # A StreamReader (ours or aiohttp's): proxied as it comes, not line by line.
        return StreamReaderPayload(data, disposition=None)
    try:
        return PAYLOAD_REGISTRY.get(data, disposition=None)
    except LookupError:
        return FormData(data)()


_PLAIN = (str, int, float)


def _plain_form(data: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> bytes | None:
    """The urlencoded body ``FormData(data)()`` makes, when every field is a plain
    (name, value) pair: the common case, without building a FormData. Else None."""
    fields = data.items() if isinstance(data, dict) else data
    for field in fields:
        if not (type(field) is tuple and len(field) == 2):
            return None
        name, value = field
        if type(name) is not str or FORBIDDEN_VALUE_RE.search(name):
            return None
        if not isinstance(value, _PLAIN) and not (
            isinstance(value, (list, tuple)) and all(isinstance(v, _PLAIN) for v in value)
        ):
            return None
    return urlencode(list(fields), doseq=True).encode()


def _inline(payload: Payload) -> bytes | None:
    """The payload's bytes, when they are in memory and small: sent in the Request."""
    from .payload import BytesIOPayload, BytesPayload

    if isinstance(payload, BytesPayload) and type(payload)._chunks is BytesPayload._chunks:
        value = payload._value
        return value if type(value) is bytes else bytes(value)
    if type(payload) is BytesIOPayload and payload.size <= _INLINE_MAX:
        buf: io.BytesIO = payload._value
        return buf.getvalue()[buf.tell() :]
    return None


def _rewinder(payload: Payload) -> Callable[[], AsyncIterator[bytes]]:
    def rewind() -> AsyncIterator[bytes]:
        if payload.consumed:
            raise ClientPayloadError(CONSUMED_BODY)
        return payload._chunks()

    return rewind


def _encode_data(
    data: Any, out: CIMultiDict[str], skip: set[str]
) -> tuple[bytes | None, Payload | None]:
    """Set the headers of ``data``'s payload (Content-Type, Content-Length, a
    payload's own) that are not given or skipped; (inline body, or the payload)."""
    if data is None:
        return None, None
    if type(data) is bytes:  # the common case, without a payload object
        if "Content-Type" not in out and "content-type" not in skip:
            out["Content-Type"] = "application/octet-stream"
        if "Content-Length" not in out:
            out["Content-Length"] = str(len(data))
        return data, None
    if isinstance(data, (dict, list, tuple)) and (form := _plain_form(data)) is not None:
        if "Content-Type" not in out and "content-type" not in skip:
            out["Content-Type"] = "application/x-www-form-urlencoded"
        if "Content-Length" not in out:
            out["Content-Length"] = str(len(form))
        return form, None
    payload = _payload_for(data)
    if "Content-Length" not in out and (size := payload.size) is not None:
        out["Content-Length"] = str(size)
    for name, value in payload.headers.items():
        if name not in out and name.lower() not in skip:
            out[name] = value
    body = _inline(payload)
    return (body, None) if body is not None else (None, payload)
