"""Proxies in the engine: which proxy a hop goes through, and the connections through it.

A request carries its ``ProxyRoute`` encoded (``Request.proxy``, made by the worker from
its own settings and environment). ``hop_proxy`` picks the hop's proxy by the URL's
scheme, unless ``NO_PROXY`` bypasses the host (``shared.rules.proxy_bypass``); the
pool key ends with the chosen ``ProxySpec``'s encoding (``Proxy.key``, b"" for a direct
connection), so proxied and direct connections, and connections through two proxies or
with two sets of proxy credentials, never share a slot.

- A plain-http origin: the connection goes to the proxy, and each request on it is in
  absolute form (``GET http://host:port/path HTTP/1.1``) with ``Proxy-Authorization``
  and the ``proxy_headers`` (``Proxy.head_headers``).
- An https origin: a ``CONNECT host:port`` tunnel (with ``Host``, ``Proxy-Authorization``
  and the ``proxy_headers``), then TLS to the origin inside it (``loop.start_tls``);
  nothing of the proxy's credentials goes inside the tunnel. A non-200 answer is the
  ``proxy_status`` failure (aiohttp's ``ClientHttpProxyError``) with its status, reason
  and headers.
- An ``https://`` proxy: TLS to the proxy first, under the request's TLS settings (as
  aiohttp's proxy request takes the request's ``ssl``) against the proxy's host name, a
  pinned fingerprint checked there too (``ssl=Fingerprint`` verifies nothing else), then
  as above; an https origin is then TLS in TLS, which asyncio has from Python 3.11 (or
  uvloop): on 3.10 such a request is refused.

Failing to reach the proxy is ``proxy_connect`` (host and port of the proxy); its name
failing to resolve is ``dns``, as in aiohttp. Every wait (the connect, the answer to
CONNECT, the TLS handshake) ends at the request's connect deadline, each TCP connect and
the TLS handshake in the tunnel also at ``sock_connect`` (as aiohttp's), and a cancel at
any point closes what was opened. TLS connections here take the pool's
``ssl_shutdown_timeout`` as direct ones do. Nothing here uses ``asyncio.wait_for``.

Bounds: the answer to CONNECT is read up to ``MAX_CONNECT_HEAD`` bytes (its head; a
longer one is a ``bad_response``), at most ``_LIMITS`` headers of ``_LIMITS`` bytes; the
decoded routes and proxies are kept in two tables of at most ``_CACHE_MAX`` entries each,
whose keys are at most ``MAX_PROXY_ROUTE`` bytes (so at most 4 MiB each).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import ssl as ssl_mod
import sys
from typing import Any, NamedTuple

import httptools
import msgspec
from yarl import URL

from shared.rules import FORBIDDEN_VALUE_RE, proxy_bypass, proxy_header_problem, url_problem
from shared.specs import ClientTimeout, ProxyRoute, ProxySpec, TlsSpec, decode_proxy

from .dialer import Dialer, connect_timeout, tls_failure
from .exchange import DEFAULT_LIMITS
from .failures import ConnectionFailure
from .http1 import HTTP1Connection

__all__ = [
    "MAX_CONNECT_HEAD", "Proxy", "absolute_target", "dial_proxy", "hop_proxy", "proxy_label",
]

MAX_CONNECT_HEAD = 64 * 1024
_LIMITS = DEFAULT_LIMITS
_CACHE_MAX = 64
_spec_encoder = msgspec.msgpack.Encoder()
_spec_decoder = msgspec.msgpack.Decoder(ProxySpec)


class Proxy(NamedTuple):
    """A ``ProxySpec`` checked and ready: where it is, and what each request to it adds."""

    key: bytes  # the spec's encoding: the pool key's last element
    url: str
    host: str
    port: int
    tls: bool  # an https:// proxy
    authorization: str
    headers: tuple[tuple[str, str], ...]
    head_headers: list[tuple[str, str]]  # what a forwarded (absolute-form) request adds


class _Route(NamedTuple):
    http: Proxy | None
    https: Proxy | None
    no_proxy: tuple[str, ...]


_LABEL_SECRET = os.urandom(16)
_routes: dict[bytes, _Route] = {}
_proxies: dict[bytes, Proxy] = {}


def _bad(message: str) -> ConnectionFailure:
    return ConnectionFailure("protocol", f"invalid proxy settings: {message}")


def _checked(spec: ProxySpec, key: bytes) -> Proxy:
    """The broker checks again what the worker checked: nothing in a proxy's settings
    may add a line to a head written on a connection, nor frame it."""
    try:
        url = URL(spec.url, encoded=True)
        port = url.port
        problem = (
            url.scheme not in ("http", "https")
            or not url.raw_host
            or url_problem(url)
            # credentials go in ``authorization`` only: never in a URL that labels and
            # figures show; and one proxy, one URL (hence one key)
            or "@" in url.raw_authority
            or url.raw_path != "/"
            or bool(url.raw_query_string or url.raw_fragment)
        )
    except (ValueError, TypeError):
        problem = True
    if problem or port is None:
        raise _bad(f"the proxy URL {_redacted(spec.url)!r} is not http(s)://host[:port]")
    if FORBIDDEN_VALUE_RE.search(spec.authorization):
        raise _bad("the Proxy-Authorization value has a control character")
    for name, value in spec.headers:
        header_problem = proxy_header_problem(name, value)
        if header_problem is not None:
            raise _bad(header_problem)
    extra = list(spec.headers)
    if spec.authorization:
        extra.append(("Proxy-Authorization", spec.authorization))
    assert url.raw_host is not None
    return Proxy(
        key, spec.url, url.raw_host, port, url.scheme == "https", spec.authorization,
        spec.headers, extra,
    )


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url


def proxy_label(key: bytes) -> str:
    """How figures name the proxy of a pool key: its URL, and for one with credentials
    or headers a digest keyed by a secret of this process (two sets of credentials, two
    entries; the digest tells nothing of them, even to a guess)."""
    proxy = proxy_for_key(key)
    if not (proxy.authorization or proxy.headers):
        return proxy.url
    digest = hmac.new(_LABEL_SECRET, key, hashlib.sha256).hexdigest()[:12]
    return f"{proxy.url} ({digest})"


def _proxy(spec: ProxySpec) -> Proxy:
    key = _spec_encoder.encode(spec)
    got = _proxies.get(key)
    if got is None:
        got = _checked(spec, key)
        if len(_proxies) >= _CACHE_MAX:
            _proxies.clear()
        _proxies[key] = got
    return got


def proxy_for_key(key: bytes) -> Proxy:
    """The proxy a pool key names (its last element)."""
    got = _proxies.get(key)
    if got is None:
        got = _proxy(_spec_decoder.decode(key))
    return got


def _route(data: bytes) -> _Route:
    got = _routes.get(data)
    if got is None:
        try:
            route: ProxyRoute = decode_proxy(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise _bad(str(exc)) from None
        got = _Route(
            _proxy(route.http) if route.http is not None else None,
            _proxy(route.https) if route.https is not None else None,
            route.no_proxy,
        )
        if len(_routes) >= _CACHE_MAX:
            _routes.clear()
        _routes[data] = got
    return got


def hop_proxy(data: bytes, url: URL, port: int) -> Proxy | None:
    """The proxy of a hop to ``url`` under the encoded route ``data``; None: direct."""
    route = _route(data)
    proxy = route.https if url.scheme == "https" else route.http
    if proxy is None or (route.no_proxy and proxy_bypass(url.raw_host or "", port, route.no_proxy)):
        return None
    return proxy


def absolute_target(url: URL) -> str:
    """A forwarded request's target: the URL in absolute form, without credentials."""
    return f"{url.scheme}://{url.host_port_subcomponent}{url.raw_path_qs or '/'}"


