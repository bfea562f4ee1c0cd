"""Login throttling and connection limits per client address (IPv6 by /64)."""

from __future__ import annotations

from twisted.internet.task import Clock

from mailstack.throttle import AuthThrottle, ConnectionLimiter, client_key


def test_growing_delay_then_lockout_then_expiry():
    clock = Clock()
    t = AuthThrottle(clock, max_failures=3, lockout=900)
    assert [t.record_failure("192.0.2.1") for _ in range(2)] == [0.5, 1.0]
    assert not t.is_locked("192.0.2.1")
    t.record_failure("192.0.2.1")
    assert t.is_locked("192.0.2.1") and not t.is_locked("192.0.2.2")
    clock.advance(901)
    assert not t.is_locked("192.0.2.1")


def test_a_good_login_does_not_reset_the_failures():
    t = AuthThrottle(Clock(), max_failures=3, lockout=900)
    for _ in range(2):
        t.record_failure("192.0.2.1")
        t.record_success("192.0.2.1")
    t.record_failure("192.0.2.1")
    assert t.is_locked("192.0.2.1")


def test_ipv6_clients_are_counted_by_their_64():
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    t = AuthThrottle(Clock(), max_failures=2, lockout=900)
    t.record_failure("2001:db8:1:2::1")
    t.record_failure("2001:db8:1:2::99")
    assert t.is_locked("2001:db8:1:2::1234") and not t.is_locked("2001:db8:1:3::1")
    limiter = ConnectionLimiter(2)
    assert limiter.acquire("2001:db8:1:2::1") and limiter.acquire("2001:db8:1:2::2")
    assert not limiter.acquire("2001:db8:1:2::3")
    limiter.release("2001:db8:1:2::1")
    assert limiter.acquire("2001:db8:1:2::4")


def test_expired_records_are_swept_when_many_accumulate():
    clock = Clock()
    t = AuthThrottle(clock, max_failures=5, lockout=60)
    t.PRUNE_AT = 10
    for i in range(10):
        t.record_failure(f"192.0.2.{i}")
    clock.advance(61)
    t.record_failure("198.51.100.1")
    assert len(t._records) == 1


def test_thousands_of_failures_keep_the_longest_delay():
    t = AuthThrottle(Clock(), max_failures=1_000_000, lockout=900.0)
    delays = [t.record_failure("192.0.2.1") for _ in range(2000)]
    assert delays[-1] == 8.0 and max(delays) == 8.0
