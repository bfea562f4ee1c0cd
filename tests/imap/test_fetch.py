"""FETCH and UID FETCH (RFC 3501 §6.4.5, §6.4.8, §7.4.2): items, sections, partials,
ENVELOPE, BODY and BODYSTRUCTURE of nested multiparts, implicit \\Seen."""

from __future__ import annotations

import pytest

from .harness import fetch_map
from .messages import NESTED, SIMPLE


@pytest.fixture
def nested(world, client):
    world.deliver(NESTED)
    world.deliver(SIMPLE)
    client.ok("SELECT INBOX")
    return client


def one(client, items, msn=1):
    return client.raw(f"FETCH {msn} ({items})").split(b"\r\n", 1)[0] if False else client.raw(
        f"FETCH {msn} ({items})")


def test_bodystructure_of_nested_multipart(nested):
    out = nested.raw("FETCH 1 BODYSTRUCTURE")
    assert out.startswith(
        b'* 1 FETCH (BODYSTRUCTURE ((("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 20 2 '
        b'NIL NIL NIL NIL)("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 11 1 NIL NIL NIL NIL) '
        b'"ALTERNATIVE" ("BOUNDARY" "inner") NIL NIL NIL)("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 52 '
        b'(NIL "inner" ((NIL NIL "eve" "example.test"))')
    assert b'("APPLICATION" "PDF" ("NAME" "doc.pdf") NIL NIL "BASE64" 8 NIL ("attachment" ("FILENAME" ' \
           b'"doc.pdf")) "en" NIL) "MIXED" ("BOUNDARY" "outer") NIL NIL NIL))' in out


def test_body_is_non_extensible(nested):
    out = nested.raw("FETCH 2 BODY")
    assert out.startswith(b'* 2 FETCH (BODY ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 19 2))')


def test_envelope_with_groups_and_defaults(nested):
    out = nested.raw("FETCH 1 ENVELOPE")
    assert (b'(("Alice A." NIL "alice" "example.test")) (("Alice A." NIL "alice" "example.test")) '
            b'(("Alice A." NIL "alice" "example.test")) (("Bob" NIL "bob" "example.test")'
            b'(NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) ((NIL NIL "team" NIL)'
            b'(NIL NIL "carol" "example.test")(NIL NIL "dave" "example.test")(NIL NIL NIL NIL)) '
            b'NIL NIL "<nested@example.test>"))') in out


@pytest.mark.parametrize("section,expected", [
    ("1.1", b"plain body\r\nline two"),
    ("1.2.MIME", b"Content-Type: text/html; charset=utf-8\r\n\r\n"),
    ("2", b"From: eve@example.test\r\nSubject: inner\r\n\r\ninner body"),
    ("2.HEADER", b"From: eve@example.test\r\nSubject: inner\r\n\r\n"),
    ("2.TEXT", b"inner body"),
    ("2.1", b"inner body"),
    ("3", b"JVBERi0="),
])
def test_part_sections(nested, section, expected):
    out = nested.raw(f"FETCH 1 BODY.PEEK[{section}]")
    assert out.startswith(f"* 1 FETCH (BODY[{section}] {{{len(expected)}}}\r\n".encode() + expected + b")")


def test_header_fields_and_not(nested):
    out = nested.raw("FETCH 2 (BODY.PEEK[HEADER.FIELDS (subject x-tag)])")
    assert b"BODY[HEADER.FIELDS (SUBJECT X-TAG)] {36}\r\nSubject: Hello world\r\nX-Tag: one\r\n\r\n)" in out
    out = nested.raw("FETCH 2 (BODY.PEEK[HEADER.FIELDS.NOT (From To Date Subject)])")
    assert b"{14}\r\nX-Tag: one\r\n\r\n)" in out


def test_partial_fetch(nested):
    assert b"BODY[]<0> {4}\r\nFrom)" in nested.raw("FETCH 2 BODY.PEEK[]<0.4>")
    assert b"BODY[TEXT]<6> {5}\r\nAlice)" in nested.raw("FETCH 2 BODY.PEEK[TEXT]<6.5>")
    assert b"BODY[]<99999> {0}\r\n)" in nested.raw("FETCH 2 BODY.PEEK[]<99999.5>")


def test_rfc822_items_and_sizes(nested):
    out = nested.raw("FETCH 2 (RFC822.SIZE RFC822.HEADER RFC822.TEXT)")
    assert f"RFC822.SIZE {len(SIMPLE)}".encode() in out
    assert b"RFC822.TEXT {19}\r\nHello Alice,\r\nbye\r\n" in out
    out = nested.raw("FETCH 2 RFC822")
    assert f"RFC822 {{{len(SIMPLE)}}}\r\n".encode().decode() in out.decode()


