"""The WebSocket hand-over (``broker.handover``), against a real broker process: an
upgrade with ``Request.handover`` gets a 101 whose ``Head.handover`` names the upgraded
socket, which this process then claims on a connection of its own (``Claim``; the
socket comes over SCM_RIGHTS with ``Granted``) and speaks to the origin directly. The
token is good once and for the requesting process only; the lease holds until the
stream ends; a worker that dies leaves the origin a CLOSE 1001. TLS stays relayed.
Embedded, ``ws_connect`` takes the engine's own transport.

Frames by hand (``RawWorker``), origins on loopback (aiohttp.web WebSocket servers and
raw asyncio servers)."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import os
import socket
import ssl
import subprocess
import sys
from typing import Any

import pytest
from yarl import URL

from shared.framing import FrameReader, encode
from shared.messages import (
    Cancel,
    Claim,
    Data,
    ErrorFrame,
    Granted,
    Head,
    Stats,
    StatsRequest,
    TlsOpen,
)
from shared.specs import PoolSpec, TlsSpec, encode_pool, encode_tls, tls_id
from shared.websocket import WebSocketReader, WSCloseCode, WSMessage, WSMsgType
from tests.tls_certs import server_context
from worker_client import ClientSession

from ..conftest import ROOT, read_request_head, wait_until
from .raw_worker import RawWorker, raw_workers  # noqa: F401  (the fixture)
from .test_upgrade_broker import (
    EchoApp,
    _der,
    _queued,
    client_close,
    client_frame,
    receive,
    switching,
    tunnel_open,
    upgrade,
)

pytestmark = pytest.mark.usefixtures("raw_workers")

_names = itertools.count()


@pytest.fixture
async def echo(serve_app) -> tuple[EchoApp, str]:
    server = EchoApp()
    base = await serve_app(server.app())
    return server, base


# -- claiming, by hand --------------------------------------------------------------------

def claim_blocking(path: str, token: bytes) -> tuple[list[Any], list[int]]:
    """``Claim(token)`` on a connection of its own: the broker's messages and the
    descriptors that came with them, up to its hang-up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(encode(Claim(token)))
        frames = FrameReader()
        msgs: list[Any] = []
        fds: list[int] = []
        while True:
            data, got, _, _ = socket.recv_fds(sock, 1 << 16, 4)
            fds += got
            if not data:
                return msgs, fds
            msgs += frames.feed(data)


# Another process's claim: ``claim_blocking`` itself, run by a small script.
_CLAIM_ELSEWHERE = f"""
import json, socket, sys
from typing import Any
from shared.framing import FrameReader, encode
from shared.messages import Claim
{inspect.getsource(claim_blocking)}
msgs, fds = claim_blocking(sys.argv[1], bytes.fromhex(sys.argv[2]))
print(json.dumps([[type(m).__name__ for m in msgs], len(fds)]))
"""


async def claim(path: str, token: bytes) -> tuple[list[Any], list[int]]:
    return await asyncio.to_thread(claim_blocking, path, token)


async def granted(path: str, token: bytes) -> tuple[socket.socket, bytes]:
    """The socket ``token`` names, claimed by hand, and ``Granted.early``."""
    msgs, fds = await claim(path, token)
    assert [type(m) for m in msgs] == [Granted] and len(fds) == 1, (msgs, fds)
    sock = socket.socket(fileno=fds[0])
    sock.setblocking(False)
    return sock, msgs[0].early


async def refused(path: str, token: bytes) -> ErrorFrame:
    msgs, fds = await claim(path, token)
    for fd in fds:
        os.close(fd)
    assert fds == [] and [type(m) for m in msgs] == [ErrorFrame], (msgs, fds)
    return msgs[0]


async def next_message(sock: socket.socket, reader: WebSocketReader) -> WSMessage:
    """The next message the origin sent, read from the socket itself."""
    loop = asyncio.get_running_loop()
    got: list[WSMessage] = []
    while not got:
        data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 10)
        assert data, "the origin hung up"
        got = reader.feed(data)
    assert len(got) == 1, got
    return got[0]


