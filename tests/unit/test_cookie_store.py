"""The cookie store: aiohttp 3.14's tests/test_cookiejar.py, behaviour for behaviour, with
the clock injected; plus the caps, and aiohttp's own jar as the reference."""

from __future__ import annotations

import datetime
import json
from http.cookies import BaseCookie, Morsel, SimpleCookie

import pytest
from yarl import URL

from broker.cookie_store import (
    MAX_COOKIES,
    MAX_COOKIES_PER_DOMAIN,
    CookieStore,
    is_domain_match,
    parse_cookie_date,
)
from tests.unit import cookie_cases as cases
from tests.unit.cookie_cases import by_name, play, sent, sent_by_url, to_receive, to_send


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ts(*args: int) -> float:
    return datetime.datetime(*args, tzinfo=datetime.timezone.utc).timestamp()


# --- the rules as functions ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("Tue, 1 Jan 70 00:00:00 GMT", None),  # the epoch itself: 0, see _deadline
        ("Tue, 1 Jan 10 00:00:00 GMT", ts(2010, 1, 1)),
        ("1 Jan 1971 00:00:00 GMT", ts(1971, 1, 1)),
        ("Tue, 1 Jan 1971 00:00:00", ts(1971, 1, 1)),
        ("Wed, 09 Jun 2021 10:18:14 GMT", ts(2021, 6, 9, 10, 18, 14)),
        ("Wed Jun  9 10:18:14 2021", ts(2021, 6, 9, 10, 18, 14)),
        ("Tue, 1 Jan 00:00:00 GMT", None),  # no year
        ("Tue, 1 1970 00:00:00 GMT", None),  # no month
        ("Tue, Jan 1970 00:00:00 GMT", None),  # no day
        ("Tue, 1 Jan 1970 GMT", None),  # no time
        ("Tue, 0 Jan 1970 00:00:00 GMT", None),
        ("Tue, 1 Jan 1500 00:00:00 GMT", None),
        ("Tue, 1 Jan 1970 77:88:99 GMT", None),
    ],
)
def test_date_parsing(text, expected):
    got = parse_cookie_date(text)
    assert (got or None) == expected


def test_two_digit_year_70_is_1970():
    assert parse_cookie_date("Tue, 1 Jan 70 00:00:01 GMT") == 1


@pytest.mark.parametrize(
    ("domain", "host", "matches"),
    [
        ("test.com", "test.com", True),
        ("test.com", "sub.test.com", True),
        ("test.com", "", False),
        ("test.com", "test.org", False),
        ("diff-test.com", "test.com", False),
        ("test.com", "diff-test.com", False),
        ("test.com", "127.0.0.1", False),
        ("0.0.1", "127.0.0.1", False),
    ],
)
def test_domain_matching(domain, host, matches):
    assert is_domain_match(domain, host) is matches


# --- storing ---


def test_stores_every_cookie_given():
    store = CookieStore()
    given = to_send()
    store.update_cookies(given)
    assert {m.key: (m.value, m["domain"]) for m in store} == {
        m.key: (m.value, m["domain"].lstrip(".")) for m in given.values()
    }
    assert all(m["path"].startswith("/") for m in store)  # the default path was set
    assert "Path" not in given["shared-cookie"].output()  # on a copy
    assert len(store) == len(given)


def test_expired_cookie_is_not_stored():
    store = CookieStore()
    store.update_cookies(to_send(year=1980))
    assert "expires-cookie" not in by_name(store)
    assert len(store) == len(to_send()) - 1


@pytest.mark.parametrize("cookies", cases.LOOSE_COOKIES)
def test_loose_cookie_types_are_accepted(cookies):
    CookieStore().update_cookies(cookies)


def test_morsels_given_are_copied():
    cookie = SimpleCookie("a=b")
    store = CookieStore()
    store.update_cookies(cookie, URL("http://example.com/"))
    cookie["a"]["path"] = "/elsewhere"
    assert next(iter(store))["path"] == "/"


@pytest.mark.parametrize(("url", "received"), cases.RECEIVE_CASES)
def test_a_host_stores_only_cookies_for_its_domains(url, received):
    store = CookieStore()
    store.update_cookies(to_receive(), URL(url))
    assert set(by_name(store)) == received


