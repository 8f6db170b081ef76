"""The worker's cookie jar API, embedded: aiohttp 3.14's tests/test_cookiejar.py cases
that concern the public API (the rules themselves, with an injected clock, are
tests/unit/test_cookie_store.py), and the cookie cases of its tests/test_client_session.py.
"""

from __future__ import annotations

import json
import os
import stat
import warnings
from collections.abc import Callable
from http.cookies import Morsel, SimpleCookie
from pathlib import Path
from types import MappingProxyType

import aiohttp
import pytest
from yarl import URL

from tests.unit import cookie_cases as cases
from tests.unit.cookie_cases import by_name, play, sent, sent_by_url, to_receive, to_send
from worker_client import AbstractCookieJar, ClientSession, CookieJar, DummyCookieJar
from worker_client.cookies import request_cookies, request_jar


def received(url: str) -> dict[str, Morsel[str]]:
    jar = CookieJar()
    jar.update_cookies(to_receive(), URL(url))
    return by_name(jar)


# -- construction ------------------------------------------------------------------------


def test_no_running_loop_needed_and_loop_is_ignored():
    jar = CookieJar(loop=object())
    assert (jar.unsafe, jar.quote_cookie, jar.name) == (False, True, None)
    assert CookieJar(unsafe=True, quote_cookie=False, name="site").name == "site"
    assert len(DummyCookieJar(loop=object())) == 0


async def test_treat_as_secure_origin_property_as_aiohttp():
    for value in (None, "http://a.example/x", [URL("https://b.example:8443/y")]):
        assert (
            CookieJar(treat_as_secure_origin=value).treat_as_secure_origin
            == aiohttp.CookieJar(treat_as_secure_origin=value).treat_as_secure_origin
        )
    assert DummyCookieJar().treat_as_secure_origin == frozenset()


def test_max_time_as_aiohttp():
    assert CookieJar.MAX_TIME == aiohttp.CookieJar.MAX_TIME
    assert CookieJar.SUB_MAX_TIME == aiohttp.CookieJar.SUB_MAX_TIME


@pytest.mark.parametrize("name", ["", "x" * 201])
def test_bad_name_is_refused(name):
    with pytest.raises(ValueError, match="name"):
        CookieJar(name=name)


def test_abstract_jar_needs_its_methods():
    with pytest.raises(TypeError):
        AbstractCookieJar()  # type: ignore[abstract]
    assert isinstance(CookieJar(), AbstractCookieJar)
    assert isinstance(DummyCookieJar(), AbstractCookieJar)


# -- update and filter (aiohttp's TestCookieJarSafe and friends) --------------------------


def test_every_cookie_given_is_stored_with_its_value():
    jar = CookieJar()
    jar.update_cookies(to_send())
    assert {m.key: m.value for m in jar} == {k: m.value for k, m in to_send().items()}
    assert len(jar) == 16


def test_expired_cookies_given_are_not_stored():
    jar = CookieJar()
    jar.update_cookies(to_send(year=1980))
    assert "expires-cookie" not in by_name(jar)
    assert len(jar) == 15


@pytest.mark.parametrize(("url", "expected"), cases.SEND_CASES)
def test_filter_by_domain_path_secure_and_expiry(url, expected):
    jar = CookieJar()
    jar.update_cookies(to_send())
    assert sent(jar, url) == expected


@pytest.mark.parametrize(("url", "expected"), cases.RECEIVE_CASES)
def test_a_host_stores_only_cookies_for_its_domains(url, expected):
    assert set(received(url)) == expected


def test_path_value():
    got = received("http://pathtest.com/")
    assert set(got) == {"unconstrained-cookie", "no-path-cookie", "path-cookie",
                        "wrong-path-cookie"}
    assert got["no-path-cookie"]["path"] == "/"
    assert got["path-cookie"]["path"] == "/somepath"
    assert got["wrong-path-cookie"]["path"] == "/"


