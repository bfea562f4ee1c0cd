"""Changes by two sessions to one message at once, and COPY/MOVE of a file renamed meanwhile."""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, ensureDeferred

from mailstack.maildir.mailbox import Mailbox


def make_folder(root):
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True)


class ManualIO:
    """An io pool whose jobs run when the test says, in any order (as threads would)."""

    def __init__(self) -> None:
        self.jobs: list = []

    def __call__(self, fn, *args):
        d: Deferred = Deferred()
        self.jobs.append((fn, args, d))
        return d

    def run(self, i: int = 0) -> None:
        fn, args, d = self.jobs.pop(i)
        try:
            d.callback(fn(*args))
        except Exception as e:
            d.errback(e)

    def drain(self) -> None:
        while self.jobs:
            self.run()


def test_two_sessions_adding_different_flags_at_once_both_keep_theirs(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "cur" / "1700000000.M1P1.h,S=3:2,").write_bytes(b"abc")
    io = ManualIO()
    box = Mailbox.load(tmp_path, io=io)
    msg = box.messages[0]
    a = ensureDeferred(box.set_letters([(msg, lambda cur: cur + "S")]))  # STORE +FLAGS (\Seen)
    b = ensureDeferred(box.set_letters([(msg, lambda cur: cur + "F")]))  # STORE +FLAGS (\Flagged), meanwhile
    io.drain()
    assert a.called and b.called
    assert msg.letters == "FS"
    assert os.listdir(tmp_path / "cur") == ["1700000000.M1P1.h,S=3:2,FS"]


def test_copy_finds_a_source_renamed_by_a_flag_change_meanwhile(tmp_path):
    src_path, dst_path = tmp_path / "src", tmp_path / "dst"
    make_folder(src_path)
    make_folder(dst_path)
    (src_path / "cur" / "1700000000.M1P1.h,S=3:2,").write_bytes(b"abc")
    io = ManualIO()
    src, dst = Mailbox.load(src_path, io=io), Mailbox.load(dst_path, io=io)
    msg = src.messages[0]
    copy = ensureDeferred(dst.add_links([(src.file_path(msg), msg.size, msg.letters, msg.internal_date)],
                                        move=False))
    store = ensureDeferred(src.set_letters([(msg, "S")]))
    io.run(1)  # the flag change's rename happens first
    io.drain()
    assert store.called
    [placed] = copy.result
    assert placed is not None
    assert [p.read_bytes() for p in (dst_path / "cur").iterdir()] == [b"abc"]


def test_move_is_one_rename_never_through_tmp(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    make_folder(a)
    make_folder(b)
    source = a / "cur" / "1700000000.M1P1.h,S=3:2,S"
    source.write_bytes(b"abc")
    box = Mailbox.load(b)
    renames: list[tuple[str, str]] = []
    real = os.rename
    monkeypatch.setattr(os, "rename", lambda s, d: (renames.append((str(s), str(d))), real(s, d))[1])
    out: list = []
    ensureDeferred(box.add_links([(str(source), 3, "S", 1700000000)], move=True)).addBoth(out.append)
    assert out and out[0][0] is not None
    assert [(s, d.rsplit("/", 2)[1]) for s, d in renames] == [(str(source), "cur")]
    assert os.listdir(b / "tmp") == [] and not os.listdir(a / "cur")


def test_expunge_removes_a_file_another_program_renamed_meanwhile(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "cur" / "1700000000.M1P1.h,S=3:2,").write_bytes(b"abc")
    box = Mailbox.load(tmp_path)
    os.rename(tmp_path / "cur" / "1700000000.M1P1.h,S=3:2,", tmp_path / "cur" / "1700000000.M1P1.h,S=3:2,S")
    removed: list = []
    ensureDeferred(box.expunge([1])).addCallback(removed.extend)
    assert removed == [1]
    ensureDeferred(box.refresh(force=True))
    assert box.messages == [] and os.listdir(tmp_path / "cur") == []
