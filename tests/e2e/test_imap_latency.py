"""The reactor never waits on storage: a third session's NOOPs stay fast while big folders are worked on.

While one session copies every message of a 50,000-message folder and
another selects a 100,000-message folder for the first time, a third session
sends a NOOP every 10 ms. The goal is that none waits more than 100 ms (bench/
measures NOOP latency beside a command mix); the slowest of about 120 has been
64-85 ms on one 2-core machine and 320-450 ms on another of the same kind, where
the io pool's threads working through 150,000 files hold the interpreter lock.
A timed test must not chase either figure, so it holds the line at 1.5 s: a
storage step on the reactor (seconds for these folders, before the store moved
to the io pool) still fails it.
"""

from __future__ import annotations

import imaplib
import os
import threading
import time
from pathlib import Path

from .conftest import PASSWORD

ALICE = "alice@example.test"
MESSAGE = b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: filler\r\n\r\nbody\r\n"


def fill(folder: Path, count: int) -> None:
    """``count`` messages written straight into a Maildir folder, as another program would."""
    for sub in ("tmp", "new", "cur"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    if folder.name.startswith("."):
        (folder / "maildirfolder").touch()
    cur = folder / "cur"
    size = len(MESSAGE)
    for n in range(count):
        fd = os.open(cur / f"1700000000.M{n}P1Q{n}.filler,S={size}:2,S", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, MESSAGE)
        os.close(fd)


def client(server) -> imaplib.IMAP4:
    imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=120)
    imap.login(ALICE, PASSWORD)
    return imap


def test_noops_are_answered_while_big_folders_are_copied_and_selected(tmp_path_factory):
    from .conftest import Server, all_ports, cli, write_config

    root = tmp_path_factory.mktemp("latency")
    ports = all_ports()
    config = write_config(root, ports)
    text = config.read_text().replace("self_signed = true", "self_signed = true\nallow_plaintext_auth = true")
    config.write_text(text)
    assert cli(config, "user", "add", ALICE, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    srv = Server(root, config, ports)
    srv.start()
    try:
        probe = client(srv)  # first login creates the Maildir and special folders
        maildir = srv.maildir(ALICE)
        fill(maildir / ".Big", 50_000)
        fill(maildir / ".Huge", 100_000)
        copier, selector = client(srv), client(srv)
        copier.select("Big")
        errors: list[BaseException] = []

        def run(fn) -> threading.Thread:
            def target() -> None:
                try:
                    fn()
                except BaseException as e:  # reported by the main thread
                    errors.append(e)
            t = threading.Thread(target=target, daemon=True)
            t.start()
            return t

        workers = [run(lambda: copier.copy("1:*", "Archive")), run(lambda: selector.select("Huge"))]
        waits = []
        while any(t.is_alive() for t in workers):
            start = time.monotonic()
            probe.noop()
            waits.append(time.monotonic() - start)
            time.sleep(0.01)
        for t in workers:
            t.join()
        assert not errors, errors
        assert copier.select("Archive")[1] == [b"50000"]
        assert selector.select("Huge")[1] == [b"100000"]
        assert len(waits) > 10
        assert max(waits) < 1.5, f"slowest NOOP {max(waits) * 1000:.0f} ms of {len(waits)}"
        for imap in (probe, copier, selector):
            imap.logout()
    finally:
        srv.stop()