def test_filter_cookies_with_a_str_is_deprecated_as_in_aiohttp():
    jar = CookieJar()
    jar.update_cookies(SimpleCookie("shared-cookie=first; Domain=example.com;"))
    with pytest.warns(DeprecationWarning):
        assert set(jar.filter_cookies("http://example.com/")) == {"shared-cookie"}


def test_ip_host_gets_only_shared_cookies_and_sets_none():
    jar = CookieJar()
    jar.update_cookies(to_send(year=1980))
    cookie_header = jar.filter_cookies(URL("http://1.2.3.4/")).output(header="Cookie:")
    assert cookie_header == "Cookie: shared-cookie=first"
    ip_jar = CookieJar()
    ip_jar.update_cookies(to_receive(), URL("http://1.2.3.4/"))
    assert len(ip_jar) == 0


def test_unsafe_jar_takes_cookies_from_ip_hosts():
    jar = CookieJar(unsafe=True)
    jar.update_cookies(SimpleCookie("a=1"), URL("http://127.0.0.1/"))
    assert sent(jar, "http://127.0.0.1/") == {"a"}


@pytest.mark.parametrize(("cookies", "expected", "quote"), cases.QUOTE_CASES)
def test_quotes_as_quote_cookie_says(cookies, expected, quote):
    jar = CookieJar(unsafe=True, quote_cookie=quote)
    jar.update_cookies(SimpleCookie(cookies))
    assert jar.filter_cookies(URL("http://127.0.0.1/")).output(header="Cookie:") == expected


@pytest.mark.parametrize("cookies", cases.LOOSE_COOKIES)
def test_loose_cookie_types_are_accepted(cookies):
    CookieJar().update_cookies(cookies=cookies)


def test_morsel_given_is_not_changed():
    morsel = SimpleCookie("a=1")["a"]
    jar = CookieJar()
    jar.update_cookies({"a": morsel}, URL("http://example.com/x/y"))
    assert (morsel["domain"], morsel["path"]) == ("", "")
    assert by_name(jar)["a"]["domain"] == "example.com"


@pytest.mark.parametrize("origins", cases.SECURE_ORIGIN_FORMS)
def test_treat_as_secure_origin(origins):
    endpoint = URL("http://127.0.0.1/")
    jar = CookieJar(unsafe=True, treat_as_secure_origin=origins)
    jar.update_cookies(SimpleCookie("k=v; HttpOnly; Path=/; Secure"), endpoint)
    assert len(jar) == 1
    assert len(jar.filter_cookies(request_url=endpoint)) == 1
    assert len(CookieJar(unsafe=True).filter_cookies(endpoint)) == 0


# -- update_cookies_from_headers -----------------------------------------------------------


def test_update_cookies_from_headers():
    jar = CookieJar()
    url = URL("http://example.com/path")
    jar.update_cookies_from_headers(
        [
            "session-id=123456; Path=/",
            "user-pref=dark-mode; Domain=.example.com",
            "tracking=xyz789; Secure; HttpOnly",
        ],
        url,
    )
    assert len(jar) == 3
    http = jar.filter_cookies(url)
    assert {k: m.value for k, m in http.items()} == {
        "session-id": "123456", "user-pref": "dark-mode"
    }
    assert jar.filter_cookies(URL("https://example.com/path"))["tracking"].value == "xyz789"


def test_update_cookies_from_headers_duplicate_names():
    jar = CookieJar()
    jar.update_cookies_from_headers(
        [
            "session-id=123456; Domain=.example.com; Path=/",
            "session-id=789012; Domain=.www.example.com; Path=/",
            "user-pref=light; Domain=.example.com",
            "user-pref=dark; Domain=sub.example.com",
        ],
        URL("http://www.example.com/"),
    )
    assert len(jar) == 3
    assert {m["domain"] for m in jar if m.key == "session-id"} == {
        "example.com", "www.example.com"
    }


