"""The per-folder UID index: UIDVALIDITY, UIDNEXT, mod-sequences and a cache of message facts.

RFC 3501 §2.3.1.1: UIDs are strictly ascending and never reused within one
UIDVALIDITY. RFC 7162 §3.1: every message has a mod-sequence that grows with each
change of its flags, and the mailbox's highest one never goes backwards. The
index is a snapshot, ``mailstack-index``::

    mailstack-index 2 <uidvalidity> <uidnext> <last \\Recent claim> <highest modseq> <ceiling> <floor>
    <uid> <size> <internal date, epoch seconds> <modseq> :<flag letters> <base name>
    ...
    x <modseq> <uid set>                          UIDs expunged at that mod-sequence

plus an append-only log of what changed since, ``mailstack-index.log``::

    a <uid> <size> <date> <modseq> :<letters> <base>  a message got a UID
    m <modseq> :<letters> <uid set>                   these messages' flags changed
    x <modseq> <uid set>                              these messages went away
    r <uid>                                           \\Recent claimed up to this UID
    c <ceiling>                                       mod-sequences up to this may be given out

so SELECT, STATUS and ``FETCH (FLAGS RFC822.SIZE INTERNALDATE MODSEQ)`` are answered
from a directory listing (flags live in file names) plus these files, without
opening messages. The letters recorded with each message are what its file name
said when its mod-sequence was given, so a flag changed by another program while
no one looked is found at the next load and gets a new mod-sequence.

Durability: a new UID costs one appended line, fsynced before a client sees the
UID (so UIDNEXT survives restarts). Flag changes, removals and \\Recent claims
are appended without waiting for the disk; mod-sequences instead come from a
*ceiling* that is written durably (a ``c`` line, fsynced) before any value under it
is handed out, in steps of :data:`MODSEQ_STEP`. A load starts counting above the
recorded ceiling, so after a crash that lost log lines no mod-sequence a client
saw is given again to another change. Expunged UIDs are kept (the last
:data:`VANISHED_KEEP` of them) for QRESYNC's VANISHED (EARLIER); the *floor* is the
highest mod-sequence of the ones let go, below which the server no longer knows
exactly what vanished.

When the log outgrows the folder, the snapshot is rewritten atomically (temp
file, fsync, rename, directory fsync) and the log removed; replaying a log over a
newer snapshot skips what the snapshot already holds (UIDs below its UIDNEXT,
mod-sequences up to its highest), so a crash between the two steps is harmless.
A missing or damaged index is rebuilt with a new UIDVALIDITY, as the RFC requires
when UIDs cannot be kept; a log whose last line was torn by a crash loses only
that line (it was never fsynced, so no client saw its UID). Version 1 snapshots
(no mod-sequences) are read, and written again as version 2.

UIDVALIDITY values are issued per user by :func:`issue_uidvalidity`: strictly
increasing (the last one issued is kept in ``mailstack-uidvalidity`` at the top
of the user's Maildir), so a folder deleted and created again within one
second, or after the clock went back, never shows an old UIDVALIDITY with new
UIDs behind it.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from mailstack.fsutil import fsync_directory

INDEX_FILE = "mailstack-index"
LOG_FILE = "mailstack-index.log"
COMPACT_MIN_RECORDS = 1000  # the log is folded into the snapshot past max(this, message count) lines
UIDVALIDITY_FILE = "mailstack-uidvalidity"
MODSEQ_STEP = 1000  # mod-sequences reserved per durable ceiling write
MAX_MODSEQ = 2**63 - 1  # RFC 7162 §7: mod-sequence-value is at most 9223372036854775807
VANISHED_KEEP = 100_000  # expunged UIDs remembered per folder for VANISHED (EARLIER)
_MAGIC_V1 = "mailstack-index 1"
_MAGIC = "mailstack-index 2"


class Entry(NamedTuple):
    uid: int
    size: int
    internal_date: int
    base: str
    modseq: int = 0
    letters: str | None = None  # the flag letters its mod-sequence belongs to; None: not known (v1)


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
    @property
    def modseq(self) -> int: ...
    @property
    def letters(self) -> str | None: ...


@dataclass(slots=True)
class Vanished:
    """Expunged UIDs with the mod-sequence of their expunge, oldest first (RFC 7162 §3.2.10).

    Two flat arrays, 16 bytes per UID. ``floor``: the highest mod-sequence of the
    UIDs let go to stay under :data:`VANISHED_KEEP`; what vanished at or below
    it is no longer known one by one.
    """

    modseqs: array[int] = field(default_factory=lambda: array("q"))
    uids: array[int] = field(default_factory=lambda: array("q"))
    floor: int = 0

    def add(self, modseq: int, uids: Iterable[int]) -> None:
        for uid in uids:
            self.modseqs.append(modseq)
            self.uids.append(uid)
        extra = len(self.uids) - VANISHED_KEEP
        if extra > 0:  # let the oldest tenth go at once, not one per expunge
            extra = max(extra, VANISHED_KEEP // 10)
            self.floor = max(self.floor, self.modseqs[extra - 1])
            del self.modseqs[:extra]
            del self.uids[:extra]

    def since(self, modseq: int) -> list[int] | None:
        """UIDs expunged after ``modseq``, ascending; None when that is older than what is kept."""
        if modseq < self.floor:
            return None
        modseqs = self.modseqs
        lo, hi = 0, len(modseqs)
        while lo < hi:  # first entry above modseq (the array is in modseq order)
            mid = (lo + hi) // 2
            if modseqs[mid] <= modseq:
                lo = mid + 1
            else:
                hi = mid
        return sorted(self.uids[lo:])

    def highest(self) -> int:
        return self.modseqs[-1] if self.modseqs else self.floor

    def groups(self) -> list[tuple[int, list[int]]]:
        """(modseq, UIDs) runs, for the snapshot."""
        out: list[tuple[int, list[int]]] = []
        for modseq, uid in zip(self.modseqs, self.uids, strict=True):
            if out and out[-1][0] == modseq:
                out[-1][1].append(uid)
            else:
                out.append((modseq, [uid]))
        return out


@dataclass(slots=True)
class IndexData:
    uidvalidity: int
    uidnext: int
    entries: Sequence[IndexEntry]
    last_claimed: int = 0
    highest: int = 0  # the highest mod-sequence the snapshot covers
    ceiling: int = 0  # no mod-sequence above this was ever handed out
    vanished: Vanished = field(default_factory=Vanished)


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


def letters_token(letters: str) -> str:
    """Flag letters as one field of an index line: ``:`` then the letters, with ``%``, space
    and line ends (which a file name another program made may hold) written as ``%XX``."""
    if letters.isalpha():  # the usual case: Maildir letters
        return ":" + letters
    return ":" + "".join(f"%{ord(c):02X}" if c in "% \r\n" else c for c in letters)


def _letters_of(token: str) -> str:
    """The letters of a :func:`letters_token` field; ValueError when it is not one."""
    if token[:1] != ":":
        raise ValueError(token)
    letters = token[1:]
    if "%" in letters:
        letters = re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), letters)
    return letters


def uid_ranges(uids: Iterable[int]) -> list[tuple[int, int]]:
    """Ascending UIDs -> (first, last) runs."""
    out: list[tuple[int, int]] = []
    for uid in uids:
        if out and uid == out[-1][1] + 1:
            out[-1] = (out[-1][0], uid)
        else:
            out.append((uid, uid))
    return out


def uid_set(uids: Iterable[int]) -> str:
    """Ascending UIDs -> ``1:3,7`` (IMAP sequence-set syntax)."""
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in uid_ranges(uids))


def parse_uid_set(text: str) -> list[int]:
    """``1:3,7`` -> [1, 2, 3, 7]; ValueError on anything else."""
    out: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition(":")
        lo = int(first)
        hi = int(last) if last else lo
        if not 0 < lo <= hi or hi - lo > 10_000_000:
            raise ValueError(part)
        out.extend(range(lo, hi + 1))
    return out


def read_index(folder: Path) -> IndexData | None:
    """The stored index, or None when it is missing or damaged."""
    try:
        with open(folder / INDEX_FILE, encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    lines = text.split("\n")
    head = lines[0].split(" ")
    magic = " ".join(head[:2])
    if not text.endswith("\n"):
        return None
    try:
        if magic == _MAGIC and len(head) == 8:
            return _read_v2(head, lines)
        if magic == _MAGIC_V1 and len(head) in (4, 5):
            return _read_v1(head, lines)
    except ValueError:
        return None
    return None


def _read_v1(head: list[str], lines: list[str]) -> IndexData | None:
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
    return IndexData(uidvalidity, uidnext, entries, last_claimed)


def _read_v2(head: list[str], lines: list[str]) -> IndexData | None:
    uidvalidity, uidnext, last_claimed, highest, ceiling, floor = map(int, head[2:])
    if not 0 <= highest <= ceiling <= MAX_MODSEQ:
        return None
    entries = []
    vanished = Vanished(floor=floor)
    last = 0
    for line in lines[1:-1]:
        if line[:2] == "x ":
            _, modseq, uids = line.split(" ")
            vanished.add(int(modseq), parse_uid_set(uids))
            continue
        uid_text, size, date, modseq, letters, base = line.split(" ", 5)
        entry = Entry(int(uid_text), int(size), int(date), base, int(modseq), _letters_of(letters))
        if entry.uid <= last or entry.uid >= uidnext or entry.modseq > highest:
            return None
        last = entry.uid
        entries.append(entry)
    return IndexData(uidvalidity, uidnext, entries, last_claimed, highest, ceiling, vanished)


def write_index(folder: Path, data: IndexData, *, durable: bool = True) -> None:
    """Replace the index atomically; durably (fsync file and directory) unless told not to.

    Every caller in mailstack asks for durability: an index torn by a crash after an
    unsynced rename would be rebuilt with a new UIDVALIDITY, forcing clients to resync.
    """
    vanished = data.vanished
    parts = [f"{_MAGIC} {data.uidvalidity} {data.uidnext} {data.last_claimed} {data.highest} "
             f"{data.ceiling} {vanished.floor}\n"]
    tokens: dict[str | None, str] = {}
    for e in data.entries:
        letters = e.letters
        token = tokens.get(letters)
        if token is None:
            token = tokens[letters] = letters_token(letters or "")
        parts.append(f"{e.uid} {e.size} {e.internal_date} {e.modseq} {token} {e.base}\n")
    parts += [f"x {modseq} {uid_set(uids)}\n" for modseq, uids in vanished.groups()]
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
    """Apply log lines to a snapshot; False when a line makes no sense (damage).

    Lines the snapshot already covers (a crash between writing it and removing the
    log) are skipped: additions below its UIDNEXT, changes up to its highest modseq.
    """
    snapshot_next, covered = data.uidnext, data.highest
    by_uid = {e.uid: e for e in data.entries}
    vanished = data.vanished
    highest = covered
    try:
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind in ("a", "+"):
                uid_text, rest = rest.split(" ", 1)
                uid = int(uid_text)
                if uid < snapshot_next:  # already in the snapshot
                    continue
                if kind == "a":
                    size, date, modseq_text, letters, base = rest.split(" ", 4)
                    modseq = int(modseq_text)
                    if modseq > MAX_MODSEQ:
                        return False
                    entry = Entry(uid, int(size), int(date), base, modseq, _letters_of(letters))
                    highest = max(highest, modseq)
                else:  # written before mod-sequences: the load gives it one
                    size, date, base = rest.split(" ", 2)
                    entry = Entry(uid, int(size), int(date), base)
                if uid < data.uidnext or not entry.base:
                    return False
                by_uid[uid] = entry
                data.uidnext = uid + 1
            elif kind == "m":
                modseq_text, token, uids = rest.split(" ")
                modseq = int(modseq_text)
                letters = _letters_of(token)
                if modseq > MAX_MODSEQ:
                    return False
                if modseq <= covered:
                    continue
                highest = max(highest, modseq)
                for uid in parse_uid_set(uids):
                    old = by_uid.get(uid)
                    if old is not None:
                        by_uid[uid] = old._replace(modseq=modseq, letters=letters)  # type: ignore[attr-defined]
            elif kind == "x":
                modseq_text, uids = rest.split(" ")
                modseq = int(modseq_text)
                if modseq > MAX_MODSEQ:
                    return False
                if modseq <= covered:
                    continue
                highest = max(highest, modseq)
                gone = parse_uid_set(uids)
                for uid in gone:
                    by_uid.pop(uid, None)
                vanished.add(modseq, gone)
            elif kind == "-":  # written before mod-sequences
                by_uid.pop(int(rest), None)
            elif kind == "r":
                data.last_claimed = max(data.last_claimed, int(rest))
            elif kind == "c":
                ceiling = int(rest)
                if ceiling > MAX_MODSEQ:
                    return False
                data.ceiling = max(data.ceiling, ceiling)
            else:
                return False
    except ValueError:
        return False
    data.entries = [by_uid[u] for u in sorted(by_uid)]
    data.highest = highest
    data.ceiling = max(data.ceiling, highest)
    return True
