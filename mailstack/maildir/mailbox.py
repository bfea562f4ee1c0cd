"""One Maildir folder as an IMAP mailbox: UIDs, flags, \\Recent, append, copy, expunge.

A :class:`Mailbox` is shared by every session of this process that has the
folder open (:class:`mailstack.maildir.folders.MailStore` hands out one per
path), so a flag change or expunge by one session is visible to the others at
once; changes by other processes are found by :meth:`Mailbox.refresh`, which
lists ``new/`` and ``cur/`` only when their modification times moved.

\\Recent (RFC 3501 §2.3.2): a message is recent for exactly one session. New
messages start "unclaimed"; the first read-write session to see them claims
them (and moves them from ``new/`` to ``cur/``, as Maildir readers do);
EXAMINE and STATUS count unclaimed ones without claiming.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mailstack.maildir.flags import Keywords, split_name
from mailstack.maildir.index import INDEX_FILE, Entry, IndexData, new_uidvalidity, read_index, write_index
from mailstack.maildir.layout import fsync_directory
from mailstack.maildir.names import size_from_name, unique_name

MTIME_SLACK_NS = 1_000_000_000
HEADER_CACHE_LIMIT = 20_000
HEADER_CACHE_BYTES = 8192


class MailboxGone(Exception):
    """The folder's directory was removed (or replaced by another) while it was open."""


@dataclass(slots=True)
class Message:
    uid: int
    base: str
    subdir: str  # "new" or "cur"
    letters: str  # sorted info letters
    size: int
    internal_date: int
    name: str = ""  # the file name as found (a name in cur/ may lack the ":2," info)

    def filename(self) -> str:
        if self.name:
            return self.name
        return self.base if self.subdir == "new" else f"{self.base}:2,{self.letters}"


