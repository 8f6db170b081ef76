"""The request engine: one request from a worker, carried out on the broker's pools.

``Engine.perform`` runs the hops of a request (``broker.hops``: redirects are followed
here, so that the pool and the cookie jar see every hop) up to the final
response's head; a ``ResponseBody`` (``broker.body``) then owns the connection and
streams the body to the ``BrokerStream`` by callbacks, as aiohttp's protocol feeds its
reader, so no task waits on a body. Every failure becomes a ``Failure`` message in one
place (``failures.failure_message``). It is the same code in the broker process and in a
worker's embedded mode.

Tracing (a ``Request`` with ``trace`` only; an untraced one pays a flag check): the
engine passes its stream to the pool as the trace sink (``BrokerStream.trace``), which
reports the connection's queueing, creation or reuse, and the dialer the DNS lookup; the
engine itself reports each hop's head as written, the request body pieces and each
redirect followed, in aiohttp's order.

Upgrades (``Request.upgrade``, a WebSocket's handshake): the head goes with no body
framing and nothing after it; a final 101 hands the connection to a ``ResponseBody``
(the origin's bytes) and a ``broker.tunnel.Tunnel`` (the worker's bytes), which hold it
leased until the tunnel ends. Any other final head is an ordinary response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from yarl import URL

from shared.messages import DnsFigures, Head, HistoryItem, PoolFigures, Request, TraceEvent
from shared.rules import FORBIDDEN_VALUE_RE, TOKEN_RE, host_header_problem, url_problem
from shared.specs import ClientTimeout, PoolSpec, TlsSpec
from shared.stream_state import FINAL

from .body import ResponseBody
from .connector import Pool
from .cookie_header import with_cookies
from .cookie_store import COOKIE_NAME_RE, CookieStore
from .decoding import make_decoder
from .dialer import NO_TLS, TlsKey
from .exchange import (
    DEFAULT_LIMITS,
    HeadLimits,
    ResponseHead,
    build_head,
    declared_length,
    set_cookies,
)
from .failures import ConnectionFailure, failure_message
from .fast import Resumed
from .hops import REDIRECTS, Hop, follow, redirect_location
from .http1 import HTTP1Connection, watch_silence
from .known import Checked
from .proxy import absolute_target, hop_proxy
from .registry import Registry
from .stream import BrokerStream, StreamStopped
from .tunnel import Tunnel

__all__ = ["Engine"]

log = logging.getLogger("broker.engine")

_NO_BODY_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))  # aiohttp's GET_METHODS
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))


class Engine:
    """The request loop, on the pools and resolvers of a ``Registry``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        registry: Registry | None = None,
    ) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self.registry = registry or Registry(self._loop)
        self.requests = 0
        self.closed = False

    def pool(self, spec: PoolSpec) -> Pool:
        return self.registry.pool(spec)

    def clear_dns(self, spec: PoolSpec, host: str | None, port: int | None) -> None:
        """``TCPConnector.clear_dns_cache`` for the resolver that ``spec`` uses."""
        self.registry.clear_dns(spec, host, port)

    async def close(self) -> None:
        self.closed = True
        await self.registry.close()

    def figures(self) -> list[PoolFigures]:
        return self.registry.figures()

    def dns_figures(self) -> list[DnsFigures]:
        return self.registry.dns_figures()

    # -- one request ---------------------------------------------------------------

    async def perform(
        self,
        req: Request,
        stream: BrokerStream,
        checked_url: URL | None = None,
        jar: CookieStore | None = None,
        tls: TlsSpec | None = None,
        first: Resumed | None = None,
    ) -> None:
        """Carry out ``req`` up to its response head; report through ``stream``.

        Returns once the head is delivered (the body then flows by callbacks, see
        ``broker.body``) or the failure reported. Raises only CancelledError.
        ``checked_url`` is ``req.url`` parsed, from a caller in this process that has
        checked the request already (embedded mode); else the engine checks it.
        ``jar``: the cookie store that ``req.jar`` names (None: no jar), found by the
        caller, which knows whose jars the worker may name. ``tls``: the ``TlsSpec``
        that ``req.tls`` names (None for the default), found by the caller likewise.
        ``first``: the fast path's outcome of the first hop's attempt (``broker.fast``),
        which the engine takes on from there as if it had made that attempt itself
        (counted in ``requests`` by the fast path already)."""
        if first is None:
            self.requests += 1
        history: list[HistoryItem] = []
        try:
            await self._hops(req, stream, history, checked_url, jar, tls, first)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not stream.finished:
                stream.fail(failure_message(req, exc, history))

    async def _hops(
        self,
        req: Request,
        stream: BrokerStream,
        history: list[HistoryItem],
        checked_url: URL | None,
        jar: CookieStore | None,
        tls: TlsSpec | None = None,
        first: Resumed | None = None,
    ) -> None:
        """Carry out the hops of ``req``: redirects are followed here, where the pool
        and the cookie jar see every hop. Each hop is sent the jar's cookies for its
        URL at that moment, and its ``Set-Cookie`` is stored before the next one."""
        url = checked_url if checked_url is not None else _checked(req)
        if req.upgrade:
            _check_upgrade(req)
        hop = Hop(req.method, url, req.headers, req.body, req.streamed, req.cookies)
        pool = self.registry.pool_for(req.pool)
        tls_key = _tls_key(req)
        while True:
            headers = hop.headers
            # (a fast first attempt was sent with none: the jar was empty then)
            if first is None and (hop.cookies or (jar is not None and len(jar))):
                chosen = jar.filter_cookies(hop.url) if jar is not None else None
                headers = with_cookies(headers, chosen, hop.cookies)
            head, conn = await self._exchange(
                pool, req, hop, headers, stream, tls_key, tls, first
            )
            first = None
            if head.set_cookie and jar is not None:
                jar.update_from_headers(set_cookies(head.headers), hop.url)
            location = None
            item = None
            if req.allow_redirects and head.status in REDIRECTS:
                location = redirect_location(head.headers)
                if req.trace:  # as aiohttp, even for a redirect without a Location
                    item = _history_item(head, hop, headers)
                    stream.trace(TraceEvent(req.stream, "request_redirect", redirect=item))
            if location is None:
                if req.upgrade and conn.tunnel:
                    self._tunnel(req, stream, conn, pool, head, hop, headers, history)
                    return
                self._deliver(req, stream, conn, pool, head, head.encoding, hop, headers, history)
                return
            # answered before 100 Continue (or an upgrade, which sends after a 101 only):
            # the body is unread
            untouched = conn.body_held or req.upgrade
            pool.give_back(conn)
            history.append(item if item is not None else _history_item(head, hop, headers))
            if req.max_redirects and len(history) >= req.max_redirects:
                raise ConnectionFailure(
                    "too_many_redirects",
                    f"Exceeded {req.max_redirects} redirects",
                    status=head.status,
                )
            hop = follow(hop, head.status, location, req.requote_redirect_url)
            if hop.streamed and not (untouched or (req.replayable and stream.rewind())):
                raise ConnectionFailure(
                    "payload",
                    "Cannot follow redirect with a consumed request body. Use bytes, a "
                    "seekable file-like object, or set allow_redirects=False.",
                )

    async def _exchange(
        self,
        pool: Pool,
        req: Request,
        hop: Hop,
        headers: list[tuple[str, str]],
        stream: BrokerStream,
        tls_key: TlsKey = NO_TLS,
        tls: TlsSpec | None = None,
        first: Resumed | None = None,
    ) -> tuple[ResponseHead, HTTP1Connection]:
        """Send one hop (with ``headers``, its own plus its cookies) and read its head;
        retry once on a stale keep-alive connection. ``tls_key``/``tls``: the request's
        TLS choice, for an https hop (every https hop of a request uses it). ``first``:
        the fast path made the first attempt already: its head, or its failure."""
        url = hop.url
        attempts: tuple[int, ...] = (0, 1)
        if first is not None:
            conn, got = first
            if not isinstance(got, ConnectionFailure):
                return got, conn
            pool.give_back(conn)
            _retry_or_raise(got, conn, 0, hop.method, hop.streamed, url)
            attempts = (1,)
        if not url.raw_host:
            raise ConnectionFailure("invalid_url", "URL has no host", url=str(url))
        port = url.port or (443 if url.scheme == "https" else 80)
        proxy = hop_proxy(req.proxy, url, port) if req.proxy and pool.spec.kind == "tcp" else None
        key = (
            url.scheme,
            url.raw_host,
            port,
            tls_key if url.scheme == "https" or (proxy is not None and proxy.tls) else NO_TLS,
            b"" if proxy is None else proxy.key,
        )
        timeout = req.timeout
        body = hop.body
        streamed = hop.streamed
        upgrade = req.upgrade
        if upgrade:  # no body framing; the bytes follow a 101 only (``_tunnel``)
            streamed, length, chunked = True, None, False
        else:
            length = declared_length(headers) if streamed else None
            chunked = streamed or (
                req.chunked and (body is not None or hop.method not in _NO_BODY_METHODS)
            )
        if chunked and not streamed:
            # framed here: a Content-Length beside it would let the framing carry a
            # second request (aiohttp refuses the pair too)
            if any(name.lower() == "content-length" for name, _ in headers):
                raise ConnectionFailure(
                    "protocol", "chunked can not be set if Content-Length header is set"
                )
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        forward = proxy is not None and url.scheme == "http"  # absolute form to the proxy
        head_bytes = build_head(
            hop.method,
            url,
            headers + proxy.head_headers if forward else headers,  # type: ignore[union-attr]
            len(body) if body is not None and not chunked else None,
            chunked,
            req.skip_host,
            (1, 0) if req.http10 else (1, 1),
            pool.spec.force_close,
            absolute_target(url) if forward else None,
        )
        limits = _limits(req)
        # Wait for 100 Continue only when the head asks for it: a flag without the header
        # (a middleware took it out) would hold the body for an answer never coming.
        expect = req.expect100 and not upgrade and any(
            name.lower() == "expect" and value.strip().lower() == "100-continue"
            for name, value in headers
        )
        trace = stream if req.trace else None
        paced = pool.rate is not None
        for attempt in attempts:
            try:
                conn = await pool.acquire(key, timeout, stream, tls, trace)
            except ConnectionFailure as exc:
                if exc.code == "proxy_status":  # aiohttp's CONNECT request_info: the hop's
                    exc.fields["url"] = str(url)
                raise
            try:
                if paced:
                    # The rate's turn is taken with the connection in hand: a turn taken
                    # before a wait for a connection (limit_per_host) would have passed
                    # by the time it ends, and the requests held would start together.
                    paced = False
                    turn = pool.wait_turn(key)
                    if turn is not None:
                        await stream.wait(turn)
                if stream.finished:  # given up while connecting
                    raise StreamStopped()
                conn.exchange.read_until_eof = req.read_until_eof
                conn.begin(hop.method, head_bytes, body, streamed, length, expect, limits, upgrade)
                if trace is not None:
                    _trace_sent(trace, hop, head_bytes, expect)
                if streamed and not upgrade:
                    await self._send_stream(conn, stream, timeout, trace)
                head = await self._read(conn, conn.head_future, timeout, stream)
                if trace is not None and expect and hop.body and _continued(conn):
                    trace.trace(TraceEvent(trace.id, "request_chunk_sent", size=len(hop.body)))
                return head, conn
            except ConnectionFailure as exc:
                pool.give_back(conn)
                # an upgrade sent its head alone: as safe to send again as a GET
                _retry_or_raise(exc, conn, attempt, hop.method, streamed and not upgrade, url)
            except BaseException:
                pool.give_back(conn)
                raise
        raise AssertionError("unreachable")

    async def _send_stream(
        self,
        conn: HTTP1Connection,
        stream: BrokerStream,
        timeout: ClientTimeout,
        trace: BrokerStream | None = None,
    ) -> None:
        """Send the streamed body; with ``Expect: 100-continue``, only once the server
        said ``100 Continue`` (a final answer first: the body is never sent). ``trace``:
        the traced request's stream, told of each piece written."""
        cont = conn.continue_future
        if cont is not None and not await self._read(conn, cont, timeout, stream):
            return
        async for chunk in stream.request_body():
            if chunk:
                await conn.send_body(chunk, stream)
                stream.body_written(len(chunk))
                if trace is not None:
                    trace.trace(TraceEvent(trace.id, "request_chunk_sent", size=len(chunk)))
        conn.end_body()

    async def _read(
        self,
        conn: HTTP1Connection,
        fut: asyncio.Future[Any],
        timeout: ClientTimeout,
        stream: BrokerStream,
    ) -> Any:
        """Await a future of the exchange, failing it after ``sock_read`` of silence."""
        # ``stream.wait(fut)``, inline: this runs once per request.
        if stream.state in FINAL:
            raise StreamStopped()
        unwatch = (
            watch_silence(self._loop, conn, fut, timeout.sock_read) if timeout.sock_read else None
        )
        stream.waiting = fut
        try:
            head = await fut
        finally:
            stream.waiting = None
            if unwatch is not None:
                unwatch()
        if stream.state in FINAL:
            raise StreamStopped()
        return head

    def _deliver(
        self,
        req: Request,
        stream: BrokerStream,
        conn: HTTP1Connection,
        pool: Pool,
        head: ResponseHead,
        encoding: bytes | None,
        hop: Hop,
        headers: list[tuple[str, str]],
        history: list[HistoryItem],
        tunnel: Tunnel | None = None,
    ) -> None:
        """Hand the connection to the response body, then send the head. The request
        headers go with it when they are not the worker's own (a redirect, cookies)."""
        decoder = None
        if req.auto_decompress and encoding:
            decoder = make_decoder(encoding.decode("latin-1"))
        body = ResponseBody(self._loop, req, stream, conn, pool, decoder, history, tunnel)
        self._send_head(req, stream, conn, pool, head, hop, headers, history)
        body.start()

    def _send_head(
        self,
        req: Request,
        stream: BrokerStream,
        conn: HTTP1Connection,
        pool: Pool,
        head: ResponseHead,
        hop: Hop,
        headers: list[tuple[str, str]],
        history: list[HistoryItem],
        handover: bytes = b"",
    ) -> None:
        """The final head to the worker; if that fails, the connection goes back."""
        try:
            stream.head(
                Head(
                    req.stream,
                    head.status,
                    head.reason,
                    head.version,
                    head.headers,
                    str(hop.url) if history else req.url,
                    hop.method,
                    headers if history or headers is not req.headers else [],
                    history,
                    handover=handover,
                )
            )
        except BaseException:
            hook, stream.on_halt = stream.on_halt, None
            if handover and hook is not None:
                hook()  # the adoption lets go of its token and gives the connection back
            else:
                pool.give_back(conn)
            raise

    def _tunnel(
        self,
        req: Request,
        stream: BrokerStream,
        conn: HTTP1Connection,
        pool: Pool,
        head: ResponseHead,
        hop: Hop,
        headers: list[tuple[str, str]],
        history: list[HistoryItem],
    ) -> None:
        """A 101 answered the upgrade: the 101's head to the worker, then, unless the
        worker takes the connection whole (``broker.handover``), the origin's bytes as
        its body and the worker's to the origin, until either ends it."""
        if req.handover:
            token = stream.adopt(conn, pool)  # the worker takes the socket whole
            if token:
                self._send_head(req, stream, conn, pool, head, hop, headers, history, token)
                stream.flush()
                return
        tunnel = Tunnel(stream, conn)
        self._deliver(req, stream, conn, pool, head, None, hop, headers, history, tunnel)
        tunnel.start()


