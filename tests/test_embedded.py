"""MailServer: the whole system in this process, on Twisted's reactor in a thread, for other programs' tests.

Real sockets on loopback, real clients (smtplib, imaplib, poplib) and real TLS from the
throwaway CA. Only the tests of the reactor arrangement (whose reactor runs, on which
thread, who stops it) import Twisted.
"""

from __future__ import annotations

import imaplib
import json
import poplib
import smtplib
import socket
import ssl
import sys
import tempfile
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mailstack.embedded import LISTENERS, MailServer
from mailstack.errors import StartupError

PASSWORD = "a long test password"
MESSAGE = b"From: app@example.org\r\nTo: alice@example.test\r\nSubject: Welcome aboard\r\n\r\nHello Alice\r\n"


@pytest.fixture
def server():
    with MailServer() as mail:
        mail.add_user("alice@example.test", PASSWORD)
        yield mail


BIG_BODY = (b"x" * 78 + b"\r\n") * (400 * 1024 // 80)  # 400 KiB: past POP3's one-piece limit of 256 KiB


def big_message(subject: str) -> bytes:
    return f"From: app@example.org\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\r\n".encode() + BIG_BODY


def pop3_over_tls(server: MailServer, how: str) -> poplib.POP3:
    if how == "pop3s":
        return poplib.POP3_SSL(*server.pop3s, context=server.ssl_context(), timeout=10)
    pop = poplib.POP3(*server.pop3, timeout=10)
    pop.stls(server.ssl_context())
    return pop


def test_every_listener_answers_on_its_loopback_port(server):
    assert set(server.endpoints) == {*LISTENERS, "http"}
    assert len({port for _, port in server.endpoints.values()}) == len(LISTENERS) + 1
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


def test_stop_leaves_no_thread_port_file_or_directory_and_no_global_reactor():
    MailServer().start().stop()  # what importing and first use open for good is open before counting
    before, files, temp = set(threading.enumerate()), _fds(), _temp_dirs()
    mail = MailServer().start()
    root, ports = mail.root, dict(mail.endpoints)
    assert root.exists() and "twisted.internet.reactor" in sys.modules
    mail.stop()
    assert set(threading.enumerate()) <= before
    assert not root.exists() and _temp_dirs() == temp
    assert _fds() == files  # sockets, the reactor's epoll and waker pipe, logs and databases: all closed
    for host, port in ports.values():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, port), timeout=2).close()
    assert "twisted.internet.reactor" not in sys.modules  # stopped, so uninstalled: the next start installs one
    mail.stop()  # twice is harmless


def test_start_stop_start_again_runs_on_a_fresh_reactor():
    with MailServer() as mail:
        first = sys.modules["twisted.internet.reactor"]
        _send_and_retrieve_big(mail)
    with MailServer() as mail:
        assert sys.modules["twisted.internet.reactor"] is not first
        _send_and_retrieve_big(mail)  # TLS's cooperator (module-wide) schedules on the new reactor


def _send_and_retrieve_big(mail: MailServer) -> None:
    mail.add_user("alice@example.test", PASSWORD)
    with smtplib.SMTP(*mail.smtp, timeout=10) as smtp:
        smtp.sendmail("app@example.org", ["alice@example.test"], big_message("big"))
    mail.wait_for_message(to="alice@example.test", subject="big")
    pop = pop3_over_tls(mail, "pop3s")
    try:
        pop.user("alice@example.test")
        pop.pass_(PASSWORD)
        assert len(pop.retr(1)[1]) > 5000
    finally:
        pop.close()


def test_two_servers_share_one_reactor_thread_and_either_may_stop_first():
    one, two = MailServer().start(), MailServer(domains=["two.test"]).start()
    try:
        assert _reactor_threads() == 1
        one.stop()
        two.add_user("b@two.test", PASSWORD)
        with smtplib.SMTP(*two.smtp, timeout=10) as smtp:
            smtp.sendmail("x@example.org", ["b@two.test"], b"Subject: still there\r\n\r\nx\r\n")
        assert two.wait_for_message(to="b@two.test")["Subject"] == "still there"
    finally:
        one.stop()
        two.stop()
    assert _reactor_threads() == 0


def _reactor_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "mailstack-reactor")


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
    before, sockets = set(threading.enumerate()), _sockets()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    mail = MailServer(settings={"listen": {"imaps": f"127.0.0.1:{taken.getsockname()[1]}"}})
    try:
        with pytest.raises(StartupError, match=rf"^listen.imaps: cannot listen on 127.0.0.1:{taken.getsockname()[1]}: "
                           "address already in use$"):
            mail.start()
    finally:
        taken.close()
    assert set(threading.enumerate()) <= before
    assert _sockets() == sockets  # the ports opened before it are closed again


def _sockets() -> int:
    return sum(1 for link in _fds().values() if link.startswith("socket:"))


def _fds() -> dict[str, str]:
    return {fd.name: _link(fd) for fd in Path("/proc/self/fd").iterdir()}


def _temp_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("mailstack-*"))


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