class Mailbox:
    """The state of one Maildir folder; every method runs on one thread at a time."""

    def __init__(self, path: Path, hostname: str = "localhost", *,
                 uidvalidity: Callable[[], int] = new_uidvalidity, fresh: bool = False) -> None:
        self.path = path
        self._new_uidvalidity = uidvalidity
        self._dir = str(path)
        self.hostname = hostname
        self.keywords = Keywords(path)
        self.messages: list[Message] = []
        self.by_base: dict[str, Message] = {}
        self.by_uid: dict[int, Message] = {}
        self.uidvalidity = 0
        self.uidnext = 1
        self.last_claimed = 0  # UIDs above this are \\Recent for the next session to see them
        self.unclaimed: set[int] = set()
        self.header_cache: dict[int, bytes] = {}  # UID -> header bytes, for SEARCH on headers
        self.version = 0  # bumped on every change, so sessions know when to compare
        self._stamp: tuple[int, int] | None = None
        self._stamp_taken = 0
        self.gone = False  # the directory vanished: the mailbox reads as empty from now on
        self._identity = self._dir_identity()
        self._load(fresh)

    # -- loading and refreshing --------------------------------------------------

    def _load(self, fresh: bool) -> None:
        """``fresh``: ignore any index (a Maildir restored under a running server)."""
        self._index_seen = self._index_identity()
        data = None if fresh else read_index(self.path)
        if data is None:
            data = IndexData(self._new_uidvalidity(), 1, [])
            self._index_known = False
        else:
            self._index_known = True
        self.uidvalidity, self.uidnext = data.uidvalidity, data.uidnext
        self.last_claimed = data.last_claimed
        self._cached = {e.base: e for e in data.entries}
        rebuilt = not self._index_known
        self.refresh(force=True)
        if rebuilt:  # a Maildir without our index: what readers left in new/ is recent
            in_new = [m.uid for m in self.messages if m.subdir == "new"]
            self.last_claimed = (min(in_new) if in_new else self.uidnext) - 1
            self.save_index()
        self.unclaimed = {m.uid for m in self.messages if m.uid > self.last_claimed}

    def _restamp(self) -> None:
        """After our own change: the new stamp, so it is not mistaken for someone else's."""
        self._stamp = self._dir_stamp()
        self._stamp_taken = time.time_ns()

    def _dir_identity(self) -> tuple[int, int]:
        st = os.stat(f"{self._dir}/cur")
        return (st.st_dev, st.st_ino)

    def _index_identity(self) -> tuple[int, int] | None:
        """Which index file is there: a removed and re-created folder has none or another one."""
        try:
            st = os.stat(self.path / INDEX_FILE)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def _vanish(self) -> None:
        """The directory is gone or another took its place: every message is expunged."""
        self.gone = True
        self.messages = []
        self.by_base.clear()
        self.by_uid.clear()
        self.unclaimed.clear()
        self.header_cache.clear()
        self.version += 1

    def _dir_stamp(self) -> tuple[int, int]:
        return (os.stat(f"{self._dir}/new").st_mtime_ns, os.stat(f"{self._dir}/cur").st_mtime_ns)

    def refresh(self, force: bool = False) -> bool:
        """Bring the state in line with the directories; True when something changed."""
        if self.gone:
            return False
        try:
            identity = self._dir_identity()
            stamp = self._dir_stamp()
        except FileNotFoundError:
            identity = None
        if identity != self._identity:
            self._vanish()
            return True
        # A directory changed twice within one mtime tick shows one mtime: trust an unchanged
        # stamp only if it was taken a full second after that mtime (coarse file systems).
        if not force and stamp == self._stamp and self._stamp_taken > max(stamp) + MTIME_SLACK_NS:
            return False
        if self._index_known and self._index_identity() != self._index_seen:
            self._vanish()  # the directory came back (same inode), but not with our index
            return True
        self._stamp = stamp
        self._stamp_taken = time.time_ns()
        self.keywords.load()
        found: dict[str, tuple[str, str, str]] = {}
        for sub in ("new", "cur"):
            try:
                names = os.listdir(f"{self._dir}/{sub}")
            except FileNotFoundError:
                continue
            for name in names:
                if name.startswith("."):
                    continue
                base, letters = split_name(name)
                found[base] = (sub, "".join(sorted(letters)) if sub == "cur" else "", name)
        changed = self._reconcile(found)
        if changed:
            self.version += 1
        return changed

    def _reconcile(self, found: dict[str, tuple[str, str, str]]) -> bool:
        changed = False
        index_dirty = False
        if self.by_base:
            keep = []
            for m in self.messages:
                where = found.get(m.base)
                if where is None:
                    del self.by_base[m.base], self.by_uid[m.uid]
                    self.unclaimed.discard(m.uid)
                    changed = index_dirty = True
                    continue
                if (m.subdir, m.letters, m.name) != where:
                    if (m.subdir, m.letters) != where[:2]:
                        changed = True
                    m.subdir, m.letters, m.name = where
                keep.append(m)
            self.messages = keep
        new_bases = [b for b in found if b not in self.by_base]
        if new_bases:
            known = [b for b in new_bases if b in self._cached]
            fresh = sorted((b for b in new_bases if b not in self._cached), key=_delivery_order)
            for base in sorted(known, key=lambda b: self._cached[b].uid):
                e = self._cached[base]
                sub, letters, name = found[base]
                self._add(Message(e.uid, base, sub, letters, e.size, e.internal_date, name))
            for base in fresh:
                sub, letters, name = found[base]
                size, date = self._facts(sub, name)
                msg = Message(self.uidnext, base, sub, letters, size, date, name)
                self.uidnext += 1
                self._add(msg)
                self.unclaimed.add(msg.uid)
            if known and fresh:
                self.messages.sort(key=lambda m: m.uid)
            changed = True
            index_dirty = index_dirty or bool(fresh) or len(known) != len(self._cached)
        self._cached = {}
        if index_dirty or not self._index_known:
            self.save_index()
        return changed

    def _add(self, msg: Message) -> None:
        if self.messages and msg.uid < self.messages[-1].uid:
            self.messages.append(msg)
            self.messages.sort(key=lambda m: m.uid)
        else:
            self.messages.append(msg)
        self.by_base[msg.base] = msg
        self.by_uid[msg.uid] = msg

    def _facts(self, sub: str, name: str) -> tuple[int, int]:
        base = name.split(":", 1)[0]
        st = os.stat(f"{self._dir}/{sub}/{name}")
        size = size_from_name(base)
        return (size if size is not None else st.st_size), int(st.st_mtime)

    def save_index(self, *, durable: bool = True) -> None:
        if self.gone:
            return
        entries = [Entry(m.uid, m.size, m.internal_date, m.base) for m in self.messages]
        write_index(self.path, IndexData(self.uidvalidity, self.uidnext, entries, self.last_claimed),
                    durable=durable)
        self._index_known = True
        self._index_seen = self._index_identity()

    # -- reading ------------------------------------------------------------------------

    def file_path(self, msg: Message) -> str:
        """The message file's path (a str: this is on every FETCH's path)."""
        return f"{self._dir}/{msg.subdir}/{msg.filename()}"

    def read(self, msg: Message) -> bytes:
        """The message bytes; a message removed meanwhile reads as empty."""
        for _ in range(3):
            try:
                with open(self.file_path(msg), "rb") as f:
                    return f.read()
            except FileNotFoundError:
                self.refresh(force=True)
                if msg.base not in self.by_base:
                    return b""
        return b""

    def remember_header(self, uid: int, header: bytes) -> None:
        if len(header) > HEADER_CACHE_BYTES:
            return
        if len(self.header_cache) >= HEADER_CACHE_LIMIT:
            self.header_cache.clear()
        self.header_cache[uid] = header

    def flags(self, msg: Message) -> list[str]:
        return self.keywords.flags_of(msg.letters)

    def unseen_count(self) -> int:
        return sum(1 for m in self.messages if "S" not in m.letters)

    def first_unseen(self) -> int:
        for i, m in enumerate(self.messages, 1):
            if "S" not in m.letters:
                return i
        return 0

    # -- changing -----------------------------------------------------------------------

    def claim_recent(self) -> set[int]:
        """Take every unclaimed recent message for the calling session (RFC 3501 §2.3.2).

        The claim is recorded in the index (the highest claimed UID), so it
        survives restarts; files stay where they are.
        """
        claimed, self.unclaimed = self.unclaimed, set()
        if claimed:
            self.last_claimed = max(self.last_claimed, max(claimed))
            self.save_index()
        return claimed

    def set_letters(self, msg: Message, letters: str) -> bool:
        """Rename the file to carry ``letters``; False if it vanished."""
        letters = "".join(sorted(set(letters)))
        if letters == msg.letters and msg.subdir == "cur":
            return True
        src = self.file_path(msg)
        dst = self.path / "cur" / f"{msg.base}:2,{letters}"
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            self.refresh(force=True)
            return False
        msg.subdir, msg.letters, msg.name = "cur", letters, dst.name
        self.version += 1
        self._restamp()
        return True

    def add_file(self, data: bytes, letters: str, internal_date: int | None) -> Message:
        """Write a new message durably into ``cur/`` and give it the next UID (RFC 4315 APPENDUID)."""
        tmp, base, date = write_tmp(self.path, self.hostname, data, internal_date)
        return self.add_tmp(tmp, base, letters, len(data), date)

    def add_tmp(self, tmp: Path, base: str, letters: str, size: int, date: int) -> Message:
        """Publish a file already written and fsynced in ``tmp/`` (by :func:`write_tmp`)."""
        self.refresh()
        if self.gone:
            raise MailboxGone(str(self.path))
        return self._publish(tmp, base, letters, size, date)

    def add_link(self, source: Path | str, size: int, letters: str, internal_date: int, *, move: bool) -> Message:
        """Hard-link (COPY) or rename (MOVE) one file from another folder into this one."""
        return self.add_links([(source, size, letters, internal_date)], move=move)[0]

    def add_links(self, items: list[tuple[Path | str, int, str, int]], *, move: bool) -> list[Message]:
        """Many files at once: one directory fsync and one index write for the lot."""
        self.refresh()
        if self.gone:
            raise MailboxGone(str(self.path))
        placed = []
        for source, size, letters, date in items:
            base = unique_name(self.hostname, size)
            tmp = self.path / "tmp" / base
            if move:
                os.rename(source, tmp)
            else:
                try:
                    os.link(source, tmp)
                except OSError:  # another file system, or no hard links: copy durably
                    with open(source, "rb") as f:
                        data = f.read()
                    with open(tmp, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.utime(tmp, (date, date))
            letters = "".join(sorted(set(letters)))
            os.rename(tmp, f"{self._dir}/cur/{base}:2,{letters}")
            msg = Message(self.uidnext, base, "cur", letters, size, date)
            self.uidnext += 1
            self._add(msg)
            self.unclaimed.add(msg.uid)
            placed.append(msg)
        if placed:
            fsync_directory(f"{self._dir}/cur")
            self.save_index()
            self.version += 1
            self._restamp()
        return placed

    def _publish(self, tmp: Path, base: str, letters: str, size: int, date: int) -> Message:
        letters = "".join(sorted(set(letters)))
        os.rename(tmp, self.path / "cur" / f"{base}:2,{letters}")
        msg = Message(self.uidnext, base, "cur", letters, size, date)
        self.uidnext += 1
        self._add(msg)
        self.unclaimed.add(msg.uid)
        fsync_directory(str(self.path / "cur"))
        self.save_index()
        self.version += 1
        self._restamp()
        return msg

    def expunge(self, uids: Iterable[int]) -> list[int]:
        """Remove messages; returns the UIDs actually removed."""
        gone = []
        for uid in sorted(set(uids)):
            msg = self.by_uid.get(uid)
            if msg is None:
                continue
            try:
                os.unlink(self.file_path(msg))
            except FileNotFoundError:
                pass
            gone.append(uid)
            del self.by_uid[uid], self.by_base[msg.base]
            self.unclaimed.discard(uid)
            self.header_cache.pop(uid, None)
        if gone:
            removed = set(gone)
            self.messages = [m for m in self.messages if m.uid not in removed]
            self.save_index()
            self.version += 1
            self._restamp()
        return gone

    def detach(self, *msgs: Message) -> None:
        """Forget messages whose files were moved elsewhere (MOVE)."""
        gone = {m.uid for m in msgs}
        for msg in msgs:
            self.by_uid.pop(msg.uid, None)
            self.by_base.pop(msg.base, None)
            self.unclaimed.discard(msg.uid)
            self.header_cache.pop(msg.uid, None)
        self.messages = [m for m in self.messages if m.uid not in gone]
        self.version += 1


def write_tmp(folder: Path, hostname: str, data: bytes, internal_date: int | None) -> tuple[Path, str, int]:
    """Write and fsync a message into ``folder/tmp``; thread safe, touches no shared state."""
    base = unique_name(hostname, len(data))
    tmp = folder / "tmp" / base
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)
        f.flush()
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


def _delivery_order(base: str) -> tuple[int, int, str]:
    """Seconds and microseconds from ``<sec>.M<usec>...`` names; the name breaks ties."""
    m = _ORDER.match(base)
    if m is None:
        return (0, 0, base)
    return (int(m.group(1)), int(m.group(2) or 0), base)