def test_default_path_and_bad_path():
    store = CookieStore()
    store.update_cookies(to_receive(), URL("http://pathtest.com/"))
    got = by_name(store)
    assert got["no-path-cookie"]["path"] == "/"
    assert got["path-cookie"]["path"] == "/somepath"
    assert got["wrong-path-cookie"]["path"] == "/"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("http://h.com/", "/"),
        ("http://h.com/a", "/"),
        ("http://h.com/a/", "/a"),
        ("http://h.com/a/b", "/a"),
        ("http://h.com/a/b/c?q=1", "/a/b"),
    ],
)
def test_default_path_is_the_url_path_to_its_last_slash(url, path):
    store = CookieStore()
    store.update_from_headers(["c=1"], URL(url))
    assert next(iter(store))["path"] == path


def test_domain_cookie_replaces_host_only_cookie_of_same_identity():
    store = CookieStore()
    store.update_from_headers(["sid=host"], URL("http://example.com/"))
    store.update_from_headers(["sid=domain; Domain=example.com"], URL("http://example.com/"))
    assert len(store) == 1
    assert store.filter_cookies(URL("http://sub.example.com/"))["sid"].value == "domain"


@pytest.mark.parametrize(("options", "given", "count", "sends"), cases.SCENARIOS)
def test_aiohttp_scenario(options, given, count, sends):
    store = CookieStore(**options)
    play(store, given, store.update_from_headers)
    assert (len(store), sent_by_url(store, sends)) == (count, sends)


# --- filtering ---


@pytest.mark.parametrize(("url", "expected"), cases.SEND_CASES)
def test_filter_by_domain_path_and_secure(url, expected):
    store = CookieStore()
    store.update_cookies(to_send())
    assert sent(store, url) == expected


def test_ip_host_gets_only_shared_cookies():
    store = CookieStore()
    store.update_cookies(to_send())
    out = store.filter_cookies(URL("http://1.2.3.4/")).output(header="Cookie:")
    assert out == "Cookie: shared-cookie=first"


def test_unparseable_max_age_and_expires_are_blanked_and_kept():
    store = CookieStore()
    store.update_cookies(to_send())
    got = store.filter_cookies(URL("http://invalid-values.com/"))
    assert set(got) >= {"invalid-max-age-cookie", "invalid-expires-cookie"}
    kept = by_name(store)
    assert kept["invalid-max-age-cookie"]["max-age"] == ""
    assert kept["invalid-expires-cookie"]["expires"] == ""


@pytest.mark.parametrize(("cookies", "expected", "quote"), cases.QUOTE_CASES)
def test_quoting_follows_quote_cookie(cookies, expected, quote):
    store = CookieStore(unsafe=True, quote_cookie=quote)
    store.update_cookies(SimpleCookie(cookies))
    assert store.filter_cookies(URL("http://127.0.0.1/")).output(header="Cookie:") == expected


def test_same_name_on_two_domains_are_two_cookies():
    store = CookieStore()
    store.update_from_headers(
        [
            "session-id=123456; Domain=.example.com; Path=/",
            "session-id=789012; Domain=.www.example.com; Path=/",
            "user-pref=light; Domain=.example.com",
            "user-pref=dark; Domain=sub.example.com",  # not a domain of www.example.com
        ],
        URL("http://www.example.com/"),
    )
    assert len(store) == 3
    assert {c["domain"] for c in store if c.key == "session-id"} == {
        "example.com",
        "www.example.com",
    }
    assert store.filter_cookies(URL("http://www.example.com/"))["session-id"].value == "789012"


def test_filter_does_not_grow_the_store():
    store = CookieStore()
    store.update_cookies({"test_cookie": "value"}, URL("http://example.com/"))
    before = store.dump()
    for path in ("/", "/api", "/api/v1/users/123", "/static/css/style.css"):
        assert set(store.filter_cookies(URL("http://example.com" + path))) == {"test_cookie"}
    assert store.dump() == before


def test_filter_sends_name_and_value_only():
    store = CookieStore()
    store.update_from_headers(["a=1; Path=/; HttpOnly; Max-Age=60"], URL("http://h.com/"))
    morsel = store.filter_cookies(URL("http://h.com/"))["a"]
    assert morsel.OutputString() == "a=1"


