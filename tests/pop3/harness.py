"""A POP3 server on a StringTransport over a temporary Maildir root; no sockets, no reactor."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailstack.auth import Authenticator
from mailstack.maildir.folders import MailStore
from mailstack.maildir.layout import MaildirLayout
from mailstack.notify import MailboxEvents
from mailstack.pop3.maildrop import Maildrops
from mailstack.pop3.protocol import POP3Factory, POP3Protocol
from mailstack.pop3.session import POP3Session, SessionConfig
from mailstack.testing import make_authenticator
from mailstack.throttle import ConnectionLimiter

USERS = {"alice@example.test": "secret", "bob@example.test": "hunter2"}
_counter = itertools.count(1)


def maildir_of(root: Path, address: str) -> Path:
    local, domain = address.split("@")
    return root / domain / local


def put(root: Path, address: str, content: bytes, *, subdir: str = "new", seconds: int | None = None,
        info: str = "", sized: bool = True) -> str:
    """Drop a message file into a Maildir the way delivery names it; returns the base name."""
    maildir = maildir_of(root, address)
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    n = next(_counter)
    base = f"{seconds if seconds is not None else 1700000000 + n}.M{n}P1Q{n}R00.mail.example.test"
    if sized:
        base += f",S={len(content)}"
    (maildir / subdir / (base + info)).write_bytes(content)
    return base


def mail_store(root: Path) -> MailStore:
    """The process's one owner of the Maildirs under ``root`` (IMAP's harness makes the same)."""
    return MailStore(MaildirLayout(root), "test.host")


class TLSStringTransport(StringTransport):
    """Records startTLS calls."""

    tls_started: Any = None

    def startTLS(self, options: Any) -> None:
        self.tls_started = options


@dataclass
class Harness:
    protocol: POP3Protocol
    transport: TLSStringTransport
    factory: POP3Factory
    clock: Clock
    root: Path
    maildrops: Maildrops

    def send(self, data: bytes | str) -> bytes:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.protocol.dataReceived(data)
        return self.read()

    def read(self) -> bytes:
        self.drain()
        out = bytes(self.transport.value())
        self.transport.clear()
        return out

    def drain(self) -> None:
        """Act as a reader: pull from a registered (non-streaming) producer until it is done."""
        while self.transport.producer is not None and not self.transport.streaming:
            self.transport.producer.resumeProducing()

    def lines(self, data: bytes | str) -> list[str]:
        return self.send(data).decode("utf-8").split("\r\n")[:-1]

    def reply(self, data: bytes | str) -> str:
        [line] = self.lines(data)
        return line

    def login(self, user: str = "alice@example.test", password: str | None = None) -> str:
        assert self.reply(f"USER {user}\r\n").startswith("+OK")
        return self.reply(f"PASS {password or USERS[user]}\r\n")

    @property
    def session(self) -> POP3Session:
        assert self.protocol.session is not None
        return self.protocol.session


def pop3_harness(
    root: Path,
    *,
    tls: bool = False,
    implicit_tls: bool = False,
    allow_plaintext_auth: bool = True,
    clock: Clock | None = None,
    authenticator: Authenticator | None = None,
    maildrops: Maildrops | None = None,
    limiter: ConnectionLimiter | None = None,
    events: MailboxEvents | None = None,
    store: MailStore | None = None,
    peer: str = "192.0.2.10",
    connect: bool = True,
) -> Harness:
    clock = clock or Clock()
    authenticator = authenticator or make_authenticator(clock, USERS)
    maildrops = maildrops or Maildrops(store or mail_store(root), events=events)
    limiter = limiter or ConnectionLimiter(20)
    config = SessionConfig(hostname="mail.example.test", allow_plaintext_auth=allow_plaintext_auth,
                           stls_available=not implicit_tls)

    def make_session(ip: str, is_tls: bool) -> POP3Session:
        return POP3Session(config, authenticator, maildrops, client_ip=ip, tls=is_tls)

    factory = POP3Factory(role="pop3s" if implicit_tls else "pop3", make_session=make_session,
                          clock=clock, limiter=limiter, tls_options=object(),
                          implicit_tls=implicit_tls or tls)
    protocol = factory.buildProtocol(None)
    transport = TLSStringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
    h = Harness(protocol, transport, factory, clock, root, maildrops)
    if connect:
        protocol.makeConnection(transport)
    return h


def file_bytes(root: Path, address: str) -> dict[str, bytes]:
    """base name -> content of every message file in the Maildir."""
    maildir = maildir_of(root, address)
    out = {}
    for sub in ("new", "cur"):
        d = maildir / sub
        if d.exists():
            for name in os.listdir(d):
                if (d / name).is_dir():
                    continue
                out[name.split(":")[0]] = (d / name).read_bytes()
    return out
