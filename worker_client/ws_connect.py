"""``ClientSession.ws_connect``: aiohttp 3.14's, over an upgrade request to the engine.

The upgrade is an ordinary request of the session (its pool and limits, DNS, proxy,
TLS, cookies and redirects, in the broker or embedded; its middlewares, as aiohttp's
``session.request`` runs them) with ``Request.upgrade`` set and
an ``Outgoing`` as its streamed body. The handshake is ours: the key is drawn here and
the 101 checked here with aiohttp's messages (``WSServerHandshakeError``). After the 101
the stream is a byte tunnel to the origin, and a ``StreamChannel`` runs the codec on it
(``worker_client.ws_channel``). The open WebSocket holds its connection, so it counts
against ``limit`` and ``limit_per_host`` until it closes, as in aiohttp.

Timeouts: the session's (or the request's) ``ClientTimeout`` bounds the handshake; once
the 101 is in, its ``total`` no longer runs (aiohttp's does not cover a WebSocket's
life either) and the WebSocket's own ``ClientWSTimeout`` and heartbeat take over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import warnings
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict
from yarl import URL

from shared.websocket import WSHandshakeError, check_response, make_key, request_headers

from .exceptions import RequestInfo, WSServerHandshakeError
from .proxies import WS_SCHEMES as _HTTP_FOR
from .session import AwaitableContext
from .websocket import DEFAULT_WS_CLIENT_TIMEOUT, ClientWebSocketResponse, ClientWSTimeout
from .ws_channel import CodecOptions, Outgoing, SocketChannel, StreamChannel

if TYPE_CHECKING:
    from .session import ClientSession

__all__ = ["WSRequestContextManager", "ws_connect"]

# Set by us whatever the caller passed: the rest of aiohttp's handshake headers are
# defaults the caller may override.
_ALWAYS = frozenset(("Sec-WebSocket-Key", "Sec-WebSocket-Protocol", "Origin",
                     "Sec-WebSocket-Extensions"))
_SENTINEL: Any = object()


async def ws_connect(
    session: ClientSession,
    url: Any,
    *,
    method: str = "GET",
    protocols: Iterable[str] = (),
    timeout: Any = _SENTINEL,
    receive_timeout: float | None = None,
    autoclose: bool = True,
    autoping: bool = True,
    heartbeat: float | None = None,
    auth: Any = None,
    origin: str | None = None,
    params: Any = None,
    headers: Any = None,
    proxy: Any = None,
    proxy_auth: Any = None,
    ssl: Any = True,
    verify_ssl: bool | None = None,
    fingerprint: bytes | None = None,
    ssl_context: Any = None,
    server_hostname: str | None = None,
    proxy_headers: Any = None,
    compress: int = 0,
    max_msg_size: int = 4 * 1024 * 1024,
    decode_text: bool = True,
) -> ClientWebSocketResponse[Any]:
    ws_timeout = _ws_timeout(timeout, receive_timeout)
    if ssl is None:
        warnings.warn("ssl=None is deprecated, please use ssl=True", DeprecationWarning,
                      stacklevel=3)
        ssl = True
    protocols = tuple(protocols)
    key = make_key()
    real: CIMultiDict[str] = CIMultiDict(headers) if headers is not None else CIMultiDict()
    for name, value in request_headers(
        key, protocols=protocols, origin=origin, compress=compress
    ).items():
        if name in _ALWAYS:
            real[name] = value
        else:
            real.setdefault(name, value)
    outgoing = Outgoing()
    resp = await session._request(
        method,
        _http_url(url),
        params=params,
        headers=real,
        read_until_eof=False,
        auth=auth,
        proxy=proxy,
        proxy_auth=proxy_auth,
        ssl=ssl,
        verify_ssl=verify_ssl,
        fingerprint=fingerprint,
        ssl_context=ssl_context,
        server_hostname=server_hostname,
        proxy_headers=proxy_headers,
        _upgrade=outgoing,
    )
    handle = outgoing.handle
    try:
        try:
            agreed = check_response(
                resp.status, resp.headers, key=key, protocols=protocols, compress=compress
            )
        except WSHandshakeError as exc:
            raise WSServerHandshakeError(
                _as_asked(resp.request_info, url),
                resp.history,
                message=exc.args[0],
                status=resp.status,
                headers=resp.headers,
            ) from exc
        assert handle is not None
        handle.clear_deadline()
        head = handle.head.result()
        options = CodecOptions(
            max_msg_size=max_msg_size,
            compress=agreed.compress,
            notakeover=agreed.notakeover,
            decode_text=decode_text,
        )
        channel: StreamChannel | SocketChannel
        if head.handover:  # the upgraded connection is ours: the codec on it directly
            got, early = await handle.transport.claim(head.handover)
            if isinstance(got, socket.socket):  # from the broker, over SCM_RIGHTS
                owned = SocketChannel(lambda exc: resp.close(), **options)
                try:
                    await asyncio.get_running_loop().create_connection(lambda: owned, sock=got)
                except BaseException:
                    got.close()
                    raise
                channel = owned
            else:  # embedded: the engine's own transport, with reading paused
                lost = got.lost

                def gone(exc: BaseException | None) -> None:
                    lost(exc)  # the engine's connection learns: the pool counts it out
                    resp.close()

                channel = SocketChannel(gone, **options)
                got.transport.set_protocol(channel)
                channel.connection_made(got.transport)
                got.transport.resume_reading()
            handle.content = channel  # type: ignore[assignment]
        else:  # the broker relays the bytes
            channel = StreamChannel(handle, outgoing, resp.close, extra={}, **options)
            # What came with the head went to the stream's first reader (and was
            # acknowledged): the channel parses it first.
            early = resp.content.read_nowait()
            eof = resp.content.is_eof()
            handle.content = channel  # type: ignore[assignment]
    except BaseException:
        outgoing.end()
        resp.close()
        raise
    ws: ClientWebSocketResponse[Any] = ClientWebSocketResponse(
        channel,
        agreed.protocol,
        ws_timeout,
        autoclose,
        autoping,
        heartbeat=heartbeat,
        compress=agreed.compress,
        client_notakeover=agreed.notakeover,
    )
    if early:
        channel.feed_early(early)
    if isinstance(channel, StreamChannel) and eof:  # the tunnel ended before the swap
        channel.feed_eof()
    return ws


def _as_asked(info: RequestInfo, url: Any) -> RequestInfo:
    """``info`` with the ws:// or wss:// scheme the caller asked for (aiohttp's request
    keeps it), where the upgrade went as http:// or https://."""
    scheme = URL(url).scheme if isinstance(url, (str, URL)) else ""
    if scheme not in _HTTP_FOR:
        return info
    return RequestInfo(
        info.url.with_scheme(scheme), info.method, info.headers,
        info.real_url.with_scheme(scheme),
    )


