"""The request engine: one request from a worker, carried out on the broker's pools.

``Engine.perform`` runs the hops of a request (redirects are followed here, so that the
pool and, later, the cookie jar see every hop) up to the final response's head; a
``_BodyPhase`` then streams the body to the ``BrokerStream`` by callbacks, as aiohttp's
protocol feeds its reader, so no task waits on a body. Every failure becomes a
``Failure`` message in one place (``_failure``). It is the same code in the broker
process and in a worker's embedded mode.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from yarl import URL

from shared.messages import Failure, Head, HistoryItem, Request
from shared.rules import FORBIDDEN_VALUE_RE, TOKEN_RE
from shared.specs import ClientTimeout, PoolSpec

from .body import BodyPipe
from .connector import Pool
from .decoding import make_decoder
from .exchange import ConnectionFailure, ResponseHead, build_head, declared_length
from .http1 import HTTP1Connection
from .resolver import Resolvers
from .stream import BrokerStream

__all__ = ["Engine"]

log = logging.getLogger("broker.engine")

REDIRECTS = frozenset((301, 302, 303, 307, 308))
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))
_CROSS_ORIGIN_DROP = ("Authorization", "Cookie", "Proxy-Authorization")


def _find(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


class Engine:
    """Pools by spec, a resolver, and the request loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self.resolvers = Resolvers(self._loop)
        self.pools: dict[PoolSpec, Pool] = {}
        self.requests = 0
        self.closed = False

    def pool(self, spec: PoolSpec) -> Pool:
        pool = self.pools.get(spec)
        if pool is None:
            resolver = self.resolvers.get(
                spec.resolver, spec.ttl_dns_cache, spec.dns_cache_max_size, spec.use_dns_cache
            )
            pool = self.pools[spec] = Pool(spec, self._loop, resolver)
        return pool

    def clear_dns(self, spec: PoolSpec, host: str | None, port: int | None) -> None:
        """``TCPConnector.clear_dns_cache`` for the resolver that ``spec`` uses."""
        if (host is None) != (port is None):
            return  # the worker checked this; a bad message must not raise here
        self.resolvers.get(
            spec.resolver, spec.ttl_dns_cache, spec.dns_cache_max_size, spec.use_dns_cache
        ).clear(host, port)

    async def close(self) -> None:
        self.closed = True
        pools = list(self.pools.values())
        self.pools.clear()
        await asyncio.gather(*(p.close() for p in pools))
        await self.resolvers.close()

    def figures(self) -> list[dict[str, Any]]:
        return [p.figures() for p in self.pools.values()]

    def dns_figures(self) -> list[dict[str, Any]]:
        return self.resolvers.figures()

    # -- one request ---------------------------------------------------------------

    async def perform(
        self, req: Request, stream: BrokerStream, checked_url: URL | None = None
    ) -> None:
        """Carry out ``req`` up to its response head; report through ``stream``.

        Returns once the head is delivered (the body then flows by callbacks, see
        ``_BodyPhase``) or the failure reported. Raises only CancelledError.
        ``checked_url`` is ``req.url`` parsed, from a caller in this process that has
        checked the request already (embedded mode); else the engine checks it."""
        self.requests += 1
        history: list[HistoryItem] = []
        try:
            await self._hops(req, stream, history, checked_url)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not stream.finished:
                stream.fail(_failure(req, exc, history))

    async def _hops(
        self,
        req: Request,
        stream: BrokerStream,
        history: list[HistoryItem],
        checked_url: URL | None,
    ) -> None:
        url = checked_url if checked_url is not None else _checked(req)
        method = req.method
        headers = req.headers
        body = req.body
        streamed = req.streamed
        pool = self.pool(req.pool)
        redirects = 0
        while True:
            head, conn = await self._exchange(pool, req, method, url, headers, body, streamed,
                                              stream)
            location = None
            if req.allow_redirects and head.status in REDIRECTS:
                location = _find(head.headers, b"location") or _find(head.headers, b"uri")
            if not location:
                try:
                    self._deliver(req, stream, conn, pool, head, method, url, headers, history)
                except BaseException:
                    self._finish_exchange(pool, conn)
                    raise
                return
            self._finish_exchange(pool, conn)
            history.append(
                HistoryItem(
                    head.status, head.reason, head.version, head.headers, str(url), method,
                    headers,
                )
            )
            redirects += 1
            if req.max_redirects and redirects >= req.max_redirects:
                raise ConnectionFailure(
                    "too_many_redirects",
                    f"Exceeded {req.max_redirects} redirects",
                    status=head.status,
                )
            if (head.status == 303 and method != "HEAD") or (
                head.status in (301, 302) and method == "POST"
            ):
                method = "GET"
                body = None
                streamed = False
                headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            elif streamed and not (req.replayable and stream.rewind()):
                raise ConnectionFailure(
                    "payload",
                    "Cannot follow redirect with a consumed request body (a stream or a "
                    "file is sent once). Use bytes, or set allow_redirects=False.",
                )
            url, headers = self._redirect_target(url, location, headers)

    @staticmethod
    def _redirect_target(
        url: URL, location: bytes, headers: list[tuple[str, str]]
    ) -> tuple[URL, list[tuple[str, str]]]:
        r_url = location.decode("utf-8", "surrogateescape")
        try:
            target = URL(r_url)
        except ValueError:
            raise ConnectionFailure(
                "invalid_redirect",
                "Server attempted redirecting to a location that does not look like a URL",
                url=r_url,
            ) from None
        if target.scheme not in ("http", "https", ""):
            raise ConnectionFailure("non_http_redirect", r_url, url=r_url)
        if not target.scheme or (target.scheme == url.scheme and not target.raw_host):
            target = url.join(target)
        try:
            origin = target.origin()
        except ValueError:
            raise ConnectionFailure(
                "invalid_redirect", "Invalid redirect URL origin", url=str(target)
            ) from None
        if url.origin() != origin:
            drop = {h.lower() for h in _CROSS_ORIGIN_DROP}
            headers = [(k, v) for k, v in headers if k.lower() not in drop]
        return target, headers

    async def _exchange(
        self,
        pool: Pool,
        req: Request,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        body: bytes | None,
        streamed: bool,
        stream: BrokerStream,
    ) -> tuple[ResponseHead, HTTP1Connection]:
        """Send one hop and read its head; retry once on a stale keep-alive connection."""
        if not url.raw_host:
            raise ConnectionFailure("invalid_url", "URL has no host", url=str(url))
        key = (url.scheme, url.raw_host, url.port or (443 if url.scheme == "https" else 80))
        timeout = req.timeout
        length = declared_length(headers) if streamed else None
        head_bytes = build_head(
            method,
            url,
            headers,
            len(body) if body is not None else None,
            streamed,
            req.skip_host,
        )
        await pool.wait_turn(key)
        for attempt in (0, 1):
            conn = await pool.acquire(key, timeout)
            try:
                conn.exchange.read_until_eof = req.read_until_eof
                conn.begin(method, head_bytes, body, streamed, length)
                if streamed:
                    await self._send_stream(conn, stream)
                return await self._read(conn, conn.head_future, timeout), conn
            except ConnectionFailure as exc:
                self._finish_exchange(pool, conn)
                retry = (
                    attempt == 0
                    and exc.code in ("disconnected", "os")
                    and conn.reused
                    and not conn.got_response_bytes
                    and method in IDEMPOTENT
                    and not streamed
                )
                if not retry:
                    if exc.code == "disconnected":
                        exc.fields.setdefault("url", str(url))
                    raise
            except BaseException:
                self._finish_exchange(pool, conn)
                raise
        raise AssertionError("unreachable")

    async def _send_stream(self, conn: HTTP1Connection, stream: BrokerStream) -> None:
        async for chunk in stream.request_body():
            if chunk:
                await conn.send_body(chunk)
                stream.body_written(len(chunk))
        conn.end_body()

    async def _read(
        self, conn: HTTP1Connection, fut: asyncio.Future[Any], timeout: ClientTimeout
    ) -> Any:
        """Await a future of the exchange, failing it after ``sock_read`` of silence."""
        if not timeout.sock_read or fut.done():
            return await fut
        unwatch = watch_silence(self._loop, conn, fut, timeout.sock_read)
        try:
            return await fut
        finally:
            unwatch()

    def _deliver(
        self,
        req: Request,
        stream: BrokerStream,
        conn: HTTP1Connection,
        pool: Pool,
        head: ResponseHead,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        history: list[HistoryItem],
    ) -> None:
        """Send the head; the body phase takes over the connection."""
        stream.head(
            Head(
                req.stream,
                head.status,
                head.reason,
                head.version,
                head.headers,
                str(url) if history else req.url,
                method,
                headers if history else [],
                history,
            )
        )
        decoder = None
        if req.auto_decompress:
            enc = _find(head.headers, b"content-encoding")
            if enc:
                decoder = make_decoder(enc.decode("latin-1"))
        pipe = BodyPipe(stream, conn, decoder)
        conn.set_body_consumer(pipe.feed)
        _BodyPhase(self._loop, req, stream, conn, pool, pipe, history).start()

    @staticmethod
    def _finish_exchange(pool: Pool, conn: HTTP1Connection) -> None:
        if conn.in_use:  # once per exchange, whichever path gets here first
            conn.in_use = False
            pool.release(conn, conn.end_exchange())


