"""A plain WSGI app run by gunicorn's sync workers whose workers share one broker for
their outgoing requests: ``TCPConnector(limit=2)`` means two upstream connections for
all workers together.

    gunicorn -c examples/gunicorn/gunicorn_conf.py -w 4 examples.gunicorn.wsgi_app:app

``GET /fetch?url=...`` fetches ``url`` through the broker with ``SyncSession``
(``X-Worker`` tells the upstream which worker asked) and answers with what it got.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from worker_client import SyncSession, TCPConnector

UPSTREAM_LIMIT = 2

_lock = threading.Lock()
_session: tuple[int, SyncSession] | None = None


def session() -> SyncSession:
    """This worker process's session, made on its first use.

    Made in the worker, after the fork: a session made in the master (at import time
    with ``--preload``) would be made before the broker starts, and its connection
    would be shared by every fork. Keyed on the pid for that reason; the lock is for
    threaded workers (``-k gthread``)."""
    global _session
    pid = os.getpid()
    with _lock:
        if _session is None or _session[0] != pid:
            connector = TCPConnector(limit=UPSTREAM_LIMIT, name="upstream")
            _session = (pid, SyncSession(connector=connector))
        return _session[1]


def fetch(url: str) -> dict[str, Any]:
    client = session()
    with client.get(url, headers={"X-Worker": str(os.getpid())}) as resp:
        body = resp.text()
    return {"worker": os.getpid(), "status": resp.status, "body": body, "broker": client.broker}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    url = parse_qs(environ.get("QUERY_STRING", "")).get("url")
    if environ.get("PATH_INFO") != "/fetch" or not url:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"GET /fetch?url=...\n"]
    payload = json.dumps(fetch(url[0])).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [payload]
