"""IMAP over loopback with real clients: imaplib over STARTTLS and 993, after SMTP delivery;
two sessions on one mailbox; IDLE woken by delivery; UIDs kept across a restart; mbsync;
imapclient on SORT, THREAD, MULTIAPPEND and CONDSTORE; a QRESYNC resync after IMAP and POP3 changes."""

from __future__ import annotations

import imaplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from .conftest import PASSWORD

ALICE = "alice@example.test"


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def send_mail(server, subject: str, to: str = ALICE, body: str = "Hello there") -> None:
    msg = (f"From: Bob <bob@example.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject.replace(' ', '-')}@example.test>\r\n"
           f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n")
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
        assert s.sendmail("bob@remote.example", [to], msg) == {}


def starttls_client(server, user: str = ALICE) -> imaplib.IMAP4:
    imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=10)
    imap.starttls(ssl_context=tls_context())
    imap.login(user, PASSWORD)
    return imap


def imaps_client(server, user: str = ALICE) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=tls_context(), timeout=10)
    imap.login(user, PASSWORD)
    return imap


def test_login_refused_before_starttls(server):
    imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=10)
    try:
        assert "LOGINDISABLED" in imap.capabilities and "STARTTLS" in imap.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            imap.login(ALICE, PASSWORD)
    finally:
        imap.logout()


def test_smtp_delivery_read_over_starttls(server):
    send_mail(server, "starttls one")
    imap = starttls_client(server)
    typ, data = imap.select("INBOX")
    assert typ == "OK" and int(data[0]) >= 1
    typ, data = imap.search(None, "SUBJECT", '"starttls one"')
    [num] = data[0].split()
    typ, data = imap.fetch(num, "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)] RFC822.SIZE)")
    assert typ == "OK"
    assert b"Subject: starttls one" in data[0][1]
    typ, data = imap.fetch(num, "(BODY[TEXT])")
    assert b"Hello there" in data[0][1]
    typ, data = imap.fetch(num, "(FLAGS)")
    assert b"\\Seen" in data[0]
    imap.logout()


def test_imaps_list_append_copy_move_expunge(server):
    imap = imaps_client(server)
    typ, folders = imap.list()
    text = b"\n".join(folders)
    for name, attr in ((b"Sent", b"\\Sent"), (b"Trash", b"\\Trash"), (b"Drafts", b"\\Drafts")):
        assert attr in text and name in text
    assert imap.create("Projects.2026")[0] == "OK"
    typ, data = imap.append("Projects.2026", "(\\Flagged)", None, b"Subject: appended\r\n\r\nbody\r\n")
    assert typ == "OK" and b"APPENDUID" in data[0]
    imap.select("Projects.2026")
    typ, data = imap.uid("COPY", "1:*", "Trash")
    assert typ == "OK"
    typ, data = imap.uid("MOVE", "1:*", "Archive")
    assert typ == "OK"
    typ, data = imap.select("Projects.2026")
    assert data[0] == b"0"
    imap.select("Trash")
    imap.store("1", "+FLAGS", "(\\Deleted)")
    typ, data = imap.expunge()
    assert data[0] == b"1"
    typ, data = imap.status("Archive", "(MESSAGES UIDNEXT)")
    assert b"MESSAGES 1" in data[0]
    imap.logout()


def test_two_sessions_see_flags_and_expunges(server):
    send_mail(server, "shared one")
    send_mail(server, "shared two")
    a = imaps_client(server)
    b = imaps_client(server)
    a.select("INBOX")
    b.select("INBOX")
    typ, data = a.uid("SEARCH", None, "SUBJECT", '"shared one"')
    uid = data[0].split()[-1]
    a.uid("STORE", uid, "+FLAGS", "(\\Flagged)")
    typ, data = b.noop()
    fetches = b.untagged_responses.get("FETCH", [])
    assert any(b"\\Flagged" in f for f in fetches), fetches
    a.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
    a.expunge()
    b.noop()
    assert b.untagged_responses.get("EXPUNGE"), b.untagged_responses
    a.logout()
    b.logout()


