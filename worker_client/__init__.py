"""http-broker's client: aiohttp's ``ClientSession`` API over a shared broker process.

``from worker_client import ClientSession`` where you had ``from aiohttp import
ClientSession``. With ``HTTP_BROKER`` set (or ``broker=``), requests go through that
broker; otherwise the same engine runs inside this process.
"""

from shared.specs import ClientTimeout

from .connector import BaseConnector, TCPConnector, UnixConnector
from .cookies import AbstractCookieJar, CookieJar, DummyCookieJar
from .digest_auth import DigestAuthMiddleware
from .exceptions import *  # noqa: F403
from .exceptions import FingerprintMismatch  # noqa: F401  (aiohttp's documentation's name)
from .exceptions import __all__ as _exc_all
from .helpers import BasicAuth, HttpVersion, HttpVersion10, HttpVersion11, encode_basic_auth
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
from .request_builder import PreparedRequest
from .resolver import AbstractResolver, AsyncResolver, DefaultResolver, ThreadedResolver
from .response import ClientResponse, StreamReader
from .session import ClientSession, request
from .tls import Fingerprint, create_default_context
from .tracing import *  # noqa: F403
from .tracing import __all__ as _tracing_all
from .upload import UploadTracker

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
    *_tracing_all,
    *_exc_all,
]
