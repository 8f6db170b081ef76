"""The broker's socket is made with its mode without touching the process's umask (the
umask is process-wide: another thread creating a file meanwhile would get it)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

import pytest

from broker.server import BrokerServer


@pytest.fixture
def folder():
    path = tempfile.mkdtemp(prefix="hb-")  # short: a socket path has at most 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("mode", [0o600, 0o660])
async def test_the_socket_gets_its_mode_and_the_umask_is_never_changed(
    folder, monkeypatch, mode
):
    umasks: list[int] = []
    real_umask = os.umask
    monkeypatch.setattr(os, "umask", lambda m: umasks.append(m) or real_umask(m))
    old = real_umask(0)  # the loosest umask: a socket bound as it is would be 0777
    try:
        server = BrokerServer(os.path.join(folder, "b.sock"), socket_mode=mode)
        await server.start()
        try:
            assert umasks == []
            assert stat.S_IMODE(os.stat(server.path).st_mode) == mode
            assert os.listdir(folder) == ["b.sock"]  # nothing left beside it
        finally:
            await server.stop(drain_timeout=0)
    finally:
        real_umask(old)
    assert os.listdir(folder) == []


async def test_a_path_taken_as_the_socket_is_made_is_not_replaced(folder):
    """The socket goes into place with ``link``, which fails on a path taken meanwhile
    (as ``bind`` does); a rename would replace what is there."""
    path = os.path.join(folder, "b.sock")
    server = BrokerServer(path)
    await server.start()
    try:
        second = BrokerServer(path)
        with pytest.raises(OSError, match="already listening"):
            await second.start()
        assert os.listdir(folder) == ["b.sock"]
    finally:
        await server.stop(drain_timeout=0)


async def test_a_path_taken_between_bind_and_link_is_left_alone(folder, monkeypatch):
    """The race itself: the path is taken after the checks, as the socket goes into
    place. ``link`` refuses (a rename would replace the file); nothing is left behind."""
    path = os.path.join(folder, "b.sock")
    real_link = os.link

    def racing_link(src: str, dst: str) -> None:
        with open(dst, "w") as f:  # someone takes the path meanwhile
            f.write("theirs")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    with pytest.raises(OSError, match="was taken as the broker started"):
        await BrokerServer(path).start()
    assert stat.S_ISREG(os.lstat(path).st_mode)
    with open(path) as f:
        assert f.read() == "theirs"
    assert os.listdir(folder) == ["b.sock"]


async def test_a_socket_path_over_the_limit_is_refused(folder):
    path = os.path.join(folder, "x" * 120 + ".sock")
    with pytest.raises(OSError, match="AF_UNIX path too long"):
        await BrokerServer(path).start()
    assert os.listdir(folder) == []
