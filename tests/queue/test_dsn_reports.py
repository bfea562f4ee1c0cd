"""RFC 3461 in the queue: NOTIFY decides which reports the sender gets, RET what they return,
and a success is reported as ``delivered``, ``relayed`` or ``expanded``; the requests go on to a
next hop that offers DSN, which then reports itself."""

from __future__ import annotations

import dataclasses
import email
import email.policy

from twisted.internet.defer import Deferred

from mailstack.delivery import LocalDelivery
from mailstack.dns import MXHost
from mailstack.envelope import Envelope, RecipientDSN, RecipientRoute
from mailstack.maildir import MaildirDelivery
from mailstack.notify import MailboxEvents
from mailstack.queue.relay import Relay
from mailstack.queue.runner import QueueRunner, QueueSettings
from mailstack.queue.spool import DELIVERED, QueuedMessage, RecipientState, Spool
from mailstack.routing import Router
from mailstack.smtp.client import TransactionResult
from mailstack.smtp.reply import Reply
from mailstack.testing import FakeAccounts, SyncReactor, SyncThreadPool

BODY = (b"From: s@example.test\r\nTo: x@remote.example\r\nSubject: hello\r\nMessage-ID: <m1@example.test>\r\n"
        b"\r\nthe body text\r\n")
SUCCESS = RecipientDSN(frozenset({"SUCCESS"}), ("rfc822", "X+orig@remote.example"))


class FakeMX:
    async def lookup(self, domain):
        return [MXHost("mx.remote.example", 10, ("192.0.2.1",))]


class Peer:
    """The next hop: answers every recipient with *code*, offering DSN or not; records each call."""

    def __init__(self, code=250, dsn=False):
        self.code, self.dsn, self.calls = code, dsn, []

    async def __call__(self, **kw):
        self.calls.append(kw)
        reply = Reply(self.code, "2.0.0" if self.code < 400 else "5.1.1" if self.code >= 500 else "4.2.0", "said")
        return TransactionResult({r: reply for r in kw["recipients"]}, reply, "mx", False, self.dsn)


def make(tmp_path, peer, **settings):
    clock = SyncReactor()
    spool = Spool(tmp_path / "queue")
    spool.ensure()
    accounts = FakeAccounts(users=["s@example.test", "u@example.test", "v@example.test"])
    maildir = MaildirDelivery(tmp_path / "maildirs", hostname="mail.example.test", reactor=clock,
                              threadpool=SyncThreadPool())
    relay = Relay(reactor=clock, mx=FakeMX(), hostname="mail.example.test", port=25, tls_options=None, send=peer)
    local = LocalDelivery(accounts, maildir, MailboxEvents())
    runner = QueueRunner(spool, QueueSettings("mail.example.test", (60.0,), 86400.0, 50, 4, 2, **settings),
                         reactor=clock, clock=clock, pool=SyncThreadPool(), local=local, relay=relay)
    return runner, spool, clock, local


def add(spool, clock, dsn, rcpts=("x@remote.example",), ret=None, envid=None):
    msg = QueuedMessage("Q1", "s@example.test", clock.seconds(), {r: RecipientState(r) for r in rcpts},
                        ret=ret, envid=envid, dsn={r: dsn for r in rcpts} if dsn is not None else {})
    spool.add(msg, BODY)


def inbox(tmp_path, address="s@example.test"):
    local, domain = address.split("@")
    new = tmp_path / "maildirs" / domain / local / "new"
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
            for p in sorted(new.iterdir())] if new.exists() else []


def report_fields(report):
    _, status, returned = report.get_payload()
    return status.get_payload(), returned


def run_queue(runner, clock):
    runner.startService()
    for _ in range(3):
        clock.advance(0)


