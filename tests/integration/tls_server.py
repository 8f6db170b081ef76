"""An https app for the TLS tests that records what the server side of each connection
saw: the handshakes (ClientHellos), SNI, the connection each request came on, ALPN,
the TLS version and cipher, the client certificate.

A handshake is counted by the server context's ``sni_callback``, which OpenSSL calls
for every ClientHello (with ``None`` when the client sent no SNI, as for an IP address),
so a handshake that fails later is counted too. Connections are told apart by their
``RequestHandler`` (one per accepted connection), kept alive here so no two compare
equal.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.tls_certs import server_context


@dataclass
class Seen:
    sni: list[str | None] = field(default_factory=list)  # one per ClientHello
    connections: list[Any] = field(default_factory=list)  # by first request
    requests: list[int] = field(default_factory=list)  # each request's connection index
    alpn: list[str | None] = field(default_factory=list)
    versions: list[str | None] = field(default_factory=list)
    ciphers: list[str] = field(default_factory=list)
    client_cns: list[str | None] = field(default_factory=list)

    @property
    def handshakes(self) -> int:
        return len(self.sni)


def _client_cn(ssl_object: ssl.SSLObject) -> str | None:
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    subject: Any = cert["subject"]  # ((("commonName", "..."),), ...)
    names = {key: value for rdn in subject for key, value in rdn}
    return names.get("commonName")


def recording_context(
    cert: Path, key: Path, seen: Seen, *, client_ca: Path | None = None
) -> ssl.SSLContext:
    """``tests.tls_certs.server_context`` that counts handshakes into ``seen``; offers
    ALPN ``http/1.1``."""
    ctx = server_context(cert, key, client_ca=client_ca)
    ctx.set_alpn_protocols(["http/1.1"])

    def hello(ssl_object: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        seen.sni.append(name)

    ctx.sni_callback = hello
    return ctx


def recording_app(seen: Seen) -> web.Application:
    """``GET /`` answers "ok" and records the request's connection into ``seen``."""

    async def answer(request: web.Request) -> web.Response:
        assert request.transport is not None
        ssl_object = request.transport.get_extra_info("ssl_object")
        if request.protocol not in seen.connections:
            seen.connections.append(request.protocol)
        seen.requests.append(seen.connections.index(request.protocol))
        seen.alpn.append(ssl_object.selected_alpn_protocol())
        seen.versions.append(ssl_object.version())
        seen.ciphers.append(ssl_object.cipher()[0])
        seen.client_cns.append(_client_cn(ssl_object))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", answer)
    return app
