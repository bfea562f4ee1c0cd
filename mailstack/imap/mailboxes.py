"""Authenticated-state commands over mailboxes: SELECT, EXAMINE, CREATE, DELETE,
RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS, APPEND.

RFC 3501 §6.3 (with §5.1 naming, §5.1.3 modified UTF-7), RFC 3348
(\\HasChildren/\\HasNoChildren), RFC 6154 (special-use attributes on LIST, and
the SPECIAL-USE selection option), RFC 5258 (LIST-EXTENDED), RFC 5819 (LIST-STATUS),
RFC 4315 (APPENDUID), RFC 3502 (MULTIAPPEND), RFC 4469 (CATENATE, with RFC 5092
URLs into the user's own mailboxes), RFC 9208 (QUOTA: the STORAGE
resource of the user's quota), RFC 5530 (response codes). The
hierarchy delimiter is ``.`` (Maildir++); names travel in modified UTF-7 and are
stored as UTF-8.
"""

from __future__ import annotations

import contextlib
import os
import re
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from twisted.logger import Logger

from mailstack.imap.condstore import QResync, contains, sample_cutoff, select_params, vanished_earlier
from mailstack.imap.fetch import parse_section, section_bytes
from mailstack.imap.parse import (
    Atom,
    ParseError,
    String,
    Token,
    astring,
    list_mailbox,
    paren_list,
    utf7_decode,
    utf7_encode,
)
from mailstack.imap.response import astring as wire_name
from mailstack.imap.response import parse_date_time
from mailstack.imap.selected import uid_set_text
from mailstack.imap.view import SYSTEM_FLAGS, Bad, No, State, View, ViewMixin, flag_lines
from mailstack.maildir.files import write_tmp
from mailstack.maildir.flags import TooManyKeywords, canonical_flag
from mailstack.maildir.folders import DELIMITER, SPECIAL_USE, FolderError, is_inbox, normal_name

# RFC 3501 §6.3.10, RFC 8438 (SIZE: the octets of all messages), RFC 7889 (APPENDLIMIT),
# RFC 9208 (DELETED: messages marked \Deleted; DELETED-STORAGE: their size in KiB), RFC 7162
# (HIGHESTMODSEQ)
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "APPENDLIMIT", "DELETED",
                "DELETED-STORAGE", "HIGHESTMODSEQ")
QUOTA_ROOT = ""  # one quota root: the user's whole mail (RFC 9208)
MAX_APPEND_MESSAGES = 1000  # messages in one MULTIAPPEND


def encode_name(name: str, utf8: bool = False) -> bytes:
    """A mailbox name on the wire: modified UTF-7 (RFC 3501 §5.1.3), or UTF-8 after ENABLE
    IMAP4rev2 (RFC 9051 §5.1)."""
    return wire_name(name, utf8=True) if utf8 else wire_name(utf7_encode(name))


def decode_name(text: str, utf8: bool = False) -> str:
    """A mailbox name as a client wrote it (the inverse of :func:`encode_name`)."""
    if not utf8:
        return utf7_decode(text)
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text):
        raise ParseError("control character in mailbox name")
    return text


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """LIST wildcards (RFC 3501 §6.3.8): ``*`` anything, ``%`` anything but the delimiter."""
    out = []
    for ch in pattern:
        out.append(".*" if ch == "*" else "[^.]*" if ch == "%" else re.escape(ch))
    return re.compile("".join(out) + r"\Z", re.S)


def name_matches(regex: re.Pattern[str], pattern: str, name: str) -> bool:
    if regex.match(name):
        return True
    if name.upper().startswith("INBOX") and pattern[:5].upper() == "INBOX":
        return bool(pattern_regex("INBOX" + pattern[5:]).match("INBOX" + name[5:]))
    return False



log = Logger()

