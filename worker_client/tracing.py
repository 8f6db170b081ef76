"""Client tracing (aiohttp's ``TraceConfig``), its signals run in the worker.

A traced request (its session has ``trace_configs``) keeps a ``RequestTrace``: one
``trace_config_ctx`` per config and a queue of signals to send. Three sources fill the
queue: the session (request start, end, exception), the transport's sink for the
broker's ``TraceEvent``s (``on_event``: connection, DNS, headers and chunks sent,
redirects), called synchronously as the events arrive, and a streamed body's tap
(``tap``: the pieces the worker sends). The request's own task awaits the handlers
(``drain``, while it waits for the head and before it returns or raises), in order, so
the broker never waits for a handler and a slow handler delays only its own request.
A streamed body's piece is sent by the task that sends the body when the request's task
is not waiting for it (embedded mode runs the exchange in the request's task; after the
head, as aiohttp's writer), one drainer at a time so the order holds.

Bounds: the broker's events of one request, before its head, are a few per hop (at most
``max_redirects`` + 1 hops) plus one per body piece it wrote; they are kept as the small
``TraceEvent``s (a piece of an inline body is sliced only when its signal is sent), at
most ``MAX_QUEUED`` of them and ``MAX_QUEUED_BYTES`` of their hosts, URLs and headers
waiting for their handlers: a broker that sends more fails the request with
``BrokerProtocolError``. A streamed body's piece waits for its signal to be sent before
it goes on, once the hop's headers are sent (with ``Expect: 100-continue``, once the
broker wrote a first piece: a body refused before it has no pieces signalled, as in
aiohttp); before that, pieces are held up to ``STREAM_WINDOW`` bytes (plus one piece;
the transport's credit would let out as much, but counts a compressed body's bytes),
and the next piece waits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableSequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, overload

import msgspec
from multidict import CIMultiDict
from yarl import URL

from broker.failures import ConnectionFailure
from broker.hops import Hop, follow, redirect_location
from shared.framing import MAX_FRAME
from shared.messages import STREAM_WINDOW, Request, TraceEvent

from .exceptions import BrokerProtocolError, ClientConnectionError
from .response import ClientResponse

if TYPE_CHECKING:
    from .handle import StreamHandle
    from .session import ClientSession

__all__ = (
    "TraceConfig",
    "TraceRequestStartParams",
    "TraceRequestEndParams",
    "TraceRequestExceptionParams",
    "TraceConnectionQueuedStartParams",
    "TraceConnectionQueuedEndParams",
    "TraceConnectionCreateStartParams",
    "TraceConnectionCreateEndParams",
    "TraceConnectionReuseconnParams",
    "TraceDnsResolveHostStartParams",
    "TraceDnsResolveHostEndParams",
    "TraceDnsCacheHitParams",
    "TraceDnsCacheMissParams",
    "TraceRequestRedirectParams",
    "TraceRequestChunkSentParams",
    "TraceResponseChunkReceivedParams",
    "TraceRequestHeadersSentParams",
)

Handler = Callable[..., Awaitable[object]]


class Signal(MutableSequence[Handler]):
    """aiosignal's ``Signal``: a list of async handlers, frozen before it is sent;
    changing a frozen one raises ``RuntimeError``, as ``frozenlist.FrozenList``."""

    __slots__ = ("_owner", "_items", "_frozen")

    def __init__(self, owner: object) -> None:
        self._owner = owner
        self._items: list[Handler] = []
        self._frozen = False

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        self._frozen = True

    def _check(self) -> None:
        if self._frozen:
            raise RuntimeError("Cannot modify frozen list.")

    @overload
    def __getitem__(self, index: int) -> Handler: ...
    @overload
    def __getitem__(self, index: slice) -> list[Handler]: ...
    def __getitem__(self, index: Any) -> Any:
        return self._items[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        self._check()
        self._items[index] = value

    def __delitem__(self, index: Any) -> None:
        self._check()
        del self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Handler]:
        return iter(self._items)

    def insert(self, index: int, value: Handler) -> None:
        self._check()
        self._items.insert(index, value)

    def __eq__(self, other: object) -> bool:
        return list(self) == other

    def __hash__(self) -> int:
        if not self._frozen:
            raise RuntimeError("Cannot hash unfrozen list.")
        return hash(tuple(self._items))

    def __repr__(self) -> str:
        return f"<Signal owner={self._owner}, frozen={self._frozen}, {self._items!r}>"

    async def send(self, *args: Any, **kwargs: Any) -> None:
        """Await every handler in order."""
        if not self._frozen:
            raise RuntimeError("Cannot send non-frozen signal.")
        for receiver in self._items:
            await receiver(*args, **kwargs)

    def __call__(self, func: Handler) -> Handler:
        """Decorator: append ``func``."""
        self.append(func)
        return func


_SIGNALS = (
    "request_start", "request_chunk_sent", "response_chunk_received", "request_end",
    "request_exception", "request_redirect", "connection_queued_start",
    "connection_queued_end", "connection_create_start", "connection_create_end",
    "connection_reuseconn", "dns_resolvehost_start", "dns_resolvehost_end",
    "dns_cache_hit", "dns_cache_miss", "request_headers_sent",
)


class TraceConfig:
    """Handlers for the tracing signals of the requests of the sessions it is given to."""

    def __init__(
        self, trace_config_ctx_factory: Callable[..., Any] = SimpleNamespace
    ) -> None:
        for name in _SIGNALS:
            setattr(self, "_on_" + name, Signal(self))
        self._trace_config_ctx_factory = trace_config_ctx_factory

    def trace_config_ctx(self, trace_request_ctx: Any = None) -> Any:
        """A new ``trace_config_ctx`` (one per request)."""
        return self._trace_config_ctx_factory(trace_request_ctx=trace_request_ctx)

    def freeze(self) -> None:
        for name in _SIGNALS:
            getattr(self, "_on_" + name).freeze()

    on_request_start = property(lambda self: self._on_request_start)
    on_request_chunk_sent = property(lambda self: self._on_request_chunk_sent)
    on_response_chunk_received = property(lambda self: self._on_response_chunk_received)
    on_request_end = property(lambda self: self._on_request_end)
    on_request_exception = property(lambda self: self._on_request_exception)
    on_request_redirect = property(lambda self: self._on_request_redirect)
    on_connection_queued_start = property(lambda self: self._on_connection_queued_start)
    on_connection_queued_end = property(lambda self: self._on_connection_queued_end)
    on_connection_create_start = property(lambda self: self._on_connection_create_start)
    on_connection_create_end = property(lambda self: self._on_connection_create_end)
    on_connection_reuseconn = property(lambda self: self._on_connection_reuseconn)
    on_dns_resolvehost_start = property(lambda self: self._on_dns_resolvehost_start)
    on_dns_resolvehost_end = property(lambda self: self._on_dns_resolvehost_end)
    on_dns_cache_hit = property(lambda self: self._on_dns_cache_hit)
    on_dns_cache_miss = property(lambda self: self._on_dns_cache_miss)
    on_request_headers_sent = property(lambda self: self._on_request_headers_sent)


# The params are frozen dataclasses, not slots=True: a frozen slotted dataclass raises
# TypeError, not AttributeError, when an unknown attribute is set (CPython 3.10-3.12).


@dataclass(frozen=True)
class TraceRequestStartParams:
    """Parameters sent by the ``on_request_start`` signal."""

    method: str
    url: URL
    headers: CIMultiDict[str]


@dataclass(frozen=True)
class TraceRequestChunkSentParams:
    """Parameters sent by the ``on_request_chunk_sent`` signal."""

    method: str
    url: URL
    chunk: bytes


@dataclass(frozen=True)
class TraceResponseChunkReceivedParams:
    """Parameters sent by the ``on_response_chunk_received`` signal."""

    method: str
    url: URL
    chunk: bytes


@dataclass(frozen=True)
class TraceRequestEndParams:
    """Parameters sent by the ``on_request_end`` signal."""

    method: str
    url: URL
    headers: CIMultiDict[str]
    response: ClientResponse


@dataclass(frozen=True)
class TraceRequestExceptionParams:
    """Parameters sent by the ``on_request_exception`` signal."""

    method: str
    url: URL
    headers: CIMultiDict[str]
    exception: BaseException


@dataclass(frozen=True)
class TraceRequestRedirectParams:
    """Parameters sent by the ``on_request_redirect`` signal."""

    method: str
    url: URL
    headers: CIMultiDict[str]
    response: ClientResponse


@dataclass(frozen=True)
class TraceConnectionQueuedStartParams:
    """Parameters sent by the ``on_connection_queued_start`` signal."""


@dataclass(frozen=True)
class TraceConnectionQueuedEndParams:
    """Parameters sent by the ``on_connection_queued_end`` signal."""


@dataclass(frozen=True)
class TraceConnectionCreateStartParams:
    """Parameters sent by the ``on_connection_create_start`` signal."""


@dataclass(frozen=True)
class TraceConnectionCreateEndParams:
    """Parameters sent by the ``on_connection_create_end`` signal."""


@dataclass(frozen=True)
class TraceConnectionReuseconnParams:
    """Parameters sent by the ``on_connection_reuseconn`` signal."""


@dataclass(frozen=True)
class TraceDnsResolveHostStartParams:
    """Parameters sent by the ``on_dns_resolvehost_start`` signal."""

    host: str


@dataclass(frozen=True)
class TraceDnsResolveHostEndParams:
    """Parameters sent by the ``on_dns_resolvehost_end`` signal."""

    host: str


@dataclass(frozen=True)
class TraceDnsCacheHitParams:
    """Parameters sent by the ``on_dns_cache_hit`` signal."""

    host: str


@dataclass(frozen=True)
class TraceDnsCacheMissParams:
    """Parameters sent by the ``on_dns_cache_miss`` signal."""

    host: str


@dataclass(frozen=True)
class TraceRequestHeadersSentParams:
    """Parameters sent by the ``on_request_headers_sent`` signal."""

    method: str
    url: URL
    headers: CIMultiDict[str]


_NO_PARAMS: dict[str, type] = {
    "connection_queued_start": TraceConnectionQueuedStartParams,
    "connection_queued_end": TraceConnectionQueuedEndParams,
    "connection_create_start": TraceConnectionCreateStartParams,
    "connection_create_end": TraceConnectionCreateEndParams,
    "connection_reuseconn": TraceConnectionReuseconnParams,
}
_HOST_PARAMS: dict[str, type] = {
    "dns_resolvehost_start": TraceDnsResolveHostStartParams,
    "dns_resolvehost_end": TraceDnsResolveHostEndParams,
    "dns_cache_hit": TraceDnsCacheHitParams,
    "dns_cache_miss": TraceDnsCacheMissParams,
}
_HOP_BEGINS = frozenset(
    ("connection_queued_start", "connection_create_start", "connection_reuseconn")
)
_OWN_CHUNK = "own_chunk"  # a queued piece of a streamed body the worker sent
MAX_QUEUED = 1 << 16
"""Events of one request waiting for their handlers (a 16 GiB inline body in 256 KiB
pieces and its hops' events fit)."""
MAX_QUEUED_BYTES = 16 * MAX_FRAME
"""Their hosts, URLs and headers, in bytes (16 events as big as a frame may be)."""


def _size(event: TraceEvent) -> int:
    """What a broker's event holds beyond its fixed fields (``MAX_QUEUED_BYTES``)."""
    size = len(event.host) + len(event.url) + len(event.method)
    for name, value in event.headers:
        size += len(name) + len(value)
    item = event.redirect
    if item is not None:
        size += len(item.url) + len(item.reason)
        for raw_name, raw_value in item.headers:
            size += len(raw_name) + len(raw_value)
        for name, value in item.request_headers:
            size += len(name) + len(value)
    return size


class RequestTrace:
    """One traced request: its configs' contexts and its queue (module docstring)."""

    __slots__ = (
        "session", "traces", "method", "url", "headers", "request_info", "body",
        "streamed", "_queue", "_waiter", "_pending", "_held", "_bytes", "_going", "_expect",
        "_hop", "_offset", "_done", "_failed", "_redirects", "_busy", "_handle", "_current",
        "_next", "_plain", "_early",
    )

    def __init__(
        self,
        session: ClientSession,
        configs: list[TraceConfig],
        trace_request_ctx: Any,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
    ) -> None:
        self.session = session
        self.traces = [
            (config, config.trace_config_ctx(trace_request_ctx=trace_request_ctx))
            for config in configs
        ]
        self.method, self.url, self.headers = method, url, headers
        self.request_info: Any = None  # for the redirects' responses
        self.body: bytes | None = None  # the inline body the broker's pieces are of
        self.streamed = False  # the body's pieces are the worker's (tap)
        self._queue: deque[tuple[str, Any, asyncio.Future[None] | None]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._pending: list[tuple[str, Any, asyncio.Future[None] | None]] = []
        self._held = 0  # bytes of the pieces in _pending
        self._bytes = 0  # of the broker's events in _queue (_size)
        # a streamed body's pieces may be signalled: its hop's headers are sent (with
        # Expect: 100-continue, the broker wrote a first piece: the server said go on)
        self._going = False
        self._expect = False
        self._hop: tuple[str, URL] = (method, url)
        self._offset = 0
        self._done = False
        self._failed = False  # a handler raised: the request fails with its exception
        self._redirects = 0
        self._busy: asyncio.Future[None] | None = None  # a task is draining
        self._handle: StreamHandle | None = None  # the exchange's stream
        # aiohttp's method and url while a hop is tried (the exception's): a redirect's
        # target once it is followed, i.e. once the broker starts on its connection
        self._current: tuple[str, URL] = (method, url)
        self._next: Hop | None = None
        self._plain: bytes | None = None  # compress=: the inline body as given
        self._early = False  # compress=: the stream was tapped before it is compressed

    async def send(self, name: str, params: Any) -> None:
        """Every config's handlers of signal ``name``, in order."""
        session = self.session
        for config, ctx in self.traces:
            await getattr(config, "_on_" + name).send(session, ctx, params)

    # -- the request's own task ----------------------------------------------------

    async def start(self, given: str | URL) -> None:
        """``given``: the request's URL as its caller wrote it, whose user and password
        aiohttp's ``on_request_start`` still has (they are gone from every later one)."""
        url = self.url
        if isinstance(given, str):
            given = URL(given)
        if given.raw_user is not None:
            url = url.with_user(given.user).with_password(given.password)
        await self.send("request_start", TraceRequestStartParams(self.method, url, self.headers))

    async def until(self, head: asyncio.Future[Any]) -> None:
        """Send the queued signals as they come, until ``head`` is done."""
        loop = asyncio.get_running_loop()
        while True:
            await self.drain()
            if head.done():
                return
            waiter = self._waiter = loop.create_future()
            try:
                await asyncio.wait((head, waiter), return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._waiter = None

    async def drain(self) -> None:
        """Send the queued signals; one task at a time (another waits its turn)."""
        while self._busy is not None:
            await asyncio.shield(self._busy)
        queue = self._queue
        if not queue:
            return
        busy = self._busy = asyncio.get_running_loop().create_future()
        try:
            while queue:
                kind, payload, delivered = queue.popleft()
                try:
                    if kind == _OWN_CHUNK:
                        await self._chunk_sent(payload)
                    else:
                        self._bytes -= _size(payload)
                        await self._broker_event(payload)
                except BaseException:
                    self._failed = True  # as aiohttp: no signal after it but the exception
                    self.close()
                    raise
                finally:
                    if delivered is not None and not delivered.done():
                        delivered.set_result(None)
        finally:
            self._busy = None
            busy.set_result(None)

    async def redirect(self, response: ClientResponse) -> None:
        """A redirect followed in the worker (with middlewares)."""
        method, url = self._current
        self._redirects += 1
        await self._sent_or_closed(
            "request_redirect",
            TraceRequestRedirectParams(method, url, self.headers, response),
            response,
        )

    async def end(self, response: ClientResponse) -> None:
        await self.drain()
        self.close()
        url = response.real_url if response.history else self.url
        response._trace = self
        await self._sent_or_closed(
            "request_end",
            TraceRequestEndParams(response.method, url, self.headers, response),
            response,
        )

    async def _sent_or_closed(self, name: str, params: Any, response: ClientResponse) -> None:
        """A handler that raises here keeps ``response`` from its caller: it is closed,
        so its stream gives its pool slot back (aiohttp's, unreferenced, is released)."""
        try:
            await self.send(name, params)
        except BaseException:
            response.close()
            raise

    async def exception(self, exc: BaseException) -> None:
        self._drop_pending()  # pieces taken before headers that never went
        await self.drain()
        self.close()
        method, url = self._current
        await self.send(
            "request_exception",
            TraceRequestExceptionParams(method, url, self.headers, exc),
        )

    def close(self) -> None:
        """The request task stops draining; a body still going sends its own signals."""
        self._done = True
        for _, _, delivered in (*self._queue, *self._pending):
            if delivered is not None and not delivered.done():
                delivered.set_result(None)
        self._queue.clear()
        self._bytes = 0
        self._drop_pending()

    def _drop_pending(self) -> None:
        for _, _, delivered in self._pending:
            if delivered is not None and not delivered.done():
                delivered.set_result(None)
        self._pending.clear()
        self._held = 0

    async def chunk_received(self, response: ClientResponse, body: bytes) -> None:
        """``ClientResponse.read`` has the whole body (where aiohttp sends it)."""
        await self.send(
            "response_chunk_received",
            TraceResponseChunkReceivedParams(response.method, response.url, body),
        )

    # -- the transport's sink (synchronous) ----------------------------------------

    def on_event(self, event: TraceEvent) -> None:
        if self._done:
            return
        kind = event.kind
        size = _size(event)
        if len(self._queue) >= MAX_QUEUED or self._bytes + size > MAX_QUEUED_BYTES:
            if self._handle is not None:
                self._handle.give_up(
                    BrokerProtocolError(
                        f"more than {MAX_QUEUED} trace events or {MAX_QUEUED_BYTES} bytes"
                        " of them queued"
                    )
                )
            return
        self._bytes += size
        if kind == "request_chunk_sent" and self.streamed:
            if not self._going:  # Expect: 100-continue, and the server said go on
                self._go()
            return  # the worker's own pieces stand for these
        if kind == "request_redirect":
            self._going = False
        self._queue.append((kind, event, None))
        if kind == "request_headers_sent" and not self._expect:
            self._go()
        self._wake()

    def _go(self) -> None:
        self._going = True
        self._queue.extend(self._pending)
        self._pending.clear()
        self._held = 0
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _broker_event(self, event: TraceEvent) -> None:
        kind = event.kind
        cls = _NO_PARAMS.get(kind)
        if cls is not None:
            if self._next is not None and kind in _HOP_BEGINS:
                self._move(self._next)
                self._next = None
            await self.send(kind, cls())
            return
        cls = _HOST_PARAMS.get(kind)
        if cls is not None:
            await self.send(kind, cls(event.host))
        elif kind == "request_headers_sent":
            url = URL(event.url, encoded=True)
            if url.raw_fragment:  # a redirect's Location had one: aiohttp's is without
                url = url.with_fragment(None)
            self._hop = (event.method, url)
            self._offset = 0
            await self.send(
                kind,
                TraceRequestHeadersSentParams(event.method, url, CIMultiDict(event.headers)),
            )
        elif kind == "request_chunk_sent":
            start = self._offset
            self._offset = start + event.size
            if self._plain is None:
                await self._chunk_sent((self.body or b"")[start : self._offset])
            elif not start:  # compress=: the pieces are compressed; aiohttp's is the body
                await self._chunk_sent(self._plain)
        elif kind == "request_redirect" and event.redirect is not None:
            item = event.redirect
            url = self.url if not self._redirects else URL(item.url, encoded=True)
            self._redirects += 1
            location = redirect_location(item.headers)
            self._next = None if location is None else self._follow(item.status, location)
            response = self.session._history_response(item, self.request_info)
            await self.send(
                kind, TraceRequestRedirectParams(item.method, url, self.headers, response)
            )

    def followed(self, status: int, location: bytes) -> None:
        """A redirect followed in the worker (with middlewares): its target is tried."""
        hop = self._follow(status, location)
        if hop is not None:
            self._move(hop)

    def _follow(self, status: int, location: bytes) -> Hop | None:
        """The hop tried after a redirect of the current one (None: none is)."""
        method, url = self._current
        hop = Hop(method, url, list(self.headers.items()), None, False, [])
        try:
            return follow(hop, status, location, self.session._requote_redirect_url)
        except ConnectionFailure:
            return None

    def _move(self, hop: Hop) -> None:
        """``hop`` is tried: aiohttp's method, url and headers become its; the headers
        in place, as aiohttp's loop changes them (the params' of every signal are that
        one object), less those ``follow`` dropped (a method made GET, another origin)."""
        self._current = (hop.method, hop.url)
        if len(hop.headers) != len(self.headers):
            self.headers.clear()
            self.headers.extend(hop.headers)

    def attach(
        self,
        req: Request,
        handle: StreamHandle,
        request_info: Any,
        inline: bytes | None,
        stream: AsyncIterator[bytes] | None,
        rewind: Callable[[], AsyncIterator[bytes]] | None = None,
    ) -> tuple[Request, AsyncIterator[bytes] | None, Callable[[], AsyncIterator[bytes]] | None]:
        """One exchange of this request is sent: its events come to ``on_event``."""
        handle.on_trace = self.on_event
        self._handle = handle
        self.request_info = request_info
        self.body = inline
        self._going = False
        self._expect = req.expect100
        self._drop_pending()  # an earlier exchange's pieces that never went
        self.streamed = stream is not None or rewind is not None
        if not self._early:
            stream, rewind = self.tap(stream, rewind)
        return msgspec.structs.replace(req, trace=True), stream, rewind

    # -- a streamed body's pieces ---------------------------------------------------

    def compressing(
        self,
        body: bytes | None,
        stream: AsyncIterator[bytes] | None,
        rewind: Callable[[], AsyncIterator[bytes]] | None,
    ) -> tuple[AsyncIterator[bytes] | None, Callable[[], AsyncIterator[bytes]] | None]:
        """``compress=``: aiohttp's writer signals each piece before it compresses it, so
        the pieces are the body as given: ``stream`` tapped now (the exchanges' streams,
        compressed from it, are not tapped again), ``body`` sent once per hop."""
        self._plain = body
        self._early = True
        return self.tap(stream, rewind)

    def tap(
        self,
        body: AsyncIterator[bytes] | None,
        rewind: Callable[[], AsyncIterator[bytes]] | None,
    ) -> tuple[AsyncIterator[bytes] | None, Callable[[], AsyncIterator[bytes]] | None]:
        """``body`` and ``rewind`` whose pieces send ``on_request_chunk_sent``."""
        if body is None and rewind is None:
            return body, rewind
        tapped = None if body is None else self._tapped(body)
        if rewind is None:
            return tapped, None
        again = rewind
        return tapped, lambda: self._tapped(again())

    async def _tapped(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in body:
            try:
                await self._own_chunk(chunk)
            except Exception as exc:
                # the request fails with it, as when the broker's pump meets it (the
                # embedded engine would make any error of the body an internal one)
                if self._handle is not None:
                    self._handle.give_up(exc)
                raise
            yield chunk

    async def _chunk_sent(self, chunk: bytes) -> None:
        """``on_request_chunk_sent``; a handler's exception fails the request as
        aiohttp's writer fails it: a ``ClientConnectionError`` caused by it."""
        method, url = self._hop
        try:
            await self.send("request_chunk_sent", TraceRequestChunkSentParams(method, url, chunk))
        except Exception as exc:
            raise ClientConnectionError(
                f"Failed to send bytes into the underlying connection: {exc!r}"
            ) from exc

    async def _own_chunk(self, chunk: bytes) -> None:
        if self._done:
            if self._going and not self._failed:  # a body still going after the head
                await self._chunk_sent(chunk)
            return
        if not self._going:
            if self._held <= STREAM_WINDOW:
                self._pending.append((_OWN_CHUNK, chunk, None))
                self._held += len(chunk)
                return
            held = asyncio.get_running_loop().create_future()
            self._pending.append((_OWN_CHUNK, chunk, held))
            await held  # its signal went, or the exchange ended without its headers
            return
        if self._waiter is None:
            # The request's task is not waiting in ``until`` (embedded: it runs this
            # body itself): send what is queued, this piece last, from here.
            self._queue.append((_OWN_CHUNK, chunk, None))
            await self.drain()
            return
        delivered = asyncio.get_running_loop().create_future()
        self._queue.append((_OWN_CHUNK, chunk, delivered))
        self._wake()
        await delivered
