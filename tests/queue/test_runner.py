"""The queue runner with a fake relay, task.Clock and a synchronous thread pool."""

from __future__ import annotations

import dataclasses
import email
import email.policy

from mailstack.delivery import LocalDelivery
from mailstack.maildir import MaildirDelivery
from mailstack.notify import MailboxEvents
from mailstack.queue.runner import QueueRunner, QueueSettings, retry_delay
from mailstack.queue.spool import DELIVERED, FAILED, PENDING, QueuedMessage, RecipientState, Spool
from mailstack.testing import FakeAccounts, SyncReactor, SyncThreadPool

BODY = b"From: s@example.test\r\nTo: x@remote.example\r\nSubject: hello\r\nMessage-ID: <m1@example.test>\r\n\r\nhi\r\n"


class FakeRelay:
    """Answers per recipient from a script: a list of statuses per address, used in turn."""

    def __init__(self, script):
        self.script = {a: list(s) for a, s in script.items()}
        self.calls = []

    async def deliver(self, domain, msg, recipients, body):
        self.calls.append((domain, list(recipients)))
        out = []
        for r in recipients:
            status, code, text = self.script[r].pop(0)
            out.append(RecipientState(r, status, 0, 0.0, "" if status == DELIVERED else text, code,
                                      "mx.remote.example", text))
        return out


def make_runner(tmp_path, relay, clock=None, max_age=86400.0, retry=(60.0, 300.0)):
    clock = clock or SyncReactor()
    spool = Spool(tmp_path / "queue")
    accounts = FakeAccounts(users=["s@example.test"])
    maildir = MaildirDelivery(tmp_path / "maildirs", hostname="mail.example.test", reactor=clock,
                              threadpool=SyncThreadPool())
    settings = QueueSettings(hostname="mail.example.test", retry=retry, max_age=max_age, max_received=5,
                             connections=4, connections_per_domain=2)
    runner = QueueRunner(spool, settings, reactor=clock, clock=clock, pool=SyncThreadPool(),
                         local=LocalDelivery(accounts, maildir, MailboxEvents()), relay=relay)
    return runner, spool, clock


def queue(spool, clock, rcpts, sender="s@example.test", body=BODY, qid="Q1"):
    spool.ensure()
    spool.add(QueuedMessage(qid, sender, clock.seconds(), {r: RecipientState(r) for r in rcpts}), body)


def maildir_messages(tmp_path, address="s@example.test"):
    local, domain = address.split("@")
    new = tmp_path / "maildirs" / domain / local / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


OK = (DELIVERED, "2.0.0", "250 2.0.0 OK")
BUSY = (PENDING, "4.2.0", "451 4.2.0 try later")
NO_USER = (FAILED, "5.1.1", "550 5.1.1 no such user")


def test_retry_schedule_then_last_interval_forever():
    assert [retry_delay((60, 300, 900), n) for n in (1, 2, 3, 4, 10)] == [60, 300, 900, 900, 900]


def test_delivered_on_first_attempt_and_removed(tmp_path):
    relay = FakeRelay({"x@remote.example": [OK]})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["x@remote.example"])
    runner.startService()
    clock.advance(0)
    assert relay.calls == [("remote.example", ["x@remote.example"])]
    assert spool.ids() == []


def test_4xx_then_250_delivers_once_after_the_retry(tmp_path):
    relay = FakeRelay({"x@remote.example": [BUSY, OK]})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["x@remote.example"])
    runner.startService()
    clock.advance(0)
    assert len(relay.calls) == 1
    msg = spool.load("Q1")
    assert msg.recipients["x@remote.example"].attempts == 1
    assert msg.recipients["x@remote.example"].last_error == "451 4.2.0 try later"
    clock.advance(59)
    assert len(relay.calls) == 1
    clock.advance(1)
    assert len(relay.calls) == 2 and spool.ids() == []


