"""Cookie jars across sessions and processes: a named jar is the group's, anything else
is private (issue 7's "which jar a session uses")."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from aiohttp import web
from yarl import URL

from tests.integration._workers import cookie_visit, run_in_processes
from worker_client import CookieJar


def login_app() -> web.Application:
    """``/login`` sets a cookie (a fresh token per login); ``/whoami`` says which token
    came back, or nothing."""

    async def login(request: web.Request) -> web.Response:
        resp = web.Response(text="")
        resp.set_cookie("login", uuid.uuid4().hex, httponly=True)
        return resp

    async def whoami(request: web.Request) -> web.Response:
        return web.Response(text=request.cookies.get("login", ""))

    app = web.Application()
    app.router.add_get("/login", login)
    app.router.add_get("/whoami", whoami)
    return app


def named(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"  # the broker outlives a test: no reuse


async def test_a_named_jar_carries_a_login_from_one_worker_process_to_another(
    serve_app, broker_process
):
    base = await serve_app(login_app())
    name = named("site")
    path = broker_process.socket_path
    loop = asyncio.get_running_loop()

    async def in_workers(*jobs: tuple[str, str | None]) -> list[str | None]:
        args = [(base + page, jar, path) for page, jar in jobs]
        return await loop.run_in_executor(None, run_in_processes, cookie_visit, args)

    assert await in_workers(("/login", name)) == [None]  # the login page says nothing
    (seen,) = await in_workers(("/whoami", name))
    assert seen is not None and len(seen) == 32
    # Another name is another jar; a session without cookie_jar= has its own.
    assert await in_workers(("/whoami", named("other")), ("/whoami", None)) == [None, None]


async def test_equal_named_jars_are_one_jar_and_stay_readable_after_the_session(
    serve_app, make_session, broker_address
):
    base = await serve_app(login_app())
    name = named("shared")
    jar = CookieJar(name=name, unsafe=True)
    s1 = make_session(cookie_jar=jar)
    async with s1.get(base + "/login"):
        pass
    await s1.close()
    assert len(jar) == 1  # readable after its session closed, as in aiohttp
    # Read before any session uses it: broker= says where (else HTTP_BROKER decides).
    twin = CookieJar(name=name, unsafe=True, broker=broker_address)
    assert [m.key for m in twin] == ["login"]
    s2 = make_session(cookie_jar=twin)
    async with s2.get(base + "/whoami") as resp:
        assert len(await resp.text()) == 32
    # Other arguments, other jar: unsafe=False is a different description.
    assert len(CookieJar(name=name, broker=broker_address)) == 0


def many_cookies_app(per_response: int) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        start = int(request.query["start"])
        resp = web.Response(text="")
        for i in range(start, start + per_response):
            resp.set_cookie(f"c{i}", "v" * 20)
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    return app


async def test_a_server_setting_100000_cookies_leaves_the_jar_capped(
    serve_app, make_session, mode
):
    per_response = 100
    base = await serve_app(many_cookies_app(per_response))
    name = named("flood")
    session = make_session(cookie_jar=CookieJar(name=name, unsafe=True))
    for start in range(0, 100_000, per_response):
        async with session.get(base + "/", params={"start": start}) as resp:
            assert resp.status == 200
            # resp.cookies is the response's own, all of them; the jar keeps 50 of each
            assert len(resp.cookies) == per_response
    jar = session.cookie_jar
    assert 0 < len(jar) <= 180  # one domain: the per-domain cap
    stats = await session.stats()
    (figures,) = [j for j in stats.jars if j.get("name") == name]
    assert figures["cookies"] == len(jar)
    # Still serving, and the newest cookies are the ones kept.
    async with session.get(base + "/", params={"start": 0}) as resp:
        assert resp.status == 200
    assert "c0" in {m.key for m in jar}


def unnamed_jars(stats) -> int:
    (entry,) = [j for j in stats.jars if j["name"] is None]
    return int(entry["jars"])


async def test_a_processs_jars_outlive_its_sessions_and_go_when_it_exits(
    serve_app, tmp_path
):
    import broker
    from broker.stats import fetch_stats
    from tests.conftest import wait_until
    from tests.integration._workers import login_then_read_after_close

    base = await serve_app(login_app())
    sock = str(tmp_path / "b.sock")
    loop = asyncio.get_running_loop()
    with broker.start(sock, export=False):
        ((count, listed),) = await loop.run_in_executor(
            None, run_in_processes, login_then_read_after_close, [(base + "/login", sock)]
        )
        # Read after the session closed: the broker kept the jar for the live process.
        assert (count, listed) == (1, 1)
        # The process has exited: its unnamed jar is gone.
        await wait_until(lambda: unnamed_jars(fetch_stats(sock)) == 0, what="jars left")


async def test_the_jars_of_collected_sessions_are_closed(serve_app, broker_process):
    # More sessions than a process may have jars open (Limits.max_jars, 1024): each
    # session's own jar is closed once the session is collected, by the next request.
    from broker.stats import fetch_stats
    from worker_client import ClientSession

    base = await serve_app(login_app())
    path = broker_process.socket_path
    keeper = ClientSession(broker=path)  # holds this process's connection
    try:
        before = unnamed_jars(await keeper.stats())
        for _ in range(1100):
            async with ClientSession(broker=path) as session:
                async with session.get(base + "/whoami") as resp:
                    assert resp.status == 200
        after = unnamed_jars(fetch_stats(path))
        assert after - before < 50
        # nor does this process keep an entry per session it ever had
        from broker.peercred import trusted_broker_uids
        from worker_client.jar_channel import channel

        assert len(channel(path, trusted_broker_uids()).specs) < 50
    finally:
        await keeper.close()


@contextlib.contextmanager
def small_broker(path: str, max_jars: int):
    """A broker whose workers may each open ``max_jars`` jars, on a loop of its own."""
    import threading

    from broker.server import BrokerServer, Limits

    loop = asyncio.new_event_loop()
    made: list[BrokerServer] = []
    ready = threading.Event()

    def run() -> None:
        async def start() -> None:
            made.append(BrokerServer(path, limits=Limits(max_jars=max_jars)))
            await made[0].start()

        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    server = made[0]
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(1), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def test_jars_refused_at_the_cap_open_once_there_is_room(serve_app, tmp_path):
    import gc

    from worker_client import BrokerConnectionError, ClientSession

    base = await serve_app(login_app())
    path = str(tmp_path / "small.sock")
    with small_broker(path, max_jars=2):
        first, second = CookieJar(broker=path), CookieJar(broker=path)
        assert len(first) == len(second) == 0  # both open: the cap
        third = CookieJar(broker=path)
        with pytest.raises(RuntimeError, match="max_jars"):
            len(third)
        assert len(first) == 0  # another jar's refusal is not this call's failure
        session = ClientSession(broker=path)  # its own jar: refused too
        try:
            with pytest.raises(BrokerConnectionError, match="max_jars"):
                await session.get(base + "/whoami")
            del second
            gc.collect()  # its close is queued: the next request sends it first
            async with session.get(base + "/whoami") as resp:
                assert resp.status == 200
            del first
            gc.collect()
            third.update_cookies({"a": "1"}, URL("http://example.com/"))  # it opens now
            assert len(third) == 1
        finally:
            await session.close()


async def test_a_stopped_broker_keeps_no_process_watched(tmp_path):
    # A process's jars are kept, its pid watched, after its last connection closes; a
    # broker that stops lets go of every such watch, and of the processes whose
    # connections it closes itself.
    import os

    from broker.peercred import trusted_broker_uids
    from tests.conftest import wait_until
    from worker_client.jar_channel import channel

    path = str(tmp_path / "held.sock")
    with small_broker(path, max_jars=4) as server:
        jar = CookieJar(broker=path)
        assert len(jar) == 0  # the jar channel connects and opens the jar
        channel(path, trusted_broker_uids()).close()
        await wait_until(lambda: os.getpid() in server._held, what="the held process")
        assert len(jar) == 0  # a new connection of the process: no longer watched
        await wait_until(lambda: os.getpid() not in server._held, what="the hold released")
    # stopped while the channel was connected: nothing held, no pidfd left open
    assert server._held == {}
    channel(path, trusted_broker_uids()).close()
