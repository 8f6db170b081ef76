"""Clean shutdown: closing a session finishes its streams; nothing leaks to the loop's end.

aiohttp's docs tell users to ``await asyncio.sleep(0.250)`` after closing a session so
that transports can close before the loop does ("Graceful Shutdown"). Here a program
that simply returns after ``async with ClientSession()`` must print no ResourceWarning,
even with keep-alive connections open and a response left unread.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import broker

from ..conftest import ROOT

PROGRAM = textwrap.dedent(
    """
    import asyncio, gc, sys
    sys.path.insert(0, {root!r})
    from worker_client import ClientSession

    async def main():
        base = {base!r}
        async with ClientSession(broker={broker!r}) as session:
            unread = await session.get(base + "/big")  # never read, never released
            await unread.content.read(10)
            for _ in range(3):  # on a second connection, left idle in the pool
                async with session.get(base + "/small") as resp:
                    await resp.read()

    asyncio.run(main())
    gc.collect()
    print("clean exit")
    """
)


SERVER = textwrap.dedent(
    """
    import socket
    from aiohttp import web

    async def big(request):
        return web.Response(body=b"x" * 3_000_000)

    async def small(request):
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/small", small)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections wait in the backlog until the app runs
    print(sock.getsockname()[1], flush=True)
    web.run_app(app, sock=sock, print=lambda *a: None)
    """
)


@pytest.fixture
def outliving_server():
    """A server in its own process: it keeps its connections open after the client
    exits, so a client that left a transport unclosed would be caught."""
    with subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())  # it listens from then on
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()


@pytest.mark.parametrize("with_broker", [False, True], ids=["embedded", "broker"])
def test_no_resource_warning_without_a_grace_sleep(with_broker, tmp_path, outliving_server):
    def run(address: str | None) -> subprocess.CompletedProcess[str]:
        code = PROGRAM.format(root=ROOT, broker=address, base=outliving_server)
        return subprocess.run(
            [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
        )

    if with_broker:
        with broker.start(str(tmp_path / "b.sock"), export=False) as proc:
            out = run(proc.socket_path)
    else:
        out = run(None)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean exit"
    assert "ResourceWarning" not in out.stderr and "unclosed" not in out.stderr, out.stderr
    assert "Task was destroyed" not in out.stderr, out.stderr
