"""SEARCH and UID SEARCH (RFC 3501 §6.4.4): every key, CHARSET, NOT/OR/parentheses."""

from __future__ import annotations

import re

import pytest

from .messages import NESTED, SIMPLE

THIRD = (b"From: Carol <carol@example.test>\r\nTo: alice@example.test\r\nCc: bob@example.test\r\n"
         b"Bcc: dave@example.test\r\nSubject: Lunch?\r\nDate: Fri, 20 Nov 2026 12:00:00 -0800\r\n\r\n"
         b"Pizza or sushi\r\n")


@pytest.fixture
def box(world, client):
    world.deliver(SIMPLE)
    world.deliver(NESTED)
    world.deliver(THIRD)
    client.ok("SELECT INBOX")
    client.ok("STORE 1 +FLAGS (\\Seen \\Answered)")
    client.ok("STORE 2 +FLAGS (\\Flagged \\Draft $Work)")
    client.ok("STORE 3 +FLAGS (\\Deleted)")
    return client


def hits(client, criteria, uid=False):
    untagged = client.ok(("UID SEARCH " if uid else "SEARCH ") + criteria)
    [line] = [u for u in untagged if u.startswith(b"* SEARCH")]
    return [int(x) for x in line.split()[2:]]


@pytest.mark.parametrize("criteria,expected", [
    ("ALL", [1, 2, 3]),
    ("SEEN", [1]), ("UNSEEN", [2, 3]), ("ANSWERED", [1]), ("UNANSWERED", [2, 3]),
    ("FLAGGED", [2]), ("UNFLAGGED", [1, 3]), ("DRAFT", [2]), ("UNDRAFT", [1, 3]),
    ("DELETED", [3]), ("UNDELETED", [1, 2]), ("KEYWORD $Work", [2]), ("UNKEYWORD $work", [1, 3]),
    ("RECENT", [1, 2, 3]), ("NEW", [2, 3]), ("OLD", []),
    ("FROM carol", [3]), ("TO bob", [2]), ("CC BOB@", [3]), ("BCC dave", [3]),
    ("SUBJECT \"hello WORLD\"", [1]), ("SUBJECT café", [2]),
    ("HEADER X-Tag one", [1]), ("HEADER Message-ID \"\"", [2]),
    ("BODY sushi", [3]), ("TEXT sushi", [3]), ("TEXT lunch", [3]), ("TEXT carol", [2, 3]), ("BODY Carol", []),
    ("LARGER 400", [2]), ("SMALLER 200", [1, 3]),
    ("SENTBEFORE 23-Nov-2026", [3]), ("SENTON 23-Nov-2026", [1]), ("SENTSINCE 24-Nov-2026", [2]),
    ("NOT SEEN", [2, 3]), ("OR SEEN FLAGGED", [1, 2]), ("(SEEN) (ANSWERED)", [1]),
    ("NOT (OR SEEN DELETED)", [2]), ("2:*", [2, 3]), ("1,3", [1, 3]), ("UID 2", [2]),
    ("CHARSET UTF-8 SUBJECT café", [2]), ("CHARSET US-ASCII ALL", [1, 2, 3]),
])
def test_search_keys(box, criteria, expected):
    assert hits(box, criteria) == expected


def test_internal_date_keys(box):
    import time

    today = time.strftime("%d-%b-%Y", time.gmtime())
    assert hits(box, f"ON {today}") == [1, 2, 3]
    assert hits(box, f"SINCE {today}") == [1, 2, 3]
    assert hits(box, f"BEFORE {today}") == []
    assert hits(box, "BEFORE 1-Jan-2100") == [1, 2, 3]


def test_uid_search_returns_uids(box):
    box.ok("STORE 1 +FLAGS (\\Deleted)")
    box.ok("EXPUNGE")
    assert hits(box, "ALL", uid=True) == [2]
    assert hits(box, "ALL") == [1]


def test_search_errors(box):
    assert box.cmd("SEARCH CHARSET KOI8-R ALL")[1].startswith(b"NO [BADCHARSET")
    assert box.cmd("SEARCH BOGUS")[1].startswith(b"BAD")
    assert box.cmd("SEARCH")[1].startswith(b"BAD")
    assert box.cmd("SEARCH SINCE yesterday")[1].startswith(b"BAD")
    assert box.cmd("SEARCH OR SEEN")[1].startswith(b"BAD")
    assert box.cmd("SEARCH LARGER x")[1].startswith(b"BAD")


def test_search_with_literal_string(box):
    out = box.send(b"s1 SEARCH CHARSET UTF-8 SUBJECT {5}\r\n")
    assert out == b"+ Ready for literal data\r\n"
    out = box.send("café\r\n".encode())
    assert out.startswith(b"* SEARCH 2\r\ns1 OK")


