"""Cookie jars with aiohttp's API: ``CookieJar``, ``DummyCookieJar``, ``AbstractCookieJar``.

How this works. A ``CookieJar`` object is a handle: its cookies live in a backend, the
broker's jar (``jar_channel.BrokerJar``, short blocking round trips over this process's
jar channel) or, embedded, a ``broker.cookie_store.CookieStore`` in this process. Every
method goes through the backend, so the broker applies the same jar at every redirect
hop that the worker reads and changes.

Binding. A jar binds to one location, the embedded engine or one broker socket:
``CookieJar(broker=...)`` names it (as ``ClientSession(broker=...)`` does); else the
first ``ClientSession`` given it pins the session's broker address (and trusted broker
uids); else a method called before any session binds it, provisionally, to what
discovery finds (``HTTP_BROKER``, else embedded). A provisional unnamed jar that a
session of another location is then given moves there, its cookies with it (so
``jar = CookieJar(); jar.update_cookies(...); ClientSession(broker=..., cookie_jar=jar)``
works as in aiohttp). Otherwise a jar bound to one location and given to a session of
another is a ``RuntimeError``: a named jar is the group's jar of one broker. The backend
opens at the first call that needs it, once; requests then only name it
(``Request.jar``, or the store handed to the embedded transport).

Which jar: ``CookieJar(name=...)`` is the group's jar, keyed by all of its arguments
(``JarSpec``): every jar object with equal arguments, in every process talking to the
same broker (embedded: in this process), uses the same cookies. An unnamed jar is its
own: nobody else sees it, and the broker frees it when the object is garbage-collected
(``weakref.finalize`` queues a ``JarClose``) or this process disconnects.

After ``fork()``, a jar used in the child re-binds: a named jar opens the group's jar
again, an unnamed one starts EMPTY in the child (its cookies stay the parent's, as the
broker lets only the process that opened a jar use it).

What a read returns is a copy: ``cookies``, iteration and ``clear(predicate)`` work on
a dump of the jar (its Morsels with their attributes as set, ``max-age`` and ``expires``
included); changing them does not change the jar. ``save()`` writes the absolute
deadline instead (``expires_timestamp``), as aiohttp does.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
import weakref
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from http.cookies import BaseCookie, Morsel, SimpleCookie
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, Union

from yarl import URL

from shared.messages import CookieData
from shared.specs import JarSpec

from .transport import broker_address, trusted_broker_uids

if TYPE_CHECKING:  # the cookie rules: imported by the first jar kept in this process, or
    # the first method that parses cookies (a broker's jar keeps them in the broker)
    from broker.cookie_store import CookieStore

__all__ = ["AbstractCookieJar", "ClearCookiePredicate", "CookieJar", "DummyCookieJar"]

ClearCookiePredicate = Callable[["Morsel[str]"], bool]
LooseCookies = Union[
    Mapping[str, Union[str, "BaseCookie[str]", "Morsel[Any]"]],
    Iterable[tuple[str, Union[str, "BaseCookie[str]", "Morsel[Any]"]]],
    "BaseCookie[str]",
]
_Key = tuple[str, str, str]  # (domain, path without trailing "/", name)

_NO_URL = URL()
_NO_JAR = JarSpec()
_ATTRIBUTES = frozenset(Morsel._reserved)  # type: ignore[attr-defined]
# broker.cookie_store.MAX_TIME (aiohttp's CookieJar.MAX_TIME: datetime.max in seconds),
# written out here so that a jar kept in a broker needs no cookie rules in this process
# (tests/integration/test_import_cost.py checks that they agree).
_MAX_TIME = 253_402_300_799


class AbstractCookieJar(Sized, Iterable["Morsel[str]"]):
    """aiohttp's abstract cookie jar (``aiohttp.abc.AbstractCookieJar``).

    Unlike aiohttp's, making one needs no running event loop (``loop=`` is ignored)."""

    def __init__(self, *, loop: Any = None) -> None:
        pass

    @property
    @abstractmethod
    def unsafe(self) -> bool:
        """True if cookies of IP hosts are accepted."""

    @property
    @abstractmethod
    def quote_cookie(self) -> bool:
        """True if cookie values are quoted when sent."""

    @property
    def treat_as_secure_origin(self) -> frozenset[URL]:
        """Origins whose cleartext requests are sent ``Secure`` cookies."""
        return frozenset()

    @property
    @abstractmethod
    def cookies(self) -> MappingProxyType[tuple[str, str], SimpleCookie]:
        """The stored cookies by (domain, path)."""

    @property
    @abstractmethod
    def host_only_cookies(self) -> frozenset[tuple[str, str, str]]:
        """(domain, path, name) of the host-only cookies."""

    @abstractmethod
    def clear(self, predicate: ClearCookiePredicate | None = None) -> None:
        """Remove every cookie, or those ``predicate`` selects (and the expired ones)."""

    @abstractmethod
    def clear_domain(self, domain: str) -> None:
        """Remove the cookies of ``domain`` and of its subdomains."""

    @abstractmethod
    def update_cookies(self, cookies: LooseCookies, response_url: URL = _NO_URL) -> None:
        """Store cookies as if a response from ``response_url`` set them."""

    def update_cookies_from_headers(self, headers: Sequence[str], response_url: URL) -> None:
        """Store the cookies of raw ``Set-Cookie`` values."""
        from broker.cookie_store import parse_set_cookie_headers

        if headers and (cookies := parse_set_cookie_headers(headers)):
            self.update_cookies(cookies, response_url)

    @abstractmethod
    def filter_cookies(self, request_url: URL) -> BaseCookie[str]:
        """The cookies to send to ``request_url``."""