def test_macros_and_internaldate(nested):
    untagged = nested.ok("FETCH 2 FAST")
    assert b"FLAGS (\\Recent)" in untagged[0] and b"INTERNALDATE \"" in untagged[0]
    assert b"ENVELOPE" in nested.ok("FETCH 2 ALL")[0]
    full = nested.raw("FETCH 2 FULL")
    assert b"ENVELOPE" in full and b" BODY (" in full


def test_body_fetch_sets_seen_peek_does_not(nested):
    nested.ok("FETCH 2 BODY.PEEK[]")
    nested.ok("FETCH 2 RFC822.HEADER")
    assert b"\\Seen" not in nested.ok("FETCH 2 FLAGS")[0]
    out = nested.raw("FETCH 2 BODY[TEXT]")
    assert b"FLAGS (\\Seen \\Recent)" in out
    out = nested.raw("FETCH 1 RFC822.TEXT")
    assert b"\\Seen" in out


def test_uid_fetch_includes_uid_and_skips_missing(nested):
    untagged = nested.ok("UID FETCH 1:* FLAGS")
    assert fetch_map(untagged) == {1: b"(UID 1 FLAGS (\\Recent))", 2: b"(UID 2 FLAGS (\\Recent))"}
    assert nested.ok("UID FETCH 50:60 FLAGS") == []
    # RFC 3501 §6.4.8: "n:*" with n past the last UID still names the last message
    assert fetch_map(nested.ok("UID FETCH 99:* UID")) == {2: b"(UID 2)"}


def test_bad_fetches(nested):
    assert nested.cmd("FETCH 3 FLAGS")[1].startswith(b"BAD")
    assert nested.cmd("FETCH 1 (FLAGS BOGUS)")[1].startswith(b"BAD")
    assert nested.cmd("FETCH 1 BODY[MIME]")[1].startswith(b"BAD")
    assert nested.cmd("FETCH 1 BODY[]<0.0>")[1].startswith(b"BAD")
    assert nested.cmd("FETCH 1")[1].startswith(b"BAD")
    assert nested.cmd("FETCH 0 FLAGS")[1].startswith(b"BAD")


def test_fetch_on_empty_mailbox(client):
    client.ok("SELECT INBOX")
    assert client.cmd("FETCH 1:* FLAGS")[1].startswith(b"BAD")
    assert client.ok("UID FETCH 1:* FLAGS") == []


def test_flags_only_fetch_does_not_open_files(world, client, monkeypatch):
    world.deliver(SIMPLE)
    client.ok("SELECT INBOX")
    import mailstack.imap.selected as sel

    monkeypatch.setattr(sel, "read_file", lambda p: (_ for _ in ()).throw(AssertionError("opened")))
    assert len(client.ok("UID FETCH 1:* (FLAGS RFC822.SIZE INTERNALDATE)")) == 1


def test_metadata_items_render_as_the_general_path_does(world, client):
    from mailstack.imap import fetch as F
    from mailstack.imap.response import imap_date

    world.deliver(SIMPLE)
    world.deliver(NESTED)
    client.ok("SELECT INBOX")
    client.ok("STORE 1 +FLAGS (\\Flagged $Work)")
    items = "UID RFC822.SIZE FLAGS INTERNALDATE UID"
    got = fetch_map(client.ok(f"FETCH 1:2 ({items})"))
    assert F.metadata_fetch(["UID", "RFC822.SIZE", "FLAGS", "INTERNALDATE", "UID"]) is not None  # the quick path
    session = client.protocol.session
    box = session.view.box
    for msn, msg in enumerate(box.messages, 1):
        flags = session.view.flags(msg)
        general = F.render(["UID", "RFC822.SIZE", "FLAGS", "INTERNALDATE", "UID"], uid=msg.uid, flags=flags,
                           size=msg.size, internal_date=msg.internal_date, data=None)
        assert got[msn] == general
    assert b"FLAGS (\\Flagged $Work \\Recent)" in got[1]
    assert f'INTERNALDATE "{imap_date(box.messages[0].internal_date)}"'.encode() in got[1]


@pytest.mark.parametrize(("command", "expected"), [
    ("FETCH 3:2,1,2:3 UID", [1, 2, 3]),  # overlapping and out of order: each once, in order
    ("FETCH *:1 UID", [1, 2, 3]),
    ("UID FETCH 3,1:2,2 UID", [1, 2, 3]),
    ("UID FETCH 2:2,9:* UID", [2, 3]),
])
def test_sets_name_each_message_once_in_order(world, client, command, expected):
    for _ in range(3):
        world.deliver(SIMPLE)
    client.ok("SELECT INBOX")
    assert list(fetch_map(client.ok(command))) == expected
