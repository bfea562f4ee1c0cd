"""ManageSieve (RFC 5804) on port 4190: users manage their Sieve scripts from a mail client.

STARTTLS, then SASL PLAIN (RFC 4616) against the shared account store;
CAPABILITY, LOGOUT, NOOP, UNAUTHENTICATE (§2.14.1), HAVESPACE, PUTSCRIPT and
CHECKSCRIPT (each script checked by the Sieve interpreter, errors with their
line and column), GETSCRIPT, LISTSCRIPTS, SETACTIVE, DELETESCRIPT and
RENAMESCRIPT. The SIEVE capability is what :mod:`mailstack.sieve.interpreter`
supports at that moment. Implicit TLS is not offered.

Modules: :mod:`.reply` (responses, strings and codes), :mod:`.parse`
(commands: atoms, strings, numbers, literals), :mod:`.session` (states and
commands), :mod:`.scripts` (the account store's scripts, on the io pool),
:mod:`.protocol` (framing, literals and their caps, SASL lines, timeouts).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from mailstack.accounts.store import AccountAdmin
from mailstack.auth import Authenticator
from mailstack.managesieve.protocol import ManageSieveFactory, ManageSieveProtocol
from mailstack.managesieve.scripts import Scripts
from mailstack.managesieve.session import ManageSieveSession, SessionConfig
from mailstack.throttle import ConnectionLimiter


def build_factory(config: SessionConfig, store: AccountAdmin, *, authenticator: Authenticator,
                  limiter: ConnectionLimiter, tls_options: Any, clock: IReactorTime,
                  run: Callable[..., Awaitable[Any]]) -> ManageSieveFactory:
    """The ``managesieve`` listener's factory; the store's blocking calls go through ``run`` (the io pool)."""
    scripts = Scripts(store, run, max_scripts=config.max_scripts)

    def make_session(ip: str, tls: bool) -> ManageSieveSession:
        return ManageSieveSession(config, authenticator, scripts, client_ip=ip, tls=tls)

    return ManageSieveFactory(make_session=make_session, clock=clock, limiter=limiter, tls_options=tls_options,
                              max_script_size=config.max_script_size)


__all__ = ["ManageSieveFactory", "ManageSieveProtocol", "ManageSieveSession", "Scripts", "SessionConfig",
           "build_factory"]
