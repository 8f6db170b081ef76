"""Code that runs in worker processes started by the TLS tests (importable under spawn)."""

from __future__ import annotations

import asyncio
import os


async def _get(broker: str, url: str, cafile: str | None, cert: tuple[str, str] | None) -> str:
    import worker_client

    ssl_arg: object = False
    if cafile is not None:
        ssl_arg = ctx = worker_client.create_default_context(cafile=cafile)
        if cert is not None:
            ctx.load_cert_chain(*cert)
    async with worker_client.ClientSession(broker=broker) as session:
        try:
            async with session.get(url, ssl=ssl_arg) as resp:
                return f"{resp.status} {await resp.text()}"
        except worker_client.ClientConnectionError as exc:
            return f"refused: {type(exc).__name__}"


def get(
    broker: str, url: str, cafile: str | None, cert: tuple[str, str] | None = None
) -> tuple[int, str]:
    """Entry point for a spawned worker: one GET of ``url`` through ``broker``, verified
    against ``cafile`` (``ssl=False`` when None), with the client certificate ``cert``
    (certificate and key files) if given; (pid, "status body" or "refused: error")."""
    return os.getpid(), asyncio.run(_get(broker, url, cafile, cert))
