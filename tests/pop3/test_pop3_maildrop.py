"""The maildrop through the mail store: order, sizes without reading bodies, unique-ids, removal, locks."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mailstack.notify import MailboxEvents
from mailstack.pop3.maildrop import MaildropLocks, Maildrops, unique_id

from .harness import mail_store, maildir_of, put

ALICE = "alice@example.test"


def _d(coro):
    return Deferred.fromCoroutine(coro)


class MaildropsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.root, True)
        self.events = MailboxEvents()
        self.seen: list[str] = []
        self.events.subscribe(ALICE, lambda address, folder: self.seen.append(address))
        self.drops = Maildrops(mail_store(self.root), events=self.events)

    def open(self):
        return self.successResultOf(_d(self.drops.open(ALICE)))

    def test_missing_maildir_is_an_empty_maildrop(self):
        self.assertEqual(self.open().messages, [])
        self.assertTrue((maildir_of(self.root, ALICE) / "cur").is_dir())

    def test_order_is_delivery_time_then_name_across_new_and_cur(self):
        late = put(self.root, ALICE, b"late\r\n", seconds=1700000300)
        early = put(self.root, ALICE, b"early\r\n", subdir="cur", info=":2,S", seconds=1700000100)
        middle = put(self.root, ALICE, b"middle\r\n", seconds=1700000200)
        (maildir_of(self.root, ALICE) / "new" / ".hidden").write_bytes(b"x\r\n")
        self.assertEqual([m.base for m in self.open().messages], [early, middle, late])

    def test_sizes_come_from_the_name_without_reading(self):
        base = put(self.root, ALICE, b"twelve bytes")
        maildir = maildir_of(self.root, ALICE)
        os.rename(maildir / "new" / base, maildir / "new" / "1700000000.M1P1.host,S=999")
        [m] = self.open().messages
        self.assertEqual((m.size, unique_id(m.base)), (999, "1700000000.M1P1.host"))

    def test_size_falls_back_to_stat(self):
        put(self.root, ALICE, b"12345", sized=False)
        [m] = self.open().messages
        self.assertEqual(m.size, 5)

    def test_opening_renames_nothing(self):
        base = put(self.root, ALICE, b"hi\r\n")
        box = self.open()
        self.assertEqual(os.listdir(maildir_of(self.root, ALICE) / "new"), [base])
        self.assertEqual(box.unclaimed, {box.messages[0].uid})  # still \Recent for IMAP

    def test_remove_expunges_even_after_a_move_and_counts_gone_as_removed(self):
        maildir = maildir_of(self.root, ALICE)
        a = put(self.root, ALICE, b"a\r\n")
        b = put(self.root, ALICE, b"b\r\n")
        c = put(self.root, ALICE, b"c\r\n")
        box = self.open()
        msgs = list(box.messages)
        os.rename(maildir / "new" / a, maildir / "cur" / (a + ":2,S"))
        os.unlink(maildir / "new" / b)
        self.assertEqual(self.successResultOf(_d(self.drops.remove(ALICE, box, msgs[:2]))), [])
        self.assertEqual(os.listdir(maildir / "cur") + os.listdir(maildir / "new"), [c])
        self.assertEqual([m.base for m in box.messages], [c])
        self.assertEqual(self.seen, [ALICE])

    def test_remove_reports_failures_and_removes_the_rest(self):
        maildir = maildir_of(self.root, ALICE)
        put(self.root, ALICE, b"a\r\n")
        (maildir / "new" / "1700000999.M1P1.host,S=3").mkdir()  # unlink() of a directory fails
        box = self.open()
        failed = self.successResultOf(_d(self.drops.remove(ALICE, box, list(box.messages))))
        self.assertEqual([m.base for m in failed], ["1700000999.M1P1.host,S=3"])
        self.assertEqual(os.listdir(maildir / "new"), ["1700000999.M1P1.host,S=3"])
        self.assertEqual([m.base for m in box.messages], ["1700000999.M1P1.host,S=3"])

    def test_remove_tells_the_quota_cache(self):
        put(self.root, ALICE, b"a\r\n")
        told: list[str] = []
        self.drops.store.usage_changed = told.append  # type: ignore[method-assign]
        box = self.open()
        self.successResultOf(_d(self.drops.remove(ALICE, box, list(box.messages))))
        self.assertEqual(told, [ALICE])


def test_unique_id_obeys_rfc1939_limits():
    assert unique_id("1700000000.M1P1.host,S=10") == "1700000000.M1P1.host"
    assert unique_id("1700000000.M1P1.host,S=10,W=12") == "1700000000.M1P1.host"
    assert unique_id("foreign-name") == "foreign-name"
    long = "1700000000.M1P1Q1R" + "a" * 80
    uid = unique_id(long)
    assert uid.startswith("H") and len(uid) == 41 and uid == unique_id(long)
    assert unique_id("has space").startswith("H")


def test_locks_are_exclusive_per_mailbox():
    locks = MaildropLocks()
    assert locks.acquire(ALICE)
    assert not locks.acquire(ALICE)
    assert locks.acquire("bob@example.test")
    locks.release(ALICE)
    assert locks.acquire(ALICE)
