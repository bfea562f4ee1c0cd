"""Framing on the connection skeleton: literals and their caps, bad input, pipelining, closing."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from mailstack.managesieve.protocol import DISCARD_LIMIT, MAX_LINE
from mailstack.managesieve.session import State
from mailstack.throttle import ConnectionLimiter

from .harness import ALICE, GOOD, harness, plain


@pytest.fixture
def h(tmp_path):
    h = harness(tmp_path)
    h.login()
    return h


def test_unknown_and_malformed_commands_get_no(h):
    assert h.reply("FROB\r\n") == 'NO "Unknown command"'
    assert h.reply('GETSCRIPT main\r\n') == 'NO "Syntax error: Strings must be quoted"'
    assert h.reply('GETSCRIPT "main\r\n') == 'NO "Syntax error: Unterminated quoted string"'
    assert h.reply("\r\n") == 'NO "Syntax error: Empty command"'
    assert h.reply(b'GETSCRIPT "\xff"\r\n') == 'NO "Syntax error: the script name is not UTF-8"'
    assert h.reply(b'NOOP "a\0b"\r\n') == 'NO "Syntax error: Invalid character in a quoted string"'
    assert h.reply("LISTSCRIPTS extra\r\n") == 'NO "Syntax error: Strings must be quoted"'
    assert h.reply('LISTSCRIPTS "extra"\r\n') == 'NO "Syntax error: wrong number of arguments"'
    assert h.reply("NOOP\r\n") == 'OK "NOOP completed"'


def test_a_synchronizing_literal_is_read_the_same_way(h):
    assert h.reply(b'PUTSCRIPT "s" {%d}\r\n' % len(GOOD) + GOOD + b"\r\n") == 'OK "Script stored"'


def test_a_literal_arriving_in_pieces_is_put_together(h):
    wire = b'PUTSCRIPT {4+}\r\nmain {%d+}\r\n' % len(GOOD) + GOOD + b"\r\n"
    out = b"".join(h.send(wire[i:i + 3]) for i in range(0, len(wire), 3))
    assert out == b'OK "Script stored"\r\n'
    assert h.store.get_script(ALICE, "main") == GOOD.decode()


def test_an_overlong_line_is_answered_and_the_session_goes_on(h):
    assert h.reply("NOOP " + "x" * MAX_LINE + "\r\n") == 'NO "Line too long"'
    assert h.reply("NOOP\r\n") == 'OK "NOOP completed"'


def test_a_script_over_the_size_limit_is_read_and_dropped_then_refused(tmp_path):
    h = harness(tmp_path, max_script_size=100)
    h.login()
    script = b"#" * 101
    assert h.send(b'PUTSCRIPT "big" {101+}\r\n' + script[:50]) == b""
    assert h.send(script[50:] + b"\r\nNOOP\r\n") == (
        b'NO (QUOTA/MAXSIZE) "Scripts may be at most 100 octets"\r\nOK "NOOP completed"\r\n')
    assert h.store.list_scripts(ALICE) == []
    assert h.reply(b"CHECKSCRIPT {101+}\r\n" + script + b"\r\n") == 'NO "Scripts may be at most 100 octets"'
    assert h.reply(b'PUTSCRIPT "small" {6+}\r\nkeep;\n\r\n') == 'OK "Script stored"'


def test_a_quoted_script_over_the_size_limit_is_refused(tmp_path):
    h = harness(tmp_path, max_script_size=10)
    h.login()
    assert h.reply('PUTSCRIPT "q" "keep; keep; keep;"\r\n') == (
        'NO (QUOTA/MAXSIZE) "Scripts may be at most 10 octets"')


def test_a_large_literal_where_no_script_belongs_is_refused(h):
    n = MAX_LINE + 1
    assert h.reply(b"GETSCRIPT {%d+}\r\n" % n + b"a" * n + b"\r\n") == 'NO "Literal too large"'
    assert h.reply("NOOP\r\n") == 'OK "NOOP completed"'


def test_a_huge_literal_ends_the_connection(h):
    assert h.send(b'PUTSCRIPT "x" {%d+}\r\n' % (DISCARD_LIMIT + 1)) == (
        b'BYE "Literal too large, closing the connection"\r\n')
    assert h.transport.disconnecting
    assert h.send(b"NOOP\r\n") == b""


def test_a_literal_count_beyond_32_bits_ends_the_connection_too(h):
    assert h.send(b'PUTSCRIPT "x" {99999999999999999999+}\r\n').startswith(b"BYE")


def test_an_overlong_sasl_response_ends_the_exchange(tmp_path):
    h = harness(tmp_path)
    h.send('AUTHENTICATE "PLAIN"\r\n')
    assert h.reply('"' + "A" * MAX_LINE + '"\r\n') == 'NO "Line too long"'
    assert h.reply("NOOP\r\n") == 'OK "NOOP completed"'
    assert h.send('AUTHENTICATE "PLAIN"\r\n') == b'""\r\n'
    assert h.reply(b"{%d+}\r\n" % (MAX_LINE + 1) + b"A" * (MAX_LINE + 1) + b"\r\n") == 'NO "Literal too large"'
    assert h.login() == 'OK "Logged in"'


def test_pipelined_commands_are_answered_in_order(h):
    h.put("a")
    out = h.send("NOOP\r\n" * 300 + 'GETSCRIPT "none"\r\nLISTSCRIPTS\r\n')
    for _ in range(3):  # at most 100 commands a reactor turn, then the others' turn
        h.clock.advance(0)
        out += h.read()
    assert out.count(b'OK "NOOP completed"\r\n') == 300
    assert out.endswith(b'NO (NONEXISTENT) "There is no script by that name"\r\n"a"\r\n'
                        b'OK "Listscripts completed"\r\n')


def test_a_bug_in_the_session_is_trylater_and_logged_never_a_traceback_to_the_client(h, monkeypatch, logged):
    monkeypatch.setitem(h.session._commands, "NOOP", (lambda args: 1 / 0, frozenset(State)))
    assert h.reply("NOOP\r\n") == 'NO (TRYLATER) "Internal error, try again later"'
    assert any(e.get("log_failure") is not None and e.get("session_id") == h.session.session_id for e in logged)
    assert h.reply("LISTSCRIPTS\r\n") == 'OK "Listscripts completed"'


def test_too_many_connections_from_one_address_get_bye(tmp_path):
    limiter = ConnectionLimiter(1)
    first = harness(tmp_path, limiter=limiter)
    second = harness(tmp_path, limiter=limiter, store=first.store, connect=False)
    second.protocol.makeConnection(second.transport)
    assert second.read() == b'BYE (TRYLATER) "Too many connections from your address"\r\n'


def test_shutdown_says_bye_after_the_answer_in_flight(tmp_path):
    from .harness import HeldRun

    run = HeldRun()
    h = harness(tmp_path, run=run, clock=Clock())
    h.login()
    h.send("LISTSCRIPTS\r\n")
    h.factory.shutdown()
    assert h.read() == b""
    run.release()
    assert h.read() == b'OK "Listscripts completed"\r\nBYE (TRYLATER) "Server shutting down"\r\n'


def test_the_skeleton_refuses_a_second_login_line_sent_with_the_first(tmp_path):
    h = harness(tmp_path)
    both = f'AUTHENTICATE "PLAIN" "{plain()}"\r\nAUTHENTICATE "PLAIN" "{plain()}"\r\n'
    assert h.send(both) == b'OK "Logged in"\r\nNO "Already authenticated"\r\n'
