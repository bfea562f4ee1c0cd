"""CONDSTORE and QRESYNC (RFC 7162): mod-sequences kept per message, across restarts,
CHANGEDSINCE/UNCHANGEDSINCE, SEARCH MODSEQ, ENABLE QRESYNC, VANISHED and SELECT (QRESYNC)."""

from __future__ import annotations

import re

import pytest

from mailstack.maildir.index import LOG_FILE

from .harness import USER, World, fetch_map, uidvalidity
from .messages import SIMPLE


def modseqs(lines: list[bytes]) -> dict[int, int]:
    """Message number -> MODSEQ of the FETCH lines."""
    out = {}
    for n, body in fetch_map(lines).items():
        m = re.search(rb"MODSEQ \((\d+)\)", body)
        if m:
            out[n] = int(m.group(1))
    return out


def highest(lines: list[bytes]) -> int:
    for line in lines:
        m = re.search(rb"HIGHESTMODSEQ (\d+)", line)
        if m:
            return int(m.group(1))
    raise AssertionError(lines)


@pytest.fixture
def box(world, client):
    for _ in range(5):
        world.deliver(SIMPLE)
    client.ok("SELECT INBOX")
    return client


def test_advertised(client):
    caps = client.ok("CAPABILITY")[0].split()
    assert b"CONDSTORE" in caps and b"QRESYNC" in caps


def test_select_condstore_reports_highestmodseq_and_fetch_modseq(world, client):
    for _ in range(3):
        world.deliver(SIMPLE)
    lines = client.ok("SELECT INBOX (CONDSTORE)")
    top = highest(lines)
    assert top >= 1
    seqs = modseqs(client.ok("FETCH 1:* (MODSEQ)"))
    assert set(seqs) == {1, 2, 3} and max(seqs.values()) <= top
    assert client.ok("FETCH 1 (UID MODSEQ)")[0].startswith(b"* 1 FETCH (UID 1 MODSEQ (")


def test_select_without_condstore_says_nothing_of_modseq(box):
    assert not any(b"HIGHESTMODSEQ" in line for line in box.ok("SELECT INBOX"))


def test_first_enabling_command_with_a_mailbox_selected_says_highestmodseq(box):
    untagged = box.ok("FETCH 1 (MODSEQ)")
    assert any(line.startswith(b"* OK [HIGHESTMODSEQ ") for line in untagged)
    assert not any(b"HIGHESTMODSEQ" in line for line in box.ok("FETCH 1 (MODSEQ)"))  # once


def test_store_raises_the_modseq_of_what_it_changed_only(box):
    box.ok("ENABLE CONDSTORE")
    before = modseqs(box.ok("FETCH 1:5 (MODSEQ)"))
    top = highest(box.ok("STATUS INBOX (HIGHESTMODSEQ)"))
    changed = box.ok("STORE 2 +FLAGS (\\Seen)")
    assert fetch_map(changed)[2].startswith(b"(UID 2 FLAGS (\\Seen \\Recent) MODSEQ (")
    after = modseqs(box.ok("FETCH 1:5 (MODSEQ)"))
    assert after[2] > top and {n: after[n] for n in (1, 3, 4, 5)} == {n: before[n] for n in (1, 3, 4, 5)}
    assert highest(box.ok("STATUS INBOX (HIGHESTMODSEQ)")) == after[2]
    # setting a flag that is already set changes nothing (RFC 7162 §3.1.11)
    again = box.ok("STORE 2 +FLAGS (\\Seen)")
    assert modseqs(again) == {2: after[2]}


def test_changedsince(box):
    top = highest(box.ok("SELECT INBOX (CONDSTORE)"))
    box.ok("STORE 1,4 +FLAGS.SILENT (\\Flagged)")
    lines = box.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {top})")
    assert sorted(fetch_map(lines)) == [1, 4]
    assert all(b"MODSEQ (" in body for body in fetch_map(lines).values())  # implied (§3.1.4.1)
    uid_lines = box.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {top})")
    assert all(body.startswith(b"(UID ") for body in fetch_map(uid_lines).values())
    assert box.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {highest(box.ok('STATUS INBOX (HIGHESTMODSEQ)'))})") == []


