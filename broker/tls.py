"""TLS contexts rebuilt from workers' ``TlsSpec``s, and which specs a worker opened.

How this works. A worker cannot send an ``ssl.SSLContext``; it sends the ``TlsSpec`` it
stands for once per connection (``TlsOpen``) and names it by its id (the SHA-256 of its
encoding) in each request. ``TlsTable`` is one connection's id -> spec table; it checks
that an id is its spec's, so no worker can put a spec under another's id. ``TlsContexts``
is the engine's cache of built contexts by id, shared by every worker (equal specs,
equal ids, one context, one pool slot key): built on a request's first dial, at most
``MAX_CONTEXTS`` kept (least recently used dropped; a spec that could not be built is
cached as its error, so a bad spec costs one attempt; a failure of the moment, such as
running out of file descriptors, is not cached). The default (id b"") is one
context for the process, never evicted. A context is built on the loop, which it holds
(the ssl module keeps the GIL: a thread would not free it): loading the system's store
(144 certificates) took 62 ms on the development machine, 1024 CA certificates of a
spec 420 ms, once per spec while it stays cached.

A client certificate's key never touches a file others could open by name: its PEM goes
into an anonymous ``memfd`` that ``load_cert_chain`` reads through ``/proc/self/fd/N``;
where memfd is missing, into a file in a fresh 0700 directory, removed as soon as it is
read.

Bounds: ``MAX_CONTEXTS`` contexts per engine (each holds its CA store: about 0.85 MB
with the system's 144 certificates, measured), built from at most ``MAX_CONTEXT_BYTES``
(64 MiB) of specs together; ``max_specs``
specs per ``TlsTable`` (``Limits.max_tls_specs``, 64, per worker connection), of at most
``MAX_TLS_BYTES`` (16 MiB) encoded together (a spec may be 4 MiB: 64 of them would be
256 MiB held for one connection).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Iterator

from shared.specs import DEFAULT_TLS, TlsSpec, encode_tls, tls_id

from .failures import ConnectionFailure

__all__ = [
    "MAX_CONTEXTS", "MAX_CONTEXT_BYTES", "MAX_TLS_BYTES", "MAX_TLS_SPECS", "TlsContexts",
    "TlsError", "TlsTable", "build_context", "default_context",
]

MAX_CONTEXTS = 64
MAX_CONTEXT_BYTES = 64 << 20
MAX_TLS_SPECS = 64
MAX_TLS_BYTES = 16 << 20
ALPN = ("http/1.1",)
_HAS_MEMFD = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


class TlsError(ValueError):
    """A ``TlsSpec`` that cannot be made into a context (bad PEM, wrong password...).
    ``lasting``: the spec's own fault, not the moment's (out of file descriptors)."""

    def __init__(self, message: str, lasting: bool = True) -> None:
        super().__init__(message)
        self.lasting = lasting


def build_context(spec: TlsSpec, *, use_memfd: bool = _HAS_MEMFD) -> ssl.SSLContext:
    """The client ``SSLContext`` that ``spec`` describes; raises ``TlsError``."""
    try:
        return _build(spec, use_memfd)
    except Exception as exc:  # SSLError, ValueError, OverflowError...: the spec's fault
        lasting = isinstance(exc, ssl.SSLError) or not isinstance(exc, OSError)
        raise TlsError(f"cannot use these TLS settings: {exc}", lasting) from None


def _build(spec: TlsSpec, use_memfd: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    if sys.version_info >= (3, 13):  # what create_default_context() adds there
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
    if not spec.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.check_hostname = spec.check_hostname
        if spec.system_store:  # unverified, a store would never be read
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if spec.ca_certs:
        ctx.load_verify_locations(cadata=b"".join(spec.ca_certs))
    if spec.minimum_version is not None:
        ctx.minimum_version = ssl.TLSVersion(spec.minimum_version)
    if spec.maximum_version is not None:
        ctx.maximum_version = ssl.TLSVersion(spec.maximum_version)
    if spec.options is not None:
        ctx.options = ssl.Options(spec.options)
    if spec.verify_flags is not None:
        ctx.verify_flags = ssl.VerifyFlags(spec.verify_flags)
    if spec.ciphers is not None:
        ctx.set_ciphers(spec.ciphers)
    if spec.hostname_checks_common_name is not None:
        ctx.hostname_checks_common_name = spec.hostname_checks_common_name
    if spec.cert_chain:
        _load_client_cert(ctx, spec, use_memfd)
    ctx.set_alpn_protocols(ALPN)
    return ctx


def _load_client_cert(ctx: ssl.SSLContext, spec: TlsSpec, use_memfd: bool) -> None:
    files = _memfd_paths if use_memfd else _private_paths
    with files(spec.cert_chain, spec.key) as (cert, key):
        # password always given (b"" too): without one OpenSSL would prompt on a tty
        ctx.load_cert_chain(cert, key, password=spec.password)


@contextlib.contextmanager
def _memfd_paths(cert: bytes, key: bytes) -> Iterator[tuple[str, str | None]]:
    fds: list[int] = []
    try:
        for data in (cert, key) if key else (cert,):
            fd = os.memfd_create("http-broker-tls", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, data)
        paths = [f"/proc/self/fd/{fd}" for fd in fds]
        yield paths[0], paths[1] if key else None
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def _private_paths(cert: bytes, key: bytes) -> Iterator[tuple[str, str | None]]:
    directory = tempfile.mkdtemp(prefix="http-broker-tls-")  # 0700: ours alone
    try:
        paths = []
        for name, data in (("cert", cert), ("key", key)) if key else (("cert", cert),):
            path = os.path.join(directory, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            paths.append(path)
        yield paths[0], paths[1] if key else None
    finally:
        shutil.rmtree(directory, ignore_errors=True)


_default: ssl.SSLContext | None = None


def default_context() -> ssl.SSLContext:
    """``ssl=True``'s context, one for the process (~60 ms: made on first use)."""
    global _default
    if _default is None:
        _default = build_context(DEFAULT_TLS)
    return _default


