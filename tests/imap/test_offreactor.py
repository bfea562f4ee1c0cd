"""Storage work runs on the io pool: the reactor thread lists, renames, links, unlinks and fsyncs nothing."""

from __future__ import annotations

import os

from mailstack.maildir.folders import MailStore
from mailstack.maildir.layout import MaildirLayout

from .harness import USER
from .owner_io import GuardedIO, HeldIO, world_with_io

DISK_CALLS = ("listdir", "scandir", "rename", "replace", "unlink", "link", "fsync", "open", "mkdir", "rmdir")


def fill(world, count, folder=None):
    path = world.store.layout.maildir_path(USER, folder)
    world.store.layout.ensure(path)
    for i in range(count):
        body = b"Subject: m%d\r\n\r\nbody\r\n" % i
        (path / "cur" / f"{1_700_000_000 + i}.M{i}P1Q{i}.h,S={len(body)}:2,").write_bytes(body)


def test_every_command_does_its_disk_work_on_io(tmp_path, monkeypatch):
    io = GuardedIO()
    world = world_with_io(tmp_path / "maildirs", io)
    fill(world, 50)
    a = world.connect().login()
    io.guard(monkeypatch, os, DISK_CALLS)
    a.ok("CREATE Work.Old")
    a.ok('LIST "" "*"')
    a.ok("SUBSCRIBE Work")
    a.ok('LSUB "" "*"')
    a.ok("STATUS INBOX (MESSAGES UIDNEXT)")
    a.ok("SELECT INBOX")
    a.ok("APPEND INBOX {5+}\r\nhello")
    a.ok("FETCH 1:3 (FLAGS BODY[])")
    a.ok("STORE 4:6 +FLAGS (\\Deleted \\Flagged)")
    a.ok("STORE 7 +FLAGS (Project $Later)")  # new keywords: the folder's table is written on io
    a.ok("APPEND Work (Other) {5+}\r\nhello")
    a.ok("SEARCH BODY body")
    a.ok("COPY 1:10 Work")
    a.ok("MOVE 11:12 Work.Old")
    a.ok("EXPUNGE")
    world.deliver(b"Subject: new\r\n\r\nnew\r\n")  # the test writing, not the server
    io.off_io.clear()
    assert b"EXISTS" in b"".join(a.ok("NOOP"))
    a.ok("RENAME Work Done")
    a.ok("DELETE Done.Old")
    a.ok("CLOSE")
    a.ok("RENAME INBOX Saved")
    assert io.off_io == []


def test_a_big_refresh_waits_on_io_while_other_sessions_are_answered(tmp_path):
    io = HeldIO()
    io.hold = False
    world = world_with_io(tmp_path / "maildirs", io)
    fill(world, 3000)
    a = world.connect().login()
    b = world.connect().login()
    a.ok("SELECT INBOX")
    b.ok("SELECT Sent")
    world.deliver(b"Subject: new\r\n\r\nnew\r\n")
    io.hold = True
    io.calls.clear()
    a.protocol.dataReceived(b"a1 NOOP\r\n")
    assert a.read() == b"" and io.calls == ["_refresh_work"]  # listing INBOX waits for the pool
    assert b.send(b"b1 NOOP\r\n") == b""
    fn, args, d = io.pending.pop()  # the pool finishes b's small refresh first
    io._run(fn, args, d)
    assert b.read() == b"b1 OK NOOP completed\r\n"
    io.run_all()
    assert a.read() == b"* 3001 EXISTS\r\n* 1 RECENT\r\na1 OK NOOP completed\r\n"


def test_uids_are_durable_before_a_client_sees_them(tmp_path):
    io = HeldIO()
    io.hold = False
    world = world_with_io(tmp_path / "maildirs", io)
    a = world.connect().login()
    a.ok("SELECT INBOX")
    log_file = world.store.layout.maildir_path(USER) / "mailstack-index.log"
    world.deliver(b"Subject: new\r\n\r\nnew\r\n")
    io.hold = True
    a.protocol.dataReceived(b"a1 NOOP\r\n")
    assert a.read() == b""
    assert not log_file.exists() or b"a 1 " not in log_file.read_bytes()
    io.run_all()
    assert a.read().startswith(b"* 1 EXISTS")
    assert b"a 1 " in log_file.read_bytes()



def test_pipelined_commands_look_at_the_directories_at_most_once_a_second(tmp_path):
    now = [100.0]
    io = HeldIO()
    io.hold = False
    store = MailStore(MaildirLayout(tmp_path / "maildirs"), "test.host", monotonic=lambda: now[0])
    world = world_with_io(tmp_path / "maildirs", io, store)
    fill(world, 20)
    a = world.connect().login()
    a.ok("SELECT INBOX")
    io.calls.clear()
    for n in range(20):
        a.ok("FETCH 1:* (FLAGS)")
        a.ok(f"STORE {n + 1} +FLAGS (\\Seen)")  # a change made here needs no look at the disk
    assert io.calls.count("_refresh_work") == 0
    now[0] += 1.5
    a.ok("FETCH 1 (FLAGS)")
    assert io.calls.count("_refresh_work") == 1
    world.deliver(b"Subject: new\r\n\r\nnew\r\n")  # local delivery says so: the next command looks
    assert b"* 21 EXISTS" in a.ok("FETCH 1 (FLAGS)")
    io.calls.clear()
    a.ok("NOOP")  # a client polling with NOOP always gets a look
    assert io.calls.count("_refresh_work") == 1


def test_a_change_whose_caller_went_away_still_finishes(tmp_path):
    from twisted.internet.defer import CancelledError, Deferred

    from mailstack.maildir.files import write_tmp
    from mailstack.maildir.mailbox import Mailbox

    layout = MaildirLayout(tmp_path)
    path = layout.maildir_path(USER)
    layout.ensure(path)
    io = HeldIO()
    box = Mailbox.load(path, io=io)
    tmp, base, date = write_tmp(path, "h", b"hello", None)
    waiting = Deferred.fromCoroutine(box.append(tmp, base, "", 5, date))
    assert io.calls[-1] == "_publish"  # the rename into cur/ and the log line are on their way
    waiting.cancel()  # the connection was lost
    failures = []
    waiting.addErrback(failures.append)
    assert failures and failures[0].check(CancelledError)
    io.run_all()
    assert [m.base for m in box.messages] == [base] and box.uidnext == 2  # memory follows the disk
    again = Mailbox.load(path)
    assert [(m.uid, m.base) for m in again.messages] == [(1, base)]
