"""What may appear in a request line and header fields: one set of rules for both the
worker (which refuses bad input with a clear error) and the broker (which checks again,
since nothing a worker sends may smuggle bytes onto an upstream connection).

The request line is ``method SP request-target SP HTTP-version`` (RFC 9112 section 3),
so a space or a control byte in the target ends it early or starts another line: a
second request on a connection that other workers share. yarl percent-encodes such bytes,
but not in a URL built with ``encoded=True``, nor in the host, nor in a URL the broker
received as a string from a worker. aiohttp refuses control bytes in the request line
with a ``ValueError`` when it writes it (``http_writer._safe_header``); h11 refuses
whitespace and NUL in the target. These rules refuse both, before anything is written.
"""

from __future__ import annotations

import re

from yarl import URL

__all__ = [
    "FORBIDDEN_TARGET_RE",
    "FORBIDDEN_VALUE_RE",
    "HOST_RE",
    "TOKEN_RE",
    "HOST_PROBLEM",
    "TARGET_PROBLEM",
    "check_host_port",
    "host_header_problem",
    "proxy_bypass",
    "proxy_header_problem",
    "sni_name_ok",
    "url_problem",
]

# RFC 9110 tchar: methods and header names.
TOKEN_RE = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
# aiohttp's set: every control character but HTAB (so CR, LF and NUL among them).
FORBIDDEN_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# In the path and query of a request target: every control character (HTAB too), DEL and
# SP. What else RFC 3986 would percent-encode (non-ASCII, '"', '{' ...) is sent as given,
# as aiohttp does for an ``encoded=True`` URL: it cannot end the request line.
FORBIDDEN_TARGET_RE = re.compile(r"[\x00-\x20\x7f]")

# RFC 3986 section 3.2.2 host, then an optional port of digits (section 3.2.3): an
# IP-literal in brackets (IPv6 or IPvFuture, with an RFC 6874 zone "%25..."), or a
# reg-name / IPv4address of unreserved characters, percent-escapes and sub-delims. The
# escapes are checked apart (``_BAD_ESCAPE_RE``): a class is several times faster than an
# alternation per character.
_HOST_CHARS = r"-._~!$&'()*+,;=0-9A-Za-z%"
HOST_RE = re.compile(rf"(?:\[[{_HOST_CHARS}:]+\]|[{_HOST_CHARS}]+)(?::[0-9]{{1,5}})?")
# yarl's ``raw_host``: the same host, an IP-literal without its brackets (yarl adds them
# back for the Host header when there is a ':'); its port is an int, so digits.
_RAW_HOST_RE = re.compile(rf"[{_HOST_CHARS}:]+")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")

HOST_PROBLEM = "the host is not a valid RFC 3986 host[:port]"
TARGET_PROBLEM = "a control character or a space in the path or query"

# Verdicts on hosts already seen: few hosts, every request, on both sides. Bound: 1,024
# hosts of at most 255 characters (a DNS name has 253), so about 300 KiB; a longer host
# is checked every time, and the table starts afresh when full.
_known_hosts: dict[str | None, bool] = {}
_KNOWN_HOSTS_MAX = 1024
_KNOWN_HOST_LENGTH = 255


def url_problem(url: URL) -> str | None:
    """Why ``url`` (absolute) may not become a request target and a Host header, or None."""
    host = url.raw_host
    valid = _known_hosts.get(host)
    if valid is None:
        valid = _judge_host(host)
    if not valid:
        return HOST_PROBLEM
    target = url.raw_path_qs
    # str methods first: the regex costs several times more, and most targets are
    # printable ASCII with no space.
    if (" " in target or not target.isprintable()) and FORBIDDEN_TARGET_RE.search(target):
        return TARGET_PROBLEM
    return None


def _judge_host(host: str | None) -> bool:
    valid = host is not None and _RAW_HOST_RE.fullmatch(host) is not None and _escapes_ok(host)
    if host is None or len(host) <= _KNOWN_HOST_LENGTH:
        if len(_known_hosts) >= _KNOWN_HOSTS_MAX:
            _known_hosts.clear()
        _known_hosts[host] = valid
    return valid


def host_header_problem(value: str) -> str | None:
    """Why ``value`` may not be sent as a ``Host`` header given by the caller, or None.
    Empty is allowed (RFC 9112 section 3.2: a target with no authority)."""
    if value and (HOST_RE.fullmatch(value) is None or not _escapes_ok(value)):
        return f"the Host header {value!r} is not a valid RFC 3986 host[:port]"
    return None


def _escapes_ok(host: str) -> bool:
    return "%" not in host or _BAD_ESCAPE_RE.search(host) is None


def check_host_port(host: str | None, port: int | None) -> None:
    """Both or neither, as aiohttp's ``clear_dns_cache(host, port)`` demands."""
    if (host is None) != (port is None):
        raise ValueError("either both host and port or none of them are allowed")


def proxy_bypass(host: str, port: int, no_proxy: tuple[str, ...] | list[str]) -> bool:
    """Whether a request to ``host:port`` goes direct past its proxy: the entries of a
    ``NO_PROXY`` variable (its value split on commas), read as
    ``urllib.request.proxy_bypass_environment`` reads them. ``*`` alone: every host; an
    entry (leading dots ignored, any case) names the host or a domain above it, with or
    without its port. ``host`` is a URL's raw host (an IPv6 address without brackets)."""
    if not no_proxy:
        return False
    if len(no_proxy) == 1 and no_proxy[0] == "*":
        return True
    hostonly = host.lower()
    with_port = f"[{hostonly}]:{port}" if ":" in hostonly else f"{hostonly}:{port}"
    for entry in no_proxy:
        name = entry.strip()
        if not name:
            continue
        name = name.lstrip(".").lower()
        if name == hostonly or name == with_port:
            return True
        name = "." + name
        if hostonly.endswith(name) or with_port.endswith(name):
            return True
    return False


# The framing of a message is the client's alone: one of these among proxy_headers would
# be a second Host, or a length the proxy reads the body (or the TLS handshake) by.
_PROXY_FRAMING = frozenset(("host", "content-length", "transfer-encoding"))


def proxy_header_problem(name: str, value: str) -> str | None:
    """Why ``name: value`` may not go to a proxy among ``proxy_headers``, or None."""
    if not TOKEN_RE.fullmatch(name) or FORBIDDEN_VALUE_RE.search(value):
        return f"invalid proxy header {name!r}"
    if name.lower() in _PROXY_FRAMING:
        return f"invalid proxy header {name!r}: the client frames its own messages"
    return None


def sni_name_ok(name: str) -> bool:
    """Whether the ssl module takes ``name`` as a ``server_hostname`` (it encodes it
    with the ``idna`` codec, which refuses an empty or over-long label, and refuses NUL)."""
    if "\x00" in name:
        return False
    try:
        name.encode("idna")
    except UnicodeError:
        return False
    return True
