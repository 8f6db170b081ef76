"""Small aiohttp.web apps and raw-socket helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

# A host name that can never resolve and makes no DNS traffic: glibc refuses a name longer
# than 253 characters before sending any query (``nonexistent.invalid`` would still be
# asked of the configured nameserver).
UNRESOLVABLE_HOST = ".".join(["a" * 60] * 5) + ".invalid"


def peer_port(request: web.Request) -> int:
    assert request.transport is not None
    return int(request.transport.get_extra_info("peername")[1])


def counting_app() -> tuple[web.Application, list[int]]:
    """An app whose middleware records the client port of every request it serves."""
    ports: list[int] = []

    @web.middleware
    async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
        ports.append(peer_port(request))
        return await handler(request)

    return web.Application(middlewares=[count]), ports


def text_app(text: str = "ok", app: web.Application | None = None) -> web.Application:
    """``app`` (a new one by default) answering ``GET /`` with ``text``."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=text)

    app = web.Application() if app is None else app
    app.router.add_get("/", answer)
    return app


async def echo(request: web.Request) -> web.Response:
    """What the server received, as JSON."""
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query_string": request.query_string,
            "query": list(request.query.items()),
            "headers": list(request.headers.items()),
            "body": body.decode("latin-1"),
            "port": peer_port(request),
        }
    )


def echo_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def header(echoed: dict, name: str) -> str | None:
    """The first value of request header ``name`` in an echo reply (case-insensitive)."""
    values = headers_named(echoed, name)
    return values[0] if values else None


def headers_named(echoed: dict, name: str) -> list[str]:
    return [v for k, v in echoed["headers"] if k.lower() == name.lower()]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """Read the request body that follows ``head`` (Content-Length or chunked)."""
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if "content-length" in fields:
        return await reader.readexactly(int(fields["content-length"]))
    if fields.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    return b""


class Answering:
    """A raw handler that answers every request with an empty 200 on a kept-alive
    connection, and records what came: ``connections`` accepted, ``heads`` read.

    A test that must show that nothing was sent makes a good request afterwards: what
    was sent before it arrives before it."""

    def __init__(self) -> None:
        self.connections = 0
        self.heads: list[bytes] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while True:
            self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
