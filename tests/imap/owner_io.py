"""An IMAP world whose io calls wait until the test runs them, to see what is in flight."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from mailstack.imap.protocol import IMAPFactory
from mailstack.imap.session import IMAPSession, SessionConfig
from mailstack.maildir.folders import MailStore
from mailstack.maildir.layout import MaildirLayout
from mailstack.notify import MailboxEvents
from mailstack.testing import make_authenticator
from mailstack.throttle import ConnectionLimiter

from .harness import PASSWORD, USER, World


class HeldIO:
    """``io`` that records each call and runs it only when the test says so."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self.calls: list[str] = []
        self.hold = True

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.calls.append(getattr(fn, "__name__", repr(fn)))
        d: Deferred[Any] = Deferred()
        if self.hold:
            self.pending.append((fn, args, d))
        else:
            self._run(fn, args, d)
        return d

    @staticmethod
    def _run(fn: Callable[..., Any], args: tuple[Any, ...], d: Deferred[Any]) -> None:
        try:
            result = fn(*args)
        except Exception:
            d.errback(Failure())
        else:
            d.callback(result)

    def run_one(self) -> None:
        fn, args, d = self.pending.pop(0)
        self._run(fn, args, d)

    def run_all(self) -> None:
        while self.pending:
            self.run_one()


def world_with_io(root: Path, io: Any, store: MailStore | None = None) -> World:
    """Like :meth:`World.create`, with the sessions' ``io`` given by the test."""
    clock = Clock()
    store = store or MailStore(MaildirLayout(root), "test.host")
    events = MailboxEvents()
    auth = make_authenticator(clock, {USER: PASSWORD, "bob@example.test": PASSWORD})
    config = SessionConfig("mail.example.test", 100_000, True, starttls_available=True)

    def make_session(ip: str, tls: bool, send: Any) -> IMAPSession:
        return IMAPSession(config, store, auth, events, client_ip=ip, tls=tls, send=send, io=io)

    factory = IMAPFactory(make_session=make_session, clock=clock, limiter=ConnectionLimiter(20),
                          tls_options=None, implicit_tls=False, max_message_size=100_000)
    return World(root, clock, store, events, factory)


class GuardedIO(HeldIO):
    """``io`` that runs at once and notes when it is running, so disk calls elsewhere show up."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.running = 0
        self.off_io: list[str] = []

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], d: Deferred[Any]) -> None:  # type: ignore[override]
        self.running += 1
        try:
            HeldIO._run(fn, args, d)
        finally:
            self.running -= 1

    def guard(self, monkeypatch: Any, module: Any, names: tuple[str, ...]) -> None:
        """Record every call of ``module.<name>`` made outside ``io``."""
        for name in names:
            real = getattr(module, name)

            def guarded(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
                if not self.running:
                    self.off_io.append(f"{_name}{args[:1]}")
                return _real(*args, **kwargs)

            monkeypatch.setattr(module, name, guarded)
