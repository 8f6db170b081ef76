"""The broker as a process: isolation between workers, bad input, lifecycle, groups."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import pytest
from aiohttp import web

import broker
from shared.framing import FrameReader, encode
from shared.messages import (
    PROTOCOL_VERSION,
    Ack,
    Data,
    ErrorFrame,
    Hello,
    Request,
    Stats,
    StatsRequest,
    Welcome,
)
from worker_client import (
    BrokerConnectionError,
    BrokerProtocolError,
    ClientConnectionError,
    ClientSession,
    ClientTimeout,
    InvalidUrlClientError,
    NonHttpUrlClientError,
    TCPConnector,
)

from ..conftest import ROOT, wait_until
from . import _workers
from .apps import text_app


def _raw_exchange(path: str, payload: bytes, timeout: float = 5.0) -> list[object]:
    """Send bytes to the broker as a misbehaving worker; every message until it closes."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    try:
        sock.sendall(payload)
        reader = FrameReader()
        out: list[object] = []
        while True:
            data = sock.recv(65536)
            if not data:
                return out
            out.extend(reader.feed(data))
    finally:
        sock.close()


async def _hello_app(serve_app) -> str:
    return str(await serve_app(text_app("hello")))


class SlowApp:
    """/slow holds its request until the client goes away (serve it with
    ``handler_cancellation=True``, so the handler is cancelled then); /fast answers at once."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.upstream_closed = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/slow", self.slow)
        self.app.router.add_get("/fast", self.fast)

    async def slow(self, request: web.Request) -> web.Response:
        self.arrived.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.upstream_closed.set()
            raise
        raise AssertionError("unreachable")

    async def fast(self, request: web.Request) -> web.Response:
        return web.Response(text="fast")


async def _one_slot_worker(path: str, url: str, pool: str) -> asyncio.subprocess.Process:
    """A worker process that GETs ``url`` through ``TCPConnector(limit=1, name=pool)``."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {ROOT!r})
        from worker_client import ClientSession, TCPConnector
        async def main():
            conn = TCPConnector(limit=1, name=sys.argv[3])
            async with ClientSession(broker=sys.argv[1], connector=conn) as s:
                await s.get(sys.argv[2])
        asyncio.run(main())
        """
    )
    return await asyncio.create_subprocess_exec(sys.executable, "-c", script, path, url, pool)


async def _fast_through_one_slot(path: str, base: str, name: str, within: float) -> None:
    conn = TCPConnector(limit=1, name=name)
    async with ClientSession(broker=path, connector=conn) as s:
        t0 = time.monotonic()
        async with s.get(base + "/fast") as resp:
            assert await resp.text() == "fast"
        assert time.monotonic() - t0 < within


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"\xff\xff\xff\xff" + b"x" * 64, "over the cap"),
        (b"\x05\x00\x00\x00garbage", "malformed"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "over the cap"),
        (encode(Welcome(PROTOCOL_VERSION, 1)), "first message must be Hello"),
        (encode(Hello(PROTOCOL_VERSION + 99, 1)), "protocol version"),
    ],
)
async def test_bad_input_closes_only_that_worker(broker_process, serve_app, payload, needle):
    base = await _hello_app(serve_app)
    async with ClientSession(broker=broker_process.socket_path) as good:
        async with good.get(base) as resp:  # a worker connected before the garbage
            assert await resp.text() == "hello"
        loop = asyncio.get_running_loop()
        msgs = await loop.run_in_executor(
            None, _raw_exchange, broker_process.socket_path, payload
        )
        errors = [m for m in msgs if isinstance(m, ErrorFrame)]
        assert len(errors) == 1, msgs
        assert needle in errors[0].message
        assert broker_process.process.poll() is None
        async with good.get(base) as resp:  # the same worker connection carries on
            assert await resp.text() == "hello"


async def test_wrong_version_is_a_clear_error_for_the_worker(broker_process, monkeypatch):
    from worker_client import transport as transport_mod

    monkeypatch.setattr(transport_mod, "PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
    async with ClientSession(broker=broker_process.socket_path) as session:
        with pytest.raises(BrokerProtocolError, match="protocol version"):
            await session.get("http://127.0.0.1:1/")


async def test_unreachable_broker_is_a_connection_error(tmp_path):
    async with ClientSession(broker=str(tmp_path / "nobody.sock")) as session:
        with pytest.raises(BrokerConnectionError, match="cannot reach the broker"):
            await session.get("http://127.0.0.1:1/")


def test_socket_is_private(broker_process):
    mode = os.stat(broker_process.socket_path).st_mode & 0o777
    assert mode == 0o600
    parent = os.path.dirname(broker_process.socket_path)
    assert os.stat(parent).st_mode & 0o077 == 0


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another uid")
def test_other_uid_is_refused():
    tmp = tempfile.mkdtemp()
    os.chmod(tmp, 0o755)  # pytest's tmp_path sits under a 0700 folder
    path = os.path.join(tmp, "b.sock")
    with broker.start(path, export=False):
        os.chmod(path, 0o666)  # even with the file open to all, the peer uid is checked
        hello = encode(Hello(PROTOCOL_VERSION, 1)).hex()
        # The child drops to nobody before anything else: it may not read our packages,
        # so it speaks raw bytes and prints what came back.
        code = textwrap.dedent(
            f"""
            import os, socket, sys
            os.setgid(65534); os.setuid(65534)
            s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect({path!r})
            s.sendall(bytes.fromhex({hello!r}))
            data = b""
            while (d := s.recv(65536)):
                data += d
            sys.stdout.write(data.hex())
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=20
        )
        shutil.rmtree(tmp, ignore_errors=True)
        msgs = FrameReader().feed(bytes.fromhex(out.stdout))
        assert [(type(m).__name__, getattr(m, "code", None)) for m in msgs] == [
            ("ErrorFrame", "permission")
        ], out.stderr



