"""``worker_client.tracing``: aiohttp 3.14's TraceConfig and params (its test_tracing.py's
behaviour), and a traced request's queue fed by hand with the broker's TraceEvents."""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace
from typing import Any

import aiohttp
import aiohttp.tracing
import pytest
from multidict import CIMultiDict
from yarl import URL

import worker_client
from shared.messages import TRACE_KINDS, TraceEvent
from worker_client.tracing import RequestTrace, TraceConfig

PARAMS = [name for name in aiohttp.tracing.__all__ if name.endswith("Params")]
SIGNALS = [
    "request_start", "request_chunk_sent", "response_chunk_received", "request_end",
    "request_exception", "request_redirect", "connection_queued_start",
    "connection_queued_end", "connection_create_start", "connection_create_end",
    "connection_reuseconn", "dns_resolvehost_start", "dns_resolvehost_end",
    "dns_cache_hit", "dns_cache_miss", "request_headers_sent",
]


def test_trace_config_ctx_default():
    assert isinstance(TraceConfig().trace_config_ctx(), SimpleNamespace)


def test_trace_config_ctx_factory():
    assert isinstance(TraceConfig(trace_config_ctx_factory=dict).trace_config_ctx(), dict)


def test_trace_config_ctx_request_ctx():
    marker = object()
    ctx = TraceConfig().trace_config_ctx(trace_request_ctx=marker)
    assert ctx.trace_request_ctx is marker
    assert TraceConfig().trace_config_ctx().trace_request_ctx is None


def test_trace_config_ctx_custom_class():
    class MyContext:
        def __init__(self, request_id: int) -> None:
            self.request_id = request_id

    ctx = TraceConfig().trace_config_ctx(trace_request_ctx=MyContext(42))
    assert ctx.trace_request_ctx.request_id == 42


@pytest.mark.parametrize("signal", SIGNALS)
def test_freeze_as_aiohttp(signal):
    """Every signal exists, freezes, and a frozen one refuses changes as aiosignal's."""
    ours, theirs = TraceConfig(), aiohttp.TraceConfig()

    async def handler(*args: Any) -> None:
        pass

    for config in (ours, theirs):
        getattr(config, "on_" + signal).append(handler)
        assert not getattr(config, "on_" + signal).frozen
        config.freeze()
        sig = getattr(config, "on_" + signal)
        assert sig.frozen and list(sig) == [handler]
    for change in (
        lambda s: s.append(handler), lambda s: s.insert(0, handler), lambda s: s.pop(),
        lambda s: s.__setitem__(0, handler), lambda s: s.__delitem__(0),
        lambda s: s.extend([handler]), lambda s: s.clear(), lambda s: s.remove(handler),
    ):
        errors = []
        for config in (ours, theirs):
            with pytest.raises(Exception) as info:
                change(getattr(config, "on_" + signal))
            errors.append((type(info.value), str(info.value)))
        assert errors[0] == errors[1] == (RuntimeError, "Cannot modify frozen list.")


async def test_unfrozen_signal_is_not_sent():
    with pytest.raises(RuntimeError, match="Cannot send non-frozen signal."):
        await TraceConfig().on_request_start.send(None, None, None)


async def test_signal_decorator_and_order():
    config, seen = TraceConfig(), []

    @config.on_request_start
    async def first(*args: Any) -> None:
        seen.append(("first", args))

    async def second(*args: Any) -> None:
        seen.append(("second", args))

    config.on_request_start.append(second)
    config.freeze()
    await config.on_request_start.send(1, 2, 3)
    assert seen == [("first", (1, 2, 3)), ("second", (1, 2, 3))]


@pytest.mark.parametrize("name", PARAMS)
def test_params_have_aiohttp_fields_and_are_frozen(name):
    ours, theirs = getattr(worker_client, name), getattr(aiohttp, name)
    fields = [f.name for f in dataclasses.fields(ours)]
    assert fields == [a.name for a in theirs.__attrs_attrs__]
    args = [object() for _ in fields]
    params = ours(*args)
    assert params == ours(*args) and theirs(*args) == theirs(*args)
    assert [getattr(params, f) for f in fields] == args
    for field in fields or ["anything"]:
        with pytest.raises(AttributeError):
            setattr(params, field, 1)


# -- a traced request's queue, fed by hand ---------------------------------------------


class Recorder:
    """Two configs recording (config, signal, params) with their own contexts."""

    def __init__(self, count: int = 2) -> None:
        self.seen: list[tuple[int, str, Any, Any]] = []
        self.configs = []
        for i in range(count):
            config = TraceConfig()
            for signal in SIGNALS:
                getattr(config, "on_" + signal).append(self._handler(i, signal))
            config.freeze()
            self.configs.append(config)

    def _handler(self, i: int, signal: str) -> Any:
        async def handler(session: Any, ctx: Any, params: Any) -> None:
            self.seen.append((i, signal, ctx, params))

        return handler

    def names(self, config: int = 0) -> list[str]:
        return [s for i, s, _, _ in self.seen if i == config]


