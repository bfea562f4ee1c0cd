"""MailServer: the whole system in this process, on its own reactor thread, for other programs' tests.

Real sockets on loopback, real clients (smtplib, imaplib, poplib) and real TLS from the
throwaway CA; nothing here imports Twisted.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import ssl
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from mailstack.embedded import LISTENERS, MailServer

PASSWORD = "a long test password"
MESSAGE = b"From: app@example.org\r\nTo: alice@example.test\r\nSubject: Welcome aboard\r\n\r\nHello Alice\r\n"


@pytest.fixture
def server():
    with MailServer() as mail:
        mail.add_user("alice@example.test", PASSWORD)
        yield mail


def test_every_listener_answers_on_its_loopback_port(server):
    assert set(server.endpoints) == set(LISTENERS)
    assert len({port for _, port in server.endpoints.values()}) == len(LISTENERS)
    for name in ("smtp", "submission", "imap", "pop3"):
        with socket.create_connection(server.endpoints[name], timeout=5) as s:
            assert s.recv(100)[:1] in (b"2", b"*", b"+")  # 220, * OK, +OK
    for name in ("submissions", "imaps", "pop3s"):
        with server.ssl_context().wrap_socket(socket.create_connection(server.endpoints[name], timeout=5),
                                              server_hostname="127.0.0.1") as s:
            assert s.recv(100)[:1] in (b"2", b"*", b"+")


def test_mail_sent_by_smtp_is_read_back_parsed_and_over_imap(server):
    with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
        smtp.sendmail("app@example.org", ["alice@example.test"], MESSAGE)
    message = server.wait_for_message(to="alice@example.test", subject="Welcome")
    assert message["Subject"] == "Welcome aboard" and message.get_content().strip() == "Hello Alice"
    with imaplib.IMAP4_SSL(*server.imaps, ssl_context=server.ssl_context(), timeout=10) as imap:
        imap.login("alice@example.test", PASSWORD)
        imap.select("INBOX")
        _, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"Welcome aboard" in data[0][1]


def test_starttls_everywhere_is_verified_against_the_fixture_ca(server):
    with smtplib.SMTP(*server.submission, timeout=10) as smtp:
        smtp.starttls(context=server.ssl_context())
        smtp.login("alice@example.test", PASSWORD)
        smtp.sendmail("alice@example.test", ["alice@example.test"], b"Subject: to myself\r\n\r\nx\r\n")
    server.wait_for_message(to="alice@example.test", subject="to myself")
    with imaplib.IMAP4(*server.imap, timeout=10) as imap:
        imap.starttls(server.ssl_context())
        imap.login("alice@example.test", PASSWORD)
    pop = poplib.POP3(*server.pop3, timeout=10)
    pop.stls(server.ssl_context())
    pop.user("alice@example.test")
    pop.pass_(PASSWORD)
    assert pop.stat()[0] == 1
    pop.quit()
    with pytest.raises(ssl.SSLCertVerificationError):  # the CA is the fixture's, not the system's
        with smtplib.SMTP(*server.submission, timeout=10) as smtp:
            smtp.starttls(context=ssl.create_default_context())


def test_credentials_are_refused_before_tls(server):
    with smtplib.SMTP(*server.submission, timeout=10) as smtp:
        smtp.ehlo()
        with pytest.raises(smtplib.SMTPException):
            smtp.login("alice@example.test", PASSWORD)


def test_plaintext_login_when_the_settings_allow_it():
    with MailServer(settings={"tls": {"allow_plaintext_auth": True}}) as mail:
        mail.add_user("bob@example.test", PASSWORD)
        with imaplib.IMAP4(*mail.imap, timeout=10) as imap:
            assert imap.login("bob@example.test", PASSWORD)[0] == "OK"


def test_messages_follow_subaddresses_and_aliases_and_every_folder(server):
    with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
        smtp.sendmail("app@example.org", ["alice+news@example.test"], b"Subject: one\r\n\r\n1\r\n")
        smtp.sendmail("app@example.org", ["alice@example.test"], b"Subject: two\r\n\r\n2\r\n")
    server.wait_for_message(to="alice@example.test", subject="two")
    assert [m["Subject"] for m in server.messages(to="alice+news@example.test")] == ["one", "two"]
    assert [m["Subject"] for m in server.messages()] == ["one", "two"]
    assert server.messages(to="nobody@example.test") == []
    assert server.messages(to="../../etc@example.test") == []


def test_a_new_users_domain_becomes_local(server):
    server.add_user("carol@other.test", PASSWORD)
    with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
        smtp.sendmail("app@example.org", ["carol@other.test"], b"Subject: hi carol\r\n\r\nx\r\n")
    assert server.wait_for_message(to="carol@other.test")["Subject"] == "hi carol"


def test_waiting_in_vain_names_what_arrived(server):
    with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
        smtp.sendmail("app@example.org", ["alice@example.test"], b"Subject: something else\r\n\r\nx\r\n")
    server.wait_for_message(to="alice@example.test")
    with pytest.raises(TimeoutError, match="'something else'"):
        server.wait_for_message(to="alice@example.test", subject="Welcome", timeout=0.2)


def test_clear_empties_every_mailbox_and_imap_sees_it(server):
    with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
        smtp.sendmail("app@example.org", ["alice@example.test"], MESSAGE)
    server.wait_for_message(to="alice@example.test")
    with imaplib.IMAP4_SSL(*server.imaps, ssl_context=server.ssl_context(), timeout=10) as imap:
        imap.login("alice@example.test", PASSWORD)
        imap.select("INBOX")
        server.clear()
        assert server.messages() == []
        imap.noop()
        assert imap.search(None, "ALL")[1] == [b""]


def test_stop_leaves_no_thread_port_or_directory_and_no_global_reactor():
    before = set(threading.enumerate())
    had_reactor = "twisted.internet.reactor" in sys.modules
    mail = MailServer().start()
    root, ports = mail.root, dict(mail.endpoints)
    assert root.exists()
    mail.stop()
    assert set(threading.enumerate()) <= before
    assert not root.exists()
    for host, port in ports.values():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, port), timeout=2).close()
    assert ("twisted.internet.reactor" in sys.modules) == had_reactor  # the program's own is left alone
    mail.stop()  # twice is harmless


def test_two_servers_run_side_by_side():
    with MailServer() as one, MailServer(domains=["two.test"]) as two:
        one.add_user("a@example.test", PASSWORD)
        two.add_user("b@two.test", PASSWORD)
        with smtplib.SMTP(*one.smtp, timeout=10) as smtp:
            smtp.sendmail("x@example.org", ["a@example.test"], b"Subject: for one\r\n\r\nx\r\n")
        with smtplib.SMTP(*two.smtp, timeout=10) as smtp:
            smtp.sendmail("x@example.org", ["b@two.test"], b"Subject: for two\r\n\r\nx\r\n")
        assert one.wait_for_message(to="a@example.test")["Subject"] == "for one"
        assert two.wait_for_message(to="b@two.test")["Subject"] == "for two"
        assert two.messages(to="a@example.test") == []


def test_a_bad_setting_stops_start_with_the_key_named():
    from mailstack.config import ConfigError

    before = set(Path(tempfile.gettempdir()).glob("mailstack-*"))
    mail = MailServer(settings={"limits": {"recipients": "many"}})
    with pytest.raises(ConfigError, match="limits.recipients"):
        mail.start()
    assert set(Path(tempfile.gettempdir()).glob("mailstack-*")) == before  # nothing left behind
    mail.stop()


def test_a_port_taken_fails_start_and_leaves_nothing_running():
    from twisted.internet.error import CannotListenError

    before, sockets = set(threading.enumerate()), _sockets()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    mail = MailServer(settings={"listen": {"imaps": f"127.0.0.1:{taken.getsockname()[1]}"}})
    try:
        with pytest.raises(CannotListenError):
            mail.start()
    finally:
        taken.close()
    assert set(threading.enumerate()) <= before
    assert _sockets() == sockets  # the ports opened before it are closed again


def _sockets() -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if _link(fd).startswith("socket:"))


def _link(fd: Path) -> str:
    try:
        return str(fd.readlink())
    except OSError:
        return ""


def test_a_server_that_is_not_running_touches_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kept = tmp_path / "maildirs" / "example.test" / "bob" / "new" / "1.M1P1.host"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"Subject: mine\r\n\r\n")
    mail = MailServer()
    for call in (mail.messages, mail.clear):
        with pytest.raises(RuntimeError, match="not running"):
            call()
    assert kept.exists()


def test_mail_for_other_domains_is_held_not_sent_and_users_can_be_added_again(server):
    with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
        assert smtp.sendmail("app@example.org", ["someone@elsewhere.example"], b"Subject: out\r\n\r\nx\r\n") == {}
    server.add_user("alice@example.test", PASSWORD)  # a server shared by several tests: no error
    with imaplib.IMAP4_SSL(*server.imaps, ssl_context=server.ssl_context(), timeout=10) as imap:
        assert imap.login("alice@example.test", PASSWORD)[0] == "OK"
    log = (server.root / "mailstack.log").read_text()
    assert "127.0.0.1]:9" in log or "127.0.0.1:9" in log or "elsewhere.example" in log