# A broker stand-in that runs as nobody: it answers each whole frame it receives with the
# next canned reply and, when a connection ends, prints how many bytes it received.
# It drops to nobody right after its imports: it may not read our packages.
_NOBODY_BROKER = textwrap.dedent(
    """
    import os, socket, sys
    path, replies = sys.argv[1], [bytes.fromhex(h) for h in sys.argv[2:]]
    os.setgid(65534); os.setuid(65534)
    server = socket.socket(socket.AF_UNIX); server.bind(path); server.listen()
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        got, answered = b"", 0
        while data := conn.recv(65536):
            got += data
            pos = frames = 0
            while len(got) - pos >= 4:
                end = pos + 4 + int.from_bytes(got[pos:pos + 4], "little")
                if end > len(got):
                    break
                pos, frames = end, frames + 1
            for reply in replies[answered:frames]:
                conn.sendall(reply)
            answered = max(answered, frames)
        conn.close()
        print("received", len(got), flush=True)
    """
)


@pytest.fixture
async def nobody_broker():
    """The socket path of a broker stand-in run by uid 65534, and a way to read how many
    bytes each of its connections received."""
    folder = tempfile.mkdtemp()
    os.chown(folder, 65534, 65534)
    path = os.path.join(folder, "nobody.sock")
    replies = [encode(Welcome(PROTOCOL_VERSION, 4242)), encode(Stats(4242, 1, 0))]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _NOBODY_BROKER, path, *(r.hex() for r in replies),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    stdout = proc.stdout

    async def received() -> int:
        line = await asyncio.wait_for(stdout.readline(), 5)
        assert line.startswith(b"received "), line
        return int(line.split()[1])

    try:
        assert await asyncio.wait_for(stdout.readline(), 10) == b"ready\n"
        yield path, received
    finally:
        proc.kill()
        await proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a broker as another uid")
