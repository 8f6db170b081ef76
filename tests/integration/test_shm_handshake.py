"""The worker's side of the shared-memory handshake against a fake broker: every
descriptor received is checked (a memfd of the announced size, sealed) and closed on
every path; a Welcome without arenas means inline bodies."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from shared.arena import Arena
from shared.framing import FrameReader, encode
from shared.messages import PROTOCOL_VERSION, ErrorFrame, Hello, Welcome
from worker_client.exceptions import BrokerConnectionError, BrokerProtocolError
from worker_client.transport import IPCTransport

from ..conftest import wait_until

Answer = Callable[[], tuple[Any, list[int]]]  # the frame to send and the fds to attach


@pytest.fixture
async def fake_broker() -> AsyncIterator[Callable[[Answer], Any]]:
    """``await fake_broker(answer)``: a socket path; whoever connects gets ``answer()``
    (a message and descriptors) after its Hello, which is kept in ``hellos``."""
    folder = tempfile.mkdtemp(prefix="hb-")
    servers: list[asyncio.AbstractServer] = []
    hellos: list[Hello] = []

    async def start(answer: Answer) -> tuple[str, list[Hello]]:
        path = os.path.join(folder, f"{len(servers)}.sock")

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            frames = FrameReader()
            msgs: list[Any] = []
            while not msgs:
                data = await reader.read(1024)
                if not data:
                    return
                msgs = frames.feed(data)
            hellos.append(msgs[0])
            msg, fds = answer()
            sock = writer.get_extra_info("socket")
            with socket.socket(fileno=os.dup(sock.fileno())) as dup:
                socket.send_fds(dup, [encode(msg)], fds)
            for fd in fds:
                os.close(fd)
            await reader.read()  # until the worker hangs up
            writer.close()

        server = await asyncio.start_unix_server(serve, path)
        servers.append(server)
        return path, hellos

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def _held() -> set[str]:
    """What the memfds and pipes this process holds open are (the fake broker's own
    sockets are in the same process: not counted)."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(("/memfd:", "pipe:")):
            held.add(target)
    return held


def _pipe() -> int:
    r, w = os.pipe()
    os.close(w)
    return r


