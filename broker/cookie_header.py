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

import re
from collections.abc import Iterable
from http.cookies import BaseCookie

__all__ = ["parse_cookie_header", "with_cookies"]

_NAME_RE = re.compile(r"^[!#$%&\'()*+\-./0-9:<=>?@A-Z\[\]^_`a-z{|}~]+$")
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


def parse_cookie_header(header: str) -> list[tuple[str, str]]:
    """The (name, value as sent) pairs of a ``Cookie`` header, RFC 6265 5.4 as aiohttp
    reads it: pairs only (``path`` or ``secure`` are names like any other), quoted values
    kept whole, a pair with a bad name skipped, a malformed pair read up to its ``;``
    so that the pairs after it survive."""
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
