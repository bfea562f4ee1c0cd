"""The account store interface: what servers look up and what the CLI edits.

Two ``typing.Protocol`` seams, so that another backend (PostgreSQL for several
hosts sharing one store) can slot in without touching the servers or the CLI:

* :class:`AccountLookup` is what the protocol servers use. Its methods are
  called on the Twisted reactor thread and are synchronous, so an
  implementation must answer from memory (or something equally quick) and
  must never block on disk, network or locks held by other processes.
* :class:`AccountAdmin` is what ``mailstack`` (the CLI) uses. Its methods are
  synchronous and may block; a server calling them must do so from a thread
  pool. Changes made through it must become visible to :class:`AccountLookup`
  of every running server without a restart.

Addresses are canonical (:mod:`mailstack.addresses`): domains and local parts
lowercased. Alias sources are ``local@domain`` or ``@domain`` (a catch-all for
the domain).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["AccountAdmin", "AccountError", "AccountLookup", "User"]


class AccountError(Exception):
    """An account operation was refused; ``str(error)`` is a user-facing line."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class User:
    """One mailbox account."""

    address: str
    """Canonical ``local@domain``."""
    password_hash: str
    """argon2id PHC string (:mod:`mailstack.accounts.passwords`)."""
    quota: int
    """Mailbox size limit in bytes; 0 means unlimited."""
    max_messages: int = 0
    """Limit on the number of messages in all folders together; 0 means unlimited."""


@runtime_checkable
class AccountLookup(Protocol):
    """Read-only queries made by the servers, on the reactor thread.

    Every method accepts any text and answers "no" (``False``, ``None`` or
    ``()``) for text that is not a valid address; none raises for bad input.
    """

    def is_local_domain(self, domain: str) -> bool:
        """True if mail for *domain* is delivered here."""
        ...

    def get_user(self, address: str) -> User | None:
        """The account for *address*, or None. Aliases are not followed."""
        ...

    def resolve(self, address: str) -> tuple[str, ...]:
        """Final delivery addresses for *address*, in order, without repeats.

        Local addresses are expanded: an alias for the exact address wins,
        else the user with that address, else the domain's catch-all
        (``@domain``) alias; alias targets are expanded the same way (chains
        up to a bounded depth, loops cut). An alias that lists its own source
        keeps a copy for that user. The result holds local users and
        external (forwarding) addresses. An address outside the local domains
        comes back unchanged; ``()`` means no such local recipient.
        """
        ...

    def active_script(self, address: str) -> str | None:
        """The text of the user's active Sieve script, or None (no filtering: INBOX)."""
        ...

    def script(self, address: str, name: str) -> str | None:
        """The text of the user's script *name* (what the active one includes :personal,
        RFC 6609), or None; known for users who have an active script."""
        ...

    def global_script(self, name: str) -> str | None:
        """The text of the global script *name* (RFC 6609 :global), or None."""
        ...

    def owns(self, user_address: str, sender_address: str) -> bool:
        """True if the user may send as *sender_address*.

        That is the user's own address (or ``user+tag``), an exact (not
        catch-all) alias whose resolution includes the user, or an address or
        whole domain the user was granted (``mailstack user allow-sender``).
        """
        ...


class AccountAdmin(Protocol):
    """Administrative changes, synchronous; each raises AccountError when refused."""

    def add_domain(self, domain: str) -> None: ...

    def remove_domain(self, domain: str) -> None:
        """Refused while the domain still has users or aliases."""
        ...

    def list_domains(self) -> list[str]: ...

    def ensure_domains(self, domains: Iterable[str]) -> None:
        """Add those of *domains* that are missing; idempotent."""
        ...

    def add_user(self, address: str, password: str, quota: int = 0, max_messages: int = 0) -> None:
        """Refused for an unknown domain, an existing user or an empty password."""
        ...

    def remove_user(self, address: str) -> None: ...

    def set_password(self, address: str, password: str) -> None: ...

    def set_quota(self, address: str, quota: int, max_messages: int | None = None) -> None:
        """The size limit, and the message-count limit unless it is None (left as it is)."""
        ...

    def list_users(self, domain: str | None = None) -> list[User]: ...

    def put_script(self, address: str, name: str, script: str) -> None:
        """Store or replace a user's Sieve script (checked by the caller)."""
        ...

    def get_script(self, address: str, name: str) -> str: ...

    def list_scripts(self, address: str) -> list[tuple[str, bool]]:
        """(name, active) of a user's scripts."""
        ...

    def set_active_script(self, address: str, name: str | None) -> None:
        """One active script per user; None: none."""
        ...

    def delete_script(self, address: str, name: str) -> None:
        """Refused for the active script."""
        ...

    def rename_script(self, address: str, old: str, new: str) -> None: ...

    def put_global_script(self, name: str, script: str) -> None:
        """Store or replace a global script (RFC 6609 :global; checked by the caller)."""
        ...

    def get_global_script(self, name: str) -> str: ...

    def list_global_scripts(self) -> list[str]: ...

    def delete_global_script(self, name: str) -> None: ...

    def add_alias(self, source: str, targets: str | Iterable[str]) -> None:
        """*source* must be in a local domain; targets may be local or external."""
        ...

    def remove_alias(self, source: str, target: str | None = None) -> None:
        """Remove one target of *source*, or all of them when *target* is None."""
        ...

    def list_aliases(self) -> list[tuple[str, str]]:
        """``(source, target)`` pairs, by source, targets in the order added."""
        ...

    def allow_sender(self, address: str, senders: Iterable[str]) -> None:
        """Let the user *address* send as each of *senders*: an address, or ``@domain`` for any
        address of that domain (another host relaying through this one)."""
        ...

    def revoke_sender(self, address: str, sender: str | None = None) -> None:
        """Take one grant back, or all of the user's when *sender* is None."""
        ...

    def list_sender_grants(self, address: str | None = None) -> list[tuple[str, str]]:
        """``(user, sender)`` pairs, of one user or of all."""
        ...
