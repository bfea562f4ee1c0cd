"""IDLE (RFC 2177) and what other sessions see (RFC 3501 §5.2, §7.3.1, §7.4.1)."""

from __future__ import annotations

from .messages import SIMPLE


def test_idle_wakes_on_delivery_and_done_ends_it(world, client):
    client.ok("SELECT INBOX")
    assert client.raw("IDLE") == b"+ idling\r\n"
    world.deliver(SIMPLE)
    assert client.read() == b"* 1 EXISTS\r\n* 1 RECENT\r\n"
    assert client.send(b"DONE\r\n").endswith(b" OK IDLE terminated\r\n")


def test_idle_bad_terminator(client):
    client.ok("SELECT INBOX")
    client.raw("IDLE")
    assert client.send(b"NOPE\r\n").split()[1] == b"BAD"
    assert client.cmd("NOOP")[1].startswith(b"OK")


def test_idle_in_authenticated_state(client):
    assert client.raw("IDLE") == b"+ idling\r\n"
    assert client.send(b"done\r\n").split()[1] == b"OK"


def test_other_sessions_flag_changes_and_expunges(world):
    for _ in range(3):
        world.deliver(SIMPLE)
    a = world.connect().login()
    b = world.connect().login()
    a.ok("SELECT INBOX")
    b.ok("SELECT INBOX")
    a.ok("STORE 2 +FLAGS (\\Flagged)")
    assert b.ok("NOOP") == [b"* 2 FETCH (UID 2 FLAGS (\\Flagged))"]
    a.ok("STORE 1 +FLAGS (\\Deleted)")
    a.ok("EXPUNGE")
    # no EXPUNGE while answering FETCH (RFC 3501 §7.4.1), numbers stay stable
    untagged = b.ok("FETCH 3 UID")
    assert not any(b"EXPUNGE" in u for u in untagged) and b"* 3 FETCH (UID 3)" in untagged
    assert b"* 1 EXPUNGE" in b.ok("NOOP")
    assert b.ok("FETCH 2 UID") == [b"* 2 FETCH (UID 3)"]


def test_idle_sees_other_sessions_store_at_once(world):
    world.deliver(SIMPLE)
    a = world.connect().login()
    b = world.connect().login()
    a.ok("SELECT INBOX")
    b.ok("SELECT INBOX")
    b.raw("IDLE")
    a.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
    assert b.read() == b"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n"
    a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.read()
    a.ok("EXPUNGE")
    assert b.read() == b"* 1 EXPUNGE\r\n"


def test_external_delivery_seen_at_next_command(world, client):
    client.ok("SELECT INBOX")
    world.deliver(SIMPLE)
    assert client.ok("NOOP") == [b"* 1 EXISTS", b"* 1 RECENT"]


def test_idle_hears_at_once_of_mail_another_program_put_in_the_folder(tmp_path):
    import sys

    import pytest

    from mailstack.maildir.watch import Watcher

    from .harness import World

    watcher = Watcher.create() if sys.platform.startswith("linux") else None
    if watcher is None:
        pytest.skip("no inotify here")
    try:
        world = World.create(tmp_path, watcher=watcher)
        client = world.connect().login()
        client.ok("SELECT INBOX")
        assert client.raw("IDLE") == b"+ idling\r\n"
        new = world.store.layout.maildir_path("alice@example.test") / "new"
        (new / f"1700000000.M1P1Q1.elsewhere,S={len(SIMPLE)}").write_bytes(SIMPLE)  # not through mailstack
        assert client.read() == b""  # nobody was told...
        watcher.drain()  # ...until the reactor reads the kernel's report
        assert client.read() == b"* 1 EXISTS\r\n* 1 RECENT\r\n"
        assert client.send(b"DONE\r\n").endswith(b" OK IDLE terminated\r\n")
        client.ok("STORE 1 +FLAGS (\\Seen)")  # our own change: no report taken for someone else's
        watcher.drain()
        assert not world.store._open[world.store.layout.maildir_path("alice@example.test")]._stale
    finally:
        watcher.close()
