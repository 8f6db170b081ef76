"""worker_client.exceptions: aiohttp's exception tree, pickling, and the table from the wire
error codes of shared.errors to the exceptions."""

from __future__ import annotations

import asyncio
import pickle
import ssl
import subprocess
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import aiohttp.client_exceptions as aio_exc
import pytest
from aiohttp.client_reqrep import ConnectionKey as AioConnectionKey
from aiohttp.client_reqrep import RequestInfo as AioRequestInfo
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

import worker_client.exceptions as errors
from broker.failures import ConnectionFailure
from shared.errors import WIRE_ERRORS, ErrorCode
from shared.framing import FrameError, FrameReader, encode
from shared.messages import Failure, HistoryItem
from worker_client.exceptions import (
    ERRORS,
    BrokerConnectionError,
    BrokerProtocolError,
    ClientConnectionError,
    ClientConnectionResetError,
    ClientConnectorCertificateError,
    ClientConnectorDNSError,
    ClientConnectorError,
    ClientConnectorSSLError,
    ClientError,
    ClientHttpProxyError,
    ClientOSError,
    ClientPayloadError,
    ClientProxyConnectionError,
    ClientResponseError,
    ConnectionKey,
    ConnectionTimeoutError,
    InvalidURL,
    InvalidUrlClientError,
    InvalidUrlRedirectClientError,
    NonHttpUrlClientError,
    NonHttpUrlRedirectClientError,
    RedirectClientError,
    RequestInfo,
    ServerDisconnectedError,
    ServerFingerprintMismatch,
    ServerTimeoutError,
    SocketTimeoutError,
    TooManyRedirects,
    UnixClientConnectorError,
    WSMessageTypeError,
    exception_from_failure,
)

URL_ = URL("http://example.com/a?b=1")
HEADERS = CIMultiDictProxy(CIMultiDict([("Content-Type", "text/plain"), ("Set-Cookie", "a=1")]))

OURS = SimpleNamespace(
    **{name: getattr(errors, name) for name in errors.__all__}, ConnectionKey=ConnectionKey
)
AIOHTTP = SimpleNamespace(
    **{name: getattr(aio_exc, name) for name in aio_exc.__all__},
    RequestInfo=AioRequestInfo,
    ConnectionKey=AioConnectionKey,
)
EXCEPTION_NAMES = [
    name
    for name in errors.__all__
    if isinstance(getattr(errors, name), type) and issubclass(getattr(errors, name), BaseException)
]
AIOHTTP_NAMES = sorted(aio_exc.__all__)

Args = tuple[tuple[Any, ...], dict[str, Any]]


def _response(ns: Any) -> Args:
    info = ns.RequestInfo(URL_, "GET", HEADERS)
    return (info, ()), {"status": 404, "message": "Not Found", "headers": HEADERS}


def _connector(ns: Any) -> Args:
    key = ns.ConnectionKey("example.com", 8080, False, True, None, None, None)
    return (key, OSError(111, "Connection refused")), {}


def _unix(ns: Any) -> Args:
    (key, _), _ = _connector(ns)
    return ("/run/app.sock", key, OSError(2, "No such file or directory")), {}


def _certificate(ns: Any) -> Args:
    (key, _), _ = _connector(ns)
    return (key, ssl.CertificateError("hostname mismatch")), {}


# Constructor arguments per class; one that is not listed takes a message.
CONSTRUCTOR_ARGS: dict[str, Callable[[Any], Args]] = {
    "ClientResponseError": _response,
    "ContentTypeError": _response,
    "WSServerHandshakeError": _response,
    "ClientHttpProxyError": _response,
    "TooManyRedirects": _response,
    "ClientOSError": lambda ns: ((104, "Connection reset by peer"), {}),
    "ClientConnectionResetError": lambda ns: ((104, "Connection reset by peer"), {}),
    "ClientConnectorError": _connector,
    "ClientConnectorDNSError": _connector,
    "ClientProxyConnectionError": _connector,
    "ClientSSLError": _connector,
    "ClientConnectorSSLError": _connector,
    "UnixClientConnectorError": _unix,
    "ClientConnectorCertificateError": _certificate,
    "ServerFingerprintMismatch": lambda ns: ((b"a" * 32, b"b" * 32, "example.com", 443), {}),
    "InvalidURL": lambda ns: (("http://[::1", "Invalid URL"), {}),
    "InvalidUrlClientError": lambda ns: (("http://[::1",), {}),
    "InvalidUrlRedirectClientError": lambda ns: (("//x:y", "does not look like a URL"), {}),
}


