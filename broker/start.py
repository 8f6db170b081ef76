"""``broker.start()``: run a broker process for the lifetime of a block.

The parent of a process group (a gunicorn master, a crawler's main process) wraps its
work in ``with broker.start():``; the broker's socket goes into ``HTTP_BROKER`` so that
every child process finds it, and the broker stops when the block ends. If the parent
dies without leaving the block, the broker notices (its parent pid changes) and stops.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["start", "BrokerProcess"]


@dataclass
class BrokerProcess:
    """A running broker: its socket path and process."""

    socket_path: str
    process: subprocess.Popen[bytes]
    owner_pid: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> str:
        return self.socket_path

    def stop(self, timeout: float = 35.0) -> int | None:
        """SIGTERM, wait for the drain, SIGKILL if it does not come; the exit code.

        Only the process that started the broker stops it: elsewhere (a forked child)
        this does nothing and returns None."""
        if os.getpid() != self.owner_pid:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def start(
    socket_path: str | None = None,
    *,
    export: bool = True,
    startup_timeout: float = 15.0,
    drain_timeout: float = 30.0,
    log_level: str = "WARNING",
    cookie_file: str | os.PathLike[str] | None = None,
) -> Iterator[BrokerProcess]:
    """Spawn a broker, wait until it accepts, export ``HTTP_BROKER``; stop it on exit.

    ``cookie_file``: a JSON file where the broker keeps the named cookie jars (loaded at
    start, saved within a second of a change)."""
    import shutil  # here: a worker imports this package without starting a broker
    import tempfile

    starter = os.getpid()
    tmpdir = None
    if socket_path is None:
        tmpdir = tempfile.mkdtemp(prefix="http-broker-")  # mode 0700
        socket_path = os.path.join(tmpdir, "broker.sock")
    read_fd, write_fd = os.pipe()
    cmd = [
        sys.executable, "-m", "broker", "serve",
        "--socket", socket_path,
        "--parent-pid", str(os.getpid()),
        "--ready-fd", str(write_fd),
        "--drain-timeout", str(drain_timeout),
        "--log-level", log_level,
    ]
    if cookie_file is not None:
        cmd += ["--cookie-file", os.path.abspath(cookie_file)]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(cmd, pass_fds=(write_fd,), env=env)
    os.close(write_fd)
    handle = BrokerProcess(socket_path, proc, starter)
    try:
        ready, _, _ = select.select([read_fd], [], [], startup_timeout)
        line = os.read(read_fd, 64) if ready else b""
        if line != b"ready\n":
            handle.stop(timeout=2)
            raise RuntimeError(
                f"the broker did not start within {startup_timeout}s "
                f"(exit code {proc.poll()}); see its stderr above"
            )
    except BaseException:
        os.close(read_fd)
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    os.close(read_fd)
    previous = os.environ.get("HTTP_BROKER")
    if export:
        os.environ["HTTP_BROKER"] = socket_path
    try:
        yield handle
    finally:
        # A process forked inside the block (a gunicorn worker, a multiprocessing child)
        # inherits this frame and may run it on exit; only the starter stops the broker.
        if os.getpid() == starter:
            _stop(handle, tmpdir, export, previous, drain_timeout)


def _stop(
    handle: BrokerProcess,
    tmpdir: str | None,
    export: bool,
    previous: str | None,
    drain_timeout: float,
) -> None:
    import shutil

    if export:
        if previous is None:
            os.environ.pop("HTTP_BROKER", None)
        else:
            os.environ["HTTP_BROKER"] = previous
    handle.stop(timeout=drain_timeout + 5)
    if tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)