@pytest.mark.parametrize("host", ["http://example.com/", "http://localhost/", "http://10.0.0.1/"])
def test_cookie_stored_without_host_goes_to_every_host(host):
    store = CookieStore(unsafe=True)
    store.update_cookies(SimpleCookie("universal=everywhere; Path=/"), URL())
    assert store.filter_cookies(URL(host))["universal"].value == "everywhere"


# --- secure, IP hosts ---


@pytest.mark.parametrize("origins", cases.SECURE_ORIGIN_FORMS)
def test_treat_as_secure_origin_forms(origins):
    store = CookieStore(unsafe=True, treat_as_secure_origin=origins)
    assert store.treat_as_secure_origin == frozenset({URL("http://127.0.0.1")})


def test_secure_cookie_sent_over_http_to_an_origin_treated_as_secure():
    endpoint = URL("http://127.0.0.1/")
    store = CookieStore(unsafe=True, treat_as_secure_origin=[endpoint])
    store.update_cookies(SimpleCookie("k=v; HttpOnly; Path=/; Secure"), endpoint)
    assert len(store) == 1
    assert set(store.filter_cookies(endpoint)) == {"k"}
    assert set(store.filter_cookies(URL("http://127.0.0.1:8080/"))) == set()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h.com/", set()),
        ("https://h.com/", {"s"}),
        ("wss://h.com/", {"s"}),
        ("ws://h.com/", set()),
    ],
)
def test_secure_cookie_only_over_secure_schemes(url, expected):
    store = CookieStore()
    store.update_from_headers(["s=1; Secure; Path=/"], URL("https://h.com/"))
    assert sent(store, url) == expected


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "10.1.2.3"])
@pytest.mark.parametrize("unsafe", [False, True])
def test_ip_hosts_refused_unless_unsafe(host, unsafe):
    store = CookieStore(unsafe=unsafe)
    url = URL(f"http://{host}/")
    store.update_from_headers(["a=1"], url)
    store.update_cookies({"b": "2"}, url)
    assert len(store) == (2 if unsafe else 0)
    assert sent(store, f"http://{host}/") == ({"a", "b"} if unsafe else set())


# --- attributes kept ---


def test_attributes_kept_on_the_stored_morsel():
    store = CookieStore()
    store.update_from_headers(
        ["a=1; Secure; HttpOnly; SameSite=Strict; Path=/app; Max-Age=3600"],
        URL("https://secure.example.com/app/page"),
    )
    (morsel,) = store
    assert (morsel["secure"], morsel["httponly"], morsel["samesite"]) == (True, True, "Strict")
    assert morsel["path"] == "/app" and morsel["domain"] == "secure.example.com"


def test_partitioned_kept_where_morsel_knows_it():
    """Python 3.14's Morsel has Partitioned: kept. Before it, dropped (as aiohttp does),
    and the cookie with its other attributes still stored."""
    store = CookieStore()
    store.update_from_headers(["a=1; Partitioned; Secure"], URL("https://h.com/"))
    (morsel,) = store
    assert morsel.value == "1" and morsel["secure"] is True
    if "partitioned" in Morsel._reserved:  # type: ignore[attr-defined]
        assert morsel["partitioned"] is True
    else:
        assert "partitioned" not in morsel


@pytest.mark.parametrize(("headers", "names"), cases.HEADER_CASES)
def test_update_from_headers_parses_like_aiohttp(headers, names):
    store = CookieStore()
    store.update_from_headers(headers, URL("http://example.com/"))
    assert sent(store, "http://example.com/") == names


# --- time: Expires and Max-Age ---


def test_expires_with_the_clock():
    clock = Clock(ts(1975, 1, 1))
    store = CookieStore(clock=clock)
    store.update_cookies(to_send(year=1980))
    assert sent(store, "http://expirestest.com/") == {"shared-cookie", "expires-cookie"}
    clock.now = ts(2030, 1, 1)
    assert sent(store, "http://expirestest.com/") == {"shared-cookie"}
    assert "expires-cookie" not in by_name(store)


