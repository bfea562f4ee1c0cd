"""The per-folder UID index: UIDVALIDITY, UIDNEXT and a cache of message facts.

RFC 3501 §2.3.1.1: UIDs are strictly ascending and never reused within one
UIDVALIDITY. The index is a snapshot, ``mailstack-index``::

    mailstack-index 1 <uidvalidity> <uidnext> <highest UID whose \\Recent was claimed>
    <uid> <size> <internal date, epoch seconds> <base name>
    ...

plus an append-only log of what changed since, ``mailstack-index.log``::

    + <uid> <size> <internal date> <base name>     a message got a UID
    - <uid>                                         a message went away
    r <uid>                                         \\Recent claimed up to this UID

so SELECT, STATUS and ``FETCH (FLAGS RFC822.SIZE INTERNALDATE)`` are answered
from a directory listing (flags live in file names) plus these files, without
opening messages. A new UID costs one appended line, fsynced before a client
sees the UID (so UIDNEXT survives restarts); removals and \\Recent claims are
appended without waiting for the disk (losing them only costs a rescan or a
message shown as recent again). When the log outgrows the folder, the snapshot
is rewritten atomically (temp file, fsync, rename, directory fsync) and the log
removed; replaying a log over a newer snapshot skips what the snapshot already
holds, so a crash between the two steps is harmless. A missing or damaged index
is rebuilt with a new UIDVALIDITY, as the RFC requires when UIDs cannot be kept;
a log whose last line was torn by a crash loses only that line (it was never
fsynced, so no client saw its UID).

UIDVALIDITY values are issued per user by :func:`issue_uidvalidity`: strictly
increasing (the last one issued is kept in ``mailstack-uidvalidity`` at the top
of the user's Maildir), so a folder deleted and created again within one
second, or after the clock went back, never shows an old UIDVALIDITY with new
UIDs behind it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from mailstack.fsutil import fsync_directory

INDEX_FILE = "mailstack-index"
LOG_FILE = "mailstack-index.log"
COMPACT_MIN_RECORDS = 1000  # the log is folded into the snapshot past max(this, message count) lines
UIDVALIDITY_FILE = "mailstack-uidvalidity"
_MAGIC = "mailstack-index 1"


class Entry(NamedTuple):
    uid: int
    size: int
    internal_date: int
    base: str


class IndexEntry(Protocol):
    """What the snapshot keeps of a message (an :class:`Entry`, or a mailbox's own message record)."""

    @property
    def uid(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def internal_date(self) -> int: ...
    @property
    def base(self) -> str: ...


@dataclass(slots=True)
class IndexData:
    uidvalidity: int
    uidnext: int
    entries: Sequence[IndexEntry]
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
    parts += [f"{e.uid} {e.size} {e.internal_date} {e.base}\n" for e in data.entries]
    tmp = folder / f"{INDEX_FILE}.tmp.{os.getpid()}.{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with open(fd, "wb") as f:
            f.write("".join(parts).encode("utf-8"))
            f.flush()
            if durable:
                os.fsync(fd)
        os.replace(tmp, folder / INDEX_FILE)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk leaves no half-written snapshot behind
        raise
    if durable:
        fsync_directory(folder)


class IndexLog:
    """One folder's snapshot and log. Blocking; used by one thread at a time (the folder's owner)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.records = 0  # lines in the log since the last snapshot
        self._log_durable = False  # the log's directory entry is known to be on disk

    def load(self) -> IndexData | None:
        """Snapshot plus log replayed, or None when either is damaged."""
        data = read_index(self.folder)
        if data is None:
            return None
        path = self.folder / LOG_FILE
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            self.records = 0
            return data
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # a line torn by a crash: cut it off, or the next line would be glued to it
            os.truncate(path, end)
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            lines = raw[:end].decode("utf-8").split("\n")
        except UnicodeDecodeError:
            return None
        lines.pop()  # after the last newline: empty
        if not _replay(data, lines):
            return None
        self.records = len(lines)
        self._log_durable = True
        return data

    def append(self, records: list[str], durable: bool) -> None:
        """Add lines to the log; with ``durable``, they are on disk when this returns."""
        if not records:
            return
        path = self.folder / LOG_FILE
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            data = "".join(r + "\n" for r in records).encode("utf-8")
            while data:
                data = data[os.write(fd, data):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        self.records += len(records)
        if durable and not self._log_durable:  # a new log file: make its name durable too
            fsync_directory(self.folder)
            self._log_durable = True

    def needs_compaction(self, messages: int) -> bool:
        return self.records > max(COMPACT_MIN_RECORDS, messages)

    def compact(self, data: IndexData) -> None:
        """Write ``data`` as the new snapshot, then drop the log it covers."""
        write_index(self.folder, data)
        try:
            os.unlink(self.folder / LOG_FILE)
        except FileNotFoundError:
            pass
        self.records = 0
        self._log_durable = False


def _replay(data: IndexData, lines: list[str]) -> bool:
    """Apply log lines to a snapshot; False when a line makes no sense (damage)."""
    snapshot_next = data.uidnext
    by_uid = {e.uid: e for e in data.entries}
    try:
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "+":
                uid_text, size, date, base = rest.split(" ", 3)
                uid = int(uid_text)
                if uid < snapshot_next:  # already in the snapshot (a crash during compaction)
                    continue
                if uid < data.uidnext or not base:
                    return False
                by_uid[uid] = Entry(uid, int(size), int(date), base)
                data.uidnext = uid + 1
            elif kind == "-":
                by_uid.pop(int(rest), None)
            elif kind == "r":
                data.last_claimed = max(data.last_claimed, int(rest))
            else:
                return False
    except ValueError:
        return False
    data.entries = [by_uid[u] for u in sorted(by_uid)]
    return True

