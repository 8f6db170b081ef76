"""The cookie store of one jar, without I/O: RFC 6265 as aiohttp 3.14's ``CookieJar``.

How this works. Cookies are kept by ``(domain, path)`` (the path without its trailing
"/"), then by name, so a cookie's identity is ``(domain, path, name)``. A cookie without
a ``Domain`` attribute is host-only: stored under the host that set it and sent to that
host only; one with ``Domain`` is sent to the domain and its subdomains. To choose the
cookies for a request, ``filter_cookies`` looks up every (domain suffix, path prefix)
pair of the URL, least specific first, so the most specific cookie of a name wins.
Deadlines (``Max-Age`` wins over ``Expires``; zero, negative or past deletes) are kept in
a heap and applied, by the injected wall clock, before every read.

Rules taken from aiohttp 3.14 where it differs from the RFC (each one is marked where it
is applied): a ``Domain`` with a trailing dot makes the cookie host-only (the RFC ignores
the cookie); a cookie stored with no host (``update_cookies`` without a response URL) is
sent to every host; an unparseable ``Max-Age``/``Expires`` is blanked and the cookie kept
as a session cookie; an ``Expires`` of exactly the epoch counts as unparseable; cookies
from IP hosts are refused unless ``unsafe``; ``Partitioned`` is kept only where this
Python's ``Morsel`` knows it (3.14+).

The caps, so that a hostile server cannot grow a jar (nor the broker) without bound,
are the figures browsers use (RFC 6265 6.1 asks for at least 4096 bytes per cookie, 50
per domain and 3000 in total; Firefox's CookieStorage keeps 180 per domain, 3000 in all):

- ``max_cookie_size`` = 4096: bytes of name plus value (UTF-8). A bigger cookie is
  dropped, as is an attribute value over 1024 bytes (ignored, as aiohttp's parser does).
- ``max_cookies_per_domain`` = 180: when a new cookie finds its domain full, the
  domain is pruned to 150 (Firefox's quota, so pruning happens once per 30 cookies):
  expired cookies first, then the least recently used non-``Secure`` ones; ``Secure``
  cookies are only evicted to make room for another ``Secure`` cookie, and a
  non-``Secure`` cookie that finds its domain full of ``Secure`` ones is dropped.
- ``max_cookies`` = 3300: when a new cookie finds the jar full, it is pruned to 3000:
  expired first, then the least recently used of any domain.
- 50 cookies per response (``update_from_headers``; the rest are ignored).
- A request is sent at most 150 cookies and a ``Cookie`` header of at most 8190 bytes;
  over that, the most specific cookies are sent first (aiohttp 3.14's figures).

"Used" means stored or sent: RFC 6265 5.3 suggests evicting by last access time. The
recency is kept in two ``OrderedDict`` (per domain and for the whole jar), least recent
first, so the victims are read off the front without a sort, even under 100,000 cookies
from one server.

``dump()`` gives aiohttp's JSON cookie file layout (``{"domain|path": {name: {key, value,
coded_value, attributes..., host_only, expires_timestamp}}}``), so a file written by
aiohttp's ``CookieJar.save`` loads here and the other way round; ``load()`` passes every
record through the same rules as ``update_cookies`` and replaces the contents only once
the whole document has been read (bad data raises ``ValueError`` and changes nothing).
"""

from __future__ import annotations

import calendar
import datetime
import heapq
import itertools
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from http.cookies import BaseCookie, CookieError, Morsel, SimpleCookie
from typing import Any, Union

from yarl import URL

__all__ = [
    "MAX_COOKIES",
    "MAX_COOKIES_PER_DOMAIN",
    "MAX_COOKIE_SIZE",
    "COOKIE_NAME_RE",
    "CookieStore",
    "CookieData",
    "CookieRecord",
    "is_domain_match",
    "morsel_from_record",
    "new_morsel",
    "parse_cookie_date",
    "parse_cookie_header",
    "parse_set_cookie_headers",
]

MAX_COOKIE_SIZE = 4096
MAX_COOKIES_PER_DOMAIN = 180
MAX_COOKIES = 3300
MAX_ATTRIBUTE_SIZE = 1024
MAX_COOKIES_PER_RESPONSE = 50
MAX_COOKIES_PER_REQUEST = 150
MAX_COOKIE_HEADER_SIZE = 8190
_MAX_ATTRIBUTES = 32
_COOKIE_HEADER_PREFIX = len("Cookie: ")

