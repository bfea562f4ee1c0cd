"""The port-25 role: receive mail for local domains; relay only for trusted clients.

Recipients in local domains must exist (user, alias or catch-all: 550 5.1.1
otherwise). A recipient in any other domain is relayed only for a client in
``relay.networks`` or one that authenticated (after STARTTLS); everyone else
gets 554 5.7.1 "Relay access denied". Percent hacks, bang paths and quoted
local parts are never routed anywhere (``user%other@local`` is just an unknown
local user), and a source route is ignored, so ``@local:user@other`` is judged
by ``user@other``. A client that authenticated (after STARTTLS) may relay, but
only as its own address or aliases, as on submission.
"""

from __future__ import annotations

from mailstack.accounts.directory import domain_of
from mailstack.accounts.store import AccountLookup
from mailstack.checks import InboundChecks
from mailstack.envelope import Envelope, RecipientRoute
from mailstack.interfaces import ClientInfo, SendRate
from mailstack.ratelimit import admit, refuse_if_over
from mailstack.routing import route_recipient
from mailstack.smtp import reply as R
from mailstack.smtp.reply import SMTPReplyError
from mailstack.srs import SRS


class InboundPolicy:
    auth_required = False

    def __init__(self, store: AccountLookup, checks: InboundChecks | None = None, srs: SRS | None = None,
                 rate: SendRate | None = None) -> None:
        self.store = store
        self.checks = checks
        self.srs = srs
        self.rate = rate  # a client that logged in here counts against its sending limits as on 587

    def check_sender(self, client: ClientInfo, sender: str) -> None:
        """An authenticated client sends as itself, as on submission (RFC 6409 §4.3)."""
        user = client.auth_user
        if user is not None and (not sender or not self.store.owns(user, sender)):
            raise SMTPReplyError(R.SENDER_NOT_OWNED, cause=f"{user} may not send as <{sender}>")
        refuse_if_over(self.rate, user, sender)

    def check_rcpt(self, client: ClientInfo, address: str) -> RecipientRoute:
        if self.srs is not None and SRS.is_srs(address) and self.store.is_local_domain(domain_of(address)):
            original = self.srs.reverse(address)  # a bounce of mail one of our aliases forwarded
            if original is None:
                raise SMTPReplyError(R.NO_SUCH_USER, cause=f"invalid or expired SRS address {address}")
            return RecipientRoute(address, (), (original,))
        relay_allowed = client.trusted_network or client.auth_user is not None
        return route_recipient(self.store, address, relay_allowed=relay_allowed)

    def prepare_message(self, envelope: Envelope, headers: bytes) -> bytes:
        return b""

    async def check_message(self, client: ClientInfo, envelope: Envelope, message: bytes) -> bytes:
        admit(self.rate, client.auth_user, envelope.sender)
        if self.checks is None:
            return message
        return await self.checks.check(client, envelope, message)