@pytest.mark.parametrize("command", [
    "FETCH 1 (FLAGS) (CHANGEDSINCE 0)",
    "FETCH 1 (FLAGS) (CHANGEDSINCE 9223372036854775808)",
    "FETCH 1 (FLAGS) (CHANGEDSINCE 99999999999999999999999)",
    "FETCH 1 (FLAGS) (CHANGEDSINCE x)",
    "FETCH 1 (FLAGS) (CHANGEDSINCE 5 CHANGEDSINCE 6)",
    "FETCH 1 (FLAGS) (NOSUCH 5)",
    "FETCH 1 (FLAGS) ()",
    "STORE 1 (UNCHANGEDSINCE 9223372036854775808) +FLAGS (\\Seen)",
    "STORE 1 (UNCHANGEDSINCE -1) +FLAGS (\\Seen)",
    "STORE 1 (UNCHANGEDSINCE 1 UNCHANGEDSINCE 2) +FLAGS (\\Seen)",
    "SEARCH MODSEQ 9223372036854775808",
    "SEARCH MODSEQ \"/flags/\\\\seen\" bogus 5",
    "SEARCH MODSEQ \"/other\" all 5",
    "UID FETCH 1 (FLAGS) (VANISHED)",
    "FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)",
    "UID FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)",  # QRESYNC not enabled
    "SELECT INBOX (QRESYNC (1 1))",  # QRESYNC not enabled
    "SELECT INBOX (NOSUCH)",
    "SELECT INBOX (CONDSTORE CONDSTORE)",
])
def test_bad_arguments_get_bad(box, command):
    untagged, tagged = box.cmd(command)
    assert tagged.startswith(b"BAD"), (command, tagged)
    assert box.ok("NOOP") is not None  # the session goes on, the mailbox still selected
    assert box.ok("FETCH 1 (UID)")


def test_largest_modseq_is_accepted(box):
    assert fetch_map(box.ok("FETCH 1:* (FLAGS) (CHANGEDSINCE 9223372036854775807)")) == {}
    assert box.ok("SEARCH MODSEQ 9223372036854775807") == [b"* SEARCH"]


def test_unchangedsince(box):
    box.ok("ENABLE CONDSTORE")
    seqs = modseqs(box.ok("FETCH 1:5 (MODSEQ)"))
    box.ok("STORE 3 +FLAGS.SILENT (\\Flagged)")  # 3 changes after the client looked
    untagged, tagged = box.cmd(f"STORE 1:5 (UNCHANGEDSINCE {max(seqs.values())}) +FLAGS.SILENT (\\Seen)")
    assert tagged.startswith(b"OK [MODIFIED 3]")
    told = modseqs(untagged)
    assert sorted(told) == [1, 2, 4, 5]  # .SILENT still says the new MODSEQ (§3.1.3); 3 is left alone
    assert all(v > max(seqs.values()) for v in told.values())
    assert b"\\Seen" in fetch_map(box.ok("FETCH 1 (FLAGS)"))[1]
    assert b"\\Seen" not in fetch_map(box.ok("FETCH 3 (FLAGS)"))[3]
    untagged, tagged = box.cmd("UID STORE 2,4 (UNCHANGEDSINCE 0) +FLAGS (\\Draft)")  # §3.1.3: 0 always fails
    assert tagged.startswith(b"OK [MODIFIED 2,4]")
    assert not any(b"\\Draft" in line for line in box.ok("FETCH 1:* (FLAGS)"))


def test_unchangedsince_for_message_numbers_names_numbers(world, box):
    box.ok("UID STORE 4 +FLAGS (\\Deleted)")
    box.ok("EXPUNGE")  # now UID 5 is message 4
    box.ok("UID STORE 5 +FLAGS (\\Flagged)")
    _, tagged = box.cmd("STORE 4 (UNCHANGEDSINCE 1) FLAGS (\\Seen)")
    assert tagged.startswith(b"OK [MODIFIED 4]")
    _, tagged = box.cmd("UID STORE 5 (UNCHANGEDSINCE 1) FLAGS (\\Seen)")
    assert tagged.startswith(b"OK [MODIFIED 5]")


