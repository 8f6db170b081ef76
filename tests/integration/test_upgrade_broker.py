"""WebSocket upgrades through a real broker, spoken by hand (``RawWorker``): the 101's
head, then a byte tunnel both ways with the usual credit; the pool slot held until the
tunnel ends; a CLOSE 1001 for the origin when the worker is cut off between frames.
Against aiohttp.web WebSocket servers and raw asyncio servers on loopback. The last
tests take the worker's transports (both modes) as ``ws_connect`` will."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import WSMsgType as AioMsgType
from aiohttp import web

from shared.framing import encode
from shared.messages import (
    STREAM_WINDOW,
    Ack,
    Cancel,
    Data,
    End,
    Failure,
    Head,
    Request,
    Stats,
    StatsRequest,
)
from shared.specs import PoolSpec, encode_pool
from shared.websocket import (
    WebSocketReader,
    WebSocketWriter,
    WSCloseCode,
    WSMessage,
    WSMsgType,
    accept_key,
    check_response,
    make_key,
    request_headers,
)

from ..conftest import read_request_head, wait_until
from .raw_worker import RawWorker, raw_workers  # noqa: F401  (the fixture)

pytestmark = pytest.mark.usefixtures("raw_workers")

_names = itertools.count()


def upgrade(stream: int, url: str, key: str = "", **fields: Any) -> Request:
    """An upgrade request with a WebSocket handshake's headers."""
    headers = list(request_headers(key or make_key()).items())
    fields.setdefault("streamed", True)
    return Request(stream, "GET", url, headers, upgrade=True, **fields)


def switching(head: bytes) -> bytes:
    """The 101 a raw server answers a handshake ``head`` with."""
    match = re.search(rb"Sec-WebSocket-Key: (\S+)", head)
    assert match is not None, head
    accept = accept_key(match.group(1).decode())
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()


def client_frame(opcode: int, payload: bytes) -> bytes:
    return WebSocketWriter().frame(opcode, payload, mask=True)


def client_close(code: int = WSCloseCode.OK) -> bytes:
    return WebSocketWriter().close(code, mask=True)


def server_messages(data: bytes) -> list[WSMessage]:
    """What a server reads in the bytes a client sent."""
    return WebSocketReader(client=False).feed(data)


async def tunnel_open(worker: RawWorker, req: Request) -> Head:
    worker.send(req)
    head = await worker.next()
    assert isinstance(head, Head), head
    assert head.status == 101
    return head


async def receive(worker: RawWorker, stream: int, reader: WebSocketReader) -> WSMessage:
    """The next message the origin sent on ``stream``, read from Data frames (acked)."""
    while True:
        msg = await worker.next()
        assert msg is not None, "the broker hung up"
        if isinstance(msg, Ack):
            continue
        assert isinstance(msg, Data) and msg.stream == stream, msg
        worker.send(Ack(stream, len(msg.data)))
        got = reader.feed(msg.data)
        if got:
            assert len(got) == 1
            return got[0]


async def acked(worker: RawWorker, stream: int, size: int) -> None:
    """Until the broker acknowledged ``size`` bytes of ``stream``: they are upstream."""
    while size > 0:
        msg = await worker.next()
        assert isinstance(msg, Ack) and msg.stream == stream, msg
        size -= msg.size


class EchoApp:
    """An aiohttp WebSocket echo server that notes how each socket was closed."""

    def __init__(self) -> None:
        self.connections = 0
        self.close_codes: list[int | None] = []
        self.close_frames: list[int | None] = []
        self.sockets: list[Any] = []  # the server's end of each connection
        self.closed = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self.echo)
        app.router.add_get("/plain", self.plain)
        return app

    async def echo(self, request: web.Request) -> web.WebSocketResponse:
        self.connections += 1
        assert request.transport is not None
        self.sockets.append(request.transport.get_extra_info("socket"))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        while True:
            msg = await ws.receive()
            if msg.type == AioMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == AioMsgType.BINARY:
                await ws.send_bytes(msg.data)
            else:
                break
        # the code of the CLOSE frame received (None: the connection ended without one)
        self.close_frames.append(msg.data if msg.type == AioMsgType.CLOSE else None)
        self.close_codes.append(ws.close_code)
        self.closed.set()
        return ws

    async def plain(self, request: web.Request) -> web.Response:
        return web.Response(status=403, text="no websockets here")


