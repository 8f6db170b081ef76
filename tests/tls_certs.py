"""Certificates for the TLS tests, made with the ``openssl`` command line (no Python
crypto package: the runtime stays free of Rust).

``make_certs(directory)`` writes a test CA and certificates signed by it (EC P-256 keys,
fast to make), and returns their paths:

- ``server``: for ``localhost`` and ``127.0.0.1``, valid now;
- ``expired``: the same names, expired yesterday;
- ``wrong_host``: valid, for ``other.invalid`` only;
- ``client``: a client certificate (``clientAuth``) with its key, and ``client_key_encrypted``,
  the same key encrypted with ``CLIENT_KEY_PASSWORD``;
- ``other_ca``: a second CA that signed nothing here (a store that trusts it only).

``tests/conftest.py`` makes them once per test session (``tls_certs`` fixture).
"""

from __future__ import annotations

import hashlib
import ssl
import subprocess
from pathlib import Path
from typing import NamedTuple

__all__ = ["Certs", "make_certs", "CLIENT_KEY_PASSWORD", "server_context", "fingerprint_of"]

CLIENT_KEY_PASSWORD = "s3cret"

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


class Certs(NamedTuple):
    ca: Path
    ca_key: Path
    other_ca: Path
    server: Path
    server_key: Path
    expired: Path
    expired_key: Path
    wrong_host: Path
    wrong_host_key: Path
    client: Path
    client_key: Path
    client_key_encrypted: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _run(
        "req", "-x509", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-days", "3650", "-subj", f"/CN=http-broker test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )


def _leaf(d: Path, name: str, cn: str, ext: str, days: str) -> None:
    (d / f"{name}.ext").write_text(
        f"{ext}\nbasicConstraints=critical,CA:FALSE\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    _run("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    _run(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", days, "-extfile", f"{name}.ext",
        cwd=d,
    )


def make_certs(d: Path) -> Certs:
    d.mkdir(parents=True, exist_ok=True)
    _ca(d, "ca")
    _ca(d, "other_ca")
    server_ext = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"
    _leaf(d, "server", "localhost", server_ext, "365")
    _leaf(d, "expired", "localhost", server_ext, "-1")
    _leaf(d, "wrong_host", "other.invalid",
          "subjectAltName=DNS:other.invalid\nextendedKeyUsage=serverAuth", "365")
    _leaf(d, "client", "http-broker test client", "extendedKeyUsage=clientAuth", "365")
    _run(
        "pkey", "-in", "client.key", "-aes256", "-passout", f"pass:{CLIENT_KEY_PASSWORD}",
        "-out", "client_encrypted.key", cwd=d,
    )
    return Certs(
        ca=d / "ca.pem", ca_key=d / "ca.key", other_ca=d / "other_ca.pem",
        server=d / "server.pem", server_key=d / "server.key",
        expired=d / "expired.pem", expired_key=d / "expired.key",
        wrong_host=d / "wrong_host.pem", wrong_host_key=d / "wrong_host.key",
        client=d / "client.pem", client_key=d / "client.key",
        client_key_encrypted=d / "client_encrypted.key",
    )


def server_context(
    cert: Path, key: Path, *, client_ca: Path | None = None
) -> ssl.SSLContext:
    """A server's context for ``cert``; with ``client_ca``, it requires a client
    certificate signed by that CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=client_ca)
    return ctx


def fingerprint_of(cert: Path) -> bytes:
    """The SHA-256 of the certificate's DER form, as ``Fingerprint`` takes it."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).digest()