def test_other_sessions_flag_changes_carry_uid_and_modseq(world, box):
    box.ok("ENABLE CONDSTORE")
    other = world.connect().login()
    other.ok("SELECT INBOX")
    other.ok("STORE 2 +FLAGS (\\Answered)")
    told = fetch_map(box.ok("NOOP"))
    assert told[2].startswith(b"(UID 2 FLAGS (\\Answered") and b"MODSEQ (" in told[2]
    plain = world.connect().login()
    plain.ok("SELECT INBOX")
    box.ok("STORE 3 +FLAGS (\\Answered)")
    assert b"MODSEQ" not in fetch_map(plain.ok("NOOP"))[3]  # a session that enabled nothing


def test_fetch_that_sets_seen_says_uid_and_modseq(box):
    box.ok("ENABLE CONDSTORE")
    body = box.raw("FETCH 2 (BODY[])")
    assert b"FLAGS (\\Seen \\Recent)" in body and b"UID 2" in body and b"MODSEQ (" in body


def test_search_sort_esearch_modseq(box):
    top = highest(box.ok("SELECT INBOX (CONDSTORE)"))
    box.ok("STORE 2 +FLAGS.SILENT (\\Seen)")
    box.ok("STORE 4 +FLAGS.SILENT (\\Seen)")
    seqs = modseqs(box.ok("FETCH 2,4 (MODSEQ)"))
    assert box.ok(f"SEARCH MODSEQ {top + 1}") == [f"* SEARCH 2 4 (MODSEQ {seqs[4]})".encode()]
    assert box.ok(f'SEARCH MODSEQ "/flags/\\\\seen" all {top + 1}') == [f"* SEARCH 2 4 (MODSEQ {seqs[4]})".encode()]
    rest = box.ok(f"UID SEARCH NOT MODSEQ {top + 1}")
    assert len(rest) == 1 and rest[0].startswith(b"* SEARCH 1 3 5 (MODSEQ ")
    assert int(rest[0].rsplit(b" ", 1)[1].rstrip(b")")) <= top
    assert box.ok("SEARCH MODSEQ 9000000000") == [b"* SEARCH"]  # nothing: no MODSEQ part
    esearch = box.ok(f"SEARCH RETURN (MIN) MODSEQ {top + 1}")
    assert esearch == [f'* ESEARCH (TAG "t{box.n}") MIN 2 MODSEQ {seqs[2]}'.encode()]
    esearch = box.ok(f"SEARCH RETURN (ALL) MODSEQ {top + 1}")
    assert esearch == [f'* ESEARCH (TAG "t{box.n}") ALL 2,4 MODSEQ {seqs[4]}'.encode()]
    assert box.ok(f"SORT (ARRIVAL) UTF-8 MODSEQ {top + 1}") == [f"* SORT 2 4 (MODSEQ {seqs[4]})".encode()]
    assert box.ok("SORT (ARRIVAL) UTF-8 ALL") == [b"* SORT 1 2 3 4 5"]


def test_search_modseq_enables_condstore(box):
    box.ok("SEARCH MODSEQ 1")
    assert b"MODSEQ" in box.ok("STORE 1 +FLAGS (\\Seen)")[0]


def test_qresync_expunge_says_vanished_and_highestmodseq(world, box):
    assert box.ok("ENABLE QRESYNC")[1:] == [b"* ENABLED QRESYNC"]
    box.ok("STORE 2,3 +FLAGS.SILENT (\\Deleted)")
    untagged, tagged = box.cmd("EXPUNGE")
    assert untagged == [b"* VANISHED 2:3"]
    assert tagged.startswith(b"OK [HIGHESTMODSEQ ")
    other = world.connect().login()
    other.ok("SELECT INBOX")
    other.ok("UID STORE 5 +FLAGS.SILENT (\\Deleted)")
    other.ok("UID EXPUNGE 5")
    assert box.ok("NOOP") == [b"* VANISHED 5"]
    assert box.ok("FETCH 1:* (UID)") == [b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 4)"]