class MailboxCommands(ViewMixin):
    user: str | None
    store: Any
    state: Any
    io: Any
    events: Any
    publish_change: Any
    config: Any

    def mailbox_name(self, tok: Token) -> str:
        if isinstance(tok, String) and tok.binary:
            raise Bad("A literal8 is only for a message")
        name = decode_name(astring(tok), self.rev2)
        if "\0" in name:
            raise ParseError("NUL in mailbox name")
        return normal_name(name)

    # -- SELECT / EXAMINE (RFC 3501 §6.3.1, §6.3.2) --------------------------------------

    async def cmd_select(self, tag: str, args: list[Token]) -> Any:
        return await self._select(tag, args, readonly=False)

    async def cmd_examine(self, tag: str, args: list[Token]) -> Any:
        return await self._select(tag, args, readonly=True)

    async def _select(self, tag: str, args: list[Token], *, readonly: bool) -> Any:
        if not args:
            raise Bad("SELECT needs a mailbox name")
        name = self.mailbox_name(args[0])
        params = select_params(args[1:])  # a BAD here leaves the selected mailbox as it was
        if params.qresync is not None and not self.qresync:
            raise Bad("QRESYNC needs ENABLE QRESYNC first")
        if self.view is not None:  # RFC 7162 §3.2.11, RFC 9051 §7.1: what follows is the new mailbox's
            self.send(b"* OK [CLOSED] Previous mailbox is now closed\r\n")  # type: ignore[operator]
        self.deselect()
        if params.condstore:
            self.enable_condstore()
        box = await self.store.open(self.user, name, self.io)
        view = View(name, box, readonly)
        view.uids = [m.uid for m in box.messages]
        view.known = {m.uid: m.modseq for m in box.messages}
        view.synced_modseq = box.highestmodseq
        if self.rev2:  # RFC 9051 §2.3.2: no \\Recent, and none claimed from rev1 sessions either
            view.recent = set()
        else:
            view.recent = set(box.unclaimed) if readonly else box.claim_recent()
        view.version = box.version
        view.keywords = len(box.keywords.names)
        lines = [
            *(line.decode().rstrip("\r\n") for line in flag_lines(box.keywords.names, readonly)),
            f"* {len(view.uids)} EXISTS",
        ]
        if not self.rev2:  # RFC 3501 §6.3.1; deprecated by RFC 9051 (Appendix E, items 11 and 12)
            lines.append(f"* {len(view.recent)} RECENT")
            unseen = box.first_unseen()
            if unseen:
                lines.append(f"* OK [UNSEEN {unseen}] First unseen")
        lines += [f"* OK [UIDVALIDITY {box.uidvalidity}] UIDs valid",
                  f"* OK [UIDNEXT {box.uidnext}] Predicted next UID"]
        if self.condstore:  # RFC 7162 §3.1.2
            lines.append(f"* OK [HIGHESTMODSEQ {box.highestmodseq}] Highest")
        out = "".join(line + "\r\n" for line in lines).encode()
        if self.rev2:  # RFC 9051 §6.3.2: a LIST response with the mailbox name and its attributes
            out += await self._own_list_line(name)
        self.send(out)  # type: ignore[operator]
        resync = params.qresync
        if resync is not None and resync.uidvalidity == box.uidvalidity:  # else: as if nothing changed
            self.send(self._resync(view, resync))  # type: ignore[operator]
        self.view = view
        self.state = State.SELECTED
        verb = "EXAMINE" if readonly else "SELECT"
        log.info("imap {session_id}: {user} {verb} {mailbox} ({exists} messages)",
                 session_id=self.session_id, user=self.user, verb=verb.lower(), mailbox=name,  # type: ignore[attr-defined]
                 exists=len(view.uids))
        return self.ok(tag, verb, code="READ-ONLY" if readonly else "READ-WRITE")  # type: ignore[attr-defined]

    async def _own_list_line(self, name: str) -> bytes:
        existing = set(await self.store.folders(self.user, self.io))
        uses = await self.store.special_uses(self.user, self.io)
        attrs = " ".join(_attributes(name, existing, uses))
        return f"* LIST ({attrs}) \".\" ".encode() + encode_name(name, True) + b"\r\n"

    def _resync(self, view: View, resync: QResync) -> bytes:
        """What a SELECT (QRESYNC ...) adds (RFC 7162 §3.2.5.1): the known UIDs expunged since
        the client's mod-sequence, then UID, FLAGS and MODSEQ of the known messages changed since."""
        box = view.box
        known = resync.known if resync.known is not None else ([(1, box.uidnext - 1)] if box.uidnext > 1 else [])
        out = [vanished_earlier(box.vanished_since(resync.modseq), known,
                                sample_cutoff(resync.sample, view.uids))]
        since = resync.modseq
        everything = resync.known is None
        for msn, msg in enumerate(box.messages, 1):  # the view was made from these this very moment
            if msg.modseq > since and (everything or contains(known, msg.uid)):
                flags = " ".join(view.flags(msg))
                out.append(f"* {msn} FETCH (UID {msg.uid} FLAGS ({flags}) MODSEQ ({msg.modseq}))\r\n".encode())
        return b"".join(out)

    # -- CREATE / DELETE / RENAME (RFC 3501 §6.3.3-6.3.5) -------------------------------

    async def cmd_create(self, tag: str, args: list[Token]) -> Any:
        """CREATE, with RFC 6154 §3's ``(USE (\\Drafts ...))`` to give the new folder uses."""
        uses: tuple[str, ...] = ()
        if len(args) == 2:
            uses = _create_uses(args[1])
            args = args[:1]
        name = self._one_name(args)
        _check_new_name(name)
        await self.store.create(self.user, name, self.io, uses)
        return self.ok(tag, "CREATE")  # type: ignore[attr-defined]

    async def cmd_delete(self, tag: str, args: list[Token]) -> Any:
        name = self._one_name(args)
        if self.view is not None and self.view.name == name:
            self.deselect()
        await self.store.delete(self.user, name, self.io)
        return self.ok(tag, "DELETE")  # type: ignore[attr-defined]

    async def cmd_rename(self, tag: str, args: list[Token]) -> Any:
        if len(args) != 2:
            raise Bad("RENAME needs two mailbox names")
        old, new = self.mailbox_name(args[0]), self.mailbox_name(args[1])
        _check_new_name(new)
        if self.view is not None and (self.view.name == old or self.view.name.startswith(old + DELIMITER)):
            if not is_inbox(old):
                self.deselect()
        await self.store.rename(self.user, old, new, self.io)
        self.publish_change(None)
        return self.ok(tag, "RENAME")  # type: ignore[attr-defined]

    def _one_name(self, args: list[Token]) -> str:
        if len(args) != 1:
            raise Bad("Expected one mailbox name")
        return self.mailbox_name(args[0])

    # -- SUBSCRIBE / UNSUBSCRIBE / LIST / LSUB (RFC 3501 §6.3.6-6.3.9) ---------------------

    async def cmd_subscribe(self, tag: str, args: list[Token]) -> Any:
        name = self._one_name(args)
        if not await self.store.exists(self.user, name, self.io):
            raise No("No such mailbox", "NONEXISTENT")
        await self.store.subscribe(self.user, name, True, self.io)
        return self.ok(tag, "SUBSCRIBE")  # type: ignore[attr-defined]

    async def cmd_unsubscribe(self, tag: str, args: list[Token]) -> Any:
        name = self._one_name(args)
        await self.store.subscribe(self.user, name, False, self.io)
        return self.ok(tag, "UNSUBSCRIBE")  # type: ignore[attr-defined]

    def _list_args(self, args: list[Token]) -> tuple[str, str]:
        if len(args) != 2:
            raise Bad("LIST needs a reference and a mailbox pattern")
        ref = decode_name(astring(args[0]) if not isinstance(args[0], Atom) else list_mailbox(args[0]), self.rev2)
        pattern = decode_name(list_mailbox(args[1]), self.rev2)
        return ref, pattern

    @staticmethod
    def _full_pattern(ref: str, pattern: str) -> str:
        """RFC 3501 §6.3.8: the reference and the pattern, joined left to right."""
        return ref + pattern

    async def cmd_list(self, tag: str, args: list[Token]) -> Any:
        """LIST, and its extended form (RFC 5258): selection options, several patterns, and
        return options, STATUS among them (RFC 5819); SPECIAL-USE selection (RFC 6154)."""
        request = _list_request(args, self.rev2)
        if request is None:  # the RFC 3501 form
            ref, pattern = self._list_args(args)
            if pattern == "":  # RFC 3501 §6.3.8: the delimiter and root of the reference
                root = ref.split(DELIMITER, 1)[0] + DELIMITER if DELIMITER in ref else ""
                self.send(b'* LIST (\\Noselect) "." ' + encode_name(root, self.rev2) + b"\r\n")  # type: ignore[operator]
                return self.ok(tag, "LIST")  # type: ignore[attr-defined]
            request = ListRequest(frozenset(), ref, [pattern], frozenset(), (), extended=False)
        existing = set(await self.store.folders(self.user, self.io))
        uses = await self.store.special_uses(self.user, self.io)
        subscribed = set(await self.store.subscriptions(self.user, self.io)) \
            if request.selection & {"SUBSCRIBED"} or request.returns & {"SUBSCRIBED"} else set()
        out = []
        for name, attrs, childinfo in _listing(request, existing, subscribed, uses):
            status = b""
            if request.status and name in existing:
                try:
                    status = await self._status_line(name, request.status)
                except (FolderError, No):  # gone meanwhile: no STATUS, and \Noselect (RFC 5819 §2)
                    attrs = ["\\Noselect", *attrs]
            line = f"* LIST ({' '.join(attrs)}) \".\" ".encode() + encode_name(name, self.rev2)
            if childinfo:
                line += b' ("CHILDINFO" ("SUBSCRIBED"))'
            out.append(line + b"\r\n" + status)
        self.send(b"".join(out))  # type: ignore[operator]
        return self.ok(tag, "LIST")  # type: ignore[attr-defined]

    async def cmd_lsub(self, tag: str, args: list[Token]) -> Any:
        ref, pattern = self._list_args(args)
        full = self._full_pattern(ref, pattern)
        regex = pattern_regex(full)
        subs = await self.store.subscriptions(self.user, self.io)
        out: dict[str, str] = {}
        for name in subs:
            if name_matches(regex, full, name):
                out.setdefault(name, "")
            elif "%" in full:  # RFC 3501 §6.3.9: a matching parent of a subscribed name
                levels = name.split(DELIMITER)
                for i in range(1, len(levels)):
                    parent = DELIMITER.join(levels[:i])
                    if name_matches(regex, full, parent) and parent not in subs:
                        out.setdefault(parent, "\\Noselect")
        lines = [f"* LSUB ({attrs}) \".\" ".encode() + encode_name(name, self.rev2) + b"\r\n"
                 for name, attrs in sorted(out.items(), key=lambda kv: (kv[0] != "INBOX", kv[0]))]
        self.send(b"".join(lines))  # type: ignore[operator]
        return self.ok(tag, "LSUB")  # type: ignore[attr-defined]

    # -- STATUS (RFC 3501 §6.3.10) ---------------------------------------------------------

    async def cmd_status(self, tag: str, args: list[Token]) -> Any:
        if len(args) != 2:
            raise Bad("STATUS needs a mailbox and a list of items")
        name = self.mailbox_name(args[0])
        self.send(await self._status_line(name, status_items(args[1])))  # type: ignore[operator]
        return self.ok(tag, "STATUS")  # type: ignore[attr-defined]

    async def _status_line(self, name: str, items: tuple[str, ...]) -> bytes:
        box = await self.store.open(self.user, name, self.io)
        values = {
            "MESSAGES": lambda: len(box.messages),
            "RECENT": lambda: len(box.unclaimed) + (len(self.view.recent) if self.view and self.view.box is box else 0),
            "UIDNEXT": lambda: box.uidnext,
            "UIDVALIDITY": lambda: box.uidvalidity,
            "UNSEEN": box.unseen_count,
            "SIZE": lambda: sum(m.size for m in box.messages),
            "APPENDLIMIT": lambda: self.config.max_message_size,
            "DELETED": lambda: sum(1 for m in box.messages if "T" in m.letters),
            "DELETED-STORAGE": lambda: kib(sum(m.size for m in box.messages if "T" in m.letters)),
            "HIGHESTMODSEQ": lambda: box.highestmodseq,
        }
        if "HIGHESTMODSEQ" in items:  # a CONDSTORE enabling command (RFC 7162 §3.1)
            self.enable_condstore()
        body = " ".join(f"{item} {values[item]()}" for item in items)
        return b"* STATUS " + encode_name(name, self.rev2) + f" ({body})\r\n".encode()

    # -- QUOTA (RFC 9208: the STORAGE and MESSAGE resources of the user's one quota root) ----

    async def cmd_getquotaroot(self, tag: str, args: list[Token]) -> Any:
        name = self._one_name(args)
        if not await self.store.exists(self.user, name, self.io):
            raise No("No such mailbox", "NONEXISTENT")
        used, limit = await self.store.quota_usage(self.user, self.io)
        line = b"* QUOTAROOT " + encode_name(name, self.rev2)
        if limit.octets > 0 or limit.messages > 0:
            line += b" " + wire_name(QUOTA_ROOT) + b"\r\n" + _quota_line(used, limit)
        else:
            line += b"\r\n"
        self.send(line)  # type: ignore[operator]
        return self.ok(tag, "GETQUOTAROOT")  # type: ignore[attr-defined]

    async def cmd_getquota(self, tag: str, args: list[Token]) -> Any:
        if len(args) != 1:
            raise Bad("GETQUOTA needs a quota root")
        used, limit = await self.store.quota_usage(self.user, self.io)
        if astring(args[0]) != QUOTA_ROOT or (limit.octets <= 0 and limit.messages <= 0):
            raise No("No such quota root", "NONEXISTENT")
        self.send(_quota_line(used, limit))  # type: ignore[operator]
        return self.ok(tag, "GETQUOTA")  # type: ignore[attr-defined]

    async def cmd_setquota(self, tag: str, args: list[Token]) -> Any:
        raise No("Quotas are set by the administrator (mailstack user quota)", "NOPERM")

    # -- APPEND (RFC 3501 §6.3.11, RFC 4315 APPENDUID) ------------------------------------

    async def cmd_append(self, tag: str, args: list[Token]) -> Any:
        """APPEND, and MULTIAPPEND (RFC 3502): several messages, each with its own flags and
        date, put in the mailbox all together or not at all."""
        if len(args) < 2:
            raise Bad("APPEND needs a mailbox and a message literal")
        name = self.mailbox_name(args[0])
        messages: list[tuple[list[str], int | None, bytes]] = []
        sources: dict[tuple[str, int], bytes] = {}  # the messages CATENATE URLs read, once each
        budget = self.config.max_message_size + MAX_APPEND_TOTAL  # all of them, as for literals
        for flags, date, data in self._append_messages(args[1:]):
            octets = data if isinstance(data, bytes) else await self._catenate(data, sources)
            budget -= len(octets)
            if len(octets) > self.config.max_message_size or budget < 0:
                raise No("Message too large", "TOOBIG")
            messages.append((flags, date, octets))
        try:
            box = await self.store.open(self.user, name, self.io)
        except FolderError as e:
            if e.code == "NONEXISTENT":
                raise No("Mailbox does not exist", "TRYCREATE") from None
            raise
        try:
            letters = [await box.letters_of(flags) for flags, _, _ in messages]
        except TooManyKeywords:
            raise No("Too many keywords in this mailbox", "LIMIT") from None
        total = sum(len(data) for _, _, data in messages)
        await self.store.check_quota(self.user, total, self.io, len(messages))
        written = await self.io(_write_all, box.path, box.hostname, [(data, date) for _, date, data in messages])
        try:
            msgs = await box.append_all([(tmp, base, letter, len(data), when)
                                         for (tmp, base, when), letter, (_, _, data)
                                         in zip(written, letters, messages, strict=True)])
        except BaseException:
            await self.io(_remove_all, [tmp for tmp, _, _ in written])  # none of them, then
            raise
        self.store.usage_added(self.user, total, len(msgs))
        log.info("imap {session_id}: {user} appended UID {uid} ({size} octets) to {mailbox}",
                 session_id=self.session_id, user=self.user, uid=uid_set_text([m.uid for m in msgs]),  # type: ignore[attr-defined]
                 size=total, mailbox=name)
        self.publish_change(None if name == "INBOX" else name)
        return self.ok(tag, "APPEND",  # type: ignore[attr-defined]
                       code=f"APPENDUID {box.uidvalidity} {uid_set_text([m.uid for m in msgs])}")

    async def _catenate(self, parts: list[tuple[str, bytes | str]], sources: dict[tuple[str, int], bytes]) -> bytes:
        """CATENATE (RFC 4469): the message made of TEXT literals and parts of the user's
        own messages named by IMAP URLs (RFC 5092); NO [BADURL] for one that names nothing."""
        out: list[bytes] = []
        size = 0
        for kind, value in parts:
            if kind == "TEXT":
                assert isinstance(value, bytes)
                piece = value
            else:
                assert isinstance(value, str)
                piece = await self._url_octets(value, sources)
            size += len(piece)
            if size > self.config.max_message_size:
                raise No("Message too large", "TOOBIG")
            out.append(piece)
        if not size:
            raise No("Empty message: nothing appended")
        return b"".join(out)

    async def _url_octets(self, url: str, sources: dict[tuple[str, int], bytes]) -> bytes:
        bad = No("The URL names no message part of yours", _badurl(url))
        m = _IMAP_URL.match(url)
        if m is None:  # (an absolute imap:// URL needs URLAUTH, RFC 4469 §3: not offered)
            raise bad
        try:
            name = normal_name(unquote(m.group("mailbox"), errors="strict"))
            box = await self.store.open(self.user, name, self.io)
        except (FolderError, UnicodeDecodeError, ValueError):
            raise bad from None
        uid = int(m.group("uid"))
        message = box.by_uid.get(uid)
        if (m.group("uidvalidity") and int(m.group("uidvalidity")) != box.uidvalidity) or message is None:
            raise bad
        data = sources.get((name, uid))
        if data is None:
            data = sources[(name, uid)] = await box.read(message)
        if not data:
            raise bad
        offset, length = m.group("offset"), m.group("length")
        partial = (int(offset), int(length) if length else len(data)) if offset is not None else None
        try:
            section = parse_section(unquote(m.group("section") or ""), True, partial)
        except ParseError:
            raise bad from None
        content = section_bytes(data, None, section)
        if content is None:
            raise bad
        if partial is not None:
            content = content[partial[0]:partial[0] + partial[1]]
        return content

    @staticmethod
    def _append_messages(args: list[Token]) -> list[tuple[list[str], int | None, bytes | list[Any]]]:
        """(flags, date, octets or CATENATE parts) of each message: ``[flags] [date-time]
        (literal | CATENATE (...))``, repeated."""
        messages: list[tuple[list[str], int | None, bytes | list[Any]]] = []
        flags: list[str] | None = None
        date: int | None = None
        tokens = iter(args)
        for tok in tokens:
            if isinstance(tok, Atom) and tok.upper() == "CATENATE":
                parts = _catenate_parts(next(tokens, None))
                if len(messages) >= MAX_APPEND_MESSAGES:
                    raise No(f"At most {MAX_APPEND_MESSAGES} messages in one APPEND", "LIMIT")
                messages.append((flags or [], date, parts))
                flags, date = None, None
            elif isinstance(tok, String) and tok.literal:
                if not tok.value:  # RFC 3502: how a client cancels a MULTIAPPEND part way
                    raise No("Empty message: nothing appended")
                if len(messages) >= MAX_APPEND_MESSAGES:
                    raise No(f"At most {MAX_APPEND_MESSAGES} messages in one APPEND", "LIMIT")
                messages.append((flags or [], date, tok.value))
                flags, date = None, None
            elif isinstance(tok, list) and flags is None and date is None:
                flags = [canonical_flag(f.value) for f in tok if isinstance(f, Atom)]
                if len(flags) != len(tok) or any(f.startswith("\\") and f not in SYSTEM_FLAGS.split()
                                                 for f in flags):
                    raise Bad("Invalid flag in APPEND")
            elif isinstance(tok, String) and date is None and not tok.binary:
                date = parse_date_time(tok.value.decode("ascii", "replace"))
                if date is None:
                    raise Bad("Invalid date-time in APPEND")
            else:
                raise Bad("Invalid APPEND arguments")
        if not messages or flags is not None or date is not None:
            raise Bad("APPEND needs the message as a literal")
        return messages