def build(ns: Any, name: str) -> BaseException:
    args, kwargs = CONSTRUCTOR_ARGS.get(name, lambda ns: (("boom",), {}))(ns)
    exc: BaseException = getattr(ns, name)(*args, **kwargs)
    return exc


def looks(exc: BaseException) -> tuple[Any, ...]:
    """Everything a user can see of an exception, comparable across instances."""
    state = {key: repr(value) for key, value in vars(exc).items()}
    return type(exc), str(exc), repr(exc), repr(exc.args), state


# --- names and tree -------------------------------------------------------------------


def test_every_aiohttp_client_exception_is_exported() -> None:
    assert set(aio_exc.__all__) <= set(errors.__all__)


def test_the_module_exports_every_exception_and_request_info_only() -> None:
    assert sorted(errors.__all__) == sorted([*EXCEPTION_NAMES, "RequestInfo"])


def test_worker_client_reexports_them() -> None:
    import worker_client

    for name in errors.__all__:
        assert getattr(worker_client, name) is getattr(errors, name)


def test_all_names_exist() -> None:
    for name in errors.__all__:
        assert hasattr(errors, name), name


@pytest.mark.parametrize("name", AIOHTTP_NAMES)
def test_bases_mirror_aiohttp(name: str) -> None:
    ours = {base.__name__ for base in getattr(errors, name).__bases__}
    theirs = {base.__name__ for base in getattr(aio_exc, name).__bases__}
    assert ours == theirs


@pytest.mark.parametrize(
    ("cls", "caught_by"),
    [
        (ClientOSError, OSError),
        (ClientConnectorError, OSError),
        (ClientConnectorDNSError, ClientConnectorError),
        (ClientConnectionResetError, ConnectionResetError),
        (ServerTimeoutError, asyncio.TimeoutError),
        (ConnectionTimeoutError, asyncio.TimeoutError),
        (SocketTimeoutError, asyncio.TimeoutError),
        (ConnectionTimeoutError, ClientConnectionError),
        (ClientConnectorSSLError, ssl.SSLError),
        (ClientConnectorCertificateError, ssl.CertificateError),
        (InvalidURL, ValueError),
        (InvalidUrlRedirectClientError, ValueError),
        (InvalidUrlRedirectClientError, RedirectClientError),
        (NonHttpUrlRedirectClientError, RedirectClientError),
        (TooManyRedirects, ClientResponseError),
        (BrokerConnectionError, ClientConnectionError),
        (BrokerProtocolError, BrokerConnectionError),
        (BrokerProtocolError, ClientError),
        (WSMessageTypeError, TypeError),
    ],
)
def test_users_catch_with(cls: type[BaseException], caught_by: type[BaseException]) -> None:
    assert issubclass(cls, caught_by)


# --- behaviour: pickling, str, repr ---------------------------------------------------


@pytest.mark.parametrize("name", EXCEPTION_NAMES)
def test_pickle_round_trip(name: str) -> None:
    exc = build(OURS, name)
    if sys.version_info >= (3, 11):  # notes are new in 3.11
        exc.add_note("while fetching http://example.com/a")
    copy = pickle.loads(pickle.dumps(exc))
    assert looks(copy) == looks(exc)
    assert getattr(copy, "__notes__", None) == getattr(exc, "__notes__", None)


def test_pickled_response_error_keeps_headers_a_proxy() -> None:
    exc = build(OURS, "ContentTypeError")
    copy = pickle.loads(pickle.dumps(exc))
    assert isinstance(copy.headers, CIMultiDictProxy)
    assert copy.headers == HEADERS
    assert copy.request_info == exc.request_info
    assert isinstance(copy.request_info.headers, CIMultiDictProxy)


def test_request_info_and_connection_key_pickle() -> None:
    info = RequestInfo(URL_, "POST", HEADERS, URL("http://example.com/final"))
    key = ConnectionKey("example.com", 443, True, True, None, None, None)
    assert pickle.loads(pickle.dumps(info)) == info
    assert pickle.loads(pickle.dumps(key)) == key


def test_request_info_is_aiohttps() -> None:
    ours = RequestInfo(URL_, "GET", HEADERS)
    theirs = AioRequestInfo(URL_, "GET", HEADERS)
    assert ours.real_url == URL_
    assert tuple(ours) == tuple(theirs)
    assert repr(ours) == repr(theirs)
    with pytest.raises(AttributeError):
        ours.method = "POST"  # type: ignore[misc]


@pytest.mark.parametrize("name", AIOHTTP_NAMES)
def test_str_and_repr_match_aiohttp(name: str) -> None:
    ours, theirs = build(OURS, name), build(AIOHTTP, name)
    assert (str(ours), repr(ours)) == (str(theirs), repr(theirs))


