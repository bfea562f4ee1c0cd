"""CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB (RFC 3501 §6.3.3-6.3.9,
RFC 3348, RFC 6154) and mailbox-name safety."""

from __future__ import annotations

import pytest


def list_names(lines):
    return [ln.rsplit(b'"." ', 1)[1] for ln in lines]


def test_first_login_creates_special_use_folders(client):
    lines = client.ok('LIST "" *')
    assert list_names(lines) == [b"INBOX", b"Archive", b"Drafts", b"Junk", b"Sent", b"Trash"]
    assert b"* LIST (\\HasNoChildren \\Sent) \".\" Sent" in lines
    lsub = client.ok('LSUB "" *')
    assert b"* LSUB () \".\" Sent" in lsub


def test_list_delimiter_query(client):
    assert client.ok('LIST "" ""') == [b'* LIST (\\Noselect) "." ""']


def test_create_hierarchy_and_percent(client):
    client.ok("CREATE Projects.2026.Q1")
    assert client.cmd("CREATE Projects")[1].startswith(b"NO [ALREADYEXISTS]")
    lines = client.ok('LIST "" %')
    assert b'* LIST (\\HasChildren) "." Projects' in lines
    assert list_names(client.ok('LIST "Projects." %')) == [b"Projects.2026"]
    assert list_names(client.ok('LIST "" Projects.*')) == [b"Projects.2026", b"Projects.2026.Q1"]
    assert list_names(client.ok('LIST "" inbox')) == [b"INBOX"]


def test_delete_keeps_children_as_noselect(client):
    client.ok("CREATE A.B")
    client.ok("DELETE A")
    assert b'* LIST (\\Noselect \\HasChildren) "." A' in client.ok('LIST "" A')
    assert client.cmd("DELETE A")[1].startswith(b"NO [NONEXISTENT]")
    assert client.cmd("DELETE INBOX")[1].startswith(b"NO")


def test_rename_moves_children(client):
    client.ok("CREATE Old.Child")
    client.ok("RENAME Old New")
    names = list_names(client.ok('LIST "" *'))
    assert b"New" in names and b"New.Child" in names and b"Old" not in names
    assert client.cmd("RENAME Missing X")[1].startswith(b"NO [NONEXISTENT]")
    assert client.cmd("RENAME New Sent")[1].startswith(b"NO [ALREADYEXISTS]")


def test_rename_inbox_moves_messages_and_leaves_inbox(world, client):
    world.deliver(b"Subject: x\r\n\r\nx\r\n")
    client.ok("RENAME INBOX Saved")
    assert b"MESSAGES 0" in client.ok("STATUS INBOX (MESSAGES)")[0]
    assert b"MESSAGES 1" in client.ok("STATUS Saved (MESSAGES)")[0]


def test_subscribe_lsub_unsubscribe(client):
    client.ok("CREATE Lists.Twisted")
    client.ok("SUBSCRIBE Lists.Twisted")
    assert b'* LSUB (\\Noselect) "." Lists' in client.ok('LSUB "" %')
    assert b'* LSUB () "." Lists.Twisted' in client.ok('LSUB "" Lists.*')
    client.ok("UNSUBSCRIBE Lists.Twisted")
    assert client.ok('LSUB "" Lists.*') == []
    assert client.cmd("SUBSCRIBE Nope")[1].startswith(b"NO")


def test_modified_utf7_names_round_trip(world, client):
    client.ok("CREATE &ZeVnLIqe-")
    assert b'"." &ZeVnLIqe-' in b"".join(client.ok('LIST "" *'))
    path = world.store.layout.maildir_path("alice@example.test", None)
    assert (path / ".\u65e5\u672c\u8a9e" / "cur").is_dir()
    assert client.cmd("CREATE caf\u00e9")[1].startswith(b"BAD")


@pytest.mark.parametrize("name", ["../../etc", "a/b", "/abs", ".hidden", "a..b", '"a\\\\b"',
                                  "&AC8-etc", "&AAA-"])
def test_unsafe_names_are_refused(world, client, name):
    tagged = client.cmd(f"CREATE {name}")[1]
    assert tagged.startswith((b"NO", b"BAD")), tagged
    root = world.root
    assert not any(p.name == "etc" for p in root.rglob("*"))


def test_create_with_wildcards_refused(client):
    assert client.cmd('CREATE "a*b"')[1].startswith(b"NO")


