"""Bodies through shared memory (shared/arena.py, broker/server.py): byte for byte in both
directions, alone and under concurrency, with the inline fallback passing the same
tests; a slow reader bounds the broker's memory; a killed worker's arenas are freed; a
worker naming slots it should not is cut off alone."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import signal
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from aiohttp import web

import broker
from shared.messages import Data, End, ErrorFrame, Release, Request, Slot, Stats, StatsRequest
from worker_client import ClientSession

from ..conftest import read_request_head, wait_until
from ._shm_workers import MiB, body, stall, transfer
from ._workers import run_in_processes
from .raw_worker import RawWorker, raw_workers  # noqa: F401  (the fixture)

pytestmark = pytest.mark.usefixtures("raw_workers")

# How the bodies travel: the worker asks and the broker gives arenas; the worker does
# not ask (HTTP_BROKER_SHM=0 in the worker); the broker refuses (HTTP_BROKER_SHM=0 in
# the broker).
CARRIERS = ("shm", "worker_declines", "broker_refuses")


@pytest.fixture(scope="module")
def shm_broker() -> Iterator[broker.BrokerProcess]:
    with broker.start(export=False, drain_timeout=1) as proc:
        yield proc


@pytest.fixture(scope="module")
def inline_broker() -> Iterator[broker.BrokerProcess]:
    with contextlib.ExitStack() as stack:
        with _env("HTTP_BROKER_SHM", "0"):  # read by the broker at its start
            proc = stack.enter_context(broker.start(export=False, drain_timeout=1))
        yield proc


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


@pytest.fixture(params=CARRIERS)
def carrier(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, str]:
    """(the carrier, the broker's address), with the environment set for it (workers
    spawned by the test inherit it)."""
    kind = request.param
    proc = request.getfixturevalue("inline_broker" if kind == "broker_refuses" else "shm_broker")
    monkeypatch.setenv("HTTP_BROKER", proc.address)
    if kind == "worker_declines":
        monkeypatch.setenv("HTTP_BROKER_SHM", "0")
    else:
        monkeypatch.delenv("HTTP_BROKER_SHM", raising=False)
    return kind, proc.address


def _app() -> web.Application:
    app = web.Application(client_max_size=1 << 30)

    async def body_of(request: web.Request) -> web.Response:
        return web.Response(body=body(int(request.query["size"]), int(request.query["seed"])))

    async def hash_of(request: web.Request) -> web.Response:
        h = hashlib.sha256()
        async for chunk in request.content.iter_any():
            h.update(chunk)
        return web.json_response({"sha256": h.hexdigest()})

    app.router.add_get("/body", body_of)
    app.router.add_post("/hash", hash_of)
    return app


def _uses_shm(session: ClientSession) -> bool:
    transport: Any = session._transport
    return transport.down is not None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_100_mib_down_and_up_byte_for_byte(carrier, serve_app) -> None:
    kind, address = carrier
    url = await serve_app(_app())
    expected = body(100 * MiB, 7)
    async with ClientSession(broker=address) as session:
        async with session.get(f"{url}/body", params={"size": 100 * MiB, "seed": 7}) as resp:
            got = await resp.read()
        assert len(got) == len(expected)
        assert _sha(got) == _sha(expected)
        del got
        async with session.post(f"{url}/hash", data=expected) as resp:
            assert (await resp.json())["sha256"] == _sha(expected)
        assert _uses_shm(session) is (kind == "shm")


async def test_streamed_bodies_of_odd_sizes_byte_for_byte(carrier, serve_app) -> None:
    """Pieces below, at and above the inline threshold and the slot size, and a
    streamed upload whose pieces straddle slots."""
    kind, address = carrier
    url = await serve_app(_app())
    payload = os.urandom(3 * MiB + 12345)
    sizes = [1, 1000, 16 * 1024 - 1, 16 * 1024, 64 * 1024 + 1, 256 * 1024, 777 * 1024]

    async def pieces() -> Any:
        pos = 0
        for n in sizes * 4:
            yield payload[pos : pos + n]
            pos += n
        yield payload[pos:]

    async with ClientSession(broker=address) as session:
        async with session.post(f"{url}/hash", data=pieces()) as resp:
            assert (await resp.json())["sha256"] == _sha(payload)
        async with session.get(f"{url}/body", params={"size": 5 * MiB, "seed": 3}) as resp:
            chunks = [c async for c in resp.content.iter_chunked(100_000)]
        assert _sha(b"".join(chunks)) == _sha(body(5 * MiB, 3))
        assert _uses_shm(session) is (kind == "shm")


async def test_several_workers_at_once_byte_for_byte(carrier, serve_app) -> None:
    kind, _ = carrier
    url = await serve_app(_app())
    size = 24 * MiB
    args = [(url, size, seed, 2) for seed in range(3)]
    results = await asyncio.to_thread(run_in_processes, transfer, args, 50)
    for seed, (downs, ups, shm) in enumerate(results):
        want = _sha(body(size, seed))
        assert downs == [want, want]
        assert ups == [want, want]
        assert shm is (kind == "shm")


# -- memory, death, hostility ------------------------------------------------------------


@pytest.fixture
def own_broker() -> Iterator[broker.BrokerProcess]:
    with broker.start(export=False, drain_timeout=1) as proc:
        yield proc


def _arenas_mapped(pid: int) -> int:
    maps = psutil.Process(pid).memory_maps(grouped=False)
    return sum("memfd:http-broker" in m.path for m in maps)


async def test_a_slow_reader_bounds_the_broker_memory(own_broker, raw_server) -> None:
    """The server writes as fast as the broker takes; the reader takes 4 MiB each time
    the server finds its socket full (the broker stopped reading), 256 MiB in all, and
    the broker's RSS is sampled at each of those moments."""
    total, step = 256 * MiB, 4 * MiB
    server_blocked = asyncio.Event()
    server_done = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        chunk = bytes(MiB)
        for _ in range(total // MiB):
            writer.write(chunk)
            if writer.transport.get_write_buffer_size():
                server_blocked.set()  # the kernel took no more: nobody reads upstream
            await writer.drain()
        server_done.set()

    async def stalled() -> None:
        """Until the server is held back by the broker (or has written everything: a
        broker that takes it all)."""
        waits = {asyncio.ensure_future(e.wait()) for e in (server_blocked, server_done)}
        _, pending = await asyncio.wait(waits, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()

    url = await raw_server(handler)
    rss = psutil.Process(own_broker.pid).memory_info
    async with ClientSession(broker=own_broker.address) as session:
        async with session.get(url) as resp:
            assert _uses_shm(session)
            got = len(await resp.content.readexactly(MiB))
            await stalled()
            base = peak = rss().rss
            stalls = 0
            while got < total:
                if server_blocked.is_set():
                    stalls += 1
                    server_blocked.clear()
                got += len(await resp.content.readexactly(min(step, total - got)))
                if not server_done.is_set():
                    await stalled()
                peak = max(peak, rss().rss)
    assert peak - base < 64 * MiB, f"broker RSS grew by {(peak - base) >> 20} MiB"
    assert stalls > total // step // 2  # the reader was the slow end


async def test_a_killed_worker_frees_its_arenas_and_others_carry_on(own_broker, serve_app) -> None:
    url = await serve_app(_app())
    base = _arenas_mapped(own_broker.pid)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    with _env("HTTP_BROKER", own_broker.address):
        proc = ctx.Process(target=stall, args=(url, ready))
        proc.start()
    try:
        pid, shm = await asyncio.to_thread(ready.get, True, 30)
        assert shm
        assert _arenas_mapped(own_broker.pid) == base + 2  # its down and up arenas
        os.kill(pid, signal.SIGKILL)
        await wait_until(
            lambda: _arenas_mapped(own_broker.pid) == base,
            timeout=10,
            what=lambda: f"{_arenas_mapped(own_broker.pid)} arenas mapped, {base} before",
        )
    finally:
        proc.join(10)
        ready.close()
        ready.join_thread()
    async with ClientSession(broker=own_broker.address) as session:
        async with session.get(f"{url}/body", params={"size": 32 * MiB, "seed": 2}) as resp:
            assert _sha(await resp.read()) == _sha(body(32 * MiB, 2))
        assert _uses_shm(session)


async def _still_served(address: str, url: str) -> None:
    async with ClientSession(broker=address) as good:
        async with good.get(f"{url}/body", params={"size": 2 * MiB, "seed": 5}) as resp:
            assert _sha(await resp.read()) == _sha(body(2 * MiB, 5))
        assert _uses_shm(good)


async def _slots_of_a_download(raw: RawWorker, url: str) -> list[Slot]:
    """A 512 KiB download by hand: its Slot frames (the bytes checked), none given back."""
    size = MiB // 2
    raw.send(Request(1, "GET", f"{url}/body?size={size}&seed=4"))
    msgs = await raw.until_end_of(1)
    assert isinstance(msgs[-1], End), msgs[-1]
    down = raw.down
    assert down is not None
    got = b"".join(
        bytes(down.slot(m.slot, m.offset, m.size)) if isinstance(m, Slot) else m.data
        for m in msgs
        if isinstance(m, Slot | Data)
    )
    assert got == body(size, 4)
    slots = [m for m in msgs if isinstance(m, Slot)]
    assert slots
    return slots


def _out_of_range(slots: list[Slot], slot_size: int) -> list[Any]:
    return [Release([1 << 20])]


def _never_sent(slots: list[Slot], slot_size: int) -> list[Any]:
    sent = {m.slot for m in slots}
    return [Release([next(k for k in range(1 << 10) if k not in sent)])]


def _released_twice(slots: list[Slot], slot_size: int) -> list[Any]:
    return [Release([m.slot for m in slots]), StatsRequest(), Release([slots[0].slot])]


def _upload_out_of_range(slots: list[Slot], slot_size: int) -> list[Any]:
    return [Slot(9, 1 << 20, 0, 1)]


def _upload_past_its_slot(slots: list[Slot], slot_size: int) -> list[Any]:
    return [Slot(9, 0, slot_size - 10, 100)]


@pytest.mark.parametrize(
    "bad", [_out_of_range, _never_sent, _released_twice, _upload_out_of_range,
            _upload_past_its_slot],
)
async def test_bad_slot_references_cut_off_that_worker_alone(own_broker, serve_app, bad) -> None:
    url = await serve_app(_app())
    raw = await RawWorker.connect(own_broker.address, shm=True)
    assert raw.welcome is not None and raw.welcome.slot_size
    slots = await _slots_of_a_download(raw, url)
    raw.send(*bad(slots, raw.welcome.slot_size))
    msgs = await raw.until(lambda m: isinstance(m, ErrorFrame))
    assert isinstance(msgs[-1], ErrorFrame) and msgs[-1].code == "protocol", msgs
    if bad is _released_twice:
        assert any(isinstance(m, Stats) for m in msgs)  # the right release was fine
    assert await raw.next() is None  # the broker hung up on it
    await _still_served(own_broker.address, url)


async def test_release_without_shared_memory_is_a_protocol_error(own_broker, serve_app) -> None:
    url = await serve_app(_app())
    raw = await RawWorker.connect(own_broker.address)
    raw.send(Release([0]))
    msgs = await raw.until(lambda m: isinstance(m, ErrorFrame))
    assert isinstance(msgs[-1], ErrorFrame) and "shared memory" in msgs[-1].message
    await _still_served(own_broker.address, url)


@pytest.mark.parametrize("why", ["no_memfd", "over_budget", "too_many_slots"])
async def test_a_broker_without_shared_memory_serves_inline(
    serve_app, tmp_path, monkeypatch, why
) -> None:
    """A broker in this process whose memfd_create fails (a platform without memfd), whose
    budget is spent, or whose arenas would have too many slots: the worker asked, gets a
    plain Welcome, and the same bytes."""
    from broker import server as server_module
    from shared.arena import Arena

    if why == "no_memfd":

        def no_memfd(*args: Any, **kwargs: Any) -> Arena:
            raise OSError(38, "Function not implemented")

        monkeypatch.setattr(Arena, "create", no_memfd)
        limits = server_module.Limits()
    elif why == "over_budget":
        limits = server_module.Limits(max_shm_bytes=(1 << 20) * 23)  # one worker needs 24
    else:  # configured past the arena's cap: refused as no memfd is, not a hang-up
        from shared.arena import MAX_SLOTS

        limits = server_module.Limits(slot_size=4096, down_slots=MAX_SLOTS + 1)
    url = await serve_app(_app())
    server = server_module.BrokerServer(str(tmp_path / "b.sock"), limits=limits)
    await server.start()
    try:
        async with ClientSession(broker=server.path) as session:
            async with session.get(f"{url}/body", params={"size": 8 * MiB, "seed": 6}) as resp:
                assert _sha(await resp.read()) == _sha(body(8 * MiB, 6))
            async with session.post(f"{url}/hash", data=body(8 * MiB, 6)) as resp:
                assert (await resp.json())["sha256"] == _sha(body(8 * MiB, 6))
            assert not _uses_shm(session)
        assert server.shm_bytes == 0
    finally:
        await server.stop(drain_timeout=0)


async def test_arenas_are_counted_while_a_worker_is_connected_and_freed_after(
    serve_app, tmp_path
) -> None:
    from broker import server as server_module

    url = await serve_app(_app())
    server = server_module.BrokerServer(str(tmp_path / "b.sock"))
    await server.start()
    try:
        async with ClientSession(broker=server.path) as session:
            async with session.get(f"{url}/body", params={"size": 4 * MiB, "seed": 8}) as resp:
                assert _sha(await resp.read()) == _sha(body(4 * MiB, 8))
            assert _uses_shm(session)
            (conn,) = server.workers
            assert server.shm_bytes == conn.down.size + conn.up.size == 24 * MiB
            table = conn._down_slots
            await wait_until(  # every slot comes back (the last Release is on its way)
                lambda: table.free == conn.down.slots, what=lambda: table
            )
        await wait_until(lambda: server.shm_bytes == 0, what=lambda: server.shm_bytes)
        assert conn.down is None and conn.up is None
    finally:
        await server.stop(drain_timeout=0)


async def test_streams_given_up_mid_body_return_every_slot_and_others_stay_exact(
    serve_app, raw_server, tmp_path
) -> None:
    """Several large downloads at once through one worker connection; some are closed
    part-way (their slots being filled, some named by frames still in flight), while
    their servers keep sending: the others arrive byte for byte, every down slot comes
    back with no stream holding any, and the next downloads are exact too."""
    from broker import server as server_module

    payload = body(8 * MiB, 5)
    half = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload))
            writer.write(payload[: 3 * MiB])
            await writer.drain()
            await half.wait()
            writer.write(payload[3 * MiB :])
            await writer.drain()

    slow = await raw_server(handler)
    url = await serve_app(_app())
    server = server_module.BrokerServer(str(tmp_path / "b.sock"))
    await server.start()
    try:
        async with ClientSession(broker=server.path) as session:

            async def given_up() -> None:
                resp = await session.get(slow + "/")
                await resp.content.readexactly(MiB + 17)
                resp.close()

            async def whole(seed: int) -> str:
                async with session.get(
                    f"{url}/body", params={"size": 6 * MiB + 3, "seed": seed}
                ) as resp:
                    return _sha(await resp.read())

            results = await asyncio.gather(
                given_up(), whole(1), given_up(), whole(2), given_up(), whole(3)
            )
            assert results[1::2] == [_sha(body(6 * MiB + 3, s)) for s in (1, 2, 3)]
            half.set()
            assert _uses_shm(session)
            (conn,) = server.workers
            table = conn._down_slots
            await wait_until(lambda: table.free == conn.down.slots, what=lambda: table)
            assert not any(conn._owners)
            again = await asyncio.gather(*(whole(s) for s in (4, 5)))
            assert again == [_sha(body(6 * MiB + 3, s)) for s in (4, 5)]
            await wait_until(lambda: table.free == conn.down.slots, what=lambda: table)
    finally:
        await server.stop(drain_timeout=0)