async def test_a_broker_of_another_uid_gets_not_a_byte(nobody_broker):
    path, received = nobody_broker
    assert os.getuid() != 65534
    async with ClientSession(broker=path) as session:
        with pytest.raises(BrokerConnectionError) as info:
            await session.stats()
    assert await received() == 0  # not even the Hello, which carries our pid
    message = str(info.value)
    assert f"{path} is served by uid 65534" in message
    assert "broker_uid=65534" in message and "HTTP_BROKER_UID=65534" in message


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a broker as another uid")
async def test_http_broker_stats_sends_nothing_to_a_broker_of_another_uid(
    nobody_broker, monkeypatch
):
    from broker.blocking import PeerError
    from broker.stats import fetch_stats

    path, received = nobody_broker
    with pytest.raises(PeerError, match="served by uid 65534"):
        fetch_stats(path)
    assert await received() == 0
    monkeypatch.setenv("HTTP_BROKER_UID", "65534")
    assert fetch_stats(path).pid == 4242
    assert await received() > 0


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a broker as another uid")
@pytest.mark.parametrize("how", ["argument", "environment"])
async def test_a_broker_of_a_listed_uid_is_trusted(nobody_broker, monkeypatch, how):
    path, received = nobody_broker
    if how == "environment":
        monkeypatch.setenv("HTTP_BROKER_UID", "1234, 65534")
        trusting = ClientSession(broker=path)
    else:
        trusting = ClientSession(broker=path, broker_uid=[1234, 65534])
    async with trusting:
        assert (await trusting.stats()).pid == 4242
        # A session of the same process that does not trust that uid does not get to
        # use the connection the other one opened.
        monkeypatch.delenv("HTTP_BROKER_UID", raising=False)
        async with ClientSession(broker=path) as wary:
            with pytest.raises(BrokerConnectionError, match="served by uid 65534"):
                await wary.stats()
    assert await received() > 0



async def _mute_broker(path: str, hello_read: asyncio.Event, closed: asyncio.Event):
    """A Unix server of our own uid that reads the Hello and never answers."""

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        hello_read.set()
        await reader.read()
        closed.set()
        writer.close()

    return await asyncio.start_unix_server(mute, path)


async def test_a_broker_that_never_answers_the_handshake(tmp_path):
    from worker_client.transport import IPCTransport

    path = str(tmp_path / "mute.sock")
    hello_read, closed = asyncio.Event(), asyncio.Event()
    server = await _mute_broker(path, hello_read, closed)
    try:
        transport = IPCTransport(asyncio.get_running_loop(), path)
        with pytest.raises(BrokerConnectionError, match="did not answer the handshake"):
            await transport.connect(timeout=0.2)
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_cancel_during_the_handshake_is_a_cancel(tmp_path):
    from worker_client.transport import IPCTransport

    path = str(tmp_path / "mute.sock")
    hello_read, closed = asyncio.Event(), asyncio.Event()
    server = await _mute_broker(path, hello_read, closed)
    try:
        transport = IPCTransport(asyncio.get_running_loop(), path)
        connecting = asyncio.ensure_future(transport.connect())
        await asyncio.wait_for(hello_read.wait(), 5)
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        await asyncio.wait_for(closed.wait(), 5)  # and the socket was closed
    finally:
        server.close()
        await server.wait_closed()



async def test_a_cancelled_connect_is_not_a_cancel_of_the_other_sessions(tmp_path):
    """Two sessions wait on one connection attempt; the one that made it is cancelled.
    The other is not: it connects again and gets its answer."""
    path = str(tmp_path / "second-time.sock")
    first_hello = asyncio.Event()
    connections = 0

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        mute = connections == 1  # the first connection never gets its Welcome
        frames = FrameReader()
        try:
            while data := await reader.read(65536):
                for msg in frames.feed(data):
                    if isinstance(msg, Hello) and mute:
                        first_hello.set()
                    elif isinstance(msg, Hello):
                        writer.write(encode(Welcome(PROTOCOL_VERSION, 4242)))
                    elif isinstance(msg, StatsRequest):
                        writer.write(encode(Stats(4242, 1, 0)))
        finally:
            writer.close()

    server = await asyncio.start_unix_server(broker, path)
    try:
        async with ClientSession(broker=path) as one, ClientSession(broker=path) as other:
            connecting = asyncio.ensure_future(one.stats())
            await asyncio.wait_for(first_hello.wait(), 5)
            waiting = asyncio.ensure_future(other.stats())
            for _ in range(5):  # until it waits on the same attempt (no timing)
                await asyncio.sleep(0)
            connecting.cancel()
            stats = await asyncio.wait_for(waiting, 5)
            assert stats.pid == 4242
            assert connections == 2
            with pytest.raises(asyncio.CancelledError):
                await connecting
    finally:
        server.close()
        await server.wait_closed()


