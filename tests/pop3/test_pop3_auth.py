"""AUTHORIZATION state: greeting, CAPA, STLS, USER/PASS, AUTH PLAIN, lockout, IN-USE."""

from __future__ import annotations

import base64

import pytest
from twisted.internet.task import Clock

from mailstack.testing import make_authenticator

from .harness import USERS, pop3_harness, put

ALICE = "alice@example.test"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def h(tmp_path):
    h = pop3_harness(tmp_path)
    h.read()
    return h


def test_greeting(tmp_path):
    h = pop3_harness(tmp_path, connect=False)
    h.protocol.makeConnection(h.transport)
    assert h.read() == b"+OK mail.example.test POP3 ready\r\n"


def capa(h):
    lines = h.lines("CAPA\r\n")
    assert lines[0] == "+OK Capability list follows" and lines[-1] == "."
    return lines[1:-1]


def test_capa_before_tls_without_plaintext_login(tmp_path):
    h = pop3_harness(tmp_path, allow_plaintext_auth=False)
    h.read()
    assert capa(h) == ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS",
                       "IMPLEMENTATION mailstack"]


def test_capa_with_plaintext_allowed_and_after_login(h):
    assert capa(h) == ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "USER", "SASL PLAIN",
                       "STLS", "IMPLEMENTATION mailstack"]
    assert h.login().startswith("+OK")
    assert capa(h) == ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "IMPLEMENTATION mailstack"]


def test_capa_on_995_has_login_but_no_stls(tmp_path):
    h = pop3_harness(tmp_path, implicit_tls=True, allow_plaintext_auth=False)
    h.read()
    assert "STLS" not in capa(h) and "USER" in capa(h)
    assert h.reply("STLS\r\n") == "-ERR TLS is already active"


@pytest.mark.parametrize("command", ["USER alice@example.test", "PASS secret", f"AUTH PLAIN {b64(chr(0) + ALICE + chr(0) + 'secret')}"])
def test_login_refused_before_tls(tmp_path, command):
    h = pop3_harness(tmp_path, allow_plaintext_auth=False)
    h.read()
    assert h.reply(command + "\r\n") == (
        "-ERR [AUTH] Plaintext authentication disallowed on non-secure connection, use STLS")
    assert h.session.state.name == "AUTHORIZATION"


def test_stls_resets_and_discards_pipelined_input(tmp_path):
    h = pop3_harness(tmp_path, allow_plaintext_auth=False)
    h.read()
    assert h.send("STLS\r\nUSER injected\r\n") == b"+OK Begin TLS negotiation\r\n"
    assert h.transport.tls_started is h.factory.tls_options
    assert h.session.tls and h.session.user is None
    assert h.reply("STLS\r\n") == "-ERR TLS is already active"
    assert "STLS" not in capa(h)
    assert h.login().startswith("+OK Logged in")


def test_stls_takes_no_argument_and_not_after_login(h):
    assert h.reply("STLS now\r\n") == "-ERR Syntax error in arguments"
    h.login()
    assert h.reply("STLS\r\n") == "-ERR Command not valid in this state"


def test_user_pass_login(tmp_path):
    put(tmp_path, ALICE, b"Subject: x\r\n\r\nhi\r\n")
    h = pop3_harness(tmp_path)
    h.read()
    assert h.reply("USER alice@example.test\r\n") == "+OK Send PASS"
    assert h.reply("PASS secret\r\n") == "+OK Logged in, 1 messages (18 octets)"
    assert h.session.state.name == "TRANSACTION"


def test_password_with_spaces(tmp_path):
    clock = Clock()
    h = pop3_harness(tmp_path, clock=clock,
                     authenticator=make_authenticator(clock, {ALICE: "correct horse battery"}))
    h.read()
    h.reply("USER alice@example.test\r\n")
    assert h.reply("PASS correct horse battery\r\n").startswith("+OK Logged in")


def test_pass_needs_user_first_and_user_needs_a_name(h):
    assert h.reply("PASS secret\r\n") == "-ERR Send USER first"
    assert h.reply("USER\r\n") == "-ERR Syntax error in arguments"
    assert h.reply("USER a b\r\n") == "-ERR Syntax error in arguments"


def test_wrong_password_and_unknown_user_look_the_same_after_a_delay(h):
    for user in (ALICE, "nobody@example.test"):
        h.reply(f"USER {user}\r\n")
        assert h.send("PASS wrong\r\n") == b""  # the growing delay runs first
        h.clock.advance(10)
        assert h.read() == b"-ERR [AUTH] Authentication failed\r\n"
    assert h.reply("PASS secret\r\n") == "-ERR Send USER first"  # USER must be repeated


