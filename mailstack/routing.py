"""Recipient routing shared by the SMTP roles, and the router that takes accepted mail.

``route_recipient`` turns one RCPT address into a :class:`RecipientRoute`:
local domains resolve through the account store (aliases, catch-all, by
:func:`mailstack.delivery.resolve_route`), other domains are relayed only
when the role allows it. :class:`Router` implements ``MessageRouter``: local
mailboxes get the message through :class:`~mailstack.delivery.LocalDelivery`
(fsynced before ``deliver`` returns); remote recipients, and local ones whose
mailbox is full, go to the outbound queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from twisted.logger import Logger

from mailstack import metrics
from mailstack.accounts.directory import domain_of
from mailstack.accounts.store import AccountLookup
from mailstack.delivery import LocalDelivery, resolve_route
from mailstack.dkim.signer import from_address
from mailstack.envelope import Envelope, RecipientRoute
from mailstack.interfaces import MessageSigner
from mailstack.maildir import DeliveryError
from mailstack.queue.spool import DELIVERED, QueuedMessage, RecipientState, SpoolError
from mailstack.smtp import reply as R
from mailstack.smtp.reply import Reply, SMTPReplyError
from mailstack.srs import SRS

if TYPE_CHECKING:
    from mailstack.queue.runner import QueueRunner

log = Logger()


def route_recipient(store: AccountLookup, address: str, *, relay_allowed: bool) -> RecipientRoute:
    """Where *address* goes; raises SMTPReplyError (550 5.1.1, 554 5.7.1) when nowhere."""
    domain = domain_of(address)
    if store.is_local_domain(domain):
        route = resolve_route(store, address)
        if not route.local and not route.remote:
            raise SMTPReplyError(R.NO_SUCH_USER, cause=f"no such local recipient {address}")
        return route
    if relay_allowed:
        return RecipientRoute(address, (), (address,))
    raise SMTPReplyError(R.RELAY_DENIED, cause=f"relay to {address} denied")


def reply_for(error: DeliveryError) -> Reply:
    """Map a Maildir delivery failure to the SMTP reply (RFC 3463 status kept)."""
    if error.status.endswith(".2.2"):
        return Reply(452 if error.temporary else 552, error.status, "Mailbox full" if error.temporary
                     else "Message exceeds the mailbox quota")
    if error.status == "4.3.1":
        return R.STORAGE_FULL
    if error.temporary:
        return Reply(451, error.status, "Local delivery failed, try again later")
    return Reply(554, error.status, "Local delivery failed")


def refusal_reply(reason: str) -> Reply:
    """550 5.7.1 with a filter's reason: each line of it a reply line (RFC 5429 §2.5), made
    printable ASCII, at most 10 lines of 400 characters."""
    lines = []
    for line in reason.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        text = " ".join("".join(c if " " <= c <= "~" else " " for c in line).split())[:400]
        if text:
            lines.append(text)
    return Reply(550, "5.7.1", tuple(lines[:10]) or ("Message refused by the recipient",))


class Router:
    """Makes an accepted message durable: local Maildirs now, remote recipients via the queue."""

    def __init__(self, local: LocalDelivery, queue: QueueRunner | None = None, *,
                 signer: MessageSigner | None = None, srs: SRS | None = None) -> None:
        self.local = local
        self.queue = queue
        self.signer = signer  # DKIM for mail that authenticated users send off-site
        self.srs = srs  # the envelope sender of mail an alias forwards off-site

    def can_relay(self) -> bool:
        return self.queue is not None

    async def deliver(self, envelope: Envelope, message: bytes) -> None:
        """Spool for remote recipients (prepared), Maildirs for local ones, then commit the spool.

        With several local recipients, one whose mailbox is full does not fail
        the message for the others: it joins the queued part and is retried from
        the queue (or bounced when the message can never fit).
        """
        remote = envelope.remote_recipients()
        if remote and envelope.auth_user is not None and self.signer is not None and self._may_sign(envelope, message):
            message = await self.signer.sign(message, envelope.queue_id)  # local copies carry it too
        forwarded, srs_sender, alias_domain = self._forwarded(envelope)
        remote = [a for a in remote if a not in forwarded]
        queued = await self._prepare(envelope, remote, message) if remote else None
        rewritten = None
        try:
            if forwarded:  # a second spool entry: the message, sealed, under the rewritten sender
                sealed = message
                if self.signer is not None:
                    sealed = await self.signer.seal(message, alias_domain, envelope.queue_id)
                rewritten = await self._prepare(envelope, forwarded, sealed, sender=srs_sender,
                                                queue_id=envelope.queue_id + "S")
            mailboxes = envelope.local_mailboxes()
            # the one recipient's filter may refuse the message (Sieve's reject, RFC 5429 §2.1.1) while
            # the client is here: then there is nothing else to deliver or queue
            alone = len(mailboxes) == 1 and not remote and not forwarded
            result = await self.local.deliver(envelope.queue_id, envelope.sender, mailboxes, message,
                                              can_hold=self.queue is not None, can_refuse=alone)
        except (DeliveryError, SMTPReplyError) as e:
            for entry in (queued, rewritten):
                if entry is not None and self.queue is not None:
                    await self.queue.abort(entry)
            if isinstance(e, SMTPReplyError):
                raise
            raise SMTPReplyError(reply_for(e), cause=f"{e.message} ({e.recipient})") from None
        for mailbox, reason in result.refused.items():
            log.info("{queue_id} refused for <{mailbox}> by its filter: {reason}", queue_id=envelope.queue_id,
                     mailbox=mailbox, reason=reason)
            raise SMTPReplyError(refusal_reply(reason), cause="refused by the recipient's filter")
        held_now = set(result.held)  # their recipients are counted when the queue delivers them
        metrics.DELIVERIES.labels("delivered").inc(
            sum(1 for r in envelope.recipients if r.local and not held_now.intersection(r.local)))
        if rewritten is not None and self.queue is not None:
            await self._commit(envelope, rewritten)
        held = list(result.held)
        if held:
            for mailbox, error in result.held.items():
                log.info("{queue_id} not filed for <{mailbox}> ({status} {error}); queued for it",
                         queue_id=envelope.queue_id, mailbox=mailbox, status=error.status, error=error.message)
            if queued is not None and self.queue is not None:
                await self.queue.abort(queued)
            if self.queue is None:
                log.error("{queue_id} delivered to {delivered} but not to {held}, and there is no queue",
                          queue_id=envelope.queue_id, delivered=list(result.delivered), held=held)
            queued = await self._prepare(envelope, remote + held, message)
        if queued is not None and self.queue is not None:
            await self._commit(envelope, queued)
        await self._report_success(envelope, result.delivered.keys() | result.discarded, message)

    async def _report_success(self, envelope: Envelope, filed: Iterable[str], message: bytes) -> None:
        """RFC 3461 §6.2: tell the sender of the deliveries it asked to hear of (NOTIFY=SUCCESS),
        mailboxes filed now and aliases expanded, before the 250. The message is delivered
        whatever happens here: a report that cannot be queued is logged, not refused."""
        dsn = envelope.target_dsn()
        entries = [(RecipientState(m, DELIVERED, 1, 0.0, "", "2.0.0"), "delivered")
                   for m in sorted(filed) if m in dsn and dsn[m].wants("SUCCESS")]
        entries += [(RecipientState(r.original, DELIVERED, 1, 0.0, "", "2.0.0"), "expanded")
                    for r in envelope.expanded()]
        if not entries or not envelope.sender:
            return
        orcpt = {m: d.orcpt for m, d in dsn.items() if d.orcpt is not None}
        orcpt.update({r.original: r.dsn.orcpt for r in envelope.expanded() if r.dsn and r.dsn.orcpt})
        if self.queue is None:
            log.warn("{queue_id} no delivery report to <{sender}>: there is no queue", queue_id=envelope.queue_id,
                     sender=envelope.sender)
            return
        try:
            await self.queue.notify(queue_id=envelope.queue_id, sender=envelope.sender, arrival=time.time(),
                                    entries=entries, body=message, envid=envelope.envid, orcpt=orcpt,
                                    quote=not envelope.requiretls)
        except Exception as e:  # delivered already: a report that cannot be queued must not fail the 250
            log.error("{queue_id} delivery report to <{sender}> not queued: {error}", queue_id=envelope.queue_id,
                      sender=envelope.sender, error=str(e))

    async def _commit(self, envelope: Envelope, queued: QueuedMessage) -> None:
        assert self.queue is not None
        try:
            await self.queue.commit(queued)
        except SpoolError as e:
            log.error("{queue_id} delivered locally but not queued for {remote}: {error}",
                      queue_id=envelope.queue_id, remote=list(queued.recipients), error=str(e))
            raise SMTPReplyError(R.TRY_AGAIN, cause=str(e)) from None

    def _forwarded(self, envelope: Envelope) -> tuple[list[str], str, str]:
        """Remote addresses reached through a local alias, the rewritten sender for them and the
        alias's domain (none without SRS, for the null sender, or when nothing is forwarded)."""
        if self.srs is None or not envelope.sender:
            return [], envelope.sender, ""
        out: dict[str, str] = {}
        for route in envelope.recipients:
            domain = domain_of(route.original)
            if route.remote and self.local.is_local_domain(domain):
                for address in route.remote:
                    out.setdefault(address, domain)
        if not out:
            return [], envelope.sender, ""
        domain = next(iter(out.values()))
        return list(out), self.srs.forward(envelope.sender, domain), domain

    def _may_sign(self, envelope: Envelope, message: bytes) -> bool:
        """Sign only mail whose From address the user owns (as for the envelope sender): the key
        goes by the From domain, and one tenant must not get mail signed as another's."""
        address = from_address(message)
        user = envelope.auth_user
        if address is None or user is None or not self.local.store.owns(user, address):
            log.info("{queue_id} not DKIM-signed: {user} does not own the From address {address}",
                     queue_id=envelope.queue_id, user=user, address=address)
            return False
        return True

    async def _prepare(self, envelope: Envelope, addresses: list[str], message: bytes, *,
                       sender: str | None = None, queue_id: str | None = None) -> QueuedMessage:
        if self.queue is None:
            raise SMTPReplyError(R.NO_RELAY_YET, cause="no outbound queue")
        dsn = envelope.target_dsn()
        queued = QueuedMessage(queue_id or envelope.queue_id, envelope.sender if sender is None else sender,
                               time.time(),
                               {a: RecipientState(a) for a in addresses},
                               smtputf8=envelope.smtputf8, body_8bit=envelope.body_8bit,
                               ret=envelope.ret, envid=envelope.envid, requiretls=envelope.requiretls,
                               dsn={a: dsn[a] for a in addresses if a in dsn})
        try:
            await self.queue.prepare(queued, message)
        except SpoolError as e:
            raise SMTPReplyError(R.STORAGE_FULL if e.full else R.TRY_AGAIN, cause=str(e)) from None
        return queued
