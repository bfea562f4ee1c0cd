"""The POP3 maildrop: a snapshot of one user's INBOX Maildir, and the locks on it.

RFC 1939 §4 (the maildrop is locked from a successful login until the session
ends), §5 (messages numbered from 1, sizes in octets), §7 UIDL (a unique-id of
1 to 70 characters in 0x21-0x7E, the same for a message in every session).

What mailstack does with a Maildir (https://cr.yp.to/proto/maildir.html):

- The snapshot is taken at login from ``new/`` and ``cur/`` and never changes
  during the session; mail delivered meanwhile shows in the next session.
  Messages are ordered by delivery time (the ``<seconds>.M<microseconds>``
  start of the file name), then by name, so numbering is stable.
- The unique-id is the file's unique name: the base name (the part before
  ``:2,``) without Maildir++ attribute fields such as ``,S=<size>``. It does
  not change when an IMAP session moves the file from ``new/`` to ``cur/``
  or changes its flags. A unique name longer than 70 characters or holding
  characters outside 0x21-0x7E (a long host name) gets ``H`` plus the
  SHA-1 hex of it instead, which is just as stable.
- POP3 never renames files: it does not move ``new/`` to ``cur/`` nor set
  flags, so a mailbox read over POP3 still looks unread to IMAP.
- Sizes come from the Maildir++ ``,S=<octets>`` field of the name, else from
  stat; no message body is read for STAT or LIST. mailstack stores messages
  with CRLF line ends, so the file size is the size as sent over POP3 (before
  byte-stuffing, RFC 1939 §11). Files written by other tools with bare LF
  line ends are sent with CRLF, so their LIST size is a few octets short.
- Deletion (the UPDATE state) unlinks each marked file, looking it up again by
  base name if it moved to ``cur/`` meanwhile; a file that is already gone
  counts as removed. The directories are fsynced afterwards.

The functions here block; the session runs them on the I/O thread pool.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from mailstack.maildir.layout import fsync_directory
from mailstack.maildir.names import size_from_name
from mailstack.notify import MailboxEvents

T = TypeVar("T")

_ORDER = re.compile(r"^(\d+)\.(?:M(\d+))?")
_UIDL_OK = re.compile(r"^[\x21-\x7e]{1,70}$")
_NO_TIME = 1 << 62
SUBDIRS = ("new", "cur")


@dataclass(frozen=True, slots=True)
class Message:
    """One message of the snapshot: where it was, its unique-id and POP3 size."""

    subdir: str  # "new" or "cur"
    name: str  # file name at scan time
    base: str  # name without the ":2,..." info
    uid: str
    size: int


def base_name(name: str) -> str:
    return name.split(":", 1)[0]


def unique_id(base: str) -> str:
    """The RFC 1939 unique-id for a Maildir base name (``,S=`` and other attributes dropped)."""
    unique = base.split(",", 1)[0] or base
    if _UIDL_OK.match(unique):
        return unique
    return "H" + hashlib.sha1(unique.encode("utf-8", "surrogateescape")).hexdigest()


def _order_key(base: str) -> tuple[int, int, str]:
    m = _ORDER.match(base)
    if m is None:
        return (_NO_TIME, 0, base)
    return (int(m.group(1)), int(m.group(2) or 0), base)


def scan(maildir: Path) -> list[Message]:
    """The messages of ``maildir`` (new/ and cur/) in delivery order; blocks.

    A missing Maildir is an empty maildrop (nothing was delivered yet).
    """
    found: dict[str, Message] = {}
    for subdir in SUBDIRS:
        directory = maildir / subdir
        try:
            entries = os.scandir(directory)
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                base = base_name(name)
                if base in found:  # caught mid-rename from new/ to cur/
                    continue
                size = size_from_name(name)
                if size is None:
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    if not _is_regular(st.st_mode):
                        continue
                    size = st.st_size
                found[base] = Message(subdir, name, base, unique_id(base), size)
    return sorted(found.values(), key=lambda m: _order_key(m.base))


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


def current_paths(maildir: Path) -> dict[str, Path]:
    """Base name -> present path of every message in new/ and cur/ (one listing of each)."""
    found: dict[str, Path] = {}
    for subdir in SUBDIRS:
        try:
            names = os.listdir(maildir / subdir)
        except FileNotFoundError:
            continue
        for name in names:
            if not name.startswith("."):
                found.setdefault(base_name(name), maildir / subdir / name)
    return found


def locate(maildir: Path, message: Message) -> Path | None:
    """Where ``message`` is now: its scanned path, else found again by base name."""
    path = maildir / message.subdir / message.name
    if path.exists():
        return path
    return current_paths(maildir).get(message.base)


def remove(maildir: Path, messages: Iterable[Message]) -> list[Message]:
    """Unlink every message; return those that could not be removed. Blocks.

    A message that moved since the snapshot is found again by base name (the
    directories are listed once, at the first miss); one that is gone counts
    as removed.
    """
    failed: list[Message] = []
    touched: set[str] = set()
    moved: dict[str, Path] | None = None
    for message in messages:
        path = maildir / message.subdir / message.name
        try:
            os.unlink(path)
            touched.add(message.subdir)
            continue
        except FileNotFoundError:
            pass
        except OSError:
            failed.append(message)
            continue
        if moved is None:
            moved = current_paths(maildir)
        now = moved.get(message.base)
        if now is None:
            continue  # already removed elsewhere: it is gone, as asked
        try:
            os.unlink(now)
            touched.add(now.parent.name)
        except FileNotFoundError:
            pass
        except OSError:
            failed.append(message)
    for subdir in touched:
        try:
            fsync_directory(str(maildir / subdir))
        except OSError:
            pass  # the unlinks happened; durability of a removal is best effort
    return failed


class MaildropLocks:
    """In-process exclusive locks, one per mailbox address (RFC 1939 §8).

    Other processes (another mailstack host on shared storage) are not
    excluded; a concurrent session there sees files vanish and gets
    ``-ERR`` for them.
    """

    def __init__(self) -> None:
        self._held: set[str] = set()

    def acquire(self, mailbox: str) -> bool:
        if mailbox in self._held:
            return False
        self._held.add(mailbox)
        return True

    def release(self, mailbox: str) -> None:
        self._held.discard(mailbox)

    def held(self, mailbox: str) -> bool:
        return mailbox in self._held


class Maildrops:
    """What a POP3 session needs from storage: locks, snapshots, removal, events.

    ``maildir_path`` maps an address to its INBOX Maildir (from
    ``MaildirDelivery.maildir_path``). Scans and removals run on ``pool``
    through ``reactor`` so a 10,000-message maildrop does not stall other
    sessions; without a pool (tests) they run inline.
    """

    def __init__(self, maildir_path: Callable[[str], Path], *, reactor: Any = None,
                 pool: ThreadPool | None = None, events: MailboxEvents | None = None) -> None:
        self.maildir_path = maildir_path
        self.reactor = reactor
        self.pool = pool
        self.events = events
        self.locks = MaildropLocks()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.pool is None or self.reactor is None:
            return fn(*args)
        result: T = await deferToThreadPool(self.reactor, self.pool, fn, *args)
        return result

    async def snapshot(self, address: str) -> list[Message]:
        return await self._run(scan, self.maildir_path(address))

    async def remove(self, address: str, messages: list[Message]) -> list[Message]:
        return await self._run(remove, self.maildir_path(address), messages)

    def locate(self, address: str, message: Message) -> Path | None:
        return locate(self.maildir_path(address), message)

    def current_paths(self, address: str) -> dict[str, Path]:
        return current_paths(self.maildir_path(address))

    def published(self, address: str) -> None:
        """Tell watchers (IMAP IDLE) that messages were removed from ``address``."""
        if self.events is not None:
            self.events.publish(address)
