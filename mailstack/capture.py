"""Capture mode (``relay.capture``): mail that would leave the machine is kept in one mailbox.

With capture on, the queue runner hands every remote recipient of a message
(relayed mail, bounces, delay warnings, Sieve's redirects and vacation replies:
everything that goes through the queue to another domain) to
:class:`CaptureRelay` instead of the MX or smarthost relay. It files one copy
per message into the capture mailbox through the one local-delivery path, with
the envelope on top (``Return-Path:`` the sender, ``X-Original-To:`` the
recipients it was bound for), and records those recipients as delivered, so
the queue, the log and ``mailstack trace`` show the message as sent.

The capture mailbox is an ordinary Maildir: readable over IMAP and POP3 once a
user of that address exists, and through :class:`CaptureBox`, which the HTTP
API reads (listing, one message, deletion, a change feed). ``CaptureBox`` goes
through the shared :class:`~mailstack.maildir.folders.MailStore` like any IMAP
session, so a deletion over HTTP is an EXPUNGE the IMAP sessions see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from mailstack.delivery import LocalDelivery
from mailstack.maildir import DeliveryError
from mailstack.maildir.folders import MailStore
from mailstack.notify import MailboxEvents
from mailstack.queue.spool import QueuedMessage

log = Logger()

__all__ = ["CaptureBox", "CaptureRelay", "Captured", "envelope_header"]


def envelope_header(sender: str, recipients: Iterable[str]) -> bytes:
    """The lines put on top of a captured copy: who sent it (``<>`` for a bounce) and to whom."""
    return (f"Return-Path: <{sender}>\r\n"
            f"X-Original-To: {', '.join(recipients)}\r\n").encode()


class CaptureRelay:
    """The queue's relay in capture mode: one copy per message into the capture mailbox."""

    def __init__(self, local: LocalDelivery, mailbox: str, hostname: str, relayed: frozenset[str] = frozenset()) -> None:
        self.local = local
        self.mailbox = mailbox
        self.hostname = hostname
        self.relayed = relayed  # domains relayed as usual (``relay.capture_except``)

    def captures(self, domain: str) -> bool:
        return domain not in self.relayed

    async def deliver(self, msg: QueuedMessage, addresses: list[str], body: bytes) -> DeliveryError | None:
        """File *body* once for all of *addresses* (remote recipients); None once it is filed, else
        why not (temporary for a full capture mailbox: the queue keeps it)."""
        copy = envelope_header(msg.sender, addresses) + body
        try:
            result = await self.local.deliver(msg.queue_id, msg.sender, {self.mailbox: self.mailbox}, copy,
                                              can_hold=True)
        except DeliveryError as e:
            error: DeliveryError | None = e
        else:
            error = result.held.get(self.mailbox)
        if error is not None:
            log.warn("{queue_id} not captured for {rcpts}: {status} {error}", queue_id=msg.queue_id,
                     rcpts=", ".join(addresses), status=error.status, error=error.message)
            return error
        log.info("{queue_id} captured for {rcpts} in <{mailbox}>", queue_id=msg.queue_id,
                 rcpts=", ".join(addresses), mailbox=self.mailbox)
        return None


@dataclass(frozen=True, slots=True)
class Captured:
    """One captured message as the mailbox knows it; ``id`` is its UID."""

    id: int
    size: int
    date: int  # when it was filed, Unix seconds


class CaptureBox:
    """The reading side: the capture mailbox's INBOX through the shared mail store (reactor thread)."""

    def __init__(self, store: MailStore, mailbox: str, io: Callable[..., Any],
                 events: MailboxEvents | None) -> None:
        self.store = store
        self.mailbox = mailbox
        self.io = io
        self.events = events

    async def _open(self) -> Any:
        return await self.store.open(self.mailbox, "INBOX", self.io)

    async def messages(self) -> list[Captured]:
        """Every captured message, oldest first."""
        box = await self._open()
        return [Captured(m.uid, m.size, m.internal_date) for m in box.messages]

    async def read(self, id: int) -> bytes | None:
        """The message's bytes, or None when there is no such message."""
        box = await self._open()
        msg = box.by_uid.get(id)
        if msg is None:
            return None
        data = await box.read(msg)
        return data if data or msg.size == 0 else None

    async def delete(self, ids: Iterable[int] | None = None) -> list[int]:
        """Remove these messages (every one when None); the ids that were removed."""
        box = await self._open()
        wanted = [m.uid for m in box.messages] if ids is None else list(ids)
        removed: list[int] = await box.expunge(wanted)
        if removed:
            self.store.usage_changed(self.mailbox)
            if self.events is not None:
                self.store.own_change = True  # the shared Mailbox knows: IMAP sessions need not rescan
                try:
                    self.events.publish(self.mailbox)
                finally:
                    self.store.own_change = False
        return removed

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call *callback* whenever the capture mailbox's INBOX changes; returns the unsubscribe function."""
        if self.events is None:
            return lambda: None

        def changed(address: str, folder: str | None) -> None:
            if folder is None or folder.upper() == "INBOX":
                callback()

        return self.events.subscribe(self.mailbox, changed)
