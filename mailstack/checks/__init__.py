"""Checks of mail arriving on port 25 from other servers: what it proves about its origin.

:class:`InboundChecks` removes forged ``Authentication-Results`` headers,
evaluates SPF (:mod:`.spf`), verifies the DKIM signatures (:mod:`.dkim_verify`)
and prepends one ``Authentication-Results`` header (:mod:`.results`). Mail from authenticated
clients and relay networks is not checked: it is ours.
"""

from __future__ import annotations

from mailstack.checks import results
from mailstack.checks.dkim_verify import DKIMResult, DKIMVerifier
from mailstack.checks.spf import SPFChecker, SPFResult
from mailstack.envelope import Envelope
from mailstack.interfaces import ClientInfo

__all__ = ["DKIMResult", "DKIMVerifier", "InboundChecks", "SPFChecker", "SPFResult"]


class InboundChecks:
    """What the port-25 policy runs on each message at the end of DATA (see the module docstring)."""

    def __init__(self, authserv_id: str, dkim: DKIMVerifier, spf: SPFChecker | None = None) -> None:
        self.authserv_id = authserv_id
        self.dkim = dkim
        self.spf = spf

    async def check(self, client: ClientInfo, envelope: Envelope, message: bytes) -> bytes:
        """The message as it is to be delivered: forged results removed, our results prepended."""
        if client.auth_user is not None or client.trusted_network:
            return message
        message = results.strip_claims(message, self.authserv_id)
        resinfo = []
        if self.spf is not None:
            resinfo.append((await self.spf.check(client.ip, envelope.sender, client.helo)).resinfo())
        found = await self.dkim.verify(message)
        resinfo += [r.resinfo() for r in found] or ["dkim=none"]
        return results.header(self.authserv_id, resinfo) + message
