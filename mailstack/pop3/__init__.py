"""POP3 retrieval (RFC 1939) on port 110 with STLS (RFC 2595) and 995 with implicit TLS.

Extensions: CAPA, RESP-CODES, PIPELINING, TOP, UIDL, USER, IMPLEMENTATION
(RFC 2449), AUTH-RESP-CODE (RFC 3206), SASL PLAIN (RFC 5034, RFC 4616). APOP
is not offered: passwords are stored as argon2id hashes.

Modules: :mod:`.reply` (response values and codes), :mod:`.session` (states
and commands), :mod:`.protocol` (framing, STLS, timeouts, streaming),
:mod:`.stream` (CRLF and byte-stuffing in bulk, TOP), :mod:`.maildrop`
(snapshot, unique-ids, sizes, deletion, locks).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from mailstack.pop3.maildrop import Maildrops
from mailstack.pop3.protocol import POP3Factory, POP3Protocol
from mailstack.pop3.session import POP3Session, SessionConfig

if TYPE_CHECKING:
    from mailstack.service import Shared

# Shared (a plain dataclass) is not hashable, so key by id and keep a weak
# reference to check the entry still belongs to the same live object.
_maildrops: dict[int, tuple[weakref.ref[Shared], Maildrops]] = {}


def maildrops_for(shared: Shared) -> Maildrops:
    """One :class:`Maildrops` (so one set of locks) per service tree, shared by 110 and 995."""
    for key, (ref, _) in list(_maildrops.items()):
        if ref() is None:
            del _maildrops[key]
    entry = _maildrops.get(id(shared))
    if entry is not None and entry[0]() is shared:
        return entry[1]
    maildrops = Maildrops(shared.delivery.maildir_path, reactor=shared.reactor, pool=shared.io_pool,
                          events=shared.events)
    _maildrops[id(shared)] = (weakref.ref(shared), maildrops)
    return maildrops


def build_factory(shared: Shared, *, implicit_tls: bool) -> POP3Factory:
    """The ``pop3`` (``implicit_tls=False``, STLS) or ``pop3s`` listener's factory."""
    config = SessionConfig(
        hostname=shared.settings.hostname,
        allow_plaintext_auth=shared.settings.tls.allow_plaintext_auth,
        stls_available=not implicit_tls,
    )
    maildrops = maildrops_for(shared)

    def make_session(ip: str, tls: bool) -> POP3Session:
        return POP3Session(config, shared.authenticator, maildrops, client_ip=ip, tls=tls)

    return POP3Factory(
        role="pop3s" if implicit_tls else "pop3", make_session=make_session, clock=shared.reactor,
        limiter=shared.limiter, tls_options=shared.tls, implicit_tls=implicit_tls, pool=shared.io_pool,
    )


__all__ = ["Maildrops", "POP3Factory", "POP3Protocol", "POP3Session", "SessionConfig", "build_factory"]
