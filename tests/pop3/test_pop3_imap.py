"""POP3 and IMAP on one mail store: what one protocol does to INBOX, the other sees at once."""

from __future__ import annotations

import os
import shutil

import pytest
from twisted.internet.defer import Deferred

from mailstack.maildir.folders import MailStore
from mailstack.maildir.layout import MaildirLayout
from mailstack.pop3.stream import encode_whole
from tests.imap.harness import World, sync_io

from .harness import file_bytes, maildir_of, pop3_harness, put

ALICE = "alice@example.test"
M1 = b"Subject: one\r\n\r\nfirst\r\n"
M2 = b"Subject: two\r\n\r\nsecond\r\n"
M3 = b"Subject: three\r\n\r\nthird\r\n"


@pytest.fixture
def world(tmp_path):
    for i, m in enumerate((M1, M2, M3)):
        put(tmp_path, ALICE, m, seconds=1700000000 + i)
    return World.create(tmp_path)


def pop3(world):
    h = pop3_harness(world.root, store=world.store, events=world.events, clock=world.clock)
    h.read()
    assert h.login().startswith("+OK")
    return h


def uidl(h):
    return h.lines("UIDL\r\n")[1:-1]


def test_pop3_quit_expunge_reaches_a_selected_imap_session(world):
    imap = world.connect().login()
    assert b"* 3 EXISTS" in imap.ok("SELECT INBOX")
    h = pop3(world)
    h.reply("DELE 1\r\n")
    assert h.reply("QUIT\r\n") == "+OK Logging out, 2 messages left"
    assert imap.ok("NOOP") == [b"* 1 EXPUNGE"]
    assert imap.ok("UID FETCH 1:* (UID)") == [b"* 1 FETCH (UID 2)", b"* 2 FETCH (UID 3)"]
    # The UID index on disk agrees: a restarted server gives the others the same UIDs.
    restarted = MailStore(MaildirLayout(world.root), "test.host")
    box = Deferred.fromCoroutine(restarted.open(ALICE, "INBOX", sync_io)).result
    assert [m.uid for m in box.messages] == [2, 3]


def test_pop3_quit_expunge_reaches_an_idling_imap_session(world):
    imap = world.connect().login()
    imap.ok("SELECT INBOX")
    assert imap.raw("IDLE") == b"+ idling\r\n"
    h = pop3(world)
    h.reply("DELE 2\r\n")
    h.reply("DELE 3\r\n")
    assert h.reply("QUIT\r\n").startswith("+OK")
    assert imap.read() == b"* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n"


def test_uidl_unchanged_after_imap_reads_a_message(world):
    h = pop3(world)
    first = uidl(h)
    assert first == [f"{n} {m.base.split(',')[0]}" for n, m in enumerate(h.session.messages, 1)]
    h.reply("QUIT\r\n")
    imap = world.connect().login()
    imap.ok("SELECT INBOX")
    imap.ok("FETCH 1 BODY[]")  # sets \Seen: the file moves to cur/ with ":2,S"
    assert os.listdir(maildir_of(world.root, ALICE) / "cur")[0].endswith(":2,S")
    assert uidl(pop3(world)) == first


def test_a_message_imap_renames_during_a_pop3_session_is_still_retrieved(world):
    h = pop3(world)
    imap = world.connect().login()
    imap.ok("SELECT INBOX")
    imap.ok("STORE 1:* +FLAGS (\\Seen \\Flagged)")
    assert not os.listdir(maildir_of(world.root, ALICE) / "new")
    for n, content in enumerate((M1, M2, M3), 1):
        assert h.send(f"RETR {n}\r\n").endswith(encode_whole(content))
    h.reply("DELE 1\r\n")
    assert h.reply("QUIT\r\n").startswith("+OK")
    assert sorted(file_bytes(world.root, ALICE).values()) == sorted([M2, M3])


def test_pop3_claims_no_recent_and_renames_nothing(world):
    h = pop3(world)
    h.send("RETR 1\r\n")
    h.send("TOP 2 0\r\n")
    assert h.reply("QUIT\r\n").startswith("+OK")
    maildir = maildir_of(world.root, ALICE)
    assert len(os.listdir(maildir / "new")) == 3 and not os.listdir(maildir / "cur")
    imap = world.connect().login()
    selected = imap.ok("SELECT INBOX")
    assert b"* 3 RECENT" in selected and b"* OK [UNSEEN 1] First unseen" in selected


def test_a_maildir_removed_under_the_server_comes_back_at_the_next_login(world):
    h = pop3(world)
    assert h.reply("QUIT\r\n").startswith("+OK")
    shutil.rmtree(maildir_of(world.root, ALICE))
    assert pop3(world).session.messages == []
    world.deliver(M1)
    h = pop3(world)
    assert h.reply("STAT\r\n") == f"+OK 1 {len(M1)}"
    assert h.send("RETR 1\r\n").endswith(encode_whole(M1))
    assert (maildir_of(world.root, ALICE) / ".Sent" / "cur").is_dir()  # set up again, as at a first login


def test_a_maildir_removed_during_a_pop3_session(world):
    h = pop3(world)
    shutil.rmtree(maildir_of(world.root, ALICE))
    assert h.reply("RETR 1\r\n") == "-ERR Message was removed by another session"
    h.reply("DELE 2\r\n")
    assert h.reply("QUIT\r\n").startswith("+OK")
    h = pop3(world)
    assert h.reply("STAT\r\n") == "+OK 0 0"
    imap = world.connect().login()
    assert b"* 0 EXISTS" in imap.ok("SELECT INBOX")
