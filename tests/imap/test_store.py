"""STORE and UID STORE (RFC 3501 §6.4.6): FLAGS, +FLAGS, -FLAGS, .SILENT, keywords in Maildir names."""

from __future__ import annotations

import pytest

from .harness import fetch_map
from .messages import SIMPLE


@pytest.fixture
def box(world, client):
    for _ in range(3):
        world.deliver(SIMPLE)
    client.ok("SELECT INBOX")
    return client


def test_store_forms(box):
    assert fetch_map(box.ok("STORE 1 +FLAGS (\\Seen \\Flagged)")) == {1: b"(FLAGS (\\Flagged \\Seen \\Recent))"}
    assert fetch_map(box.ok("STORE 1 -FLAGS (\\Flagged)")) == {1: b"(FLAGS (\\Seen \\Recent))"}
    assert fetch_map(box.ok("STORE 1 FLAGS (\\Draft)")) == {1: b"(FLAGS (\\Draft \\Recent))"}
    assert box.ok("STORE 1:3 +FLAGS.SILENT (\\Answered)") == []
    assert fetch_map(box.ok("UID STORE 2 FLAGS.SILENT ()")) == {}
    assert fetch_map(box.ok("UID STORE 3 +FLAGS \\Seen")) == {3: b"(UID 3 FLAGS (\\Answered \\Seen \\Recent))"}


def test_flags_live_in_file_names(world, box):
    box.ok("STORE 2 +FLAGS (\\Seen \\Deleted \\Draft \\Flagged \\Answered)")
    cur = world.store.layout.maildir_path("alice@example.test", None) / "cur"
    names = sorted(p.name for p in cur.iterdir())
    assert any(n.endswith(":2,DFRST") for n in names)


def test_keywords_map_to_letters(world, box):
    box.ok("STORE 1 +FLAGS ($Label1 Work)")
    untagged = box.ok("FETCH 1 FLAGS")
    assert b"$Label1" in untagged[0] and b"Work" in untagged[0]
    path = world.store.layout.maildir_path("alice@example.test", None)
    assert (path / "mailstack-keywords").read_text() == "$Label1\nWork\n"
    assert any(p.name.endswith(":2,ab") for p in (path / "cur").iterdir())
    flags_line = [u for u in box.ok("SELECT INBOX") if u.startswith(b"* FLAGS")][0]
    assert b"$Label1 Work" in flags_line


def test_keyword_limit(box):
    for i in range(26):
        box.ok(f"STORE 1 +FLAGS (k{i})")
    assert box.cmd("STORE 1 +FLAGS (one-too-many)")[1].startswith(b"NO [LIMIT]")
    permanent = [u for u in box.ok("SELECT INBOX") if b"PERMANENTFLAGS" in u][0]
    assert b"\\*" not in permanent


def test_store_errors(box):
    assert box.cmd("STORE 1 FLAGS (\\Bogus)")[1].startswith(b"BAD")
    assert box.cmd("STORE 1 XFLAGS (\\Seen)")[1].startswith(b"BAD")
    assert box.cmd("STORE 9 +FLAGS (\\Seen)")[1].startswith(b"BAD")
    assert box.cmd("STORE 1")[1].startswith(b"BAD")
    # \Recent cannot be stored; it is ignored
    assert box.cmd("STORE 1 +FLAGS (\\Recent)")[1].startswith(b"OK")


def test_new_keyword_announces_flags_to_all_sessions(world, box):
    untagged = box.ok("STORE 1 +FLAGS (Todo)")
    assert untagged[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Todo)"
    assert untagged[1].startswith(b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Todo \\*)]")
    other = world.connect().login()
    other.ok("SELECT INBOX")
    box.ok("STORE 2 +FLAGS (Later)")
    assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Todo Later)" in other.ok("NOOP")


def test_removing_unknown_keyword_defines_nothing(world, box):
    box.ok("STORE 1 -FLAGS (Never)")
    path = world.store.layout.maildir_path("alice@example.test", None)
    assert not (path / "mailstack-keywords").exists()
