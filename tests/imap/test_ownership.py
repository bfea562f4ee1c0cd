"""One owner for every Maildir: a user's folder state is changed by one operation at a time."""

from __future__ import annotations

import os

from mailstack.maildir import folders as folders_module
from mailstack.maildir.folders import SUBSCRIPTIONS_FILE, MailStore
from mailstack.maildir.layout import MaildirLayout

from .harness import PASSWORD, USER
from .owner_io import HeldIO, world_with_io


def test_two_first_logins_at_once_both_succeed_one_setup_at_a_time(tmp_path):
    io = HeldIO()
    world = world_with_io(tmp_path / "maildirs", io)
    a, b = world.connect(), world.connect()
    a.protocol.dataReceived(f"a1 LOGIN {USER} {PASSWORD}\r\n".encode())
    b.protocol.dataReceived(f"b1 LOGIN {USER} {PASSWORD}\r\n".encode())
    assert len(io.pending) == 1  # the second login waits for the first setup, not beside it
    io.run_all()
    assert a.read().startswith(b"a1 OK") and b.read().startswith(b"b1 OK")
    root = world.store.layout.maildir_path(USER)
    assert (root / SUBSCRIPTIONS_FILE).read_text().split() == ["INBOX", "Sent", "Drafts", "Trash", "Junk",
                                                                "Archive"]
    assert not [n for n in os.listdir(root) if ".tmp" in n]


def test_concurrent_subscription_writes_use_their_own_temp_files(tmp_path, monkeypatch):
    store = MailStore(MaildirLayout(tmp_path), "test.host")
    real_replace = os.replace
    nested = []

    def replace_with_a_writer_in_between(src, dst):
        if not nested:  # another thread writes the same file between our write and our rename
            nested.append(1)
            store._write_subscriptions(USER, ["INBOX", "Other"])
        real_replace(src, dst)

    monkeypatch.setattr(folders_module.os, "replace", replace_with_a_writer_in_between)
    store._write_subscriptions(USER, ["INBOX"])
    path = store.layout.maildir_path(USER) / SUBSCRIPTIONS_FILE
    assert path.read_text() == "INBOX\n"
    assert not [n for n in os.listdir(path.parent) if ".tmp" in n]
