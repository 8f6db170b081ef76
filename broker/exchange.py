"""HTTP/1.1 on a client connection, without I/O (sans-IO, in the spirit of h11).

An ``Exchange`` is the state of one request and its response on a connection: it turns
the request into bytes to write and the bytes read back into events, and owns every
rule of HTTP/1.1 framing that the client applies. ``http1.HTTP1Connection`` carries out
what it decides on a socket. The object lives as long as its connection and runs one
exchange at a time (h11's ``start_next_cycle``): ``start`` begins one from IDLE, and
``end`` makes it IDLE again only if the connection may carry the next request.

Each half has its own state; every transition is in this table (``*``: any state not
listed, ``fail``: ``fail()``, a parse error, a broken limit, or the rule named):

    request half (SendState)                  response half (RecvState)
    IDLE    --start, whole body-->   SENT     IDLE          --start-->          AWAITING_HEAD
    IDLE    --start, streamed-->     SENDING  AWAITING_HEAD --1xx head-->       AWAITING_HEAD
    IDLE    --start, expect 100-->   EXPECTING
    EXPECTING --100 Continue-->      SENT (whole body) / SENDING (streamed)
    EXPECTING --final head-->        EXPECTING (the body is never sent)
    EXPECTING --connection lost-->   FAILED
    SENDING --send_body-->           SENDING  AWAITING_HEAD --head-->           BODY
    SENDING --end_body-->            SENT     AWAITING_HEAD --head, no body-->  DONE
    SENDING --over/short of length-> FAILED   BODY          --end of message--> DONE
    SENDING --connection lost-->     FAILED   BODY          --lost, no framing->DONE
    SENT/SENDING/FAILED --end-->     IDLE *   *             --fail-->           FAILED
                                              DONE/FAILED   --end-->            IDLE *
    IDLE --start, upgrade-->         SENDING  AWAITING_HEAD --101, upgrade-->   TUNNEL
                                              TUNNEL        --bytes-->          TUNNEL
                                              TUNNEL        --connection lost-> DONE
    (* only when ``reusable``: SENT, DONE, keep-alive, no stray byte; else the
    connection is closed and the Exchange is dropped with it)

Rules kept here, all from aiohttp's client where it has one:

- A streamed body with a declared Content-Length is held to it: a byte past it is never
  produced (the request fails, the connection closes), and ``end_body`` short of it
  fails too. Without a length it is chunked. A connection whose request body did not
  end (a cancel, a disconnect) is never reused, even if the server already answered.
- ``Expect: 100-continue`` (aiohttp's ``expect100=True``): the head goes alone and the
  body waits for a ``100 Continue`` (the ``CONTINUE`` event; ``proceed`` then gives
  the held body). A final answer first (a 417, a 401) is the response, the body is
  never sent, and the connection is not reused (send never reached SENT).
- Head limits, per request (``HeadLimits``, aiohttp's ``max_line_size``,
  ``max_field_size``, ``max_headers``: 8190, 8190, 128 by default), with aiohttp's
  messages; the status line's reason is checked as it arrives, a field (name plus
  value) by the end of the read that completed it, so the whole head is also capped at
  ``MAX_HEAD_BYTES`` counted as it arrives, whatever the limits (the parser is fed at
  most the room left while the head is awaited, so body bytes that come in the same
  read never count, whatever the read size). A limit is at most
  ``MAX_LIMIT`` (a field or line) or ``MAX_HEADERS_LIMIT`` (the count): a ``Request``
  asking more does not decode. 1xx heads are skipped (101 ends the exchange).
- No body after a HEAD request, nor for 204/304. httptools cannot be told that a
  response has no body because it answers HEAD, so the exchange ends at the head and the
  parser is replaced before the next request. A response with neither Content-Length
  nor chunked framing is read until the connection closes (``connection_lost`` ends it;
  httptools has no "end of input" call), or has no body with aiohttp's
  ``read_until_eof=False``; such a connection is never reused.
- Any byte the server sends that no request asked for (after the response, or on an
  idle connection) spoils the connection.
- A body framed by one plain Content-Length (no Transfer-Encoding) is also counted
  (``body_left``), so that the connection may read it straight into a consumer's
  memory and say so with ``body_received``, bypassing httptools. From the first such
  read on, the parser is out of step: the rest of that body is counted, not parsed, by
  ``receive_data`` too, the body ends at 0, and the parser is replaced before the next
  exchange, as after a HEAD. A byte read past the body spoils the connection, as above.

- Upgrades (``start(upgrade=True)``: a WebSocket handshake): the head carries no body
  framing and the request half stays SENDING (the request never "ends": the
  connection is never reused). A final ``101`` makes the response half a TUNNEL: every
  byte after the head (from httptools' ``HttpParserUpgrade`` offset, so those in the
  read that completed the head too) and every later read is body, until the connection
  closes (``END``); what goes the other way is ``send_raw``'s, unframed. A 101 that
  httptools does not take as an upgrade (no ``Upgrade``/``Connection: upgrade``) fails.
  A 101 to a request that was not an upgrade ends the exchange at its head, as any
  other upgrade of the protocol does, and spoils the connection.

Events from ``receive_data`` and ``connection_lost``: a ``ResponseHead``, ``bytes`` of
body, ``END``, ``CONTINUE`` (send the body now), or a ``ConnectionFailure`` (the
exchange failed; close the connection).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from typing import Final, NamedTuple, TypeAlias

import httptools
import msgspec
from yarl import URL

from shared.messages import HEAD_LIMIT_MAX, HEADERS_LIMIT_MAX

from .failures import ConnectionFailure

__all__ = [
    "CONTINUE",
    "DEFAULT_LIMITS",
    "END",
    "ConnectionFailure",
    "HeadLimits",
    "Event",
    "Exchange",
    "MAX_FIELD_SIZE",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "MAX_HEADERS_LIMIT",
    "MAX_LIMIT",
    "RecvState",
    "ResponseHead",
    "R_AWAITING_HEAD",
    "R_BODY",
    "R_DONE",
    "R_FAILED",
    "R_IDLE",
    "R_TUNNEL",
    "S_EXPECTING",
    "S_FAILED",
    "S_IDLE",
    "S_SENDING",
    "S_SENT",
    "SendState",
    "build_head",
    "declared_length",
    "set_cookies",
]

# aiohttp's defaults: max_line_size=8190, max_field_size=8190, max_headers=128.
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 128
MAX_HEAD_BYTES = HEAD_LIMIT_MAX
# What a request may ask for (``Request``'s bounds): the head is capped at
# MAX_HEAD_BYTES whatever it asks.
MAX_LIMIT = HEAD_LIMIT_MAX
MAX_HEADERS_LIMIT = HEADERS_LIMIT_MAX


class HeadLimits(NamedTuple):
    """aiohttp's ``max_line_size``, ``max_field_size``, ``max_headers``."""

    line: int = MAX_LINE_SIZE
    field: int = MAX_FIELD_SIZE
    headers: int = MAX_HEADERS


