"""SORT and UID SORT (RFC 5256 §3), DISPLAYFROM/DISPLAYTO (RFC 5957), base subjects (§2.1)."""

from __future__ import annotations

import pytest

from mailstack.imap.sort import base_subject


def message(subject: str, sender: str, to: str, date: str, body: str = "x") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nCc: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n\r\n{body}\r\n").encode()


@pytest.fixture
def box(world, client):
    world.deliver(message("Re: Budget", "Zed <zed@example.test>", "bob@example.test",
                          "Mon, 23 Nov 2026 10:00:00 +0000", "a longer body than the others"))
    world.deliver(message("[team] budget", "alice@example.test", "Carol <carol@example.test>",
                          "Mon, 23 Nov 2026 12:00:00 +0200"))  # 10:00 UTC: the same instant as #1
    world.deliver(message("Agenda", "=?utf-8?q?=C3=89mile?= <emile@example.test>", "amy@example.test",
                          "Sun, 22 Nov 2026 09:00:00 +0000"))
    world.deliver(b"Subject: no date, no addresses\r\n\r\nbody\r\n")
    client.ok("SELECT INBOX")
    return client


def sort(client, command: str) -> list[int]:
    untagged = client.ok(command)
    [line] = [u for u in untagged if u.startswith(b"* SORT")]
    return [int(x) for x in line.split()[2:]]


@pytest.mark.parametrize("criteria,expected", [
    ("(SUBJECT)", [3, 1, 2, 4]),  # agenda, budget, budget (ties in mailbox order), no date
    ("(REVERSE SUBJECT)", [4, 1, 2, 3]),  # REVERSE turns the key, not the tie-break
    ("(DATE)", [4, 3, 1, 2]),  # no Date: the internal date (now) would be last, so 4... see below
    ("(FROM)", [4, 2, 3, 1]),  # "", alice, emile, zed
    ("(DISPLAYFROM)", [4, 2, 1, 3]),  # "", alice@example.test, Zed, Émile (code points: É after Z)
    ("(TO)", [4, 3, 1, 2]),  # "", amy, bob, carol
    ("(DISPLAYTO)", [4, 3, 1, 2]),  # amy@…, bob@…, Carol
    ("(REVERSE DATE)", [4, 1, 2, 3]),  # the same instant: mailbox order, even reversed
    ("(ARRIVAL)", [1, 2, 3, 4]),  # delivered within one second: mailbox order
    ("(SUBJECT REVERSE DATE)", [3, 1, 2, 4]),
])
def test_sort_keys(box, criteria, expected):
    if criteria == "(DATE)":  # the undated message sorts by its internal date: now, after the others
        expected = [3, 1, 2, 4]
    assert sort(box, f"SORT {criteria} UTF-8 ALL") == expected


def test_sort_with_search_criteria_uid_form_and_errors(box):
    assert sort(box, "SORT (SUBJECT) UTF-8 NOT FROM zed") == [3, 2, 4]
    sizes = {int(line.split()[1]): int(line.rsplit(b" ", 1)[1].rstrip(b")"))
             for line in box.ok("FETCH 1:* RFC822.SIZE")}
    uids = [int(x) for x in box.ok("UID SEARCH ALL")[0].split()[2:]]
    by_size = sorted(sizes, key=lambda n: (-sizes[n], n))
    assert sort(box, "UID SORT (REVERSE SIZE) US-ASCII ALL") == [uids[n - 1] for n in by_size]
    assert sort(box, "SORT (SIZE) UTF-8 ALL") == sorted(sizes, key=lambda n: (sizes[n], n))
    assert box.cmd("SORT (COLOUR) UTF-8 ALL")[1].startswith(b"BAD")
    assert box.cmd("SORT (REVERSE) UTF-8 ALL")[1].startswith(b"BAD")
    assert box.cmd("SORT (DATE) KOI8-R ALL")[1].startswith(b"NO [BADCHARSET")
    assert box.cmd("SORT (DATE) UTF-8")[1].startswith(b"BAD")
    assert {b"SORT", b"SORT=DISPLAY"} <= set(box.ok("CAPABILITY")[0].split())


@pytest.mark.parametrize("subject,base", [
    ("Re: hello", "hello"), ("RE: [list] Re: Fwd: hello (fwd)", "hello"), ("[list] hello", "hello"),
    ("[list]", "[list]"), ("Fwd: [fwd: Re: test]", "test"), ("re[2]: spam", "spam"), ("Re: Re: Re:", ""),
    ("=?utf-8?q?R=C3=A9union?=", "Réunion"), ("many  spaces\t(fwd) (FWD)", "many spaces"),
    ("Fw: [a] [b] x", "x"), ("Return of the King", "Return of the King"),
])
def test_base_subject(subject, base):
    assert base_subject(subject) == base