# RFC 5092 IMAP URLs relative to this server, as CATENATE takes them (RFC 4469 §3): the
# user's own mailboxes; UIDVALIDITY may be left out
_IMAP_URL = re.compile(
    r"^/(?P<mailbox>[^;/?]+)(?:;UIDVALIDITY=(?P<uidvalidity>[1-9]\d{0,9}))?"
    r"/;UID=(?P<uid>[1-9]\d{0,9})(?:/;SECTION=(?P<section>[^/;?]+))?"
    r"(?:/;PARTIAL=(?P<offset>\d{1,10})(?:\.(?P<length>[1-9]\d{0,9}))?)?$", re.I)
MAX_CATENATE_PARTS = 100  # parts of one CATENATE message
MAX_APPEND_TOTAL = 1 << 20  # an APPEND's messages together: one message's size and this much more


def _create_uses(tok: Token) -> tuple[str, ...]:
    """The uses of ``(USE (\\Sent ...))`` (RFC 6154 §3, RFC 4466 create-params)."""
    params = paren_list(tok)
    if len(params) != 2 or not isinstance(params[0], Atom) or params[0].upper() != "USE":
        raise Bad("Unknown CREATE parameter")
    uses = []
    for item in paren_list(params[1]):
        if not isinstance(item, Atom):
            raise Bad("Expected a special-use attribute")
        use = _USE_NAMES.get(item.value.lower())
        if use is None:  # \All, \Flagged (virtual folders) or no use at all
            raise No(f"{item.value[:40]} cannot be given to a mailbox here", "USEATTR")
        uses.append(use)
    return tuple(uses)