@pytest.fixture
async def echo(serve_app) -> tuple[EchoApp, str]:
    server = EchoApp()
    base = await serve_app(server.app())
    return server, base


async def test_the_101_arrives_and_bytes_flow_both_ways(broker_process, echo):
    server, base = echo
    worker = await RawWorker.connect(broker_process.socket_path)
    key = make_key()
    head = await tunnel_open(worker, upgrade(1, base + "/ws", key))
    headers = {k.decode(): v.decode() for k, v in head.headers}
    check_response(head.status, headers, key=key)  # the worker checks the 101 itself
    reader = WebSocketReader()
    worker.send(Data(1, client_frame(WSMsgType.TEXT, b"hello")))
    msg = await receive(worker, 1, reader)
    assert (msg.type, msg.data) == (WSMsgType.TEXT, "hello")
    # a message bigger than one piece, in pieces that cut its frame anywhere
    big = client_frame(WSMsgType.BINARY, bytes(range(256)) * 2000)
    for i in range(0, len(big), 100_001):
        worker.send(Data(1, big[i : i + 100_001]))
    msg = await receive(worker, 1, reader)
    assert (msg.type, msg.data) == (WSMsgType.BINARY, bytes(range(256)) * 2000)
    # the worker closes: the server answers with its CLOSE, then the origin hangs up
    worker.send(Data(1, client_close()))
    msg = await receive(worker, 1, reader)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, WSCloseCode.OK)
    rest = await worker.until_end_of(1)
    assert [type(m) for m in rest if not isinstance(m, Ack)][-1] is End
    await asyncio.wait_for(server.closed.wait(), 5)
    assert server.close_codes == [WSCloseCode.OK]


@pytest.mark.parametrize("then_close", [False, True], ids=["stays-open", "closes-at-once"])
async def test_bytes_in_the_same_write_as_the_101_reach_the_worker(
    broker_process, raw_server, then_close
):
    heads: list[bytes] = []
    hello = b"\x81\x05hello"  # an unmasked TEXT frame, as a server sends it

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_request_head(reader)
        heads.append(head)
        writer.write(switching(head) + hello)  # one write: often one read in the broker
        if not then_close:
            await reader.read()  # until the broker closes

    base = await raw_server(handler)
    worker = await RawWorker.connect(broker_process.socket_path)
    await tunnel_open(worker, upgrade(1, base + "/"))
    reader = WebSocketReader()
    msg = await receive(worker, 1, reader)
    assert (msg.type, msg.data) == (WSMsgType.TEXT, "hello")
    if then_close:  # the origin's EOF ends the body
        assert [type(m) for m in await worker.until_end_of(1)] == [End]
    else:
        worker.send(Cancel(1))
    lines = heads[0].lower().split(b"\r\n")
    assert not [line for line in lines if line.startswith((b"content-length", b"transfer-"))]


async def _queued(worker: RawWorker, name: str) -> int:
    worker.send(StatsRequest())
    msgs = await worker.until(lambda m: isinstance(m, Stats))
    stats = msgs[-1]
    return sum(p["queued"] for p in stats.pools if p["pool"] == name)


async def test_an_open_tunnel_holds_its_slot_under_limit_per_host(broker_process, echo):
    server, base = echo
    name = f"ws-limit-{next(_names)}"
    pool = encode_pool(PoolSpec(limit_per_host=1, name=name))
    worker = await RawWorker.connect(broker_process.socket_path)
    await tunnel_open(worker, upgrade(1, base + "/ws", pool=pool))
    other = await RawWorker.connect(broker_process.socket_path)
    other.send(upgrade(1, base + "/ws", pool=pool))
    await wait_until(lambda: _queued(worker, name), what="the second upgrade never queued")
    assert server.connections == 1
    worker.send(Cancel(1))
    head = await other.next()
    assert isinstance(head, Head) and head.status == 101
    assert server.connections == 2
    await asyncio.wait_for(server.closed.wait(), 5)
    assert server.close_codes == [WSCloseCode.GOING_AWAY]
    other.send(Cancel(1))


