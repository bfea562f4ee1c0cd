"""TLS reporting (RFC 8460): sessions under MTA-STS policies counted per day, and the day's
report built (JSON, gzipped, multipart/report) and queued to the domain's rua addresses."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
from typing import Any

from twisted.internet import defer

from mailstack.dns import MXHost, MXResolver
from mailstack.mtasts import Policy, trust_root
from mailstack.queue.relay import Relay
from mailstack.queue.spool import QueuedMessage, RecipientState
from mailstack.smtp.client import TLSFailed, TransactionResult
from mailstack.smtp.reply import Reply
from mailstack.testing_dns import FakeResolver
from mailstack.tlsrpt import TLSReports, parse_rua, result_type

DAY1 = 1795824000.0  # 2026-11-28T00:00:00Z
POLICY = Policy("sts.test", "1", "enforce", ("mx.sts.test",), 86400, 0.0)
ZONES = {"_smtp._tls.sts.test": {"TXT": ["v=TLSRPTv1; rua=mailto:tls@sts.test,https://reports.sts.test/x"]}}


def run(coro: Any) -> Any:
    out: list[Any] = []
    defer.Deferred.fromCoroutine(coro).addBoth(out.append)
    return out[0]


class Outbox:
    def __init__(self):
        self.sent = []

    async def prepare_outbound(self, outbound, cause):
        self.sent.append(outbound)
        return outbound

    async def commit(self, handle):
        pass


def reports(now, tmp_path=None, zones=ZONES):
    outbox = Outbox()
    r = TLSReports(hostname="mail.out.test", contact="postmaster@out.test", mx=MXResolver(FakeResolver(zones)),
                   outbox=outbox, path=tmp_path / "tls.json" if tmp_path else None, clock=lambda: now[0])
    return r, outbox


def test_result_types_from_client_errors():
    assert result_type("451 4.7.10 mx does not offer STARTTLS") == "starttls-not-supported"
    assert result_type("421 4.7.5 TLS handshake with x failed: VerificationError(errors=[DNSMismatch])") == \
        "certificate-host-mismatch"
    assert result_type("certificate verify failed: self-signed certificate") == "certificate-not-trusted"
    assert result_type("certificate has expired") == "certificate-expired"
    assert result_type("something else") == "validation-failure"
    assert parse_rua([b"v=TLSRPTv1; rua=mailto:a@b.test, mailto:c@d.test"]) == ["mailto:a@b.test", "mailto:c@d.test"]
    assert parse_rua([b"v=TLSRPTv10; rua=mailto:a@b.test"]) == []


def test_a_day_is_reported_after_midnight_to_the_mailto_addresses(tmp_path):
    now = [DAY1 + 3600]
    r, outbox = reports(now, tmp_path)
    for _ in range(3):
        r.success("sts.test", POLICY.text(), list(POLICY.mx))
    r.failure("sts.test", POLICY.text(), list(POLICY.mx), "certificate-host-mismatch", "mx.sts.test", "192.0.2.1")
    assert run(r.send_due()) == 0  # the day has not ended
    r.store()
    # a restart keeps the counts
    now[0] = DAY1 + 86400 + 60
    again, outbox = reports(now, tmp_path)
    assert run(again.send_due()) == 1
    [outbound] = outbox.sent
    assert outbound.recipients == ("tls@sts.test",) and outbound.sender == "postmaster@out.test"
    message = email.message_from_bytes(outbound.message, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report" and message.get_param("report-type") == "tlsrpt"
    assert message["TLS-Report-Domain"] == "sts.test" and message["TLS-Report-Submitter"] == "mail.out.test"
    assert message["Subject"].startswith("Report Domain: sts.test Submitter: mail.out.test Report-ID: <")
    _, attachment = message.get_payload()
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    name = attachment.get_filename()
    assert name.startswith("mail.out.test!sts.test!1795824000!1795910399!") and name.endswith(".json.gz")
    report = json.loads(gzip.decompress(attachment.get_payload(decode=True)))
    assert report["date-range"] == {"start-datetime": "2026-11-28T00:00:00Z", "end-datetime": "2026-11-28T23:59:59Z"}
    assert report["organization-name"] == "mail.out.test" and report["contact-info"] == "postmaster@out.test"
    [policy] = report["policies"]
    assert policy["policy"] == {"policy-type": "sts", "policy-domain": "sts.test", "mx-host": ["mx.sts.test"],
                                "policy-string": ["version: STSv1", "mode: enforce", "mx: mx.sts.test",
                                                  "max_age: 86400"]}
    assert policy["summary"] == {"total-successful-session-count": 3, "total-failure-session-count": 1}
    assert policy["failure-details"] == [{"result-type": "certificate-host-mismatch",
                                          "receiving-mx-hostname": "mx.sts.test", "receiving-ip": "192.0.2.1",
                                          "failed-session-count": 1}]
    assert run(again.send_due()) == 0 and again.days == {}  # reported once


def test_no_rua_no_report():
    now = [DAY1]
    r, outbox = reports(now, zones={})
    r.success("sts.test", POLICY.text(), list(POLICY.mx))
    now[0] += 86400
    assert run(r.send_due()) == 0 and outbox.sent == [] and r.days == {}


def test_the_relay_counts_sessions_under_a_policy():
    now = [DAY1]
    r, _ = reports(now)
    answers = iter([TLSFailed(Reply(421, "4.7.5", "TLS handshake failed: certificate verify failed"), True,
                              "starttls"),
                    TransactionResult({"u@sts.test": Reply(250, "2.0.0", "ok")}, Reply(250, "2.0.0", "ok"), "mx",
                                      True)])

    async def send(**kw):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    class MX:
        async def lookup(self, domain):
            return [MXHost("evil.test", 5, ("192.0.2.9",)), MXHost("mx.sts.test", 10, ("192.0.2.1", "192.0.2.2"))]

    class Policies:
        async def lookup(self, domain):
            return POLICY, True

    relay = Relay(reactor=None, mx=MX(), hostname="out.test", port=25, tls_options=None, send=send,
                  mta_sts=Policies(), trust=trust_root(None), tls_reports=r)
    msg = QueuedMessage("Q1", "s@out.test", 0.0, {"u@sts.test": RecipientState("u@sts.test")})
    [state] = run(relay.deliver("sts.test", msg, ["u@sts.test"], b"x\r\n"))
    assert state.status == "delivered"
    [entry] = r.days["2026-11-28"]["sts.test"].values()
    assert entry.success == 1
    assert entry.failures == {"validation-failure|evil.test|192.0.2.9": 1,
                              "certificate-not-trusted|mx.sts.test|192.0.2.1": 1}
