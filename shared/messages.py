"""The messages that cross the worker <-> broker socket.

Every message is a frozen, tagged ``msgspec.Struct`` encoded as a MessagePack array (the
tag first), so the union below decodes with one typed decoder and anything else is a
decode error. A stream is one request: the worker picks its id, odd and increasing.

worker -> broker: Hello (or Claim), TlsOpen, PoolOpen, TimeoutOpen, Request,
                  Data/Slot/End (a streamed request body), Ack, Release, Cancel,
                  ClearDNS, StatsRequest, the jar calls (JarOpen, JarClose, JarUpdate,
                  JarFilter, JarCount, JarDump, JarLoad, JarDelete)
broker -> worker: Welcome (or Granted), TraceEvent, Head (with the whole body, when
                  small), Data/Slot/End (the response body), Ack, Release, Rewind,
                  Failure, ErrorFrame, Stats, the jar replies (JarDone, JarCookies,
                  JarData, JarFailed)

Jar calls are answered in order, one reply each (a ``JarDump`` may answer with several
``JarData``, the last with ``more=False``; ``JarClose`` is not answered). A jar is named
by a 16-byte token that the worker draws at random and opens with ``JarOpen``: it belongs
to the connection that opened it, and requests of the same worker process (any of its
connections) name it in ``Request.jar``.

Pools and timeouts are registered once per connection and named by small ids:
``PoolOpen(id, pool)`` and ``TimeoutOpen(id, timeout)`` before the first ``Request`` whose
``pool_id``/``timeout_id`` names them (not answered: frames are ordered). Id 0 names the
``Request``'s own ``pool``/``timeout`` fields (the defaults unless given), which a worker
uses when its table is full (at most ``MAX_TIMEOUT_IDS`` timeouts) or a spec is too
large to keep (``MAX_POOL_SPEC``).

A small response goes in one frame: a ``Head`` with ``body`` (not None) is the head, the
whole body and the ``End`` (its ``raw``) together.

Flow control is by credit: the sender of a body may have at most ``STREAM_WINDOW`` bytes
of ``Data`` unacknowledged on a stream; the receiver sends ``Ack(stream, n)`` once its
reader has consumed n bytes. An ``Ack`` for more than was sent unacknowledged is a
protocol error, and so is ``Data`` beyond the credit (the broker enforces both).

Shared memory (``shared.arena``): a worker that asks in its ``Hello`` may get two arenas
with the ``Welcome``; a ``Slot`` then stands for a ``Data`` whose bytes are in the
sender's arena, given back with ``Release`` (docs/protocol.md, "Shared memory").

Upgrades (``Request.upgrade``, a WebSocket's handshake; version 6): the request has
``streamed`` set, no ``body`` and no ``chunked`` (else it fails with ``protocol``); its
head goes with no body framing. A final ``101`` answer's ``Head`` is followed by every
byte the origin sends after it, as the response body (``Data``/``Slot``, the usual
credit), until the origin closes (``End``); the worker's ``Data``/``Slot`` go to the
origin as they are (credit and ``Ack`` as for a streamed request body). A ``Cancel`` (or
the worker's death) closes the upstream connection, after a masked CLOSE frame with code
1001 if the worker sent none and its bytes stand at a frame boundary; the worker's End
closes it once what the worker sent is written. Any other final status is an ordinary
response. With ``Request.handover`` as well, a plain socket goes to the worker instead:
the 101's ``Head.handover`` is a token, which the worker claims on a connection of its
own (``Claim``, answered by ``Granted`` with the descriptor; docs/protocol.md).

Numbers a peer sends are range-checked as they decode (``Annotated`` bounds below): a
value out of range makes the frame malformed.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import msgspec

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # 3.10's TypedDict does not know NotRequired
    from typing_extensions import NotRequired, TypedDict

from .errors import ErrorCode
from .specs import DEFAULT_POOL_BYTES, DEFAULT_TIMEOUT, ClientTimeout, JarSpec, PoolSpec, TlsSpec

PROTOCOL_VERSION = 6
STREAM_WINDOW = 1 << 20
MAX_TIMEOUT_IDS = 64
"""Timeouts a worker opens per connection (``TimeoutOpen``); more go inline."""
MAX_POOL_SPEC = 16 * 1024
"""The largest encoded ``PoolSpec`` a ``PoolOpen`` carries; a larger one goes inline."""

RawHeaders = list[tuple[bytes, bytes]]

StreamId = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
Count = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
# One acknowledgement is for bytes already sent: far below this, which only rules out
# the absurd before the broker checks it against what it sent.
AckSize = Annotated[int, msgspec.Meta(ge=0, le=1 << 32)]
SlotNo = Annotated[int, msgspec.Meta(ge=0, le=1 << 32)]
MAX_RELEASE = 1 << 16  # slot references in one Release frame
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
# The head limits a request may ask for (aiohttp's max_line_size, max_field_size,
# max_headers): the broker caps a whole head at HEAD_LIMIT_MAX bytes whatever they are.
HEAD_LIMIT_MAX = 256 * 1024
HEADERS_LIMIT_MAX = 16384
HeadLimit = Annotated[int, msgspec.Meta(ge=1, le=HEAD_LIMIT_MAX)]
HeaderCount = Annotated[int, msgspec.Meta(ge=1, le=HEADERS_LIMIT_MAX)]
JarToken = Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
TlsId = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
NoTls = Annotated[bytes, msgspec.Meta(max_length=32)]  # a TlsId, or b"": the default
Fingerprint = Annotated[bytes, msgspec.Meta(max_length=32)]  # a SHA-256 digest, or b""
MAX_PROXY_ROUTE = 64 * 1024
NoJar = Annotated[bytes, msgspec.Meta(max_length=16)]  # a JarToken, or b"": no jar
SpecId = Annotated[int, msgspec.Meta(ge=1, le=(1 << 31) - 1)]
NoSpecId = Annotated[int, msgspec.Meta(ge=0, le=(1 << 31) - 1)]  # a SpecId, or 0: inline
CookieRecord = dict[str, str | bool | float]
"""One cookie as aiohttp's JSON cookie file keeps it: ``key``, ``value``,
``coded_value``, its attributes (``path``, ``domain``, ``secure``...), and for a stored
cookie ``host_only`` and ``expires_timestamp``."""
CookieData = dict[str, dict[str, CookieRecord]]
"""A jar's contents in the cookie file's layout: ``{"domain|path": {name: record}}``."""
MAX_JAR_RECORDS = 4096
"""Cookies (or keys) in one jar call's frame, a little over what a jar keeps (3300): the
broker's loop handles one frame's worth at a time (about 50 ms at most)."""


class _Msg(msgspec.Struct, frozen=True, array_like=True, tag=True, omit_defaults=True):
    pass


class Hello(_Msg, tag="hello", frozen=True):
    version: Count
    pid: Count
    shm: bool = False  # the worker would take bodies through shared memory


class Welcome(_Msg, tag="welcome", frozen=True):
    """With ``slot_size``, the broker passed two arena descriptors along with this
    frame (down, then up: ``shared.arena``), of ``down_slots`` and ``up_slots`` slots;
    without, bodies travel inline only."""

    version: int
    pid: int
    slot_size: Count = 0
    down_slots: Count = 0
    up_slots: Count = 0


class Request(_Msg, tag="req", frozen=True):
    """One request. ``url`` is absolute and already encoded; ``headers`` are final
    except for the per-hop ones the broker adds (Host, Content-Length or
    Transfer-Encoding). With ``streamed`` the body follows as Data frames and an End;
    ``replayable`` says the worker can send it again when asked (``Rewind``).
    ``pool_id``/``timeout_id``: a pool spec and a timeout opened before on this
    connection (``PoolOpen``, ``TimeoutOpen``); 0: the ``pool``/``timeout`` fields. On
    the wire, ``pool`` b"" and ``timeout`` nil stand for the id's, or else the default:
    a request naming its settings by id carries three bytes for them, and the broker
    decodes no ``ClientTimeout`` per request (``RequestFrame``). As in every message,
    trailing fields may be left out at their defaults: the common request is its first
    six fields (``IPCTransport``), whatever comes after them."""

    stream: StreamId
    method: str
    url: str
    headers: list[tuple[str, str]] = []
    pool_id: NoSpecId = 0
    timeout_id: NoSpecId = 0
    body: bytes | None = None
    streamed: bool = False
    allow_redirects: bool = True
    max_redirects: Count = 10
    auto_decompress: bool = True
    read_until_eof: bool = True
    skip_host: bool = False
    replayable: bool = False
    jar: NoJar = b""
    cookies: list[tuple[str, str]] = []  # this request's own cookies= (name, coded value)
    expect100: bool = False  # send Expect: 100-continue; the body waits for 100 Continue
    max_line_size: HeadLimit = 8190
    max_field_size: HeadLimit = 8190
    max_headers: HeaderCount = 128
    http10: bool = False  # an HTTP/1.0 request line (aiohttp's version=HttpVersion10)
    chunked: bool = False  # the body (in memory too) goes with chunked framing
    requote_redirect_url: bool = True  # a Location is requoted (aiohttp's session option)
    # TLS (https hops): the TlsSpec named by its id (sent before in a TlsOpen; b"": the
    # default, verified); the SHA-256 the server's certificate must have (b"": any);
    # the name for SNI and the hostname check instead of the URL's host ("": the host).
    tls: NoTls = b""
    fingerprint: Fingerprint = b""
    server_hostname: Annotated[str, msgspec.Meta(max_length=255)] = ""
    # A shared.specs.ProxyRoute, encoded (b"": every hop direct).
    proxy: Annotated[bytes, msgspec.Meta(max_length=MAX_PROXY_ROUTE)] = b""
    # Send this request's TraceEvents (its session has trace_configs); an untraced
    # request gets none and pays nothing for tracing.
    trace: bool = False
    pool: bytes = DEFAULT_POOL_BYTES  # a PoolSpec, encoded: shared.specs.encode_pool
    timeout: ClientTimeout = DEFAULT_TIMEOUT
    # A WebSocket (or other) upgrade: see the module docstring, "Upgrades".
    upgrade: bool = False
    # The worker takes the upgraded socket when the broker can give it (a plain one):
    # ``Head.handover`` then names it, and nothing is relayed.
    handover: bool = False


class RequestFrame(Request, tag="req", frozen=True):
    """A ``Request`` as it is decoded: ``timeout`` may be nil (see ``Request``). The
    broker puts the pool and timeout it stands for in before anything else sees it, so
    that from then on it is a ``Request`` like any other."""

    timeout: ClientTimeout | None = None  # type: ignore[assignment]


class TlsOpen(_Msg, tag="tlsopen", frozen=True):
    """Worker to broker, before the first request naming ``id`` on this connection: the
    ``TlsSpec`` it stands for. The broker checks that ``id`` is the SHA-256 of the
    spec's encoding (``shared.specs.tls_id``); not answered. A spec the broker cannot
    use fails the requests that name it, with the reason."""

    id: TlsId
    spec: TlsSpec


class PoolOpen(_Msg, tag="poolopen", frozen=True):
    """Worker to broker, before the first request naming ``id`` (``Request.pool_id``)
    on this connection: the pool spec it stands for (``shared.specs.encode_pool``). Not
    answered; an id is opened once per connection. Over the broker's cap of distinct
    specs (``max_pool_specs``) it is refused: the requests naming it fail (``broker``);
    a request naming an id never opened fails (``protocol``)."""

    id: SpecId
    pool: Annotated[bytes, msgspec.Meta(max_length=MAX_POOL_SPEC)]


class TimeoutOpen(_Msg, tag="timeoutopen", frozen=True):
    """``PoolOpen``'s twin for a ``ClientTimeout`` (``Request.timeout_id``), at most
    ``MAX_TIMEOUT_IDS`` per connection."""

    id: SpecId
    timeout: ClientTimeout


class HistoryItem(msgspec.Struct, frozen=True, array_like=True):
    """The head of a response that was followed as a redirect."""

    status: int
    reason: str
    version: tuple[int, int]
    headers: RawHeaders
    url: str
    method: str
    request_headers: list[tuple[str, str]]


TRACE_KINDS = (
    "connection_queued_start",
    "connection_queued_end",
    "connection_create_start",
    "connection_create_end",
    "connection_reuseconn",
    "dns_resolvehost_start",
    "dns_resolvehost_end",
    "dns_cache_hit",
    "dns_cache_miss",
    "request_headers_sent",
    "request_chunk_sent",
    "request_redirect",
)
"""The events the broker sends a traced request, named as aiohttp's signals without
``on_``; the others (request start/end/exception, response chunks) are the worker's."""
TraceKind = Annotated[str, msgspec.Meta(max_length=32)]


