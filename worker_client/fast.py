"""The session's fast path (issue 12): the common small request in embedded mode, from
``session.get()`` to the socket write and from the parser to a ``ClientResponse``, with
one future between (``broker.fast`` is the engine's side of it).

Taken when the session has no middlewares, trace configs, proxy, ``trust_env`` nor an
ssl= of its connector's own, and the call names nothing but ``headers``, ``params``,
``data`` (bytes, at most ``BODY_MAX``), ``timeout``, ``allow_redirects`` and
``raise_for_status``; then, per request, when the transport is embedded (made by an
earlier request), no trace config was added to the session since, the cookie jar
holds no cookie (it would add a Cookie header), the request asks no 100-continue, and
the pool has an idle connection for it. Anything else takes the general path
(``ClientSession._request``) before a byte is sent. After the head, a response that
is not complete with its head, is a redirect to follow, has a body to decode, or a
failure (a stale connection's retry included) is handed to the engine with its
connection (``Engine.perform(first=...)``) through the general path, which goes on
as if it had made that attempt itself. ``HTTP_BROKER_FAST_PATH=0`` (read
when a session is made) turns the fast path off.

Plans: what is the same from one request to the next for a (method, URL, headers,
params, body length) key (the types of its strings too): the checked URL, the
``RequestInfo``, the request head as written and the pool key, made once by the
general path's own pure code (``prepare_request``, ``build_head``). A session keeps
at most ``PLANS_MAX`` of them (emptied when full), and drops them all when the
session's default headers change (their multidict version).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, NamedTuple

from multidict import CIMultiDictProxy
from yarl import URL

from broker import fast as engine_fast
from broker.dialer import NO_TLS
from broker.exchange import DEFAULT_LIMITS, HeadLimits, ResponseHead, build_head
from broker.http1 import watch_silence
from shared.specs import ClientTimeout

from .exceptions import RequestInfo
from .fast_rules import BODY_MAX, SENTINEL, PlanCache, forks, request_timeout
from .helpers import HttpVersion
from .response import _VERSIONS, ClientResponse, StreamReader

if TYPE_CHECKING:
    from broker.connector import Pool
    from broker.failures import ConnectionFailure
    from broker.http1 import HTTP1Connection

    from .session import ClientSession

__all__ = ["FastPath", "Handover"]

_SENTINEL = SENTINEL


class Handover:
    """A fast attempt handed to the general path: the engine's ``first``, and the
    seconds left of the total timeout (None: none). ``taken``: the engine has it."""

    __slots__ = ("first", "left", "taken")

    def __init__(self, first: engine_fast.Resumed, left: float | None) -> None:
        self.first = first
        self.left = left
        self.taken = False


class _Plan(NamedTuple):
    method: str
    url: URL
    info: RequestInfo
    head: bytes
    key: tuple[Any, ...]


class _Call:
    """One fast request in flight: what its timeouts, a cancel or the session's close
    end (``give_up``: the connection is given up with it)."""

    __slots__ = ("fut", "conn", "pool", "deadlines", "timer", "unwatch", "late", "__weakref__")

    def __init__(self, fut: asyncio.Future[Any], pool: Pool) -> None:
        self.fut = fut
        self.conn: HTTP1Connection | None = None  # set once started, None once given up
        self.pool = pool
        self.deadlines: Any = None
        self.timer: Any = None
        self.unwatch: Any = None
        # given up after the head came, before the caller resumed: it fails all the same
        self.late: BaseException | None = None

    def told(self, result: ResponseHead | ConnectionFailure) -> None:
        """``on_response``: the answer, unless given up already (a cancel of the task
        cancels ``fut`` before the request resumes to abandon the connection)."""
        fut = self.fut
        if not fut.done():
            fut.set_result(result)

    def arm(self, timeout: ClientTimeout, transport: Any) -> None:
        if timeout.total:
            self.deadlines = transport.deadlines
            self.timer = self.deadlines.add(self, timeout.total, timeout.ceil_threshold)
        if timeout.sock_read:
            assert self.conn is not None
            self.unwatch = watch_silence(transport.loop, self.conn, self.fut, timeout.sock_read)

    def disarm(self) -> None:
        """Stop the timers (``left`` still tells what was left of the total)."""
        if self.unwatch is not None:
            self.unwatch()
        if self.timer is not None:
            self.deadlines.discard(self, self.timer)

    def left(self) -> float | None:
        """The seconds left of the total timeout (None: none)."""
        timer = self.timer
        if timer is None:
            return None
        due = timer if type(timer) is int else timer.when()
        return max(due - self.fut.get_loop().time(), 0.0)

    def give_up(self, exc: BaseException | None = None) -> None:
        """Once: the connection goes back with the first reason (a timeout, the
        session's close, a cancel); another request may hold it by the next."""
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        fut = self.fut
        if not fut.done():
            if exc is None:
                fut.cancel()
            else:
                fut.set_exception(exc)
        elif exc is not None:
            self.late = exc
        engine_fast.abandon(self.pool, conn)

    def _timed_out(self) -> None:
        self.timer = None
        self.give_up(asyncio.TimeoutError("Timeout on request (total)"))


class FastPath(PlanCache[_Plan]):
    """The fast path of one session (see the module docstring)."""

    __slots__ = ("_limits",)

    def __init__(self, session: ClientSession) -> None:
        super().__init__(session)
        line, field, count, _ = session._default_limits
        limits = HeadLimits(line, field, count)
        self._limits = DEFAULT_LIMITS if limits == DEFAULT_LIMITS else limits

    async def request(
        self,
        method: str,
        url: Any,
        kw: dict[str, Any],
        headers: Any = None,
        params: Any = None,
        data: Any = None,
        timeout: Any = _SENTINEL,
        allow_redirects: bool = True,
        raise_for_status: Any = None,
    ) -> ClientResponse:
        """``kw``: the call's keywords (``keys`` only), bound to the parameters too."""
        s = self._session
        transport = s._transport
        jar = s._jar_ref
        if (
            transport is None
            or transport.closed
            or s.closed
            or s._trace_configs  # one added since (aiohttp reads the list per request)
            or jar is None
            or self._forks != forks[0]
            or (data is not None and (type(data) is not bytes or len(data) > BODY_MAX))
        ):
            return await s._request(method, url, **kw)
        # converted (and refused: the general path's error) before a byte is sent
        timeout = s._timeout if timeout is _SENTINEL else request_timeout(timeout)
        store = jar[1]
        plan = self._plan(method, url, headers, params, data)
        if plan is None or jar[0] or (store is not None and len(store)):
            return await s._request(method, url, **kw)
        engine = transport.engine  # type: ignore[attr-defined]
        pool = engine.registry.pool_for(s._pool)
        fut = transport.loop.create_future()
        call = _Call(fut, pool)
        conn = engine_fast.start(pool, plan.key, plan.method, plan.head, data, call.told,
                                 self._limits)
        if conn is None:
            return await s._request(method, url, **kw)
        self.requests += 1
        engine.requests += 1  # the figures' count (``perform`` counts none with ``first``)
        call.conn = conn
        call.arm(timeout, transport)
        handles = s._handles
        handles.add(call)  # type: ignore[arg-type]
        try:
            result = await fut
        except BaseException:
            call.give_up()
            raise
        finally:
            handles.discard(call)  # type: ignore[arg-type]
            call.disarm()
        if call.late is not None:  # the connection went with it
            raise call.late
        if type(result) is ResponseHead:
            body = engine_fast.finish(
                pool, conn, result, allow_redirects, s._auto_decompress,
                store, plan.url,
            )
            if body is not None:
                resp = self._response(plan, result, body)
                rfs = raise_for_status
                if rfs is None:
                    rfs = s._raise_for_status
                return await s._check_status(resp, rfs) if rfs else resp
        handover = Handover((conn, result), call.left())
        try:
            return await s._request(method, url, **kw, _handover=handover)
        finally:
            if not handover.taken:
                engine_fast.abandon(pool, conn)

    def _response(self, plan: _Plan, head: ResponseHead, body: bytes) -> ClientResponse:
        s = self._session
        content = StreamReader.whole(body, s._read_bufsize)
        version = head.version
        resp = ClientResponse(
            plan.method,
            plan.url,
            status=head.status,
            reason=head.reason,
            version=_VERSIONS.get(version) or HttpVersion(*version),
            raw_headers=tuple(head.headers),
            content=content,
            request_info=plan.info,
            history=(),
            on_release=None,
            loop=s._transport.loop,  # type: ignore[union-attr]
            real_url=plan.info.real_url,
        )
        if s._resolve_charset is not None:
            resp._resolve_charset = s._resolve_charset
        return resp

    def _make_plan(
        self, method: str, url: Any, headers: Any, params: Any, data: Any
    ) -> _Plan | None:
        s = self._session
        if params is not None and not all(type(v) is str for v in params.values()):
            return None  # 1 and 1.0 are one key but two queries
        try:
            _, prepared, _ = s._prepare(method, url, params, data, headers)
        except Exception:  # the general path raises it
            return None
        pheaders = prepared.headers
        expect = pheaders.get("Expect")
        if expect is not None and expect.lower() == "100-continue":
            return None
        purl = prepared.url
        pool_spec = s._connector.spec if s._connector is not None else None
        force_close = bool(pool_spec is not None and pool_spec.force_close)
        head = build_head(
            prepared.method,
            purl,
            list(pheaders.items()),
            len(data) if data is not None else None,
            False,
            prepared.skip_host,
            (1, 0) if s._http10 else (1, 1),
            force_close,
        )
        port = purl.port or (443 if purl.scheme == "https" else 80)
        info = RequestInfo(
            purl, prepared.method, CIMultiDictProxy(pheaders), prepared.real_url or purl
        )
        if info.real_url is not purl and info.real_url.with_fragment(None) != purl:
            info = RequestInfo(purl, prepared.method, info.headers, purl)
        key = (purl.scheme, purl.raw_host, port, NO_TLS, b"")
        return _Plan(prepared.method, purl, info, head, key)