def test_success_relayed_to_a_hop_without_dsn_is_reported_as_relayed(tmp_path):
    peer = Peer(dsn=False)
    runner, spool, clock, _ = make(tmp_path, peer)
    add(spool, clock, SUCCESS, envid="env-1")
    run_queue(runner, clock)
    [report] = inbox(tmp_path)
    assert report["Subject"] == "Successful Mail Delivery Report"
    (per_message, per_rcpt), returned = report_fields(report)
    assert per_message["Original-Envelope-Id"] == "env-1"
    assert per_rcpt["Action"] == "relayed" and per_rcpt["Status"] == "2.0.0"
    assert per_rcpt["Original-Recipient"] == "rfc822; X+orig@remote.example"
    assert per_rcpt["Final-Recipient"] == "rfc822; x@remote.example"
    assert returned.get_content_type() == "text/rfc822-headers"  # success reports never carry the body
    assert b"the body text" not in returned.get_payload(decode=True)
    assert spool.ids() == []


def test_a_hop_with_dsn_gets_the_requests_and_reports_itself(tmp_path):
    peer = Peer(dsn=True)
    runner, spool, clock, _ = make(tmp_path, peer)
    add(spool, clock, SUCCESS, ret="HDRS", envid="env-1")
    run_queue(runner, clock)
    assert inbox(tmp_path) == []
    [call] = peer.calls
    assert (call["ret"], call["envid"], call["rcpt_dsn"]) == ("HDRS", "env-1", {"x@remote.example": SUCCESS})
    assert spool.ids() == []


def test_without_requests_nothing_extra_is_sent_or_reported(tmp_path):
    peer = Peer(dsn=False)
    runner, spool, clock, _ = make(tmp_path, peer)
    add(spool, clock, None)
    run_queue(runner, clock)
    assert inbox(tmp_path) == [] and "rcpt_dsn" not in peer.calls[0]


def test_notify_never_and_success_only_get_no_bounce(tmp_path):
    for dsn in (RecipientDSN(frozenset({"NEVER"})), RecipientDSN(frozenset({"SUCCESS"}))):
        runner, spool, clock, _ = make(tmp_path, Peer(code=550))
        add(spool, clock, dsn)
        run_queue(runner, clock)
        assert inbox(tmp_path) == [] and spool.ids() == []
        runner.stopService()


def test_notify_failure_bounces_and_ret_full_returns_the_whole_message(tmp_path):
    runner, spool, clock, _ = make(tmp_path, Peer(code=550))
    add(spool, clock, RecipientDSN(frozenset({"FAILURE"}), ("rfc822", "x@remote.example")), ret="FULL",
        envid="e2")
    run_queue(runner, clock)
    [bounce] = inbox(tmp_path)
    (per_message, per_rcpt), returned = report_fields(bounce)
    assert per_rcpt["Action"] == "failed" and per_message["Original-Envelope-Id"] == "e2"
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["Message-ID"] == "<m1@example.test>" and "the body text" in inner.get_content()


def test_delay_warning_only_when_delay_is_asked(tmp_path):
    for dsn, warned in ((RecipientDSN(frozenset({"FAILURE"})), False), (RecipientDSN(frozenset({"DELAY"})), True),
                        (None, True)):
        (tmp_path / str(warned) / str(dsn)).mkdir(parents=True)
        base = tmp_path / str(warned) / str(dsn)
        runner, spool, clock, _ = make(base, Peer(code=451), delay_warning=100.0)
        add(spool, clock, dsn)
        run_queue(runner, clock)
        for _ in range(3):
            clock.advance(60)
        assert len(inbox(base)) == (1 if warned else 0), dsn
        runner.stopService()


def test_local_delivery_from_the_queue_is_reported_as_delivered(tmp_path):
    runner, spool, clock, _ = make(tmp_path, Peer())
    add(spool, clock, RecipientDSN(frozenset({"SUCCESS", "FAILURE"})), rcpts=("u@example.test",))
    run_queue(runner, clock)
    assert len(inbox(tmp_path, "u@example.test")) == 1
    [report] = inbox(tmp_path)
    (_, per_rcpt), _ = report_fields(report)
    assert per_rcpt["Action"] == "delivered" and per_rcpt["Final-Recipient"] == "rfc822; u@example.test"
    assert spool.ids() == []


