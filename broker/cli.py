"""``http-broker`` / ``python -m broker``: run a standalone broker, or ask one for figures."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from logging import ERROR, INFO, WARNING
from typing import Any

import msgspec

from .config import Config, ConfigError, changes, keep_restart_only, load, with_overrides
from .logs import configure, event
from .server import BrokerServer
from .stats import fetch_stats
from .top import render, run_top

__all__ = ["main", "serve"]

log = logging.getLogger("broker")


def _parent_gone(parent_pid: int) -> bool:
    return os.getppid() != parent_pid


def _set_allowed_uids(server: BrokerServer, config: Config) -> None:
    server.set_allowed_uids(config.broker.allowed_uids)


def _set_max_workers(server: BrokerServer, config: Config) -> None:
    server.max_workers = config.broker.max_workers


def _set_max_connections(server: BrokerServer, config: Config) -> None:
    server.engine.registry.set_max_connections(config.broker.max_connections)


def _set_timeouts(server: BrokerServer, config: Config) -> None:
    server.default_timeout = config.timeouts.client_timeout()


def _set_nothing(server: BrokerServer, config: Config) -> None:
    """Read where it is used (the drain, the log handler): nothing to set here."""


# How each key a running broker takes is put in force (``broker.config.RESTART_ONLY``:
# the keys it cannot take).
APPLY: dict[str, Callable[[BrokerServer, Config], None]] = {
    "broker.allowed_uids": _set_allowed_uids,
    "broker.max_workers": _set_max_workers,
    "broker.max_connections": _set_max_connections,
    "broker.drain_timeout": _set_nothing,
    "timeouts.connect": _set_timeouts,
    "timeouts.sock_read": _set_timeouts,
    "timeouts.sock_connect": _set_timeouts,
    "log.level": _set_nothing,
    "log.format": _set_nothing,
}


class _Running:
    """The settings in force, and what a SIGHUP does to them."""

    def __init__(
        self,
        server: BrokerServer,
        config: Config,
        config_path: str | None,
        overrides: dict[str, Any],
        handler: logging.Handler | None,
    ) -> None:
        self.server = server
        self.config = config
        self.config_path = config_path
        self.overrides = overrides
        self.handler = handler

    def start(self) -> None:
        for apply in set(APPLY.values()):
            apply(self.server, self.config)

    def reload(self) -> None:
        """Read the file again and apply what can be applied, in one logged line; a file
        that became unusable is refused and the settings in force kept."""
        if self.config_path is None:
            event(log, WARNING, "reload_refused", reason="no --config file to read again")
            return
        try:
            new = with_overrides(load(self.config_path), self.overrides)
        except ConfigError as exc:
            event(log, ERROR, "reload_refused", config=self.config_path, error=str(exc),
                  kept="the settings in force")
            return
        applied, restart = changes(self.config, new)
        new = keep_restart_only(self.config, new)
        self.config = new
        if self.handler is not None:
            configure(new.log.level, new.log.format, self.handler)
        for apply in {APPLY[k] for k in applied}:
            apply(self.server, new)
        event(log, WARNING if restart else INFO, "reloaded", config=self.config_path,
              applied=",".join(applied) or "none",
              needs_restart=",".join(restart) or "none")


async def serve(
    socket_path: str | None = None,
    *,
    parent_pid: int | None = None,
    drain_timeout: float | None = None,
    ready_fd: int | None = None,
    cookie_file: str | None = None,
    config: Config | None = None,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    log_handler: logging.Handler | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or until ``parent_pid`` exits), then drain and stop;
    on SIGHUP, read ``config_path`` again (``_Running.reload``).

    ``config``: the settings (``broker.config``); ``socket_path``, ``drain_timeout`` and
    ``cookie_file`` override its keys, as ``overrides`` do (and do again on a reload).
    ``log_handler``: the handler whose level and format a reload sets."""
    overrides = {
        **(overrides or {}),
        **{k: v for k, v in (
            ("broker.socket", socket_path),
            ("broker.drain_timeout", drain_timeout),
            ("broker.cookie_file", cookie_file),
        ) if v is not None},
    }
    config = with_overrides(config or Config(), overrides)
    b = config.broker
    if not b.socket:
        raise ConfigError("no socket: give --socket, or socket in [broker] of --config")
    loop = asyncio.get_running_loop()
    server = BrokerServer(b.socket, cookie_file=b.cookie_file or None, socket_mode=b.socket_mode)
    running = _Running(server, config, config_path, overrides, log_handler)
    running.start()
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, running.reload)
    kind = type(loop).__module__.partition(".")[0]  # "asyncio" or "uvloop"
    event(log, INFO, "serving", pid=os.getpid(), socket=b.socket, loop=kind,
          config=config_path or "none")
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)

    async def watch_parent() -> None:
        assert parent_pid is not None
        while not stop.is_set():
            if _parent_gone(parent_pid):
                event(log, INFO, "parent_gone", parent_pid=parent_pid, action="stopping")
                stop.set()
                return
            await asyncio.sleep(0.5)

    watcher = loop.create_task(watch_parent()) if parent_pid else None
    await stop.wait()
    # SIGHUP's default action would end the drain: it is refused, and said so
    loop.add_signal_handler(signal.SIGHUP, _reload_while_draining)
    if watcher is not None:
        watcher.cancel()
    drain = running.config.broker.drain_timeout
    event(log, INFO, "draining", streams=server.streams, drain_timeout=drain)
    await server.stop(drain)
    event(log, INFO, "stopped", pid=os.getpid())


