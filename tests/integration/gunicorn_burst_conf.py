"""The example's gunicorn settings, plus a burst of upstream requests from every worker
as soon as it starts (post_worker_init runs once in each worker process), so that the
test knows for sure that several processes use the pool at once."""

import asyncio
import os

from examples.gunicorn.gunicorn_conf import on_starting  # noqa: F401


def post_worker_init(worker: object) -> None:
    from worker_client import ClientSession, TCPConnector

    async def burst() -> None:
        connector = TCPConnector(limit=2, name="upstream")
        async with ClientSession(connector=connector) as session:

            async def one() -> None:
                headers = {"X-Worker": str(os.getpid())}
                async with session.get(os.environ["BURST_URL"], headers=headers) as resp:
                    await resp.read()

            await asyncio.gather(*(one() for _ in range(10)))

    asyncio.run(burst())
