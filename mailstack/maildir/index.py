"""The per-folder UID index: UIDVALIDITY, UIDNEXT and a cache of message facts.

RFC 3501 §2.3.1.1: UIDs are strictly ascending and never reused within one
UIDVALIDITY. The file ``mailstack-index`` in each folder holds::

    mailstack-index 1 <uidvalidity> <uidnext> <highest UID whose \\Recent was claimed>
    <uid> <size> <internal date, epoch seconds> <base name>
    ...

so SELECT, STATUS and ``FETCH (FLAGS RFC822.SIZE INTERNALDATE)`` are answered
from a directory listing (flags live in file names) plus this file, without
opening messages. It is replaced atomically (write to a temp file, fsync,
rename, fsync the directory): a crash leaves the old or the new index, and a
UID is only shown to a client after the index that records it (and the
UIDNEXT past it) is durable. A missing or unreadable index is rebuilt with a
new UIDVALIDITY, as the RFC requires when UIDs cannot be kept.

UIDVALIDITY values are issued per user by :func:`issue_uidvalidity`: strictly
increasing (the last one issued is kept in ``mailstack-uidvalidity`` at the top
of the user's Maildir), so a folder deleted and created again within one
second, or after the clock went back, never shows an old UIDVALIDITY with new
UIDs behind it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

INDEX_FILE = "mailstack-index"
UIDVALIDITY_FILE = "mailstack-uidvalidity"
_MAGIC = "mailstack-index 1"


@dataclass(slots=True)
class Entry:
    uid: int
    size: int
    internal_date: int
    base: str


@dataclass(slots=True)
class IndexData:
    uidvalidity: int
    uidnext: int
    entries: list[Entry]
    last_claimed: int = 0


def new_uidvalidity() -> int:
    """A time-based UIDVALIDITY, for a folder outside any user's Maildir (tests, tools)."""
    return max(1, int(time.time()) & 0xFFFFFFFF)


def issue_uidvalidity(user_root: Path, floor: int = 0) -> int:
    """The next UIDVALIDITY for one user: max(now, last issued + 1, floor), recorded durably.

    Blocks (a small file write and fsync); callers serialise calls per user.
    """
    path = user_root / UIDVALIDITY_FILE
    try:
        last = int(path.read_text("ascii").strip() or 0)
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        last = 0
    value = max(new_uidvalidity(), last + 1, floor)
    tmp = user_root / f"{UIDVALIDITY_FILE}.tmp.{os.getpid()}.{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(b"%d\n" % value)
        f.flush()
        os.fsync(fd)
    os.replace(tmp, path)
    return value


def read_index(folder: Path) -> IndexData | None:
    """The stored index, or None when it is missing or damaged."""
    try:
        with open(folder / INDEX_FILE, encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    lines = text.split("\n")
    head = lines[0].split(" ")
    if " ".join(head[:2]) != _MAGIC or len(head) not in (4, 5) or not text.endswith("\n"):
        return None
    try:
        uidvalidity, uidnext = int(head[2]), int(head[3])
        last_claimed = int(head[4]) if len(head) == 5 else 0
        entries = []
        last = 0
        for line in lines[1:-1]:
            uid, size, date, base = line.split(" ", 3)
            entry = Entry(int(uid), int(size), int(date), base)
            if entry.uid <= last or entry.uid >= uidnext:
                return None
            last = entry.uid
            entries.append(entry)
    except ValueError:
        return None
    return IndexData(uidvalidity, uidnext, entries, last_claimed)


def write_index(folder: Path, data: IndexData, *, durable: bool = True) -> None:
    """Replace the index atomically; durably (fsync file and directory) unless told not to.

    Every caller in mailstack asks for durability: an index torn by a crash after an
    unsynced rename would be rebuilt with a new UIDVALIDITY, forcing clients to resync.
    """
    parts = [f"{_MAGIC} {data.uidvalidity} {data.uidnext} {data.last_claimed}\n"]
    parts.extend(f"{e.uid} {e.size} {e.internal_date} {e.base}\n" for e in data.entries)
    tmp = folder / f"{INDEX_FILE}.tmp.{os.getpid()}.{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write("".join(parts).encode("utf-8"))
        f.flush()
        if durable:
            os.fsync(fd)
    os.replace(tmp, folder / INDEX_FILE)
    if not durable:
        return
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
