"""The broker's cookie file: the named jars, kept across restarts.

How this works. At start the file is read and the named jars made from it (a file that
does not exist is an empty one). A file that cannot be read as a whole (bad JSON, a bad
structure, a bad cookie record, cut short) is reported with ``logging.error`` and moved
aside to ``PATH.corrupt-<unix time>``, and the broker starts with no named jars: it is
never silently dropped, nor half loaded.

A change to a named jar schedules a save ``SAVE_DELAY`` (0.5 s) later; changes until
then ride along, so a save follows a change by at most about a second. The contents are
dumped on the loop (a consistent picture, no lock needed); encoding and writing run in
the default executor, one save at a time (a change during a save schedules the next).
``close`` saves once more if anything changed. Session cookies (no expiry) are saved
too: the broker, not a browser, is the session.

A save replaces the file atomically: a temporary file in the same directory, created
0600, written and fsync'ed, renamed over the file with ``os.replace``, then the directory
fsync'ed. A failed save (disk full, the directory gone...) leaves the previous file as it
was, is logged, and is tried again after 1 s, then twice as long each time up to
``RETRY_MAX`` (30 s), until one succeeds.

File format (JSON): ``{"version": 1, "jars": [{"name", "unsafe", "quote_cookie",
"treat_as_secure_origin": [...], "cookies": <CookieStore.dump()>}]}``.
Bounds: the file holds at most the named jars' contents (``broker.jars``' caps: 64 jars
of about 17 MiB at worst, so a file of up to about 1.5 GB in the worst case, whose dump
holds the loop for about 0.5 s); reading it at start reads it whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from logging import ERROR, WARNING
from typing import Any

from shared.messages import CookieData
from shared.specs import JarSpec

from .jars import JarTable
from .logs import event

__all__ = ["CookieFile", "parse_document", "write_atomically", "FORMAT_VERSION"]

log = logging.getLogger("broker.jar_file")

FORMAT_VERSION = 1
SAVE_DELAY = 0.5
RETRY_MAX = 30.0


def document(jars: list[tuple[JarSpec, CookieData]]) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "jars": [
            {
                "name": spec.name,
                "unsafe": spec.unsafe,
                "quote_cookie": spec.quote_cookie,
                "treat_as_secure_origin": list(spec.treat_as_secure_origin),
                "cookies": cookies,
            }
            for spec, cookies in jars
        ],
    }


def _jar(entry: object) -> tuple[JarSpec, CookieData]:
    if not isinstance(entry, dict):
        raise ValueError("a jar must be an object")
    name, unsafe, quote = entry.get("name"), entry.get("unsafe"), entry.get("quote_cookie")
    origins = entry.get("treat_as_secure_origin")
    if not isinstance(name, str) or not isinstance(unsafe, bool) or not isinstance(quote, bool):
        raise ValueError("a jar needs a name (text), unsafe and quote_cookie (true or false)")
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise ValueError(f"jar {name!r}: treat_as_secure_origin must be a list of text")
    cookies = entry.get("cookies")
    if not isinstance(cookies, dict):
        raise ValueError(f"jar {name!r}: cookies must be an object")
    spec = JarSpec(
        name=name, unsafe=unsafe, quote_cookie=quote, treat_as_secure_origin=tuple(origins)
    )
    return spec, cookies


def parse_document(doc: object) -> list[tuple[JarSpec, CookieData]]:
    """The named jars of a cookie file's JSON value; ``ValueError`` says what is wrong
    (the cookie records themselves are checked as they load)."""
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a cookie file of format version {FORMAT_VERSION}")
    jars = doc.get("jars")
    if not isinstance(jars, list):
        raise ValueError("'jars' must be a list")
    return [_jar(entry) for entry in jars]


def write_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``: all of it or, on failure, the old file as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _encode(jars: list[tuple[JarSpec, CookieData]]) -> bytes:
    return json.dumps(document(jars), separators=(",", ":")).encode()


class CookieFile:
    """The cookie file at ``path`` for the named jars of ``table``."""

    def __init__(self, path: str, table: JarTable, delay: float = SAVE_DELAY) -> None:
        self.path = path
        self.table = table
        self.delay = delay
        self.saves = 0  # completed saves, for figures and tests
        self._timer: asyncio.TimerHandle | None = None
        self._saving: asyncio.Task[None] | None = None
        self._dirty = False
        self._closed = False
        self._retry = 0.0  # the wait before the next try after a failed save; 0: none failed

    def load(self) -> None:
        """Make the named jars from the file; a corrupt file is moved aside. ``OSError``
        if the file cannot be read or its directory does not exist (nothing to save to)."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise OSError(f"the cookie file's directory {directory} does not exist")
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return
        try:
            self.table.restore(parse_document(json.loads(raw)))
        except (ValueError, RecursionError) as exc:  # JSON and UnicodeDecodeError included
            aside = f"{self.path}.corrupt-{int(time.time())}"
            os.replace(self.path, aside)
            event(log, ERROR, "cookie_file_corrupt", path=self.path, error=str(exc),
                  moved_to=aside, action="started with no named cookie jars")

    def start(self) -> None:
        """Save on every change of a named jar from now on."""
        self.table.on_change = self.changed

    def changed(self) -> None:
        self._dirty = True
        if self._timer is None and self._saving is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.delay, self._save_now)

    def _save_now(self) -> None:
        self._timer = None
        self._saving = asyncio.get_running_loop().create_task(self._save())

    async def _save(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                contents = self.table.named_contents()
                loop = asyncio.get_running_loop()
                try:
                    await loop.run_in_executor(None, self._write, contents)
                except OSError as exc:
                    self._dirty = True
                    self._failed(exc)
                    return
                if self._retry:
                    event(log, WARNING, "cookie_file_saved_again", path=self.path)
                    self._retry = 0.0
                self.saves += 1
                if self._dirty and not self._closed:
                    await asyncio.sleep(self.delay)  # coalesce what came during the write
        finally:
            self._saving = None

    def _failed(self, exc: OSError) -> None:
        """Try again later, waiting twice as long each time up to ``RETRY_MAX``; log the
        first failure of a run, not each one."""
        if self._closed:
            event(log, ERROR, "cookie_file_save_failed", path=self.path, error=str(exc),
                  action="stopping: the changes since the last save are lost")
            return
        if not self._retry:
            event(log, ERROR, "cookie_file_save_failed", path=self.path, error=str(exc),
                  action="trying again")
        self._retry = min(max(self._retry * 2, self.delay * 2), RETRY_MAX)
        if not self._closed and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._retry, self._save_now)

    def _write(self, contents: list[tuple[JarSpec, CookieData]]) -> None:
        write_atomically(self.path, _encode(contents))

    async def close(self) -> None:
        """Stop saving on change; save what has not been saved yet."""
        self._closed = True
        self.table.on_change = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._saving is not None:
            await asyncio.shield(self._saving)
        if self._dirty:
            self._saving = asyncio.get_running_loop().create_task(self._save())
            await asyncio.shield(self._saving)