@pytest.mark.parametrize(("headers", "names"), cases.HEADER_CASES)
def test_update_cookies_from_headers_parses_as_aiohttp(headers, names):
    jar = CookieJar()
    url = URL("http://example.com/")
    jar.update_cookies_from_headers(headers, url)
    assert set(jar.filter_cookies(url)) == names
    assert len(jar) == len(names)


@pytest.mark.parametrize(("options", "given", "count", "sends"), cases.SCENARIOS)
def test_aiohttp_scenario(options, given, count, sends):
    jar = CookieJar(**options)
    play(jar, given, jar.update_cookies_from_headers)
    assert (len(jar), sent_by_url(jar, sends)) == (count, sends)


def test_update_cookies_from_headers_keeps_the_attributes():
    jar = CookieJar()
    jar.update_cookies_from_headers(["s=1; Secure; HttpOnly; SameSite=Strict"], URL("https://h/"))
    (morsel,) = jar
    assert (morsel["secure"], morsel["httponly"], morsel["samesite"]) == (True, True, "Strict")


# -- cookies, host_only_cookies, len, iter -------------------------------------------------


def test_cookies_property():
    jar = CookieJar()
    jar.update_cookies(
        SimpleCookie("shared-cookie=first; domain-cookie=second; Domain=example.com; Path=/; "),
        URL("http://example.com/"),
    )
    cookies = jar.cookies
    assert isinstance(cookies, MappingProxyType)
    assert {n for c in cookies.values() for n in c} == {"shared-cookie", "domain-cookie"}
    assert all(isinstance(c, SimpleCookie) for c in cookies.values())
    domain_cookie = cookies[("example.com", "")]["domain-cookie"]
    assert (domain_cookie["domain"], domain_cookie["path"]) == ("example.com", "/")
    with pytest.raises(TypeError):
        cookies[("new", "key")] = SimpleCookie()  # type: ignore[index]


def test_cookies_is_a_copy():
    jar = CookieJar()
    jar.update_cookies({"a": "1"}, URL("http://example.com/"))
    jar.cookies[("example.com", "")]["a"].set("a", "2", "2")
    next(iter(jar)).set("a", "3", "3")
    assert jar.filter_cookies(URL("http://example.com/"))["a"].value == "1"


def test_host_only_cookies_property():
    jar = CookieJar()
    jar.update_cookies(SimpleCookie("hostonly=value;"), URL("http://example.com/"))
    jar.update_cookies(SimpleCookie("dom=value; Domain=example.com"), URL("http://example.com/"))
    assert jar.host_only_cookies == frozenset({("example.com", "", "hostonly")})


def test_len_and_iteration_follow_the_jar():
    jar = CookieJar()
    assert len(jar) == 0 and list(jar) == []
    jar.update_cookies({"a": "1", "b": "2"}, URL("http://example.com/"))
    assert len(jar) == 2
    assert sorted((m.key, m.value, m["domain"]) for m in jar) == [
        ("a", "1", "example.com"), ("b", "2", "example.com")
    ]
    jar.update_cookies(SimpleCookie("a=; Max-Age=0"), URL("http://example.com/"))
    assert [m.key for m in jar] == ["b"]


# -- clear, clear_domain ---------------------------------------------------------------


def test_clear_all():
    jar = CookieJar()
    jar.update_cookies(to_send())
    jar.clear()
    assert len(jar) == 0
    assert list(jar) == []


def test_clear_with_predicate_removes_what_it_selects():
    jar = CookieJar()
    jar.update_cookies(to_send())
    seen = []

    def predicate(morsel: Morsel[str]) -> bool:
        seen.append(morsel.key)
        return morsel["domain"] == "pathtest.com"

    jar.clear(predicate)
    assert len(seen) == 16
    names = set(by_name(jar))
    assert not any(n.startswith(("path", "no-path")) for n in names)
    assert len(names) == 16 - 5


