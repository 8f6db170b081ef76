"""http-broker's client: aiohttp's ``ClientSession`` API over a shared broker process.

``from worker_client import ClientSession`` where you had ``from aiohttp import
ClientSession``. With ``HTTP_BROKER`` set (or ``broker=``), requests go through that
broker; otherwise the same engine runs inside this process.

Importing this package loads what a plain request needs; the modules of rarely used
names (multipart, payloads, tracing, middlewares, the sync API...) load on first use
(``_LAZY``), the engine with the first embedded transport.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from shared.specs import ClientTimeout

from .connector import BaseConnector, TCPConnector, UnixConnector
from .cookies import AbstractCookieJar, CookieJar, DummyCookieJar
from .exceptions import *  # noqa: F403
from .exceptions import FingerprintMismatch  # noqa: F401  (aiohttp's documentation's name)
from .exceptions import __all__ as _exc_all
from .helpers import BasicAuth, HttpVersion, HttpVersion10, HttpVersion11, encode_basic_auth
from .request_builder import PreparedRequest
from .response import ClientResponse, StreamReader
from .session import ClientSession, request

# Loaded on first use (PEP 562 ``__getattr__`` below): what a plain request does not need.
# ``from worker_client import FormData`` works as before; it imports worker_client.multipart.
_LAZY = {
    "digest_auth": ("DigestAuthMiddleware",),
    "middlewares": ("ClientHandlerType", "ClientMiddlewareType", "ClientRequest"),
    "multipart": (
        "BadContentDispositionHeader",
        "BadContentDispositionParam",
        "BodyPartReader",
        "FormData",
        "MultipartReader",
        "MultipartWriter",
        "content_disposition_filename",
        "parse_content_disposition",
    ),
    "payload": (
        "EMPTY_PAYLOAD",
        "PAYLOAD_REGISTRY",
        "AsyncIterablePayload",
        "BufferedReaderPayload",
        "BytesIOPayload",
        "BytesPayload",
        "IOBasePayload",
        "JsonPayload",
        "Payload",
        "StringIOPayload",
        "StringPayload",
        "TextIOPayload",
        "get_payload",
        "payload_type",
        "streamer",
    ),
    "resolver": ("AbstractResolver", "AsyncResolver", "DefaultResolver", "ThreadedResolver"),
    "sync": ("SyncResponse", "SyncSession"),
    "tls": ("Fingerprint", "create_default_context"),
    "tracing": (  # worker_client.tracing.__all__
        "TraceConfig",
        "TraceRequestStartParams",
        "TraceRequestEndParams",
        "TraceRequestExceptionParams",
        "TraceConnectionQueuedStartParams",
        "TraceConnectionQueuedEndParams",
        "TraceConnectionCreateStartParams",
        "TraceConnectionCreateEndParams",
        "TraceConnectionReuseconnParams",
        "TraceDnsResolveHostStartParams",
        "TraceDnsResolveHostEndParams",
        "TraceDnsCacheHitParams",
        "TraceDnsCacheMissParams",
        "TraceRequestRedirectParams",
        "TraceRequestChunkSentParams",
        "TraceResponseChunkReceivedParams",
        "TraceRequestHeadersSentParams",
    ),
    "upload": ("UploadTracker",),
    "websocket": (
        "ClientWSTimeout",
        "ClientWebSocketResponse",
        "WSCloseCode",
        "WSMessage",
        "WSMsgType",
        "WebSocketError",
    ),
}
_LAZY_NAMES = {name: module for module, names in _LAZY.items() for name in names}

if TYPE_CHECKING:
    from .digest_auth import DigestAuthMiddleware
    from .middlewares import ClientHandlerType, ClientMiddlewareType, ClientRequest
    from .multipart import (
        BadContentDispositionHeader,
        BadContentDispositionParam,
        BodyPartReader,
        FormData,
        MultipartReader,
        MultipartWriter,
        content_disposition_filename,
        parse_content_disposition,
    )
    from .payload import (
        EMPTY_PAYLOAD,
        PAYLOAD_REGISTRY,
        AsyncIterablePayload,
        BufferedReaderPayload,
        BytesIOPayload,
        BytesPayload,
        IOBasePayload,
        JsonPayload,
        Payload,
        StringIOPayload,
        StringPayload,
        TextIOPayload,
        get_payload,
        payload_type,
        streamer,
    )
    from .resolver import AbstractResolver, AsyncResolver, DefaultResolver, ThreadedResolver
    from .sync import SyncResponse, SyncSession
    from .tls import Fingerprint, create_default_context
    from .tracing import *  # noqa: F403
    from .upload import UploadTracker
    from .websocket import (
        ClientWebSocketResponse,
        ClientWSTimeout,
        WebSocketError,
        WSCloseCode,
        WSMessage,
        WSMsgType,
    )


def __getattr__(name: str) -> Any:
    """A lazy name (``_LAZY``) or submodule, imported on first use and then kept."""
    module = _LAZY_NAMES.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    elif name in _LAZY:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_NAMES})


__all__ = [
    "AbstractCookieJar",
    "AbstractResolver",
    "AsyncResolver",
    "BaseConnector",
    "DefaultResolver",
    "ThreadedResolver",
    "BasicAuth",
    "encode_basic_auth",
    "ClientResponse",
    "ClientSession",
    "ClientTimeout",
    "CookieJar",
    "DummyCookieJar",
    "HttpVersion",
    "HttpVersion10",
    "HttpVersion11",
    "PreparedRequest",
    "StreamReader",
    "TCPConnector",
    "UnixConnector",
    "request",
    # sync API (ours: aiohttp has none)
    "SyncResponse",
    "SyncSession",
    # WebSockets
    "ClientWSTimeout",
    "ClientWebSocketResponse",
    "WSCloseCode",
    "WSMessage",
    "WSMsgType",
    "WebSocketError",
    # TLS
    "Fingerprint",
    "create_default_context",
    # multipart
    "BadContentDispositionHeader",
    "BadContentDispositionParam",
    "BodyPartReader",
    "FormData",
    "MultipartReader",
    "MultipartWriter",
    "content_disposition_filename",
    "parse_content_disposition",
    # payload
    "EMPTY_PAYLOAD",
    "PAYLOAD_REGISTRY",
    "AsyncIterablePayload",
    "BufferedReaderPayload",
    "BytesIOPayload",
    "BytesPayload",
    "IOBasePayload",
    "JsonPayload",
    "Payload",
    "StringIOPayload",
    "StringPayload",
    "TextIOPayload",
    "get_payload",
    "payload_type",
    "streamer",
    "UploadTracker",
    # client middlewares
    "ClientHandlerType",
    "ClientMiddlewareType",
    "ClientRequest",
    "DigestAuthMiddleware",
    # tracing
    *_LAZY["tracing"],
    *_exc_all,
]
