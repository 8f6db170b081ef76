"""Code that runs in worker processes started by the tests (importable under spawn)."""

from __future__ import annotations

import asyncio
import os

from worker_client import ClientSession


async def _fetch_many(url: str, n: int) -> list[int]:
    async with ClientSession() as session:  # finds the broker through HTTP_BROKER
        statuses = []
        for i in range(n):
            async with session.get(url, params={"worker": os.getpid(), "i": i}) as resp:
                await resp.read()
                statuses.append(resp.status)
        return statuses


def fetch_many(url: str, n: int) -> tuple[int, list[int], str | None]:
    """Entry point for a spawned worker: n GETs; (pid, statuses, the broker it used)."""
    return os.getpid(), asyncio.run(_fetch_many(url, n)), os.environ.get("HTTP_BROKER")
