"""What one worker connection told the broker once, or had checked once.

How this works. A worker names its pools and timeouts by small ids (``PoolOpen``,
``TimeoutOpen``: ``shared.messages``) instead of sending them with every request;
``SpecIds`` is one connection's id -> spec table, with the cap of distinct pool specs
(``Limits.max_pool_specs``) that inline specs and ``ClearDNS`` count against too.
``Checked`` remembers the URLs and header lists of this connection's requests that
passed ``engine._checked``: strings are immutable, so an equal string was checked
already, and a hit costs a hash instead of a parse and a regex per header.

Bounds, per connection: ``max_pools`` pool specs of at most ``MAX_POOL_SPEC`` (16 KiB)
opened by id, as many ids (one spec under several ids counts each time; 4 MiB at
the default 256; an inline spec is counted, and kept for the cap as before);
``max_timeouts`` (64) timeouts; ``CHECKED_URLS`` (128) URLs of at most
``CHECKED_URL_LENGTH`` (1,024) characters and ``CHECKED_HEADERS`` (64) header lists of
at most ``CHECKED_HEADERS_LENGTH`` (2,048) characters together (a pair counted as
``PAIR``, 64, more: its tuple), and ``CHECKED_HEADS``
(64) request heads of the fast path (``server._FastStart``) of at most
``CHECKED_HEAD_LENGTH`` (4 KiB), as their keys' URL and headers together, about
700 KiB at worst with the parsed URLs; a
longer URL, list or head is checked or built every time, and a full table starts
afresh.
"""

from __future__ import annotations

from yarl import URL

from shared.messages import Request
from shared.specs import ClientTimeout

from .exchange import build_head
from .failures import ConnectionFailure

__all__ = [
    "CHECKED_HEADERS", "CHECKED_HEADERS_LENGTH", "CHECKED_HEADS", "CHECKED_HEAD_LENGTH",
    "CHECKED_URLS", "CHECKED_URL_LENGTH",
    "Checked", "SpecIds",
]

CHECKED_URLS = 128
CHECKED_URL_LENGTH = 1024
CHECKED_HEADERS = 64
CHECKED_HEADERS_LENGTH = 2048
CHECKED_HEADS = 64
CHECKED_HEAD_LENGTH = 4096
PAIR = 64  # what a header pair costs beyond its characters (its tuple), counted as many

Headers = tuple[tuple[str, str], ...]
HeadKey = tuple[str, str, Headers, int | None, bool, bool]


