"""The submission role, ports 587 (STARTTLS) and 465 (implicit TLS): RFC 6409, RFC 8314.

MAIL needs a prior AUTH (530 5.7.0); the envelope sender must be the
authenticated user's own address, one of its aliases, or an address or domain
granted to it (``mailstack user allow-sender``; 553 5.7.1 otherwise), and the
null sender is refused; any recipient domain is accepted. A user past
``limits.send_per_hour`` (or its sender domain past ``send_per_hour_domain``)
gets 451 4.7.1 at MAIL. RFC 6409 §8.2-8.3:
a missing ``Message-ID`` or ``Date`` header is added.
"""

from __future__ import annotations

from mailstack.accounts.store import AccountLookup
from mailstack.authresults import strip_claims
from mailstack.envelope import Envelope, RecipientRoute
from mailstack.interfaces import ClientInfo, SendRate
from mailstack.ratelimit import admit, refuse_if_over
from mailstack.routing import route_recipient
from mailstack.smtp import message as msg
from mailstack.smtp import reply as R
from mailstack.smtp.reply import SMTPReplyError


class SubmissionPolicy:
    auth_required = True

    def __init__(self, store: AccountLookup, hostname: str, rate: SendRate | None = None) -> None:
        self.store = store
        self.hostname = hostname
        self.rate = rate

    def check_sender(self, client: ClientInfo, sender: str) -> None:
        user = client.auth_user
        if user is None:
            raise SMTPReplyError(R.AUTH_REQUIRED)
        if not sender or not self.store.owns(user, sender):
            raise SMTPReplyError(R.SENDER_NOT_OWNED, cause=f"{user} may not send as <{sender}>")
        refuse_if_over(self.rate, user, sender)  # told before the message is sent

    def check_rcpt(self, client: ClientInfo, address: str) -> RecipientRoute:
        return route_recipient(self.store, address, relay_allowed=True)

    async def check_message(self, client: ClientInfo, envelope: Envelope, message: bytes) -> bytes:
        # A local user's own mail: signed on its way out, not checked; but a verdict in our
        # name is ours alone to write (RFC 8601 §5), so a colleague is never shown a forged one.
        admit(self.rate, client.auth_user, envelope.sender)  # parallel sessions past MAIL are counted here
        return strip_claims(message, self.hostname)

    def prepare_message(self, envelope: Envelope, headers: bytes) -> bytes:
        extra = []
        if not msg.has_header(headers, b"Message-ID"):
            extra.append(f"Message-ID: {msg.message_id(self.hostname, envelope.queue_id)}\r\n")
        if not msg.has_header(headers, b"Date"):
            extra.append(f"Date: {msg.rfc2822_date()}\r\n")
        return "".join(extra).encode("ascii")
