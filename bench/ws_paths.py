"""Issue 14's choice, measured: relay WebSocket frames through the broker, or hand the
upgraded socket to the worker over SCM_RIGHTS.

Three ways talk to the same aiohttp.web echo WebSocket server (its own process), from
this process (the "worker", asyncio's default loop, as an application's would be):

* ``aiohttp``: aiohttp's ``ClientSession.ws_connect``, the peer we are compared with.
* ``handover``: a "broker" process (uvloop when installed, as the real broker) opens the
  TCP connection and does the upgrade itself (``shared.websocket.request_headers``,
  ``make_key``, ``check_response``; a minimal raw HTTP/1.1 request and 101 parse), then
  passes the socket to the worker over a Unix socket with ``socket.send_fds``, keeping
  its duplicate fd open until the worker's control connection closes (as the design
  would: to count it against the pool's limits, and to close with 1001 if the worker
  dies). The worker adopts the socket (``loop.create_connection(sock=...)``) and speaks
  frames itself with our codec (``WebSocketWriter``, masked; ``WebSocketReader``) on an
  asyncio Protocol.
* ``relay``: the same broker does the upgrade, then relays: it reads the origin's bytes
  with ``WebSocketReader`` (``decode_text=False``: text stays bytes), sends each message
  to the worker as a msgspec frame (``shared.framing.encode``, ``WsMessage`` defined
  here) on the Unix socket, and writes each ``WsMessage`` from the worker to the origin
  as a masked frame with ``WebSocketWriter``. The worker speaks only frames
  (``shared.framing.FrameReader``, its decoder swapped for ``WsMessage``'s) and decodes
  text as aiohttp's client does.

Measured per way and round: the round trip of one 16-byte text message (send, then
receive the echo) ``--messages`` times in a row (median), the throughput of
``--messages`` messages with 32 in flight, and the echo of a 1 MiB text message
(``--big`` times, median: the relay copies it through two more buffers and one more
process). Connecting is not timed. ``--rounds`` rounds, the ways in alternating order;
the table gives medians over rounds and each way's ratio to aiohttp. Loopback only.

What the two candidates leave out (so both are lower bounds on what the real ones cost):
no flow control (no pausing on a full buffer, no credit between worker and broker), no
pool bookkeeping, no ping/pong or close handshake handling beyond what the bench needs,
no compression, one WebSocket per control connection (the real relay multiplexes streams
over the worker's one broker connection, beside its HTTP traffic). The worker side of
both is a minimal Protocol, not a ``ClientWebSocketResponse``. Each way is measured alone:
the relay's broker serves nothing else, so its cost shows as latency and throughput of
one connection, not as CPU taken from other workers.

    python3 bench/ws_paths.py [--rounds 11] [--messages 5000] [--big 10]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Protocol

import msgspec

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shared.framing import FrameReader, encode  # noqa: E402
from shared.websocket import (  # noqa: E402
    WebSocketReader,
    WebSocketWriter,
    WSMessage,
    WSMsgType,
    check_response,
    make_key,
    request_headers,
)

SMALL = "x" * 16
BIG = "y" * (1 << 20)
IN_FLIGHT = 32
TEXT = int(WSMsgType.TEXT)


class WsMessage(msgspec.Struct, frozen=True, array_like=True, tag="ws"):
    """One WebSocket message between worker and broker, both ways."""

    stream: int
    opcode: int
    data: bytes


_WS_DECODER = msgspec.msgpack.Decoder(WsMessage)


class WsFrameReader(FrameReader):
    """Our framing, reading ``WsMessage`` instead of the protocol's union."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__()
        self._decode = _WS_DECODER.decode  # type: ignore[assignment]


# ------------------------------------------------------------------ the broker


async def _read_until(sock: socket.socket, mark: bytes) -> tuple[bytes, bytes]:
    """(bytes up to ``mark``, what came after it) from a non-blocking socket."""
    loop = asyncio.get_running_loop()
    buf = b""
    while mark not in buf:
        chunk = await loop.sock_recv(sock, 1 << 16)
        if not chunk:
            raise ConnectionError("closed before " + repr(mark))
        buf += chunk
    head, _, rest = buf.partition(mark)
    return head, rest


