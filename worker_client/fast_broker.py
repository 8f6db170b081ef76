"""The session's fast path through a broker (issue 12): the broker-mode counterpart of
``worker_client.fast`` (the embedded one), without the engine.

Taken for the requests the embedded fast path takes (the same session options and
keywords: ``FAST_KEYS``; a ``bytes`` body of at most ``BODY_MAX``), once the session
has its transport and its jar named on it (its first request goes the general way),
and while the connection's writes are not paused. Cookies need no check here: in
broker mode the broker's jar adds them, as for the general path's requests (the
Request names the jar; ``cookies=`` is not a fast keyword).

A request is one ``Request`` frame, made from a per-(request, timeout, redirects)
template with the stream id written in, and one ``FastHandle`` (a ``StreamHandle``
with no body reader until a body streams) whose head future is the one thing awaited.
The broker's one-frame ``Head`` carrying the whole body completes it in the dispatch
(``on_whole``), and the ``ClientResponse`` is built on that body (``StreamReader.whole``).
Everything else behaves as in the general path because it is the general path's
machinery: a Head without the body makes the reader and the body streams into it as
usual; a ``Failure``, a total timeout (``Deadlines``), a cancel (a ``Cancel`` frame),
the session's close and the loss of the connection end the handle as any
``StreamHandle``. ``HTTP_BROKER_FAST_PATH=0`` (read when a session is made) turns it off.

Plans: as the embedded path's (``prepare_request``'s checked URL, headers and
``RequestInfo``), at most ``PLANS_MAX`` per session, all dropped when the session's
default headers change; each holds its frame templates for the transport it was made
on (pool and timeout ids are per connection), at most ``FRAMES_MAX`` of them.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDictProxy

from shared.framing import MAX_FRAME, _encode
from shared.messages import Failure, Head, Request
from shared.specs import DEFAULT_POOL_BYTES, DEFAULT_TIMEOUT, ClientTimeout
from shared.stream_state import Event, State, step

from . import jar_channel
from .exceptions import BrokerConnectionError, RequestInfo, exception_from_failure
from .fast_rules import BODY_MAX, SENTINEL, PlanCache, forks, request_timeout
from .handle import StreamHandle
from .helpers import HttpVersion
from .response import _VERSIONS, ClientResponse, StreamReader
from .transport import _DEFAULT_FIELDS

if TYPE_CHECKING:
    from yarl import URL

    from .session import ClientSession
    from .transport import IPCTransport

__all__ = ["FRAMES_MAX", "BrokerFastPath", "FastHandle"]

FRAMES_MAX = 8  # frame templates per plan: one per (timeout, allow_redirects) met
_SENTINEL = SENTINEL
_U64 = struct.Struct(">Q")
_LEN = struct.Struct("<I")
_REST = Request.__struct_fields__.index("pool")  # the fields before pool and timeout
_WHOLE = step(step(State.OPEN, Event.HEAD), Event.END)


class FastHandle(StreamHandle):
    """A ``StreamHandle`` whose body reader is made only if the body streams; a whole
    response (``on_whole``) ends it with the ``Head`` as the head future's result."""

    __slots__ = ("_limit",)

    def __init__(
        self, transport: Any, stream_id: int, make_error: Any, read_bufsize: int
    ) -> None:
        self.id = stream_id
        self.transport = transport
        self.head = transport.loop.create_future()
        self.content = None  # type: ignore[assignment]
        self._limit = read_bufsize
        self.done = False
        self.state = State.OPEN
        self._unacked = 0
        self.make_error = make_error
        self._timer = None
        self.on_trace = None

    def on_head(self, msg: Head) -> None:
        if self.content is None:
            self.content = StreamReader(self._consumed, limit=self._limit)
        super().on_head(msg)

    def on_whole(self, msg: Head) -> None:
        if self.state is not State.OPEN or self.done:
            super().on_whole(msg)  # the general handling, and its error
            return
        self.state = _WHOLE
        self._close()
        head = self.head
        if not head.done():
            head.set_result(msg)

    def _close(self) -> None:
        self.done = True
        if self.content is not None:
            self.content._on_consumed = None
        if self._timer is not None:
            self.transport.deadlines.discard(self, self._timer)
            self._timer = None
        # (IPCTransport.forget: nothing else is kept for a fast stream)
        self.transport.handles.pop(self.id, None)


