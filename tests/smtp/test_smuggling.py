"""SMTP smuggling and command injection: one DATA is one message, whatever the line ends."""

from __future__ import annotations

import pytest

from mailstack.testing import smtp_harness

SMUGGLED = b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: forged\r\n\r\nforged\r\n"


def start(h):
    h.read()
    h.replies("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r"])
def test_fake_terminators_never_end_data(fake_end):
    h = smtp_harness()
    start(h)
    out = h.replies(b"Subject: real\r\n\r\nreal" + fake_end + SMUGGLED + b".\r\n")
    assert len(out) == 1 and out[0].startswith("250 2.0.0 OK queued as"), out
    assert len(h.router.deliveries) == 1
    stored = h.router.deliveries[0][1]
    assert b"MAIL FROM:<admin@example.test>" in stored  # content, not a command
    # bare CR / LF were normalised: no later hop can find <LF>.<LF> in it
    assert stored.count(b"\n") == stored.count(b"\r\n") == stored.count(b"\r")


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n"])
def test_fake_terminators_split_across_packets(fake_end):
    h = smtp_harness()
    start(h)
    data = b"Subject: real\r\n\r\nreal" + fake_end + SMUGGLED + b".\r\n"
    for i in range(len(data)):
        h.protocol.dataReceived(data[i:i + 1])
    out = h.read().decode().split("\r\n")
    assert out[0].startswith("250 2.0.0 OK queued as") and out[1:] == [""]
    assert len(h.router.deliveries) == 1


def test_bare_lf_line_of_one_dot_is_stored_as_a_normal_line():
    h = smtp_harness()
    start(h)
    h.replies(b"a\n.\nb\r\n.\r\n")
    body = h.router.deliveries[0][1].split(b"\r\n", 3)[3]
    assert body == b"a\r\n.\r\nb\r\n"


def test_starttls_discards_pipelined_commands():
    h = smtp_harness()
    started = []
    h.transport.startTLS = started.append
    h.read()
    h.replies("EHLO c.example\r\n")
    out = h.replies(b"STARTTLS\r\nMAIL FROM:<evil@example.test>\r\nRCPT TO:<alice@example.test>\r\n")
    assert out == ["220 2.0.0 Ready to start TLS"]
    assert len(started) == 1
    # state was reset: the injected MAIL was never seen and EHLO is required again
    assert h.replies("MAIL FROM:<a@b.example>\r\n") == ["503 5.5.1 Send HELO/EHLO first"]
    assert h.session.tls is True
    out = h.replies("EHLO c.example\r\n")
    assert "250-STARTTLS" not in out


def test_starttls_twice_is_refused():
    h = smtp_harness(role="submissions", tls=True)
    h.read()
    h.replies("EHLO c.example\r\n")
    assert h.replies("STARTTLS\r\n") == ["503 5.5.1 TLS already active"]


def test_starttls_with_argument_is_501():
    h = smtp_harness()
    h.read()
    h.replies("EHLO c.example\r\n")
    assert h.replies("STARTTLS now\r\n") == ["501 5.5.4 Syntax error in parameters or arguments"]
