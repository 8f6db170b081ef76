"""Code that runs in the worker processes of tests/integration/test_stats_cli.py
(importable under spawn)."""

from __future__ import annotations

import asyncio
import os

from worker_client import ClientConnectorError, ClientSession, CookieJar, TCPConnector


async def _login_then_hold(broker: str, login: str, hold: str, jar_name: str) -> int:
    """Log in through a named jar on pool "stats-idle" (its connection stays idle), fail
    to connect to a closed port, then make one request on pool "stats-one" (limit 1)
    that the server holds."""
    jar = CookieJar(name=jar_name, unsafe=True)
    idle = TCPConnector(name="stats-idle")
    async with ClientSession(broker=broker, connector=idle, cookie_jar=jar) as session:
        async with session.get(login) as resp:
            await resp.read()
        try:
            await session.get("http://127.0.0.1:1/")  # nothing listens: a failure
        except ClientConnectorError:
            pass
        else:
            raise AssertionError("port 1 answered")
        one = TCPConnector(name="stats-one", limit=1)
        async with ClientSession(broker=broker, connector=one) as held:
            async with held.get(hold, params={"pid": os.getpid()}) as resp:
                await resp.read()
    return os.getpid()


def login_then_hold(broker: str, login: str, hold: str, jar_name: str) -> int:
    """Entry point: see ``_login_then_hold``; returns this process's pid."""
    return asyncio.run(_login_then_hold(broker, login, hold, jar_name))


async def _queue(broker: str, hold: str, n: int) -> int:
    one = TCPConnector(name="stats-one", limit=1)
    async with ClientSession(broker=broker, connector=one) as session:

        async def get() -> None:
            async with session.get(hold, params={"pid": os.getpid()}) as resp:
                await resp.read()

        await asyncio.gather(*(get() for _ in range(n)))
    return os.getpid()


def queue(broker: str, hold: str, n: int) -> int:
    """Entry point: ``n`` requests at once on pool "stats-one", behind the one held."""
    return asyncio.run(_queue(broker, hold, n))
