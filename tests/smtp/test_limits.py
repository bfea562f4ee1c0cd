"""Timeouts (RFC 5321 §4.5.3.2), connection limits and shutdown, with task.Clock."""

from __future__ import annotations

import ipaddress

from mailstack.testing import smtp_harness
from mailstack.throttle import ConnectionLimiter


def test_idle_command_timeout_gives_421_4_4_2():
    h = smtp_harness()
    h.read()
    h.clock.advance(299)
    assert h.read() == b""
    h.clock.advance(2)
    assert h.read() == b"421 4.4.2 Timeout exceeded, closing connection\r\n"
    assert h.transport.disconnecting


def test_activity_resets_the_timer():
    h = smtp_harness()
    h.read()
    for _ in range(5):
        h.clock.advance(200)
        h.replies("NOOP\r\n")
    assert not h.transport.disconnecting


def test_data_phase_uses_the_longer_timeout():
    h = smtp_harness()
    h.read()
    h.replies("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    h.send(b"Subject: slow\r\n")
    h.clock.advance(500)
    assert not h.transport.disconnecting
    h.clock.advance(101)
    assert h.read().startswith(b"421 4.4.2")


def test_connections_per_ip_limit_421_4_7_0():
    limiter = ConnectionLimiter(2)
    first = [smtp_harness(limiter=limiter) for _ in range(2)]
    third = smtp_harness(limiter=limiter)
    assert third.read() == b"421 4.7.0 Too many connections from your address, try again later\r\n"
    assert third.transport.disconnecting
    first[0].protocol.connectionLost()
    fourth = smtp_harness(limiter=limiter)
    assert fourth.read() == b"220 mail.example.test ESMTP\r\n"


def test_trusted_networks_are_exempt_from_the_connection_limit():
    limiter = ConnectionLimiter(1, [ipaddress.ip_network("192.0.2.0/24")])
    hs = [smtp_harness(limiter=limiter) for _ in range(3)]
    assert all(h.read().startswith(b"220 ") for h in hs)


def test_shutdown_closes_idle_sessions_with_421_4_3_2():
    h = smtp_harness()
    h.read()
    h.factory.connections.add(h.protocol)
    d = h.factory.shutdown()
    assert h.read() == b"421 4.3.2 Service shutting down, try again later\r\n"
    h.protocol.connectionLost()
    assert d.called


def test_shutdown_lets_an_inflight_delivery_answer_first():
    h = smtp_harness()
    h.router.hold = True
    h.read()
    h.replies("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    h.send(b"x\r\n.\r\n")
    d = h.factory.shutdown()
    assert h.read() == b""
    h.router.release()
    out = h.read().split(b"\r\n")
    assert out[0].startswith(b"250 2.0.0 OK queued as")
    assert out[1] == b"421 4.3.2 Service shutting down, try again later"
    assert len(h.router.deliveries) == 1
    h.protocol.connectionLost()
    assert d.called


def test_a_peer_that_does_not_let_go_is_aborted_after_a_grace_period():
    h = smtp_harness()
    h.read()
    aborted = []
    h.transport.abortConnection = lambda: aborted.append(True)
    h.replies("QUIT\r\n")
    assert h.transport.disconnecting and not aborted
    h.clock.advance(3)
    assert aborted == [True]


def test_a_closed_connection_is_not_aborted():
    h = smtp_harness()
    h.read()
    aborted = []
    h.transport.abortConnection = lambda: aborted.append(True)
    h.replies("QUIT\r\n")
    h.protocol.connectionLost()
    h.clock.advance(3)
    assert aborted == []


def test_a_client_that_does_not_read_gets_no_more_replies_until_it_does():
    h = smtp_harness()
    h.read()
    assert h.transport.producer is h.protocol  # the transport tells the session when its buffer is full
    h.protocol.pauseProducing()  # what the transport does when the client stops reading
    assert h.send(b"NOOP\r\n" * 50) == b""
    assert h.transport.producerState == "producing"  # still reading (a TLS handshake may need it)
    h.send(b"NOOP\r\n" * 200_000)  # 1.2 MB of unanswered commands
    assert h.transport.producerState == "paused"  # now reading from the socket stopped too
    h.protocol.resumeProducing()
    h.clock.advance(0)
    assert h.read().count(b"250 2.0.0 OK\r\n") == 200_050
    assert h.transport.producerState == "producing"


def test_pipelined_commands_are_handled_in_bounded_turns():
    h = smtp_harness()
    h.read()
    first = h.send(b"NOOP\r\n" * 250)
    assert first.count(b"250 2.0.0 OK\r\n") == 100  # one turn, then the reactor serves others
    h.clock.advance(0)
    assert h.read().count(b"250 2.0.0 OK\r\n") == 150


def test_idle_timer_does_not_run_while_the_server_is_busy():
    h = smtp_harness()
    h.router.hold = True
    h.read()
    h.replies("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    h.send(b"x\r\n.\r\n")
    h.clock.advance(3600)  # a very slow disk: still not the client's fault
    assert not h.transport.disconnecting
    h.router.release()
    assert h.read().startswith(b"250 2.0.0 OK queued as")
    h.clock.advance(301)
    assert h.read().startswith(b"421 4.4.2")
