"""WebSockets, issue 14's benchmark: our ``ClientSession.ws_connect`` beside aiohttp's.

One aiohttp.web echo WebSocket server (``bench/ws_relay_probe.py --serve``, its own
process, 127.0.0.1) answers every way, in the same run. The ways (``--ways``):

* ``aiohttp``: ``aiohttp.ClientSession().ws_connect(url)``;
* ``embedded``: ``worker_client.ClientSession(broker=None).ws_connect(url)``, the engine
  in this process;
* ``broker``: ``worker_client.ClientSession(broker=...).ws_connect(url)`` through a
  broker process this run starts (``broker.start()``; uvloop when installed).

Ours are skipped, with a line saying so, while ``worker_client.ClientSession`` has no
``ws_connect``. Every way uses ``ws_connect``'s defaults (no compression, as aiohttp's).

Each way and round connects once (not timed), checks the echo over 100 untimed messages,
then measures, on that one WebSocket:

* round trip: ``send_str`` of 16 bytes, then ``receive()`` of the echo, ``--messages``
  times in a row: the median and p99, in µs;
* throughput: ``--messages`` messages of 16 bytes, a sender task and a receiver task
  with at most 32 in flight: messages/s;
* big: ``--big`` binary messages of 64 KiB, the same way (32 in flight): MB/s (10^6
  bytes) of payload echoed (each byte crosses twice). ``--big 0`` leaves it out.

A message that is not the echo's type (a CLOSE, an ERROR) fails the cell. ``--rounds``
rounds, the ways in a rotating order; the table gives the medians over rounds and each
way's ratio to aiohttp, written so that > 1 means faster than aiohttp (latency: aiohttp's
/ ours; throughput: ours / aiohttp's). A cell that fails (or takes more than
``--cell-timeout`` seconds) is reported and the run goes on; the exit status is then 1.
``--json PATH`` writes every sample. ``--pin CPU`` runs every process of the run (echo
server, broker, this one) on that CPU, as ``bench/compare.py --pin`` does. The client
runs on asyncio's default loop. Loopback only.

    python3 bench/ws_bench.py [--rounds 11] [--messages 5000] [--big 500] \\
        [--ways aiohttp,embedded,broker] [--json out.json] [--pin 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)

ECHO_SERVER = os.path.join(ROOT, "bench", "ws_relay_probe.py")
WAYS = {
    "aiohttp": "aiohttp",
    "embedded": "http-broker, embedded",
    "broker": "http-broker, via broker",
}
OURS = ("embedded", "broker")
SMALL = "x" * 16
BIG = bytes(range(256)) * 256  # 64 KiB
IN_FLIGHT = 32
WARM_UP = 100
TEXT, BINARY = 1, 2  # WSMsgType's values, aiohttp's and ours

# (key, label, unit, higher is better, format)
METRICS = [
    ("rtt_p50_us", "round trip, median", "µs", False, "{:,.1f}"),
    ("rtt_p99_us", "round trip, p99", "µs", False, "{:,.1f}"),
    ("msgs_s", f"16 B messages, {IN_FLIGHT} in flight", "msgs/s", True, "{:,.0f}"),
    ("big_mb_s", f"64 KiB binary echo, {IN_FLIGHT} in flight", "MB/s", True, "{:,.1f}"),
]


class Unexpected(Exception):
    """The echo did not come back as sent."""


# -- the measurements ----------------------------------------------------------------


def _check(msg: Any, kind: int) -> None:
    if msg.type != kind:
        raise Unexpected(f"expected type {kind}, received {msg.type!r}: {msg.data!r:.200}")


async def round_trips(ws: Any, n: int) -> list[float]:
    trips = []
    for _ in range(n):
        t = time.perf_counter()
        await ws.send_str(SMALL)
        msg = await ws.receive()
        trips.append(time.perf_counter() - t)
        _check(msg, TEXT)
    return trips


async def windowed(
    ws: Any, n: int, send: Callable[[Any], Awaitable[None]], payload: Any, kind: int
) -> float:
    """Seconds for ``n`` echoes with at most ``IN_FLIGHT`` sent and not yet received."""
    window = asyncio.Semaphore(IN_FLIGHT)

    async def sender() -> None:
        for _ in range(n):
            await window.acquire()
            await send(payload)

    async def receiver() -> None:
        for _ in range(n):
            _check(await ws.receive(), kind)
            window.release()

    t = time.perf_counter()
    tasks = [asyncio.ensure_future(sender()), asyncio.ensure_future(receiver())]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:  # one failed: the other would wait for ever
            task.cancel()
    return time.perf_counter() - t


async def cell(session: Any, url: str, messages: int, big: int) -> dict[str, float]:
    async with session.ws_connect(url) as ws:
        for _ in range(WARM_UP):
            await ws.send_str(SMALL)
            msg = await ws.receive()
            _check(msg, TEXT)
            if msg.data != SMALL:
                raise Unexpected(f"the echo of {SMALL!r} was {msg.data!r:.200}")
        trips = sorted(await round_trips(ws, messages))
        sample = {
            "rtt_p50_us": statistics.median(trips) * 1e6,
            "rtt_p99_us": trips[min(len(trips) - 1, int(len(trips) * 0.99))] * 1e6,
            "msgs_s": messages / await windowed(ws, messages, ws.send_str, SMALL, TEXT),
        }
        if big:
            await ws.send_bytes(BIG)
            msg = await ws.receive()
            _check(msg, BINARY)
            if msg.data != BIG:
                raise Unexpected("the echo of 64 KiB differs from what was sent")
            seconds = await windowed(ws, big, ws.send_bytes, BIG, BINARY)
            sample["big_mb_s"] = big * len(BIG) / seconds / 1e6
    return sample


# -- the run -------------------------------------------------------------------------


def has_ws_connect() -> bool:
    import worker_client

    return hasattr(worker_client.ClientSession, "ws_connect")


def session_makers(broker_socket: str | None) -> dict[str, Callable[[], Any]]:
    import aiohttp

    import worker_client

    return {
        "aiohttp": aiohttp.ClientSession,
        "embedded": lambda: worker_client.ClientSession(broker=None),
        "broker": lambda: worker_client.ClientSession(broker=broker_socket),
    }


def rotations(ways: list[str], rounds: int) -> Iterator[tuple[int, list[str]]]:
    for r in range(rounds):
        k = r % len(ways)
        yield r, ways[k:] + ways[:k]


async def run(
    args: argparse.Namespace, url: str, broker_socket: str | None
) -> list[dict[str, Any]]:
    makers = session_makers(broker_socket)
    sessions = {way: makers[way]() for way in args.ways}
    cells: list[dict[str, Any]] = []
    try:
        for r, order in rotations(args.ways, args.rounds):
            for way in order:
                entry: dict[str, Any] = {"way": way, "round": r}
                try:
                    entry["sample"] = await asyncio.wait_for(
                        cell(sessions[way], url, args.messages, args.big), args.cell_timeout
                    )
                except Exception as exc:  # one failed cell, reported; the run goes on
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                    print(f"  {way}, round {r + 1}: FAILED: {entry['error']}", file=sys.stderr)
                cells.append(entry)
            print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for session in sessions.values():
            await session.close()
    return cells


def start_echo_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, ECHO_SERVER, "--serve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.isdigit():
        stop_echo_server(proc)
        raise RuntimeError(f"the echo server did not start (printed {line!r})")
    return proc, f"http://127.0.0.1:{line}/"


def stop_echo_server(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()  # its end of stdin ends it
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the report ----------------------------------------------------------------------


def medians(cells: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    samples: dict[str, dict[str, list[float]]] = {}
    for entry in cells:
        for key, value in entry.get("sample", {}).items():
            samples.setdefault(entry["way"], {}).setdefault(key, []).append(value)
    return {
        way: {key: statistics.median(xs) for key, xs in by_key.items()}
        for way, by_key in samples.items()
    }


def ratio(value: float, base: float, higher: bool) -> float:
    """> 1: faster than aiohttp."""
    return value / base if higher else base / value


def table(meds: dict[str, dict[str, float]], ways: list[str], failed: set[str]) -> str:
    rows = [
        "| | " + " | ".join(WAYS[w] for w in ways) + " |",
        "| --- |" + " ---: |" * len(ways),
    ]
    base = meds.get("aiohttp", {})
    for key, label, unit, higher, fmt in METRICS:
        if not any(key in meds.get(w, {}) for w in ways):
            continue
        arrow = "higher is better" if higher else "lower is better"
        row = []
        for way in ways:
            value = meds.get(way, {}).get(key)
            if value is None:
                row.append("failed" if way in failed else "-")
            elif way == "aiohttp" or not base.get(key):
                row.append(fmt.format(value))
            else:
                row.append(f"{fmt.format(value)} ({ratio(value, base[key], higher):.2f}x)")
        rows.append(f"| {label} ({unit}, {arrow}) | " + " | ".join(row) + " |")
    return "\n".join(rows)


def meta(args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    out = {
        "python": platform.python_version(), "aiohttp": version("aiohttp"),
        "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "seconds": round(seconds, 1), "broker_loop": None,
    }
    if "broker" in args.ways:
        try:
            out["broker_loop"] = f"uvloop {version('uvloop')}"
        except PackageNotFoundError:
            out["broker_loop"] = "asyncio"
    return out


def describe(args: argparse.Namespace, m: dict[str, Any]) -> str:
    big = f", {args.big} x 64 KiB binary" if args.big else ""
    broker = f"; broker process: {m['broker_loop']}" if m["broker_loop"] else ""
    pinned = f" Every process pinned to CPU {args.pin}." if args.pin is not None else ""
    return (
        f"WebSocket echo, aiohttp.web on 127.0.0.1 (its own process). {args.rounds} rounds "
        f"x {args.messages} messages of 16 bytes{big}; medians over rounds.\n"
        f"In brackets: the ratio to aiohttp, > 1 = faster than aiohttp (latency: "
        f"aiohttp's / ours; throughput: ours / aiohttp's).\n"
        f"Client loop: asyncio{broker}. Python {m['python']}, aiohttp {m['aiohttp']}, "
        f"{m['cpus']} CPUs, {m['date']}; {m['seconds']:.0f} s.{pinned}"
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--messages", type=int, default=5000,
                        help="round trips, and messages for the throughput, per round")
    parser.add_argument("--big", type=int, default=500,
                        help="64 KiB binary messages per round (0: none)")
    parser.add_argument("--ways", default=",".join(WAYS), help="comma-separated")
    parser.add_argument("--json", metavar="PATH", help="write every sample there")
    parser.add_argument("--cell-timeout", type=float, default=120.0,
                        help="seconds one way may take in one round")
    parser.add_argument("--pin", type=int, metavar="CPU", default=None,
                        help="run every process of the run on this one CPU")
    args = parser.parse_args(argv)
    if args.pin is not None and args.pin not in os.sched_getaffinity(0):
        parser.error(f"--pin {args.pin}: not one of this process's CPUs "
                     f"{sorted(os.sched_getaffinity(0))}")
    args.ways = list(dict.fromkeys(args.ways.split(",")))
    if set(args.ways) - set(WAYS):
        parser.error(f"unknown ways {sorted(set(args.ways) - set(WAYS))}; choose from {list(WAYS)}")
    if args.rounds < 1 or args.messages < 1 or args.big < 0:
        parser.error("--rounds and --messages must be at least 1, --big at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    skipped = [w for w in args.ways if w in OURS]
    if skipped and not has_ws_connect():
        print(f"{', '.join(skipped)}: skipped: worker_client.ClientSession has no ws_connect yet")
        args.ways = [w for w in args.ways if w not in OURS]
    if not args.ways:
        print("no way left to measure")
        return 1
    os.environ.pop("HTTP_BROKER", None)  # embedded must mean embedded
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})  # every child inherits it
    started = time.monotonic()
    server, url = start_echo_server()
    try:
        with ExitStack() as stack:
            broker_socket = None
            if "broker" in args.ways:
                import broker

                broker_socket = stack.enter_context(broker.start(export=False)).socket_path
            cells = asyncio.run(run(args, url, broker_socket))
    finally:
        stop_echo_server(server)
    meds = medians(cells)
    failed = {entry["way"] for entry in cells if "error" in entry}
    about = meta(args, time.monotonic() - started)
    print(f"\n{describe(args, about)}\n\n{table(meds, args.ways, failed)}")
    if args.json:
        with open(args.json, "w") as f:
            doc = {"meta": about, "args": vars(args), "medians": meds, "cells": cells}
            json.dump(doc, f, indent=1)
            f.write("\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
