"""aiohttp's "Advanced Client Usage" examples, ported to http-broker.

Each example is written once against a ``make_session(**kwargs)`` factory and run three
times: with aiohttp's own ``ClientSession``, with ours in embedded mode, and with ours
through a broker process started by ``broker.start()``. A local aiohttp.web server on
127.0.0.1 stands in for httpbin.org. The script prints each example's result and whether
both modes of http-broker gave exactly what aiohttp gave; it exits 1 if one did not.

Porting is the import line: ``from worker_client import ClientSession, ContentTypeError``
where the examples had ``aiohttp.ClientSession`` / ``aiohttp.ContentTypeError``.

Run from the repository root: ``python examples/seed_examples.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

import broker  # noqa: E402
import worker_client  # noqa: E402

MakeSession = Callable[..., Any]
Example = Callable[[MakeSession, str], Awaitable[Any]]
EXAMPLES: list[tuple[str, Example]] = []


def example(title: str) -> Callable[[Example], Example]:
    def register(fn: Example) -> Example:
        EXAMPLES.append((title, fn))
        return fn

    return register


# -- the examples (each returns what it observed) ------------------------------------


@example("custom request headers (a GIF posted with content-type image/gif)")
async def custom_headers(make_session: MakeSession, base: str) -> Any:
    payload = b"GIF89a\x01\x00\x01\x00\x00\xff\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x00;"
    headers = {"content-type": "image/gif"}
    async with make_session() as session:
        async with session.post(base + "/post", data=payload, headers=headers) as resp:
            got = await resp.json()
    return {k: got[k] for k in ("content_type", "body_len", "body_sha256")}


@example("default headers for every request of a session")
async def default_headers(make_session: MakeSession, base: str) -> Any:
    headers = {"Authorization": "Basic bG9naW46cGFzcw=="}
    async with make_session(headers=headers) as session:
        async with session.get(base + "/headers") as r:
            json_body = await r.json()
            assert json_body["headers"]["Authorization"] == "Basic bG9naW46cGFzcw=="
    return json_body["headers"]["Authorization"]


@example("json= (serialized, sent as application/json)")
async def json_body(make_session: MakeSession, base: str) -> Any:
    async with make_session() as session:
        async with session.post(base + "/post", json={"test": "object"}) as resp:
            got = await resp.json()
    return {k: got[k] for k in ("content_type", "json")}


@example("data= text (sent as text/plain; charset=utf-8)")
async def data_text(make_session: MakeSession, base: str) -> Any:
    async with make_session() as session:
        async with session.post(base + "/post", data="Тест") as resp:
            got = await resp.json()
    return {k: got[k] for k in ("content_type", "text")}


@example("response headers (case-insensitive, multiple values)")
async def response_headers(make_session: MakeSession, base: str) -> Any:
    async with make_session() as session:
        async with session.get(base + "/response-headers") as resp:
            return {
                "resp.headers['CONTENT-TYPE']": resp.headers["CONTENT-TYPE"],
                "resp.headers.get('content-type')": resp.headers.get("content-type"),
                "resp.headers.getall('X-Multi')": resp.headers.getall("X-Multi"),
                "type(resp.headers)": type(resp.headers).__name__,
            }


@example("raw_headers (bytes, as received; Date left out)")
async def raw_headers(make_session: MakeSession, base: str) -> Any:
    async with make_session() as session:
        async with session.get(base + "/response-headers") as resp:
            return [(k, v) for k, v in resp.raw_headers if k.lower() != b"date"]


@example("redirect history (301 then 302)")
async def redirect_history(make_session: MakeSession, base: str) -> Any:
    async with make_session() as session:
        resp = await session.get(base + "/some/redirect/")
        async with resp:
            return {
                "status": resp.status,
                "url": resp.url.path,
                "history": [(h.status, h.url.path) for h in resp.history],
                "text": await resp.text(),
            }


@example("allow_redirects=False")
async def no_redirects(make_session: MakeSession, base: str) -> Any:
    async with make_session() as session:
        async with session.get(base + "/some/redirect/", allow_redirects=False) as resp:
            return {
                "status": resp.status,
                "Location": resp.headers["Location"],
                "history": len(resp.history),
            }


@example("pre-compressed upload (Content-Encoding: deflate, sent untouched)")
async def precompressed_upload(make_session: MakeSession, base: str) -> Any:
    my_data = b"http-broker " * 100
    data = zlib.compress(my_data)
    headers = {"Content-Encoding": "deflate"}
    async with make_session() as session:
        async with session.post(base + "/post", data=data, headers=headers) as resp:
            got = await resp.json()
    return {
        "content_encoding": got["content_encoding"],
        # the server inflated what arrived back into the original: one deflate, untouched
        "server_inflated_to_original": got["body_sha256"]
        == hashlib.sha256(my_data).hexdigest()[:16],
    }


@example("JSON content-type validation")
async def json_content_type(make_session: MakeSession, base: str) -> Any:
    out: dict[str, Any] = {}
    async with make_session() as session:
        async with session.get(base + "/json-as-text") as resp:
            try:
                await resp.json()
            except (aiohttp.ContentTypeError, worker_client.ContentTypeError) as exc:
                out["text/plain, json()"] = f"{type(exc).__name__}: {exc.message}"
            out["text/plain, json(content_type=None)"] = await resp.json(content_type=None)
        async with session.get(base + "/vnd-json") as resp:
            out["application/vnd.api+json, json()"] = await resp.json()
    return out


def cookies_api(make_session: MakeSession) -> Any:
    """The module whose CookieJar/DummyCookieJar go with ``make_session``'s sessions."""
    return aiohttp if make_session is aiohttp.ClientSession else worker_client