async def test_kill9_worker_holding_every_slot(broker_process, serve_app):
    """A worker SIGKILLed mid-request frees its pool slot for the others at once."""
    slow = SlowApp()
    base = await serve_app(slow.app, handler_cancellation=True)
    victim = await _one_slot_worker(broker_process.socket_path, base + "/slow", "kill9")
    try:
        await asyncio.wait_for(slow.arrived.wait(), 15)
    finally:
        victim.kill()
        await victim.wait()
    await _fast_through_one_slot(broker_process.socket_path, base, "kill9", within=2.0)
    # The broker closed the dead worker's upstream connection too.
    await asyncio.wait_for(slow.upstream_closed.wait(), 2)
    assert broker_process.process.poll() is None


async def test_dead_worker_found_by_pid_when_a_child_holds_its_socket(
    broker_process, serve_app
):
    """A forked child keeps the dead worker's socket open: psutil finds the death."""
    slow = SlowApp()
    base = await serve_app(slow.app, handler_cancellation=True)
    script = textwrap.dedent(
        f"""
        import asyncio, os, sys
        sys.path.insert(0, {ROOT!r})
        from worker_client import ClientSession, TCPConnector
        async def main():
            loop = asyncio.get_running_loop()
            conn = TCPConnector(limit=1, name="reap")
            s = ClientSession(broker=sys.argv[1], connector=conn)
            task = asyncio.ensure_future(s.get(sys.argv[2]))
            go = loop.create_future()  # the test writes a line once the request is upstream
            loop.add_reader(0, go.set_result, None)
            await go
            loop.remove_reader(0)
            pid = os.fork()
            if pid == 0:
                os.close(1)  # keep only the broker socket, not our parent's stdout pipe
                sys.stdin.buffer.read()  # until the test closes our stdin
                os._exit(0)
            print(pid, flush=True)
            await task
        asyncio.run(main())
        """
    )
    victim = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, broker_process.socket_path, base + "/slow",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert victim.stdin is not None and victim.stdout is not None
    try:
        await asyncio.wait_for(slow.arrived.wait(), 15)
        victim.stdin.write(b"fork\n")
        assert int(await asyncio.wait_for(victim.stdout.readline(), 15)) > 0  # forked
        victim.kill()
        await victim.wait()
        await _fast_through_one_slot(broker_process.socket_path, base, "reap", within=2.5)
    finally:
        victim.stdin.close()  # the forked child leaves when it reads the end of its stdin
        if victim.returncode is None:
            victim.kill()
            await victim.wait()


async def test_three_spawned_workers_share_one_broker(serve_app):
    peers: set[int] = set()
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername")[1])
        return web.Response(text="hello")

    app.router.add_get("/", hello)
    base = await serve_app(app)
    loop = asyncio.get_running_loop()
    with broker.start() as proc:
        results = await loop.run_in_executor(
            None, _workers.run_in_processes, _workers.fetch_many, [(base + "/", 5)] * 3
        )
        assert {r[2] for r in results} == {proc.socket_path}
        assert len({r[0] for r in results}) == 3
        assert all(r[1] == [200] * 5 for r in results)
        # Every connection the server saw came from the broker process.
        broker_ports = {
            c.laddr.port
            for c in psutil.Process(proc.pid).net_connections(kind="tcp")
            if c.laddr
        }
        assert peers and peers <= broker_ports
        async with ClientSession() as session:
            stats = await session.stats()
        assert stats.requests == 15
        assert stats.pid == proc.pid


