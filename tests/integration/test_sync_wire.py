"""``SyncSession``'s blocking path through a broker (``worker_client/sync_wire.py``):
that it is taken (no loop thread is ever started), what goes to the loop instead, flow
control over one blocking connection per thread, timeouts, interrupts, threads, a
broker restart and fork. The request/response behaviour itself is
``test_sync_session.py``'s, run on this path too (its ``broker-wire`` mode)."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

import broker
from shared.messages import STREAM_WINDOW
from tests.conftest import ROOT
from tests.integration.apps import echo, echo_app, text_app
from tests.integration.test_session_cookies import cookie_app
from tests.integration.test_sync_session import WAIT, ServerThread, _never_app
from worker_client import (
    BrokerConnectionError,
    ClientResponseError,
    ClientTimeout,
    SyncSession,
    TraceConfig,
)

BIG = 3 * STREAM_WINDOW + 12345  # a body that needs acknowledgements to arrive


@pytest.fixture
def servers() -> Iterator[ServerThread]:
    threaded = ServerThread()
    yield threaded
    threaded.close()


@pytest.fixture
def make_sync(
    broker_process: broker.BrokerProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., SyncSession]]:
    monkeypatch.delenv("HTTP_BROKER_FAST_PATH", raising=False)  # this path is the subject
    sessions: list[SyncSession] = []

    def factory(**kwargs: Any) -> SyncSession:
        kwargs.setdefault("broker", broker_process.socket_path)
        s = SyncSession(**kwargs)
        sessions.append(s)
        return s

    yield factory
    for s in sessions:
        s.close()


def no_loop(s: SyncSession) -> bool:
    return s._loop is None and "http-broker-sync" not in {
        t.name for t in threading.enumerate()
    }


def big_app(body: bytes) -> web.Application:
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/big", big)
    return app


# -- which way a call goes -------------------------------------------------------------------


def test_the_wire_path_starts_no_loop_thread(servers, make_sync):
    base = servers.serve(echo_app())
    s = make_sync()
    assert s._wire is not None
    with s.post(base + "/x", json={"a": 1}, params={"q": "1"}, headers={"X-A": "b"}) as resp:
        assert resp.json()["method"] == "POST"
    with s.get(base + "/y", auth=None, timeout=5, allow_redirects=False) as resp:
        assert b'"path": "/y"' in b"".join(resp.iter_content(7))
    assert s.stats().pools
    assert s._wire.requests == 2
    assert no_loop(s)
    s.close()
    assert no_loop(s)  # closing needs no loop either


async def _hand_off(request: Any, handler: Any) -> Any:
    return await handler(request)


async def _strict(resp: Any) -> None:
    resp.raise_for_status()


@pytest.mark.parametrize(
    ("session_kw", "request_kw"),
    [
        ({}, {"data": io.BytesIO(b"a file")}),
        ({}, {"compress": "deflate", "data": b"x"}),
        ({}, {"raise_for_status": _strict}),
        ({}, {"ssl": False}),
        ({}, {"expect100": True, "data": b"x"}),
        ({}, {"data": b"x" * (1 << 20 | 1)}),  # over one frame
        ({"raise_for_status": _strict}, {}),
    ],
    ids=["file", "compress", "rfs-callable", "ssl", "expect100", "big-body", "session-rfs"],
)
def test_calls_it_cannot_carry_go_to_the_loop(servers, make_sync, session_kw, request_kw):
    app = web.Application(client_max_size=4 << 20)
    app.router.add_route("*", "/{tail:.*}", echo)
    base = servers.serve(app)
    s = make_sync(**session_kw)
    with s.post(base + "/p", **request_kw) as resp:
        assert resp.status == 200 and resp.json()["method"] == "POST"
    assert s._wire.requests == 0
    assert s._loop is not None  # the background loop took it
    with s.post(base + "/p", data=b"plain") as resp:  # and the next plain one is the wire's
        assert resp.json()["body"] == "plain"
    assert s._wire.requests == (0 if session_kw else 1)


@pytest.mark.parametrize(
    "session_kw",
    [{"middlewares": (_hand_off,)}, {"trace_configs": [TraceConfig()]}, {"trust_env": True},
     {"proxy": "http://127.0.0.1:1"}],
    ids=["middleware", "trace", "trust_env", "proxy"],
)
def test_sessions_it_cannot_carry_have_no_wire_path(make_sync, session_kw):
    assert make_sync(**session_kw)._wire is None


def test_the_fast_path_switch_and_embedded_mode_have_no_wire_path(make_sync, monkeypatch):
    assert SyncSession()._wire is None
    monkeypatch.setenv("HTTP_BROKER_FAST_PATH", "0")
    assert make_sync()._wire is None


def test_a_middleware_session_works_on_the_loop(servers, make_sync):
    base = servers.serve(text_app("fine"))
    seen: list[str] = []

    async def note(request: Any, handler: Any) -> Any:
        seen.append(request.method)
        return await handler(request)

    s = make_sync(middlewares=(note,))
    assert s.get(base + "/").text() == "fine"
    assert seen == ["GET"] and s._loop is not None


def test_cookies_set_on_the_wire_are_in_the_jar_and_sent_back(servers, make_sync):
    base = servers.serve(cookie_app(), host="localhost")
    s = make_sync()
    with s.get(base + "/set", params={"sid": "abc"}) as resp:
        assert resp.cookies["sid"].value == "abc"
    assert {m.key: m.value for m in s.cookie_jar} == {"sid": "abc"}  # the broker's jar
    s.cookie_jar.update_cookies({"given": "1"}, URL(base))
    with s.get(base + "/echo", cookies={"once": "2"}) as resp:
        assert resp.json()["cookies"] == {"sid": "abc", "given": "1", "once": "2"}
    assert s._wire.requests == 2 and no_loop(s)


# -- bodies and flow control -----------------------------------------------------------------


def test_a_body_over_the_window_arrives_by_read_and_by_iter_content(servers, make_sync):
    body = os.urandom(BIG)
    base = servers.serve(big_app(body))
    s = make_sync()
    with s.get(base + "/big") as resp:
        assert resp.read() == body
    with s.get(base + "/big") as resp:
        chunks = list(resp.iter_content(100_000))
    assert b"".join(chunks) == body
    assert all(0 < len(c) <= 100_000 for c in chunks)
    assert no_loop(s)


def test_two_open_responses_on_one_thread_each_stay_within_the_window(servers, make_sync):
    first, second = os.urandom(BIG), os.urandom(BIG)
    base = servers.serve(big_app(first))
    other = servers.serve(big_app(second))
    s = make_sync()
    older = s.get(base + "/big")
    newer = s.get(other + "/big")
    assert newer.read() == second  # the older one's frames wait, unacknowledged
    assert older._resp.content._size <= STREAM_WINDOW + 256 * 1024
    assert older.read() == first
    older.close()
    newer.close()
    (conn,) = s._wire._conns
    assert conn.streams == {}


def test_a_big_request_goes_while_open_responses_fill_the_brokers_buffer(servers, make_sync):
    """Unread responses fill the broker's buffer for this connection, so it stops reading
    it (its writes to it are paused); a request written then fills the socket, and must
    not wait for ever for a broker that waits for it to read."""
    body = os.urandom(BIG)
    go = threading.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(body))})
        await resp.prepare(request)
        await asyncio.get_running_loop().run_in_executor(None, go.wait, WAIT)
        await resp.write(body)
        return resp

    app = echo_app()
    app.router.add_get("/held", held)
    base = servers.serve(app)
    s = make_sync()
    opened: list[Any] = []
    posted: list[Any] = []

    def open_then_post() -> None:  # on one thread: one connection
        opened.extend(s.get(base + "/held") for _ in range(4))
        (conn,) = s._wire._conns
        go.set()  # 4 bodies to a connection that reads nothing: the broker pauses
        # Until the socket holds all it can (the rest waits in the broker): no event says
        # so, so the kernel's count is read until it has stood still four times running.
        until, stable, last = time.monotonic() + WAIT, 0, -1
        while stable < 4:
            assert time.monotonic() < until
            time.sleep(0.05)
            queued = _queued(conn.sock)
            stable = stable + 1 if queued == last and queued > 0 else 0
            last = queued
        # A new timeout: its TimeoutOpen frame, read whole, is what the broker stops at.
        tmo = ClientTimeout(total=WAIT + 1)
        with s.post(base + "/up", data=b"y" * (1 << 20), timeout=tmo) as resp:
            posted.append(len(resp.json()["body"]))

    sender = threading.Thread(target=open_then_post, daemon=True)
    sender.start()
    sender.join(WAIT)
    assert posted == [1 << 20]
    assert [r.read() for r in opened] == [body] * 4  # what arrived meanwhile kept its order
    assert no_loop(s)


def _queued(sock: Any) -> int:
    """The bytes waiting in ``sock``'s receive queue."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def test_a_response_can_be_read_on_another_thread(servers, make_sync):
    body = os.urandom(BIG)
    base = servers.serve(big_app(body))
    s = make_sync()
    resp = s.get(base + "/big")
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(resp.read).result(WAIT) == body
    assert s.get(base + "/big").read() == body


