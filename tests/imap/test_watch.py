"""maildir/watch.py: an open folder that nobody else changed is not listed again before a poll."""

from __future__ import annotations

import os
import shutil
import struct
import sys
from typing import Any

import pytest

from mailstack.maildir.files import write_tmp
from mailstack.maildir.layout import MaildirLayout
from mailstack.maildir.mailbox import Mailbox
from mailstack.maildir.watch import IN_MOVED_TO, IN_Q_OVERFLOW, Watcher

from .harness import run

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")

USER = "alice@example.test"


class Counted:
    """``io`` that runs at once and remembers what it ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, fn: Any, *args: Any) -> Any:
        self.calls.append(getattr(fn, "__name__", "?"))
        return fn(*args)

    def listings(self) -> int:
        return self.calls.count("_refresh_work")


@pytest.fixture
def now():
    return [100.0]


@pytest.fixture
def watcher(now):
    w = Watcher.create(monotonic=lambda: now[0])
    if w is None:
        pytest.skip("no inotify here")
    yield w
    w.close()


def folder(tmp_path, name="1700000000.M1P1Q1.h,S=5"):
    layout = MaildirLayout(tmp_path)
    path = layout.maildir_path(USER)
    layout.ensure(path)
    (path / "new" / name).write_bytes(b"hello")
    return path


def open_box(path, watcher, now, io):
    now[0] += 0.001  # the watch is in place before the folder is read
    return Mailbox.load(path, io=io, watcher=watcher, monotonic=lambda: now[0])


def test_a_poll_of_an_unchanged_folder_does_not_list_it(tmp_path, watcher, now):
    io = Counted()
    box = open_box(folder(tmp_path), watcher, now, io)
    assert run(box.refresh()) is False
    assert io.listings() == 0


def test_another_programs_change_is_seen_at_the_next_poll(tmp_path, watcher, now):
    path = folder(tmp_path)
    io = Counted()
    box = open_box(path, watcher, now, io)
    [m] = box.messages
    os.rename(path / "new" / m.filename(), path / "cur" / (m.filename() + ":2,S"))  # a client elsewhere
    assert run(box.refresh()) is True  # the report is read at the poll, not left for the reactor
    assert io.listings() == 1 and box.messages[0].letters == "S"
    (path / "new" / "1700000001.M2P1Q2.h,S=3").write_bytes(b"new")  # another program delivers
    assert run(box.refresh()) is True and len(box.messages) == 2
    assert run(box.refresh()) is False and io.listings() == 2


def test_changes_made_through_the_mailbox_are_not_taken_for_others(tmp_path, watcher, now):
    path = folder(tmp_path)
    other = MaildirLayout(tmp_path).maildir_path(USER, "Archive")
    MaildirLayout(tmp_path).ensure(other)
    io = Counted()
    box = open_box(path, watcher, now, io)
    archive = open_box(other, watcher, now, io)
    [m] = box.messages
    run(box.set_letters([(m, "S")]))  # new/ -> cur/ with a flag
    run(box.set_letters([(m, "FS")]))
    tmp, base, date = write_tmp(path, "h", b"appended", None)
    run(box.append(tmp, base, "", 8, date))
    first = box.messages[0]
    run(archive.add_links([(box.file_path(first), first.size, "S", first.internal_date)], move=False))
    run(archive.add_links([(box.file_path(box.messages[1]), 8, "", date)], move=True))
    run(box.detach(box.messages[1]))
    run(box.expunge([first.uid]))
    watcher.drain()
    assert run(box.refresh()) is False and run(archive.refresh()) is False
    assert io.listings() == 0
    assert sorted(os.listdir(path / "cur")) == [] and len(os.listdir(other / "cur")) == 2


def test_a_folder_removed_or_restored_underneath_is_looked_at(tmp_path, watcher, now):
    path = folder(tmp_path)
    io = Counted()
    box = open_box(path, watcher, now, io)
    backup = tmp_path / "backup"
    shutil.copytree(path, backup)
    shutil.rmtree(path)
    shutil.copytree(backup, path)  # same names: only the watch can tell
    run(box.refresh())
    assert box.gone  # read again under a new UIDVALIDITY by the store


def test_lost_reports_make_every_folder_stale(tmp_path, watcher, now):
    io = Counted()
    box = open_box(folder(tmp_path), watcher, now, io)
    changed: list[Any] = []
    watcher._parse(struct.pack("iIII", -1, IN_Q_OVERFLOW, 0, 0), changed)
    for on_change in changed:
        on_change()
    assert run(box.refresh()) is False and io.listings() == 1  # looked, found nothing new


def test_unannounced_name_in_a_watched_directory_is_a_change(tmp_path, watcher, now):
    io = Counted()
    box = open_box(folder(tmp_path), watcher, now, io)
    wd = box._watch.wds[1]  # cur/
    changed: list[Any] = []
    name = b"1700000002.M3P1Q3.h:2,S".ljust(32, b"\0")
    watcher._parse(struct.pack("iIII", wd, IN_MOVED_TO, 0, len(name)) + name, changed)
    assert len(changed) == 1
    changed.clear()
    watcher.expect(f"{box.path}/cur", "1700000002.M3P1Q3.h:2,S")
    watcher._parse(struct.pack("iIII", wd, IN_MOVED_TO, 0, len(name)) + name, changed)
    assert changed == []


def test_without_a_watch_every_poll_lists_and_a_second_later_even_with_one(tmp_path, watcher, now):
    path = folder(tmp_path)
    io = Counted()
    unwatched = Mailbox.load(path, io=io, monotonic=lambda: now[0])
    assert run(unwatched.refresh()) is False and io.listings() == 1
    assert run(unwatched.refresh(eager=False)) is False and io.listings() == 1  # ordinary commands: 1 s
    watched = open_box(path, watcher, now, io)
    now[0] += 1.5  # a change on another NFS client is never reported: still looked at each second
    assert run(watched.refresh()) is False and io.listings() == 2


class FullLibc:
    """inotify_add_watch as at fs.inotify.max_user_watches: ENOSPC."""

    def inotify_add_watch(self, fd: int, path: bytes, mask: int) -> int:
        import ctypes
        import errno

        ctypes.set_errno(errno.ENOSPC)
        return -1

    def inotify_rm_watch(self, fd: int, wd: int) -> int:
        return 0


def test_past_the_watch_limit_a_folder_is_listed_before_each_poll(tmp_path, now):
    from twisted.logger import globalLogPublisher

    read, write = os.pipe()
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        full = Watcher(read, FullLibc(), lambda: now[0])
        io = Counted()
        box = open_box(folder(tmp_path), full, now, io)
        again = open_box(folder(tmp_path / "other"), full, now, io)
    finally:
        globalLogPublisher.removeObserver(logged.append)
        os.close(write)
        full.close()
    assert box._watch is None and again._watch is None
    assert run(box.refresh()) is False and io.listings() == 1  # as before watches: looked
    warnings = [e for e in logged if "max_user_watches" in e.get("log_format", "")]
    assert len(warnings) == 1  # said once, not per folder


def test_announcements_for_unwatched_directories_are_not_kept(tmp_path, watcher, now):
    watcher.expect(str(tmp_path / "nowhere" / "cur"), "x:2,S")
    assert watcher._expected == {}
    box = open_box(folder(tmp_path), watcher, now, Counted())
    watcher.expect(f"{box.path}/cur", "x:2,S")
    assert watcher._expected == {(f"{box.path}/cur", "x:2,S"): 1}