def test_qresync_enables_condstore_too(box):
    lines = box.ok("ENABLE QRESYNC CONDSTORE")
    assert lines[0] == b"* OK [HIGHESTMODSEQ %d] Highest" % highest(lines)  # a mailbox is selected
    assert lines[1] == b"* ENABLED QRESYNC CONDSTORE"
    assert b"MODSEQ" in box.ok("STORE 1 +FLAGS (\\Seen)")[0]


def test_reselect_says_closed(box):
    untagged = box.ok("EXAMINE INBOX")
    assert untagged[0] == b"* OK [CLOSED] Previous mailbox is now closed"
    _, tagged = box.cmd("SELECT Nosuch")
    assert tagged.startswith(b"NO")
    assert not any(b"CLOSED" in line for line in box.ok("SELECT INBOX"))  # nothing was selected


def resync_setup(world: World):
    """A client that saw the mailbox at some point, and changes made since by another session."""
    for _ in range(10):
        world.deliver(SIMPLE)
    first = world.connect().login()
    first.ok("ENABLE QRESYNC")
    lines = first.ok("SELECT INBOX")
    state = (uidvalidity(lines), highest(lines))
    first.ok("LOGOUT")
    other = world.connect().login()
    other.ok("SELECT INBOX")
    other.ok("UID STORE 3 +FLAGS (\\Flagged)")
    other.ok("UID STORE 7 +FLAGS (\\Seen)")
    other.ok("UID STORE 2,5,6,9 +FLAGS (\\Deleted)")
    other.ok("UID EXPUNGE 2,5,6,9")
    world.deliver(SIMPLE)  # UID 11
    return state


def test_select_qresync_gets_only_the_changes(world):
    uv, modseq = resync_setup(world)
    c = world.connect().login()
    c.ok("ENABLE QRESYNC")
    lines = c.ok(f"SELECT INBOX (QRESYNC ({uv} {modseq}))")
    vanished = [line for line in lines if line.startswith(b"* VANISHED")]
    assert vanished == [b"* VANISHED (EARLIER) 2,5:6,9"]
    changed = fetch_map(lines)
    # UID 3, 7 and the new 11 changed since; numbers after the expunges: 3->2, 7->4, 11->7
    assert sorted(changed) == [2, 4, 7]
    assert changed[2].startswith(b"(UID 3 FLAGS (\\Flagged) MODSEQ (")
    assert changed[4].startswith(b"(UID 7 FLAGS (\\Seen) MODSEQ (")
    assert lines.index(vanished[0]) < min(i for i, line in enumerate(lines) if b"FETCH" in line)
    assert b"* 7 EXISTS" in lines


def test_select_qresync_with_known_uids_and_sample(world):
    uv, modseq = resync_setup(world)
    c = world.connect().login()
    c.ok("ENABLE QRESYNC")
    lines = c.ok(f"SELECT INBOX (QRESYNC ({uv} {modseq} 1:6))")
    assert [ln for ln in lines if ln.startswith(b"* VANISHED")] == [b"* VANISHED (EARLIER) 2,5:6"]
    assert sorted(fetch_map(lines)) == [2]  # only UID 3 among the known ones
    # UIDs now: 1 3 4 7 8 10 11. A sample of message numbers and the UIDs the client thinks they have:
    lines = c.ok(f"SELECT INBOX (QRESYNC ({uv} {modseq} 1:10 (1,2,3 1,3,4)))")
    # message 2 is UID 3 and message 3 UID 4 now: the client knows every expunge up to UID 4
    assert [ln for ln in lines if ln.startswith(b"* VANISHED")] == [b"* VANISHED (EARLIER) 5:6,9"]
    lines = c.ok(f"SELECT INBOX (QRESYNC ({uv} {modseq} 1:10 (1,2 1,2)))")  # 2 is not UID 2 any more
    assert [ln for ln in lines if ln.startswith(b"* VANISHED")] == [b"* VANISHED (EARLIER) 2,5:6,9"]


def test_select_qresync_with_another_uidvalidity_is_a_plain_select(world):
    uv, modseq = resync_setup(world)
    c = world.connect().login()
    c.ok("ENABLE QRESYNC")
    lines = c.ok(f"SELECT INBOX (QRESYNC ({uv + 1} {modseq}))")
    assert not any(b"VANISHED" in ln or b"FETCH" in ln for ln in lines)
    assert any(b"HIGHESTMODSEQ" in ln for ln in lines)