class TraceEvent(_Msg, tag="trace", frozen=True):
    """Broker to worker, only for a ``Request`` with ``trace``: one connection-level
    event of aiohttp's tracing, in the order the engine meets it, always before the
    stream's ``Head`` or ``Failure``. ``kind`` is one of ``TRACE_KINDS``. The fields
    each kind fills: the dns ones ``host`` (and ``port``); ``request_headers_sent``
    ``method``, ``url`` and ``headers`` (the hop's request as written, cookies and
    per-hop headers included); ``request_chunk_sent`` ``size`` (bytes of the request
    body the broker wrote, in order; the worker knows which); ``request_redirect``
    ``redirect`` (the response followed). The others fill nothing."""

    stream: int
    kind: TraceKind
    host: str = ""
    port: int = 0
    method: str = ""
    url: str = ""
    headers: list[tuple[str, str]] = []
    size: int = 0
    redirect: HistoryItem | None = None


class Head(_Msg, tag="head", frozen=True):
    """The final response's head, with the redirects that led to it. With ``body`` (not
    None) it is the whole response in one frame: the head, the body, and the ``End``
    (``raw`` as ``End.raw``)."""

    stream: int
    status: int
    reason: str
    version: tuple[int, int]
    headers: RawHeaders
    url: str
    method: str
    request_headers: list[tuple[str, str]] = []
    history: list[HistoryItem] = []
    body: bytes | None = None
    raw: Count = 0
    # An upgrade's 101 whose socket the worker is to take (ws:// hand-over): the token
    # it claims the socket with, on a connection of its own (``Claim``). b"": none.
    handover: bytes = b""


