"""Small file-system helpers shared by Maildir delivery, the spool and the DKIM key files."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from mailstack.metrics import fsync_timer


def write_fully(fd: int, *chunks: bytes) -> None:
    """Write all chunks with as few writev calls as the kernel allows."""
    views = [memoryview(c) for c in chunks if len(c)]
    while views:
        written = os.writev(fd, views)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]


def write_file_synced(path: str, flags: int, *chunks: bytes, mode: int = 0o600, store: str = "") -> None:
    """Open ``path`` with ``flags``, write every chunk, fsync, close; a *store* (``queue``) times
    the fsync in ``mailstack_fsync_seconds``."""
    fd = os.open(path, flags, mode)
    try:
        write_fully(fd, *chunks)
        with fsync_timer(store) if store else contextlib.nullcontext():
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make the entries of one directory durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes) -> None:
    """Write *data* to a unique temporary file beside *path*, then rename it over *path*: a reader
    sees the old file or the new one, never a part (no fsync: for caches and counters, which a
    crash may take back to an earlier state). The temporary file goes if anything fails."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