# -- connecting through a proxy -------------------------------------------------------


async def dial_proxy(
    dialer: Dialer,
    key: tuple[Any, ...],
    timeout: ClientTimeout,
    deadline: float | None,
    tls: TlsSpec | None = None,
) -> HTTP1Connection:
    """A connection for ``key`` (scheme, host, port, tls, proxy key) through its proxy:
    to the proxy itself for an http origin, a tunnel with TLS to the origin for https
    (the request's TLS choice: ``key[3]``, with ``tls`` the spec its id names)."""
    scheme, host, port = key[0], key[1], key[2]
    proxy = proxy_for_key(key[4])
    if proxy.tls and scheme == "https" and not _tls_in_tls(dialer._loop):
        raise ConnectionFailure(
            "connection",
            "an https origin through an https:// proxy needs TLS in TLS, which asyncio "
            "has from Python 3.11 (or uvloop)",
        )
    ctx = server_hostname = None
    if proxy.tls or scheme == "https":  # the request's TLS settings, as aiohttp's
        fields: dict[str, Any] = {"host": host, "port": port, "ssl": True}
        ctx, server_hostname = dialer.tls_for(key, tls, fields)
    conn = await _connect_to_proxy(
        dialer, proxy, key, timeout, deadline, ctx if proxy.tls else None
    )
    if proxy.tls and key[3][1]:  # aiohttp's proxy request pins as the request does
        dialer.check_fingerprint(conn, key[3][1], proxy.host, proxy.port)
    if scheme != "https":
        return conn
    assert ctx is not None and server_hostname is not None
    try:
        conn = await _tunnel(dialer, conn, proxy, key, timeout, deadline, ctx, server_hostname)
    except BaseException:
        conn.abort()
        raise
    if key[3][1]:
        dialer.check_fingerprint(conn, key[3][1])
    return conn