class Data(_Msg, tag="data", frozen=True):
    stream: StreamId
    data: bytes


class Slot(_Msg, tag="slot", frozen=True):
    """Body bytes of ``stream`` as ``Data`` carries them, but in shared memory: ``size``
    bytes at ``offset`` of slot ``slot`` of the sender's arena (broker -> worker: the
    down arena; worker -> broker: the up arena). Counted against the stream's credit as
    ``Data`` is; the receiver copies them out and gives the reference back (``Release``)."""

    stream: StreamId
    slot: SlotNo
    offset: SlotNo
    size: SlotNo


class Release(_Msg, tag="release", frozen=True):
    """Slot references given back, one entry per ``Slot`` frame received (a slot may be
    named by several); sent at most once per loop pass."""

    slots: Annotated[list[SlotNo], msgspec.Meta(max_length=MAX_RELEASE)]


class End(_Msg, tag="end", frozen=True):
    stream: StreamId
    raw: Count = 0  # broker -> worker: the body's bytes before decoding, if it was decoded


class Ack(_Msg, tag="ack", frozen=True):
    stream: StreamId
    size: AckSize


class Rewind(_Msg, tag="rewind", frozen=True):
    """Broker to worker: send the streamed request body again, from its start, for the
    next hop of a redirect (307/308). Only for a ``replayable`` request."""

    stream: int


