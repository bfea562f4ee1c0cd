"""Port-25 relay rules and submission rules (RFC 6409), through the real session."""

from __future__ import annotations

import base64
import ipaddress

import pytest

from mailstack.testing import smtp_harness

PLAIN_OK = base64.b64encode(b"\0alice@example.test\0secret").decode()


def inbound(**kw):
    h = smtp_harness(**kw)
    h.read()
    h.replies("EHLO c.example\r\nMAIL FROM:<x@remote.example>\r\n")
    return h


def test_local_user_accepted_unknown_550():
    h = inbound()
    assert h.replies("RCPT TO:<Alice@EXAMPLE.test>\r\n") == ["250 2.1.5 Recipient OK"]
    assert h.replies("RCPT TO:<carol@example.test>\r\n") == ["550 5.1.1 No such user here"]


def test_remote_recipient_from_untrusted_client_is_relay_denied():
    h = inbound()
    assert h.replies("RCPT TO:<victim@remote.example>\r\n") == ["554 5.7.1 Relay access denied"]


@pytest.mark.parametrize("rcpt, expected", [
    ("<victim%remote.example@example.test>", "550 5.1.1 No such user here"),
    ("<@example.test:victim@remote.example>", "554 5.7.1 Relay access denied"),
    ("<@example.test,@x.example:victim@remote.example>", "554 5.7.1 Relay access denied"),
    ("<remote.example!victim@example.test>", "550 5.1.1 No such user here"),
    ('<"victim@remote.example"@example.test>', "550 5.1.1 No such user here"),
    ("<victim@remote.example.>", "501 5.1.3 Bad recipient address syntax"),
    ("<alice@example.test.>", "501 5.1.3 Bad recipient address syntax"),
    ("<victim@[192.0.2.99]>", "554 5.7.1 Relay access denied"),
])
def test_classic_relay_tricks_are_refused(rcpt, expected):
    h = inbound()
    assert h.replies(f"RCPT TO:{rcpt}\r\n") == [expected]
    assert h.router.deliveries == []


def test_trusted_network_may_relay():
    h = inbound(trusted=[ipaddress.ip_network("192.0.2.0/24")])
    assert h.replies("RCPT TO:<friend@remote.example>\r\n") == ["250 2.1.5 Recipient OK"]


def test_relay_without_queue_is_temporary_451():
    from mailstack.testing import RecordingRouter

    h = inbound(trusted=[ipaddress.ip_network("192.0.2.0/24")], router=RecordingRouter(relay=False))
    assert h.replies("RCPT TO:<friend@remote.example>\r\n") == [
        "451 4.3.0 Cannot relay to this domain right now, try again later"]


def test_authenticated_client_on_port_25_may_relay():
    h = smtp_harness(tls=True)
    h.read()
    h.replies("EHLO c.example\r\n")
    assert h.replies(f"AUTH PLAIN {PLAIN_OK}\r\n") == ["235 2.7.0 Authentication successful"]
    h.replies("MAIL FROM:<alice@example.test>\r\n")
    assert h.replies("RCPT TO:<friend@remote.example>\r\n") == ["250 2.1.5 Recipient OK"]


def submission(auth=True):
    h = smtp_harness(role="submission", tls=True)
    h.read()
    h.replies("EHLO c.example\r\n")
    if auth:
        assert h.replies(f"AUTH PLAIN {PLAIN_OK}\r\n") == ["235 2.7.0 Authentication successful"]
    return h


def test_submission_mail_before_auth_is_530():
    h = submission(auth=False)
    assert h.replies("MAIL FROM:<alice@example.test>\r\n") == ["530 5.7.0 Authentication required"]


def test_submission_sender_must_be_owned():
    h = submission()
    assert h.replies("MAIL FROM:<bob@example.test>\r\n") == [
        "553 5.7.1 Sender address not owned by authenticated user"]
    assert h.replies("MAIL FROM:<>\r\n") == ["553 5.7.1 Sender address not owned by authenticated user"]
    assert h.replies("MAIL FROM:<ALICE@example.test>\r\n") == ["250 2.1.0 Sender OK"]


def test_submission_relays_anywhere_and_adds_message_id_and_date():
    h = submission()
    h.replies("MAIL FROM:<alice@example.test>\r\n")
    assert h.replies("RCPT TO:<friend@remote.example>\r\n") == ["250 2.1.5 Recipient OK"]
    h.replies("DATA\r\n")
    assert h.replies(b"Subject: hi\r\n\r\nbody\r\n.\r\n")[0].startswith("250 2.0.0 OK")
    envelope, message = h.router.deliveries[0]
    assert envelope.remote_recipients() == ["friend@remote.example"]
    headers = message.split(b"\r\n\r\n")[0]
    assert b"\r\nMessage-ID: <" in headers and b"\r\nDate: " in headers
    assert b" with ESMTPSA id " in headers


def test_submission_keeps_existing_message_id_and_date():
    h = submission()
    h.replies("MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    h.replies(b"Message-ID: <x@y>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody\r\n.\r\n")
    headers = h.router.deliveries[0][1].split(b"\r\n\r\n")[0]
    assert headers.count(b"Message-ID:") == 1 and headers.count(b"Date:") == 1


def test_authenticated_client_on_port_25_sends_only_as_itself():
    h = smtp_harness(tls=True)
    h.read()
    h.replies("EHLO c.example\r\n")
    assert h.replies(f"AUTH PLAIN {PLAIN_OK}\r\n") == ["235 2.7.0 Authentication successful"]
    assert h.replies("MAIL FROM:<bob@example.test>\r\n") == [
        "553 5.7.1 Sender address not owned by authenticated user"]
    assert h.replies("MAIL FROM:<>\r\n") == ["553 5.7.1 Sender address not owned by authenticated user"]