def test_max_age_with_the_clock():
    clock = Clock(1000)
    store = CookieStore(clock=clock)
    store.update_cookies(to_send())
    clock.now = 1059.9
    assert sent(store, "http://maxagetest.com/") == {"shared-cookie", "max-age-cookie"}
    clock.now = 1060
    assert sent(store, "http://maxagetest.com/") == {"shared-cookie"}


@pytest.mark.parametrize(
    ("attrs", "alive_at_100", "alive_at_5000"),
    [
        ("Max-Age=200; Expires=Tue, 1 Jan 1980 12:00:00 GMT", True, False),  # Max-Age wins
        ("Max-Age=1; Expires=Tue, 1 Jan 2999 12:00:00 GMT", False, False),
        ("Max-Age=0", False, False),
        ("Max-Age=-5", False, False),
        ("Max-Age=99999999999999999999999", True, True),  # capped, no overflow
        ("Expires=Tue, 1 Jan 1980 12:00:00 GMT", False, False),
        ("Expires=Tue, 1 Jan 2999 12:00:00 GMT", True, True),
        ("", True, True),
    ],
)
def test_expiry_attributes(attrs, alive_at_100, alive_at_5000):
    clock = Clock(ts(2000, 1, 1))
    store = CookieStore(clock=clock)
    store.update_from_headers([f"c=1; {attrs}"], URL("http://h.com/"))
    clock.now += 100
    assert (sent(store, "http://h.com/") == {"c"}) is alive_at_100
    clock.now += 4900
    assert (sent(store, "http://h.com/") == {"c"}) is alive_at_5000


@pytest.mark.parametrize("delete", ["c=; Max-Age=0", "c=; Expires=Thu, 01 Jan 1971 00:00:00 GMT"])
def test_a_past_deadline_deletes_a_stored_cookie(delete):
    clock = Clock()
    store = CookieStore(clock=clock)
    store.update_from_headers(["c=1; Max-Age=600"], URL("http://h.com/"))
    store.update_from_headers([delete], URL("http://h.com/"))
    assert len(store) == 0 and sent(store, "http://h.com/") == set()


def test_replacement_takes_the_new_deadline():
    """Each replacement's Expires counts, earlier or later, and none means session."""
    clock = Clock(ts(1990, 1, 1, 10))
    store = CookieStore(clock=clock)
    for hour in (12, 11, 13, 14):
        store.update_cookies(SimpleCookie(f"foo=bar; Expires=Tue, 1 Jan 1990 {hour}:00:00 GMT"))
        assert sent(store, "http://h.com/") == {"foo"}
    clock.now = ts(1990, 1, 1, 13)
    assert sent(store, "http://h.com/") == {"foo"}
    clock.now = ts(1990, 1, 1, 14)
    assert sent(store, "http://h.com/") == set()
    store.update_cookies(SimpleCookie("foo=bar; Max-Age=10"))
    store.update_cookies(SimpleCookie("foo=bar"))
    clock.now += 3600
    assert sent(store, "http://h.com/") == {"foo"}


def test_repeated_deadlines_do_not_grow_without_bound():
    clock = Clock(ts(1990, 1, 1, 9))
    store = CookieStore(clock=clock)
    start = ts(1990, 1, 1, 10)
    for i in range(1000):
        when = datetime.datetime.fromtimestamp(start + i, datetime.timezone.utc)
        store.update_cookies(SimpleCookie(f"foo=bar; Expires={when:%a, %d %b %Y %H:%M:%S GMT}"))
    assert len(store._expire_heap) <= 201  # the heap is compacted past 2x the live deadlines
    clock.now = start + 998
    assert sent(store, "http://h.com/") == {"foo"}
    clock.now = start + 999
    assert sent(store, "http://h.com/") == set()


def test_len_and_iteration_drop_expired():
    clock = Clock()
    store = CookieStore(clock=clock)
    store.update_from_headers(["a=1; Max-Age=10", "b=2"], URL("http://h.com/"))
    clock.now += 10
    assert [m.key for m in store] == ["b"]
    assert len(store) == 1


# --- clear ---


def test_clear_all():
    store = CookieStore()
    store.update_cookies(to_send())
    store.clear()
    assert len(store) == 0 and list(store) == [] and store.dump() == {}
    assert sent(store, "http://example.com/") == set()


