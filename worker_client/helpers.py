"""Small aiohttp-compatible helpers: BasicAuth, HttpVersion, Content-Type parsing, base_url."""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections import namedtuple
from typing import NamedTuple
from urllib.parse import unquote

from yarl import URL

__all__ = [
    "BasicAuth",
    "HttpVersion",
    "HttpVersion10",
    "HttpVersion11",
    "check_base_url",
    "encode_basic_auth",
    "is_json_content_type",
    "parse_content_type",
]


class HttpVersion(NamedTuple):
    major: int
    minor: int


HttpVersion10 = HttpVersion(1, 0)
HttpVersion11 = HttpVersion(1, 1)


def check_base_url(base_url: str | URL | None) -> URL | None:
    """A session's ``base_url`` as a URL, after aiohttp's checks: absolute, ending in '/'."""
    if base_url is None:
        return None
    base = URL(base_url)
    if not base.absolute:
        raise ValueError(f"base_url must be an absolute URL, got {str(base)!r}")
    if not base.path.endswith("/"):
        raise ValueError("base_url must have a trailing '/'")
    return base


def encode_basic_auth(login: str, password: str = "", encoding: str = "utf-8") -> str:
    """Encode credentials as a ``Basic ...`` Authorization header value."""
    if ":" in login:
        raise ValueError('A ":" is not allowed in login (RFC 7617#section-2)')
    creds = f"{login}:{password}".encode(encoding)
    return "Basic " + base64.b64encode(creds).decode(encoding)


def check_credentials(login: str, password: str, login_word: str) -> None:
    """aiohttp's checks of a login and password (Basic and Digest auth), with its
    messages (it calls the login "login" for one, "username" for the other)."""
    if login is None:
        raise ValueError("None is not allowed as login value")
    if password is None:
        raise ValueError("None is not allowed as password value")
    if ":" in login:
        raise ValueError(f'A ":" is not allowed in {login_word} (RFC 1945#section-11.1)')


class BasicAuth(namedtuple("BasicAuth", ["login", "password", "encoding"])):
    """HTTP basic authentication credentials, as aiohttp's ``BasicAuth``."""

    __slots__ = ()

    def __new__(cls, login: str, password: str = "", encoding: str = "latin1") -> BasicAuth:
        check_credentials(login, password, "login")
        return super().__new__(cls, login, password, encoding)

    @classmethod
    def decode(cls, auth_header: str, encoding: str = "latin1") -> BasicAuth:
        """Create a BasicAuth from an Authorization header value."""
        try:
            auth_type, encoded_credentials = auth_header.split(" ", 1)
        except ValueError:
            raise ValueError("Could not parse authorization header.") from None
        if auth_type.lower() != "basic":
            raise ValueError(f"Unknown authorization method {auth_type}")
        try:
            decoded = base64.b64decode(encoded_credentials.encode("ascii"), validate=True).decode(
                encoding
            )
        except binascii.Error:
            raise ValueError("Invalid base64 encoding.") from None
        try:
            username, password = decoded.split(":", 1)
        except ValueError:
            raise ValueError("Invalid credentials.") from None
        return cls(username, password, encoding)

    @classmethod
    def from_url(cls, url: URL, *, encoding: str = "latin1") -> BasicAuth | None:
        """Create a BasicAuth from the credentials of a URL, or None if it has none."""
        if not isinstance(url, URL):
            raise TypeError("url should be yarl.URL instance")
        if url.raw_user is None and url.raw_password is None:
            return None
        return cls(url.user or "", url.password or "", encoding)

    def encode(self) -> str:
        """Encode credentials as an Authorization header value."""
        return encode_basic_auth(self.login, self.password, self.encoding)


# One parameter: `; name` optionally followed by `= token` or `= "quoted \" string"`.
_PARAM_RE = re.compile(r';\s*(?P<key>[^;=\s]*)\s*(?:=\s*(?P<value>"(?:[^"\\]|\\.)*"|[^;]*))?[^;]*')
_UNESCAPE_RE = re.compile(r"\\(.)")
_JSON_RE = re.compile(r"application/(?:[\w.+-]+\+)?json")


def parse_content_type(raw: str | None) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into (lower-case mimetype, parameters).

    As aiohttp: a missing or malformed type gives ``application/octet-stream``;
    parameter names are lower-cased, values unquoted.
    """
    mimetype, params = _parse_content_type(raw)
    return mimetype, dict(params)


@functools.lru_cache(maxsize=64)
def _parse_content_type(raw: str | None) -> tuple[str, dict[str, str]]:
    if not raw:
        return "application/octet-stream", {}
    mimetype, sep, rest = raw.partition(";")
    mimetype = mimetype.strip().lower()
    if mimetype.count("/") != 1:
        mimetype = "application/octet-stream"
    params: dict[str, str] = {}
    for match in _PARAM_RE.finditer(sep + rest):
        key = match["key"].lower()
        if not key:
            continue
        value = (match["value"] or "").strip()
        if value.startswith('"') and value.endswith('"') and len(value) > 1:
            value = _UNESCAPE_RE.sub(r"\1", value[1:-1])
        else:
            value = value.strip('"')
        if key.endswith("*"):  # RFC 2231: charset'language'percent-encoded
            key = key[:-1]
            charset, _, encoded = value.partition("'")
            _, _, encoded = encoded.partition("'")
            try:
                value = unquote(encoded, encoding=charset or "us-ascii", errors="strict")
            except (LookupError, UnicodeDecodeError):
                continue
        params[key] = value
    return mimetype, params


def is_json_content_type(mimetype: str) -> bool:
    """True for ``application/json`` and ``application/<anything>+json``."""
    return _JSON_RE.fullmatch(mimetype.lower()) is not None