def test_lockout_closes_the_connection(tmp_path):
    clock = Clock()
    h = pop3_harness(tmp_path, clock=clock, authenticator=make_authenticator(clock, USERS, max_failures=2))
    h.read()
    h.reply("USER alice@example.test\r\n")
    h.send("PASS wrong\r\n")
    clock.advance(10)
    assert h.read() == b"-ERR [AUTH] Authentication failed\r\n"
    h.reply("USER alice@example.test\r\n")
    h.send("PASS wrong\r\n")
    clock.advance(10)
    assert h.read() == b"-ERR [SYS/TEMP] Too many failed logins, try again later\r\n"
    assert h.transport.disconnecting
    h2 = pop3_harness(tmp_path, clock=clock, authenticator=h.session.authenticator)
    h2.read()
    h2.reply("USER alice@example.test\r\n")
    assert h2.reply("PASS secret\r\n") == "-ERR [SYS/TEMP] Too many failed logins, try again later"


def test_auth_plain_with_initial_response(h):
    assert h.reply(f"AUTH PLAIN {b64(chr(0) + ALICE + chr(0) + 'secret')}\r\n").startswith("+OK Logged in")


def test_auth_plain_with_continuation(h):
    assert h.send("AUTH PLAIN\r\n") == b"+ \r\n"
    assert h.reply(b64(f"{ALICE}\0{ALICE}\0secret") + "\r\n").startswith("+OK Logged in")


def test_auth_cancel_bad_base64_and_proxy(h):
    assert h.send("AUTH PLAIN\r\n") == b"+ \r\n"
    assert h.reply("*\r\n") == "-ERR Authentication cancelled"
    assert h.reply("AUTH PLAIN !!!\r\n") == "-ERR Invalid SASL response"
    assert h.reply("AUTH PLAIN =\r\n") == "-ERR Invalid SASL response"
    assert h.reply(f"AUTH PLAIN {b64('bob@example.test' + chr(0) + ALICE + chr(0) + 'secret')}\r\n") == (
        "-ERR [AUTH] Authentication failed")
    assert h.reply("AUTH CRAM-MD5\r\n") == "-ERR Unsupported authentication mechanism"
    assert h.lines("AUTH\r\n") == ["+OK Mechanisms follow", "PLAIN", "."]
    assert h.session.state.name == "AUTHORIZATION"


def test_auth_response_line_may_exceed_255_octets(h):
    clock_user = "x" * 300 + "@example.test"
    assert h.send("AUTH PLAIN\r\n") == b"+ \r\n"
    h.send(b64(f"\0{clock_user}\0pw") + "\r\n")
    h.clock.advance(10)
    assert h.read() == b"-ERR [AUTH] Authentication failed\r\n"


def test_apop_is_not_offered(h):
    assert h.reply("APOP alice@example.test c4c9334bac560ecc979e58001b3e22fb\r\n") == "-ERR APOP not supported"


def test_second_session_gets_in_use_until_the_first_ends(tmp_path):
    h1 = pop3_harness(tmp_path)
    h1.read()
    assert h1.login().startswith("+OK")
    h2 = pop3_harness(tmp_path, clock=h1.clock, authenticator=h1.session.authenticator,
                      maildrops=h1.maildrops)
    h2.read()
    assert h2.login() == "-ERR [IN-USE] Mailbox is in use by another POP3 session"
    assert h2.session.state.name == "AUTHORIZATION"
    assert h2.login("bob@example.test").startswith("+OK")  # another mailbox is free
    h1.transport.loseConnection()
    h1.protocol.connectionLost()
    h3 = pop3_harness(tmp_path, clock=h1.clock, authenticator=h1.session.authenticator,
                      maildrops=h1.maildrops)
    h3.read()
    assert h3.login().startswith("+OK")


def test_account_store_unavailable_is_sys_temp(tmp_path):
    from twisted.internet.defer import fail

    from mailstack.accounts.store import AccountError

    clock = Clock()
    auth = make_authenticator(clock, USERS)
    auth.checker.requestAvatarId = lambda creds: fail(AccountError("down"))
    h = pop3_harness(tmp_path, clock=clock, authenticator=auth)
    h.read()
    h.reply("USER alice@example.test\r\n")
    assert h.reply("PASS secret\r\n") == "-ERR [SYS/TEMP] Temporary authentication failure, try again later"


def test_unreadable_maildrop_is_sys_temp_and_releases_the_lock(tmp_path):
    (tmp_path / "example.test").mkdir()
    (tmp_path / "example.test" / "alice").write_text("not a directory")
    h = pop3_harness(tmp_path)
    h.read()
    assert h.login() == "-ERR [SYS/TEMP] Cannot open the maildrop, try again later"
    assert not h.maildrops.locks.held(ALICE)