def test_clear_with_predicate_picks_the_exact_cookie():
    # same name on two paths and two domains: only the chosen one goes
    jar = CookieJar()
    jar.update_cookies(SimpleCookie("c=root; Domain=example.com; Path=/"))
    jar.update_cookies(SimpleCookie("c=sub; Domain=example.com; Path=/sub"))
    jar.update_cookies(SimpleCookie("c=other; Domain=other.org; Path=/sub"))
    jar.clear(lambda m: m.value == "sub")
    assert sorted(m.value for m in jar) == ["other", "root"]


def test_clear_with_predicate_also_drops_expired():
    jar = CookieJar()
    jar.update_cookies({"keep": "1"})
    jar.clear(lambda m: False)
    assert len(jar) == 1


def test_clear_domain_takes_subdomains_too():
    jar = CookieJar()
    jar.update_cookies(SimpleCookie(cases.CLEAR_DOMAIN_COOKIES))
    jar.clear_domain("example.com")
    assert {(m.key, m.value) for m in jar} == {("foo", "bar"), ("other", "value")}


# -- save and load -----------------------------------------------------------------------


def reloaded(jar: CookieJar, path: Path) -> CookieJar:
    """A new jar that loaded what jar saved to path."""
    jar.save(path)
    loaded = CookieJar()
    loaded.load(path)
    return loaded


def test_save_load_roundtrip(tmp_path):
    path = tmp_path / "cookies.json"
    saved = CookieJar()
    saved.update_cookies(to_receive())
    saved.save(file_path=path)
    loaded = CookieJar()
    loaded.update_cookies({"replaced": "x"})
    loaded.load(file_path=path)
    assert {m.key: m for m in loaded} == {m.key: m for m in saved}
    assert loaded.cookies == saved.cookies


def test_save_writes_aiohttps_layout_and_aiohttp_loads_it(tmp_path):
    path = tmp_path / "cookies.json"
    jar = CookieJar()
    jar.update_cookies_from_headers(
        ["sid=x; Max-Age=3600; Path=/", "pref=y; Domain=example.com; Secure; HttpOnly"],
        URL("https://example.com/"),
    )
    jar.save(str(path))
    data = json.loads(path.read_text())
    assert set(data) == {"example.com|"}
    assert data["example.com|"]["sid"]["host_only"] is True
    assert isinstance(data["example.com|"]["sid"]["expires_timestamp"], float)
    assert data["example.com|"]["pref"]["secure"] is True


async def test_a_file_aiohttp_saved_loads_here_and_back(tmp_path):
    theirs = aiohttp.CookieJar()
    theirs.update_cookies_from_headers(
        ["sid=x; Path=/", "pref=y; Domain=example.com; Path=/"], URL("https://auth.example.com/")
    )
    theirs.save(tmp_path / "theirs.json")
    ours = CookieJar()
    ours.load(tmp_path / "theirs.json")
    assert ours.host_only_cookies == theirs.host_only_cookies
    sub = URL("https://sub.auth.example.com/")
    assert set(ours.filter_cookies(sub)) == set(theirs.filter_cookies(sub)) == {"pref"}
    ours.save(tmp_path / "ours.json")
    again = aiohttp.CookieJar()
    again.load(tmp_path / "ours.json")
    assert again.host_only_cookies == theirs.host_only_cookies


def test_save_load_keeps_host_only_scope(tmp_path):
    issuer = URL("https://auth.example.com/login")
    subdomain = URL("https://sub.auth.example.com/")
    jar = CookieJar()
    jar.update_cookies({"sid": "hostonly"}, response_url=issuer)
    assert "sid" not in jar.filter_cookies(subdomain)
    loaded = reloaded(jar, tmp_path / "f.json")
    assert loaded.host_only_cookies == frozenset({("auth.example.com", "", "sid")})
    assert "sid" not in loaded.filter_cookies(subdomain)
    assert "sid" in loaded.filter_cookies(issuer)