def test_mail_for_other_domains_is_captured_and_found_by_its_recipient(server):
    with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
        assert smtp.sendmail("app@example.org", ["someone@elsewhere.example", "alice@example.test"],
                             b"Subject: out\r\n\r\nx\r\n") == {}
    captured = server.wait_for_message(to="Someone@elsewhere.example", subject="out")
    assert captured["X-Original-To"] == "someone@elsewhere.example"
    assert captured["Return-Path"] == "<app@example.org>"
    assert server.messages(to="nobody@elsewhere.example") == []
    assert server.wait_for_message(to="alice@example.test", subject="out")["X-Original-To"] is None
    with urllib.request.urlopen(f"http://{server.http.host}:{server.http.port}/api/v1/messages", timeout=10) as r:
        listing = json.load(r)
    assert [m["envelope"] for m in listing["messages"]] == [
        {"from": "app@example.org", "to": ["someone@elsewhere.example"]}]


def test_users_can_be_added_again(server):
    server.add_user("alice@example.test", PASSWORD)  # a server shared by several tests: no error
    with imaplib.IMAP4_SSL(*server.imaps, ssl_context=server.ssl_context(), timeout=10) as imap:
        assert imap.login("alice@example.test", PASSWORD)[0] == "OK"


@pytest.mark.parametrize("how", ["pop3s", "stls"])
def test_a_message_over_256_kib_is_retrieved_over_pop3_with_tls(server, how):
    with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
        smtp.sendmail("app@example.org", ["alice@example.test"], big_message("big"))
    server.wait_for_message(to="alice@example.test", subject="big")
    pop = pop3_over_tls(server, how)  # the socket timeout fails the test where the server would hang
    try:
        pop.user("alice@example.test")
        pop.pass_(PASSWORD)
        _, lines, _ = pop.retr(1)
        assert lines[-1] == b"x" * 78 and sum(len(line) + 2 for line in lines) > 400_000
    finally:
        pop.close()


def test_mail_relayed_to_another_server_goes_over_starttls():
    with MailServer(domains=["two.test"]) as two:
        two.add_user("bob@two.test", PASSWORD)
        smarthost = f"{two.smtp.host}:{two.smtp.port}"
        with MailServer(settings={"relay": {"smarthost": smarthost, "capture": False}}) as one:
            with smtplib.SMTP(*one.smtp, timeout=10) as smtp:
                smtp.sendmail("app@example.org", ["bob@two.test"], b"Subject: relayed\r\n\r\nx\r\n")
            message = two.wait_for_message(to="bob@two.test", subject="relayed")
    assert "ESMTPS" in message["Received"]


def test_wrong_logins_never_lock_the_tests_out():
    def wrong_login(_: int) -> None:
        with imaplib.IMAP4_SSL(*server.imaps, ssl_context=server.ssl_context(), timeout=5) as imap:
            with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                imap.login("alice@example.test", "not the password")

    with MailServer() as server:
        server.add_user("alice@example.test", PASSWORD)
        with ThreadPoolExecutor(30) as pool:  # each answered within the socket timeout: no growing delay
            list(pool.map(wrong_login, range(30)))
        with imaplib.IMAP4_SSL(*server.imaps, ssl_context=server.ssl_context(), timeout=5) as imap:
            assert imap.login("alice@example.test", PASSWORD)[0] == "OK"


def test_the_login_limits_can_still_be_set():
    with MailServer(settings={"limits": {"auth_failures": 2, "auth_lockout": "10m"}}) as server:
        server.add_user("alice@example.test", PASSWORD)
        with imaplib.IMAP4_SSL(*server.imaps, ssl_context=server.ssl_context(), timeout=10) as imap:
            for _ in range(2):
                with pytest.raises(imaplib.IMAP4.error):
                    imap.login("alice@example.test", "not the password")
        with imaplib.IMAP4_SSL(*server.imaps, ssl_context=server.ssl_context(), timeout=10) as imap:
            with pytest.raises(imaplib.IMAP4.error, match="Too many failed logins"):
                imap.login("alice@example.test", PASSWORD)


def test_calls_on_the_reactor_thread_raise_instead_of_waiting_on_it(server):
    from twisted.internet import reactor
    from twisted.internet.threads import blockingCallFromThread

    calls = [server.stop, server.start, MailServer().start, server.messages, server.clear,
             server.wait_for_message, lambda: server.add_user("bob@example.test", PASSWORD)]
    for call in calls:
        with pytest.raises(RuntimeError, match="thread that runs Twisted's reactor"):
            blockingCallFromThread(reactor, call)
    server.add_user("bob@example.test", PASSWORD)  # the server is as it was


def test_an_installed_reactor_that_is_not_running_is_run_then_stopped_and_uninstalled():
    from twisted.internet import reactor  # installs the default reactor unless one is installed

    assert not reactor.running
    with MailServer() as mail:
        assert reactor.running and _reactor_threads() == 1
        mail.add_user("bob@example.test", PASSWORD)
    assert not reactor.running and "twisted.internet.reactor" not in sys.modules


def test_a_reactor_the_program_runs_is_used_and_left_running():
    from twisted.internet import reactor

    from mailstack.embedded import _stop_global_reactor

    running = threading.Event()
    reactor.callWhenRunning(running.set)
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, name="program")
    thread.start()
    try:
        assert running.wait(10)
        with MailServer() as mail:
            assert _reactor_threads() == 0
            _send_and_retrieve_big(mail)
        assert reactor.running and sys.modules["twisted.internet.reactor"] is reactor
    finally:
        _stop_global_reactor(reactor, thread)  # as the program would, then gone for the tests after this one
