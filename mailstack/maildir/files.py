"""Blocking Maildir file operations used by :mod:`.mailbox`, for the io thread pool.

Each is thread safe and touches no shared in-memory state.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from mailstack.maildir.names import unique_name
from mailstack.metrics import fsync_timer


def rename_all(moves: list[tuple[str, str]], folder: str) -> tuple[list[bool], tuple[int, int]]:
    """Rename each (src, dst); False where the source had gone. Also the folder's new stamp."""
    done = []
    for src, dst in moves:
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            if not os.path.isdir(f"{folder}/cur"):
                raise
            done.append(False)
        else:
            done.append(True)
    return done, (os.stat(f"{folder}/new").st_mtime_ns, os.stat(f"{folder}/cur").st_mtime_ns)


def link_or_copy(source: str, target: str, date: int) -> None:
    """Hard-link ``source`` to ``target``, or copy it durably where links are not possible."""
    try:
        os.link(source, target)
        return
    except FileNotFoundError:
        raise
    except OSError:  # another file system, or no hard links: copy durably
        pass
    with open(source, "rb") as f:
        data = f.read()
    with open(target, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.utime(target, (date, date))


def write_tmp(folder: Path, hostname: str, data: bytes, internal_date: int | None) -> tuple[Path, str, int]:
    """Write and fsync a message into ``folder/tmp``; thread safe, touches no shared state."""
    base = unique_name(hostname, len(data))
    tmp = folder / "tmp" / base
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)
        f.flush()
        with fsync_timer("maildir"):
            os.fsync(fd)
    date = int(time.time()) if internal_date is None else internal_date
    os.utime(tmp, (date, date))
    return tmp, base, date


def read_file(path: Path | str) -> bytes | None:
    """A message file's bytes, or None when it is gone; thread safe."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


_ORDER = re.compile(r"^(\d+)(?:\.M(\d+))?")


def delivery_order(base: str) -> tuple[int, int, str]:
    """Seconds and microseconds from ``<sec>.M<usec>...`` names; the name breaks ties."""
    m = _ORDER.match(base)
    if m is None:
        return (0, 0, base)
    return (int(m.group(1)), int(m.group(2) or 0), base)