DEFAULT_LIMITS: Final = HeadLimits()

BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))
_HOP_HEADERS = frozenset(("host", "content-length", "transfer-encoding"))
_DIGITS = re.compile(r"[0-9]{1,18}")


class ResponseHead(msgspec.Struct, gc=False):
    """A final response head (made in C: no Python call per response)."""

    status: int
    reason: str
    version: tuple[int, int]
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    eof_body: bool  # the body ends when the connection closes
    encoding: bytes | None = None  # the first Content-Encoding
    set_cookie: bool = False  # a Set-Cookie among the headers (``set_cookies``)


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


class _Continue:
    __slots__ = ()

    def __repr__(self) -> str:
        return "CONTINUE"


END: Final = _End()
CONTINUE: Final = _Continue()
Event: TypeAlias = "ResponseHead | bytes | _End | _Continue | ConnectionFailure"


class SendState(enum.Enum):
    IDLE = "idle"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    EXPECTING = "expecting"  # the head is sent; the body waits for 100 Continue


class RecvState(enum.Enum):
    IDLE = "idle"
    AWAITING_HEAD = "awaiting_head"
    BODY = "body"
    DONE = "done"
    FAILED = "failed"
    TUNNEL = "tunnel"  # after a 101 to an upgrade: raw bytes until the connection closes


