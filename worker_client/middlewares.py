"""Client middlewares (aiohttp 3.12+): ``ClientRequest``, the chain, and the hops.

A request with middlewares runs them in the worker around every hop, as aiohttp does:
each hop goes to the engine as its own ``Request`` with ``allow_redirects=False``, and
the redirects are followed here with the engine's own pure policy (``broker.hops``:
method rewrite, body kept or dropped, credentials and ``cookies=`` dropped across
origins). The cookie jar stays in the engine: every hop's ``Request`` names it, so the
engine sends the jar's cookies for that hop's URL and stores its ``Set-Cookie`` first.

What a middleware sees is a ``ClientRequest`` made afresh for each hop from the hop
(aiohttp makes one per hop too): a change to it lasts for that hop, and for the calls of
the handler the middleware makes with it (a retry sends it again). A streamed body that
can be re-read is made again for each send; one that cannot is sent once, and a second
send raises aiohttp's ``ClientPayloadError``. Requests without middlewares never come
here: their redirects are followed in the engine.

Bounds: a request holds its history (heads only, released; at most ``max_redirects``,
which 0 lifts, as in the engine) and the responses of its handler calls; those a
middleware did not return are released when the request ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from broker.failures import ConnectionFailure
from broker.hops import REDIRECTS, Hop, follow, redirect_location
from shared.errors import ErrorCode
from shared.messages import Failure, Request
from shared.specs import ClientTimeout

from .exceptions import (
    ClientConnectionError,
    ClientPayloadError,
    RequestInfo,
    exception_from_failure,
    with_request_ssl,
)
from .handle import StreamHandle
from .helpers import BasicAuth, HttpVersion, HttpVersion11
from .payload import BytesPayload, Payload
from .proxies import fixed_route
from .request_builder import CONSUMED_BODY, PreparedRequest, _encode_data, _rewinder
from .response import ClientResponse
from .tls import check_server_hostname, merge_ssl, request_tls, with_tls

if TYPE_CHECKING:
    from .session import ClientSession

__all__ = [
    "ClientHandlerType",
    "ClientMiddlewareType",
    "ClientRequest",
    "build_client_middlewares",
]

_SSL_SCHEMES = frozenset(("https", "wss"))


class _Body:
    """A request's body as each send takes it: inline bytes (sent as often as asked),
    or a stream (the first send takes it; later ones make it again, when they can)."""

    __slots__ = ("inline", "stream", "rewind", "payload", "streamed")

    def __init__(
        self,
        inline: bytes | None,
        stream: AsyncIterator[bytes] | None = None,
        rewind: Callable[[], AsyncIterator[bytes]] | None = None,
        payload: Payload | None = None,
    ) -> None:
        self.inline = inline
        self.stream = stream
        self.rewind = rewind
        self.payload = payload  # what ``ClientRequest.body`` shows
        self.streamed = stream is not None or rewind is not None

    def sendable(self) -> bool:
        return not self.streamed or self.stream is not None or self.rewind is not None

    def take(self) -> AsyncIterator[bytes]:
        stream, self.stream = self.stream, None
        if stream is not None:
            return stream
        if self.rewind is None:
            raise ClientPayloadError(CONSUMED_BODY)
        return self.rewind()


class ClientRequest:
    """The request a client middleware sees and may change (aiohttp's ``ClientRequest``).

    ``headers`` are the request's own: the engine adds Host (unless given), the
    framing headers and the jar's cookies when it sends them."""

    GET_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))
    POST_METHODS = frozenset(("PATCH", "POST", "PUT"))
    ALL_METHODS = GET_METHODS | POST_METHODS | {"DELETE"}

    def __init__(
        self,
        method: str,
        url: URL,
        *,
        headers: Any = None,
        data: Any = None,
        auth: BasicAuth | None = None,
        original_url: URL | None = None,
        skip_auto_headers: Iterable[str] | None = None,
        version: HttpVersion = HttpVersion11,
        compress: str | bool | None = None,
        chunked: bool | None = None,
        session: ClientSession | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        ssl: Any = True,
        server_hostname: str | None = None,
    ) -> None:
        self.method = method.upper()
        self.original_url = url if original_url is None else original_url
        self.url = url.with_fragment(None) if url.raw_fragment else url
        self.headers: CIMultiDict[str] = CIMultiDict(headers or ())
        self.auth = auth
        self.version = version
        self.compress = compress
        self.chunked = chunked
        self._ssl: Any = merge_ssl(ssl, None, None, None)
        self.server_hostname = server_hostname
        self.proxy: URL | None = None
        self.proxy_auth: BasicAuth | None = None
        self.proxy_headers: CIMultiDict[str] | None = None
        self._skip = frozenset(istr(h) for h in skip_auto_headers or ())
        self._session = session
        self._loop = loop
        self._body = _Body(None)
        self._made: list[_Body] = []  # bodies made by update_body: their payloads closed
        if data is not None:
            self._set_body(data)

    @classmethod
    def _for_hop(
        cls,
        hop: Hop,
        body: _Body,
        original_url: URL,
        prepared: PreparedRequest,
        auth: BasicAuth | None,
        session: ClientSession,
        skip: Iterable[str],
    ) -> ClientRequest:
        req = cls(
            hop.method,
            hop.url,
            headers=hop.headers,
            auth=auth,
            original_url=original_url,
            skip_auto_headers=skip,
            version=session.version,
            session=session,
        )
        if hop.streamed:
            req._body = body
        elif hop.body is not None:
            req._body = _Body(hop.body)
        req._skip_host = prepared.skip_host
        return req

    _proxy_seen: tuple[Any, ...] = (None, None, None)

    def _set_proxy(self, proxy: Any, proxy_auth: Any, proxy_headers: Any) -> None:
        """The request's proxy as aiohttp's ``update_proxy`` sets it, for middlewares
        to see and change (``_Hops.send`` then makes its route afresh)."""
        if proxy is None:
            return
        self.proxy = proxy if isinstance(proxy, URL) else URL(proxy)
        self.proxy_auth = proxy_auth
        self.proxy_headers = CIMultiDict(proxy_headers) if proxy_headers else None
        self._proxy_seen = self._proxy_now()

    def _proxy_now(self) -> tuple[Any, ...]:
        headers = self.proxy_headers
        return (self.proxy, self.proxy_auth, tuple(headers.items()) if headers else None)

    def _own_route(self) -> bytes:
        if self.proxy is None:
            return b""
        return fixed_route(self.proxy, self.proxy_auth, self.proxy_headers)

    _skip_host = False
    _compressed = False  # the request's body was compressed (compress=)
    _cookies: list[tuple[str, str]] = []  # the request's own cookies= for this hop

    def __repr__(self) -> str:
        return f"<ClientRequest({self.method} {self.url})>"

    # -- aiohttp's attributes ------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop or asyncio.get_running_loop()

    @property
    def session(self) -> ClientSession:
        """The session that sends this request (a middleware may make others on it)."""
        if self._session is None:
            raise RuntimeError("this ClientRequest belongs to no session")
        return self._session

    @property
    def skip_auto_headers(self) -> CIMultiDict[None]:
        return CIMultiDict((h, None) for h in sorted(self._skip))

    @property
    def host(self) -> str:
        host = self.url.raw_host
        assert host is not None
        return host

    @property
    def port(self) -> int | None:
        return self.url.port

    def is_ssl(self) -> bool:
        return self.url.scheme in _SSL_SCHEMES

    @property
    def ssl(self) -> Any:
        """The request's ``ssl=`` (True: the connector's, else default verification)."""
        return self._ssl

    @property
    def request_info(self) -> RequestInfo:
        return RequestInfo(self.url, self.method, CIMultiDictProxy(self.headers), self.original_url)

    @property
    def body(self) -> Payload | Literal[b""]:
        """The body as a payload (aiohttp's type); ``b""`` when there is none."""
        body = self._body
        if body.payload is not None:
            return body.payload
        if body.inline:
            body.payload = BytesPayload(body.inline)
            return body.payload
        return b""

    @body.setter
    def body(self, value: Any) -> None:
        self._set_body(value)

    async def update_body(self, body: Any) -> None:
        """Replace the body (aiohttp's ``update_body``); a payload set here earlier is
        closed (the request's own, and the last one set, when the request ends)."""
        if self._compressed:
            raise ValueError(
                "update_body on a request made with compress= is not supported: the new "
                "body would go uncompressed under its Content-Encoding; compress it yourself"
            )
        old = self._body.payload if self._body in self._made else None
        self._set_body(body)
        if old is not None:
            await old.close()

    def _set_body(self, data: Any) -> None:
        headers = self.headers
        headers.popall("Content-Length", None)
        if self.chunked:
            headers.popall("Transfer-Encoding", None)
        if data is None:
            self._body = _Body(None)
            if self.method not in self.GET_METHODS:
                headers["Content-Length"] = "0"
            return
        skip = {h.lower() for h in self._skip}
        inline, payload = _encode_data(data, headers, skip)
        if self.chunked:  # framed chunked by the engine: no length beside it
            headers.popall("Content-Length", None)
        if payload is None:
            self._body = _Body(inline)
        else:
            rewind = _rewinder(payload) if payload._replayable else None
            self._body = _Body(None, payload._chunks(), rewind, payload)
            self._made.append(self._body)


