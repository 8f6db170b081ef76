"""aiohttp's "Connectors" examples, ported to http-broker, against local servers.

In aiohttp each connector is a pool inside one process. Here a connector describes a
pool in the broker: the same arguments in any process of the group name the same pool.
The resolver example points an ``AsyncResolver`` at a DNS server started here on
127.0.0.1 (the docs use 8.8.8.8; nothing here leaves the machine).

Run from the repository root: ``python examples/connectors.py``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from aiohttp import web  # noqa: E402

import broker  # noqa: E402
from worker_client import (  # noqa: E402
    AsyncResolver,
    ClientSession,
    TCPConnector,
    UnixConnector,
)


def start_dns(port_box: list[int]) -> object:
    """A tiny DNS server (dnslib) answering ``example.test`` with 127.0.0.1."""
    from dnslib import QTYPE, RR, A, DNSRecord
    from dnslib.server import BaseResolver, DNSLogger, DNSServer

    class Resolver(BaseResolver):
        def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
            reply = request.reply()
            if str(request.q.qname).rstrip(".") == "example.test" and request.q.qtype == QTYPE.A:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("127.0.0.1"), ttl=60))
            return reply

    server = DNSServer(Resolver(), address="127.0.0.1", port=0,
                       logger=DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send"))
    server.start_thread()
    port_box.append(server.server.server_address[1])
    return server


async def main() -> None:
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello from {request.host}")

    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    tmp = tempfile.mkdtemp()
    unix_path = os.path.join(tmp, "app.sock")
    await web.UnixSite(runner, unix_path).start()
    dns_port: list[int] = []
    dns = start_dns(dns_port)
    url = f"http://127.0.0.1:{port}/"

    async def show(title: str, connector: object, target: str = url) -> None:
        async with ClientSession(connector=connector) as session:  # type: ignore[arg-type]
            async with session.get(target) as resp:
                print(f"{title:<42} {resp.status} {await resp.text()!r}")

    try:
        await show("TCPConnector()", TCPConnector())
        await show("TCPConnector(limit=30)", TCPConnector(limit=30))
        await show("TCPConnector(limit=0)  # no limit", TCPConnector(limit=0))
        await show("TCPConnector(limit_per_host=30)", TCPConnector(limit_per_host=30))
        await show("TCPConnector(ttl_dns_cache=300)", TCPConnector(ttl_dns_cache=300))
        await show("TCPConnector(use_dns_cache=False)", TCPConnector(use_dns_cache=False))
        resolver = AsyncResolver(nameservers=["127.0.0.1"], udp_port=dns_port[0],
                                 tcp_port=dns_port[0])
        await show("TCPConnector(resolver=AsyncResolver(...))",
                   TCPConnector(resolver=resolver), f"http://example.test:{port}/")
        await show("UnixConnector(path=...)", UnixConnector(path=unix_path),
                   "http://localhost/")
        await show("TCPConnector(rate_limit_per_host=50)",
                   TCPConnector(rate_limit_per_host=50))
    finally:
        dns.stop()  # type: ignore[attr-defined]
        await runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "broker"
    if mode == "broker":
        with broker.start():  # every session below finds it through HTTP_BROKER
            asyncio.run(main())
    else:
        asyncio.run(main())
