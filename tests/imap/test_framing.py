"""Framing edge cases on the connection skeleton: overlong lines inside IDLE and SASL exchanges,
literal caps for APPEND, and a failing SASL exchange still answered with its tag."""

from __future__ import annotations

import base64

from .harness import PASSWORD, USER, World


def test_overlong_line_during_idle_ends_idle_with_bad(world):
    c = world.connect().login()
    c.ok("SELECT INBOX")
    assert c.send(b"t9 IDLE\r\n") == b"+ idling\r\n"
    out = c.send(b"x" * 70_000 + b"\r\n")
    assert out == b"* BAD Line too long\r\nt9 BAD Expected DONE\r\n"
    assert not c.protocol.session.idling
    assert c.send(b"n NOOP\r\n") == b"n OK NOOP completed\r\n"


def test_no_unsolicited_expunge_after_an_idle_ended_by_an_overlong_line(world):
    world.deliver(b"Subject: a\r\n\r\nx\r\n")
    world.deliver(b"Subject: b\r\n\r\ny\r\n")
    c = world.connect().login()
    c.ok("SELECT INBOX")
    c.send(b"t9 IDLE\r\n")
    c.send(b"x" * 70_000 + b"\r\n")
    d = world.connect().login()
    d.ok("SELECT INBOX")
    d.ok("STORE 1 +FLAGS (\\Deleted)")
    d.ok("EXPUNGE")
    assert b"EXPUNGE" not in c.read()  # only while a command runs (RFC 3501 §7.4.1)


def test_overlong_sasl_response_cancels_authenticate(world):
    c = world.connect()
    assert c.send(b"a1 AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    out = c.send(b"A" * 70_000 + b"\r\n")
    assert out == b"* BAD Line too long\r\na1 BAD Authentication cancelled\r\n"
    assert c.send(b"a2 NOOP\r\n") == b"a2 OK NOOP completed\r\n"


def test_append_takes_one_message_literal_not_many(tmp_path):
    w = World.create(tmp_path, max_message_size=100_000)
    c = w.connect().login()
    c.send(b"a1 APPEND INBOX {90000+}\r\n" + b"x" * 90_000)
    refused = b""
    for _ in range(30):
        refused += c.send(b" {90000+}\r\n" + b"x" * 90_000)
        if c.closed:
            break
    assert b"a1 NO [TOOBIG] Message too large\r\n* BYE Literal too large\r\n" in refused
    assert sum(len(p) for p in c.protocol.parts) < 2 * (1 << 20)


def test_a_failing_sasl_exchange_is_answered_with_its_tag(world):
    def broken(user: str) -> None:
        raise OSError("disk gone")

    world.store.setup_user = broken  # type: ignore[method-assign]
    c = world.connect()
    assert c.send(b"a1 AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    out = c.send(base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()) + b"\r\n")
    assert out == b"a1 NO [SERVERBUG] Internal error, try again later\r\n"