class _Backend(Protocol):
    """Where a jar's cookies are: ``jar_channel.BrokerJar`` or ``_LocalJar``."""

    token: bytes

    def update(self, cookies: list[tuple[str, Morsel[str]]], url: URL) -> None: ...
    def filter(self, url: URL) -> BaseCookie[str]: ...
    def count(self) -> int: ...
    def dump(self, expiry: bool = False) -> CookieData: ...
    def load(self, data: dict[str, Any]) -> None: ...
    def delete(self, keys: list[_Key] | None) -> None: ...
    def close(self) -> None: ...


class _LocalJar:
    """The embedded backend: a ``CookieStore`` in this process (``token`` is b"")."""

    token = b""

    def __init__(self, store: CookieStore) -> None:
        self.store = store

    def update(self, cookies: list[tuple[str, Morsel[str]]], url: URL) -> None:
        self.store.update_cookies(cookies, url)

    def filter(self, url: URL) -> BaseCookie[str]:
        return self.store.filter_cookies(url)

    def count(self) -> int:
        return len(self.store)

    def dump(self, expiry: bool = False) -> CookieData:
        return self.store.dump(expiry)

    def load(self, data: dict[str, Any]) -> None:
        self.store.load(data)

    def delete(self, keys: list[_Key] | None) -> None:
        if keys is None:
            self.store.clear()
        else:
            self.store.delete(keys)  # by exact key (what a dump named), and the expired

    def close(self) -> None:
        pass


# Embedded named jars: one store per spec for the life of the process, as the broker
# keeps one per spec for its life. The unnamed ones are known only for the figures.
_group_stores: dict[JarSpec, CookieStore] = {}
_group_lock = threading.Lock()
_own_stores: weakref.WeakSet[CookieStore] = weakref.WeakSet()


def embedded_jar_figures() -> list[dict[str, object]]:
    """``Stats.jars`` of this process's embedded jars (the broker's ``JarTable.figures``)."""
    from broker.jars import jar_figures

    with _group_lock:
        named = [(spec, store, 0) for spec, store in _group_stores.items()]
    return jar_figures(named, list(_own_stores))


def _new_store(spec: JarSpec) -> CookieStore:
    from broker.cookie_store import CookieStore

    return CookieStore(
        unsafe=spec.unsafe,
        quote_cookie=spec.quote_cookie,
        treat_as_secure_origin=spec.treat_as_secure_origin,
    )


