"""maildir/index.py, mailbox.py, folders.py: persistent UIDs, crash safety, cache rebuild."""

from __future__ import annotations

import os

from mailstack.maildir.files import write_tmp
from mailstack.maildir.flags import Keywords, split_name
from mailstack.maildir.folders import MailStore
from mailstack.maildir.index import INDEX_FILE, LOG_FILE, IndexLog, read_index
from mailstack.maildir.layout import MaildirLayout
from mailstack.maildir.mailbox import Mailbox, inline_io

from .harness import run

USER = "alice@example.test"


def make_box(tmp_path):
    layout = MaildirLayout(tmp_path)
    path = layout.maildir_path(USER)
    layout.ensure(path)
    return path


def drop(path, name, data=b"Subject: x\r\n\r\nx\r\n", sub="new"):
    (path / sub / name).write_bytes(data)


def test_uids_assigned_in_delivery_order_and_persisted(tmp_path):
    path = make_box(tmp_path)
    drop(path, "1700000002.M2P1Q2.h,S=17")
    drop(path, "1700000001.M1P1Q1.h,S=17")
    box = Mailbox.load(path)
    assert [(m.uid, m.base.split(".")[0]) for m in box.messages] == [(1, "1700000001"), (2, "1700000002")]
    data = IndexLog(path).load()
    assert data is not None and data.uidnext == 3 and [e.uid for e in data.entries] == [1, 2]
    again = Mailbox.load(path)
    assert again.uidvalidity == box.uidvalidity and [m.uid for m in again.messages] == [1, 2]


def test_uidnext_after_restart_and_external_delivery(tmp_path):
    path = make_box(tmp_path)
    drop(path, "1.M1P1Q1.h")
    box = Mailbox.load(path)
    run(box.expunge([1]))
    drop(path, "2.M1P1Q2.h")
    box2 = Mailbox.load(path)  # a new process
    assert [m.uid for m in box2.messages] == [2] and box2.uidnext == 3


def test_flag_renames_and_moves_by_others_keep_uids(tmp_path):
    path = make_box(tmp_path)
    drop(path, "1.M1P1Q1.h")
    box = Mailbox.load(path)
    os.rename(path / "new" / "1.M1P1Q1.h", path / "cur" / "1.M1P1Q1.h:2,FS")
    run(box.refresh(force=True))
    [m] = box.messages
    assert m.uid == 1 and m.letters == "FS" and box.flags(m) == ["\\Flagged", "\\Seen"]


def test_names_other_programs_wrote_are_kept_as_found(tmp_path):
    path = make_box(tmp_path)
    drop(path, "1.M1P1Q1.h:2,SF", sub="cur")  # letters out of order
    drop(path, "2.M1P1Q2.h", sub="cur")  # no info at all
    box = Mailbox.load(path)
    first, second = box.messages
    assert (first.letters, first.filename()) == ("FS", "1.M1P1Q1.h:2,SF")
    assert (second.letters, second.filename()) == ("", "2.M1P1Q2.h")
    assert run(box.read(first)) and run(box.read(second))
    assert not run(box.refresh(force=True))  # found as they are: nothing changed
    run(box.set_letters([(first, "S"), (second, "D")]))
    assert sorted(os.listdir(path / "cur")) == ["1.M1P1Q1.h:2,S", "2.M1P1Q2.h:2,D"]
    assert [m.filename() for m in box.messages] == ["1.M1P1Q1.h:2,S", "2.M1P1Q2.h:2,D"]


def test_snapshot_of_a_rebuilt_folder_can_follow_the_load(tmp_path):
    path = make_box(tmp_path)
    drop(path, "1.M1P1Q1.h")
    issued = iter(range(100, 200))
    box = Mailbox.load(path, uidvalidity=lambda: next(issued), save_later=True)
    assert box.uidvalidity == 100 and [m.uid for m in box.messages] == [1]
    assert not (path / INDEX_FILE).exists()
    # A crash before the snapshot: the folder is read again under a newer UIDVALIDITY.
    again = Mailbox.load(path, uidvalidity=lambda: next(issued), save_later=True)
    assert again.uidvalidity == 101
    again.save_in_background()
    data = read_index(path)
    assert data is not None and data.uidvalidity == 101 and [e.uid for e in data.entries] == [1]
    assert Mailbox.load(path, uidvalidity=lambda: next(issued)).uidvalidity == 101


