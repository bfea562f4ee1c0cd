"""DKIM verification on port 25 (RFC 6376 §6) and the Authentication-Results header (RFC 8601)."""

from __future__ import annotations

import base64
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.defer import Deferred

from mailstack.authresults import header, strip_claims
from mailstack.checks import DKIMVerifier, InboundChecks
from mailstack.dkim import DKIMSigner, KeyDirectory, KeyStore
from mailstack.dns import DNSError
from mailstack.envelope import Envelope
from mailstack.interfaces import ClientInfo
from mailstack.smtp.reply import SMTPReplyError

from .helpers import inline, run, settle

MESSAGE = (b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: hello\r\n"
           b"Date: Tue, 01 Dec 2026 00:00:00 +0000\r\nMessage-ID: <m1@a.test>\r\n\r\nHi Bob.\r\n")


SMALL_KEY = b"""-----BEGIN RSA PRIVATE KEY-----
MIIBOgIBAAJBAMpHa89izv2zxqCQx8H6ctTGuzXv/v3KwHokrBungkyUF36lJIiJ
zuFFZ+IZFoaRw+1z7vMSqoaapD/ZxgdN5XECAwEAAQJAEHzt3sOxF6D1ydTDU550
ib+BNw5O/KTwN4SRutdWmaM7hGp0swShGBTABFHwILQnEnbOsT2Ov4g5KA9S+OQR
uQIhAOe4EE4Cmog/0Bkl1RylA6yociAqcHX/nCG9vSYNhmJ/AiEA33meqBBdruAN
T9WSEVUIr7psCynOxfd4Ad8nT1xB4A8CIBCy+CHXGDHnf2TAkDovPjOMNCVTSaWH
VUYtOVtrsBqbAiAKpG8Sz9y2REM+BwyyuJr2S2lzyqTnNpbHeAoWNG2KrwIhANfU
7tG0jK+OQv7JcxxPzmRY2+4iijqWJ4aXfbz51hRX
-----END RSA PRIVATE KEY-----
"""


class Zone:
    """TXT answers by name, as the server's resolver gives them (or its errors)."""

    def __init__(self) -> None:
        self.records: dict[str, list[bytes]] = {}
        self.errors: dict[str, DNSError] = {}
        self.asked: list[str] = []

    async def lookup_txt(self, name: str) -> list[bytes]:
        self.asked.append(name)
        if name in self.errors:
            raise self.errors[name]
        return self.records.get(name, [])


@pytest.fixture
def signed(tmp_path):
    keys = KeyDirectory(tmp_path / "dkim")
    keys.generate("a.test", "rsa", selector="r1")
    keys.generate("a.test", "ed25519", selector="e1")
    zone = Zone()
    for key in keys.keys("a.test"):
        zone.records[key.record_name()] = [key.record_text().encode()]
    return DKIMSigner(KeyStore(keys)).sign(MESSAGE), zone


def results(message: bytes, zone: Zone, **kw: Any) -> list[tuple[str, str, str]]:
    found = run(DKIMVerifier(zone.lookup_txt, inline, **kw).verify(message))
    return [(r.result, r.domain, r.selector) for r in found]


def test_good_signatures_pass_and_a_changed_message_fails(signed):
    message, zone = signed
    assert results(message, zone) == [("pass", "a.test", "r1"), ("pass", "a.test", "e1")]
    changed = message.replace(b"Hi Bob.", b"Hi Eve.")
    assert results(changed, zone) == [("fail", "a.test", "r1"), ("fail", "a.test", "e1")]
    assert results(MESSAGE, zone) == []  # unsigned: nothing to report but "none"