def test_save_load_keeps_domain_cookie_for_subdomains(tmp_path):
    jar = CookieJar()
    jar.update_cookies_from_headers(
        ["sid=domaincookie; Domain=example.com"], URL("https://example.com/")
    )
    loaded = reloaded(jar, tmp_path / "f.json")
    assert loaded.host_only_cookies == frozenset()
    assert "sid" in loaded.filter_cookies(URL("https://sub.example.com/"))


def test_save_load_keeps_the_absolute_deadline(tmp_path):
    jar = CookieJar()
    jar.update_cookies_from_headers(
        ["sid=x; Max-Age=3600; Domain=example.com"], URL("https://example.com/")
    )
    loaded = reloaded(jar, tmp_path / "a.json")
    loaded.save(tmp_path / "b.json")
    first = json.loads((tmp_path / "a.json").read_text())
    assert first == json.loads((tmp_path / "b.json").read_text())
    assert first["example.com|"]["sid"]["expires_timestamp"] > 0


def test_load_drops_a_cookie_past_its_deadline(tmp_path):
    url = URL("https://example.com/")
    jar = CookieJar()
    jar.update_cookies_from_headers(
        ["sid=x; Expires=Tue, 1 Jan 2999 12:00:00 GMT; Domain=example.com"], url
    )
    path = tmp_path / "f.json"
    jar.save(path)
    data = json.loads(path.read_text())
    data["example.com|"]["sid"]["expires_timestamp"] = 0.0
    path.write_text(json.dumps(data))
    loaded = CookieJar()
    loaded.load(path)
    assert len(loaded) == 0
    assert "sid" not in loaded.filter_cookies(url)


def test_load_old_format_without_new_keys(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"example.com|/": {"sid": {
        "key": "sid", "value": "x", "coded_value": "x", "domain": "example.com",
        "max-age": "3600",
    }}}))
    jar = CookieJar()
    jar.load(path)
    assert "sid" in jar.filter_cookies(URL("https://example.com/"))


def test_loaded_values_are_only_data(tmp_path):
    value = "__import__('os').system('echo PWNED')"
    path = tmp_path / "safe.json"
    path.write_text(json.dumps(
        {"evil.com|/": {"session": {"key": "session", "value": value, "coded_value": value}}}
    ))
    jar = CookieJar()
    jar.load(path)
    assert [m.value for m in jar] == [value]


def test_save_load_keeps_flags(tmp_path):
    jar = CookieJar()
    jar.update_cookies_from_headers(
        ["token=abc123; Secure; HttpOnly; Path=/; Domain=example.com"],
        URL("https://example.com/"),
    )
    loaded = reloaded(jar, tmp_path / "f.json")
    (cookie,) = list(loaded)
    assert (cookie.key, cookie.value, cookie["domain"]) == ("token", "abc123", "example.com")
    assert cookie["secure"] is True and cookie["httponly"] is True


def test_a_pickled_jar_is_refused_and_changes_nothing(tmp_path):
    import pickle

    path = tmp_path / "pickled"
    path.write_bytes(pickle.dumps({("example.com", ""): SimpleCookie("a=1")}))
    jar = CookieJar()
    jar.update_cookies({"kept": "1"})
    with pytest.raises(ValueError, match="not a JSON cookie file.*never loads pickle"):
        jar.load(path)
    assert [m.key for m in jar] == ["kept"]