def test_one_delivered_one_bounced_as_rfc3464(tmp_path):
    relay = FakeRelay({"x@remote.example": [OK], "y@remote.example": [NO_USER]})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["x@remote.example", "y@remote.example"])
    runner.startService()
    clock.advance(0)
    clock.advance(0)
    assert spool.ids() == []  # original done; the bounce was delivered locally to the sender
    [bounce] = maildir_messages(tmp_path)
    assert bounce.startswith(b"Return-Path: <>\r\nDelivered-To: s@example.test\r\n")
    parsed = email.message_from_bytes(bounce, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert parsed["Auto-Submitted"] == "auto-replied"
    text, status, headers = parsed.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    fields = status.get_payload()
    assert fields[0]["Reporting-MTA"] == "dns; mail.example.test"
    assert fields[1]["Final-Recipient"] == "rfc822; y@remote.example"
    assert fields[1]["Action"] == "failed" and fields[1]["Status"] == "5.1.1"
    assert fields[1]["Remote-MTA"] == "dns; mx.remote.example"
    assert fields[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Message-ID: <m1@example.test>" in headers.get_payload(decode=True)
    assert len(relay.calls) == 1  # x was never tried again


def test_expiry_bounces_with_the_last_error(tmp_path):
    relay = FakeRelay({"x@remote.example": [BUSY] * 10})
    runner, spool, clock = make_runner(tmp_path, relay, max_age=200.0, retry=(60.0,))
    queue(spool, clock, ["x@remote.example"])
    runner.startService()
    for _ in range(5):
        clock.advance(60)
    clock.advance(0)
    assert spool.ids() == []
    [bounce] = maildir_messages(tmp_path)
    assert b"Action: failed\r\nStatus: 4.4.7\r\n" in bounce  # delivery time expired
    assert b"Diagnostic-Code: smtp; 451 4.2.0 try later" in bounce
    assert len(relay.calls) == 3  # at 60, 120, 180; at 240 it had expired


def test_null_sender_failure_is_not_bounced(tmp_path):
    relay = FakeRelay({"x@remote.example": [NO_USER]})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["x@remote.example"], sender="")
    runner.startService()
    clock.advance(0)
    assert spool.ids() == [] and maildir_messages(tmp_path) == []


def test_restart_resumes_without_redelivering(tmp_path):
    relay = FakeRelay({"y@remote.example": [OK]})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["x@remote.example", "y@remote.example"])
    # a previous run delivered x and crashed before finishing
    spool.record("Q1", [RecipientState("x@remote.example", DELIVERED, 1)])
    spool.prepare(QueuedMessage("Q9", "s@example.test", 0.0, {}), b"uncommitted")
    runner.startService()
    clock.advance(0)
    assert relay.calls == [("remote.example", ["y@remote.example"])]
    assert spool.ids() == [] and list(spool.tmp.iterdir()) == []


def test_mail_loop_bounces_with_5_4_6(tmp_path):
    relay = FakeRelay({})
    runner, spool, clock = make_runner(tmp_path, relay)
    hops = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * 6
    queue(spool, clock, ["x@remote.example"], body=hops + BODY)
    runner.startService()
    clock.advance(0)
    assert relay.calls == []
    [bounce] = maildir_messages(tmp_path)
    assert b"Status: 5.4.6" in bounce


def test_local_recipients_in_the_queue_go_to_maildir(tmp_path):
    relay = FakeRelay({})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["s@example.test"], sender="other@remote.example")
    runner.startService()
    clock.advance(0)
    [stored] = maildir_messages(tmp_path)
    assert stored.endswith(BODY) and relay.calls == []


def test_flush_request_from_the_cli_retries_now(tmp_path):
    relay = FakeRelay({"x@remote.example": [BUSY, OK]})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["x@remote.example"])
    runner.startService()
    clock.advance(0)
    spool.request("flush", "Q1")
    clock.advance(1)  # the control poll
    clock.advance(0)
    assert len(relay.calls) == 2 and spool.ids() == []


def test_deleted_message_is_dropped(tmp_path):
    relay = FakeRelay({"x@remote.example": [BUSY, OK]})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["x@remote.example"])
    runner.startService()
    clock.advance(0)
    spool.remove("Q1")
    spool.request("delete", "Q1")
    clock.advance(120)
    assert len(relay.calls) == 1


def test_stop_waits_for_attempts_in_flight(tmp_path):
    from twisted.internet.defer import Deferred

    gate = Deferred()

    class SlowRelay(FakeRelay):
        async def deliver(self, domain, msg, recipients, body):
            await gate
            return await super().deliver(domain, msg, recipients, body)

    relay = SlowRelay({"x@remote.example": [OK]})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["x@remote.example"])
    runner.startService()
    clock.advance(0)
    stopped = runner.stopService()
    assert not stopped.called
    gate.callback(None)
    assert stopped.called and spool.ids() == []


