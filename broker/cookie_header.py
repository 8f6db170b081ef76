"""A hop's ``Cookie`` request header, as aiohttp 3.14's ``ClientRequest.update_cookies``
writes it (pure).

The cookies of a hop come from three places: a ``Cookie`` header the caller set, the
jar's choice for the hop's URL, and the request's own ``cookies=``. When the jar and the
request add nothing, the caller's header goes out untouched. Otherwise one header is
written: the caller's pairs, then the jar's, then the request's, a later one replacing
an earlier one of the same name, sorted by name (``SimpleCookie.output`` sorts), and it
goes last among the headers.
"""

from __future__ import annotations

from collections.abc import Iterable
from http.cookies import BaseCookie

from .cookie_store import parse_cookie_header

__all__ = ["with_cookies"]


def with_cookies(
    headers: list[tuple[str, str]],
    jar_cookies: BaseCookie[str] | None,
    request_cookies: Iterable[tuple[str, str]],
) -> list[tuple[str, str]]:
    """``headers`` with the hop's ``Cookie`` header written, or ``headers`` itself when
    the jar and the request add no cookie."""
    added: dict[str, str] = {}
    if jar_cookies:
        for name, morsel in jar_cookies.items():
            added[name] = morsel.coded_value
    for name, coded in request_cookies:
        added.pop(name, None)
        added[name] = coded
    if not added:
        return headers
    merged: dict[str, str] = {}
    kept: list[tuple[str, str]] = []
    explicit: str | None = None
    for name, value in headers:
        if name.lower() == "cookie":
            if explicit is None:
                explicit = value
        else:
            kept.append((name, value))
    if explicit is not None:
        merged.update(parse_cookie_header(explicit))
    merged.update(added)
    kept.append(("Cookie", "; ".join(f"{k}={merged[k]}" for k in sorted(merged))))
    return kept