def _failure(req: Request, exc: BaseException, history: list[HistoryItem]) -> Failure:
    """The one place where a failure becomes a wire ``Failure``."""
    if isinstance(exc, ConnectionFailure):
        return Failure(req.stream, exc.code, exc.message, history=history, **exc.fields)
    # A bug here must not take the broker down: report it, keep serving.
    log.error("request %s failed inside the broker", req.stream, exc_info=exc)
    return Failure(req.stream, "internal", f"{type(exc).__name__}: {exc}")


def watch_silence(
    loop: asyncio.AbstractEventLoop,
    conn: HTTP1Connection,
    fut: asyncio.Future[Any],
    sock_read: float,
) -> Callable[[], None]:
    """Fail the exchange after ``sock_read`` seconds without a byte from the server
    (time paused by our own flow control does not count); returns the stop function."""
    timer: list[asyncio.TimerHandle] = []

    def check() -> None:
        if fut.done():
            return
        if conn.reading_paused:
            timer[0] = loop.call_later(sock_read, check)
            return
        due = conn.last_read + sock_read
        if loop.time() >= due:
            conn.fail_exchange(
                ConnectionFailure("sock_read_timeout", "Timeout on reading data from socket")
            )
            conn.close()
        else:
            timer[0] = loop.call_at(due, check)

    timer.append(loop.call_at(conn.last_read + sock_read, check))
    return lambda: timer[0].cancel()


