"""maildir/index.py, mailbox.py, folders.py: persistent UIDs, crash safety, cache rebuild."""

from __future__ import annotations

import os

from mailstack.maildir.flags import Keywords, split_name
from mailstack.maildir.folders import MailStore
from mailstack.maildir.index import INDEX_FILE, read_index
from mailstack.maildir.layout import MaildirLayout
from mailstack.maildir.mailbox import Mailbox

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
    box = Mailbox(path)
    assert [(m.uid, m.base.split(".")[0]) for m in box.messages] == [(1, "1700000001"), (2, "1700000002")]
    data = read_index(path)
    assert data is not None and data.uidnext == 3 and [e.uid for e in data.entries] == [1, 2]
    again = Mailbox(path)
    assert again.uidvalidity == box.uidvalidity and [m.uid for m in again.messages] == [1, 2]


def test_uidnext_after_restart_and_external_delivery(tmp_path):
    path = make_box(tmp_path)
    drop(path, "1.M1P1Q1.h")
    box = Mailbox(path)
    box.expunge([1])
    drop(path, "2.M1P1Q2.h")
    box2 = Mailbox(path)  # a new process
    assert [m.uid for m in box2.messages] == [2] and box2.uidnext == 3


def test_flag_renames_and_moves_by_others_keep_uids(tmp_path):
    path = make_box(tmp_path)
    drop(path, "1.M1P1Q1.h")
    box = Mailbox(path)
    os.rename(path / "new" / "1.M1P1Q1.h", path / "cur" / "1.M1P1Q1.h:2,FS")
    box.refresh(force=True)
    [m] = box.messages
    assert m.uid == 1 and m.letters == "FS" and box.flags(m) == ["\\Flagged", "\\Seen"]


def test_damaged_index_is_rebuilt_with_new_uidvalidity(tmp_path):
    path = make_box(tmp_path)
    drop(path, "1.M1P1Q1.h")
    Mailbox(path)
    (path / INDEX_FILE).write_text("garbage")
    box = Mailbox(path)
    assert [m.uid for m in box.messages] == [1]
    assert read_index(path) is not None


def test_index_write_is_atomic(tmp_path, monkeypatch):
    path = make_box(tmp_path)
    drop(path, "1.M1P1Q1.h")
    box = Mailbox(path)
    before = (path / INDEX_FILE).read_text()
    import mailstack.maildir.index as idx

    def boom(*a):
        raise OSError("disk gone")

    monkeypatch.setattr(idx.os, "replace", boom)
    drop(path, "2.M1P1Q2.h")
    try:
        box.refresh(force=True)
    except OSError:
        pass
    assert (path / INDEX_FILE).read_text() == before  # the old index is intact
    monkeypatch.undo()
    fresh = Mailbox(path)
    assert sorted(m.uid for m in fresh.messages) == [1, 2]


def test_cache_answers_without_opening_messages(tmp_path, monkeypatch):
    path = make_box(tmp_path)
    for i in range(50):
        drop(path, f"{i + 1}.M{i}P1Q{i}.h,S=17")
    Mailbox(path)
    import builtins

    real_open = builtins.open

    def guarded(file, *a, **k):
        assert "/new/" not in str(file) and "/cur/" not in str(file), file
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)
    box = Mailbox(path)
    assert len(box.messages) == 50 and box.messages[0].size == 17


def test_append_and_copy_and_move(tmp_path):
    path = make_box(tmp_path)
    store = MailStore(MaildirLayout(tmp_path))
    store._setup_user(USER)
    inbox = store.mailbox(USER, "INBOX")
    msg = inbox.add_file(b"hello", "S", 1_700_000_000)
    assert msg.uid == 1 and (path / "cur" / f"{msg.base}:2,S").read_bytes() == b"hello"
    trash = store.mailbox(USER, "Trash")
    copied = trash.add_link(inbox.file_path(msg), msg.size, msg.letters, msg.internal_date, move=False)
    assert copied.uid == 1 and trash.read(copied) == b"hello"
    assert os.stat(trash.file_path(copied)).st_mtime == 1_700_000_000


def test_folder_names_cannot_escape(tmp_path):
    store = MailStore(MaildirLayout(tmp_path))
    store._setup_user(USER)
    from mailstack.maildir.folders import FolderError

    for bad in ("../x", "a/b", "..", "a\0b", ".x"):
        try:
            store.create(USER, bad)
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
    box = Mailbox(path)
    assert box.unclaimed == {2}  # a fresh index: only new/ is recent
    assert box.claim_recent() == {2}
    drop(path, "3.M1P1Q3.h")
    again = Mailbox(path)  # restart
    assert again.unclaimed == {3}
