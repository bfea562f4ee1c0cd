"""A user's Maildir removed or restored from a backup while the server runs is rebuilt, not broken."""

from __future__ import annotations

import re
import shutil

from .harness import USER, uidvalidity

MSG = b"Subject: x\r\n\r\nbody\r\n"


def test_deleted_maildir_is_rebuilt_at_next_login(world, client):
    client.ok("APPEND INBOX {4+}\r\nmail")
    before = uidvalidity(client.ok("SELECT INBOX"))
    shutil.rmtree(world.store.layout.maildir_path(USER))
    other = world.connect()
    untagged, tagged = other.cmd("LOGIN alice@example.test secret")
    assert tagged.startswith(b"OK"), tagged
    listed = b"".join(other.ok('LIST "" "*"'))
    assert b"\\Sent" in listed and b"\\Trash" in listed
    selected = other.ok("SELECT INBOX")
    assert b"* 0 EXISTS" in selected and uidvalidity(selected) != before
    assert other.cmd("APPEND Sent {4+}\r\nmail")[1].startswith(b"OK")


def test_selected_session_sees_removed_mailbox_as_expunged_not_a_server_bug(world, client):
    client.ok("APPEND INBOX {4+}\r\nmail")
    client.ok("APPEND INBOX {4+}\r\nmore")
    client.ok("SELECT INBOX")
    shutil.rmtree(world.store.layout.maildir_path(USER))
    untagged, tagged = client.cmd("NOOP")
    assert tagged.startswith(b"OK"), tagged
    assert untagged.count(b"* 1 EXPUNGE") == 2 or (b"* 2 EXPUNGE" in untagged and b"* 1 EXPUNGE" in untagged)
    assert any(line.startswith(b"* NO") for line in untagged)
    untagged, tagged = client.cmd("FETCH 1:* FLAGS")
    assert b"SERVERBUG" not in tagged
    untagged, tagged = client.cmd("APPEND INBOX {4+}\r\nnew!")
    assert tagged.startswith(b"OK"), tagged
    untagged = client.ok("SELECT INBOX")
    assert b"* 1 EXISTS" in untagged
    assert client.cmd("APPEND Sent {4+}\r\nsent")[1].startswith(b"OK")  # without logging in again


def test_restored_maildir_gets_a_new_uidvalidity_and_never_reuses_uids(world, client, tmp_path):
    client.ok("APPEND INBOX {4+}\r\nmail")
    backup = tmp_path / "backup"
    maildir = world.store.layout.maildir_path(USER)
    shutil.copytree(maildir, backup)
    client.ok("APPEND INBOX {4+}\r\nmore")
    before = uidvalidity(client.ok("SELECT INBOX"))
    client.ok("UNSELECT")
    shutil.rmtree(maildir)
    shutil.copytree(backup, maildir)
    untagged = client.ok("SELECT INBOX")
    assert b"* 1 EXISTS" in untagged
    after = uidvalidity(untagged)
    untagged, tagged = client.cmd("APPEND INBOX {4+}\r\nthen")
    m = re.match(rb"OK \[APPENDUID (\d+) (\d+)\]", tagged)
    assert m and int(m.group(1)) == after, tagged
    # Either the folder counts as new (another UIDVALIDITY: the directory was seen to be replaced)
    # or its UIDs go on past every UID handed out before (the same directory inode came back).
    assert after != before or int(m.group(2)) > 2


def test_restored_maildir_seen_missing_first_gets_a_new_uidvalidity(world, client, tmp_path):
    client.ok("APPEND INBOX {4+}\r\nmail")
    maildir = world.store.layout.maildir_path(USER)
    backup = tmp_path / "backup"
    shutil.copytree(maildir, backup)
    before = uidvalidity(client.ok("SELECT INBOX"))
    shutil.rmtree(maildir)
    client.ok("NOOP")  # the selected session sees the folder gone
    shutil.copytree(backup, maildir)
    untagged = client.ok("SELECT INBOX")
    assert b"* 1 EXISTS" in untagged and uidvalidity(untagged) > before


def test_folder_renamed_away_and_back_is_not_owned_twice(world, client):
    client.ok("CREATE Work")
    client.ok("APPEND Work {4+}\r\nmail")
    client.ok("SELECT Work")
    other = world.connect().login()
    other.ok("RENAME Work Tmp")
    other.ok("RENAME Tmp Work")
    untagged, tagged = client.cmd("NOOP")  # the old selection is gone, whatever the inodes say
    assert tagged.startswith(b"OK") and b"* 1 EXPUNGE" in untagged
    world.deliver(b"Subject: new\r\n\r\nnew\r\n", folder="Work")
    client.ok("NOOP")
    untagged = other.ok("SELECT Work")
    assert b"* 2 EXISTS" in untagged
    fetched = b"".join(other.ok("FETCH 1:* UID"))
    assert b"UID 1)" in fetched and b"UID 2)" in fetched


def test_rename_inbox_after_the_maildir_vanished_answers(world, client):
    client.ok("APPEND INBOX {4+}\r\nmail")
    client.ok("SELECT INBOX")
    client.ok("UNSELECT")
    shutil.rmtree(world.store.layout.maildir_path(USER))
    untagged, tagged = client.cmd("RENAME INBOX Old")  # no wait on ourselves for the folder tree
    assert tagged.startswith(b"OK"), tagged
    assert b"* 0 EXISTS" in client.ok("SELECT INBOX")