def test_uid_fetch_vanished(world):
    uv, modseq = resync_setup(world)
    c = world.connect().login()
    c.ok("ENABLE QRESYNC")
    c.ok("SELECT INBOX")
    lines = c.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert lines[0] == b"* VANISHED (EARLIER) 2,5:6,9"
    assert sorted(fetch_map(lines)) == [2, 4, 7]
    assert c.ok(f"UID FETCH 1:4 (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")[0] == b"* VANISHED (EARLIER) 2"
    top = highest(c.ok("STATUS INBOX (HIGHESTMODSEQ)"))
    assert c.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {top} VANISHED)") == []


def test_forgotten_expunges_are_told_as_every_missing_uid(world, monkeypatch):
    import mailstack.maildir.index as index

    monkeypatch.setattr(index, "VANISHED_KEEP", 2)
    uv, modseq = resync_setup(world)  # four expunged, only the last few remembered
    c = world.connect().login()
    c.ok("ENABLE QRESYNC")
    lines = c.ok(f"SELECT INBOX (QRESYNC ({uv} {modseq}))")
    assert [ln for ln in lines if ln.startswith(b"* VANISHED")] == [b"* VANISHED (EARLIER) 2,5:6,9"]


def test_pending_expunge_holds_highestmodseq_back(world, box):
    box.ok("ENABLE CONDSTORE")
    top = highest(box.ok("STATUS INBOX (HIGHESTMODSEQ)"))
    other = world.connect().login()
    other.ok("SELECT INBOX")
    other.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.ok("EXPUNGE")
    other.ok("STORE 2 +FLAGS.SILENT (\\Flagged)")
    untagged = box.ok("FETCH 2 (MODSEQ)")  # no EXPUNGE may be sent during FETCH
    assert not any(b"EXPUNGE" in ln for ln in untagged)
    held = [ln for ln in untagged if b"HIGHESTMODSEQ" in ln]
    assert held and highest(held) <= top
    assert b"* 1 EXPUNGE" in box.ok("NOOP")


def reopen(world: World) -> World:
    return World.create(world.root)


def test_modseqs_survive_a_restart_and_never_go_back(world, box):
    box.ok("ENABLE CONDSTORE")
    box.ok("STORE 1 +FLAGS (\\Seen)")
    seqs = modseqs(box.ok("FETCH 1:* (MODSEQ)"))
    top = highest(box.ok("STATUS INBOX (HIGHESTMODSEQ)"))
    again = reopen(world).connect().login()
    lines = again.ok("SELECT INBOX (CONDSTORE)")
    assert highest(lines) >= top
    assert modseqs(again.ok("FETCH 1:* (MODSEQ)")) == seqs
    changed = modseqs(again.ok("STORE 2 +FLAGS (\\Seen)"))
    assert changed[2] > highest(lines)


def test_modseq_never_reused_after_lost_log_lines(world, box):
    """A crash loses log lines that were never fsynced; what clients saw is still below the next value."""
    box.ok("ENABLE CONDSTORE")
    path = world.store.layout.maildir_path(USER, None)
    log_path = path / LOG_FILE
    box.ok("STORE 1 +FLAGS (\\Seen)")
    seen = highest(box.ok("STATUS INBOX (HIGHESTMODSEQ)"))
    lines = log_path.read_bytes().splitlines(keepends=True)
    assert any(line.startswith(b"c ") for line in lines)  # the ceiling: fsynced before the value was used
    # the flag change's line was not fsynced, and is lost (its rename was not)
    log_path.write_bytes(b"".join(line for line in lines if not line.startswith(b"m ")))
    again = reopen(world).connect().login()
    top = highest(again.ok("SELECT INBOX (CONDSTORE)"))
    assert top >= seen
    one = modseqs(again.ok("FETCH 1 (MODSEQ)"))[1]
    assert one > seen  # flags found changed on disk get a new value, above anything said before


