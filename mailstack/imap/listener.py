"""Builds an IMAP listener factory (``imap`` on 143 with STARTTLS, ``imaps`` on 993)
from explicit collaborators. ``service.py`` passes both listeners the same
:class:`MailStore`, so sessions on either port see each other's changes at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from mailstack.auth import Authenticator
from mailstack.imap.protocol import IMAPFactory
from mailstack.imap.session import IMAPSession, SessionConfig
from mailstack.maildir.folders import MailStore
from mailstack.notify import MailboxEvents
from mailstack.throttle import ConnectionLimiter


def imap_factory(config: SessionConfig, *, store: MailStore, authenticator: Authenticator,
                 events: MailboxEvents, limiter: ConnectionLimiter, tls_options: Any,
                 clock: IReactorTime, threads: IReactorFromThreads, pool: ThreadPool) -> IMAPFactory:
    """The factory for one IMAP listener; implicit TLS when ``config`` offers no STARTTLS.

    Message reads and writes run on ``pool`` (through ``threads``).
    """

    def io(fn: Callable[..., Any], *args: Any) -> Any:
        return deferToThreadPool(threads, pool, fn, *args)

    def make_session(ip: str, tls: bool, send: Callable[[bytes], None]) -> IMAPSession:
        return IMAPSession(config, store, authenticator, events, client_ip=ip, tls=tls, send=send, io=io)

    return IMAPFactory(make_session=make_session, clock=clock, limiter=limiter, tls_options=tls_options,
                       implicit_tls=not config.starttls_available, max_message_size=config.max_message_size)
