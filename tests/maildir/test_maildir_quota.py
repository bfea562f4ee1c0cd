"""Mailbox quotas (mailstack.maildir.quota and MaildirDelivery.check_quota)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailstack.maildir import DeliveryError, MaildirDelivery, Recipient
from mailstack.maildir.quota import Usage, UsageCache, mailbox_usage

PREFIX = len(b"Return-Path: <>\r\nDelivered-To: bob@example.test\r\n")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def delivery(tmp_path: Path, clock: FakeClock) -> MaildirDelivery:
    return MaildirDelivery(tmp_path / "maildirs", hostname="h", monotonic=clock)


def bob(quota: int) -> Recipient:
    return Recipient("bob@example.test", quota=quota)


def write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def test_usage_sums_new_cur_and_folders_from_names_with_stat_fallback(
    tmp_path: Path,
) -> None:
    box = tmp_path / "box"
    write(box / "new" / "1.M1P1Q1R0.h,S=100", 1)  # the name wins over the real size
    write(box / "cur" / "2.M1P1Q2R0.h,S=200:2,S", 1)
    write(box / "cur" / "3.legacy.h:2,", 50)  # no S=: stat
    write(box / "tmp" / "4.M1P1Q3R0.h,S=999", 1)  # in progress: not counted
    write(box / "new" / ".hidden,S=999", 1)  # not a message
    write(box / ".Sent" / "cur" / "5.M1P1Q4R0.h,S=1000:2,S", 1)
    write(box / ".Archive.2024" / "new" / "6.M1P1Q5R0.h,S=7", 1)
    assert mailbox_usage(str(box)) == Usage(100 + 200 + 50 + 1000 + 7, 5)


def test_usage_of_a_missing_mailbox_is_zero(tmp_path: Path) -> None:
    assert mailbox_usage(str(tmp_path / "nope")) == Usage(0, 0)


def test_cache_is_reused_until_stale_then_rescanned(clock: FakeClock) -> None:
    scans: list[str] = []
    sizes = iter([Usage(10, 1), Usage(20, 3)])
    cache = UsageCache(
        ttl=5.0, monotonic=clock, scan=lambda m: (scans.append(m), next(sizes))[1]
    )
    assert cache.usage("m") == (10, 1)
    cache.add("m", 5)
    clock.now += 4.9
    assert cache.usage("m") == (15, 2)
    clock.now += 0.2
    assert cache.usage("m") == (20, 3)
    assert scans == ["m", "m"]


def test_add_before_any_scan_is_ignored(clock: FakeClock) -> None:
    cache = UsageCache(monotonic=clock, scan=lambda m: Usage(7, 1))
    cache.add("m", 100)
    assert cache.usage("m") == (7, 1)


def test_delivery_within_quota_succeeds_and_is_counted(
    delivery: MaildirDelivery,
) -> None:
    size = 100
    delivery.deliver_sync("", [bob(2 * (PREFIX + size))], b"x" * size)
    delivery.deliver_sync("", [bob(2 * (PREFIX + size))], b"x" * size)  # exactly full
    with pytest.raises(DeliveryError) as info:
        delivery.deliver_sync("", [bob(2 * (PREFIX + size))], b"x")
    assert (info.value.temporary, info.value.status) == (True, "4.2.2")
    assert str(info.value) == "mailbox full"


def test_message_bigger_than_the_whole_quota_is_permanent_5_2_2(
    delivery: MaildirDelivery,
) -> None:
    with pytest.raises(DeliveryError) as info:
        delivery.deliver_sync("", [bob(1000)], b"x" * 1000)  # + headers > 1000
    assert (info.value.temporary, info.value.status) == (False, "5.2.2")
    assert not (delivery.root / "example.test").exists()


def test_a_message_limit_refuses_the_next_message_for_now(delivery: MaildirDelivery, clock: FakeClock) -> None:
    limited = Recipient("bob@example.test", max_messages=2)
    delivery.deliver_sync("", [limited], b"x")
    [second] = delivery.deliver_sync("", [limited], b"x")
    with pytest.raises(DeliveryError) as info:
        delivery.deliver_sync("", [limited], b"x")
    assert (info.value.temporary, info.value.status) == (True, "4.2.2")  # mailbox full: try later
    os.unlink(second)  # a client removed one
    clock.now += 6
    delivery.deliver_sync("", [limited], b"x")
    with pytest.raises(ValueError):
        Recipient("bob@example.test", max_messages=-1)


def test_zero_quota_is_unlimited(delivery: MaildirDelivery) -> None:
    delivery.deliver_sync("", [bob(0)], b"x" * 100_000)


def test_expunged_mail_frees_space_once_the_cache_is_stale(
    delivery: MaildirDelivery, clock: FakeClock
) -> None:
    [path] = delivery.deliver_sync("", [bob(1000)], b"x" * 600)
    os.unlink(path)  # an IMAP client expunged it
    with pytest.raises(DeliveryError):
        delivery.deliver_sync("", [bob(1000)], b"x" * 600)
    clock.now += 6
    delivery.deliver_sync("", [bob(1000)], b"x" * 600)


def test_one_full_mailbox_fails_the_whole_delivery(delivery: MaildirDelivery) -> None:
    delivery.deliver_sync("", [bob(1000)], b"x" * 600)
    with pytest.raises(DeliveryError) as info:
        delivery.deliver_sync(
            "", [Recipient("amy@example.test"), bob(1000)], b"x" * 600
        )
    assert info.value.recipient == "bob@example.test"
    assert not (delivery.root / "example.test" / "amy").exists()


def test_folders_count_towards_the_mailbox_quota(delivery: MaildirDelivery) -> None:
    delivery.deliver_sync("", [bob(1000)], b"x" * 600, folder="Sent")
    with pytest.raises(DeliveryError):
        delivery.deliver_sync("", [bob(1000)], b"x" * 600)


def test_check_quota_at_rcpt_time_with_the_size_parameter(
    delivery: MaildirDelivery,
) -> None:
    delivery.check_quota(bob(1000), 1000)
    delivery.deliver_sync("", [bob(1000)], b"x" * 600)
    delivery.check_quota(bob(1000), 100)
    with pytest.raises(DeliveryError) as full:
        delivery.check_quota(bob(1000), 500)
    assert full.value.status == "4.2.2"
    with pytest.raises(DeliveryError) as too_big:
        delivery.check_quota(bob(1000), 1001)
    assert too_big.value.status == "5.2.2"
    with pytest.raises(DeliveryError) as bad:
        delivery.check_quota(Recipient("../x@example.test", quota=1), 1)
    assert bad.value.status == "5.1.3"


def test_negative_quota_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        Recipient("bob@example.test", quota=-1)
