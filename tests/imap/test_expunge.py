"""EXPUNGE and UID EXPUNGE (RFC 3501 §6.4.3, RFC 4315 §2.1)."""

from __future__ import annotations

from .messages import SIMPLE


def test_expunge_reports_numbers_and_removes_files(world, client):
    for _ in range(4):
        world.deliver(SIMPLE)
    client.ok("SELECT INBOX")
    client.ok("STORE 2,4 +FLAGS.SILENT (\\Deleted)")
    assert client.ok("EXPUNGE") == [b"* 4 EXPUNGE", b"* 2 EXPUNGE"]
    path = world.store.layout.maildir_path("alice@example.test", None)
    assert len(list((path / "cur").iterdir())) + len(list((path / "new").iterdir())) == 2
    assert client.ok("FETCH 1:* UID") == [b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 3)"]


def test_uid_expunge_only_touches_named_uids(world, client):
    for _ in range(3):
        world.deliver(SIMPLE)
    client.ok("SELECT INBOX")
    client.ok("STORE 1:3 +FLAGS.SILENT (\\Deleted)")
    assert client.ok("UID EXPUNGE 2:3") == [b"* 3 EXPUNGE", b"* 2 EXPUNGE"]
    assert client.cmd("UID EXPUNGE")[1].startswith(b"BAD")


def test_expunge_read_only_refused(world, client):
    world.deliver(SIMPLE)
    client.ok("EXAMINE INBOX")
    assert client.cmd("EXPUNGE")[1].startswith(b"NO [READ-ONLY]")


def test_uids_never_reused_after_expunge(world, client):
    world.deliver(SIMPLE)
    client.ok("SELECT INBOX")
    client.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    client.ok("EXPUNGE")
    untagged, tagged = client.cmd("APPEND INBOX {5+}\r\nhello")
    assert b"APPENDUID" in tagged and tagged.split()[3] == b"2]"