_USE_NAMES = {use.lower(): use for use in SPECIAL_USE.values()}


def _catenate_parts(tok: Token | None) -> list[tuple[str, bytes | str]]:
    """``(TEXT literal URL "imap-url" ...)`` (RFC 4469 §5) -> [(kind, literal or URL)]."""
    if not isinstance(tok, list) or not tok or len(tok) % 2:
        raise Bad("CATENATE needs a list of TEXT and URL parts")
    if len(tok) > 2 * MAX_CATENATE_PARTS:
        raise No(f"At most {MAX_CATENATE_PARTS} parts in one CATENATE", "LIMIT")
    parts: list[tuple[str, bytes | str]] = []
    for kind, value in zip(tok[::2], tok[1::2], strict=True):
        name = kind.upper() if isinstance(kind, Atom) else ""
        if name == "TEXT" and isinstance(value, String) and value.literal and not value.binary:
            parts.append(("TEXT", value.value))  # (a plain literal: the parser refused any NUL)
        elif name == "URL" and not isinstance(value, list) and not (isinstance(value, String) and value.binary):
            parts.append(("URL", astring(value)))
        else:
            raise Bad("CATENATE parts are TEXT literal or URL url")
    return parts


def _badurl(url: str) -> str:
    """RFC 4469 §5: BADURL names the URL as it came, when it can stand in a response code."""
    if len(url) > 300 or any(not 0x20 <= ord(c) <= 0x7E or c == "]" for c in url):
        return "BADURL"
    return f"BADURL {url}"


