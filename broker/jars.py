"""The broker's cookie jars: which stores exist, who may use them, and the jar calls.

How this works. A worker names a jar by a 16-byte token it drew, and opens it with
``JarOpen`` on any of its connections to the broker: pipelined before the first request
that names it (its asyncio connection), or before a jar call (its jar channel). The
table keys a token by the pid of the process that opened it, (peer pid, token): a call
or a request finds a jar only under its own process's pid, so one worker can never name
another's jar, and a forked child that opens the tokens it inherited gets jars of its
own. The process owns its tokens (``owner`` is its pid): opening a token again with the
same spec is a no-op, ``JarClose`` forgets one, and when the process's last connection
goes and the process is gone too (the server watches its pid; ``drop_owner``) its tokens
go, and with them its unnamed jars. A named spec
(``JarSpec.name``) is the group's jar: every token opened with an equal spec names the
same store, which lives as long as the broker (and is what the cookie file keeps).

``apply`` is the one place that answers a jar call: a table from message type to
handler, each returning the replies. Anything wrong (an unknown token, a cap, bad data,
even a bug in the store) becomes a ``JarFailed``; nothing here closes a connection.

A load in pieces (``JarLoad`` with ``last`` false) is staged in a fresh store and
replaces the jar's contents at the piece with ``last``. After a refused piece, the
following pieces of that load are refused too, up to its ``last`` (a worker sends the
pieces without waiting for each answer).

Bounds (all written here):

- Named jars: at most ``MAX_NAMED_JARS`` (64) distinct specs for the broker's life;
  over it ``JarOpen`` fails and says so.
- Tokens: at most ``max_jars`` (``Limits.max_jars``, 1024) per worker process, named
  ones included.
- A store: ``CookieStore``'s caps (3300 cookies; a cookie at most 4 KiB of name and
  value, 16 KiB coded, 1 KiB per attribute).
- Staged loads: one per connection (a new load drops the one staged; a piece that finds
  none of its load is refused), a fresh store under the same caps.
- One call's frame: at most ``MAX_JAR_RECORDS`` (4096) cookies or keys (``JarUpdate``,
  ``JarDelete`` by their types; a ``JarLoad`` piece's cookies and entries checked
  here), so one frame holds the loop for tens of milliseconds at most.
- Refused opens remembered: the latest ``MAX_REFUSALS`` (64), a message each.
- ``JarData`` pieces: records of about ``PIECE_SIZE`` (1 MiB) encoded, far below
  ``MAX_FRAME`` (4 MiB) since one record is at most about 30 KiB.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Hashable, Iterable
from dataclasses import dataclass
from logging import ERROR
from typing import Any

import msgspec
from yarl import URL

from shared.messages import (
    MAX_JAR_RECORDS,
    CookieData,
    JarClose,
    JarCookies,
    JarCount,
    JarData,
    JarDelete,
    JarDone,
    JarDump,
    JarFailed,
    JarFigures,
    JarFilter,
    JarLoad,
    JarOpen,
    JarUpdate,
    Message,
)
from shared.specs import JarSpec

from .cookie_store import CookieStore
from .logs import event

__all__ = [
    "JAR_CALLS", "MAX_NAMED_JARS", "PIECE_SIZE", "JarTable", "UNKNOWN_JAR",
    "jar_figures", "split_cookie_data",
]

log = logging.getLogger("broker.jars")

MAX_NAMED_JARS = 64
PIECE_SIZE = 1 << 20
MAX_REFUSALS = 64
"""Refused ``JarOpen``s remembered (the latest), so that a request naming one says why."""
UNKNOWN_JAR = (
    "no cookie jar is open under this token in this worker process (it was closed, "
    "or it belongs to another process)"
)

_encode = msgspec.msgpack.Encoder().encode
_JarKey = tuple[int, bytes]  # (peer pid, token)


def split_cookie_data(data: CookieData, budget: int = PIECE_SIZE) -> list[CookieData]:
    """``data`` in pieces of about ``budget`` bytes of encoded records each, and at most
    ``MAX_JAR_RECORDS`` records and entries (a "domain|path" entry may be spread over
    several); at least one piece."""
    pieces: list[CookieData] = []
    piece: CookieData = {}
    size = count = 0
    for compound, records in data.items():
        if piece and count + 1 >= MAX_JAR_RECORDS:
            pieces.append(piece)
            piece, size, count = {}, 0, 0
        piece.setdefault(compound, {})  # an empty entry is checked all the same
        count += 1
        for name, record in records.items():
            length = len(_encode((compound, name, record)))
            if piece and (size + length > budget or count >= MAX_JAR_RECORDS):
                pieces.append(piece)
                piece, size, count = {compound: {}}, 0, 1
            piece[compound][name] = record
            size += length
            count += 1
    pieces.append(piece)
    return pieces


class _Refused(Exception):
    """A jar call refused for a reason other than bad data."""


@dataclass
class _Jar:
    spec: JarSpec
    store: CookieStore
    owner: Hashable


@dataclass
class _Staged:
    key: _JarKey
    store: CookieStore | None  # None: a piece was refused
    problem: str = ""


def _count(store: CookieStore) -> int:
    store.expire()
    return len(store)


class JarTable:
    """The jars of one broker; ``owner`` is a worker process (its pid; any hashable)."""

    def __init__(
        self,
        *,
        max_jars: int = 1024,
        max_named: int = MAX_NAMED_JARS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_jars = max_jars
        self.max_named = max_named
        self._clock = clock
        self.named: dict[JarSpec, CookieStore] = {}
        self._jars: dict[_JarKey, _Jar] = {}
        self._owned: dict[Hashable, set[_JarKey]] = {}
        self._staged: dict[Hashable, _Staged] = {}
        self._refusals: dict[_JarKey, str] = {}  # the latest refused opens, for requests
        self.on_change: Callable[[], None] | None = None
        """Called when a named jar changes (the cookie file saves then)."""

    def __repr__(self) -> str:
        return (
            f"<JarTable {len(self._jars)} open, {len(self.named)} named, "
            f"{len(self._owned)} owners>"
        )

    # -- requests and connections -----------------------------------------------------

    def find(self, token: bytes, pid: int) -> CookieStore | None:
        """The store ``token`` names for a request of process ``pid``; None: refuse it."""
        jar = self._jars.get((pid, token))
        return jar.store if jar is not None else None

    def refusal(self, token: bytes, pid: int) -> str | None:
        """Why opening ``token`` was refused, if it was lately: the requests that name it
        (its JarOpen was pipelined before them, unanswered) fail with this."""
        return self._refusals.get((pid, token))

    def _note_refusal(self, key: _JarKey, message: str) -> None:
        self._refusals[key] = message
        while len(self._refusals) > MAX_REFUSALS:
            del self._refusals[next(iter(self._refusals))]

    def owns(self, owner: Hashable) -> bool:
        """Whether ``owner`` has a token open."""
        return bool(self._owned.get(owner))

    def drop_owner(self, owner: Hashable) -> None:
        """``owner`` (a process) has no connection left: its tokens go, and its unnamed
        jars with them."""
        for key in self._owned.pop(owner, ()):
            del self._jars[key]
        self._staged.pop(owner, None)

    def drop_connection(self, via: Hashable) -> None:
        """The connection ``via`` closed: a load it was sending is dropped."""
        self._staged.pop(via, None)

    # -- the calls ----------------------------------------------------------------------

    def apply(
        self, owner: Hashable, pid: int, msg: Any, via: Hashable | None = None
    ) -> list[Message]:
        """The replies to the jar call ``msg`` from ``owner``, of process ``pid``, that
        came on the connection ``via`` (a load is staged per connection, whose frames
        come in order; by default per owner)."""
        handler = _CALLS[type(msg)]
        try:
            if handler is JarTable._load and via is not None:
                return handler(self, via, pid, msg)
            return handler(self, owner, pid, msg)
        except _Refused as exc:
            if type(msg) is JarOpen:
                self._note_refusal((pid, msg.jar), str(exc))
            return [JarFailed(msg.call, str(exc))]
        except ValueError as exc:
            return [JarFailed(msg.call, str(exc), invalid=True)]
        except Exception as exc:  # a bug here costs the call, not the connection
            event(log, ERROR, "jar_call_failed", call=type(msg).__name__, exc_info=exc)
            call = getattr(msg, "call", None)
            if call is None:
                return []
            return [JarFailed(call, f"the broker failed: {type(exc).__name__}: {exc}")]

    def _store(self, pid: int, token: bytes) -> CookieStore:
        jar = self._jars.get((pid, token))
        if jar is None:
            raise _Refused(UNKNOWN_JAR)
        return jar.store

    def _open(self, owner: Hashable, pid: int, msg: JarOpen) -> list[Message]:
        key = (pid, msg.jar)
        jar = self._jars.get(key)
        if jar is not None:
            if jar.spec != msg.spec:
                raise _Refused("this process has a jar with other settings under that token")
            if jar.owner != owner:
                self._check_room(owner)
                self._owned[jar.owner].discard(key)
                self._owned.setdefault(owner, set()).add(key)
                jar.owner = owner
            return [JarDone(msg.call, _count(jar.store))]
        self._check_room(owner)
        spec = msg.spec
        store = self._named(spec) if spec.name is not None else self._new_store(spec)
        self._jars[key] = _Jar(spec, store, owner)
        self._owned.setdefault(owner, set()).add(key)
        return [JarDone(msg.call, _count(store))]

    def _check_room(self, owner: Hashable) -> None:
        held = len(self._owned.get(owner, ()))
        if held >= self.max_jars:
            raise _Refused(
                f"this worker has {held} cookie jars open on the broker, its cap "
                f"(limits.max_jars); close jars (or let them be garbage-collected)"
            )

    def _new_store(self, spec: JarSpec) -> CookieStore:
        try:
            return CookieStore(
                unsafe=spec.unsafe,
                quote_cookie=spec.quote_cookie,
                treat_as_secure_origin=spec.treat_as_secure_origin,
                clock=self._clock,
            )
        except ValueError as exc:
            raise ValueError(
                f"treat_as_secure_origin {list(spec.treat_as_secure_origin)!r}: {exc}"
            ) from None

    def _named(self, spec: JarSpec) -> CookieStore:
        store = self.named.get(spec)
        if store is None:
            if len(self.named) >= self.max_named:
                raise _Refused(
                    f"the broker already has {len(self.named)} named cookie jars, its cap; "
                    "reuse names (equal arguments name the same jar)"
                )
            store = self.named[spec] = self._new_store(spec)
            store.on_change = self._named_changed
            self._named_changed()
        return store

    def _named_changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _close(self, owner: Hashable, pid: int, msg: JarClose) -> list[Message]:
        jar = self._jars.pop((pid, msg.jar), None)
        if jar is not None:
            self._owned[jar.owner].discard((pid, msg.jar))
            for stager, staged in list(self._staged.items()):  # one per connection
                if staged.key == (pid, msg.jar):
                    del self._staged[stager]
        return []

    def _update(self, owner: Hashable, pid: int, msg: JarUpdate) -> list[Message]:
        store = self._store(pid, msg.jar)
        store.update_records(msg.cookies, URL(msg.url))
        return [JarDone(msg.call, _count(store))]

    def _filter(self, owner: Hashable, pid: int, msg: JarFilter) -> list[Message]:
        cookies = self._store(pid, msg.jar).filter_cookies(URL(msg.url))
        return [JarCookies(msg.call, [(n, m.value, m.coded_value) for n, m in cookies.items()])]

    def _count(self, owner: Hashable, pid: int, msg: JarCount) -> list[Message]:
        return [JarDone(msg.call, _count(self._store(pid, msg.jar)))]

    def _dump(self, owner: Hashable, pid: int, msg: JarDump) -> list[Message]:
        pieces = split_cookie_data(self._store(pid, msg.jar).dump(msg.expiry))
        last = len(pieces) - 1
        return [JarData(msg.call, piece, more=i < last) for i, piece in enumerate(pieces)]

    def _load(self, stager: Hashable, pid: int, msg: JarLoad) -> list[Message]:
        key = (pid, msg.jar)
        store = self._store(pid, msg.jar)
        size = len(msg.data) + sum(len(records) for records in msg.data.values())
        if size > MAX_JAR_RECORDS:
            raise ValueError(
                f"a JarLoad piece holds at most {MAX_JAR_RECORDS} cookies and entries"
            )
        staged = self._staged.get(stager)
        if msg.first:
            staged = self._staged[stager] = _Staged(key, store.empty_copy())
        elif staged is None or staged.key != key:
            raise ValueError(
                "the earlier pieces of this load are gone (another load on this connection, "
                "or the jar's close, dropped them)"
            )
        if msg.last:
            del self._staged[stager]
        if staged.store is None:
            raise ValueError(f"an earlier piece of this load was refused: {staged.problem}")
        try:
            staged.store.add_records(msg.data)
        except ValueError as exc:
            staged.store, staged.problem = None, str(exc)
            raise
        if msg.last:
            store.replace_with(staged.store)
        return [JarDone(msg.call, _count(staged.store))]

    def _delete(self, owner: Hashable, pid: int, msg: JarDelete) -> list[Message]:
        store = self._store(pid, msg.jar)
        if msg.keys is None:
            store.clear()
        else:
            store.delete(msg.keys)
        return [JarDone(msg.call, _count(store))]

    # -- the named jars, for the cookie file -------------------------------------------------

    def restore(self, jars: list[tuple[JarSpec, CookieData]]) -> None:
        """Make the named jars of a saved document: all of them, or none (``ValueError``
        from the first bad one; nothing changes then)."""
        if len(jars) > self.max_named:
            raise ValueError(f"{len(jars)} named jars, over the cap of {self.max_named}")
        stores: dict[JarSpec, CookieStore] = {}
        for spec, data in jars:
            if spec.name is None or spec in stores:
                raise ValueError(f"jar {spec.name!r}: unnamed, or saved twice")
            store = stores[spec] = self._new_store(spec)
            try:
                store.load(data)
            except ValueError as exc:
                raise ValueError(f"jar {spec.name!r}: {exc}") from None
        for spec, store in stores.items():
            store.on_change = self._named_changed
            self.named[spec] = store

    def named_contents(self) -> list[tuple[JarSpec, CookieData]]:
        """Every named jar's spec and contents (fresh data, safe to hand to a thread)."""
        return [(spec, store.dump()) for spec, store in self.named.items()]

    # -- figures ------------------------------------------------------------------------------

    def figures(self) -> list[JarFigures]:
        """One entry per named jar, and one for all the unnamed jars together."""
        tokens: dict[JarSpec, int] = {}
        unnamed: dict[int, CookieStore] = {}
        for jar in self._jars.values():
            if jar.spec.name is not None:
                tokens[jar.spec] = tokens.get(jar.spec, 0) + 1
            else:
                unnamed[id(jar.store)] = jar.store
        named = ((spec, store, tokens.get(spec, 0)) for spec, store in self.named.items())
        return jar_figures(named, unnamed.values())


def jar_figures(
    named: Iterable[tuple[JarSpec, CookieStore, int]], unnamed: Collection[CookieStore]
) -> list[JarFigures]:
    """``Stats.jars``: each named jar (its spec, cookies, and the jar objects open on
    it), then the unnamed jars together (how many, and their cookies). Both modes."""
    out: list[JarFigures] = [
        {
            "name": spec.name,
            "unsafe": spec.unsafe,
            "quote_cookie": spec.quote_cookie,
            "treat_as_secure_origin": list(spec.treat_as_secure_origin),
            "cookies": len(store),
            "open": opened,
        }
        for spec, store, opened in named
    ]
    out.append(
        {"name": None, "jars": len(unnamed), "cookies": sum(len(s) for s in unnamed)}
    )
    return out


_Handler = Callable[[JarTable, Hashable, int, Any], list[Message]]
_CALLS: dict[type, _Handler] = {
    JarOpen: JarTable._open,
    JarClose: JarTable._close,
    JarUpdate: JarTable._update,
    JarFilter: JarTable._filter,
    JarCount: JarTable._count,
    JarDump: JarTable._dump,
    JarLoad: JarTable._load,
    JarDelete: JarTable._delete,
}
JAR_CALLS = frozenset(_CALLS)
