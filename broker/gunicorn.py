"""gunicorn server hooks: one broker for a whole gunicorn app, in one line of its config.

    # gunicorn_conf.py
    from broker.gunicorn import on_starting, on_exit

How this works:

- ``on_starting`` runs once, in the master, before any worker is forked. It enters
  ``broker.start()``, which spawns the broker and exports ``HTTP_BROKER``; every worker
  inherits that variable, so a ``ClientSession`` or ``SyncSession`` made in a worker uses
  the shared broker. Make sessions in the workers (in the app's startup, or lazily on the
  first request), not at import time with ``--preload``: the app is then imported before
  ``on_starting``, and a session made then would run embedded.
- A reload (``HUP``) re-reads the config file as a fresh module; its ``from broker.gunicorn
  import ...`` finds this module already imported, and the running broker is kept here, in
  this module's state, not in the config file's. gunicorn does not call ``on_starting``
  again on a reload, so the same broker serves the new workers.
- Workers that exit (a reload, ``TTOU``, ``max_requests``, a crash) inherit the
  ``broker.start()`` block but never stop the broker: only the process that started it
  (the master) does.
- ``on_exit`` runs when the master exits and stops the broker: SIGTERM, the drain
  (``HTTP_BROKER_DRAIN_TIMEOUT``), then the socket and its directory are removed. If the
  master leaves without ``on_exit`` (an error in its main loop, SIGKILL), an ``atexit``
  handler stops the broker, and failing that the broker sees that its parent is gone
  and stops by itself within a second.
- An ``HTTP_BROKER`` already in the master's environment (a standalone broker run by the
  operator; ``raw_env`` in the config works too) is used as it is: nothing is started,
  and ``on_exit`` leaves it alone.
- A re-exec (``USR2``) starts a new master that inherits ``HTTP_BROKER`` from the old
  one. ``HTTP_BROKER_GUNICORN_MASTER`` (the pid of the master that started the broker,
  set next to ``HTTP_BROKER``) tells that broker apart from an operator's: the new master
  starts its own broker, since the old one stops with the old master.

Settings are read from the master's environment when ``on_starting`` runs (gunicorn
applies ``raw_env`` before that, so ``raw_env = ["HTTP_BROKER_LOG_LEVEL=INFO"]`` in the
config file works):

- ``HTTP_BROKER_LOG_LEVEL``: ``DEBUG``, ``INFO``, ``WARNING`` (default) or ``ERROR``; the
  broker logs to the master's stderr.
- ``HTTP_BROKER_COOKIE_FILE``: keep the named cookie jars in this JSON file.
- ``HTTP_BROKER_DRAIN_TIMEOUT``: seconds a stop waits for requests in flight (30).

A bad value stops gunicorn at start with a message that names the variable.
This module does not import gunicorn: the hooks get the arbiter as their argument.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Callable, Mapping
from typing import Any

from .start import start

__all__ = ["on_starting", "on_exit"]

MASTER_VAR = "HTTP_BROKER_GUNICORN_MASTER"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(value: str) -> str:
    if value.upper() not in _LOG_LEVELS:
        raise ValueError(f"one of {', '.join(_LOG_LEVELS)}")
    return value.upper()


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise ValueError("a number of seconds, 0 or more")
    return seconds


# variable -> (keyword of broker.start(), parser: raises ValueError saying what it wants)
SETTINGS: dict[str, tuple[str, Callable[[str], object]]] = {
    "HTTP_BROKER_LOG_LEVEL": ("log_level", _log_level),
    "HTTP_BROKER_COOKIE_FILE": ("cookie_file", str),
    "HTTP_BROKER_DRAIN_TIMEOUT": ("drain_timeout", _seconds),
}


def broker_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The keywords for ``broker.start()`` from the ``HTTP_BROKER_*`` settings."""
    kwargs: dict[str, Any] = {}
    for var, (keyword, parse) in SETTINGS.items():
        raw = environ.get(var)
        if raw is None or raw == "":
            continue
        try:
            kwargs[keyword] = parse(raw)
        except ValueError as e:
            raise RuntimeError(f"http-broker: {var}={raw!r} is not valid: want {e}") from None
    return kwargs


class _Running:
    """The broker this process started, kept across reloads; stopped only by its starter."""

    def __init__(self) -> None:
        self.block: contextlib.ExitStack | None = None
        self.owner = 0
        self.atexit_registered = False

    def start(self, log: Any) -> None:
        block = contextlib.ExitStack()
        proc = block.enter_context(start(**broker_settings(os.environ)))
        block.callback(_restore, MASTER_VAR, os.environ.get(MASTER_VAR))
        self.block, self.owner = block, os.getpid()
        os.environ[MASTER_VAR] = str(self.owner)
        if not self.atexit_registered:
            atexit.register(self.stop)
            self.atexit_registered = True
        log.info("http-broker: started pid %s at %s", proc.pid, proc.socket_path)

    def running_here(self) -> bool:
        return self.block is not None and self.owner == os.getpid()

    def stop(self) -> None:
        block = self.block
        if block is None or self.owner != os.getpid():
            return
        self.block = None
        block.close()


def _restore(var: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(var, None)
    else:
        os.environ[var] = value


_running = _Running()


def _operators_broker() -> str | None:
    """The ``HTTP_BROKER`` to use as it is: set, and not by a gunicorn master's hooks."""
    address = os.environ.get("HTTP_BROKER")
    if not address or os.environ.get(MASTER_VAR):
        return None
    return address


def on_starting(server: Any) -> None:
    """gunicorn hook (master, before the first fork): start the group's broker."""
    if _running.running_here():
        return
    address = _operators_broker()
    if address is not None:
        server.log.info("http-broker: using the broker at %s (HTTP_BROKER)", address)
        return
    _running.start(server.log)


def on_exit(server: Any) -> None:
    """gunicorn hook (master, on its way out): stop the broker ``on_starting`` started."""
    if _running.running_here():
        server.log.info("http-broker: stopping")
    _running.stop()
