"""LocalDelivery: resolve once, filter, file with quota, announce."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred

from mailstack.accounts.store import User
from mailstack.delivery import LocalDelivery, resolve_route
from mailstack.envelope import Envelope
from mailstack.maildir import DeliveryError, MaildirDelivery
from mailstack.notify import MailboxEvents
from mailstack.queue.runner import QueueRunner, QueueSettings
from mailstack.queue.spool import Spool
from mailstack.routing import Router
from mailstack.testing import FakeAccounts, RecordingFilter, SyncReactor, SyncThreadPool

MESSAGE = b"Subject: x\r\n\r\nbody\r\n"


class NoRelay:
    async def deliver(self, *args):
        raise AssertionError("the relay is not started in these tests")


def make(tmp_path, *, users=("alice@example.test", "bob@example.test"), aliases=None, quotas=None, filter=None):
    clock = SyncReactor()
    accounts = FakeAccounts(users=users, aliases=aliases)
    for address, quota in (quotas or {}).items():
        accounts.users[address] = User(address, "", *quota) if isinstance(quota, tuple) else User(address, "", quota)
    maildir = MaildirDelivery(tmp_path / "maildirs", hostname="mail.example.test", reactor=clock,
                              threadpool=SyncThreadPool())
    events = MailboxEvents()
    published: list[tuple[str, str | None]] = []
    for user in users:
        events.subscribe(user, lambda address, folder: published.append((address, folder)))
    return LocalDelivery(accounts, maildir, events, filter), published


def stored(tmp_path, address, folder=None):
    local, domain = address.split("@")
    new = tmp_path / "maildirs" / domain / local / (f".{folder}" if folder else "") / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


def result_of(coro):
    results = []
    Deferred.fromCoroutine(coro).addBoth(results.append)
    [result] = results
    return result


def deliver(local, mailboxes, *, can_hold=True, sender="s@remote.example"):
    return result_of(local.deliver("QID", sender, mailboxes, MESSAGE, can_hold=can_hold))


def test_alias_to_several_local_users_gets_one_copy_each(tmp_path):
    local, published = make(tmp_path, aliases={"team@example.test": ["alice@example.test", "bob@example.test"]})
    route = local.route("team@example.test")
    assert route.local == ("alice@example.test", "bob@example.test") and route.remote == ()
    result = deliver(local, {m: route.original for m in route.local})
    assert result.delivered == {"alice@example.test": None, "bob@example.test": None} and result.held == {}
    for user in ("alice@example.test", "bob@example.test"):
        [copy] = stored(tmp_path, user)
        assert copy == b"Return-Path: <s@remote.example>\r\nDelivered-To: team@example.test\r\n" + MESSAGE
    assert published == [("alice@example.test", None), ("bob@example.test", None)]


def test_catch_all_resolves_to_its_mailbox(tmp_path):
    local, _ = make(tmp_path, aliases={"@example.test": ["bob@example.test"]})
    assert local.route("anything@example.test").local == ("bob@example.test",)
    assert local.route("alice@example.test").local == ("alice@example.test",)


def test_unknown_local_address_resolves_to_nowhere(tmp_path):
    local, _ = make(tmp_path)
    route = local.route("nobody@example.test")
    assert (route.local, route.remote) == ((), ())


def test_a_forward_off_site_goes_to_the_queue(tmp_path):
    local, published = make(tmp_path, aliases={"fwd@example.test": ["alice@example.test", "me@home.example"]})
    route = resolve_route(local.store, "fwd@example.test")
    assert route.local == ("alice@example.test",) and route.remote == ("me@home.example",)
    clock = SyncReactor()
    spool = Spool(tmp_path / "queue")
    spool.ensure()
    runner = QueueRunner(spool, QueueSettings("mail.example.test", (60.0,), 3600.0, 50, 4, 2), reactor=clock,
                         clock=clock, pool=SyncThreadPool(), local=local, relay=NoRelay())
    assert result_of(Router(local, queue=runner).deliver(Envelope("QF", "s@remote.example", [route]), MESSAGE)) is None
    assert len(stored(tmp_path, "alice@example.test")) == 1
    assert spool.ids() == ["QF"] and list(spool.load("QF").recipients) == ["me@home.example"]
    assert published == [("alice@example.test", None)]


def test_a_filter_files_a_copy_into_another_folder(tmp_path):
    junk = RecordingFilter({"bob@example.test": "Junk"})
    local, published = make(tmp_path, filter=junk)
    result = deliver(local, {"alice@example.test": "alice@example.test", "bob@example.test": "bob@example.test"})
    assert result.delivered == {"alice@example.test": None, "bob@example.test": "Junk"}
    assert len(stored(tmp_path, "alice@example.test")) == 1
    assert stored(tmp_path, "bob@example.test") == [] and len(stored(tmp_path, "bob@example.test", "Junk")) == 1
    assert sorted(published, key=str) == [("alice@example.test", None), ("bob@example.test", "Junk")]
    assert [(c.queue_id, c.sender, c.mailbox, c.message) for c in junk.seen] == [
        ("QID", "s@remote.example", "alice@example.test", MESSAGE),
        ("QID", "s@remote.example", "bob@example.test", MESSAGE)]


def test_a_folder_the_layout_refuses_falls_back_to_inbox(tmp_path):
    local, _ = make(tmp_path, filter=RecordingFilter({"alice@example.test": "../escape"}))
    result = deliver(local, {"alice@example.test": "alice@example.test"})
    assert result.delivered == {"alice@example.test": None}
    assert len(stored(tmp_path, "alice@example.test")) == 1


def test_a_full_mailbox_among_several_is_held_and_the_others_get_the_message(tmp_path):
    local, published = make(tmp_path, quotas={"bob@example.test": 10})
    result = deliver(local, {"alice@example.test": "alice@example.test", "bob@example.test": "bob@example.test"})
    assert result.delivered == {"alice@example.test": None}
    assert list(result.held) == ["bob@example.test"] and result.held["bob@example.test"].status == "5.2.2"
    assert len(stored(tmp_path, "alice@example.test")) == 1 and stored(tmp_path, "bob@example.test") == []
    assert published == [("alice@example.test", None)]


def test_a_mailbox_at_its_message_limit_is_held_for_later(tmp_path):
    local, _ = make(tmp_path, quotas={"bob@example.test": (0, 1)})  # no size limit, one message
    assert deliver(local, {"bob@example.test": "bob@example.test"}).delivered == {"bob@example.test": None}
    result = deliver(local, {"alice@example.test": "alice@example.test", "bob@example.test": "bob@example.test"})
    assert result.delivered == {"alice@example.test": None}
    assert result.held["bob@example.test"].status == "4.2.2"  # full for now: the queue tries again
    assert len(stored(tmp_path, "bob@example.test")) == 1


@pytest.mark.parametrize("can_hold, mailboxes", [
    (True, ["bob@example.test"]),  # alone: nobody else to deliver to, the message is refused
    (False, ["alice@example.test", "bob@example.test"]),  # no queue to hold it: all or nothing
])
def test_a_full_mailbox_fails_the_message_when_it_cannot_be_held(tmp_path, can_hold, mailboxes):
    local, published = make(tmp_path, quotas={"bob@example.test": 10})
    failure = deliver(local, {m: m for m in mailboxes}, can_hold=can_hold)
    assert failure.check(DeliveryError) and failure.value.status == "5.2.2"
    assert stored(tmp_path, "alice@example.test") == [] and published == []


def test_every_mailbox_full_fails_the_message(tmp_path):
    local, _ = make(tmp_path, quotas={"alice@example.test": 10, "bob@example.test": 10})
    failure = deliver(local, {"alice@example.test": "alice@example.test", "bob@example.test": "bob@example.test"})
    assert failure.check(DeliveryError)


def test_a_failure_in_a_second_folder_after_the_first_was_filed_is_held(tmp_path):
    # The INBOX copy is visible already, so bob's failure cannot fail the whole message.
    local, _ = make(tmp_path, quotas={"bob@example.test": 10}, filter=RecordingFilter({"bob@example.test": "Junk"}))
    result = deliver(local, {"alice@example.test": "alice@example.test", "bob@example.test": "bob@example.test"},
                     can_hold=False)
    assert result.delivered == {"alice@example.test": None} and list(result.held) == ["bob@example.test"]
