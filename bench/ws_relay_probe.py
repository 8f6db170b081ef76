"""What a relay process costs a WebSocket: the first measurement for issue 14's choice
between relaying frames through the broker and handing the upgraded socket to the worker.

aiohttp's client talks to an aiohttp.web echo server (its own process) in two ways, in
the same run:

* ``direct``: the client's socket is connected to the server (what a socket handed to
  the worker over SCM_RIGHTS gives: after the hand-over, no process between them);
* ``relay``: through a byte relay in a third process (uvloop when installed, as the
  broker), which copies each read to the other side at once. This is the least a relay
  can cost; the broker's would add its frame parsing and the worker's frame encoding.

For each, the round trip of one small message (``send_str`` then ``receive``, 16 bytes)
``--messages`` times in a row, and the throughput of ``--messages`` messages sent with
32 in flight. ``--rounds`` rounds, the ways in alternating order; medians, and relay's
ratio to direct. Loopback only.

    python bench/ws_relay_probe.py [--rounds 5] [--messages 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def serve() -> None:
    """``--serve``: an echo WebSocket server (text and binary); print its port, serve until
    stdin closes."""
    from aiohttp import WSMsgType, web

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:  # for ws_bench.py's 64 KiB messages
                await ws.send_bytes(msg.data)
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(main())


def relay(target: int) -> None:
    """``--relay PORT``: copy bytes between each client and 127.0.0.1:PORT; print the
    relay's port, run until stdin closes."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def main() -> None:
        server = await asyncio.start_server(client, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        server.close()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def _spawn(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


async def _measure(port: int, messages: int) -> tuple[float, float]:
    """(median round trip in µs, messages per second with 32 in flight)."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"http://127.0.0.1:{port}/"
    ) as ws:
        text = "x" * 16
        for _ in range(100):  # warm up
            await ws.send_str(text)
            await ws.receive()
        trips = []
        for _ in range(messages):
            t = time.perf_counter()
            await ws.send_str(text)
            await ws.receive()
            trips.append(time.perf_counter() - t)
        t = time.perf_counter()
        sent = 0
        for _ in range(32):
            await ws.send_str(text)
            sent += 1
        for _ in range(messages):
            await ws.receive()
            if sent < messages:
                await ws.send_str(text)
                sent += 1
        rate = messages / (time.perf_counter() - t)
        return statistics.median(trips) * 1e6, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--relay", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if args.relay:
        relay(args.relay)
        return
    server, port = _spawn("--serve")
    relayer, relay_port = _spawn("--relay", str(port))
    results: dict[str, list[tuple[float, float]]] = {"direct": [], "relay": []}
    try:
        for r in range(args.rounds):
            order = ["direct", "relay"] if r % 2 == 0 else ["relay", "direct"]
            for way in order:
                target = port if way == "direct" else relay_port
                results[way].append(asyncio.run(_measure(target, args.messages)))
    finally:
        for proc in (relayer, server):
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(10)
    print(f"{args.rounds} rounds x {args.messages} messages of 16 bytes; medians")
    print(f"{'':8} {'round trip µs':>14} {'msgs/s (32 in flight)':>22}")
    med = {}
    for way, rows in results.items():
        med[way] = (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
        print(f"{way:8} {med[way][0]:14.1f} {med[way][1]:22,.0f}")
    print(
        f"relay/direct: round trip {med['relay'][0] / med['direct'][0]:.2f}x, "
        f"throughput {med['relay'][1] / med['direct'][1]:.2f}x"
    )


if __name__ == "__main__":
    main()
