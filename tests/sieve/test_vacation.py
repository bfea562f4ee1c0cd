"""Sieve vacation (RFC 5230) and vacation-seconds (RFC 6131): checking and the decision to reply."""

from __future__ import annotations

import pytest

from mailstack.sieve.interpreter import Delivery, MessageView, SieveRuntimeError, compile_script
from mailstack.sieve.vacation import VACATION_DEFAULT, VACATION_MAX, Vacation, derived_handle

from .test_parser import refused_at

HEADER = (b"From: Coyote <coyote@desert.example.org>\r\n"
          b"To: Road Runner <roadrunner+work@acme.example.com>\r\n"
          b"Subject: come over for dinner\r\n"
          b"Message-ID: <1@desert.example.org>\r\n\r\n")


def view(header: bytes = HEADER, sender: str = "coyote@desert.example.org",
         recipient: str = "roadrunner+work@acme.example.com") -> MessageView:
    return MessageView(header, 100, sender, recipient)


def reply(script: str, **kw) -> Vacation | None:
    return compile_script(script).run(view(**kw)).vacation


VACATION = 'require "vacation"; vacation "I am away";'


def test_a_reply_to_the_envelope_sender_and_implicit_keep_stays():
    outcome = compile_script(VACATION).run(view())
    assert outcome.deliveries == [Delivery(None)]  # RFC 5230 §4.7: vacation does not cancel implicit keep
    assert outcome.vacation == Vacation(reason="I am away", subject=None, from_=None, mime=False,
                                        handle=derived_handle("I am away", None, None, False),
                                        seconds=VACATION_DEFAULT, to="coyote@desert.example.org")


def test_rfc_5230_section_4_8_examples():
    found = reply('require "vacation";\nvacation :days 23 :addresses ["tjs@example.edu",\n'
                  '  "ts4z@landru.example.edu"]\n"I\'m away until October 19.\n'
                  'If it\'s an emergency, call 911, I guess." ;',
                  header=b"To: tjs@example.edu\r\n\r\n", recipient="tjs4@example.edu")
    assert found is not None and found.seconds == 23 * 86400
    script = ('require "vacation";\nif header :contains "from" "boss@example.edu" {\n'
              '  redirect "pleeb@isp.example.org";\n} else {\n  vacation "Sorry, I\'m away";\n}')
    outcome = compile_script(script).run(view(header=b"From: boss@example.edu\r\nTo: roadrunner@acme.example.com\r\n\r\n"))
    assert outcome.redirects == ["pleeb@isp.example.org"] and outcome.vacation is None
    assert compile_script(script).run(view()).vacation is not None


def test_handles_rfc_5230_section_4_2():
    script = ('require "vacation";\nif header :contains "subject" "cyrus" {\n'
              '  vacation "I\'m out -- send mail to cyrus-bugs";\n} else {\n'
              '  vacation "I\'m out -- call me at +1 304 555 0123";\n}')
    first = reply(script, header=HEADER.replace(b"come over for dinner", b"Cyrus bug"))
    second = reply(script)
    assert first is not None and second is not None and first.handle != second.handle
    lunch = ('require "vacation";\nif header :contains "subject" "lunch" {\n'
             '  vacation :handle "ran-away" "I\'m out and can\'t meet for lunch";\n} else {\n'
             '  vacation :handle "ran-away" "I\'m out";\n}')
    a, b = reply(lunch, header=HEADER.replace(b"come over for dinner", b"lunch?")), reply(lunch)
    assert a is not None and b is not None and a.handle == b.handle == "ran-away" and a.reason != b.reason
    # the same text in different arguments is a different response
    assert derived_handle("x", "y", None, False) != derived_handle("y", "x", None, False)
    assert derived_handle("x", None, None, False) != derived_handle("x", None, None, True)