async def test_forked_child_reconnects(broker_process, serve_app):
    base = await _hello_app(serve_app)
    script = textwrap.dedent(
        f"""
        import asyncio, json, os, sys, threading
        sys.path.insert(0, {ROOT!r})
        from worker_client import ClientSession

        async def use(session):
            async with session.get(sys.argv[2]) as r:
                return (await r.text(), id(session._transport))

        async def main():
            session = ClientSession(broker=sys.argv[1])
            first = await use(session)
            pid = os.fork()
            if pid == 0:
                out = {{}}
                t = threading.Thread(target=lambda: out.update(r=asyncio.run(use(session))))
                t.start(); t.join()
                print(json.dumps({{"child": out["r"], "parent": first}}), flush=True)
                os._exit(0)
            os.waitpid(pid, 0)
            await session.close()

        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, broker_process.socket_path, base + "/",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    result = json.loads(out)
    assert result["child"][0] == result["parent"][0] == "hello"
    assert result["child"][1] != result["parent"][1]


def _refuses_connections(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return True
    return False


async def test_standalone_broker_drains_on_sigterm(serve_app, tmp_path):
    arrived, release = asyncio.Event(), asyncio.Event()
    app = web.Application()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(text="drained")

    app.router.add_get("/slow", slow)
    base = await serve_app(app)
    path = str(tmp_path / "standalone.sock")
    ready_r, ready_w = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "serve", "--socket", path, "--ready-fd", str(ready_w),
        cwd=ROOT, pass_fds=(ready_w,),
    )
    os.close(ready_w)
    try:
        loop = asyncio.get_running_loop()
        try:
            assert await loop.run_in_executor(None, os.read, ready_r, 64) == b"ready\n"
        finally:
            os.close(ready_r)
        async with ClientSession(broker=path) as session:
            pending = asyncio.ensure_future(session.get(base + "/slow"))
            await asyncio.wait_for(arrived.wait(), 10)
            proc.send_signal(signal.SIGTERM)
            # draining: no new connections, while the request in flight goes on
            await wait_until(lambda: _refuses_connections(path), 10, "the broker drains")
            release.set()
            resp = await pending
            assert await resp.text() == "drained"
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert not os.path.exists(path)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_broker_exits_when_its_starter_dies(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        import broker
        with broker.start() as b:
            print(b.pid, flush=True)
            sys.stdin.read()  # until killed (or the test's end closes our stdin)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as starter:
        assert starter.stdout is not None
        broker_pid = int(starter.stdout.readline())
        starter.kill()
        starter.wait()
        psutil.Process(broker_pid).wait(timeout=5)
        assert not psutil.pid_exists(broker_pid)


async def test_losing_the_broker_mid_request_then_a_new_one(serve_app, tmp_path):
    """A dead broker is a BrokerConnectionError; the same session reconnects later."""
    arrived = asyncio.Event()
    app = web.Application()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.Event().wait()  # cancelled when the broker's connection goes
        raise AssertionError("unreachable")

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app.router.add_get("/slow", slow)
    app.router.add_get("/", hello)
    base = await serve_app(app, handler_cancellation=True)
    path = str(tmp_path / "b.sock")
    async with ClientSession(broker=path) as session:
        with broker.start(path, export=False) as first:
            pending = asyncio.ensure_future(session.get(base + "/slow"))
            await asyncio.wait_for(arrived.wait(), 10)
            first.process.kill()
            with pytest.raises(BrokerConnectionError, match="lost the connection"):
                await pending
        with broker.start(path, export=False):
            async with session.get(base + "/") as resp:
                assert await resp.text() == "hello"


def _nested_stats(depth: int) -> bytes:
    """A Stats frame whose pools hold lists nested ``depth`` deep."""
    body = b"\x96\xa5stats\x01\x01\x00\x00\x91\x81\xa1a" + b"\x91" * depth + b"\xc0"
    return len(body).to_bytes(4, "little") + body


def _speaking(
    reply: Callable[[Any, asyncio.StreamWriter], Awaitable[None]], finished: asyncio.Event
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A stand-in broker's connection handler: Welcome for Hello, ``reply`` for the rest;
    ``finished`` is set when the worker hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader()
        try:
            while data := await reader.read(65536):
                for msg in frames.feed(data):
                    if isinstance(msg, Hello):
                        writer.write(encode(Welcome(PROTOCOL_VERSION, os.getpid())))
                    else:
                        await reply(msg, writer)
        finally:
            writer.close()
            finished.set()

    return handle


@pytest.mark.parametrize(
    ("answer", "needle"),
    [
        (lambda req: encode(Data(req.stream, b"body")), "data is not allowed in state open"),
        (lambda req: encode(Stats(1, 1, 0)), "Stats nobody asked for"),
        (lambda req: _nested_stats(100_000), "frame: RecursionError"),
        (lambda req: encode(Ack(req.stream, 2**62)), r"Expected `int` <= 4294967296"),
        (lambda req: encode(Ack(req.stream, 0)), "an Ack of 0 bytes"),
    ],
    ids=["data-before-head", "unasked-stats", "nested", "huge-ack", "empty-ack"],
)
async def test_a_broker_that_breaks_the_protocol_is_a_protocol_error(
    tmp_path, caplog, answer, needle
):
    """The worker checks every stream against shared.stream_state's table, and every
    answer against a question it asked."""
    path = str(tmp_path / "liar.sock")
    finished = asyncio.Event()

    async def lie(msg: Any, writer: asyncio.StreamWriter) -> None:
        if isinstance(msg, Request):
            writer.write(answer(msg))

    server = await asyncio.start_unix_server(_speaking(lie, finished), path)
    try:
        async with ClientSession(broker=path) as session:
            with pytest.raises(BrokerProtocolError, match=needle):
                await session.get("http://127.0.0.1:1/", timeout=ClientTimeout(total=5))
        await asyncio.wait_for(finished.wait(), 5)  # the worker hung up
        assert "Fatal error" not in caplog.text
    finally:
        server.close()
        await server.wait_closed()



async def test_requests_wait_while_the_broker_does_not_read(tmp_path):
    """Write backpressure: a broker that stops reading holds back new requests in their
    callers; the worker's socket buffer does not grow by a request body each."""
    path = str(tmp_path / "deaf.sock")
    hang_up = asyncio.Event()

    async def deaf(msg: Any, writer: asyncio.StreamWriter) -> None:
        if isinstance(msg, StatsRequest):
            writer.write(encode(Stats(os.getpid(), 1, 0)))
            await hang_up.wait()  # and read nothing more until then

    server = await asyncio.start_unix_server(_speaking(deaf, asyncio.Event()), path)
    try:
        async with ClientSession(broker=path) as session:
            await session.stats()
            body = b"x" * (1 << 20)
            posts = [
                asyncio.ensure_future(session.post("http://127.0.0.1:1/", data=body))
                for _ in range(40)
            ]
            for _ in range(50):  # let every caller run as far as it can (no timing)
                await asyncio.sleep(0)
            ipc = session._transport
            assert ipc is not None
            buffered = ipc._transport.get_write_buffer_size()  # type: ignore[attr-defined]
            assert buffered < 2 << 20, f"{buffered} bytes buffered for a deaf broker"
            # Closing does not wait for ever on a broker that reads nothing.
            started = time.monotonic()
            await asyncio.wait_for(session.close(), 10)
            assert time.monotonic() - started < ipc.close_grace + 4  # type: ignore[attr-defined]
            outcomes = await asyncio.wait_for(asyncio.gather(*posts, return_exceptions=True), 10)
            assert all(isinstance(o, ClientConnectionError) for o in outcomes), outcomes
    finally:
        hang_up.set()
        server.close()
        await server.wait_closed()

@pytest.mark.parametrize(
    ("changes", "error", "needle"),
    [
        ({"method": "GET / HTTP/1.1\r\nX: y"}, BrokerProtocolError, "invalid method"),
        ({"headers": [("X-Evil", "a\r\nHost: other")]}, BrokerProtocolError, "invalid header"),
        ({"headers": [("Bad Name", "v")]}, BrokerProtocolError, "invalid header"),
        ({"headers": [("X-Ctl", "a\x01b")]}, BrokerProtocolError, "invalid header"),
        ({"url": "ftp://127.0.0.1/"}, NonHttpUrlClientError, "ftp://"),
        ({"url": "http:///nohost"}, InvalidUrlClientError, "no host"),
    ],
)
async def test_broker_refuses_requests_a_worker_should_not_send(
    broker_process, raw_server, changes, error, needle
):
    """Nothing a worker sends can smuggle bytes onto an upstream connection."""
    import msgspec

    from worker_client import transport as transport_mod

    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(65536))

    base = await raw_server(handler)
    real_send = transport_mod.IPCTransport._send

    def tampering_send(self, msg):  # what a buggy or hostile worker could put on the wire
        if isinstance(msg, Request):
            fields = {"url": base + "/", **changes}
            msg = msgspec.structs.replace(msg, **fields)
        return real_send(self, msg)

    async with ClientSession(broker=broker_process.socket_path) as session:
        transport_mod.IPCTransport._send = tampering_send  # type: ignore[method-assign]
        try:
            with pytest.raises(error, match=needle):
                await session.get(base + "/")
        finally:
            transport_mod.IPCTransport._send = real_send  # type: ignore[method-assign]
        assert seen == []