def test_bounce_to_unknown_local_sender_is_dropped_not_looped(tmp_path):
    relay = FakeRelay({"x@remote.example": [NO_USER]})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["x@remote.example"], sender="ghost@example.test")
    runner.startService()
    clock.advance(0)
    clock.advance(0)
    assert spool.ids() == [] and maildir_messages(tmp_path) == []


def test_the_last_success_is_recorded_by_removing_the_message_durably(tmp_path, monkeypatch):
    """No state line for outcomes that finish the message: its durable removal records them
    (one write and its fsyncs fewer); a partial success is still recorded first."""
    relay = FakeRelay({"x@remote.example": [OK], "y@remote.example": [BUSY, OK]})
    runner, spool, clock = make_runner(tmp_path, relay, retry=(60.0,))
    queue(spool, clock, ["x@remote.example"])
    queue(spool, clock, ["y@remote.example"], qid="Q2")
    events = []
    real_record, real_remove = spool.record, spool.remove
    monkeypatch.setattr(spool, "record", lambda qid, states: (events.append(("record", qid)),
                                                              real_record(qid, states)))
    monkeypatch.setattr(spool, "remove", lambda qid, **kw: (events.append(("remove", qid, kw)),
                                                            real_remove(qid, **kw)))
    runner.startService()
    clock.advance(0)
    assert ("remove", "Q1", {"strict": True}) in events and ("record", "Q1") not in events
    assert ("record", "Q2") in events and spool.ids() == ["Q2"]
    clock.advance(60)
    assert spool.ids() == [] and events[-1] == ("remove", "Q2", {"strict": True})


def test_a_removal_that_cannot_be_made_durable_is_an_error_not_a_silent_success(tmp_path):
    relay = FakeRelay({"x@remote.example": [OK]})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["x@remote.example"])

    def broken(path):
        raise OSError(5, "Input/output error")

    spool.syncer.sync = broken
    import pytest

    from mailstack.queue.spool import SpoolError

    with pytest.raises(SpoolError):
        spool.remove("Q1", strict=True)


def test_a_crash_inside_remove_never_forgets_a_delivery(tmp_path):
    relay = FakeRelay({})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["x@remote.example"])
    spool.record("Q1", [RecipientState("x@remote.example", DELIVERED, 1)])
    (spool.msg / "Q1").unlink()  # remove() got this far, then the machine stopped
    runner.startService()
    clock.advance(0)
    assert relay.calls == [] and list(spool.state.iterdir()) == []


def test_partial_success_is_recorded_before_anything_else(tmp_path, monkeypatch):
    relay = FakeRelay({"x@remote.example": [OK], "y@other.example": [BUSY, OK]})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["x@remote.example", "y@other.example"])
    runner.startService()
    clock.advance(0)
    msg = spool.load("Q1")
    assert msg.recipients["x@remote.example"].status == DELIVERED
    assert msg.recipients["y@other.example"].status == PENDING


def test_an_attempt_that_breaks_is_retried_not_forgotten(tmp_path):
    relay = FakeRelay({"x@remote.example": [OK]})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["x@remote.example"])
    real_load = spool.load
    calls = []

    def flaky_load(qid):
        calls.append(qid)
        if len(calls) == 1:
            raise RuntimeError("disk hiccup")
        return real_load(qid)

    runner.startService()  # resumes (loads) the queue; the attempt itself runs at the next tick
    spool.load = flaky_load
    clock.advance(0)
    assert spool.ids() == ["Q1"] and relay.calls == []
    clock.advance(60)
    assert relay.calls == [("remote.example", ["x@remote.example"])] and spool.ids() == []


def test_stop_cancels_an_attempt_stuck_on_a_slow_remote(tmp_path):
    from twisted.internet.defer import Deferred

    class StuckRelay(FakeRelay):
        async def deliver(self, domain, msg, recipients, body):
            await Deferred()  # never answers
            return []

    runner, spool, clock = make_runner(tmp_path, StuckRelay({}))
    queue(spool, clock, ["x@remote.example"])
    runner.startService()
    clock.advance(0)
    stopped = runner.stopService()
    assert not stopped.called
    clock.advance(10)
    assert stopped.called
    assert spool.ids() == ["Q1"]  # still queued: retried after the restart