def test_clear_with_predicate_also_drops_expired():
    clock = Clock(ts(1980, 1, 1))
    store = CookieStore(clock=clock)
    store.update_cookies(SimpleCookie("foo=bar; Expires=Tue, 1 Jan 1990 12:00:00 GMT"))
    store.update_cookies(SimpleCookie("keep=1; drop=2"))
    store.clear(lambda m: m.key == "drop")
    assert {m.key for m in store} == {"foo", "keep"}
    clock.now = ts(1991, 1, 1)
    store.clear(lambda m: False)
    assert {m.key for m in store} == {"keep"}


def test_clear_domain_takes_subdomains_too():
    store = CookieStore()
    store.update_cookies(SimpleCookie(cases.CLEAR_DOMAIN_COOKIES))
    store.clear_domain("example.com")
    assert {(m.key, m.value) for m in store} == {("foo", "bar"), ("other", "value")}


# --- dump and load ---


def roundtrip(store: CookieStore, **kwargs) -> CookieStore:
    loaded = CookieStore(**kwargs)
    loaded.load(json.loads(json.dumps(store.dump())))
    return loaded


def test_dump_load_roundtrip():
    store = CookieStore()
    store.update_cookies(to_receive())
    assert len(store) == 9
    assert by_name(roundtrip(store)) == by_name(store)


def test_load_keeps_host_only_scope():
    issuer, subdomain = URL("https://auth.example.com/login"), URL("https://sub.auth.example.com/")
    store = CookieStore()
    store.update_cookies({"sid": "hostonly"}, response_url=issuer)
    loaded = roundtrip(store)
    assert "sid" not in loaded.filter_cookies(subdomain)
    assert "sid" in loaded.filter_cookies(issuer)


def test_load_keeps_domain_cookie_for_subdomains():
    store = CookieStore()
    store.update_from_headers(["sid=d; Domain=example.com"], URL("https://example.com/"))
    assert "sid" in roundtrip(store).filter_cookies(URL("https://sub.example.com/"))


def test_load_keeps_the_absolute_deadline_and_flags():
    clock = Clock()
    store = CookieStore(clock=clock)
    store.update_from_headers(
        ["sid=x; Max-Age=3600; Domain=example.com; Secure; HttpOnly; SameSite=Lax"],
        URL("https://example.com/"),
    )
    clock.now += 3000
    loaded = roundtrip(store, clock=clock)
    (morsel,) = loaded
    assert (morsel["secure"], morsel["httponly"], morsel["samesite"]) == (True, True, "Lax")
    assert sent(loaded, "https://example.com/") == {"sid"}
    clock.now += 600  # 3600 s after it was set, not after it was loaded
    assert sent(loaded, "https://example.com/") == set()


def test_load_drops_cookies_past_their_deadline():
    store = CookieStore()
    store.update_from_headers(
        ["sid=x; Expires=Tue, 1 Jan 2999 12:00:00 GMT"], URL("https://e.com/")
    )
    data = store.dump()
    data["e.com|"]["sid"]["expires_timestamp"] = 0.0
    loaded = CookieStore()
    loaded.load(data)
    assert len(loaded) == 0


def test_load_old_format_without_new_keys():
    clock = Clock()
    loaded = CookieStore(clock=clock)
    loaded.load(
        {
            "example.com|/": {
                "sid": {
                    "key": "sid",
                    "value": "x",
                    "coded_value": "x",
                    "domain": "example.com",
                    "max-age": "3600",
                }
            }
        }
    )
    assert sent(loaded, "https://example.com/") == {"sid"}
    clock.now += 3600  # max-age counts from load time
    assert sent(loaded, "https://example.com/") == set()