class Cancel(_Msg, tag="cancel", frozen=True):
    stream: StreamId


class Failure(_Msg, tag="fail", frozen=True):
    """A stream ended in error; ``shared.errors.WIRE_ERRORS`` says what each code means
    and which of the fields below it fills."""

    stream: int
    code: ErrorCode
    message: str
    url: str = ""
    host: str = ""
    port: int = 0
    ssl: bool = False
    errno: int = 0
    status: int = 0
    history: list[HistoryItem] = []
    verify_code: int = 0  # certificate: OpenSSL's verify result (X509_V_ERR_*)
    expected: bytes = b""  # fingerprint: the pinned digest
    got: bytes = b""  # fingerprint: the server certificate's digest
    headers: RawHeaders = []  # proxy_status: the proxy's answer's headers


class ErrorFrame(_Msg, tag="error", frozen=True):
    """The connection is unusable and is being closed (bad frame, wrong version...)."""

    code: str
    message: str


class ClearDNS(_Msg, tag="cleardns", frozen=True):
    """Forget cached addresses of the resolver that ``pool`` uses (all, one host, or one
    host and port), as aiohttp's ``TCPConnector.clear_dns_cache``. Frames are ordered, so
    a request sent after it resolves anew."""

    pool: PoolSpec
    host: str | None = None
    port: Port | None = None