async def test_a_cancel_without_a_close_tells_the_server_going_away(broker_process, echo):
    server, base = echo
    worker = await RawWorker.connect(broker_process.socket_path)
    await tunnel_open(worker, upgrade(1, base + "/ws"))
    worker.send(Data(1, client_frame(WSMsgType.TEXT, b"hi")))
    msg = await receive(worker, 1, WebSocketReader())
    assert msg.data == "hi"
    worker.send(Cancel(1))
    await asyncio.wait_for(server.closed.wait(), 5)
    assert server.close_frames == server.close_codes == [WSCloseCode.GOING_AWAY]


async def test_the_workers_death_tells_the_server_going_away_within_a_second(
    broker_process, echo
):
    server, base = echo
    worker = await RawWorker.connect(broker_process.socket_path)
    await tunnel_open(worker, upgrade(1, base + "/ws"))
    worker.send(Data(1, client_frame(WSMsgType.BINARY, b"x" * 1000)))
    msg = await receive(worker, 1, WebSocketReader())
    assert msg.data == b"x" * 1000
    worker.close()
    await asyncio.wait_for(server.closed.wait(), 1)
    assert server.close_frames == server.close_codes == [WSCloseCode.GOING_AWAY]


def _recorder(got: list[bytes], done: asyncio.Event):
    """A raw WebSocket server that keeps every byte the client sends until EOF."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(switching(await read_request_head(reader)))
        got.append(await reader.read())  # until the broker closes
        done.set()

    return handler


@pytest.mark.parametrize(
    ("sent", "then"),
    [
        ([client_frame(WSMsgType.TEXT, b"bye"), client_close(4000)], b""),
        ([client_frame(WSMsgType.TEXT, b"bye")], client_close(WSCloseCode.GOING_AWAY)),
        ([client_frame(WSMsgType.TEXT, b"cut here")[:5]], b""),
        ([client_frame(WSMsgType.TEXT, b"a" * 200)[:3]], b""),  # inside the header
    ],
    ids=["the-workers-own-close", "no-close", "inside-a-frame", "inside-a-header"],
)
async def test_what_the_origin_gets_when_the_worker_cancels(
    broker_process, raw_server, sent, then
):
    """One CLOSE at most, and only between frames: never a second one after the
    worker's, never inside a frame the worker left unfinished."""
    got: list[bytes] = []
    done = asyncio.Event()
    base = await raw_server(_recorder(got, done))
    worker = await RawWorker.connect(broker_process.socket_path)
    await tunnel_open(worker, upgrade(1, base + "/"))
    for piece in sent:
        worker.send(Data(1, piece))
    await acked(worker, 1, sum(map(len, sent)))  # written upstream before the Cancel
    worker.send(Cancel(1))
    await asyncio.wait_for(done.wait(), 5)
    expected = b"".join(sent)
    assert got[0][: len(expected)] == expected
    tail = got[0][len(expected) :]
    if then:
        assert [(m.type, m.data) for m in server_messages(tail)] == [
            (WSMsgType.CLOSE, WSCloseCode.GOING_AWAY)
        ]
    else:
        assert tail == b""