ClientHandlerType = Callable[[ClientRequest], Awaitable[ClientResponse]]
ClientMiddlewareType = Callable[[ClientRequest, ClientHandlerType], Awaitable[ClientResponse]]


def build_client_middlewares(
    handler: ClientHandlerType, middlewares: Sequence[ClientMiddlewareType]
) -> ClientHandlerType:
    """``handler`` wrapped in ``middlewares``: the first one is the outermost."""
    for middleware in reversed(middlewares):
        handler = _wrap(middleware, handler)
    return handler


def _wrap(middleware: ClientMiddlewareType, inner: ClientHandlerType) -> ClientHandlerType:
    async def wrapped(req: ClientRequest) -> ClientResponse:
        return await middleware(req, inner)

    return wrapped


def _wire_headers(headers: CIMultiDict[str]) -> list[tuple[str, str]]:
    out = list(headers.items())
    for name, value in out:
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header {name!r}: names and values must be str, got {value!r}")
    return out


class HopOptions(NamedTuple):
    """What ``ClientSession._request`` worked out for a request, the same for each hop."""

    stream: AsyncIterator[bytes] | None  # the prepared streamed body, for its first send
    rewind: Callable[[], AsyncIterator[bytes]] | None  # ... and to make it again
    written: Callable[[int], None] | None  # the upload tracker's count
    chunked: bool
    expect100: bool
    limits: tuple[int, int, int, int]  # max_line_size, max_field_size, max_headers, bufsize
    transport: Any
    jar_ref: tuple[bytes, Any, Any]
    cookies: list[tuple[str, str]]  # the request's own cookies=
    timeout: ClientTimeout
    auth: BasicAuth | None
    skip: Iterable[str]
    allow_redirects: bool
    max_redirects: int
    auto_decompress: bool
    read_until_eof: bool
    compressed: bool = False  # compress= was given: a body set by a middleware is refused
    ssl: Any = True  # the request's merged ssl= (worker_client.tls.merge_ssl)
    server_hostname: str | None = None
    proxy: bytes = b""  # the encoded ProxyRoute (worker_client.proxies)
    proxy_args: tuple[Any, Any, Any] = (None, None, None)  # proxy, proxy_auth, proxy_headers
    trace: Any = None  # a traced request's RequestTrace (worker_client.tracing)
    # ws_connect's upgrade: each hop's streamed body (worker_client.ws_channel.Outgoing;
    # nothing is written to it before a 101), told the hop's handle
    upgrade: Any = None


