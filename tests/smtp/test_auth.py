"""SMTP AUTH (RFC 4954): PLAIN and LOGIN, TLS requirement, failures, throttling."""

from __future__ import annotations

import base64

from mailstack.testing import smtp_harness


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


PLAIN_OK = b64("\0alice@example.test\0secret")
PLAIN_BAD = b64("\0alice@example.test\0wrong")


def tls_session(role="submission", **kw):
    h = smtp_harness(role=role, tls=True, **kw)
    h.read()
    h.replies("EHLO c.example\r\n")
    return h


def test_auth_before_tls_is_refused_530():
    h = smtp_harness(role="submission")
    h.read()
    h.replies("EHLO c.example\r\n")
    assert h.replies(f"AUTH PLAIN {PLAIN_OK}\r\n") == ["530 5.7.0 Must issue a STARTTLS command first"]


def test_auth_plain_with_initial_response():
    h = tls_session()
    assert h.replies(f"AUTH PLAIN {PLAIN_OK}\r\n") == ["235 2.7.0 Authentication successful"]
    assert h.session.auth_user == "alice@example.test"
    assert h.replies(f"AUTH PLAIN {PLAIN_OK}\r\n") == ["503 5.5.1 Already authenticated"]


def test_auth_plain_with_empty_challenge():
    h = tls_session()
    assert h.replies("AUTH PLAIN\r\n") == ["334 "]
    assert h.replies(PLAIN_OK + "\r\n") == ["235 2.7.0 Authentication successful"]


def test_auth_login_two_steps():
    h = tls_session()
    assert h.replies("AUTH LOGIN\r\n") == ["334 VXNlcm5hbWU6"]
    assert h.replies(b64("alice@example.test") + "\r\n") == ["334 UGFzc3dvcmQ6"]
    assert h.replies(b64("secret") + "\r\n") == ["235 2.7.0 Authentication successful"]


def test_wrong_password_is_535_after_a_delay_and_no_hint():
    h = tls_session()
    assert h.replies(f"AUTH PLAIN {PLAIN_BAD}\r\n") == []  # delayed
    h.clock.advance(0.5)
    assert h.read() == b"535 5.7.8 Authentication credentials invalid\r\n"
    unknown = b64("\0nobody@example.test\0secret")
    h.replies(f"AUTH PLAIN {unknown}\r\n")
    h.clock.advance(1.0)
    assert h.read() == b"535 5.7.8 Authentication credentials invalid\r\n"


def test_delay_grows_and_lockout_closes_with_421():
    h = tls_session()
    delays = []
    for _ in range(4):
        h.send(f"AUTH PLAIN {PLAIN_BAD}\r\n")
        waited = 0.0
        while not h.transport.value():
            h.clock.advance(0.25)
            waited += 0.25
        delays.append(waited)
        assert h.read() == b"535 5.7.8 Authentication credentials invalid\r\n"
    assert delays == sorted(delays) and delays[-1] > delays[0]
    h.send(f"AUTH PLAIN {PLAIN_BAD}\r\n")
    h.clock.advance(10)
    assert h.read() == b"421 4.7.0 Too many failed authentications, try again later\r\n"
    assert h.transport.disconnecting
    # a new connection from the same address is refused even with the right password
    h2 = smtp_harness(role="submission", tls=True, authenticator=h.session.authenticator, clock=h.clock)
    h2.read()
    h2.replies("EHLO c.example\r\n")
    assert h2.replies(f"AUTH PLAIN {PLAIN_OK}\r\n") == [
        "421 4.7.0 Too many failed authentications, try again later"]


def test_cancel_and_bad_base64():
    h = tls_session()
    h.replies("AUTH LOGIN\r\n")
    assert h.replies("*\r\n") == ["501 5.0.0 Authentication cancelled"]
    assert h.replies("AUTH PLAIN !!!\r\n") == ["501 5.5.2 Cannot decode response"]
    assert h.replies("AUTH CRAM-MD5\r\n") == ["504 5.5.4 Unrecognized authentication mechanism"]


def test_authzid_other_than_user_is_refused():
    h = tls_session()
    assert h.replies(f"AUTH PLAIN {b64('bob@example.test' + chr(0) + 'alice@example.test' + chr(0) + 'secret')}\r\n") == [
        "535 5.7.8 Authentication credentials invalid"]


def test_auth_plaintext_allowed_by_config():
    h = smtp_harness(role="submission", allow_plaintext_auth=True)
    h.read()
    h.replies("EHLO c.example\r\n")
    assert h.replies(f"AUTH PLAIN {PLAIN_OK}\r\n") == ["235 2.7.0 Authentication successful"]


def test_store_failure_during_login_is_temporary_454():
    from twisted.internet.defer import fail

    from mailstack.accounts.store import AccountError

    h = tls_session()

    class Broken:
        def requestAvatarId(self, creds):
            return fail(AccountError("database is locked"))

    h.session.authenticator.checker = Broken()
    assert h.replies(f"AUTH PLAIN {PLAIN_OK}\r\n") == ["454 4.7.0 Temporary authentication failure"]


def test_auth_initial_response_longer_than_512_octets_is_accepted():
    h = tls_session()
    long_token = b64("\0alice@example.test\0" + "x" * 600)
    assert len(long_token) > 512
    h.replies(f"AUTH PLAIN {long_token}\r\n")
    h.clock.advance(1)
    assert h.read() == b"535 5.7.8 Authentication credentials invalid\r\n"