def test_store_writes_the_snapshot_of_a_folder_it_rebuilt(tmp_path):
    store = MailStore(MaildirLayout(tmp_path))
    run(store.setup_user(USER, inline_io))
    drop(store.layout.maildir_path(USER), "1.M1P1Q1.h")
    box = run(store.open(USER, "INBOX", inline_io))
    assert [m.uid for m in box.messages] == [1]
    data = read_index(box.path)
    assert data is not None and data.uidvalidity == box.uidvalidity and [e.uid for e in data.entries] == [1]


def test_damaged_index_is_rebuilt_with_new_uidvalidity(tmp_path):
    path = make_box(tmp_path)
    drop(path, "1.M1P1Q1.h")
    Mailbox.load(path)
    (path / INDEX_FILE).write_text("garbage")
    box = Mailbox.load(path)
    assert [m.uid for m in box.messages] == [1]
    assert read_index(path) is not None and not (path / LOG_FILE).exists()


def test_log_torn_by_a_crash_loses_only_its_last_line(tmp_path):
    path = make_box(tmp_path)
    drop(path, "1.M1P1Q1.h")
    box = Mailbox.load(path)
    drop(path, "2.M1P1Q2.h")
    run(box.refresh(force=True))
    with open(path / LOG_FILE, "a") as f:
        f.write("+ 3 17 17000")  # a line half written when the power went
    again = Mailbox.load(path)
    assert again.uidvalidity == box.uidvalidity and [m.uid for m in again.messages] == [1, 2]
    assert again.uidnext == 3


def test_damaged_log_is_rebuilt_with_new_uidvalidity(tmp_path):
    path = make_box(tmp_path)
    drop(path, "1.M1P1Q1.h")
    box = Mailbox.load(path, uidvalidity=lambda: 7)
    drop(path, "2.M1P1Q2.h")
    run(box.refresh(force=True))
    (path / LOG_FILE).write_text("+ 2 1 1 x\nnonsense\n")
    again = Mailbox.load(path, uidvalidity=lambda: 8)
    assert again.uidvalidity == 8 and len(again.messages) == 2


def test_new_uids_are_appended_not_rewritten(tmp_path):
    path = make_box(tmp_path)
    drop(path, "1.M1P1Q1.h")
    box = Mailbox.load(path)
    snapshot = (path / INDEX_FILE).read_text()
    for i in range(2, 6):
        drop(path, f"{i}.M1P1Q{i}.h")
        run(box.refresh(force=True))
    assert (path / INDEX_FILE).read_text() == snapshot  # the snapshot is left alone
    assert [line.split()[:2] for line in (path / LOG_FILE).read_text().splitlines() if line[0] != "c"] == [
        ["a", "2"], ["a", "3"], ["a", "4"], ["a", "5"]]
    run(box.expunge([2, 3]))
    again = Mailbox.load(path)
    assert [m.uid for m in again.messages] == [1, 4, 5] and again.uidnext == 6


def test_log_is_compacted_into_the_snapshot(tmp_path, monkeypatch):
    import mailstack.maildir.index as idx

    monkeypatch.setattr(idx, "COMPACT_MIN_RECORDS", 3)
    path = make_box(tmp_path)
    box = Mailbox.load(path)
    first = (path / INDEX_FILE).read_text()
    for i in range(1, 6):
        drop(path, f"{i}.M1P1Q{i}.h")
        run(box.refresh(force=True))
        lines = (path / LOG_FILE).read_text().count("\n") if (path / LOG_FILE).exists() else 0
        assert lines == box._log.records <= max(3, len(box.messages))  # never more lines than messages
    assert (path / INDEX_FILE).read_text() != first  # folded in on the way
    for uid in (1, 2, 3, 4):
        run(box.expunge([uid]))
        assert box._log.records <= max(3, len(box.messages))
    data = read_index(path)
    assert data is not None and data.uidnext == 6
    again = Mailbox.load(path)
    assert [m.uid for m in again.messages] == [5] and again.uidnext == 6


