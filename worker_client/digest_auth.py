"""HTTP Digest authentication as a client middleware (RFC 7616; aiohttp's
``DigestAuthMiddleware``).

The middleware sends the request; a ``401`` with a ``Digest`` challenge makes it send
the request once more with an ``Authorization`` computed from the challenge. The
challenge is kept: with ``preemptive=True`` later requests inside its protection space
(its ``domain``, else the origin that sent it) carry an answer at once, with the nonce
count going up for the same nonce. Credentials are pinned to the origin of the first
request the middleware sees: another origin gets nothing unless the challenge's
``domain`` names it (aiohttp's rule).

The computation is pure (``digest_response``, ``parse_header_pairs``), tested against
RFC 7616's examples; ``cnonce`` comes from ``os.urandom``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable

from yarl import URL

from .exceptions import ClientError
from .helpers import check_credentials
from .middlewares import ClientHandlerType, ClientRequest
from .payload import Payload
from .response import ClientResponse

__all__ = ["DigestAuthMiddleware", "digest_response", "parse_header_pairs"]

DIGEST_FUNCTIONS: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "MD5": hashlib.md5,
    "MD5-SESS": hashlib.md5,
    "SHA": hashlib.sha1,
    "SHA-SESS": hashlib.sha1,
    "SHA256": hashlib.sha256,
    "SHA256-SESS": hashlib.sha256,
    "SHA-256": hashlib.sha256,
    "SHA-256-SESS": hashlib.sha256,
    "SHA512": hashlib.sha512,
    "SHA512-SESS": hashlib.sha512,
    "SHA-512": hashlib.sha512,
    "SHA-512-SESS": hashlib.sha512,
}
SUPPORTED_ALGORITHMS = tuple(sorted(DIGEST_FUNCTIONS))
CHALLENGE_FIELDS = ("realm", "nonce", "qop", "algorithm", "opaque", "domain", "stale")
_QUOTED = frozenset(("username", "realm", "nonce", "uri", "response", "opaque", "cnonce"))

# A parameter (name=value, the value quoted or a token), or a bare token: a scheme.
_PAIR_RE = re.compile(r'(?:^|\s|,\s*)(\w+)(?:\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+)))?')


def escape_quotes(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def unescape_quotes(value: str) -> str:
    return value.replace('\\"', '"').replace("\\\\", "\\")


def parse_header_pairs(header: str) -> dict[str, str]:
    """The parameters of the first challenge in a ``WWW-Authenticate`` value; a
    leading scheme is skipped and the next scheme ends the challenge."""
    pairs: dict[str, str] = {}
    for match in _PAIR_RE.finditer(header):
        key, quoted, token = match.groups()
        if quoted is None and token is None:
            if pairs:
                break
            continue
        pairs[key] = unescape_quotes(quoted) if quoted is not None else token
    return pairs


def digest_response(
    *,
    username: str,
    password: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    algorithm: str = "MD5",
    qop: str = "",
    nc: str = "",
    cnonce: str = "",
    entity: bytes = b"",
) -> str:
    """RFC 7616 section 3.4.1: the ``response`` value, in hex."""
    name = algorithm.upper()
    if name not in DIGEST_FUNCTIONS:
        raise ClientError(
            f"Digest auth error: Unsupported hash algorithm: {name}. "
            f"Supported algorithms: {', '.join(SUPPORTED_ALGORITHMS)}"
        )
    fn = DIGEST_FUNCTIONS[name]

    def h(data: bytes) -> bytes:
        return fn(data).hexdigest().encode()

    ha1 = h(f"{username}:{realm}:{password}".encode())
    if name.endswith("-SESS"):
        ha1 = h(b":".join((ha1, nonce.encode(), cnonce.encode())))
    a2 = f"{method.upper()}:{uri}".encode()
    if qop == "auth-int":
        a2 += b":" + h(entity)
    ha2 = h(a2)
    if qop:
        tail = b":".join((nonce.encode(), nc.encode(), cnonce.encode(), qop.encode(), ha2))
    else:
        tail = b":".join((nonce.encode(), ha2))
    return h(b":".join((ha1, tail))).decode()


class DigestAuthMiddleware:
    """HTTP Digest authentication (RFC 7616) for a session or a request."""

    def __init__(self, login: str, password: str, preemptive: bool = True) -> None:
        check_credentials(login, password, "username")
        self._login = login
        self._password = password
        self._preemptive = preemptive
        self._challenge: dict[str, str] = {}
        self._last_nonce = ""
        self._nonce_count = 0
        self._protection_space: list[str] = []
        self._origin: URL | None = None

    async def _encode(self, method: str, url: URL, body: Payload | bytes) -> str:
        """The ``Authorization`` value answering the kept challenge."""
        challenge = self._challenge
        for field in ("realm", "nonce"):
            if field not in challenge:
                raise ClientError(
                    f"Malformed Digest auth challenge: Missing '{field}' parameter"
                )
        realm, nonce = challenge["realm"], challenge["nonce"]
        if not nonce:
            raise ClientError(
                "Security issue: Digest auth challenge contains empty 'nonce' value"
            )
        algorithm = challenge.get("algorithm", "MD5")
        if algorithm.upper() not in DIGEST_FUNCTIONS:
            raise ClientError(
                f"Digest auth error: Unsupported hash algorithm: {algorithm.upper()}. "
                f"Supported algorithms: {', '.join(SUPPORTED_ALGORITHMS)}"
            )
        qop = ""
        if qop_raw := challenge.get("qop", ""):
            offered = {q.strip() for q in qop_raw.split(",")} & {"auth", "auth-int"}
            if not offered:
                raise ClientError(
                    "Digest auth error: Unsupported Quality of Protection (qop) "
                    f"value(s): {qop_raw}"
                )
            qop = "auth-int" if "auth-int" in offered else "auth"
        entity = b""
        if qop == "auth-int" and body:
            entity = await body.as_bytes() if isinstance(body, Payload) else bytes(body)
        if nonce == self._last_nonce:
            self._nonce_count += 1
        else:
            self._nonce_count = 1
        self._last_nonce = nonce
        nc = f"{self._nonce_count:08x}"
        cnonce = os.urandom(8).hex()
        uri = url.raw_path_qs  # the request target as sent, which the server signs
        fields = {
            "username": escape_quotes(self._login),
            "realm": escape_quotes(realm),
            "nonce": escape_quotes(nonce),
            "uri": uri,
            "response": digest_response(
                username=self._login, password=self._password, realm=realm, nonce=nonce,
                method=method, uri=uri, algorithm=algorithm, qop=qop, nc=nc,
                cnonce=cnonce, entity=entity,
            ),
            "algorithm": algorithm,
        }
        if opaque := challenge.get("opaque"):
            fields["opaque"] = escape_quotes(opaque)
        if qop:
            fields.update(qop=qop, nc=nc, cnonce=cnonce)
        pairs = (f'{k}="{v}"' if k in _QUOTED else f"{k}={v}" for k, v in fields.items())
        return "Digest " + ", ".join(pairs)

    def _in_protection_space(self, url: URL) -> bool:
        target = str(url)
        for space in self._protection_space:
            if not target.startswith(space):
                continue
            if len(target) == len(space) or space[-1] == "/" or target[len(space)] == "/":
                return True
        return False

    def _authenticate(self, response: ClientResponse) -> bool:
        """Keep the Digest challenge of a 401; True if the request must be sent again."""
        if response.status != 401:
            return False
        scheme, sep, params = response.headers.get("WWW-Authenticate", "").partition(" ")
        if not sep or scheme.lower() != "digest" or not params:
            return False
        pairs = parse_header_pairs(params)
        if not pairs:
            return False
        self._challenge = {f: pairs[f] for f in CHALLENGE_FIELDS if f in pairs}
        origin = response.url.origin()
        space = []
        for uri in self._challenge.get("domain", "").split():
            uri = uri.strip('"')
            if uri:
                space.append(str(origin.join(URL(uri)) if uri.startswith("/") else URL(uri)))
        self._protection_space = space or [str(origin)]
        return bool(self._challenge)

    async def __call__(
        self, request: ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        origin = request.url.origin()
        if self._origin is None:
            self._origin = origin
        elif origin != self._origin and not self._in_protection_space(request.url):
            return await handler(request)
        response = None
        for attempt in range(2):
            if attempt or (
                self._preemptive and self._challenge and self._in_protection_space(request.url)
            ):
                request.headers["Authorization"] = await self._encode(
                    request.method, request.url, request.body
                )
            response = await handler(request)
            if not self._authenticate(response):
                break
        assert response is not None
        return response
