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


async def _burst(broker: str, urls: list[str], n: int, connector_kw: dict) -> list[int]:
    from worker_client import TCPConnector

    connector = TCPConnector(**connector_kw)
    async with ClientSession(broker=broker, connector=connector) as session:

        async def one(i: int) -> int:
            async with session.get(urls[i % len(urls)]) as resp:
                await resp.read()
                return resp.status

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def burst(broker: str, urls: list[str], n: int, connector_kw: dict) -> list[int]:
    """Entry point for a spawned worker: n concurrent GETs spread over ``urls``."""
    return asyncio.run(_burst(broker, urls, n, connector_kw))


def run_in_processes(target, args_list: list[tuple], timeout: float = 60) -> list:
    """Run ``target(*args)`` once per args in its own spawned process; the results in
    order. (A multiprocessing Pool may give two jobs to one process.)"""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_report, args=(queue, i, target, args))
        for i, args in enumerate(args_list)
    ]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=timeout) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        queue.close()
        queue.join_thread()
    errors = [r for r in results.values() if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(procs))]


def _report(queue, index: int, target, args: tuple) -> None:
    try:
        queue.put((index, target(*args)))
    except BaseException as exc:
        queue.put((index, RuntimeError(f"worker {index} failed: {exc!r}")))


async def _get_with_resolver(broker: str, url: str, nameservers: list, options: dict) -> int:
    from worker_client import AsyncResolver, TCPConnector

    resolver = AsyncResolver(nameservers=nameservers, **options)
    # force_close: no keep-alive reuse, so every request needs the address again
    connector = TCPConnector(resolver=resolver, force_close=True, name="dns-e2e")
    async with ClientSession(broker=broker, connector=connector) as session:
        async with session.get(url) as resp:
            await resp.read()
            return resp.status


def get_with_resolver(broker: str, url: str, nameservers: list, options: dict) -> int:
    """Entry point for a spawned worker: one GET through an AsyncResolver."""
    return asyncio.run(_get_with_resolver(broker, url, nameservers, options))


async def _paced(broker: str, url: str, n: int, rate: float) -> int:
    from worker_client import TCPConnector

    connector = TCPConnector(rate_limit_per_host=rate, name="paced")
    async with ClientSession(broker=broker, connector=connector) as session:

        async def one() -> int:
            async with session.get(url) as resp:
                await resp.read()
                return resp.status

        return sum(s == 200 for s in await asyncio.gather(*(one() for _ in range(n))))


def paced(broker: str, url: str, n: int, rate: float) -> int:
    """Entry point for a spawned worker: n concurrent GETs under a per-host rate."""
    return asyncio.run(_paced(broker, url, n, rate))


async def _cookie_visit(url: str, jar_name: str | None, broker: str | None) -> str | None:
    """One GET of ``url``; the body (what the server saw of the "login" cookie)."""
    from worker_client import CookieJar

    jar = CookieJar(name=jar_name, unsafe=True) if jar_name else None
    kwargs = {} if jar is None else {"cookie_jar": jar}
    async with ClientSession(broker=broker, **kwargs) as session:
        async with session.get(url) as resp:
            text = await resp.text()
    return text or None


def cookie_visit(url: str, jar_name: str | None, broker: str | None) -> str | None:
    """Entry point for a spawned worker: GET ``url`` with the named jar (or a session's
    own jar when ``jar_name`` is None)."""
    return asyncio.run(_cookie_visit(url, jar_name, broker))


async def _login_then_read_after_close(url: str, broker: str) -> tuple[int, int]:
    """Log in with an unnamed jar, close the session (this process's last connection),
    then read the jar: (cookies in the jar then, the jars the broker counts for us)."""
    from worker_client import CookieJar

    jar = CookieJar(unsafe=True)
    async with ClientSession(broker=broker, cookie_jar=jar) as session:
        async with session.get(url):
            pass
    return len(jar), len(list(jar))


def login_then_read_after_close(url: str, broker: str) -> tuple[int, int]:
    """Entry point for a spawned worker (see ``_login_then_read_after_close``)."""
    return asyncio.run(_login_then_read_after_close(url, broker))