def test_connector_error_messages() -> None:
    exc = build(OURS, "ClientConnectorError")
    assert str(exc) == "Cannot connect to host example.com:8080 ssl:default [Connection refused]"
    assert isinstance(exc, ClientConnectorError)
    assert (exc.host, exc.port, exc.ssl, exc.errno) == ("example.com", 8080, True, 111)
    assert isinstance(exc.os_error, ConnectionRefusedError)
    unix = build(OURS, "UnixClientConnectorError")
    assert isinstance(unix, UnixClientConnectorError)
    assert unix.path == "/run/app.sock"
    assert str(unix).startswith("Cannot connect to unix socket /run/app.sock ssl:default")


def test_response_error_code_is_a_deprecated_alias_of_status() -> None:
    info = RequestInfo(URL_, "GET", HEADERS)
    with pytest.deprecated_call():
        exc = ClientResponseError(info, (), code=502)
    assert exc.status == 502
    with pytest.deprecated_call():
        assert exc.code == 502
    with pytest.raises(ValueError, match="Both code and status"):
        ClientResponseError(info, (), code=502, status=502)


def test_server_disconnected_default_message() -> None:
    assert str(ServerDisconnectedError()) == "Server disconnected"


# --- the error-code table -------------------------------------------------------------

INFO = RequestInfo(URL_, "GET", HEADERS)
HISTORY = ("a response",)

# code -> (Failure fields besides code and message, exact class, attributes to check);
# "str" stands for str(exc). Every failure's message is "boom".
CASES: dict[str, tuple[dict[str, Any], type[BaseException], dict[str, Any]]] = {
    "connect": (
        {"host": "example.com", "port": 8080, "errno": 111},
        ClientConnectorError,
        {
            "host": "example.com",
            "port": 8080,
            "ssl": True,
            "errno": 111,
            "str": "Cannot connect to host example.com:8080 ssl:default [boom]",
        },
    ),
    "dns": (
        {"host": "nowhere.invalid", "port": 443, "ssl": True, "errno": -2},
        ClientConnectorDNSError,
        {"host": "nowhere.invalid", "port": 443, "errno": -2, "strerror": "boom"},
    ),
    "unix_connect": (
        {"url": "/run/app.sock", "host": "localhost", "port": 80, "errno": 2},
        UnixClientConnectorError,
        {"path": "/run/app.sock", "host": "localhost", "errno": 2},
    ),
    "certificate": (
        {"host": "example.com", "port": 443, "ssl": True, "verify_code": 10},
        ClientConnectorCertificateError,
        {"host": "example.com", "port": 443, "ssl": True},
    ),
    "ssl": (
        {"host": "example.com", "port": 443, "ssl": True, "errno": 1},
        ClientConnectorSSLError,
        {"host": "example.com", "port": 443, "errno": 1},
    ),
    "fingerprint": (
        {"host": "127.0.0.1", "port": 443, "expected": b"e" * 32, "got": b"g" * 32},
        ServerFingerprintMismatch,
        {"host": "127.0.0.1", "port": 443, "expected": b"e" * 32, "got": b"g" * 32},
    ),
    "proxy_connect": (
        {"host": "127.0.0.1", "port": 3128, "errno": 111},
        ClientProxyConnectionError,
        {"host": "127.0.0.1", "port": 3128, "errno": 111},
    ),
    "proxy_status": (
        {"status": 407, "headers": [(b"Proxy-Authenticate", b"Basic")]},
        ClientHttpProxyError,
        {"status": 407, "message": "boom", "request_info": INFO, "history": HISTORY},
    ),
    "connect_timeout": ({}, ConnectionTimeoutError, {"str": "boom"}),
    "sock_read_timeout": ({}, SocketTimeoutError, {"str": "boom"}),
    "total_timeout": ({}, asyncio.TimeoutError, {"str": "boom"}),
    "disconnected": ({}, ServerDisconnectedError, {"message": "boom", "str": "boom"}),
    "payload": ({}, ClientPayloadError, {"str": "boom"}),
    "bad_response": (
        {},
        ClientResponseError,
        {"status": 400, "message": "boom", "request_info": INFO, "history": HISTORY},
    ),
    "too_many_redirects": (
        {"status": 302},
        TooManyRedirects,  # aiohttp's: status 0, no message
        {"status": 0, "message": "", "request_info": INFO, "history": HISTORY},
    ),
    "non_http_redirect": (
        {"url": "ftp://example.com/"},
        NonHttpUrlRedirectClientError,
        {"str": "ftp://example.com/"},
    ),
    "invalid_redirect": (
        {"url": "http://[::1"},
        InvalidUrlRedirectClientError,
        {"url": "http://[::1", "description": "boom", "str": "http://[::1 - boom"},
    ),
    "invalid_url": (
        {"url": "http://[::1"},
        InvalidUrlClientError,
        {"url": "http://[::1", "description": "boom"},
    ),
    "non_http_url": ({"url": "ftp://x/"}, NonHttpUrlClientError, {"str": "ftp://x/"}),
    "os": ({"errno": 104}, ClientOSError, {"errno": 104, "strerror": "boom"}),
    "connection": ({}, ClientConnectionError, {"str": "boom"}),
    "broker": ({}, BrokerConnectionError, {"str": "boom"}),
    "protocol": ({}, BrokerProtocolError, {"str": "boom"}),
    "internal": ({}, ClientError, {"str": "boom"}),
}


