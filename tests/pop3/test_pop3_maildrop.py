"""The maildrop snapshot: order, sizes without reading bodies, unique-ids, removal, locks."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailstack.notify import MailboxEvents
from mailstack.pop3.maildrop import MaildropLocks, Maildrops, locate, remove, scan, unique_id

from .harness import maildir_of, put

ALICE = "alice@example.test"


def test_missing_maildir_is_an_empty_maildrop(tmp_path):
    assert scan(tmp_path / "nobody") == []


def test_order_is_delivery_time_then_name_across_new_and_cur(tmp_path):
    late = put(tmp_path, ALICE, b"late\r\n", seconds=1700000300)
    early = put(tmp_path, ALICE, b"early\r\n", subdir="cur", info=":2,S", seconds=1700000100)
    middle = put(tmp_path, ALICE, b"middle\r\n", seconds=1700000200)
    (maildir_of(tmp_path, ALICE) / "new" / "zzz-foreign").write_bytes(b"x\r\n")
    (maildir_of(tmp_path, ALICE) / "new" / ".hidden").write_bytes(b"x\r\n")
    names = [m.base for m in scan(maildir_of(tmp_path, ALICE))]
    assert names == [early, middle, late, "zzz-foreign"]


def test_sizes_come_from_the_name_without_reading(tmp_path):
    base = put(tmp_path, ALICE, b"twelve bytes")
    maildir = maildir_of(tmp_path, ALICE)
    os.rename(maildir / "new" / base, maildir / "new" / "1700000000.M1P1.host,S=999")
    [m] = scan(maildir)
    assert m.size == 999 and m.uid == "1700000000.M1P1.host"


def test_size_falls_back_to_stat(tmp_path):
    put(tmp_path, ALICE, b"12345", sized=False)
    [m] = scan(maildir_of(tmp_path, ALICE))
    assert m.size == 5


def test_uid_is_stable_when_moved_to_cur_with_flags(tmp_path):
    base = put(tmp_path, ALICE, b"hi\r\n")
    maildir = maildir_of(tmp_path, ALICE)
    [before] = scan(maildir)
    os.rename(maildir / "new" / base, maildir / "cur" / (base + ":2,S"))
    [after] = scan(maildir)
    assert before.uid == after.uid == base.split(",")[0]
    assert locate(maildir, before) == maildir / "cur" / (base + ":2,S")


def test_unique_id_obeys_rfc1939_limits():
    assert unique_id("1700000000.M1P1.host,S=10") == "1700000000.M1P1.host"
    assert unique_id("1700000000.M1P1.host,S=10,W=12") == "1700000000.M1P1.host"
    assert unique_id("foreign-name") == "foreign-name"
    long = "1700000000.M1P1Q1R" + "a" * 80
    uid = unique_id(long)
    assert uid.startswith("H") and len(uid) == 41 and uid == unique_id(long)
    assert unique_id("has space").startswith("H")


def test_remove_unlinks_even_after_a_move_and_counts_gone_as_removed(tmp_path):
    maildir = maildir_of(tmp_path, ALICE)
    a = put(tmp_path, ALICE, b"a\r\n")
    b = put(tmp_path, ALICE, b"b\r\n")
    c = put(tmp_path, ALICE, b"c\r\n")
    msgs = scan(maildir)
    os.rename(maildir / "new" / a, maildir / "cur" / (a + ":2,S"))
    os.unlink(maildir / "new" / b)
    assert remove(maildir, msgs[:2]) == []
    assert [m.base for m in scan(maildir)] == [c]


def test_remove_reports_failures(tmp_path):
    maildir = maildir_of(tmp_path, ALICE)
    put(tmp_path, ALICE, b"a\r\n")
    (maildir / "new" / "1700000999.M1P1.host,S=3").mkdir()  # unlink() of a directory fails
    msgs = scan(maildir)
    failed = remove(maildir, msgs)
    assert [m.name for m in failed] == ["1700000999.M1P1.host,S=3"]
    assert [m.name for m in scan(maildir)] == ["1700000999.M1P1.host,S=3"]


def test_locks_are_exclusive_per_mailbox():
    locks = MaildropLocks()
    assert locks.acquire(ALICE)
    assert not locks.acquire(ALICE)
    assert locks.acquire("bob@example.test")
    locks.release(ALICE)
    assert locks.acquire(ALICE)


class MaildropsTests(SynchronousTestCase):
    def test_snapshot_remove_and_publish_inline(self):
        root = Path(self.mktemp())
        put(root, ALICE, b"x\r\n")
        events = MailboxEvents()
        seen: list[str] = []
        events.subscribe(ALICE, lambda address, folder: seen.append(address))
        drops = Maildrops(lambda a: maildir_of(root, a), events=events)
        msgs = self.successResultOf(_d(drops.snapshot(ALICE)))
        self.assertEqual(len(msgs), 1)
        self.assertEqual(self.successResultOf(_d(drops.remove(ALICE, msgs))), [])
        drops.published(ALICE)
        self.assertEqual(seen, [ALICE])


def _d(coro):
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coro)
