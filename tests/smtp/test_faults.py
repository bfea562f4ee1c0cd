"""Failure injection rules at MAIL, RCPT and the end of DATA, as an SMTP client sees them."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from mailstack.faults import FaultRules, RuleError, describe, parse_rule
from mailstack.testing import smtp_harness


def harness(*rules: dict, clock: Clock | None = None):
    clock = clock or Clock()
    faults = FaultRules(clock)
    for raw in rules:
        faults.add(parse_rule(raw))
    h = smtp_harness(clock=clock, faults=faults)
    h.read()
    h.replies("EHLO client.example\r\n")
    return h, faults


MESSAGE = "DATA\r\n", "Subject: hi\r\n\r\nhello\r\n.\r\n"


def send_message(h, sender="carol@remote.test", rcpt="alice@example.test"):
    out = h.replies(f"MAIL FROM:<{sender}>\r\n") + h.replies(f"RCPT TO:<{rcpt}>\r\n")
    return out


def test_reply_rule_at_rcpt_answers_its_code_for_matching_recipients_only():
    h, faults = harness({"action": "reply", "code": 550, "status": "5.1.1", "text": "No such user here",
                         "recipient": "bob@*"})
    assert h.replies("MAIL FROM:<carol@remote.test>\r\n") == ["250 2.1.0 Sender OK"]
    assert h.replies("RCPT TO:<Bob@Example.test>\r\n") == ["550 5.1.1 No such user here"]
    assert h.replies("RCPT TO:<alice@example.test>\r\n")[0].startswith("250 ")
    assert faults.rules[0].hits == 1


def test_times_limits_a_rule_so_the_retry_succeeds():
    h, _ = harness({"action": "reply", "code": 451, "times": 2})
    assert send_message(h)[-1].startswith("451 4.0.0")
    h.replies("RSET\r\n")
    assert send_message(h)[-1].startswith("451 4.0.0")
    h.replies("RSET\r\n")
    assert send_message(h)[-1].startswith("250 ")


def test_sender_rule_at_mail():
    h, _ = harness({"action": "reply", "stage": "mail", "code": 421, "status": "4.7.0", "sender": "*@spam.test"})
    assert h.replies("MAIL FROM:<x@spam.test>\r\n") == ["421 4.7.0 Refused by a fault rule"]
    assert h.replies("MAIL FROM:<x@ham.test>\r\n")[0].startswith("250 ")


def test_disconnect_after_data_stores_nothing_and_sends_no_reply():
    h, _ = harness({"action": "disconnect", "stage": "data", "domain": "example.test"})
    send_message(h)
    assert h.replies(MESSAGE[0]) == ["354 End data with <CR><LF>.<CR><LF>"]
    assert h.send(MESSAGE[1]) == b""
    assert h.transport.disconnecting
    assert h.router.deliveries == []


def test_reply_at_data_refuses_the_message():
    h, _ = harness({"action": "reply", "stage": "data", "code": 554, "status": "5.6.0", "text": "Content refused"})
    send_message(h)
    h.replies(MESSAGE[0])
    assert h.replies(MESSAGE[1]) == ["554 5.6.0 Content refused"]
    assert h.router.deliveries == []


def test_delay_holds_the_reply_then_goes_on():
    clock = Clock()
    h, _ = harness({"action": "delay", "seconds": 30, "recipient": "alice@example.test"}, clock=clock)
    h.replies("MAIL FROM:<carol@remote.test>\r\n")
    assert h.replies("RCPT TO:<alice@example.test>\r\nNOOP\r\n") == []  # the NOOP waits behind it
    clock.advance(29)
    assert h.read() == b""
    clock.advance(1)
    assert h.read().decode().splitlines() == ["250 2.1.5 Recipient OK", "250 2.0.0 OK"]


def test_greylist_defers_the_first_attempts_then_accepts():
    clock = Clock()
    h, _ = harness({"action": "greylist", "seconds": 300}, clock=clock)
    assert send_message(h)[-1].startswith("451 4.7.1 Greylisted")
    h.replies("RSET\r\n")
    clock.advance(299)
    assert send_message(h)[-1].startswith("451 4.7.1")
    h.replies("RSET\r\n")
    clock.advance(1)
    assert send_message(h)[-1].startswith("250 ")
    h.replies("RSET\r\n")
    assert send_message(h, sender="dave@remote.test")[-1].startswith("451 4.7.1")  # another triple


@pytest.mark.parametrize(("permanent", "expected"), [(False, "452 4.2.2"), (True, "552 5.2.2")])
def test_full_mailbox(permanent, expected):
    h, _ = harness({"action": "full", "permanent": permanent, "recipient": "alice@example.test"})
    assert send_message(h)[-1].startswith(expected)


def test_role_limits_a_rule_to_one_listener():
    h, _ = harness({"action": "reply", "code": 451, "role": "submission"})
    assert send_message(h)[-1].startswith("250 ")


def test_removed_rules_no_longer_apply():
    h, faults = harness({"action": "reply", "code": 451})
    assert send_message(h)[-1].startswith("451 ")
    h.replies("RSET\r\n")
    assert faults.remove("1") and not faults.remove("1")
    assert send_message(h)[-1].startswith("250 ")


@pytest.mark.parametrize(("raw", "key"), [
    ({}, "action"),
    ({"action": "explode"}, "action"),
    ({"action": "reply"}, "code"),
    ({"action": "reply", "code": 250}, "code"),
    ({"action": "reply", "code": 451, "status": "5.0.0"}, "status"),
    ({"action": "reply", "code": 451, "text": "a\r\nb"}, "text"),
    ({"action": "delay"}, "seconds"),
    ({"action": "delay", "seconds": 1e9}, "seconds"),
    ({"action": "greylist", "seconds": 5, "stage": "data"}, "stage"),
    ({"action": "full", "stage": "mail"}, "stage"),
    ({"action": "reply", "code": "451"}, "code"),
    ({"action": "reply", "code": True}, "code"),
    ({"action": "reply", "code": 451, "colour": "red"}, "colour"),
    ({"action": "reply", "code": 451, "times": -1}, "times"),
    ({"action": "reply", "code": 451, "role": "imap"}, "role"),
    ([], "rule"),
])
def test_bad_rules_name_the_field(raw, key):
    with pytest.raises(RuleError) as e:
        parse_rule(raw)
    assert e.value.key == key


def test_describe_says_what_a_rule_does():
    assert describe(parse_rule({"action": "greylist", "seconds": 60, "domain": "b.test", "times": 3})) == \
        "greylist 60 s at rcpt for domain=b.test, 3 time(s)"