LooseCookies = Union[
    Mapping[str, Union[str, "BaseCookie[str]", "Morsel[Any]"]],
    Iterable[tuple[str, Union[str, "BaseCookie[str]", "Morsel[Any]"]]],
    "BaseCookie[str]",
]
CookieRecord = dict[str, str | bool | float]
CookieData = dict[str, dict[str, CookieRecord]]
_JarKey = tuple[str, str]  # (domain, path without trailing "/")
_CookieKey = tuple[str, str, str]  # (domain, path, name)
_DUMP_SKIPPED = frozenset(("max-age", "expires"))  # the absolute deadline is saved
_SIMPLE_COOKIE = SimpleCookie()
_NO_URL = URL()
_NO_COOKIES: dict[str, Morsel[str]] = {}
# SimpleCookie rejects these names as keys; they still work as cookie names
_RESERVED = frozenset(Morsel._reserved)  # type: ignore[attr-defined]
_FLAGS = frozenset(Morsel._flags) | {"partitioned"}  # type: ignore[attr-defined]


# --- Set-Cookie and Cookie parsing (aiohttp 3.14's _cookie_helpers, behaviour for behaviour) ---

# \Z, not $: "a\n" is not a name (aiohttp's pattern ends in $, which allows it)
COOKIE_NAME_RE = _NAME_RE = re.compile(r"^[!#$%&\'()*+\-./0-9:<=>?@A-Z\[\]^_`a-z{|}~]+\Z")
_FORBIDDEN_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CTL_RE = re.compile(r"[\x00-\x1f\x7f]")
_ATTRIBUTE_START_RE = re.compile(r"[^;\s]", re.ASCII)
_PAIR_RE = re.compile(
    r"""
    \s*
    (?P<key>[\w\d!#%&'~_`><@,:/\$\*\+\-\.\^\|\)\(\?\}\{\[\]]+)
    (
    \s*=\s*
    (?P<val>
    "(?:[^\\"]|\\.)*"                                    # a quoted string
    | "[^";]*                                            # an unclosed quote
    | (\w{3,6}day|\w{3}),\s[\w\d\s-]{9,11}\s[\d:]{8}\s(GMT|[+-]\d{4})  # an RFC 1123 date
    | \w{3}\s+\w{3}\s+[\s\d]\d\s+\d{2}:\d{2}:\d{2}\s+\d{4}              # an asctime date
    | [\w\d!#%&'~_`><@,:/\$\*\+\-\.\^\|\)\(\?\}\{\=\[\]]*
    )
    )?
    \s*
    (\s+|;|$)
    """,
    re.VERBOSE | re.ASCII,
)
_unquote_sub = re.compile(r"\\(?:([0-3][0-7][0-7])|(.))").sub


def _unquote(value: str) -> str:
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    return _unquote_sub(lambda m: chr(int(m[1], 8)) if m[1] else m[2], value[1:-1])


def _encoded_length(text: str) -> int | None:
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def new_morsel(key: str, value: str, coded_value: str) -> Morsel[str] | None:
    """A morsel without ``Morsel.set``'s name checks (names such as "{a}" are real)."""
    morsel: Morsel[str] = Morsel()
    try:
        morsel.__setstate__(  # type: ignore[attr-defined]
            {"key": key, "value": value, "coded_value": coded_value}
        )
    except CookieError:
        return None
    return morsel


def _set_attribute(morsel: Morsel[str], name: str, raw: str) -> None:
    if name in _FLAGS:
        dict.__setitem__(morsel, name, True)  # like Firefox, a flag's value is ignored
        return
    length = _encoded_length(raw)
    if length is None or length > MAX_ATTRIBUTE_SIZE:
        return
    value = _unquote(raw)
    if _CTL_RE.search(value) is None:
        dict.__setitem__(morsel, name, value)


def _apply_attributes(morsel: Morsel[str], attributes: str) -> None:
    index, end = 0, len(attributes)
    for _ in range(_MAX_ATTRIBUTES):
        if index >= end:
            break
        match = _PAIR_RE.match(attributes, index)
        if match is None:
            next_index = attributes.find(";", index) + 1
            start = _ATTRIBUTE_START_RE.search(attributes, next_index) if next_index else None
            if start is None:
                break
            index = start.start()
            continue
        index = match.end()
        name = match.group("key").lower()
        # unknown attributes are ignored (RFC 6265 5.2); Partitioned only where this
        # Python's Morsel knows it (3.14+), as aiohttp does
        if name in _RESERVED:
            _set_attribute(morsel, name, match.group("val") or "")


def _parse_quoted_pair(header: str) -> tuple[str, str, int] | None:
    """A first pair whose quoted value holds ";" (aiohttp has always accepted these)."""
    match = _PAIR_RE.match(header)
    if match is None or not (value := match.group("val")):
        return None
    if not (value.startswith('"') and value.endswith('"') and ";" in value):
        return None
    tail = header[match.end("val") :].lstrip(" \t")
    if tail and not tail.startswith(";"):
        return None
    return match.group("key"), value, len(header) - len(tail) + bool(tail)