async def _upgrade(port: int) -> tuple[socket.socket, bytes]:
    """A TCP connection to the echo server, upgraded; and any bytes after the 101."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = make_key()
    lines = [f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in request_headers(key).items()]
    await loop.sock_sendall(sock, "".join(lines).encode() + b"\r\n")
    head, rest = await _read_until(sock, b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict((part.strip() for part in h.split(":", 1)) for h in header_lines)
    check_response(int(status_line.split()[1]), headers, key=key)
    return sock, rest


class _OriginSide(asyncio.Protocol):
    """Broker, relay: origin frames in, ``WsMessage`` frames out to the worker."""

    def __init__(self) -> None:
        self.reader = WebSocketReader(client=True, decode_text=False)
        self.worker: asyncio.Transport | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.worker is not None
        for msg in self.reader.feed(data):
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                self.worker.write(encode(WsMessage(1, int(msg.type), msg.data)))  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.worker is not None:
            self.worker.close()


class _WorkerSide(asyncio.Protocol):
    """Broker, relay: ``WsMessage`` frames from the worker in, masked frames out."""

    def __init__(self, origin: _OriginSide) -> None:
        self.frames = WsFrameReader()
        self.writer = WebSocketWriter()
        self.origin = origin

    def data_received(self, data: bytes) -> None:
        origin = self.origin.transport
        assert origin is not None
        for msg in self.frames.feed(data):
            origin.write(self.writer.frame(msg.opcode, msg.data, mask=True))  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        origin = self.origin.transport
        if origin is not None and not origin.is_closing():
            origin.write(self.writer.close(1001, mask=True))
            origin.close()


async def _serve_worker(ctrl: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    line, _ = await _read_until(ctrl, b"\n")
    way, port = line.decode().split()
    origin, rest = await _upgrade(int(port))
    if way == "handover":
        socket.send_fds(ctrl, [b"+" + rest], [origin.fileno()])
        while await loop.sock_recv(ctrl, 1 << 10):
            pass  # the worker's control connection: its end ends our duplicate
        origin.close()
        ctrl.close()
        return
    await loop.sock_sendall(ctrl, b"+")
    _, origin_side = await loop.create_connection(_OriginSide, sock=origin)
    worker, _ = await loop.connect_accepted_socket(lambda: _WorkerSide(origin_side), sock=ctrl)
    origin_side.worker = worker  # type: ignore[assignment]
    if rest:
        origin_side.data_received(rest)


def broker(path: str) -> None:
    """``--broker PATH``: listen on the Unix socket PATH; each connection names a way
    and the echo server's port ("relay 1234\\n"). Print a line when listening; run until
    stdin closes."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
        listener.setblocking(False)
        tasks: set[asyncio.Task[None]] = set()

        async def accept() -> None:
            while True:
                ctrl, _ = await loop.sock_accept(listener)
                ctrl.setblocking(False)
                task = asyncio.ensure_future(_serve_worker(ctrl))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        acceptor = asyncio.ensure_future(accept())
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        acceptor.cancel()
        listener.close()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


# ------------------------------------------------------------------ the worker


class _WS(Protocol):
    async def send_str(self, data: str) -> None: ...
    async def receive(self) -> Any: ...


class _Inbox(asyncio.Protocol):
    """Messages as they arrive; ``receive`` waits for the next."""

    def __init__(self) -> None:
        self.messages: collections.deque[WSMessage] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def deliver(self, messages: list[WSMessage]) -> None:
        self.messages.extend(messages)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def receive(self) -> WSMessage:
        while not self.messages:
            if self.lost.done():
                raise ConnectionError("connection lost")
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return self.messages.popleft()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(None)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class HandoverWS(_Inbox):
    """Worker, hand-over: our codec on the adopted socket."""

    def __init__(self) -> None:
        super().__init__()
        self.reader = WebSocketReader(client=True)
        self.writer = WebSocketWriter()

    def data_received(self, data: bytes) -> None:
        self.deliver(self.reader.feed(data))

    async def send_str(self, data: str) -> None:
        assert self.transport is not None
        self.transport.write(self.writer.frame(TEXT, data.encode(), mask=True))

    async def close(self) -> None:
        assert self.transport is not None
        self.transport.write(self.writer.close(1000, mask=True))
        await asyncio.wait_for(self.lost, 5)


