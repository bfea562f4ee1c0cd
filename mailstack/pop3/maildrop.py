"""The POP3 maildrop: one user's INBOX through the mail store, its unique-ids, and the locks on it.

RFC 1939 §4 (the maildrop is locked from a successful login until the session
ends), §5 (messages numbered from 1, sizes in octets), §7 UIDL (a unique-id of
1 to 70 characters in 0x21-0x7E, the same for a message in every session).

POP3 reads and changes the INBOX Maildir only through the process's
:class:`~mailstack.maildir.folders.MailStore`, the one owner of every Maildir
that IMAP uses too; it has no scanner of its own:

- At login the INBOX :class:`~mailstack.maildir.mailbox.Mailbox` is opened
  (loaded or refreshed on the io pool) and its messages are the snapshot,
  which never changes during the session; mail delivered meanwhile shows in
  the next session. Messages are in UID order, which is delivery order.
  Opening does not claim \\Recent, rename files or set flags, so a mailbox
  read over POP3 still looks new and unread to IMAP.
- Sizes are the messages' recorded octet counts (the Maildir++ ``,S=`` field
  of the name, else the file size), so no message body is read for STAT or
  LIST. mailstack stores messages with CRLF line ends, so that is the size as
  sent over POP3 (before byte-stuffing, RFC 1939 §11).
- The unique-id is the file's unique name: the base name (the part before
  ``:2,``) without Maildir++ attribute fields such as ``,S=<size>``. It does
  not change when an IMAP session moves the file from ``new/`` to ``cur/``
  or changes its flags. A unique name longer than 70 characters or holding
  characters outside 0x21-0x7E (a long host name) gets ``H`` plus the
  SHA-1 hex of it instead, which is just as stable.
- Deletion (the UPDATE state) is an expunge through the mailbox, so IMAP
  sessions on the same folder see it at once and the UID index stays right;
  a message that is already gone counts as removed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from twisted.logger import Logger

from mailstack.maildir.folders import IO, MailStore
from mailstack.maildir.mailbox import Mailbox, MailboxGone, Message, inline_io
from mailstack.notify import MailboxEvents

log = Logger()

_UIDL_OK = re.compile(r"^[\x21-\x7e]{1,70}$")


def base_name(name: str) -> str:
    return name.split(":", 1)[0]


def unique_id(base: str) -> str:
    """The RFC 1939 unique-id for a Maildir base name (``,S=`` and other attributes dropped)."""
    unique = base.split(",", 1)[0] or base
    if _UIDL_OK.match(unique):
        return unique
    return "H" + hashlib.sha1(unique.encode("utf-8", "surrogateescape")).hexdigest()


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
    """What a POP3 session needs from storage: locks, the INBOX through ``store``, removal, events.

    ``io`` runs file-system work on the io pool (``inline_io`` in tests), as
    for IMAP sessions; pass 110 and 995 one ``Maildrops`` and the mail store
    IMAP uses, so they share locks and see each other's changes.
    """

    def __init__(self, store: MailStore, *, io: IO = inline_io, events: MailboxEvents | None = None) -> None:
        self.store = store
        self.io = io
        self.events = events
        self.locks = MaildropLocks()

    async def open(self, address: str) -> Mailbox:
        """The user's INBOX, set up if needed (first login, or a Maildir removed meanwhile) and refreshed.

        Raises OSError, FolderError or InvalidAddress when it cannot be opened.
        """
        await self.store.setup_user(address, self.io)
        return await self.store.open(address, "INBOX", self.io)

    async def remove(self, address: str, box: Mailbox, messages: Sequence[Message]) -> list[Message]:
        """Expunge ``messages`` from ``box``; returns those that could not be removed.

        The folder is looked at first, so files another process renamed are
        removed where they are now. If removing the lot fails, each message is
        tried alone, so one bad file keeps only itself.
        """
        await box.refresh()
        failed: list[Message] = []
        try:
            await box.expunge([m.uid for m in messages])
        except MailboxGone:
            pass  # the whole folder went, and these messages with it
        except OSError:
            failed = [m for m in messages if not await self._expunge_one(box, m)]
        if len(failed) < len(messages):
            self.removed(address)
        return failed

    async def _expunge_one(self, box: Mailbox, message: Message) -> bool:
        try:
            await box.expunge([message.uid])
        except MailboxGone:
            return True
        except OSError as e:
            log.warn("pop3: cannot remove {name} of {path}: {error}", name=message.filename(), path=box.path,
                     error=e)
            return False
        return True

    def removed(self, address: str) -> None:
        """Messages left ``address``'s INBOX: the quota usage is measured again, watchers (IDLE) told."""
        self.store.usage_changed(address)
        if self.events is None:
            return
        self.store.own_change = True  # the shared Mailbox knows already: nobody needs to look at the disk
        try:
            self.events.publish(address)
        finally:
            self.store.own_change = False

