"""The seams between packages, as typing Protocols.

Protocol code (``smtp/``, ``pop3/``, ``imap/``) depends on these, never on the
concrete store, Maildir or queue classes; only ``service.py`` wires concrete
classes together.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailstack.envelope import Envelope, RecipientRoute


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What a policy may know about the SMTP client."""

    ip: str
    helo: str
    tls: bool
    auth_user: str | None
    trusted_network: bool


class SMTPPolicy(Protocol):
    """Decides what one SMTP role accepts. Methods raise ``SMTPReplyError`` to refuse.

    ``check_rcpt`` must be cheap and non-blocking: it runs on the reactor thread.
    """

    auth_required: bool
    """MAIL needs a prior successful AUTH (submission, RFC 6409 §4.3)."""

    def check_sender(self, client: ClientInfo, sender: str) -> None: ...

    def check_rcpt(self, client: ClientInfo, address: str) -> RecipientRoute: ...

    def prepare_message(self, envelope: Envelope, headers: bytes) -> bytes:
        """Header lines to prepend (e.g. Message-ID/Date on submission); ``headers`` is the header block."""
        ...

    async def check_message(self, client: ClientInfo, envelope: Envelope, message: bytes) -> bytes:
        """The message as it is to be delivered after this role's checks of its origin
        (DKIM and Authentication-Results on port 25); may raise ``SMTPReplyError``."""
        ...


class Fault(Protocol):
    """What a failure-injection rule makes a session do (``mailstack.faults``)."""

    @property
    def reply(self) -> Any: ...  # a Reply to answer with, or None

    @property
    def disconnect(self) -> bool: ...

    @property
    def delay(self) -> float: ...  # seconds to wait before the command is handled as usual

    @property
    def rule(self) -> str: ...  # the rule's id, for the log


class FaultInjector(Protocol):
    """Failure injection for the SMTP listeners: consulted at MAIL, RCPT and the end of DATA."""

    def check(self, stage: str, role: str, client_ip: str, sender: str, recipient: str = "") -> Fault | None: ...

    def sleep(self, seconds: float) -> Awaitable[None]: ...


class MessageRouter(Protocol):
    """Takes responsibility for an accepted message.

    ``deliver`` returns only once the message is durable: fsynced in every local
    recipient's Maildir or in the queue for remote recipients. It raises
    ``SMTPReplyError`` (temporary or permanent) when it cannot; then nothing was
    made visible.
    """

    def can_relay(self) -> bool:
        """True when remote recipients can be accepted (an outbound queue exists)."""
        ...

    async def deliver(self, envelope: Envelope, message: bytes) -> None: ...


class SendRate(Protocol):
    """Messages an hour of an authenticated user (``mailstack.ratelimit.SendLimits``)."""

    def over(self, user: str, domain: str) -> str | None:
        """Which limit *user* sending from *domain* has reached, as a sentence; None when neither."""
        ...

    def record(self, user: str, domain: str) -> None: ...


class QueueStarter(Protocol):
    """ETRN (RFC 1985): try the queued mail for a domain now."""

    async def start_domain(self, domain: str, subdomains: bool) -> int:
        """Schedule at once every queued message with a recipient still pending in *domain* (and in
        its subdomains when asked); how many (-1: started, how many not known yet). Raises
        ``OSError`` when the queue cannot be read or is stopping."""
        ...


@dataclass(frozen=True, slots=True)
class LocalCopy:
    """One mailbox's copy of a message, as a :class:`Filter` sees it."""

    queue_id: str
    sender: str
    """The envelope sender; ``""`` for the null reverse-path."""
    mailbox: str
    """The canonical local mailbox (after aliases)."""
    original: str
    """The address the message was sent to (the alias, when it differs)."""
    message: bytes
    """The whole message (CRLF lines), as it will be stored after Return-Path/Delivered-To."""


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message a filter sends because of a copy it filed: a redirect, a vacation reply,
    a rejection notice. It goes out through the queue once the copy is done (filed or
    discarded), never for a copy that waits in the queue (its filter runs again then)."""

    kind: str
    """``redirect``, ``vacation``, ``reject`` (an MDN) or ``ereject`` (a DSN), for the log."""
    sender: str
    """The envelope sender; ``""`` for the null reverse-path (notices, RFC 3834 §3.3)."""
    recipients: tuple[str, ...]
    message: bytes
    notice: bool = False
    """Written here (a reply or report, not the user's message): DKIM-signed, sent to the
    original of an SRS address, and never itself bounced."""
    confirm: Callable[[], Awaitable[bool]] | None = field(default=None, compare=False)
    """Asked once the copy is done, just before the message is committed to the queue:
    False withdraws it (vacation's memory: a reply went to this sender meanwhile)."""


class Outbox(Protocol):
    """Where the messages filters send are queued, in two steps around the filing of the copy:
    prepared (durable but not yet visible) before it, committed once it is done, or aborted."""

    async def prepare_outbound(self, outbound: Outbound, cause: str) -> Any:
        """Spool *outbound* (sent for the message queued as *cause*); raises when it cannot."""
        ...

    async def commit(self, prepared: Any) -> None: ...

    async def abort(self, prepared: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class Filing:
    """Where one mailbox's copy is filed: (folder, IMAP flags) pairs, the folder a Maildir++
    name (``"Junk"``, ``"Lists.dev"``) or None for INBOX. No pair at all: discarded.

    ``sends`` are the messages to send once the copy is done. ``refusal`` is a reason
    to refuse the message in SMTP (Sieve's reject, RFC 5429 §2.1.1): when the caller
    still talks to the client and this is the only recipient, the message is refused
    with it and ``sends`` are dropped (they hold the notice sent otherwise)."""

    copies: tuple[tuple[str | None, tuple[str, ...]], ...] = ((None, ()),)
    sends: tuple[Outbound, ...] = ()
    refusal: str | None = None
    message: bytes | None = None
    """The copy as it is filed when the filter changed it (Sieve's editheader); None: as it came."""

    @classmethod
    def into(cls, folder: str | None, flags: tuple[str, ...] = ()) -> Filing:
        return cls(((folder, flags),))


INBOX = Filing()


class Filter(Protocol):
    """Chooses where a mailbox's copy is filed: the plug-in point for Sieve and DMARC quarantine.

    ``file`` returns a :class:`Filing`. It runs on the reactor thread for every local
    copy of every message, so it must be quick or await blocking work on a thread
    pool. It must not raise: a filter that cannot decide files into INBOX (Sieve's
    implicit keep, RFC 5228 §2.10.2). A folder name the Maildir layout refuses
    is logged and the copy goes to INBOX; a folder that does not exist yet is
    created.
    """

    async def file(self, copy: LocalCopy) -> Filing: ...


class MessageSigner(Protocol):
    """Adds the headers that authenticate mail a local user sends (DKIM-Signature).

    Returns the message as it is to be sent; a message it cannot or need not sign
    comes back unchanged. Blocking work (the signature) runs off the reactor.
    """

    async def sign(self, message: bytes, queue_id: str) -> bytes: ...

    async def seal(self, message: bytes, domain: str, queue_id: str) -> bytes:
        """The message with an ARC set of ``domain`` (RFC 8617), for a copy we forward."""
        ...
