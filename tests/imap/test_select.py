"""SELECT, EXAMINE, STATUS, CLOSE, UNSELECT, CHECK (RFC 3501 §6.3.1, §6.3.2, §6.3.10, §6.4.1-2, RFC 3691)."""

from __future__ import annotations

from .harness import World

MSG = b"From: a@example.test\r\nSubject: s\r\n\r\nbody\r\n"


def test_select_reports_everything(world, client):
    world.deliver(MSG)
    world.deliver(MSG)
    untagged, tagged = client.cmd("SELECT INBOX")
    assert untagged[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)"
    assert untagged[1].startswith(b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)]")
    assert b"* 2 EXISTS" in untagged and b"* 2 RECENT" in untagged
    assert any(u.startswith(b"* OK [UNSEEN 1]") for u in untagged)
    assert any(u.startswith(b"* OK [UIDVALIDITY ") for u in untagged)
    assert b"* OK [UIDNEXT 3] Predicted next UID" in untagged
    assert tagged.startswith(b"OK [READ-WRITE]")


def test_recent_belongs_to_one_session(world):
    world.deliver(MSG)
    a = world.connect().login()
    b = world.connect().login()
    assert b"* 1 RECENT" in a.ok("SELECT INBOX")
    assert b"* 0 RECENT" in b.ok("SELECT INBOX")


def test_examine_is_read_only_and_does_not_claim_recent(world, client):
    world.deliver(MSG)
    untagged, tagged = client.cmd("EXAMINE INBOX")
    assert tagged.startswith(b"OK [READ-ONLY]")
    assert b"* OK [PERMANENTFLAGS ()] Flags permitted" in untagged
    assert client.cmd("STORE 1 +FLAGS (\\Seen)")[1].startswith(b"NO [READ-ONLY]")
    client.ok("FETCH 1 BODY[]")
    assert b"\\Seen" not in client.ok("FETCH 1 FLAGS")[0]
    other = world.connect().login()
    assert b"* 1 RECENT" in other.ok("SELECT INBOX")


def test_select_missing_mailbox_leaves_authenticated_state(client):
    client.ok("SELECT INBOX")
    assert client.cmd("SELECT Nope")[1].startswith(b"NO [NONEXISTENT]")
    assert client.cmd("FETCH 1 FLAGS")[1].startswith(b"BAD")


def test_status_items(world, client):
    world.deliver(MSG)
    world.deliver(MSG)
    untagged, tagged = client.cmd("STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")
    assert untagged[0].startswith(b"* STATUS INBOX (MESSAGES 2 RECENT 2 UIDNEXT 3 UIDVALIDITY ")
    assert untagged[0].endswith(b" UNSEEN 2)")
    assert client.cmd("STATUS INBOX (BOGUS)")[1].startswith(b"BAD")
    assert client.cmd("STATUS Nope (MESSAGES)")[1].startswith(b"NO [NONEXISTENT]")


def test_close_expunges_silently_unselect_does_not(world, client):
    for _ in range(3):
        world.deliver(MSG)
    client.ok("SELECT INBOX")
    client.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    assert client.ok("UNSELECT") == []
    client.ok("SELECT INBOX")
    untagged = client.ok("CLOSE")
    assert untagged == []
    assert b"MESSAGES 1" in client.ok("STATUS INBOX (MESSAGES)")[0]
    assert client.cmd("CLOSE")[1].startswith(b"BAD")


def test_check(world, client):
    client.ok("SELECT INBOX")
    assert client.ok("CHECK") == []


def test_index_gives_same_uids_to_a_new_process(tmp_path):
    w = World.create(tmp_path)
    w.deliver(MSG)
    c = w.connect().login()
    c.ok("SELECT INBOX")
    validity = [u for u in c.ok("SELECT INBOX") if b"UIDVALIDITY" in u]
    w2 = World.create(tmp_path)  # a restart: nothing cached in memory
    c2 = w2.connect().login()
    assert [u for u in c2.ok("SELECT INBOX") if b"UIDVALIDITY" in u] == validity
    assert b"UID 1" in c2.ok("FETCH 1 UID")[0]