def test_create_with_trailing_delimiter_creates_the_name(client):
    client.ok("CREATE x.")  # RFC 3501 §6.3.3: a trailing delimiter only declares intent
    assert list_names(client.ok('LIST "" x')) == [b"x"]


def test_rename_inbox_keeps_keywords(world, client):
    world.deliver(b"Subject: x\r\n\r\nx\r\n")
    world.deliver(b"Subject: y\r\n\r\ny\r\n")
    client.ok("SELECT INBOX")
    client.ok("STORE 1 +FLAGS (Alpha)")  # INBOX: a = Alpha
    client.ok("STORE 2 +FLAGS (Beta)")  # INBOX: b = Beta
    client.ok("STORE 1 -FLAGS (Alpha)")
    client.ok("RENAME INBOX Saved")
    client.ok("SELECT Saved")
    untagged = client.ok("FETCH 1:2 FLAGS")
    assert b"Beta" in untagged[-1] and b"Alpha" not in b"".join(untagged[-2:])


def test_status_size_and_appendlimit(world, client):
    """RFC 8438 STATUS=SIZE, RFC 7889 APPENDLIMIT (one limit for every mailbox)."""
    [caps] = client.ok("CAPABILITY")
    assert b" STATUS=SIZE" in caps and b" APPENDLIMIT=100000" in caps
    assert client.ok("STATUS INBOX (SIZE MESSAGES)") == [b"* STATUS INBOX (SIZE 0 MESSAGES 0)"]
    first, second = b"Subject: a\r\n\r\nfirst\r\n", b"Subject: b\r\n\r\nthe second one\r\n"
    world.deliver(first)
    world.deliver(second)
    assert client.ok("STATUS INBOX (SIZE APPENDLIMIT)") == [
        b"* STATUS INBOX (SIZE %d APPENDLIMIT 100000)" % (len(first) + len(second))]
    client.ok("SELECT INBOX")
    sizes = [int(line.rsplit(b" ", 1)[1].rstrip(b")")) for line in client.ok("FETCH 1:* RFC822.SIZE")]
    assert sum(sizes) == len(first) + len(second)  # the same octets FETCH reports


def test_extended_list_patterns_selection_and_return_options(world, client):
    """RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154 SPECIAL-USE selection."""
    assert {b"LIST-EXTENDED", b"LIST-STATUS"} <= set(client.ok("CAPABILITY")[0].split())
    client.ok("CREATE Lists.Twisted")
    client.ok("SUBSCRIBE Lists.Twisted")
    client.ok("CREATE Gone")
    client.ok("SUBSCRIBE Gone")
    client.ok("DELETE Gone")  # still subscribed: \NonExistent in a SUBSCRIBED listing
    assert list_names(client.ok('LIST "" (INBOX Sent)')) == [b"INBOX", b"Sent"]
    lines = client.ok('LIST (SUBSCRIBED) "" "*"')
    assert b'* LIST (\\Noselect \\NonExistent \\Subscribed) "." Gone' in lines
    assert b'* LIST (\\HasNoChildren \\Subscribed) "." Lists.Twisted' in lines
    assert not any(line.endswith(b'"." Lists') for line in lines)  # not subscribed itself
    lines = client.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    assert b'* LIST (\\HasChildren) "." Lists ("CHILDINFO" ("SUBSCRIBED"))' in lines
    assert client.cmd('LIST (RECURSIVEMATCH) "" "*"')[1].startswith(b"BAD")
    assert client.cmd('LIST (FANCY) "" "*"')[1].startswith(b"BAD")
    lines = client.ok('LIST "" "%" RETURN (SUBSCRIBED)')
    assert b'* LIST (\\HasChildren) "." Lists' in lines  # CREATE made it: a mailbox, not subscribed
    assert b'* LIST (\\HasNoChildren \\Subscribed \\Sent) "." Sent' in lines
    assert list_names(client.ok('LIST (SPECIAL-USE) "" "*"')) == [b"Archive", b"Drafts", b"Junk", b"Sent", b"Trash"]
    world.deliver(b"Subject: s\r\n\r\nx\r\n")
    client.ok("DELETE Lists")  # only a name above Lists.Twisted now
    lines = client.ok('LIST "" (INBOX Lists*) RETURN (STATUS (MESSAGES UNSEEN))')
    assert lines[:2] == [b'* LIST (\\HasNoChildren) "." INBOX', b"* STATUS INBOX (MESSAGES 1 UNSEEN 1)"]
    assert b'* LIST (\\Noselect \\NonExistent \\HasChildren) "." Lists' in lines
    assert b"* STATUS Lists " not in b"\n".join(lines)  # not a mailbox: no STATUS
    assert b"* STATUS Lists.Twisted (MESSAGES 0 UNSEEN 0)" in lines
    assert client.cmd('LIST "" "*" RETURN (STATUS (COLOUR))')[1].startswith(b"BAD")