def test_a_success_recorded_but_not_reported_before_a_crash_is_reported_at_restart(tmp_path):
    runner, spool, clock, _ = make(tmp_path, Peer())
    add(spool, clock, SUCCESS)
    # the outcome was recorded, then the process died before the report was queued
    spool.record("Q1", [RecipientState("x@remote.example", DELIVERED, 1, 0.0, "", "2.0.0", "mx.remote.example",
                                       "250 2.0.0 said", notice="relayed")])
    run_queue(runner, clock)
    [report] = inbox(tmp_path)
    (_, per_rcpt), _ = report_fields(report)
    assert per_rcpt["Action"] == "relayed"
    assert spool.ids() == []


def test_router_reports_local_deliveries_and_alias_expansions_before_the_250(tmp_path):
    runner, spool, clock, local = make(tmp_path, Peer())
    router = Router(local, queue=runner)
    runner.startService()
    asked = RecipientDSN(frozenset({"SUCCESS", "FAILURE"}))
    envelope = Envelope("QID7", "s@example.test", [
        RecipientRoute("u@example.test", ("u@example.test",), (), asked),
        RecipientRoute("team@example.test", ("u@example.test", "v@example.test"), (), asked),
        RecipientRoute("v@example.test", ("v@example.test",), ()),
    ], envid="abc")
    results = []
    Deferred.fromCoroutine(router.deliver(envelope, BODY)).addBoth(results.append)
    assert results == [None]
    clock.advance(0)
    [report] = inbox(tmp_path)
    (per_message, *per_rcpt), _ = report_fields(report)
    assert per_message["Original-Envelope-Id"] == "abc"
    assert [(f["Final-Recipient"], f["Action"]) for f in per_rcpt] == [
        ("rfc822; u@example.test", "delivered"), ("rfc822; team@example.test", "expanded")]
    assert spool.ids() == []


def test_queued_entries_keep_the_requests_across_a_restart(tmp_path):
    runner, spool, clock, _ = make(tmp_path, Peer(code=451))
    add(spool, clock, SUCCESS, ret="FULL", envid="e+1")
    loaded = spool.load("Q1")
    assert (loaded.ret, loaded.envid, loaded.dsn) == ("FULL", "e+1", {"x@remote.example": SUCCESS})
    assert dataclasses.replace(loaded, dsn={}).dsn == {}


def test_a_report_that_returns_8bit_content_is_queued_as_8bit(tmp_path):
    runner, spool, clock, _ = make(tmp_path, Peer(code=550))
    body = "From: s@example.test\r\nSubject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n".encode()
    msg = QueuedMessage("Q1", "s@example.test", clock.seconds(), {"x@remote.example": RecipientState("x@remote.example")},
                        body_8bit=True, ret="FULL")
    spool.add(msg, body)
    queued = []
    real_add = spool.add
    spool.add = lambda m, data: (queued.append((m, data)), real_add(m, data))[1]
    run_queue(runner, clock)
    [(notice, data)] = queued
    assert notice.body_8bit and not notice.smtputf8
    assert b"Content-Type: message/global\r\nContent-Description: Undelivered message\r\n" \
           b"Content-Transfer-Encoding: 8bit\r\n" in data


def test_a_report_that_cannot_be_queued_is_tried_again_later_then_given_up(tmp_path):
    runner, spool, clock, _ = make(tmp_path, Peer(), )
    runner.settings = dataclasses.replace(runner.settings, retry=(60.0,), max_age=600.0)
    add(spool, clock, SUCCESS)
    calls = []

    async def broken(**kw):
        calls.append(clock.seconds())
        raise OSError(28, "No space left on device")

    runner.notify = broken
    run_queue(runner, clock)
    assert len(calls) == 1 and spool.ids() == ["Q1"]  # the notice is kept on disk
    clock.advance(30)
    assert len(calls) == 1  # no tight loop: the retry schedule applies
    clock.advance(30)
    assert len(calls) == 2
    for _ in range(12):
        clock.advance(60)
    assert spool.ids() == []  # past max_age the report is given up, the message removed
