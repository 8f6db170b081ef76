"""An aiohttp.web app run by gunicorn whose workers share one broker for their outgoing
requests: ``TCPConnector(limit=2)`` means two upstream connections for all workers.

    gunicorn -c examples/gunicorn/gunicorn_conf.py -w 4 \\
        -k aiohttp.GunicornWebWorker examples.gunicorn.app:app

``GET /fetch?url=...`` fetches ``url`` through the broker (``X-Worker`` tells the upstream
which worker asked) and answers with what it got. ``wsgi_app.py`` is the same app for
gunicorn's sync workers, with ``SyncSession``.
"""

from __future__ import annotations

import os

from aiohttp import web

from worker_client import ClientSession, TCPConnector

UPSTREAM_LIMIT = 2


async def open_session(app: web.Application) -> None:
    # One session per worker process, made in the worker; HTTP_BROKER (exported by the
    # hooks in gunicorn_conf.py in the master before it forked the workers) points it at
    # the shared broker.
    app["client"] = ClientSession(connector=TCPConnector(limit=UPSTREAM_LIMIT, name="upstream"))


async def close_session(app: web.Application) -> None:
    await app["client"].close()


async def fetch(request: web.Request) -> web.Response:
    session: ClientSession = request.app["client"]
    async with session.get(request.query["url"], headers={"X-Worker": str(os.getpid())}) as resp:
        body = await resp.text()
    return web.json_response(
        {"worker": os.getpid(), "status": resp.status, "body": body, "broker": session.broker}
    )


app = web.Application()
app.on_startup.append(open_session)
app.on_cleanup.append(close_session)
app.router.add_get("/fetch", fetch)
