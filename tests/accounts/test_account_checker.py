"""Tests for mailstack.accounts.cred.AccountChecker (twisted.cred logins)."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

from mailstack.accounts import AccountChecker, SQLiteAccountStore
from mailstack.accounts.passwords import dummy_hash, verify_password

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class ImmediateReactor:
    """callFromThread runs the call at once (with SyncThreadPool: fully synchronous)."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class QueueingReactor:
    """callFromThread only records calls; the test runs them on its own thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.lock = threading.Lock()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        with self.lock:
            self.calls.append((f, args))

    def run_pending(self) -> None:
        with self.lock:
            calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)


class SyncThreadPool:
    """Runs the work at once in the calling thread, like ThreadPool's API."""

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        try:
            result = f(*a, **kw)
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)


class CountingVerifier:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, stored_hash: str, password: bytes) -> bool:
        self.calls.append(stored_hash)
        self.threads.append(threading.current_thread())
        if stored_hash == dummy_hash():
            return False  # always fails; spare the tests the real cost
        return verify_password(stored_hash, password)


def creds(username: str | bytes, password: str | bytes) -> UsernamePassword:
    return UsernamePassword(username, password)  # type: ignore[arg-type]


class CheckerTestsBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        self.store = SQLiteAccountStore(self.dir / "accounts.sqlite3", hasher=CHEAP)
        self.addCleanup(self.store.close)
        self.store.ensure_domains(["example.test"])
        self.store.add_user("alice@example.test", "right")
        self.clock = Clock()
        self.verify = CountingVerifier()
        self.checker = self.make_checker()

    def make_checker(self, **kwargs: Any) -> AccountChecker:
        return AccountChecker(
            self.store, ImmediateReactor(), SyncThreadPool(), self.clock, verify=self.verify, **kwargs
        )  # type: ignore[arg-type]

    def login(self, username: str | bytes, password: str | bytes, checker: AccountChecker | None = None) -> Any:
        return (checker or self.checker).requestAvatarId(creds(username, password))

    def assert_ok(self, username: str | bytes, password: str | bytes) -> None:
        self.assertEqual(self.successResultOf(self.login(username, password)), "alice@example.test")

    def assert_refused(self, username: str | bytes, password: str | bytes) -> None:
        self.failureResultOf(self.login(username, password), UnauthorizedLogin)


class AccountCheckerTests(CheckerTestsBase):
    def test_provides_credentials_checker(self) -> None:
        verifyObject(ICredentialsChecker, self.checker)
        self.assertEqual(self.checker.credentialInterfaces, (IUsernamePassword,))

    def test_right_password_gives_canonical_address_as_str(self) -> None:
        self.assert_ok(b"alice@example.test", b"right")
        self.assertEqual(len(self.verify.calls), 1)

    def test_username_is_case_insensitive_and_may_be_str(self) -> None:
        self.assert_ok("Alice@EXAMPLE.test", "right")

    def test_utf8_username(self) -> None:
        self.store.add_user("jörg@example.test", "pässwort")
        d = self.login("Jörg@example.test".encode(), "pässwort".encode())
        self.assertEqual(self.successResultOf(d), "jörg@example.test")

    def test_wrong_password_is_refused(self) -> None:
        self.assert_refused(b"alice@example.test", b"wrong")
        self.assert_refused(b"alice@example.test", b"")

    def test_unknown_user_pays_a_verification_against_the_dummy_hash(self) -> None:
        self.assert_refused(b"nobody@example.test", b"right")
        self.assertEqual(self.verify.calls, [dummy_hash()])

    def test_malformed_usernames_are_refused_after_the_same_work(self) -> None:
        for username in [b"\xff\xfe@example.test", b"a/b@example.test", b"no-at-sign", b"", b"alice@example.test\x00"]:
            self.assert_refused(username, b"right")
        self.assertEqual(self.verify.calls, [dummy_hash()] * 5)

    def test_unknown_and_wrong_password_fail_alike(self) -> None:
        unknown = self.failureResultOf(self.login(b"nobody@example.test", b"x"), UnauthorizedLogin)
        wrong = self.failureResultOf(self.login(b"alice@example.test", b"x"), UnauthorizedLogin)
        self.assertEqual(str(unknown.value), str(wrong.value))

    def test_portal_login_hands_the_address_to_the_realm(self) -> None:
        class IMailbox(Interface):
            pass

        seen: list[object] = []

        @implementer(IRealm)
        class Realm:
            def requestAvatar(self, avatar_id: object, mind: object, *interfaces: object) -> Any:
                seen.append(avatar_id)
                return (IMailbox, object(), lambda: None)

        portal = Portal(Realm(), [self.checker])
        self.successResultOf(portal.login(creds(b"alice@example.test", b"right"), None, IMailbox))
        self.assertEqual(seen, ["alice@example.test"])


