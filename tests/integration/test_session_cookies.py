"""Cookies through a session, in both modes, against real aiohttp.web servers on loopback:
the session's jar, ``cookies=`` on the session and on a request, ``resp.cookies``,
named jars shared. Redirect chains: test_cookie_hops.py; processes: test_cookie_group.py.

The servers listen on 127.0.0.1; a jar refuses cookies from IP hosts unless ``unsafe``,
so most tests speak to them as ``localhost``."""

from __future__ import annotations

import itertools
import os
from http.cookies import SimpleCookie

import pytest
from aiohttp import web
from yarl import URL

from worker_client import ClientSession, CookieJar, DummyCookieJar

_names = itertools.count()


def unique(prefix: str) -> str:
    """A jar name no other test (nor an earlier run against the same broker) uses."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


async def set_cookies(request: web.Request) -> web.Response:
    """Each query pair becomes a Set-Cookie; ``raw`` values are sent as they are."""
    resp = web.json_response({"set": True})
    for name, value in request.query.items():
        if name == "raw":
            resp.headers.add("Set-Cookie", value)
        else:
            resp.set_cookie(name, value)
    return resp


async def echo_cookies(request: web.Request) -> web.Response:
    """The Cookie header(s) the server received, and the cookies aiohttp.web read."""
    return web.json_response(
        {"headers": request.headers.getall("Cookie", []), "cookies": dict(request.cookies)}
    )


async def redirect(request: web.Request) -> web.Response:
    """302 to ``to``, setting the cookies of ``set`` (``name=value``) on the way."""
    resp = web.Response(status=302, headers={"Location": request.query["to"]})
    for pair in request.query.getall("set", []):
        name, _, value = pair.partition("=")
        resp.set_cookie(name, value)
    return resp


def cookie_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/set", set_cookies)
    app.router.add_get("/echo", echo_cookies)
    app.router.add_get("/redirect", redirect)
    return app


@pytest.fixture
async def base(serve_app) -> str:
    """The cookie app as http://localhost:PORT."""
    return (await serve_app(cookie_app())).replace("127.0.0.1", "localhost")


async def received(session: ClientSession, url: str, **kwargs) -> dict[str, str]:
    async with session.get(url, **kwargs) as resp:
        assert resp.status == 200
        return (await resp.json())["cookies"]


async def get(session: ClientSession, url: str, **kwargs) -> None:
    async with session.get(url, **kwargs) as resp:
        assert resp.status == 200
        await resp.read()


# -- resp.cookies -------------------------------------------------------------------------


async def test_resp_cookies_are_that_responses_set_cookies(session, base):
    raw = "pref=dark; Path=/app; HttpOnly; SameSite=Lax"
    async with session.get(base + "/set", params={"sid": "abc", "raw": raw}) as resp:
        cookies = resp.cookies
    assert isinstance(cookies, SimpleCookie)
    assert {k: m.value for k, m in cookies.items()} == {"sid": "abc", "pref": "dark"}
    assert cookies["pref"]["path"] == "/app"
    assert cookies["pref"]["httponly"] is True
    assert cookies["pref"]["samesite"] == "Lax"


async def test_resp_cookies_skip_a_malformed_set_cookie(session, base):
    params = [("raw", "no-equals-sign"), ("raw", "ok=1"), ("raw", "bad name=2")]
    async with session.get(base + "/set", params=params) as resp:
        assert list(resp.cookies) == ["ok"]


async def test_each_history_response_has_its_own_cookies(session, base):
    url = URL(base + "/redirect").with_query(to="/set?last=3", set=["first=1", "second=2"])
    async with session.get(url) as resp:
        assert resp.status == 200
        assert list(resp.cookies) == ["last"]
        (hop,) = resp.history
        assert {k: m.value for k, m in hop.cookies.items()} == {"first": "1", "second": "2"}


async def test_a_response_without_set_cookie_has_no_cookies(session, base):
    async with session.get(base + "/echo") as resp:
        assert resp.cookies == SimpleCookie()


# -- the session's jar ----------------------------------------------------------------------


async def test_session_cookies_are_sent(make_session, base):
    session = make_session(cookies={"s1": "one", "s2": "two"})
    assert await received(session, base + "/echo") == {"s1": "one", "s2": "two"}


async def test_a_cookie_set_by_a_response_is_sent_with_the_next_request(session, base):
    await get(session, base + "/set", params={"sid": "abc"})
    assert await received(session, base + "/echo") == {"sid": "abc"}
    assert await received(session, base + "/echo") == {"sid": "abc"}


