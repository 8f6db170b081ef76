"""The fast path's engine core: a small request on an idle keep-alive connection, from
the head written to the whole response, told by one callback (no task, no future, no
message in between). The same in a worker's embedded mode and in the broker process.

The common request (no body or a whole one in memory; no rate limit, proxy,
100-continue, streamed or chunked body, trace; default head limits) needs no more of
the engine than this. The API, in the order of use:

``plan = prepare(req, url, pool, jar)``
    For a ``Request`` (the broker process): None when it is not a fast one (a streamed,
    chunked or 100-continue body, a proxy, TLS settings of its own, a trace, its own
    cookies or a jar holding some, ``read_until_eof=False``, a rate-limited pool), else
    ``(key, head, limits)`` for ``start``: what ``Engine`` would write for its first
    attempt. ``url``: ``req.url`` checked (``engine._checked``).

``conn = start(pool, key, method, head, body, on_response, limits)``
    Takes an idle connection of ``key`` (``Pool.take_idle``: never waits, opens, or
    jumps a queue; None under ``rate_limit_per_host``) and writes ``head`` (the bytes of
    ``exchange.build_head``, which a caller may cache per (method, URL, headers)) and
    ``body``. None: no idle connection; nothing was sent, take the general path
    (``Engine.perform``).

``on_response(result)``
    Called once, from the connection's protocol callbacks (``HTTP1Connection.
    begin_fast``): ``result`` is the ``ResponseHead``, at the end of the read that
    completed it (body bytes of that read are kept on the connection), or the
    ``ConnectionFailure`` that came before any head (even before ``start`` returns:
    a connection found closed as the head was written). A caller that gives up first
    (cancel, total timeout) calls ``abandon`` instead, after which it is never called.

``body = finish(pool, conn, head, allow_redirects, decode, jar, url)``
    When the response may be delivered as it is (complete with its head, not a
    redirect to follow, nothing to decode), stores its Set-Cookie in ``jar`` (a
    ``CookieStore`` or None), gives the connection back to the pool (reusable: the
    exchange is complete) and returns the whole body. None: nothing was done; hand
    ``(conn, head)`` to ``Engine.perform(..., first=(conn, head))``, which goes on as
    if it had made that attempt itself (cookies, redirects, decoding, a body still
    coming, ``sock_read``).

A failure: hand ``(conn, failure)`` to ``Engine.perform(..., first=...)`` likewise: it
retries a stale keep-alive connection once (as its own first attempt would be) or
reports the failure as the general path does.

``abandon(pool, conn)``
    The caller gave up before ``finish`` (a cancel, a total or ``sock_read`` timeout):
    the connection goes back to the pool, closed unless its exchange completed.

``deliver(stream, head, body, url, method)``
    For a ``BrokerStream`` sink (the broker process): the finished response as
    ``Head``, ``Data`` and ``End``.

The caller owns the timeouts: ``http1.watch_silence(loop, conn, fut, sock_read)`` (any
``fut`` with ``done()``) fails the exchange after ``sock_read`` of silence, which
reaches ``on_response`` as a failure; a total timeout is the caller's timer calling
``abandon``. The request must fit the engine's checks already (a URL, method and
headers that ``engine._checked`` accepts): the broker checks a worker's request before
starting it, once per cached head.

Bounds: nothing is buffered here; the connection keeps at most ``http1.EARLY_LIMIT``
plus one read of body bytes before ``finish`` takes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from shared.messages import Head, Request

from .dialer import NO_TLS
from .exchange import DEFAULT_LIMITS, HeadLimits, ResponseHead, build_head, set_cookies
from .failures import ConnectionFailure
from .hops import REDIRECTS
from .http1 import HTTP1Connection

if TYPE_CHECKING:
    from yarl import URL

    from .connector import Pool
    from .cookie_store import CookieStore
    from .dialer import ConnKey
    from .stream import BrokerStream

__all__ = ["OnResponse", "Resumed", "abandon", "deliver", "finish", "prepare", "start"]

OnResponse: TypeAlias = Callable[[ResponseHead | ConnectionFailure], None]
Resumed: TypeAlias = "tuple[HTTP1Connection, ResponseHead | ConnectionFailure]"
"""What the fast path hands the engine: the connection and what its attempt got."""


def prepare(
    req: Request, url: URL, pool: Pool, jar: CookieStore | None
) -> tuple[ConnKey, bytes, HeadLimits] | None:
    """The pool key, head and head limits of a fast ``req``; None: not a fast one."""
    if (
        req.streamed
        or req.chunked
        or req.expect100
        or req.proxy
        or req.tls
        or req.fingerprint
        or req.server_hostname
        or req.trace
        or req.cookies
        or not req.read_until_eof
        or pool.rate is not None
        or (jar is not None and len(jar))
    ):
        return None
    host = url.raw_host
    if not host:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    head = build_head(
        req.method,
        url,
        req.headers,
        None if req.body is None else len(req.body),
        False,
        req.skip_host,
        (1, 0) if req.http10 else (1, 1),
        pool.spec.force_close,
    )
    limits = (req.max_line_size, req.max_field_size, req.max_headers)
    return (
        (url.scheme, host, port, NO_TLS, b""),
        head,
        DEFAULT_LIMITS if limits == DEFAULT_LIMITS else HeadLimits(*limits),
    )


def start(
    pool: Pool,
    key: ConnKey,
    method: str,
    head: bytes,
    body: bytes | None,
    on_response: OnResponse,
    limits: HeadLimits = DEFAULT_LIMITS,
) -> HTTP1Connection | None:
    """Send the request on an idle connection of ``key``; None: none idle, not sent."""
    conn = pool.take_idle(key)
    if conn is None:
        return None
    conn.exchange.read_until_eof = True
    try:
        conn.begin_fast(method, head, body, on_response, limits)
    except ConnectionFailure as exc:  # closed under us: the engine retries it
        on_response(exc)
    return conn


def finish(
    pool: Pool,
    conn: HTTP1Connection,
    head: ResponseHead,
    allow_redirects: bool,
    decode: bool,
    jar: CookieStore | None,
    url: URL,
) -> bytes | None:
    """The whole body of a response to deliver as it is, the connection given back;
    None: the engine's to go on with (see the module docstring)."""
    if allow_redirects and head.status in REDIRECTS:
        return None
    if head.encoding and decode:
        return None
    body = conn.whole_body()
    if body is None:
        return None
    if head.set_cookie and jar is not None:
        jar.update_from_headers(set_cookies(head.headers), url)
    pool.give_back(conn)
    return body


def abandon(pool: Pool, conn: HTTP1Connection) -> None:
    """The caller gave up: the connection back, closed unless its exchange completed."""
    pool.give_back(conn)


def deliver(
    stream: BrokerStream, head: ResponseHead, body: bytes, url: str, method: str
) -> None:
    """A finished response to a ``BrokerStream``: its head, body and end."""
    stream.head(
        Head(stream.id, head.status, head.reason, head.version, head.headers, url, method)
    )
    if body:
        stream.data(body)
    stream.end()