class SpecIds:
    """The pool specs and timeouts one worker connection opened, by id."""

    __slots__ = ("max_pools", "max_timeouts", "pools", "timeouts", "specs", "_refused")

    def __init__(self, max_pools: int, max_timeouts: int) -> None:
        self.max_pools = max_pools
        self.max_timeouts = max_timeouts
        self.pools: dict[int, bytes] = {}
        self.timeouts: dict[int, ClientTimeout] = {}
        self.specs: set[bytes] = set()  # every distinct (encoded) pool spec named, for the cap
        self._refused = [False, False]  # a pool, a timeout was refused for the caps

    def __repr__(self) -> str:
        return (
            f"<SpecIds {len(self.specs)}/{self.max_pools} pool specs, "
            f"{len(self.timeouts)}/{self.max_timeouts} timeouts>"
        )

    def admit(self, spec: bytes) -> bool:
        """Whether this worker may use ``spec``: one it used before, or one more under
        its cap of distinct specs."""
        specs = self.specs
        if spec in specs:
            return True
        if len(specs) >= self.max_pools:
            return False
        specs.add(spec)
        return True

    def open_pool(self, sid: int, spec: bytes) -> None:
        """Record ``spec`` under ``sid``; ValueError if the id is open already. Over
        the cap it is not kept: the requests naming it fail (``pool``)."""
        if sid in self.pools:
            raise ValueError(f"PoolOpen: pool id {sid} is open already on this connection")
        # ids are capped as specs are: many ids for one spec would each keep its bytes
        if len(self.pools) < self.max_pools and self.admit(spec):
            self.pools[sid] = spec
        else:
            self._refused[0] = True

    def open_timeout(self, sid: int, timeout: ClientTimeout) -> None:
        if sid in self.timeouts:
            raise ValueError(f"TimeoutOpen: timeout id {sid} is open already on this connection")
        if len(self.timeouts) < self.max_timeouts:
            self.timeouts[sid] = timeout
        else:
            self._refused[1] = True

    def pool(self, sid: int) -> bytes:
        """The spec a request names; ``ConnectionFailure`` (``broker`` once one was
        refused for the cap, ``protocol`` for an id never opened)."""
        spec = self.pools.get(sid)
        if spec is None:
            raise self._unknown(0, "pool", sid)
        return spec

    def timeout(self, sid: int) -> ClientTimeout:
        timeout = self.timeouts.get(sid)
        if timeout is None:
            raise self._unknown(1, "timeout", sid)
        return timeout

    def over_specs(self) -> str:
        return (
            f"this worker already named {len(self.specs)} distinct connection pools "
            f"(connector settings), the broker's cap (limits.max_pool_specs); reuse "
            f"connectors instead of making new ones"
        )

    def _unknown(self, which: int, kind: str, sid: int) -> ConnectionFailure:
        if self._refused[which]:
            if which == 0:
                return ConnectionFailure("broker", self.over_specs())
            return ConnectionFailure(
                "broker",
                f"this worker already opened {self.max_timeouts} timeouts, the broker's "
                "cap (limits.max_timeouts)",
            )
        return ConnectionFailure(
            "protocol", f"the request names {kind} id {sid}, never opened on this connection"
        )


class Checked:
    """URLs (with their parsed form) and header lists that passed the broker's checks
    on this connection, and the request heads built for them (see the module's
    docstring for the bounds)."""

    __slots__ = ("urls", "headers", "heads")

    def __init__(self) -> None:
        self.urls: dict[str, URL] = {}
        self.headers: set[Headers] = set()
        self.heads: dict[HeadKey, bytes] = {}

    def __repr__(self) -> str:
        return f"<Checked {len(self.urls)} URLs, {len(self.headers)} header lists>"

    def keep_url(self, text: str, url: URL) -> None:
        if len(text) > CHECKED_URL_LENGTH:
            return
        if len(self.urls) >= CHECKED_URLS:
            self.urls.clear()
        self.urls[text] = url

    def head(self, req: Request, url: URL, force_close: bool) -> bytes:
        """The head of ``req`` (a fast-path kind: ``server._fast_kind``) to ``url`` as
        ``exchange.build_head`` writes it, built once per distinct request."""
        body = req.body
        length = None if body is None else len(body)
        key = (req.method, req.url, tuple(req.headers), length, req.skip_host, force_close)
        head = self.heads.get(key)
        if head is None:
            head = build_head(
                req.method, url, req.headers, length, False, req.skip_host, (1, 1), force_close
            )
            # the key's size, not the head's: a URL's fragment or userinfo and the
            # headers a head leaves out are in the key only
            if len(head) <= CHECKED_HEAD_LENGTH and len(req.url) + _size(key[2]) <= (
                CHECKED_HEAD_LENGTH
            ):
                if len(self.heads) >= CHECKED_HEADS:
                    self.heads.clear()
                self.heads[key] = head
        return head

    def keep_headers(self, headers: Headers) -> None:
        if _size(headers) > CHECKED_HEADERS_LENGTH:
            return
        if len(self.headers) >= CHECKED_HEADERS:
            self.headers.clear()
        self.headers.add(headers)


def _size(headers: Headers) -> int:
    """A header list's size as the bounds count it: its characters, and ``PAIR`` for
    each pair (a tuple of its own, however short its strings)."""
    return sum(len(name) + len(value) for name, value in headers) + PAIR * len(headers)
