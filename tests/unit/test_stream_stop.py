"""Giving a stream up ends the engine's wait on its behalf, in any loop pass."""

from __future__ import annotations

import asyncio

import pytest

from broker.stream import BrokerStream, StreamStopped


def make_stream() -> BrokerStream:
    return BrokerStream(1)


async def test_giving_up_fails_the_registered_future():
    stream = make_stream()
    fut = asyncio.get_running_loop().create_future()
    stream.waiting = fut
    stream.give_up()
    with pytest.raises(StreamStopped):
        await fut
    assert stream.waiting is None and stream.finished


async def test_stoppable_returns_what_the_awaitable_returns():
    async def value() -> int:
        return 7

    assert await make_stream().stoppable(value()) == 7


async def test_stoppable_ends_at_once_and_cancels_the_work():
    stream = make_stream()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    waiting = asyncio.ensure_future(stream.stoppable(forever()))
    await started.wait()
    stream.give_up()
    with pytest.raises(StreamStopped):
        await waiting
    await cancelled.wait()


async def test_a_result_that_lands_with_the_stop_goes_to_orphan():
    """The work finished in the same pass as the stop: its result is disposed of, not lost
    (a connection produced for nobody would hold a pool slot)."""
    stream = make_stream()
    orphans: list[str] = []

    async def quick() -> str:
        asyncio.get_running_loop().call_soon(stream.give_up)  # lands before our done callback
        return "conn"

    with pytest.raises(StreamStopped):
        await stream.stoppable(quick(), orphan=orphans.append)
    passed = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(passed.set_result, None)  # after the done callback
    await passed
    assert orphans == ["conn"]


async def test_an_outside_cancel_stays_a_cancel_and_stops_the_work():
    stream = make_stream()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    waiting = asyncio.ensure_future(stream.stoppable(forever()))
    await started.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not stream.finished


async def test_stoppable_on_a_stream_already_given_up_does_not_start():
    stream = make_stream()
    stream.give_up()
    ran: list[int] = []

    async def work() -> None:
        ran.append(1)

    coro = work()
    with pytest.raises(StreamStopped):
        await stream.stoppable(coro)
    coro.close()
    assert ran == []