def test_crash_between_snapshot_and_log_removal_is_harmless(tmp_path):
    path = make_box(tmp_path)
    drop(path, "1.M1P1Q1.h")
    box = Mailbox.load(path)
    drop(path, "2.M1P1Q2.h")
    run(box.refresh(force=True))
    run(box.expunge([1]))
    old_log = (path / LOG_FILE).read_text()
    box._compact()
    (path / LOG_FILE).write_text(old_log)  # the old log survived the crash
    again = Mailbox.load(path)
    assert [m.uid for m in again.messages] == [2] and again.uidnext == 3


def test_cache_answers_without_opening_messages(tmp_path, monkeypatch):
    path = make_box(tmp_path)
    for i in range(50):
        drop(path, f"{i + 1}.M{i}P1Q{i}.h,S=17")
    Mailbox.load(path)
    import builtins

    real_open = builtins.open

    def guarded(file, *a, **k):
        assert "/new/" not in str(file) and "/cur/" not in str(file), file
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)
    box = Mailbox.load(path)
    assert len(box.messages) == 50 and box.messages[0].size == 17


def test_append_and_copy_and_move(tmp_path):
    path = make_box(tmp_path)
    store = MailStore(MaildirLayout(tmp_path))
    run(store.setup_user(USER, inline_io))
    inbox = run(store.open(USER, "INBOX", inline_io))
    tmp, base, date = write_tmp(inbox.path, inbox.hostname, b"hello", 1_700_000_000)
    msg = run(inbox.append(tmp, base, "S", 5, date))
    assert msg.uid == 1 and (path / "cur" / f"{msg.base}:2,S").read_bytes() == b"hello"
    trash = run(store.open(USER, "Trash", inline_io))
    [copied] = run(trash.add_links([(inbox.file_path(msg), msg.size, msg.letters, msg.internal_date)],
                                   move=False))
    assert copied.uid == 1 and run(trash.read(copied)) == b"hello"
    assert os.stat(trash.file_path(copied)).st_mtime == 1_700_000_000


def test_folder_names_cannot_escape(tmp_path):
    store = MailStore(MaildirLayout(tmp_path))
    run(store.setup_user(USER, inline_io))
    from mailstack.maildir.folders import FolderError

    for bad in ("../x", "a/b", "..", "a\0b", ".x"):
        try:
            run(store.create(USER, bad, inline_io))
        except FolderError:
            continue
        raise AssertionError(f"{bad!r} accepted")


def test_keywords_file(tmp_path):
    kw = Keywords(tmp_path)
    assert kw.letters_of(["\\Seen", "Work", "$Junk"]) == "Sab"
    assert Keywords(tmp_path).flags_of("abS") == ["Work", "$Junk", "\\Seen"]
    assert split_name("x:2,FS") == ("x", "FS") and split_name("x") == ("x", "")


def test_recent_claims_survive_restart(tmp_path):
    path = make_box(tmp_path)
    drop(path, "1.M1P1Q1.h", sub="cur")
    drop(path, "2.M1P1Q2.h")
    box = Mailbox.load(path)
    assert box.unclaimed == {2}  # a fresh index: only new/ is recent
    assert box.claim_recent() == {2}
    drop(path, "3.M1P1Q3.h")
    again = Mailbox.load(path)  # restart
    assert again.unclaimed == {3}


def test_append_into_a_folder_replaced_underneath_lands_nowhere(tmp_path):
    import pytest

    from mailstack.maildir.mailbox import MailboxGone

    path = make_box(tmp_path)
    box = Mailbox.load(path)
    tmp, base, date = write_tmp(path, "h", b"hello", None)
    os.rename(path, tmp_path / "old")  # restored from a backup while open: another directory
    make_box(tmp_path)
    with pytest.raises(MailboxGone):
        run(box.append(tmp_path / "old" / "tmp" / tmp.name, base, "", 5, date))
    assert box.gone and box.messages == []
    assert os.listdir(path / "cur") == [] and not (path / LOG_FILE).exists()
