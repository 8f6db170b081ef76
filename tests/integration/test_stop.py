"""Stopping a stream means the same in both modes, and never cancels the caller's task.

A stream stops because the worker gives it up (a total timeout, the session closing,
the response released early) or because the caller's task is cancelled from outside;
the two must stay apart even when they land in the same loop pass.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from worker_client import ClientConnectionError, ClientTimeout


@pytest.fixture
async def silent_server(raw_server):
    """A server that reads a request head and never answers; ``arrived`` is set then."""
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await release.wait()

    base = await raw_server(handler)
    yield base, arrived
    release.set()


def _queued(stats, name: str) -> int:
    return sum(p["queued"] for p in stats.pools if p["pool"] == name)


def _cancelling() -> int:
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling() if sys.version_info >= (3, 11) else 0


async def test_an_outside_cancel_with_a_close_in_the_same_pass_stays_a_cancel(
    make_session, silent_server
):
    """Issue 6: embedded mode turned this into ClientConnectionError with the task
    still cancelling."""
    base, arrived = silent_server
    session = make_session()
    outcome: list[str] = []

    async def caller() -> None:
        try:
            await session.get(base + "/")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        except BaseException as exc:
            outcome.append(f"{type(exc).__name__} cancelling={_cancelling()}")
            raise

    task = asyncio.ensure_future(caller())
    await arrived.wait()
    task.cancel()
    await session.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["cancelled"]


async def test_a_close_alone_is_the_sessions_error_with_the_task_not_cancelling(
    make_session, silent_server
):
    base, arrived = silent_server
    session = make_session()

    async def caller() -> str:
        try:
            await session.get(base + "/")
        except ClientConnectionError as exc:
            return f"{exc} cancelling={_cancelling()}"
        return "no error"

    task = asyncio.ensure_future(caller())
    await arrived.wait()
    await session.close()
    assert await task == "Connection closed cancelling=0"


async def test_a_total_timeout_alone_is_a_timeout_with_the_task_not_cancelling(
    make_session, silent_server
):
    base, arrived = silent_server
    session = make_session()
    with pytest.raises(asyncio.TimeoutError):
        await session.get(base + "/", timeout=ClientTimeout(total=0.2))
    assert arrived.is_set() and _cancelling() == 0
    stats = await session.stats()
    assert stats.streams == 0


async def test_a_close_while_the_callers_upload_iterator_waits_ends_at_once(
    make_session, raw_server
):
    """The caller's body iterator waits on the caller's own event, which never comes:
    closing the session still ends the request, with the session's error."""
    got_head = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        got_head.set()
        await reader.read()  # until the client goes away

    base = await raw_server(handler)
    session = make_session()
    never = asyncio.Event()
    first_sent = asyncio.Event()

    async def body():
        yield b"first"
        first_sent.set()
        await never.wait()
        yield b"never"

    task = asyncio.ensure_future(session.post(base + "/", data=body()))
    await first_sent.wait()
    await got_head.wait()
    await session.close()
    with pytest.raises(ClientConnectionError, match="Connection closed"):
        await task
    assert _cancelling() == 0


async def test_a_close_while_queued_for_a_full_pool_ends_at_once(
    make_session, silent_server
):
    from worker_client import TCPConnector

    base, arrived = silent_server
    session = make_session(connector=TCPConnector(limit=1, name="stop-queued"))
    first = asyncio.ensure_future(session.get(base + "/"))
    await arrived.wait()
    second = asyncio.ensure_future(session.get(base + "/"))
    while not _queued(await session.stats(), "stop-queued"):
        await asyncio.sleep(0)  # one loop pass (not a wait for time) for the task to run
    await session.close()
    for task in (first, second):
        with pytest.raises(ClientConnectionError, match="Connection closed"):
            await task
