"""Cookies along a redirect chain: each hop is sent what the jar holds for its URL at
that moment, its Set-Cookie is stored before the next hop, and what belongs to one
origin (an explicit Cookie header, the request's own cookies=) stops at the first hop
to another (aiohttp 3.14's ``ClientSession._request``)."""

from __future__ import annotations

from aiohttp import web

from worker_client import CookieJar


def chain_app(log: list[tuple[str, str | None]], elsewhere: list[str]) -> web.Application:
    """/start sets ``a`` for /next only and redirects there; /next sets ``b`` and
    redirects to /final; /final answers. /away redirects to ``elsewhere[0]``."""

    def seen(request: web.Request) -> None:
        log.append((request.path, request.headers.get("Cookie")))

    async def start(request: web.Request) -> web.Response:
        seen(request)
        resp = web.HTTPFound("/next")
        resp.set_cookie("a", "1", path="/next")
        raise resp

    async def next_(request: web.Request) -> web.Response:
        seen(request)
        resp = web.HTTPFound("/final")
        resp.set_cookie("b", "2")
        raise resp

    async def final(request: web.Request) -> web.Response:
        seen(request)
        return web.Response(text="done")

    async def away(request: web.Request) -> web.Response:
        seen(request)
        raise web.HTTPFound(elsewhere[0])

    app = web.Application()
    for path, handler in (("/start", start), ("/next", next_), ("/final", final),
                          ("/away", away)):
        app.router.add_get(path, handler)
    return app


async def test_each_hop_gets_the_cookies_that_match_it_then(serve_app, make_session):
    log: list[tuple[str, str | None]] = []
    base = await serve_app(chain_app(log, []))
    session = make_session(cookie_jar=CookieJar(unsafe=True))
    async with session.get(base + "/start") as resp:
        assert await resp.text() == "done"
        assert [h.cookies.keys() for h in resp.history] == [{"a"}, {"b"}]
        assert resp.cookies.keys() == set()
        # the final request's own headers, as sent, Cookie included (aiohttp's request_info)
        assert resp.request_info.headers["Cookie"] == "b=2"
    assert log == [("/start", None), ("/next", "a=1"), ("/final", "b=2")]
    assert {(m.key, m["path"]) for m in session.cookie_jar} == {("a", "/next"), ("b", "/")}


async def test_explicit_header_and_request_cookies_stop_at_another_origin(
    serve_app, make_session
):
    here: list[tuple[str, str | None]] = []
    there: list[tuple[str, str | None]] = []
    far = await serve_app(chain_app(there, []))
    # localhost is another host (and origin) than 127.0.0.1; the jar's host-only
    # cookies of 127.0.0.1 are not its cookies either.
    target = [far.replace("127.0.0.1", "localhost") + "/final"]
    base = await serve_app(chain_app(here, target))
    jar = CookieJar(unsafe=True)
    jar.update_cookies({"host": "1"}, response_url=base)  # host-only, 127.0.0.1
    session = make_session(cookie_jar=jar)
    async with session.get(
        base + "/away", headers={"Cookie": "explicit=1"}, cookies={"req": "1"}
    ) as resp:
        assert resp.status == 200
    assert here == [("/away", "explicit=1; host=1; req=1")]
    assert there == [("/final", None)]
    # The request's cookies were sent, never stored.
    assert {m.key for m in jar} == {"host"}


async def test_same_origin_redirect_keeps_the_explicit_header_and_request_cookies(
    serve_app, make_session
):
    log: list[tuple[str, str | None]] = []
    base = await serve_app(chain_app(log, []))
    session = make_session(cookie_jar=CookieJar(unsafe=True))
    async with session.get(
        base + "/next", headers={"Cookie": "explicit=1"}, cookies={"req": "1"}
    ) as resp:
        assert resp.status == 200
    assert log == [
        ("/next", "explicit=1; req=1"),
        ("/final", "b=2; explicit=1; req=1"),
    ]


async def test_a_dummy_jar_stores_and_sends_nothing_along_the_chain(
    serve_app, make_session
):
    from worker_client import DummyCookieJar

    log: list[tuple[str, str | None]] = []
    base = await serve_app(chain_app(log, []))
    session = make_session(cookie_jar=DummyCookieJar())
    async with session.get(base + "/start") as resp:
        assert resp.status == 200
        assert resp.history[0].cookies.keys() == {"a"}  # still the response's own
    assert log == [("/start", None), ("/next", None), ("/final", None)]
    assert len(session.cookie_jar) == 0
