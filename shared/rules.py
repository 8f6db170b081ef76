"""What may appear in a request line and header fields: one set of rules for both the
worker (which refuses bad input with a clear error) and the broker (which checks again,
since nothing a worker sends may smuggle bytes onto an upstream connection)."""

from __future__ import annotations

import re

__all__ = ["TOKEN_RE", "FORBIDDEN_VALUE_RE"]

# RFC 9110 tchar: methods and header names.
TOKEN_RE = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
# aiohttp's set: every control character but HTAB (so CR, LF and NUL among them).
FORBIDDEN_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
