"""build_factory: the pop3 and pop3s listeners share one set of maildrop locks per service tree."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailstack.notify import MailboxEvents
from mailstack.pop3 import build_factory
from mailstack.service import listener_builders
from mailstack.testing import make_authenticator
from mailstack.throttle import ConnectionLimiter

from .harness import USERS, maildir_of, put


class FakeShared:
    def __init__(self, root: Path, *, allow_plaintext_auth: bool = False) -> None:
        clock = Clock()
        self.settings = SimpleNamespace(hostname="mail.example.test",
                                        tls=SimpleNamespace(allow_plaintext_auth=allow_plaintext_auth))
        self.reactor = clock
        self.io_pool = None
        self.events = MailboxEvents()
        self.authenticator = make_authenticator(clock, USERS)
        self.limiter = ConnectionLimiter(20)
        self.tls = object()
        self.delivery = SimpleNamespace(maildir_path=lambda address, folder=None: maildir_of(root, address))


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
    shared = FakeShared(tmp_path)
    plain, implicit = build_factory(shared, implicit_tls=False), build_factory(shared, implicit_tls=True)
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
    other = build_factory(FakeShared(tmp_path), implicit_tls=True)  # another service tree
    p3, t3 = connect(other)
    send(p3, t3, "USER alice@example.test")
    assert send(p3, t3, "PASS secret").startswith(b"+OK")
