"""SMTP over loopback with real clients: smtplib (plain, STARTTLS, 465, AUTH, SMTPUTF8), BDAT, swaks."""

from __future__ import annotations

import base64
import shutil
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from .conftest import PASSWORD, cli

MESSAGE = (b"From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: e2e\r\n"
           b"Message-ID: <e2e-1@example.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
           b"Hello Alice,\r\n.leading dot line\r\n\r\n-- \r\nBob\r\n")


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def new_messages(server, address, before):
    """Messages that arrived since ``before`` was read (file names do not sort by time)."""
    now = server.messages(address)
    for old in before:
        now.remove(old)
    return now


def split_delivered(data: bytes) -> tuple[list[bytes], bytes]:
    """(trace lines we added, the message as sent)."""
    head, _, rest = data.partition(b"\r\nReceived: ")
    received, _, original = rest.partition(b"\r\nFrom: ")
    return head.split(b"\r\n"), b"From: " + original


def test_port25_delivers_byte_for_byte(server):
    before = server.messages("alice@example.test")
    names_before = set((server.maildir("alice@example.test") / "new").glob("*"))
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
        refused = s.sendmail("bob@remote.example", ["alice@example.test"], MESSAGE)
    assert refused == {}
    [stored] = new_messages(server, "alice@example.test", before)
    prefix, original = split_delivered(stored)
    assert prefix == [b"Return-Path: <bob@remote.example>", b"Delivered-To: alice@example.test"]
    assert original == MESSAGE
    assert b"\r\nReceived: from " in stored and b" with ESMTP id " in stored
    [path] = set((server.maildir("alice@example.test") / "new").glob("*")) - names_before
    assert path.name.endswith(f",S={len(stored)}")


def test_a_tagged_address_is_delivered_to_its_user(server):
    """Subaddressing: alice+lists@ reaches alice's INBOX; Delivered-To keeps the tag."""
    before = server.messages("alice@example.test")
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
        assert s.sendmail("bob@remote.example", ["alice+lists@example.test"], MESSAGE) == {}
        s.ehlo()
        s.mail("x@remote.example")
        assert s.rcpt("nobody+lists@example.test") == (550, b"5.1.1 No such user here")
    [stored] = new_messages(server, "alice@example.test", before)
    assert split_delivered(stored)[0] == [b"Return-Path: <bob@remote.example>",
                                          b"Delivered-To: alice+lists@example.test"]
    assert not server.maildir("alice+lists@example.test").exists()


def test_port25_refuses_relay_and_unknown_users(server):
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
        s.ehlo()
        s.mail("x@remote.example")
        assert s.rcpt("victim@elsewhere.example") == (554, b"5.7.1 Relay access denied")
        assert s.rcpt("nobody@example.test") == (550, b"5.1.1 No such user here")


def test_submission_starttls_auth_plain(server):
    before = server.messages("bob@example.test")
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=10) as s:
        s.ehlo()
        assert "auth" not in s.esmtp_features
        assert s.mail("alice@example.test")[0] == 530
        s.rset()
        s.starttls(context=tls_context())
        s.ehlo()
        assert s.esmtp_features["auth"].strip() == "PLAIN LOGIN"
        s.login("alice@example.test", PASSWORD)
        s.sendmail("alice@example.test", ["bob@example.test"], b"Subject: sub\r\n\r\nbody\r\n")
    [stored] = new_messages(server, "bob@example.test", before)
    assert b" with ESMTPSA id " in stored and b"(using TLSv1." in stored
    assert b"\r\nMessage-ID: <" in stored and b"\r\nDate: " in stored
    assert stored.endswith(b"Subject: sub\r\n\r\nbody\r\n")


def test_submission_auth_login_and_sender_ownership(server):
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=10) as s:
        s.starttls(context=tls_context())
        s.ehlo()
        s.user, s.password = "alice@example.test", PASSWORD
        code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert code == 235
        assert s.mail("bob@example.test") == (553, b"5.7.1 Sender address not owned by authenticated user")


