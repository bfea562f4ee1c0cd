"""IMAP4rev2 (RFC 9051) next to IMAP4rev1: the rev2 behaviours only after ENABLE IMAP4rev2."""

from __future__ import annotations

import pytest

from .messages import SIMPLE


@pytest.fixture
def rev2(world, client):
    for _ in range(3):
        world.deliver(SIMPLE)
    assert client.ok("ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2"]
    return client


def test_both_revisions_are_advertised(client):
    caps = client.ok("CAPABILITY")[0].split()
    assert b"IMAP4rev1" in caps and b"IMAP4rev2" in caps and b"LITERAL+" in caps and b"LITERAL-" not in caps


def test_enable_twice_enables_nothing_more(rev2):
    assert rev2.ok("ENABLE IMAP4rev2") == [b"* ENABLED"]


def test_select_lists_the_mailbox_and_says_nothing_of_recent(world, rev2):
    lines = rev2.ok("SELECT INBOX")
    assert b'* LIST (\\HasNoChildren) "." INBOX' in lines  # RFC 9051 §6.3.2
    assert not any(b"RECENT" in line or b"UNSEEN" in line for line in lines)
    assert b"* 3 EXISTS" in lines
    assert b"\\Recent" not in b"".join(rev2.ok("FETCH 1:* (FLAGS)"))
    world.deliver(SIMPLE)
    assert rev2.ok("NOOP") == [b"* 4 EXISTS"]
    assert b'* LIST (\\HasNoChildren \\Drafts) "." Drafts' in rev2.ok("EXAMINE Drafts")


def test_search_answers_esearch(rev2):
    rev2.ok("SELECT INBOX")
    rev2.ok("STORE 2 +FLAGS (\\Seen)")
    n = rev2.n + 1
    assert rev2.ok("SEARCH UNSEEN") == [f'* ESEARCH (TAG "t{n}") ALL 1,3'.encode()]
    n = rev2.n + 1
    assert rev2.ok("UID SEARCH SEEN") == [f'* ESEARCH (TAG "t{n}") UID ALL 2'.encode()]
    n = rev2.n + 1
    assert rev2.ok("SEARCH CHARSET UTF-8 SUBJECT nothing-like-it") == [f'* ESEARCH (TAG "t{n}")'.encode()]
    n = rev2.n + 1
    assert rev2.ok("SEARCH RETURN (COUNT) ALL") == [f'* ESEARCH (TAG "t{n}") COUNT 3'.encode()]
    assert rev2.ok("SEARCH LARGER 5000000000") == [f'* ESEARCH (TAG "t{rev2.n}")'.encode()]  # number64


def test_mailbox_names_are_utf8_for_rev2_and_modified_utf7_for_rev1(world, rev2):
    rev1 = world.connect().login()
    rev2.ok('CREATE "Entwürfe"')
    rev2.ok('CREATE "&Jjo-"')  # an ordinary character in rev2: a mailbox literally called &Jjo-
    listed = rev2.ok('LIST "" "*"')
    assert '* LIST (\\HasNoChildren) "." "Entwürfe"'.encode() in listed
    assert b'* LIST (\\HasNoChildren) "." &Jjo-' in listed
    old = rev1.ok('LIST "" "*"')
    assert b'* LIST (\\HasNoChildren) "." Entw&APw-rfe' in old
    assert b'* LIST (\\HasNoChildren) "." &-Jjo-' in old
    rev1.ok("SELECT Entw&APw-rfe")
    assert rev2.ok('STATUS "Entwürfe" (MESSAGES)') == ['* STATUS "Entwürfe" (MESSAGES 0)'.encode()]
    assert rev1.cmd('CREATE "Entwürfe2"')[1].startswith(b"BAD")  # rev1: 8-bit names are not allowed


def test_new_names_must_be_nfc_without_control_characters(world, rev2):
    decomposed = "Entwu\u0308rfe"
    untagged, tagged = rev2.cmd(f'CREATE "{decomposed}"')
    assert tagged.startswith(b"NO [CANNOT]")
    assert rev2.cmd('CREATE "a\x7fb"')[1].startswith(b"BAD")
    assert rev2.cmd("CREATE &AAE-")[1].startswith(b"OK")  # rev2: those are plain characters
    rev1 = world.connect().login()
    assert rev1.cmd("CREATE x&AAE-")[1].startswith(b"NO [CANNOT]")  # rev1: U+0001 in modified UTF-7


def test_rev1_sessions_keep_rev1_answers(world, client):
    for _ in range(2):
        world.deliver(SIMPLE)
    lines = client.ok("SELECT INBOX")
    assert b"* 2 RECENT" in lines and not any(line.startswith(b"* LIST") for line in lines)
    assert client.ok("SEARCH ALL") == [b"* SEARCH 1 2"]
    assert b"\\Recent" in client.ok("FETCH 1 (FLAGS)")[0]


def test_response_text_stays_ascii(client):
    _, tagged = client.cmd('SELECT "Entw&APw-rfe"')
    assert tagged.isascii()


def test_a_rev2_session_takes_no_recent_from_rev1_sessions(world, rev2):
    rev2.ok("SELECT INBOX")
    rev1 = world.connect().login()
    assert b"* 3 RECENT" in rev1.ok("SELECT INBOX")


def test_enable_rev2_with_a_mailbox_selected_drops_recent_at_once(world, client):
    world.deliver(SIMPLE)
    client.ok("SELECT INBOX")
    client.ok("ENABLE IMAP4rev2")
    assert b"\\Recent" not in client.ok("FETCH 1 (FLAGS)")[0]


def test_a_folder_not_named_in_utf8_is_left_out_of_list(world, client):
    import os

    from .harness import USER

    root = world.store.layout.maildir_path(USER, None)
    client.ok("LIST \"\" *")  # the account exists
    bad = os.fsencode(str(root)) + b"/.caf\xe9"
    for sub in (b"cur", b"new", b"tmp"):
        os.makedirs(bad + b"/" + sub)
    lines = client.ok('LIST "" "*"')
    assert lines and not any(b"caf" in line for line in lines)
    client.ok("ENABLE IMAP4rev2")
    assert not any(b"caf" in line for line in client.ok('LIST "" "*"'))