def _open_backend(address: str | None, trusted: frozenset[int], spec: JarSpec) -> _Backend:
    """The one place that chooses a jar's backend."""
    if address is not None:
        from .jar_channel import BrokerJar

        broker_jar: _Backend = BrokerJar(address, trusted, spec)
        return broker_jar
    if spec.name is None:
        store = _new_store(spec)
        _own_stores.add(store)
        return _LocalJar(store)
    with _group_lock:
        store = _group_stores.get(spec)
        if store is None:
            store = _group_stores[spec] = _new_store(spec)
    return _LocalJar(store)


def _origins(value: str | URL | Iterable[str | URL] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, URL)):
        value = [value]
    return tuple(sorted({str(URL(url).origin()) for url in value}))


def _as_pairs(cookies: LooseCookies) -> list[tuple[str, Morsel[str]]]:
    """``update_cookies``'s loose forms as (name, Morsel), as aiohttp reads them."""
    items = cookies.items() if isinstance(cookies, Mapping) else cookies
    pairs: list[tuple[str, Morsel[str]]] = []
    for name, value in items:
        if not isinstance(value, Morsel):
            tmp: SimpleCookie = SimpleCookie()
            tmp[name] = value  # type: ignore[assignment]
            value = tmp[name]
        pairs.append((name, value))
    return pairs


def _morsel(record: Mapping[str, Any]) -> Morsel[str]:
    morsel: Morsel[str] = Morsel()
    morsel.__setstate__(  # type: ignore[attr-defined]
        {"key": record["key"], "value": record["value"], "coded_value": record["coded_value"]}
    )
    for attr in _ATTRIBUTES & record.keys():
        dict.__setitem__(morsel, attr, record[attr])
    return morsel


def _records(data: CookieData) -> Iterator[tuple[_Key, Mapping[str, Any]]]:
    for compound, records in data.items():
        domain, _, path = compound.partition("|")
        for name, record in records.items():
            yield (domain, path, name), record


