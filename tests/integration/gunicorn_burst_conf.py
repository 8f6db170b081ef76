"""The example's gunicorn settings, plus a burst of upstream requests from every worker
as it starts, so that the test knows for sure that every worker process uses the pool,
several requests at once, through the session the app keeps for the worker's lifetime.

- An aiohttp.web app: one more startup handler sends 10 requests at once through the
  app's ``ClientSession`` (``app["client"]``, made by the app's own startup handler).
- A WSGI app (sync workers): 10 threads call the app itself (``GET /fetch``) at once,
  so its ``SyncSession`` carries 10 requests from one worker at the same time.

Every request names its worker in ``X-Worker``. The sessions stay open, with their
connections, until the worker exits: workers that did not share the broker's pool would
each keep their own connections open, and the upstream would see more than the limit.
"""

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from examples.gunicorn.gunicorn_conf import on_exit, on_starting  # noqa: F401

BURST = 10


def _aiohttp_burst(app: web.Application) -> None:
    async def burst(app: web.Application) -> None:
        headers = {"X-Worker": str(os.getpid())}

        async def one() -> None:
            async with app["client"].get(os.environ["BURST_URL"], headers=headers) as resp:
                assert resp.status == 200, resp.status
                await resp.read()

        await asyncio.gather(*(one() for _ in range(BURST)))

    app.on_startup.append(burst)


def _wsgi_burst(app: Any) -> None:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/fetch",
        "QUERY_STRING": urlencode({"url": os.environ["BURST_URL"]}),
    }

    def one(_: int) -> dict[str, Any]:
        return json.loads(b"".join(app(dict(environ), lambda *args: None)))

    with ThreadPoolExecutor(BURST) as pool:
        got = list(pool.map(one, range(BURST)))
    assert all(g["status"] == 200 and g["body"] == "ok" for g in got), got


def post_worker_init(worker: Any) -> None:
    if isinstance(worker.wsgi, web.Application):
        _aiohttp_burst(worker.wsgi)
    else:
        _wsgi_burst(worker.wsgi)
