"""The wire error codes: what a ``Failure`` says went wrong, and which fields it fills.

The broker turns an upstream failure into one ``ErrorCode`` once (``broker.engine``);
only the worker turns a code back into an exception, with the aiohttp-compatible classes
and the code -> class table of ``worker_client.exceptions``. This module holds the
contract both sides agree on and nothing else, so the broker never imports the worker's
exception classes.

``ErrorCode`` is a ``str`` enum: a member equals its value (``ErrorCode.DNS == "dns"``)
and encodes as it, so code written against the strings keeps working. A ``Failure``
decodes only with a known code: a new code is a protocol change.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

__all__ = ["ErrorCode", "WIRE_ERRORS", "WireError"]


class ErrorCode(str, enum.Enum):
    """Why a stream failed, as sent in ``Failure.code``."""

    CONNECT = "connect"
    DNS = "dns"
    UNIX_CONNECT = "unix_connect"
    CERTIFICATE = "certificate"
    SSL = "ssl"
    FINGERPRINT = "fingerprint"
    PROXY_CONNECT = "proxy_connect"
    PROXY_STATUS = "proxy_status"
    CONNECT_TIMEOUT = "connect_timeout"
    SOCK_READ_TIMEOUT = "sock_read_timeout"
    TOTAL_TIMEOUT = "total_timeout"
    DISCONNECTED = "disconnected"
    PAYLOAD = "payload"
    BAD_RESPONSE = "bad_response"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    NON_HTTP_REDIRECT = "non_http_redirect"
    INVALID_REDIRECT = "invalid_redirect"
    INVALID_URL = "invalid_url"
    NON_HTTP_URL = "non_http_url"
    OS = "os"
    CONNECTION = "connection"
    BROKER = "broker"
    PROTOCOL = "protocol"
    INTERNAL = "internal"

    def __str__(self) -> str:  # the value on every Python (3.11 changed the default)
        return str(self.value)


class WireError(NamedTuple):
    """One row of the contract: what the code means, and the ``Failure`` fields the
    broker fills for it besides ``message`` and ``history`` (the redirects followed so
    far, sent with every code); the others keep their defaults."""

    meaning: str
    fields: frozenset[str] = frozenset()


_CONNECT = frozenset(("host", "port", "ssl", "errno"))

WIRE_ERRORS: dict[ErrorCode, WireError] = {
    ErrorCode.CONNECT: WireError("the connection to the server failed", _CONNECT),
    ErrorCode.DNS: WireError("the server's name did not resolve", _CONNECT),
    ErrorCode.UNIX_CONNECT: WireError(
        "the connection to a Unix socket failed; url is the socket's path", _CONNECT | {"url"}
    ),
    ErrorCode.CERTIFICATE: WireError(
        "the server's certificate failed verification (expired, wrong host, unknown CA);"
        " message is OpenSSL's verify message",
        _CONNECT | {"verify_code"},
    ),
    ErrorCode.SSL: WireError("the TLS handshake failed otherwise", _CONNECT),
    ErrorCode.FINGERPRINT: WireError(
        "the server's certificate does not have the pinned SHA-256 digest",
        frozenset(("host", "port", "expected", "got")),
    ),
    ErrorCode.PROXY_CONNECT: WireError(
        "the connection to the proxy failed; host and port are the proxy's", _CONNECT
    ),
    ErrorCode.PROXY_STATUS: WireError(
        "the proxy answered CONNECT with a status other than 200; url is the origin's",
        frozenset(("status", "headers", "url")),
    ),
    ErrorCode.CONNECT_TIMEOUT: WireError("no connection within the connect timeouts"),
    ErrorCode.SOCK_READ_TIMEOUT: WireError("the server was silent for sock_read seconds"),
    ErrorCode.TOTAL_TIMEOUT: WireError("the request's total timeout ran out"),
    ErrorCode.DISCONNECTED: WireError(
        "the server closed the connection before the response ended", frozenset({"url"})
    ),
    ErrorCode.PAYLOAD: WireError("the body could not be sent, received or decoded"),
    ErrorCode.BAD_RESPONSE: WireError("the server's response is not valid HTTP/1.1"),
    ErrorCode.TOO_MANY_REDIRECTS: WireError(
        "max_redirects reached; status is the last redirect's", frozenset({"status"})
    ),
    ErrorCode.NON_HTTP_REDIRECT: WireError(
        "a redirect to a scheme other than http(s)", frozenset({"url"})
    ),
    ErrorCode.INVALID_REDIRECT: WireError("a redirect to an invalid URL", frozenset({"url"})),
    ErrorCode.INVALID_URL: WireError(
        "the request's URL is invalid or unfit for a request line", frozenset({"url"})
    ),
    ErrorCode.NON_HTTP_URL: WireError("the request's URL is not http(s)", frozenset({"url"})),
    ErrorCode.OS: WireError("an OS error on the server connection", frozenset({"errno"})),
    ErrorCode.CONNECTION: WireError("the server connection failed otherwise"),
    ErrorCode.BROKER: WireError("the broker cannot serve the request (e.g. shutting down)"),
    ErrorCode.PROTOCOL: WireError("the worker's request breaks the protocol's rules"),
    ErrorCode.INTERNAL: WireError("a bug in the broker; the broker carries on"),
}
