"""A request as a chain of hops, and the redirect policy that links them (pure).

A ``Hop`` is one HTTP exchange's worth of request: method, URL, headers and body. The
first hop is the worker's request; ``follow(hop, status, location)`` computes the next
one from a redirect response, with aiohttp's rules:

- 303 (except for HEAD), and 301/302 after a POST, become a GET without a body;
- 307/308 keep the method and the body (a streamed body must then be sent again:
  ``Hop.streamed`` on the next hop tells the engine to ask the worker for it);
- a relative Location is joined to the current URL; a non-http(s) one is refused, and
  so is one unfit for a request line (control bytes, spaces, a bad host);
- across origins, Authorization, Cookie and Proxy-Authorization are dropped, and so are
  the request's own ``cookies=`` (``Hop.cookies``), for good: aiohttp does not send them
  again even if a later hop comes back.

The jar's cookies are not part of a hop: the engine asks the jar afresh for each hop's
URL (``broker.cookie_header``). TLS and proxy choices plug in here as more fields of the
hop; the engine only carries hops out.
"""

from __future__ import annotations

from yarl import URL

from shared.rules import url_problem

from .failures import ConnectionFailure

__all__ = ["Hop", "REDIRECTS", "follow", "redirect_location"]

REDIRECTS = frozenset((301, 302, 303, 307, 308))
_CROSS_ORIGIN_DROP = frozenset(("authorization", "cookie", "proxy-authorization"))


class Hop:
    """One exchange's request. ``body`` is sent whole; ``streamed`` means the body comes
    from the worker as a stream instead."""

    __slots__ = ("method", "url", "headers", "body", "streamed", "cookies")

    def __init__(
        self,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        body: bytes | None = None,
        streamed: bool = False,
        cookies: list[tuple[str, str]] | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.streamed = streamed
        self.cookies = cookies or []  # the request's own cookies=: (name, coded value)

    def __repr__(self) -> str:
        body = "streamed" if self.streamed else f"{len(self.body or b'')} bytes"
        return f"<Hop {self.method} {self.url} {body}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Hop):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in Hop.__slots__)

    __hash__ = None  # type: ignore[assignment]


def redirect_location(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """Where a redirect response points (``Location``, else the old ``URI``), if anywhere."""
    location = uri = None
    for name, value in headers:
        lname = name.lower()
        if lname == b"location" and location is None:
            location = value
        elif lname == b"uri" and uri is None:
            uri = value
    return location or uri or None


def follow(hop: Hop, status: int, location: bytes, requote: bool = True) -> Hop:
    """The hop after ``hop`` got a redirect ``status`` to ``location`` (requoted, or
    taken as already encoded: aiohttp's ``requote_redirect_url``).

    Raises ``ConnectionFailure`` when the location is not a usable http(s) URL."""
    method, body, streamed, headers = hop.method, hop.body, hop.streamed, hop.headers
    cookies = hop.cookies
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method = "GET"
        body = None
        streamed = False
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
    url = hop.url
    r_url = location.decode("utf-8", "surrogateescape")
    try:
        target = URL(r_url, encoded=not requote)
    except ValueError:
        raise ConnectionFailure(
            "invalid_redirect",
            "Server attempted redirecting to a location that does not look like a URL",
            url=r_url,
        ) from None
    if target.scheme not in ("http", "https", ""):
        raise ConnectionFailure("non_http_redirect", r_url, url=r_url)
    if not target.scheme or (target.scheme == url.scheme and not target.raw_host):
        target = url.join(target)
    try:
        origin = target.origin()
    except ValueError:
        raise ConnectionFailure(
            "invalid_redirect", "Invalid redirect URL origin", url=str(target)
        ) from None
    problem = url_problem(target)  # a server is trusted no more than a worker
    if problem is not None:
        raise ConnectionFailure("invalid_redirect", problem, url=str(target))
    if url.origin() != origin:
        headers = [(k, v) for k, v in headers if k.lower() not in _CROSS_ORIGIN_DROP]
        cookies = []
    return Hop(method, target, headers, body, streamed, cookies)
