"""COPY, MOVE, UID COPY, UID MOVE (RFC 3501 §6.4.7, RFC 6851, RFC 4315 COPYUID)."""

from __future__ import annotations

import pytest

from .messages import SIMPLE


@pytest.fixture
def box(world, client):
    for _ in range(3):
        world.deliver(SIMPLE)
    client.ok("SELECT INBOX")
    client.ok("STORE 2 +FLAGS (\\Flagged kw)")
    return client


def test_copy_keeps_flags_and_reports_copyuid(box):
    untagged, tagged = box.cmd("COPY 2:3 Archive")
    assert tagged.startswith(b"OK [COPYUID ") and tagged.split()[3:5] == [b"2:3", b"1:2]"]
    status = box.ok("STATUS Archive (MESSAGES RECENT)")
    assert b"MESSAGES 2 RECENT 2" in status[0]
    box.ok("EXAMINE Archive")
    assert b"FLAGS (\\Flagged kw \\Recent)" in box.ok("FETCH 1 FLAGS")[0]


def test_copy_to_missing_mailbox_says_trycreate(box):
    assert box.cmd("COPY 1 Nowhere")[1].startswith(b"NO [TRYCREATE]")
    assert box.cmd("MOVE 1 Nowhere")[1].startswith(b"NO [TRYCREATE]")


def test_move_sends_copyuid_then_expunge(box):
    untagged, tagged = box.cmd("MOVE 1:2 Trash")
    assert untagged[0].startswith(b"* OK [COPYUID ") and untagged[0].split()[4:6] == [b"1:2", b"1:2]"]
    assert untagged[1:] == [b"* 2 EXPUNGE", b"* 1 EXPUNGE"]
    assert tagged.startswith(b"OK")
    assert b"MESSAGES 1" in box.ok("STATUS INBOX (MESSAGES)")[0]
    assert b"MESSAGES 2" in box.ok("STATUS Trash (MESSAGES)")[0]


def test_uid_move_and_copy(box):
    untagged, tagged = box.cmd("UID MOVE 3 Junk")
    assert untagged[-1] == b"* 3 EXPUNGE"
    assert box.cmd("UID COPY 1:2 Junk")[1].startswith(b"OK [COPYUID")
    assert box.ok("UID COPY 99 Junk") == []


def test_move_within_same_mailbox(box):
    untagged, tagged = box.cmd("MOVE 1 INBOX")
    assert tagged.startswith(b"OK") and b"* 1 EXPUNGE" in untagged and b"* 3 EXISTS" in untagged


def test_a_copy_that_fails_part_way_leaves_the_destination_as_it_was(tmp_path, monkeypatch):
    import mailstack.imap.selected as selected

    from .harness import World

    monkeypatch.setattr(selected, "COPY_STEP", 1)  # message 2 stands for message 1001 of a big COPY
    world = World.create(tmp_path)
    c = world.connect().login()
    c.ok("CREATE Dest")
    keywords = " ".join(f"k{i}" for i in range(26))  # every keyword letter of Dest is taken
    c.ok(f"APPEND Dest ({keywords}) {{5+}}\r\nhello")
    world.deliver(b"Subject: 1\r\n\r\nx\r\n")
    world.deliver(b"Subject: 2\r\n\r\nx\r\n")
    c.ok("SELECT INBOX")
    c.ok("STORE 2 +FLAGS.SILENT (NewKeyword)")
    _, tagged = c.cmd("COPY 1:2 Dest")
    assert tagged.startswith(b"NO [LIMIT]")
    assert c.ok("STATUS Dest (MESSAGES)") == [b"* STATUS Dest (MESSAGES 1)"]  # RFC 3501 §6.4.7


def _two_messages_and_a_failing_second_step(tmp_path, monkeypatch):
    """A session with INBOX (two messages) selected and a Dest folder; COPY/MOVE work one
    message per step and the second step fails on disk. Returns (client, calls), where calls
    records the ``move`` argument of every step."""
    import mailstack.imap.selected as selected
    from mailstack.maildir.mailbox import Mailbox

    from .harness import World

    monkeypatch.setattr(selected, "COPY_STEP", 1)
    world = World.create(tmp_path)
    c = world.connect().login()
    c.ok("CREATE Dest")
    world.deliver(b"Subject: 1\r\n\r\nx\r\n")
    world.deliver(b"Subject: 2\r\n\r\nx\r\n")
    c.ok("SELECT INBOX")
    real = Mailbox.add_links
    calls: list[bool] = []

    async def second_fails(self, items, *, move):
        calls.append(move)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return await real(self, items, move=move)

    monkeypatch.setattr(Mailbox, "add_links", second_fails)
    return c, calls


def test_a_copy_whose_second_step_fails_on_disk_takes_back_the_first(tmp_path, monkeypatch):
    c, calls = _two_messages_and_a_failing_second_step(tmp_path, monkeypatch)
    _, tagged = c.cmd("COPY 1:2 Dest")
    assert tagged.startswith(b"NO")
    assert calls == [False, False]
    assert c.ok("STATUS Dest (MESSAGES)") == [b"* STATUS Dest (MESSAGES 0)"]


def test_a_move_whose_second_step_fails_on_disk_moves_the_first_back(tmp_path, monkeypatch):
    c, calls = _two_messages_and_a_failing_second_step(tmp_path, monkeypatch)
    c.ok("STORE 1 +FLAGS (\\Flagged)")
    _, tagged = c.cmd("MOVE 1:2 Dest")
    assert tagged.startswith(b"NO")
    assert calls == [True, True, True]  # step one, step two (failed), the way back
    monkeypatch.undo()
    status = [ln for ln in c.ok("STATUS Dest (MESSAGES)") if ln.startswith(b"* STATUS")]
    assert status == [b"* STATUS Dest (MESSAGES 0)"]
    c.ok("NOOP")
    flags = [ln for ln in c.ok("FETCH 1:* (FLAGS)") if b"FETCH" in ln]
    assert len(flags) == 2 and sum(b"\\Flagged" in ln for ln in flags) == 1