# An upgrade's bytes follow its 101 as a stream: nothing may be sent before, or framed.
_UPGRADE_RULES: tuple[tuple[Callable[[Request], bool], str], ...] = (
    (lambda req: not req.streamed, "must be streamed"),
    (lambda req: req.body is not None, "may not have a body"),
    (lambda req: req.chunked, "may not be chunked"),
)


def _check_upgrade(req: Request) -> None:
    for broken, problem in _UPGRADE_RULES:
        if broken(req):
            raise ConnectionFailure("protocol", f"an upgrade request (upgrade=True) {problem}")


def _retry_or_raise(
    exc: ConnectionFailure,
    conn: HTTP1Connection,
    attempt: int,
    method: str,
    streamed: bool,
    url: URL,
) -> None:
    """After a failed attempt: return to try once more (a stale keep-alive connection,
    given back already, that the server closed before answering an idempotent request),
    else raise the failure."""
    if (
        attempt == 0
        and exc.code in ("disconnected", "os")
        and conn.reused
        and not conn.got_response_bytes
        and method in IDEMPOTENT
        and not streamed
    ):
        return
    if exc.code == "disconnected":
        exc.fields.setdefault("url", str(url))
    raise exc


def _history_item(head: ResponseHead, hop: Hop, headers: list[tuple[str, str]]) -> HistoryItem:
    """A redirect response followed, with the request that got it (``headers``: as sent)."""
    return HistoryItem(
        head.status, head.reason, head.version, head.headers, str(hop.url), hop.method, headers
    )


