"""The client exceptions: aiohttp's names and tree, plus the broker's own; and RequestInfo.

Names, bases (the builtin ones too), constructor signatures, attributes and messages are
those of ``aiohttp.client_exceptions`` 3.14, so ``except aiohttp.ClientError``-style code
ports by changing the import. Every class pickles, since exceptions cross processes.

Exception hierarchy (builtin bases in brackets):

* ClientError
  * ClientResponseError
    * ContentTypeError
    * WSServerHandshakeError
    * ClientHttpProxyError
    * TooManyRedirects
  * ClientConnectionError
    * ClientConnectionResetError [ConnectionResetError]
    * ClientOSError [OSError]
      * ClientConnectorError
        * ClientConnectorDNSError
        * ClientProxyConnectionError
        * UnixClientConnectorError
        * ClientSSLError
          * ClientConnectorSSLError [ssl.SSLError]
          * ClientConnectorCertificateError [ssl.CertificateError]
    * ServerConnectionError
      * ServerDisconnectedError
      * ServerTimeoutError [asyncio.TimeoutError]
        * ConnectionTimeoutError
        * SocketTimeoutError
      * ServerFingerprintMismatch
    * BrokerConnectionError (ours: the broker is unreachable or was lost)
      * BrokerProtocolError (ours: a peer spoke garbage or a wrong protocol version)
  * ClientPayloadError
  * UploadAbortedError
  * InvalidURL [ValueError]
    * InvalidUrlClientError
      * InvalidUrlRedirectClientError (also a RedirectClientError)
  * RedirectClientError
  * NonHttpUrlClientError
    * NonHttpUrlRedirectClientError (also a RedirectClientError)
* WSMessageTypeError [TypeError]
* WebSocketError (a protocol error with its close ``code``; defined by the codec,
  ``shared.websocket``, which the broker shares, and imported here)
  * WebSocketProtocolError (ours: what the codec raises)

The broker reports a failure as a ``Failure`` message whose ``code`` is a
``shared.errors.ErrorCode``; ``exception_from_failure`` turns it back into one of these
classes with the ``ERRORS`` table below, the one place where codes meet classes.
"""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy, MultiMapping
from yarl import URL

from shared.errors import ErrorCode
from shared.messages import Failure
from shared.websocket import WebSocketError as WebSocketError
from shared.websocket import WebSocketProtocolError as WebSocketProtocolError

# The public names (``worker_client`` exports them); ``ConnectionKey``, ``ERRORS`` and
# ``exception_from_failure`` are the transport's. ``WebSocketError`` joins them with
# ``ws_connect`` (the exports test's not-yet group "websockets").
__all__ = [
    "BrokerConnectionError",
    "BrokerProtocolError",
    "ClientConnectionError",
    "ClientConnectionResetError",
    "ClientConnectorCertificateError",
    "ClientConnectorDNSError",
    "ClientConnectorError",
    "ClientConnectorSSLError",
    "ClientError",
    "ClientHttpProxyError",
    "ClientOSError",
    "ClientPayloadError",
    "ClientProxyConnectionError",
    "ClientResponseError",
    "ClientSSLError",
    "ConnectionTimeoutError",
    "ContentTypeError",
    "InvalidURL",
    "InvalidUrlClientError",
    "InvalidUrlRedirectClientError",
    "NonHttpUrlClientError",
    "NonHttpUrlRedirectClientError",
    "RedirectClientError",
    "RequestInfo",
    "ServerConnectionError",
    "ServerDisconnectedError",
    "ServerFingerprintMismatch",
    "ServerTimeoutError",
    "SocketTimeoutError",
    "TooManyRedirects",
    "UnixClientConnectorError",
    "UploadAbortedError",
    "WSMessageTypeError",
    "WSServerHandshakeError",
]