def test_changes_made_while_down_get_new_modseqs(world, box):
    box.ok("ENABLE QRESYNC")
    uv = uidvalidity(box.ok("SELECT INBOX"))
    top = highest(box.ok("STATUS INBOX (HIGHESTMODSEQ)"))
    box.ok("LOGOUT")
    cur_or_new = world.store.layout.maildir_path(USER, None)
    files = sorted((cur_or_new / "new").iterdir()) + sorted((cur_or_new / "cur").iterdir())
    files[0].rename(cur_or_new / "cur" / (files[0].name.split(":")[0] + ":2,F"))  # another program flags it
    files[1].unlink()  # and removes another
    c = reopen(world).connect().login()
    c.ok("ENABLE QRESYNC")
    lines = c.ok(f"SELECT INBOX (QRESYNC ({uv} {top}))")
    assert [ln for ln in lines if ln.startswith(b"* VANISHED")] == [b"* VANISHED (EARLIER) 2"]
    assert fetch_map(lines)[1].startswith(b"(UID 1 FLAGS (\\Flagged) MODSEQ (")


def test_an_old_index_is_read_and_upgraded(world):
    """An index written before mod-sequences: UIDs and UIDVALIDITY kept, every message gets one."""
    for _ in range(3):
        world.deliver(SIMPLE)
    c = world.connect().login()
    uv = uidvalidity(c.ok("SELECT INBOX"))
    c.ok("LOGOUT")
    path = world.store.layout.maildir_path(USER, None)
    names = sorted(p.name for p in (path / "new").iterdir())
    from mailstack.maildir.names import size_from_name

    (path / "mailstack-index").write_text(
        f"mailstack-index 1 {uv} 4 3\n" + "".join(
            f"{i} {size_from_name(n)} {int(n.split('.')[0])} {n}\n" for i, n in enumerate(names, 1)))
    (path / LOG_FILE).write_text("- 9\n")
    c = reopen(world).connect().login()
    lines = c.ok("SELECT INBOX (CONDSTORE)")
    assert uidvalidity(lines) == uv and b"* 3 EXISTS" in lines
    seqs = modseqs(c.ok("FETCH 1:* (MODSEQ)"))
    assert len(seqs) == 3 and all(v >= 1 for v in seqs.values())
    assert highest(lines) >= max(seqs.values())


def test_flag_changes_and_expunges_are_on_disk_before_they_are_told(world, box, monkeypatch):
    """Were a flag change's log line lost with its rename, the message would come back with old
    flags under a mod-sequence below one a client was told: the line is fsynced first."""
    import mailstack.maildir.index as index

    appended: list[tuple[list[str], bool]] = []
    real = index.IndexLog.append

    def watch(self, records, durable):
        appended.append((list(records), durable))
        return real(self, records, durable)

    monkeypatch.setattr(index.IndexLog, "append", watch)
    box.ok("STORE 1 +FLAGS (\\Seen)")
    box.ok("STORE 2 +FLAGS (\\Deleted)")
    box.ok("EXPUNGE")
    kinds = [(r[0], durable) for records, durable in appended for r in records if r[0] in "mx"]
    assert kinds == [("m", True), ("m", True), ("x", True)]


def test_a_flag_rename_lost_in_a_crash_is_told_again(world, box):
    """The log line was kept, the rename was not: the load sees other letters on disk and gives
    the message a new mod-sequence, so a resyncing client hears that \\Seen is not set."""
    box.ok("ENABLE QRESYNC")
    uv = uidvalidity(box.ok("SELECT INBOX"))
    path = world.store.layout.maildir_path(USER, None)
    before = {p.name for p in (path / "new").iterdir()} | {p.name for p in (path / "cur").iterdir()}
    told = modseqs(box.ok("STORE 1 +FLAGS (\\Seen)"))[1]
    top = highest(box.ok("STATUS INBOX (HIGHESTMODSEQ)"))
    box.ok("LOGOUT")
    for p in (path / "cur").iterdir():  # undo the rename, as a crash would
        if p.name.endswith(":2,S"):
            original = next(n for n in before if n.split(":")[0] == p.name.split(":")[0])
            p.rename(path / ("new" if ":" not in original else "cur") / original)
    c = reopen(world).connect().login()
    c.ok("ENABLE QRESYNC")
    lines = c.ok(f"SELECT INBOX (QRESYNC ({uv} {top}))")
    assert fetch_map(lines)[1].startswith(b"(UID 1 FLAGS () MODSEQ (")
    assert modseqs(lines)[1] > told