class TlsContexts:
    """The engine's contexts by tls id (see the module docstring)."""

    def __init__(self, max_size: int = MAX_CONTEXTS, max_bytes: int = MAX_CONTEXT_BYTES) -> None:
        self.max_size = max_size
        self.max_bytes = max_bytes
        self._cache: OrderedDict[bytes, ssl.SSLContext | TlsError] = OrderedDict()
        self._sizes: dict[bytes, int] = {}  # a context's spec, encoded (an error's: 0)
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._cache)

    def __repr__(self) -> str:
        return f"<TlsContexts {len(self._cache)}/{self.max_size}>"

    def context(self, tls: bytes, spec: TlsSpec | None) -> ssl.SSLContext:
        """The context for id ``tls`` (b"": the default), made from ``spec`` if need
        be; raises ``TlsError`` for a spec that cannot be built."""
        if not tls:
            return default_context()
        got = self._cache.get(tls)
        if got is None:
            if spec is None:
                raise TlsError("TLS settings named but not given")
            try:
                got = build_context(spec)
            except TlsError as exc:
                if not exc.lasting:
                    raise
                got = exc
            self._keep(tls, got, 0 if isinstance(got, TlsError) else len(encode_tls(spec)))
        else:
            self._cache.move_to_end(tls)
        if isinstance(got, TlsError):
            raise got
        return got

    def _keep(self, tls: bytes, got: ssl.SSLContext | TlsError, size: int) -> None:
        self._cache[tls] = got
        self._sizes[tls] = size
        self.bytes += size
        while len(self._cache) > 1 and (
            len(self._cache) > self.max_size or self.bytes > self.max_bytes
        ):
            old, _ = self._cache.popitem(last=False)
            self.bytes -= self._sizes.pop(old)


class TlsTable:
    """The ``TlsSpec``s one worker connection opened, by id: at most ``max_specs``, of
    at most ``max_bytes`` encoded together."""

    def __init__(self, max_specs: int = MAX_TLS_SPECS, max_bytes: int = MAX_TLS_BYTES) -> None:
        self.max_specs = max_specs
        self.max_bytes = max_bytes
        self.specs: dict[bytes, TlsSpec] = {}
        self.bytes = 0  # the specs' encodings, together
        self.refused = False  # a spec was refused for the caps

    def __len__(self) -> int:
        return len(self.specs)

    def open(self, tls: bytes, spec: TlsSpec) -> None:
        """Record ``spec`` under ``tls``; raises ValueError if ``tls`` is not its id.
        Over a cap it is not kept: the requests naming it fail (``find``)."""
        encoded = encode_tls(spec)
        if tls != tls_id(encoded):
            raise ValueError("TlsOpen: the id is not the SHA-256 of the spec's encoding")
        if tls in self.specs:
            return
        if len(self.specs) >= self.max_specs or self.bytes + len(encoded) > self.max_bytes:
            self.refused = True
            return
        self.specs[tls] = spec
        self.bytes += len(encoded)

    def find(self, tls: bytes) -> TlsSpec:
        """The spec a request names; raises ``ConnectionFailure`` (``broker`` once one
        was refused for the caps, ``protocol`` for one never opened)."""
        spec = self.specs.get(tls)
        if spec is not None:
            return spec
        if self.refused:
            raise ConnectionFailure(
                "broker",
                f"this worker already opened {len(self.specs)} distinct TLS settings of "
                f"{self.bytes} bytes, against the broker's caps (limits.max_tls_specs = "
                f"{self.max_specs}, {self.max_bytes} bytes); reuse SSL contexts instead of "
                "making new ones",
            )
        raise ConnectionFailure("protocol", "the request names TLS settings never opened")