def test_subject_from_and_mime():
    found = reply('require "vacation"; vacation :subject "Gone fishing" :from "Road Runner <rr@acme.example.com>" '
                  ':mime text:\nContent-Type: text/plain\n\nBack soon.\n.\n;')
    assert found is not None
    assert (found.subject, found.from_, found.mime) == ("Gone fishing", "Road Runner <rr@acme.example.com>", True)
    assert found.reason == "Content-Type: text/plain\r\n\r\nBack soon.\r\n"


@pytest.mark.parametrize(("days", "seconds"), [(0, 86400), (1, 86400), (7, 7 * 86400), (1000, VACATION_MAX)])
def test_days_clamped(days, seconds):
    found = reply(f'require "vacation"; vacation :days {days} "away";')
    assert found is not None and found.seconds == seconds


@pytest.mark.parametrize(("given", "seconds"), [(0, 0), (1800, 1800), (2**31 - 1, VACATION_MAX)])
def test_seconds_rfc_6131(given, seconds):
    found = reply(f'require "vacation-seconds"; vacation :handle "auto-resp" :seconds {given} "received";')
    assert found is not None and found.seconds == seconds  # 0: a reply to every message (RFC 6131 §2)


@pytest.mark.parametrize(("header", "sender", "why"), [
    (HEADER, "", "null sender"),
    (HEADER + b"", "MAILER-DAEMON@desert.example.org", "daemon"),
    (HEADER, "owner-list@desert.example.org", "owner-"),
    (HEADER, "list-request@desert.example.org", "-request"),
    (HEADER, "LISTSERV@desert.example.org", "listserv"),
    (HEADER, "majordomo@desert.example.org", "majordomo"),
    (HEADER, "roadrunner@acme.example.com", "the user themself"),
    (b"Auto-Submitted: auto-replied\r\n" + HEADER, "coyote@desert.example.org", "auto-submitted"),
    (b"Auto-Submitted: auto-generated; owner-email=x@y\r\n" + HEADER, "coyote@desert.example.org", "auto"),
    (b"Precedence: bulk\r\n" + HEADER, "coyote@desert.example.org", "bulk"),
    (b"Precedence: JUNK\r\n" + HEADER, "coyote@desert.example.org", "junk"),
    (b"Precedence: list\r\n" + HEADER, "coyote@desert.example.org", "list"),
    (b"List-Id: <dev.lists.example.org>\r\n" + HEADER, "coyote@desert.example.org", "List-Id"),
    (b"List-Unsubscribe: <mailto:u@x>\r\n" + HEADER, "coyote@desert.example.org", "List-Unsubscribe"),
    (b"List-Archive: <http://x>\r\n" + HEADER, "coyote@desert.example.org", "List-Archive"),
    (b"List-Post: NO\r\n" + HEADER, "coyote@desert.example.org", "List-Post"),
    (HEADER.replace(b"roadrunner+work@acme", b"someone@acme"), "coyote@desert.example.org", "not addressed"),
])
def test_no_reply(header, sender, why):
    outcome = compile_script(VACATION).run(view(header=header, sender=sender))
    assert outcome.vacation is None, why
    assert outcome.deliveries == [Delivery(None)]


@pytest.mark.parametrize("header", [
    b"To: roadrunner@acme.example.com\r\n\r\n",  # without the detail
    b"To: x@y.example\r\nCc: ROADRUNNER+work@acme.example.com\r\n\r\n",
    b"Bcc: roadrunner@acme.example.com\r\n\r\n",
    b"Resent-To: roadrunner@acme.example.com\r\n\r\n",
    b"Resent-Cc: a@b.example, roadrunner@acme.example.com\r\n\r\n",
    b"Resent-Bcc: roadrunner+work@acme.example.com\r\n\r\n",
    b"Auto-Submitted: no\r\nTo: roadrunner@acme.example.com\r\n\r\n",
    b"Auto-Submitted: No (a person)\r\nTo: roadrunner@acme.example.com\r\n\r\n",
])
def test_reply_when_addressed(header):
    assert reply(VACATION, header=header) is not None


