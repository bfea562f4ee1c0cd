"""Builds the IMAP listener factories (``imap`` on 143 with STARTTLS, ``imaps`` on 993)
from the shared objects; both share one :class:`MailStore`, so sessions on
either port see each other's changes at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.threads import deferToThreadPool

from mailstack.imap.protocol import IMAPFactory
from mailstack.imap.session import IMAPSession, SessionConfig
from mailstack.maildir.folders import MailStore
from mailstack.maildir.layout import MaildirLayout
from mailstack.maildir.names import escape_hostname


def mail_store(shared: Any) -> MailStore:
    store = getattr(shared, "_imap_store", None)
    if store is None:
        store = MailStore(MaildirLayout(shared.settings.storage.maildirs),
                          escape_hostname(shared.settings.hostname), accounts=shared.store)
        shared._imap_store = store
    return store


def imap_factory(shared: Any, *, implicit_tls: bool) -> IMAPFactory:
    s = shared.settings
    store = mail_store(shared)
    config = SessionConfig(hostname=s.hostname, max_message_size=s.limits.message_size,
                           allow_plaintext_auth=s.tls.allow_plaintext_auth,
                           starttls_available=not implicit_tls)
    reactor, pool = shared.reactor, shared.io_pool

    def io(fn: Callable[..., Any], *args: Any) -> Any:
        return deferToThreadPool(reactor, pool, fn, *args)

    def make_session(ip: str, tls: bool, send: Callable[[bytes], None]) -> IMAPSession:
        return IMAPSession(config, store, shared.authenticator, shared.events, client_ip=ip, tls=tls,
                           send=send, io=io)

    return IMAPFactory(make_session=make_session, clock=reactor, limiter=shared.limiter,
                       tls_options=shared.tls, implicit_tls=implicit_tls,
                       max_message_size=s.limits.message_size)
