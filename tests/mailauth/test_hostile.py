"""Hostile input to the port-25 checks: each ends in a defined result, quickly, never a crash."""

from __future__ import annotations

import time

import pytest

from mailstack.authresults import strip_claims
from mailstack.checks import CheckPolicy, DKIMVerifier, DMARCChecker, DNSLists, InboundChecks, SPFChecker
from mailstack.checks.dnsbl import query_name
from mailstack.dkim import DKIMSigner, KeyDirectory, KeyStore, from_domain
from mailstack.dns import MXResolver
from mailstack.envelope import Envelope
from mailstack.interfaces import ClientInfo
from mailstack.smtp.reply import SMTPReplyError
from mailstack.testing_dns import FakeResolver

from .helpers import inline, run
from .test_spf import ZONES as SPF_ZONES

STRANGER = ClientInfo("192.0.2.1", "mail.attacker.example", True, None, False)
BODY = b"Subject: x\r\n\r\nbody\r\n"


def checks(zones: dict, policy: CheckPolicy | None = None) -> InboundChecks:
    resolver = MXResolver(FakeResolver(zones))
    return InboundChecks("mx.b.test", DKIMVerifier(resolver.lookup_txt, inline), None,
                         DMARCChecker(resolver.lookup_txt), policy or CheckPolicy())


def test_a_deeply_nested_comment_is_read_in_linear_time():
    deep = b"Authentication-Results: " + b"(" * 40_000 + b")" * 40_000 + b" mx.b.test; dkim=pass\r\n"
    start = time.perf_counter()
    assert strip_claims(deep + BODY, "mx.b.test") == deep + BODY  # the id sits past the 4 KiB looked at
    many = b"".join(b"Authentication-Results: other.example; dkim=pass\r\n" for _ in range(30_000))
    assert strip_claims(many + BODY, "mx.b.test") == many + BODY
    assert time.perf_counter() - start < 2.0  # quadratic parsing took minutes


@pytest.mark.parametrize("forged", [
    b"Authentication-Results: mx.b.test; dkim=pass header.d=bank.test\r\n",  # no blank line at all
    b"Authentication-Results: (x;y) mx.b.test; dkim=pass header.d=bank.test\r\n\r\nbody\r\n",
    b'Authentication-Results: "mx.b.test"; dkim=pass header.d=bank.test\r\n\r\nbody\r\n',
    b"authentication-results : MX.B.TEST;\r\n dkim=pass header.d=bank.test\r\n\r\nbody\r\n",
])
def test_every_form_of_a_claim_in_our_name_is_removed(forged):
    assert b"bank.test" not in strip_claims(forged, "mx.b.test")


@pytest.mark.parametrize("froms", [
    b"From: ceo@paypal.test\r\nFrom: x@evil.test\r\n",
    b"From: ceo@paypal.test, x@evil.test\r\n",
])
def test_more_than_one_from_is_refused(froms):
    with pytest.raises(SMTPReplyError) as refused:
        run(checks({}).check(STRANGER, Envelope("Q1", "x@evil.test"), froms + BODY))
    assert refused.value.reply.code == 550 and "exactly one From address" in refused.value.reply.lines()[0]


def test_odd_from_lines_and_names_give_results_not_crashes():
    for line in (b"From: a@[x;dmarc=pass]\r\n", b"From: a@" + b"x" * 70 + b".com\r\n", b"From: a@exa..mple.com\r\n",
                 b"From: \xff\xfe@\xff.com\r\n", b"From: <>\r\n"):
        out = run(checks({}).check(STRANGER, Envelope("Q2", "x@evil.test"), line + BODY))
        head = out.split(b"\r\n\r\n")[0]
        assert b"dmarc=none" in head and b"dmarc=pass" not in head.split(b"From:")[0]
    assert from_domain(b"From: a@[x;dmarc=pass]\r\n\r\n") is None
    assert from_domain("From: a@bücher.example\r\n\r\n".encode()) == "xn--bcher-kva.example"


@pytest.mark.parametrize("signature", [
    b"DKIM-Signature: expired\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=a.test; s=" + b"s" * 70 + b"; h=from; bh=AAAA; b=BBBB\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=exa..mple.com; s=s1; h=from; bh=AAAA; b=BBBB\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=a.test; s=s(1; h=from; bh=AAAA; b=BBBB\r\n",
])
def test_broken_signatures_are_permerrors_and_never_reach_our_header_raw(signature):
    resolver = MXResolver(FakeResolver({}))
    [found] = run(DKIMVerifier(resolver.lookup_txt, inline).verify(signature + BODY))
    assert found.result == "permerror"
    assert "(" not in found.resinfo().split(")", 1)[-1]  # nothing of theirs opens a comment in ours


def test_an_idn_from_aligns_with_its_a_label_signature(tmp_path):
    keys = KeyDirectory(tmp_path / "dkim")
    key = keys.generate("xn--bcher-kva.example", "ed25519", selector="s1")
    message = "From: shop@bücher.example\r\nTo: bob@b.test\r\nSubject: x\r\n\r\nbody\r\n".encode()
    signed = DKIMSigner(KeyStore(keys)).sign(message)
    zones = {key.record_name(): {"TXT": [key.record_text()]},
             "_dmarc.xn--bcher-kva.example": {"TXT": ["v=DMARC1; p=reject"]}}
    out = run(checks(zones).check(STRANGER, Envelope("Q3", "shop@xn--bcher-kva.example"), signed))
    assert b"dmarc=pass (p=reject dis=none) header.from=xn--bcher-kva.example" in out


def test_spf_evaluation_is_bounded_in_time():
    checker = SPFChecker(MXResolver(FakeResolver(SPF_ZONES)), hostname="mx", timeout=1e-9)
    found = run(checker.check("192.0.2.10", "alice@inc.test", "client.example"))
    assert found.result == "temperror"


def test_dns_lists_see_ipv4_clients_on_a_dual_stack_listener_and_ignore_refusals():
    assert query_name("::ffff:192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    zones = {"99.2.0.192.bl.test": {"A": ["127.0.0.2"]}, "99.2.0.192.wl.test": {"A": ["127.0.0.255"]}}
    lists = DNSLists(MXResolver(FakeResolver(zones)), ("bl.test",), ("wl.test",))
    assert run(lists.blocked_by("::ffff:192.0.2.99")) == "bl.test"  # 127.0.0.255 from the allow list: refused


def test_a_from_domain_no_file_system_takes_has_no_keys(tmp_path):
    store = KeyStore(KeyDirectory(tmp_path / "dkim"))
    assert store.signing_keys("a\0b.test") == [] and store.signing_keys("x" * 300 + ".test") == []


def test_enormous_values_from_a_sender_are_parsed_but_never_kept():
    from mailstack.checks.dmarc import _parse_record, parse_record
    from mailstack.dkim.signer import _addresses, from_addresses
    from mailstack.dns import _dns_name, dns_name

    before = (_addresses.cache_info().currsize, _dns_name.cache_info().currsize, _parse_record.cache_info().currsize)
    huge = b"From: " + b"a" * 5000 + b"@b.test,\r\n " + b"c@d.test\r\n\r\nbody\r\n"
    assert from_addresses(huge) == (1, ["a" * 5000 + "@b.test", "c@d.test"])
    assert dns_name("x" * 600 + ".test") is None
    assert parse_record(b"v=DMARC1; p=reject; x=" + b"y" * 5000) is not None
    after = (_addresses.cache_info().currsize, _dns_name.cache_info().currsize, _parse_record.cache_info().currsize)
    assert after == before
