"""The Maildir store under a real server and real threads: concurrent first logins, a Maildir
removed while running, quota set from the command line, and a big COPY that does not hold up
other sessions."""

from __future__ import annotations

import imaplib
import select
import shutil
import ssl
import threading

from .conftest import PASSWORD, cli


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def add_user(server, address: str) -> None:
    result = cli(server.config, "user", "add", address, "--password-stdin", stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr


def connect(server) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=tls_context(), timeout=30)


def test_simultaneous_first_logins_all_succeed(server):
    address = "first@example.test"
    add_user(server, address)
    clients = [connect(server) for _ in range(6)]
    start = threading.Barrier(len(clients))
    answers: list[str] = []

    def login(imap: imaplib.IMAP4_SSL) -> None:
        start.wait()
        try:
            answers.append(imap.login(address, PASSWORD)[0])
        except imaplib.IMAP4.error as e:
            answers.append(str(e))

    threads = [threading.Thread(target=login, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers == ["OK"] * len(clients)
    typ, folders = clients[0].lsub()
    assert typ == "OK" and len(folders) == 6
    for c in clients:
        c.logout()


def test_maildir_removed_while_running_is_rebuilt(server):
    address = "gone@example.test"
    add_user(server, address)
    imap = connect(server)
    imap.login(address, PASSWORD)
    imap.append("INBOX", None, None, b"Subject: one\r\n\r\nbody\r\n")
    imap.select("INBOX")
    shutil.rmtree(server.maildir(address))
    assert imap.noop()[0] == "OK"
    other = connect(server)
    assert other.login(address, PASSWORD)[0] == "OK"
    typ, data = other.select("INBOX")
    assert typ == "OK" and data == [b"0"]
    assert other.append("Sent", None, None, b"Subject: two\r\n\r\nbody\r\n")[0] == "OK"
    other.logout()
    imap.logout()


def test_quota_from_the_command_line_limits_append(server):
    address = "full@example.test"
    add_user(server, address)
    assert cli(server.config, "user", "quota", address, "100").returncode == 0
    imap = connect(server)
    imap.login(address, PASSWORD)
    assert imap.append("INBOX", None, None, b"Subject: a\r\n\r\n" + b"x" * 40 + b"\r\n")[0] == "OK"
    typ, data = imap.append("INBOX", None, None, b"Subject: b\r\n\r\n" + b"x" * 60 + b"\r\n")
    assert typ == "NO" and b"OVERQUOTA" in data[0]
    imap.logout()


def test_sessions_are_answered_while_a_big_copy_runs(server):
    address = "big@example.test"
    add_user(server, address)
    probe = connect(server)
    probe.login(address, PASSWORD)  # creates the Maildir
    cur = server.maildir(address) / "cur"
    body = b"Subject: bulk\r\n\r\nbody\r\n"
    for i in range(20_000):
        (cur / f"{1_700_000_000 + i}.M{i}P1Q{i}.bulk,S={len(body)}:2,S").write_bytes(body)
    copier = connect(server)
    copier.login(address, PASSWORD)
    assert copier.select("INBOX")[1] == [b"20000"]
    tag = copier._new_tag()
    copier.send(tag + b" COPY 1:* Archive\r\n")
    answered_while_copying = 0
    for _ in range(50):
        assert probe.noop()[0] == "OK"
        if copier.sock.pending() or select.select([copier.sock], [], [], 0)[0]:
            break
        answered_while_copying += 1
    line = copier.readline()
    while not line.startswith(tag):
        line = copier.readline()
    assert b"OK [COPYUID" in line
    assert answered_while_copying >= 1
    assert probe.status("Archive", "(MESSAGES)")[1] == [b'Archive (MESSAGES 20000)']
    probe.logout()
    copier.logout()


def test_idle_hears_of_a_message_another_program_put_in_the_maildir(server):
    address = "idler@example.test"
    add_user(server, address)
    imap = connect(server)
    imap.login(address, PASSWORD)
    imap.select("INBOX")
    imap.send(b"i1 IDLE\r\n")
    assert imap.readline().startswith(b"+ ")
    body = b"Subject: from elsewhere\r\n\r\nbody\r\n"
    new = server.maildir(address) / "new"
    tmp = server.maildir(address) / "tmp" / "1700000000.M1P1Q1.elsewhere"
    tmp.write_bytes(body)
    tmp.rename(new / f"1700000000.M1P1Q1.elsewhere,S={len(body)}")  # as another delivery agent does
    imap.sock.settimeout(10)
    assert imap.readline() == b"* 1 EXISTS\r\n"  # at once: the kernel reported it, nobody polled
    imap.send(b"DONE\r\n")
    while not (line := imap.readline()).startswith(b"i1 "):
        pass
    assert line.startswith(b"i1 OK")
    imap.logout()