def test_small_messages_are_checked_at_once_and_large_ones_on_the_pool(signed, tmp_path):
    from mailstack.checks.dkim_verify import INLINE_LIMIT

    message, zone = signed
    pooled: list[int] = []

    async def pool(fn: Any, *args: Any) -> Any:
        pooled.append(len(args[0]))
        return fn(*args)

    verifier = DKIMVerifier(zone.lookup_txt, pool)
    assert [r.result for r in run(verifier.verify(message))] == ["pass", "pass"] and pooled == []
    keys = KeyDirectory(tmp_path / "big")
    key = keys.generate("a.test", "rsa", selector="big")
    zone.records[key.record_name()] = [key.record_text().encode()]
    large = DKIMSigner(KeyStore(keys)).sign(MESSAGE.replace(b"Hi Bob.", b"x" * 72 + b"\r\n") * 1 +
                                            (b"y" * 70 + b"\r\n") * (INLINE_LIMIT // 72 + 1))
    assert [r.result for r in run(verifier.verify(large))] == ["pass"] and pooled == [len(large)]
    assert [r.result for r in run(verifier.verify(large.replace(b"yyyy", b"zzzz", 1)))] == ["fail"]


def test_a_key_is_parsed_once_and_used_only_for_its_own_signature(signed, monkeypatch):
    message, zone = signed
    parsed: list[bytes] = []
    original = dkim.evaluate_pk
    monkeypatch.setattr(dkim, "evaluate_pk", lambda name, record: parsed.append(record) or original(name, record))
    tags = dkim.parse_tag_value
    read: list[bytes] = []
    monkeypatch.setattr(dkim, "parse_tag_value", lambda value: read.append(value) or tags(value))
    verifier = DKIMVerifier(zone.lookup_txt, inline)
    for _ in range(3):
        assert [r.result for r in run(verifier.verify(message))] == ["pass", "pass"]
    assert len(parsed) == 2  # one RSA, one Ed25519 record, each parsed on its first use
    assert len([v for v in read if b"bh=" in v]) == 6  # each signature's tags read once a message
    # a signature header rewritten to name e1 (Ed25519) while keeping r1's RSA signature
    swapped = message.replace(b"s=r1;", b"s=e1;", 1)
    found = run(verifier.verify(swapped))[0]
    assert (found.result, found.selector) == ("permerror", "e1") and "unverifiable" in found.reason


def test_missing_or_broken_keys_are_permerrors_and_dns_trouble_a_temperror(signed):
    message, zone = signed
    zone.records["e1._domainkey.a.test"] = [b"v=DKIM1; k=ed25519; p=!!!"]
    del zone.records["r1._domainkey.a.test"]
    assert results(message, zone) == [("permerror", "a.test", "r1"), ("permerror", "a.test", "e1")]
    zone.errors["r1._domainkey.a.test"] = DNSError("timed out", temporary=True, status="4.4.3")
    assert results(message, zone)[0] == ("temperror", "a.test", "r1")


def test_rsa_keys_under_1024_bits_are_refused(tmp_path):
    pem = SMALL_KEY  # `openssl genrsa -traditional 512`: cryptography will not make one
    small = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(small, rsa.RSAPrivateKey) and small.key_size == 512
    message = dkim.sign(MESSAGE, b"s", b"a.test", pem, canonicalize=(b"relaxed", b"relaxed")) + MESSAGE
    der = small.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    zone = Zone()
    zone.records["s._domainkey.a.test"] = [b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)]
    [found] = run(DKIMVerifier(zone.lookup_txt, inline).verify(message))
    assert (found.result, found.reason) == ("permerror", "key too short (512 bits)")


def test_malformed_signature_headers_are_permerrors_without_a_lookup(signed):
    _, zone = signed
    for bad in (b"DKIM-Signature: garbage\r\n", b"DKIM-Signature: v=1; a=rsa-sha256; d=a.test\r\n",
                b"DKIM-Signature: v=1; a=rsa-sha256; d=a.test; s=r1; h=from; bh=; b=;;;=\r\n"):
        [found] = run(DKIMVerifier(zone.lookup_txt, inline).verify(bad + MESSAGE))
        assert found.result == "permerror" and found.reason.startswith("malformed signature")
    assert zone.asked == []


def test_at_most_the_configured_number_of_signatures_is_checked(signed):
    message, zone = signed
    first = message[:message.index(b"DKIM-Signature", 10)]  # the first signature header
    flood = first * 50 + message
    found = run(DKIMVerifier(zone.lookup_txt, inline, max_signatures=3).verify(flood))
    assert [r.result for r in found] == ["pass"] * 3 + ["policy"]  # one line for the rest, however many
    assert found[3].reason == "49 more signatures not checked (at most 3 are)"
    assert len(zone.asked) == 3


def test_a_signature_over_absurdly_many_fields_is_refused_and_many_fields_are_checked_on_the_pool(signed):
    from mailstack.checks.dkim_verify import MAX_SIGNED_FIELDS

    message, zone = signed
    names = b":".join(b"x-%d" % i for i in range(MAX_SIGNED_FIELDS + 1))
    greedy = message.replace(b"h=from", b"h=" + names + b":from", 1)
    [found, _] = run(DKIMVerifier(zone.lookup_txt, inline).verify(greedy))
    assert found.result == "permerror" and found.reason.endswith(" header fields, more than 256")
    pooled: list[int] = []

    async def pool(fn: Any, *args: Any) -> Any:
        pooled.append(1)
        return fn(*args)

    crowded = b"".join(b"X%d: y\r\n" % i for i in range(4000)) + message  # 40 KB, but 4000 fields
    assert [r.result for r in run(DKIMVerifier(zone.lookup_txt, pool).verify(crowded))] == ["pass", "pass"]
    assert pooled == [1, 1]


def test_results_header_and_forged_claims(signed):
    message, zone = signed
    assert header("mx.b.test", []) == b"Authentication-Results: mx.b.test; none\r\n"
    forged = (b"Authentication-Results: MX.B.TEST (forged);\r\n\tdkim=pass header.d=bank.test\r\n"
              b"Authentication-Results: other.example; dkim=fail\r\n" + message)
    stripped = strip_claims(forged, "mx.b.test")
    assert stripped.startswith(b"Authentication-Results: other.example; dkim=fail\r\n")
    assert b"bank.test" not in stripped and stripped.endswith(message)
    checks = InboundChecks("mx.b.test", DKIMVerifier(zone.lookup_txt, inline))
    stranger = ClientInfo("192.0.2.1", "mail.a.test", True, None, False)
    out = run(checks.check(stranger, Envelope("Q1", "alice@a.test"), forged))
    first = out.split(b"\r\n\r\n")[0]
    assert first.startswith(b"Authentication-Results: mx.b.test;\r\n\tdkim=pass header.d=a.test header.s=r1 header.b=")
    assert first.count(b"mx.b.test") == 1 and b"bank.test" not in first
    for trusted in (ClientInfo("127.0.0.1", "x", False, None, True), ClientInfo("192.0.2.1", "x", True, "u@b.test", False)):
        # ours: unchecked and given no verdict, but never one forged in our name either
        assert run(checks.check(trusted, Envelope("Q2", "alice@a.test"), forged)) == stripped


def test_a_key_lookup_that_times_out_is_a_temperror_and_nothing_waits_forever():
    from twisted.internet import defer
    from twisted.internet.task import Clock
    from twisted.names import error

    from mailstack.checks import DMARCChecker
    from mailstack.dns import MXResolver

    clock = Clock()

    class SilentResolver:
        """A resolver whose queries are never answered: its own timeout fires on the clock."""

        def lookupText(self, name: bytes | str, timeout: object = None) -> defer.Deferred:
            d: defer.Deferred = defer.Deferred()
            clock.callLater(10, d.errback, error.DNSQueryTimeoutError(name))
            return d

    resolver = MXResolver(SilentResolver())
    signed = b"DKIM-Signature: v=1; a=rsa-sha256; d=a.test; s=r1; h=from; bh=AAAA; b=BBBB\r\n" + MESSAGE
    verifying = Deferred.fromCoroutine(DKIMVerifier(resolver.lookup_txt, inline).verify(signed))
    policy = Deferred.fromCoroutine(DMARCChecker(resolver.lookup_txt).check(MESSAGE, None, []))
    assert not verifying.called and not policy.called  # waiting on the network, not blocking
    clock.advance(10)
    [found] = settle(verifying)
    assert (found.result, found.domain, found.selector) == ("temperror", "a.test", "r1")
    assert settle(policy).result == "temperror"


def test_arc_chains_are_validated_and_carried_on_when_we_forward(tmp_path):
    from mailstack.checks import ARCVerifier

    first = KeyDirectory(tmp_path / "first")
    first.generate("fwd1.test", "rsa", selector="f1")
    ours = KeyDirectory(tmp_path / "ours")
    ours.generate("b.test", "rsa", selector="b1")
    zone = Zone()
    for keys, domain in ((first, "fwd1.test"), (ours, "b.test")):
        for key in keys.keys(domain):
            zone.records[key.record_name()] = [key.record_text().encode()]
    arrived = b"Authentication-Results: mx.fwd1.test; spf=pass smtp.mailfrom=alice@a.test\r\n" + MESSAGE
    sealed_once = DKIMSigner(KeyStore(first), "mx.fwd1.test").seal(arrived, "fwd1.test")
    verifier = ARCVerifier(zone.lookup_txt, inline)
    assert run(verifier.verify(MESSAGE)).result == "none"
    result = run(verifier.verify(sealed_once))
    assert (result.result, result.sets, result.resinfo()) == ("pass", 1, "arc=pass")
    assert run(verifier.verify(sealed_once.replace(b"Hi Bob.", b"Hi Eve."))).result == "fail"
    # We received it, checked it (arc=pass in our header) and forward it: a second set, cv=pass.
    checks = InboundChecks("mx.b.test", DKIMVerifier(zone.lookup_txt, inline), arc=verifier)
    stranger = ClientInfo("192.0.2.1", "mx.fwd1.test", True, None, False)
    checked = run(checks.check(stranger, Envelope("Q1", "alice@a.test"), sealed_once))
    assert b"\tarc=pass\r\n" in checked.split(b"\r\n\r\n")[0]
    sealed_twice = DKIMSigner(KeyStore(ours), "mx.b.test").seal(checked, "b.test")
    assert b"ARC-Seal: i=2; cv=pass;" in sealed_twice
    assert run(verifier.verify(sealed_twice)).result == "pass"
    zone.errors["f1._domainkey.fwd1.test"] = DNSError("timed out", temporary=True, status="4.4.3")
    assert run(verifier.verify(sealed_once)).result == "temperror"
    broken = b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=exa..mple; s=x; b=AA\r\n" + MESSAGE
    assert run(verifier.verify(broken)).result == "fail"


def test_a_trusted_list_that_saw_dmarc_pass_vouches_for_mail_it_changed(tmp_path):
    from mailstack.checks import ARCVerifier, CheckPolicy, DMARCChecker

    author, lists = KeyDirectory(tmp_path / "author"), KeyDirectory(tmp_path / "list")
    author.generate("a.test", "rsa", selector="a1")
    lists.generate("list.test", "rsa", selector="l1")
    zone = Zone()
    for keys, domain in ((author, "a.test"), (lists, "list.test")):
        for key in keys.keys(domain):
            zone.records[key.record_name()] = [key.record_text().encode()]
    zone.records["_dmarc.a.test"] = [b"v=DMARC1; p=reject"]
    list_host = ClientInfo("192.0.2.7", "mx.list.test", True, None, False)

    def checks(authserv: str, trusted: tuple[str, ...] = ()) -> InboundChecks:
        policy = (CheckPolicy(arc_trusted=trusted) if authserv == "mx.b.test"
                  else CheckPolicy(dmarc_reject=False, dmarc_quarantine=False))  # the list only reports
        return InboundChecks(authserv, DKIMVerifier(zone.lookup_txt, inline), None, DMARCChecker(zone.lookup_txt),
                             policy, arc=ARCVerifier(zone.lookup_txt, inline))

    # The list receives alice's signed post (DMARC passes there), tags the subject, and seals it.
    signed = DKIMSigner(KeyStore(author)).sign(MESSAGE)
    at_list = run(checks("mx.list.test").check(list_host, Envelope("Q1", "alice@a.test"), signed))
    assert b"dmarc=pass" in at_list.split(b"\r\n\r\n")[0]
    changed = at_list.replace(b"Subject: hello", b"Subject: [team] hello")
    posted = DKIMSigner(KeyStore(lists), "mx.list.test").seal(changed, "list.test")
    envelope = Envelope("Q2", "team-bounces@list.test")
    # Here alice's signature fails and the list's envelope domain is not aligned: p=reject applies...
    with pytest.raises(SMTPReplyError) as refused:
        run(checks("mx.b.test").check(list_host, envelope, posted))
    assert refused.value.reply.code == 550
    # ...unless the list is a trusted sealer: its chain passes and it saw DMARC pass.
    out = run(checks("mx.b.test", ("list.test",)).check(list_host, envelope, posted))
    ours = " ".join(out.split(b"\r\n\r\n")[0].decode().split("Authentication-Results: mx.b.test;")[1]
                    .split("\r\n")[0:6])
    assert "dkim=fail" in ours and "arc=pass" in ours
    assert "dmarc=fail (p=reject dis=none; trusted ARC sealer list.test) header.from=a.test" in ours
    # A trusted name on a broken chain, or a chain whose sealer saw DMARC fail, vouches for nothing.
    with pytest.raises(SMTPReplyError):
        run(checks("mx.b.test", ("list.test",)).check(list_host, envelope, posted.replace(b"Hi Bob.", b"Hi Eve.")))
    unverified = run(checks("mx.list.test").check(list_host, Envelope("Q3", "alice@a.test"), MESSAGE))
    assert b"dmarc=fail" in unverified.split(b"\r\n\r\n")[0]  # unsigned: the list saw it fail
    resealed = DKIMSigner(KeyStore(lists), "mx.list.test").seal(unverified, "list.test")
    with pytest.raises(SMTPReplyError):
        run(checks("mx.b.test", ("list.test",)).check(list_host, envelope, resealed))