def test_submissions_implicit_tls(server):
    before = server.messages("bob@example.test")
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], timeout=10, context=tls_context()) as s:
        s.ehlo()
        assert "starttls" not in s.esmtp_features
        s.login("alice@example.test", PASSWORD)
        s.sendmail("alice@example.test", ["bob@example.test"], b"Subject: 465\r\n\r\nbody\r\n")
    assert len(new_messages(server, "bob@example.test", before)) == 1


def test_wrong_password_is_535(server):
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], timeout=10, context=tls_context()) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login("alice@example.test", "wrong")
        assert e.value.smtp_code == 535


def test_user_added_by_cli_is_seen_without_restart_and_smtputf8(server):
    result = cli(server.config, "user", "add", "jürgen@example.test", "--password-stdin", stdin="pw-ü-1234\n")
    assert result.returncode == 0, result.stderr
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
        s.ehlo()
        assert s.has_extn("smtputf8")
        s.sendmail("jörg@remote.example", ["jürgen@example.test"],
                   "Subject: UTF-8\r\n\r\nGrüße\r\n".encode(), mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    [stored] = server.messages("jürgen@example.test")
    assert "Return-Path: <jörg@remote.example>".encode() in stored
    assert b" with UTF8SMTP id " in stored
    assert stored.endswith("Grüße\r\n".encode())
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], timeout=10, context=tls_context()) as s:
        s.ehlo()
        token = base64.b64encode("\0jürgen@example.test\0pw-ü-1234".encode()).decode()
        assert s.docmd("AUTH", "PLAIN " + token) == (235, b"2.7.0 Authentication successful")


def recv_reply(sock: socket.socket, buf: bytearray) -> bytes:
    while True:
        lines = bytes(buf).split(b"\r\n")
        for i, line in enumerate(lines[:-1]):
            if len(line) >= 4 and line[3:4] == b" ":
                reply = b"\r\n".join(lines[: i + 1])
                del buf[: len(reply) + 2]
                return reply
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk


def test_bdat_chunking_over_a_real_socket(server):
    before = server.messages("alice@example.test")
    body = b"Subject: chunked\r\n\r\n" + b"line\r\n" * 2000
    with socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=10) as sock:
        buf = bytearray()
        assert recv_reply(sock, buf).startswith(b"220 ")
        sock.sendall(b"EHLO client.example\r\n")
        assert b"CHUNKING" in recv_reply(sock, buf)
        sock.sendall(b"MAIL FROM:<c@remote.example>\r\nRCPT TO:<alice@example.test>\r\n")
        assert recv_reply(sock, buf).startswith(b"250 ")
        assert recv_reply(sock, buf).startswith(b"250 ")
        half = len(body) // 2
        sock.sendall(b"BDAT %d\r\n" % half + body[:half])
        assert recv_reply(sock, buf).startswith(b"250 2.0.0 %d octets" % half)
        sock.sendall(b"BDAT %d LAST\r\n" % (len(body) - half) + body[half:])
        assert recv_reply(sock, buf).startswith(b"250 2.0.0 OK queued as ")
        sock.sendall(b"QUIT\r\n")
        assert recv_reply(sock, buf).startswith(b"221 ")
    [stored] = new_messages(server, "alice@example.test", before)
    assert stored.endswith(body)