class CookieJar(AbstractCookieJar):
    """aiohttp's ``CookieJar`` (RFC 6265), kept in the broker; ``name=`` makes it the
    group's jar of that name (equal arguments, same cookies, in every process)."""

    MAX_TIME = _MAX_TIME
    SUB_MAX_TIME = _MAX_TIME - 1

    def __init__(
        self,
        *,
        unsafe: bool = False,
        quote_cookie: bool = True,
        treat_as_secure_origin: str | URL | Iterable[str | URL] | None = None,
        loop: Any = None,
        name: str | None = None,
        broker: str | None = None,
        broker_uid: int | Iterable[int] | None = None,
    ) -> None:
        self._spec = JarSpec(
            name=name,
            unsafe=unsafe,
            quote_cookie=quote_cookie,
            treat_as_secure_origin=_origins(treat_as_secure_origin),
        )
        self._where: tuple[str | None, frozenset[int]] | None = None  # (address, uids)
        self._provisional = False  # bound by a method call, through discovery
        self._backend: _Backend | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize[..., CookieJar] | None = None
        if broker is not None:
            address = broker_address(broker)
            self._where = (address, trusted_broker_uids(broker_uid))

    def __repr__(self) -> str:
        spec = self._spec
        where = (
            "unbound" if self._where is None
            else "embedded" if self._where[0] is None
            else f"broker {self._where[0]}"
        )
        name = "" if spec.name is None else f"name={spec.name!r} "
        return f"<CookieJar {name}unsafe={spec.unsafe} quote_cookie={spec.quote_cookie} {where}>"

    @property
    def unsafe(self) -> bool:
        return self._spec.unsafe

    @property
    def quote_cookie(self) -> bool:
        return self._spec.quote_cookie

    @property
    def treat_as_secure_origin(self) -> frozenset[URL]:
        return frozenset(URL(origin) for origin in self._spec.treat_as_secure_origin)

    @property
    def name(self) -> str | None:
        """The group jar's name; None for a jar of its own."""
        return self._spec.name

    # -- binding ---------------------------------------------------------------------

    def _pin(self, address: str | None, trusted: frozenset[int]) -> None:
        """Bind to ``address`` (None: embedded) unless bound; elsewhere is an error."""
        with self._lock:
            if self._where is None:
                self._where = (address, trusted)
                return
            if self._where[0] == address:
                self._provisional = False  # a session uses it here: it stays here
                return
        bound = self._where[0]
        if bound != address and self._provisional and self._spec.name is None:
            self._move(address, trusted)
        elif bound != address:
            here = "the embedded engine" if bound is None else f"the broker at {bound}"
            there = "the embedded engine" if address is None else f"the broker at {address}"
            raise RuntimeError(
                f"{self!r} keeps its cookies in {here} and cannot be used with a session "
                f"of {there}: give that session a CookieJar of its own"
            )

    def _move(self, address: str | None, trusted: frozenset[int]) -> None:
        """Take the cookies of a provisional binding to ``address``."""
        with self._lock:
            old, finalizer = self._backend, self._finalizer
            data = old.dump() if old is not None and self._pid == os.getpid() else None
            backend = _open_backend(address, trusted, self._spec)
            if data:
                backend.load(data)
            self._where, self._provisional = (address, trusted), False
            self._backend = backend
            self._finalizer = weakref.finalize(self, backend.close)
        if finalizer is not None:
            finalizer()  # frees the old jar

    def _live(self) -> _Backend:
        """The backend, opened at the first call (again in a forked child)."""
        backend = self._backend
        if backend is not None and self._pid == os.getpid():
            return backend
        return self._open()

    def _open(self) -> _Backend:
        pid = os.getpid()
        if self._pid != pid:
            # A forked child: the parent's backend and lock are the parent's.
            self._lock = threading.Lock()
            self._backend = None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
            self._pid = pid
        if self._where is None:
            address = broker_address(None)
            trusted = trusted_broker_uids() if address is not None else frozenset()
            with self._lock:
                if self._where is None:  # no session has it: where discovery says, for now
                    self._where, self._provisional = (address, trusted), True
        with self._lock:
            if self._backend is None:
                assert self._where is not None
                address, trusted = self._where
                backend = _open_backend(address, trusted, self._spec)
                self._finalizer = weakref.finalize(self, backend.close)
                self._backend = backend
            return self._backend

    # -- aiohttp's API -----------------------------------------------------------------

    @property
    def cookies(self) -> MappingProxyType[tuple[str, str], SimpleCookie]:
        """A copy of the stored cookies by (domain, path)."""
        out: dict[tuple[str, str], SimpleCookie] = {}
        for (domain, path, name), record in _records(self._live().dump(expiry=True)):
            cookie = out.get((domain, path))
            if cookie is None:
                cookie = out[(domain, path)] = SimpleCookie()
            dict.__setitem__(cookie, name, _morsel(record))
        return MappingProxyType(out)

    @property
    def host_only_cookies(self) -> frozenset[tuple[str, str, str]]:
        data = self._live().dump()
        return frozenset(key for key, record in _records(data) if record.get("host_only"))

    def update_cookies(self, cookies: LooseCookies, response_url: URL = _NO_URL) -> None:
        self._live().update(_as_pairs(cookies), URL(response_url))

    def filter_cookies(self, request_url: URL = _NO_URL) -> BaseCookie[str]:
        if type(request_url) is not URL:
            warnings.warn(
                "filter_cookies expects yarl.URL instances only,"
                f"and will stop working in 4.x, got {type(request_url)}",
                DeprecationWarning,
                stacklevel=2,
            )
            request_url = URL(request_url)
        return self._live().filter(request_url)

    def clear(self, predicate: ClearCookiePredicate | None = None) -> None:
        backend = self._live()
        if predicate is None:
            backend.delete(None)
            return
        chosen = [
            key for key, record in _records(backend.dump(expiry=True)) if predicate(_morsel(record))
        ]
        backend.delete(chosen)

    def clear_domain(self, domain: str) -> None:
        from broker.cookie_store import is_domain_match

        self.clear(lambda morsel: is_domain_match(domain, morsel["domain"]))

    def __iter__(self) -> Iterator[Morsel[str]]:
        for _, record in _records(self._live().dump(expiry=True)):
            yield _morsel(record)

    def __len__(self) -> int:
        return self._live().count()

    def save(self, file_path: str | os.PathLike[str]) -> None:
        """Write the cookies to ``file_path`` as JSON, in aiohttp's layout (a new file
        is made readable by its owner only: cookies are credentials)."""
        data = self._live().dump()
        with open(
            file_path,
            mode="w",
            encoding="utf-8",
            opener=lambda path, flags: os.open(path, flags, 0o600),
        ) as f:
            json.dump(data, f, indent=2)

    def load(self, file_path: str | os.PathLike[str]) -> None:
        """Replace the cookies with those of a JSON cookie file (``save``'s, or
        aiohttp's); a file that is not one raises ``ValueError`` and changes nothing."""
        try:
            with open(file_path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"{os.fspath(file_path)!r} is not a JSON cookie file ({exc}); "
                "http-broker never loads pickled cookie jars: load it with aiohttp "
                "and save() it again to convert it"
            ) from None
        self._live().load(data)