def _trace_sent(stream: BrokerStream, hop: Hop, head: bytes, expect: bool) -> None:
    """aiohttp's ``on_request_headers_sent`` (the head as written: the per-hop headers
    included), then ``on_request_chunk_sent`` for a body written with it."""
    stream.trace(
        TraceEvent(
            stream.id,
            "request_headers_sent",
            method=hop.method,
            url=str(hop.url),
            headers=_written_headers(head),
        )
    )
    if hop.body and not hop.streamed and not expect:  # with expect: once it went
        stream.trace(TraceEvent(stream.id, "request_chunk_sent", size=len(hop.body)))


def _written_headers(head: bytes) -> list[tuple[str, str]]:
    """The header fields of a head that ``build_head`` wrote."""
    lines = head.decode("utf-8", "surrogateescape").split("\r\n")
    fields = (line.partition(": ") for line in lines[1:] if line)
    return [(name, value) for name, _, value in fields]


def _continued(conn: HTTP1Connection) -> bool:
    """The body held for ``100 Continue`` was written (the server said to go on)."""
    cont = conn.continue_future
    if cont is None or not cont.done() or cont.cancelled() or cont.exception() is not None:
        return False
    return cont.result()


def _tls_key(req: Request) -> TlsKey:
    """The TLS part of the request's https keys: ``NO_TLS`` (no object made) unless it
    names TLS settings, a fingerprint or a server_hostname of its own."""
    if req.tls or req.fingerprint or req.server_hostname:
        return (req.tls, req.fingerprint, req.server_hostname)
    return NO_TLS