def test_an_unlink_lost_in_a_crash_brings_the_message_back_under_a_new_uid(world, box):
    path = world.store.layout.maildir_path(USER, None)
    files = {p.name: p.read_bytes() for p in (path / "new").iterdir()}
    box.ok("ENABLE QRESYNC")
    box.ok("UID STORE 3 +FLAGS.SILENT (\\Deleted)")
    assert box.ok("UID EXPUNGE 3") == [b"* VANISHED 3"]
    box.ok("LOGOUT")
    for name, data in files.items():  # the unlink did not reach the disk
        if not any(p.name.split(":")[0] == name for d in ("new", "cur") for p in (path / d).iterdir()):
            (path / "new" / name).write_bytes(data)
    c = reopen(world).connect().login()
    c.ok("SELECT INBOX")
    uids = [int(x) for x in c.ok("UID SEARCH ALL")[0].split()[2:]]
    assert 3 not in uids and len(uids) == 5 and max(uids) == 6


def test_no_vanished_during_a_uid_search_with_message_numbers(world, box):
    """RFC 7162 §3.2.10: not while a UID SEARCH (SORT, THREAD) with message numbers runs."""
    box.ok("ENABLE QRESYNC")
    other = world.connect().login()
    other.ok("SELECT INBOX")
    other.ok("UID STORE 2 +FLAGS.SILENT (\\Deleted)")
    other.ok("UID EXPUNGE 2")
    def told(command: str) -> list[bytes]:
        return [line for line in box.ok(command) if not line.startswith(b"* OK [HIGHESTMODSEQ")]

    assert told("UID SEARCH 1:3") == [b"* SEARCH 1 3"]
    assert told("UID SORT (ARRIVAL) UTF-8 1:3") == [b"* SORT 1 3"]
    assert told("UID THREAD ORDEREDSUBJECT UTF-8 1:3") == [b"* THREAD (1 3)"]
    assert told("UID SEARCH UID 1:3") == [b"* SEARCH 1 3", b"* VANISHED 2"]


def test_a_restored_folder_is_never_read_again_under_its_old_index(world, tmp_path):
    """A folder replaced under the running server (a restore) drops its old index at once, so a
    crash before the new one is written makes a newer UIDVALIDITY, not the old one again."""
    import shutil

    from mailstack.maildir.index import INDEX_FILE
    from mailstack.maildir.mailbox import Mailbox

    for _ in range(2):
        world.deliver(SIMPLE)
    c = world.connect().login()
    old = uidvalidity(c.ok("SELECT INBOX"))
    c.ok("LOGOUT")
    path = world.store.layout.maildir_path(USER, None)
    backup = tmp_path / "backup"
    shutil.copytree(path, backup)
    fresh = Mailbox.load(path, uidvalidity=lambda: old + 10, fresh=True, save_later=True)
    assert not (path / INDEX_FILE).exists() and not (path / LOG_FILE).exists()
    after_crash = Mailbox.load(path, uidvalidity=lambda: old + 20)
    assert after_crash.uidvalidity == old + 20 and fresh.uidvalidity == old + 10


def test_odd_flag_letters_from_another_program_keep_their_modseq(world):
    """A file name with a space or % in its info: recorded as it is, so each load does not take
    it for a change."""
    from mailstack.maildir.index import _letters_of, letters_token
    from mailstack.maildir.mailbox import Mailbox

    for odd in ("", "FS", "a b", "x%20y", "S\r\n"):
        assert _letters_of(letters_token(odd)) == odd and " " not in letters_token(odd)
    path = world.store.layout.maildir_path(USER, None)
    world.store.layout.ensure(path)
    (path / "cur" / "1700000000.M1P1.odd,S=5:2,S z%").write_bytes(b"x\r\n\r\n")
    first = Mailbox.load(path)
    again = Mailbox.load(path)
    assert [m.modseq for m in again.messages] == [m.modseq for m in first.messages]