def test_addresses_count_as_the_users():
    header = b"To: Road Runner <rr@home.example.net>\r\n\r\n"
    assert reply(VACATION, header=header) is None
    assert reply('require "vacation"; vacation :addresses ["rr@home.example.net"] "away";', header=header)
    assert reply('require "vacation"; vacation :addresses "RR@Home.Example.Net" "away";', header=header)


def test_the_mailbox_an_alias_leads_to_counts_as_the_users():
    # sent to the alias sales@, filed for roadrunner@: a To of roadrunner@ is the user's own address
    header = b"To: Road Runner <RoadRunner@acme.example.com>\r\n\r\n"
    assert reply(VACATION, header=header, recipient="sales@acme.example.com") is None
    outcome = compile_script(VACATION).run(MessageView(header, 100, "coyote@desert.example.org",
                                                       "sales@acme.example.com", mailbox="roadrunner@acme.example.com"))
    assert outcome.vacation is not None


def test_only_one_vacation_and_none_with_reject():
    with pytest.raises(SieveRuntimeError, match="more than one vacation"):
        compile_script('require "vacation"; vacation "a"; vacation "b";').run(view())
    with pytest.raises(SieveRuntimeError, match="vacation"):
        compile_script('require ["vacation", "reject"]; vacation "a"; reject "no";').run(view())
    # a vacation that replies to nothing is still a vacation beside reject
    with pytest.raises(SieveRuntimeError, match="vacation"):
        compile_script('require ["vacation", "ereject"]; ereject "no"; vacation "a";').run(view(sender=""))
    # with discard, keep, fileinto, redirect it is not an error (§4.7)
    outcome = compile_script('require ["vacation", "fileinto"]; vacation "a"; fileinto "x"; '
                             'redirect "a@b.example"; discard;').run(view())
    assert outcome.vacation is not None and outcome.discarded


def test_checking():
    read = compile_script
    refused_at(read, 'vacation "x";', 1, 1, 'require "vacation"')
    refused_at(read, 'require "vacation";\nvacation :seconds 10 "x";', 2, 10, 'require "vacation-seconds"')
    refused_at(read, 'require "vacation-seconds";\nvacation :days 1 :seconds 10 "x";', 2, 18, ":days or :seconds")
    refused_at(read, 'require "vacation";\nvacation :from "not an address" "x";', 2, 16, ":from needs mail addresses")
    refused_at(read, 'require "vacation";\nvacation :addresses ["a@b.example", "@"] "x";', 2, 21, ":addresses")
    refused_at(read, 'require "vacation";\nvacation :days "1" "x";', 2, 10, ":days needs a number")
    refused_at(read, 'require "vacation";\nvacation :subject ["a", "b"] "x";', 2, 10, ":subject needs a string")
    refused_at(read, 'require "vacation";\nvacation;', 2, 1, "vacation takes string")
    refused_at(read, 'require "vacation";\nvacation :mime "Subject: caf\u00e9\r\n\r\nbody";', 2, 16, "8-bit")
    refused_at(read, 'require "vacation";\nvacation :days 2 :days 3 "x";', 2, 18, "given twice")
    refused_at(read, 'require "vacation-seconds";\nvacation :seconds 2147483648 "x";', 2, 10, "below 2147483648")
    refused_at(read, 'require "vacation-seconds";\nvacation :seconds 2G "x";', 2, 10, "below 2147483648")
    compile_script('require "vacation";\nvacation :mime "Content-Type: text/plain\r\n\r\ncaf\u00e9";')


def test_mime_header_made_by_variables_is_checked_when_run():
    script = 'require ["vacation", "variables"];\nset "h" "Subject: caf\u00e9";\nvacation :mime "${h}\r\n\r\nbody";'
    with pytest.raises(SieveRuntimeError, match="8-bit"):
        compile_script(script).run(view())
