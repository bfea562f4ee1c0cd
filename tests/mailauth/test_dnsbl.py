"""DNS block and allow lists (RFC 5782) on port 25."""

from __future__ import annotations

import pytest

from mailstack.checks import DKIMVerifier, DNSLists, InboundChecks
from mailstack.checks.dnsbl import query_name
from mailstack.dns import MXResolver
from mailstack.envelope import Envelope
from mailstack.interfaces import ClientInfo
from mailstack.smtp.reply import SMTPReplyError
from mailstack.testing_dns import SERVFAIL, FakeResolver

from .helpers import inline, run

ZONES = {
    "99.2.0.192.bl.test": {"A": ["127.0.0.2"]},
    "99.2.0.192.other.test": {"A": ["127.0.0.4"]},
    "98.2.0.192.bl.test": {"A": ["127.255.255.254"]},  # "query refused", not a listing
    "97.2.0.192.bl.test": {"A": ["192.0.2.1"]},  # outside 127/8: not a listing
    "99.2.0.192.wl.test": {"A": ["127.0.10.1"]},
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test": {"A": ["127.0.0.2"]},
    "96.2.0.192.broken.test": SERVFAIL,
}


def blocked(ip: str, block: tuple[str, ...] = ("bl.test",), allow: tuple[str, ...] = ()) -> str | None:
    return run(DNSLists(MXResolver(FakeResolver(ZONES)), block, allow).blocked_by(ip))


def test_listing_rules():
    assert query_name("192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    assert query_name("2001:db8::1", "bl.test") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test")
    assert blocked("192.0.2.99") == "bl.test"
    assert blocked("2001:db8::1") == "bl.test"
    assert blocked("192.0.2.98") is None and blocked("192.0.2.97") is None and blocked("192.0.2.1") is None
    assert blocked("192.0.2.96", ("broken.test",)) is None  # a failed lookup lists nobody
    assert blocked("192.0.2.99", ("nothere.test", "other.test")) == "other.test"
    assert blocked("192.0.2.99", allow=("wl.test",)) is None  # allowed: block lists not asked


def test_a_listed_client_is_refused_naming_the_list():
    async def no_keys(name: str) -> list[bytes]:
        return []

    checks = InboundChecks("mx.b.test", DKIMVerifier(no_keys, inline),
                           lists=DNSLists(MXResolver(FakeResolver(ZONES)), ("bl.test",)))
    listed = ClientInfo("192.0.2.99", "spammer.example", False, None, False)
    with pytest.raises(SMTPReplyError) as refused:
        run(checks.check(listed, Envelope("Q1", "x@spammer.example"), b"Subject: x\r\n\r\nhi\r\n"))
    assert (refused.value.reply.code, refused.value.reply.enhanced) == (554, "5.7.1")
    assert "listed at bl.test" in refused.value.reply.lines()[0]
    clean = ClientInfo("192.0.2.1", "ok.example", False, None, False)
    assert run(checks.check(clean, Envelope("Q2", "x@ok.example"), b"Subject: x\r\n\r\nhi\r\n")).startswith(
        b"Authentication-Results: mx.b.test;")
