"""The response body's one release path: whatever ends a response, its pool slot is freed.

Each test runs with ``limit=1``, so a slot that is never given back shows as the next
request waiting for ever (here: failing its connect timeout).
"""

from __future__ import annotations

import gzip

import pytest
from aiohttp import web

from worker_client import ClientTimeout, TCPConnector

PLAIN = bytes(8 << 20)  # decodes to 8 windows' worth: the pipe must stop and wait
PACKED = gzip.compress(PLAIN, compresslevel=6)


def _bomb_app() -> web.Application:
    app = web.Application()

    async def bomb(request: web.Request) -> web.Response:
        return web.Response(body=PACKED, headers={"Content-Encoding": "gzip"})

    async def small(request: web.Request) -> web.Response:
        return web.Response(text="after")

    app.router.add_get("/bomb", bomb)
    app.router.add_get("/small", small)
    return app


async def _pool_figures(session, name: str) -> dict:
    stats = await session.stats()
    return next(p for p in stats.pools if p["pool"] == name)


@pytest.mark.parametrize("leave", ["release", "read_some", "close_session"])
async def test_leaving_a_decoding_body_early_frees_the_slot(make_session, serve_app, leave):
    """A gzip body that came whole with its head but decodes past the window, left by the
    worker before its end (issue 6: the slot leaked, ``active=1`` for ever)."""
    base = await serve_app(_bomb_app())
    name = f"leave-early-{leave}"
    session = make_session(connector=TCPConnector(limit=1, name=name))
    resp = await session.get(base + "/bomb")
    assert len(PACKED) < 64 << 10  # it came with its head in one read
    if leave == "read_some":
        assert await resp.content.readexactly(1000) == bytes(1000)
    if leave == "close_session":
        await session.close()
        session = make_session(connector=TCPConnector(limit=1, name=name))
    else:
        resp.release()
    timeout = ClientTimeout(total=10, connect=5)
    async with session.get(base + "/small", timeout=timeout) as resp2:
        assert await resp2.text() == "after"
    figures = await _pool_figures(session, name)
    assert figures["active"] == 0 and figures["queued"] == 0
