"""The messages that cross the worker <-> broker socket.

Every message is a frozen, tagged ``msgspec.Struct`` encoded as a MessagePack array (the
tag first), so the union below decodes with one typed decoder and anything else is a
decode error. A stream is one request: the worker picks its id, odd and increasing.

worker -> broker: Hello, Request, Data/End (a streamed request body), Ack, Cancel,
                  ClearDNS, StatsRequest
broker -> worker: Welcome, Head, Data/End (the response body), Ack, Rewind, Failure, ErrorFrame,
                  Stats

Flow control is by credit: the sender of a body may have at most ``STREAM_WINDOW`` bytes
of ``Data`` unacknowledged on a stream; the receiver sends ``Ack(stream, n)`` once its
reader has consumed n bytes. An ``Ack`` for more than was sent unacknowledged is a
protocol error, and so is ``Data`` beyond the credit (the broker enforces both).

Numbers a peer sends are range-checked as they decode (``Annotated`` bounds below): a
value out of range makes the frame malformed.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from .errors import ErrorCode
from .specs import DEFAULT_POOL_BYTES, DEFAULT_TIMEOUT, ClientTimeout, PoolSpec

PROTOCOL_VERSION = 2
STREAM_WINDOW = 1 << 20

RawHeaders = list[tuple[bytes, bytes]]

StreamId = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
Count = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
# One acknowledgement is for bytes already sent: far below this, which only rules out
# the absurd before the broker checks it against what it sent.
AckSize = Annotated[int, msgspec.Meta(ge=0, le=1 << 32)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class _Msg(msgspec.Struct, frozen=True, array_like=True, tag=True, omit_defaults=True):
    pass


class Hello(_Msg, tag="hello", frozen=True):
    version: Count
    pid: Count


class Welcome(_Msg, tag="welcome", frozen=True):
    version: int
    pid: int


class Request(_Msg, tag="req", frozen=True):
    """One request. ``url`` is absolute and already encoded; ``headers`` are final
    except for the per-hop ones the broker adds (Host, Content-Length or
    Transfer-Encoding). With ``streamed`` the body follows as Data frames and an End;
    ``replayable`` says the worker can send it again when asked (``Rewind``)."""

    stream: StreamId
    method: str
    url: str
    headers: list[tuple[str, str]] = []
    body: bytes | None = None
    streamed: bool = False
    pool: bytes = DEFAULT_POOL_BYTES  # a PoolSpec, encoded: shared.specs.encode_pool
    timeout: ClientTimeout = DEFAULT_TIMEOUT
    allow_redirects: bool = True
    max_redirects: Count = 10
    auto_decompress: bool = True
    read_until_eof: bool = True
    skip_host: bool = False
    replayable: bool = False


class HistoryItem(msgspec.Struct, frozen=True, array_like=True):
    """The head of a response that was followed as a redirect."""

    status: int
    reason: str
    version: tuple[int, int]
    headers: RawHeaders
    url: str
    method: str
    request_headers: list[tuple[str, str]]


class Head(_Msg, tag="head", frozen=True):
    """The final response's head, with the redirects that led to it."""

    stream: int
    status: int
    reason: str
    version: tuple[int, int]
    headers: RawHeaders
    url: str
    method: str
    request_headers: list[tuple[str, str]] = []
    history: list[HistoryItem] = []


class Data(_Msg, tag="data", frozen=True):
    stream: StreamId
    data: bytes


class End(_Msg, tag="end", frozen=True):
    stream: StreamId


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


class Stats(_Msg, tag="stats", frozen=True):
    """Broker figures; ``pools`` maps a pool description to its counters."""

    pid: int
    workers: int
    streams: int
    requests: int = 0
    pools: list[dict[str, object]] = []
    dns: list[dict[str, object]] = []


Message = (
    Hello
    | Welcome
    | Request
    | Head
    | Data
    | End
    | Ack
    | Cancel
    | Rewind
    | Failure
    | ErrorFrame
    | ClearDNS
    | StatsRequest
    | Stats
)