@pytest.mark.parametrize("data", ['{"nobar": {}}', "[1, 2]", '{"a|/": {"n": {"key": 1}}}'])
def test_bad_json_is_a_value_error_and_changes_nothing(tmp_path, data):
    path = tmp_path / "bad.json"
    path.write_text(data)
    jar = CookieJar()
    jar.update_cookies({"kept": "1"})
    with pytest.raises(ValueError):
        jar.load(path)
    assert [m.key for m in jar] == ["kept"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_save_creates_a_private_file_and_keeps_an_existing_files_mode(tmp_path):
    jar = CookieJar()
    jar.update_cookies_from_headers(["token=abc123; Path=/"], URL("https://example.com/"))
    new = tmp_path / "new.json"
    jar.save(new)
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    existing = tmp_path / "existing.json"
    existing.write_text("{}")
    existing.chmod(0o644)
    jar.save(existing)
    assert stat.S_IMODE(existing.stat().st_mode) == 0o644
    assert "token" in existing.read_text()


# -- DummyCookieJar --------------------------------------------------------------------------


def test_dummy_cookie_jar_stores_nothing():
    jar = DummyCookieJar()
    assert (jar.unsafe, jar.quote_cookie, len(jar)) == (False, True, 0)
    jar.update_cookies(SimpleCookie("foo=bar; Domain=example.com;"))
    jar.update_cookies_from_headers(["cookie1=value1"], URL("http://example.com/"))
    assert len(jar) == 0
    with pytest.raises(StopIteration):
        next(iter(jar))
    assert not jar.filter_cookies(URL("http://example.com/"))
    assert dict(jar.cookies) == {} and jar.host_only_cookies == frozenset()
    jar.clear()
    jar.clear_domain("example.com")


# -- which jar: named jars shared, unnamed ones not ------------------------------------------


def test_named_jars_with_equal_arguments_share_their_cookies():
    first = CookieJar(name="test-share")
    second = CookieJar(name="test-share")
    first.update_cookies({"login": "yes"}, URL("http://example.com/"))
    assert second.filter_cookies(URL("http://example.com/"))["login"].value == "yes"
    second.clear()
    assert len(first) == 0


@pytest.mark.parametrize(
    "other",
    [
        {"name": "test-apart-2"},
        {"name": "test-apart", "unsafe": True},
        {"name": "test-apart", "quote_cookie": False},
        {"name": "test-apart", "treat_as_secure_origin": "http://example.com"},
        {},
    ],
)
def test_jars_with_other_arguments_do_not_share(other):
    CookieJar(name="test-apart").update_cookies({"a": "1"})
    assert len(CookieJar(**other)) == 0


def test_secure_origins_in_any_order_are_equal_arguments():
    origins = ["http://a.example", "http://b.example/x"]
    CookieJar(name="test-origins", treat_as_secure_origin=origins).update_cookies({"a": "1"})
    again = CookieJar(name="test-origins", treat_as_secure_origin=origins[::-1])
    assert len(again) == 1


def test_unnamed_jars_do_not_share():
    first, second = CookieJar(), CookieJar()
    first.update_cookies({"a": "1"})
    assert len(second) == 0
    assert len(first) == 1


def in_a_forked_child(work: Callable[[], object]) -> object:
    """What work() returns when run in a forked child (through JSON), once the child exits."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        got = json.loads(f.read())
    os.waitpid(pid, 0)
    return got


def test_an_unnamed_jar_starts_empty_in_a_forked_child_a_named_one_does_not():
    own, group = CookieJar(), CookieJar(name="test-fork")
    own.update_cookies({"a": "1"})
    group.update_cookies({"g": "1"})

    def child() -> list:
        group.update_cookies({"child": "1"})
        return [len(own), sorted(m.key for m in group)]

    assert in_a_forked_child(child) == [0, ["child", "g"]]
    assert len(own) == 1  # the parent's are untouched


# -- sessions (aiohttp's test_client_session.py cookie cases) ---------------------------------


@pytest.mark.parametrize(
    "cookies", [{"c1": "cookie1", "c2": "cookie2"}, [("c1", "cookie1"), ("c2", "cookie2")]]
)
async def test_session_cookies_seed_its_jar(cookies):
    async with ClientSession(cookies=cookies) as session:
        got = session.cookie_jar.filter_cookies()
        assert {k: m.value for k, m in got.items()} == {"c1": "cookie1", "c2": "cookie2"}


async def test_each_session_has_a_jar_of_its_own():
    async with ClientSession(cookies={"a": "1"}) as one, ClientSession() as two:
        assert isinstance(one.cookie_jar, CookieJar)
        assert one.cookie_jar is not two.cookie_jar
        assert len(two.cookie_jar) == 0


async def test_session_uses_the_jar_it_is_given_and_seeds_it():
    jar = CookieJar(name="test-session-given")
    async with ClientSession(cookie_jar=jar, cookies={"seed": "1"}) as session:
        assert session.cookie_jar is jar
    assert len(CookieJar(name="test-session-given")) == 1  # still readable after close


async def test_dummy_jar_requests_carry_no_jar():
    assert request_jar(DummyCookieJar())[:2] == (b"", None)
    token, store, _ = request_jar(CookieJar())
    assert token == b"" and store is not None  # embedded: the store itself


class ForeignJar(AbstractCookieJar):
    unsafe = False
    quote_cookie = True
    cookies = MappingProxyType({})
    host_only_cookies = frozenset()

    def clear(self, predicate=None): ...
    def clear_domain(self, domain): ...
    def update_cookies(self, cookies, response_url=None): ...
    def filter_cookies(self, request_url): return SimpleCookie()
    def __iter__(self): return iter(())
    def __len__(self): return 0


@pytest.mark.parametrize("make", [ForeignJar, aiohttp.CookieJar])
async def test_a_jar_the_broker_cannot_consult_is_a_type_error(make):
    with pytest.raises(TypeError, match="CookieJar\\(...\\).*DummyCookieJar\\(\\)"):
        ClientSession(cookie_jar=make())


async def test_a_named_jar_used_embedded_cannot_move_to_a_broker():
    jar = CookieJar(name="stays-embedded")
    len(jar)  # first use, no HTTP_BROKER: embedded, and a named jar is the group's there
    with pytest.raises(RuntimeError, match="embedded engine.*the broker at /nowhere"):
        ClientSession(broker="/nowhere", cookie_jar=jar)
    async with ClientSession(cookie_jar=jar):  # embedded, like the jar
        pass


async def test_a_jar_pinned_to_a_broker_cannot_be_used_embedded():
    jar = CookieJar()
    ClientSession(broker="/somewhere", cookie_jar=jar)  # pins it; nothing connects
    with pytest.raises(RuntimeError, match="the broker at /somewhere.*embedded engine"):
        ClientSession(cookie_jar=jar)
    assert "broker /somewhere" in repr(jar)


@pytest.mark.parametrize(
    ("jar", "cookies", "url", "expected"),
    [
        (
            CookieJar(quote_cookie=False), {"name": "val=foobar"}, "http://h/",
            [("name", "val=foobar")],
        ),
        (CookieJar(), {"name": "val=foobar"}, "http://h/", [("name", '"val=foobar"')]),
        (CookieJar(unsafe=True), {"adhoc": "value"}, "http://127.0.0.1/", [("adhoc", "value")]),
        (DummyCookieJar(), {"a": "1"}, "http://h/", [("a", "1")]),
        (CookieJar(), SimpleCookie("s=1; Secure"), "http://h/", []),
        (CookieJar(), SimpleCookie("s=1; Secure"), "https://h/", [("s", "1")]),
        (
            CookieJar(treat_as_secure_origin="http://h"), SimpleCookie("s=1; Secure"),
            "http://h/", [("s", "1")],
        ),
        (CookieJar(), {"big": "x" * 5000}, "http://h/", [("big", "x" * 5000)]),
    ],
)
def test_request_cookies_as_aiohttps_temporary_jar(jar, cookies, url, expected):
    assert request_cookies(cookies, jar, URL(url)) == expected
    assert len(jar) == 0  # never stored


# -- binding: the backend opens once, at the first use, and is closed with the jar ----------


class RecordingBackend:
    """A backend that records what is asked of it (the broker's stands in the same place)."""

    def __init__(self, log: list, address, spec) -> None:
        self.log, self.address, self.spec = log, address, spec
        self.token = b"t" * 16
        log.append(("open", address, spec.name))

    def update(self, cookies, url): self.log.append(("update", [n for n, _ in cookies], url))
    def filter(self, url): return SimpleCookie()
    def count(self): return 0
    def dump(self): return {}
    def load(self, data): ...
    def delete(self, keys): self.log.append(("delete", keys))
    def close(self): self.log.append(("close", self.address))


@pytest.fixture
def opened(monkeypatch) -> list:
    log: list = []
    monkeypatch.setattr(
        "worker_client.cookies._open_backend",
        lambda address, trusted, spec: RecordingBackend(log, address, spec),
    )
    return log


async def test_the_backend_opens_once_at_first_use_where_the_session_says(opened):
    jar = CookieJar(name="bound")
    ClientSession(broker="/a/broker", cookie_jar=jar)
    assert opened == []  # pinned, not opened: nothing happens until a call needs it
    for _ in range(3):
        len(jar)
        assert request_jar(jar) == (b"t" * 16, None, jar._spec)
    jar.update_cookies({"a": "1"})
    assert opened == [("open", "/a/broker", "bound"), ("update", ["a"], URL())]


def test_a_jar_used_before_any_session_binds_by_discovery(opened, monkeypatch):
    monkeypatch.setenv("HTTP_BROKER", "unix:/found/by/env")
    jar = CookieJar(name="group")
    jar.clear()
    assert opened == [("open", "/found/by/env", "group"), ("delete", None)]
    with pytest.raises(RuntimeError, match="broker at /found/by/env"):
        ClientSession(broker="/another", cookie_jar=jar)


def test_an_unnamed_jar_bound_by_discovery_moves_to_its_first_session(opened, monkeypatch):
    # jar = CookieJar(); jar.update_cookies(...); ClientSession(broker=..., cookie_jar=jar)
    monkeypatch.setenv("HTTP_BROKER", "unix:/found/by/env")
    jar = CookieJar()
    jar.clear()
    ClientSession(broker="/another", cookie_jar=jar)
    assert opened[2:] == [("open", "/another", None), ("close", "/found/by/env")]
    assert "broker /another" in repr(jar)
    with pytest.raises(RuntimeError, match="broker at /another"):
        ClientSession(cookie_jar=jar)  # moved once, by a session: bound for good


def test_a_jar_a_session_uses_where_discovery_bound_it_stays_there(opened, monkeypatch):
    # Once a session uses the jar, another session elsewhere cannot take it away from
    # under the first one (whose requests name the jar where it is).
    monkeypatch.setenv("HTTP_BROKER", "unix:/found/by/env")
    jar = CookieJar()
    len(jar)
    ClientSession(cookie_jar=jar)  # discovery: the same broker
    with pytest.raises(RuntimeError, match="broker at /found/by/env"):
        ClientSession(broker="/another", cookie_jar=jar)
    assert [entry[0] for entry in opened] == ["open"]


def test_broker_given_to_the_jar_binds_it_there(opened):
    jar = CookieJar(broker="unix:/named/here")
    len(jar)
    assert opened == [("open", "/named/here", None)]
    with pytest.raises(RuntimeError, match="broker at /named/here.*embedded engine"):
        ClientSession(cookie_jar=jar)


def test_the_backend_is_closed_when_the_jar_is_collected(opened):
    import gc

    jar = CookieJar()
    len(jar)
    del jar
    gc.collect()
    assert opened[-1] == ("close", None)


def test_a_forked_child_opens_its_own_and_leaves_the_parents_open(opened):
    jar = CookieJar()
    len(jar)

    def child() -> list:
        nonlocal jar
        len(jar)
        del jar
        import gc

        gc.collect()
        return opened

    child_log = in_a_forked_child(child)
    # one close in the child: its own backend's, not the parent's
    assert child_log == [["open", None, None], ["open", None, None], ["close", None]]
    assert opened == [("open", None, None)]