@example("custom cookies (ClientSession(cookies=...))")
async def custom_cookies(make_session: MakeSession, base: str) -> Any:
    cookies = {"cookies_are": "working"}
    async with make_session(cookies=cookies) as session:
        async with session.get(base + "/cookies") as resp:
            return await resp.json()


@example("response cookies (resp.cookies), and the jar sending them back")
async def response_cookies(make_session: MakeSession, base: str) -> Any:
    jar = cookies_api(make_session).CookieJar(unsafe=True)  # 127.0.0.1 is an IP address
    async with make_session(cookie_jar=jar) as session:
        url = base + "/cookies/set?example_cookie_name=value1"
        async with session.get(url) as resp:
            set_here = resp.cookies["example_cookie_name"].value
        async with session.get(base + "/cookies") as resp:
            sent_back = await resp.json()
        return {"resp.cookies": set_here, "sent back": sent_back, "in the jar": len(jar)}


@example("cookie safety: the default jar refuses cookies from an IP address")
async def cookie_safety(make_session: MakeSession, base: str) -> Any:
    async with make_session() as session:
        async with session.get(base + "/cookies/set?refused=1") as resp:
            await resp.read()
        async with session.get(base + "/cookies") as resp:
            return {"sent back": await resp.json(), "in the jar": len(session.cookie_jar)}


@example("cookie quoting routine (CookieJar(quote_cookie=False))")
async def cookie_quoting(make_session: MakeSession, base: str) -> Any:
    out = {}
    for quote in (True, False):
        jar = cookies_api(make_session).CookieJar(unsafe=True, quote_cookie=quote)
        jar.update_cookies({"name": "val=foobar"})
        async with make_session(cookie_jar=jar) as session:
            async with session.get(base + "/cookie-header") as resp:
                out[f"quote_cookie={quote}"] = await resp.text()
    return out


@example("dummy cookie jar (DummyCookieJar)")
async def dummy_cookie_jar(make_session: MakeSession, base: str) -> Any:
    jar = cookies_api(make_session).DummyCookieJar()
    async with make_session(cookie_jar=jar) as session:
        async with session.get(base + "/cookies/set?ignored=1") as resp:
            await resp.read()
        async with session.get(base + "/cookies") as resp:
            return {"sent back": await resp.json(), "in the jar": len(jar)}


@example("the session's jar: update_cookies and filter_cookies")
async def session_jar(make_session: MakeSession, base: str) -> Any:
    from yarl import URL

    jar = cookies_api(make_session).CookieJar(unsafe=True)
    async with make_session(cookie_jar=jar) as session:
        session.cookie_jar.update_cookies({"token": "abc"}, URL(base + "/"))
        chosen = session.cookie_jar.filter_cookies(URL(base + "/cookies"))
        async with session.get(base + "/cookies") as resp:
            sent = await resp.json()
        return {"filter_cookies": {k: m.value for k, m in chosen.items()}, "sent": sent}


def _trace_config_class(make_session: MakeSession) -> Any:
    return (
        aiohttp.TraceConfig if make_session is aiohttp.ClientSession
        else worker_client.TraceConfig
    )


@example("client tracing: start and end of a redirected request, timed in trace_config_ctx")
async def tracing_start_end(make_session: MakeSession, base: str) -> Any:
    seen: list[Any] = []

    async def on_request_start(session: Any, trace_config_ctx: Any, params: Any) -> None:
        trace_config_ctx.start = asyncio.get_running_loop().time()
        seen.append(("start", params.method, params.url.path))

    async def on_request_end(session: Any, trace_config_ctx: Any, params: Any) -> None:
        elapsed = asyncio.get_running_loop().time() - trace_config_ctx.start
        seen.append(("end", params.url.path, params.response.status, elapsed >= 0))

    trace_config = _trace_config_class(make_session)()
    trace_config.on_request_start.append(on_request_start)
    trace_config.on_request_end.append(on_request_end)
    async with make_session(trace_configs=[trace_config]) as client:
        async with client.get(base + "/some/redirect/") as resp:
            await resp.read()
    return seen


