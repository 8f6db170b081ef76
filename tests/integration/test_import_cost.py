"""What ``import worker_client`` loads, and what a request adds (issue 12).

Each check runs in a fresh interpreter (this one has imported everything already):

- ``import worker_client`` loads neither the engine (``broker.engine`` and what only it
  needs: the HTTP/1.1 exchange, httptools), nor ``importlib.metadata``, nor the modules of
  rarely used names (``worker_client.__getattr__`` loads those on first use), and makes
  no SSL context (about 21 ms each; aiohttp makes two at import);
- a request in broker mode leaves it so: the engine, and the session's cookie jar, are
  the broker's;
- a request in embedded mode loads the engine (so the check above can see it).

``ssl`` itself is not on the list: asyncio imports it (``asyncio.sslproto``), so it is
loaded in every asyncio program before its first request, aiohttp's or ours.
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiohttp import web

import worker_client

NEVER_IN_A_WORKER = ("broker.engine", "broker.exchange", "broker.http1", "httptools")
NOT_AT_IMPORT = (
    *NEVER_IN_A_WORKER,
    "importlib.metadata",
    "broker.cookie_store",
    "worker_client.tls",
    "ctypes",
    "urllib.request",
    "worker_client.multipart",
    "worker_client.payload",
    "worker_client.tracing",
    "worker_client.middlewares",
    "worker_client.digest_auth",
)

_SCRIPT = """
import asyncio, json, ssl, sys

made = []  # SSL contexts made, by class: asyncio imports ssl, contexts are what cost
_new = ssl.SSLContext.__new__
ssl.SSLContext.__new__ = lambda cls, *a, **k: made.append(cls.__name__) or _new(cls, *a, **k)

import worker_client

report = {"import": sorted(sys.modules), "contexts_at_import": list(made)}

async def main(url, broker):
    async with worker_client.ClientSession(broker=broker) as session:
        async with session.get(url) as resp:
            assert await resp.read() == b"ok"

url, broker = sys.argv[1], sys.argv[2] or None
asyncio.run(main(url, broker))
report["request"] = sorted(sys.modules)
report["contexts"] = made
print(json.dumps(report))
"""


async def _fresh_process(url: str, broker: str | None) -> dict[str, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SCRIPT, url, broker or "",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    report: dict[str, list[str]] = json.loads(out)
    return report


async def _ok_server(serve_app) -> str:
    app = web.Application()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=b"ok")

    app.router.add_get("/", ok)
    return str(await serve_app(app)) + "/"


async def test_import_and_a_broker_mode_request_load_no_engine(serve_app, broker_process):
    report = await _fresh_process(await _ok_server(serve_app), broker_process.socket_path)
    assert "worker_client.session" in report["import"]  # what the lists below are about
    assert not set(NOT_AT_IMPORT) & set(report["import"])
    assert report["contexts_at_import"] == []
    assert not set(NEVER_IN_A_WORKER) & set(report["request"])
    assert "importlib.metadata" not in report["request"]
    assert "broker.cookie_store" not in report["request"]  # the jar is the broker's
    assert "worker_client.tls" not in report["request"]  # no TLS setting named
    assert report["contexts"] == []  # plain http: no TLS setting made anywhere


async def test_an_embedded_request_loads_the_engine(serve_app):
    report = await _fresh_process(await _ok_server(serve_app), None)
    assert not set(NOT_AT_IMPORT) & set(report["import"])
    assert set(NEVER_IN_A_WORKER) <= set(report["request"])
    assert "importlib.metadata" not in report["request"]


_NAMES_SCRIPT = """
import json, sys
import worker_client

before = set(sys.modules)
listed = set(dir(worker_client))
resolved = {}
for name in worker_client.__all__:
    namespace = {}
    exec(f"from worker_client import {name}", namespace)
    resolved[name] = type(namespace[name]).__name__
print(json.dumps({
    "not_in_dir": sorted(set(worker_client.__all__) - listed),
    "resolved": resolved,
    "loaded": sorted(m for m in set(sys.modules) - before if m.startswith("worker_client")),
}))
"""


def test_every_exported_name_imports_from_a_fresh_interpreter():
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", _NAMES_SCRIPT], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["not_in_dir"] == []
    assert set(report["resolved"]) == set(worker_client.__all__)
    assert "worker_client.multipart" in report["loaded"]  # it was lazy, and now is loaded


def test_lazy_names_are_their_modules_objects_and_listed_once():
    import importlib

    for module, names in worker_client._LAZY.items():
        mod = importlib.import_module(f"worker_client.{module}")
        for name in names:
            assert getattr(worker_client, name) is getattr(mod, name), name
        assert getattr(worker_client, module) is mod
    assert set(worker_client._LAZY["tracing"]) == set(
        importlib.import_module("worker_client.tracing").__all__
    )
    every = [name for names in worker_client._LAZY.values() for name in names]
    assert len(every) == len(set(every))
    assert set(every) <= set(worker_client.__all__)


def test_the_cookie_jars_max_time_is_the_cookie_rules_one():
    from broker.cookie_store import MAX_TIME

    assert worker_client.CookieJar.MAX_TIME == MAX_TIME  # written out in worker_client.cookies


def test_an_unknown_name_is_an_attribute_error():
    try:
        worker_client.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("worker_client.NoSuchThing resolved")
    assert not hasattr(worker_client, "_no_such_module")