def test_idle_is_woken_by_smtp_delivery(server):
    ctx = tls_context()
    raw = ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.ports["imaps"]), timeout=10))
    f = raw.makefile("rb")
    f.readline()
    raw.sendall(f'a LOGIN {ALICE} "{PASSWORD}"\r\n'.encode())
    while not f.readline().startswith(b"a "):
        pass
    raw.sendall(b"b SELECT INBOX\r\n")
    while not f.readline().startswith(b"b "):
        pass
    raw.sendall(b"c IDLE\r\n")
    assert f.readline().startswith(b"+")
    send_mail(server, "idle wake")
    line = f.readline()
    assert line.endswith(b"EXISTS\r\n"), line
    raw.sendall(b"DONE\r\n")
    while not (line := f.readline()).startswith(b"c "):
        pass
    assert line.startswith(b"c OK")
    raw.close()


def test_uids_survive_restart(server):
    send_mail(server, "restart check")
    imap = imaps_client(server)
    imap.select("INBOX")
    typ, data = imap.uid("SEARCH", None, "ALL")
    uids_before = data[0].split()
    typ, data = imap.response("UIDVALIDITY")
    imap.logout()
    server.stop()
    server.start()
    send_mail(server, "after restart")
    imap = imaps_client(server)
    typ, data = imap.select("INBOX")
    typ, data = imap.uid("SEARCH", None, "ALL")
    uids_after = data[0].split()
    assert uids_after[:len(uids_before)] == uids_before
    assert int(uids_after[-1]) > int(uids_before[-1])
    imap.logout()


@pytest.mark.skipif(shutil.which("mbsync") is None, reason="mbsync (Debian package isync) not installed")
def test_mbsync_syncs_down_and_flags_up(server, tmp_path):
    send_mail(server, "mbsync one", to="bob@example.test")
    send_mail(server, "mbsync two", to="bob@example.test")
    local = tmp_path / "mail"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""
IMAPAccount ms
Host 127.0.0.1
Port {server.ports["imaps"]}
User bob@example.test
Pass "{PASSWORD}"
SSLType IMAPS
CertificateFile {server.root / "var" / "tls" / "cert.pem"}
SystemCertificates no