class _PickledProxy:
    # Multidict proxies refuse to pickle; this stands in for one and unpickles as a
    # proxy of a copy.
    __slots__ = ("proxy",)

    def __init__(self, proxy: MultiDictProxy[Any]) -> None:
        self.proxy = proxy

    def __reduce__(self) -> tuple[Any, ...]:
        if isinstance(self.proxy, CIMultiDictProxy):
            return CIMultiDictProxy, (CIMultiDict(self.proxy),)
        return MultiDictProxy, (MultiDict(self.proxy),)


def _picklable(headers: Any) -> Any:
    return _PickledProxy(headers) if isinstance(headers, MultiDictProxy) else headers


class _RequestInfo(NamedTuple):
    url: URL
    method: str
    headers: CIMultiDictProxy[str]
    real_url: URL


class RequestInfo(_RequestInfo):
    """The request a response or a response error belongs to, as aiohttp's."""

    def __new__(
        cls,
        url: URL,
        method: str,
        headers: CIMultiDictProxy[str],
        real_url: URL | None = None,
    ) -> RequestInfo:
        return tuple.__new__(cls, (url, method, headers, url if real_url is None else real_url))

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.url, self.method, _picklable(self.headers), self.real_url)


class ConnectionKey(NamedTuple):
    """What identifies a pooled connection, as aiohttp's; connector errors carry one."""

    host: str
    port: int | None
    is_ssl: bool
    ssl: Any  # True (default verification), False, or a context/fingerprint description
    proxy: URL | None
    proxy_auth: Any
    proxy_headers_hash: int | None
    server_hostname: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # An SSLContext does not pickle: the key crosses processes with its repr.
        from .tls import Fingerprint

        ssl = self.ssl
        if not isinstance(ssl, (bool, Fingerprint, type(None))):
            ssl = repr(ssl)
        return ConnectionKey, (*self[:3], ssl, *self[4:])


class ClientError(Exception):
    """Base class for client connection errors."""


class ClientResponseError(ClientError):
    """Base class for exceptions that occur after getting a response."""

    def __init__(
        self,
        request_info: RequestInfo,
        history: tuple[Any, ...],
        *,
        code: int | None = None,
        status: int | None = None,
        message: str = "",
        headers: MultiMapping[str] | None = None,
    ) -> None:
        self.request_info = request_info
        if code is not None:
            if status is not None:
                raise ValueError(
                    "Both code and status arguments are provided; "
                    "code is deprecated, use status instead"
                )
            warnings.warn(
                "code argument is deprecated, use status instead",
                DeprecationWarning,
                stacklevel=2,
            )
        self.status = status if status is not None else code if code is not None else 0
        self.message = message
        self.headers = headers
        self.history = history
        self.args = (request_info, history)

    def __str__(self) -> str:
        return f"{self.status}, message={self.message!r}, url={str(self.request_info.real_url)!r}"

    def __repr__(self) -> str:
        args = f"{self.request_info!r}, {self.history!r}"
        if self.status != 0:
            args += f", status={self.status!r}"
        if self.message != "":
            args += f", message={self.message!r}"
        if self.headers is not None:
            args += f", headers={self.headers!r}"
        return f"{type(self).__name__}({args})"

    def __reduce__(self) -> tuple[Any, ...]:
        # The keyword-only arguments travel in the state, as BaseException's own do.
        state = {**vars(self), "headers": _picklable(self.headers)}
        return type(self), (self.request_info, self.history), state

    @property
    def code(self) -> int:
        """Deprecated alias of ``status``."""
        warnings.warn(
            "code property is deprecated, use status instead", DeprecationWarning, stacklevel=2
        )
        return self.status

    @code.setter
    def code(self, value: int) -> None:
        warnings.warn(
            "code property is deprecated, use status instead", DeprecationWarning, stacklevel=2
        )
        self.status = value


class ContentTypeError(ClientResponseError):
    """ContentType found is not valid."""


class WSServerHandshakeError(ClientResponseError):
    """Websocket server handshake error."""


class ClientHttpProxyError(ClientResponseError):
    """The HTTP proxy answered CONNECT with a status other than 200."""


