"""``http-broker serve --config FILE``: a real broker process started with a file, its
settings in force, SIGHUP reloads, SIGTERM drains, and logs without credentials.

Every wait is on an event: the broker's stderr lines (``event=...``), a counting
server's arrivals, a worker's frames."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web

from shared.messages import PROTOCOL_VERSION, ErrorFrame, Hello
from worker_client import (
    BasicAuth,
    ClientConnectionError,
    ClientSession,
    ServerTimeoutError,
    TCPConnector,
)

from ..conftest import ROOT
from .apps import closed_port, text_app
from .counting_server import CountingServer
from .raw_worker import RawWorker, raw_workers  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("raw_workers")


class Broker:
    """A ``serve --config`` process and the lines it logged."""

    def __init__(self, proc: asyncio.subprocess.Process, config: str, socket: str) -> None:
        self.proc = proc
        self.config = config
        self.socket = socket
        self.lines: list[str] = []
        self._read = 0  # lines ``until`` has looked at

    async def until(self, needle: str, timeout: float = 15.0) -> str:
        """The next logged line holding ``needle`` (lines before it are passed over)."""

        async def find() -> str:
            while True:
                while self._read < len(self.lines):
                    line = self.lines[self._read]
                    self._read += 1
                    if needle in line:
                        return line
                assert self.proc.stderr is not None
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError(f"the broker exited without logging {needle!r}:\n"
                                         + "\n".join(self.lines))
                self.lines.append(raw.decode().rstrip("\n"))

        return await asyncio.wait_for(find(), timeout)

    async def rest(self) -> str:
        """Every line, once the process has exited."""
        assert self.proc.stderr is not None
        tail = await asyncio.wait_for(self.proc.stderr.read(), 30)
        self.lines += tail.decode().splitlines()
        await self.proc.wait()
        return "\n".join(self.lines)

    def rewrite(self, text: str) -> None:
        with open(self.config, "w") as f:
            f.write(text)


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A directory with a short path: a Unix socket's path has at most 107 bytes."""
    path = tempfile.mkdtemp(prefix="hb-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def serve(directory: str, text: str, *args: str) -> AsyncIterator[Broker]:
    """A broker on ``directory``/b.sock with ``text`` as its configuration file (after a
    ``[broker]`` table's ``socket`` key), logging at info level or as ``text`` says."""
    socket_path = os.path.join(directory, "b.sock")
    config = os.path.join(directory, "broker.toml")
    with open(config, "w") as f:
        f.write(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get(
        "PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "serve", "--config", config, "--socket", socket_path,
        *args, stderr=asyncio.subprocess.PIPE, env=env,
    )
    broker = Broker(proc, config, socket_path)
    try:
        await broker.until("event=serving")
        yield broker
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def hello_refused(path: str) -> ErrorFrame:
    worker = await RawWorker.connect(path, hello=False)
    worker.send(Hello(PROTOCOL_VERSION, os.getpid()))
    msg = await worker.next()
    assert isinstance(msg, ErrorFrame), msg
    return msg


async def get(session: ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as resp:
        return resp.status, await resp.text()


INFO = "[log]\nlevel = 'info'\n"


async def test_an_unknown_key_stops_serve_with_exit_code_2_naming_it(short_dir):
    config = os.path.join(short_dir, "broker.toml")
    with open(config, "w") as f:
        f.write("[broker]\nsoket = '/tmp/x.sock'\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "serve", "--config", config,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert err.decode() == f"http-broker: {config}: unknown key 'soket' (in [broker])\n"


async def test_the_socket_is_made_with_the_mode_configured(short_dir):
    async with serve(short_dir, "[broker]\nsocket_mode = 0o660\n" + INFO) as broker:
        assert stat.S_IMODE(os.stat(broker.socket).st_mode) == 0o660


async def test_connections_beyond_max_workers_are_refused_and_the_others_served(
    short_dir, serve_app
):
    url = await serve_app(text_app("hello"))
    async with serve(short_dir, "[broker]\nmax_workers = 2\n" + INFO) as broker:
        async with ClientSession(broker=broker.socket) as session:
            assert await get(session, url) == (200, "hello")
            await RawWorker.connect(broker.socket)  # the second: welcomed
            refused = await hello_refused(broker.socket)
            assert refused.code == "busy"
            assert "at most 2 worker connections at once (max_workers" in refused.message
            line = await broker.until("event=worker_refused")
            assert "reason=max_workers" in line and "max_workers=2" in line
            assert await get(session, url) == (200, "hello")


async def test_the_global_connection_cap_holds_across_two_pools(short_dir):
    server = CountingServer(open_at=2)  # answers once the cap is reached
    port = await server.start(("127.0.0.1", "127.0.0.2"))
    try:
        async with serve(short_dir, "[broker]\nmax_connections = 2\n" + INFO) as broker:
            async with ClientSession(
                broker=broker.socket, connector=TCPConnector(limit=50)
            ) as one, ClientSession(
                broker=broker.socket, connector=TCPConnector(limit=60)
            ) as two:
                results = await asyncio.gather(
                    *(get(one, f"http://127.0.0.1:{port}/{i}") for i in range(6)),
                    *(get(two, f"http://127.0.0.2:{port}/{i}") for i in range(6)),
                )
        assert results == [(200, "ok")] * 12
        counts = server.counts
        assert counts.requests == 12
        assert counts.max_inflight[server.ALL] == 2
        assert counts.max_open[server.ALL] == 2, counts.max_open
        assert counts.max_open["127.0.0.1"] >= 1 and counts.max_open["127.0.0.2"] >= 1
    finally:
        await server.stop()


async def test_the_default_timeouts_apply_to_sessions_that_kept_the_default(short_dir):
    server = CountingServer(open_at=None)  # never answers until released
    port = await server.start()
    try:
        async with serve(short_dir, "[timeouts]\nsock_read = 0.2\n" + INFO) as broker:
            async with ClientSession(broker=broker.socket) as session:
                with pytest.raises(ServerTimeoutError):
                    await get(session, f"http://127.0.0.1:{port}/")
    finally:
        server.release()
        await server.stop()


async def test_sighup_applies_what_it_can_and_names_what_needs_a_restart(short_dir, serve_app):
    url = await serve_app(text_app("hello"))
    async with serve(short_dir, "[broker]\nmax_workers = 1\n" + INFO) as broker:
        async with ClientSession(broker=broker.socket) as session:
            assert await get(session, url) == (200, "hello")
            await hello_refused(broker.socket)
            broker.rewrite(
                "[broker]\nmax_workers = 2\ncookie_file = '/elsewhere.json'\nsocket_mode = 0o640\n"
                "[log]\nlevel = 'debug'\n"
            )
            broker.proc.send_signal(signal.SIGHUP)
            line = await broker.until("event=reloaded")
            assert "applied=broker.max_workers,log.level" in line
            assert "needs_restart=broker.socket_mode,broker.cookie_file" in line
            assert " level=warning " in line  # something could not be applied
            await RawWorker.connect(broker.socket)  # the second connection: welcomed now
            with pytest.raises(ClientConnectionError):
                await get(session, f"http://127.0.0.1:{closed_port()}/")
            assert "event=request_failed" in await broker.until("level=debug")
            assert stat.S_IMODE(os.stat(broker.socket).st_mode) == 0o600


async def test_a_file_made_invalid_is_refused_on_sighup_and_the_old_settings_kept(
    short_dir, serve_app
):
    url = await serve_app(text_app("hello"))
    async with serve(short_dir, "[broker]\nmax_workers = 1\n" + INFO) as broker:
        async with ClientSession(broker=broker.socket) as session:
            assert await get(session, url) == (200, "hello")
            broker.rewrite("[broker]\nmax_workers = 'lots'\n[log]\nlevel = 'debug'\n")
            broker.proc.send_signal(signal.SIGHUP)
            line = await broker.until("event=reload_refused")
            assert " level=error " in line
            assert "key 'max_workers' (in [broker]): expected `int`, got `str`" in line
            assert "at most 1 worker connections" in (await hello_refused(broker.socket)).message
            assert await get(session, url) == (200, "hello")
            broker.rewrite("[broker]\nmax_workers = 2\n" + INFO)  # fixed: taken again
            broker.proc.send_signal(signal.SIGHUP)
            assert "applied=broker.max_workers " in await broker.until("event=reloaded")
            await RawWorker.connect(broker.socket)


async def test_sigterm_lets_a_request_in_flight_finish(short_dir):
    server = CountingServer(open_at=None)
    port = await server.start()
    try:
        async with serve(short_dir, "[broker]\ndrain_timeout = 20\n" + INFO) as broker:
            async with ClientSession(broker=broker.socket) as session:
                request = asyncio.ensure_future(get(session, f"http://127.0.0.1:{port}/"))
                await server.arrived(1)
                broker.proc.send_signal(signal.SIGTERM)
                line = await broker.until("event=draining")
                assert "streams=1" in line and "drain_timeout=20" in line
                server.release()
                assert await request == (200, "ok")
                await broker.until("event=stopped")
            assert await asyncio.wait_for(broker.proc.wait(), 30) == 0
    finally:
        server.release()
        await server.stop()


async def test_a_sighup_during_the_drain_neither_reloads_nor_cuts_it_short(short_dir):
    """``systemctl reload`` (or a log rotation's HUP) while the broker drains: the drain
    goes on (SIGHUP's default action would kill the broker with requests in flight)."""
    server = CountingServer(open_at=None)
    port = await server.start()
    try:
        async with serve(short_dir, "[broker]\ndrain_timeout = 20\n" + INFO) as broker:
            async with ClientSession(broker=broker.socket) as session:
                request = asyncio.ensure_future(get(session, f"http://127.0.0.1:{port}/"))
                await server.arrived(1)
                broker.proc.send_signal(signal.SIGTERM)
                await broker.until("event=draining")
                broker.proc.send_signal(signal.SIGHUP)
                line = await broker.until("event=reload_refused")
                assert "reason=draining" in line
                server.release()
                assert await request == (200, "ok")
                await broker.until("event=stopped")
            assert await asyncio.wait_for(broker.proc.wait(), 30) == 0
    finally:
        server.release()
        await server.stop()


async def test_a_draining_broker_leaves_the_socket_of_the_broker_that_replaced_it(
    short_dir, serve_app
):
    """A new broker started on the path while the old one drains (its listener is closed
    at once, so the new one takes the path for a leftover) keeps its socket: the old
    one, ending its drain, removes only a socket that is still its own."""
    url = await serve_app(text_app("hello"))
    server = CountingServer(open_at=None)
    port = await server.start()
    try:
        async with serve(short_dir, "[broker]\ndrain_timeout = 20\n" + INFO) as old:
            async with ClientSession(broker=old.socket) as session:
                request = asyncio.ensure_future(get(session, f"http://127.0.0.1:{port}/"))
                await server.arrived(1)
                old.proc.send_signal(signal.SIGTERM)
                await old.until("event=draining")
                async with serve(short_dir, INFO) as new:
                    server.release()
                    assert await request == (200, "ok")
                    assert await asyncio.wait_for(old.proc.wait(), 30) == 0
                    assert stat.S_ISSOCK(os.stat(new.socket).st_mode)
                    assert await get(session, url) == (200, "hello")  # on the new broker
    finally:
        server.release()
        await server.stop()


async def test_the_log_of_requests_with_credentials_holds_none(short_dir, serve_app):
    async def answer(request: web.Request) -> web.Response:
        resp = web.Response(text="ok")
        resp.set_cookie("back", "secret-set-cookie")
        return resp

    app = web.Application()
    app.router.add_get("/p", answer)
    base = (await serve_app(app)).removeprefix("http://")
    dead = f"127.0.0.1:{closed_port()}"
    async with serve(short_dir, "[log]\nlevel = 'debug'\n") as broker:
        async with ClientSession(
            broker=broker.socket, cookies={"sid": "secret-cookie"},
            headers={"X-Api-Key": "secret-header"},
        ) as session:
            for url, kwargs in [
                (f"http://user:secret-pw@{base}/p?token=secret-query", {}),
                (f"http://{base}/p", {"headers": {"Authorization": "Bearer secret-bearer"}}),
            ]:
                async with session.get(url, **kwargs) as resp:
                    assert resp.status == 200
            for url, kwargs in [
                (f"http://user:secret-pw2@{dead}/p?token=secret-query2", {}),
                (f"http://{base}/p", {"proxy": f"http://pu:secret-proxy@{dead}"}),
                (f"http://{base}/p", {"proxy": f"http://{dead}", "proxy_headers": {
                    "Proxy-Authorization": BasicAuth("pu", "secret-proxy2").encode()}}),
            ]:
                with pytest.raises(ClientConnectionError):
                    async with session.get(url, **kwargs):
                        pass
        broker.proc.send_signal(signal.SIGTERM)
        text = await broker.rest()
    assert text.count("event=request_failed") == 3, text
    assert f"url=http://{dead}/p " in text  # the URL is there, without what it carried
    assert "secret" not in text.lower(), text
    assert "Bearer" not in text and "c2VjcmV0" not in text  # nor base64 of "secret"


_HANDSHAKE = """
import os, socket, sys
from shared.framing import FrameReader, encode
from shared.messages import PROTOCOL_VERSION, ErrorFrame, Hello
os.setgroups([]); os.setgid(65534); os.setuid(int(sys.argv[2]))
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
sock.connect(sys.argv[1])
sock.sendall(encode(Hello(PROTOCOL_VERSION, os.getpid())))
reader, msgs = FrameReader(), []
while not msgs:
    data = sock.recv(65536)
    if not data:
        break
    msgs = reader.feed(data)
msg = msgs[0] if msgs else None
print(type(msg).__name__, getattr(msg, "code", ""))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="starts workers of other uids: needs root")
async def test_allowed_uids_are_served_and_other_uids_refused(short_dir):
    async with serve(short_dir, "[broker]\nsocket_mode = 0o660\nallowed_uids = [65534]\n"
                     + INFO) as broker:
        os.chmod(short_dir, 0o755)  # the file system lets both in: the broker decides
        os.chown(broker.socket, -1, 65534)
        env = {**os.environ, "PYTHONPATH": ROOT}
        answers = {}
        for uid in (65534, 65533):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _HANDSHAKE, broker.socket, str(uid),
                stdout=asyncio.subprocess.PIPE, env=env, cwd="/",
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            answers[uid] = out.decode().strip()
        assert answers == {65534: "Welcome", 65533: "ErrorFrame permission"}
        line = await broker.until("event=worker_refused")
        assert "reason=uid" in line and "uid=65533" in line


_STAY = _HANDSHAKE + """
sys.stdout.flush()
while len(msgs) < 2:
    data = sock.recv(65536)
    if not data:
        break
    msgs += reader.feed(data)
msg = msgs[1] if len(msgs) > 1 else None
print(type(msg).__name__, getattr(msg, "code", ""))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="starts a worker of another uid: needs root")
async def test_a_uid_taken_out_of_allowed_uids_by_a_reload_is_cut_off(short_dir):
    """A reload that takes a uid out of ``allowed_uids`` revokes it: that uid's worker
    connections already made are closed with ``ErrorFrame("permission")``, not served
    on until they hang up."""
    async with serve(short_dir, "[broker]\nsocket_mode = 0o660\nallowed_uids = [65534]\n"
                     + INFO) as broker:
        os.chmod(short_dir, 0o755)
        os.chown(broker.socket, -1, 65534)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _STAY, broker.socket, "65534",
            stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT}, cwd="/",
        )
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert first.decode().strip() == "Welcome"
        broker.rewrite("[broker]\nsocket_mode = 0o660\nallowed_uids = []\n" + INFO)
        broker.proc.send_signal(signal.SIGHUP)
        assert "applied=broker.allowed_uids " in await broker.until("event=reloaded")
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert out.decode().strip() == "ErrorFrame permission"


async def test_a_websocket_is_handed_over_to_a_worker_the_cap_counts_once(short_dir, serve_app):
    """A plain ws:// socket goes to its worker on a connection of its own (``Claim``):
    that short connection is not a worker, so ``max_workers`` (here 1, taken by the
    worker's own connection) does not refuse it."""

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data + "/answer")
        return ws

    app = web.Application()
    app.router.add_get("/", echo)
    url = (await serve_app(app)).replace("http", "ws", 1) + "/"
    async with serve(short_dir, "[broker]\nmax_workers = 1\n" + INFO) as broker:
        async with ClientSession(broker=broker.socket) as session:
            async with session.ws_connect(url) as ws:  # type: ignore[attr-defined]
                await ws.send_str("hello")
                assert await ws.receive_str() == "hello/answer"
