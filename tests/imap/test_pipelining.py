"""Pipelining at scale: IMAP on the shared connection skeleton answers every command, in order.

The case that used to wedge a session: hundreds of ``UID STORE`` or NOOP
commands in one write (a RecursionError, then silence until autologout).
"""

from __future__ import annotations

import re

from .harness import World


def _run_turns(world: World, turns: int = 1000) -> None:
    for _ in range(turns):
        world.clock.advance(0)


def _tagged(out: bytes) -> list[bytes]:
    return re.findall(rb"^(p\d+) OK", out, re.M)


def test_ten_thousand_pipelined_uid_stores_are_all_answered_in_order(world):
    c = world.connect().login()
    for i in range(5):
        world.deliver(b"Subject: %d\r\n\r\nbody\r\n" % i)
    c.ok("SELECT INBOX")
    out = c.send(b"".join(b"p%d UID STORE 1:5 +FLAGS (\\Seen)\r\n" % n for n in range(10_000)))
    _run_turns(world)
    out += c.read()
    assert _tagged(out) == [b"p%d" % n for n in range(10_000)]
    assert c.ok("FETCH 1:5 (FLAGS)") == [b"* %d FETCH (FLAGS (\\Seen \\Recent))" % n for n in range(1, 6)]


def test_ten_thousand_pipelined_noops_before_login(world):
    c = world.connect()
    out = c.send(b"".join(b"p%d NOOP\r\n" % n for n in range(10_000)))
    _run_turns(world)
    out += c.read()
    assert _tagged(out) == [b"p%d" % n for n in range(10_000)]
    assert not c.closed


def test_a_long_pipeline_yields_the_reactor_every_hundred_commands(world):
    c = world.connect()
    out = c.send(b"".join(b"p%d NOOP\r\n" % n for n in range(1000)))
    assert len(_tagged(out)) == 100  # the rest waits for the next reactor turn
    assert world.clock.getDelayedCalls()
    world.clock.advance(0)
    assert len(_tagged(c.read())) == 900


def test_pipelined_literals_and_commands_in_one_write(world):
    c = world.connect().login()
    message = b"Subject: lit\r\n\r\nbody\r\n"
    one = b"p%d APPEND INBOX {" + str(len(message)).encode() + b"+}\r\n" + message + b"\r\n"
    out = c.send(b"".join(one % n for n in range(300)) + b"z SELECT INBOX\r\n")
    _run_turns(world)
    out += c.read()
    assert _tagged(out) == [b"p%d" % n for n in range(300)]
    assert b"* 300 EXISTS" in out and b"z OK [READ-WRITE]" in out


def test_a_synchronizing_literal_is_invited_then_read_as_octets(world):
    c = world.connect()
    out = c.send(b"a LOGIN {18}\r\n")
    assert out == b"+ Ready for literal data\r\n"
    out = c.send(b"alice@example.test {6}\r\n")
    assert out == b"+ Ready for literal data\r\n"
    assert c.send(b"secret\r\n").startswith(b"a OK")


def test_literal_octets_split_across_writes(world):
    c = world.connect()
    data = b"a LOGIN {18+}\r\nalice@example.test {6+}\r\nsecret\r\n"
    out = b"".join(c.send(data[i:i + 1]) for i in range(len(data)))
    assert out.startswith(b"a OK")


def test_idle_done_in_the_same_write_as_later_commands(world):
    c = world.connect().login()
    c.ok("SELECT INBOX")
    out = c.send(b"i IDLE\r\nDONE\r\nn NOOP\r\n")
    assert out == b"+ idling\r\ni OK IDLE terminated\r\nn OK NOOP completed\r\n"


def test_a_commands_responses_leave_in_one_write(world):
    c = world.connect().login()
    for i in range(20):
        world.deliver(b"Subject: %d\r\n\r\nbody\r\n" % i)
    c.ok("SELECT INBOX")
    writes: list[bytes] = []
    original = c.transport.write
    c.transport.write = lambda data: (writes.append(data), original(data))  # type: ignore[method-assign]
    untagged = c.ok("FETCH 1:* (UID FLAGS)")
    assert len(untagged) == 20
    assert len(writes) == 1
