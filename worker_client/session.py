"""``ClientSession``: aiohttp's client API in front of a broker (or the embedded engine).

A request is three steps, each in its own place: ``prepare_request`` turns the keyword
arguments into URL, headers and body (pure); the transport carries a ``Request`` message
to the engine; the ``Head`` that comes back becomes a ``ClientResponse`` whose body
streams in through its ``StreamReader``.
"""

from __future__ import annotations

import asyncio
import json as _json
import os
import sys
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from shared.messages import (
    HEAD_LIMIT_MAX,
    HEADERS_LIMIT_MAX,
    STREAM_WINDOW,
    Failure,
    Head,
    Request,
)
from shared.specs import DEFAULT_POOL_BYTES, ClientTimeout, encode_pool

from .cookies import (
    AbstractCookieJar,
    CookieJar,
    LooseCookies,
    check_session_jar,
    request_cookies,
    request_jar,
)
from .exceptions import (
    ClientConnectionError,
    RequestInfo,
    exception_from_failure,
    with_request_ssl,
)
from .helpers import BasicAuth, HttpVersion, HttpVersion11, check_base_url
from .proxies import EnvProxies, fixed_route, netrc_auth
from .request_builder import PreparedRequest, prepare_request
from .request_options import (
    UNSET,
    bounded,
    compress_and_chunk,
    expects_continue,
    is_http10,
    session_timeout,
)
from .response import ClientResponse
from .transport import (
    StreamHandle,
    Transport,
    broker_address,
    get_transport,
    release_transport,
    trusted_broker_uids,
)

if TYPE_CHECKING:
    from ssl import SSLContext

    from .connector import BaseConnector
    from .middlewares import ClientMiddlewareType, HopOptions
    from .tls import Fingerprint
    from .tracing import TraceConfig
    from .upload import UploadTracker
    from .ws_channel import Outgoing
    from .ws_connect import WSRequestContextManager


_T = TypeVar("_T")

# worker_client.tls's, imported by the first request that names a TLS setting (it hashes
# specs and handles SSL contexts, which a plain request never needs).
def merge_ssl(ssl: Any, verify_ssl: Any, ssl_context: Any, fingerprint: Any) -> Any:
    from .tls import merge_ssl

    return merge_ssl(ssl, verify_ssl, ssl_context, fingerprint)


def request_tls(ssl: Any, connector_ssl: Any) -> Any:
    from .tls import request_tls

    return request_tls(ssl, connector_ssl)


def check_server_hostname(server_hostname: Any) -> str:
    from .tls import check_server_hostname

    return check_server_hostname(server_hostname)


def with_tls(req: Request, tls: Any, sni: str) -> Request:
    from .tls import with_tls

    return with_tls(req, tls, sni)


if TYPE_CHECKING:
    from .fast import FastPath, Handover
    from .fast_broker import BrokerFastPath

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover
    from typing_extensions import Unpack

__all__ = ["ClientSession", "request"]

_SENTINEL: Any = object()
READ_BUFSIZE_MAX = STREAM_WINDOW
"""read_bufsize= at most: the reader's line limit is twice it, within the stream's credit."""


class _RequestOptions(TypedDict, total=False):
    params: Any
    data: Any
    json: Any
    headers: Any
    skip_auto_headers: Iterable[str] | None
    auth: BasicAuth | None
    allow_redirects: bool
    max_redirects: int
    timeout: ClientTimeout | float | None
    raise_for_status: bool | Callable[[ClientResponse], Awaitable[None]] | None
    read_until_eof: bool
    auto_decompress: bool | None
    cookies: LooseCookies | None
    expect100: bool
    max_line_size: int | None
    max_field_size: int | None
    max_headers: int | None
    read_bufsize: int | None
    compress: str | bool | None
    chunked: bool | None
    upload_tracker: UploadTracker | None
    middlewares: Sequence[ClientMiddlewareType] | None
    ssl: SSLContext | bool | Fingerprint | None
    verify_ssl: bool | None
    fingerprint: bytes | None
    ssl_context: SSLContext | None
    server_hostname: str | None
    proxy: str | URL | None
    proxy_auth: BasicAuth | None
    proxy_headers: Any
    trace_request_ctx: Any


