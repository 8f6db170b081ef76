"""The broker's logs: one line per event, ``key=value``.

A log call names its event and gives its fields (``event(log, INFO, "worker_connected",
pid=123, uid=1000)``); ``KeyValueFormatter`` writes it as
``ts=2026-12-02T03:04:05.123Z level=info logger=broker.server event=worker_connected
pid=123 uid=1000``. A value is quoted (``"..."``, with ``\\"``, ``\\\\`` and ``\\n``) when
it holds a space, a quote, an ``=`` or a control character, or is empty, so every line
splits back into its fields. A record not made by ``event`` (a library's) is
``event=log msg="..."``; an exception is ``exc="Type: message"`` and its traceback
``traceback="..."``, on the same line. ``TextFormatter`` keeps the older human layout.

No credentials: the broker never logs headers, and both formatters pass the whole line
through ``scrub``, which takes the userinfo, query and fragment out of every URL in it
(``http://user:pw@host/p?token=x`` -> ``http://host/p``), wherever the URL came from
(a field, a message, an exception's text).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

__all__ = ["KeyValueFormatter", "TextFormatter", "configure", "event", "formatter", "scrub"]

# A URL ends at whitespace, a double quote or a backslash (never in a URL; what closes
# a quoted value, escaped or not); an apostrophe is a URL's own (a sub-delim yarl leaves
# as it is). Userinfo runs to the authority's last "@" (a raw "@" in a password).
_URL = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?:[^\s/?#\"\\]*@)?(?P<rest>[^\s?#\"\\]*)"
    r"(?:\?[^\s#\"\\]*)?(?:#[^\s\"\\]*)?"
)
_QUOTE = re.compile(r"[\s\"=\\]|[\x00-\x1f\x7f]")


def scrub(text: str) -> str:
    """``text`` with every URL's userinfo, query and fragment removed."""
    if "://" not in text:
        return text
    return _URL.sub(r"\g<scheme>\g<rest>", text)


def event(logger: logging.Logger, level: int, name: str, /, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` (see the module's docstring). An ``exc_info``
    field is the exception, as for ``logging``."""
    if not logger.isEnabledFor(level):
        return
    exc_info = fields.pop("exc_info", None)
    for key, value in fields.items():
        if type(value) is str:
            fields[key] = scrub(value)
    logger.log(
        level, "%s", _Message(name, fields), exc_info=exc_info,
        extra={"event": name, "fields": fields},
    )


class _Message:
    """What ``getMessage`` shows (``caplog``, the text format): ``name k=v ...``."""

    __slots__ = ("name", "fields")

    def __init__(self, name: str, fields: dict[str, Any]) -> None:
        self.name = name
        self.fields = fields

    def __str__(self) -> str:
        return " ".join([self.name, *(f"{k}={_value(v)}" for k, v in self.fields.items())])


def _value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, tuple, set, frozenset)):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    if text and not _QUOTE.search(text):
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    """One line per record: ``ts=... level=... logger=... event=... key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
        ]
        name = getattr(record, "event", None)
        if name is None:
            parts += ["event=log", f"msg={_value(record.getMessage())}"]
        else:
            parts.append(f"event={name}")
            parts += [f"{k}={_value(v)}" for k, v in getattr(record, "fields", {}).items()]
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            parts.append(f"exc={_value(f'{type(exc).__name__}: {exc}')}")
            parts.append(f"traceback={_value(self.formatException(record.exc_info))}")
        return scrub(" ".join(parts))


class TextFormatter(logging.Formatter):
    """The human layout: ``time logger LEVEL event k=v``, a traceback on lines below."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


FORMATTERS: dict[str, type[logging.Formatter]] = {
    "kv": KeyValueFormatter,
    "text": TextFormatter,
}


def formatter(kind: str) -> logging.Formatter:
    return FORMATTERS[kind]()


def configure(level: str, kind: str, handler: logging.Handler | None = None) -> logging.Handler:
    """The root logger at ``level``, writing through ``handler`` (a new one on stderr
    if None) with the ``kind`` formatter; called again on a reload."""
    root = logging.getLogger()
    if handler is None:
        handler = logging.StreamHandler()
        root.addHandler(handler)
    handler.setFormatter(formatter(kind))
    root.setLevel(level.upper())
    return handler
