"""DMARC (RFC 7489): policy discovery, alignment, sp= and pct=, and what the port-25 policy does."""

from __future__ import annotations

import pytest

from mailstack.checks import CheckPolicy, DKIMResult, DKIMVerifier, DMARCChecker, InboundChecks, QuarantineFilter
from mailstack.checks.dmarc import organizational_domain, parse_record
from mailstack.checks.spf import SPFResult
from mailstack.delivery import InboxFilter
from mailstack.dns import DNSError
from mailstack.envelope import Envelope
from mailstack.interfaces import INBOX, ClientInfo, Filing, LocalCopy
from mailstack.smtp.reply import SMTPReplyError

from .helpers import inline, run


class Zone:
    def __init__(self, records: dict[str, list[bytes]], broken: tuple[str, ...] = ()) -> None:
        self.records = records
        self.broken = broken

    async def lookup_txt(self, name: str) -> list[bytes]:
        if name in self.broken:
            raise DNSError("timed out", temporary=True, status="4.4.3")
        return self.records.get(name, [])


ZONE = Zone({
    "_dmarc.example.org": [b"v=DMARC1; p=reject; sp=quarantine; adkim=r; aspf=r"],
    "_dmarc.strict.org": [b"v=DMARC1; p=reject; adkim=s; aspf=s"],
    "_dmarc.half.org": [b"v=DMARC1; p=reject; pct=50"],
    "_dmarc.twice.org": [b"v=DMARC1; p=reject", b"v=DMARC1; p=none"],
    "_dmarc.junk.org": [b"v=DMARC1; p=bogus; x=1"],
    "_dmarc.reports.org": [b"v=DMARC1; p=bogus; rua=mailto:d@reports.org"],
    "example.org": [b"v=spf1 -all"],  # not a DMARC record: ignored
}, broken=("_dmarc.slow.org",))


def message(from_: str) -> bytes:
    return f"From: {from_}\r\nTo: bob@b.test\r\nSubject: x\r\n\r\nbody\r\n".encode()


def spf_pass(domain: str) -> SPFResult:
    return SPFResult("pass", "mailfrom", f"bounce@{domain}")


def dkim_pass(domain: str) -> list[DKIMResult]:
    return [DKIMResult("pass", domain, "s1")]


def dmarc(from_: str, spf: SPFResult | None = None, dkim: list[DKIMResult] | None = None, sample: float = 0.0):
    return run(DMARCChecker(ZONE.lookup_txt, sample=lambda: sample).check(message(from_), spf, dkim or []))


def test_records_are_read_as_rfc_7489_says():
    assert parse_record(b"v=DMARC1; p=quarantine; pct=20").p == "quarantine"  # type: ignore[union-attr]
    assert parse_record(b"p=reject; v=DMARC1") is None  # v= must come first
    assert parse_record(b"v=DMARC1; p=bogus") is None  # no usable policy, no rua
    assert parse_record(b"v=DMARC1; p=bogus; rua=mailto:x@y").p == "none"  # type: ignore[union-attr]
    assert parse_record(b"v=DMARC1; p=reject; pct=500; adkim=z").pct == 100  # type: ignore[union-attr]
    assert parse_record(b"\xff\xfe") is None
    assert organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert organizational_domain("a.b.example.org") == "example.org"


def test_aligned_spf_or_dkim_passes_relaxed_and_strict():
    assert dmarc("ceo@example.org", spf=spf_pass("example.org")).result == "pass"
    assert dmarc("ceo@example.org", dkim=dkim_pass("mail.example.org")).result == "pass"  # relaxed: same org
    assert dmarc("ceo@strict.org", dkim=dkim_pass("mail.strict.org")).result == "fail"  # strict: exact only
    assert dmarc("ceo@strict.org", dkim=dkim_pass("strict.org")).result == "pass"
    unaligned = dmarc("ceo@example.org", spf=spf_pass("other.example"), dkim=dkim_pass("other.example"))
    assert (unaligned.result, unaligned.policy, unaligned.disposition) == ("fail", "reject", "reject")
    assert unaligned.resinfo() == "dmarc=fail (p=reject dis=reject) header.from=example.org"


def test_subdomains_inherit_sp_and_pct_samples():
    sub = dmarc("ceo@news.example.org")
    assert (sub.result, sub.policy, sub.disposition) == ("fail", "quarantine", "quarantine")
    assert dmarc("ceo@half.org", sample=0.2).disposition == "reject"
    assert dmarc("ceo@half.org", sample=0.7).disposition == "quarantine"  # outside pct: one step milder


