"""Code that runs in worker processes started by the TLS tests (importable under spawn)."""

from __future__ import annotations

import asyncio
import os


async def _get(broker: str, url: str, cafile: str | None) -> tuple[int, str]:
    import worker_client

    ssl_arg = False if cafile is None else worker_client.create_default_context(cafile=cafile)
    async with worker_client.ClientSession(broker=broker) as session:
        async with session.get(url, ssl=ssl_arg) as resp:
            return resp.status, await resp.text()


def get(broker: str, url: str, cafile: str | None) -> tuple[int, int, str]:
    """Entry point for a spawned worker: one GET of ``url`` through ``broker``, verified
    against ``cafile`` (``ssl=False`` when None); (pid, status, body)."""
    status, body = asyncio.run(_get(broker, url, cafile))
    return os.getpid(), status, body
