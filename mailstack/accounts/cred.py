"""twisted.cred checker for username/password logins against the account store.

Used by SMTP AUTH (RFC 4954), POP3 USER/PASS and IMAP LOGIN/AUTHENTICATE: each
hands an ``IUsernamePassword`` to a ``Portal`` that holds an
:class:`AccountChecker`. The avatar ID is the canonical address as ``str``
(``"alice@example.test"``), not ``bytes``; realms receive that string.

* argon2 verification is slow by design, so it runs in a thread pool
  (``deferToThreadPool``); the account lookup itself is an in-memory read on
  the reactor thread.
* A failure never says whether the account exists: an unknown or malformed
  username is verified against :func:`~mailstack.accounts.passwords.dummy_hash`
  and fails with the same ``UnauthorizedLogin`` after the same work.
* Clients that log in often (IMAP clients open several connections; POP3 polls)
  hit a short-lived cache of verified credentials. The cache key is an
  HMAC-SHA256 of address and password under a per-process random secret, so no
  password or plain hash of one is kept in memory; an entry holds its expiry and
  the stored hash it was verified against, and is used only while that hash is
  still the user's current one, so a password change takes effect at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Protocol, cast

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailstack.accounts.directory import canonical_address
from mailstack.accounts.passwords import dummy_hash, verify_password
from mailstack.accounts.store import AccountLookup
from mailstack.addresses import InvalidAddress

__all__ = ["AccountChecker"]

Verifier = Callable[[str, bytes], bool]


class Renewer(Protocol):
    """Where a hash made with older argon2 cost parameters is replaced after a good login."""

    def needs_rehash(self, password_hash: str) -> bool:
        """Cheap, on the reactor thread: are these not today's parameters?"""
        ...

    def rehash_password(self, address: str, old_hash: str, password: str) -> bool:
        """Blocking (hashes and writes): replace ``old_hash`` unless the password changed meanwhile."""
        ...


@implementer(ICredentialsChecker)
class AccountChecker:
    """Checks ``IUsernamePassword`` credentials; the avatar ID is the address (str).

    *reactor* delivers thread-pool results; *threadpool* runs argon2; *clock*
    (default: *reactor*) dates cache entries, which live *cache_ttl* seconds
    (0 disables the cache). At most *cache_size* entries are kept, oldest
    dropped first. *verify* is the password check, replaceable in tests.
    """

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(
        self,
        store: AccountLookup,
        reactor: IReactorFromThreads,
        threadpool: ThreadPool,
        clock: IReactorTime | None = None,
        cache_ttl: float = 300.0,
        *,
        cache_size: int = 10_000,
        verify: Verifier = verify_password,
        renew: Renewer | None = None,
    ) -> None:
        self._store = store
        self._reactor = reactor
        self._threadpool = threadpool
        self._clock = clock if clock is not None else cast(IReactorTime, reactor)
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._verify = verify
        self._renew = renew
        self._secret = secrets.token_bytes(32)
        # key -> (expiry, password hash verified against); insertion order = expiry order
        self._cache: dict[bytes, tuple[float, str]] = {}

    def requestAvatarId(  # type: ignore[override]  # avatar IDs are str addresses, see module docstring
        self, credentials: IUsernamePassword
    ) -> Deferred[str]:
        """Fire with the canonical address, or fail with UnauthorizedLogin."""
        return Deferred.fromCoroutine(self._check(credentials.username, credentials.password))

    async def _check(self, username: bytes | str, password: bytes | str) -> str:
        address = _address_from(username)
        secret = password.encode("utf-8") if isinstance(password, str) else password
        user = self._store.get_user(address) if address is not None else None
        if address is None or user is None:
            await deferToThreadPool(self._reactor, self._threadpool, self._verify_dummy, secret)
            self.log.debug("login failed for unknown user {username!r}", username=username)
            raise UnauthorizedLogin()
        key = self._cache_key(address, secret)
        if self._cached(key, user.password_hash):
            return address
        ok = await deferToThreadPool(self._reactor, self._threadpool, self._verify, user.password_hash, secret)
        if not ok:
            self.log.debug("login failed for {address}: wrong password", address=address)
            raise UnauthorizedLogin()
        self._remember(key, user.password_hash)
        if self._renew is not None and self._renew.needs_rehash(user.password_hash):
            self._renew_hash(address, user.password_hash, secret)
        return address

    def _renew_hash(self, address: str, old_hash: str, secret: bytes) -> None:
        """After a good login with a hash of older cost parameters, store a current one (in the
        background: the login does not wait, and a failure only leaves the old hash)."""
        assert self._renew is not None
        try:
            password = secret.decode("utf-8")
        except UnicodeDecodeError:
            return
        d = deferToThreadPool(self._reactor, self._threadpool, self._renew.rehash_password, address, old_hash,
                              password)
        d.addErrback(lambda f: self.log.failure("renewing the password hash of {address} failed", f,
                                                address=address))

    def _verify_dummy(self, secret: bytes) -> bool:
        """Spend the time of a real verification; always False."""
        self._verify(dummy_hash(), secret)
        return False

    # -- cache -------------------------------------------------------------------------

    def _cache_key(self, address: str, secret: bytes) -> bytes:
        return hmac.new(self._secret, address.encode("utf-8") + b"\0" + secret, hashlib.sha256).digest()

    def _cached(self, key: bytes, current_hash: str) -> bool:
        entry = self._cache.get(key)
        if entry is None:
            return False
        expiry, verified_hash = entry
        if self._clock.seconds() >= expiry or verified_hash != current_hash:
            del self._cache[key]
            return False
        return True

    def _remember(self, key: bytes, password_hash: str) -> None:
        if self._cache_ttl <= 0 or self._cache_size <= 0:
            return
        now = self._clock.seconds()
        self._cache.pop(key, None)
        self._cache[key] = (now + self._cache_ttl, password_hash)
        while self._cache:
            oldest = next(iter(self._cache))
            if len(self._cache) <= self._cache_size and self._cache[oldest][0] > now:
                break
            del self._cache[oldest]


def _address_from(username: bytes | str) -> str | None:
    """The canonical address for a login name, or None if it cannot be one."""
    try:
        text = username.decode("utf-8") if isinstance(username, bytes) else username
        return canonical_address(text)
    except (UnicodeDecodeError, InvalidAddress, AttributeError, TypeError):
        return None