async def nothing_relayed(worker: RawWorker, stream: int) -> None:
    """The broker sent ``stream`` no Data or End up to now (a Stats round trip: every
    frame it wrote before its answer has arrived)."""
    worker.send(StatsRequest())
    msgs = await worker.until(lambda m: isinstance(m, Stats))
    assert [m for m in msgs if getattr(m, "stream", None) == stream] == [], msgs


# -- 1. the socket changes hands ---------------------------------------------------------


async def test_a_handed_over_socket_speaks_to_the_origin(broker_process, echo):
    from worker_client.transport import get_transport, release_transport

    server, base = echo
    worker = await RawWorker.connect(broker_process.socket_path)
    head = await tunnel_open(worker, upgrade(1, base + "/ws", handover=True))
    assert len(head.handover) == 16
    transport = await get_transport(broker_process.socket_path)
    try:
        sock, early = await transport.claim(head.handover)
    finally:
        await release_transport(transport)
    loop = asyncio.get_running_loop()
    with sock:
        assert early == b""
        assert sock.getpeername()[1] == URL(base).port
        reader = WebSocketReader()
        for text in (b"hello", b"x" * 200_000):
            await loop.sock_sendall(sock, client_frame(WSMsgType.TEXT, text))
            msg = await next_message(sock, reader)
            assert (msg.type, msg.data) == (WSMsgType.TEXT, text.decode())
        await nothing_relayed(worker, 1)  # the echoes came on the socket, not as Data
        await loop.sock_sendall(sock, client_close(4001))
        msg = await next_message(sock, reader)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, WSCloseCode.OK)  # its answer
    await asyncio.wait_for(server.closed.wait(), 5)
    assert server.close_frames == [4001]
    await nothing_relayed(worker, 1)
    worker.send(Cancel(1))


async def test_bytes_in_the_same_write_as_the_101_come_as_early(broker_process, raw_server):
    hello = b"\x81\x05hello"  # an unmasked TEXT frame, as a server sends it
    got: list[bytes] = []
    done = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(switching(await read_request_head(reader)) + hello)  # one write
        got.append(await reader.read())  # until the client hangs up
        done.set()

    base = await raw_server(handler)
    worker = await RawWorker.connect(broker_process.socket_path)
    head = await tunnel_open(worker, upgrade(1, base + "/", handover=True))
    sock, early = await granted(broker_process.socket_path, head.handover)
    assert early == hello
    frame = client_frame(WSMsgType.BINARY, b"after the 101")
    with sock:
        await asyncio.get_running_loop().sock_sendall(sock, frame)
    worker.send(Cancel(1))
    await asyncio.wait_for(done.wait(), 5)
    assert got == [frame]


# -- 2. once, and for this process only ------------------------------------------------------


async def test_a_token_is_good_once(broker_process, echo):
    server, base = echo
    worker = await RawWorker.connect(broker_process.socket_path)
    head = await tunnel_open(worker, upgrade(1, base + "/ws", handover=True))
    sock, _ = await granted(broker_process.socket_path, head.handover)
    sock.close()
    error = await refused(broker_process.socket_path, head.handover)
    assert error.code == "protocol" and "token" in error.message
    worker.send(Cancel(1))
    await asyncio.wait_for(server.closed.wait(), 5)


async def test_an_unknown_token_is_refused(broker_process):
    error = await refused(broker_process.socket_path, os.urandom(16))
    assert error.code == "protocol"


