"""Who is at the other end of a Unix socket, and whom a client of a broker trusts.

The broker admits workers of its own uid (and root); a worker, and ``http-broker
stats``, talk only to a broker of a trusted uid: their own, plus those listed with
``broker_uid=`` or ``HTTP_BROKER_UID``. Root is not trusted unless listed: a worker
sends nothing, not even its pid, to a process it did not choose. Where the platform has
no ``SO_PEERCRED`` (macOS, BSD), the socket file's owner stands for the listener.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from collections.abc import Iterable

__all__ = ["peer_credentials", "peer_uid", "trusted_broker_uids", "untrusted_broker"]

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: socket.socket) -> tuple[int, int] | None:
    """(pid, uid) of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, _gid = _UCRED.unpack(creds)
    return int(pid), int(uid)


def peer_uid(sock: socket.socket, path: str) -> int | None:
    """The uid of the process that listens on the other end of ``sock`` at ``path``."""
    creds = peer_credentials(sock)
    if creds is not None:
        return creds[1]
    try:  # no SO_PEERCRED: the socket file's owner, who bound it
        return os.stat(path).st_uid
    except OSError:
        return None


def trusted_broker_uids(explicit: int | Iterable[int] | None = None) -> frozenset[int]:
    """The uids whose broker this process talks to: its own, plus ``broker_uid=`` (an
    int or several) or else ``HTTP_BROKER_UID`` (uids separated by commas or spaces)."""
    if explicit is None:
        raw = os.environ.get("HTTP_BROKER_UID", "").strip()
        words = re.split(r"[,\s]+", raw) if raw else []
        if not all(w.isascii() and w.isdigit() for w in words):
            raise ValueError(
                f"HTTP_BROKER_UID must be numeric uids separated by commas, got {raw!r}"
            )
        listed = [int(w) for w in words]
    else:
        listed = list(explicit) if isinstance(explicit, Iterable) else [explicit]
        for uid in listed:
            if not isinstance(uid, int) or isinstance(uid, bool) or uid < 0:
                raise ValueError(f"broker_uid must be uids (ints >= 0), got {uid!r}")
    return frozenset((os.getuid(), *listed))


def _user(uid: int) -> str:
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def untrusted_broker(path: str, uid: int | None, trusted: frozenset[int]) -> str | None:
    """Why the broker at ``path``, served by ``uid``, is not to be talked to; or None.
    A listener whose uid cannot be told (None) is not trusted either."""
    if uid is None:
        return (
            f"cannot tell which user serves the broker socket at {path} (no SO_PEERCRED "
            "and the socket file cannot be read): refusing to send it anything"
        )
    if uid in trusted:
        return None
    return (
        f"the broker socket at {path} is served by {_user(uid)}, not by this process's "
        f"{_user(os.getuid())}: refusing to send it anything. If that broker is yours, "
        f"trust its uid with ClientSession(broker_uid={uid}) or HTTP_BROKER_UID={uid}"
    )