def test_smuggling_attempt_yields_one_message(server):
    before = server.messages("alice@example.test")
    before_bob = server.messages("bob@example.test")
    data = (b"Subject: one\r\n\r\nfirst\n.\nMAIL FROM:<x@remote.example>\r\nRCPT TO:<bob@example.test>\r\n"
            b"DATA\r\nsmuggled\r\n.\r\n")
    with socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=10) as sock:
        buf = bytearray()
        recv_reply(sock, buf)
        sock.sendall(b"EHLO c.example\r\nMAIL FROM:<x@remote.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        for _ in range(4):
            recv_reply(sock, buf)
        sock.sendall(data + b"QUIT\r\n")
        assert recv_reply(sock, buf).startswith(b"250 2.0.0 OK queued as ")
        assert recv_reply(sock, buf).startswith(b"221 ")
    assert len(new_messages(server, "alice@example.test", before)) == 1
    assert server.messages("bob@example.test") == before_bob


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (.ci/run installs it)")
def test_swaks_starttls_auth_submission(server):
    before = server.messages("bob@example.test")
    result = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(server.ports["submission"]), "--tls",
         "--auth", "PLAIN", "--auth-user", "alice@example.test", "--auth-password", PASSWORD,
         "--from", "alice@example.test", "--to", "bob@example.test", "--header", "Subject: swaks"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 OK queued as" in result.stdout
    [stored] = new_messages(server, "bob@example.test", before)
    assert b"Subject: swaks" in stored


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (.ci/run installs it)")
def test_swaks_port25_pipelining_to_local_user(server):
    before = server.messages("alice@example.test")
    result = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(server.ports["smtp"]), "--pipeline",
         "--from", "someone@remote.example", "--to", "alice@example.test", "--body", "via swaks"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    [stored] = new_messages(server, "alice@example.test", before)
    assert b"via swaks" in stored


def test_broken_tls_handshake_is_logged_and_the_server_keeps_serving(server):
    with socket.create_connection(("127.0.0.1", server.ports["submissions"]), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01\x00\x05garbage-that-is-not-a-client-hello\r\n")
        try:
            sock.recv(1024)
        except OSError:
            pass
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], timeout=10, context=tls_context()) as s:
        assert s.noop()[0] == 250
    import time

    deadline = time.monotonic() + 10
    while "TLS failure with 127.0.0.1" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "submissions TLS failure with 127.0.0.1" in server.log_text()