def test_loaded_values_are_only_data():
    value = "__import__('os').system('echo PWNED')"
    loaded = CookieStore()
    loaded.load(
        {"evil.com|/": {"session": {"key": "session", "value": value, "coded_value": value}}}
    )
    assert [m.value for m in loaded] == [value]


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"nodomainsep": {}},
        {"e.com|": []},
        {"e.com|": {"a": "x"}},
        {"e.com|": {"a": {"key": "a", "value": 1, "coded_value": "1"}}},
        {"e.com|": {"a": {"key": "a", "value": "1", "coded_value": "1", "path": 3}}},
        {"e.com|": {"a": {"key": "a", "value": "1", "coded_value": "1", "expires_timestamp": "x"}}},
        {
            "e.com|": {
                "a": {
                    "key": "a",
                    "value": "1",
                    "coded_value": "1",
                    "expires_timestamp": float("nan"),
                }
            }
        },
        {"e.com|": {"a": {"key": "a b", "value": "1", "coded_value": "1"}}},
    ],
)
def test_bad_data_raises_and_leaves_the_store_as_it_was(data):
    store = CookieStore()
    store.update_cookies({"kept": "1"}, URL("http://h.com/"))
    with pytest.raises(ValueError, match="cookie"):
        store.load(data)
    assert sent(store, "http://h.com/") == {"kept"}


async def test_file_from_aiohttp_loads_here_and_back(tmp_path):
    from aiohttp import CookieJar

    jar = CookieJar()
    url = URL("https://auth.example.com/a/b")
    headers = ["host=1; Path=/", "dom=2; Domain=example.com; Max-Age=3600; Secure; HttpOnly"]
    jar.update_cookies_from_headers(headers, url)
    jar.save(tmp_path / "a.json")

    store = CookieStore()
    store.load(json.loads((tmp_path / "a.json").read_text()))
    for probe in (
        "https://auth.example.com/a/",
        "https://x.example.com/",
        "http://auth.example.com/",
    ):
        assert sent(store, probe) == set(jar.filter_cookies(URL(probe))), probe

    (tmp_path / "b.json").write_text(json.dumps(store.dump()))
    back = CookieJar()
    back.load(tmp_path / "b.json")
    assert back.host_only_cookies == jar.host_only_cookies
    assert back._expirations == jar._expirations


# --- the caps ---


def test_100000_cookies_from_one_server_stay_capped():
    store = CookieStore()
    url = URL("http://evil.example/")
    for response in range(2000):
        store.update_from_headers([f"c{response}_{i}=v" for i in range(50)], url)
    assert len(store) <= MAX_COOKIES_PER_DOMAIN
    assert len(store.dump()["evil.example|"]) == len(store)
    newest = store.filter_cookies(url)
    assert "c1999_49" in newest and "c0_0" not in newest


def test_cookies_from_many_domains_stay_capped_in_total():
    store = CookieStore()
    for response in range(200):
        host = f"d{response}.evil.example"
        store.update_from_headers(
            [f"c{i}=v; Domain={host}" for i in range(50)], URL(f"http://{host}/")
        )
    assert len(store) <= MAX_COOKIES
    assert sent(store, "http://d199.evil.example/") == {f"c{i}" for i in range(50)}
    assert sent(store, "http://d0.evil.example/") == set()


def test_at_most_50_cookies_per_response():
    store = CookieStore()
    store.update_from_headers([f"c{i}=v" for i in range(60)], URL("http://h.com/"))
    assert len(store) == 50


@pytest.mark.parametrize("size", [4095, 4096, 4097, 100_000])
def test_cookie_size_cap(size):
    store = CookieStore()
    value = "v" * (size - 1)
    store.update_from_headers([f"c={value}"], URL("http://h.com/"))
    store.update_cookies({"d": value}, URL("http://h.com/"))
    assert len(store) == (2 if size <= 4096 else 0)


def test_oversized_attribute_is_ignored():
    store = CookieStore()
    store.update_from_headers([f"c=1; Path=/{'p' * 2000}; SameSite=Lax"], URL("http://h.com/a/b"))
    (morsel,) = store
    assert (morsel["path"], morsel["samesite"]) == ("/a", "Lax")


