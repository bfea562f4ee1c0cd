"""One Maildir folder as an IMAP mailbox: UIDs, flags, \\Recent, append, copy, expunge.

A :class:`Mailbox` is shared by every session of this process that has the
folder open (:class:`mailstack.maildir.folders.MailStore` hands out one per
path), so a flag change or expunge by one session is visible to the others at
once; changes by other processes are found by :meth:`Mailbox.refresh`, which
lists ``new/`` and ``cur/`` only when their modification times moved.

The mailbox is the one owner of its folder in this process. Its changes
(refresh, append, copy, move, flag renames, expunge) run one at a time, in
order, through a lock; their disk work runs through ``io`` (the bounded io
thread pool) and the in-memory state is changed afterwards on the calling
(reactor) thread. While a change holds the lock its disk half may read the
in-memory state, because nothing else changes it meanwhile. A change, once
started, runs to its end even if the session that asked stops waiting, so the
disk and the memory never disagree. New UIDs are appended to the index log
(:mod:`.index`) and fsynced before the change is applied, so no client sees
a UID the disk does not know.

\\Recent (RFC 3501 §2.3.2): a message is recent for exactly one session. New
messages start "unclaimed"; the first read-write session to see them claims
them; EXAMINE and STATUS count unclaimed ones without claiming.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mailstack.fsutil import fsync_directory
from mailstack.maildir import derived
from mailstack.maildir.files import delivery_order, link_or_copy, read_file, rename_all
from mailstack.maildir.flags import MAX_KEYWORDS, Keywords, TooManyKeywords, split_name
from mailstack.maildir.index import (
    INDEX_FILE,
    LOG_FILE,
    MAX_MODSEQ,
    MODSEQ_STEP,
    IndexData,
    IndexEntry,
    IndexLog,
    Vanished,
    letters_token,
    new_uidvalidity,
    uid_ranges,
    uid_set,
)
from mailstack.maildir.names import size_from_name, unique_name
from mailstack.maildir.owner import Owner
from mailstack.maildir.watch import Watch, Watcher
from mailstack.memory import collector_paused

# ``<seconds>.M<micros>...,S=<size>``: delivery order, internal date and size of a new file
_NAME_FACTS = re.compile(r"(\d{1,11})\.(?:M(\d+))?(?:[^,]*,)*?S=(\d+)(?=,|$)")
MTIME_SLACK_NS = 1_000_000_000
RECHECK_SECONDS = 1.0  # between commands, the directories are looked at again after this long
HEADER_CACHE_LIMIT = 20_000
HEADER_CACHE_BYTES = 8192

log = Logger()
IO = Callable[..., Awaitable[Any]]
T = TypeVar("T")
Where = tuple[str, str, str]  # (subdir, sorted info letters, file name) of a message found on disk


async def inline_io(fn: Callable[..., Any], *args: Any) -> Any:
    """``io`` for tools and tests: the work runs at once on the calling thread."""
    return fn(*args)


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
    name: str = ""  # the file name where it is not the usual one below (kept only then: memory)
    modseq: int = 0  # RFC 7162 §3.1: grows with every change of the message's flags

    def filename(self) -> str:
        if self.name:
            return self.name
        return self.base if self.subdir == "new" else f"{self.base}:2,{self.letters}"


@dataclass(slots=True)
class Change:
    """What a refresh found on disk (made on the io thread, applied on the owner's thread)."""

    stamp: tuple[int, int] = (0, 0)
    taken: int = 0
    vanished: bool = False
    keywords: tuple[int, list[str]] | None = None
    removed: list[Message] = field(default_factory=list)
    renamed: list[tuple[Message, Where]] = field(default_factory=list)
    added: list[Message] = field(default_factory=list)  # with their UIDs, already in the log
    gone: list[int] = field(default_factory=list)  # UIDs that went away (also recorded ones without a file)
    uidnext: int = 0
    modseq: int = 0  # given to everything this change found; 0 when it found nothing
    ceiling: int = 0  # a new ceiling recorded durably, or 0


LetterChange = str | Callable[[str], str]
"""New flag letters, or how to make them from the current ones."""


class Mailbox:
    """The state of one Maildir folder; see the module docstring for who may change what."""

    def __init__(self, path: Path, hostname: str = "localhost", *, io: IO = inline_io,
                 uidvalidity: Callable[[], int] = new_uidvalidity,
                 monotonic: Callable[[], float] = time.monotonic, watcher: Watcher | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.path = path
        self._watcher = watcher
        self._on_change = on_change
        self._watch: Watch | None = None
        self._monotonic = monotonic
        self._checked = float("-inf")  # when the directories were last compared (monotonic)
        self._stale = True  # someone said the folder changed: look at the next chance
        self._dir = str(path)
        self.hostname = hostname
        self._io = io
        self._new_uidvalidity = uidvalidity
        self.keywords = Keywords(path)
        self.messages: list[Message] = []
        self.by_base: dict[str, Message] = {}
        self.by_uid: dict[int, Message] = {}
        self.uidvalidity = 0
        self.uidnext = 1
        self.highestmodseq = 1  # RFC 7162 §3.1.1: never goes backwards, restarts included
        self._ceiling = 0  # recorded durably: no mod-sequence above it was handed out
        self.vanished = Vanished()  # expunged UIDs by mod-sequence, for VANISHED (EARLIER)
        self.last_claimed = 0  # UIDs above this are \\Recent for the next session to see them
        self.unclaimed: set[int] = set()
        self.header_cache: dict[int, bytes] = {}  # UID -> header bytes, for SEARCH on headers
        self.version = 0  # bumped on every change, so sessions know when to compare
        self.gone = False  # the directory vanished: the mailbox reads as empty from now on
        self._stamp: tuple[int, int] | None = None
        self._stamp_taken = 0
        self._identity: tuple[int, int] | None = None
        self._index_seen: tuple[int, int] | None = None
        self._log = IndexLog(path)
        self._unsaved = False  # the folder has no snapshot of the UIDs it shows yet
        self._owner = Owner(str(path))
        self._derived: dict[str, int] = {}  # batch lines in each derived-values file (.derived)

    @classmethod
    def load(cls, path: Path, hostname: str = "localhost", *, io: IO = inline_io,
             uidvalidity: Callable[[], int] = new_uidvalidity, fresh: bool = False,
             monotonic: Callable[[], float] = time.monotonic, save_later: bool = False,
             watcher: Watcher | None = None, on_change: Callable[[], None] | None = None) -> Mailbox:
        """Read a folder (blocking: call it on the io pool; the object is not shared yet).

        ``fresh``: ignore any index, as for a Maildir restored under a running server.
        ``save_later``: a folder that had no usable index gets its snapshot written by
        :meth:`save_in_background` rather than before this returns. That is safe because
        its UIDVALIDITY is new and already recorded: after a crash before the snapshot
        lands, the folder is read again under a newer UIDVALIDITY, so no client keeps
        UIDs that were not saved. Raises FileNotFoundError when the folder does not exist.
        """
        box = cls(path, hostname, io=io, uidvalidity=uidvalidity, monotonic=monotonic, watcher=watcher,
                  on_change=on_change)
        with collector_paused():
            box._load(fresh)
        if box._unsaved and not save_later:
            box._compact()
        return box

    def save_in_background(self) -> None:
        """Write the snapshot that a load with ``save_later`` left for later (as the owner)."""
        if self._unsaved:
            self._owner.in_background(self._compact_if_due())

    # -- loading (on the io thread, before the object is shared) ------------------------------

    def _load(self, fresh: bool) -> None:
        if self._watcher is not None:  # before the listing: a change while it runs is reported
            self._watch = self._watcher.watch([f"{self._dir}/new", f"{self._dir}/cur"], self._changed_by_others)
        self._checked, self._stale = self._monotonic(), False
        self._identity = self._dir_identity()
        if fresh:  # a restored folder's old index must not be read again after a crash
            self._drop_index()
        self._index_seen = self._index_identity()
        data = None if fresh else self._log.load()
        rebuilt = data is None
        if data is None:
            data = IndexData(self._new_uidvalidity(), 1, [])
        self.uidvalidity, self.uidnext = data.uidvalidity, data.uidnext
        self.last_claimed = data.last_claimed
        # Count on above the ceiling: log lines lost in a crash may have used values under it.
        # At least 1: HIGHESTMODSEQ 0 cannot be said (RFC 7162 §7), and the first change must
        # get more than what an empty folder showed.
        self._ceiling = data.ceiling
        self.highestmodseq = max(1, data.ceiling)
        self.vanished = data.vanished
        # A folder without our index gets a whole new snapshot below: no log lines for it first.
        change = self._refresh_work(True, data.entries, log=not rebuilt)
        assert change is not None
        self._apply(change)
        if rebuilt:  # a Maildir without our index: what readers left in new/ is recent
            in_new = [m.uid for m in self.messages if m.subdir == "new"]
            self.last_claimed = (min(in_new) if in_new else self.uidnext) - 1
            self._unsaved = True  # written by load() or save_in_background()
        elif self._log.needs_compaction(len(self.messages)):
            self._compact()
        self.unclaimed = {m.uid for m in self.messages if m.uid > self.last_claimed}

    def _drop_index(self) -> None:
        """Remove the index and its log, durably: the folder is then read under a new UIDVALIDITY
        whatever happens, never again under the one they name (whose UIDs and mod-sequences
        clients may hold for other messages)."""
        removed = False
        for name in (LOG_FILE, INDEX_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / name)
                removed = True
        if removed:
            fsync_directory(self.path)

    # -- refreshing ---------------------------------------------------------------------------

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

    def _dir_stamp(self) -> tuple[int, int]:
        return (os.stat(f"{self._dir}/new").st_mtime_ns, os.stat(f"{self._dir}/cur").st_mtime_ns)

    async def refresh(self, force: bool = False, *, eager: bool = True) -> bool:
        """Bring the state in line with the directories; True when something changed.

        ``force`` lists the directories even if their modification times did not
        move. Without ``eager`` (the check before an ordinary command), nothing is
        looked at if that was done less than RECHECK_SECONDS ago and nobody
        called :meth:`mark_stale` since: a trip to the io pool per pipelined
        command would cost more than the command. Changes made through this
        process reach the shared object at once anyway.
        """
        if self.gone or (not force and self._unchanged(eager)):
            return False
        return await self._owner.run(self._refresh(force))

    def _unchanged(self, eager: bool) -> bool:
        """True when the folder is known not to have changed since it was last read.

        Looked at less than RECHECK_SECONDS ago and not marked stale; for an eager
        check also watched (:mod:`.watch`) since before that look, with every report
        the kernel has queued read first.
        """
        if self._stale or self._monotonic() - self._checked >= RECHECK_SECONDS:
            return False
        if not eager:
            return True
        watch = self._watch
        if watch is None or not watch.alive or watch.since > self._checked or self._watcher is None:
            return False
        self._watcher.drain()  # a change another program just made is in the queue by now
        return not self._stale

    def _changed_by_others(self) -> None:
        """A watch report (reactor thread): look at the next chance, and say so (IDLE sessions)."""
        self._stale = True
        if self._on_change is not None and not self.gone:
            self._on_change()

    def mark_stale(self) -> None:
        """Another writer (local delivery) changed the folder: look at the next refresh."""
        self._stale = True

    async def _refresh(self, force: bool = False) -> bool:
        """:meth:`refresh` for a caller that already is the owner."""
        if self.gone:
            return False
        if self._watcher is not None:
            self._watcher.drain()  # so a lost watch is known before the directories are read
        self._stale = False
        started = self._monotonic()
        try:
            change = await self._disk(self._refresh_work, force, None)
        except MailboxGone:
            return True
        self._checked = started
        if change is None:
            return False
        changed = self._apply(change)
        await self._compact_if_due()
        return changed

    def _refresh_work(self, force: bool, cached: Sequence[IndexEntry] | None, log: bool = True) -> Change | None:
        """The disk half of a refresh (io thread): list, compare, give new files UIDs in the log.

        ``cached``: at load, the index's records in UID order; files they name keep their UIDs.
        """
        try:
            identity: tuple[int, int] | None = self._dir_identity()
            stamp = self._dir_stamp()
        except FileNotFoundError:
            identity, stamp = None, (0, 0)
        if identity != self._identity or (self._watch is not None and not self._watch.alive):
            return Change(vanished=True)  # gone, or removed and put back (a restore): not what we read
        # A directory changed twice within one mtime tick shows one mtime: trust an unchanged
        # stamp only if it was taken a full second after that mtime (coarse file systems).
        if not force and stamp == self._stamp and self._stamp_taken > max(stamp) + MTIME_SLACK_NS:
            return None
        if cached is None and self._index_identity() != self._index_seen:
            return Change(vanished=True)  # the directory came back (same inode), not with our index
        change = Change(stamp, time.time_ns(), keywords=self.keywords.read(), uidnext=self.uidnext)
        modseq = self.highestmodseq + 1  # for everything found changed (RFC 7162 §3.1: one per change)
        # base name -> file name in each directory; what is matched below is taken out, so what
        # is left at the end are files new to us.
        in_new, in_cur = self._listing("new"), self._listing("cur")
        records: list[str] = []
        flagged: dict[str, list[int]] = {}  # new letters -> UIDs whose flags others changed
        gone = change.gone
        for m in self.messages:
            suffix = in_cur.pop(m.base, None)
            if suffix is not None:
                if m.subdir != "cur" or _suffix_of(m) != suffix:
                    where = ("cur", *_in_cur(m.base, suffix))
                    change.renamed.append((m, where))
                    if where[1] != m.letters:
                        flagged.setdefault(where[1], []).append(m.uid)
                continue
            suffix = in_new.pop(m.base, None)
            if suffix is None:
                change.removed.append(m)
                gone.append(m.uid)
            elif m.subdir != "new" or _suffix_of(m) != suffix:
                change.renamed.append((m, ("new", "", m.base + suffix if suffix else "")))
                if m.letters:
                    flagged.setdefault("", []).append(m.uid)
        added = change.added
        for e in cached or ():
            base = e.base
            suffix = in_cur.pop(base, None)
            if suffix is not None:
                letters, name = _in_cur(base, suffix)
                sub = "cur"
            else:
                suffix = in_new.pop(base, None)
                if suffix is None:
                    gone.append(e.uid)
                    continue
                letters, name, sub = "", (base + suffix if suffix else ""), "new"
            msg = Message(e.uid, base, sub, letters, e.size, e.internal_date, name, e.modseq)
            if e.letters != letters:  # changed while no one looked (or not known: an old index)
                msg.modseq = modseq
                flagged.setdefault(letters, []).append(e.uid)
            added.append(msg)
        # One pattern match per new file gives its order, size and date (see _facts).
        fresh: list[tuple[int, int, str, str | None, dict[str, str]]] = []
        for found in (in_new, in_cur):
            for base in found:
                facts = _NAME_FACTS.match(base)
                if facts is None:
                    seconds, micros, _ = delivery_order(base)
                    fresh.append((seconds, micros, base, None, found))
                else:
                    seconds_text, micros_text, size_text = facts.groups()
                    fresh.append((int(seconds_text), int(micros_text or 0), base, size_text, found))
        fresh.sort()  # bases differ, so the directories are never compared
        uid = change.uidnext
        for seconds, _, base, size_text, found in fresh:
            suffix = found[base]
            sub = "new" if found is in_new else "cur"
            if size_text is not None and seconds:
                size, date = int(size_text), seconds
            else:
                size, date = self._facts(sub, base + suffix)
            if found is in_cur:
                letters, name = _in_cur(base, suffix)
            else:
                letters, name = "", (base + suffix if suffix else "")
            added.append(Message(uid, base, sub, letters, size, date, name, modseq))
            if log:
                records.append(f"a {uid} {size} {date} {modseq} {letters_token(letters)} {base}")
            uid += 1
        change.uidnext = uid
        if fresh or flagged or gone:
            change.modseq = modseq
            records += [f"m {modseq} {letters_token(letters)} {uid_set(uids)}"
                        for letters, uids in flagged.items()]
            if gone:
                gone.sort()
                records.append(f"x {modseq} {uid_set(gone)}")
        if log:
            ceiling = self._ceiling_record(change.modseq, records)
            # durable before any client sees these UIDs or mod-sequences
            self._log.append(records, durable=bool(fresh) or bool(ceiling))
            change.ceiling = ceiling
        return change

    def _ceiling_record(self, modseq: int, records: list[str]) -> int:
        """When ``modseq`` is past the recorded ceiling, add a ``c`` record raising it (the
        append must then be durable) and return the new ceiling; else 0."""
        if modseq <= self._ceiling:
            return 0
        ceiling = min(MAX_MODSEQ, modseq + MODSEQ_STEP)
        records.append(f"c {ceiling}")
        return ceiling

    def _listing(self, sub: str) -> dict[str, str]:
        """Base name -> the rest of the file name (``:2,FS`` or ``""``) of the messages in ``sub``."""
        try:
            names = os.listdir(f"{self._dir}/{sub}")
        except FileNotFoundError:
            return {}
        out = {}
        for name in names:
            if name[0] != ".":  # dot files are not messages
                base, colon, info = name.partition(":")
                out[base] = colon + info
        return out

    def _apply(self, change: Change) -> bool:
        """The in-memory half of a refresh (the owner's thread)."""
        if change.vanished:
            self._vanish()
            return True
        self._stamp, self._stamp_taken = change.stamp, change.taken
        self.keywords.apply(change.keywords)
        changed = False
        for m, where in change.renamed:
            if (m.subdir, m.letters) != where[:2]:
                changed = True
                if m.letters != where[1]:
                    m.modseq = change.modseq
            m.subdir, m.letters, m.name = where
        if change.removed:
            self._forget(change.removed)
            changed = True
        if change.gone:
            self.vanished.add(change.modseq, change.gone)
        if change.added:
            self._add_all(change.added, self.uidnext)
            changed = True
        self.uidnext = max(self.uidnext, change.uidnext)
        self._moved_on(change.modseq, change.ceiling)
        if changed:
            self.version += 1
        return changed

    def _moved_on(self, modseq: int, ceiling: int) -> None:
        """A change that used ``modseq`` (0: none) and recorded ``ceiling`` (0: none) is applied."""
        self.highestmodseq = max(self.highestmodseq, modseq)
        self._ceiling = max(self._ceiling, ceiling)

    def retire(self) -> None:
        """This process deleted or renamed the folder: the object owns it no more.

        Sessions that still hold it see every message expunged; changes queued
        before this one finish first.
        """
        self._owner.in_background(self._retire())

    async def _retire(self) -> None:
        if not self.gone:
            self._vanish()

    def _vanish(self) -> None:
        """The directory is gone or another took its place: every message is expunged."""
        self.gone = True
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self.messages = []
        self.by_base.clear()
        self.by_uid.clear()
        self.unclaimed.clear()
        self.header_cache.clear()
        self.version += 1

    def _add_all(self, msgs: list[Message], known_below: int) -> None:
        """Add messages (in UID order); those from ``known_below`` up are new, so recent."""
        if self.messages and msgs[0].uid < self.messages[-1].uid:
            self.messages.extend(msgs)
            self.messages.sort(key=lambda m: m.uid)
        else:
            self.messages.extend(msgs)
        self.by_base.update({m.base: m for m in msgs})
        self.by_uid.update({m.uid: m for m in msgs})
        self.unclaimed.update(m.uid for m in msgs if m.uid >= known_below)

    def _forget(self, msgs: Iterable[Message]) -> None:
        gone = set()
        for msg in msgs:
            if self.by_uid.pop(msg.uid, None) is None:
                continue
            self.by_base.pop(msg.base, None)
            self.unclaimed.discard(msg.uid)
            self.header_cache.pop(msg.uid, None)
            gone.add(msg.uid)
        if gone:
            self.messages = [m for m in self.messages if m.uid not in gone]

    def _facts(self, sub: str, name: str) -> tuple[int, int]:
        """Size and internal date of a file we have no record of.

        Both come from the name when it has them (``,S=`` and the delivery time that
        starts every Maildir name), so a first look at a big folder costs no stat per
        message; otherwise from the file.
        """
        base = name.split(":", 1)[0]
        size = size_from_name(base)
        seconds = base.partition(".")[0]
        if size is not None and seconds.isdigit() and len(seconds) <= 11:
            return size, int(seconds)
        try:
            st = os.stat(f"{self._dir}/{sub}/{name}")
        except FileNotFoundError:  # renamed or removed while we looked: the name still tells the size
            size = size_from_name(base)
            return (size or 0), int(time.time())
        size = size_from_name(base)
        return (size if size is not None else st.st_size), int(st.st_mtime)

    # -- the index ----------------------------------------------------------------------------

    def _snapshot(self) -> IndexData:
        # The message records themselves (their UID, size, date and base never change): no
        # second object per message, which for a 100,000-message folder was a fifth of a first load.
        return IndexData(self.uidvalidity, self.uidnext, list(self.messages), self.last_claimed,
                         self.highestmodseq, max(self._ceiling, self.highestmodseq), self.vanished)

    def _compact(self) -> None:
        """Fold the log into a new snapshot (io thread, as the owner)."""
        data = self._snapshot()
        self._log.compact(data)
        self._ceiling = data.ceiling
        self._index_seen = self._index_identity()
        self._unsaved = False

    async def _compact_if_due(self) -> None:
        """Fold the log into the snapshot when it has grown; the change before it is already
        durable, so a failure here (a full disk) is logged and tried again at the next change."""
        if not self.gone and (self._unsaved or self._log.needs_compaction(len(self.messages))):
            try:
                await self._io(self._compact)
            except OSError as e:
                log.warn("cannot compact the index of {folder}: {error}", folder=self._dir, error=e)

    # -- ownership ----------------------------------------------------------------------------

    async def _disk(self, fn: Callable[..., T], *args: Any) -> T:
        """``io`` for a change; a folder that vanished underneath raises MailboxGone."""
        try:
            result: T = await self._io(fn, *args)
        except MailboxGone:
            self._vanish()
            raise
        except FileNotFoundError:
            if await self._io(os.path.isdir, f"{self._dir}/cur"):
                raise
            self._vanish()
            raise MailboxGone(self._dir) from None
        return result

    def _still_ours(self) -> None:
        """Raise MailboxGone when the directory was replaced (a restore) since it was read (io thread)."""
        try:
            same = self._dir_identity() == self._identity
        except FileNotFoundError:
            same = False
        if not same:
            raise MailboxGone(self._dir)

    def _expect(self, path: str) -> None:
        """Announce a change of ours to ``path`` before making it, so its report is not
        taken for another program's (any thread; a path in this or another watched folder)."""
        if self._watcher is not None:
            folder, _, name = path.rpartition("/")
            self._watcher.expect(folder, name)

    def _check_gone(self) -> None:
        if self.gone:
            raise MailboxGone(self._dir)

    # -- reading ------------------------------------------------------------------------------

    def file_path(self, msg: Message) -> str:
        """The message file's path (a str: this is on every FETCH's path)."""
        return f"{self._dir}/{msg.subdir}/{msg.filename()}"

    async def read(self, msg: Message) -> bytes:
        """The message bytes, read on ``io``; a message removed meanwhile reads as empty."""
        for _ in range(3):
            data = await self._io(read_file, self.file_path(msg))
            if data is not None:
                return bytes(data)
            await self.refresh(force=True)
            if msg.base not in self.by_base:
                return b""
        return b""

    async def locate(self, msg: Message) -> str | None:
        """The path of ``msg``'s file after a forced look at the disk; None when it is gone.

        For readers whose open of :meth:`file_path` failed because another
        process renamed the file (new/ to cur/, flags) since the last refresh.
        """
        await self.refresh(force=True)
        if self.by_uid.get(msg.uid) is not msg:
            return None
        return self.file_path(msg)

    async def saved_values(self, name: str) -> dict[int, Any]:
        """Values of kind ``name`` worked out of this folder's messages earlier (:mod:`.derived`),
        by UID; read on ``io``."""
        values, batches = await self._io(derived.load, self.path, self.uidvalidity, name)
        self._derived[name] = batches
        return dict(values)

    def save_values(self, name: str, items: list[tuple[int, Any]], everything: dict[int, Any]) -> None:
        """Keep newly worked-out values (JSON types) for later loads, in the background on ``io``;
        ``everything`` holds every known value of the kind, for when the file is written anew."""
        if self.gone:  # deleted or replaced: the file under its name is not this folder's now
            return
        batches = self._derived.get(name, 0)
        whole = dict(everything) if batches == 0 or batches >= derived.MAX_BATCHES else None
        Deferred.fromCoroutine(self._save_values(name, items, batches, whole))

    async def _save_values(self, name: str, items: list[tuple[int, Any]], batches: int,
                           whole: dict[int, Any] | None) -> None:
        try:
            self._derived[name] = await self._io(derived.append, self.path, self.uidvalidity, name, items,
                                                 batches, whole)
        except Exception as e:  # a cache: the values are worked out again next time
            self._derived[name] = 0
            log.warn("cannot save {name} values in {folder}: {error}", name=name, folder=self._dir, error=e)

    def remember_header(self, uid: int, header: bytes) -> None:
        if len(header) > HEADER_CACHE_BYTES:
            return
        if len(self.header_cache) >= HEADER_CACHE_LIMIT:
            self.header_cache.clear()
        self.header_cache[uid] = header

    def flags(self, msg: Message) -> list[str]:
        return self.keywords.flags_of(msg.letters)

    def vanished_since(self, modseq: int) -> list[tuple[int, int]]:
        """UID ranges expunged after ``modseq`` (RFC 7162 §3.2.6), ascending.

        Exact while those expunges are remembered; for an older ``modseq``, every UID
        below UIDNEXT that is not here, as §3.2.6 asks of a server that has forgotten.
        """
        exact = self.vanished.since(modseq)
        if exact is not None:
            return uid_ranges(exact)
        out = []
        last = 0
        for m in self.messages:
            if m.uid > last + 1:
                out.append((last + 1, m.uid - 1))
            last = m.uid
        if self.uidnext - 1 > last:
            out.append((last + 1, self.uidnext - 1))
        return out

    def unseen_count(self) -> int:
        return sum(1 for m in self.messages if "S" not in m.letters)

    def first_unseen(self) -> int:
        for i, m in enumerate(self.messages, 1):
            if "S" not in m.letters:
                return i
        return 0

    # -- changing -----------------------------------------------------------------------------

    async def letters_of(self, flags: list[str]) -> str:
        """Flags -> info letters; keywords new to this folder are added to its table on ``io``.

        Raises TooManyKeywords when the table (26 letters) is full.
        """
        if self.keywords.missing(flags):
            await self._owner.run(self._add_keywords(flags))
        return self.keywords.letters_of(flags)

    async def _add_keywords(self, flags: list[str]) -> None:
        # the table as it is on disk (another process may have added to it), then what is missing
        self.keywords.apply(await self._disk(self.keywords.read))
        missing = self.keywords.missing(flags)  # again: an earlier change may have added them
        if not missing:
            return
        names = self.keywords.names + missing
        if len(names) > MAX_KEYWORDS:
            raise TooManyKeywords(missing[0])
        self.keywords.apply(await self._disk(self.keywords.write, names))

    def claim_recent(self) -> set[int]:
        """Take every unclaimed recent message for the calling session (RFC 3501 §2.3.2).

        The claim (the highest claimed UID) is appended to the index log in the
        background, so it survives restarts; files stay where they are.
        """
        claimed, self.unclaimed = self.unclaimed, set()
        if claimed:
            self.last_claimed = max(self.last_claimed, max(claimed))
            self._owner.in_background(self._record_claim())
        return claimed

    async def _record_claim(self) -> None:
        if not self.gone:
            await self._disk(self._log.append, [f"r {self.last_claimed}"], False)

    async def set_letters(self, changes: list[tuple[Message, LetterChange]]) -> list[Message]:
        """Rename files to carry new flag letters (one io trip); the messages that changed.

        A change is the new letters, or a function from the message's letters to its new
        ones, applied under the folder's owner: two sessions adding different flags at
        once both keep theirs (``+FLAGS``/``-FLAGS`` must not be computed before).
        """
        return (await self.store_letters(changes))[0]

    async def store_letters(self, changes: list[tuple[Message, LetterChange]], unchanged_since: int | None = None
                            ) -> tuple[list[Message], list[Message]]:
        """:meth:`set_letters` with RFC 7162's test: a message whose mod-sequence is above
        ``unchanged_since`` is left alone. Returns (changed, refused by the test), where
        changed also has messages whose file only moved from new/ to cur/ (same flags,
        same mod-sequence). The test and the change are one step under the owner.
        """
        return await self._owner.run(self._set_letters(changes, unchanged_since))

    async def _set_letters(self, changes: list[tuple[Message, LetterChange]], unchanged_since: int | None
                           ) -> tuple[list[Message], list[Message]]:
        plan = []
        refused = []
        for msg, change in changes:
            if msg.uid not in self.by_uid:
                continue
            if unchanged_since is not None and msg.modseq > unchanged_since:
                refused.append(msg)
                continue
            letters = shared_letters("".join(sorted(set(change if isinstance(change, str) else change(msg.letters)))))
            if letters == msg.letters and msg.subdir == "cur":
                continue
            plan.append((msg, letters, self.file_path(msg), f"{self._dir}/cur/{msg.base}:2,{letters}"))
        if not plan:
            return [], refused
        for _, _, src, dst in plan:
            self._expect(src)
            self._expect(dst)
        modseq = self.highestmodseq + 1
        done, stamp, ceiling = await self._disk(
            self._rename_and_log, [(src, dst) for _, _, src, dst in plan], modseq,
            [(m.uid, letters) if letters != m.letters else None for m, letters, _, _ in plan])
        changed = []
        bumped = False
        for (msg, letters, _, _), ok in zip(plan, done, strict=True):
            if ok:
                if letters != msg.letters:
                    msg.modseq = modseq
                    bumped = True
                msg.subdir, msg.letters, msg.name = "cur", letters, ""
                changed.append(msg)
        if changed:
            self.version += 1
        self._moved_on(modseq if bumped else 0, ceiling)
        self._restamp(stamp)
        if len(changed) < len(plan):  # renamed or removed by someone else: look again
            await self._refresh(force=True)
        return changed, refused

    def _rename_and_log(self, moves: list[tuple[str, str]], modseq: int, flags: list[tuple[int, str] | None]
                        ) -> tuple[list[bool], tuple[int, int], int]:
        """Rename files for new flags, then record the flag changes that were made (io thread).

        ``flags``: for each move, (UID, new letters), or None where the flags stay as they are.
        """
        done, stamp = rename_all(moves, self._dir)
        groups: dict[str, list[int]] = {}
        for note, ok in zip(flags, done, strict=True):
            if ok and note is not None:
                groups.setdefault(note[1], []).append(note[0])
        records = [f"m {modseq} {letters_token(new)} {uid_set(sorted(uids))}" for new, uids in groups.items()]
        ceiling = self._ceiling_record(modseq, records) if records else 0
        # Durable before any client sees the new mod-sequence: were the line and the rename both
        # lost, the message would come back with the old flags under a mod-sequence older than one
        # a client was told. With the line kept, a lost rename is found at load (other letters).
        self._log.append(records, durable=True)
        return done, stamp, ceiling

    def _restamp(self, stamp: tuple[int, int]) -> None:
        """After our own change: the new stamp, so it is not mistaken for someone else's."""
        self._stamp = stamp
        self._stamp_taken = time.time_ns()

    def _reserve(self, count: int) -> int:
        """The first of ``count`` new UIDs; a change that fails after this leaves a gap, never a reuse."""
        first = self.uidnext
        self.uidnext += count
        return first

    async def append(self, tmp: Path, base: str, letters: str, size: int, date: int) -> Message:
        """Publish a file already written and fsynced in ``tmp/`` (by :func:`write_tmp`) under a new UID."""
        return (await self.append_all([(tmp, base, letters, size, date)]))[0]

    async def append_all(self, files: list[tuple[Path, str, str, int, int]]) -> list[Message]:
        """Publish files written like :meth:`append`'s, (tmp, base, letters, size, date) each,
        under consecutive new UIDs: all of them, or none (IMAP MULTIAPPEND, RFC 3502)."""
        return await self._owner.run(self._append(files))

    async def _append(self, files: list[tuple[Path, str, str, int, int]]) -> list[Message]:
        if self._stale:  # another writer of this process said so: their mail gets the lower UIDs
            await self._refresh()
        self._check_gone()
        first = self._reserve(len(files))
        modseq = self.highestmodseq + 1
        msgs, moves, records = [], [], []
        for uid, (tmp, base, letters, size, date) in enumerate(files, first):
            letters = shared_letters("".join(sorted(set(letters))))
            moves.append((str(tmp), f"{base}:2,{letters}"))
            records.append(f"a {uid} {size} {date} {modseq} {letters_token(letters)} {base}")
            msgs.append(Message(uid, base, "cur", letters, size, date, "", modseq))
        stamp, ceiling = await self._disk(self._publish, moves, records, modseq)  # renames, one fsync, one log append
        self._placed(msgs, stamp, modseq, ceiling)
        await self._compact_if_due()
        return msgs

    def _publish(self, moves: list[tuple[str, str]], records: list[str], modseq: int) -> tuple[tuple[int, int], int]:
        """Rename files from tmp/ into cur/, make it durable, then log their UIDs (io thread)."""
        self._still_ours()
        ceiling = self._ceiling_record(modseq, records)
        placed: list[str] = []
        try:
            for src, name in moves:
                self._expect(f"{self._dir}/cur/{name}")
                os.rename(src, f"{self._dir}/cur/{name}")
                placed.append(f"{self._dir}/cur/{name}")
            fsync_directory(f"{self._dir}/cur")
            self._log.append(records, durable=True)
        except OSError:
            for path in placed:  # the client is told NO: the message must not turn up later
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        return self._dir_stamp(), ceiling

    def _placed(self, msgs: list[Message], stamp: tuple[int, int], modseq: int, ceiling: int) -> None:
        if msgs:
            self._add_all(msgs, 0)
            self.version += 1
            self._moved_on(modseq, ceiling)
        else:
            self._moved_on(0, ceiling)
        self._restamp(stamp)

    async def add_links(self, items: list[tuple[str, int, str, int]], *, move: bool) -> list[Message | None]:
        """Hard-link (COPY) or rename (MOVE) files from another folder into this one.

        ``items`` are (path, size, letters, internal date); the answer has the
        new message for each, or None where the source had vanished. One
        directory fsync and one log append cover the lot.
        """
        return await self._owner.run(self._add_links(items, move))

    async def _add_links(self, items: list[tuple[str, int, str, int]], move: bool) -> list[Message | None]:
        if self._stale:  # another writer of this process said so: their mail gets the lower UIDs
            await self._refresh()
        self._check_gone()
        first = self._reserve(len(items))
        modseq = self.highestmodseq + 1
        plan, placed_ok, stamp, ceiling = await self._disk(self._link_all, items, first, move, modseq)
        out: list[Message | None] = []
        for i, ((_, base, name, date, _), ok) in enumerate(zip(plan, placed_ok, strict=True)):
            size, letters = items[i][1], shared_letters(name.rsplit(",", 1)[1])
            out.append(Message(first + i, base, "cur", letters, size, date, "", modseq) if ok else None)
        self._placed([m for m in out if m is not None], stamp, modseq, ceiling)
        await self._compact_if_due()
        return out

    def _link_all(self, items: list[tuple[str, int, str, int]], first: int, move: bool, modseq: int
                  ) -> tuple[list[tuple[str, str, str, int, str]], list[bool], tuple[int, int], int]:
        """Name, link (or rename) and log each item (io thread): the names are made here too,
        so a COPY of many messages costs the reactor nothing per message but its record."""
        self._still_ours()
        plan = []
        for i, (source, size, letters, date) in enumerate(items):
            base = unique_name(self.hostname, size)
            letters = "".join(sorted(set(letters)))
            plan.append((source, base, f"{base}:2,{letters}", date,
                         f"a {first + i} {size} {date} {modseq} {letters_token(letters)} {base}"))
        done = []
        records = []
        made: list[tuple[str, str]] = []  # (source it came from, file placed in cur/)
        for source, base, name, date, record in plan:
            placed = False
            for path in (source, None):  # the source as named, then as renamed meanwhile (a flag change)
                path = path or find_again(source)
                if path is None:
                    break
                try:
                    self._expect(f"{self._dir}/cur/{name}")
                    if move:  # one atomic rename: the message is always in exactly one folder
                        self._expect(path)
                        os.rename(path, f"{self._dir}/cur/{name}")
                    else:
                        tmp = f"{self._dir}/tmp/{base}"
                        link_or_copy(path, tmp, date)
                        os.rename(tmp, f"{self._dir}/cur/{name}")
                except FileNotFoundError:
                    if not os.path.isdir(f"{self._dir}/cur") or not os.path.isdir(f"{self._dir}/tmp"):
                        raise  # our own folder went away, not the source
                    continue
                placed = True
                break
            done.append(placed)  # False: the source was expunged meanwhile
            if placed:
                records.append(record)
                made.append((path or source, f"{self._dir}/cur/{name}"))
        ceiling = 0
        if records:
            ceiling = self._ceiling_record(modseq, records)
            try:
                fsync_directory(f"{self._dir}/cur")
                self._log.append(records, durable=True)
            except OSError:  # the client is told NO: undo, so nothing turns up later twice
                for path, dst in made:
                    with contextlib.suppress(OSError):
                        os.rename(dst, path) if move else os.unlink(dst)
                raise
        return plan, done, self._dir_stamp(), ceiling

    async def expunge(self, uids: Iterable[int]) -> list[int]:
        """Remove messages; returns the UIDs actually removed."""
        return await self._owner.run(self._expunge(sorted(set(uids))))

    async def _expunge(self, uids: list[int]) -> list[int]:
        msgs = [m for u in uids if (m := self.by_uid.get(u)) is not None]
        if not msgs:
            return []
        modseq = self.highestmodseq + 1
        records = [f"x {modseq} {uid_set(m.uid for m in msgs)}"]
        stamp, ceiling = await self._disk(self._unlink_all, [self.file_path(m) for m in msgs], records, modseq)
        self._forget(msgs)
        self.vanished.add(modseq, [m.uid for m in msgs])
        self._moved_on(modseq, ceiling)
        self.version += 1
        self._restamp(stamp)
        await self._compact_if_due()
        return [m.uid for m in msgs]

    def _unlink_all(self, paths: list[str], records: list[str], modseq: int) -> tuple[tuple[int, int], int]:
        for path in paths:
            try:
                self._expect(path)
                os.unlink(path)
            except FileNotFoundError:
                moved = find_again(path)  # renamed meanwhile by another program: remove it there
                if moved is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(moved)
        ceiling = self._ceiling_record(modseq, records)
        # Durable before VANISHED is told: a file whose unlink a crash undid then comes back as a
        # new message (the index no longer names it), never under the UID the client saw go.
        self._log.append(records, durable=True)
        return self._dir_stamp(), ceiling

    async def detach(self, *msgs: Message) -> None:
        """Forget messages whose files were moved elsewhere (MOVE)."""
        await self._owner.run(self._detach(list(msgs)))

    async def _detach(self, msgs: list[Message]) -> None:
        present = [m for m in msgs if m.uid in self.by_uid]
        if not present or self.gone:
            return
        modseq = self.highestmodseq + 1
        uids = sorted(m.uid for m in present)
        records = [f"x {modseq} {uid_set(uids)}"]
        ceiling = self._ceiling_record(modseq, records)
        try:
            # The files are in their new folder already (fsynced there): a lost line here only
            # means the next load finds them gone and records that again.
            await self._disk(self._log.append, records, bool(ceiling))
        finally:  # told as expunged either way; if the line failed, the next change shares modseq
            self._forget(present)
            self.vanished.add(modseq, uids)
            self.version += 1
        self._moved_on(modseq, ceiling)


_LETTERS: dict[str, str] = {}  # one string per set of info letters, shared by every message
_LETTERS_LIMIT = 4096


_SUFFIXES: dict[str, tuple[str, bool]] = {}  # ":2,SF" -> ("FS", False): letters, and usual form?


def _in_cur(base: str, suffix: str) -> tuple[str, str]:
    """Sorted info letters of a file in cur/, and its name where it is not ``base:2,letters``."""
    known = _SUFFIXES.get(suffix)
    if known is None:  # the Maildir rule (flags.split_name), worked out once per suffix
        letters = shared_letters("".join(sorted(split_name("m" + suffix)[1])))
        known = (letters, suffix == ":2," + letters)
        if len(_SUFFIXES) < _LETTERS_LIMIT:
            _SUFFIXES[suffix] = known
    return known[0], ("" if known[1] else base + suffix)


def _suffix_of(m: Message) -> str:
    """What follows the base name in ``m``'s file name."""
    if m.name:
        return m.name[len(m.base):]
    return "" if m.subdir == "new" else ":2," + m.letters


def shared_letters(letters: str) -> str:
    """One string object for each set of letters (a 100,000-message folder has a few sets)."""
    if len(letters) < 2 or len(_LETTERS) >= _LETTERS_LIMIT:
        return letters  # single characters are shared by Python already
    return _LETTERS.setdefault(letters, letters)


def find_again(path: str) -> str | None:
    """Where a message file is now if it was renamed (new/ to cur/, other flags) since ``path``
    was taken; None if it is gone. Blocking: one listing, only after a rename was missed."""
    folder, name = os.path.split(path)
    folder = os.path.dirname(folder)
    base = name.split(":", 1)[0]
    for sub in ("cur", "new"):
        try:
            names = os.listdir(f"{folder}/{sub}")
        except FileNotFoundError:
            continue
        for candidate in names:
            if candidate == base or candidate.startswith(base + ":"):
                return f"{folder}/{sub}/{candidate}"
    return None
