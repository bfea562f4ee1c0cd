"""Pipelining at scale (RFC 2449 §6.6): ten thousand commands in one write, all answered in order."""

from __future__ import annotations

from .harness import pop3_harness, put


def _run_turns(h, turns: int = 1000) -> None:
    for _ in range(turns):
        h.clock.advance(0)


def test_ten_thousand_pipelined_commands_are_all_answered_in_order(tmp_path):
    put(tmp_path, "alice@example.test", b"Subject: one\r\n\r\nbody\r\n")
    h = pop3_harness(tmp_path)
    h.read()
    assert h.login().startswith("+OK")
    out = h.send(b"NOOP\r\nSTAT\r\n" * 5_000)
    _run_turns(h)
    out += h.read()
    lines = [ln for ln in out.split(b"\r\n") if ln]
    assert len(lines) == 10_000
    assert lines[0::2] == [b"+OK"] * 5_000
    assert set(lines[1::2]) == {b"+OK 1 22"}
    assert not h.transport.disconnecting


def test_pipelined_retrieval_then_quit_in_one_write(tmp_path):
    for i in range(50):
        put(tmp_path, "alice@example.test", b"Subject: %d\r\n\r\nbody\r\n" % i)
    h = pop3_harness(tmp_path)
    h.read()
    commands = b"USER alice@example.test\r\nPASS secret\r\n"
    commands += b"".join(b"RETR %d\r\n" % n for n in range(1, 51)) * 20 + b"QUIT\r\n"
    out = h.send(commands)
    _run_turns(h)
    out += h.read()
    assert out.count(b"Subject: ") == 1000
    assert out.endswith(b"+OK Logging out, 50 messages left\r\n")
    assert h.transport.disconnecting