def test_eviction_takes_expired_cookies_first_then_least_recently_used():
    clock = Clock()
    store = CookieStore(clock=clock, max_cookies_per_domain=6)  # pruned to 5
    url = URL("http://h.com/")
    store.update_from_headers(["old=1", "short=1; Max-Age=5", "b=1", "c=1", "d=1", "e=1"], url)
    store.filter_cookies(URL("http://h.com/"))  # all used, in the order they were set
    store.update_cookies({"old": "again"}, url)  # now the most recently used
    clock.now += 5  # "short" has expired
    store.update_from_headers(["f=1"], url)  # expiry made room: nothing else goes
    assert {m.key for m in store} == {"old", "b", "c", "d", "e", "f"}
    store.update_from_headers(["g=1"], url)  # full: the least recently used goes, to 5
    assert {m.key for m in store} == {"old", "d", "e", "f", "g"}


def test_sending_a_cookie_keeps_it():
    store = CookieStore(max_cookies_per_domain=3)  # a full domain loses one at a time
    url = URL("http://h.com/")
    store.update_from_headers(["a=1; Path=/x", "b=1", "c=1"], URL("http://h.com/x/"))
    store.filter_cookies(URL("http://h.com/x/"))  # a, b and c used: b, c, a (by path)
    store.filter_cookies(url)  # b and c used again: a is the least recent
    store.update_from_headers(["d=1"], url)
    assert {m.key for m in store} == {"b", "c", "d"}


def test_secure_cookies_are_evicted_only_for_secure_cookies():
    store = CookieStore(max_cookies_per_domain=3)
    url = URL("https://h.com/")
    store.update_from_headers(["s1=1; Secure", "s2=1; Secure", "s3=1; Secure"], url)
    store.update_from_headers(["plain=1"], url)
    assert {m.key for m in store} == {"s1", "s2", "s3"}
    store.update_from_headers(["s4=1; Secure"], url)
    assert {m.key for m in store} == {"s2", "s3", "s4"}


def test_non_secure_cookies_go_before_secure_ones():
    store = CookieStore(max_cookies_per_domain=3)
    url = URL("https://h.com/")
    store.update_from_headers(["s1=1; Secure", "p1=1", "s2=1; Secure"], url)
    store.update_from_headers(["new=1"], url)
    assert {m.key for m in store} == {"s1", "s2", "new"}


def test_a_deleting_cookie_never_evicts():
    store = CookieStore(max_cookies_per_domain=2)
    url = URL("http://h.com/")
    store.update_from_headers(["a=1", "b=1", "c=; Max-Age=0"], url)
    assert {m.key for m in store} == {"a", "b"}


def test_replacing_a_cookie_in_a_full_domain_evicts_nothing():
    store = CookieStore(max_cookies_per_domain=2)
    url = URL("http://h.com/")
    store.update_from_headers(["a=1", "b=1", "a=2"], url)
    assert {(m.key, m.value) for m in store} == {("a", "2"), ("b", "1")}


def test_total_cap_evicts_least_recently_used_of_any_domain():
    store = CookieStore(max_cookies=11)  # pruned to 10
    for i in range(11):
        store.update_from_headers(["c=1"], URL(f"http://h{i}.com/"))
    store.filter_cookies(URL("http://h0.com/"))
    store.update_from_headers(["c=1"], URL("http://new.com/"))
    hosts = {m["domain"] for m in store}
    assert len(hosts) == 10 and "h0.com" in hosts and "new.com" in hosts
    assert "h1.com" not in hosts and "h2.com" not in hosts


def test_request_gets_at_most_150_cookies_most_specific_first():
    store = CookieStore()
    url = URL("http://h.com/")
    store.update_cookies({f"wide{i}": "v" for i in range(80)}, URL("http://h.com/"))
    store.update_cookies({f"deep{i}": "v" for i in range(80)}, URL("http://h.com/a/"))
    assert len(store) == 160
    got = store.filter_cookies(URL("http://h.com/a/b"))
    assert len(got) == 150
    assert {f"deep{i}" for i in range(80)} <= set(got)
    assert len(store.filter_cookies(url)) == 80


def test_cookie_header_at_most_8190_bytes():
    store = CookieStore()
    store.update_cookies({f"c{i}": "v" * 1000 for i in range(20)}, URL("http://h.com/"))
    header = store.filter_cookies(URL("http://h.com/")).output(header="Cookie:", sep="; ")
    one_line = "Cookie: " + "; ".join(
        m.OutputString() for m in store.filter_cookies(URL("http://h.com/")).values()
    )
    assert header and len(one_line.encode()) <= 8190
    assert len(store.filter_cookies(URL("http://h.com/"))) == 8


