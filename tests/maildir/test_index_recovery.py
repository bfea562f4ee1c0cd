"""The UID index after a crash or a full disk: a torn log line is cut off, not glued to the next
one; a snapshot that cannot be written does not turn a finished change into an error."""

from __future__ import annotations

import os

from mailstack.maildir.index import LOG_FILE
from mailstack.maildir.mailbox import Mailbox


def make_folder(root):
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True)


def test_a_torn_log_line_never_changes_a_uid_a_client_saw(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "cur" / "1700000000.M1P1.h,S=3:2,").write_bytes(b"abc")
    Mailbox.load(tmp_path)
    with open(tmp_path / LOG_FILE, "a") as f:  # a crash tore an append no client saw the end of
        f.write("+ 2 3 1700000001 1700000001.M2P")
    (tmp_path / "cur" / "1700000001.M2P1.h,S=3:2,").write_bytes(b"def")
    box = Mailbox.load(tmp_path)
    seen = {m.base: m.uid for m in box.messages}
    assert seen["1700000001.M2P1.h,S=3"] == 2
    again = Mailbox.load(tmp_path)
    assert again.uidvalidity == box.uidvalidity
    assert {m.base: m.uid for m in again.messages} == seen


def test_a_torn_log_line_does_not_make_the_index_look_damaged(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "cur" / "1700000000.M1P1.h,S=3:2,").write_bytes(b"abc")
    first = Mailbox.load(tmp_path)
    with open(tmp_path / LOG_FILE, "ab") as f:
        f.write("- 1 \u00e9".encode()[:-1])  # torn, even inside a UTF-8 sequence
    (tmp_path / "cur" / "1700000001.M2P1.h,S=3:2,").write_bytes(b"def")
    box = Mailbox.load(tmp_path, uidvalidity=lambda: first.uidvalidity + 100)
    assert box.uidvalidity == first.uidvalidity
    assert Mailbox.load(tmp_path).uidvalidity == first.uidvalidity
    assert (tmp_path / LOG_FILE).read_bytes().endswith(b"\n")


def test_expunge_on_a_full_disk_is_answered_ok_when_the_files_are_gone(tmp_path, monkeypatch):
    import mailstack.maildir.index as index
    from tests.imap.harness import World

    world = World.create(tmp_path)
    c = world.connect().login()
    for i in range(3):
        world.deliver(b"Subject: %d\r\n\r\nx\r\n" % i)
    c.ok("SELECT INBOX")
    c.ok("STORE 1:3 +FLAGS.SILENT (\\Deleted)")
    monkeypatch.setattr(index, "COMPACT_MIN_RECORDS", 0)  # the log is due to be folded in

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index, "write_index", full)
    untagged, tagged = c.cmd("EXPUNGE")
    assert tagged.startswith(b"OK")
    assert untagged == [b"* 3 EXPUNGE", b"* 2 EXPUNGE", b"* 1 EXPUNGE"]
    assert os.listdir(tmp_path / "example.test" / "alice" / "cur") == []


def test_an_append_answered_no_leaves_no_message_behind(tmp_path, monkeypatch):
    import mailstack.maildir.index as index
    from tests.imap.harness import World

    world = World.create(tmp_path)
    c = world.connect().login()
    c.ok("SELECT INBOX")
    real = index.IndexLog.append

    def full(self, records, durable):
        if records and records[0].startswith("a "):
            raise OSError(28, "No space left on device")
        return real(self, records, durable)

    monkeypatch.setattr(index.IndexLog, "append", full)
    _, tagged = c.cmd("APPEND INBOX {5+}\r\nhello")
    monkeypatch.undo()
    assert tagged.startswith(b"NO")
    c.ok("NOOP")
    assert c.ok("UID SEARCH ALL") == [b"* SEARCH"]  # a retry will not make a duplicate