async def test_the_jar_holds_what_responses_set(session, base):
    await get(session, base + "/set", params={"sid": "abc"})
    jar = session.cookie_jar
    assert len(jar) == 1
    (morsel,) = list(jar)
    assert (morsel.key, morsel.value, morsel["domain"]) == ("sid", "abc", "localhost")
    assert set(jar.filter_cookies(URL(base + "/any"))) == {"sid"}


async def test_cookies_given_to_the_jar_are_sent(session, base):
    session.cookie_jar.update_cookies({"given": "1"}, URL(base + "/"))
    assert await received(session, base + "/echo") == {"given": "1"}


async def test_a_cleared_jar_sends_nothing(session, base):
    await get(session, base + "/set", params={"sid": "abc"})
    assert await received(session, base + "/echo") == {"sid": "abc"}
    session.cookie_jar.clear()
    assert await received(session, base + "/echo") == {}


async def test_the_default_jar_refuses_cookies_from_an_ip_host(session, serve_app):
    ip_base = await serve_app(cookie_app())
    await get(session, ip_base + "/set", params={"sid": "abc"})
    assert len(session.cookie_jar) == 0
    assert await received(session, ip_base + "/echo") == {}


async def test_an_unsafe_jar_accepts_cookies_from_an_ip_host(make_session, serve_app):
    ip_base = await serve_app(cookie_app())
    session = make_session(cookie_jar=CookieJar(unsafe=True))
    await get(session, ip_base + "/set", params={"sid": "abc"})
    assert len(session.cookie_jar) == 1
    assert await received(session, ip_base + "/echo") == {"sid": "abc"}


async def test_a_dummy_jar_stores_nothing_and_sends_nothing(make_session, base):
    session = make_session(cookie_jar=DummyCookieJar())
    await get(session, base + "/set", params={"sid": "abc"})
    assert len(session.cookie_jar) == 0
    assert await received(session, base + "/echo") == {}


async def test_the_jar_stays_readable_after_the_session_closes(make_session, base):
    session = make_session()
    await get(session, base + "/set", params={"sid": "abc"})
    await session.close()
    assert [m.key for m in session.cookie_jar] == ["sid"]


async def test_a_secure_cookie_is_not_sent_over_http(session, base):
    session.cookie_jar.update_cookies(SimpleCookie("s=1; Secure"), URL(base + "/"))
    session.cookie_jar.update_cookies({"plain": "2"}, URL(base + "/"))
    assert await received(session, base + "/echo") == {"plain": "2"}


async def test_path_scoped_cookie_goes_to_its_path_only(session, base):
    raw = "scoped=1; Path=/echo"
    await get(session, base + "/set", params={"raw": raw})
    assert await received(session, base + "/echo") == {"scoped": "1"}
    async with session.get(base + "/redirect", params={"to": "/echo"}) as resp:
        assert resp.history[0].request_info.headers.get("Cookie") is None
        assert (await resp.json())["cookies"] == {"scoped": "1"}


async def test_a_cookie_deleted_by_the_server_is_no_longer_sent(session, base):
    await get(session, base + "/set", params={"sid": "abc"})
    assert len(session.cookie_jar) == 1
    await get(session, base + "/set", params={"raw": "sid=; Max-Age=0"})
    assert await received(session, base + "/echo") == {}
    assert len(session.cookie_jar) == 0


# -- cookies= on a request ---------------------------------------------------------------------


async def test_request_cookies_are_sent_and_not_stored(session, base):
    assert await received(session, base + "/echo", cookies={"once": "1"}) == {"once": "1"}
    assert len(session.cookie_jar) == 0
    assert await received(session, base + "/echo") == {}


async def test_request_cookies_go_with_the_jars(session, base):
    await get(session, base + "/set", params={"sid": "abc"})
    got = await received(session, base + "/echo", cookies={"once": "1"})
    assert got == {"sid": "abc", "once": "1"}


async def test_request_cookies_are_sent_with_a_dummy_jar(make_session, base):
    session = make_session(cookie_jar=DummyCookieJar())
    assert await received(session, base + "/echo", cookies={"once": "1"}) == {"once": "1"}


async def test_request_cookies_quoted_as_the_jar_says(make_session, base):
    session = make_session(cookie_jar=CookieJar(quote_cookie=False))
    async with session.get(base + "/echo", cookies={"name": "val=foobar"}) as resp:
        assert (await resp.json())["headers"] == ["name=val=foobar"]
        assert resp.request_info.headers.get("Cookie") in (None, "name=val=foobar")


async def test_request_cookies_are_sent_to_an_ip_host_with_an_unsafe_jar(
    make_session, serve_app
):
    ip_base = await serve_app(cookie_app())
    session = make_session(cookie_jar=CookieJar(unsafe=True))
    assert await received(session, ip_base + "/echo", cookies={"adhoc": "value"}) == {
        "adhoc": "value"
    }