def test_caps_must_be_positive():
    with pytest.raises(ValueError):
        CookieStore(max_cookies=0)


def test_repr():
    store = CookieStore()
    store.update_from_headers(["a=1", "b=2"], URL("http://h.com/"))
    assert repr(store) == "<CookieStore 2 cookies, 1 domains>"


# --- aiohttp's jar as the reference ---

SCENARIOS = [
    ("http://example.com/a/b", ["a=1", "b=2; Path=/", "c=3; Domain=example.com; Path=/a"]),
    ("http://www.example.com/", ["d=1; Domain=.example.com", "e=2; Domain=other.com", "f=3"]),
    ("https://example.com/x/", ["s=1; Secure", "h=2; HttpOnly; SameSite=None; Secure"]),
    ("http://example.com/", ['q="quoted value"', "u=a/b", "m=1; Max-Age=0", "n=2; Max-Age=x"]),
    ("http://example.com/p/", ["p=1; Path=/p/", "p=2; Path=/p", "p=3; Path=/"]),
    ("http://127.0.0.1/", ["ip=1"]),
    ("http://example.com./", ["t=1; Domain=example.com."]),
]
PROBES = [
    "http://example.com/",
    "http://example.com/a/",
    "http://example.com/a/b/c",
    "http://www.example.com/",
    "https://example.com/x/y",
    "http://example.com/p",
    "http://example.com/p/",
    "http://example.com/p/q",
    "http://sub.www.example.com/",
    "http://127.0.0.1/",
    "http://other.com/",
]


@pytest.mark.parametrize("unsafe", [False, True])
@pytest.mark.parametrize("quote", [False, True])
async def test_same_choices_as_aiohttp(unsafe, quote):
    from aiohttp import CookieJar

    jar = CookieJar(unsafe=unsafe, quote_cookie=quote)
    store = CookieStore(unsafe=unsafe, quote_cookie=quote)
    for url, headers in SCENARIOS:
        jar.update_cookies_from_headers(headers, URL(url))
        store.update_from_headers(headers, URL(url))
    assert len(store) == len(jar)
    for probe in PROBES:
        ours = store.filter_cookies(URL(probe)).output(header="Cookie:")
        assert ours == jar.filter_cookies(URL(probe)).output(header="Cookie:"), probe
    theirs = {(m.key, m["domain"], m["path"]): dict(m) for m in jar}
    assert {(m.key, m["domain"], m["path"]): dict(m) for m in store} == theirs


def test_filter_cookies_result_is_a_base_cookie():
    store = CookieStore()
    store.update_cookies({"a": "1"}, URL("http://h.com/"))
    assert isinstance(store.filter_cookies(URL("http://h.com/")), BaseCookie)


def test_bad_cookie_name_raises_and_stores_nothing():
    from http.cookies import CookieError

    store = CookieStore()
    store.update_cookies({"kept": "1"}, URL("http://h.com/"))
    with pytest.raises(CookieError):
        store.update_cookies({"ok": "2", "bad name": "3"}, URL("http://h.com/"))
    assert sent(store, "http://h.com/") == {"kept"}


def test_changing_a_sent_morsel_does_not_change_the_stored_one():
    store = CookieStore()
    store.update_cookies({"a": "1"}, URL("http://h.com/"))
    store.filter_cookies(URL("http://h.com/"))["a"].set("a", "changed", "changed")
    (morsel,) = store
    assert morsel.value == "1"  # (the sent Morsels are cached, as in aiohttp: read only)


def test_total_cap_takes_expired_cookies_first():
    clock = Clock()
    store = CookieStore(clock=clock, max_cookies=11)
    for i in range(1, 11):
        store.update_from_headers(["c=1"], URL(f"http://h{i}.com/"))
    store.update_from_headers(["short=1; Max-Age=5"], URL("http://h0.com/"))  # most recent
    clock.now += 5
    store.update_from_headers(["c=1"], URL("http://new.com/"))
    assert len(store) == 11
    assert {m["domain"] for m in store} == {f"h{i}.com" for i in range(1, 11)} | {"new.com"}
