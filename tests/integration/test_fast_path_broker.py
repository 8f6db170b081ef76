"""The broker-mode fast path on the worker's side (``worker_client.fast_broker``): taken
for the common request once the session's transport is up, one Request frame and one
head future; whatever is not a whole one-frame response goes on in the general
``StreamHandle`` machinery, with the behaviour unchanged. Here what is the broker
mode's own (its frames, templates, streamed bodies, failures); what both modes share is
in test_fast_path.py, run in each. Real broker process, real servers. The request-level
test files also run with the fast path off (.ci/run)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from aiohttp import web

import broker
import worker_client
from worker_client import ClientSession, ClientTimeout
from worker_client.fast_broker import BrokerFastPath

from .test_fast_path import fast_count, hi


@pytest.fixture(autouse=True)
def _fast_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_BROKER_FAST_PATH", "1")


@pytest.fixture
async def session(broker_process: broker.BrokerProcess) -> AsyncIterator[ClientSession]:
    s = ClientSession(broker=broker_process.socket_path)
    assert isinstance(s._fast, BrokerFastPath)
    yield s
    await s.close()


async def test_a_body_that_streams(serve_app, session):
    release = asyncio.Event()
    big = bytes(range(256)) * 2048  # over what one frame carries with the head

    async def later(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"head-")
        await release.wait()
        await resp.write(b"tail")
        await resp.write_eof()
        return resp

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=big)

    app = web.Application()
    app.router.add_get("/", hi)
    app.router.add_get("/later", later)
    app.router.add_get("/big", large)
    base = await serve_app(app)
    await (await session.get(base + "/")).read()
    for _ in range(2):
        async with session.get(base + "/big") as resp:
            assert await resp.read() == big
    async with session.get(base + "/later") as resp:
        assert resp.status == 200
        assert await resp.content.readexactly(5) == b"head-"
        release.set()
        assert await resp.read() == b"tail"
    assert fast_count(session) == 3
    assert (await session.stats()).streams == 0


async def test_a_failure_reaches_the_caller_as_in_the_general_path(
    serve_app, session, unused_tcp_port, broker_process, monkeypatch
):
    app = web.Application()
    app.router.add_get("/", hi)
    base = await serve_app(app)
    await (await session.get(base + "/")).read()
    refused = f"http://127.0.0.1:{unused_tcp_port}/"
    errors = []
    for _ in range(2):
        with pytest.raises(worker_client.ClientConnectorError) as info:
            await session.get(refused)
        errors.append((type(info.value), str(info.value), info.value.port))
    assert fast_count(session) == 2
    assert not session._handles
    monkeypatch.setenv("HTTP_BROKER_FAST_PATH", "0")
    async with ClientSession(broker=broker_process.socket_path) as general:
        with pytest.raises(worker_client.ClientConnectorError) as info:
            await general.get(refused)
    assert errors == [(type(info.value), str(info.value), unused_tcp_port)] * 2


async def test_templates_follow_the_timeout_the_pool_and_a_new_connection(
    serve_app, broker_process
):
    app = web.Application()
    app.router.add_get("/", hi)
    base = await serve_app(app)
    path = broker_process.socket_path
    connector = worker_client.TCPConnector(limit=3)
    async with ClientSession(broker=path, connector=connector) as s:
        await (await s.get(base + "/")).read()
        for timeout in (None, ClientTimeout(total=5), ClientTimeout(total=5), 7.0):
            async with s.get(base + "/", timeout=timeout) as resp:
                assert await resp.text() == "hi"
        first = s._transport
        assert first is not None
        first._transport.close()  # type: ignore[attr-defined]  # the connection is lost
        await first._lost  # type: ignore[attr-defined]
        for _ in range(3):  # the first again the general way, on a new connection
            assert await (await s.get(base + "/", timeout=7.0)).text() == "hi"
        assert s._transport is not first
        assert fast_count(s) == 6
        # Another session on that connection, with its own default timeout.
        async with ClientSession(broker=path, timeout=ClientTimeout(total=9)) as other:
            for _ in range(3):
                assert await (await other.get(base + "/")).text() == "hi"
            assert fast_count(other) == 2
        assert (await s.stats()).streams == 0


async def test_the_fast_frame_is_the_general_paths_request(
    serve_app, broker_process, monkeypatch
):
    """Decoded as the broker decodes it, the templated frame is the Request the general
    path sends for the same call (stream id aside)."""
    from shared.framing import FrameReader

    app = web.Application()
    app.router.add_post("/", hi)
    base = await serve_app(app)
    requests = {}
    for on in ("0", "1"):
        monkeypatch.setenv("HTTP_BROKER_FAST_PATH", on)
        frames: list[bytes] = []
        async with ClientSession(
            broker=broker_process.socket_path, connector=worker_client.TCPConnector(limit=4),
            timeout=ClientTimeout(total=8), max_redirects=3, auto_decompress=False,
            requote_redirect_url=False,
        ) as s:
            await (await s.post(base + "/", data=b"first")).read()
            raw = s._transport._transport  # type: ignore[union-attr]
            write = raw.write

            def spy(data: bytes, write=write, frames=frames) -> None:  # type: ignore[no-untyped-def]
                frames.append(bytes(data))
                write(data)

            raw.write = spy
            try:
                for _ in range(3):
                    async with s.post(
                        base + "/", data=b"12345", headers={"X-A": "1"}, allow_redirects=False
                    ) as resp:
                        assert await resp.text() == "hi"
            finally:
                raw.write = write
            if on == "1":
                assert fast_count(s) == 3
        decoded = [m for f in frames for m in FrameReader().feed(f)]
        requests[on] = [
            # each session its own jar; by id, what the pool and timeout fields hold is unread
            msgspec.structs.asdict(m) | {"stream": 0, "jar": bool(m.jar), "pool": 0, "timeout": 0}
            for m in decoded
            if type(m).__name__ == "RequestFrame"
        ]
    assert len(requests["0"]) == len(requests["1"]) == 3
    for r in requests["0"] + requests["1"]:
        assert r == requests["0"][0]
    assert requests["1"][0]["body"] == b"12345" and requests["1"][0]["jar"]
    assert requests["1"][0]["pool_id"] and requests["1"][0]["timeout_id"]