class _Plan:
    """What one (method, URL, headers, params, body length) request always is."""

    __slots__ = ("method", "url", "url_str", "info", "headers", "skip_host", "transport",
                 "frames", "last", "make_error")

    def __init__(self, session: ClientSession, method: str, url: URL, info: RequestInfo,
                 headers: list[tuple[str, str]], skip_host: bool) -> None:
        self.method = method
        self.url = url
        self.url_str = str(url)
        self.info = info
        self.headers = headers
        self.skip_host = skip_host
        self.transport: Any = None
        # (timeout, allow_redirects) -> the frame in parts (_template), or None: no template
        self.frames: dict[Any, tuple[bytes, bytes, bytes] | None] = {}
        self.last: tuple[Any, bool, tuple[bytes, bytes, bytes] | None] | None = None

        def make_error(failure: Failure) -> BaseException:  # the general path's
            history = tuple(session._history_response(h, info) for h in failure.history)
            return exception_from_failure(failure, info, history)

        self.make_error = make_error


class BrokerFastPath(PlanCache[_Plan]):
    """The broker-mode fast path of one session (see the module docstring)."""

    __slots__ = ()

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
        transport: IPCTransport = s._transport  # type: ignore[assignment]
        jar = s._jar_ref
        if (
            transport is None
            or transport.closed
            or transport._writable is not None
            or s.closed
            or s._trace_configs  # one added since (aiohttp reads the list per request)
            or jar is None
            or self._forks != forks[0]
            or (jar[0] and jar[0] not in transport.jars_open)
            or (data is not None and (type(data) is not bytes or len(data) > BODY_MAX))
        ):
            return await s._request(method, url, **kw)
        plan = self._plan(method, url, headers, params, data)
        if plan is None:
            return await s._request(method, url, **kw)
        tmo = s._timeout if timeout is _SENTINEL else request_timeout(timeout)
        if plan.transport is not transport:
            plan.transport = transport
            plan.frames = {}
            plan.last = None
        last = plan.last  # the last one used: no ClientTimeout hashed for it
        if last is not None and last[0] is tmo and last[1] is allow_redirects:
            template = last[2]
        else:
            template = plan.frames.get((tmo, allow_redirects), _SENTINEL)
            if template is not _SENTINEL:
                plan.last = (tmo, allow_redirects, template)
        if jar_channel.closing:
            try:
                transport._send_closes()
            except BrokerConnectionError:  # refused: the request has not gone either
                return await s._request(method, url, **kw)
        sid = transport._next  # next_stream_id()
        transport._next = sid + 2
        if template is None or template is _SENTINEL:
            req = self._build(plan, sid, data, tmo, allow_redirects, jar[0])
            try:
                transport._send_request(req)
            except BrokerConnectionError:
                return await s._request(method, url, **kw)  # see IPCTransport.write
            if template is _SENTINEL:
                frames = plan.frames
                if len(frames) >= FRAMES_MAX:
                    frames.clear()
                frames[(tmo, allow_redirects)] = _template(transport, req)
        else:
            start, mid, end = template
            if data is None:
                frame = start + _U64.pack(sid) + mid
            else:
                frame = start + _U64.pack(sid) + mid + _encode(data) + end
            try:
                transport.write(frame)
            except BrokerConnectionError:  # it reached no broker (IPCTransport.write)
                return await s._request(method, url, **kw)
        self.requests += 1
        handle = FastHandle(transport, sid, plan.make_error, s._read_bufsize)
        transport.handles[sid] = handle
        handles = s._handles
        handles.add(handle)
        if tmo.total:  # set_deadline
            handle._timer = transport.deadlines.add(handle, tmo.total, tmo.ceil_threshold)
        try:
            head = await handle.head
        except BaseException:
            handle.give_up()
            handles.discard(handle)
            del handle
            raise
        if handle.content is None:
            handles.discard(handle)
            resp = self._whole(plan, head, transport.loop)
        else:
            resp = s._response(head, handle, plan.info, plan.url_str)
        rfs = raise_for_status
        if rfs is None:
            rfs = s._raise_for_status
        return await s._check_status(resp, rfs) if rfs else resp

    def _whole(self, plan: _Plan, head: Head, loop: Any) -> ClientResponse:
        s = self._session
        content = StreamReader.whole(head.body, s._read_bufsize)  # type: ignore[arg-type]
        if head.raw:
            content.total_compressed_bytes = head.raw
        info = plan.info
        if head.history or head.request_headers or head.url != plan.url_str:
            resp = ClientResponse.from_head(
                head,
                request_info=s._info_for(head, info),
                content=content,
                history=tuple(s._history_response(h, info) for h in head.history),
                on_release=None,
                loop=loop,
                request_url=plan.url_str,
            )
        else:  # from_head's, for the usual case
            version = head.version
            resp = ClientResponse(
                head.method,
                plan.url,
                status=head.status,
                reason=head.reason,
                version=_VERSIONS.get(version) or HttpVersion(*version),
                raw_headers=tuple(head.headers),
                content=content,
                request_info=info,
                history=(),
                on_release=None,
                loop=loop,
                real_url=info.real_url,
            )
        if s._resolve_charset is not None:
            resp._resolve_charset = s._resolve_charset
        return resp

    def _build(
        self, plan: _Plan, sid: int, data: bytes | None, tmo: ClientTimeout,
        allow_redirects: bool, jar: bytes,
    ) -> Request:
        """The Request the general path would send for this call."""
        s = self._session
        limits = s._default_limits
        return Request(
            stream=sid,
            method=plan.method,
            url=plan.url_str,
            headers=plan.headers,
            body=data,
            pool=s._pool,
            timeout=tmo,
            allow_redirects=allow_redirects,
            max_redirects=s._max_redirects,
            auto_decompress=s._auto_decompress,
            skip_host=plan.skip_host,
            jar=jar,
            max_line_size=limits[0],
            max_field_size=limits[1],
            max_headers=limits[2],
            http10=s._http10,
            requote_redirect_url=s._requote_redirect_url,
        )

    def _make_plan(
        self, method: str, url: Any, headers: Any, params: Any, data: Any
    ) -> _Plan | None:
        s = self._session
        if params is not None and not all(type(v) is str for v in params.values()):
            return None
        try:
            _, prepared, _ = s._prepare(method, url, params, data, headers)
        except Exception:  # the general path raises it
            return None
        if prepared.stream is not None or prepared.payload is not None or prepared.body != data:
            return None
        pheaders = prepared.headers
        expect = pheaders.get("Expect")
        if expect is not None and expect.lower() == "100-continue":
            return None
        if s._env is not None:  # netrc
            return None
        purl = prepared.url
        info = RequestInfo(
            purl, prepared.method, CIMultiDictProxy(pheaders), prepared.real_url or purl
        )
        if info.real_url is not purl and info.real_url.with_fragment(None) != purl:
            info = RequestInfo(purl, prepared.method, info.headers, purl)  # as from_head
        return _Plan(s, prepared.method, purl, info, list(pheaders.items()), prepared.skip_host)


