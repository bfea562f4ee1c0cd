"""Checks of mail arriving on port 25 from other servers: what it proves about its origin.

:class:`InboundChecks` removes forged ``Authentication-Results`` headers,
evaluates SPF (:mod:`.spf`), verifies the DKIM signatures (:mod:`.dkim_verify`),
evaluates DMARC (:mod:`.dmarc`) and prepends one ``Authentication-Results`` header
(:mod:`.results`). Then :class:`CheckPolicy` decides: a DMARC ``reject`` is refused
with 550 5.7.1; a DMARC ``quarantine`` is delivered, and :class:`QuarantineFilter`
files it into Junk; an SPF ``fail`` without a DMARC policy is tagged, or refused with
550 5.7.23; a ``temperror`` is accepted as it is, or deferred with 451 4.4.3. Mail from
authenticated clients and relay networks is not checked: it is ours.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from twisted.logger import Logger

from mailstack import authresults as results
from mailstack.checks.arc_verify import ARCResult, ARCVerifier
from mailstack.checks.dkim_verify import DKIMResult, DKIMVerifier
from mailstack.checks.dmarc import DMARCChecker, DMARCResult
from mailstack.checks.dnsbl import DNSLists
from mailstack.checks.spf import SPFChecker, SPFResult
from mailstack.envelope import Envelope
from mailstack.interfaces import ClientInfo, Filing, Filter, LocalCopy
from mailstack.smtp import reply as R
from mailstack.smtp.reply import SMTPReplyError

__all__ = ["ARCResult", "ARCVerifier", "CheckPolicy", "DKIMResult", "DKIMVerifier", "DMARCChecker", "DMARCResult", "DNSLists", "InboundChecks",
           "QuarantineFilter", "SPFChecker", "SPFResult"]

log = Logger()

JUNK = "Junk"


@dataclass(frozen=True, slots=True)
class CheckPolicy:
    """What is done with a message the checks found wanting (``[checks]`` in the configuration)."""

    dmarc_reject: bool = True  # p=reject failures get 550 5.7.1 (else: quarantined)
    dmarc_quarantine: bool = True  # p=quarantine failures go to Junk (else: delivered, tagged)
    spf_reject: bool = False  # an SPF fail with no DMARC policy gets 550 5.7.23 (else: tagged)
    defer_temperror: bool = False  # a DNS failure during the checks gets 451 4.4.3 (else: tagged)
    arc_trusted: tuple[str, ...] = ()  # ARC sealers whose word on DMARC is taken (a list, a forwarder)


class InboundChecks:
    """What the port-25 policy runs on each message at the end of DATA (see the module docstring)."""

    def __init__(self, authserv_id: str, dkim: DKIMVerifier, spf: SPFChecker | None = None,
                 dmarc: DMARCChecker | None = None, policy: CheckPolicy | None = None,
                 lists: DNSLists | None = None, arc: ARCVerifier | None = None) -> None:
        self.authserv_id = authserv_id
        self.lists = lists
        self.arc = arc
        self.dkim = dkim
        self.spf = spf
        self.dmarc = dmarc
        self.policy = policy or CheckPolicy()

    async def check(self, client: ClientInfo, envelope: Envelope, message: bytes) -> bytes:
        """The message as it is to be delivered: forged results removed, our results prepended.

        Raises SMTPReplyError when the policy refuses it.
        """
        if client.auth_user is not None or client.trusted_network:
            return results.strip_claims(message, self.authserv_id)  # ours, not checked: no verdict either
        if self.lists is not None:
            zone = await self.lists.blocked_by(client.ip)
            if zone is not None:
                raise SMTPReplyError(R.BLOCK_LISTED.with_text(f"Client host [{client.ip}] is listed at {zone}"),
                                     cause=f"[{client.ip}] listed at {zone}")
        message = results.strip_claims(message, self.authserv_id)
        resinfo = []
        # Both on the reactor from cached DNS answers, as a rule: nothing to gain by overlapping them.
        spf = await self.spf.check(client.ip, envelope.sender, client.helo) if self.spf is not None else None
        found = await self.dkim.verify(message)
        if spf is not None:
            resinfo.append(spf.resinfo())
        resinfo += [r.resinfo() for r in found] or ["dkim=none"]
        arc = await self.arc.verify(message) if self.arc is not None else None
        if arc is not None:  # carried on as cv= by the ARC set we add if we forward it
            resinfo.append(arc.resinfo())
        dmarc = None
        if self.dmarc is not None:
            dmarc = await self.dmarc.check(message, spf, found)
            if dmarc.disposition == "reject" and not self.policy.dmarc_reject:
                dmarc = replace(dmarc, disposition="quarantine")
            if dmarc.disposition == "quarantine" and not self.policy.dmarc_quarantine:
                dmarc = replace(dmarc, disposition="none")
            if dmarc.result == "fail" and dmarc.disposition != "none" and self._vouched_for(arc):
                assert arc is not None
                dmarc = replace(dmarc, disposition="none", override=f"trusted ARC sealer {arc.sealer}")
            resinfo.append(dmarc.resinfo())
        self._decide(envelope, spf, found, dmarc)
        return results.header(self.authserv_id, resinfo) + message

    def _vouched_for(self, arc: ARCResult | None) -> bool:
        """Did a trusted hop that changed the message see it pass DMARC (RFC 8617 §7.2)?"""
        return (arc is not None and arc.result == "pass" and arc.sealer in self.policy.arc_trusted
                and arc.sealer_saw_dmarc_pass)

    def _decide(self, envelope: Envelope, spf: SPFResult | None, dkim: list[DKIMResult],
                dmarc: DMARCResult | None) -> None:
        """Raise the refusal the policy asks for, if any (the reason goes to the log)."""
        results_seen = [r.result for r in dkim] + [x.result for x in (spf, dmarc) if x is not None]
        if self.policy.defer_temperror and "temperror" in results_seen:
            raise SMTPReplyError(R.CHECKS_TEMPFAIL, cause="a DNS lookup failed during the checks")
        if dmarc is not None and dmarc.disposition == "reject" and not dmarc.from_domain:
            raise SMTPReplyError(R.DMARC_REJECT.with_text(
                "Message rejected: it must have exactly one From address (RFC 5322, RFC 7489 section 6.6.1)"),
                cause="several From addresses")
        if dmarc is not None and dmarc.disposition == "reject":
            raise SMTPReplyError(R.DMARC_REJECT.with_text(
                f"Message rejected: {dmarc.from_domain} publishes a DMARC reject policy and neither "
                "SPF nor DKIM confirms it sent this message"),
                cause=f"DMARC fail for {dmarc.from_domain} (p={dmarc.policy})")
        no_policy = dmarc is None or dmarc.result in ("none", "permerror")
        if self.policy.spf_reject and spf is not None and spf.result == "fail" and no_policy:
            raise SMTPReplyError(R.SPF_FAIL, cause=f"SPF fail for {spf.value}")


class QuarantineFilter:
    """Files a copy into the user's junk folder when our own Authentication-Results says
    DMARC asked for quarantine.

    The header is trusted because :class:`InboundChecks` removed every incoming one that
    claims our name before adding its own; the first one naming us is ours. Any other copy
    is left to ``then`` (the next filter: INBOX by default, Sieve later). ``junk_folder``
    names a mailbox's folder with the ``\\Junk`` use (RFC 6154; a user can give it to
    another folder); without it, or when it fails, the folder is Junk.
    """

    def __init__(self, authserv_id: str, then: Filter,
                 junk_folder: Callable[[str], Awaitable[str]] | None = None) -> None:
        self.authserv_id = authserv_id
        self.then = then
        self.junk_folder = junk_folder

    async def file(self, copy: LocalCopy) -> Filing:
        ours = results.our_header(copy.message, self.authserv_id)
        if ours is not None and b"dis=quarantine" in ours:
            return Filing.into(await self._junk(copy))
        return await self.then.file(copy)

    async def _junk(self, copy: LocalCopy) -> str:
        if self.junk_folder is None:
            return JUNK
        try:
            return await self.junk_folder(copy.mailbox)
        except Exception as e:  # a filter must not raise (interfaces.Filter)
            log.warn("{queue_id}: cannot tell the junk folder of <{mailbox}> ({error}); filed into {junk}",
                     queue_id=copy.queue_id, mailbox=copy.mailbox, error=e, junk=JUNK)
            return JUNK