class StatsRequest(_Msg, tag="statsq", frozen=True):
    pass


# The figures' shapes. The per-pool, DNS and jar figures are ``TypedDict``s (plain dicts
# that msgspec checks as it decodes: read them as ``pool["active"]``); the per-process
# ones are Structs (``worker.rss``). Both are JSON objects with these keys
# (docs/operations.md, "Figures: stats and top").


class HostFigures(TypedDict):
    """One host (scheme, host, port and TLS/proxy choice) of a pool."""

    open: int
    active: int
    idle: int
    queued: int
    longest_wait: float


class PoolFigures(TypedDict):
    """One connection pool: its label, its settings and its connections now."""

    pool: str
    options: dict[str, Any]
    limit: int
    limit_per_host: int
    open: int
    idle: int
    active: int
    queued: int
    longest_wait: float
    hosts: dict[str, HostFigures]


class DnsFigures(TypedDict):
    """One DNS cache: the resolver settings it serves and its counters."""

    kind: str
    nameservers: list[str]
    ttl: float | None
    max_size: int
    use_cache: bool
    hits: int
    misses: int
    size: int
    inflight: int


class JarFigures(TypedDict):
    """A named jar (its options, its cookies, the jar objects ``open`` on it), or the
    unnamed jars together (``name`` None: ``jars`` of them, their ``cookies``)."""

    name: str | None
    cookies: int
    unsafe: NotRequired[bool]
    quote_cookie: NotRequired[bool]
    treat_as_secure_origin: NotRequired[list[str]]
    open: NotRequired[int]
    jars: NotRequired[int]


class WorkerFigures(msgspec.Struct, frozen=True):
    """One worker process connected now. ``cpu`` (user + system seconds) and ``rss``
    (bytes) are None when the process cannot be read (gone, another user's, or a pid
    only claimed in its ``Hello``, not the kernel's)."""

    pid: int
    connections: int
    streams: int
    cpu: float | None = None
    rss: int | None = None


class BrokerFigures(msgspec.Struct, frozen=True):
    """The process that answers: the broker's (a worker's own in embedded mode)."""

    pid: int
    version: str
    protocol: int
    loop: str
    uptime: float
    cpu: float | None = None
    rss: int | None = None


class Totals(msgspec.Struct, frozen=True):
    """Counts since the engine started (``fast_requests`` and ``failures``: the broker's
    only, 0 in embedded mode)."""

    requests: int = 0
    fast_requests: int = 0
    failures: int = 0


class Stats(_Msg, tag="stats", frozen=True):
    """Broker figures (docs/operations.md, "Figures: stats and top")."""

    pid: int
    workers: int
    streams: int
    requests: int = 0
    pools: list[PoolFigures] = []
    dns: list[DnsFigures] = []
    jars: list[JarFigures] = []
    broker: BrokerFigures | None = None
    processes: list[WorkerFigures] = []
    totals: Totals | None = None


# -- cookie jars -------------------------------------------------------------------------


class JarOpen(_Msg, tag="jaropen", frozen=True):
    """Open the jar ``spec`` describes under ``jar`` (a named spec: the group's jar)."""

    call: Count
    jar: JarToken
    spec: JarSpec