class FakeSession:
    def _history_response(self, item: Any, info: Any) -> Any:
        return ("response", item.status, item.url)


def _trace(rec: Recorder, url: str = "http://a.test/x?q=1#frag") -> RequestTrace:
    return RequestTrace(
        FakeSession(), rec.configs, "req-ctx", "POST", URL(url), CIMultiDict(A="b")  # type: ignore[arg-type]
    )


async def test_broker_events_become_signals_in_order():
    rec = Recorder()
    trace = _trace(rec)
    trace.body = b"0123456789"
    for kind in ("connection_queued_start", "connection_queued_end",
                 "connection_create_start", "dns_cache_miss", "dns_resolvehost_start",
                 "dns_resolvehost_end", "connection_create_end"):
        trace.on_event(TraceEvent(1, kind, host="a.test", port=80))
    trace.on_event(
        TraceEvent(1, "request_headers_sent", method="POST", url="http://a.test/x?q=1",
                   headers=[("Host", "a.test"), ("Content-Length", "10")])
    )
    trace.on_event(TraceEvent(1, "request_chunk_sent", size=4))
    trace.on_event(TraceEvent(1, "request_chunk_sent", size=6))
    head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    head.set_result(None)
    await trace.until(head)
    assert rec.names(0) == rec.names(1) == [
        "connection_queued_start", "connection_queued_end", "connection_create_start",
        "dns_cache_miss", "dns_resolvehost_start", "dns_resolvehost_end",
        "connection_create_end", "request_headers_sent", "request_chunk_sent",
        "request_chunk_sent",
    ]
    params = [p for i, _, _, p in rec.seen if i == 0]
    assert params[3] == worker_client.TraceDnsCacheMissParams("a.test")
    sent = params[7]
    assert sent.method == "POST" and sent.url == URL("http://a.test/x?q=1")  # as aiohttp
    assert sent.headers["Content-Length"] == "10"
    assert [p.chunk for p in params[8:]] == [b"0123", b"456789"]
    ctxs = {i: ctx for i, _, ctx, _ in rec.seen}
    assert ctxs[0] is not ctxs[1]
    assert ctxs[0].trace_request_ctx == ctxs[1].trace_request_ctx == "req-ctx"


async def test_every_trace_kind_maps_to_its_signal():
    from shared.messages import HistoryItem

    rec = Recorder(1)
    trace = _trace(rec)
    item = HistoryItem(302, "Found", (1, 1), [], "http://a.test/x?q=1", "POST", [])
    for kind in TRACE_KINDS:
        trace.on_event(TraceEvent(1, kind, host="h", redirect=item, url="http://a.test/"))
    head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    head.set_result(None)
    await trace.until(head)
    assert rec.names() == list(TRACE_KINDS)
    redirect = rec.seen[TRACE_KINDS.index("request_redirect")][3]
    assert redirect.response == ("response", 302, "http://a.test/x?q=1")
    assert redirect.url == URL("http://a.test/x?q=1#frag") and redirect.method == "POST"


async def test_events_wait_for_the_request_task_and_a_slow_handler_holds_only_it():
    """The sink returns at once (the broker never waits); the handlers run when the
    request's own task drains, in order, while it waits for the head."""
    gate = asyncio.Event()
    seen: list[str] = []
    config = TraceConfig()

    async def slow(session: Any, ctx: Any, params: Any) -> None:
        await gate.wait()
        seen.append("create_start")

    async def fast(session: Any, ctx: Any, params: Any) -> None:
        seen.append("create_end")

    config.on_connection_create_start.append(slow)
    config.on_connection_create_end.append(fast)
    config.freeze()
    trace = RequestTrace(FakeSession(), [config], None, "GET", URL("http://a/"), CIMultiDict())  # type: ignore[arg-type]
    head: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(trace.until(head))
    trace.on_event(TraceEvent(1, "connection_create_start"))
    trace.on_event(TraceEvent(1, "connection_create_end"))
    head.set_result("head")  # the head came while a handler is slow
    await asyncio.sleep(0)
    assert seen == [] and not waiting.done()
    gate.set()
    await waiting
    assert seen == ["create_start", "create_end"]


async def test_streamed_pieces_follow_the_headers_and_broker_pieces_are_ignored():
    rec = Recorder(1)
    trace = _trace(rec)

    async def body():
        yield b"ab"
        yield b"cd"

    req_stream, _ = trace.tap(body(), None)
    trace.streamed = True
    assert req_stream is not None
    first = await req_stream.__anext__()  # taken before the headers went: held
    assert first == b"ab" and rec.seen == []
    trace.on_event(TraceEvent(1, "request_headers_sent", method="POST", url="http://a.test/x"))
    trace.on_event(TraceEvent(1, "request_chunk_sent", size=2))  # the worker's stand
    head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(trace.until(head))
    assert await req_stream.__anext__() == b"cd"  # waited for its signal to be sent
    assert [(s, p.chunk) for _, s, _, p in rec.seen[1:]] == [
        ("request_chunk_sent", b"ab"), ("request_chunk_sent", b"cd"),
    ]
    assert rec.names() == ["request_headers_sent", "request_chunk_sent", "request_chunk_sent"]
    head.set_result(None)
    await waiting


