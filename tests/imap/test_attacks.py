"""Hostile input: deep nesting, huge literals, traversal names, NUL, STARTTLS injection.
Every case gets a protocol answer, the session (or the process) survives, nothing escapes."""

from __future__ import annotations


def test_deeply_nested_lists_get_bad(client):
    assert client.cmd("FETCH 1 " + "(" * 5000 + ")" * 5000)[1].startswith(b"BAD")
    assert client.cmd("NOOP")[1].startswith(b"OK")


def test_deeply_nested_search_gets_bad(world, client):
    world.deliver(b"Subject: x\r\n\r\nx\r\n")
    client.ok("SELECT INBOX")
    assert client.cmd("SEARCH " + "NOT " * 5000 + "ALL")[1].startswith(b"BAD")
    assert client.cmd("NOOP")[1].startswith(b"OK")


def test_literal_length_overflow_is_refused(client):
    out = client.send(b"a LOGIN {99999999999999999999}\r\n")
    assert b"BAD" in out or b"NO" in out
    assert client.cmd("NOOP")[1].startswith(b"OK")


def test_traversal_in_select_status_append_copy(world, client):
    for cmd in ('SELECT "../bob"', 'STATUS "../../x" (MESSAGES)', "APPEND ../x {1+}\r\nx",
                'CREATE "a/../../b"', 'RENAME Sent "../../evil"', 'DELETE "../alice"'):
        tagged = client.cmd(cmd)[1]
        assert tagged.startswith((b"NO", b"BAD")), (cmd, tagged)
    assert not (world.root / "evil").exists() and not (world.root / "b").exists()


def test_other_users_mailbox_unreachable(world, client):
    world.deliver(b"Subject: secret\r\n\r\nfor bob\r\n", user="bob@example.test")
    for name in ("../bob", "..bob", "bob@example.test"):
        assert not client.cmd(f'SELECT "{name}"')[1].startswith(b"OK")


def test_garbage_bytes_never_break_the_session(client):
    for junk in (b"\x00\x01\x02\r\n", b"a UID\r\n", b"a UID FROB 1\r\n", b"a FETCH * (BODY[1.0])\r\n",
                 b"a SELECT\r\n", b'a LIST "" \r\n', b"a STORE\r\n", b"a APPEND\r\n", b")(\r\n"):
        out = client.send(junk)
        assert b"BAD" in out, (junk, out)
    assert client.cmd("NOOP")[1].startswith(b"OK")
