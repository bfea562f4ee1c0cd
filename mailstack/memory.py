"""Giving large freed blocks back to the system at once (glibc's malloc).

glibc serves a request above its mmap threshold with its own mapping and
unmaps it on free, but it raises that threshold (up to 32 MiB) each time such
a block is freed. After the first argon2id check (19 MiB of working memory,
see :mod:`mailstack.accounts.passwords`) every later one is carved from the
heap of the thread that ran it, and the heap keeps it: two ``auth`` threads
held about 40 MiB for the life of the process. Fixing the threshold turns
the dynamic adjustment off (mallopt(3)), so each check's memory is returned
when the check ends.

Elsewhere (musl, macOS) nothing is changed.

Also here: pausing the cyclic garbage collector around bulk loads.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import sys
import threading
from collections.abc import Iterator

M_MMAP_THRESHOLD = -3  # <malloc.h>
THRESHOLD = 1 << 20  # blocks from 1 MiB up get their own mapping (glibc's default starts at 128 KiB)


def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold at THRESHOLD; True when that was done."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # only glibc has both  # noqa: B018
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))


_pause_lock = threading.Lock()
_pauses = 0
_was_enabled = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a bulk load runs (any thread; nests).

    Reading a 100,000-message folder makes a few hundred thousand objects, and
    the collector, triggered by allocation counts, walked every live object
    several times over during it: about a sixth of the load. Reference counting
    still frees everything that is not in a cycle; the collector runs as usual
    once the last load ends.
    """
    global _pauses, _was_enabled
    with _pause_lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()
