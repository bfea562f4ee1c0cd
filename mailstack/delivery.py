"""Local delivery: the one path from an accepted address to the Maildir files of its mailboxes.

Both the SMTP router (mail accepted on 25/587/465) and the queue runner (bounces,
retries for a full mailbox) deliver through :class:`LocalDelivery`, in four steps:

1. **Resolve** (:func:`resolve_route`): an address goes through
   ``AccountLookup.resolve`` once (exact alias, user, catch-all; chains and
   loops are the store's rules) and comes back as local mailboxes plus
   forwards (addresses outside the local domains, which the caller hands to
   the queue). The SMTP session resolves at RCPT time, so the envelope already
   holds the result; the queue stores resolved mailboxes, so nothing is
   resolved twice (a second pass would give another copy to everyone an alias
   that keeps its own source also lists).
2. **Filter** (:class:`~mailstack.interfaces.Filter`): for each mailbox, the
   :class:`~mailstack.interfaces.Filing`: the folders the copy is filed into, each
   with its flags (system flags become Maildir letters, the copy then goes into
   ``cur/``), or none (discarded). The default files everything into INBOX; the
   DMARC "quarantine to Junk" decision and the user's Sieve script plug in here. A
   filter decides, it never writes. A mailbox that got one copy and whose second
   copy fails is not held (a retry would double the first): the failure is logged.
   The messages a filter sends (Sieve's redirect, vacation, reject) come back in
   :class:`LocalResult` for the caller to queue, for done mailboxes only.
3. **File** (:class:`~mailstack.maildir.MaildirDelivery`): every copy with the
   recipient's quota, tmp/ + fsync, rename into new/, fsync new/. Copies for
   one folder are written all or nothing. A recipient whose mailbox is full is
   *held* (left for the queue to retry or bounce) instead of failing the
   message for the others, when the caller can hold (it has a queue).
4. **Notify** (:class:`~mailstack.notify.MailboxEvents`): each delivered
   mailbox and folder is published, so IMAP sessions (IDLE) see it at once.

Copies that go to different folders are written one folder after the other
(``MaildirDelivery`` takes one folder per call). If a later folder's write
fails after an earlier one succeeded, the recipients of the later folder are
held rather than failing the message, because the earlier copies are already
visible.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from mailstack.accounts.directory import domain_of
from mailstack.accounts.store import AccountLookup
from mailstack.envelope import RecipientRoute
from mailstack.interfaces import INBOX, Filing, Filter, LocalCopy, Outbound, Outbox
from mailstack.maildir import DeliveryError, InvalidFolder, MaildirDelivery, Recipient
from mailstack.maildir.flags import SYSTEM_LETTERS, canonical_flag
from mailstack.maildir.folders import normal_name
from mailstack.maildir.layout import folder_dirname
from mailstack.notify import MailboxEvents

__all__ = ["Filter", "InboxFilter", "LocalCopy", "LocalDelivery", "LocalResult", "resolve_route"]

log = Logger()

KeywordLetters = Callable[[str, "str | None", list[str]], Awaitable[str]]
"""(mailbox, folder or None for INBOX, keywords) -> their info letters in that folder."""


def resolve_route(store: AccountLookup, address: str) -> RecipientRoute:
    """Where *address* goes: local mailboxes and forwards; both empty when nowhere.

    For an address in a local domain, aliases and the catch-all are followed
    (``AccountLookup.resolve``); an address outside them comes back as a forward.
    """
    targets = store.resolve(address)
    local = tuple(t for t in targets if store.is_local_domain(domain_of(t)))
    remote = tuple(t for t in targets if not store.is_local_domain(domain_of(t)))
    return RecipientRoute(address, local, remote)


class InboxFilter:
    """The default :class:`Filter`: every copy goes to INBOX."""

    async def file(self, copy: LocalCopy) -> Filing:
        return INBOX


@dataclass(slots=True)
class LocalResult:
    """What one :meth:`LocalDelivery.deliver` did, per mailbox."""

    delivered: dict[str, str | None] = field(default_factory=dict)
    """Mailbox -> folder it was filed into (None: INBOX); durable and published."""
    discarded: set[str] = field(default_factory=set)
    """Mailboxes whose filter discarded the message (done: nothing to hold)."""
    held: dict[str, DeliveryError] = field(default_factory=dict)
    """Mailbox -> why it did not get the message; nothing of it is visible. The caller
    queues these (temporary errors are retried, permanent ones bounced)."""
    outbound: list[tuple[str, Outbound]] = field(default_factory=list)
    """(mailbox, message) its filter sent (redirects, replies, notices), queued for done
    mailboxes only. A held mailbox's filter runs again on retry."""
    refused: dict[str, str] = field(default_factory=dict)
    """Mailbox -> the reason its filter refuses the message, for the caller to answer with
    (``can_refuse``; the mailbox is among ``discarded``)."""


