"""Shared by the WebSocket tests (``test_websocket.py``, ``test_websocket_limits.py``).

- ``accept_key(key)``: the ``Sec-WebSocket-Accept`` a server answers to ``key``
  (RFC 6455), for raw servers that answer handshakes by hand.
- ``CountingRelay``: a loopback TCP relay that counts the bytes it carries each way
  (what went on the wire, e.g. with and without compression).
- ``open_websockets``, ``open_then_die``: entry points of spawned worker processes
  (importable under spawn) that open WebSockets through a broker.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


class CountingRelay:
    """``port = await relay.start(target_port)``: connections to ``port`` are relayed to
    ``target_port``; ``up`` counts the bytes clients sent, ``down`` those they got."""

    def __init__(self) -> None:
        self.up = 0
        self.down = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self, target_port: int) -> int:
        async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
            origin_r, origin_w = await asyncio.open_connection("127.0.0.1", target_port)
            self._writers += [client_w, origin_w]
            await asyncio.gather(
                self._pipe(client_r, origin_w, "up"),
                self._pipe(origin_r, client_w, "down"),
                return_exceptions=True,
            )

        self._server = await asyncio.start_server(relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str
    ) -> None:
        try:
            while data := await reader.read(65536):
                setattr(self, way, getattr(self, way) + len(data))
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        for w in self._writers:
            w.close()
        await asyncio.gather(*(w.wait_closed() for w in self._writers), return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _open_websockets(broker: str, url: str, n: int, connector_kw: dict) -> list[str]:
    from worker_client import ClientSession, TCPConnector

    connector = TCPConnector(**connector_kw)
    async with ClientSession(broker=broker, connector=connector) as session:

        async def one(i: int) -> str:
            async with session.ws_connect(url) as ws:  # type: ignore[attr-defined]
                await ws.send_str(f"{os.getpid()}/{i}")
                return str(await ws.receive_str())

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def open_websockets(broker: str, url: str, n: int, connector_kw: dict) -> list[str]:
    """Entry point for a spawned worker: ``n`` WebSockets opened at once, each sends
    ``pid/i`` and returns what the server echoed."""
    return asyncio.run(_open_websockets(broker, url, n, connector_kw))


async def _open_then_die(broker: str, url: str) -> None:
    import signal

    from worker_client import ClientSession

    session = ClientSession(broker=broker)
    ws = await session.ws_connect(url)  # type: ignore[attr-defined]
    await ws.send_str("hello")
    await ws.receive_str()
    os.kill(os.getpid(), signal.SIGKILL)


def open_then_die(broker: str, url: str) -> None:
    """Entry point for a spawned worker: open a WebSocket through ``broker``, send
    "hello", read the answer, then die by SIGKILL with the WebSocket open."""
    asyncio.run(_open_then_die(broker, url))
