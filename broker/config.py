"""The standalone broker's configuration file (``http-broker serve --config FILE``).

A TOML file read with ``tomllib`` (``tomli`` before Python 3.11) and checked by msgspec
into frozen Structs that forbid unknown fields, so a misspelt key is an error naming the
key, its table and the file, never a setting silently ignored. Every key is optional;
the defaults are the Structs' (docs/operations.md lists them). Command-line flags
override the file (``with_overrides``).

On SIGHUP the file is read again; ``changes`` says which keys differ, split by
``RESTART_ONLY`` into those applied live and those that need a restart.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Literal

import msgspec

from shared.specs import DEFAULT_TIMEOUT, ClientTimeout

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "RESTART_ONLY", "BrokerSettings", "Config", "ConfigError", "LogSettings",
    "TimeoutSettings", "changes", "keep_restart_only", "load", "parse", "with_overrides",
]

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["kv", "text"]


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and key."""


class BrokerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[broker]``"""

    socket: str = ""  # required, here or as --socket
    socket_mode: int = 0o600
    allowed_uids: tuple[int, ...] = ()
    cookie_file: str = ""
    max_workers: int = 0  # worker connections at once; 0: no cap
    max_connections: int = 0  # upstream connections open at once over all pools; 0: no cap
    drain_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.socket_mode <= 0o777:
            raise ValueError(f"socket_mode must be within 0o000..0o777, got {self.socket_mode:#o}")
        if self.socket_mode & 0o007:
            raise ValueError(
                f"socket_mode {self.socket_mode:#o} lets every user connect; "
                "use a group (0o660) and allowed_uids instead"
            )
        for name in ("max_workers", "max_connections", "drain_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if any(uid < 0 for uid in self.allowed_uids):
            raise ValueError("allowed_uids must be user ids >= 0")


class TimeoutSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[timeouts]``: for a request whose session kept aiohttp's default timeout (sent
    as "default"), the parts of its ``ClientTimeout`` that the broker enforces (seconds;
    0: none). A session or request with a timeout of its own keeps it. ``total`` is not
    among them: the worker enforces it, with its own session's value."""

    connect: float = 0.0
    sock_read: float = 0.0
    sock_connect: float = 30.0

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (0: no timeout), got {value!r}")

    def client_timeout(self) -> ClientTimeout:
        return ClientTimeout(
            total=DEFAULT_TIMEOUT.total,
            connect=self.connect or None,
            sock_read=self.sock_read or None,
            sock_connect=self.sock_connect or None,
        )


class LogSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[log]``"""

    level: LogLevel = "warning"
    format: LogFormat = "kv"


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    broker: BrokerSettings = BrokerSettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    log: LogSettings = LogSettings()


RESTART_ONLY = frozenset({"broker.socket", "broker.socket_mode", "broker.cookie_file"})
"""Keys a running broker cannot change: a SIGHUP that changes them says so."""

_UNKNOWN = re.compile(r"unknown field `(?P<key>[^`]*)`")
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def load(path: str | os.PathLike[str]) -> Config:
    """The configuration in the TOML file at ``path``; ``ConfigError`` saying what is wrong."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{name}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib's for bytes that are not UTF-8
        raise ConfigError(
            f"{name}: not valid TOML: not UTF-8 (byte {exc.start}: {exc.reason})"
        ) from None
    return _anchored(parse(data, name), os.path.dirname(os.path.abspath(name)))


def _anchored(config: Config, base: str) -> Config:
    """``config`` with a relative ``socket`` or ``cookie_file`` taken as relative to
    ``base``, the file's directory: not to the working directory, which is ``/`` under
    systemd and whatever the shell had elsewhere."""
    b = config.broker
    fixed = {
        key: os.path.join(base, value)
        for key in ("socket", "cookie_file")
        if (value := getattr(b, key)) and not os.path.isabs(value)
    }
    if not fixed:
        return config
    return msgspec.structs.replace(config, broker=msgspec.structs.replace(b, **fixed))


def parse(data: dict[str, Any], name: str = "<config>") -> Config:
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{name}: {_explain(str(exc))}") from None


def _explain(message: str) -> str:
    """msgspec's "Object contains unknown field `x` - at `$.broker`" as "unknown key 'x'
    (in [broker])"; "Expected `int`, got `str` - at `$.broker.max_workers`" as "key
    'max_workers' (in [broker]): expected `int`, got `str`"."""
    where = _PATH.search(message)
    path = where["path"].lstrip(".").split(".") if where else []
    text = message[: where.start()] if where else message
    unknown = _UNKNOWN.search(text)
    if unknown:
        return f"unknown key {unknown['key']!r}{_table(path)}"
    if not path:
        return text
    text = text[:1].lower() + text[1:]
    if path[-1] in _SECTIONS and len(path) == 1:  # a whole table is wrong, or its check
        return f"[{path[0]}]: {text}"
    return f"key {path[-1]!r}{_table(path[:-1])}: {text}"


_SECTIONS = frozenset(Config.__struct_fields__)


def _table(path: list[str]) -> str:
    return f" (in [{'.'.join(path)}])" if path else " (at the top level)"


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """``config`` with the command line's values (``"broker.socket": "/x"``) put in;
    ``ConfigError`` if one does not pass the checks."""
    tables: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        if value is not None:
            table, _, key = dotted.partition(".")
            tables.setdefault(table, {})[key] = value
    if not tables:
        return config
    data = msgspec.to_builtins(config)
    for table, values in tables.items():
        data[table].update(values)
    return parse(data, "the command line")


def changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """The keys that differ: (those a running broker applies, those that need a restart)."""
    applied: list[str] = []
    restart: list[str] = []
    for table in Config.__struct_fields__:
        a, b = getattr(old, table), getattr(new, table)
        for key in type(a).__struct_fields__:
            if getattr(a, key) != getattr(b, key):
                dotted = f"{table}.{key}"
                (restart if dotted in RESTART_ONLY else applied).append(dotted)
    return applied, restart


def keep_restart_only(old: Config, new: Config) -> Config:
    """``new`` with the ``RESTART_ONLY`` keys as in ``old``: what a reload puts in force."""
    for dotted in RESTART_ONLY:
        table, _, key = dotted.partition(".")
        kept = getattr(getattr(old, table), key)
        section = msgspec.structs.replace(getattr(new, table), **{key: kept})
        new = msgspec.structs.replace(new, **{table: section})
    return new
