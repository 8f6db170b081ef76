"""The pool's asyncio side under races that the pure bookkeeping cannot see."""

from __future__ import annotations

import asyncio

from broker.connector import Pool
from broker.resolver import CachedResolver
from shared.specs import ClientTimeout, PoolSpec, ResolverSpec


async def test_a_grant_to_a_waiter_that_just_gave_up_goes_back_to_its_host(raw_server):
    """The waiter's future is already cancelled when a slot frees up: the slot must be
    handed back under the waiter's own key, or its host would stay full for ever."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    base = await raw_server(handler)
    port = int(base.rsplit(":", 1)[1])
    loop = asyncio.get_running_loop()
    resolver = CachedResolver(ResolverSpec(), loop)
    pool = Pool(PoolSpec(limit_per_host=1), loop, resolver)
    key = ("http", "127.0.0.1", port)
    timeout = ClientTimeout()
    try:
        first = await pool.acquire(key, timeout)
        waiting = asyncio.ensure_future(pool.acquire(key, timeout))
        await asyncio.sleep(0)
        assert len(pool.state.waiters) == 1
        waiting.cancel()  # cancels the waiter's future now; its task leaves the queue later
        first.in_use = False
        pool.release(first, reusable=False)  # in between: the freed slot goes to the quitter
        try:
            await waiting
        except asyncio.CancelledError:
            pass
        assert pool.state.per_key.get(key, 0) == 0 and None not in pool.state.per_key
        second = await asyncio.wait_for(pool.acquire(key, timeout), 2)
        assert pool.state.per_key == {key: 1}
        second.in_use = False
        pool.release(second, reusable=False)
    finally:
        await pool.close()
        await resolver.close()