async def _io_turn() -> None:
    """One pass of this loop's I/O poll (as in test_flow_control)."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    polled: asyncio.Future[None] = loop.create_future()
    try:
        loop.add_reader(b, polled.set_result, None)
        a.send(b"x")
        await polled
    finally:
        loop.remove_reader(b)
        a.close()
        b.close()


async def test_a_worker_that_stops_acking_holds_the_origin(broker_process, raw_server):
    """The origin can push only about a window (plus socket buffers) ahead of the worker;
    acks let it go on to the end."""
    sent = [0]
    total = 64 << 20
    waiting = asyncio.Event()  # set while the server waits for its socket to take more

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(switching(await read_request_head(reader)))
        chunk = b"x" * 65536
        transport = writer.transport
        while sent[0] < total:
            writer.write(chunk)
            if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
                waiting.set()
            await writer.drain()
            waiting.clear()
            sent[0] += len(chunk)
        waiting.set()
        await reader.read()

    base = await raw_server(handler)
    worker = await RawWorker.connect(broker_process.socket_path)
    await tunnel_open(worker, upgrade(1, base + "/"))
    got = 0

    async def stays_stopped(rounds: int) -> bool:
        nonlocal got
        at = sent[0]
        for _ in range(rounds):
            worker.send(StatsRequest())  # a turn of the broker's loop
            for m in await worker.until(lambda m: isinstance(m, Stats)):
                if isinstance(m, Data):
                    got += len(m.data)
            await _io_turn()
            if sent[0] != at or not waiting.is_set():
                return False
        return True

    while True:  # no acks: the broker must stop reading, so the server stops
        await asyncio.wait_for(waiting.wait(), 10)
        stalled_at = sent[0]
        if await stays_stopped(50):
            break
    assert stalled_at < 24 << 20, "the origin kept writing while the worker acked nothing"
    assert got <= STREAM_WINDOW + (256 << 10), "the broker sent past the window"
    worker.send(Ack(1, got))
    while got < total:  # acking again lets it go on, to the end
        msg = await worker.next()
        assert isinstance(msg, Data), msg
        got += len(msg.data)
        worker.send(Ack(1, len(msg.data)))
    assert got == total == sent[0]
    worker.send(Cancel(1))


async def test_another_answer_is_an_ordinary_response(broker_process, echo):
    _, base = echo
    worker = await RawWorker.connect(broker_process.socket_path)
    worker.send(upgrade(1, base + "/plain"))
    msgs = await worker.until_end_of(1)
    assert [type(m) for m in msgs] == [Head, Data, End]
    assert msgs[0].status == 403 and msgs[1].data == b"no websockets here"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"streamed": False}, "must be streamed"),
        ({"body": b"x"}, "may not have a body"),
        ({"chunked": True}, "may not be chunked"),
    ],
    ids=["not-streamed", "body", "chunked"],
)
async def test_refused_upgrades(broker_process, raw_server, fields, problem):
    connections = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    base = await raw_server(handler)
    worker = await RawWorker.connect(broker_process.socket_path)
    worker.send(upgrade(1, base + "/", **fields))
    msgs = await worker.until_end_of(1)
    assert [type(m) for m in msgs] == [Failure]
    assert msgs[0].code == "protocol"
    assert problem in msgs[0].message and "upgrade" in msgs[0].message
    assert connections == []
    worker.writer.write(encode(StatsRequest()))  # the connection carries on
    assert isinstance(await worker.next(), Stats)


# -- in this process: no task left behind, the slot given back ------------------------------


@pytest.fixture
async def local_server(tmp_path_factory) -> AsyncIterator[Any]:
    """A ``BrokerServer`` in this process and loop, to look at its tasks and pools."""
    from broker.server import BrokerServer

    folder = tempfile.mkdtemp(prefix="hb-")  # short: a socket path has ~100 bytes
    server = BrokerServer(os.path.join(folder, "b.sock"))
    await server.start()
    yield server
    await server.stop(drain_timeout=0)
    shutil.rmtree(folder, ignore_errors=True)


def _pumps() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if "Tunnel._pump" in repr(t.get_coro())]


@pytest.mark.parametrize("ending", ["cancel", "worker-dies", "origin-closes", "worker-ends"])
async def test_a_tunnel_leaves_no_task_and_gives_its_slot_back(local_server, echo, ending):
    server, base = echo
    name = f"ws-local-{next(_names)}"
    pool = encode_pool(PoolSpec(name=name))
    worker = await RawWorker.connect(local_server.path)
    await tunnel_open(worker, upgrade(1, base + "/ws", pool=pool))
    assert len(_pumps()) == 1
    if ending == "cancel":
        worker.send(Cancel(1))
    elif ending == "worker-dies":
        worker.close()
    else:
        # the worker closes; its End (worker-ends) says it sends no more, and the
        # server's answer and EOF end the tunnel either way
        worker.send(Data(1, client_close()), *([End(1)] if ending == "worker-ends" else []))
        msgs = await worker.until_end_of(1)
        assert isinstance(msgs[-1], End)
    await asyncio.wait_for(server.closed.wait(), 5)
    going_away = ending in ("cancel", "worker-dies")
    assert server.close_codes == [WSCloseCode.GOING_AWAY if going_away else WSCloseCode.OK]

    def settled() -> bool:
        figures = [p for p in local_server.engine.figures() if p["pool"] == name]
        return not _pumps() and local_server.streams == 0 and figures[0]["active"] == 0

    await wait_until(settled, what=lambda: (_pumps(), local_server.engine.figures()))


# -- the rest of the engine's path: TLS, redirects, a slow origin -----------------------------


async def test_an_upgrade_over_tls(broker_process, serve_app, tls_certs):
    from shared.messages import TlsOpen
    from shared.specs import TlsSpec, encode_tls, tls_id
    from tests.tls_certs import server_context

    server = EchoApp()
    base = await serve_app(
        server.app(), ssl_context=server_context(tls_certs.server, tls_certs.server_key)
    )
    spec = TlsSpec(system_store=False, ca_certs=(_der(tls_certs.ca),))
    tls = tls_id(encode_tls(spec))
    worker = await RawWorker.connect(broker_process.socket_path)
    worker.send(TlsOpen(tls, spec))
    await tunnel_open(worker, upgrade(1, base + "/ws", tls=tls))
    worker.send(Data(1, client_frame(WSMsgType.TEXT, b"secret")))
    msg = await receive(worker, 1, WebSocketReader())
    assert (msg.type, msg.data) == (WSMsgType.TEXT, "secret")
    worker.send(Cancel(1))  # the CLOSE goes through TLS before the connection closes
    await asyncio.wait_for(server.closed.wait(), 5)
    # (its close_code may then be 1006: its own CLOSE meets the TLS connection closed)
    assert server.close_frames == [WSCloseCode.GOING_AWAY]
    # both ends' TLS shutdowns done: a server socket closing as the loop ends is left open
    await wait_until(lambda: all(s.fileno() == -1 for s in server.sockets))


def _der(path: Any) -> bytes:
    import ssl

    return ssl.PEM_cert_to_DER_cert(path.read_text())


@pytest.mark.parametrize("closed", [True, False], ids=["after-its-close", "without-a-close"])
@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
async def test_the_workers_end_closes_a_connection_the_origin_keeps_open(
    broker_process, tls_certs, secure, closed
):
    """A relayed tunnel (plain without ``handover``; TLS, which is relayed even when the
    worker asks for the socket): the worker's End after its bytes. The origin, which
    never closes on its own, gets them (and a CLOSE 1001 if they held none), then EOF;
    the worker's stream ends."""
    from shared.messages import TlsOpen
    from shared.specs import TlsSpec, encode_tls, tls_id
    from tests.tls_certs import server_context

    got: list[bytes] = []
    done = asyncio.Event()
    release = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        writer.write(switching(await read_request_head(reader)))
        got.append(await reader.read())  # until the broker closes
        done.set()
        await release.wait()  # and never closes on its own

    context = server_context(tls_certs.server, tls_certs.server_key) if secure else None
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    worker = await RawWorker.connect(broker_process.socket_path)
    fields: dict[str, Any] = {}
    if secure:
        spec = TlsSpec(system_store=False, ca_certs=(_der(tls_certs.ca),))
        fields["tls"] = tls_id(encode_tls(spec))
        worker.send(TlsOpen(fields["tls"], spec))
    try:
        url = f"{'https' if secure else 'http'}://127.0.0.1:{port}/"
        head = await tunnel_open(worker, upgrade(1, url, handover=secure, **fields))
        assert head.handover == b""
        sent = client_frame(WSMsgType.TEXT, b"last words")
        if closed:
            sent += client_close(4000)
        worker.send(Data(1, sent), End(1))
        await asyncio.wait_for(done.wait(), 5)
        tail = got[0][len(sent) :]
        assert got[0][: len(sent)] == sent
        assert [(m.type, m.data) for m in server_messages(tail)] == (
            [] if closed else [(WSMsgType.CLOSE, WSCloseCode.GOING_AWAY)]
        )
        rest = [m for m in await worker.until_end_of(1) if not isinstance(m, Ack)]
        assert [type(m) for m in rest] == [End], rest
    finally:
        release.set()
        for writer in writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
        server.close()
        await server.wait_closed()


