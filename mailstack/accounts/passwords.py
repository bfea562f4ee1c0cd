"""Password hashing for the account store: argon2id (RFC 9106) via argon2-cffi.

Hashes are PHC strings (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``) made by
argon2-cffi's :class:`~argon2.PasswordHasher` with OWASP's recommended argon2id
parameters (19 MiB, two passes, one lane: about as hard to attack per guess as
RFC 9106's 64 MiB profile on a small server, at under a third of the memory per
login in progress). The parameters travel with each hash, so older hashes keep
verifying after the defaults change.

Verification is slow on purpose (tens of milliseconds) and must never run on the
reactor thread; :mod:`mailstack.accounts.cred` runs it in a thread pool. For
unknown users the checker verifies against :func:`dummy_hash` so that a failed
login costs the same whether or not the account exists.
"""

from __future__ import annotations

import secrets
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["DEFAULT_HASHER", "dummy_hash", "hash_password", "needs_rehash", "verify_password"]

DEFAULT_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
"""argon2id, m=19 MiB, t=2, p=1 (OWASP Password Storage Cheat Sheet): two logins checked
at once on the ``auth`` pool cost 38 MiB, not 128 MiB."""

_DUMMY: str | None = None
_DUMMY_LOCK = threading.Lock()


def hash_password(password: str | bytes, hasher: PasswordHasher | None = None) -> str:
    """Hash *password* (str is encoded as UTF-8) into an argon2id PHC string."""
    return (hasher or DEFAULT_HASHER).hash(password)


def verify_password(stored_hash: str, password: str | bytes) -> bool:
    """True if *password* matches *stored_hash*.

    Never raises for a wrong password or a malformed or foreign hash: those are
    simply ``False``. The comparison is argon2's own constant-time one.
    """
    try:
        return DEFAULT_HASHER.verify(stored_hash, password)
    except (VerificationError, InvalidHashError, TypeError, ValueError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """True if *stored_hash* was made with other parameters than the defaults."""
    try:
        return DEFAULT_HASHER.check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return True


def dummy_hash() -> str:
    """A hash of a random secret with the default parameters, made on first use.

    Verifying a password against it takes as long as against a real account's
    hash and always fails; call it off the reactor thread (the first call hashes).
    """
    global _DUMMY
    if _DUMMY is None:
        with _DUMMY_LOCK:
            if _DUMMY is None:
                _DUMMY = DEFAULT_HASHER.hash(secrets.token_urlsafe(32))
    return _DUMMY