def test_a_sieve_script_put_with_the_cli_files_mail_sent_by_smtp(server):
    """The user's active script runs at delivery: fileinto with flags, discard, and a broken run kept."""
    user = "sieve@example.test"
    assert cli(server.config, "user", "add", user, "--password-stdin", stdin="pw-sieve-1\n").returncode == 0
    script = ('require ["fileinto", "imap4flags", "envelope", "subaddress", "mailbox"];\n'
              'if envelope :detail "to" "junk" { discard; stop; }\n'
              'if header :contains "subject" "[dev]" { fileinto :create :flags "\\\\Flagged" "Lists.dev"; }\n'
              'if header :contains "subject" "[ops]" { fileinto "Missing"; }\n')
    assert cli(server.config, "sieve", "put", user, "main", stdin=script).returncode == 0
    broken = cli(server.config, "sieve", "put", user, "bad", stdin='fileinto "x";\n')
    assert broken.returncode == 1 and "line 1, column 1" in broken.stderr
    assert cli(server.config, "sieve", "activate", user, "main").returncode == 0
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
        for to, subject in ((user, "[dev] release"), (user, "hello"), ("sieve+junk@example.test", "[dev] x"),
                            (user, "[ops] no folder")):
            assert s.sendmail("bob@remote.example", [to], f"Subject: {subject}\r\n\r\nbody\r\n".encode()) == {}
    flagged = list((server.maildir(user, "Lists.dev") / "cur").iterdir())
    assert len(flagged) == 1 and flagged[0].name.endswith(":2,F")
    assert b"Subject: [dev] release" in flagged[0].read_bytes()
    inbox = server.messages(user)  # "hello" and the one for a missing folder; the +junk one was discarded
    assert len(inbox) == 2 and b"Subject: hello" in inbox[0] and b"Subject: [ops] no folder" in inbox[1]
    assert not server.maildir(user, "Missing").exists()  # fileinto without :create (RFC 5490 §3.2)


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_sieve_reject_redirect_and_vacation_over_smtp(server):
    """reject is a 550 to the client; redirect reaches another local user through the queue;
    vacation answers a sender once, and never a list."""
    for user in ("away@example.test", "picky@example.test", "fwd@example.test", "target@example.test",
                 "friend@example.test"):
        assert cli(server.config, "user", "add", user, "--password-stdin", stdin="pw-actions-1\n").returncode == 0
    scripts = {
        "picky@example.test": 'require "reject"; if header :contains "subject" "offer" { reject "No offers."; }',
        "fwd@example.test": 'redirect "target@example.test";',
        "away@example.test": 'require "vacation"; vacation :subject "Out of office" "Back on Monday.";',
    }
    for user, script in scripts.items():
        assert cli(server.config, "sieve", "put", user, "main", stdin=script).returncode == 0
        assert cli(server.config, "sieve", "activate", user, "main").returncode == 0
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            s.sendmail("bob@remote.example", ["picky@example.test"], b"Subject: a great offer\r\n\r\nbuy\r\n")
        assert refused.value.smtp_code == 550 and b"No offers." in refused.value.smtp_error
        assert s.sendmail("bob@remote.example", ["picky@example.test"], b"Subject: hello\r\n\r\nhi\r\n") == {}
        assert s.sendmail("bob@remote.example", ["fwd@example.test"], b"Subject: pass it on\r\n\r\nx\r\n") == {}
        for subject in ("first", "second"):
            assert s.sendmail("friend@example.test", ["away@example.test"],
                              f"To: away@example.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@x>\r\n\r\n"
                              "x\r\n".encode()) == {}
        assert s.sendmail("friend@example.test", ["away@example.test"],
                          b"To: away@example.test\r\nList-Id: <l.example.test>\r\nSubject: list\r\n\r\nx\r\n") == {}
    assert len(server.messages("picky@example.test")) == 1
    assert server.messages("fwd@example.test") == []
    [redirected] = wait_for(lambda: server.messages("target@example.test"), what="the redirected copy")
    assert redirected.startswith(b"Return-Path: <SRS0=") and redirected.split(b"\r\n")[0].endswith(b"@example.test>")
    assert b"Subject: pass it on" in redirected
    assert b"Delivered-To: fwd@example.test" in redirected
    assert len(server.messages("away@example.test")) == 3
    [reply] = wait_for(lambda: server.messages("friend@example.test"), what="the vacation reply")
    assert b"Subject: Out of office" in reply and b"Auto-Submitted: auto-replied" in reply
    assert b"In-Reply-To: <first@x>" in reply and b"Return-Path: <>" in reply
    # the second message found the first reply remembered: no second one was even prepared
    wait_for(lambda: "<friend@example.test> had a vacation reply from <away@example.test>" in server.log_text(),
             what="the second reply withheld")
    assert server.log_text().count("vacation prepared as") == 1
    assert len(server.messages("friend@example.test")) == 1
    assert "reject prepared as" not in server.log_text()  # the 550 told the client: no notice besides


def test_a_sieve_run_that_fails_still_delivers_to_inbox_and_says_why(server):
    user = "overreach@example.test"
    assert cli(server.config, "user", "add", user, "--password-stdin", stdin="pw-over-1\n").returncode == 0
    script = "".join(f'redirect "r{i}@example.net";\n' for i in range(11))  # one more than a run may make
    assert cli(server.config, "sieve", "put", user, "main", stdin=script).returncode == 0
    assert cli(server.config, "sieve", "activate", user, "main").returncode == 0
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
        assert s.sendmail("bob@remote.example", [user], b"Subject: keep me\r\n\r\nx\r\n") == {}
    [kept] = server.messages(user)
    assert b"Subject: keep me" in kept
    line = wait_for(lambda: next((ln for ln in server.log_text().splitlines()
                                  if f"Sieve script of <{user}> failed" in ln), None), what="the log line")
    assert "more than 10 redirects" in line and "filed into INBOX" in line