async def test_an_upgrade_follows_a_redirect(broker_process, serve_app):
    server = EchoApp()
    app = server.app()

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/ws")

    app.router.add_get("/old", moved)
    base = await serve_app(app)
    worker = await RawWorker.connect(broker_process.socket_path)
    head = await tunnel_open(worker, upgrade(1, base + "/old"))
    assert head.url == base + "/ws" and [h.status for h in head.history] == [307]
    worker.send(Data(1, client_frame(WSMsgType.TEXT, b"moved")))
    msg = await receive(worker, 1, WebSocketReader())
    assert msg.data == "moved"
    worker.send(Cancel(1))


async def test_an_origin_that_stops_reading_holds_the_workers_bytes(
    broker_process, raw_server
):
    """The broker acks only what the origin's socket took: a worker within its credit
    stops there, and everything arrives, in order, once the origin reads again."""
    reading = asyncio.Event()
    got: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(switching(await read_request_head(reader)))
        await reading.wait()
        got.append(await reader.read())

    base = await raw_server(handler)
    worker = await RawWorker.connect(broker_process.socket_path)
    await tunnel_open(worker, upgrade(1, base + "/"))
    piece = bytes(range(256)) * 1024  # 256 KiB
    total = 64 << 20
    sent = acked = 0

    async def more_acks(rounds: int) -> bool:
        """Whether an Ack comes within ``rounds`` turns of the broker's loop."""
        nonlocal acked
        for _ in range(rounds):
            worker.send(StatsRequest())
            msgs = await worker.until(lambda m: isinstance(m, Stats))
            new = sum(m.size for m in msgs if isinstance(m, Ack))
            if new:
                acked += new
                return True
        return False

    while True:  # send within the credit until the acks stop
        while sent < total and sent + len(piece) <= acked + STREAM_WINDOW:
            worker.send(Data(1, piece))
            sent += len(piece)
        if sent == total or not await more_acks(50):
            break
    assert sent < total, "the broker took 64 MiB that the origin never read"
    assert sent - acked <= STREAM_WINDOW
    reading.set()
    while sent < total:  # the origin reads again: the rest goes as acks come
        await more_acks(1 << 20)
        while sent < total and sent + len(piece) <= acked + STREAM_WINDOW:
            worker.send(Data(1, piece))
            sent += len(piece)
    while acked < total:
        msg = await worker.next()
        assert isinstance(msg, Ack), msg
        acked += msg.size
    worker.send(Cancel(1))
    await wait_until(lambda: bool(got), what="the origin never saw the end")
    assert len(got[0]) == total
    assert got[0] == piece * (total // len(piece))  # in order, nothing added: mid-frame


# -- through the worker's transports (both modes), as ws_connect will use them -------------


class _Failed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@pytest.mark.parametrize("ending", ["give-up", "close-handshake"])
async def test_a_tunnel_through_the_workers_transport(broker_address, echo, ending):
    """The request's body is an iterator of frame bytes, the tunnel is read from the
    response's content: the same in embedded and in broker mode."""
    from worker_client.handle import StreamHandle
    from worker_client.transport import get_transport, release_transport

    server, base = echo
    transport = await get_transport(broker_address)
    out: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def frames() -> AsyncIterator[bytes]:
        while (item := await out.get()) is not None:
            yield item

    try:
        sid = transport.next_stream_id()
        handle = StreamHandle(transport, sid, _Failed)
        await transport.send(upgrade(sid, base + "/ws"), frames(), handle)
        head = await asyncio.wait_for(handle.head, 10)
        assert head.status == 101
        reader = WebSocketReader()

        async def message() -> WSMessage:
            got: list[WSMessage] = []
            while not got:
                data = await asyncio.wait_for(handle.content.readany(), 10)
                assert data, "the tunnel ended"
                got = reader.feed(data)
            return got[0]

        for text in (b"one", b"two" * 100_000):
            out.put_nowait(client_frame(WSMsgType.TEXT, text))
            assert (await message()).data == text.decode()
        if ending == "give-up":
            handle.give_up()
            await asyncio.wait_for(server.closed.wait(), 5)
            assert server.close_frames == [WSCloseCode.GOING_AWAY]
        else:
            out.put_nowait(client_close())
            msg = await message()
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, WSCloseCode.OK)
            out.put_nowait(None)  # the worker's End: it lets go, the connection closes
            assert await asyncio.wait_for(handle.content.read(), 10) == b""  # and ends
            await asyncio.wait_for(server.closed.wait(), 5)
            assert server.close_frames == [WSCloseCode.OK]
        # embedded, the engine's pump ran here: it is gone with the tunnel
        await wait_until(lambda: not _pumps(), what=_pumps)
    finally:
        out.put_nowait(None)
        await release_transport(transport)