# Enum members are slow to look up (a descriptor each time); the hot path uses these.
S_IDLE, S_SENDING, S_SENT, S_FAILED, S_EXPECTING = SendState
R_IDLE, R_AWAITING_HEAD, R_BODY, R_DONE, R_FAILED, R_TUNNEL = RecvState


class _HeadTooLarge(Exception):
    pass


def build_head(
    method: str,
    url: URL,
    headers: list[tuple[str, str]],
    body_length: int | None,
    chunked: bool,
    skip_host: bool,
    version: tuple[int, int] = (1, 1),
    force_close: bool = False,
    target: str | None = None,
) -> bytes:
    """The request line and headers of one hop, per-hop headers added; an HTTP/1.0
    request asks for keep-alive unless it says otherwise or the pool never reuses a
    connection (as aiohttp), or its body goes chunked: HTTP/1.0 has no chunked framing
    (RFC 9112 6.1: the server must close after it), and a server that read the chunks
    as the next request must not be handed another worker's request on that
    connection. ``target``: another request target (a proxy's absolute form)."""
    if target is None:
        target = url.raw_path_qs or "/"
    parts = [f"{method} {target} HTTP/{version[0]}.{version[1]}\r\n"]
    has_host = skip_host
    user_length: str | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in _HOP_HEADERS:
            if lname == "host":
                has_host = True
            elif lname == "content-length":
                user_length = value
                continue
            else:
                continue
        parts.append(f"{name}: {value}\r\n")
    if not has_host:
        parts.insert(1, f"Host: {url.host_port_subcomponent}\r\n")
    if (
        version == (1, 0)
        and not force_close
        and not (chunked and body_length is None)  # 1.0 has no chunked framing: see below
        and not any(n.lower() == "connection" for n, _ in headers)
    ):
        parts.append("Connection: keep-alive\r\n")
    if body_length is not None:
        parts.append(f"Content-Length: {body_length}\r\n")
    elif chunked:
        if user_length is not None:
            parts.append(f"Content-Length: {user_length}\r\n")
        else:
            parts.append("Transfer-Encoding: chunked\r\n")
    elif method in BODY_METHODS:
        parts.append("Content-Length: 0\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("utf-8", "surrogateescape")


def declared_length(headers: list[tuple[str, str]]) -> int | None:
    """The Content-Length a streamed body is held to (the one ``build_head`` sends, the
    last given), or None for a chunked body."""
    value = None
    for name, v in headers:
        if name.lower() == "content-length":
            value = v
    if value is None:
        return None
    if not _DIGITS.fullmatch(value.strip()):
        raise ConnectionFailure("connection", f"invalid Content-Length header: {value!r}")
    return int(value)


def set_cookies(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """The Set-Cookie values of a response head, as the cookie store takes them."""
    return [
        v.decode("utf-8", "surrogateescape") for k, v in headers if k.lower() == b"set-cookie"
    ]


def _request_failure(message: str) -> ConnectionFailure:
    return ConnectionFailure("connection", message)


def _head_too_large() -> ConnectionFailure:
    return ConnectionFailure(
        "bad_response", f"invalid HTTP response: the head is over {MAX_HEAD_BYTES} bytes"
    )


def _too_long(data: bytes, limit: int) -> str:
    """aiohttp's ``LineTooLong`` message (the first 100 bytes of what was too long)."""
    return f"Got more than {limit} bytes when reading: {data[:100] + b'...'!r}."


class Exchange:
    """See the module docstring. Public state: ``send``, ``recv``, ``head``, ``error``,
    ``got_bytes`` (a byte of this response arrived), ``spoiled``, ``body_left`` (the
    bytes still owed of a counted body, None when the body is not counted)."""

    __slots__ = (
        "send", "recv", "head", "error", "got_bytes", "spoiled", "read_until_eof",
        "body_left",
        "_parser", "_replace_parser", "_head_only", "_remaining", "_declared", "_reason",
        "_headers", "_head_bytes", "_refused", "_events", "_limits", "_held",
        "_streamed", "_upgrade",
    )

    def __init__(self) -> None:
        self.send = S_IDLE
        self.recv = R_IDLE
        self.head: ResponseHead | None = None
        self.error: ConnectionFailure | None = None
        self.got_bytes = False
        self.spoiled = False
        self.read_until_eof = True
        self.body_left: int | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._replace_parser = False
        self._head_only = False
        self._remaining: int | None = None  # bytes of a streamed body still owed
        self._declared = 0
        self._reason = ""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._refused: str | None = None  # which of our head limits the server broke
        self._events: list[Event] = []
        self._limits = DEFAULT_LIMITS
        self._held: bytes | None = None  # a whole body waiting for 100 Continue
        self._streamed = False
        self._upgrade = False

    def __repr__(self) -> str:
        return f"<Exchange send={self.send.value} recv={self.recv.value}>"

    # -- the request --------------------------------------------------------------

    def start(
        self,
        method: str,
        head: bytes,
        body: bytes | None = None,
        streamed: bool = False,
        length: int | None = None,
        expect_continue: bool = False,
        limits: HeadLimits = DEFAULT_LIMITS,
        upgrade: bool = False,
    ) -> bytes | tuple[bytes, bytes]:
        """Begin an exchange; returns what to write (one buffer, or two to write as
        lines). ``streamed``: the body follows by ``send_body``, held to ``length``
        bytes, chunked if ``length`` is None. ``expect_continue``: only the head now,
        the body after ``CONTINUE`` and ``proceed``. ``upgrade``: the head alone, and a
        101 makes a tunnel (see the module docstring)."""
        if self.send is not S_IDLE or self.recv is not R_IDLE:
            raise RuntimeError(f"cannot start a request on {self!r}")
        if self._replace_parser:
            self._parser = httptools.HttpResponseParser(self)
            self._replace_parser = False
        self.recv = R_AWAITING_HEAD
        self.head = None
        self.error = None
        self.got_bytes = False
        self.body_left = None
        self._head_only = method == "HEAD"
        self._reason = ""
        self._headers = []
        self._head_bytes = 0
        self._refused = None
        self._limits = limits
        self._streamed = streamed
        self._upgrade = upgrade
        if upgrade:
            self.send = S_SENDING
            self._remaining = None
            return head
        if streamed:
            self.send = S_SENDING
            self._remaining = length
            self._declared = length or 0
        else:
            self.send = S_SENT
        if expect_continue and (streamed or body):
            self.send = S_EXPECTING
            self._held = body
            return head
        if not body:
            return head
        if len(body) < 16384:
            return head + body
        return head, body

    def proceed(self) -> bytes:
        """After ``CONTINUE``: the held whole body to write now (b"" for a streamed
        body, which follows by ``send_body``)."""
        if self.send is not S_EXPECTING:
            raise RuntimeError(f"no request body waits for 100 Continue on {self!r}")
        self.send = S_SENDING if self._streamed else S_SENT
        body, self._held = self._held, None
        return body or b""

    def send_body(self, data: bytes) -> Sequence[bytes]:
        """The bytes to write for a piece of a streamed body (not empty). Raises
        ConnectionFailure, having failed the exchange, past the declared length."""
        if self.send is not S_SENDING:
            raise self.error or RuntimeError(f"no request body is being sent on {self!r}")
        remaining = self._remaining
        if remaining is None:
            return (b"%x\r\n" % len(data), data, b"\r\n")
        if len(data) > remaining:
            raise self.fail(
                _request_failure(
                    f"the request body is longer than its Content-Length ({self._declared} "
                    "bytes); nothing past it was sent"
                )
            )
        self._remaining = remaining - len(data)
        return (data,)

    def send_raw(self, data: bytes) -> bytes:
        """The bytes to write for a piece going through the tunnel: as they are."""
        if self.recv is not R_TUNNEL:
            raise self.error or RuntimeError(f"no tunnel on {self!r}")
        return data

    @property
    def tunnel(self) -> bool:
        """A 101 answered the upgrade: the connection is a byte pipe now."""
        return self.recv is R_TUNNEL

    def end_body(self) -> bytes:
        """The bytes that end a streamed body. Raises ConnectionFailure, having failed
        the exchange, if the body is shorter than its declared length."""
        if self.send is not S_SENDING:
            raise self.error or RuntimeError(f"no request body is being sent on {self!r}")
        remaining = self._remaining
        if remaining:
            raise self.fail(
                _request_failure(
                    f"the request body is shorter than its Content-Length: "
                    f"{self._declared - remaining} of {self._declared} bytes"
                )
            )
        self.send = S_SENT
        return b"0\r\n\r\n" if remaining is None else b""

    # -- the response ---------------------------------------------------------------

    def receive_data(self, data: bytes | memoryview) -> list[Event]:
        """Feed bytes read from the connection; returns the events they complete."""
        recv = self.recv
        if recv is R_BODY:
            left = self.body_left
            if left is not None:
                if self._replace_parser:  # the parser was bypassed for this body
                    return self._count(data)
                if len(data) > left:
                    self.spoiled = True  # bytes past the body, in this read
        elif recv is not R_AWAITING_HEAD:
            if recv is R_TUNNEL:
                return [bytes(data)]
            if recv is R_FAILED:
                return []
            self.spoiled = True
            if recv is R_IDLE:  # bytes on an idle connection: a confused server
                return [ConnectionFailure("bad_response", "bytes on an idle connection")]
            return []
        self.got_bytes = True
        if recv is R_AWAITING_HEAD:
            # Only head bytes count towards the cap: feed at most the room left, and
            # whatever follows once the head is complete goes on as body.
            room = MAX_HEAD_BYTES - self._head_bytes
            if len(data) > room:
                self._head_bytes = MAX_HEAD_BYTES
                events = self._parse(data[:room]) if room else []
                if self.recv is R_AWAITING_HEAD:
                    events.append(self.fail(_head_too_large()))
                    return events
                return events + self.receive_data(data[room:])
            self._head_bytes += len(data)
        events = self._events = []  # ``_parse``, inline: this runs once per read
        try:
            self._parser.feed_data(data)
            if self.recv is R_AWAITING_HEAD and self._headers:
                self._check_partial()  # a head not yet complete: its fields so far
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(events, data, exc.args[0])
        except httptools.HttpParserError as exc:
            self._parse_failed(events, exc)
        except _HeadTooLarge as exc:
            events.append(self.fail(ConnectionFailure("bad_response", str(exc))))
        return events

    def _count(self, data: bytes | memoryview) -> list[Event]:
        """The bytes of a body the parser was bypassed for (``body_left`` of them are
        owed); bytes past it spoil the connection."""
        left = self.body_left
        assert left is not None
        size = len(data)
        if size < left:
            self.body_left = left - size
            return [bytes(data)]
        self.body_left = None
        self.recv = R_DONE
        if size > left:
            self.spoiled = True
            data = data[:left]
        return [bytes(data), END] if left else [END]

    def body_received(self, size: int) -> bool:
        """``size`` bytes of a counted body were read straight into a consumer's memory
        (never more than ``body_left``); True if that ended the body."""
        left = self.body_left
        if left is None or not 0 < size <= left:
            raise RuntimeError(f"{size} body bytes on {self!r}, {left} owed")
        self._replace_parser = True
        if size < left:
            self.body_left = left - size
            return False
        self.body_left = None
        self.recv = R_DONE
        return True

    def _parse(self, data: bytes | memoryview) -> list[Event]:
        events = self._events = []
        try:
            self._parser.feed_data(data)
            if self.recv is R_AWAITING_HEAD and self._headers:
                self._check_partial()  # a head not yet complete: its fields so far
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(events, data, exc.args[0])
        except httptools.HttpParserError as exc:
            self._parse_failed(events, exc)
        except _HeadTooLarge as exc:
            events.append(self.fail(ConnectionFailure("bad_response", str(exc))))
        return events

    def _upgraded(self, events: list[Event], data: bytes | memoryview, offset: int) -> None:
        # 101 or CONNECT: what follows is not HTTP/1.1; the exchange ends here, or, for
        # an upgrade we asked for, the tunnel begins with the rest of this read.
        self.spoiled = True
        if self.recv is R_TUNNEL:
            if offset < len(data):
                events.append(bytes(data[offset:]))
            return
        self.body_left = None
        if self.recv is R_BODY:
            self.recv = R_DONE
            events.append(END)

    def _parse_failed(self, events: list[Event], exc: Exception) -> None:
        if self.recv is R_DONE:  # garbage after a whole response
            self.spoiled = True
            return
        if self.recv is R_TUNNEL:  # a 101 that httptools does not take for an upgrade
            self._refused = (
                "invalid HTTP response: a 101 without Upgrade and Connection: upgrade"
            )
        # A limit of ours raised inside a callback reaches us as a bare "callback
        # error": say which limit it was, in aiohttp's words.
        detail = self._refused or f"invalid HTTP response: {exc}"
        events.append(self.fail(ConnectionFailure("bad_response", detail)))

    def connection_lost(self, exc: BaseException | None) -> Event | None:
        """The connection closed; the event it makes, if any."""
        event = self._lost_event(exc)
        if self.send is S_SENDING or self.send is S_EXPECTING:  # the body can never end now
            self.fail(ConnectionFailure("disconnected", "Server disconnected"))
        return event

    def _lost_event(self, exc: BaseException | None) -> Event | None:
        recv = self.recv
        if recv is R_AWAITING_HEAD:
            if isinstance(exc, OSError):  # e.g. a reset: aiohttp's ClientOSError
                msg = exc.strerror or str(exc)
                return self.fail(ConnectionFailure("os", msg, errno=exc.errno or 0))
            return self.fail(ConnectionFailure("disconnected", "Server disconnected"))
        if recv is R_TUNNEL:
            self.recv = R_DONE
            return END
        if recv is R_BODY:
            assert self.head is not None
            if self.head.eof_body:
                self.recv = R_DONE
                self.spoiled = True  # the connection is gone anyway
                return END
            return self.fail(
                ConnectionFailure(
                    "payload",
                    "Response payload is not completed: the connection was closed "
                    "before the end of the body (Content-Length or chunked framing)",
                )
            )
        return None

    def fail(self, failure: ConnectionFailure) -> ConnectionFailure:
        """Fail the exchange (the first failure is kept); returns it. The response half
        stays DONE if it was: its reader learns of the failure elsewhere."""
        if self.error is None:
            self.error = failure
        if self.send is S_SENDING or self.send is S_EXPECTING:
            self.send = S_FAILED
            self._held = None
        if self.recv is not R_DONE:
            self.recv = R_FAILED
        self.body_left = None
        self.spoiled = True
        return failure

    # -- the end ------------------------------------------------------------------

    @property
    def over(self) -> bool:
        """The response is complete, or the exchange failed."""
        return self.recv is R_DONE or self.recv is R_FAILED

    @property
    def reusable(self) -> bool:
        """A complete request, a complete keep-alive response, nothing else seen."""
        return (
            self.send is S_SENT
            and self.recv is R_DONE
            and not self.spoiled
            and self.head is not None
            and self.head.keep_alive
        )

    def end(self) -> bool:
        """The caller is done with this exchange: True (and IDLE again) if the
        connection may carry another request; False: close it."""
        if self.send is S_IDLE and self.recv is R_IDLE and not self.spoiled:
            return True  # never started (given up between the lease and the request)
        head = self.head
        if (
            self.send is not S_SENT
            or self.recv is not R_DONE
            or self.spoiled
            or head is None
            or not head.keep_alive
        ):  # ``reusable``, inline: this runs once per request
            self.spoiled = True
            self._held = None
            return False
        self.send = S_IDLE
        self.recv = R_IDLE
        self.head = None
        self._headers = []
        return True

    # -- httptools callbacks ---------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason += status.decode("latin-1")  # in pieces if the line came so
        limit = self._limits.line
        if len(self._reason) > limit:
            self._refused = _too_long(self._reason.encode("latin-1"), limit)
            raise _HeadTooLarge(self._refused)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Checked against the limits once the head is complete (``_check_fields``); the
        # head itself is capped at MAX_HEAD_BYTES meanwhile.
        self._headers.append((name, value))

    def _check_fields(self) -> None:
        """aiohttp's field size and count limits, field by field in order, as a parser
        that checks each as it comes would find the first one broken."""
        limits = self._limits
        for i, (name, value) in enumerate(self._headers):
            if len(name) + len(value) > limits.field:
                self._refused = _too_long(
                    value if len(name) <= limits.field else name, limits.field
                )
                raise _HeadTooLarge(self._refused)
            if i >= limits.headers:
                self._refused = "Too many headers received"
                raise _HeadTooLarge(self._refused)

    def _check_partial(self) -> None:
        """The fields of the head so far, when it did not complete in the reads until
        now: a broken limit fails at once (as when each is checked as it comes), not
        after a head that may never end."""
        limits = self._limits
        # no field can be longer than the head so far: the usual case checks nothing
        if self._head_bytes > limits.field or len(self._headers) > limits.headers:
            self._check_fields()

    def on_headers_complete(self) -> None:
        self._check_partial()
        if self.recv is not R_AWAITING_HEAD:
            self.spoiled = True  # a second response to one request
            return
        p = self._parser
        status = p.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._headers = []  # informational; the real head follows
            self._reason = ""
            if status == 100 and self.send is S_EXPECTING:
                # once: a server may send several 100s (in one read, before we proceed)
                if not any(event is CONTINUE for event in self._events):
                    self._events.append(CONTINUE)
            return
        headers = self._headers
        # Framed by Content-Length or chunked, else until the connection closes. httptools
        # refuses a second Content-Length, one beside Transfer-Encoding, or one not all
        # digits, before the head completes: a Content-Length here is the only framing.
        # The names lowercased in one piece (a name is a token: never a NUL), looked up
        # in C: a Python step per header is what this costs most.
        names = b"\0".join([name for name, _ in headers]).lower().split(b"\0")
        length = encoding = None
        if b"content-length" in names:
            length = headers[names.index(b"content-length")][1]
        chunked = b"transfer-encoding" in names and any(
            n == b"transfer-encoding" and b"chunked" in v.lower()
            for n, (_, v) in zip(names, headers, strict=True)
        )
        if b"content-encoding" in names:
            encoding = headers[names.index(b"content-encoding")][1]
        set_cookie = b"set-cookie" in names
        if status == 101 and self._upgrade:
            self._tunnel_head(status, headers, encoding, set_cookie)
            return
        eof_body = length is None and not chunked
        reuse = p.should_keep_alive()
        if status in (204, 304) or self._head_only:
            eof_body = False
        elif eof_body:
            reuse = False
            if not self.read_until_eof:
                # aiohttp's read_until_eof=False: such a response has no body
                self._head_only = True
                eof_body = False
        elif length is not None and status != 101:
            self.body_left = int(length)
        head = ResponseHead(
            status,
            self._reason,
            (1, 0) if p.get_http_version() == "1.0" else (1, 1),
            headers,
            reuse,
            eof_body,
            encoding,
            set_cookie,
        )
        self.head = head
        self._events.append(head)
        if self._head_only:
            self._replace_parser = True
            self.recv = R_DONE
            self._events.append(END)
        else:
            self.recv = R_BODY

    def _tunnel_head(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        encoding: bytes | None,
        set_cookie: bool,
    ) -> None:
        """The 101 that answers an upgrade: the rest of the connection is its body."""
        version = (1, 0) if self._parser.get_http_version() == "1.0" else (1, 1)
        head = ResponseHead(status, self._reason, version, headers, False, True, encoding,
                            set_cookie)
        self.head = head
        self._events.append(head)
        self.recv = R_TUNNEL
        self.spoiled = True
        self._replace_parser = True

    def on_body(self, body: bytes) -> None:
        if self.recv is R_BODY:
            self._events.append(body)
            if self.body_left is not None:
                self.body_left -= len(body)
        else:
            self.spoiled = True  # after a HEAD response, or an informational head

    def on_message_complete(self) -> None:
        if self.recv is R_BODY:
            self.body_left = None
            self.recv = R_DONE
            self._events.append(END)