class TooManyRedirects(ClientResponseError):
    """Client was redirected too many times."""


class ClientConnectionError(ClientError):
    """Base class for client socket errors."""


class ClientConnectionResetError(ClientConnectionError, ConnectionResetError):
    """ConnectionResetError."""


class ClientOSError(ClientConnectionError, OSError):
    """OSError error."""


class ClientConnectorError(ClientOSError):
    """A connection could not be established."""

    def __init__(self, connection_key: ConnectionKey, os_error: OSError) -> None:
        self._conn_key = connection_key
        self._os_error = os_error
        super().__init__(os_error.errno, os_error.strerror)
        self.args = (connection_key, os_error)

    @property
    def os_error(self) -> OSError:
        """The underlying OS error."""
        return self._os_error

    @property
    def host(self) -> str:
        """The host that could not be reached."""
        return self._conn_key.host

    @property
    def port(self) -> int | None:
        """The port that could not be reached."""
        return self._conn_key.port

    @property
    def ssl(self) -> Any:
        """The connection's ``ssl`` setting (True means default verification)."""
        return self._conn_key.ssl

    def __str__(self) -> str:
        ssl = "default" if self.ssl is True else self.ssl
        return f"Cannot connect to host {self.host}:{self.port} ssl:{ssl} [{self.strerror}]"

    # OSError.__reduce__ rebuilds from errno/strerror; the constructor wants our args.
    __reduce__ = BaseException.__reduce__


class ClientConnectorDNSError(ClientConnectorError):
    """DNS resolution failed during client connection."""


class ClientProxyConnectionError(ClientConnectorError):
    """A connection to the proxy could not be established."""


class UnixClientConnectorError(ClientConnectorError):
    """A connection to a Unix socket could not be established."""

    def __init__(self, path: str, connection_key: ConnectionKey, os_error: OSError) -> None:
        self._path = path
        super().__init__(connection_key, os_error)

    @property
    def path(self) -> str:
        """The socket path."""
        return self._path

    def __str__(self) -> str:
        ssl = "default" if self.ssl is True else self.ssl
        return f"Cannot connect to unix socket {self.path} ssl:{ssl} [{self.strerror}]"

    def __reduce__(self) -> tuple[Any, ...]:
        # aiohttp's own does not unpickle: args lack the path.
        return type(self), (self._path, self._conn_key, self._os_error), vars(self)


class ServerConnectionError(ClientConnectionError):
    """Server connection errors."""


class ServerDisconnectedError(ServerConnectionError):
    """Server disconnected."""

    def __init__(self, message: str | None = None) -> None:
        if message is None:
            message = "Server disconnected"
        self.args = (message,)
        self.message = message


class ServerTimeoutError(ServerConnectionError, asyncio.TimeoutError):
    """Server timeout error."""


class ConnectionTimeoutError(ServerTimeoutError):
    """Connection timeout error."""


class SocketTimeoutError(ServerTimeoutError):
    """Socket timeout error."""


class ServerFingerprintMismatch(ServerConnectionError):
    """SSL certificate does not match expected fingerprint."""

    def __init__(self, expected: bytes, got: bytes, host: str, port: int) -> None:
        self.expected = expected
        self.got = got
        self.host = host
        self.port = port
        self.args = (expected, got, host, port)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} expected={self.expected!r} got={self.got!r} "
            f"host={self.host!r} port={self.port!r}>"
        )


FingerprintMismatch = ServerFingerprintMismatch
"""The name aiohttp's documentation uses ("Verify certificate fingerprint")."""


class ClientPayloadError(ClientError):
    """Response payload error."""


class UploadAbortedError(ClientError):
    """The request body was never fully sent."""


class InvalidURL(ClientError, ValueError):
    """The URL is malformed, e.g. it has no host."""

    def __init__(self, url: str | URL, description: str | None = None) -> None:
        self._url = url
        self._description = description
        if description:
            super().__init__(url, description)
        else:
            super().__init__(url)

    @property
    def url(self) -> str | URL:
        """The offending URL, as given."""
        return self._url

    @property
    def description(self) -> str | None:
        """What is wrong with it."""
        return self._description

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self}>"

    def __str__(self) -> str:
        if self._description:
            return f"{self._url} - {self._description}"
        return str(self._url)


