"""APPEND and COPY respect the user's quota like local delivery does (RFC 5530 [OVERQUOTA])."""

from __future__ import annotations

from mailstack.accounts.store import User
from mailstack.testing import FakeAccounts

from .harness import USER

MSG = b"Subject: q\r\n\r\n" + b"x" * 36 + b"\r\n"  # 52 bytes


def limit(world, quota, messages=0):
    accounts = FakeAccounts(users=[USER])
    accounts.users[USER] = User(USER, "", quota, messages)
    world.store.accounts = accounts


def append(client, folder="INBOX"):
    return client.cmd(b"APPEND " + folder.encode() + b" {%d+}\r\n" % len(MSG) + MSG)[1]


def test_append_over_quota_gets_overquota(world, client):
    limit(world, 120)
    assert append(client).startswith(b"OK")
    assert append(client, "Drafts").startswith(b"OK")  # folders count towards the one quota
    tagged = append(client)
    assert tagged.startswith(b"NO [OVERQUOTA]"), tagged
    assert client.ok("STATUS INBOX (MESSAGES)")[0].endswith(b"(MESSAGES 1)")


def test_expunge_frees_space_at_once(world, client):
    limit(world, 60)
    append(client)
    client.ok("SELECT INBOX")
    client.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    client.ok("EXPUNGE")
    assert append(client).startswith(b"OK")


def test_quota_change_takes_effect_without_a_new_login(world, client):
    limit(world, 60)
    assert append(client).startswith(b"OK")
    assert append(client).startswith(b"NO [OVERQUOTA]")
    limit(world, 0)  # unlimited
    assert append(client).startswith(b"OK")


def test_copy_over_quota_gets_overquota_and_copies_nothing(world, client):
    limit(world, 120)
    append(client)
    append(client)
    client.ok("SELECT INBOX")
    untagged, tagged = client.cmd("COPY 1:2 Archive")
    assert tagged.startswith(b"NO [OVERQUOTA]"), tagged
    assert client.ok("STATUS Archive (MESSAGES)")[0].endswith(b"(MESSAGES 0)")


def test_move_within_the_account_uses_no_space_and_is_allowed_when_full(world, client):
    limit(world, 110)
    append(client)
    append(client)
    assert append(client).startswith(b"NO [OVERQUOTA]")
    client.ok("SELECT INBOX")
    untagged, tagged = client.cmd("MOVE 1 Trash")
    assert tagged.startswith(b"OK"), tagged  # cleaning up must stay possible


def test_getquotaroot_and_getquota_report_the_storage_resource(world, client):
    """RFC 9208: one quota root ("") for the whole account, STORAGE in units of 1024 octets."""
    assert {b"QUOTA", b"QUOTA=RES-STORAGE"} <= set(client.ok("CAPABILITY")[0].split())
    assert b"QUOTASET" not in client.ok("CAPABILITY")[0]
    assert client.ok("GETQUOTAROOT INBOX") == [b"* QUOTAROOT INBOX"]  # no limit: no root
    assert client.cmd('GETQUOTA ""')[1].startswith(b"NO [NONEXISTENT]")
    limit(world, 10 * 1024 * 1024)
    append(client)
    append(client, "Drafts")
    assert client.ok("GETQUOTAROOT Drafts") == [b'* QUOTAROOT Drafts ""', b'* QUOTA "" (STORAGE 1 10240)']
    assert client.ok('GETQUOTA ""') == [b'* QUOTA "" (STORAGE 1 10240)']
    assert client.cmd('GETQUOTA "other"')[1].startswith(b"NO [NONEXISTENT]")
    assert client.cmd("GETQUOTAROOT Nope")[1].startswith(b"NO [NONEXISTENT]")
    assert client.cmd('SETQUOTA "" (STORAGE 1)')[1].startswith(b"NO [NOPERM]")


def test_status_deleted_and_deleted_storage(world, client):
    """RFC 9208 §4.2: what an EXPUNGE would remove, in messages and in KiB."""
    for _ in range(3):
        append(client)
    client.ok("SELECT INBOX")
    client.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    assert client.ok("STATUS INBOX (DELETED DELETED-STORAGE MESSAGES)") == [
        b"* STATUS INBOX (DELETED 2 DELETED-STORAGE 1 MESSAGES 3)"]


def test_a_message_limit_is_the_message_resource(world, client):
    """RFC 9208 §5.2 MESSAGE: the number of messages in all folders; APPEND, MULTIAPPEND and
    COPY past it get NO [OVERQUOTA], MOVE and EXPUNGE stay possible."""
    assert b"QUOTA=RES-MESSAGE" in client.ok("CAPABILITY")[0].split()
    limit(world, 0, 3)
    assert client.ok("GETQUOTAROOT INBOX") == [b'* QUOTAROOT INBOX ""', b'* QUOTA "" (MESSAGE 0 3)']
    assert append(client).startswith(b"OK")
    assert append(client, "Drafts").startswith(b"OK")
    two = b"APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s" % (len(MSG), MSG, len(MSG), MSG)
    _, tagged = client.cmd(two)  # two more would make four
    assert tagged.startswith(b"NO [OVERQUOTA]"), tagged
    assert client.ok('GETQUOTA ""') == [b'* QUOTA "" (MESSAGE 2 3)']
    assert append(client).startswith(b"OK")
    assert append(client).startswith(b"NO [OVERQUOTA]")
    client.ok("SELECT INBOX")
    assert client.cmd("COPY 1 Archive")[1].startswith(b"NO [OVERQUOTA]")
    assert client.cmd("MOVE 1 Archive")[1].startswith(b"OK")
    limit(world, 10 * 1024 * 1024, 3)
    assert client.ok('GETQUOTA ""') == [b'* QUOTA "" (STORAGE 1 10240 MESSAGE 3 3)']
    client.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    client.ok("EXPUNGE")
    assert append(client).startswith(b"OK")


def test_deleting_a_folder_frees_its_messages_at_once(world, client):
    limit(world, 0, 2)
    client.ok("CREATE Old")
    assert append(client, "Old").startswith(b"OK") and append(client, "Old").startswith(b"OK")
    assert append(client).startswith(b"NO [OVERQUOTA]")
    client.ok("DELETE Old")
    assert append(client).startswith(b"OK")