def _reload_while_draining() -> None:
    event(log, WARNING, "reload_refused", reason="draining")


LOOPS = ("auto", "uvloop", "asyncio")


def _runner(loop: str) -> Callable[[Coroutine[Any, Any, None]], None]:
    """What runs the broker: uvloop's ``run`` when uvloop is installed ("auto"), else the
    loop named; ImportError for "uvloop" when it is not installed."""
    if loop == "asyncio":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise
        return asyncio.run
    run: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="http-broker",
        description="Run a standalone http-broker, or ask a running one for its figures.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run a broker on a Unix socket")
    p_serve.add_argument(
        "--config", default=None,
        help="a TOML configuration file (docs/operations.md); the flags below override it, "
        "SIGHUP reads it again",
    )
    p_serve.add_argument("--socket", default=None, help="path of the Unix socket to create")
    p_serve.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    p_serve.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    p_serve.add_argument(
        "--drain-timeout", type=float, default=None,
        help="on SIGTERM/SIGINT, seconds to let in-flight requests finish (default 30)",
    )
    p_serve.add_argument(
        "--cookie-file", default=None,
        help="keep the named cookie jars in this JSON file: loaded at start, saved on change",
    )
    p_serve.add_argument(
        "--log-level", default=None,
        help="DEBUG, INFO, WARNING (default), ERROR or CRITICAL",
    )
    p_serve.add_argument(
        "--log-format", choices=("kv", "text"), default=None,
        help="kv: one key=value line per event (default); text: the older human layout",
    )
    p_serve.add_argument(
        "--max-workers", type=int, default=None,
        help="worker connections served at once (default 0: no cap)",
    )
    p_serve.add_argument(
        "--max-connections", type=int, default=None,
        help="upstream connections open at once over all pools (default 0: no cap)",
    )
    p_serve.add_argument(
        "--loop", choices=LOOPS, default=os.environ.get("HTTP_BROKER_LOOP") or "auto",
        help="the event loop: uvloop when installed (auto, the default), or the one named "
        "(default from HTTP_BROKER_LOOP)",
    )
    p_stats = sub.add_parser("stats", help="print a running broker's figures")
    p_stats.add_argument("--socket", default=os.environ.get("HTTP_BROKER"))
    p_stats.add_argument(
        "--json", action="store_true", help="as JSON (docs/operations.md names every field)"
    )
    p_top = sub.add_parser("top", help="show a running broker's figures live, until Ctrl-C")
    p_top.add_argument("--socket", default=os.environ.get("HTTP_BROKER"))
    p_top.add_argument(
        "--interval", type=_positive, default=1.0, help="seconds between frames (default 1)"
    )
    p_top.add_argument("--once", action="store_true", help="print one frame and exit")
    args = parser.parse_args(argv)

    if args.command == "serve":
        return _serve_main(args, parser)
    if not args.socket:
        parser.error(f"{args.command} needs --socket or HTTP_BROKER")
    path = args.socket.removeprefix("unix:")
    if args.command == "top":
        return run_top(lambda: fetch_stats(path), args.interval, args.once)
    return _stats(path, args.json)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _stats(path: str, as_json: bool) -> int:
    try:
        stats = fetch_stats(path)
    except OSError as exc:
        print(f"http-broker: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(msgspec.to_builtins(msgspec.structs.asdict(stats)), indent=2))
    else:
        print(render(stats), end="")
    return 0


def _serve_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``serve``: 2 for a configuration that cannot be used, 1 for a broker that could
    not start."""
    # Until serve() handles it, a SIGHUP (an operator's reload as the broker starts)
    # would end the process: it is ignored until then.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    overrides = {
        "broker.socket": args.socket,
        "broker.drain_timeout": args.drain_timeout,
        "broker.cookie_file": args.cookie_file and os.path.abspath(args.cookie_file),
        "broker.max_workers": args.max_workers,
        "broker.max_connections": args.max_connections,
        "log.level": args.log_level and args.log_level.lower(),
        "log.format": args.log_format,
    }
    config_path = os.path.abspath(args.config) if args.config else None
    try:
        config = with_overrides(load(config_path) if config_path else Config(), overrides)
        if not config.broker.socket:
            raise ConfigError("no socket: give --socket, or socket in [broker] of --config")
    except ConfigError as exc:
        print(f"http-broker: {exc}", file=sys.stderr)
        return 2
    handler = configure(config.log.level, config.log.format)
    if args.loop not in LOOPS:  # from HTTP_BROKER_LOOP
        parser.error(f"the loop must be one of {', '.join(LOOPS)}, got {args.loop!r}")
    try:
        run = _runner(args.loop)
    except ImportError as exc:
        print(f"http-broker: --loop uvloop: {exc}", file=sys.stderr)
        return 1
    try:
        run(
            serve(
                parent_pid=args.parent_pid,
                ready_fd=args.ready_fd,
                config=config,
                config_path=config_path,
                overrides=overrides,
                log_handler=handler,
            )
        )
    except OSError as exc:
        print(f"http-broker: {exc}", file=sys.stderr)
        return 1
    return 0