class _BodyPhase:
    """The response body after its head: driven by callbacks, with no task of its own.

    It ends once: with the last body byte (``stream.end``), with a failure
    (``stream.fail``), or when the worker gives up (``abort``, via the stream). Each way
    gives the connection back to the pool, reusable only after a complete response.
    """

    __slots__ = ("_loop", "req", "stream", "conn", "pool", "pipe", "history", "_unwatch",
                 "_over")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        req: Request,
        stream: BrokerStream,
        conn: HTTP1Connection,
        pool: Pool,
        pipe: BodyPipe,
        history: list[HistoryItem],
    ) -> None:
        self._loop = loop
        self.req = req
        self.stream = stream
        self.conn = conn
        self.pool = pool
        self.pipe = pipe
        self.history = history
        self._unwatch: Callable[[], None] | None = None
        self._over = False

    def start(self) -> None:
        conn = self.conn
        if conn.exchange_over:  # the whole response came with its head: the common case
            self._done(conn.exchange_error)
            return
        self.stream.flush()  # the body is still coming: the worker gets the head now
        self.stream.on_abort = self.abort
        done = conn.done_future
        if self.req.timeout.sock_read:
            self._unwatch = watch_silence(self._loop, conn, done, self.req.timeout.sock_read)
        done.add_done_callback(self._on_done)

    def _on_done(self, fut: asyncio.Future[None]) -> None:
        self._done(fut.exception())

    def _done(self, exc: BaseException | None) -> None:
        if self._over:
            return
        self._stop_watch()
        if exc is not None:
            self._end(exc)
            return
        self.pipe.when_drained(self._drained)

    def _drained(self, error: ConnectionFailure | None) -> None:
        if self._over:
            return
        if error is None:
            try:
                self.pipe.flush_tail()
            except ConnectionFailure as exc:
                error = exc
        self._end(error)

    def _end(self, error: BaseException | None) -> None:
        self._over = True
        self.stream.on_abort = None
        Engine._finish_exchange(self.pool, self.conn)
        if self.stream.finished:
            return
        try:
            if error is None:
                self.stream.end()
            else:
                self.stream.fail(_failure(self.req, error, self.history))
        except Exception as exc:  # a carrier bug: log it, never raise into the loop
            log.error("stream %s could not be ended", self.req.stream, exc_info=exc)

    def abort(self) -> None:
        """The worker gave up on the rest of the body: drop it and the connection."""
        if self._over:
            return
        self._over = True
        self._stop_watch()
        self.conn.set_body_consumer(None)
        Engine._finish_exchange(self.pool, self.conn)

    def _stop_watch(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None




def _checked(req: Request) -> URL:
    """The request's URL, after checking what the worker should have checked already:
    a worker is trusted with its own requests, not with the broker's other sockets, so
    nothing it sends may smuggle a second request onto an upstream connection."""
    try:
        url = URL(req.url, encoded=True)
    except (ValueError, TypeError):
        raise ConnectionFailure("invalid_url", "invalid URL", url=req.url) from None
    if url.scheme not in ("http", "https"):
        raise ConnectionFailure("non_http_url", req.url, url=req.url)
    if not url.raw_host:
        raise ConnectionFailure("invalid_url", "URL has no host", url=req.url)
    if not TOKEN_RE.fullmatch(req.method):
        raise ConnectionFailure("protocol", f"invalid method {req.method!r}")
    for name, value in req.headers:
        if not TOKEN_RE.fullmatch(name) or FORBIDDEN_VALUE_RE.search(value):
            raise ConnectionFailure("protocol", f"invalid header {name!r}")
    return url


def _find_str(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None
