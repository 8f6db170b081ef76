"""``broker.fast``, the fast path's engine core, as the broker process would drive it:
an idle connection of a real pool, the head told by one callback (no task), the
finished response delivered to a ``BrokerStream``; what is not simple handed to
``Engine.perform(first=...)``."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from yarl import URL

from broker import fast
from broker.engine import Engine
from broker.exchange import ResponseHead, build_head
from broker.failures import ConnectionFailure
from broker.stream import BrokerStream
from shared.messages import Failure, Head, Request
from shared.specs import DEFAULT_POOL_BYTES, ClientTimeout
from tests.conftest import read_request_head


class Recording(BrokerStream):
    def __init__(self, stream_id: int = 1) -> None:
        super().__init__(stream_id)
        self.got: list[Any] = []
        self.ended = asyncio.get_running_loop().create_future()

    def _send_head(self, msg: Head) -> None:
        self.got.append(msg)

    def _send_data(self, chunk: bytes) -> None:
        self.got.append(bytes(chunk))

    def _send_end(self) -> None:
        self.got.append("end")
        self.ended.set_result(None)

    def _send_failure(self, failure: Failure) -> None:
        self.got.append(failure)
        self.ended.set_result(None)


async def _idle_connection(engine: Engine, url: URL) -> Any:
    """A pool with one idle connection to ``url``'s origin, made by the general path."""
    stream = Recording(99)
    req = Request(stream=99, method="GET", url=str(url), headers=[], pool=DEFAULT_POOL_BYTES,
                  timeout=ClientTimeout())
    await engine.perform(req, stream)
    await stream.ended
    pool = engine.registry.pool_for(DEFAULT_POOL_BYTES)
    assert pool.state.n_idle == 1
    return pool


def _key(url: URL) -> tuple[Any, ...]:
    from broker.dialer import NO_TLS

    return ("http", url.raw_host, url.port, NO_TLS, b"")


async def test_a_whole_response_goes_to_a_broker_stream(raw_server):
    async def handler(reader, writer):
        while True:
            await read_request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\n\r\nhello")

    url = URL(await raw_server(handler) + "/x")
    engine = Engine()
    try:
        pool = await _idle_connection(engine, url)
        got: list[Any] = []
        told = asyncio.Event()

        def on_response(result: Any) -> None:  # no future, no task: a plain callback
            got.append(result)
            told.set()

        req = Request(stream=1, method="GET", url=str(url), headers=[("X-A", "1")])
        plan = fast.prepare(req, url, pool, None)
        assert plan is not None
        key, head, limits = plan
        assert key == _key(url)
        assert head == build_head("GET", url, [("X-A", "1")], None, False, False)
        for other in (msgspec.structs.replace(req, trace=True),
                      msgspec.structs.replace(req, streamed=True),
                      msgspec.structs.replace(req, expect100=True, body=b"x")):
            assert fast.prepare(other, url, pool, None) is None  # the general path's
        conn = fast.start(pool, key, "GET", head, None, on_response, limits)
        assert conn is not None and pool.state.n_idle == 0
        await told.wait()
        [result] = got
        assert isinstance(result, ResponseHead) and result.status == 200
        assert result.set_cookie
        body = fast.finish(pool, conn, result, True, True, None, url)
        assert body == b"hello" and pool.state.n_idle == 1
        stream = Recording()
        fast.deliver(stream, result, body, str(url), "GET")
        assert [type(m).__name__ for m in stream.got] == ["Head", "bytes", "str"]
        assert stream.got[0].status == 200 and stream.got[1] == b"hello"
        assert fast.start(pool, ("http", "elsewhere", 80, _key(url)[3], b""), "GET", head,
                          None, on_response) is None  # no idle connection there: not sent
    finally:
        await engine.close()


async def test_what_is_not_simple_goes_on_in_the_engine(raw_server):
    """A body still coming, then a stale connection: the engine takes each attempt on."""
    more = asyncio.Event()
    answered = 0

    async def handler(reader, writer):
        nonlocal answered
        await read_request_head(reader)
        answered += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        if answered == 1:
            await read_request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
            await more.wait()
            writer.write(b"def")
            await read_request_head(reader)
            return  # the third request: dropped unanswered (stale)
        await reader.read()

    url = URL(await raw_server(handler) + "/")
    engine = Engine()
    try:
        pool = await _idle_connection(engine, url)
        head = build_head("GET", url, [], None, False, False)
        for want in (b"abcdef", b"ok"):
            fut = asyncio.get_running_loop().create_future()
            conn = fast.start(pool, _key(url), "GET", head, None, fut.set_result)
            assert conn is not None
            result = await fut
            if isinstance(result, ResponseHead):
                assert fast.finish(pool, conn, result, True, True, None, url) is None
            else:
                assert isinstance(result, ConnectionFailure) and result.code == "disconnected"
            more.set()
            stream = Recording(3)
            req = Request(stream=3, method="GET", url=str(url), headers=[],
                          pool=DEFAULT_POOL_BYTES, timeout=ClientTimeout())
            await engine.perform(req, stream, url, first=(conn, result))
            await stream.ended
            assert isinstance(stream.got[0], Head) and stream.got[-1] == "end"
            assert b"".join(stream.got[1:-1]) == want
        assert answered == 2  # the stale one was retried on a new connection
    finally:
        await engine.close()
