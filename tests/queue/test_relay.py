"""Relay: MX order, next host on connection trouble or a refusing greeting, per-recipient results."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from mailstack.dns import MXHost
from mailstack.queue.relay import Relay
from mailstack.queue.spool import DELIVERED, FAILED, PENDING, QueuedMessage, RecipientState
from mailstack.smtp.client import ClientError, TransactionResult
from mailstack.smtp.reply import Reply


class FakeMX:
    async def lookup(self, domain):
        return [MXHost("mx1.remote.example", 10, ("192.0.2.1",)), MXHost("mx2.remote.example", 20, ("192.0.2.2",))]


def relay_with(answers):
    calls = []

    async def send(**kw):
        calls.append(kw["host"])
        answer = answers[kw["host"]]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return Relay(reactor=None, mx=FakeMX(), hostname="mail.example.test", port=25, tls_options=None,
                 send=send), calls


def run(relay, rcpts):
    msg = QueuedMessage("Q1", "s@example.test", 0.0, {r: RecipientState(r) for r in rcpts})
    out = []
    Deferred.fromCoroutine(relay.deliver("remote.example", msg, rcpts, b"x\r\n")).addBoth(out.append)
    return out[0]


def ok(rcpts, code=250):
    reply = Reply(code, "2.0.0" if code < 400 else "5.1.1", "done")
    return TransactionResult({r: reply for r in rcpts}, Reply(250, "2.0.0", "ok"), "mx", False)


def test_5xx_greeting_moves_on_to_the_next_mx():
    relay, calls = relay_with({
        "192.0.2.1": ClientError(Reply(554, "5.3.2", "no service"), False, "greeting"),
        "192.0.2.2": ok(["a@remote.example"]),
    })
    [state] = run(relay, ["a@remote.example"])
    assert calls == ["192.0.2.1", "192.0.2.2"] and state.status == DELIVERED


def test_5xx_to_mail_from_fails_without_trying_others():
    relay, calls = relay_with({"192.0.2.1": ClientError(Reply(550, "5.7.1", "sender refused"), False, "mail"),
                               "192.0.2.2": ok(["a@remote.example"])})
    [state] = run(relay, ["a@remote.example"])
    assert calls == ["192.0.2.1"] and state.status == FAILED and state.status_code == "5.7.1"


def test_every_host_refusing_defers_with_the_last_error():
    refused = ClientError(Reply(421, "4.4.1", "connection refused"), True, "connect")
    relay, calls = relay_with({"192.0.2.1": refused, "192.0.2.2": refused})
    [state] = run(relay, ["a@remote.example"])
    assert calls == ["192.0.2.1", "192.0.2.2"] and state.status == PENDING
    assert "connection refused" in state.last_error


def test_per_recipient_results_in_one_transaction():
    good = Reply(250, "2.1.5", "ok")
    bad = Reply(550, "5.1.1", "no such user")
    later = Reply(451, "4.2.0", "try later")
    result = TransactionResult({"a@remote.example": good, "b@remote.example": bad, "c@remote.example": later},
                               Reply(250, "2.0.0", "queued"), "mx1", True)
    relay, calls = relay_with({"192.0.2.1": result})
    states = run(relay, ["a@remote.example", "b@remote.example", "c@remote.example"])
    assert [s.status for s in states] == [DELIVERED, FAILED, PENDING]
    assert states[1].diagnostic == "550 5.1.1 no such user"


def test_an_mx_on_a_non_public_or_own_address_is_not_tried_unless_allowed() -> None:
    import ipaddress

    from mailstack.queue.relay import mx_filter

    relay, calls = relay_with({"192.0.2.1": ok(["a@remote.example"]), "192.0.2.2": ok(["a@remote.example"])})
    relay.mx_allowed = mx_filter([])  # 192.0.2.0/24 is for documentation: not a public address
    [state] = run(relay, ["a@remote.example"])
    assert calls == [] and state.status == PENDING and state.status_code == "4.4.4"
    assert state.last_error == ("the MX hosts of remote.example are not public addresses: "
                                "mx1.remote.example[192.0.2.1], mx2.remote.example[192.0.2.2]")
    relay.mx_allowed = mx_filter([ipaddress.ip_network("192.0.2.2/32")])  # a lab's own network
    [state] = run(relay, ["a@remote.example"])
    assert calls == ["192.0.2.2"] and state.status == DELIVERED


def test_the_filter_refuses_loopback_private_and_own_addresses_and_takes_public_ones() -> None:
    from mailstack.queue.relay import mx_filter

    allowed = mx_filter([], own=["203.0.113.9", "8.8.4.4"])
    refused = ("127.0.0.1", "::1", "10.1.2.3", "192.168.1.1", "169.254.1.1", "100.64.0.1", "0.0.0.0", "fd00::1",
               "8.8.4.4", "::ffff:127.0.0.1", "::ffff:8.8.4.4", "224.0.0.1", "fec0::1", "not an address")
    assert [a for a in refused if allowed(a)] == []
    assert allowed("8.8.8.8") and allowed("2001:4860:4860::8888")


def test_a_smarthost_on_loopback_is_used_whatever_the_filter_says() -> None:
    from mailstack.config import HostPort
    from mailstack.queue.relay import mx_filter

    calls = []

    async def send(**kw):
        calls.append(kw["host"])
        return ok(["a@remote.example"])

    relay = Relay(reactor=None, mx=FakeMX(), hostname="mail.example.test", port=25, tls_options=None, send=send,
                  smarthost=HostPort("127.0.0.1", 2525), mx_allowed=mx_filter([]))
    [state] = run(relay, ["a@remote.example"])
    assert calls == ["127.0.0.1"] and state.status == DELIVERED