def _warn_auth(auth: Any, proxy_auth: Any, stacklevel: int) -> None:
    """aiohttp 3.14's deprecation of ``auth=`` and ``proxy_auth=`` (both still work)."""
    for name, value, header, where in (
        ("auth", auth, "Authorization", "headers"),
        ("proxy_auth", proxy_auth, "Proxy-Authorization", "proxy_headers"),
    ):
        if value is not None:
            warnings.warn(
                f"The '{name}' parameter is deprecated and will be removed in v4;"
                f" pass {where}={{'{header}': "
                "aiohttp.encode_basic_auth(login, password)} instead",
                DeprecationWarning,
                stacklevel=stacklevel,
            )


async def _body_over(
    prepared: PreparedRequest,
    tracker: UploadTracker | None,
    exc: BaseException | None,
    history: list[Any] | None = None,
) -> None:
    """The request is over (its response came, or it failed): as aiohttp, its payload
    is closed and its upload tracker settled."""
    if tracker is not None:
        if exc is None and prepared.stream is None:
            tracker._inline(len(prepared.body or b""), history or [])
        tracker._finish(exc)
    if prepared.payload is not None:
        await prepared.payload.close()


class ClientSession:
    """A client session; its pool, DNS cache and cookies live in the broker."""

    def __init__(
        self,
        base_url: str | URL | None = None,
        *,
        connector: BaseConnector | None = None,
        headers: Any = None,
        skip_auto_headers: Iterable[str] | None = None,
        auth: BasicAuth | None = None,
        json_serialize: Callable[[Any], str] = _json.dumps,
        json_serialize_bytes: Callable[[Any], bytes] | None = None,
        timeout: ClientTimeout = _SENTINEL,
        read_timeout: float | None = _SENTINEL,
        conn_timeout: float | None = None,
        raise_for_status: bool | Callable[[ClientResponse], Awaitable[None]] = False,
        auto_decompress: bool = True,
        connector_owner: bool = True,
        max_redirects: int = 10,
        broker: str | None = None,
        broker_uid: int | Iterable[int] | None = None,
        cookies: LooseCookies | None = None,
        cookie_jar: AbstractCookieJar | None = None,
        version: HttpVersion = HttpVersion11,
        read_bufsize: int = 2**16,
        max_line_size: int = 8190,
        max_field_size: int = 8190,
        max_headers: int = 128,
        fallback_charset_resolver: Callable[[ClientResponse, bytes], str] | None = None,
        requote_redirect_url: bool = True,
        middlewares: Sequence[ClientMiddlewareType] = (),
        ssl_shutdown_timeout: float | None = _SENTINEL,
        proxy: str | URL | None = None,
        proxy_auth: BasicAuth | None = None,
        trust_env: bool = False,
        trace_configs: list[TraceConfig] | None = None,
    ) -> None:
        self._base_url = check_base_url(base_url)
        self._version = version
        self._http10 = is_http10(version)
        self._read_bufsize = bounded("read_bufsize", read_bufsize, READ_BUFSIZE_MAX)
        self._max_line_size = bounded("max_line_size", max_line_size, HEAD_LIMIT_MAX)
        self._max_field_size = bounded("max_field_size", max_field_size, HEAD_LIMIT_MAX)
        self._max_headers = bounded("max_headers", max_headers, HEADERS_LIMIT_MAX)
        self._default_limits = (
            self._max_line_size, self._max_field_size, self._max_headers, self._read_bufsize
        )
        timeout = session_timeout(
            None if timeout is _SENTINEL else timeout,
            UNSET if read_timeout is _SENTINEL else read_timeout,
            conn_timeout,
        )
        _warn_auth(auth, proxy_auth, 3)
        if ssl_shutdown_timeout is not _SENTINEL:
            warnings.warn(
                "The ssl_shutdown_timeout parameter is deprecated and will be removed in "
                "aiohttp 4.0",
                DeprecationWarning,
                stacklevel=2,
            )
            if connector is None:  # as aiohttp: the session's own connector takes it
                from .connector import TCPConnector

                connector = TCPConnector(ssl_shutdown_timeout=ssl_shutdown_timeout)
        self._connector = connector
        self._connector_owner = connector_owner
        # The connector's ssl=: requests with the default ssl=True use it.
        self._conn_ssl: Any = connector._ssl if connector is not None else True
        self._pool = encode_pool(connector.spec) if connector is not None else DEFAULT_POOL_BYTES
        self._default_headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self._skip_auto_headers = frozenset(istr(h) for h in skip_auto_headers or ())
        self._default_auth = auth
        self._json_serialize = json_serialize
        self._json_serialize_bytes = json_serialize_bytes
        # What json= goes through: the builder takes str or bytes from it.
        self._json_dumps: Callable[[Any], Any] = json_serialize_bytes or json_serialize
        self._resolve_charset = fallback_charset_resolver
        self._requote_redirect_url = requote_redirect_url
        self._middlewares = tuple(middlewares or ())
        self._timeout = timeout
        self._raise_for_status = raise_for_status
        self._auto_decompress = auto_decompress
        self._max_redirects = max_redirects
        self._default_proxy = proxy
        self._default_proxy_auth = proxy_auth
        self._trust_env = trust_env
        self._trace_configs = trace_configs or []
        for trace_config in self._trace_configs:
            trace_config.freeze()
        self._env = EnvProxies() if trust_env else None
        # The encoded proxy route of a request that names no proxy of its own: b"" goes
        # direct; None is worked out per request (trust_env) or on first use (proxy=).
        self._route: bytes | None = b"" if proxy is None and not trust_env else None
        self._broker = broker_address(broker)
        # Read once, as the address: the broker uids this session talks to.
        self._broker_uids = (
            trusted_broker_uids(broker_uid)
            if self._broker is not None or broker_uid is not None
            else frozenset()
        )
        if cookie_jar is None:
            cookie_jar = CookieJar()
        check_session_jar(cookie_jar, self._broker, self._broker_uids)
        self._cookie_jar = cookie_jar
        if cookies:
            cookie_jar.update_cookies(cookies)
        # What requests name: (token, store, spec) of the jar, asked once (again after fork).
        self._jar_ref: tuple[bytes, Any, Any] | None = None
        self._transport: Transport | None = None
        self._transport_lock: asyncio.Lock | None = None
        self._handles: set[StreamHandle] = set()
        self._pid = os.getpid()
        self._closed = False
        self._fast: FastPath | BrokerFastPath | None = None
        if (
            not self._middlewares
            and not self._trace_configs
            and self._route == b""
            and self._conn_ssl is True
        ):
            from .fast_rules import enabled

            if not enabled():
                pass
            elif self._broker is None:
                from .fast import FastPath  # embedded only: it needs the engine

                self._fast = FastPath(self)
            else:
                from .fast_broker import BrokerFastPath

                self._fast = BrokerFastPath(self)

    # -- properties as aiohttp's -------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once closed, or once its connector was closed (as aiohttp)."""
        return self._closed or (self._connector is not None and self._connector.closed)

    @property
    def connector(self) -> BaseConnector | None:
        return self._connector

    @property
    def connector_owner(self) -> bool:
        return self._connector_owner

    @property
    def headers(self) -> CIMultiDict[str]:
        return self._default_headers

    @property
    def skip_auto_headers(self) -> frozenset[istr]:
        return self._skip_auto_headers

    @property
    def auth(self) -> BasicAuth | None:
        return self._default_auth

    @property
    def json_serialize(self) -> Callable[[Any], str]:
        return self._json_serialize

    @property
    def timeout(self) -> ClientTimeout:
        return self._timeout

    @property
    def raise_for_status(self) -> Any:
        return self._raise_for_status

    @property
    def auto_decompress(self) -> bool:
        return self._auto_decompress

    @property
    def version(self) -> HttpVersion:
        return self._version

    @property
    def trace_configs(self) -> list[TraceConfig]:
        """The ``TraceConfig``s of this session's requests (frozen)."""
        return self._trace_configs

    @property
    def trust_env(self) -> bool:
        """Proxies and netrc credentials are read from the environment (as aiohttp)."""
        return self._trust_env

    @property
    def requote_redirect_url(self) -> bool:
        """Requote a redirect's Location (aiohttp's ``URL(location, encoded=False)``)."""
        return self._requote_redirect_url

    @requote_redirect_url.setter
    def requote_redirect_url(self, val: bool) -> None:
        warnings.warn(
            "session.requote_redirect_url modification is deprecated #2778",
            DeprecationWarning,
            stacklevel=2,
        )
        self._requote_redirect_url = val

    @property
    def cookie_jar(self) -> AbstractCookieJar:
        """The session's cookies (kept in the broker, or embedded in this process)."""
        return self._cookie_jar

    @property
    def broker(self) -> str | None:
        """The broker socket this session talks to; None means embedded."""
        return self._broker

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> ClientSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Abandon unfinished streams and let go of the transport; idempotent."""
        if self._closed:
            return
        self._closed = True
        for handle in list(self._handles):
            handle.give_up(ClientConnectionError("Connection closed"))
        self._handles.clear()
        transport, self._transport = self._transport, None
        if transport is not None:
            await release_transport(transport)
        if self._connector is not None and self._connector_owner:
            await self._connector.close()

    def __del__(self, _warnings: Any = warnings) -> None:
        if not getattr(self, "_closed", True) and getattr(self, "_transport", None) is not None:
            _warnings.warn(f"Unclosed client session {self!r}", ResourceWarning, source=self)

    async def _get_transport(self) -> Transport:
        if self._pid != os.getpid():
            # A forked child never uses its parent's socket: forget it (the parent still
            # owns it) and connect anew.
            self._pid = os.getpid()
            self._transport = None
            self._transport_lock = None
            self._handles = set()
            self._jar_ref = None
        if self._transport is not None and not self._transport.closed:
            if not self._transport.stale():
                return self._transport
        if self._transport_lock is None:
            self._transport_lock = asyncio.Lock()
        async with self._transport_lock:
            if self._transport is not None and self._transport.closed:
                await release_transport(self._transport)
                self._transport = None
            if self._transport is None:
                self._transport = await get_transport(self._broker, self._broker_uids)
                if self._connector is not None:
                    self._connector._bind(self._transport)
            return self._transport

    async def stats(self) -> Any:
        """The engine's figures (pools, streams) as a ``Stats`` message."""
        return await (await self._get_transport()).stats()

    # -- requests ---------------------------------------------------------------

    def request(
        self, method: str, url: str | URL, **kwargs: Unpack[_RequestOptions]
    ) -> _RequestContextManager:
        """Perform an HTTP request; await it or use it with ``async with``."""
        return self._start(method, url, kwargs)

    def get(self, url: str | URL, **kwargs: Unpack[_RequestOptions]) -> _RequestContextManager:
        return self._start("GET", url, kwargs)

    def options(
        self, url: str | URL, **kwargs: Unpack[_RequestOptions]
    ) -> _RequestContextManager:
        return self._start("OPTIONS", url, kwargs)

    def head(self, url: str | URL, **kwargs: Unpack[_RequestOptions]) -> _RequestContextManager:
        kwargs.setdefault("allow_redirects", False)
        return self._start("HEAD", url, kwargs)

    def post(self, url: str | URL, **kwargs: Unpack[_RequestOptions]) -> _RequestContextManager:
        return self._start("POST", url, kwargs)

    def put(self, url: str | URL, **kwargs: Unpack[_RequestOptions]) -> _RequestContextManager:
        return self._start("PUT", url, kwargs)

    def patch(self, url: str | URL, **kwargs: Unpack[_RequestOptions]) -> _RequestContextManager:
        return self._start("PATCH", url, kwargs)

    def delete(
        self, url: str | URL, **kwargs: Unpack[_RequestOptions]
    ) -> _RequestContextManager:
        return self._start("DELETE", url, kwargs)

    def ws_connect(self, url: str | URL, **kwargs: Any) -> WSRequestContextManager:
        """Open a WebSocket (aiohttp's ``ws_connect``, same keywords); await it or use
        it with ``async with``, which closes it at the end."""
        from .ws_connect import WSRequestContextManager, ws_connect

        return WSRequestContextManager(ws_connect(self, url, **kwargs))

    def _start(self, method: str, url: str | URL, kwargs: Any) -> _RequestContextManager:
        """The request's coroutine: the fast path's when it may be (``worker_client.fast``)."""
        fast = self._fast
        if fast is not None and kwargs.keys() <= fast.keys:
            return _RequestContextManager(fast.request(method, url, kwargs, **kwargs))
        return _RequestContextManager(self._request(method, url, **kwargs))

    async def _request(
        self,
        method: str,
        url: str | URL,
        *,
        params: Any = None,
        data: Any = None,
        json: Any = None,
        headers: Any = None,
        skip_auto_headers: Iterable[str] | None = None,
        auth: BasicAuth | None = None,
        allow_redirects: bool = True,
        max_redirects: int | None = None,
        timeout: ClientTimeout | float | None = _SENTINEL,
        raise_for_status: bool | Callable[[ClientResponse], Awaitable[None]] | None = None,
        read_until_eof: bool = True,
        auto_decompress: bool | None = None,
        cookies: LooseCookies | None = None,
        expect100: bool = False,
        max_line_size: int | None = None,
        max_field_size: int | None = None,
        max_headers: int | None = None,
        read_bufsize: int | None = None,
        compress: str | bool | None = None,
        chunked: bool | None = None,
        upload_tracker: UploadTracker | None = None,
        middlewares: Sequence[ClientMiddlewareType] | None = None,
        ssl: SSLContext | bool | Fingerprint | None = True,
        verify_ssl: bool | None = None,
        fingerprint: bytes | None = None,
        ssl_context: SSLContext | None = None,
        server_hostname: str | None = None,
        proxy: str | URL | None = None,
        proxy_auth: BasicAuth | None = None,
        proxy_headers: Any = None,
        trace_request_ctx: Any = None,
        _handover: Handover | None = None,
        _upgrade: Outgoing | None = None,
        **unsupported: Any,
    ) -> ClientResponse:
        # Explicit keywords (bound by the interpreter), as aiohttp's _request; the
        # verbs' shared signature for type checkers is _RequestOptions.
        if self.closed:
            raise RuntimeError("Session is closed")
        if unsupported:
            name = next(iter(unsupported))
            raise TypeError(f"request() got an unexpected keyword argument {name!r}")
        if (
            ssl is not True or verify_ssl is not None or ssl_context is not None
            or fingerprint is not None
        ):
            ssl = merge_ssl(ssl, verify_ssl, ssl_context, fingerprint)
        # (tls id, spec, pin): None for the default, which costs nothing more.
        tls = None if ssl is True and self._conn_ssl is True else request_tls(ssl, self._conn_ssl)
        sni = "" if server_hostname is None else check_server_hostname(server_hostname)
        if auth is not None or proxy_auth is not None:
            _warn_auth(auth, proxy_auth, 4)
        timeout = self._timeout if timeout is _SENTINEL else _request_timeout(timeout)
        merged, prepared, skip = self._prepare(
            method, url, params, data, headers, json, skip_auto_headers, auth
        )
        tracer = None
        if self._trace_configs:
            from .tracing import RequestTrace

            tracer = RequestTrace(
                self, self._trace_configs, trace_request_ctx, prepared.method,
                prepared.real_url or prepared.url, merged,
            )
            await tracer.start(url)
        try:
            body, rewind = prepared.stream, prepared.rewind
            if _upgrade is not None:  # ws_connect's: the frames the WebSocket writes
                body = _upgrade
            try:
                route = self._route
                if (
                    route is None or proxy is not None or proxy_auth is not None
                    or proxy_headers or _upgrade is not None
                ):
                    route = await self._proxy_route(
                        proxy, proxy_auth, proxy_headers, _upgrade is not None
                    )
                if self._env is not None and "Authorization" not in prepared.headers:
                    netrc = await netrc_auth(self._env, prepared.url.host)
                    if netrc is not None:
                        prepared.headers["Authorization"] = netrc.encode()
                chunk = False
                if compress and tracer is not None:
                    stream, again = tracer.compressing(prepared.body, body, rewind)
                    prepared = prepared._replace(stream=stream, rewind=again)
                if compress or chunked is not None:
                    prepared, chunk = compress_and_chunk(
                        prepared, data, json, compress, chunked, merged
                    )
                    body, rewind = prepared.stream, prepared.rewind
                expect100 = expects_continue(prepared.headers, expect100)
                limits = self._limits(max_line_size, max_field_size, max_headers, read_bufsize)
                if upload_tracker is not None:
                    body, rewind = upload_tracker._start(body, rewind)
                transport = await self._get_transport()
                jar_ref = self._jar_ref
                if jar_ref is None:
                    jar_ref = self._jar_ref = request_jar(self._cookie_jar)
                if jar_ref[0] and jar_ref[0] not in transport.jars_open:
                    transport.open_jar(jar_ref[0], jar_ref[2])
                if tls is not None and tls[0] and tls[0] not in transport.tls_open:
                    transport.open_tls(tls[0], tls[1])
                own_cookies = (
                    request_cookies(cookies, self._cookie_jar, prepared.url)
                    if cookies is not None
                    else []
                )
            except BaseException as exc:
                if prepared.payload is not None or upload_tracker is not None:
                    await _body_over(prepared, upload_tracker, exc)
                raise
            if middlewares := self._middlewares if middlewares is None else middlewares:
                from .middlewares import HopOptions

                resp = await self._request_hops(
                    middlewares,
                    prepared,
                    HopOptions(
                        prepared.stream, rewind,
                        upload_tracker._wrote if upload_tracker is not None else None,
                        chunk, expect100, limits, transport, jar_ref, own_cookies, timeout, auth,
                        skip, allow_redirects,
                        self._max_redirects if max_redirects is None else max_redirects,
                        self._auto_decompress if auto_decompress is None else auto_decompress,
                        read_until_eof,
                        bool(compress),
                        ssl,
                        server_hostname,
                        route,
                        (
                            self._default_proxy if proxy is None else proxy,
                            self._default_proxy_auth if proxy_auth is None else proxy_auth,
                            proxy_headers,
                        ),
                        tracer,
                        _upgrade,
                    ),
                    upload_tracker, raise_for_status,
                )
                if tracer is not None:
                    await tracer.end(resp)
                return resp
            sent_headers = CIMultiDictProxy(prepared.headers)
            request_info = RequestInfo(
                prepared.url, prepared.method, sent_headers, prepared.real_url or prepared.url
            )

            def make_error(failure: Failure) -> BaseException:
                history = tuple(
                    self._history_response(h, request_info) for h in failure.history
                )
                exc = exception_from_failure(failure, request_info, history)
                if ssl is not True or server_hostname is not None:
                    exc = with_request_ssl(exc, ssl, server_hostname)
                return exc

            handle = StreamHandle(transport, transport.next_stream_id(), make_error, limits[3])
            req = Request(
                stream=handle.id,
                method=prepared.method,
                url=str(prepared.url),
                headers=list(prepared.headers.items()),
                body=prepared.body,
                streamed=body is not None,
                pool=self._pool,
                timeout=timeout,
                allow_redirects=allow_redirects,
                max_redirects=self._max_redirects if max_redirects is None else max_redirects,
                auto_decompress=(
                    self._auto_decompress if auto_decompress is None else auto_decompress
                ),
                read_until_eof=read_until_eof,
                skip_host=prepared.skip_host,
                replayable=rewind is not None,
                jar=jar_ref[0],
                cookies=own_cookies,
                expect100=expect100,
                max_line_size=limits[0],
                max_field_size=limits[1],
                max_headers=limits[2],
                http10=self._http10,
                chunked=chunk,
                requote_redirect_url=self._requote_redirect_url,
                proxy=route,
                upgrade=_upgrade is not None,
                handover=_upgrade is not None,
            )
            if _upgrade is not None:
                _upgrade.handle = handle
            if tls is not None or sni:
                req = with_tls(req, tls, sni)
            if tracer is not None:
                req, body, rewind = tracer.attach(
                    req, handle, request_info, prepared.body, body, rewind
                )
            self._handles.add(handle)
            if timeout.total:
                left = timeout.total
                if _handover is not None and _handover.left is not None:
                    left = _handover.left
                handle.set_deadline(left, timeout.ceil_threshold)
            try:
                if _handover is not None:  # the fast path's attempt, for the engine
                    assert transport.kind == "embedded"
                    _handover.taken = True
                    await transport.resume(  # type: ignore[attr-defined]
                        req, handle, prepared.url, jar_ref[1], _handover.first
                    )
                else:
                    await transport.send(
                        req, body, handle, prepared.url, jar_ref[1], rewind,
                        upload_tracker._wrote if upload_tracker is not None else None,
                    )
                if tracer is not None:
                    await tracer.until(handle.head)
                    if self._closed:  # while the handlers ran: as aiohttp, it fails
                        raise ClientConnectionError("Connection closed")
                head = await handle.head
            except BaseException as exc:
                handle.give_up()
                self._handles.discard(handle)
                del handle  # its head holds the exception, whose traceback holds this frame
                if prepared.payload is not None or upload_tracker is not None:
                    await _body_over(prepared, upload_tracker, exc)
                raise
            if prepared.payload is not None or upload_tracker is not None:
                await _body_over(prepared, upload_tracker, None, head.history)
            resp = self._response(head, handle, request_info, req.url)
            resp = await self._check_status(resp, raise_for_status)
            if tracer is not None:
                await tracer.end(resp)
            return resp
        except BaseException as exc:
            if tracer is not None:
                await tracer.exception(exc)
            raise

    def _prepare(
        self,
        method: str,
        url: str | URL,
        params: Any,
        data: Any,
        headers: Any,
        json: Any = None,
        skip_auto_headers: Iterable[str] | None = None,
        auth: BasicAuth | None = None,
    ) -> tuple[CIMultiDict[str], PreparedRequest, Iterable[str]]:
        """The request's headers (the session's merged with its own), what
        ``prepare_request`` makes of it, and the auto headers skipped."""
        merged: CIMultiDict[str] = CIMultiDict(self._default_headers)
        if headers:
            extra = CIMultiDict(headers)
            for name in extra.keys():
                merged.popall(name, None)
            merged.extend(extra)
        skip: Iterable[str] = self._skip_auto_headers
        if skip_auto_headers:
            skip = {*skip, *(istr(h) for h in skip_auto_headers)}
        prepared = prepare_request(
            method,
            url,
            base_url=self._base_url,
            params=params,
            data=data,
            json=json,
            json_serialize=self._json_dumps,
            headers=merged,
            skip_auto_headers=skip,
            auth=auth,
            session_auth=self._default_auth,
        )
        return merged, prepared, skip

    async def _proxy_route(
        self, proxy: Any, proxy_auth: Any, proxy_headers: Any, websocket: bool = False
    ) -> bytes:
        """The encoded ``ProxyRoute`` (``worker_client.proxies``): the request's proxy,
        else the session's, else the environment's with ``trust_env`` (for a
        WebSocket's upgrade, its ``ws_proxy``/``wss_proxy``)."""
        if proxy_auth is None:
            proxy_auth = self._default_proxy_auth
        if proxy is not None:
            return fixed_route(proxy, proxy_auth, proxy_headers)
        proxy = self._default_proxy
        if proxy is not None:
            route = fixed_route(proxy, proxy_auth, proxy_headers)
            if proxy_auth is self._default_proxy_auth and proxy_headers is None:
                self._route = route  # the session's own: kept for the next request
            return route
        if self._env is not None:
            return await self._env.route(websocket)
        return b""

    async def _request_hops(
        self,
        middlewares: Sequence[ClientMiddlewareType],
        prepared: PreparedRequest,
        spec: HopOptions,
        tracker: UploadTracker | None,
        raise_for_status: Any,
    ) -> ClientResponse:
        """A request with middlewares: each hop through them (``worker_client.middlewares``)."""
        from .middlewares import _Hops

        try:
            resp = await _Hops(self, spec).run(middlewares, prepared)
        except BaseException as exc:
            if prepared.payload is not None or tracker is not None:
                await _body_over(prepared, tracker, exc)
            raise
        if prepared.payload is not None or tracker is not None:
            await _body_over(prepared, tracker, None, list(resp.history))
        return await self._check_status(resp, raise_for_status)

    async def _check_status(self, resp: ClientResponse, rfs: Any) -> ClientResponse:
        """``raise_for_status``: the request's (a bool or an async callable), else the
        session's; a response that fails it is released."""
        if rfs is None:
            rfs = self._raise_for_status
        if rfs:
            try:
                if callable(rfs):
                    await rfs(resp)
                else:
                    resp.raise_for_status()
            except BaseException:
                resp.release()
                raise
        return resp

    def _limits(
        self, line: int | None, field: int | None, count: int | None, bufsize: int | None
    ) -> tuple[int, int, int, int]:
        """A request's max_line_size, max_field_size, max_headers and read_bufsize:
        its own, bounded, or the session's."""
        if line is None and field is None and count is None and bufsize is None:
            return self._default_limits
        return (
            self._max_line_size if line is None
            else bounded("max_line_size", line, HEAD_LIMIT_MAX),
            self._max_field_size if field is None
            else bounded("max_field_size", field, HEAD_LIMIT_MAX),
            self._max_headers if count is None
            else bounded("max_headers", count, HEADERS_LIMIT_MAX),
            self._read_bufsize if bufsize is None
            else bounded("read_bufsize", bufsize, READ_BUFSIZE_MAX),
        )

    def _history_response(self, item: Any, request_info: RequestInfo) -> ClientResponse:
        info = self._info_for(item, request_info)
        return ClientResponse.from_head(
            item,
            request_info=info,
            content=None,
            history=(),
            on_release=None,
            loop=asyncio.get_running_loop(),
        )

    @staticmethod
    def _info_for(item: Any, first: RequestInfo) -> RequestInfo:
        if not item.request_headers:
            return first
        url = URL(item.url, encoded=True)
        headers = CIMultiDictProxy(CIMultiDict(item.request_headers))
        return RequestInfo(url, item.method, headers, url)

    def _response(
        self, head: Head, handle: StreamHandle, request_info: RequestInfo, request_url: str
    ) -> ClientResponse:
        history = tuple(self._history_response(h, request_info) for h in head.history)

        def on_release(complete: bool) -> None:
            self._handles.discard(handle)
            if not complete:
                handle.give_up()

        if handle.done:
            self._handles.discard(handle)
        resp = ClientResponse.from_head(
            head,
            request_info=self._info_for(head, request_info),
            content=handle.content,
            history=history,
            on_release=on_release,
            loop=asyncio.get_running_loop(),
            request_url=request_url,
        )
        if self._resolve_charset is not None:
            resp._resolve_charset = self._resolve_charset
        return resp


