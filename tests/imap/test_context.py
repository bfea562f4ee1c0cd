"""ESORT and CONTEXT=SEARCH/SORT (RFC 5267): SORT RETURN, PARTIAL, UPDATE with ADDTO and
REMOVEFROM, NOUPDATE and CANCELUPDATE."""

from __future__ import annotations

import pytest

from .test_sort import message


@pytest.fixture
def box(world, client):
    for subject, day in (("Delta", 23), ("alpha", 25), ("Charlie", 21), ("bravo", 24), ("echo", 22)):
        world.deliver(message(subject, "a@example.test", "b@example.test", f"Mon, {day} Nov 2026 10:00:00 +0000"))
    client.ok("SELECT INBOX")
    return client


def told(client, command: str) -> list[bytes]:
    """Every line a command brings, the untagged ones sent after its tagged OK too (RFC 5267
    §4.3.2: updates may come at any time)."""
    return [line for line in client.raw(command).split(b"\r\n") if line.startswith(b"* ")]


def tagged_as(client, command: str) -> list[bytes]:
    """The untagged answer, with the ESEARCH tag replaced by T."""
    lines = client.ok(command)
    return [line.replace(f'(TAG "t{client.n}")'.encode(), b'(TAG "T")') for line in lines]


def test_capabilities(client):
    caps = client.ok("CAPABILITY")[0].split()
    assert {b"ESORT", b"CONTEXT=SEARCH", b"CONTEXT=SORT"} <= set(caps)


def test_sort_return_answers_esearch_in_sort_order(box):
    # subjects: 1 Delta, 2 alpha, 3 Charlie, 4 bravo, 5 echo -> alpha bravo Charlie Delta echo
    assert tagged_as(box, "SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL") == [
        b'* ESEARCH (TAG "T") MIN 2 MAX 5 COUNT 5 ALL 2,4,3,1,5']
    assert tagged_as(box, "UID SORT RETURN () (DATE) UTF-8 ALL") == [b'* ESEARCH (TAG "T") UID ALL 3,5,1,4,2']
    assert tagged_as(box, "SORT RETURN (ALL) (REVERSE SUBJECT) UTF-8 ALL") == [b'* ESEARCH (TAG "T") ALL 5,1,3:4,2']
    assert tagged_as(box, "SORT RETURN (COUNT) (SUBJECT) UTF-8 SUBJECT nothing") == [b'* ESEARCH (TAG "T") COUNT 0']
    assert box.ok("SORT (SUBJECT) UTF-8 ALL") == [b"* SORT 2 4 3 1 5"]  # without RETURN: as before


def test_partial_results(box):
    assert tagged_as(box, "SORT RETURN (PARTIAL 2:3) (SUBJECT) UTF-8 ALL") == [
        b'* ESEARCH (TAG "T") PARTIAL (2:3 4,3)']
    assert tagged_as(box, "SEARCH RETURN (PARTIAL 4:9 COUNT) ALL") == [b'* ESEARCH (TAG "T") COUNT 5 PARTIAL (4:9 4:5)']
    assert tagged_as(box, "UID SEARCH RETURN (PARTIAL 9:6) ALL") == [b'* ESEARCH (TAG "T") UID PARTIAL (9:6 NIL)']
    assert tagged_as(box, "SEARCH RETURN (CONTEXT COUNT) ALL") == [b'* ESEARCH (TAG "T") COUNT 5']


@pytest.mark.parametrize("command", [
    "SEARCH RETURN (ALL PARTIAL 1:2) ALL", "SEARCH RETURN (PARTIAL 0:2) ALL", "SEARCH RETURN (PARTIAL 1:*) ALL",
    "SEARCH RETURN (PARTIAL) ALL", "SEARCH RETURN (COUNT COUNT) ALL", "SORT RETURN (SAVE) (SUBJECT) UTF-8 ALL",
    "SORT RETURN (NOSUCH) (SUBJECT) UTF-8 ALL", "CANCELUPDATE t1", "CANCELUPDATE",
])
def test_bad_options_get_bad(box, command):
    assert box.cmd(command)[1].startswith(b"BAD"), command


