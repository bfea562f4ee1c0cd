"""A ManageSieve server on a StringTransport over a real account store in a temporary directory.

The store's blocking calls go through ``run``: by default at once (``maybeDeferred``),
or held until the test releases them (:class:`HeldRun`), which shows they never run
on the reactor's own turn. No sockets, no reactor.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from mailstack.accounts import SQLiteAccountStore
from mailstack.auth import Authenticator
from mailstack.managesieve import ManageSieveFactory, ManageSieveProtocol, ManageSieveSession, build_factory
from mailstack.managesieve.reply import string
from mailstack.managesieve.session import SessionConfig
from mailstack.testing import make_authenticator
from mailstack.throttle import ConnectionLimiter
from tests.pop3.harness import TLSStringTransport

ALICE = "alice@example.test"
BOB = "bob@example.test"
USERS = {ALICE: "secret", BOB: "hunter2"}
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
GOOD = b'require "fileinto";\r\nif header :contains "subject" "x" { fileinto "X"; }\r\n'


def plain(user: str = ALICE, password: str | None = None, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password or USERS[user]}".encode()).decode()


@dataclass
class HeldRun:
    """A ``run`` that keeps each call until ``release()``: what the io pool does, one call at a time."""

    calls: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = field(default_factory=list)

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((fn, args, d))
        return d

    def release(self) -> None:
        """Run the calls made so far (not those they lead to)."""
        pending, self.calls = self.calls, []
        for fn, args, d in pending:
            maybeDeferred(fn, *args).chainDeferred(d)


@dataclass
class Harness:
    protocol: ManageSieveProtocol
    transport: TLSStringTransport
    factory: ManageSieveFactory
    clock: Clock
    store: SQLiteAccountStore

    def send(self, data: bytes | str) -> bytes:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.protocol.dataReceived(data)
        return self.read()

    def read(self) -> bytes:
        out = bytes(self.transport.value())
        self.transport.clear()
        return out

    def lines(self, data: bytes | str) -> list[str]:
        return self.send(data).decode("utf-8").split("\r\n")[:-1]

    def reply(self, data: bytes | str) -> str:
        """The one status line a command gets (no response lines before it)."""
        [line] = self.lines(data)
        return line

    def login(self, user: str = ALICE, password: str | None = None) -> str:
        return self.reply(f'AUTHENTICATE "PLAIN" "{plain(user, password)}"\r\n')

    def put(self, name: str, script: bytes = GOOD) -> str:
        return self.reply(b"PUTSCRIPT " + string(name) + b" {%d+}\r\n" % len(script) + script + b"\r\n")

    @property
    def session(self) -> ManageSieveSession:
        assert self.protocol.session is not None
        return self.protocol.session


def make_store(root: Path) -> SQLiteAccountStore:
    store = SQLiteAccountStore(root / "accounts.sqlite3", hasher=CHEAP)
    store.ensure_domains(["example.test"])
    for user, password in USERS.items():
        store.add_user(user, password)
    return store


def harness(root: Path, *, tls: bool = True, allow_plaintext_auth: bool = False, clock: Clock | None = None,
            authenticator: Authenticator | None = None, store: SQLiteAccountStore | None = None,
            run: Callable[..., Any] | None = None, max_script_size: int = 4096, max_scripts: int = 5,
            limiter: ConnectionLimiter | None = None, peer: str = "192.0.2.10", connect: bool = True) -> Harness:
    """A connected session; ``tls`` as though STARTTLS had already been done (most tests want a login)."""
    clock = clock or Clock()
    store = store or make_store(root)
    config = SessionConfig(hostname="mail.example.test", allow_plaintext_auth=allow_plaintext_auth,
                           max_script_size=max_script_size, max_scripts=max_scripts)
    factory = build_factory(config, store, authenticator=authenticator or make_authenticator(clock, USERS),
                            limiter=limiter or ConnectionLimiter(20), tls_options=object(), clock=clock,
                            run=run or maybeDeferred)
    protocol = factory.buildProtocol(None)
    transport = TLSStringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
    h = Harness(protocol, transport, factory, clock, store)
    if connect:
        protocol.makeConnection(transport)
        if tls:
            protocol.tls = True
            h.session.tls_started()
        h.read()
    return h
