"""Sieve at local delivery: the :class:`~mailstack.interfaces.Filter` that runs a user's script.

For each local copy, the mailbox's active script (``AccountLookup.active_script``,
from the account store's in-memory snapshot) is compiled once per text (a small
cache) and run on a thread pool, over the message's header, size and envelope (the
address it was sent to, so ``:detail`` sees ``user+tag``). Its outcome becomes a
:class:`~mailstack.interfaces.Filing`: the folders with their flags, or nothing for
``discard``. A mailbox without a script gets what the next filter gives (INBOX).

A script never loses mail (RFC 5228 §2.10.6): a script that fails (a limit hit, an
error) files the copy into INBOX, logged with the user and the queue id.

The messages a script sends (:mod:`mailstack.sieve.actions`) travel with the filing
and are queued once the copy is done: each redirect (SRS sender, ``Delivered-To``; a
message that has been through this mailbox before is kept instead, a loop), the
rejection notice (an MDN for reject, a DSN for ereject; none to the null sender; the
caller refuses the message in SMTP instead when it can), and the vacation reply when
:class:`~mailstack.sieve.replied.VacationMemory` (on the pool) says this sender is
due one for this handle.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.logger import Logger

from mailstack.accounts.store import AccountLookup
from mailstack.imap.mime import split_message
from mailstack.interfaces import INBOX, Filing, Filter, LocalCopy, Outbound
from mailstack.sieve import actions
from mailstack.sieve.interpreter import MessageView, Outcome, Script, SieveRuntimeError, compile_script
from mailstack.sieve.parser import SieveSyntaxError
from mailstack.sieve.replied import VacationMemory
from mailstack.sieve.vacation import Vacation
from mailstack.srs import SRS

log = Logger()
COMPILED = 256  # compiled scripts kept (by text)
INLINE_NODES = 400  # commands and tests of a script run on the reactor thread (a few hundred µs at most)
INLINE_HEADER = 16 << 10  # octets of header a script run on the reactor thread may read
INLINE_BODY = 16 << 10  # octets of body a script with the body test may read on the reactor thread
RUNS = 8  # runs of one script for one copy: again while mailboxexists asks about folders not looked up


class SieveFilter:
    def __init__(self, store: AccountLookup, then: Filter, *, run: Callable[..., Awaitable[Any]],
                 delimiter: str = "+", hostname: str = "localhost", srs: SRS | None = None,
                 replied: VacationMemory | None = None, clock: Callable[[], float] = time.time,
                 folder_exists: Callable[[str, str], Awaitable[bool]] | None = None) -> None:
        self.store = store
        self.then = then
        self.run = run  # blocking work on a bounded pool
        self.delimiter = delimiter
        self.hostname = hostname
        self.srs = srs  # the envelope sender of redirected mail
        self.replied = replied  # vacation's memory; None: no vacation replies
        self.clock = clock
        self.folder_exists = folder_exists  # (mailbox, folder) -> it exists; None: every folder does
        self._compiled: OrderedDict[str, Script | SieveSyntaxError] = OrderedDict()

    async def file(self, copy: LocalCopy) -> Filing:
        text = self.store.active_script(copy.mailbox)
        if text is None:
            return await self.then.file(copy)
        folders: dict[str, bool] = {}  # folder -> it exists (asked on the pool once per copy)
        try:
            script = self._script(text)
            header = split_message(copy.message)[0]
            # A small script over a small header costs less than the trip to the pool: run on the
            # reactor thread; anything bigger (up to MAX_STEPS, over a long header) on the pool.
            body = copy.message[len(header):]
            inline = script.size <= INLINE_NODES and len(header) <= INLINE_HEADER and \
                ("body" not in script.required or len(body) <= INLINE_BODY)
            asked: set[str] = set()
            now = self.clock()

            def load(name: str, is_global: bool) -> str | None:  # include (RFC 6609), from the snapshot
                return self.store.global_script(name) if is_global else self.store.script(copy.mailbox, name)

            def exists(name: str) -> bool:
                if name in folders:
                    return folders[name]
                asked.add(name)
                return False

            for _ in range(RUNS):
                asked.clear()
                view = MessageView(header, len(copy.message), copy.sender, copy.original, mailbox_exists=exists,
                                   delimiter=self.delimiter, body=body, now=now, load_script=load,
                                   mailbox=copy.mailbox)
                outcome: Outcome = script.run(view) if inline else await self.run(script.run, view)
                if not asked:  # mailboxexists asked nothing new: this run's outcome stands
                    break
                await self._look_up(copy.mailbox, asked, folders)
            else:
                raise SieveRuntimeError(f"mailboxexists still asks about new folders after {RUNS} runs")
        except Exception as e:  # a limit hit, a broken script: the copy is kept (RFC 5228 §2.10.6)
            log.warn("{queue_id} Sieve script of <{mailbox}> failed ({error}); filed into INBOX",
                     queue_id=copy.queue_id, mailbox=copy.mailbox, error=e)
            return INBOX
        await self._look_up(copy.mailbox, {d.folder for d in outcome.deliveries
                                           if d.folder is not None and not d.create}, folders)
        copies: tuple[tuple[str | None, tuple[str, ...]], ...] = ()
        for d in outcome.deliveries:
            folder = d.folder
            if folder is not None and not d.create and not folders.get(folder, True):
                # RFC 5490 §3.2: without :create, fileinto into a missing folder fails; the copy is kept
                log.warn("{queue_id} Sieve script of <{mailbox}> files into {folder}, which does not exist "
                         "(no :create); filed into INBOX", queue_id=copy.queue_id, mailbox=copy.mailbox, folder=folder)
                folder = None
            same = next((i for i, (f, _) in enumerate(copies) if f == folder), None)
            if same is None:
                copies += ((folder, d.flags),)
            else:  # a copy that fell back to INBOX meets the INBOX copy: one copy, with both's flags
                flags = copies[same][1] + tuple(f for f in d.flags if f.lower() not in
                                                {g.lower() for g in copies[same][1]})
                copies = copies[:same] + ((folder, flags),) + copies[same + 1:]
        sends: list[Outbound] = []
        # editheader (RFC 5293): the copies and redirects carry the header as the script left it
        edited = outcome.header + body if outcome.header is not None else None
        if outcome.redirects:
            if actions.looped(header, copy.mailbox):
                log.warn("{queue_id} <{mailbox}> redirects a message it had before (a loop); filed into INBOX",
                         queue_id=copy.queue_id, mailbox=copy.mailbox)
                if not any(folder is None for folder, _ in copies):
                    copies += ((None, ()),)
            else:
                sends += [actions.redirect(edited or copy.message, sender=copy.sender, mailbox=copy.mailbox,
                                           target=target, srs=self.srs) for target in outcome.redirects]
        if outcome.reject is not None:
            if copy.sender:
                now = self.clock()
                sends.append(actions.rejection(copy.message, sender=copy.sender, mailbox=copy.mailbox,
                                               original=copy.original, reason=outcome.reject,
                                               extended=outcome.ereject, hostname=self.hostname,
                                               queue_id=copy.queue_id, arrival=now, now=now))
            else:
                log.info("{queue_id} <{mailbox}> rejects a message from the null sender: discarded, no notice",
                         queue_id=copy.queue_id, mailbox=copy.mailbox)
        if outcome.vacation is not None and self.replied is not None:
            try:
                reply = await self._vacation(copy, header, outcome.vacation)
            except Exception as e:  # a reply that cannot be written (a header it cannot carry): none
                log.error("{queue_id} vacation reply of <{mailbox}> not sent: {error}", queue_id=copy.queue_id,
                          mailbox=copy.mailbox, error=e)
                reply = None
            if reply is not None:
                sends.append(reply)
        # RFC 5429 §2.2: reject's reason goes into an SMTP reply only when it is ASCII (it would lose
        # its text otherwise: the MDN carries it); ereject's is made ASCII (§2.1.1)
        refusal = outcome.reject if outcome.ereject or (outcome.reject or "").isascii() else None
        return Filing(copies, tuple(sends), refusal, edited)

    async def _look_up(self, mailbox: str, names: set[str], found: dict[str, bool]) -> None:
        """Whether each folder of *names* not looked up yet exists (on the pool)."""
        for name in names - found.keys():
            if self.folder_exists is None:
                found[name] = True
                continue
            try:
                found[name] = await self.folder_exists(mailbox, name)
            except Exception:  # a name no folder can have
                found[name] = False

    async def _vacation(self, copy: LocalCopy, header: bytes, vacation: Vacation) -> Outbound | None:
        """The reply, when this sender has not had one for this handle within the period; it is
        confirmed (and remembered) once the copy is filed, just before it is queued."""
        replied = self.replied
        assert replied is not None
        now = self.clock()
        try:
            recent = await self.run(replied.replied, copy.mailbox, vacation.handle, vacation.to, now)
        except Exception as e:  # the memory cannot be read: no reply rather than one too many
            log.error("{queue_id} vacation reply of <{mailbox}> to <{to}> not sent: {error}",
                      queue_id=copy.queue_id, mailbox=copy.mailbox, to=vacation.to, error=e)
            return None
        if recent:
            log.info("{queue_id} <{to}> had a vacation reply from <{mailbox}> within the period: none now",
                     queue_id=copy.queue_id, to=vacation.to, mailbox=copy.mailbox)
            return None

        async def confirm() -> bool:
            due: bool = await self.run(replied.due, copy.mailbox, vacation.handle, vacation.to, vacation.seconds,
                                       self.clock())
            if not due:
                log.info("{queue_id} <{to}> had a vacation reply from <{mailbox}> meanwhile: none now",
                         queue_id=copy.queue_id, to=vacation.to, mailbox=copy.mailbox)
            return due

        sender_address = copy.original
        if vacation.from_ is not None:
            if self.store.owns(copy.mailbox, vacation.from_):
                sender_address = vacation.from_
            else:  # the reply is signed for its From domain: never as somebody else's address
                log.warn("{queue_id} vacation :from <{address}> of <{mailbox}> is not an address of theirs; "
                         "the reply is from <{original}>", queue_id=copy.queue_id, address=vacation.from_,
                         mailbox=copy.mailbox, original=copy.original)
        reply = actions.vacation(header, to=vacation.to, sender_address=sender_address,
                                 reason=vacation.reason, subject=vacation.subject, mime_reason=vacation.mime,
                                 hostname=self.hostname, now=now)
        return dataclasses.replace(reply, confirm=confirm)

    def _script(self, text: str) -> Script:
        """The compiled script for a text (kept, so a busy mailbox compiles it once)."""
        found = self._compiled.get(text)
        if found is None:
            try:
                found = compile_script(text)
            except SieveSyntaxError as e:  # stored before a checker change, say: failing, not crashing
                found = e
            self._compiled[text] = found
            if len(self._compiled) > COMPILED:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(text)
        if isinstance(found, SieveSyntaxError):  # a new one each time: a kept one would keep its frames
            raise SieveSyntaxError(found.message, found.line, found.column)
        return found