def es(client, command):
    """Untagged answers, with the command's tag in an ESEARCH response written as (TAG)."""
    return [re.sub(rb'\(TAG "t\d+"\)', b"(TAG)", line) for line in client.ok(command)]


def test_esearch_returns_what_was_asked_for(box):
    """RFC 4731: RETURN (MIN MAX COUNT ALL); RETURN () means ALL; nothing matched, only COUNT."""
    assert es(box, "SEARCH RETURN (MIN MAX COUNT ALL) UNDELETED") == [b'* ESEARCH (TAG) MIN 1 MAX 2 COUNT 2 ALL 1:2']
    assert es(box, "SEARCH RETURN () ALL") == [b'* ESEARCH (TAG) ALL 1:3']
    assert es(box, "SEARCH RETURN (COUNT MIN) OLD") == [b'* ESEARCH (TAG) COUNT 0']
    assert es(box, "SEARCH RETURN (MAX) CHARSET UTF-8 SUBJECT café") == [b'* ESEARCH (TAG) MAX 2']
    uids = hits(box, "ALL", uid=True)
    assert es(box, "UID SEARCH RETURN (ALL) NOT 2") == [
        b'* ESEARCH (TAG) UID ALL %d,%d' % (uids[0], uids[2])]
    assert box.cmd("SEARCH RETURN (FIRST) ALL")[1].startswith(b"BAD")
    assert {b"ESEARCH", b"SEARCHRES", b"WITHIN"} <= set(box.ok("CAPABILITY")[0].split())


def test_searchres_saves_a_result_for_dollar(box):
    """RFC 5182: SAVE alone answers only OK; "$" works in FETCH, STORE, SEARCH and UID forms."""
    assert es(box, "SEARCH RETURN (SAVE) UNSEEN") == []
    assert [line.split(b" ")[1] for line in es(box, "FETCH $ (FLAGS)")] == [b"2", b"3"]
    es(box, "STORE $ +FLAGS (\\Seen)")
    assert hits(box, "UNSEEN") == []
    assert hits(box, "$ DELETED") == [3]
    uids = hits(box, "ALL", uid=True)
    assert hits(box, "UID $", uid=True) == uids[1:]
    # With MIN and MAX alone only those are kept; "$" inside the saving SEARCH is the old value.
    assert es(box, "SEARCH RETURN (SAVE MIN) $") == [b"* ESEARCH (TAG) MIN 2"]
    assert [line.split(b" ")[1] for line in es(box, "FETCH $ FLAGS")] == [b"2"]
    assert es(box, "SEARCH RETURN (SAVE MAX COUNT) ALL") == [b'* ESEARCH (TAG) MAX 3 COUNT 3']
    assert len(es(box, "FETCH $ FLAGS")) == 3  # with COUNT the whole result is kept
    es(box, "EXPUNGE")  # message 3 was \Deleted: it leaves "$" too
    assert [line.split(b" ")[1] for line in es(box, "FETCH $ FLAGS")] == [b"1", b"2"]
    assert box.cmd("SEARCH RETURN (SAVE) NOSUCHKEY")[1].startswith(b"BAD")
    assert len(es(box, "FETCH $ FLAGS")) == 2  # a SEARCH answered BAD leaves "$" alone...
    assert box.cmd("SEARCH RETURN (SAVE) CHARSET KOI8-R ALL")[1].startswith(b"NO [BADCHARSET")
    assert es(box, "FETCH $ FLAGS") == []  # ...one answered NO empties it
    uids = hits(box, "ALL", uid=True)
    box.ok("SEARCH RETURN (SAVE) 1")
    box.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    box.ok("UID EXPUNGE $")  # "$" wherever a sequence set goes
    assert hits(box, "ALL", uid=True) == uids[1:]
    es(box, "SEARCH RETURN (SAVE) ALL")
    es(box, "UNSELECT")
    es(box, "SELECT INBOX")
    assert es(box, "FETCH $ FLAGS") == []  # and a new selection starts without one


def test_within_older_and_younger(world, client):
    """RFC 5032: OLDER and YOUNGER count seconds back from now, by internal date."""
    client.ok('APPEND INBOX "01-Jan-2020 00:00:00 +0000" {9+}\r\nold one\r\n')
    client.ok("APPEND INBOX {9+}\r\nnew one\r\n")
    client.ok("SELECT INBOX")
    assert hits(client, "YOUNGER 3600") == [2]
    assert hits(client, "OLDER 3600") == [1]
    assert hits(client, "OR OLDER 86400 YOUNGER 60") == [1, 2]
    assert client.cmd("SEARCH OLDER 0")[1].startswith(b"BAD")