def _memfd(size: int, seals: int = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW) -> int:
    fd = os.memfd_create("test", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


_WRITE_SEALED = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def _welcome(slot_size: int = 4096, slots: int = 2) -> Welcome:
    return Welcome(PROTOCOL_VERSION, 1, slot_size, slots, slots)


async def _connect(path: str, shm: bool = True) -> IPCTransport:
    transport = IPCTransport(asyncio.get_running_loop(), path)
    await transport.connect(timeout=5, shm=shm)
    return transport


async def test_good_arenas_are_mapped_and_their_descriptors_closed(fake_broker) -> None:
    before = _held()
    path, hellos = await fake_broker(lambda: (_welcome(), [_memfd(8192), _memfd(8192)]))
    transport = await _connect(path)
    try:
        assert hellos[0].shm
        assert transport.down is not None and transport.up is not None
        assert transport.down.slots == 2 and transport.up.slot_size == 4096
    finally:
        await transport.aclose()
    assert _held() == before  # (a mapping keeps a descriptor of its own until unmapped)


@pytest.mark.parametrize(
    "fds, problem",
    [
        pytest.param(lambda: [_memfd(8192)], "with 1 descriptors", id="one_fd"),
        pytest.param(lambda: [_memfd(8192), _memfd(4096)], "4096 bytes", id="wrong_size"),
        pytest.param(lambda: [_memfd(8192), _memfd(8192, seals=0)], "sealed", id="unsealed"),
        pytest.param(lambda: [_memfd(8192), _pipe()], "memfd", id="not_a_memfd"),
        pytest.param(
            lambda: [_memfd(8192), _memfd(8192, seals=_WRITE_SEALED)],
            "cannot be mapped",
            id="up_arena_sealed_against_writes",
        ),
    ],
)
async def test_bad_arenas_fail_the_connection_and_leak_no_descriptor(
    fake_broker, fds, problem
) -> None:
    before = _held()
    path, _ = await fake_broker(lambda: (_welcome(), fds()))
    with pytest.raises(BrokerProtocolError, match=problem):
        await _connect(path)
    assert _held() == before


async def test_more_slots_than_the_cap_are_refused_before_any_bookkeeping(fake_broker) -> None:
    """The worker keeps a few words per slot of its up arena: a broker announcing slots
    past ``MAX_SLOTS`` (1-byte slots of a large sparse memfd could make it allocate
    gigabytes) fails the connection instead."""
    from shared.arena import MAX_SLOTS

    slots = MAX_SLOTS + 1
    before = _held()
    path, _ = await fake_broker(
        lambda: (_welcome(slot_size=1, slots=slots), [_memfd(slots), _memfd(slots)])
    )
    with pytest.raises(BrokerProtocolError, match="slots"):
        await _connect(path)
    assert _held() == before


async def test_descriptors_nobody_announced_are_closed_and_bodies_go_inline(fake_broker) -> None:
    before = _held()
    path, hellos = await fake_broker(
        lambda: (Welcome(PROTOCOL_VERSION, 1), [_memfd(8192), _memfd(8192)])
    )
    transport = await _connect(path, shm=False)
    try:
        assert not hellos[0].shm
        assert transport.down is None and transport.up is None
        assert _held() == before
    finally:
        await transport.aclose()


async def test_an_error_frame_in_the_handshake_says_why(fake_broker) -> None:
    path, _ = await fake_broker(lambda: (ErrorFrame("version", "speak 9"), []))
    with pytest.raises(BrokerProtocolError, match="speak 9"):
        await _connect(path)


async def test_a_broker_that_hangs_up_in_the_handshake(tmp_path) -> None:
    path = str(tmp_path / "b.sock")

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.close()

    server = await asyncio.start_unix_server(hang_up, path)
    try:
        with pytest.raises(BrokerConnectionError, match="lost the connection"):
            await _connect(path)
    finally:
        server.close()
        await server.wait_closed()


def test_an_arena_made_by_the_broker_passes_the_worker_checks() -> None:
    arena = Arena.create(4096, 2)
    assert arena.fd is not None
    Arena.attach(os.dup(arena.fd), 4096, 2, writable=True).close()
    arena.close()


async def test_descriptors_are_close_on_exec_from_the_moment_they_arrive(tmp_path) -> None:
    """The Welcome comes in two parts, the descriptors with the first: while the worker
    waits for the rest, the memfds it holds are already close-on-exec (a fork and exec
    elsewhere in the process meanwhile must not inherit them)."""
    path = str(tmp_path / "b.sock")
    before = _held()
    first_part = asyncio.Event()
    go_on = asyncio.Event()
    frame = encode(_welcome())

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        fds = [_memfd(8192), _memfd(8192)]
        sock = writer.get_extra_info("socket")
        with socket.socket(fileno=os.dup(sock.fileno())) as dup:
            socket.send_fds(dup, [frame[:3]], fds)
        for fd in fds:
            os.close(fd)
        first_part.set()
        await go_on.wait()
        writer.write(frame[3:])
        await reader.read()
        writer.close()

    server = await asyncio.start_unix_server(serve, path)
    try:
        connecting = asyncio.ensure_future(_connect(path))
        await first_part.wait()

        def received() -> list[int]:
            return [
                int(fd)
                for fd in os.listdir("/proc/self/fd")
                if _target(fd).startswith("/memfd:") and _target(fd) not in before
            ]

        await wait_until(lambda: len(received()) == 2, what=received)  # read, not mapped
        assert all(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in received())
        go_on.set()
        transport = await connecting
        assert transport.down is not None
        await transport.aclose()
    finally:
        server.close()
        await server.wait_closed()


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        return ""


@pytest.mark.parametrize("shm", [True, False])
async def test_a_cancel_landing_as_the_handshake_ends_is_not_lost(
    broker_process: Any, monkeypatch: pytest.MonkeyPatch, shm: bool
) -> None:
    """The caller is cancelled (its ``wait_for`` ran out) in the very step in which the
    broker's Welcome completes the handshake: the cancel reaches the caller. With
    ``asyncio.wait_for`` around the handshake (3.10, 3.11) it was swallowed and the
    request went on, a quarter of first requests under a 1 ms ``wait_for``."""
    real = IPCTransport._handshake
    caller: list[asyncio.Task[Any]] = []

    async def handshake(self: IPCTransport, *args: Any) -> Any:
        answer = await real(self, *args)
        caller[0].cancel()
        return answer

    monkeypatch.setattr(IPCTransport, "_handshake", handshake)
    ipc = IPCTransport(asyncio.get_running_loop(), broker_process.socket_path)
    task = asyncio.ensure_future(ipc.connect(shm=shm))
    caller.append(task)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ipc._transport is None and ipc.down is None  # nothing kept open
