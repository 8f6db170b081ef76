"""Opening a pool's connections: resolve, happy eyeballs, TLS, Unix sockets.

A connection's key (``ConnKey``) is what a request must match to reuse it: scheme, host,
port, and for an https hop the TLS choice (``TlsKey``: the request's tls id, pinned
fingerprint and server_hostname; ``NO_TLS`` for plain http and for the default, so those
keys cost no object per request), then the proxy (b"": direct). The TLS context comes
from the engine's ``broker.tls.TlsContexts`` by tls id, made on the first dial that
needs it; a pinned fingerprint is checked after the handshake.

A ``Dialer`` belongs to one pool (its spec and resolver). ``dial`` resolves the host
through the pool's cached resolver (a lookup is shared: a caller that gives up waits no
more but never cancels it), then runs the connection attempts as tasks, staggered by
``happy_eyeballs_delay`` with address families interleaved (RFC 8305), each bounded by
``sock_connect`` and all of them by the request's connect deadline. The first to
connect wins; an attempt nobody waits for any more is cancelled, or closed if it
connected all the same (``closing`` holds those until they are). Nothing here uses
``asyncio.wait_for``, which on Python 3.11 and older loses a cancel that meets a result.

A traced request's lookup is reported as aiohttp's ``_resolve_host`` reports it
(``DNS_TRACE``): nothing for an IP literal; with the cache, a hit (or joining a lookup
in flight) is ``dns_cache_hit``, a new lookup ``dns_cache_miss`` then
``dns_resolvehost_start``, and ``dns_resolvehost_end`` once it succeeded; without the
cache, ``dns_resolvehost_start`` and ``_end``.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import socket
import ssl as ssl_mod
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from shared.messages import TraceEvent
from shared.rules import sni_name_ok
from shared.specs import ClientTimeout, PoolSpec, TlsSpec

from .failures import ConnectionFailure
from .http1 import HTTP1Connection
from .resolver import CachedResolver, ResolvedAddress
from .stream import BrokerStream
from .tls import TlsContexts, TlsError

__all__ = ["ConnKey", "Dialer", "NO_TLS", "TlsKey", "connect_timeout"]

TlsKey = tuple[bytes, bytes, str]  # an https hop's tls id, fingerprint, server_hostname
NO_TLS: TlsKey = (b"", b"", "")
ConnKey = tuple[str, str, int, TlsKey, bytes]  # scheme, host, port, tls, proxy (b"": direct)
_Connected = tuple[asyncio.BaseTransport, HTTP1Connection]  # what create_connection returns
_HAS_SSL_SHUTDOWN_TIMEOUT = sys.version_info >= (3, 11)

# How a lookup went (``CachedResolver.traced_lookup``) -> the trace events before it
# is awaited, and after it succeeded.
DNS_TRACE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "literal": ((), ()),
    "hit": (("dns_cache_hit",), ()),
    "joined": (("dns_cache_hit",), ()),
    "miss": (("dns_cache_miss", "dns_resolvehost_start"), ("dns_resolvehost_end",)),
    "uncached": (("dns_resolvehost_start",), ("dns_resolvehost_end",)),
}


def connect_timeout(key: ConnKey) -> ConnectionFailure:
    return ConnectionFailure(
        "connect_timeout", f"Connection timeout to host {key[0]}://{key[1]}:{key[2]}"
    )


class Dialer:
    """Opens the connections of one pool."""

    def __init__(
        self,
        spec: PoolSpec,
        loop: asyncio.AbstractEventLoop,
        resolver: CachedResolver,
        connection_class: Callable[[asyncio.AbstractEventLoop], HTTP1Connection],
        tls: TlsContexts | None = None,
    ) -> None:
        self.spec = spec
        self._loop = loop
        self._resolver = resolver
        self._connection_class = connection_class
        self._tls = tls if tls is not None else TlsContexts()
        self.attempts: set[asyncio.Task[_Connected]] = set()  # connects in flight
        self._abandoned: set[asyncio.Task[_Connected]] = set()  # ... nobody waits for
        self.closing: set[HTTP1Connection] = set()  # abandoned, connected, being closed

    def abandon_all(self) -> list[asyncio.Task[_Connected]]:
        """Cancel every attempt in flight (the pool is closing); the attempts, to await."""
        attempts = list(self.attempts)
        for task in attempts:
            self._abandon(task)
        return attempts

    def _remaining(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return max(deadline - self._loop.time(), 0.0)

    async def dial(
        self,
        key: ConnKey,
        timeout: ClientTimeout,
        deadline: float | None,
        tls: TlsSpec | None = None,
        trace: BrokerStream | None = None,
    ) -> HTTP1Connection:
        """A new connection for ``key``; ``tls``: the spec its tls id names, if any;
        ``trace``: a traced request's stream, told of the lookup."""
        scheme, host, port = key[0], key[1], key[2]
        is_ssl = scheme in ("https", "wss")
        fields: dict[str, Any] = {"host": host, "port": port, "ssl": is_ssl}
        loop = self._loop
        factory = functools.partial(self._connection_class, loop)
        ssl_ctx, server_hostname = self.tls_for(key, tls, fields) if is_ssl else (None, None)
        extra = self.tls_kwargs() if is_ssl else {}
        starts: list[Callable[[], Coroutine[Any, Any, _Connected]]]
        if self.spec.kind == "unix":
            path = self.spec.path
            assert path is not None
            starts = [
                functools.partial(
                    loop.create_unix_connection,
                    factory,
                    path,
                    ssl=ssl_ctx,
                    server_hostname=server_hostname,
                    **extra,
                )
            ]
            delay, code, fields["url"] = None, "unix_connect", path
        else:
            starts = await self.starts_to(
                host, port, key, deadline, fields, ssl_ctx, server_hostname, extra, trace
            )
            delay, code = self.spec.happy_eyeballs_delay, "connect"
        conn = await self.connect_first(starts, delay, timeout, deadline, key, fields, code)
        if is_ssl and key[3][1]:
            self.check_fingerprint(conn, key[3][1], host, port)
        return conn

    async def starts_to(
        self,
        host: str,
        port: int,
        key: Any,
        deadline: float | None,
        fields: dict[str, Any],
        ssl_ctx: ssl_mod.SSLContext | None,
        server_hostname: str | None,
        extra: dict[str, Any],
        trace: BrokerStream | None = None,
    ) -> list[Callable[[], Coroutine[Any, Any, _Connected]]]:
        """The connection attempts to ``host``'s addresses (families interleaved, RFC
        8305), for ``first_connected``; a failed lookup is ``dns`` with ``fields``."""
        try:
            addrs = await self._resolve(host, port, deadline, trace)
        except TimeoutError:
            raise connect_timeout(key) from None
        except OSError as exc:
            raise ConnectionFailure(
                "dns", exc.strerror or str(exc), errno=exc.errno or 0, **fields
            ) from None
        loop = self._loop
        factory = functools.partial(self._connection_class, loop)
        return [
            functools.partial(
                loop.create_connection,
                factory,
                addr.host,
                addr.port,
                family=addr.family,
                ssl=ssl_ctx,
                server_hostname=server_hostname,
                local_addr=self.spec.local_addr,
                **extra,
            )
            for addr in _interleave(addrs)
        ]

    async def connect_first(
        self,
        starts: Sequence[Callable[[], Coroutine[Any, Any, _Connected]]],
        delay: float | None,
        timeout: ClientTimeout,
        deadline: float | None,
        key: Any,
        fields: dict[str, Any],
        code: str,
    ) -> HTTP1Connection:
        """``first_connected``, its failures as the request's: a TLS one as aiohttp's,
        any other OS error as ``code`` with ``fields``."""
        try:
            return await self.first_connected(starts, delay, timeout.sock_connect, deadline)
        except TimeoutError:
            raise connect_timeout(key) from None
        except ssl_mod.SSLError as exc:
            raise tls_failure(exc, fields) from None
        except OSError as exc:
            raise ConnectionFailure(
                code, exc.strerror or str(exc), errno=exc.errno or 0, **fields
            ) from None

    # -- TLS (kept apart: the proxy's tunnel adds its own steps beside these) ----------

    def tls_for(
        self, key: Any, tls: TlsSpec | None, fields: dict[str, Any]
    ) -> tuple[ssl_mod.SSLContext, str]:
        """The context and the SNI name of an https hop (aiohttp strips trailing dots:
        certificates name hosts without them)."""
        tls_id, _, server_hostname = key[3]
        name = (server_hostname or key[1]).rstrip(".")
        if not sni_name_ok(name):  # a raw worker's: the ssl module would raise it
            raise ConnectionFailure(
                "ssl", f"server_hostname {name!r} is not a host name (SNI)", **fields
            )
        try:
            ctx = self._tls.context(tls_id, tls)
        except TlsError as exc:
            raise ConnectionFailure("ssl", str(exc), **fields) from None
        return ctx, name

    def tls_kwargs(self) -> dict[str, Any]:
        """aiohttp 3.14: a grace for the TLS close_notify, on Python 3.11+, when set."""
        timeout = self.spec.ssl_shutdown_timeout
        if timeout and _HAS_SSL_SHUTDOWN_TIMEOUT:
            return {"ssl_shutdown_timeout": timeout}
        return {}

    def check_fingerprint(
        self, conn: HTTP1Connection, expected: bytes, host: str = "", port: int = 0
    ) -> None:
        """aiohttp's ``Fingerprint.check``: the SHA-256 of the peer's DER certificate;
        a mismatch closes the connection. Its ``host``/``port`` are the peer's address,
        or the ones given where the peer has none (a Unix socket's is its path)."""
        transport = conn.transport
        assert transport is not None
        sslobj = transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        got = hashlib.sha256(der or b"").digest()
        if got == expected:
            return
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            host, port = str(peer[0]), int(peer[1])
        self._close_conn(conn)
        raise ConnectionFailure(
            "fingerprint",
            "the server's certificate does not have the pinned SHA-256 fingerprint",
            expected=expected, got=got, host=host, port=port,
        )

    async def _resolve(
        self, host: str, port: int, deadline: float | None, trace: BrokerStream | None = None
    ) -> list[ResolvedAddress]:
        if trace is not None:
            return await self._resolve_traced(host, port, deadline, trace)
        got = self._resolver.lookup(host, port, self.spec.family)
        if isinstance(got, list):
            return got
        return await self._lookup_done(got, host, deadline)

    async def _resolve_traced(
        self, host: str, port: int, deadline: float | None, trace: BrokerStream
    ) -> list[ResolvedAddress]:
        got, how = self._resolver.traced_lookup(host, port, self.spec.family)
        before, after = DNS_TRACE[how]
        for kind in before:
            trace.trace(TraceEvent(trace.id, kind, host=host, port=port))
        addrs = got if isinstance(got, list) else await self._lookup_done(got, host, deadline)
        for kind in after:
            trace.trace(TraceEvent(trace.id, kind, host=host, port=port))
        return addrs

    async def _lookup_done(
        self, got: asyncio.Task[list[ResolvedAddress]], host: str, deadline: float | None
    ) -> list[ResolvedAddress]:
        # The lookup is shared: wait for it, never cancel it.
        done, _ = await asyncio.wait((got,), timeout=self._remaining(deadline))
        if not done:
            raise TimeoutError(f"DNS lookup of {host} timed out")
        if got.cancelled():  # the resolver closed before the lookup began
            raise socket.gaierror(socket.EAI_AGAIN, "the resolver was closed")
        return got.result()

    async def first_connected(
        self,
        starts: Sequence[Callable[[], Coroutine[Any, Any, _Connected]]],
        delay: float | None,
        step: float | None,
        deadline: float | None,
    ) -> HTTP1Connection:
        """Happy eyeballs (RFC 8305): start the attempts ``delay`` seconds apart, or the
        next one when one fails (one at a time if ``delay`` is None), each for at most
        ``step`` seconds and all of them until ``deadline``. The first to connect wins;
        the others are cancelled, or closed if they connected too. Raises the last
        error, TimeoutError when time ran out."""
        if not starts:
            raise OSError("no addresses to connect to")
        loop = self._loop
        todo = collections.deque(starts)
        running: dict[asyncio.Task[_Connected], float | None] = {}  # attempt -> deadline
        last: BaseException | None = None
        next_start = 0.0
        try:
            while todo or running:
                now = loop.time()
                if deadline is not None and now >= deadline:
                    raise TimeoutError("connect timeout")
                while todo and (not running or (delay is not None and now >= next_start)):
                    task = self._attempt(todo.popleft()())
                    running[task] = _earliest(deadline, now + step if step else None)
                    next_start = now + (delay or 0.0)
                wake = _earliest(*running.values(), next_start if todo and delay else None)
                await asyncio.wait(
                    running,
                    timeout=None if wake is None else max(wake - now, 0.0),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                now = loop.time()
                for task, until in list(running.items()):
                    if task.done():
                        del running[task]
                        if task.cancelled():
                            raise ConnectionFailure("connection", "the connection pool was closed")
                        error = task.exception()
                        if error is None:
                            return task.result()[1]
                        last = error
                    elif until is not None and now >= until:
                        del running[task]
                        self._abandon(task)
                        last = TimeoutError("connect timeout")
        finally:
            for task in running:
                self._abandon(task)
        assert last is not None
        raise last

    def _attempt(self, connect: Coroutine[Any, Any, _Connected]) -> asyncio.Task[_Connected]:
        task = self._loop.create_task(connect)
        self.attempts.add(task)
        task.add_done_callback(self._attempt_over)
        return task

    def _attempt_over(self, task: asyncio.Task[_Connected]) -> None:
        self.attempts.discard(task)
        if task in self._abandoned:
            self._abandoned.discard(task)
            self._close_connected(task)

    def _abandon(self, task: asyncio.Task[_Connected]) -> None:
        """Nobody waits for this attempt any more: cancel it, or close what it made."""
        if task.done():
            self._close_connected(task)
        else:
            self._abandoned.add(task)
            task.cancel()

    def _close_connected(self, task: asyncio.Task[_Connected]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        self._close_conn(task.result()[1])

    def _close_conn(self, conn: HTTP1Connection) -> None:
        """Close a connection nobody will use; ``closing`` holds it until it is. A TLS
        one is aborted unless the pool gives its close_notify a grace
        (``ssl_shutdown_timeout``, 0 by default: aiohttp 3.14 aborts too)."""
        if conn not in self.closing:
            self.closing.add(conn)
            conn.on_idle_lost = self.closing.discard
            if self.spec.ssl_shutdown_timeout:
                conn.close()
            else:
                conn.abort()


def tls_failure(exc: ssl_mod.SSLError, fields: dict[str, Any]) -> ConnectionFailure:
    """aiohttp's ``_wrap_create_connection``: a failed verification is ``certificate``
    (OpenSSL's verify message and code), any other TLS error ``ssl``."""
    if isinstance(exc, ssl_mod.SSLCertVerificationError):
        return ConnectionFailure(
            "certificate",
            exc.verify_message or str(exc),
            verify_code=exc.verify_code or 0,
            **fields,
        )
    return ConnectionFailure("ssl", str(exc), errno=exc.errno or 0, **fields)


def _interleave(addrs: list[ResolvedAddress]) -> list[ResolvedAddress]:
    """Alternate address families, the first one first (RFC 8305's interleaving)."""
    by_family: dict[int, list[ResolvedAddress]] = {}
    for a in addrs:
        by_family.setdefault(a.family, []).append(a)
    groups = list(by_family.values())
    out: list[ResolvedAddress] = []
    for i in range(max(map(len, groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def _earliest(*times: float | None) -> float | None:
    return min((t for t in times if t is not None), default=None)
