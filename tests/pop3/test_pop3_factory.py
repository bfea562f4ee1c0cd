"""build_factory: the pop3 and pop3s listeners given one Maildrops share its maildrop locks."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailstack.notify import MailboxEvents
from mailstack.pop3 import Maildrops, SessionConfig, build_factory
from mailstack.service import listener_builders
from mailstack.testing import make_authenticator
from mailstack.throttle import ConnectionLimiter

from .harness import USERS, mail_store, put


def factories(root, maildrops=None):
    """``pop3`` and ``pop3s`` factories over one Maildrops, as service.py builds them."""
    clock = Clock()
    maildrops = maildrops or Maildrops(mail_store(root), events=MailboxEvents())
    authenticator = make_authenticator(clock, USERS)
    limiter = ConnectionLimiter(20)
    return [build_factory(SessionConfig("mail.example.test", allow_plaintext_auth=False, stls_available=stls),
                          maildrops, authenticator=authenticator, limiter=limiter, tls_options=object(),
                          clock=clock, pool=None)
            for stls in (True, False)]


def connect(factory):
    p = factory.buildProtocol(None)
    t = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 1234))
    p.makeConnection(t)
    return p, t


def send(p, t, line: str) -> bytes:
    t.clear()
    p.dataReceived(line.encode() + b"\r\n")
    return bytes(t.value())


def test_listeners_are_registered():
    builders = listener_builders()
    assert "pop3" in builders and "pop3s" in builders


def test_pop3_and_pop3s_share_locks(tmp_path):
    put(tmp_path, "alice@example.test", b"Subject: x\r\n\r\n")
    plain, implicit = factories(tmp_path)
    assert (plain.role, plain.implicit_tls, implicit.role, implicit.implicit_tls) == ("pop3", False, "pop3s", True)
    p1, t1 = connect(implicit)
    assert send(p1, t1, "USER alice@example.test") == b"+OK Send PASS\r\n"
    assert send(p1, t1, "PASS secret").startswith(b"+OK Logged in, 1 messages")
    p2, t2 = connect(plain)
    assert send(p2, t2, "USER alice@example.test").startswith(b"-ERR [AUTH] Plaintext")  # 110 needs STLS
    p2.transport.startTLS = lambda options: None
    assert send(p2, t2, "STLS") == b"+OK Begin TLS negotiation\r\n"
    send(p2, t2, "USER alice@example.test")
    assert send(p2, t2, "PASS secret") == b"-ERR [IN-USE] Mailbox is in use by another POP3 session\r\n"
    other = factories(tmp_path)[1]  # another service tree, another Maildrops
    p3, t3 = connect(other)
    send(p3, t3, "USER alice@example.test")
    assert send(p3, t3, "PASS secret").startswith(b"+OK")
