"""One session's request never reaches another's connection, and what the upstream
sends before anyone reads it is bounded: both modes, against raw servers that record
every request line they parse on each connection."""

from __future__ import annotations

import asyncio

import brotli
import psutil
import pytest
from aiohttp import web

from broker.http1 import _BUFSIZE as READ_SIZE
from broker.http1 import EARLY_LIMIT
from worker_client import ClientConnectionError, ClientTimeout, TCPConnector

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


class RecordingServer:
    """A keep-alive HTTP/1.1 server that frames request bodies as a real one does and
    records ``(connection number, request line)`` for every request it parses. Each
    answer's body is the request's path. ``answer_first``: answer as soon as the head
    is read, before the body (as a server refusing an upload does)."""

    def __init__(self, answer_first: bool = False) -> None:
        self.lines: list[tuple[int, str]] = []
        self.connections = 0
        self.answer_first = answer_first
        self.body_bytes = 0
        self.got_body = asyncio.Event()

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            line, *fields = head.decode("latin-1").split("\r\n")
            self.lines.append((number, line))
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (f.partition(":") for f in fields if f)
            }
            path = line.split(" ")[1].encode() if line.count(" ") >= 2 else b"?"
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path)
            if self.answer_first:
                writer.write(answer)
                await writer.drain()
            await self._read_body(reader, headers)
            if not self.answer_first:
                writer.write(answer)
                await writer.drain()

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
        if "content-length" in headers:
            left = int(headers["content-length"])
            while left:
                data = await reader.read(left)
                if not data:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(data)
                self.body_bytes += len(data)
                self.got_body.set()
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if not size:
                    return


def one_connection_sessions(make_session, n: int = 2) -> list:
    """Sessions whose equal connectors share one pool of a single connection."""
    return [make_session(connector=TCPConnector(limit=1)) for _ in range(n)]


async def other_session_gets_its_own_answer(session, base: str, server: RecordingServer):
    async with session.get(base + "/b", timeout=ClientTimeout(total=5)) as resp:
        assert await resp.read() == b"/b"
    assert not any("smuggled" in line for _, line in server.lines), server.lines
    assert server.lines[-1][1] == "GET /b HTTP/1.1"


@pytest.mark.parametrize(
    "chunks",
    [
        [b"hello" + SMUGGLED],  # one chunk past the length
        [b"hello", SMUGGLED],  # the length reached exactly, then more
        [b"he", b"llo" + SMUGGLED[:3], SMUGGLED[3:]],
    ],
    ids=["one_chunk", "after_the_length", "split"],
)
async def test_a_body_longer_than_its_length_smuggles_nothing(
    raw_server, make_session, chunks
):
    server = RecordingServer()
    base = await raw_server(server.handler)
    a, b = one_connection_sessions(make_session)

    async def body():
        for chunk in chunks:
            yield chunk

    error: BaseException | None = None
    try:
        async with a.post(base + "/upload", data=body(), headers={"Content-Length": "5"}):
            pass
    except ClientConnectionError as exc:
        error = exc
    await other_session_gets_its_own_answer(b, base, server)
    assert error is not None and "longer than its Content-Length (5 bytes)" in str(error)
    assert [line for _, line in server.lines] == ["POST /upload HTTP/1.1", "GET /b HTTP/1.1"]
    assert server.connections == 2  # the first connection was closed, never reused


async def test_a_body_shorter_than_its_length_fails_and_is_not_reused(
    raw_server, make_session
):
    server = RecordingServer()
    base = await raw_server(server.handler)
    a, b = one_connection_sessions(make_session)

    async def body():
        yield b"abc"

    with pytest.raises(ClientConnectionError, match="3 of 10 bytes"):
        await a.post(base + "/upload", data=body(), headers={"Content-Length": "10"})
    await other_session_gets_its_own_answer(b, base, server)
    assert server.connections == 2


async def test_an_upload_cut_short_after_the_answer_is_not_reused(raw_server, make_session):
    """The server answers before reading the body; the uploading session then gives up.
    The connection must not carry the next session's request into the unread body."""
    server = RecordingServer(answer_first=True)
    base = await raw_server(server.handler)
    a, b = one_connection_sessions(make_session)
    more = asyncio.Event()
    forever: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def body():
        yield b"abc"
        await more.wait()  # the answer is on its way: the upload goes on after it
        yield b"def"
        await forever

    upload = asyncio.ensure_future(
        a.post(base + "/upload", data=body(), headers={"Content-Length": "100"})
    )
    await server.got_body.wait()
    server.got_body.clear()
    more.set()
    while server.body_bytes < 6:  # the second piece went out after the answer
        await server.got_body.wait()
        server.got_body.clear()
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    await other_session_gets_its_own_answer(b, base, server)
    assert server.lines == [(1, "POST /upload HTTP/1.1"), (2, "GET /b HTTP/1.1")]


