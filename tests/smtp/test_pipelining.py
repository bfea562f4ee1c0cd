"""Pipelining at scale: any number of commands in one write is answered, in order (RFC 2920).

Dispatch in the connection skeleton is iterative, so commands whose work
finishes at once never nest calls; at most 100 are handled per reactor turn.
"""

from __future__ import annotations

from mailstack.testing import smtp_harness


def _run_turns(h, turns: int = 1000) -> None:
    """Let the reactor run the continuation of a long pipeline (100 commands per turn)."""
    for _ in range(turns):
        h.clock.advance(0)


def test_ten_thousand_pipelined_noops_are_all_answered_in_order():
    h = smtp_harness()
    h.read()
    out = h.send(b"EHLO c.example\r\n" + b"NOOP\r\n" * 10_000)
    _run_turns(h)
    out += h.read()
    lines = [ln for ln in out.split(b"\r\n") if ln]
    assert lines.count(b"250 2.0.0 OK") == 10_000
    assert not h.transport.disconnecting


def test_a_long_pipeline_yields_the_reactor_every_hundred_commands():
    h = smtp_harness()
    h.read()
    out = h.send(b"EHLO c.example\r\n" + b"NOOP\r\n" * 1000)
    assert out.count(b"250 2.0.0 OK") < 1000  # the rest waits for the next reactor turn
    assert h.clock.getDelayedCalls()
    _run_turns(h, 20)
    assert out.count(b"250 2.0.0 OK") + h.read().count(b"250 2.0.0 OK") == 1000


def test_a_thousand_whole_transactions_in_one_write_are_each_delivered():
    h = smtp_harness()
    h.read()
    one = (b"MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
           b"Subject: x\r\n\r\nbody\r\n.\r\n")
    out = h.send(b"EHLO c.example\r\n" + one * 1000 + b"QUIT\r\n")
    _run_turns(h)
    out += h.read()
    assert out.count(b"354 ") == 1000
    assert out.count(b"250 2.0.0 OK queued as") == 1000
    assert len(h.router.deliveries) == 1000
    assert out.endswith(b"221 2.0.0 mail.example.test closing connection\r\n")