IMAPStore remote
Account ms

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel ch
Far :remote:
Near :local:
Patterns INBOX
Create Both
Expunge Both
SyncState *
""")
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["mbsync", "-c", str(rc), "ch"], capture_output=True, text=True, timeout=60)

    result = run()
    if result.returncode != 0 and "certificate" in (result.stderr + result.stdout).lower():
        pytest.skip("mbsync cannot be told to accept the self-signed certificate: " + result.stderr[-200:])
    assert result.returncode == 0, result.stdout + result.stderr
    files = list((local / "INBOX" / "cur").iterdir()) + list((local / "INBOX" / "new").iterdir())
    assert len(files) >= 2
    # mark every message seen locally and push the flags up
    for p in (local / "INBOX" / "new").iterdir():
        p.rename(local / "INBOX" / "cur" / (p.name + ":2,S"))
    for p in (local / "INBOX" / "cur").iterdir():
        if ":2," in p.name and "S" not in p.name.split(":2,")[1]:
            p.rename(p.with_name(p.name + "S"))
    result = run()
    assert result.returncode == 0, result.stdout + result.stderr
    imap = imaps_client(server, "bob@example.test")
    imap.select("INBOX")
    typ, data = imap.search(None, "UNSEEN")
    assert data[0] == b""
    typ, data = imap.uid("SEARCH", None, "ALL")
    uids = data[0].split()
    imap.logout()
    server.stop()
    server.start()
    imap = imaps_client(server, "bob@example.test")
    imap.select("INBOX")
    typ, data = imap.uid("SEARCH", None, "ALL")
    assert data[0].split() == uids
    imap.logout()
    time.sleep(0)
    assert run().returncode == 0


def _pipeline(port: int, payload: bytes, last_tag: bytes, timeout: float = 60.0) -> bytes:
    """Write ``payload`` in one go over TLS while reading until ``last_tag``'s answer arrives.

    One asyncio loop does both (a TLS socket must not be read and written from two threads).
    """
    import asyncio

    async def run() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls_context())
        writer.write(payload)
        received = bytearray()
        try:
            while b"\r\n" + last_tag + b" " not in received:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    break
                received += chunk
        finally:
            writer.close()
        return bytes(received)

    return asyncio.run(asyncio.wait_for(run(), timeout))


def test_ten_thousand_pipelined_uid_stores_over_tls_are_all_answered(server):
    for i in range(5):
        send_mail(server, f"pipelined {i}")
    login = f"a LOGIN {ALICE} {{{len(PASSWORD)}+}}\r\n{PASSWORD}\r\nb SELECT INBOX\r\n".encode()
    commands = b"".join(b"p%d UID STORE 1:5 +FLAGS (\\Seen)\r\n" % n for n in range(10_000))
    out = _pipeline(server.ports["imaps"], login + commands + b"z LOGOUT\r\n", b"z")
    import re

    answered = re.findall(rb"^(p\d+) OK", out, re.M)
    assert answered == [b"p%d" % n for n in range(10_000)], (len(answered), out[:400], out[-400:])
    assert b"\r\nz OK LOGOUT completed\r\n" in out


def test_compress_deflate_over_tls_on_993(server):
    """RFC 4978 over a real TLS socket: after the OK, both directions are raw DEFLATE."""
    import zlib

    send_mail(server, "compressed read", body="\r\n".join(["squeeze " * 10] * 200))
    raw = socket.create_connection(("127.0.0.1", server.ports["imaps"]), timeout=10)
    with tls_context().wrap_socket(raw) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"* OK")
        sock.sendall(f"a LOGIN {ALICE} {PASSWORD.replace(' ', '_')}\r\n".encode())  # a bad password: NO
        assert reader.readline().startswith(b"a NO")
        sock.sendall(f'a LOGIN {ALICE} "{PASSWORD}"\r\n'.encode())
        assert reader.readline().startswith(b"a OK")
        sock.sendall(b"b COMPRESS DEFLATE\r\n")
        assert reader.readline() == b"b OK DEFLATE active\r\n"
        out, into = zlib.compressobj(6, zlib.DEFLATED, -15), zlib.decompressobj(-15)
        sock.sendall(out.compress(b"c SELECT INBOX\r\nd FETCH 1:* (BODY.PEEK[TEXT])\r\ne LOGOUT\r\n")
                     + out.flush(zlib.Z_SYNC_FLUSH))
        received, wire = b"", 0
        while not received.endswith(b"e OK LOGOUT completed\r\n"):
            chunk = sock.recv(65536)
            assert chunk, received[-300:]
            wire += len(chunk)
            received += into.decompress(chunk)
        assert b"c OK [READ-WRITE]" in received and received.count(b"squeeze ") >= 2000
        assert wire * 5 < len(received)  # the text really travelled compressed


def test_imapclient_drives_sort_thread_and_multiappend(server):
    """An IMAP library other than imaplib (imapclient), over 993, on the extensions it knows."""
    from imapclient import IMAPClient

    with IMAPClient("127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=tls_context(),
                    timeout=10) as client:
        client.login(ALICE, PASSWORD)
        caps = client.capabilities()
        for cap in (b"SORT", b"THREAD=REFERENCES", b"ESEARCH", b"MULTIAPPEND", b"COMPRESS=DEFLATE"):
            assert cap in caps
        client.create_folder("Lib")
        messages = [
            (f"Subject: {subject}\r\nMessage-ID: <{mid}@lib>\r\n{refs}Date: {date}\r\n\r\nbody\r\n").encode()
            for subject, mid, refs, date in (
                ("Zebra", "z", "", "Mon, 2 Nov 2026 00:00:00 +0000"),
                ("Apple", "a", "", "Tue, 3 Nov 2026 00:00:00 +0000"),
                ("Re: Zebra", "r", "References: <z@lib>\r\n", "Wed, 4 Nov 2026 00:00:00 +0000"),
            )
        ]
        typ, data = client.multiappend("Lib", messages)
        assert typ == "OK" and data[0].startswith(b"[APPENDUID ") and b" 1:3]" in data[0]
        client.select_folder("Lib")
        uids = client.search("ALL")
        assert client.sort(["SUBJECT"]) == [uids[1], uids[0], uids[2]]
        assert client.sort(["REVERSE", "DATE"]) == [uids[2], uids[1], uids[0]]
        assert client.thread("REFERENCES") == ((uids[0], uids[2]), (uids[1],))
        # ORDEREDSUBJECT: threads in the order of their first dates, a reply under the first
        assert client.thread("ORDEREDSUBJECT") == ((uids[0], uids[2]), (uids[1],))


def test_qresync_resync_after_another_session_and_pop3(server):
    """A client comes back after changes by another IMAP session and by POP3: SELECT (QRESYNC)
    tells it only those (VANISHED (EARLIER) and the changed messages), and CONDSTORE works
    from imapclient."""
    import poplib

    from imapclient import IMAPClient

    user = "bob@example.test"
    for i in range(6):
        send_mail(server, f"resync {i}", to=user)
    with IMAPClient("127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=tls_context(),
                    timeout=10) as client:
        client.login(user, PASSWORD)
        assert b"CONDSTORE" in client.capabilities() and b"QRESYNC" in client.capabilities()
        assert client.enable("QRESYNC") == [b"QRESYNC"]
        info = client.select_folder("INBOX")
        uidvalidity, modseq = info[b"UIDVALIDITY"], info[b"HIGHESTMODSEQ"]
        uids = client.search(["SUBJECT", "resync"])
        assert len(uids) == 6
        seqs = client.fetch(uids, ["MODSEQ"])
        assert all(seqs[u][b"MODSEQ"][0] <= modseq for u in uids)

    other = imaps_client(server, user)
    other.select("INBOX")
    other.uid("STORE", str(uids[1]), "+FLAGS", "(\\Flagged)")
    other.uid("STORE", str(uids[2]), "+FLAGS", "(\\Deleted)")
    other.expunge()
    other.logout()
    pop = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], timeout=10, context=tls_context())
    pop.user(user)
    pop.pass_(PASSWORD)
    listed = pop.list()[1]
    for entry in listed:
        number = entry.split()[0].decode()
        if b"Subject: resync 4" in b"\r\n".join(pop.top(number, 0)[1]):
            pop.dele(number)
    pop.quit()

    imap = imaps_client(server, user)
    imap._simple_command("ENABLE", "QRESYNC")
    typ, _ = imap._simple_command("SELECT", f"INBOX (QRESYNC ({uidvalidity} {modseq}))")
    assert typ == "OK"
    imap.state = "SELECTED"  # imaplib's select() cannot pass the parameter
    vanished = imap.untagged_responses.pop("VANISHED", [])
    fetched = imap.untagged_responses.pop("FETCH", [])
    assert vanished == [f"(EARLIER) {uids[2]},{uids[4]}".encode()]
    assert len(fetched) == 1 and f"UID {uids[1]} FLAGS (\\Flagged) MODSEQ (".encode() in fetched[0]
    # CONDSTORE from here: only what changed since is fetched again
    typ, data = imap._simple_command("UID", "FETCH", "1:*", "(FLAGS)", f"(CHANGEDSINCE {modseq})")
    assert typ == "OK" and len(imap.untagged_responses.pop("FETCH", [])) == 1
    imap.logout()

    with IMAPClient("127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=tls_context(),
                    timeout=10) as client:
        client.login(user, PASSWORD)
        client.select_folder("INBOX")
        changed = client.fetch(client.search(["ALL"]), ["FLAGS"], modifiers=[f"CHANGEDSINCE {modseq}"])
        assert list(changed) == [uids[1]] and b"\\Flagged" in changed[uids[1]][b"FLAGS"]
        assert client.search(["MODSEQ", str(modseq + 1)]) == [uids[1]]
        assert client.sort(["SUBJECT"], ["SUBJECT", "resync"]) == [uids[0], uids[1], uids[3], uids[5]]
