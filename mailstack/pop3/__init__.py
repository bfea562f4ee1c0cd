"""POP3 retrieval (RFC 1939) on port 110 with STLS (RFC 2595) and 995 with implicit TLS.

Extensions: CAPA, RESP-CODES, PIPELINING, TOP, UIDL, USER, IMPLEMENTATION
(RFC 2449), AUTH-RESP-CODE (RFC 3206), SASL PLAIN (RFC 5034, RFC 4616). APOP
is not offered: passwords are stored as argon2id hashes.

Modules: :mod:`.reply` (response values and codes), :mod:`.session` (states
and commands), :mod:`.protocol` (framing, STLS, timeouts, streaming),
:mod:`.stream` (CRLF and byte-stuffing in bulk, TOP), :mod:`.maildrop`
(the INBOX through the mail store shared with IMAP, unique-ids, deletion, locks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from mailstack.auth import Authenticator
from mailstack.pop3.maildrop import Maildrops
from mailstack.pop3.protocol import POP3Factory, POP3Protocol
from mailstack.pop3.session import POP3Session, SessionConfig
from mailstack.throttle import ConnectionLimiter


def pool_io(threads: IReactorFromThreads, pool: ThreadPool) -> Callable[..., Deferred[Any]]:
    """The ``io`` callable for :class:`Maildrops`: file-system work on ``pool``, results on the reactor."""

    def io(fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(threads, pool, fn, *args)

    return io


def build_factory(config: SessionConfig, maildrops: Maildrops, *, authenticator: Authenticator,
                  limiter: ConnectionLimiter, tls_options: Any, clock: IReactorTime,
                  pool: ThreadPool | None) -> POP3Factory:
    """The ``pop3`` (STLS offered) or ``pop3s`` (implicit TLS) listener's factory.

    Pass 110 and 995 the same ``maildrops`` so a mailbox locked on one is locked on both.
    """
    implicit_tls = not config.stls_available

    def make_session(ip: str, tls: bool) -> POP3Session:
        return POP3Session(config, authenticator, maildrops, client_ip=ip, tls=tls)

    return POP3Factory(
        role="pop3s" if implicit_tls else "pop3", make_session=make_session, clock=clock,
        limiter=limiter, tls_options=tls_options, implicit_tls=implicit_tls, pool=pool,
    )


__all__ = ["Maildrops", "POP3Factory", "POP3Protocol", "POP3Session", "SessionConfig", "build_factory", "pool_io"]
