"""A real forward proxy for the tests: proxy.py (PyPI) run as a subprocess on loopback.

``ProxyServer.start(tmp, basic_auth=...)`` starts it on an ephemeral port; the port is
read from a FIFO given as its ``--port-file`` (proxy.py writes it once it listens, so
the read is the readiness wait, no sleep). ``sockets()`` are the local ports of the TCP
connections of its process tree: an origin whose peer is among them was reached through
the proxy (proxy.py adds ``Via`` only to forwarded plain-http requests).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import psutil

__all__ = ["ProxyServer"]

_START_TIMEOUT = 30.0


class ProxyServer:
    def __init__(
        self, proc: subprocess.Popen[bytes], port: int, log: Path, scheme: str = "http"
    ) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"{scheme}://127.0.0.1:{port}"

    @classmethod
    def start(
        cls,
        directory: Path,
        basic_auth: str | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> ProxyServer:
        """``tls``: (certificate, key): an https:// proxy."""
        directory.mkdir(parents=True, exist_ok=True)
        fifo = directory / "port"
        os.mkfifo(fifo)
        log = directory / "proxy.log"
        cmd = [
            sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0",
            "--port-file", str(fifo), "--num-workers", "1", "--num-acceptors", "1",
            "--log-level", "INFO", "--log-file", str(log), "--data-dir", str(directory / "data"),
        ]
        if basic_auth:
            cmd += ["--basic-auth", basic_auth]
        if tls:
            cmd += ["--cert-file", str(tls[0]), "--key-file", str(tls[1])]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = _read_port(fifo, proc)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return cls(proc, port, log, "https" if tls else "http")

    def sockets(self) -> set[int]:
        """Local ports of the proxy's TCP connections (its process and children)."""
        ports: set[int] = set()
        root = psutil.Process(self.proc.pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                ports.update(c.laddr.port for c in p.net_connections("tcp") if c.laddr)
            except psutil.NoSuchProcess:
                continue
        return ports

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _read_port(fifo: Path, proc: subprocess.Popen[bytes]) -> int:
    """Wait for proxy.py to write its port into ``fifo`` (it does once listening)."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    data = b""
    deadline = time.monotonic() + _START_TIMEOUT
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("proxy.py did not start")
            # Waits on the FIFO; wakes every half second to see proxy.py still alive.
            readable, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if not readable:
                if proc.poll() is not None:
                    raise RuntimeError(f"proxy.py exited with {proc.returncode}")
                continue
            chunk = os.read(fd, 64)
            if not chunk:
                raise RuntimeError(f"proxy.py closed its port file after {data!r}")
            data += chunk
            if data.endswith(b"\n"):
                return int(data.split()[0])
    finally:
        os.close(fd)