def test_a_response_released_early_cancels_its_stream_and_the_connection_goes_on(
    servers, make_sync
):
    body = os.urandom(BIG)
    base = servers.serve(big_app(body))
    s = make_sync()
    s.get(base + "/big").close()
    (conn,) = s._wire._conns
    with s.get(base + "/big") as resp:
        next(resp.iter_content(10))
    assert conn.streams == {}
    with s.get(base + "/big") as resp:
        assert resp.read() == body  # the cancelled streams' late frames were dropped
    assert set(s._wire._conns) == {conn} and not conn.closed


# -- errors, timeouts, interrupts ------------------------------------------------------------


def test_a_total_timeout_in_the_body_raises_and_keeps_the_connection(servers, make_sync):
    async def half(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100"})
        await resp.prepare(request)
        await resp.write(b"abc")
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")

    app = text_app("fine")
    app.router.add_get("/half", half)
    base = servers.serve(app)
    s = make_sync()
    started = time.monotonic()
    resp = s.get(base + "/half", timeout=ClientTimeout(total=0.5))
    with pytest.raises(asyncio.TimeoutError) as info:
        resp.read()
    assert str(info.value) == "Timeout on request (total)"
    assert 0.4 < time.monotonic() - started < 5
    with pytest.raises(asyncio.TimeoutError):  # again, as the async response
        resp.read()
    (conn,) = s._wire._conns
    assert s.get(base + "/").text() == "fine"
    assert set(s._wire._conns) == {conn} and not conn.closed


def test_raise_for_status_releases_as_the_async_session(servers, make_sync):
    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404, reason="Nope", body=b"x" * BIG)

    app = web.Application()
    app.router.add_get("/m", missing)
    base = servers.serve(app)
    s = make_sync(raise_for_status=True)
    with pytest.raises(ClientResponseError) as info:
        s.get(base + "/m")
    assert (info.value.status, info.value.message) == (404, "Nope")
    (conn,) = s._wire._conns
    assert conn.streams == {}  # released: its stream cancelled
    assert s.get(base + "/m", raise_for_status=False).read() == b"x" * BIG


