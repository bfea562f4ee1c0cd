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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

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
