"""Greeting, CAPABILITY, STARTTLS, AUTHENTICATE PLAIN (inline and continued), throttling, UNAUTHENTICATE, LOGOUT."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from mailstack.managesieve.session import State
from mailstack.sieve import interpreter
from mailstack.testing import make_authenticator

from .harness import ALICE, USERS, harness, plain


def capabilities(lines: list[str]) -> dict[str, str | None]:
    """The capability lines before the final OK: name -> value (None when it has none)."""
    out: dict[str, str | None] = {}
    for line in lines[:-1]:
        name, _, value = line.partition(" ")
        out[name.strip('"')] = value.strip('"') if value else None
    return out


def test_the_greeting_is_the_capabilities_then_ok(tmp_path):
    h = harness(tmp_path, connect=False)
    h.protocol.makeConnection(h.transport)
    lines = h.read().decode().split("\r\n")[:-1]
    assert lines[-1] == 'OK "mail.example.test ManageSieve ready"'
    caps = capabilities(lines)
    assert caps == {"IMPLEMENTATION": "mailstack", "SASL": "", "SIEVE": " ".join(interpreter.EXTENSIONS),
                    "MAXREDIRECTS": str(interpreter.MAX_REDIRECTS), "VERSION": "1.0", "UNAUTHENTICATE": None,
                    "STARTTLS": None}


def test_the_sieve_capability_follows_the_interpreter_at_run_time(tmp_path, monkeypatch):
    h = harness(tmp_path)
    monkeypatch.setattr(interpreter, "EXTENSIONS", ("fileinto", "vacation"))
    assert capabilities(h.lines("CAPABILITY\r\n"))["SIEVE"] == "fileinto vacation"


def test_plaintext_login_is_refused_before_tls(tmp_path):
    h = harness(tmp_path, tls=False)
    assert h.login() == 'NO (ENCRYPT-NEEDED) "Plaintext authentication is not allowed without TLS, use STARTTLS"'
    assert h.reply('AUTHENTICATE "PLAIN"\r\n').startswith("NO (ENCRYPT-NEEDED)")
    assert h.session.state is State.NONAUTH


def test_plaintext_login_before_tls_when_the_config_allows_it(tmp_path):
    h = harness(tmp_path, tls=False, allow_plaintext_auth=True)
    assert capabilities(h.lines("CAPABILITY\r\n"))["SASL"] == "PLAIN"
    assert h.login() == 'OK "Logged in"'


def test_starttls_discards_pipelined_input_and_reissues_the_capabilities(tmp_path):
    h = harness(tmp_path, tls=False)
    out = h.send(f'STARTTLS\r\nAUTHENTICATE "PLAIN" "{plain()}"\r\n').decode().split("\r\n")[:-1]
    assert out[0] == 'OK "Begin TLS negotiation now"'
    assert h.transport.tls_started is h.factory.tls_options
    caps = capabilities(out[1:])
    assert out[-1] == 'OK "TLS is active"' and "STARTTLS" not in caps and caps["SASL"] == "PLAIN"
    assert h.session.state is State.NONAUTH  # the injected AUTHENTICATE was not a command
    assert h.reply("STARTTLS\r\n") == 'NO "TLS is already active"'
    assert h.login() == 'OK "Logged in"'


def test_authenticate_with_an_initial_response_as_a_quoted_string_or_a_literal(tmp_path):
    h = harness(tmp_path)
    assert h.login() == 'OK "Logged in"'
    assert h.session.user == ALICE
    assert capabilities(h.lines("CAPABILITY\r\n"))["OWNER"] == ALICE
    h2 = harness(tmp_path, store=h.store)
    data = plain()
    assert h2.reply(f'AUTHENTICATE "PLAIN" {{{len(data)}+}}\r\n{data}\r\n') == 'OK "Logged in"'


def test_authenticate_through_the_empty_challenge(tmp_path):
    h = harness(tmp_path)
    assert h.send('Authenticate "plain"\r\n') == b'""\r\n'
    data = plain()
    assert h.reply(f"{{{len(data)}+}}\r\n{data}\r\n") == 'OK "Logged in"'
    h2 = harness(tmp_path, store=h.store)
    assert h2.send('AUTHENTICATE "PLAIN"\r\n') == b'""\r\n'
    assert h2.reply(f'"{plain()}"\r\n') == 'OK "Logged in"'


def test_a_star_cancels_and_garbage_is_refused(tmp_path):
    h = harness(tmp_path)
    h.send('AUTHENTICATE "PLAIN"\r\n')
    assert h.reply('"*"\r\n') == 'NO "Authentication cancelled"'
    h.send('AUTHENTICATE "PLAIN"\r\n')
    assert h.reply('"not base64!"\r\n') == 'NO "Invalid SASL response"'
    assert h.reply('AUTHENTICATE "PLAIN" "AGFsaWNl"\r\n') == 'NO "Invalid SASL response"'
    assert h.reply('AUTHENTICATE "DIGEST-MD5"\r\n') == 'NO "Unsupported authentication mechanism"'
    assert h.reply(f'AUTHENTICATE "PLAIN" "{plain(authzid="bob@example.test")}"\r\n') == 'NO "Authentication failed"'
    assert h.session.state is State.NONAUTH and h.login() == 'OK "Logged in"'


def test_no_second_authenticate_and_no_starttls_once_logged_in(tmp_path):
    h = harness(tmp_path)
    h.login()
    assert h.login() == 'NO "Already authenticated"'
    assert h.reply("STARTTLS\r\n") == 'NO "Already authenticated"'


def test_a_wrong_password_is_answered_late_and_repeated_failures_lock_the_address_out(tmp_path):
    clock = Clock()
    h = harness(tmp_path, clock=clock, authenticator=make_authenticator(clock, USERS, max_failures=3))
    assert h.send(f'AUTHENTICATE "PLAIN" "{plain(password="wrong")}"\r\n') == b""  # the throttle's delay
    clock.advance(0.5)
    assert h.read() == b'NO "Authentication failed"\r\n'
    h.send(f'AUTHENTICATE "PLAIN" "{plain(password="wrong")}"\r\n')
    clock.advance(1)
    assert h.read() == b'NO "Authentication failed"\r\n'
    h.send(f'AUTHENTICATE "PLAIN" "{plain(password="wrong")}"\r\n')
    clock.advance(2)
    assert h.read() == b'BYE "Too many failed authentication attempts, try again later"\r\n'
    assert h.transport.disconnecting
    again = harness(tmp_path, clock=clock, authenticator=h.session.authenticator, store=h.store)
    assert again.login() == 'BYE "Too many failed authentication attempts, try again later"'


def test_commands_before_authentication_are_refused(tmp_path):
    h = harness(tmp_path)
    for command in ("LISTSCRIPTS", 'GETSCRIPT "a"', 'SETACTIVE ""', "UNAUTHENTICATE", 'HAVESPACE "a" 1'):
        assert h.reply(command + "\r\n") == 'NO "Authenticate first"'
    assert h.reply("NOOP\r\n") == 'OK "NOOP completed"'


def test_unauthenticate_returns_to_the_start_and_allows_a_new_login(tmp_path):
    h = harness(tmp_path)
    h.login()
    assert h.reply("UNAUTHENTICATE\r\n") == 'OK "Back in non-authenticated state"'
    assert h.session.state is State.NONAUTH and h.session.user is None
    assert h.reply("LISTSCRIPTS\r\n") == 'NO "Authenticate first"'
    assert h.login("bob@example.test") == 'OK "Logged in"'


@pytest.mark.parametrize("login", [False, True])
def test_logout_answers_ok_and_closes(tmp_path, login):
    h = harness(tmp_path)
    if login:
        h.login()
    assert h.send("LOGOUT\r\nNOOP\r\n") == b'OK "Logout completed"\r\n'
    assert h.transport.disconnecting


def test_noop_echoes_its_tag(tmp_path):
    h = harness(tmp_path)
    assert h.reply('NOOP "STARTTLS-RESYNC-CAPA"\r\n') == 'OK (TAG "STARTTLS-RESYNC-CAPA") "Done"'
    assert h.reply("NOOP {3+}\r\na\"b\r\n") == 'OK (TAG "a\\"b") "Done"'
    assert h.reply("NOOP 1 2\r\n") == 'NO "Syntax error: wrong number of arguments"'


def test_the_idle_timeout_is_five_minutes_before_login_and_31_after(tmp_path):
    clock = Clock()
    h = harness(tmp_path, clock=clock)
    clock.advance(299)
    assert h.read() == b""
    h.login()
    clock.advance(30 * 60)
    assert not h.transport.disconnecting
    clock.advance(61)
    assert h.read() == b'BYE "Disconnected for inactivity"\r\n' and h.transport.disconnecting


def test_a_login_is_logged_with_the_session_id_and_never_the_password(tmp_path, logged):
    h = harness(tmp_path)
    h.login()
    logins = [e for e in logged if e.get("protocol") == "managesieve"]
    assert logins and all(e["session_id"] == h.session.session_id for e in logins)
    assert not any(USERS[ALICE] in repr(e) for e in logged)
