"""DMARC (RFC 7489): does SPF or DKIM vouch for the domain in ``From:``, and what does it ask for.

Policy discovery (§6.6.3): the TXT record at ``_dmarc.<From domain>``, else at
``_dmarc.<organizational domain>``; only records starting with ``v=DMARC1``
count, and several of them count as none. The organizational domain comes from
the Public Suffix List, through the maintained ``publicsuffixlist`` package.

Alignment (§3.1): a DKIM ``pass`` whose ``d=`` is the From domain (``adkim=s``)
or shares its organizational domain (``adkim=r``, the default), or an SPF
``pass`` for a MAIL FROM (or HELO) domain that does the same under ``aspf``.
Either is a DMARC ``pass``; otherwise ``fail``, and the policy applies:
``p=`` (``sp=`` for a subdomain whose record came from the organizational
domain), sampled by ``pct=`` (§6.6.4: outside the sample, one step milder).
A lookup that fails is ``temperror`` and a message without exactly one From
address ``permerror``; no policy applies to either.
"""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from mailstack.checks.dkim_verify import DKIMResult
from mailstack.checks.spf import SPFResult
from mailstack.dkim.signer import from_addresses, from_domain
from mailstack.dns import DNSError, dns_name

POLICIES = ("none", "quarantine", "reject")
_MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_PSL: PublicSuffixList | None = None
_PSL_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4096)  # three lookups a message, mostly of the same few domains
def organizational_domain(domain: str) -> str:
    """The registered domain under the Public Suffix List (``mail.example.co.uk`` -> ``example.co.uk``)."""
    global _PSL
    if _PSL is None:
        with _PSL_LOCK:  # read once (about 40 ms), by the start-up warm-up unless a message came first
            if _PSL is None:
                _PSL = PublicSuffixList()
    domain = domain.lower().rstrip(".")
    return str(_PSL.privatesuffix(domain) or domain)


@dataclass(frozen=True, slots=True)
class Policy:
    p: str
    sp: str
    pct: int
    adkim: str  # "r" or "s"
    aspf: str


def parse_record(text: bytes) -> Policy | None:
    """A DMARC record's policy, or None when the text is not a usable DMARC record."""
    return _parse_record(text) if len(text) <= 1024 else _parse_record.__wrapped__(text)


@functools.lru_cache(maxsize=1024)  # real records are under 300 octets; longer ones are parsed, not kept
def _parse_record(text: bytes) -> Policy | None:
    try:
        value = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    tags: dict[str, str] = {}
    for part in value.split(";"):
        name, sep, tag_value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), tag_value.strip())
    first = value.split(";", 1)[0].replace(" ", "")
    if first != "v=DMARC1":
        return None  # §6.4: v= must come first
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        if "rua" not in tags:
            return None  # §6.6.3: no usable policy and nowhere to report: not a record
        p = "none"
    sp = tags.get("sp", "").lower()
    try:
        pct = min(100, max(0, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    return Policy(p, sp if sp in POLICIES else p, pct,
                  "s" if tags.get("adkim", "r").lower() == "s" else "r",
                  "s" if tags.get("aspf", "r").lower() == "s" else "r")


@dataclass(frozen=True, slots=True)
class DMARCResult:
    result: str  # none, pass, fail, temperror, permerror
    from_domain: str = ""
    policy: str = ""  # the p= (or sp=) that applied
    disposition: str = "none"  # what is done with it: none, quarantine, reject
    reason: str = ""
    override: str = ""  # why the policy was not applied (RFC 7489 §7.2: trusted_forwarder)

    def resinfo(self) -> str:
        text = f"dmarc={self.result}"
        if self.policy:
            text += f" (p={self.policy} dis={self.disposition}"
            text += f"; {self.override})" if self.override else ")"
        elif self.reason:
            text += f" ({self.reason})"
        return text + (f" header.from={self.from_domain}" if self.from_domain else "")


class DMARCChecker:
    """Evaluates DMARC from the SPF and DKIM results of one message (see the module docstring)."""

    def __init__(self, lookup_txt: Callable[[str], Awaitable[list[bytes]]],
                 sample: Callable[[], float] = random.random) -> None:
        self.lookup_txt = lookup_txt
        self.sample = sample  # in [0, 1): pct= sampling

    async def check(self, message: bytes, spf: SPFResult | None, dkim: list[DKIMResult]) -> DMARCResult:
        domain = from_domain(message)
        if domain is None:
            fields, addresses = from_addresses(message)
            if fields <= 1 and len(addresses) <= 1:
                return DMARCResult("none", reason="no From domain" if not addresses else "the From domain is not a domain name")
            # §6.6.1: several From headers or addresses (a second one can hide a forged first one
            # from the reader) are refused, like an unaligned message under p=reject
            return DMARCResult("permerror", reason="not exactly one From address", disposition="reject")
        org = organizational_domain(domain)
        try:
            policy, found = await self._policy(domain)
            inherited = False
            if not found and org != domain:
                (policy, found), inherited = await self._policy(org), True
        except DNSError as e:
            return DMARCResult("temperror" if e.temporary else "permerror", domain, reason=e.message)
        if policy is None:
            return DMARCResult("none", domain, reason="several DMARC records" if found else "")
        dkim_ok = any(r.result == "pass" and _aligned(r.domain, domain, policy.adkim) for r in dkim)
        spf_ok = spf is not None and spf.result == "pass" and _aligned(spf.domain, domain, policy.aspf)
        applied = policy.sp if inherited else policy.p
        if dkim_ok or spf_ok:
            return DMARCResult("pass", domain, applied, "none")
        disposition = applied
        if applied != "none" and self.sample() * 100 >= policy.pct:
            disposition = _MILDER[applied]
        return DMARCResult("fail", domain, applied, disposition)

    async def _policy(self, domain: str) -> tuple[Policy | None, bool]:
        """The policy published for ``domain``, and whether any DMARC record was there (several
        of them, or one without a usable policy: none applies, and discovery stops, §6.6.3)."""
        texts = [t for t in await self.lookup_txt(f"_dmarc.{domain}") if t.replace(b" ", b"").startswith(b"v=DMARC1")]
        records = [p for p in map(parse_record, texts) if p is not None]
        return (records[0] if len(records) == 1 and len(texts) == 1 else None), bool(texts)


def _aligned(identifier: str, from_dom: str, mode: str) -> bool:
    name = dns_name(identifier)  # A-labels on both sides: an IDN From aligns with its xn-- d=
    if name is None:
        return False
    identifier = name
    if mode == "s":
        return identifier == from_dom
    return organizational_domain(identifier) == organizational_domain(from_dom)