async def test_a_redirect_with_a_large_body_then_a_large_body(carrier, raw_server) -> None:
    """The redirect's own 3 MiB body (a plain Content-Length, on the connection the
    final response then comes on) never reaches the worker: the final body is exact."""
    kind, address = carrier
    moved, final = body(3 * MiB, 11), body(5 * MiB + 7, 12)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_request_head(reader)
            if head.startswith(b"GET /moved "):
                writer.write(
                    b"HTTP/1.1 302 Found\r\nLocation: /final\r\nContent-Length: %d\r\n\r\n"
                    % len(moved) + moved
                )
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(final) + final)
            await writer.drain()

    base = await raw_server(handler)
    async with ClientSession(broker=address) as session:
        for _ in range(2):
            async with session.get(base + "/moved") as resp:
                assert resp.status == 200 and len(resp.history) == 1
                assert _sha(await resp.read()) == _sha(final)
        assert _uses_shm(session) is (kind == "shm")


async def test_one_process_gets_arenas_for_two_connections_at_most(own_broker) -> None:
    """No worker process can take the whole budget from the others: its first
    ``shm_per_process`` (2) connections get arenas, a third gets inline bodies, and one
    closed makes room again (counted by the kernel's pid of the peer)."""
    first = await RawWorker.connect(own_broker.socket_path, shm=True)
    second = await RawWorker.connect(own_broker.socket_path, shm=True)
    third = await RawWorker.connect(own_broker.socket_path, shm=True)
    try:
        assert [w.welcome.slot_size for w in (first, second)] == [MiB, MiB]
        assert third.welcome.slot_size == 0 and third.down is None
        assert _arenas_mapped(own_broker.pid) == 4  # two per connection with arenas
        first.close()
        await wait_until(lambda: _arenas_mapped(own_broker.pid) == 2)
        fourth = await RawWorker.connect(own_broker.socket_path, shm=True)
        try:
            assert fourth.welcome.slot_size == MiB
        finally:
            fourth.close()
    finally:
        for w in (second, third):
            w.close()