class _Hops:
    """One request with middlewares: its hops, followed here (see the module docstring)."""

    def __init__(self, session: ClientSession, spec: HopOptions) -> None:
        self.session = session
        self.spec = spec
        self.responses: list[ClientResponse] = []
        loop = asyncio.get_running_loop()
        total = spec.timeout.total
        self.deadline = loop.time() + total if total else None

    async def send(self, creq: ClientRequest) -> ClientResponse:
        """The innermost handler: one exchange, no redirect followed."""
        spec, session = self.spec, self.session
        route = spec.proxy if creq._proxy_seen == creq._proxy_now() else creq._own_route()
        transport = spec.transport
        body = creq._body
        stream = body.take() if body.streamed else None
        upgrade = spec.upgrade
        if upgrade is not None:
            stream = upgrade
        limits = spec.limits
        request_info = creq.request_info
        ssl, server_hostname = creq._ssl, creq.server_hostname
        sni = "" if server_hostname is None else check_server_hostname(server_hostname)
        tls = (
            None if ssl is True and session._conn_ssl is True
            else request_tls(ssl, session._conn_ssl)
        )
        if tls is not None and tls[0] and tls[0] not in transport.tls_open:
            transport.open_tls(tls[0], tls[1])

        def make_error(failure: Failure) -> BaseException:
            exc = exception_from_failure(failure, request_info, ())
            if ssl is not True or server_hostname is not None:
                exc = with_request_ssl(exc, ssl, server_hostname)
            return exc

        handle = StreamHandle(transport, transport.next_stream_id(), make_error, limits[3])
        req = Request(
            stream=handle.id,
            method=creq.method,
            url=str(creq.url),
            headers=_wire_headers(creq.headers),
            body=body.inline,
            streamed=stream is not None,
            pool=session._pool,
            timeout=spec.timeout,
            allow_redirects=False,
            max_redirects=0,
            auto_decompress=spec.auto_decompress,
            read_until_eof=spec.read_until_eof,
            skip_host=creq._skip_host,
            jar=spec.jar_ref[0],
            cookies=creq._cookies,
            expect100=spec.expect100,
            max_line_size=limits[0],
            max_field_size=limits[1],
            max_headers=limits[2],
            http10=session._http10,
            chunked=spec.chunked,
            requote_redirect_url=session._requote_redirect_url,
            proxy=route,
            upgrade=upgrade is not None,
            handover=upgrade is not None,
        )
        if upgrade is not None:
            upgrade.handle = handle
        if tls is not None or sni:
            req = with_tls(req, tls, sni)
        tracer = spec.trace
        if tracer is not None:
            req, stream, _ = tracer.attach(req, handle, request_info, body.inline, stream)
        session._handles.add(handle)
        if self.deadline is not None:
            timeout = spec.timeout
            remaining = self.deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                session._handles.discard(handle)
                raise asyncio.TimeoutError("Timeout on request (total)")
            handle.set_deadline(remaining, timeout.ceil_threshold)
        try:
            # No checked URL: the engine checks what the middlewares may have changed.
            await transport.send(
                req, stream, handle, None, spec.jar_ref[1], None, spec.written
            )
            if tracer is not None:
                await tracer.until(handle.head)
                if session._closed:  # while the handlers ran: as aiohttp, it fails
                    raise ClientConnectionError("Connection closed")
            head = await handle.head
        except BaseException:
            handle.give_up()
            session._handles.discard(handle)
            del handle
            raise
        resp = session._response(head, handle, request_info, req.url)
        self.responses.append(resp)
        return resp

    async def run(
        self, middlewares: Sequence[ClientMiddlewareType], prepared: PreparedRequest
    ) -> ClientResponse:
        """Every hop through the middlewares; redirects followed as the engine does."""
        spec = self.spec
        body = _Body(prepared.body, spec.stream, spec.rewind, prepared.payload)
        hop = Hop(
            prepared.method,
            prepared.url,
            list(prepared.headers.items()),
            prepared.body,
            prepared.stream is not None,
            spec.cookies,
        )
        original = prepared.real_url or prepared.url
        handler = build_client_middlewares(self.send, middlewares)
        history: list[ClientResponse] = []
        max_redirects = spec.max_redirects
        resp = None
        made: list[_Body] = []
        try:
            while True:
                creq = ClientRequest._for_hop(
                    hop, body, original, prepared, spec.auth, self.session, spec.skip
                )
                creq._set_proxy(*spec.proxy_args)
                creq._cookies = hop.cookies
                creq._made = made
                creq.chunked = spec.chunked  # compress= or chunked=: framed by the engine
                creq._compressed = spec.compressed
                creq._ssl, creq.server_hostname = spec.ssl, spec.server_hostname
                resp = None
                resp = await handler(creq)
                location = None
                if spec.allow_redirects and resp.status in REDIRECTS:
                    location = redirect_location(list(resp.raw_headers))
                    if spec.trace is not None:  # as aiohttp, even without a Location
                        await spec.trace.redirect(resp)
                if location is None:
                    resp._history = tuple(history)
                    return resp
                history.append(resp)
                resp.release()
                if max_redirects and len(history) >= max_redirects:
                    raise self._error(
                        ErrorCode.TOO_MANY_REDIRECTS,
                        f"Exceeded {max_redirects} redirects",
                        history,
                        status=resp.status,
                    )
                try:
                    hop = follow(hop, resp.status, location, self.session._requote_redirect_url)
                except ConnectionFailure as exc:
                    raise self._error(exc.code, exc.message, history, **exc.fields) from None
                if hop.streamed and not body.sendable():
                    raise ClientPayloadError(CONSUMED_BODY)
                if spec.trace is not None:
                    spec.trace.followed(resp.status, location)
                original = hop.url
        finally:
            self._release_dropped(resp)
            for made_body in made:
                if made_body.payload is not None:
                    await made_body.payload.close()

    def _error(
        self, code: ErrorCode, message: str, history: list[ClientResponse], **fields: Any
    ) -> BaseException:
        failure = Failure(0, code, message, **fields)
        first = history[0].request_info if history else None
        return exception_from_failure(failure, first, tuple(history))

    def _release_dropped(self, kept: ClientResponse | None) -> None:
        """Responses a middleware got and dropped (a retry) give their streams back."""
        responses, self.responses = self.responses, []
        for resp in responses:
            if resp is not kept:
                resp.release()