@example("client tracing: trace_request_ctx, two configs with their own contexts")
async def tracing_request_ctx(make_session: MakeSession, base: str) -> Any:
    seen: list[Any] = []
    configs = []
    for name in ("audit", "xray"):
        config = _trace_config_class(make_session)()

        async def on_request_start(session: Any, ctx: Any, params: Any, name: str = name) -> None:
            ctx.mine = name
            seen.append((name, ctx.trace_request_ctx))

        async def on_request_end(session: Any, ctx: Any, params: Any, name: str = name) -> None:
            seen.append((name, ctx.mine))

        config.on_request_start.append(on_request_start)
        config.on_request_end.append(on_request_end)
        configs.append(config)
    async with make_session(trace_configs=configs) as session:
        async with session.get(base + "/get", trace_request_ctx={"foo": "bar"}):
            pass
    return seen


# -- the local server standing in for httpbin.org --------------------------------------


def make_app() -> web.Application:
    async def post(request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp.web undoes a Content-Encoding here
        info: dict[str, Any] = {
            "method": request.method,
            "content_type": request.headers.get("Content-Type"),
            "content_encoding": request.headers.get("Content-Encoding"),
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest()[:16],
        }
        if request.content_type == "application/json":
            info["json"] = json.loads(body)
        elif request.content_type == "text/plain":
            info["text"] = body.decode(request.charset or "utf-8")
        return web.json_response(info)

    async def headers(request: web.Request) -> web.Response:
        return web.json_response({"headers": dict(request.headers)})

    async def response_headers(request: web.Request) -> web.Response:
        resp = web.Response(text="<p>hi</p>", content_type="text/html")
        resp.headers.add("X-Multi", "a")
        resp.headers.add("X-Multi", "b")
        return resp

    async def redirect1(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/redirect2")

    async def redirect2(request: web.Request) -> web.Response:
        raise web.HTTPFound("/get")

    async def get(request: web.Request) -> web.Response:
        return web.Response(text="arrived")

    async def json_as_text(request: web.Request) -> web.Response:
        return web.Response(text='{"a": 1}', content_type="text/plain")

    async def vnd_json(request: web.Request) -> web.Response:
        return web.Response(text='{"b": 2}', content_type="application/vnd.api+json")

    async def cookies(request: web.Request) -> web.Response:
        return web.json_response({"cookies": dict(request.cookies)})

    async def set_cookies(request: web.Request) -> web.Response:
        resp = web.json_response({"set": list(request.query)})
        for name, value in request.query.items():
            resp.set_cookie(name, value)
        return resp

    async def cookie_header(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("Cookie", ""))

    app = web.Application()
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/cookies/set", set_cookies)
    app.router.add_get("/cookie-header", cookie_header)
    app.router.add_post("/post", post)
    app.router.add_get("/headers", headers)
    app.router.add_get("/response-headers", response_headers)
    app.router.add_get("/some/redirect/", redirect1)
    app.router.add_get("/redirect2", redirect2)
    app.router.add_get("/get", get)
    app.router.add_get("/json-as-text", json_as_text)
    app.router.add_get("/vnd-json", vnd_json)
    return app


# -- running them ------------------------------------------------------------------


async def run_all(broker_socket: str) -> bool:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"

    clients: dict[str, MakeSession] = {
        "aiohttp": aiohttp.ClientSession,
        "embedded": lambda **kw: worker_client.ClientSession(broker=None, **kw),
        "broker": lambda **kw: worker_client.ClientSession(broker=broker_socket, **kw),
    }
    all_same = True
    try:
        for n, (title, fn) in enumerate(EXAMPLES, 1):
            results: dict[str, Any] = {}
            for name, make_session in clients.items():
                try:
                    results[name] = await fn(make_session, base)
                except Exception as exc:  # a failure is a result to compare too
                    results[name] = f"raised {type(exc).__name__}: {exc}"
            print(f"{n:2}. {title}")
            print(f"    aiohttp:  {results['aiohttp']!r}")
            for name in ("embedded", "broker"):
                same = results[name] == results["aiohttp"]
                all_same &= same
                verdict = "same as aiohttp" if same else f"DIFFERS: {results[name]!r}"
                print(f"    {name + ':':9} {verdict}")
    finally:
        await runner.cleanup()
    return all_same


def main() -> int:
    with broker.start(export=False) as proc:
        print(f"broker pid {proc.pid} on {proc.socket_path}\n")
        ok = asyncio.run(run_all(proc.socket_path))
    print("\nall examples give aiohttp's results in both modes" if ok else "\nSOME DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
