"""Fixtures shared by the suite: a broker process, the two modes, loopback servers."""

from __future__ import annotations

import asyncio
import inspect
import os
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import broker  # noqa: E402
from tests.tls_certs import Certs, make_certs  # noqa: E402
from worker_client import ClientSession  # noqa: E402

MODES = ("embedded", "broker")


@pytest.fixture(autouse=True)
def _no_inherited_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their mode explicitly; an HTTP_BROKER from outside must not leak in."""
    monkeypatch.delenv("HTTP_BROKER", raising=False)


@pytest.fixture(scope="session")
def broker_process() -> Iterator[broker.BrokerProcess]:
    """One broker process for the whole run (tests that kill brokers start their own)."""
    with broker.start(export=False, drain_timeout=2) as proc:
        yield proc


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A test CA and certificates signed by it (``tests/tls_certs.py``), made once."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def broker_address(mode: str, request: pytest.FixtureRequest) -> str | None:
    """None in embedded mode, the broker's socket path in broker mode."""
    if mode == "embedded":
        return None
    proc: broker.BrokerProcess = request.getfixturevalue("broker_process")
    return proc.socket_path


@pytest.fixture
async def make_session(
    broker_address: str | None,
) -> AsyncIterator[Callable[..., ClientSession]]:
    """``make_session(**kwargs)``: a ClientSession in the test's mode, closed afterwards."""
    sessions: list[ClientSession] = []

    def factory(**kwargs: Any) -> ClientSession:
        kwargs.setdefault("broker", broker_address)
        s = ClientSession(**kwargs)
        sessions.append(s)
        return s

    yield factory
    for s in sessions:
        await s.close()


@pytest.fixture
async def session(make_session: Callable[..., ClientSession]) -> ClientSession:
    return make_session()


@pytest.fixture
async def serve_app() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """``await serve_app(app)`` runs an aiohttp.web app on 127.0.0.1; returns its base URL.

    ``handler_cancellation=True`` cancels a handler when its client goes away (aiohttp's
    option), so a handler that holds a request can notice the client leave."""
    runners: list[web.AppRunner] = []
    transports: list[asyncio.BaseTransport] = []

    async def note_transport(request: web.Request, response: web.StreamResponse) -> None:
        if request.transport is not None:
            transports.append(request.transport)
            # TLS: the socket's own transport too, noted now. Once the server has closed
            # the TLS one twice it lets go of its protocol, and an abort of it reaches
            # nothing while the socket waits for the client's close_notify.
            raw = getattr(getattr(request.transport, "_ssl_protocol", None), "_transport", None)
            if raw is not None:
                transports.append(raw)

    async def start(
        app: web.Application,
        *,
        handler_cancellation: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> str:
        """With ``ssl_context`` the app serves https; the URL names ``host``."""
        app.on_response_prepare.append(note_transport)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=handler_cancellation)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"{'https' if ssl_context else 'http'}://{host}:{port}"

    yield start
    # The test is over: every server connection is aborted, those that carried a
    # request and those still open that carried none. A TLS connection a client keeps
    # idle (a broker outlives the test) would wait for its close_notify past this
    # test's loop (Python 3.10's TLS transport even after its peer left: aiohttp's
    # server never closes it), a tunnel only opened too; a plain one closing with a
    # response still unsent (a client that gave up a big body, its broker not yet done
    # with the upstream socket) would wait for a reader that is gone.
    for runner in runners:
        if runner.server is not None:
            for handler in list(runner.server.connections):
                if handler.transport is not None:
                    transports.append(handler.transport)
    sockets = [_socket_of(t) for t in transports]
    for transport in transports:
        if not transport.is_closing():
            transport.abort()
    for runner in runners:
        await runner.cleanup()
    # An aborted TLS connection closes its socket a loop pass later: one still closing
    # as the test's loop ends would be left open (a ResourceWarning in a later test).
    await wait_until(
        lambda: all(s is None or s.fileno() == -1 for s in sockets),
        what="a server connection's socket was never closed",
    )


def _socket_of(transport: asyncio.BaseTransport) -> Any:
    """A transport's socket, or None once it is gone (a TLS transport whose protocol has
    let go answers nothing at all)."""
    try:
        return transport.get_extra_info("socket")
    except AttributeError:
        return None


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[str]]]:
    """``await raw_server(handler)``: a raw asyncio TCP server for misbehaving peers."""
    servers: list[asyncio.AbstractServer] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: RawHandler) -> str:
        async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for w in writers:
        w.close()
    # Let the transports finish closing before the loop does (3.10 warns otherwise).
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_request_head(reader: asyncio.StreamReader) -> bytes:
    """Read one request head (up to the blank line) from a raw connection."""
    return await reader.readuntil(b"\r\n\r\n")


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float = 5.0,
    what: str | Callable[[], object] = "",
) -> None:
    """Check ``condition`` (a function, sync or async) until it holds; fail after ``timeout``
    with ``what`` (or what it returns then) in the message.

    Only for state that no event announces, such as another process's figures: wait on an
    event, a future or a message wherever there is one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pause = 0.001
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if loop.time() > deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"still not true after {timeout} s: {detail or condition}")
        await asyncio.sleep(pause)  # the polling interval, doubling up to 50 ms
        pause = min(pause * 2, 0.05)