def test_a_uid_search_result_is_kept_current(world, box):
    assert tagged_as(box, "UID SEARCH RETURN (UPDATE COUNT) UNSEEN") == [b'* ESEARCH (TAG "T") UID COUNT 5']
    tag = f"t{box.n}"
    other = world.connect().login()
    other.ok("SELECT INBOX")
    other.ok("UID STORE 2,4 +FLAGS (\\Seen)")
    assert f'* ESEARCH (TAG "{tag}") UID REMOVEFROM (0 2,4)'.encode() in box.ok("NOOP")
    other.ok("UID STORE 4 -FLAGS (\\Seen)")
    world.deliver(message("foxtrot", "a@example.test", "b@example.test", "Mon, 20 Nov 2026 10:00:00 +0000"))
    lines = told(box, "NOOP")
    added = f'* ESEARCH (TAG "{tag}") UID ADDTO (0 6)'.encode()
    assert f'* ESEARCH (TAG "{tag}") UID ADDTO (0 4)'.encode() in lines and added in lines
    assert lines.index(b"* 6 EXISTS") < lines.index(added)  # a new message: after its EXISTS
    other.ok("UID STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.ok("UID EXPUNGE 1")
    assert f'* ESEARCH (TAG "{tag}") UID REMOVEFROM (0 1)'.encode() in box.ok("NOOP")
    assert box.ok("NOOP") == []  # nothing changed since: nothing told
    box.ok(f'CANCELUPDATE "{tag}"')
    other.ok("UID STORE 3 +FLAGS (\\Seen)")
    assert not any(b"ESEARCH" in line for line in box.ok("NOOP"))


def test_a_uid_sort_result_is_kept_current_by_position(world, box):
    # by subject: alpha(2) bravo(4) Charlie(3) Delta(1) echo(5); UNSEEN keeps them all
    box.ok("UID SORT RETURN (UPDATE) (SUBJECT) UTF-8 UNSEEN")
    tag = f"t{box.n}"
    other = world.connect().login()
    other.ok("SELECT INBOX")
    other.ok("UID STORE 4,1 +FLAGS (\\Seen)")  # bravo at 2 and Delta at 4 go: from the end first
    assert f'* ESEARCH (TAG "{tag}") UID REMOVEFROM (4 1 2 4)'.encode() in box.ok("NOOP")
    world.deliver(message("beta", "a@example.test", "b@example.test", "Mon, 20 Nov 2026 10:00:00 +0000"))
    other.ok("UID STORE 1 -FLAGS (\\Seen)")  # alpha Charlie Delta echo, then beta (new) at 2
    lines = told(box, "NOOP")
    assert f'* ESEARCH (TAG "{tag}") UID ADDTO (3 1)'.encode() in lines
    assert f'* ESEARCH (TAG "{tag}") UID ADDTO (2 6)'.encode() in lines


def test_updates_reach_an_idle_session(world, box):
    box.ok("UID SEARCH RETURN (UPDATE) FLAGGED")
    tag = f"t{box.n}"
    assert box.raw("IDLE") == b"+ idling\r\n"
    other = world.connect().login()
    other.ok("SELECT INBOX")
    other.ok("UID STORE 3 +FLAGS (\\Flagged)")
    assert f'* ESEARCH (TAG "{tag}") UID ADDTO (0 3)'.encode() in box.read()
    assert box.send("DONE\r\n").endswith(b"OK IDLE terminated\r\n")


def test_updates_refused_where_they_cannot_be_kept(box):
    untagged, tagged = box.cmd("SEARCH RETURN (UPDATE COUNT) ALL")  # message numbers: refused, still answered
    assert untagged[-1].startswith(f'* NO [NOUPDATE "t{box.n}"] '.encode()) and tagged.startswith(b"OK")
    assert untagged[0] == f'* ESEARCH (TAG "t{box.n}") COUNT 5'.encode()
    for drifting in ("1:3", "UID 3:*", "YOUNGER 3600", "$"):  # their matches change without the messages
        assert any(b"NOUPDATE" in line for line in box.ok(f"UID SEARCH RETURN (UPDATE) {drifting}")), drifting
    for _ in range(5):
        assert not any(b"NOUPDATE" in line for line in box.ok("UID SEARCH RETURN (UPDATE) ALL"))
    kept = f"t{box.n}"
    assert any(b"NOUPDATE" in line for line in box.ok("UID SEARCH RETURN (UPDATE) ALL"))  # the sixth
    again = box.send(f"{kept} UID SEARCH RETURN (UPDATE) ALL\r\n")  # a tag already in use
    assert again.startswith(f"{kept} BAD".encode())


def test_results_stop_being_kept_when_the_mailbox_is_left(world, box):
    box.ok("UID SEARCH RETURN (UPDATE) SEEN")
    box.ok("SELECT INBOX")
    other = world.connect().login()
    other.ok("SELECT INBOX")
    other.ok("UID STORE 1 +FLAGS (\\Seen)")
    assert not any(b"ESEARCH" in line for line in box.ok("NOOP"))


def test_a_result_that_cannot_be_worked_out_again_is_dropped_not_the_session(world, box, monkeypatch):
    """A read error while a kept result is worked out again: NOUPDATE and a log line; every
    command goes on working."""
    import errno

    import mailstack.imap.selected as selected

    box.ok("UID SEARCH RETURN (UPDATE) BODY nothing-like-it")
    tag = f"t{box.n}"
    world.deliver(message("new", "a@example.test", "b@example.test", "Mon, 20 Nov 2026 10:00:00 +0000"))

    def broken(path):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(selected, "read_file", broken)
    out = box.raw("NOOP")
    assert f'* NO [NOUPDATE "{tag}"]'.encode() in out and f"t{box.n} OK".encode() in out
    assert out.count(f"t{box.n} ".encode()) == 1  # one tagged answer
    monkeypatch.undo()
    assert box.ok("NOOP") == [] and box.cmd(f'CANCELUPDATE "{tag}"')[1].startswith(b"OK")


def test_modseq_of_an_esort_min_is_that_of_the_first_in_sort_order(box):
    box.ok("UID STORE 3 +FLAGS (\\Flagged)")  # Charlie: the highest mod-sequence now
    sorted_min = box.ok("UID SORT RETURN (MIN) (SUBJECT) UTF-8 MODSEQ 1")[-1]
    fetched = box.ok("UID FETCH 2 (MODSEQ)")[0]
    assert b"MIN 2 MODSEQ " + fetched.split(b"MODSEQ (")[1].split(b")")[0] in sorted_min
