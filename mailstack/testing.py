"""Public fakes for tests: an in-memory account lookup, a recording router, a
recording delivery filter, and a helper that connects an ESMTP protocol to a
``StringTransport``.

Used by mailstack's own tests; also usable by anyone embedding mailstack's SMTP
machinery in a test suite.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailstack.accounts.store import User
from mailstack.auth import Authenticator
from mailstack.envelope import Envelope
from mailstack.inbound import InboundPolicy
from mailstack.interfaces import Filing, LocalCopy, SMTPPolicy
from mailstack.smtp.protocol import ESMTPProtocol, SMTPFactory
from mailstack.smtp.reply import SMTPReplyError
from mailstack.smtp.session import SessionConfig, SMTPSession
from mailstack.submission import SubmissionPolicy
from mailstack.throttle import AuthThrottle, ConnectionLimiter


class FakeAccounts:
    """An ``AccountLookup`` over dicts: users, aliases (``@domain`` for catch-all)."""

    def __init__(self, domains: Iterable[str] = ("example.test",), users: Iterable[str] = (),
                 aliases: dict[str, list[str]] | None = None) -> None:
        self.domains = set(domains)
        self.users = {u: User(u, "", 0) for u in users}
        self.aliases = dict(aliases or {})
        self.scripts: dict[str, str] = {}  # address -> active Sieve script
        self.named: dict[tuple[str, str], str] = {}  # (address, name) -> a script it may include
        self.global_scripts: dict[str, str] = {}  # name -> a global script

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self.domains

    def get_user(self, address: str) -> User | None:
        return self.users.get(address.lower())

    def resolve(self, address: str) -> tuple[str, ...]:
        address = address.lower()
        domain = address.rpartition("@")[2]
        if not self.is_local_domain(domain):
            return (address,)
        if address in self.aliases:
            return tuple(self.aliases[address])
        if address in self.users:
            return (address,)
        return tuple(self.aliases.get("@" + domain, ()))

    def active_script(self, address: str) -> str | None:
        return self.scripts.get(address.lower())

    def script(self, address: str, name: str) -> str | None:
        return self.named.get((address.lower(), name))

    def global_script(self, name: str) -> str | None:
        return self.global_scripts.get(name)

    def owns(self, user_address: str, sender_address: str) -> bool:
        sender = sender_address.lower()
        return sender == user_address.lower() or user_address.lower() in self.aliases.get(sender, ())


@dataclass
class RecordingRouter:
    """A ``MessageRouter`` that records what it was given.

    Set ``error`` to an ``SMTPReplyError`` to refuse; set ``hold`` to make
    ``deliver`` wait until ``release()`` is called.
    """

    relay: bool = True
    error: SMTPReplyError | None = None
    hold: bool = False
    deliveries: list[tuple[Envelope, bytes]] = field(default_factory=list)
    _waiting: list[Deferred[None]] = field(default_factory=list)

    def can_relay(self) -> bool:
        return self.relay

    async def deliver(self, envelope: Envelope, message: bytes) -> None:
        if self.hold:
            d: Deferred[None] = Deferred()
            self._waiting.append(d)
            await d
        if self.error is not None:
            raise self.error
        self.deliveries.append((envelope, message))

    def release(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)


@dataclass
class RecordingFilter:
    """A delivery ``Filter`` that files the listed mailboxes into fixed folders and records every copy.

    ``folders`` maps a mailbox to a folder name; any other mailbox goes to INBOX.
    """

    folders: dict[str, str] = field(default_factory=dict)
    seen: list[LocalCopy] = field(default_factory=list)

    async def file(self, copy: LocalCopy) -> Filing:
        self.seen.append(copy)
        return Filing.into(self.folders.get(copy.mailbox))


def make_authenticator(clock: Clock, users: dict[str, str] | None = None,
                       max_failures: int = 5, lockout: float = 900.0) -> Authenticator:
    checker = InMemoryUsernamePasswordDatabaseDontUse(**{})
    for name, password in (users or {}).items():
        checker.addUser(name.encode(), password.encode())
    return Authenticator(checker, AuthThrottle(clock, max_failures, lockout), clock)


@dataclass
class SMTPHarness:
    protocol: ESMTPProtocol
    transport: StringTransport
    factory: SMTPFactory
    router: RecordingRouter
    clock: Clock

    def send(self, data: bytes | str) -> bytes:
        """Feed bytes to the server; return (and clear) everything it wrote."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.protocol.dataReceived(data)
        return self.read()

    def read(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return bytes(out)

    def replies(self, data: bytes | str) -> list[str]:
        """Send and split the answer into reply lines (decoded, without CRLF)."""
        return [line for line in self.send(data).decode("utf-8").split("\r\n") if line]

    @property
    def session(self) -> SMTPSession:
        assert self.protocol.session is not None
        return self.protocol.session


def smtp_harness(
    role: str = "smtp",
    *,
    accounts: FakeAccounts | None = None,
    router: RecordingRouter | None = None,
    users: dict[str, str] | None = None,
    peer: str = "192.0.2.10",
    trusted: Iterable[Any] = (),
    tls: bool = False,
    allow_plaintext_auth: bool = False,
    max_message_size: int = 10_000,
    max_recipients: int = 5,
    max_received: int = 50,
    connections_per_ip: int = 20,
    clock: Clock | None = None,
    limiter: ConnectionLimiter | None = None,
    authenticator: Authenticator | None = None,
    policy: SMTPPolicy | None = None,
    tls_options: Any = None,
    connect: bool = True,
    reverse_lookup: Any = None,
    faults: Any = None,
    queue: Any = None,
) -> SMTPHarness:
    """An ESMTP server of one role on a StringTransport; nothing touches the network."""
    clock = clock or Clock()
    accounts = accounts or FakeAccounts(users=["alice@example.test", "bob@example.test"])
    router = router or RecordingRouter()
    if policy is None:
        policy = InboundPolicy(accounts) if role == "smtp" else SubmissionPolicy(accounts, "mail.example.test")
    authenticator = authenticator or make_authenticator(clock, users or {"alice@example.test": "secret"})
    limiter = limiter or ConnectionLimiter(connections_per_ip, trusted)
    config = SessionConfig(
        hostname="mail.example.test", max_message_size=max_message_size, max_recipients=max_recipients,
        max_received=max_received, allow_plaintext_auth=allow_plaintext_auth,
        starttls_available=not (role == "submissions"), postmaster_domain="example.test",
    )

    def make_session(ip: str, is_tls: bool, tls_info: Any, rdns: Any) -> SMTPSession:
        return SMTPSession(config, policy, router, authenticator, client_ip=ip,
                           trusted_network=limiter.is_exempt(ip), tls=is_tls, tls_info=tls_info, rdns=rdns,
                           faults=faults, role=role, queue=queue)

    factory = SMTPFactory(
        role=role, make_session=make_session, clock=clock, limiter=limiter, tls_options=tls_options,
        implicit_tls=tls, max_message_size=max_message_size, command_timeout=300, data_timeout=600,
        reverse_lookup=reverse_lookup,
    )
    protocol = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
    harness = SMTPHarness(protocol, transport, factory, router, clock)
    if connect:
        protocol.makeConnection(transport)
    return harness


class SyncThreadPool:
    """A thread pool stand-in that runs work at once, on the caller's thread."""

    def callInThreadWithCallback(self, on_result: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        from twisted.python.failure import Failure

        try:
            result = func(*args, **kwargs)
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)


class SyncReactor(Clock):
    """A Clock that also runs ``callFromThread`` at once: pairs with SyncThreadPool."""

    def callFromThread(self, func: Any, *args: Any, **kwargs: Any) -> None:
        func(*args, **kwargs)
