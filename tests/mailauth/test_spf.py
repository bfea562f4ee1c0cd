"""SPF (RFC 7208) through the server's resolver: results, limits, macros, HELO for null senders."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

import mailstack.checks.spf as spf_module
from mailstack.checks import SPFChecker
from mailstack.dns import MXResolver
from mailstack.testing_dns import SERVFAIL, TIMEOUT, FakeResolver

from .helpers import settle

ZONES: dict[str, Any] = {
    "a.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"], "MX": [(10, "mx.a.test")]},
    "mx.a.test": {"A": ["192.0.2.20"]},
    "soft.test": {"TXT": ["v=spf1 ~all"]},
    "neutral.test": {"TXT": ["v=spf1 ?all"]},
    "mx.test": {"TXT": ["v=spf1 mx:a.test -all"]},
    "inc.test": {"TXT": ["v=spf1 include:a.test -all"]},
    "redir.test": {"TXT": ["v=spf1 redirect=a.test"]},
    "loop.test": {"TXT": ["v=spf1 include:loop.test -all"]},
    "many.test": {"TXT": ["v=spf1 " + " ".join(f"a:h{i}.many.test" for i in range(11)) + " -all"]},
    **{f"h{i}.many.test": {"A": ["198.51.100.1"]} for i in range(11)},
    "void.test": {"TXT": ["v=spf1 a:v1.void.test a:v2.void.test a:v3.void.test -all"]},
    "macro.test": {"TXT": ["v=spf1 exists:%{ir}.%{l}.allow.macro.test -all"]},
    "10.2.0.192.alice.allow.macro.test": {"A": ["127.0.0.2"]},
    "junk.test": {"TXT": ["v=spf1 ip4:192.0.2.300 -all"]},
    "two.test": {"TXT": ["v=spf1 -all", "v=spf1 +all"]},
    "dnsfail.test": {"TXT": ["v=spf1 include:broken.test -all"]},
    "broken.test": SERVFAIL,
    "slow.test": TIMEOUT,
    "nospf.test": {"TXT": ["some other text"]},
    "helo.a.test": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
    "ptr.test": {"TXT": ["v=spf1 ptr -all"]},
    "10.2.0.192.in-addr.arpa": {"PTR": ["host.ptr.test"]},
    "host.ptr.test": {"A": ["192.0.2.10"]},
    "exp.test": {"TXT": ["v=spf1 -all exp=why.exp.test"]},
    "why.exp.test": {"TXT": ["%{i} is not one of %{d}'s senders"]},
}


def spf(sender: str, ip: str = "192.0.2.10", helo: str = "client.example") -> tuple[str, str]:
    checker = SPFChecker(MXResolver(FakeResolver(ZONES)), hostname="mx.b.test")
    found = settle(Deferred.fromCoroutine(checker.check(ip, sender, helo)))
    return found.result, found.resinfo()


@pytest.mark.parametrize(("sender", "ip", "expected"), [
    ("alice@a.test", "192.0.2.10", "pass"),
    ("alice@a.test", "192.0.2.99", "fail"),
    ("alice@soft.test", "192.0.2.99", "softfail"),
    ("alice@neutral.test", "192.0.2.99", "neutral"),
    ("alice@mx.test", "192.0.2.20", "pass"),  # mx:a.test -> mx.a.test -> 192.0.2.20
    ("alice@inc.test", "192.0.2.10", "pass"),
    ("alice@redir.test", "192.0.2.99", "fail"),
    ("alice@macro.test", "192.0.2.10", "pass"),  # exists with %{ir} and %{l}
    ("bob@macro.test", "192.0.2.10", "fail"),
    ("alice@ptr.test", "192.0.2.10", "pass"),
    ("alice@nospf.test", "192.0.2.10", "none"),
    ("alice@nowhere.test", "192.0.2.10", "none"),
])
def test_results(sender, ip, expected):
    assert spf(sender, ip)[0] == expected


@pytest.mark.parametrize(("sender", "expected"), [
    ("alice@loop.test", "permerror"),  # include loop
    ("alice@many.test", "permerror"),  # more than 10 DNS-querying terms (RFC 7208 §4.6.4)
    ("alice@void.test", "permerror"),  # more than 2 void lookups
    ("alice@junk.test", "permerror"),  # a record that does not parse
    ("alice@two.test", "permerror"),  # two SPF records (RFC 7208 §4.5)
    ("alice@dnsfail.test", "temperror"),
    ("alice@slow.test", "temperror"),
])
def test_errors_have_defined_results(sender, expected):
    assert spf(sender, "192.0.2.99")[0] == expected


def test_null_sender_checks_the_helo_name():
    assert spf("", helo="helo.a.test") == ("pass", "spf=pass smtp.helo=helo.a.test")
    result, text = spf("", ip="192.0.2.99", helo="helo.a.test")
    assert result == "fail" and text.endswith(" smtp.helo=helo.a.test")
    assert spf("", helo="[192.0.2.10]")[0] == "none"  # an address literal names no domain


def test_resinfo_names_the_identity():
    assert spf("alice@a.test") == ("pass", "spf=pass smtp.mailfrom=alice@a.test")
    result, text = spf("alice@a.test", "192.0.2.99")
    assert result == "fail" and text.startswith("spf=fail (") and text.endswith(" smtp.mailfrom=alice@a.test")


def test_a_fail_carries_the_domains_explanation():
    result, text = spf("alice@exp.test", "192.0.2.99")
    assert result == "fail" and "192.0.2.99 is not one of exp.test's senders" in text


def test_answers_at_hand_need_no_query_and_missing_ones_are_asked_once_each():
    fake = FakeResolver(ZONES)
    clock = Clock()
    checker = SPFChecker(MXResolver(fake, clock=clock.seconds), hostname="mx.b.test")
    assert settle(Deferred.fromCoroutine(checker.check("192.0.2.20", "alice@mx.test", "h"))).result == "pass"
    assert sorted(fake.queries) == sorted(set(fake.queries))  # each answer fetched once over all rounds
    asked = len(fake.queries)
    assert settle(Deferred.fromCoroutine(checker.check("192.0.2.20", "bob@mx.test", "h"))).result == "pass"
    assert len(fake.queries) == asked  # the next message's evaluation ran from the cache alone


class SlowResolver(FakeResolver):
    """Each query takes ``seconds`` on the clock."""

    def __init__(self, zones: dict[str, Any], clock: Clock, seconds: float) -> None:
        super().__init__(zones)
        self.clock = clock
        self.seconds = seconds

    def _lookup(self, name: str | bytes, rtype: int) -> Deferred[Any]:
        self.clock.advance(self.seconds)
        return super()._lookup(name, rtype)


def test_an_evaluation_is_bounded_in_time_and_in_queries(monkeypatch):
    clock = Clock()
    checker = SPFChecker(MXResolver(SlowResolver(ZONES, clock, 8)), hostname="mx", timeout=20, clock=clock.seconds)
    found = settle(Deferred.fromCoroutine(checker.check("192.0.2.20", "alice@mx.test", "h")))  # three queries
    assert (found.result, found.reason) == ("temperror", "SPF evaluation took longer than 20 s")
    assert clock.seconds() == 24  # given up after the query that passed the limit
    monkeypatch.setattr(spf_module, "MAX_ROUNDS", 2)
    found = settle(Deferred.fromCoroutine(SPFChecker(MXResolver(FakeResolver(ZONES)), hostname="mx")
                                          .check("192.0.2.20", "alice@mx.test", "h")))
    assert (found.result, found.reason) == ("temperror", "SPF evaluation needed more than 2 DNS queries")


HOSTILE: dict[str, Any] = {
    "big.test": {"TXT": ["v=spf1 " + " ".join(f"ip4:10.0.{i // 250}.{i % 250}" for i in range(900)) + " -all"]},
    "crowd.test": {"TXT": ["v=spf1 a:many.crowd.test -all"]},
    "many.crowd.test": {"A": [f"198.51.100.{i}" for i in range(1, 40)]},
    "wide.test": {"TXT": ["v=spf1 mx -all"], "MX": [(i, f"m{i}.wide.test") for i in range(3)]},
    **{f"m{i}.wide.test": {"A": [f"203.0.113.{i + 1}"]} for i in range(3)},
}


def test_what_a_hostile_record_can_cost_is_bounded(monkeypatch):
    def check(sender: str, ip: str = "192.0.2.99") -> Any:
        checker = SPFChecker(MXResolver(FakeResolver(HOSTILE)), hostname="mx")
        return settle(Deferred.fromCoroutine(checker.check(ip, sender, "h")))

    found = check("x@big.test")  # 10 KiB of TXT is far beyond any real record
    assert (found.result, found.reason) == ("permerror", "big.test has more than 10240 octets of TXT (SPF evaluation limit)")
    found = check("x@crowd.test")  # a name with more addresses than anyone publishes
    assert (found.result, found.reason) == ("permerror", "many.crowd.test has more than 32 records (SPF evaluation limit)")
    monkeypatch.setattr(spf_module, "CPU_BUDGET", 0.0)
    found = check("x@wide.test")
    assert (found.result, found.reason) == ("permerror", "SPF evaluation needs more than 0 ms of CPU")


def test_the_addresses_of_mx_hosts_are_fetched_with_the_mx_answer():
    fake = FakeResolver(HOSTILE)
    checker = SPFChecker(MXResolver(fake), hostname="mx")
    rounds = []
    one_round = checker._round
    checker._round = lambda *args: rounds.append(1) or one_round(*args)  # type: ignore[method-assign]
    found = settle(Deferred.fromCoroutine(checker.check("203.0.113.3", "x@wide.test", "h")))
    assert found.result == "pass" and len(rounds) == 3  # the TXT, the MX with its hosts' A, then done
