"""Shared-memory arenas for bodies: memfd mappings cut into fixed-size slots.

How this works. Per worker connection the broker makes two arenas with
``os.memfd_create`` (no name in ``/dev/shm``: a killed process leaks nothing, the kernel
frees the memory with the last descriptor and mapping), seals each against shrinking and
growing (``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``: a worker holding the descriptor
can never truncate it under the broker's mapping, which would make the broker's next
access a SIGBUS), and passes both descriptors with its ``Welcome``
(``socket.send_fds``). The *down* arena carries response bodies (the broker writes, the
worker reads), the *up* arena request bodies (the worker writes, the broker reads).

The broker never interprets arena bytes (a request body's are copied out as they are),
so a worker that writes into either arena at any time, through the descriptor it holds,
can spoil only its own bodies.

Only the writer of an arena hands out its slots (``SlotTable``): a ``Slot`` frame names
(slot, offset, size) and the reader, once it has copied those bytes out, gives the
reference back in a ``Release`` frame (batched: one frame per loop pass at most). A slot
may back several frames (a slot being filled by several upstream reads): each frame is
one reference, and the slot is free again when the writer stopped filling it and every
reference came back. A reader that names a slot out of range, or gives back a reference
that is not out, breaks the protocol (its connection closes; nothing else is affected).

Bounds: an arena is ``slots`` x ``slot_size`` bytes, fixed at creation (the sizes and the
figures behind them are in ``broker.server``), of at most ``MAX_SLOTS`` slots (what a
worker is told of is checked against it before its ``SlotTable`` is made); nothing here
allocates per frame.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import stat

__all__ = ["MAX_SLOTS", "Arena", "ArenaError", "SlotError", "SlotTable", "memfd_supported"]

MAX_SLOTS = 1 << 16  # per arena: the bookkeeping is a few words per slot

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
_ALL_SEALS = _SEALS | fcntl.F_SEAL_SEAL


class ArenaError(Exception):
    """A descriptor that is not the arena it was announced as (size, kind, seals)."""


class SlotError(Exception):
    """A slot reference that breaks the rules (out of range, not out, given back twice)."""


def memfd_supported() -> bool:
    """Whether this platform makes sealable memfds (Linux 3.17+)."""
    try:
        fd = os.memfd_create("http-broker-probe", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (AttributeError, OSError):
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _ALL_SEALS)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


class Arena:
    """One mapped arena: ``slots`` slots of ``slot_size`` bytes. The descriptor is kept
    open only until it has been passed on (``close_fd``); the mapping holds one of its
    own (Python's ``mmap`` keeps a duplicate) until ``close``."""

    __slots__ = ("fd", "slot_size", "slots", "size", "_map", "view")

    def __init__(self, fd: int, slot_size: int, slots: int, writable: bool) -> None:
        self.fd: int | None = fd
        self.slot_size = slot_size
        self.slots = slots
        self.size = slot_size * slots
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self._map = mmap.mmap(fd, self.size, mmap.MAP_SHARED, prot)
        self.view: memoryview | None = memoryview(self._map)

    def __repr__(self) -> str:
        return f"<Arena {self.slots} x {self.slot_size} bytes>"

    @classmethod
    def create(cls, slot_size: int, slots: int, writable: bool = True) -> Arena:
        """A new sealed arena, mapped; raises ``OSError`` where there is no memfd."""
        if slot_size <= 0 or not 0 < slots <= MAX_SLOTS:
            raise ValueError(f"an arena has 1 to {MAX_SLOTS} slots of at least one byte")
        fd = os.memfd_create("http-broker", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, slot_size * slots)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _ALL_SEALS)
            return cls(fd, slot_size, slots, writable)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int, slot_size: int, slots: int, writable: bool) -> Arena:
        """Map a received descriptor after checking that it is what was announced: a
        memfd of exactly ``slots`` x ``slot_size`` bytes that can neither shrink nor
        grow, and that maps as asked. The descriptor is closed once mapped, and on every
        failure (``ArenaError``)."""
        try:
            if slot_size <= 0 or not 0 < slots <= MAX_SLOTS:
                raise ArenaError(f"an arena of {slots} slots of {slot_size} bytes")
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ArenaError("the arena's descriptor is not a memfd")
            if st.st_size != slot_size * slots:
                raise ArenaError(
                    f"the arena has {st.st_size} bytes, not the {slot_size * slots} announced"
                )
            try:
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            except OSError:
                raise ArenaError("the arena's descriptor is not a memfd") from None
            if seals & _SEALS != _SEALS:
                raise ArenaError("the arena is not sealed against shrinking and growing")
            try:
                arena = cls(fd, slot_size, slots, writable)
            except OSError as exc:  # e.g. sealed against writes, mapped writable
                raise ArenaError(f"the arena cannot be mapped: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        arena.fd = None
        return arena

    def slot(self, k: int, offset: int = 0, size: int | None = None) -> memoryview:
        """A view of slot ``k`` from ``offset`` (``size`` bytes; default: to its end)."""
        assert self.view is not None, "the arena is closed"
        start = k * self.slot_size + offset
        end = (k + 1) * self.slot_size if size is None else start + size
        return self.view[start:end]

    def check(self, k: int, offset: int, size: int) -> str | None:
        """Why (slot, offset, size) is not a range of one slot of this arena, or None."""
        if not 0 <= k < self.slots:
            return f"slot {k} is out of range (the arena has {self.slots})"
        if offset < 0 or size <= 0 or offset + size > self.slot_size:
            return f"bytes {offset}..{offset + size} are not inside a slot of {self.slot_size}"
        return None

    def close_fd(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Unmap (and close the descriptor if still held). A view still exported by a
        caller keeps the mapping alive until it goes; the memory is the kernel's to free
        with the last reference either way."""
        self.close_fd()
        view, self.view = self.view, None
        if view is not None:
            view.release()
        try:
            self._map.close()
        except BufferError:
            pass


class SlotTable:
    """The writer's bookkeeping of one arena's slots: a free list (last freed, first
    reused: its pages are warm) and per slot the references out plus the writer's own
    hold while it still fills the slot. Pure: no memory, no I/O."""

    __slots__ = ("_free", "_refs", "_filling")

    def __init__(self, slots: int) -> None:
        self._free = list(range(slots - 1, -1, -1))
        self._refs = [0] * slots
        self._filling = [False] * slots

    def __repr__(self) -> str:
        return f"<SlotTable {len(self._free)} of {len(self._refs)} free>"

    @property
    def free(self) -> int:
        return len(self._free)

    def take(self) -> int | None:
        """A free slot, held for filling; None if all are in use."""
        if not self._free:
            return None
        k = self._free.pop()
        self._filling[k] = True
        return k

    def lend(self, k: int) -> None:
        """One more reference to ``k`` goes out (a frame naming it)."""
        self._refs[k] += 1

    def filled(self, k: int) -> bool:
        """The writer stops filling ``k``; True if that freed it."""
        self._filling[k] = False
        return self._settle(k)

    def give_back(self, k: int) -> bool:
        """A reference to ``k`` came back; True if that freed it. ``SlotError`` for a slot
        out of range or with no reference out."""
        if not 0 <= k < len(self._refs):
            raise SlotError(f"slot {k} is out of range (the arena has {len(self._refs)})")
        if self._refs[k] <= 0:
            raise SlotError(f"slot {k} was given back but is not out")
        self._refs[k] -= 1
        return self._settle(k)

    def _settle(self, k: int) -> bool:
        if self._refs[k] or self._filling[k]:
            return False
        self._free.append(k)
        return True