async def test_another_process_cannot_claim_the_socket(broker_process, echo):
    """Another process that knows the token gets an ErrorFrame and no descriptor; the
    token stays this process's."""
    server, base = echo
    worker = await RawWorker.connect(broker_process.socket_path)
    head = await tunnel_open(worker, upgrade(1, base + "/ws", handover=True))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CLAIM_ELSEWHERE, broker_process.socket_path, head.handover.hex(),
        cwd=ROOT, stdout=subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(child.communicate(), 30)
    assert child.returncode == 0
    assert json.loads(out) == [["ErrorFrame"], 0]
    sock, _ = await granted(broker_process.socket_path, head.handover)
    with sock:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, client_frame(WSMsgType.TEXT, b"still mine"))
        msg = await next_message(sock, WebSocketReader())
        assert msg.data == "still mine"
    worker.send(Cancel(1))
    await asyncio.wait_for(server.closed.wait(), 5)
    assert server.connections == 1


# -- 3. relayed, never a token ----------------------------------------------------------------


async def test_without_handover_the_broker_relays(broker_process, echo):
    server, base = echo
    worker = await RawWorker.connect(broker_process.socket_path)
    head = await tunnel_open(worker, upgrade(1, base + "/ws"))
    assert head.handover == b""
    worker.send(Data(1, client_frame(WSMsgType.TEXT, b"relayed")))
    msg = await receive(worker, 1, WebSocketReader())
    assert msg.data == "relayed"
    worker.send(Cancel(1))
    await asyncio.wait_for(server.closed.wait(), 5)
    assert server.close_frames == [WSCloseCode.GOING_AWAY]  # the relay's, for the worker


async def test_wss_is_relayed_even_when_handover_is_asked(broker_process, serve_app, tls_certs):
    server = EchoApp()
    base = await serve_app(
        server.app(), ssl_context=server_context(tls_certs.server, tls_certs.server_key)
    )
    spec = TlsSpec(system_store=False, ca_certs=(_der(tls_certs.ca),))
    tls = tls_id(encode_tls(spec))
    worker = await RawWorker.connect(broker_process.socket_path)
    worker.send(TlsOpen(tls, spec))
    head = await tunnel_open(worker, upgrade(1, base + "/ws", tls=tls, handover=True))
    assert head.handover == b""
    worker.send(Data(1, client_frame(WSMsgType.TEXT, b"through tls")))
    msg = await receive(worker, 1, WebSocketReader())
    assert (msg.type, msg.data) == (WSMsgType.TEXT, "through tls")
    worker.send(Cancel(1))
    await asyncio.wait_for(server.closed.wait(), 5)
    assert server.close_frames == [WSCloseCode.GOING_AWAY]


# -- 4. the lease ------------------------------------------------------------------------------


class RawOrigin:
    """A raw WebSocket origin: answers the handshake, then echoes every byte it gets as
    it is and keeps them, until EOF (``ended``), one entry per connection."""

    def __init__(self) -> None:
        self.got: list[bytearray] = []
        self.ended: list[asyncio.Event] = []

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(switching(await read_request_head(reader)))
        got = bytearray()
        ended = asyncio.Event()
        self.got.append(got)
        self.ended.append(ended)
        while data := await reader.read(1 << 16):
            got += data
            writer.write(data)
        ended.set()


async def recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        more = await asyncio.wait_for(loop.sock_recv(sock, size - len(data)), 10)
        assert more, "the origin hung up"
        data += more
    return data