def status_items(tok: Token) -> tuple[str, ...]:
    """The items of a STATUS command or of LIST's STATUS return option."""
    items = []
    for item in paren_list(tok):
        if not isinstance(item, Atom) or item.upper() not in STATUS_ITEMS:
            raise Bad("Unknown STATUS item")
        items.append(item.upper())
    if not items:
        raise Bad("Empty STATUS item list")
    return tuple(items)


@dataclass(frozen=True)
class ListRequest:
    selection: frozenset[str]  # SUBSCRIBED, REMOTE, RECURSIVEMATCH, SPECIAL-USE
    reference: str
    patterns: list[str]
    returns: frozenset[str]  # SUBSCRIBED, CHILDREN, SPECIAL-USE, STATUS
    status: tuple[str, ...]  # the items of RETURN (STATUS (...))
    extended: bool = True


SELECTION_OPTIONS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
RETURN_OPTIONS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})


def _list_request(args: list[Token], utf8: bool = False) -> ListRequest | None:
    """The extended LIST (RFC 5258 §3), or None for the RFC 3501 form."""
    rest = list(args)
    selection: set[str] = set()
    if rest and isinstance(rest[0], list):
        for item in paren_list(rest.pop(0)):
            option = item.upper() if isinstance(item, Atom) else ""
            if option not in SELECTION_OPTIONS:
                raise Bad("Unknown LIST selection option")
            selection.add(option)
        if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
            raise Bad("RECURSIVEMATCH needs another selection option")  # RFC 5258 §3
    returns: set[str] = set()
    status: tuple[str, ...] = ()
    if len(rest) >= 4 and isinstance(rest[-2], Atom) and rest[-2].upper() == "RETURN" and \
            isinstance(rest[-1], list):  # (a reference called RETURN stays a reference)
        options = paren_list(rest[-1])
        rest = rest[:-2]
        i = 0
        while i < len(options):
            option = options[i].upper() if isinstance(options[i], Atom) else ""  # type: ignore[union-attr]
            if option not in RETURN_OPTIONS:
                raise Bad("Unknown LIST return option")
            if option == "STATUS":
                if i + 1 >= len(options):
                    raise Bad("STATUS needs a list of items")
                status = status_items(options[i + 1])
                i += 1
            returns.add(option)
            i += 1
    if len(rest) != 2:
        raise Bad("LIST needs a reference and a mailbox pattern")
    if not selection and not returns and not isinstance(rest[1], list) and len(args) == 2:
        return None
    reference = decode_name(astring(rest[0]) if not isinstance(rest[0], Atom) else list_mailbox(rest[0]), utf8)
    tokens = rest[1] if isinstance(rest[1], list) else [rest[1]]
    if not tokens:
        raise Bad("LIST needs a mailbox pattern")
    patterns = [decode_name(list_mailbox(t), utf8) for t in tokens]
    return ListRequest(frozenset(selection), reference, patterns, frozenset(returns), status)