class DummyCookieJar(AbstractCookieJar):
    """A jar that stores nothing: a session given it sends no jar cookies."""

    def __iter__(self) -> Iterator[Morsel[str]]:
        return iter(())

    def __len__(self) -> int:
        return 0

    @property
    def unsafe(self) -> bool:
        return False

    @property
    def quote_cookie(self) -> bool:
        return True

    @property
    def cookies(self) -> MappingProxyType[tuple[str, str], SimpleCookie]:
        return MappingProxyType({})

    @property
    def host_only_cookies(self) -> frozenset[tuple[str, str, str]]:
        return frozenset()

    def clear(self, predicate: ClearCookiePredicate | None = None) -> None:
        pass

    def clear_domain(self, domain: str) -> None:
        pass

    def update_cookies(self, cookies: LooseCookies, response_url: URL = _NO_URL) -> None:
        pass

    def update_cookies_from_headers(self, headers: Sequence[str], response_url: URL) -> None:
        pass

    def filter_cookies(self, request_url: URL) -> BaseCookie[str]:
        return SimpleCookie()


# -- what ClientSession uses ------------------------------------------------------------


def check_session_jar(
    jar: AbstractCookieJar, address: str | None, trusted: frozenset[int]
) -> None:
    """Refuse a jar the broker cannot consult; pin ours to the session's location."""
    if isinstance(jar, CookieJar):
        jar._pin(address, trusted)
    elif not isinstance(jar, DummyCookieJar):
        raise TypeError(
            f"cookie_jar= must be worker_client.CookieJar or DummyCookieJar, got "
            f"{type(jar).__module__}.{type(jar).__qualname__}: the broker applies the jar "
            "at every redirect hop, where code of your own cannot run. Pass "
            "CookieJar(...) (name=... to share it between processes) or DummyCookieJar()"
        )


def request_jar(jar: AbstractCookieJar) -> tuple[bytes, CookieStore | None, JarSpec]:
    """What a request names: (token, store, spec) of the jar's backend; the token is b""
    and the store None for no jar. Makes the backend if needed (a broker's is opened
    by the first connection that needs it); a session asks once, not per request."""
    if not isinstance(jar, CookieJar):
        return b"", None, _NO_JAR
    backend = jar._live()
    return backend.token, getattr(backend, "store", None), jar._spec


def request_cookies(
    cookies: LooseCookies, jar: AbstractCookieJar, url: URL
) -> list[tuple[str, str]]:
    """A request's own ``cookies=`` as aiohttp sends them: through a temporary jar with
    the session jar's settings, filtered for ``url``. aiohttp lifts its jar caps there;
    the store's per-request caps (150 cookies, an 8190-byte header) still hold."""
    from broker.cookie_store import MAX_COOKIE_HEADER_SIZE, MAX_COOKIES, CookieStore

    store = CookieStore(
        unsafe=jar.unsafe,
        quote_cookie=jar.quote_cookie,
        treat_as_secure_origin=jar.treat_as_secure_origin,
        max_cookie_size=MAX_COOKIE_HEADER_SIZE,
        max_cookies_per_domain=MAX_COOKIES,
    )
    store.update_cookies(cookies)
    return [(m.key, m.coded_value) for m in store.filter_cookies(url).values()]