class StreamingServer(asyncio.Protocol):
    """Answers the first request head with an endless body, as fast as the client
    reads it; ``finished`` is set if it ever writes ``total`` bytes."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0
        self.finished = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self._paused = False
        self._started = False
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._head += data
        if not self._started and b"\r\n\r\n" in self._head:
            self._started = True
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 40))
            self._write()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._write()

    def _write(self) -> None:
        chunk = bytes(1 << 16)
        while not self._paused and self.sent < self.total and self.transport is not None:
            self.transport.write(chunk)
            self.sent += len(chunk)
        if self.sent >= self.total:
            self.finished.set()


def broker_rss(broker_process) -> int:
    return int(psutil.Process(broker_process.pid).memory_info().rss)


async def test_an_unfinished_upload_holds_what_the_server_streams_back(
    mode, make_session, request
):
    """The worker never ends its upload while the server streams its answer: the
    connection holds at most EARLY_LIMIT (+ a read) of it, then stops reading."""
    total = 64 << 20 if mode == "embedded" else 256 << 20
    server = StreamingServer(total)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    session = make_session()
    if mode == "broker":
        proc = request.getfixturevalue("broker_process")
        before = broker_rss(proc)
    forever: asyncio.Future[None] = loop.create_future()

    async def body():
        yield b"x"
        await forever

    upload = asyncio.ensure_future(session.post(f"http://127.0.0.1:{port}/", data=body()))
    finished = asyncio.ensure_future(server.finished.wait())
    try:
        # Unbounded, the client reads everything at once: give it the time to.
        await asyncio.wait([finished], timeout=1.0)
        assert not server.finished.is_set(), "the whole answer was read with nobody to take it"
        if mode == "embedded":
            engine = session._transport.engine
            (conn,) = [c for pool in engine.registry.pools for c in pool._active]
            assert 0 < conn.early_bytes <= EARLY_LIMIT + READ_SIZE
            assert conn.reading_paused
        else:
            assert broker_rss(proc) - before < 48 << 20
    finally:
        finished.cancel()
        upload.cancel()
        await asyncio.gather(upload, finished, return_exceptions=True)
        listener.close()
        assert server.transport is not None
        server.transport.abort()


async def test_a_brotli_bomb_keeps_the_broker_small(broker_process, serve_app):
    """64 MiB of zeros in about 100 bytes of br: the broker decodes it as the worker
    reads, never all at once, and the worker still gets all of it."""
    from worker_client import ClientSession

    size = 64 << 20
    packed = brotli.compress(bytes(size), quality=5)
    assert len(packed) < 1024
    app = web.Application()

    async def bomb(request: web.Request) -> web.Response:
        return web.Response(body=packed, headers={"Content-Encoding": "br"})

    async def small(request: web.Request) -> web.Response:
        return web.Response(text="after")

    app.router.add_get("/bomb", bomb)
    app.router.add_get("/small", small)
    base = await serve_app(app)
    before = broker_rss(broker_process)
    async with ClientSession(broker=broker_process.socket_path) as session:
        async with session.get(base + "/bomb") as resp:
            first = await resp.content.read(1024)
            assert first == bytes(len(first)) and first
            # The broker has done all it will do before we read more: it waits for us.
            assert broker_rss(broker_process) - before < 32 << 20
            got = len(first)
            while data := await resp.content.read(1 << 20):
                assert not data.strip(b"\0")
                got += len(data)
        assert got == size
        async with session.get(base + "/small") as resp:  # the connection is fine after
            assert await resp.text() == "after"


async def test_an_upload_to_a_server_that_does_not_read_waits_for_it(raw_server, make_session):
    """The upload goes only as fast as the socket takes it (``pause_writing``): the
    body is pulled no further than the buffers on its way."""
    head_read = asyncio.Event()
    release = asyncio.Event()

    async def handler(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        head_read.set()
        await release.wait()

    base = await raw_server(handler)
    session = make_session()
    total = 256 << 20
    pulled = [0]
    chunk = bytes(1 << 16)
    finished = asyncio.Event()

    async def body():
        while pulled[0] < total:
            pulled[0] += len(chunk)
            yield chunk
        finished.set()

    upload = asyncio.ensure_future(
        session.post(base + "/", data=body(), headers={"Content-Length": str(total)})
    )
    waiter = asyncio.ensure_future(finished.wait())
    try:
        await head_read.wait()
        await asyncio.wait([waiter], timeout=1.0)
        assert not finished.is_set() and pulled[0] < 64 << 20
    finally:
        waiter.cancel()
        upload.cancel()
        release.set()
        await asyncio.gather(upload, waiter, return_exceptions=True)