async def test_an_explicit_cookie_header_is_kept_beside_jar_cookies(session, base):
    await get(session, base + "/set", params={"sid": "abc"})
    got = await received(session, base + "/echo", headers={"Cookie": "mine=1"})
    assert got == {"mine": "1", "sid": "abc"}


# -- which jar ---------------------------------------------------------------------------------


async def test_sessions_without_a_jar_see_nothing_of_each_other(make_session, base):
    one, two = make_session(), make_session()
    await get(one, base + "/set", params={"sid": "one"})
    assert await received(two, base + "/echo") == {}
    assert len(two.cookie_jar) == 0
    assert await received(one, base + "/echo") == {"sid": "one"}


async def test_unnamed_jars_of_one_process_see_nothing_of_each_other(make_session, base):
    one = make_session(cookie_jar=CookieJar())
    two = make_session(cookie_jar=CookieJar())
    await get(one, base + "/set", params={"sid": "one"})
    assert await received(two, base + "/echo") == {}
    assert await received(one, base + "/echo") == {"sid": "one"}


async def test_sessions_given_one_jar_object_share_it(make_session, base):
    jar = CookieJar()
    one, two = make_session(cookie_jar=jar), make_session(cookie_jar=jar)
    await get(one, base + "/set", params={"sid": "shared"})
    assert await received(two, base + "/echo") == {"sid": "shared"}


async def test_named_jars_with_equal_arguments_share_cookies(make_session, base):
    name = unique("site")
    one = make_session(cookie_jar=CookieJar(name=name))
    two = make_session(cookie_jar=CookieJar(name=name))
    other = make_session(cookie_jar=CookieJar(name=name, quote_cookie=False))
    await get(one, base + "/set", params={"login": "yes"})
    assert await received(two, base + "/echo") == {"login": "yes"}
    assert await received(other, base + "/echo") == {}


# -- redirect hops ---------------------------------------------------------------------------


async def test_each_hop_gets_the_cookies_that_match_it(make_session, base, serve_app):
    # localhost -> 127.0.0.1 (another origin) -> back: the unsafe jar picks afresh
    other = await serve_app(cookie_app())
    session = make_session(cookie_jar=CookieJar(unsafe=True))
    session.cookie_jar.update_cookies({"here": "1"}, URL(base + "/"))
    back = URL(base + "/redirect").with_query(to="/echo")
    there = URL(other + "/redirect").with_query(to=str(back), set="there=2")
    async with session.get(URL(base + "/redirect").with_query(to=str(there))) as resp:
        assert (await resp.json())["cookies"] == {"here": "1"}
        sent = [h.request_info.headers.get("Cookie") for h in resp.history]
    assert sent[1] is None  # 127.0.0.1 had none yet
    assert set(session.cookie_jar.filter_cookies(URL(other + "/"))) == {"there"}


# -- worker_client.request() -------------------------------------------------------------------


async def test_one_off_request_takes_cookies_as_aiohttp(broker_address, base):
    import worker_client

    async with worker_client.request(
        "GET", base + "/echo", cookies={"a": "1"}, broker=broker_address
    ) as resp:
        assert (await resp.json())["cookies"] == {"a": "1"}
    with pytest.raises(TypeError, match="cookie_jar"):
        async with worker_client.request(
            "GET", base + "/echo", cookie_jar=CookieJar(), broker=broker_address
        ):
            pass


async def test_clear_with_a_predicate_sees_each_cookies_expiry_as_aiohttp(
    make_session, base, broker_address
):
    # aiohttp's jar iterates Morsels with their Max-Age/Expires as set: a predicate
    # "session cookies only" keeps the lasting ones.
    import aiohttp

    raw = [
        ("raw", "session=1"),
        ("raw", "lasting=2; Max-Age=3600"),
        ("raw", "dated=3; Expires=Wed, 09 Jun 2999 10:18:14 GMT"),
    ]
    session = make_session(cookie_jar=CookieJar(broker=broker_address))
    await get(session, base + "/set", params=raw)
    theirs = aiohttp.CookieJar()
    theirs.update_cookies_from_headers([v for _, v in raw], URL(base + "/set"))

    def session_only(morsel) -> bool:
        return not morsel["max-age"] and not morsel["expires"]

    assert {m.key: m["max-age"] for m in session.cookie_jar} == {
        m.key: m["max-age"] for m in theirs
    }
    session.cookie_jar.clear(session_only)
    theirs.clear(session_only)
    assert sorted(m.key for m in session.cookie_jar) == sorted(m.key for m in theirs)
    assert sorted(m.key for m in theirs) == ["dated", "lasting"]