class RelayWS(_Inbox):
    """Worker, relay: ``WsMessage`` frames only."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = WsFrameReader()

    def data_received(self, data: bytes) -> None:
        self.deliver([
            WSMessage(WSMsgType(m.opcode), m.data.decode() if m.opcode == TEXT else m.data, "")  # type: ignore[attr-defined]
            for m in self.frames.feed(data)
        ])

    async def send_str(self, data: str) -> None:
        assert self.transport is not None
        self.transport.write(encode(WsMessage(1, TEXT, data.encode())))  # type: ignore[arg-type]


def _control(path: str, way: str, port: int) -> socket.socket:
    ctrl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ctrl.connect(path)
    ctrl.sendall(f"{way} {port}\n".encode())
    return ctrl


async def _run(ws: _WS, messages: int, big: int) -> tuple[float, float, float]:
    """(median round trip µs, messages/s with 32 in flight, median 1 MiB echo ms)."""
    for _ in range(100):  # warm up, and check the echo
        await ws.send_str(SMALL)
        assert (await ws.receive()).data == SMALL
    trips = []
    for _ in range(messages):
        t = time.perf_counter()
        await ws.send_str(SMALL)
        await ws.receive()
        trips.append(time.perf_counter() - t)
    t = time.perf_counter()
    sent = 0
    for _ in range(IN_FLIGHT):
        await ws.send_str(SMALL)
        sent += 1
    for _ in range(messages):
        await ws.receive()
        if sent < messages:
            await ws.send_str(SMALL)
            sent += 1
    rate = messages / (time.perf_counter() - t)
    echoes = []
    for _ in range(big):
        t = time.perf_counter()
        await ws.send_str(BIG)
        msg = await ws.receive()
        echoes.append(time.perf_counter() - t)
        assert len(msg.data) == len(BIG)
    return statistics.median(trips) * 1e6, rate, statistics.median(echoes) * 1e3


async def _measure(way: str, port: int, path: str, messages: int, big: int) -> tuple[float, ...]:
    loop = asyncio.get_running_loop()
    if way == "aiohttp":
        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(
            f"http://127.0.0.1:{port}/"
        ) as ws:
            return await _run(ws, messages, big)
    ctrl = _control(path, way, port)
    try:
        if way == "handover":
            data, fds, _, _ = socket.recv_fds(ctrl, 1 << 16, 1)
            assert data[:1] == b"+" and len(fds) == 1
            sock = socket.socket(fileno=fds[0])
            sock.setblocking(False)
            _, handover = await loop.create_connection(HandoverWS, sock=sock)
            if data[1:]:
                handover.data_received(data[1:])
            result = await _run(handover, messages, big)
            await handover.close()
            return result
        assert ctrl.recv(1) == b"+"
        transport, relay = await loop.create_unix_connection(RelayWS, sock=ctrl)
        result = await _run(relay, messages, big)
        transport.close()
        await asyncio.wait_for(relay.lost, 5)
        return result
    finally:
        ctrl.close()


def _spawn(script: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, script, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--big", type=int, default=10, help="1 MiB echoes per round")
    parser.add_argument("--broker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.broker:
        broker(args.broker)
        return
    ways = ["aiohttp", "handover", "relay"]
    results: dict[str, list[tuple[float, ...]]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "broker.sock")
        # the echo server of ws_relay_probe.py (its own process)
        probe = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ws_relay_probe.py")
        server, port = _spawn(probe, "--serve")
        brokerp, _ = _spawn(os.path.abspath(__file__), "--broker", path)
        started = time.perf_counter()
        try:
            for r in range(args.rounds):
                order = ways if r % 2 == 0 else ways[::-1]
                for way in order:
                    results[way].append(
                        asyncio.run(_measure(way, int(port), path, args.messages, args.big))
                    )
        finally:
            for proc in (brokerp, server):
                assert proc.stdin is not None
                proc.stdin.close()
                proc.wait(10)
    try:
        import uvloop

        loop_name = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop_name = "asyncio"
    print(
        f"{args.rounds} rounds x {args.messages} messages of 16 bytes, {args.big} x 1 MiB; "
        f"medians; broker on {loop_name}; {time.perf_counter() - started:.0f} s"
    )
    print(
        f"{'':9} {'round trip µs':>13} {'x aiohttp':>9} {'msgs/s (32 in flight)':>22} "
        f"{'x aiohttp':>9} {'1 MiB echo ms':>14} {'x aiohttp':>9}"
    )
    med = {
        way: tuple(statistics.median(row[i] for row in rows) for i in range(3))
        for way, rows in results.items()
    }
    base = med["aiohttp"]
    for way, (trip, rate, echo) in med.items():
        print(
            f"{way:9} {trip:13.1f} {trip / base[0]:9.2f} {rate:22,.0f} "
            f"{rate / base[1]:9.2f} {echo:14.2f} {echo / base[2]:9.2f}"
        )


if __name__ == "__main__":
    main()