class InvalidUrlClientError(InvalidURL):
    """Invalid URL client error."""


class RedirectClientError(ClientError):
    """Client redirect error."""


class NonHttpUrlClientError(ClientError):
    """Non http URL client error."""


class InvalidUrlRedirectClientError(InvalidUrlClientError, RedirectClientError):
    """Invalid URL redirect client error."""


class NonHttpUrlRedirectClientError(NonHttpUrlClientError, RedirectClientError):
    """Non http URL redirect client error."""


class ClientSSLError(ClientConnectorError):
    """Base error for ssl.*Errors."""


class ClientConnectorSSLError(ClientSSLError, ssl.SSLError):
    """Response ssl error."""


class ClientConnectorCertificateError(ClientSSLError, ssl.CertificateError):
    """Response certificate error."""

    def __init__(self, connection_key: ConnectionKey, certificate_error: Exception) -> None:
        os_error = certificate_error if isinstance(certificate_error, OSError) else OSError()
        super().__init__(connection_key, os_error)
        self._certificate_error = certificate_error
        self.args = (connection_key, certificate_error)

    @property
    def certificate_error(self) -> Exception:
        """The underlying certificate error."""
        return self._certificate_error

    @property
    def ssl(self) -> bool:
        """Whether the connection used TLS."""
        return self._conn_key.is_ssl

    def __str__(self) -> str:
        return (
            f"Cannot connect to host {self.host}:{self.port} ssl:{self.ssl} "
            f"[{self.certificate_error.__class__.__name__}: "
            f"{self.certificate_error.args}]"
        )


class WSMessageTypeError(TypeError):
    """WebSocket message type is not valid."""


class BrokerConnectionError(ClientConnectionError):
    """The broker is unreachable, or the connection to it was lost."""


class BrokerProtocolError(BrokerConnectionError):
    """The broker or the worker spoke garbage or a wrong protocol version."""


ErrorBuilder: TypeAlias = Callable[[Failure, RequestInfo | None, tuple[Any, ...]], BaseException]

_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def _key(f: Failure) -> ConnectionKey:
    # ``f.ssl`` says whether the URL was https; aiohttp's key holds ssl=True for the
    # default verification whatever the scheme, hence "ssl:default" in its messages.
    return ConnectionKey(f.host, f.port or None, f.ssl, True, None, None, None)


def _os_error(f: Failure) -> OSError:
    # OSError(errno, message) comes back as the errno's subclass, e.g. ConnectionRefusedError.
    return OSError(f.errno, f.message)


def _certificate_error(f: Failure) -> ssl.SSLCertVerificationError:
    # As the ssl module raises it: verify_code and verify_message set, errno 1.
    err = ssl.SSLCertVerificationError(
        1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {f.message}"
    )
    err.verify_code = f.verify_code
    err.verify_message = f.message
    err.library = "SSL"
    err.reason = "CERTIFICATE_VERIFY_FAILED"
    return err


def _raw_headers(f: Failure) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(
        CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in f.headers)
    )


def _request_info(f: Failure, request_info: RequestInfo | None) -> RequestInfo:
    return request_info if request_info is not None else RequestInfo(URL(f.url), "", _NO_HEADERS)


def _connect_info(f: Failure, request_info: RequestInfo | None) -> RequestInfo:
    """aiohttp's: the CONNECT request's (its method, the URL of the hop it was for), not
    its headers, which hold the proxy's credentials."""
    if not f.url:
        return _request_info(f, request_info)
    return RequestInfo(URL(f.url), "CONNECT", _NO_HEADERS)


def _message(cls: Callable[[str], BaseException]) -> ErrorBuilder:
    return lambda f, ri, h: cls(f.message)


