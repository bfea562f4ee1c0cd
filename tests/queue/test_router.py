"""The router: durable before 250; local Maildirs and the spool in one step."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred

from mailstack.delivery import LocalDelivery
from mailstack.envelope import Envelope, RecipientRoute
from mailstack.maildir import MaildirDelivery
from mailstack.notify import MailboxEvents
from mailstack.queue.runner import QueueRunner, QueueSettings
from mailstack.queue.spool import Spool
from mailstack.routing import Router
from mailstack.smtp.reply import SMTPReplyError
from mailstack.testing import FakeAccounts, SyncReactor, SyncThreadPool


class NoRelay:
    async def deliver(self, *args):
        raise AssertionError("not started")


def setup(tmp_path, quota=0):
    clock = SyncReactor()
    accounts = FakeAccounts(users=["alice@example.test"])
    if quota:
        from mailstack.accounts.store import User

        accounts.users["alice@example.test"] = User("alice@example.test", "", quota)
    maildir = MaildirDelivery(tmp_path / "maildirs", hostname="mail.example.test", reactor=clock,
                              threadpool=SyncThreadPool())
    spool = Spool(tmp_path / "queue")
    spool.ensure()
    local = LocalDelivery(accounts, maildir, MailboxEvents())
    runner = QueueRunner(spool, QueueSettings("mail.example.test", (60.0,), 3600.0, 50, 4, 2), reactor=clock,
                         clock=clock, pool=SyncThreadPool(), local=local, relay=NoRelay())
    return Router(local, queue=runner), spool, tmp_path / "maildirs/example.test/alice/new"


def envelope():
    return Envelope("QID1", "s@remote.example", [
        RecipientRoute("alice@example.test", ("alice@example.test",)),
        RecipientRoute("far@remote.example", (), ("far@remote.example",)),
    ])


def run(coro):
    d = Deferred.fromCoroutine(coro)
    results = []
    d.addBoth(results.append)
    return results[0]


def test_mixed_message_goes_to_maildir_and_spool(tmp_path):
    router, spool, new = setup(tmp_path)
    assert run(router.deliver(envelope(), b"Subject: x\r\n\r\nbody\r\n")) is None
    assert len(list(new.iterdir())) == 1
    assert spool.ids() == ["QID1"]
    assert list(spool.load("QID1").recipients) == ["far@remote.example"]


def test_local_failure_withdraws_the_spool_copy(tmp_path):
    router, spool, new = setup(tmp_path, quota=10)
    failure = run(router.deliver(envelope(), b"Subject: x\r\n\r\n" + b"y" * 100 + b"\r\n"))
    assert failure.check(SMTPReplyError)
    assert failure.value.reply.code == 552 and failure.value.reply.enhanced == "5.2.2"
    assert spool.ids() == [] and list(spool.tmp.iterdir()) == []
    assert not new.exists() or list(new.iterdir()) == []


def test_remote_without_queue_is_refused_451(tmp_path):
    router, spool, new = setup(tmp_path)
    router.queue = None
    failure = run(router.deliver(envelope(), b"x\r\n"))
    assert failure.value.reply.code == 451


@pytest.mark.parametrize("n", [1, 3])
def test_message_for_local_mailboxes_only_never_touches_the_spool(tmp_path, n):
    router, spool, new = setup(tmp_path)
    env = Envelope("QID2", "s@remote.example", [RecipientRoute("alice@example.test", ("alice@example.test",))] * n)
    run(router.deliver(env, b"x\r\n"))
    assert len(list(new.iterdir())) == 1 and spool.ids() == []


def test_one_full_mailbox_does_not_fail_the_others(tmp_path):
    from mailstack.accounts.store import User

    router, spool, new = setup(tmp_path)
    router.local.store.users["bob@example.test"] = User("bob@example.test", "", 10)  # bob's quota: 10 octets
    env = Envelope("QID3", "s@remote.example", [
        RecipientRoute("alice@example.test", ("alice@example.test",)),
        RecipientRoute("bob@example.test", ("bob@example.test",)),
    ])
    assert run(router.deliver(env, b"Subject: x\r\n\r\nbody\r\n")) is None
    assert len(list(new.iterdir())) == 1  # alice has it
    assert spool.ids() == ["QID3"]  # bob's copy waits in the queue (retried, or bounced by the runner)
    assert list(spool.load("QID3").recipients) == ["bob@example.test"]


def test_single_full_mailbox_is_refused_at_once(tmp_path):
    router, spool, new = setup(tmp_path, quota=10)
    env = Envelope("QID4", "s@remote.example", [RecipientRoute("alice@example.test", ("alice@example.test",))])
    failure = run(router.deliver(env, b"Subject: x\r\n\r\nbody\r\n"))
    assert failure.value.reply.code == 552 and spool.ids() == []


def test_the_250_is_sent_only_after_the_maildir_write_and_fsync_ran(tmp_path, monkeypatch):
    import os

    from mailstack.testing import smtp_harness

    class HeldPool:
        """Runs pool work only when told to, like a slow disk."""

        def __init__(self):
            self.jobs = []

        def callInThreadWithCallback(self, on_result, func, *args, **kwargs):
            self.jobs.append(lambda: SyncThreadPool().callInThreadWithCallback(on_result, func, *args, **kwargs))

    pool = HeldPool()
    clock = SyncReactor()
    from mailstack.testing import FakeAccounts

    accounts = FakeAccounts(users=["alice@example.test"])
    maildir = MaildirDelivery(tmp_path / "maildirs", hostname="mail.example.test", reactor=clock, threadpool=pool)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    h = smtp_harness(router=Router(LocalDelivery(accounts, maildir, MailboxEvents())), accounts=accounts,
                     clock=clock)
    h.read()
    h.replies("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert h.send(b"Subject: x\r\n\r\nbody\r\n.\r\n") == b""  # the write has not run: no 250
    new = tmp_path / "maildirs/example.test/alice/new"
    assert not new.exists() and synced == []
    pool.jobs.pop()()
    assert h.read().startswith(b"250 2.0.0 OK queued as")
    assert len(list(new.iterdir())) == 1 and len(synced) >= 2  # the file and new/ (plus new directories)


class RecordingSigner:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def sign(self, message: bytes, queue_id: str) -> bytes:
        self.calls.append(queue_id)
        return b"DKIM-Signature: v=1; test\r\n" + message

    async def seal(self, message: bytes, domain: str, queue_id: str) -> bytes:
        self.calls.append(f"seal {domain} {queue_id}")
        return b"ARC-Seal: i=1; test\r\n" + message


def sent_by_alice(tmp_path, from_line: bytes):
    """A message alice submits for a local and a remote recipient, through a recording signer."""
    router, spool, _ = setup(tmp_path)
    router.signer = signer = RecordingSigner()
    sent = envelope()
    sent.auth_user = "alice@example.test"
    assert run(router.deliver(sent, from_line + b"\r\n\r\nbody\r\n")) is None
    return spool, signer


def test_mail_an_authenticated_user_sends_off_site_is_signed_before_it_is_queued(tmp_path):
    spool, signer = sent_by_alice(tmp_path, b"From: alice@example.test")
    assert signer.calls == ["QID1"]
    assert spool.body("QID1").startswith(b"DKIM-Signature: v=1; test\r\n")


def test_mail_from_unauthenticated_clients_or_only_for_local_mailboxes_is_not_signed(tmp_path):
    router, spool, new = setup(tmp_path)
    router.signer = signer = RecordingSigner()
    assert run(router.deliver(envelope(), b"From: s@remote.example\r\n\r\nbody\r\n")) is None  # port 25, no AUTH
    local_only = Envelope("QID2", "alice@example.test", [RecipientRoute("alice@example.test", ("alice@example.test",))])
    local_only.auth_user = "alice@example.test"
    assert run(router.deliver(local_only, b"From: alice@example.test\r\n\r\nbody\r\n")) is None
    assert signer.calls == []
    assert not spool.body("QID1").startswith(b"DKIM-Signature")


def test_mail_whose_from_the_user_does_not_own_is_not_signed(tmp_path):
    _, signer = sent_by_alice(tmp_path, b"From: ceo@other-tenant.test")
    assert signer.calls == []  # the key goes by the From domain: never lend another domain's


def test_forwarded_copies_are_queued_apart_under_a_rewritten_sender(tmp_path):
    from mailstack.srs import SRS

    srs = SRS(b"k" * 32)
    router, spool, new = setup(tmp_path)
    router.srs = srs
    router.signer = signer = RecordingSigner()
    forwarded = Envelope("QID7", "s@sender.example", [
        RecipientRoute("team@example.test", ("alice@example.test",), ("carol@remote.example",)),  # an alias
        RecipientRoute("far@remote.example", (), ("far@remote.example",)),
    ])
    assert run(router.deliver(forwarded, b"From: s@sender.example\r\n\r\nbody\r\n")) is None
    assert sorted(spool.ids()) == ["QID7", "QID7S"] and len(list(new.iterdir())) == 1
    direct, rewritten = spool.load("QID7"), spool.load("QID7S")
    assert (direct.sender, list(direct.recipients)) == ("s@sender.example", ["far@remote.example"])
    assert rewritten.sender.startswith("SRS0=") and rewritten.sender.endswith("=sender.example=s@example.test")
    assert list(rewritten.recipients) == ["carol@remote.example"]
    assert srs.reverse(rewritten.sender) == "s@sender.example"
    assert spool.body("QID7S") == b"ARC-Seal: i=1; test\r\n" + spool.body("QID7")  # only the forwarded copy
    assert signer.calls == ["seal example.test QID7"]  # an unauthenticated sender: no DKIM signature