def test_an_interrupt_while_waiting_cancels_the_stream(servers, make_sync):
    app, arrived, left = _never_app()
    base = servers.serve(app)
    fine = servers.serve(text_app("fine"))
    s = make_sync()

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def interrupt_main_when_held() -> None:
        if arrived.wait(WAIT):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        helper = threading.Thread(target=interrupt_main_when_held)
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            s.get(base + "/")
        helper.join(WAIT)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert left.wait(WAIT)  # the broker cancelled it upstream
    (conn,) = s._wire._conns
    assert s.get(fine + "/").text() == "fine"
    assert set(s._wire._conns) == {conn} and conn.streams == {}


def test_an_interrupt_just_after_the_request_went_cancels_it(servers, make_sync, monkeypatch):
    """A signal may land between the write and the wait for the head."""
    app, arrived, left = _never_app()
    base = servers.serve(app)
    fine = servers.serve(text_app("fine"))
    s = make_sync()
    assert s.get(fine + "/").text() == "fine"
    (conn,) = s._wire._conns
    sent = type(conn)._send_request

    def send_then_interrupt(self: Any, req: Any) -> None:
        sent(self, req)
        if req.url.startswith(base):
            raise KeyboardInterrupt

    monkeypatch.setattr(type(conn), "_send_request", send_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        s.get(base + "/")
    assert conn.streams == {}
    assert s.stats().streams == 0  # the broker read the Cancel before this question
    assert not arrived.is_set() or left.wait(WAIT)  # and let go upstream if it got there
    assert s.get(fine + "/").text() == "fine"


def test_a_request_over_the_frame_cap_is_refused_and_leaves_nothing(servers, make_sync):
    base = servers.serve(text_app("fine"))
    s = make_sync()
    assert s.get(base + "/").text() == "fine"
    (conn,) = s._wire._conns
    with pytest.raises(ValueError, match="frame cap"):
        s.get(base + "/", headers={"X-Big": "x" * (5 << 20)})
    assert conn.streams == {}  # nothing (the 5 MiB header with it) is kept
    assert s.get(base + "/").text() == "fine" and not conn.closed


def test_an_interrupt_just_after_bytes_were_received_costs_only_that_connection(
    servers, make_sync, monkeypatch
):
    """A signal may land between a ``recv`` and the frame reader: those bytes are gone,
    so nothing more can be read on that connection; the next request takes a new one."""
    body = os.urandom(BIG)
    base = servers.serve(big_app(body))
    fine = servers.serve(text_app("fine"))
    s = make_sync()
    resp = s.get(base + "/big")
    (conn,) = s._wire._conns
    feed = type(conn)._feed
    calls = [0]

    def feed_then_interrupt(self: Any, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        feed(self, data)

    monkeypatch.setattr(type(conn), "_feed", feed_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        resp.read()
    for _ in range(3):
        assert s.get(fine + "/").text() == "fine"
        assert s.get(base + "/big").read() == body


# -- threads, restarts, fork -----------------------------------------------------------------


def test_each_thread_has_its_own_connection(servers, make_sync):
    base = servers.serve(text_app("ok"))
    s = make_sync()
    barrier = threading.Barrier(4)

    def twenty(_: int) -> tuple[list[str], Any]:
        barrier.wait(WAIT)
        return [s.get(base + "/").text() for _ in range(20)], s._wire._local.conn

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(twenty, range(4)))
        assert len(s._wire._conns) == 4  # the pool's threads are alive: theirs too
    assert [texts for texts, _ in results] == [["ok"] * 20] * 4
    conns = [conn for _, conn in results]
    assert set(s._wire._conns) == set(conns)  # held here, so close() closes them
    assert s._wire.requests == 80 and no_loop(s)
    s.close()
    assert all(c.closed and c.sock.fileno() == -1 for c in conns)


def test_a_finished_threads_connection_is_closed(servers, make_sync):
    """A server with a thread per request must not gather a connection per request."""
    base = servers.serve(text_app("ok"))
    s = make_sync()
    socks: list[Any] = []

    def one() -> None:
        assert s.get(base + "/").text() == "ok"
        socks.append(s._wire._local.conn.sock)  # this thread's

    for _ in range(3):
        worker = threading.Thread(target=one)
        worker.start()
        worker.join(WAIT)
    assert len(socks) == 3 and all(sock.fileno() == -1 for sock in socks)
    assert len(s._wire._conns) == 0
    assert s.get(base + "/").text() == "ok"


def test_a_broker_restart_fails_the_waiting_request_and_the_next_ones_reconnect(
    servers, monkeypatch
):
    monkeypatch.delenv("HTTP_BROKER_FAST_PATH", raising=False)  # this path is the subject
    app, arrived, _ = _never_app()
    held = servers.serve(app)
    fine = servers.serve(text_app("fine"))
    where = tempfile.mkdtemp(prefix="hb-wire-")
    path = os.path.join(where, "b.sock")
    other = ThreadPoolExecutor(1)  # a thread whose connection is idle through the restart
    try:
        with broker.start(path, export=False) as first:
            s = SyncSession(broker=path)
            assert s.get(fine + "/").text() == "fine"
            assert other.submit(lambda: s.get(fine + "/").text()).result(WAIT) == "fine"
            killed: list[float] = []

            def kill_when_held() -> None:
                if arrived.wait(WAIT):
                    killed.append(time.monotonic())
                    first.process.kill()

            threading.Thread(target=kill_when_held).start()
            with pytest.raises(BrokerConnectionError, match="the broker went away") as info:
                s.get(held + "/")
            assert time.monotonic() - killed[0] < 1.0
            assert "the next request reconnects" in str(info.value)
            first.process.wait(WAIT)
        with broker.start(path, export=False):
            assert s.get(fine + "/").text() == "fine"
            assert other.submit(lambda: s.get(fine + "/").text()).result(WAIT) == "fine"
            assert len(s._wire._conns) == 2 and no_loop(s)
            s.close()
    finally:
        other.shutdown()
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_never_uses_its_parents_connection(servers, make_sync):
    base = servers.serve(echo_app())
    s = make_sync()
    assert s.get(base + "/").json()["method"] == "GET"
    (parent_conn,) = s._wire._conns
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12: fork with threads
        pid = os.fork()
    if pid == 0:
        try:
            said = s.get(base + "/child").json()["path"]
            conns = s._wire._conns
            said += f" {parent_conn not in conns} {len(conns)} {parent_conn.sock.fileno()}"
        except BaseException as exc:  # noqa: BLE001
            said = repr(exc)
        os.write(write_end, said.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as child:
        said = child.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    assert said == "/child True 1 -1"  # its own connection; its copy of the parent's closed
    assert s.get(base + "/parent").json()["path"] == "/parent"
    assert set(s._wire._conns) == {parent_conn} and not parent_conn.closed


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_childs_wire_cookies_are_in_its_own_jar(servers, make_sync):
    base = servers.serve(cookie_app(), host="localhost")
    s = make_sync()
    assert s.get(base + "/echo").json()["cookies"] == {}  # the jar is named in the parent
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12: fork with threads
        pid = os.fork()
    if pid == 0:
        try:
            s.get(base + "/set", params={"sid": "kid"}).read()
            said = repr({m.key: m.value for m in s.cookie_jar})
        except BaseException as exc:  # noqa: BLE001
            said = repr(exc)
        os.write(write_end, said.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as child:
        said = child.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    assert said == "{'sid': 'kid'}"  # what the child's requests stored, its jar shows
    assert {m.key: m.value for m in s.cookie_jar} == {}  # the parent's jar is its own


_SIGPIPE_CHILD = """
import signal
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as a host embedding Python may leave it
import broker
from worker_client import BrokerConnectionError, SyncSession
with broker.start(export=False) as b:
    s = SyncSession(broker=b.address)
    s.stats()
    b.process.kill()
    b.process.wait()
    try:
        s.stats()
    except BrokerConnectionError as exc:
        print("raised:", exc)
    s.close()
"""


def test_a_write_to_a_dead_broker_is_an_error_not_a_sigpipe():
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("HTTP_BROKER_FAST_PATH", None)
    done = subprocess.run(
        [sys.executable, "-c", _SIGPIPE_CHILD], env=env, capture_output=True, text=True,
        timeout=WAIT * 3,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "raised: the broker went away" in done.stdout