def _limits(req: Request) -> HeadLimits:
    """The request's head limits (bounded by ``Request``'s decoding)."""
    limits = (req.max_line_size, req.max_field_size, req.max_headers)
    if limits == DEFAULT_LIMITS:  # the usual case: no NamedTuple made per request
        return DEFAULT_LIMITS
    return HeadLimits(*limits)


def _checked(req: Request, known: Checked | None = None) -> URL:
    """The request's URL, after checking what the worker should have checked already:
    a worker is trusted with its own requests, not with the broker's other sockets, so
    nothing it sends may smuggle a second request onto an upstream connection.
    ``known``: the worker connection's URLs and header lists checked before (a hit is
    not checked again: an equal string passed already)."""
    url = known.urls.get(req.url) if known is not None else None
    if url is None:
        url = _checked_url(req)
        if known is not None:
            known.keep_url(req.url, url)
    if req.method not in _METHODS and not TOKEN_RE.fullmatch(req.method):
        raise ConnectionFailure("protocol", f"invalid method {req.method!r}")
    if req.headers:
        if known is None:
            _check_headers(req.headers)
        else:
            fields = tuple(req.headers)
            if fields not in known.headers:
                _check_headers(fields)
                known.keep_headers(fields)
    for name, value in req.cookies:  # they go into the Cookie header as they are
        if not COOKIE_NAME_RE.fullmatch(name) or FORBIDDEN_VALUE_RE.search(value):
            raise ConnectionFailure("protocol", f"invalid cookie {name!r}")
    return url


_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))  # tokens


def _checked_url(req: Request) -> URL:
    try:
        url = URL(req.url, encoded=True)
    except (ValueError, TypeError):
        raise ConnectionFailure("invalid_url", "invalid URL", url=req.url) from None
    if url.scheme not in ("http", "https"):
        raise ConnectionFailure("non_http_url", req.url, url=req.url)
    if not url.raw_host:
        raise ConnectionFailure("invalid_url", "URL has no host", url=req.url)
    problem = url_problem(url)
    if problem is not None:
        raise ConnectionFailure("invalid_url", problem, url=req.url)
    return url


def _check_headers(headers: Iterable[tuple[str, str]]) -> None:
    for name, value in headers:
        if not TOKEN_RE.fullmatch(name) or FORBIDDEN_VALUE_RE.search(value):
            raise ConnectionFailure("protocol", f"invalid header {name!r}")
        if name.lower() == "host" and host_header_problem(value) is not None:
            raise ConnectionFailure("protocol", f"invalid header {name!r}")
