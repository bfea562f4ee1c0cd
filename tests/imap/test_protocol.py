"""Framing and connection handling: line caps, pipelining, autologout, shutdown, STARTTLS
buffer discard, connection limit (RFC 3501 §5.4, §6.2.1, RFC 7888)."""

from __future__ import annotations

from .harness import World


def test_pipelined_commands_answer_in_order(client):
    out = client.send(b"a NOOP\r\nb CAPABILITY\r\nc NOOP\r\n")
    lines = [ln for ln in out.split(b"\r\n") if ln and not ln.startswith(b"*")]
    assert [ln.split()[0] for ln in lines] == [b"a", b"b", b"c"]


def test_overlong_line_is_refused_session_kept(client):
    out = client.send(b"a NOOP " + b"x" * 70000 + b"\r\n")
    assert out == b"* BAD Line too long\r\n"
    assert client.cmd("NOOP")[1].startswith(b"OK")


def test_nul_and_8bit_garbage_get_bad(client):
    assert client.send(b"a NO\x00OP\r\n").startswith(b"a BAD")
    assert client.send(b"\xff\xfe\r\n").startswith(b"* BAD")
    assert client.cmd("NOOP")[1].startswith(b"OK")


def test_autologout_after_31_minutes(world):
    c = world.connect()
    world.clock.advance(29 * 60)
    c.cmd("NOOP")
    world.clock.advance(30 * 60)
    assert not c.closed
    world.clock.advance(2 * 60)
    assert b"* BYE Autologout" in c.read() and c.closed


def test_shutdown_says_bye(world, client):
    d = world.factory.shutdown()
    assert client.read() == b"* BYE Server shutting down\r\n" and client.closed
    client.protocol.connectionLost()
    assert d.called


def test_new_connections_during_shutdown_are_refused(world):
    world.factory.shutdown()
    c = world.connect()
    assert c.greeting == b"* BYE Server shutting down\r\n"


def test_connection_limit(tmp_path):
    w = World.create(tmp_path)
    w.factory.limiter.max_per_ip = 1
    w.connect()
    c = w.connect()
    assert c.greeting.startswith(b"* BYE Too many connections")


def test_starttls_discards_pipelined_plaintext(tmp_path):
    w = World.create(tmp_path, allow_plaintext_auth=False)
    c = w.connect()
    started = []
    c.transport.startTLS = lambda options: started.append(options)  # type: ignore[attr-defined]
    out = c.send(b"a STARTTLS\r\nb LOGIN alice@example.test secret\r\n")
    assert out == b"a OK Begin TLS negotiation now\r\n" and started
    assert c.cmd("CAPABILITY")[0][0].count(b"STARTTLS") == 0
    assert c.cmd("STARTTLS")[1].startswith(b"BAD")
    assert c.cmd("LOGIN alice@example.test secret")[1].startswith(b"OK")


def test_logout_in_any_state(world):
    c = world.connect()
    untagged, tagged = c.cmd("LOGOUT")
    assert untagged == [b"* BYE Logging out"] and c.closed


def test_disconnect_during_a_command_is_quiet(world):
    from twisted.internet.defer import Deferred

    c = world.connect().login()
    world.deliver(b"Subject: x\r\n\r\nx\r\n")
    c.ok("SELECT INBOX")
    pending: list[Deferred] = []

    async def slow_io(fn, *args):
        d: Deferred = Deferred()
        pending.append(d)
        await d
        return fn(*args)

    from twisted.logger import globalLogPublisher

    failures: list[dict] = []

    def observer(event: dict) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        c.protocol.session.io = slow_io
        c.send(b"a FETCH 1 BODY[]\r\n")
        c.protocol.connectionLost()
        pending[0].callback(None)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert c.read() == b"" and failures == []


def test_a_client_that_does_not_read_gets_no_more_responses_until_it_does(client):
    proto = client.protocol
    assert client.transport.producer is proto
    proto.pauseProducing()  # what the transport does when its send buffer is full
    assert client.send(b"a NOOP\r\nb NOOP\r\n") == b""
    proto.resumeProducing()
    out = client.read()
    assert b"a OK" in out and b"b OK" in out