def _listing(request: ListRequest, existing: set[str], subscribed: set[str],
             uses: dict[str, str]) -> list[tuple[str, list[str], bool]]:
    """(name, attributes, CHILDINFO SUBSCRIBED?) of each mailbox to list, in order."""
    regexes = [(pattern_regex(request.reference + p), request.reference + p) for p in request.patterns if p]
    names = set(existing)
    for name in existing:
        levels = name.split(DELIMITER)
        for i in range(1, len(levels)):
            names.add(DELIMITER.join(levels[:i]))

    def matches(name: str) -> bool:
        return any(name_matches(regex, full, name) for regex, full in regexes)

    only_subscribed = "SUBSCRIBED" in request.selection
    recursive = "RECURSIVEMATCH" in request.selection
    candidates = set(subscribed) if only_subscribed else set(names)
    if recursive:  # names above subscribed ones, whether they exist or not (RFC 5258 §3.5)
        for name in subscribed:
            levels = name.split(DELIMITER)
            candidates.update(DELIMITER.join(levels[:i]) for i in range(1, len(levels)))
    out = []
    seen = set()
    for name in sorted(candidates, key=lambda n: (n != "INBOX", n)):
        if not matches(name) or name in seen:
            continue
        childinfo = recursive and only_subscribed and any(
            s.startswith(name + DELIMITER) for s in subscribed)
        if only_subscribed and name not in subscribed and not childinfo:
            continue
        if "SPECIAL-USE" in request.selection and name not in uses:
            continue
        seen.add(name)
        attrs = []
        if name not in existing:
            attrs += ["\\Noselect", "\\NonExistent"] if request.extended else ["\\Noselect"]
        if not (only_subscribed and name not in existing) or "CHILDREN" in request.returns:
            attrs.append(_children(name, names))
        if (only_subscribed or "SUBSCRIBED" in request.returns) and name in subscribed:
            attrs.append("\\Subscribed")
        if name in uses:
            attrs.append(uses[name])
        out.append((name, attrs, childinfo))
    return out


