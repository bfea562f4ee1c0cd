"""MTA-STS (RFC 8461) for outbound mail: policy and record grammar, the cache's rules, the HTTPS
fetch against a real TLS server on loopback (a throwaway CA trusted as relay.ca_file would be),
and the relay refusing what an enforce policy does not allow."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import pytest
import trustme
from twisted.internet import defer
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from mailstack.dns import MXHost, MXResolver
from mailstack.mtasts import (
    MAX_POLICY,
    MTASTS,
    HTTPSFetcher,
    Policy,
    PolicyError,
    mx_matches,
    parse_policy,
    parse_record,
    trust_root,
)
from mailstack.queue.relay import Relay
from mailstack.queue.spool import DELIVERED, PENDING, QueuedMessage, RecipientState
from mailstack.smtp.client import ClientError, TLSFailed, TransactionResult
from mailstack.smtp.reply import Reply
from mailstack.testing_dns import FakeResolver

GOOD = b"version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmx: *.backup.sts.test\r\nmax_age: 86400\r\n"


def run(coro: Any) -> Any:
    out: list[Any] = []
    defer.Deferred.fromCoroutine(coro).addBoth(out.append)
    return out[0]


# -- grammar -------------------------------------------------------------------------------------

def test_policy_parses():
    assert parse_policy(GOOD) == ("enforce", ("mx.sts.test", "*.backup.sts.test"), 86400)
    assert parse_policy(b"version: STSv1\nmode: none\nmax_age: 9999999999\n")[2] == 31557600


@pytest.mark.parametrize("body", [
    b"mode: enforce\nmx: a.test\nmax_age: 1\n",  # no version
    b"version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
    b"version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
    b"version: STSv1\nmode: enforce\nmax_age: 1\n",  # no mx
    b"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: soon\n",
    b"version: STSv1\nmode: enforce\nmx: *.*.a.test\nmax_age: 1\n",
    b"version: STSv1\nmode: enforce\nmx: a.test b.test\nmax_age: 1\n",
    b"version: STSv1\nmode: none\nmx: a_b.test\nmax_age: 1\n",
    "version: STSv1\nmode: enforce\nmx: jörg.test\nmax_age: 1\n".encode(),
    b"version: STSv1\nmode: enforce\n" + b"".join(b"mx: m%d.a.test\n" % i for i in range(101)) + b"max_age: 1\n",
    b"<html>not a policy</html>",
    b"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1\n" + b"#" * MAX_POLICY,
    b"\xff\xfe",
])
def test_bad_policies_are_refused(body):
    with pytest.raises(PolicyError):
        parse_policy(body)


def test_record_and_mx_patterns():
    assert parse_record([b"v=STSv1; id=20260101T000000;"]) == "20260101T000000"
    assert parse_record([b"v=spf1 -all", b"v=STSv1; id=abc"]) == "abc"
    assert parse_record([b"v=STSv1; id=a", b"v=STSv1; id=b"]) is None  # two: none (§3.1)
    assert parse_record([b"v=STSv10; id=a", b"v=STSv1; id=b"]) == "b"  # not a second STSv1 record
    assert parse_record([b"v=STSv1"]) is None and parse_record([b"v=STSv1; id=no-dash"]) is None
    assert parse_record([]) is None
    assert mx_matches("*.sts.test", "mx1.sts.test") and not mx_matches("*.sts.test", "a.b.sts.test")
    assert not mx_matches("*.sts.test", "sts.test") and mx_matches("MX.sts.test.", "mx.sts.test")


# -- the cache -----------------------------------------------------------------------------------

class Fetcher:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = 0

    async def fetch(self, domain):
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def sts(zones, fetcher, tmp_path=None, clock=None):
    path = tmp_path / "mta-sts.json" if tmp_path else None
    return MTASTS(MXResolver(FakeResolver(zones)), fetcher, cache_path=path, clock=clock or Clock())


def test_fetched_once_then_cached_while_the_id_holds(tmp_path):
    zones = {"_mta-sts.sts.test": {"TXT": ["v=STSv1; id=1"]}}
    fetcher = Fetcher(GOOD)
    resolver = sts(zones, fetcher, tmp_path)
    first = run(resolver.policy("sts.test"))
    assert first.mode == "enforce" and first.matches("mx.sts.test") and not first.matches("evil.test")
    assert run(resolver.policy("STS.test")) == first and fetcher.calls == 1
    # a restart keeps it: the cache file is read back
    again = sts(zones, Fetcher(), tmp_path)
    assert run(again.policy("sts.test")) == first


def test_a_new_id_refetches_and_a_failed_fetch_keeps_the_cached_policy():
    zones = {"_mta-sts.sts.test": {"TXT": ["v=STSv1; id=1"]}}
    fetcher = Fetcher(GOOD, PolicyError("hung"))
    resolver = sts(zones, fetcher)
    first = run(resolver.policy("sts.test"))
    zones["_mta-sts.sts.test"]["TXT"] = ["v=STSv1; id=2"]
    resolver.mx = MXResolver(FakeResolver(zones))
    assert run(resolver.policy("sts.test")) == first and fetcher.calls == 2


def test_a_stripped_record_does_not_drop_a_cached_policy_until_it_expires():
    zones: dict[str, Any] = {"_mta-sts.sts.test": {"TXT": ["v=STSv1; id=1"]}}
    clock = Clock()
    resolver = sts(zones, Fetcher(GOOD), clock=clock)
    first = run(resolver.policy("sts.test"))
    resolver.mx = MXResolver(FakeResolver({}))  # the attacker removes the TXT record
    assert run(resolver.policy("sts.test")) == first
    clock.now += 86400
    assert run(resolver.policy("sts.test")) is None


def test_no_record_or_a_failed_first_fetch_means_no_policy():
    assert run(sts({}, Fetcher()).policy("plain.test")) is None
    zones = {"_mta-sts.sts.test": {"TXT": ["v=STSv1; id=1"]}}
    assert run(sts(zones, Fetcher(PolicyError("redirected"))).policy("sts.test")) is None
    assert run(sts(zones, Fetcher(b"garbage")).policy("sts.test")) is None


# -- the relay under a policy ---------------------------------------------------------------------

class FakeMX:
    def __init__(self, *hosts):
        self.hosts = list(hosts)

    async def lookup(self, domain):
        return self.hosts


class FixedPolicy:
    def __init__(self, policy, known=True):
        self.value, self.known = policy, known

    async def lookup(self, domain):
        return self.value, self.known


def enforce(mode="enforce"):
    return Policy("sts.test", "1", mode, ("mx.sts.test",), 86400, 0.0)


def relay_with(policy, answer, hosts=(MXHost("mx.sts.test", 10, ("192.0.2.1",)),), known=True):
    calls = []

    async def send(**kw):
        calls.append(kw)
        result = answer(kw) if callable(answer) else answer
        if isinstance(result, Exception):
            raise result
        return result

    relay = Relay(reactor=None, mx=FakeMX(*hosts), hostname="out.test", port=25, tls_options="opportunistic",
                  send=send, mta_sts=FixedPolicy(policy, known), trust=trust_root(None))
    return relay, calls


def deliver(relay):
    msg = QueuedMessage("Q1", "s@out.test", 0.0, {"u@sts.test": RecipientState("u@sts.test")})
    return run(relay.deliver("sts.test", msg, ["u@sts.test"], b"x\r\n"))


def ok(kw):
    reply = Reply(250, "2.0.0", "ok")
    return TransactionResult({r: reply for r in kw["recipients"]}, reply, "mx", True)


def test_enforce_sends_only_with_verified_tls_to_named_hosts():
    relay, calls = relay_with(enforce(), ok)
    [state] = deliver(relay)
    assert state.status == DELIVERED
    assert calls[0]["starttls"] == "required" and calls[0]["tls_options"] != "opportunistic"


def test_enforce_refuses_a_downgraded_mx_and_defers():
    """No STARTTLS offered, or a certificate that does not verify: deferred (4.7.5), never sent in clear."""
    for error in (ClientError(Reply(451, "4.7.10", "does not offer STARTTLS"), True, "starttls"),
                  TLSFailed(Reply(421, "4.7.5", "certificate verify failed"), True, "starttls")):
        relay, calls = relay_with(enforce(), error)
        [state] = deliver(relay)
        assert state.status == PENDING and state.status_code == "4.7.5", state
        assert "MTA-STS" in state.last_error
        assert [c["starttls"] for c in calls] == ["required"]


def test_enforce_skips_mx_hosts_the_policy_does_not_name():
    relay, calls = relay_with(enforce(), ok, hosts=(MXHost("evil.test", 5, ("192.0.2.9",)),))
    [state] = deliver(relay)
    assert state.status == PENDING and state.status_code == "4.7.5" and calls == []
    assert "names none of its MX hosts" in state.last_error


def test_testing_mode_reports_and_sends_anyway():
    def answer(kw):
        if kw["starttls"] == "required":
            return TLSFailed(Reply(421, "4.7.5", "certificate verify failed"), True, "starttls")
        return ok(kw)

    relay, calls = relay_with(enforce("testing"), answer)
    [state] = deliver(relay)
    assert state.status == DELIVERED
    assert [c["starttls"] for c in calls] == ["required", "opportunistic"]


# -- fetching over real HTTPS ------------------------------------------------------------------------

class PolicyHost(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.mode = "good"
        self.pending = []

    def render_GET(self, request):
        if request.path != b"/.well-known/mta-sts.txt":
            request.setResponseCode(404)
            return b""
        if self.mode == "redirect":
            request.redirect(b"https://elsewhere.test/.well-known/mta-sts.txt")
            return b""
        if self.mode == "hang":
            self.pending.append(request)
            return NOT_DONE_YET
        if self.mode == "html":
            request.setHeader(b"content-type", b"text/html")
            return GOOD
        if self.mode == "cut":  # part of a policy, then the connection dies: no length, no end
            request.setHeader(b"content-type", b"text/plain")
            request.write(GOOD[:40])
            request.channel.transport.abortConnection()
            return NOT_DONE_YET
        request.setHeader(b"content-type", b"text/plain")
        if self.mode == "huge":
            return GOOD + b"#" * (MAX_POLICY * 4)
        return GOOD


class HTTPSFetchTests(TestCase):
    def mktemp(self):
        """A file name in a directory of its own, removed after the test (not under the cwd)."""
        directory = tempfile.mkdtemp(prefix="mta-sts-")
        self.addCleanup(shutil.rmtree, directory, True)
        return os.path.join(directory, "file")

    def setUp(self):
        ca = trustme.CA()
        self.ca_file = self.mktemp()
        ca.cert_pem.write_to_path(self.ca_file)
        cert = ca.issue_cert("mta-sts.sts.test")
        from twisted.internet.ssl import PrivateCertificate

        options = PrivateCertificate.loadPEM(cert.private_key_pem.bytes() + b"".join(
            c.bytes() for c in cert.cert_chain_pems)).options()
        self.host = PolicyHost()
        from twisted.internet import reactor  # the one installed now (an embedded server's test may have replaced it)

        self.reactor = reactor
        d = SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(Site(self.host))

        def listening(port):
            self.port = port
            self.addCleanup(port.stopListening)

        return d.addCallback(listening)

    def fetcher(self, ca_file=None, timeout=5.0):
        from pathlib import Path

        zones = {"mta-sts.sts.test": {"A": ["127.0.0.1"]}}
        trust = trust_root(Path(ca_file or self.ca_file))
        return HTTPSFetcher(self.reactor, MXResolver(FakeResolver(zones)), trust, port=self.port.getHost().port,
                            timeout=timeout)

    @defer.inlineCallbacks
    def test_a_policy_is_fetched_over_verified_tls(self):
        body = yield defer.Deferred.fromCoroutine(self.fetcher().fetch("sts.test"))
        self.assertEqual(body, GOOD)

    @defer.inlineCallbacks
    def test_an_untrusted_certificate_fails_the_fetch(self):
        other = trustme.CA()
        path = self.mktemp()
        other.cert_pem.write_to_path(path)
        with self.assertRaises(PolicyError):
            yield defer.Deferred.fromCoroutine(self.fetcher(path).fetch("sts.test"))

    @defer.inlineCallbacks
    def test_redirects_are_not_followed(self):
        self.host.mode = "redirect"
        with self.assertRaises(PolicyError) as caught:
            yield defer.Deferred.fromCoroutine(self.fetcher().fetch("sts.test"))
        self.assertIn("HTTP 302", str(caught.exception))

    @defer.inlineCallbacks
    def test_an_enormous_body_is_cut_off(self):
        self.host.mode = "huge"
        with self.assertRaises(PolicyError) as caught:
            yield defer.Deferred.fromCoroutine(self.fetcher().fetch("sts.test"))
        self.assertIn("larger than", str(caught.exception))

    @defer.inlineCallbacks
    def test_a_policy_served_as_html_or_cut_short_is_refused(self):
        for mode, words in (("html", ("not text/plain",)), ("cut", ("cut short", "lost"))):
            self.host.mode = mode
            with self.assertRaises(PolicyError) as caught:
                yield defer.Deferred.fromCoroutine(self.fetcher().fetch("sts.test"))
            self.assertTrue(any(w in str(caught.exception) for w in words), str(caught.exception))

    @defer.inlineCallbacks
    def test_a_hanging_host_times_out(self):
        self.host.mode = "hang"
        with self.assertRaises(PolicyError) as caught:
            yield defer.Deferred.fromCoroutine(self.fetcher(timeout=0.5).fetch("sts.test"))
        self.assertIn("no answer within", str(caught.exception))
        for request in self.host.pending:
            if not request.finished and not request._disconnected:
                request.finish()

    @defer.inlineCallbacks
    def test_cache_file_survives_with_a_real_fetch(self):
        cache = self.mktemp()
        from pathlib import Path

        zones = {"_mta-sts.sts.test": {"TXT": ["v=STSv1; id=7"]}}
        resolver = MTASTS(MXResolver(FakeResolver(zones)), self.fetcher(), cache_path=Path(cache))
        policy = yield defer.Deferred.fromCoroutine(resolver.policy("sts.test"))
        self.assertEqual((policy.mode, policy.id), ("enforce", "7"))
        self.assertEqual(json.loads(Path(cache).read_text())["sts.test"]["mx"], ["mx.sts.test", "*.backup.sts.test"])


# -- REQUIRETLS (RFC 8689) and TLS-Required: No ------------------------------------------------------

def deliver_message(relay, requiretls=False, body=b"Subject: x\r\n\r\nx\r\n"):
    msg = QueuedMessage("Q1", "s@out.test", 0.0, {"u@sts.test": RecipientState("u@sts.test")},
                        requiretls=requiretls)
    return run(relay.deliver("sts.test", msg, ["u@sts.test"], body))


def test_requiretls_without_a_policy_bounces_with_5_7_30_and_sends_nothing():
    relay, calls = relay_with(None, ok)
    [state] = deliver_message(relay, requiretls=True)
    assert (state.status, state.status_code) == ("failed", "5.7.30") and calls == []
    assert "publishes no MTA-STS policy" in state.last_error


def test_requiretls_goes_over_verified_tls_and_asks_the_next_hop_to_keep_it():
    relay, calls = relay_with(enforce("testing"), ok)  # testing mode counts as enforce here
    [state] = deliver_message(relay, requiretls=True)
    assert state.status == DELIVERED
    assert calls[0]["requiretls"] is True and calls[0]["starttls"] == "required"


def test_requiretls_to_a_server_that_does_not_offer_it_bounces_with_5_7_30():
    refusal = ClientError(Reply(550, "5.7.30", "mx.sts.test does not support REQUIRETLS"), False, "ehlo")
    relay, calls = relay_with(enforce(), refusal)
    [state] = deliver_message(relay, requiretls=True)
    assert (state.status, state.status_code) == ("failed", "5.7.30") and len(calls) == 1


def test_requiretls_with_a_certificate_that_fails_waits_rather_than_bounces():
    relay, _ = relay_with(enforce(), TLSFailed(Reply(421, "4.7.5", "certificate verify failed"), True, "starttls"))
    [state] = deliver_message(relay, requiretls=True)
    assert (state.status, state.status_code) == (PENDING, "4.7.5")


def test_tls_required_no_sets_the_policy_aside():
    def answer(kw):
        if kw["starttls"] == "required":
            return TLSFailed(Reply(421, "4.7.5", "certificate verify failed"), True, "starttls")
        return ok(kw)

    relay, calls = relay_with(enforce(), answer)
    [state] = deliver_message(relay, body=b"Subject: x\r\nTLS-Required: No\r\n\r\nx\r\n")
    assert state.status == DELIVERED and [c["starttls"] for c in calls] == ["opportunistic"]
    # with REQUIRETLS the header is ignored (RFC 8689 §5)
    relay, calls = relay_with(enforce(), answer)
    [state] = deliver_message(relay, requiretls=True, body=b"Subject: x\r\nTLS-Required: No\r\n\r\nx\r\n")
    assert state.status == PENDING and [c["starttls"] for c in calls] == ["required"]


def test_requiretls_waits_when_the_policy_cannot_be_looked_up_now():
    relay, calls = relay_with(None, ok, known=False)
    [state] = deliver_message(relay, requiretls=True)
    assert (state.status, state.status_code) == (PENDING, "4.7.5") and calls == []


def test_requiretls_bounces_only_when_every_server_refuses_it():
    hosts = (MXHost("mx.sts.test", 10, ("192.0.2.1", "192.0.2.2")),)
    answers = {"192.0.2.1": ClientError(Reply(550, "5.7.30", "no REQUIRETLS"), False, "ehlo"),
               "192.0.2.2": TLSFailed(Reply(421, "4.7.5", "handshake failed"), True, "starttls")}
    relay, calls = relay_with(enforce(), lambda kw: answers[kw["host"]], hosts=hosts)
    [state] = deliver_message(relay, requiretls=True)
    assert state.status == PENDING  # the second one may still offer it once its TLS works
    answers["192.0.2.2"] = answers["192.0.2.1"]
    relay, calls = relay_with(enforce(), lambda kw: answers[kw["host"]], hosts=hosts)
    [state] = deliver_message(relay, requiretls=True)
    assert (state.status, state.status_code) == ("failed", "5.7.30")


def test_a_folded_tls_required_header_counts():
    from mailstack.queue.relay import tls_not_required

    assert tls_not_required(b"Subject: x\r\nTLS-Required:\r\n No\r\n\r\nbody\r\n")
    assert not tls_not_required(b"Subject: x\r\n\r\nTLS-Required: No\r\n")  # in the body: no
    assert not tls_not_required(b"TLS-Required: Yes\r\n\r\n")


def test_the_cache_evicts_expired_then_lax_then_least_recently_used_policies():
    zones = {f"_mta-sts.d{i}.test": {"TXT": [f"v=STSv1; id={i}"]} for i in range(6)}
    clock = Clock()
    bodies = [GOOD.replace(b"enforce", b"testing") if i == 1 else GOOD for i in range(6)]
    resolver = MTASTS(MXResolver(FakeResolver(zones)), Fetcher(*bodies), clock=clock, max_cached=4)
    for i in range(4):
        run(resolver.policy(f"d{i}.test"))
    run(resolver.policy("d0.test"))  # d0 used again: d2 is now the least recently used enforce policy
    run(resolver.policy("d4.test"))
    assert "d1.test" not in resolver.cache  # testing mode goes first
    run(resolver.policy("d5.test"))
    assert sorted(resolver.cache) == ["d0.test", "d3.test", "d4.test", "d5.test"]


def test_a_fetch_that_breaks_unexpectedly_gives_every_waiter_the_cached_answer():
    zones = {"_mta-sts.sts.test": {"TXT": ["v=STSv1; id=1"]}}
    resolver = sts(zones, Fetcher())
    gate: defer.Deferred[None] = defer.Deferred()

    async def broken(domain, ident, cached):
        await gate
        raise RuntimeError("a bug")

    resolver._refresh = broken
    out: list[Any] = []
    for _ in range(2):
        defer.Deferred.fromCoroutine(resolver.lookup("sts.test")).addBoth(out.append)
    assert out == []  # both wait for the one fetch
    gate.callback(None)
    assert out == [(None, False), (None, False)]
    assert resolver._fetching == {}
    # the failure was logged, not left in a Deferred
    import gc

    gc.collect()