class JarClose(_Msg, tag="jarclose", frozen=True):
    """The worker's jar object is gone: forget the token (not answered)."""

    jar: JarToken


class JarUpdate(_Msg, tag="jarupdate", frozen=True):
    """``update_cookies``: each (name, record) as if a response from ``url`` set it."""

    call: Count
    jar: JarToken
    url: str
    cookies: Annotated[list[tuple[str, CookieRecord]], msgspec.Meta(max_length=MAX_JAR_RECORDS)]


class JarFilter(_Msg, tag="jarfilter", frozen=True):
    """``filter_cookies(url)``: answered with ``JarCookies``."""

    call: Count
    jar: JarToken
    url: str


class JarCount(_Msg, tag="jarcount", frozen=True):
    call: Count
    jar: JarToken


class JarDump(_Msg, tag="jardump", frozen=True):
    """The jar's contents: answered with ``JarData`` pieces. ``expiry``: with each
    cookie's ``expires``/``max-age`` as it was set (iteration), else without them, as a
    cookie file keeps a cookie (its absolute deadline instead)."""

    call: Count
    jar: JarToken
    expiry: bool = False


class JarLoad(_Msg, tag="jarload", frozen=True):
    """Replace the jar's contents with ``data``, sent in pieces: the contents change
    at the piece with ``last`` (until then the pieces are kept aside)."""

    call: Count
    jar: JarToken
    data: CookieData  # at most MAX_JAR_RECORDS records in all (checked by the broker)
    last: bool = True
    first: bool = True  # a new load: what an unfinished one staged is dropped


class JarDelete(_Msg, tag="jardelete", frozen=True):
    """``clear``: the cookies named by (domain, path, name), or all with ``keys`` None;
    expired cookies go as well."""

    call: Count
    jar: JarToken
    keys: Annotated[
        list[tuple[str, str, str]], msgspec.Meta(max_length=MAX_JAR_RECORDS)
    ] | None = None


class JarDone(_Msg, tag="jardone", frozen=True):
    """A jar call succeeded; ``count``: the cookies in the jar now."""

    call: int
    count: int


class JarCookies(_Msg, tag="jarcookies", frozen=True):
    """What ``filter_cookies`` chose, in order: (name, value, coded value)."""

    call: int
    cookies: list[tuple[str, str, str]]


class JarData(_Msg, tag="jardata", frozen=True):
    call: int
    data: CookieData
    more: bool = False


class JarFailed(_Msg, tag="jarfailed", frozen=True):
    """A jar call was refused (unknown jar, a cap, bad data); the connection lives on.
    ``invalid``: the call's data was bad (the worker raises ``ValueError``)."""

    call: int
    message: str
    invalid: bool = False


class Claim(_Msg, tag="claim", frozen=True):
    """The first and only message of a hand-over connection: the worker claims the
    upgraded socket that a ``Head.handover`` named. Answered with ``Granted`` (the
    socket's descriptor attached) or an ``ErrorFrame``, then the broker hangs up."""

    token: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]


class Granted(_Msg, tag="granted", frozen=True):
    """The claimed socket (SCM_RIGHTS) and the bytes the broker had read from it past
    the 101 head (``early``: at most ``http1.EARLY_LIMIT`` plus one read, 512 KiB)."""

    early: bytes = b""


Message = (
    Hello
    | Claim
    | Granted
    | Welcome
    | TlsOpen
    | PoolOpen
    | TimeoutOpen
    | TraceEvent
    | RequestFrame
    | Head
    | Data
    | Slot
    | Release
    | End
    | Ack
    | Cancel
    | Rewind
    | Failure
    | ErrorFrame
    | ClearDNS
    | StatsRequest
    | Stats
    | JarOpen
    | JarClose
    | JarUpdate
    | JarFilter
    | JarCount
    | JarDump
    | JarLoad
    | JarDelete
    | JarDone
    | JarCookies
    | JarData
    | JarFailed
)
"""What a frame decodes into (a ``Request`` is sent, a ``RequestFrame`` received)."""
Outgoing = Message | Request