ERRORS: dict[ErrorCode, ErrorBuilder] = {
    ErrorCode.CONNECT: lambda f, ri, h: ClientConnectorError(_key(f), _os_error(f)),
    ErrorCode.DNS: lambda f, ri, h: ClientConnectorDNSError(_key(f), _os_error(f)),
    ErrorCode.UNIX_CONNECT: lambda f, ri, h: UnixClientConnectorError(
        f.url, _key(f), _os_error(f)
    ),
    ErrorCode.CERTIFICATE: lambda f, ri, h: ClientConnectorCertificateError(
        _key(f), _certificate_error(f)
    ),
    ErrorCode.SSL: lambda f, ri, h: ClientConnectorSSLError(
        _key(f), ssl.SSLError(f.errno, f.message)
    ),
    ErrorCode.FINGERPRINT: lambda f, ri, h: ServerFingerprintMismatch(
        f.expected, f.got, f.host, f.port
    ),
    ErrorCode.PROXY_CONNECT: lambda f, ri, h: ClientProxyConnectionError(
        _key(f), _os_error(f)
    ),
    ErrorCode.PROXY_STATUS: lambda f, ri, h: ClientHttpProxyError(
        _connect_info(f, ri), h, status=f.status, message=f.message, headers=_raw_headers(f)
    ),
    ErrorCode.CONNECT_TIMEOUT: _message(ConnectionTimeoutError),
    ErrorCode.SOCK_READ_TIMEOUT: _message(SocketTimeoutError),
    ErrorCode.TOTAL_TIMEOUT: _message(asyncio.TimeoutError),
    ErrorCode.DISCONNECTED: _message(ServerDisconnectedError),
    ErrorCode.PAYLOAD: _message(ClientPayloadError),
    ErrorCode.BAD_RESPONSE: lambda f, ri, h: ClientResponseError(
        _request_info(f, ri), h, status=400, message=f.message
    ),
    # aiohttp's: status 0 and no message (the history says how many and which)
    ErrorCode.TOO_MANY_REDIRECTS: lambda f, ri, h: TooManyRedirects(_request_info(f, ri), h),
    ErrorCode.NON_HTTP_REDIRECT: lambda f, ri, h: NonHttpUrlRedirectClientError(f.url),
    ErrorCode.INVALID_REDIRECT: lambda f, ri, h: InvalidUrlRedirectClientError(f.url, f.message),
    ErrorCode.INVALID_URL: lambda f, ri, h: InvalidUrlClientError(f.url, f.message),
    ErrorCode.NON_HTTP_URL: lambda f, ri, h: NonHttpUrlClientError(f.url),
    ErrorCode.OS: lambda f, ri, h: (
        ClientOSError(f.errno, f.message) if f.errno else ClientOSError(f.message)
    ),
    ErrorCode.CONNECTION: _message(ClientConnectionError),
    ErrorCode.BROKER: _message(BrokerConnectionError),
    ErrorCode.PROTOCOL: _message(BrokerProtocolError),
    ErrorCode.INTERNAL: _message(ClientError),
}


def with_request_ssl(exc: BaseException, ssl: Any, server_hostname: str | None) -> BaseException:
    """A connector error's key with the request's ``ssl`` and ``server_hostname``, as
    aiohttp's (the engine knows the request's TLS only by its spec)."""
    if isinstance(exc, ClientConnectorError):
        key = exc._conn_key._replace(ssl=ssl, server_hostname=server_hostname)
        exc._conn_key = key
        exc.args = (key, *exc.args[1:])
    return exc


def exception_from_failure(
    failure: Failure, request_info: RequestInfo | None, history: tuple[Any, ...] = ()
) -> BaseException:
    """The exception a broker ``Failure`` stands for; ``history`` defaults to its raw items."""
    build = ERRORS.get(failure.code)
    if build is None:
        return ClientError(f"unknown error code {failure.code!r}: {failure.message}")
    return build(failure, request_info, history or tuple(failure.history))
