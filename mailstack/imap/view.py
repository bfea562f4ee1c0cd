"""What one session believes about its selected mailbox, and bringing it up to date.

RFC 3501 §7.3.1 (EXISTS), §7.3.2 (RECENT), §7.4.1 (EXPUNGE), §7.4.2 (FETCH
FLAGS for flag changes by others), §5.2 (the client must be told about size
changes). RFC 7162: once CONDSTORE is enabled, such FETCHes carry UID and MODSEQ
(§3.2.4); once QRESYNC is, expunges are told as VANISHED (§3.2.10), and while
expunges wait to be told, HIGHESTMODSEQ stays below theirs (§3.2). Message sequence numbers belong to the session: they change only
when this session announces an EXPUNGE, never while answering FETCH, STORE
or SEARCH (§7.4.1), so a message expunged by someone else keeps its number
until the next command that may announce it.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field

from mailstack.imap.context import UpdateContext
from mailstack.imap.parse import SeqSet, resolve_set
from mailstack.maildir.index import uid_set
from mailstack.maildir.mailbox import Mailbox, Message


class State(enum.Enum):
    """RFC 3501 §3: the connection states."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


class Bad(Exception):
    """A malformed or misplaced command: tagged BAD, the session goes on."""


class No(Exception):
    """The command was understood but failed: tagged NO with an optional response code."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.code = code


@dataclass
class View:
    name: str
    box: Mailbox
    readonly: bool
    uids: list[int] = field(default_factory=list)
    known: dict[int, int] = field(default_factory=dict)  # uid -> the mod-sequence of the flags the client was told
    recent: set[int] = field(default_factory=set)
    version: int = -1
    keywords: int = 0  # how many keywords the client was told about in FLAGS
    told_gone: bool = False  # the client was warned that the folder was removed
    saved: frozenset[int] = frozenset()  # UIDs of the last SEARCH RETURN (SAVE): "$" (RFC 5182)
    synced_modseq: int = 1  # the mailbox's HIGHESTMODSEQ when the client last had every change
    contexts: dict[str, UpdateContext] = field(default_factory=dict)  # RFC 5267 UPDATE results, by tag

    def select_saved(self) -> list[tuple[int, int]]:
        """(msn, uid) of the saved search result's messages still here (expunged ones drop out)."""
        return [(i + 1, u) for i, u in enumerate(self.uids) if u in self.saved]

    def msn_of(self, uid: int) -> int:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else 0

    def flags(self, msg: Message) -> list[str]:
        flags = self.box.flags(msg)
        if msg.uid in self.recent:
            flags.append("\\Recent")
        return flags

    def select_msns(self, seq: SeqSet) -> list[tuple[int, int]]:
        """(msn, uid) for a message-sequence set; raises No-worthy ValueError when out of range."""
        largest = len(self.uids)
        spans = []
        for lo, hi in resolve_set(seq, largest):
            if lo < 1 or hi > largest:
                raise ValueError("Invalid message sequence number")
            spans.append((lo - 1, hi))
        return self._pairs(spans)

    def select_uids(self, seq: SeqSet) -> list[tuple[int, int]]:
        """(msn, uid) for a UID set; UIDs not in the mailbox are skipped (§6.4.8)."""
        if not self.uids:
            return []
        uids = self.uids
        spans = [(bisect.bisect_left(uids, lo), bisect.bisect_right(uids, hi))
                 for lo, hi in resolve_set(seq, uids[-1])]
        return self._pairs(spans)

    def _pairs(self, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """(msn, uid) for index spans [start, end) of ``uids``: in order, each message once."""
        spans = sorted(s for s in spans if s[0] < s[1])
        out: list[tuple[int, int]] = []
        done = 0  # every index below this is in ``out``
        for start, end in spans:
            start = max(start, done)
            if start < end:
                out += zip(range(start + 1, end + 1), self.uids[start:end], strict=True)
                done = end
        return out


SYSTEM_FLAGS = "\\Answered \\Flagged \\Deleted \\Seen \\Draft"


def flag_lines(keywords: list[str], readonly: bool) -> list[bytes]:
    """The FLAGS response and the PERMANENTFLAGS code (RFC 3501 §6.3.1, §7.2.6)."""
    flags = f"{SYSTEM_FLAGS} {' '.join(keywords)}".strip()
    permanent = "" if readonly else (flags + (" \\*" if len(keywords) < 26 else ""))
    return [f"* FLAGS ({flags})\r\n".encode(), f"* OK [PERMANENTFLAGS ({permanent})] Flags permitted\r\n".encode()]


class ViewMixin:
    """The selected-mailbox part of a session (mixed into IMAPSession)."""

    view: View | None
    send: object
    condstore: bool  # RFC 7162: a CONDSTORE enabling command was given in this session
    qresync: bool  # ENABLE QRESYNC was
    rev2: bool  # ENABLE IMAP4rev2 was (RFC 9051): UTF-8 names, ESEARCH, no \\Recent

    def __init__(self) -> None:
        self.view = None
        self.condstore = False
        self.qresync = False
        self.rev2 = False

    def deselect(self) -> None:
        self.view = None
        if getattr(self, "state", None) is State.SELECTED:
            self.state = State.AUTHENTICATED  # type: ignore[attr-defined]

    def enable_condstore(self) -> None:
        """A CONDSTORE enabling command ran (RFC 7162 §3.1): from now on FETCH responses carry
        MODSEQ, and the first such command with a mailbox selected says its HIGHESTMODSEQ."""
        if self.condstore:
            return
        self.condstore = True
        if self.view is not None:
            self.send(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % self.view.synced_modseq)  # type: ignore[operator]

    def flags_announcement(self) -> list[bytes]:
        """``* FLAGS`` and ``PERMANENTFLAGS`` again when keywords were added (RFC 3501 §7.2.6)."""
        view = self.view
        if view is None or len(view.box.keywords.names) == view.keywords:
            return []
        view.keywords = len(view.box.keywords.names)
        return flag_lines(view.box.keywords.names, view.readonly)

    def sync(self, *, allow_expunge: bool) -> None:
        """Send EXPUNGE/EXISTS/RECENT/FETCH FLAGS for every change since the client last heard."""
        view = self.view
        if view is None:
            return
        box = view.box  # brought up to date before the command ran (IMAPSession.handle)
        out: list[bytes] = self.flags_announcement()
        if box.version == view.version:
            if out:
                self.send(b"".join(out))  # type: ignore[operator]
            return
        by_uid = box.by_uid
        pending_gone = False
        if len(view.uids) != len(by_uid) or any(u not in by_uid for u in view.uids):
            if allow_expunge:
                gone = [i for i, u in enumerate(view.uids) if u not in by_uid]
                if gone and self.qresync:  # RFC 7162 §3.2.10: UIDs, no renumbering one by one
                    out.append(f"* VANISHED {uid_set([view.uids[i] for i in gone])}\r\n".encode())
                for i in reversed(gone):  # descending: earlier numbers stay valid (§7.4.1)
                    if not self.qresync:
                        out.append(b"* %d EXPUNGE\r\n" % (i + 1))
                    uid = view.uids[i]
                    view.known.pop(uid, None)
                    view.recent.discard(uid)
                if gone:
                    view.uids = [u for u in view.uids if u in by_uid]
            else:
                pending_gone = any(u not in by_uid for u in view.uids)
        modseq = self.condstore
        for i, uid in enumerate(view.uids):
            msg = by_uid.get(uid)
            if msg is not None and msg.modseq != view.known.get(uid):
                view.known[uid] = msg.modseq
                flags = " ".join(view.flags(msg))
                tail = f" MODSEQ ({msg.modseq})" if modseq else ""
                out.append(f"* {i + 1} FETCH (UID {uid} FLAGS ({flags}){tail})\r\n".encode())
        last = view.uids[-1] if view.uids else 0
        start = bisect.bisect_right(box.messages, last, key=lambda m: m.uid)
        new = box.messages[start:]
        if (new or box.unclaimed) and not self.rev2:  # RFC 9051 §2.3.2: \\Recent is gone from rev2
            if view.readonly:
                view.recent |= {m.uid for m in new if m.uid in box.unclaimed}
            else:
                view.recent |= box.claim_recent()
        if new:
            for m in new:
                view.uids.append(m.uid)
                view.known[m.uid] = m.modseq
            out.append(b"* %d EXISTS\r\n" % len(view.uids))
            if not self.rev2:
                out.append(b"* %d RECENT\r\n" % len(view.recent))
        if pending_gone and self.condstore:  # RFC 7162 §3.2: not past the expunges not yet told
            out.append(b"* OK [HIGHESTMODSEQ %d] Expunges pending\r\n" % view.synced_modseq)
        if not pending_gone:
            view.version = box.version
            view.synced_modseq = box.highestmodseq
            if box.gone and not view.told_gone:  # RFC 3501 §7.1.2: an untagged NO is a warning
                view.told_gone = True
                out.append(b"* NO Mailbox was removed on the server, select it again\r\n")
        if out:
            self.send(b"".join(out))  # type: ignore[operator]