def test_delay_warning_is_sent_once_then_the_message_is_still_delivered(tmp_path):
    relay = FakeRelay({"x@remote.example": [BUSY] * 5 + [OK]})
    runner, spool, clock = make_runner(tmp_path, relay, retry=(60.0,))
    runner.settings = dataclasses.replace(runner.settings, delay_warning=150.0)
    queue(spool, clock, ["x@remote.example"])
    runner.startService()
    for _ in range(6):
        clock.advance(60)
    clock.advance(0)
    warnings = maildir_messages(tmp_path)
    assert len(warnings) == 1
    parsed = email.message_from_bytes(warnings[0], policy=email.policy.default)
    assert parsed["Subject"] == "Delayed Mail (still being retried)"
    report = parsed.get_payload()[1].get_payload()[1]
    assert report["Action"] == "delayed" and report["Status"] == "4.2.0"
    assert "Will-Retry-Until" in report
    assert spool.ids() == []  # delivered in the end


def test_bounce_to_a_local_sender_that_forwards_off_site_is_relayed(tmp_path):
    relay = FakeRelay({"x@remote.example": [NO_USER], "me@home.example": [OK]})
    runner, spool, clock = make_runner(tmp_path, relay)
    runner.local.store.aliases["fwd@example.test"] = ["me@home.example"]
    queue(spool, clock, ["x@remote.example"], sender="fwd@example.test")
    runner.startService()
    clock.advance(0)
    clock.advance(0)
    assert ("home.example", ["me@home.example"]) in relay.calls
    assert spool.ids() == []


def test_a_full_local_mailbox_is_deferred_while_the_other_local_recipient_gets_it(tmp_path):
    from mailstack.accounts.store import User

    runner, spool, clock = make_runner(tmp_path, FakeRelay({}))
    users = runner.local.store.users
    users["full@example.test"] = User("full@example.test", "", 200)
    (tmp_path / "maildirs/example.test/full/new").mkdir(parents=True)
    (tmp_path / "maildirs/example.test/full/new/1.M1.x,S=190").write_bytes(b"x" * 190)
    queue(spool, clock, ["s@example.test", "full@example.test"], sender="other@remote.example")
    runner.startService()
    clock.advance(0)
    assert len(maildir_messages(tmp_path)) == 1
    msg = spool.load("Q1")
    assert msg.recipients["s@example.test"].status == DELIVERED
    full = msg.recipients["full@example.test"]
    assert (full.status, full.status_code, full.attempts) == (PENDING, "4.2.2", 1)


def test_a_queued_mailbox_is_not_resolved_again(tmp_path):
    # "s -> s, t" keeps a copy for s and gives one to t; t had its copy when the message was
    # accepted, so a retry for s (queued because s was full) must not reach t a second time.
    runner, spool, clock = make_runner(tmp_path, FakeRelay({}))
    runner.local.store.users["t@example.test"] = dataclasses.replace(runner.local.store.users["s@example.test"],
                                                                     address="t@example.test")
    runner.local.store.aliases["s@example.test"] = ["s@example.test", "t@example.test"]
    queue(spool, clock, ["s@example.test"], sender="other@remote.example")
    runner.startService()
    clock.advance(0)
    assert len(maildir_messages(tmp_path)) == 1 and maildir_messages(tmp_path, "t@example.test") == []
    assert spool.ids() == []


def test_an_address_for_several_mailboxes_reaches_each_once_when_one_was_full(tmp_path):
    # A queued address that stands for two mailboxes (an alias queued before it was one,
    # or a bounce to a local alias): one is full at the first try. The retry must give
    # the message to that one only; the other already has it.
    from mailstack.accounts.store import User

    runner, spool, clock = make_runner(tmp_path, FakeRelay({}), retry=(60.0,))
    users = runner.local.store.users
    users["full@example.test"] = User("full@example.test", "", 200)
    full_new = tmp_path / "maildirs/example.test/full/new"
    full_new.mkdir(parents=True)
    (full_new / "1.M1.x,S=190").write_bytes(b"x" * 190)
    runner.local.store.aliases["team@example.test"] = ["s@example.test", "full@example.test"]
    queue(spool, clock, ["team@example.test"], sender="other@remote.example")
    runner.startService()
    clock.advance(0)
    assert len(maildir_messages(tmp_path)) == 1  # s has it
    team = spool.load("Q1").recipients["team@example.test"]
    assert (team.status, team.status_code, team.delivered_to) == (PENDING, "4.2.2", ["s@example.test"])
    clock.advance(60)  # still full: s is not given a second copy
    assert len(maildir_messages(tmp_path)) == 1
    assert spool.load("Q1").recipients["team@example.test"].delivered_to == ["s@example.test"]
    users["full@example.test"] = User("full@example.test", "", 100_000)  # the quota was raised
    clock.advance(120)
    clock.advance(0)
    assert len(maildir_messages(tmp_path)) == 1 and len(maildir_messages(tmp_path, "full@example.test")) == 2
    assert spool.ids() == []