@pytest.mark.parametrize("claimed", [False, True], ids=["unclaimed", "claimed"])
async def test_the_lease_holds_until_the_stream_is_cancelled(broker_process, raw_server, claimed):
    """Under ``limit_per_host=1`` a second upgrade waits while the first, handed over,
    is open; the first one's Cancel lets it through and ends the offer. A claimed
    socket is the worker's: the Cancel sends the origin no CLOSE, and the connection
    ends when the worker closes the socket."""
    path = broker_process.socket_path
    origin = RawOrigin()
    base = await raw_server(origin.handler)
    name = f"handover-lease-{next(_names)}"
    pool = encode_pool(PoolSpec(limit_per_host=1, name=name))
    worker = await RawWorker.connect(path)
    head = await tunnel_open(worker, upgrade(1, base + "/", pool=pool, handover=True))
    sock = (await granted(path, head.handover))[0] if claimed else None
    other = await RawWorker.connect(path)
    other.send(upgrade(1, base + "/", pool=pool, handover=True))
    await wait_until(lambda: _queued(worker, name), what="the second upgrade never queued")
    assert len(origin.got) == 1
    worker.send(Cancel(1))
    second = await other.next()
    assert isinstance(second, Head) and second.status == 101 and len(second.handover) == 16
    assert len(origin.got) == 2
    if sock is None:
        await refused(path, head.handover)  # the offer ended with its stream
        sent = b""
    else:
        with sock:  # still connected to the origin, which got no CLOSE
            sent = client_frame(WSMsgType.TEXT, b"still mine")
            await asyncio.get_running_loop().sock_sendall(sock, sent)
            assert await recv_exactly(sock, len(sent)) == sent
            assert not origin.ended[0].is_set()
    await asyncio.wait_for(origin.ended[0].wait(), 5)
    assert bytes(origin.got[0]) == sent
    other.send(Cancel(1))
    await asyncio.wait_for(origin.ended[1].wait(), 5)


# -- 5. the worker's death -------------------------------------------------------------------


@pytest.mark.parametrize("claimed", [False, True], ids=["unclaimed", "claimed"])
async def test_a_dead_workers_origin_hears_going_away_within_a_second(
    broker_process, echo, claimed
):
    """The worker's connection to the broker is lost: the broker writes CLOSE 1001 on
    the upgraded connection, even while the claimed socket is open in this process."""
    server, base = echo
    worker = await RawWorker.connect(broker_process.socket_path)
    head = await tunnel_open(worker, upgrade(1, base + "/ws", handover=True))
    reader = WebSocketReader()
    sock = None
    if claimed:
        sock, _ = await granted(broker_process.socket_path, head.handover)
        await asyncio.get_running_loop().sock_sendall(sock, client_frame(WSMsgType.TEXT, b"hi"))
        assert (await next_message(sock, reader)).data == "hi"
    worker.close()
    await asyncio.wait_for(server.closed.wait(), 1)
    assert server.close_frames == [WSCloseCode.GOING_AWAY]
    if sock is not None:
        with sock:  # the same connection: the origin's answer to the CLOSE comes here
            msg = await next_message(sock, reader)
            assert msg.type == WSMsgType.CLOSE


# -- 6. embedded: the engine's own transport ---------------------------------------------------


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
async def test_embedded_ws_connect_takes_the_engines_transport(serve_app, tls_certs, secure):
    """The WebSocket is the protocol of the connection the engine opened (the peer the
    server sees is this socket), which its pool counts as active until it closes."""
    from aiohttp import web

    peers: list[Any] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    context = server_context(tls_certs.server, tls_certs.server_key) if secure else None
    base = URL(await serve_app(app, ssl_context=context))
    client_ssl: Any = ssl.create_default_context(cafile=str(tls_certs.ca)) if secure else True

    async def active() -> int:
        stats = await session.stats()
        return sum(p["active"] for p in stats.pools)

    async def idle() -> bool:
        return await active() == 0

    async with ClientSession() as session:
        ws = await session.ws_connect(base.with_scheme("wss" if secure else "ws") / "ws",
                                      ssl=client_ssl)
        await ws.send_str("mine")
        assert await ws.receive_str() == "mine"
        assert tuple(ws.get_extra_info("peername")[:2]) == ("127.0.0.1", base.port)
        assert tuple(ws.get_extra_info("sockname")[:2]) == tuple(peers[0][:2])
        assert (ws.get_extra_info("ssl_object") is not None) is secure
        assert await active() == 1
        assert session._transport.adoptions == {}  # taken
        await ws.close()
        assert ws.get_extra_info("peername") is None
        await wait_until(idle, what="the pool still counts it")
    assert len(peers) == 1
