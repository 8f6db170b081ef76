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
from typing import Any

import msgspec

from .server import BrokerServer
from .stats import fetch_stats
from .top import render, run_top

__all__ = ["main", "serve"]

log = logging.getLogger("broker")


def _parent_gone(parent_pid: int) -> bool:
    return os.getppid() != parent_pid


async def serve(
    socket_path: str,
    *,
    parent_pid: int | None = None,
    drain_timeout: float = 30.0,
    ready_fd: int | None = None,
    cookie_file: str | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or until ``parent_pid`` exits), then drain and stop.
    ``cookie_file``: where the named cookie jars are kept (``broker.jar_file``)."""
    loop = asyncio.get_running_loop()
    server = BrokerServer(socket_path, cookie_file=cookie_file)
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    kind = type(loop).__module__.partition(".")[0]  # "asyncio" or "uvloop"
    log.info("broker %d serving on %s (%s)", os.getpid(), socket_path, kind)
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)

    async def watch_parent() -> None:
        assert parent_pid is not None
        while not stop.is_set():
            if _parent_gone(parent_pid):
                log.info("the process that started the broker is gone; stopping")
                stop.set()
                return
            await asyncio.sleep(0.5)

    watcher = loop.create_task(watch_parent()) if parent_pid else None
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    await server.stop(drain_timeout)
    log.info("broker %d stopped", os.getpid())


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
    p_serve.add_argument("--socket", required=True, help="path of the Unix socket to create")
    p_serve.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    p_serve.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    p_serve.add_argument(
        "--drain-timeout", type=float, default=30.0,
        help="on SIGTERM/SIGINT, seconds to let in-flight requests finish (default 30)",
    )
    p_serve.add_argument(
        "--cookie-file", default=None,
        help="keep the named cookie jars in this JSON file: loaded at start, saved on change",
    )
    p_serve.add_argument(
        "--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default) or ERROR"
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
        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
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
                    args.socket,
                    parent_pid=args.parent_pid,
                    drain_timeout=args.drain_timeout,
                    ready_fd=args.ready_fd,
                    cookie_file=args.cookie_file,
                )
            )
        except OSError as exc:
            print(f"http-broker: {exc}", file=sys.stderr)
            return 1
        return 0
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
