"""A standalone broker restarted under load (issue 13): the requests in flight when it
goes fail at once with a ``BrokerConnectionError`` saying the broker went away; the next
requests reconnect to whatever listens at the same path and succeed, with no code in the
worker. Real broker processes (``broker.start`` at a fixed path, killed by SIGKILL or
stopped by SIGTERM with no drain), the worker side in this process, real servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

import broker
from tests.tls_certs import Certs
from worker_client import (
    BrokerConnectionError,
    ClientSession,
    CookieJar,
    TCPConnector,
    TraceConfig,
)
from worker_client.fast_broker import BrokerFastPath

BODY_PIECE = b"x" * 65536
WENT_AWAY = "the broker went away"


@pytest.fixture(autouse=True)
def _fast_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_BROKER_FAST_PATH", "1")


@pytest.fixture(params=["shm", "no-shm"])
def shm(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Shared memory on and off, for the worker and the brokers it starts."""
    on = request.param == "shm"
    monkeypatch.setenv("HTTP_BROKER_SHM", "1" if on else "0")
    return on


class Upstream:
    """The server's view: how many requests arrived, and the gate holding them."""

    def __init__(self, expected: int) -> None:
        self.arrived = 0
        self.expected = expected
        self.all_arrived = asyncio.Event()
        self.release = asyncio.Event()

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.expected:
            self.all_arrived.set()

    def app(self) -> web.Application:
        async def hold(request: web.Request) -> web.Response:
            self.arrive()
            await self.release.wait()
            return web.Response(text="late")

        async def partial(request: web.Request) -> web.StreamResponse:
            self.arrive()
            resp = web.StreamResponse()
            resp.content_length = 2 * len(BODY_PIECE)
            await resp.prepare(request)
            await resp.write(BODY_PIECE)
            await self.release.wait()
            await resp.write(BODY_PIECE)
            return resp

        async def upload(request: web.Request) -> web.Response:
            if request.query.get("hold"):
                self.arrive()
            body = await request.read()
            return web.Response(text=str(len(body)))

        async def ok(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def set_cookie(request: web.Request) -> web.Response:
            resp = web.Response(text="set")
            resp.set_cookie("visit", request.query["n"])
            return resp

        async def cookie(request: web.Request) -> web.Response:
            return web.Response(text=request.cookies.get("visit", "-"))

        app = web.Application()
        app.router.add_get("/hold", hold)
        app.router.add_get("/partial", partial)
        app.router.add_post("/upload", upload)
        app.router.add_get("/", ok)
        app.router.add_get("/set", set_cookie)
        app.router.add_get("/cookie", cookie)
        return app


class Brokers:
    """Brokers started one after another at one socket path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stack = contextlib.ExitStack()
        self.current: broker.BrokerProcess | None = None

    def start(self) -> broker.BrokerProcess:
        self.current = self._stack.enter_context(
            broker.start(self.path, export=False, drain_timeout=0)
        )
        return self.current

    def signal(self, sig: signal.Signals) -> None:
        assert self.current is not None
        self.current.process.send_signal(sig)

    async def gone(self) -> None:
        """Until the current broker process has exited."""
        assert self.current is not None
        await asyncio.get_running_loop().run_in_executor(None, self.current.process.wait, 10)

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def brokers(tmp_path: Any) -> Iterator[Brokers]:
    b = Brokers(str(tmp_path / "broker.sock"))
    yield b
    b.close()


@pytest.fixture
async def https_base(
    serve_app: Callable[..., Awaitable[str]], tls_certs: Certs
) -> str:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_certs.server, tls_certs.server_key)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="tls ok")

    app = web.Application()
    app.router.add_get("/", ok)
    return await serve_app(app, ssl_context=ctx)


async def pieces(stop: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """A streamed body: two pieces, the second only once ``stop`` is set (if given)."""
    yield BODY_PIECE
    if stop is not None:
        await stop.wait()
    yield BODY_PIECE


def went_away(exc: BaseException, path: str) -> bool:
    return (
        isinstance(exc, BrokerConnectionError) and WENT_AWAY in str(exc) and path in str(exc)
    )


class Sessions:
    """The worker's sessions, one per path a request can take."""

    def __init__(self, path: str, ca: Any) -> None:
        self.path = path
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.plain = ClientSession(broker=path)  # the fast path once warm
        self.jar = CookieJar(name=f"restart-{os.getpid()}-{id(self)}", unsafe=True, broker=path)
        self.with_jar = ClientSession(broker=path, cookie_jar=self.jar)
        self.pooled = ClientSession(
            broker=path, connector=TCPConnector(limit=50, limit_per_host=40)
        )
        self.traced_errors: list[BaseException] = []
        trace = TraceConfig()

        async def on_exception(session: Any, ctx: Any, params: Any) -> None:
            self.traced_errors.append(params.exception)

        trace.on_request_exception.append(on_exception)
        self.traced = ClientSession(broker=path, trace_configs=[trace])
        assert isinstance(self.plain._fast, BrokerFastPath)

    async def text(self, session: ClientSession, url: str, **kw: Any) -> str:
        async with session.get(url, **kw) as resp:
            assert resp.status == 200
            return await resp.text()

    async def check_all_paths(self, base: str, https: str, n: int) -> None:
        """Every kind of request succeeds (``n`` tells this round's cookie apart)."""
        fast = self.plain._fast
        assert isinstance(fast, BrokerFastPath)
        before = fast.requests
        for _ in range(3):
            assert await self.text(self.plain, base + "/") == "ok"
        assert fast.requests - before >= 2  # the first may go the general way
        assert await self.text(self.with_jar, base + f"/set?n={n}") == "set"
        assert await self.text(self.with_jar, base + "/cookie") == str(n)
        assert len(self.jar) == 1
        assert await self.text(self.pooled, https + "/", ssl=self.ctx) == "tls ok"
        connector = self.pooled.connector
        assert connector is not None and self.pooled._transport in connector._transports
        connector.clear_dns_cache()  # to the broker of the day
        assert await self.text(self.traced, base + "/") == "ok"
        async with self.pooled.post(base + "/upload", data=pieces()) as resp:
            assert await resp.text() == str(2 * len(BODY_PIECE))
        stats = await self.plain.stats()
        assert stats.workers >= 1

    async def close(self) -> None:
        for s in (self.plain, self.with_jar, self.pooled, self.traced):
            await s.close()


@pytest.fixture
async def sessions(brokers: Brokers, tls_certs: Certs) -> AsyncIterator[Sessions]:
    s = Sessions(brokers.path, tls_certs.ca)
    yield s
    await s.close()


async def in_flight(sessions: Sessions, base: str, https: str, upstream: Upstream) -> list[Any]:
    """Twenty requests held by the server, of every kind; each task returns when its
    request failed: (exception, loop time)."""
    loop = asyncio.get_running_loop()
    reading = 0
    all_reading = asyncio.Event()
    never = asyncio.Event()

    async def held(coro: Awaitable[Any]) -> tuple[BaseException | None, float]:
        try:
            await coro
        except Exception as exc:
            return exc, loop.time()
        return None, loop.time()

    async def get(session: ClientSession, url: str, **kw: Any) -> None:
        async with session.get(url, **kw) as resp:
            await resp.read()

    async def read_body(session: ClientSession) -> None:
        nonlocal reading
        async with session.get(base + "/partial") as resp:
            assert await resp.content.readexactly(len(BODY_PIECE)) == BODY_PIECE
            reading += 1
            if reading == 2:
                all_reading.set()
            await resp.read()

    async def upload(session: ClientSession) -> None:
        async with session.post(base + "/upload?hold=1", data=pieces(never)) as resp:
            await resp.read()

    coros = [
        *(get(sessions.plain, base + "/hold") for _ in range(9)),  # the fast path
        get(sessions.traced, base + "/hold"),
        *(get(sessions.with_jar, base + "/hold") for _ in range(3)),
        *(get(sessions.pooled, base + "/hold", ssl=sessions.ctx) for _ in range(3)),
        *(upload(sessions.pooled) for _ in range(2)),
        *(read_body(sessions.plain) for _ in range(2)),
    ]
    assert len(coros) == upstream.expected == 20
    tasks = [asyncio.ensure_future(held(c)) for c in coros]
    await asyncio.wait_for(asyncio.gather(upstream.all_arrived.wait(), all_reading.wait()), 10)
    return tasks


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
async def test_requests_in_flight_fail_at_once_and_the_next_ones_reconnect(
    how: signal.Signals,
    shm: bool,
    brokers: Brokers,
    sessions: Sessions,
    serve_app: Callable[..., Awaitable[str]],
    https_base: str,
) -> None:
    upstream = Upstream(20)
    base = await serve_app(upstream.app(), handler_cancellation=True)
    brokers.start()
    await sessions.check_all_paths(base, https_base, 1)
    mappings = arena_mappings()
    tasks = await in_flight(sessions, base, https_base, upstream)
    loop = asyncio.get_running_loop()

    killed = loop.time()
    brokers.signal(how)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    for exc, _ in results:
        assert exc is not None and went_away(exc, brokers.path), repr(exc)
    assert max(when for _, when in results) - killed < 1.0
    assert [went_away(e, brokers.path) for e in sessions.traced_errors] == [True]
    # The uploads' bodies are no longer read (their pumps ended with the connection).
    assert [t for t in asyncio.all_tasks() if "_pump" in repr(t)] == []
    upstream.release.set()

    await brokers.gone()
    asked = loop.time()
    for attempt in (
        lambda: sessions.plain.get(base + "/"),
        lambda: sessions.pooled.post(base + "/upload", data=pieces()),
        sessions.plain.stats,
    ):
        with pytest.raises(BrokerConnectionError, match="cannot reach the broker at"):
            await attempt()
    with pytest.raises(BrokerConnectionError, match="cannot reach the broker at"):
        len(sessions.jar)  # the jar channel's blocking call
    assert loop.time() - asked < 1.0

    brokers.start()
    await sessions.check_all_paths(base, https_base, 2)
    assert upstream.arrived == 20  # nothing in flight was sent again to the new broker
    assert arena_mappings() == mappings  # the old broker's were unmapped


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def arena_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum("memfd:http-broker" in line for line in f)


async def test_restarts_leave_no_descriptor_or_mapping_behind(
    shm: bool,
    brokers: Brokers,
    sessions: Sessions,
    serve_app: Callable[..., Awaitable[str]],
    https_base: str,
) -> None:
    base = await serve_app(Upstream(0).app())
    brokers.start()
    await sessions.check_all_paths(base, https_base, 0)
    fds, mappings = open_descriptors(), arena_mappings()
    assert (mappings > 0) is shm
    for n in range(1, 4):
        brokers.signal(signal.SIGKILL)
        await brokers.gone()
        brokers.start()
        await sessions.check_all_paths(base, https_base, n)
        assert (open_descriptors(), arena_mappings()) == (fds, mappings)


@pytest.mark.parametrize("path", ["fast", "general"])
async def test_a_request_sent_before_the_loss_was_read_goes_on_a_new_connection(
    path: str,
    brokers: Brokers,
    sessions: Sessions,
    serve_app: Callable[..., Awaitable[str]],
    https_base: str,
) -> None:
    """The loop is kept busy from the broker's death until the next request is sent, so
    the worker has not read the hang-up: the request notices (the fast path: its frame
    went nowhere; the general path: the idle connection is checked) and connects anew."""
    base = await serve_app(Upstream(0).app())
    first = brokers.start()
    await sessions.check_all_paths(base, https_base, 1)
    old = sessions.plain._transport
    assert old is not None
    first.process.kill()
    first.process.wait()  # blocking, on purpose
    brokers.start()
    assert not old.closed
    session = sessions.plain if path == "fast" else sessions.traced
    assert await sessions.text(session, base + "/") == "ok"
    assert old.closed and session._transport is not old
    await sessions.check_all_paths(base, https_base, 2)


async def test_a_request_sent_beside_one_in_flight_before_the_loss_was_read_reconnects(
    brokers: Brokers,
    sessions: Sessions,
    serve_app: Callable[..., Awaitable[str]],
    https_base: str,
) -> None:
    """As above, with a request in flight on the same connection: it fails as the broker
    went away, and the next one goes on a new connection, on the general path too (the
    hang-up check finds nothing left unread that could answer the one in flight)."""
    upstream = Upstream(1)
    base = await serve_app(upstream.app(), handler_cancellation=True)
    first = brokers.start()
    await sessions.check_all_paths(base, https_base, 1)
    old = sessions.plain._transport
    assert old is not None and sessions.traced._transport is old
    held = asyncio.ensure_future(sessions.text(sessions.plain, base + "/hold"))
    await asyncio.wait_for(upstream.all_arrived.wait(), 10)
    first.process.kill()
    first.process.wait()  # blocking, on purpose
    brokers.start()
    assert not old.closed and old.handles
    assert await sessions.text(sessions.traced, base + "/") == "ok"
    assert sessions.traced._transport is not old
    with pytest.raises(BrokerConnectionError) as info:
        await asyncio.wait_for(held, 10)
    assert went_away(info.value, brokers.path)
    assert sessions.traced_errors == []
    upstream.release.set()
    await sessions.check_all_paths(base, https_base, 2)


async def test_a_fast_request_with_jar_closes_due_reconnects_after_an_unread_loss(
    brokers: Brokers,
    sessions: Sessions,
    serve_app: Callable[..., Awaitable[str]],
    https_base: str,
) -> None:
    """As above, when the request's write first carries the closes of collected jars: the
    dead socket refuses that write, so nothing went, and the request reconnects."""
    import gc

    from worker_client import jar_channel

    base = await serve_app(Upstream(0).app())
    first = brokers.start()
    await sessions.check_all_paths(base, https_base, 1)
    jar = CookieJar(name=f"collected-{os.getpid()}", unsafe=True, broker=brokers.path)
    async with ClientSession(broker=brokers.path, cookie_jar=jar) as other:
        assert await sessions.text(other, base + "/") == "ok"
    del other, jar
    gc.collect()
    assert jar_channel.closing
    old = sessions.plain._transport
    first.process.kill()
    first.process.wait()  # blocking, on purpose
    brokers.start()
    assert old is not None and not old.closed
    assert await sessions.text(sessions.plain, base + "/") == "ok"
    assert old.closed and sessions.plain._transport is not old
    await sessions.check_all_paths(base, https_base, 2)