def _check_new_name(name: str) -> None:
    """What a new mailbox name must be: no LIST wildcards, and Net-Unicode (RFC 9051 §5.1:
    NFC, no control characters; RFC 5198)."""
    if any(c in name for c in "%*"):
        raise No("Mailbox names cannot contain wildcards", "CANNOT")
    if not unicodedata.is_normalized("NFC", name) or any(unicodedata.category(c) == "Cc" for c in name):
        raise No("Mailbox names must be Unicode in NFC without control characters", "CANNOT")


def _children(name: str, names: set[str]) -> str:
    """RFC 3348: whether a mailbox has others below it."""
    return "\\HasChildren" if any(other.startswith(name + DELIMITER) for other in names) else "\\HasNoChildren"


def _attributes(name: str, existing: set[str], uses: dict[str, str]) -> list[str]:
    """The LIST attributes of one existing mailbox: children and special use."""
    return [_children(name, existing)] + ([uses[name]] if name in uses else [])


def kib(octets: int) -> int:
    """RFC 9208 counts storage in units of 1024 octets (rounded up: a byte used is shown)."""
    return (octets + 1023) // 1024


def _quota_line(used: Any, limit: Any) -> bytes:
    """``* QUOTA "" (STORAGE used limit MESSAGE used limit)``: the resources that have a limit
    (RFC 9208 §5.1: STORAGE in units of 1024 octets)."""
    resources = []
    if limit.octets > 0:
        resources.append(f"STORAGE {kib(used.octets)} {limit.octets // 1024}")
    if limit.messages > 0:
        resources.append(f"MESSAGE {used.messages} {limit.messages}")
    return b"* QUOTA " + wire_name(QUOTA_ROOT) + f" ({' '.join(resources)})\r\n".encode()


def _write_all(folder: Any, hostname: str, messages: list[tuple[bytes, int | None]]) -> list[tuple[Any, str, int]]:
    """Each message into ``folder/tmp`` (io thread); if one cannot be written, none stays."""
    written: list[tuple[Any, str, int]] = []
    try:
        for data, date in messages:
            written.append(write_tmp(folder, hostname, data, date))
    except BaseException:
        _remove_all([tmp for tmp, _, _ in written])
        raise
    return written


def _remove_all(paths: list[Any]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
