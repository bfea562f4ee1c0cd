"""In-memory IMAP server: a real IMAPProtocol on a StringTransport over a temp Maildir root."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mailstack.imap.protocol import IMAPFactory, IMAPProtocol
from mailstack.imap.session import IMAPSession, SessionConfig
from mailstack.maildir.folders import MailStore
from mailstack.maildir.layout import MaildirLayout
from mailstack.notify import MailboxEvents
from mailstack.testing import make_authenticator
from mailstack.throttle import ConnectionLimiter

USER = "alice@example.test"
PASSWORD = "secret"


def run(coro: Any) -> Any:
    """The result of a coroutine whose io runs inline (it finishes at once)."""
    results: list[Any] = []
    Deferred.fromCoroutine(coro).addBoth(results.append)
    assert results, "the coroutine is still waiting"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


async def sync_io(fn: Any, *args: Any) -> Any:
    return fn(*args)


@dataclass
class World:
    """Shared server side: one store, one event bus, one clock, one authenticator."""

    root: Path
    clock: Clock
    store: MailStore
    events: MailboxEvents
    factory: IMAPFactory

    @classmethod
    def create(cls, root: Path, *, allow_plaintext_auth: bool = True, implicit_tls: bool = False,
               max_message_size: int = 100_000, max_failures: int = 5, watcher: Any = None) -> World:
        clock = Clock()
        events = MailboxEvents()
        store = MailStore(MaildirLayout(root), "test.host", watcher=watcher, events=events)
        auth = make_authenticator(clock, {USER: PASSWORD, "bob@example.test": PASSWORD},
                                  max_failures=max_failures)
        config = SessionConfig("mail.example.test", max_message_size, allow_plaintext_auth,
                               starttls_available=not implicit_tls)

        def make_session(ip: str, tls: bool, send: Any) -> IMAPSession:
            return IMAPSession(config, store, auth, events, client_ip=ip, tls=tls, send=send, io=sync_io)

        factory = IMAPFactory(make_session=make_session, clock=clock, limiter=ConnectionLimiter(20),
                              tls_options=None, implicit_tls=implicit_tls, max_message_size=max_message_size)
        return cls(root, clock, store, events, factory)

    def connect(self, peer: str = "192.0.2.1") -> Client:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        protocol.makeConnection(transport)
        client = Client(self, protocol, transport)
        client.greeting = client.read()
        return client

    def deliver(self, message: bytes, user: str = USER, folder: str | None = None) -> Path:
        """Write a message into new/ the way MaildirDelivery does, and publish the change."""
        import os
        import time

        path = self.store.layout.maildir_path(user, folder)
        self.store.layout.ensure(path)
        n = next(_counter)
        name = f"{int(time.time())}.M{n:06d}P{os.getpid()}Q{n}.test,S={len(message)}"
        (path / "new" / name).write_bytes(message)
        self.events.publish(user, folder)
        return path / "new" / name


_counter = iter(range(1, 10**9))


@dataclass
class Client:
    world: World
    protocol: IMAPProtocol
    transport: StringTransport
    greeting: bytes = b""
    n: int = 0

    def read(self) -> bytes:
        out = bytes(self.transport.value())
        self.transport.clear()
        return out

    def send(self, data: bytes | str) -> bytes:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.protocol.dataReceived(data)
        return self.read()

    def cmd(self, command: str | bytes) -> tuple[list[bytes], bytes]:
        """Send one tagged command; return (untagged lines, tagged line)."""
        self.n += 1
        tag = f"t{self.n}".encode()
        raw = command.encode("utf-8") if isinstance(command, str) else command
        out = self.send(tag + b" " + raw + b"\r\n")
        lines = out.split(b"\r\n")
        tagged = [ln for ln in lines if ln.startswith(tag + b" ")]
        assert tagged, out
        idx = lines.index(tagged[-1])
        return [ln for ln in lines[:idx] if ln], tagged[-1][len(tag) + 1:]

    def ok(self, command: str | bytes) -> list[bytes]:
        untagged, tagged = self.cmd(command)
        assert tagged.startswith(b"OK"), (command, untagged, tagged)
        return untagged

    def raw(self, command: str | bytes) -> bytes:
        """Send one tagged command; the whole raw answer."""
        self.n += 1
        raw = command.encode("utf-8") if isinstance(command, str) else command
        return self.send(f"t{self.n} ".encode() + raw + b"\r\n")

    def login(self, user: str = USER) -> Client:
        self.ok(f"LOGIN {user} {PASSWORD}")
        return self

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


def fetch_map(lines: list[bytes]) -> dict[int, bytes]:
    out = {}
    for ln in lines:
        m = re.match(rb"\* (\d+) FETCH (.*)", ln, re.S)
        if m:
            out[int(m.group(1))] = m.group(2)
    return out


def uidvalidity(lines: list[bytes]) -> int:
    """The UIDVALIDITY a SELECT or STATUS answer carries."""
    for line in lines:
        m = re.search(rb"UIDVALIDITY (\d+)", line)
        if m:
            return int(m.group(1))
    raise AssertionError(lines)
