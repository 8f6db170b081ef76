"""What both fast paths of a session (``worker_client.fast`` embedded,
``worker_client.fast_broker`` through a broker) share: which calls may take them, the
bounds of their plan caches, the switch, and the cache key of a call. No engine here:
a broker-mode worker never loads it.

A plan is cached per (method, URL, headers, params, body length) of a call, the types
of its strings included (``key``): a ``str`` subclass or an Enum member equals and
hashes like its value but may be written otherwise, so it must not find a plain
string's plan; a yarl ``URL`` with an empty path equals and hashes like the one with
"/" (its ``raw_parts`` tell them apart).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from multidict import getversion
from yarl import URL

from shared.specs import ClientTimeout

if TYPE_CHECKING:
    from .session import ClientSession

__all__ = ["BODY_MAX", "FAST_KEYS", "PLANS_MAX", "SENTINEL", "PlanCache", "enabled", "forks",
           "key", "request_timeout"]

BODY_MAX = 64 * 1024  # a bigger body goes the general way
PLANS_MAX = 64  # plans per session (the cache is emptied when full)
FAST_KEYS = frozenset(  # the only keywords a fast call may name
    ("headers", "params", "data", "timeout", "allow_redirects", "raise_for_status")
)
SENTINEL: Any = object()
forks = [0]  # bumped in a forked child: its parent's connections are not its own


def _forked() -> None:
    forks[0] += 1


os.register_at_fork(after_in_child=_forked)


def enabled() -> bool:
    """``HTTP_BROKER_FAST_PATH``: on unless 0/no/off/false (read when a session is made;
    a broker reads its own environment)."""
    value = os.environ.get("HTTP_BROKER_FAST_PATH", "1").strip().lower()
    return value not in ("0", "no", "off", "false")


def _items(value: Any) -> tuple[Any, ...]:
    """A key part for headers or params: a dict's items and their types; TypeError for
    anything else (not cached, not fast)."""
    if type(value) is dict:
        return (*value.items(), *map(type, value), *map(type, value.values()))
    raise TypeError


def key(method: str, url: Any, headers: Any, params: Any, data: bytes | None) -> tuple[Any, ...]:
    """The plan cache's key of a call; TypeError when it has none (unhashable parts)."""
    return (
        method,
        url,
        type(url),
        # a URL with no path equals and hashes as one with "/", but keeps its form
        url.raw_parts if type(url) is URL else None,
        None if headers is None else _items(headers),
        None if params is None else _items(params),
        -1 if data is None else len(data),
    )


def request_timeout(timeout: Any) -> ClientTimeout:
    """The general path's conversion of ``timeout=`` (and its error)."""
    from .session import _request_timeout  # the session imports the fast paths

    return _request_timeout(timeout)


P = TypeVar("P")


class PlanCache(Generic[P]):
    """A session's plans, as both fast paths keep them: per ``key`` of a call, at most
    ``PLANS_MAX`` (emptied when full), all dropped when the session's default headers
    change (their multidict version); None cached for a call that is not a fast one.
    A subclass makes a plan (``_make_plan``)."""

    __slots__ = ("_session", "_plans", "_version", "_forks", "requests")
    keys = FAST_KEYS  # the only keywords a fast call may name

    def __init__(self, session: ClientSession) -> None:
        self._session = session
        self._plans: dict[Any, P | None] = {}
        self._version = getversion(session._default_headers)
        self._forks = forks[0]
        self.requests = 0  # sent on the fast path: for tests and figures

    def _plan(self, method: str, url: Any, headers: Any, params: Any, data: Any) -> P | None:
        """The cached plan for this call, or None: not a fast one."""
        version = getversion(self._session._default_headers)
        if version != self._version:  # the session's headers changed: every plan too
            self._plans.clear()
            self._version = version
        try:
            k = key(method, url, headers, params, data)
            plan = self._plans.get(k, SENTINEL)
        except TypeError:  # unhashable: not cached, not fast
            return None
        if plan is SENTINEL:
            plan = self._make_plan(method, url, headers, params, data)
            if len(self._plans) >= PLANS_MAX:
                self._plans.clear()
            self._plans[k] = plan
        return plan

    def _make_plan(
        self, method: str, url: Any, headers: Any, params: Any, data: Any
    ) -> P | None:
        raise NotImplementedError
