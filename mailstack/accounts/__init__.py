"""The shared account store: domains, users, aliases, passwords and login checks.

* :mod:`~mailstack.accounts.store` — the interface (``AccountLookup`` for the
  servers, ``AccountAdmin`` for the CLI), ``User`` and ``AccountError``.
* :mod:`~mailstack.accounts.directory` — canonical address forms and the alias
  resolution rules, over an in-memory snapshot.
* :mod:`~mailstack.accounts.sqlite` — the embedded default store (SQLite, WAL).
* :mod:`~mailstack.accounts.passwords` — argon2id hashing.
* :mod:`~mailstack.accounts.cred` — the twisted.cred checker.

Only :func:`open_store` knows which backend a location names, so another one
(PostgreSQL for several hosts sharing accounts) can be added there.
"""

from __future__ import annotations

from pathlib import Path

from argon2 import PasswordHasher

from mailstack.accounts.cred import AccountChecker
from mailstack.accounts.passwords import hash_password, verify_password
from mailstack.accounts.sqlite import SQLiteAccountStore
from mailstack.accounts.store import AccountAdmin, AccountError, AccountLookup, User

__all__ = [
    "AccountAdmin",
    "AccountChecker",
    "AccountError",
    "AccountLookup",
    "SQLiteAccountStore",
    "User",
    "hash_password",
    "open_store",
    "verify_password",
]


def open_store(location: Path | str, *, hasher: PasswordHasher | None = None) -> SQLiteAccountStore:
    """Open (creating if needed) the account store at *location* (a file path)."""
    return SQLiteAccountStore(location, hasher=hasher)