async def _connect_to_proxy(
    dialer: Dialer,
    proxy: Proxy,
    key: tuple[Any, ...],
    timeout: ClientTimeout,
    deadline: float | None,
    tls: ssl_mod.SSLContext | None,
) -> HTTP1Connection:
    """A connection to the proxy itself; ``tls``: the context for an ``https://`` one."""
    fields: dict[str, Any] = {"host": proxy.host, "port": proxy.port, "ssl": proxy.tls}
    extra = dialer.tls_kwargs() if tls else {}
    host = proxy.host
    starts = await dialer.starts_to(
        host, proxy.port, key, deadline, fields, tls, host if tls else None, extra
    )
    return await dialer.connect_first(
        starts, dialer.spec.happy_eyeballs_delay, timeout, deadline, key, fields, "proxy_connect"
    )


_INFORMATIONAL = re.compile(rb"HTTP/1\.[01] 1(?!01)[0-9][0-9]")  # 1xx but 101


class _ConnectAnswer(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT, up to the end of its head (after any 1xx
    answers; ``MAX_CONNECT_HEAD`` bytes in all), then stops reading: whatever the proxy
    sends next stays in the socket for TLS to read (and fail on), never dropped here nor
    seen by the idle connection before ``start_tls`` takes the transport."""

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport) -> None:
        self.buf = bytearray()
        self.done: asyncio.Future[bytes] = loop.create_future()
        self._transport = transport
        self._read = 0  # with the 1xx answers skipped before the final one

    def data_received(self, data: bytes) -> None:
        if self.done.done():  # read before the pause took effect: spoils the tunnel
            self.buf += data
            return
        start = max(len(self.buf) - 3, 0)  # a trickled head is scanned once, not again
        self.buf += data
        self._read += len(data)
        end = self.buf.find(b"\r\n\r\n", start)
        skip = 0
        while end >= 0 and _INFORMATIONAL.match(self.buf, skip):  # as aiohttp skips them
            skip = end + 4
            end = self.buf.find(b"\r\n\r\n", skip)
        if skip:
            del self.buf[:skip]
        if end >= 0:
            self._transport.pause_reading()
            self.done.set_result(bytes(self.buf))
        elif self._read > MAX_CONNECT_HEAD:
            self._fail(
                ConnectionFailure(
                    "bad_response",
                    f"the proxy's answer to CONNECT is over {MAX_CONNECT_HEAD} bytes",
                )
            )

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionFailure("disconnected", "the proxy closed the connection"))

    def _fail(self, failure: ConnectionFailure) -> None:
        if not self.done.done():
            self.done.set_exception(failure)
            self.done.exception()


class _Answer:
    """httptools callbacks for one response head."""

    def __init__(self) -> None:
        self.reason = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_status(self, status: bytes) -> None:
        self.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= _LIMITS.headers or len(name) + len(value) > _LIMITS.field:
            raise ValueError("the proxy's answer breaks the head limits")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


def _parse_answer(head: bytes) -> tuple[int, _Answer]:
    answer = _Answer()
    parser = httptools.HttpResponseParser(answer)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass
    except (httptools.HttpParserError, ValueError) as exc:
        raise ConnectionFailure("bad_response", f"invalid answer to CONNECT: {exc}") from None
    if not answer.complete:
        raise ConnectionFailure("bad_response", "invalid answer to CONNECT")
    return parser.get_status_code(), answer


def _connect_head(proxy: Proxy, host: str, port: int) -> bytes:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in proxy.head_headers)
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


async def _until(fut: asyncio.Future[Any], deadline: float | None, loop: Any) -> None:
    """Wait for ``fut`` until ``deadline`` (TimeoutError after it); a cancel leaves
    ``fut`` to its owner."""
    timeout = None if deadline is None else max(deadline - loop.time(), 0.0)
    done, _ = await asyncio.wait((fut,), timeout=timeout)
    if not done:
        raise TimeoutError


async def _tunnel(
    dialer: Dialer,
    conn: HTTP1Connection,
    proxy: Proxy,
    key: tuple[Any, ...],
    timeout: ClientTimeout,
    deadline: float | None,
    ctx: ssl_mod.SSLContext,
    server_hostname: str,
) -> HTTP1Connection:
    host, port = key[1], key[2]
    loop = dialer._loop
    transport = conn.transport
    assert transport is not None
    reader = _ConnectAnswer(loop, transport)
    transport.set_protocol(reader)
    try:
        transport.write(_connect_head(proxy, host, port))
        try:
            await _until(reader.done, deadline, loop)
        except TimeoutError:
            raise connect_timeout(key) from None
        got = reader.done.result()
        status, answer = _parse_answer(got)
        if status == 200 and not reader.buf.endswith(b"\r\n\r\n"):
            # TLS is ours to begin: a proxy that sent more has spoiled the tunnel
            raise ConnectionFailure("bad_response", "bytes after the proxy's answer to CONNECT")
        if status != 200:
            raise ConnectionFailure(
                "proxy_status",
                answer.reason,
                status=status,
                headers=answer.headers,
                url=f"https://{host}:{port}",
            )
    finally:
        transport.set_protocol(conn)  # closing it now tells conn, as usual
    handshake = loop.create_task(
        loop.start_tls(
            transport, conn, ctx, server_hostname=server_hostname, **dialer.tls_kwargs()
        )
    )
    if timeout.sock_connect:  # as aiohttp's _start_tls_connection
        ends = loop.time() + timeout.sock_connect
        deadline = ends if deadline is None else min(deadline, ends)
    try:
        await _until(handshake, deadline, loop)
    except BaseException as exc:
        handshake.cancel()
        handshake.add_done_callback(_close_late)
        if isinstance(exc, TimeoutError):
            raise connect_timeout(key) from None
        raise
    error = handshake.exception()
    if error is not None:
        raise _handshake_failure(error, host, port) from None
    tls_transport = handshake.result()
    assert tls_transport is not None
    conn.transport = tls_transport
    return conn


def _tls_in_tls(loop: asyncio.AbstractEventLoop) -> bool:
    return sys.version_info >= (3, 11) or type(loop).__module__.startswith("uvloop")


def _close_late(task: asyncio.Task[Any]) -> None:
    """A handshake that finished after we gave up on it: close what it made."""
    if not task.cancelled() and task.exception() is None:
        task.result().abort()


def _handshake_failure(exc: BaseException, host: str, port: int) -> ConnectionFailure:
    fields: dict[str, Any] = {"host": host, "port": port, "ssl": True}
    if isinstance(exc, ssl_mod.SSLError):
        return tls_failure(exc, fields)
    if isinstance(exc, OSError):
        return ConnectionFailure("connect", str(exc), errno=exc.errno or 0, **fields)
    return ConnectionFailure("connection", f"TLS through the proxy failed: {exc}")
