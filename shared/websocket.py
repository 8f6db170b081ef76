"""WebSocket codec (RFC 6455, RFC 7692 permessage-deflate), sans-IO.

Types shared by both sides (``WSMsgType``, ``WSCloseCode``, ``WSMessage``, with
aiohttp 3.14's values) and the errors the codec raises.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import IntEnum
from typing import Any, NamedTuple

__all__ = [
    "WSCloseCode",
    "WSHandshakeError",
    "WSMessage",
    "WSMsgType",
    "WebSocketError",
    "WebSocketProtocolError",
]


class WSCloseCode(IntEnum):
    OK = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    ABNORMAL_CLOSURE = 1006
    INVALID_TEXT = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


class WSMsgType(IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    PING = 0x9
    PONG = 0xA
    CLOSE = 0x8
    # not on the wire: states a receiver reports
    CLOSING = 0x100
    CLOSED = 0x101
    ERROR = 0x102

    text = TEXT
    binary = BINARY
    ping = PING
    pong = PONG
    close = CLOSE
    closing = CLOSING
    closed = CLOSED
    error = ERROR


class WSMessage(NamedTuple):
    type: WSMsgType
    data: Any
    extra: str | None

    def json(self, *, loads: Callable[[Any], Any] = json.loads) -> Any:
        """The data parsed as JSON."""
        return loads(self.data)


class WebSocketError(Exception):
    """WebSocket protocol error, with the close code to send (aiohttp's shape)."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(code, message)

    def __str__(self) -> str:
        return str(self.args[1])


class WebSocketProtocolError(WebSocketError):
    """The peer broke RFC 6455/7692; ``code`` is the close code to answer with."""


class WSHandshakeError(Exception):
    """A handshake (or its extension header) that cannot be accepted."""
