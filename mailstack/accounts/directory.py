"""An immutable in-memory view of the accounts, and the alias resolution rules.

:class:`Directory` answers every :class:`~mailstack.accounts.store.AccountLookup`
query from plain dicts, so lookups cost microseconds and can run on the reactor
thread. A store builds a new Directory when its data changes and swaps it in
whole; readers never see a half-updated view. Keeping resolution here, apart
from SQL, lets every backend (and test fakes) share one set of rules.

Canonical forms come from :mod:`mailstack.addresses` (RFC 5321 §2.4: local parts
are treated case-insensitively here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from twisted.logger import Logger

from mailstack import addresses
from mailstack.accounts.store import User
from mailstack.addresses import InvalidAddress

__all__ = [
    "MAX_ALIAS_DEPTH",
    "Directory",
    "canonical_address",
    "canonical_alias_source",
    "canonical_domain",
    "domain_of",
]

MAX_ALIAS_DEPTH = 10
"""Alias hops followed before a chain is cut (and a warning logged)."""

log = Logger()


def canonical_domain(domain: str) -> str:
    """Lowercased, validated domain; raises InvalidAddress."""
    return addresses.normalize_domain(domain)


def canonical_address(text: str) -> str:
    """Canonical ``local@domain`` for storage and lookup; raises InvalidAddress."""
    return addresses.canonical(text)


def canonical_alias_source(text: str) -> str:
    """Canonical alias source: ``local@domain`` or ``@domain`` (catch-all)."""
    if isinstance(text, str) and text.strip().startswith("@"):
        return "@" + canonical_domain(text.strip()[1:])
    return canonical_address(text)


def domain_of(address: str) -> str:
    """The domain of a canonical address or alias source."""
    return address.rpartition("@")[2]


@dataclass(frozen=True, slots=True)
class Directory:
    """Domains, users and aliases at one moment, with the lookup rules."""

    domains: frozenset[str] = frozenset()
    users: Mapping[str, User] = field(default_factory=dict)
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """source (``local@domain`` or ``@domain``) -> targets in the order added."""
    recipient_delimiter: str = "+"
    """Characters that separate a user from a tag: ``user+tag@domain`` reaches ``user@domain``
    when no user or alias has the whole address (RFC 5233's detail). "": none."""
    scripts: Mapping[str, str] = field(default_factory=dict)
    """user address -> the text of the user's active Sieve script."""
    named: Mapping[tuple[str, str], str] = field(default_factory=dict)
    """(user address, name) -> the text of each script of the users who have an active one."""
    global_scripts: Mapping[str, str] = field(default_factory=dict)
    """name -> the text of a global script (RFC 6609 :global)."""
    grants: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """user address -> the addresses and ``@domain``s it may also send as."""

    def is_local_domain(self, domain: str) -> bool:
        try:
            return canonical_domain(domain) in self.domains
        except (InvalidAddress, AttributeError, TypeError):
            return False

    def get_user(self, address: str) -> User | None:
        canon = _canonical_or_none(address)
        return self.users.get(canon) if canon is not None else None

    def resolve(self, address: str) -> tuple[str, ...]:
        canon = _canonical_or_none(address)
        if canon is None:
            return ()
        found: dict[str, None] = {}  # ordered set
        self._expand(canon, (), found)
        return tuple(found)

    def owns(self, user_address: str, sender_address: str) -> bool:
        user = _canonical_or_none(user_address)
        sender = _canonical_or_none(sender_address)
        if user is None or sender is None:
            return False
        if user == sender or self.base_of(sender) == user:  # a user may send as user+tag
            return True
        granted = self.grants.get(user, frozenset())
        domain = sender.rpartition("@")[2]
        if domain not in self.domains and (sender in granted or "@" + domain in granted):
            return True  # never a local address: a domain made local later takes its grants back
        return sender in self.aliases and user in self.resolve(sender)

    def active_script(self, address: str) -> str | None:
        canon = _canonical_or_none(address)
        return self.scripts.get(canon) if canon is not None else None

    def script(self, address: str, name: str) -> str | None:
        canon = _canonical_or_none(address)
        return self.named.get((canon, name)) if canon is not None else None

    def global_script(self, name: str) -> str | None:
        return self.global_scripts.get(name)

    def base_of(self, address: str) -> str | None:
        """``user+tag@domain`` -> ``user@domain`` (at the first delimiter); None without a tag."""
        if not self.recipient_delimiter:
            return None
        local, _, domain = address.rpartition("@")
        cut = min((i for i in (local.find(c) for c in self.recipient_delimiter) if i > 0), default=-1)
        return f"{local[:cut]}@{domain}" if cut > 0 else None

    def _targets(self, address: str) -> tuple[str, ...] | None:
        """The alias targets for a local address: exact alias, else the address without its
        tag (``user+tag``) when a user or alias has that, else catch-all.

        None when the address is a user (or nothing at all) instead.
        """
        exact = self.aliases.get(address)
        if exact is not None:
            return exact
        if address in self.users:
            return None
        base = self.base_of(address)
        if base is not None and (base in self.users or base in self.aliases):
            return (base,)
        return self.aliases.get("@" + domain_of(address))

    def _expand(self, address: str, path: tuple[str, ...], found: dict[str, None]) -> None:
        if domain_of(address) not in self.domains:
            found.setdefault(address)  # external: forwarded as it is
            return
        if address in path:  # a loop: cut, it adds nobody
            return
        targets = self._targets(address)
        if targets is None:
            if address in self.users:
                found.setdefault(address)
            return
        if len(path) >= MAX_ALIAS_DEPTH:
            log.warn("alias chain for {address} longer than {depth} hops; cut", address=path[0], depth=MAX_ALIAS_DEPTH)
            return
        for target in targets:
            if target == address:  # "alice -> alice, elsewhere": keep a copy for the user
                if address in self.users:
                    found.setdefault(address)
                continue
            self._expand(target, (*path, address), found)


def _canonical_or_none(address: str) -> str | None:
    try:
        return canonical_address(address)
    except (InvalidAddress, AttributeError, TypeError):
        return None
