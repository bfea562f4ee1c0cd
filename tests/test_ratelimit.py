"""Messages an hour at submission: the window slides, and a restart does not reset it."""

from __future__ import annotations

from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from mailstack.ratelimit import WINDOW, SendLimits


def limits(path, clock: Clock, per_user: int = 2, per_domain: int = 0) -> SendLimits:
    return SendLimits(path, per_user=per_user, per_domain=per_domain, clock=clock.seconds,
                      run=lambda fn, *args: maybeDeferred(fn, *args))


def test_a_user_is_stopped_at_the_limit_and_free_again_an_hour_after_the_first(tmp_path) -> None:
    clock = Clock()
    clock.advance(1_000_000)
    rate = limits(tmp_path / "rate.sqlite3", clock)
    rate.record("ann@example.test", "example.test")
    clock.advance(600)
    rate.record("ann@example.test", "example.test")
    assert rate.over("ann@example.test", "example.test") == "ann@example.test has sent 2 messages in the last hour"
    assert rate.over("bo@example.test", "example.test") is None  # per user
    clock.advance(WINDOW - 600)  # the first one leaves the window
    assert rate.over("ann@example.test", "example.test") is None


def test_the_count_survives_a_restart_and_a_domain_limit_covers_all_its_users(tmp_path) -> None:
    clock = Clock()
    clock.advance(1_000_000)
    path = tmp_path / "rate.sqlite3"
    rate = limits(path, clock, per_user=0, per_domain=3)
    for user in ("ann@home.example", "bo@home.example", "cy@home.example"):
        rate.record(user, "home.example")
    rate.close()
    clock.advance(60)
    again = limits(path, clock, per_user=0, per_domain=3)
    assert again.over("dee@home.example", "home.example") == "home.example has sent 3 messages in the last hour"
    assert again.over("dee@other.example", "other.example") is None
    again.close()