async def test_failure_drops_pieces_never_sent_and_sends_the_exception_last():
    rec = Recorder(1)
    trace = _trace(rec)

    async def body():
        yield b"ab"

    stream, _ = trace.tap(body(), None)
    assert stream is not None
    await stream.__anext__()
    trace.on_event(TraceEvent(1, "connection_create_start"))
    exc = aiohttp.ClientConnectionError("refused")
    await trace.exception(exc)
    assert rec.names() == ["connection_create_start", "request_exception"]
    params = rec.seen[-1][3]
    assert params.exception is exc and params.method == "POST"
    assert params.headers == CIMultiDict(A="b")


async def test_a_flood_of_events_fails_the_request(monkeypatch):
    import worker_client.tracing as tracing

    class Handle:
        failed: list[BaseException] = []

        def give_up(self, exc: BaseException) -> None:
            self.failed.append(exc)

    monkeypatch.setattr(tracing, "MAX_QUEUED", 3)
    trace = _trace(Recorder(1))
    trace._handle = Handle()  # type: ignore[assignment]
    for _ in range(4):
        trace.on_event(TraceEvent(1, "connection_reuseconn"))
    assert len(trace._queue) == 3
    (exc,) = Handle.failed
    assert isinstance(exc, worker_client.BrokerProtocolError)


async def test_pieces_taken_before_the_headers_are_bounded():
    """Before the broker said the headers went, a streamed body's pieces are held up to
    ``STREAM_WINDOW`` bytes (the transport's credit, which a compressed body's pieces
    as given may exceed many times over); the next one waits for the headers."""
    from shared.messages import STREAM_WINDOW

    rec = Recorder(1)
    trace = _trace(rec)
    piece = b"x" * (STREAM_WINDOW // 4)

    async def body():
        while True:
            yield piece

    stream, _ = trace.tap(body(), None)
    assert stream is not None
    for _ in range(5):  # held, none waits
        assert await asyncio.wait_for(stream.__anext__(), 5) == piece
    blocked = asyncio.ensure_future(stream.__anext__())
    for _ in range(3):
        await asyncio.sleep(0)
    assert not blocked.done() and rec.seen == []
    trace.on_event(TraceEvent(1, "request_headers_sent", method="POST", url="http://a.test/x"))
    head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    head.set_result(None)
    await trace.until(head)
    assert await blocked == piece
    assert rec.names() == ["request_headers_sent"] + ["request_chunk_sent"] * 6
    await stream.aclose()


async def test_a_failure_lets_a_piece_waiting_for_the_headers_go():
    trace = _trace(Recorder(1))

    async def body():
        while True:
            yield b"x" * 65536

    stream, _ = trace.tap(body(), None)
    assert stream is not None
    blocked = asyncio.ensure_future(stream.__anext__())
    while not trace._pending or trace._pending[-1][2] is None:
        if blocked.done():
            await blocked
            blocked = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)
    await trace.exception(aiohttp.ClientConnectionError("refused"))
    assert await asyncio.wait_for(blocked, 5)
    await stream.aclose()


async def test_a_flood_of_big_events_fails_the_request(monkeypatch):
    """A few events as big as a frame may be (a hostile broker's hosts, URLs or headers)
    are bounded by their bytes, not only by their count."""
    import worker_client.tracing as tracing

    class Handle:
        failed: list[BaseException] = []

        def give_up(self, exc: BaseException) -> None:
            self.failed.append(exc)

    monkeypatch.setattr(tracing, "MAX_QUEUED_BYTES", 1000)
    trace = _trace(Recorder(1))
    trace._handle = Handle()  # type: ignore[assignment]
    trace.on_event(TraceEvent(1, "dns_cache_hit", host="h" * 600))
    trace.on_event(TraceEvent(1, "request_headers_sent", url="u", headers=[("a", "b" * 300)]))
    assert Handle.failed == [] and len(trace._queue) == 2
    head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    head.set_result(None)
    await trace.until(head)  # handled: their bytes count no more
    trace.on_event(TraceEvent(1, "dns_cache_hit", host="h" * 600))
    trace.on_event(TraceEvent(1, "request_headers_sent", url="u", headers=[("a", "b" * 300)]))
    assert Handle.failed == []
    trace.on_event(TraceEvent(1, "dns_cache_hit", host="h" * 600))
    assert len(trace._queue) == 2
    (exc,) = Handle.failed
    assert isinstance(exc, worker_client.BrokerProtocolError)
