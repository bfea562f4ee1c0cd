"""A failed login is answered at the same moment whatever made it fail (no account-name oracle)."""

from __future__ import annotations

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mailstack.auth import Authenticator, Outcome
from mailstack.throttle import AuthThrottle


class SlowChecker:
    """Refuses every login after ``cost[username]`` seconds of clock time (a hash of that cost)."""

    def __init__(self, clock: Clock, cost: dict[bytes, float]) -> None:
        self.clock = clock
        self.cost = cost

    def requestAvatarId(self, credentials):
        d: Deferred[bytes] = Deferred()
        self.clock.callLater(self.cost[credentials.username], d.errback, UnauthorizedLogin())
        return d


class FailureTimingTests(SynchronousTestCase):
    def answered_after(self, username: str, cost: float) -> float:
        clock = Clock()
        auth = Authenticator(SlowChecker(clock, {username.encode(): cost}), AuthThrottle(clock, 10, 900), clock)
        d = Deferred.fromCoroutine(auth.login("192.0.2.1", username, "guess"))
        step = 0.001
        while not d.called:
            clock.advance(step)
        self.assertEqual(self.successResultOf(d).outcome, Outcome.FAILED)
        return clock.seconds()

    def test_cheap_and_costly_checks_fail_at_the_same_moment(self) -> None:
        unknown = self.answered_after("nobody@example.test", 0.026)  # the dummy hash
        old_hash = self.answered_after("alice@example.test", 0.182)  # a costlier stored hash
        self.assertAlmostEqual(unknown, old_hash, delta=0.002)
        self.assertAlmostEqual(unknown, 0.5, delta=0.002)  # the first failure's delay, from the start