async def test_a_request_too_large_for_a_frame_fails_alone(broker_process, serve_app):
    base = await _hello_app(serve_app)
    async with ClientSession(broker=broker_process.socket_path) as session:
        with pytest.raises(ValueError, match="over the broker's frame cap"):
            await session.get(base + "/", headers={"X-Huge": "a" * (5 << 20)})
        async with session.get(base + "/") as resp:  # the connection is still good
            assert await resp.text() == "hello"


def test_cli_stats_and_its_errors(broker_process, tmp_path):
    run = [sys.executable, "-m", "broker", "stats", "--socket"]
    out = subprocess.run(
        [*run, broker_process.socket_path, "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=30,
    )
    figures = json.loads(out.stdout)
    assert figures["pid"] == broker_process.pid
    assert {"workers", "streams", "requests", "pools", "dns"} <= figures.keys()
    out = subprocess.run(
        [*run, str(tmp_path / "none.sock")], capture_output=True, text=True, cwd=ROOT, timeout=30
    )
    assert out.returncode == 1
    assert out.stderr.startswith("http-broker: cannot reach the broker")
    assert "Traceback" not in out.stderr


def test_serve_refuses_to_remove_what_is_not_a_socket(tmp_path):
    path = tmp_path / "precious.txt"
    path.write_text("keep me")
    out = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--socket", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=30,
    )
    assert out.returncode == 1
    assert "is not a socket" in out.stderr
    assert path.read_text() == "keep me"


async def test_a_dead_workers_queued_request_leaves_the_queue(broker_process, serve_app):
    slow = SlowApp()
    base = await serve_app(slow.app, handler_cancellation=True)
    conn = TCPConnector(limit=1, name="queue-death")
    async with ClientSession(broker=broker_process.socket_path, connector=conn) as holder:
        holding = asyncio.ensure_future(holder.get(base + "/slow"))
        await asyncio.wait_for(slow.arrived.wait(), 10)
        queued = await _one_slot_worker(
            broker_process.socket_path, base + "/fast", "queue-death"
        )

        async def queue_length() -> int:
            stats = await holder.stats()
            (pool,) = [p for p in stats.pools if p["pool"] == "queue-death"]
            return int(pool["queued"])

        async def queued_are(n: int) -> bool:
            return await queue_length() == n

        await wait_until(lambda: queued_are(1), 10, "the worker's request is queued")
        queued.kill()
        await queued.wait()
        await wait_until(lambda: queued_are(0), 1.0, "the dead worker's request left")
        holding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holding