class CacheTests(CheckerTestsBase):
    def test_hit_within_ttl_does_not_verify_again(self) -> None:
        self.assert_ok(b"alice@example.test", b"right")
        self.clock.advance(299)
        self.assert_ok(b"ALICE@example.test", b"right")
        self.assertEqual(len(self.verify.calls), 1)

    def test_entry_expires_after_ttl(self) -> None:
        self.assert_ok(b"alice@example.test", b"right")
        self.clock.advance(300)
        self.assert_ok(b"alice@example.test", b"right")
        self.assertEqual(len(self.verify.calls), 2)

    def test_wrong_passwords_are_never_cached(self) -> None:
        self.assert_ok(b"alice@example.test", b"right")
        self.assert_refused(b"alice@example.test", b"wrong")
        self.assert_refused(b"alice@example.test", b"wrong")
        self.assertEqual(len(self.verify.calls), 3)

    def test_password_change_invalidates_the_cached_login(self) -> None:
        self.assert_ok(b"alice@example.test", b"right")
        self.store.set_password("alice@example.test", "changed")
        self.assert_refused(b"alice@example.test", b"right")
        self.assert_ok(b"alice@example.test", b"changed")
        self.assertEqual(len(self.verify.calls), 3)

    def test_removed_user_cannot_log_in_from_the_cache(self) -> None:
        self.assert_ok(b"alice@example.test", b"right")
        self.store.remove_user("alice@example.test")
        self.assert_refused(b"alice@example.test", b"right")

    def test_zero_ttl_disables_the_cache(self) -> None:
        self.checker = self.make_checker(cache_ttl=0)
        self.assert_ok(b"alice@example.test", b"right")
        self.assert_ok(b"alice@example.test", b"right")
        self.assertEqual(len(self.verify.calls), 2)

    def test_cache_keeps_at_most_cache_size_entries(self) -> None:
        self.store.add_user("bob@example.test", "pw")
        self.checker = self.make_checker(cache_size=1)
        self.assert_ok(b"alice@example.test", b"right")
        self.successResultOf(self.login(b"bob@example.test", b"pw"))  # pushes alice out
        self.assert_ok(b"alice@example.test", b"right")
        self.assertEqual(len(self.verify.calls), 3)


class RealThreadPoolTests(CheckerTestsBase):
    def test_verification_runs_on_a_pool_thread(self) -> None:
        reactor = QueueingReactor()
        pool = ThreadPool(minthreads=1, maxthreads=1, name="auth-test")
        pool.start()
        checker = AccountChecker(self.store, reactor, pool, self.clock, verify=self.verify)  # type: ignore[arg-type]
        try:
            ok = self.login(b"alice@example.test", b"right", checker)
            bad = self.login(b"alice@example.test", b"wrong", checker)
            self.assertNoResult(ok)
        finally:
            pool.stop()  # waits for the queued work to finish
        reactor.run_pending()
        self.assertEqual(self.successResultOf(ok), "alice@example.test")
        self.failureResultOf(bad, UnauthorizedLogin)
        self.assertEqual(len(self.verify.threads), 2)
        self.assertNotIn(threading.current_thread(), self.verify.threads)


class HashRenewalTests(SynchronousTestCase):
    """A hash made with older cost parameters is replaced after a good login, and only then."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        self.old = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        self.new = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
        self.store = SQLiteAccountStore(self.dir / "accounts.sqlite3", hasher=self.old)
        self.addCleanup(self.store.close)
        self.store.ensure_domains(["example.test"])
        self.store.add_user("alice@example.test", "right")
        self.store._hasher = self.new  # the parameters changed since alice's password was set
        self.checker = AccountChecker(self.store, ImmediateReactor(), SyncThreadPool(), Clock(),
                                      renew=self.store)  # type: ignore[arg-type]

    def stored_hash(self) -> str:
        user = self.store.get_user("alice@example.test")
        assert user is not None
        return user.password_hash

    def test_good_login_renews_an_old_hash(self) -> None:
        before = self.stored_hash()
        self.assertTrue(self.store.needs_rehash(before))
        self.successResultOf(self.checker.requestAvatarId(creds(b"alice@example.test", b"right")))
        after = self.stored_hash()
        self.assertNotEqual(after, before)
        self.assertIn("m=16,t=2,p=1", after)
        self.assertFalse(self.store.needs_rehash(after))
        self.successResultOf(self.checker.requestAvatarId(creds(b"alice@example.test", b"right")))

    def test_failed_login_renews_nothing(self) -> None:
        before = self.stored_hash()
        self.failureResultOf(self.checker.requestAvatarId(creds(b"alice@example.test", b"wrong")), UnauthorizedLogin)
        self.assertEqual(self.stored_hash(), before)

    def test_a_password_changed_meanwhile_is_not_overwritten(self) -> None:
        old_hash = self.stored_hash()
        self.store.set_password("alice@example.test", "changed")
        self.assertFalse(self.store.rehash_password("alice@example.test", old_hash, "right"))
        self.assertTrue(verify_password(self.stored_hash(), "changed"))