def _request_timeout(timeout: ClientTimeout | float | None) -> ClientTimeout:
    """A request's ``timeout=`` as aiohttp 3.14 reads it: a ``ClientTimeout``, or else
    the total in seconds (None: no timeout at all, not the session's)."""
    if isinstance(timeout, ClientTimeout):
        return timeout
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float))
    ):
        raise TypeError(
            f"timeout must be a ClientTimeout or a number of seconds, got {timeout!r}"
        )
    return ClientTimeout(total=timeout)


class AwaitableContext(Coroutine[Any, Any, _T]):
    """Awaitable, and an async context manager whose ``__aexit__`` a subclass gives:
    what the verb methods (and ``ws_connect``) return."""

    __slots__ = ("_coro", "_resp")

    def __init__(self, coro: Coroutine[Any, Any, _T]) -> None:
        self._coro = coro
        self._resp: _T | None = None

    def send(self, arg: Any) -> Any:
        return self._coro.send(arg)

    def throw(self, *args: Any) -> Any:
        try:
            return self._coro.throw(*args)
        finally:
            del args  # the exception, whose traceback holds this frame

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, _T]:
        return self._coro.__await__()

    async def __aenter__(self) -> _T:
        self._resp = await self._coro
        return self._resp


class _RequestContextManager(AwaitableContext[ClientResponse]):
    __slots__ = ()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._resp is not None
        self._resp.release()  # all that wait_for_close does


def request(method: str, url: str | URL, **kwargs: Any) -> _SessionRequestContextManager:
    """A one-off request in its own session (aiohttp's ``aiohttp.request``)."""
    return _SessionRequestContextManager(method, url, kwargs)


class _SessionRequestContextManager:
    def __init__(self, method: str, url: str | URL, kwargs: dict[str, Any]) -> None:
        session_keys = (
            "connector", "timeout", "broker", "broker_uid", "auto_decompress", "headers",
            "cookies", "version",
        )
        self._session_kw = {k: kwargs.pop(k) for k in session_keys if k in kwargs}
        self._method, self._url, self._kw = method, url, kwargs
        self._session: ClientSession | None = None
        self._resp: ClientResponse | None = None

    async def __aenter__(self) -> ClientResponse:
        self._session = ClientSession(**self._session_kw)
        try:
            self._resp = await self._session.request(self._method, self._url, **self._kw)
        except BaseException:
            await self._session.close()
            raise
        return self._resp

    async def __aexit__(self, *exc: Any) -> None:
        assert self._session is not None and self._resp is not None
        self._resp.release()
        await self._session.close()