def _template(transport: IPCTransport, req: Request) -> tuple[bytes, bytes, bytes] | None:
    """``req``'s frame as its connection sends it (pool and timeout by id, or the
    defaults), in three parts: before a 9-byte stream id, between it and the body (the
    rest when there is no body), after the body (a plan's bodies are of one length, so
    the frame's is too); None if the pool and timeout are not both by id. A MessagePack
    array is its header then its elements' encodings, so the parts are encoded apart."""
    if req.pool is DEFAULT_POOL_BYTES:
        pool_id = 0
    else:
        pool_id = transport._pool_ids.get(req.pool, 0)
        if not pool_id:
            return None
    if req.timeout is DEFAULT_TIMEOUT:
        timeout_id = 0
    else:
        timeout_id = transport._timeout_ids.get(req.timeout, 0)
        if not timeout_id:
            return None
    fields = [getattr(req, name) for name in Request.__struct_fields__[6:_REST]]
    while fields and fields[-1] == _DEFAULT_FIELDS[len(fields) - 1]:
        fields.pop()
    wire = ["req", 0, req.method, req.url, req.headers, pool_id, timeout_id, *fields]
    n = len(wire)
    header = bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
    coded = [_encode(x) for x in wire]
    size = len(header) + sum(map(len, coded)) - 1 + 9  # the id as 9 bytes
    if size > MAX_FRAME:
        return None
    start = _LEN.pack(size) + header + coded[0] + b"\xcf"
    if req.body is None:
        return start, b"".join(coded[2:]), b""
    return start, b"".join(coded[2:7]), b"".join(coded[8:])