def test_every_code_has_a_case() -> None:
    assert set(CASES) == set(ERRORS)


@pytest.mark.parametrize("code", sorted(CASES))
def test_code_builds_documented_exception(code: str) -> None:
    fields, cls, attributes = CASES[code]
    exc = exception_from_failure(
        Failure(stream=1, code=code, message="boom", **fields), INFO, HISTORY
    )
    assert type(exc) is cls
    for name, expected in attributes.items():
        assert (str(exc) if name == "str" else getattr(exc, name)) == expected, name
    assert looks(pickle.loads(pickle.dumps(exc))) == looks(exc)


def test_os_code_without_errno() -> None:
    exc = exception_from_failure(Failure(stream=1, code="os", message="boom"), None)
    assert type(exc) is ClientOSError
    assert (exc.errno, str(exc)) == (None, "boom")


def test_response_code_without_request_info_uses_failure_url_and_history() -> None:
    hop = HistoryItem(301, "Moved", (1, 1), [], "http://example.com/", "GET", [])
    failure = Failure(
        stream=1, code="too_many_redirects", message="boom", url=str(URL_), history=[hop]
    )
    exc = exception_from_failure(failure, None)
    assert isinstance(exc, TooManyRedirects)
    assert exc.request_info.real_url == URL_
    assert exc.history == (hop,)
    assert str(exc) == f"0, message='', url='{URL_}'"


def test_unknown_code_is_a_client_error_naming_it() -> None:
    exc = exception_from_failure(Failure(stream=1, code="teapot", message="boom"), INFO)
    assert type(exc) is ClientError
    assert "'teapot'" in str(exc)
    assert "boom" in str(exc)


# --- the wire codes (shared.errors) ---------------------------------------------------


def test_every_wire_code_has_one_row_and_one_exception() -> None:
    assert set(WIRE_ERRORS) == set(ErrorCode) == set(ERRORS)


def test_wire_rows_name_only_failure_fields() -> None:
    fillable = set(Failure.__struct_fields__) - {"stream", "code", "message", "history"}
    for code, row in WIRE_ERRORS.items():
        assert row.fields <= fillable, code
        assert row.meaning, code


def test_a_code_is_its_string() -> None:
    assert ErrorCode.DNS == "dns"
    assert (str(ErrorCode.DNS), f"{ErrorCode.DNS}") == ("dns", "dns")
    assert ErrorCode("dns") is ErrorCode.DNS
    assert ERRORS["dns"] is ERRORS[ErrorCode.DNS]  # type: ignore[index]
    assert pickle.loads(pickle.dumps(ErrorCode.DNS)) is ErrorCode.DNS


def test_failure_crosses_the_wire_with_a_typed_code() -> None:
    frame = encode(Failure(stream=1, code=ErrorCode.DNS, message="boom"))
    assert frame == encode(Failure(stream=1, code="dns", message="boom"))  # type: ignore[arg-type]
    (msg,) = FrameReader().feed(frame)
    assert isinstance(msg, Failure)
    assert msg.code is ErrorCode.DNS


def test_an_unknown_code_on_the_wire_is_a_bad_frame() -> None:
    frame = encode(Failure(stream=1, code="teapot", message="boom"))  # type: ignore[arg-type]
    with pytest.raises(FrameError, match="teapot|ErrorCode"):
        FrameReader().feed(frame)


def test_the_broker_raises_with_codes_only() -> None:
    assert ConnectionFailure("dns", "boom").code is ErrorCode.DNS
    assert ConnectionFailure(ErrorCode.OS, "boom").code is ErrorCode.OS
    with pytest.raises(ValueError, match="teapot"):
        ConnectionFailure("teapot", "boom")


def test_the_broker_never_imports_the_worker() -> None:
    code = (
        "import sys, broker.cli, broker.server, broker.stats, broker.blocking;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'worker_client'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"