class LocalDelivery:
    """Resolves, filters, files and announces local copies; see the module docstring."""

    def __init__(self, store: AccountLookup, maildir: MaildirDelivery, events: MailboxEvents,
                 filter: Filter | None = None, keywords: KeywordLetters | None = None) -> None:
        self.store = store
        self.maildir = maildir
        self.events = events
        self.filter: Filter = filter if filter is not None else InboxFilter()
        self.keywords = keywords  # None: keywords a filter sets are not kept (logged)
        self.outbox: Outbox | None = None  # where the messages filters send go (the queue, set once built)

    # -- step 1: resolve ------------------------------------------------------------

    def is_local_domain(self, domain: str) -> bool:
        return self.store.is_local_domain(domain)

    def route(self, address: str) -> RecipientRoute:
        """:func:`resolve_route` over this delivery's account store."""
        return resolve_route(self.store, address)

    def route_queued(self, address: str) -> RecipientRoute:
        """Where a local address taken from the queue goes.

        The queue holds resolved mailboxes (see the module docstring), so an
        address that is a user's mailbox is final and not resolved again. Any
        other address (a user removed since, or a message queued unresolved) is
        resolved now.
        """
        if self.store.get_user(address) is not None:
            return RecipientRoute(address, (address,))
        return self.route(address)

    # -- steps 2 to 4 ---------------------------------------------------------------

    async def deliver(self, queue_id: str, sender: str, mailboxes: Mapping[str, str], message: bytes,
                      *, can_hold: bool, can_refuse: bool = False) -> LocalResult:
        """File *message* for each mailbox (mapped to the address it was sent to).

        Returns once every delivered copy is fsynced. A failed write raises
        DeliveryError, with no copy made visible, unless it can be held: with
        ``can_hold``, a full mailbox (RFC 3463 X.2.2) among several is
        held and the others still get the message. Copies bound for a second
        folder whose write fails after the first folder's succeeded are held
        even without ``can_hold`` (the first copies cannot be taken back); a
        caller that cannot queue them must answer with a temporary error.

        The messages filters send are prepared in the queue before any copy is
        written and committed once their mailbox is done (aborted for a held one,
        whose filter runs again at the retry). A redirect that cannot be queued
        leaves its copy in INBOX instead, so the message is never lost. With
        ``can_refuse`` (the caller still talks to the client, and this is the
        message's one recipient), a filter's refusal is not carried out here:
        it comes back in ``LocalResult.refused`` for the caller to answer with.
        """
        result = LocalResult()
        prepared: dict[str, list[tuple[Outbound, Any]]] = {}
        # (folder, flag letters, the copy's text) -> recipients; the text is the message unless a
        # filter edited its header (Sieve's editheader), so copies that are the same are written together
        by_target: dict[tuple[str | None, str, bytes], list[Recipient]] = {}
        try:
            for mailbox, original in mailboxes.items():
                copy = LocalCopy(queue_id, sender, mailbox, original, message)
                filing = await self.filter.file(copy)
                if can_refuse and filing.refusal is not None and len(mailboxes) == 1:
                    result.refused[mailbox] = filing.refusal
                    result.discarded.add(mailbox)
                    break
                if filing.sends:
                    filing = await self._prepare_sends(copy, filing, prepared)
                targets = await self._targets(copy, filing)
                if not targets:  # the filter discarded it (Sieve's discard): nothing to write
                    result.discarded.add(mailbox)
                    log.info("{queue_id} discarded for <{mailbox}> by its filter", queue_id=queue_id,
                             mailbox=mailbox)
                    continue
                user = self.store.get_user(mailbox)
                recipient = Recipient(mailbox, user.quota if user else 0, original, user.max_messages if user else 0)
                text = filing.message if filing.message is not None else message
                for folder, letters in targets:
                    by_target.setdefault((folder, letters, text), []).append(recipient)
            filed = await self._file(queue_id, sender, by_target, result, can_hold)
        except BaseException:
            for items in prepared.values():  # nothing is done: what the filters send is withdrawn
                for _, handle in items:
                    await self._withdraw(queue_id, handle)
            raise
        for mailbox, folder in filed:
            log.info("{queue_id} filed for <{mailbox}> in {folder}", queue_id=queue_id, mailbox=mailbox,
                     folder=folder or "INBOX")
            self.events.publish(mailbox, folder)
        await self._send(queue_id, prepared, result)
        return result

    async def _file(self, queue_id: str, sender: str, by_target: dict[tuple[str | None, str, bytes], list[Recipient]],
                    result: LocalResult, can_hold: bool) -> list[tuple[str, str | None]]:
        """Step 3: write the copies, folder by folder; what is filed, for step 4."""
        remaining = sum(len(group) for group in by_target.values())
        filed: list[tuple[str, str | None]] = []
        for (folder, letters, text), group in by_target.items():
            while group:
                try:
                    await self.maildir.deliver(sender, group, text, folder, letters)
                except DeliveryError as e:
                    held = self._hold(e, group, result, remaining, can_hold)
                    for r in held:
                        if r.address in result.delivered:  # it has a copy elsewhere: a retry would double it
                            del result.held[r.address]
                            log.error("{queue_id} second copy for <{mailbox}> into {folder} not made: {error}",
                                      queue_id=queue_id, mailbox=r.address, folder=folder or "INBOX", error=e.message)
                    remaining -= len(held)
                    group = [r for r in group if r not in held]
                    continue
                for r in group:
                    result.delivered.setdefault(r.address, folder)
                    filed.append((r.address, folder))
                    failed = result.held.pop(r.address, None)
                    if failed is not None:  # an earlier copy of it failed; it has one now: not queued again
                        log.error("{queue_id} a copy for <{mailbox}> not made: {error}", queue_id=queue_id,
                                  mailbox=r.address, error=failed.message)
                remaining -= len(group)
                break
        return filed

    async def _prepare_sends(self, copy: LocalCopy, filing: Filing,
                             prepared: dict[str, list[tuple[Outbound, Any]]]) -> Filing:
        """Prepare the filing's messages in the queue; a redirect that cannot be queued keeps the copy."""
        items = prepared.setdefault(copy.mailbox, [])
        lost_redirect = False
        for outbound in filing.sends:
            try:
                if self.outbox is None:
                    raise LookupError("there is no queue")
                items.append((outbound, await self.outbox.prepare_outbound(outbound, copy.queue_id)))
            except Exception as e:  # a full disk, say
                log.error("{queue_id} {kind} of <{mailbox}> to {recipients} cannot be queued: {error}",
                          queue_id=copy.queue_id, kind=outbound.kind, mailbox=copy.mailbox,
                          recipients=", ".join(outbound.recipients), error=getattr(e, "message", None) or str(e))
                lost_redirect = lost_redirect or outbound.kind == "redirect"
        if lost_redirect and not filing.copies:
            log.warn("{queue_id} kept in INBOX for <{mailbox}> since its redirect cannot be queued",
                     queue_id=copy.queue_id, mailbox=copy.mailbox)
            return Filing(((None, ()), *filing.copies), (), None, filing.message)
        return filing

    async def _send(self, queue_id: str, prepared: dict[str, list[tuple[Outbound, Any]]], result: LocalResult) -> None:
        """Step 5: commit the messages of done mailboxes (each confirmed first); withdraw the others."""
        for mailbox, items in prepared.items():
            done = mailbox in result.delivered or mailbox in result.discarded
            for outbound, handle in items:
                go = done
                if go and outbound.confirm is not None:
                    try:
                        go = await outbound.confirm()
                    except Exception as e:
                        log.error("{queue_id} {kind} of <{mailbox}> not sent: {error}", queue_id=queue_id,
                                  kind=outbound.kind, mailbox=mailbox, error=e)
                        go = False
                if not go:
                    await self._withdraw(queue_id, handle)
                    continue
                assert self.outbox is not None
                try:
                    await self.outbox.commit(handle)
                except Exception as e:  # the spool took the file but cannot rename it: logged, the copy is done
                    log.error("{queue_id} {kind} of <{mailbox}> to {recipients} not queued: {error}",
                              queue_id=queue_id, kind=outbound.kind, mailbox=mailbox,
                              recipients=", ".join(outbound.recipients), error=e)
                    continue
                result.outbound.append((mailbox, outbound))

    async def _withdraw(self, queue_id: str, handle: Any) -> None:
        assert self.outbox is not None
        try:
            await self.outbox.abort(handle)
        except Exception as e:  # a prepared file left behind is removed at the next start
            log.error("{queue_id} a prepared message was not withdrawn: {error}", queue_id=queue_id, error=e)

    async def _targets(self, copy: LocalCopy, filing: Filing) -> list[tuple[str | None, str]]:
        """Step 2: the filter's filing, each folder checked against the Maildir layout and its
        flags made Maildir letters (keywords through the folder's keyword table)."""
        out: list[tuple[str | None, str]] = []
        for folder, flags in filing.copies:
            if folder is not None:
                folder = normal_name(folder)  # "inbox.Lists" is INBOX.Lists, as IMAP names it
            if folder == "INBOX":
                folder = None
            if folder is not None:
                try:
                    folder_dirname(folder)  # the name only: no file system access on the reactor thread
                except InvalidFolder as e:
                    log.warn("{queue_id} filter chose folder {folder!r} for <{mailbox}>, which cannot be used "
                             "({error}); filed into INBOX", queue_id=copy.queue_id, folder=folder,
                             mailbox=copy.mailbox, error=str(e))
                    folder = None
            letters = "".join(sorted({SYSTEM_LETTERS[canonical_flag(f)] for f in flags
                                      if canonical_flag(f) in SYSTEM_LETTERS}))
            keywords = [f for f in flags if not f.startswith("\\")]
            if keywords:
                letters = await self._keyword_letters(copy, folder, keywords, letters)
            if (folder, letters) not in out:
                out.append((folder, letters))
        return out

    async def _keyword_letters(self, copy: LocalCopy, folder: str | None, keywords: list[str], letters: str) -> str:
        """*letters* with those of *keywords* in the folder added (its table updated by its owner)."""
        if self.keywords is None:
            log.warn("{queue_id} keywords {flags} for <{mailbox}> not kept at delivery", queue_id=copy.queue_id,
                     flags=" ".join(keywords), mailbox=copy.mailbox)
            return letters
        try:
            extra = await self.keywords(copy.mailbox, folder, keywords)
        except Exception as e:  # the table cannot be read or written: the copy is filed without them
            log.error("{queue_id} keywords {flags} for <{mailbox}> not kept: {error}", queue_id=copy.queue_id,
                      flags=" ".join(keywords), mailbox=copy.mailbox, error=e)
            return letters
        return "".join(sorted(set(letters) | set(extra)))

    def _hold(self, error: DeliveryError, group: list[Recipient], result: LocalResult, remaining: int,
              can_hold: bool) -> list[Recipient]:
        """After a failed write of *group*: the recipients to leave for the queue, or raise *error*."""
        if result.delivered:
            # Copies in another folder are visible already: failing now would make the
            # client send them again. What failed waits in the queue instead: the one
            # recipient the error names (the others are tried again), else the group.
            failing = [r for r in group if r.address == error.recipient] or group
            for r in failing:
                result.held[r.address] = error
            return failing
        full = [r for r in group if r.address == error.recipient and error.status.endswith(".2.2")]
        if can_hold and full and remaining > 1:
            result.held[full[0].address] = error
            return full[:1]
        raise error
