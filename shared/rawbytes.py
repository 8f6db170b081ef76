"""A ``bytes`` object filled in place: the final result of a whole-body ``read()``.

A fresh 100 MiB ``bytes`` made by copying a buffer costs about 2.2 GB/s here, more
than reading the body did; ``RawBytes(n)`` instead makes the ``bytes`` first and lets
its creator write into it. How: CPython's ``PyBytes_FromStringAndSize(NULL, n)`` returns
a bytes object whose contents are uninitialised, for the caller to fill before anyone
else sees it (as ``os.read`` does in C); ``PyBytes_AsString`` gives the address of its
storage, and a ctypes array at that address, which keeps the object alive, is the
writable ``view``. The rules that make this safe, all kept by the one user
(``worker_client.response.StreamReader``): nothing but ``view`` writes into the object,
nobody else gets the object before ``finish`` (a body that fails or is abandoned drops
it unseen), and nothing writes after ``finish``.

A buffer of ``HUGE_MIN`` bytes or more is also advised for transparent huge pages
(Linux ``madvise(MADV_HUGEPAGE)``, where the kernel has them in "madvise" mode): its
first touch then faults 2 MiB at a time instead of 4 KiB. Measured here, writing a fresh
100 MiB buffer: 25,601 page faults and 60 ms without, 562 and 24 ms with.

Where ctypes has no ``pythonapi`` (not CPython), ``view`` is a ``bytearray``'s and
``finish`` copies it into ``bytes``: the same behaviour, one copy more.
"""

from __future__ import annotations

import functools
import mmap
import sys
from typing import Any

__all__ = ["HUGE_MIN", "INPLACE", "RawBytes"]

HUGE_MIN = 8 << 20
_PAGE = mmap.PAGESIZE
_MADV_HUGEPAGE: int | None = getattr(mmap, "MADV_HUGEPAGE", None)

# CPython's C API, through ctypes (imported by the first in-place RawBytes: ctypes costs
# milliseconds to import, which a process that reads no big body never needs).
INPLACE = sys.implementation.name == "cpython"


@functools.cache
def _c_api() -> tuple[Any, Any, Any, Any] | None:
    """(ctypes, PyBytes_FromStringAndSize, PyBytes_AsString, madvise or None); None where
    ctypes has no ``pythonapi``."""
    try:
        import ctypes

        new = ctypes.pythonapi.PyBytes_FromStringAndSize
        new.restype = ctypes.py_object
        new.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
        storage = ctypes.pythonapi.PyBytes_AsString
        storage.restype = ctypes.c_void_p
        storage.argtypes = (ctypes.py_object,)
    except (ImportError, AttributeError):  # pragma: no cover - not CPython
        return None
    madvise = None
    if _MADV_HUGEPAGE is not None and sys.platform.startswith("linux"):
        try:
            madvise = ctypes.CDLL(None, use_errno=True).madvise
            madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            madvise.restype = ctypes.c_int
        except (OSError, AttributeError):  # pragma: no cover - a libc without it
            madvise = None
    return ctypes, new, storage, madvise


def _advise_huge(madvise: Any, address: int, size: int) -> None:
    """Ask for huge pages on the whole pages inside [address, address + size); a
    kernel that says no changes nothing."""
    start = -(-address // _PAGE) * _PAGE
    end = (address + size) // _PAGE * _PAGE
    if madvise is not None and end > start:
        madvise(start, end - start, _MADV_HUGEPAGE)


class RawBytes:
    """``size`` bytes to fill through ``view``, then ``finish`` for the ``bytes``.
    ``inplace=False`` (default: ``INPLACE``): the fallback (a bytearray, copied at the
    end). Raises
    MemoryError (or OverflowError) for a size that cannot be had."""

    __slots__ = ("view", "size", "_obj")

    def __init__(self, size: int, inplace: bool | None = None) -> None:
        if inplace is None:
            inplace = INPLACE
        if size <= 0:
            raise ValueError(f"RawBytes of {size} bytes")
        if size > sys.maxsize:  # the C API would take it for a negative size
            raise OverflowError(f"RawBytes of {size} bytes")
        self.size = size
        api = _c_api() if inplace else None
        if api is not None:
            ctypes, new, storage, madvise = api
            obj = new(None, size)
            address = storage(obj)
            if size >= HUGE_MIN:
                _advise_huge(madvise, address, size)
            array = (ctypes.c_char * size).from_address(address)
            array._keep = obj  # views keep the object alive
            self._obj: bytes | bytearray = obj
            self.view = memoryview(array).cast("B")
        else:
            self._obj = bytearray(size)
            self.view = memoryview(self._obj)

    def __repr__(self) -> str:
        kind = "in place" if type(self._obj) is bytes else "copied"
        return f"<RawBytes {self.size} bytes, {kind}>"

    def finish(self, filled: int) -> bytes:
        """The ``bytes`` of the first ``filled`` bytes written (all of them: the object
        itself, no copy); ``view`` must not be written afterwards."""
        obj = self._obj
        if filled == self.size and type(obj) is bytes:
            result = obj
        else:
            result = bytes(self.view[:filled])
        self._obj = b""
        self.view = memoryview(b"")
        return result
