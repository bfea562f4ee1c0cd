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


class _Over:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str]] = []

    def over(self, user: str, domain: str) -> str | None:
        return f"{user} has sent 2 messages in the last hour" if len(self.recorded) >= 2 else None

    def record(self, user: str, domain: str) -> None:
        self.recorded.append((user, domain))


def test_a_client_logged_in_on_port_25_counts_against_the_same_limits() -> None:
    import asyncio

    import pytest

    from mailstack.envelope import Envelope
    from mailstack.inbound import InboundPolicy
    from mailstack.interfaces import ClientInfo
    from mailstack.smtp.reply import SMTPReplyError
    from mailstack.testing import FakeAccounts

    rate = _Over()
    policy = InboundPolicy(FakeAccounts(users=["ann@example.test"]), rate=rate)
    ann = ClientInfo("192.0.2.1", "client.example", True, "ann@example.test", False)
    stranger = ClientInfo("192.0.2.2", "mx.other.example", True, None, False)
    for _ in range(2):
        policy.check_sender(ann, "ann@example.test")
        asyncio.run(policy.check_message(ann, Envelope("Q1", "ann@example.test"), b"x\r\n"))
    with pytest.raises(SMTPReplyError) as refused:
        policy.check_sender(ann, "ann@example.test")
    assert (refused.value.reply.code, refused.value.reply.enhanced) == (451, "4.7.1")
    policy.check_sender(stranger, "someone@other.example")  # mail from other servers is not limited
    assert rate.recorded == [("ann@example.test", "example.test")] * 2
