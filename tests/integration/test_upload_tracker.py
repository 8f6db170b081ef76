"""``upload_tracker=``: aiohttp's ``UploadTracker`` fed by what the engine wrote, in both
modes (through a broker: its acknowledgements)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from worker_client import (
    ClientConnectorError,
    ClientError,
    ClientPayloadError,
    UploadTracker,
)
from worker_client.exceptions import UploadAbortedError

SIZE = 16 << 20


def _app(seen: list[int], tracker: list[UploadTracker]) -> web.Application:
    """``/slow`` reads the body 1 MiB at a time and notes the tracker's count each time."""
    app = web.Application(client_max_size=1 << 26)

    async def slow(request: web.Request) -> web.Response:
        size = 0
        while chunk := await request.content.read(1 << 20):
            size += len(chunk)
            seen.append(tracker[0].bytes_written)
        return web.json_response({"size": size})

    async def redirect(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=307, headers={"Location": "/slow"})

    app.router.add_post("/slow", slow)
    app.router.add_post("/redirect", redirect)
    return app


async def test_a_streamed_upload_is_counted_as_the_server_gets_it(serve_app, session, tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(SIZE))
    seen: list[int] = []
    tracker = UploadTracker()
    base = await serve_app(_app(seen, [tracker]))
    with path.open("rb") as f:
        async with session.post(base + "/slow", data=f, upload_tracker=tracker) as resp:
            assert (await resp.json())["size"] == SIZE
    assert seen == sorted(seen) and seen[0] < SIZE  # live, and never backwards
    assert tracker.bytes_written == SIZE and tracker.attempts == 1
    await tracker.upload_complete


async def test_a_307_is_a_second_attempt(serve_app, session, tmp_path):
    path = tmp_path / "r.bin"
    path.write_bytes(bytes(3 << 20))
    tracker = UploadTracker()
    base = await serve_app(_app([], [tracker]))
    with path.open("rb") as f:
        async with session.post(base + "/redirect", data=f, upload_tracker=tracker) as resp:
            assert resp.status == 200
    assert tracker.attempts == 2 and tracker.bytes_written == 3 << 20
    await tracker.upload_complete


@pytest.mark.parametrize("status", [200, 307])
async def test_an_inline_body_is_counted_when_sent(serve_app, session, status):
    tracker = UploadTracker()
    base = await serve_app(_app([], [tracker]))
    url = base + ("/slow" if status == 200 else "/redirect")
    async with session.post(url, data=b"x" * 1000, upload_tracker=tracker) as resp:
        assert resp.status == 200
    assert tracker.bytes_written == 1000
    assert tracker.attempts == (1 if status == 200 else 2)
    await tracker.upload_complete


async def test_a_failed_request_aborts_the_upload(session):
    tracker = UploadTracker()
    with pytest.raises(ClientConnectorError):
        await session.post("http://127.0.0.1:1/", data=b"x", upload_tracker=tracker)
    with pytest.raises(UploadAbortedError):
        await tracker.upload_complete


async def test_the_bodys_own_error_is_the_uploads(serve_app, session):
    async def failing() -> AsyncIterator[bytes]:
        yield b"part"
        raise OSError("source gone")

    tracker = UploadTracker()
    base = await serve_app(_app([], [tracker]))
    with pytest.raises((OSError, ClientError), match="source gone"):
        await session.post(base + "/slow", data=failing(), upload_tracker=tracker)
    with pytest.raises(OSError, match="source gone"):
        await tracker.upload_complete


async def test_a_body_sent_once_then_refused_by_a_307_was_uploaded(serve_app, session):
    async def once() -> AsyncIterator[bytes]:
        yield b"once"

    tracker = UploadTracker()
    base = await serve_app(_app([], [tracker]))
    with pytest.raises(ClientPayloadError):
        await session.post(base + "/redirect", data=once(), upload_tracker=tracker)
    assert tracker.attempts == 1 and tracker.bytes_written == 4
    await tracker.upload_complete  # as aiohttp: the one attempt was sent in full


async def test_a_tracker_watches_one_request(serve_app, session):
    tracker = UploadTracker()
    base = await serve_app(_app([], [tracker]))
    async with session.post(base + "/slow", data=b"a", upload_tracker=tracker):
        pass
    with pytest.raises(RuntimeError, match="already bound"):
        await session.post(base + "/slow", data=b"a", upload_tracker=tracker)


def test_a_tracker_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        UploadTracker()


async def test_repr() -> None:
    tracker: Any = UploadTracker()
    assert repr(tracker) == "<UploadTracker running: attempt 0, 0 bytes>"