def test_bounces_and_delay_warnings_are_signed_like_users_mail(tmp_path):
    from mailstack.dkim import DKIMSigner, KeyDirectory, KeyStore

    keys = KeyDirectory(tmp_path / "dkim")
    keys.generate("mail.example.test", "ed25519")  # the notices come from MAILER-DAEMON@<hostname>
    relay = FakeRelay({"x@remote.example": [BUSY, BUSY, NO_USER]})
    runner, spool, clock = make_runner(tmp_path, relay, retry=(60.0,))
    runner.settings = dataclasses.replace(runner.settings, delay_warning=30.0)
    runner.signer = DKIMSigner(KeyStore(keys)).sign
    queue(spool, clock, ["x@remote.example"])
    runner.startService()
    for _ in range(3):
        clock.advance(60)
    clock.advance(0)
    notices = maildir_messages(tmp_path)
    assert len(notices) == 2  # the delay warning, then the bounce
    for notice in notices:
        assert b"\r\nDKIM-Signature: v=1; a=ed25519-sha256;" in notice
        assert b"d=mail.example.test;" in notice


def test_a_bounce_of_forwarded_mail_goes_to_the_original_sender(tmp_path):
    from mailstack.srs import SRS

    srs = SRS(b"k" * 32)
    relay = FakeRelay({"x@remote.example": [NO_USER], "alice@sender.example": [OK]})
    runner, spool, clock = make_runner(tmp_path, relay)
    runner.srs = srs
    queue(spool, clock, ["x@remote.example"], sender=srs.forward("alice@sender.example", "example.test"))
    runner.startService()
    clock.advance(0)
    clock.advance(0)
    assert ("sender.example", ["alice@sender.example"]) in relay.calls
    assert spool.ids() == []


def test_etrn_tries_a_domains_deferred_mail_now_and_leaves_the_others_waiting(tmp_path):
    from twisted.internet.defer import Deferred

    relay = FakeRelay({"x@remote.example": [BUSY, OK], "y@mx.sub.remote.example": [BUSY, OK],
                       "z@other.example": [BUSY, OK]})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["x@remote.example"], qid="Q1")
    queue(spool, clock, ["y@mx.sub.remote.example"], qid="Q2")
    queue(spool, clock, ["z@other.example"], qid="Q3")
    runner.startService()
    clock.advance(0)
    assert len(relay.calls) == 3  # each deferred for 60 s
    started = Deferred.fromCoroutine(runner.start_domain("remote.example", False))
    clock.advance(0)
    assert started.result == 1 and relay.calls[3:] == [("remote.example", ["x@remote.example"])]
    started = Deferred.fromCoroutine(runner.start_domain("remote.example", True))  # @remote.example
    clock.advance(0)
    assert started.result == 1 and relay.calls[4:] == [("mx.sub.remote.example", ["y@mx.sub.remote.example"])]
    assert sorted(spool.ids()) == ["Q3"]  # other.example still waits for its retry
    again = Deferred.fromCoroutine(runner.start_domain("remote.example", True))  # within the minute
    clock.advance(0)
    assert again.result == 1 and len(relay.calls) == 5  # the same answer, no second read, nothing restarted


def test_an_outcome_that_cannot_be_recorded_is_retried_later_not_in_a_loop(tmp_path):
    from mailstack.queue.spool import SpoolError

    relay = FakeRelay({"x@remote.example": [BUSY] * 5})
    runner, spool, clock = make_runner(tmp_path, relay)
    queue(spool, clock, ["x@remote.example"])

    real_record, failures = spool.record, []

    def full(queue_id, states):
        if len(failures) < 3:  # the disk is full for a while (bounded, so a loop shows as a count)
            failures.append(queue_id)
            raise SpoolError("cannot record state of Q1: No space left on device")
        real_record(queue_id, states)

    spool.record = full
    runner.startService()
    clock.advance(0)
    clock.advance(0)
    assert len(relay.calls) == 1  # not tried again at once, over and over
    clock.advance(60)
    assert len(relay.calls) == 2