def _http_url(url: Any) -> Any:
    """A ws:// or wss:// URL as the http:// or https:// one the upgrade request goes to
    (aiohttp's connector treats them alike); any other URL as it is."""
    if isinstance(url, str):
        scheme, sep, rest = url.partition("://")
        lowered = scheme.lower()
        if sep and lowered in _HTTP_FOR:
            return _HTTP_FOR[lowered] + sep + rest
        return url
    if isinstance(url, URL) and url.scheme in _HTTP_FOR:
        return url.with_scheme(_HTTP_FOR[url.scheme])
    return url




def _ws_timeout(timeout: Any, receive_timeout: float | None) -> ClientWSTimeout:
    """aiohttp's reading of ``timeout=`` (a ``ClientWSTimeout``, or a deprecated float
    for ``ws_close``) and of the deprecated ``receive_timeout=``."""
    if timeout is _SENTINEL:
        ws_timeout = DEFAULT_WS_CLIENT_TIMEOUT
    elif isinstance(timeout, ClientWSTimeout):
        ws_timeout = timeout
    else:
        warnings.warn(
            "parameter 'timeout' of type 'float' is deprecated, please use "
            "'timeout=ClientWSTimeout(ws_close=...)'",
            DeprecationWarning,
            stacklevel=4,
        )
        ws_timeout = ClientWSTimeout(ws_close=timeout)
    if receive_timeout is not None:
        warnings.warn(
            "float parameter 'receive_timeout' is deprecated, please use parameter "
            "'timeout=ClientWSTimeout(ws_receive=...)'",
            DeprecationWarning,
            stacklevel=4,
        )
        ws_timeout = dataclasses.replace(ws_timeout, ws_receive=receive_timeout)
    return ws_timeout


class WSRequestContextManager(AwaitableContext[ClientWebSocketResponse[Any]]):
    """What ``ws_connect`` returns: awaitable, and an async context manager that closes
    the WebSocket at its end (aiohttp's ``_WSRequestContextManager``)."""

    __slots__ = ()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._resp is not None
        await self._resp.close()