def _parse_one(header: str) -> tuple[str, Morsel[str]] | None:
    if not header or _FORBIDDEN_CTL_RE.search(header) is not None:
        return None
    pair_end = header.find(";")
    if pair_end == -1:
        pair_end = attributes_start = len(header)
    else:
        attributes_start = pair_end + 1
    quoted = _parse_quoted_pair(header) if header.find('"', 0, pair_end) != -1 else None
    if quoted is not None:
        key, coded_value, attributes_start = quoted
    else:
        key, sep, coded_value = header[:pair_end].partition("=")
        if not sep:
            return None
    key, coded_value = key.strip(" \t"), coded_value.strip(" \t")
    if not key or not _NAME_RE.match(key):
        return None
    size = _encoded_length(key + coded_value)
    value = _unquote(coded_value)
    if size is None or size > MAX_COOKIE_SIZE or _CTL_RE.search(value) is not None:
        return None
    morsel = new_morsel(key, value, coded_value)
    if morsel is None:
        return None
    _apply_attributes(morsel, header[attributes_start:])
    return key, morsel


def parse_cookie_header(header: str) -> list[tuple[str, str]]:
    """The (name, value as sent) pairs of a ``Cookie`` request header, RFC 6265 5.4 as
    aiohttp reads it: pairs only (``path`` or ``secure`` are names like any other),
    quoted values kept whole, a pair with a bad name skipped, a malformed pair read up
    to its ";" so that the pairs after it survive."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(header)
    while i < n:
        match = _PAIR_RE.match(header, i)
        if match is None:
            semi = header.find(";", i)
            end = semi if semi != -1 else n
            key, sep, value = header[i:end].partition("=")
            key = key.strip()
            if sep and _NAME_RE.match(key):
                pairs.append((key, value.strip()))
            i = end + 1
            continue
        i = match.end(0)
        key = match.group("key")
        if _NAME_RE.match(key):
            pairs.append((key, match.group("val") or ""))
    return pairs


def parse_set_cookie_headers(
    headers: Iterable[str], limit: int | None = MAX_COOKIES_PER_RESPONSE
) -> list[tuple[str, Morsel[str]]]:
    """At most one cookie per ``Set-Cookie`` field, at most ``limit`` in all (a jar
    stores 50 per response; a response's own ``cookies`` are all of them); fields with
    control characters, no "=", a bad name or an oversized pair are skipped."""
    cookies: list[tuple[str, Morsel[str]]] = []
    for header in headers:
        if limit is not None and len(cookies) >= limit:
            break
        if (parsed := _parse_one(header)) is not None:
            cookies.append(parsed)
    return cookies


# --- dates and hosts ---

_DATE_TOKENS_RE = re.compile(
    r"[\x09\x20-\x2F\x3B-\x40\x5B-\x60\x7B-\x7E]*(?P<token>[\x00-\x08\x0A-\x1F\d:a-zA-Z\x7F-\xFF]+)"
)
_MONTH_RE = re.compile(
    "(jan)|(feb)|(mar)|(apr)|(may)|(jun)|(jul)|(aug)|(sep)|(oct)|(nov)|(dec)", re.I
)


def _month(m: re.Match[str]) -> tuple[int, ...]:
    assert m.lastindex is not None
    return (m.lastindex,)


# RFC 6265 5.1.1: each token is tried against the parts not found yet, in this order
_DATE_PARTS: tuple[tuple[str, re.Pattern[str], Callable[[re.Match[str]], tuple[int, ...]]], ...] = (
    ("time", re.compile(r"(\d{1,2}):(\d{1,2}):(\d{1,2})"), lambda m: tuple(map(int, m.groups()))),
    ("day", re.compile(r"(\d{1,2})"), lambda m: (int(m.group()),)),
    ("month", _MONTH_RE, _month),
    ("year", re.compile(r"(\d{2,4})"), lambda m: (int(m.group()),)),
)
# calendar.timegm() fails past datetime.max; minus one for the float round trip
MAX_TIME = int(datetime.datetime.max.replace(tzinfo=datetime.timezone.utc).timestamp()) - 1


def parse_cookie_date(text: str) -> int | None:
    """The cookie date algorithm of RFC 6265 5.1.1, as a POSIX timestamp."""
    found: dict[str, tuple[int, ...]] = {}
    for token_match in _DATE_TOKENS_RE.finditer(text):
        token = token_match.group("token")
        for part, pattern, convert in _DATE_PARTS:
            if part not in found and (m := pattern.match(token)) is not None:
                found[part] = convert(m)
                break
    if len(found) < len(_DATE_PARTS):
        return None
    (hour, minute, second), (day,), (month,), (year,) = (found[p] for p, *_ in _DATE_PARTS)
    year += 1900 if 70 <= year <= 99 else 2000 if 0 <= year <= 69 else 0
    if not 1 <= day <= 31 or year < 1601 or hour > 23 or minute > 59 or second > 59:
        return None
    return calendar.timegm((year, month, day, hour, minute, second, -1, -1, -1))


def is_ip_address(host: str | None) -> bool:
    """aiohttp's heuristic: all digits and dots, or any colon."""
    if not host:
        return False
    return ":" in host or host.replace(".", "").isdigit()


def is_domain_match(domain: str, hostname: str) -> bool:
    """Domain matching of RFC 6265 5.1.3."""
    if hostname == domain:
        return True
    if not hostname.endswith(domain) or not hostname[: -len(domain)].endswith("."):
        return False
    return not is_ip_address(hostname)


def _secure_origins(value: str | URL | Iterable[str | URL] | None) -> frozenset[URL]:
    if value is None:
        return frozenset()
    if isinstance(value, (str, URL)):
        value = [value]
    return frozenset(URL(url).origin() for url in value)


def _quota(cap: int, share: int) -> int:
    """What a full domain (share 6: 180 -> 150) or jar (share 11: 3300 -> 3000) is pruned
    to, Firefox's quotas, so that pruning happens once per many new cookies."""
    return max(cap - cap // share, 1)


def _default_path(url: URL) -> str:
    # aiohttp: the URL path up to (not including) its last "/"; "/" when it has none
    path = url.path
    if not path.startswith("/"):
        return "/"
    return "/" + path[1 : path.rfind("/")]


class CookieStore:
    """The cookies of one jar: what to store from a response, what to send with a
    request. ``clock`` is wall-clock time (cookie deadlines are dates)."""

    def __init__(
        self,
        *,
        unsafe: bool = False,
        quote_cookie: bool = True,
        treat_as_secure_origin: str | URL | Iterable[str | URL] | None = (),
        clock: Callable[[], float] = time.time,
        max_cookies_per_domain: int = MAX_COOKIES_PER_DOMAIN,
        max_cookie_size: int = MAX_COOKIE_SIZE,
        max_cookies: int = MAX_COOKIES,
    ) -> None:
        if max_cookies_per_domain < 1 or max_cookie_size < 1 or max_cookies < 1:
            raise ValueError("the cookie caps must be positive")
        self.unsafe = unsafe
        self.quote_cookie = quote_cookie
        self.treat_as_secure_origin = _secure_origins(treat_as_secure_origin)
        self.max_cookies_per_domain = max_cookies_per_domain
        self.max_cookie_size = max_cookie_size
        self.max_cookies = max_cookies
        self._clock = clock
        self.on_change: Callable[[], None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._cookies: dict[_JarKey, dict[str, Morsel[str]]] = {}
        self._host_only: set[_CookieKey] = set()
        self._expirations: dict[_CookieKey, float] = {}
        self._expire_heap: list[tuple[float, _CookieKey]] = []
        # least recently used first
        self._recency: OrderedDict[_CookieKey, None] = OrderedDict()
        self._domain_recency: dict[str, OrderedDict[_CookieKey, None]] = {}
        self._sendable: dict[_CookieKey, tuple[Morsel[str], int]] = {}

    def __repr__(self) -> str:
        return f"<CookieStore {len(self)} cookies, {len(self._domain_recency)} domains>"

    def __len__(self) -> int:
        return len(self._recency)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def expire(self) -> None:
        """Drop the cookies whose deadline has passed (every read does this first)."""
        self._expire()

    def __iter__(self) -> Iterator[Morsel[str]]:
        self._expire()
        for cookies in list(self._cookies.values()):
            yield from list(cookies.values())

    # --- storing ---

    def update_cookies(self, cookies: LooseCookies, response_url: URL | str = _NO_URL) -> None:
        """Store cookies given as a mapping or pairs of names to values or Morsels."""
        items = cookies.items() if isinstance(cookies, Mapping) else cookies
        pairs = [(name, self._as_morsel(name, value)) for name, value in items]
        self._store_all(pairs, URL(response_url), None)

    def update_from_headers(self, values: Iterable[str], response_url: URL | str) -> None:
        """Store the cookies of a response's raw ``Set-Cookie`` field values."""
        url = URL(response_url)
        if not self.unsafe and is_ip_address(url.raw_host):
            return  # before parsing: nothing to do
        self._store_all(parse_set_cookie_headers(values), url, None)

    def _as_morsel(self, name: str, value: str | BaseCookie[str] | Morsel[Any]) -> Morsel[str]:
        if isinstance(value, Morsel):
            copy: Morsel[str] = value.copy()
            return copy
        tmp: SimpleCookie = SimpleCookie()
        tmp[name] = value  # type: ignore[assignment]
        return tmp[name]

    def _store_all(
        self, pairs: list[tuple[str, Morsel[str]]], url: URL, deadline: float | None
    ) -> None:
        if not self.unsafe and is_ip_address(url.raw_host):
            return  # aiohttp: no cookies from IP hosts
        stored = False
        for name, cookie in pairs:
            stored = self._store(name, cookie, url, deadline) or stored
        if not self._expire() and stored:
            self._changed()

    def _store(self, name: str, cookie: Morsel[str], url: URL, saved: float | None) -> bool:
        if not self._fits(cookie):
            return False
        hostname = url.raw_host
        scope = self._scope(cookie, hostname)
        if scope is None:
            return False
        domain, host_only = scope
        path = self._path(cookie, url)
        deadline = saved if saved is not None else self._deadline(cookie)
        key = (domain, path, name)
        jar_key = (domain, path)
        is_new = name not in self._cookies.get(jar_key, ())
        if is_new and not self._room_for(domain, bool(cookie["secure"]), deadline):
            return False
        if host_only:
            self._host_only.add(key)
            cookie["domain"] = domain
        else:
            # a Domain cookie replaces a host-only one of the same identity
            self._host_only.discard(key)
        self._cookies.setdefault(jar_key, {})[name] = cookie
        self._sendable.pop(key, None)
        self._set_deadline(key, deadline)
        self._touch(key)
        return True

    def _fits(self, cookie: Morsel[str]) -> bool:
        if not isinstance(cookie.key, str) or not isinstance(cookie.value, str):
            return False  # an empty Morsel() (aiohttp stores it as "None=None")
        # RFC 6265 6.1's per-cookie size; aiohttp only checks it in its Set-Cookie
        # parser, we check every cookie since a worker's update_cookies reaches the broker
        text = f"{cookie.key}={cookie.value}{cookie.coded_value}"
        size = _encoded_length(cookie.key + cookie.value)
        return (
            size is not None
            and size <= self.max_cookie_size
            and (_CTL_RE.search(text) is None and _encoded_length(text) is not None)
        )

    @staticmethod
    def _scope(cookie: Morsel[str], hostname: str | None) -> tuple[str, bool] | None:
        """(domain, host-only), or None when the host may not set this domain."""
        domain = cookie["domain"]
        if domain and domain[-1] == ".":
            # aiohttp: a trailing dot makes the cookie host-only (RFC 6265: ignore it)
            domain = ""
            del cookie["domain"]
        if domain and domain[0] == ".":
            domain = domain[1:]
            cookie["domain"] = domain
        if domain and hostname and not is_domain_match(domain, hostname):
            return None
        if not domain and hostname is not None:
            return hostname, True
        return domain, False  # with no host, a cookie without Domain is shared (aiohttp)

    @staticmethod
    def _path(cookie: Morsel[str], url: URL) -> str:
        path: str = cookie["path"]
        if not path or path[0] != "/":
            path = cookie["path"] = _default_path(url)
        return path.rstrip("/")

    def _deadline(self, cookie: Morsel[str]) -> float | None:
        if max_age := cookie["max-age"]:
            try:
                seconds = int(max_age)
            except ValueError:
                cookie["max-age"] = ""  # aiohttp: blank it, keep a session cookie
            else:
                if seconds <= 0:
                    return 0.0
                return min(self._clock() + min(seconds, MAX_TIME), MAX_TIME)
        if expires := cookie["expires"]:
            # aiohttp: an Expires of exactly the epoch counts as unparseable
            if deadline := parse_cookie_date(expires):
                return deadline
            cookie["expires"] = ""
        return None

    def _set_deadline(self, key: _CookieKey, deadline: float | None) -> None:
        if deadline is None:
            self._expirations.pop(key, None)  # RFC 6265 5.3 step 11: no inherited expiry
        elif self._expirations.get(key) != deadline:
            self._expirations[key] = deadline
            heapq.heappush(self._expire_heap, (deadline, key))
            if len(self._expire_heap) > max(100, 2 * len(self._expirations)):
                self._compact_heap()

    def _compact_heap(self) -> None:
        """Drop the heap entries of deadlines since replaced."""
        live = self._expirations
        self._expire_heap = [e for e in self._expire_heap if live.get(e[1]) == e[0]]
        heapq.heapify(self._expire_heap)

    # --- the caps ---

    def _room_for(self, domain: str, secure: bool, deadline: float | None) -> bool:
        full_domain = len(self._domain_recency.get(domain, ())) >= self.max_cookies_per_domain
        if not full_domain and len(self) < self.max_cookies:
            return True
        if deadline is not None and deadline <= self._clock():
            return True  # like Firefox, a cookie that only deletes never evicts others
        self._expire()
        if full_domain:
            return self._prune_domain(domain, secure)
        self._prune_total()
        return True

    def _prune_domain(self, domain: str, secure: bool) -> bool:
        """Firefox's order: least recently used non-Secure cookies; Secure ones only to
        make room for a Secure cookie. False: the new cookie is dropped."""
        order = self._domain_recency.get(domain, OrderedDict())
        count = len(order)
        excess = count - _quota(self.max_cookies_per_domain, 6) + 1
        if count < self.max_cookies_per_domain or excess <= 0:
            return True  # expiry made room
        victims = list(itertools.islice((k for k in order if not self._get(k)["secure"]), excess))
        if not victims:
            if not secure:
                return False
            victims = list(itertools.islice(order, excess))
        self._delete(victims)
        return True

    def _prune_total(self) -> None:
        if len(self) < self.max_cookies:
            return
        excess = len(self) - _quota(self.max_cookies, 11) + 1
        self._delete(list(itertools.islice(self._recency, excess)))

    def _touch(self, key: _CookieKey) -> None:
        self._recency[key] = None
        self._recency.move_to_end(key)
        order = self._domain_recency.setdefault(key[0], OrderedDict())
        order[key] = None
        order.move_to_end(key)

    # --- expiry and removal ---

    def _get(self, key: _CookieKey) -> Morsel[str]:
        return self._cookies[key[:2]][key[2]]

    def _expire(self) -> bool:
        """Whether a cookie expired (and the change was announced)."""
        now = self._clock()
        heap = self._expire_heap
        if not heap or heap[0][0] > now:
            return False
        expired = []
        while heap and heap[0][0] <= now:
            when, key = heapq.heappop(heap)
            if self._expirations.get(key) == when:
                expired.append(key)
        return self._delete(expired) > 0

    def _delete(self, keys: Iterable[_CookieKey]) -> int:
        """Remove ``keys`` (those present); how many there were, announced as a change."""
        deleted = 0
        for key in keys:
            domain, path, name = key
            cookies = self._cookies.get((domain, path))
            if cookies is None or cookies.pop(name, None) is None:
                continue
            deleted += 1
            if not cookies:
                del self._cookies[(domain, path)]
            self._host_only.discard(key)
            self._expirations.pop(key, None)
            self._sendable.pop(key, None)
            del self._recency[key]
            order = self._domain_recency[domain]
            del order[key]
            if not order:
                del self._domain_recency[domain]
        if deleted:
            self._changed()
        return deleted

    def clear(self, predicate: Callable[[Morsel[str]], bool] | None = None) -> None:
        """Remove every cookie, or the expired ones and those ``predicate`` selects."""
        if predicate is None:
            had = bool(self._recency)
            self._reset()
            if had:
                self._changed()
            return
        self._expire()
        self._delete([k for k in list(self._recency) if predicate(self._get(k))])

    def delete(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Remove the cookies named by (domain, path, name), and the expired ones; a
        path is taken with or without its trailing "/"."""
        self._expire()
        self._delete([(domain, path.rstrip("/"), name) for domain, path, name in keys])

    def clear_domain(self, domain: str) -> None:
        """Remove the cookies of ``domain`` and of its subdomains."""
        self.clear(lambda morsel: is_domain_match(domain, morsel["domain"]))

    # --- sending ---

    def _is_secure(self, url: URL) -> bool:
        if url.scheme in ("https", "wss"):
            return True
        if not self.treat_as_secure_origin:
            return False
        try:
            return url.origin() in self.treat_as_secure_origin
        except ValueError:
            return False

    def _candidates(self, url: URL) -> Iterator[_JarKey]:
        """(domain, path) pairs that may hold cookies for ``url``, least specific first."""
        hostname = url.raw_host or ""
        yield ("", "")  # cookies stored without a host: every host gets them (aiohttp)
        if not is_ip_address(hostname):
            domains: Iterable[str] = itertools.accumulate(
                reversed(hostname.split(".")), lambda acc, label: f"{label}.{acc}"
            )
        else:
            domains = (hostname,) if self.unsafe else ()
        paths = list(itertools.accumulate(url.path.split("/"), lambda acc, p: f"{acc}/{p}"))
        for pair in itertools.product(domains, paths):
            if pair != ("", ""):
                yield pair

    def filter_cookies(self, request_url: URL | str = _NO_URL) -> BaseCookie[str]:
        """The cookies to send to ``request_url``, as name=value Morsels (quoted as
        ``quote_cookie`` says), cached between calls as aiohttp does: read, don't change."""
        self._expire()
        url = URL(request_url)
        hostname = url.raw_host or ""
        secure = self._is_secure(url)
        path_len = len(url.path)
        selected: dict[str, _CookieKey] = {}
        for jar_key in self._candidates(url):
            for name, cookie in self._cookies.get(jar_key, _NO_COOKIES).items():
                key = (*jar_key, name)
                if key in self._host_only and cookie["domain"] != hostname:
                    continue
                if cookie["secure"] and not secure:
                    continue
                # a cookie of path "/a/" must not go to "/a"
                if len(cookie["path"]) > path_len and jar_key != ("", ""):
                    continue
                selected.pop(name, None)  # the most specific one wins, and goes last
                selected[name] = key
        return self._to_send(selected)

    def _to_send(self, selected: dict[str, _CookieKey]) -> BaseCookie[str]:
        """Most specific first within the per-request caps, in specificity order."""
        size = _COOKIE_HEADER_PREFIX - 2
        admitted: list[tuple[str, _CookieKey]] = []
        for name, key in reversed(selected.items()):
            if len(admitted) >= MAX_COOKIES_PER_REQUEST:
                break
            length = self._sendable_morsel(key)[1]
            if size + 2 + length > MAX_COOKIE_HEADER_SIZE:
                continue
            size += 2 + length
            admitted.append((name, key))
        filtered: BaseCookie[str] = BaseCookie()
        for name, key in reversed(admitted):
            dict.__setitem__(filtered, name, self._sendable_morsel(key)[0])
            self._touch(key)
        return filtered

    def _sendable_morsel(self, key: _CookieKey) -> tuple[Morsel[str], int]:
        entry = self._sendable.get(key)
        if entry is None:
            morsel = self._build_morsel(self._get(key))
            length = _encoded_length(f"{morsel.key}={morsel.coded_value}") or 0
            entry = self._sendable[key] = (morsel, length)
        return entry

    def _build_morsel(self, cookie: Morsel[str]) -> Morsel[str]:
        if self.quote_cookie and cookie.coded_value[:1] == '"':
            value, coded = cookie.value, cookie.coded_value  # as the server quoted it
        elif self.quote_cookie:
            value, coded = _SIMPLE_COOKIE.value_encode(cookie.value)
        else:
            value = coded = cookie.value
        return new_morsel(cookie.key, value, coded) or cookie

    # --- persistence ---

    def dump(self, expiry: bool = False) -> dict[str, dict[str, dict[str, str | bool | float]]]:
        """The cookies as JSON-able data, in aiohttp's cookie file layout; ``expiry``
        keeps each cookie's ``expires``/``max-age`` as set (for reading them as Morsels,
        as aiohttp's jar iterates them), which a cookie file does without."""
        self._expire()
        skipped = frozenset() if expiry else _DUMP_SKIPPED
        data: dict[str, dict[str, dict[str, str | bool | float]]] = {}
        for (domain, path), cookies in self._cookies.items():
            records = data[f"{domain}|{path}"] = {}
            for name, morsel in cookies.items():
                records[name] = self._record(morsel, (domain, path, name), skipped)
        return data

    def _record(
        self, morsel: Morsel[str], key: _CookieKey, skipped: frozenset[str]
    ) -> dict[str, str | bool | float]:
        record: dict[str, str | bool | float] = {
            "key": morsel.key,
            "value": morsel.value,
            "coded_value": morsel.coded_value,
        }
        for attr, value in morsel.items():
            if value and attr not in skipped:
                record[attr] = value
        if key in self._host_only:
            record["host_only"] = True  # else it reloads as a Domain cookie
        if (deadline := self._expirations.get(key)) is not None:
            record["expires_timestamp"] = deadline
        return record

    def load(self, data: object) -> None:
        """Replace the contents with ``dump()``'s data; ``ValueError`` leaves them as
        they were."""
        staged = self.empty_copy()
        staged.add_records(data)
        self.replace_with(staged)

    def empty_copy(self) -> CookieStore:
        """An empty store with this one's settings and caps: where a load is staged."""
        return CookieStore(
            unsafe=self.unsafe,
            quote_cookie=self.quote_cookie,
            treat_as_secure_origin=self.treat_as_secure_origin,
            clock=self._clock,
            max_cookies_per_domain=self.max_cookies_per_domain,
            max_cookie_size=self.max_cookie_size,
            max_cookies=self.max_cookies,
        )

    def add_records(self, data: object) -> None:
        """Add ``dump()``'s data (or a piece of it) to the contents, through the rules
        of ``update_cookies``: a load in pieces is one call per piece on a store from
        ``empty_copy``, then ``replace_with``. ``ValueError`` at the first bad entry
        (the entries before it stay added)."""
        if not isinstance(data, dict):
            raise ValueError(f"cookie data must be an object, not {type(data).__name__}")
        for compound, records in data.items():
            if not (isinstance(compound, str) and "|" in compound and isinstance(records, dict)):
                raise ValueError(f"bad cookie data entry {compound!r}")
            domain = compound.split("|", 1)[0]
            url = URL.build(scheme="https", host=domain) if domain else URL()
            for name, record in records.items():
                morsel, deadline = morsel_from_record(name, record, stored=True, where=compound)
                self._store_all([(name, morsel)], url, deadline)

    def replace_with(self, staged: CookieStore) -> None:
        """Take ``staged``'s contents (not to be used afterwards); a change."""
        hook = self.on_change
        self.__dict__.update(staged.__dict__)
        self.on_change = hook
        self._changed()

    def update_records(
        self, cookies: Iterable[tuple[object, object]], response_url: URL | str = _NO_URL
    ) -> None:
        """``update_cookies`` with each cookie as a (name, record) pair, the wire's form.
        Every record is checked before any is stored: ``ValueError`` changes nothing."""
        pairs = [
            (name, morsel_from_record(name, record, stored=False)[0])
            for name, record in cookies
        ]
        self._store_all(pairs, URL(response_url), None)  # type: ignore[arg-type]


# A coded value is the value, quoted: at most 4 characters per byte ("\\ooo"), and quotes.
_MAX_CODED_SIZE = 4 * MAX_COOKIE_SIZE + 2


def morsel_from_record(
    name: object, record: object, *, stored: bool, where: str = ""
) -> tuple[Morsel[str], float | None]:
    """The Morsel of one cookie record (``dump()``'s layout, also the wire's), checked;
    and its deadline. ``stored``: a record of a saved jar, whose ``host_only`` and
    ``expires_timestamp`` count (else they are ignored: a new cookie gets its deadline
    from its attributes). ``ValueError`` says what is wrong."""
    where = f"cookie {name!r}" + (f" in {where!r}" if where else "")
    if not isinstance(record, dict) or not isinstance(name, str):
        raise ValueError(f"{where}: a cookie record must be an object")
    texts = [record.get(field) for field in ("key", "value", "coded_value")]
    if not all(isinstance(text, str) for text in texts):
        raise ValueError(f"{where}: key, value and coded_value must be strings")
    if len(texts[2]) > _MAX_CODED_SIZE:  # type: ignore[arg-type]
        raise ValueError(f"{where}: coded_value is over {_MAX_CODED_SIZE} characters")
    morsel = new_morsel(*texts)  # type: ignore[arg-type]
    if morsel is None or not _NAME_RE.match(morsel.key):
        raise ValueError(f"{where}: not a valid cookie")
    for attr in _RESERVED & record.keys():
        dict.__setitem__(morsel, attr, _attribute(where, attr, record[attr]))
    deadline = None
    if stored:
        host_only = record.get("host_only", False)
        if not isinstance(host_only, bool):
            raise ValueError(f"{where}: host_only must be true or false")
        if host_only:
            morsel["domain"] = ""  # stored again as host-only under its domain
        deadline = _deadline_of(where, record.get("expires_timestamp"))
    return morsel, deadline


def _attribute(where: str, attr: str, value: object) -> str | bool:
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{where}: attribute {attr!r} must be a string or a flag")
    length = _encoded_length(value)
    if length is None or length > MAX_ATTRIBUTE_SIZE or _CTL_RE.search(value) is not None:
        raise ValueError(
            f"{where}: attribute {attr!r} must be at most {MAX_ATTRIBUTE_SIZE} bytes "
            "of text without control characters"
        )
    return value


def _deadline_of(where: str, deadline: object) -> float | None:
    if deadline is None:
        return None
    is_number = isinstance(deadline, (int, float)) and not isinstance(deadline, bool)
    if not is_number or not math.isfinite(deadline):  # type: ignore[arg-type]
        raise ValueError(f"{where}: expires_timestamp must be a finite number")
    return float(deadline)  # type: ignore[arg-type]