def test_no_record_several_records_dns_trouble_and_bad_from():
    assert dmarc("ceo@nowhere.org").result == "none"
    assert dmarc("ceo@twice.org").result == "none"  # several records: no policy (§6.6.3)
    assert dmarc("ceo@junk.org").result == "none"
    assert dmarc("ceo@reports.org").policy == "none"
    assert dmarc("ceo@slow.org").result == "temperror"
    two = run(DMARCChecker(ZONE.lookup_txt).check(b"From: a@x.org\r\nFrom: b@y.org\r\n\r\nhi\r\n", None, []))
    assert two.result == "permerror"


def checks(policy: CheckPolicy, spf: object = None) -> InboundChecks:
    async def no_keys(name: str) -> list[bytes]:
        return []

    return InboundChecks("mx.b.test", DKIMVerifier(no_keys, inline), spf,  # type: ignore[arg-type]
                         DMARCChecker(ZONE.lookup_txt), policy)


STRANGER = ClientInfo("192.0.2.1", "mail.attacker.example", True, None, False)


def test_reject_quarantine_and_their_switches():
    with pytest.raises(SMTPReplyError) as refused:
        run(checks(CheckPolicy()).check(STRANGER, Envelope("Q1", "x@attacker.example"), message("ceo@example.org")))
    assert (refused.value.reply.code, refused.value.reply.enhanced) == (550, "5.7.1")
    softened = run(checks(CheckPolicy(dmarc_reject=False)).check(STRANGER, Envelope("Q2", "x@attacker.example"),
                                                                  message("ceo@example.org")))
    assert b"dmarc=fail (p=reject dis=quarantine) header.from=example.org" in softened
    filed = QuarantineFilter("mx.b.test", InboxFilter())
    assert run(filed.file(LocalCopy("Q2", "x", "bob@b.test", "bob@b.test", softened))) == Filing.into("Junk")
    off = run(checks(CheckPolicy(dmarc_reject=False, dmarc_quarantine=False)).check(
        STRANGER, Envelope("Q3", "x@attacker.example"), message("ceo@example.org")))
    assert b"dis=none" in off
    assert run(filed.file(LocalCopy("Q3", "x", "bob@b.test", "bob@b.test", off))) == INBOX


def test_quarantine_goes_to_the_folder_with_the_junk_use():
    softened = run(checks(CheckPolicy(dmarc_reject=False)).check(STRANGER, Envelope("Q6", "x@attacker.example"),
                                                                  message("ceo@example.org")))
    asked = []

    async def spam_folder(mailbox: str) -> str:
        asked.append(mailbox)
        return "Spam"

    async def broken(mailbox: str) -> str:
        raise OSError("disk gone")

    copy = LocalCopy("Q6", "x", "bob@b.test", "bob+tag@b.test", softened)
    assert run(QuarantineFilter("mx.b.test", InboxFilter(), spam_folder).file(copy)) == Filing.into("Spam")
    assert asked == ["bob@b.test"]  # the mailbox, not the address it was sent to
    assert run(QuarantineFilter("mx.b.test", InboxFilter(), broken).file(copy)) == Filing.into("Junk")


def test_a_forged_quarantine_verdict_from_outside_files_nothing_into_junk():
    filed = QuarantineFilter("mx.b.test", InboxFilter())
    forged = b"Authentication-Results: mx.b.test; dmarc=fail (p=quarantine dis=quarantine)\r\n" + message("a@x.org")
    cleaned = run(checks(CheckPolicy()).check(STRANGER, Envelope("Q4", "x@attacker.example"), forged))
    assert run(filed.file(LocalCopy("Q4", "x", "bob@b.test", "bob@b.test", cleaned))) == INBOX


def test_temperror_is_accepted_or_deferred_as_configured():
    envelope = Envelope("Q5", "x@attacker.example")
    tagged = run(checks(CheckPolicy()).check(STRANGER, envelope, message("ceo@slow.org")))
    assert b"dmarc=temperror" in tagged
    with pytest.raises(SMTPReplyError) as deferred:
        run(checks(CheckPolicy(defer_temperror=True)).check(STRANGER, envelope, message("ceo@slow.org")))
    assert (deferred.value.reply.code, deferred.value.reply.enhanced) == (451, "4.4.3")


def test_spf_fail_without_a_dmarc_policy_is_tagged_or_refused():
    class FailingSPF:
        async def check(self, ip: str, sender: str, helo: str) -> SPFResult:
            return SPFResult("fail", "mailfrom", sender, "not permitted")

    envelope = Envelope("Q6", "x@nowhere.org")
    tagged = run(checks(CheckPolicy(), FailingSPF()).check(STRANGER, envelope, message("x@nowhere.org")))
    assert b"spf=fail (not permitted) smtp.mailfrom=x@nowhere.org" in tagged
    with pytest.raises(SMTPReplyError) as refused:
        run(checks(CheckPolicy(spf_reject=True), FailingSPF()).check(STRANGER, envelope, message("x@nowhere.org")))
    assert (refused.value.reply.code, refused.value.reply.enhanced) == (550, "5.7.23")
