"""Code that runs in worker processes of tests/integration/test_shared_memory.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

from worker_client import ClientSession

MiB = 1 << 20


def body(size: int, seed: int = 0) -> bytes:
    """``size`` bytes where every MiB differs (a misplaced slot changes the hash)."""
    base = hashlib.sha256(b"seed %d" % seed).digest() * (MiB // 32)
    whole = b"".join(i.to_bytes(8, "little") + base[8:] for i in range(-(-size // MiB)))
    return whole if len(whole) == size else whole[:size]


def _shm_of(session: ClientSession) -> bool:
    transport: Any = session._transport
    return transport is not None and transport.down is not None


async def _transfer(
    url: str, size: int, seed: int, parallel: int
) -> tuple[list[str], list[str], bool]:
    payload = body(size, seed)
    async with ClientSession() as session:  # HTTP_BROKER

        async def down() -> str:
            async with session.get(f"{url}/body", params={"size": size, "seed": seed}) as resp:
                return hashlib.sha256(await resp.read()).hexdigest()

        async def up() -> str:
            async with session.post(f"{url}/hash", data=payload) as resp:
                return str((await resp.json())["sha256"])

        downs = await asyncio.gather(*(down() for _ in range(parallel)))
        ups = await asyncio.gather(*(up() for _ in range(parallel)))
        return list(downs), list(ups), _shm_of(session)


def transfer(url: str, size: int, seed: int, parallel: int) -> tuple[list[str], list[str], bool]:
    """Entry point: ``parallel`` downloads then ``parallel`` uploads of a ``size`` body at
    once; their SHA-256s and whether shared memory carried them."""
    return asyncio.run(_transfer(url, size, seed, parallel))


async def _stall(url: str, ready: Any) -> None:
    async with ClientSession() as session:
        async with session.get(f"{url}/body", params={"size": 64 * MiB, "seed": 1}) as resp:
            await resp.content.readexactly(MiB)
            ready.put((os.getpid(), _shm_of(session)))
            await asyncio.Event().wait()  # until killed


def stall(url: str, ready: Any) -> None:
    """Entry point: start a large download, read a little, say so, then wait to be killed."""
    asyncio.run(_stall(url, ready))