def test_recursivematch_lists_parents_that_do_not_exist_and_return_can_be_a_name(client):
    client.ok("CREATE Ghost.Child")
    client.ok("SUBSCRIBE Ghost.Child")
    client.ok("DELETE Ghost.Child")
    client.ok("DELETE Ghost")
    lines = client.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" %')
    assert b'* LIST (\\Noselect \\NonExistent) "." Ghost ("CHILDINFO" ("SUBSCRIBED"))' in lines
    assert client.cmd("LIST RETURN %")[1].startswith(b"OK")  # RFC 3501 form: a reference called RETURN


def test_create_special_use_gives_uses_that_follow_renames(client):
    """RFC 6154 §3 CREATE-SPECIAL-USE: the new folder takes the use from the default one."""
    assert b"CREATE-SPECIAL-USE" in client.ok("CAPABILITY")[0].split()
    client.ok("CREATE MyDrafts (USE (\\drafts))")  # attribute names are case-insensitive
    lines = client.ok('LIST "" "*"')
    assert b'* LIST (\\HasNoChildren \\Drafts) "." MyDrafts' in lines
    assert b'* LIST (\\HasNoChildren) "." Drafts' in lines  # the default folder gave it up
    client.ok("RENAME Sent Outbox")
    assert b'* LIST (\\HasNoChildren \\Sent) "." Outbox' in client.ok('LIST "" Outbox')
    assert list_names(client.ok('LIST (SPECIAL-USE) "" "*"')) == [b"Archive", b"Junk", b"MyDrafts", b"Outbox", b"Trash"]
    for refused in ("CREATE Everything (USE (\\All))", "CREATE Odd (USE (\\Important))"):
        assert client.cmd(refused)[1].startswith(b"NO [USEATTR]")
    assert list_names(client.ok('LIST "" Everything')) == []  # nothing created for a refused use
    assert client.cmd("CREATE Odd (COLOUR (red))")[1].startswith(b"BAD")
    client.ok("DELETE MyDrafts")  # gone: the use is the default folder's again
    assert b'* LIST (\\HasNoChildren \\Drafts) "." Drafts' in client.ok('LIST "" Drafts')


def test_the_junk_use_names_the_folder_quarantined_mail_goes_to(world, client):
    """DMARC quarantine files into the folder with the \\Junk use (QuarantineFilter asks this)."""
    from .harness import USER, run, sync_io

    assert run(world.store.folder_with_use(USER, "\\Junk", sync_io)) == "Junk"
    client.ok("CREATE Spam (USE (\\Junk))")
    assert run(world.store.folder_with_use(USER, "\\Junk", sync_io)) == "Spam"
    client.ok("RENAME Spam Lists.Spam")
    assert run(world.store.folder_with_use(USER, "\\Junk", sync_io)) == "Lists.Spam"
    client.ok("DELETE Lists.Spam")
    assert run(world.store.folder_with_use(USER, "\\Junk", sync_io)) == "Junk"


def test_list_status_of_a_mailbox_that_cannot_be_opened_says_noselect(world, client, monkeypatch):
    """RFC 5819 §2 (RFC 9051 §6.3.9.2): no STATUS for it, and \\Noselect on its LIST line."""
    from mailstack.maildir.folders import FolderError

    client.ok("CREATE Flaky")
    real = world.store.open

    async def open_(user, name, io, **kw):
        if name == "Flaky":
            raise FolderError("gone meanwhile", "NONEXISTENT")
        return await real(user, name, io, **kw)

    monkeypatch.setattr(world.store, "open", open_)
    lines = client.ok('LIST "" (Flaky INBOX) RETURN (STATUS (MESSAGES))')
    assert b'* LIST (\\Noselect \\HasNoChildren) "." Flaky' in lines
    assert not any(line.startswith(b"* STATUS Flaky") for line in lines)
    assert b"* STATUS INBOX (MESSAGES 0)" in lines
