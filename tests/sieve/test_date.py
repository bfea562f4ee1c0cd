"""Sieve date, currentdate (RFC 5260 §4, §5) and index (§6)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mailstack.sieve.date import date_part, field_date
from mailstack.sieve.interpreter import MessageView, SieveRuntimeError, compile_script

from .test_parser import refused_at

HEADER = (b"Received: from a.example by mx.example.test; Sun, 25 Feb 2007 22:30:00 -0500\r\n"
          b"Received: from b.example by a.example; Mon, 26 Feb 2007 10:15:30 +0100\r\n"
          b"From: boss@example.com\r\n"
          b"To: one@example.test\r\n"
          b"To: two@example.test, three@example.test\r\n"
          b"X-Tag: first\r\nX-Other: middle\r\nX-Tag: last\r\n"
          b"Date: Tue, 27 Feb 2007 13:05:09 +0200\r\n\r\n")
NOW = datetime(2007, 7, 1, 8, 30, 0, tzinfo=UTC).timestamp()  # a Sunday


def view(header: bytes = HEADER, now: float = NOW) -> MessageView:
    return MessageView(header, 100, "boss@example.com", "me@example.test", now=now)


def holds(test: str, header: bytes = HEADER, now: float = NOW) -> bool:
    script = ('require ["date", "index", "relational", "comparator-i;ascii-numeric", "variables"];\n'
              f'if {test} {{ discard; }}')
    return compile_script(script).run(view(header, now)).discarded


@pytest.mark.parametrize(("part", "value"), [
    ("year", "2007"), ("month", "02"), ("day", "27"), ("date", "2007-02-27"), ("julian", "54158"),
    ("hour", "13"), ("minute", "05"), ("second", "09"), ("time", "13:05:09"),
    ("iso8601", "2007-02-27T13:05:09+02:00"), ("std11", "Tue, 27 Feb 2007 13:05:09 +0200"), ("zone", "+0200"),
    ("weekday", "2"), ("WeekDay", "2"),
])
def test_date_parts_in_the_original_zone(part, value):
    assert holds(f'date :originalzone "date" "{part}" "{value}"')


@pytest.mark.parametrize(("zone", "part", "value"), [
    ("+0000", "iso8601", "2007-02-27T11:05:09Z"), ("+0000", "zone", "+0000"), ("-0000", "zone", "+0000"),
    ("-0500", "time", "06:05:09"), ("+1345", "date", "2007-02-28"), ("+1345", "weekday", "3"),
    ("-0930", "iso8601", "2007-02-27T01:35:09-09:30"), ("-0930", "zone", "-0930"),
])
def test_zone_shifts(zone, part, value):
    assert holds(f'date :zone "{zone}" "date" "{part}" "{value}"')


def test_rfc_5260_section_4_4_examples():
    script = ('require ["date", "relational", "fileinto"];\n'
              'if allof(header :is "from" "boss@example.com",\n'
              '         date :value "ge" :originalzone "date" "hour" "09",\n'
              '         date :value "lt" :originalzone "date" "hour" "17")\n{ fileinto "urgent"; }')
    assert [d.folder for d in compile_script(script).run(view()).deliveries] == ["urgent"]
    late = HEADER.replace(b"13:05:09 +0200", b"18:05:09 +0200")
    assert [d.folder for d in compile_script(script).run(view(late)).deliveries] == [None]
    script = ('require ["date", "relational", "fileinto"];\n'
              'if anyof(date :is "received" "weekday" "0",\n         date :is "received" "weekday" "6")\n'
              '{ fileinto "weekend"; }')
    # the first Received: Sun 22:30 -0500 is Monday 03:30 UTC; shifted to +0000 by :zone below
    assert [d.folder for d in compile_script(script.replace('date :is', 'date :originalzone :is'))
            .run(view()).deliveries] == ["weekend"]
    assert [d.folder for d in compile_script(script.replace('date :is', 'date :zone "+0000" :is'))
            .run(view()).deliveries] == [None]


def test_index_rfc_5260_section_6_1():
    assert holds('date :value "gt" :index 2 :zone "-0500" "received" "iso8601" "2007-02-26T04:00:00-05:00"')
    assert not holds('date :value "gt" :index 2 :zone "-0500" "received" "iso8601" "2007-02-26T05:00:00-05:00"')
    assert holds('date :index 1 :last :originalzone "received" "zone" "+0100"')
    assert not holds('date :index 3 "received" "year" "2007"')  # no third field: false


@pytest.mark.parametrize(("test", "result"), [
    ('header :index 1 "x-tag" "first"', True),
    ('header :index 2 "x-tag" "last"', True),
    ('header :index 1 :last "x-tag" "last"', True),
    ('header :index 2 :last "x-tag" "first"', True),
    ('header :index 3 "x-tag" "last"', False),
    ('header :index 2 ["x-other", "x-tag"] "first"', True),  # counted in the order of the names
    ('header :index 1 "x-tag" "last"', False),
    ('address :index 2 "to" "three@example.test"', True),
    ('address :index 1 "to" "three@example.test"', False),
    ('address :index 1 :last :localpart "to" "two"', True),
])
def test_index_on_header_and_address(test, result):
    assert holds(test) is result


def test_invalid_and_missing_dates_are_false():
    assert not holds('date :originalzone "date" "year" "2007"', HEADER.replace(b"27 Feb", b"30 Feb"))
    assert not holds('date "x-missing" "year" "2007"')
    assert not holds('date :originalzone "date" "year" "2007"', HEADER.replace(b"Tue, 27 Feb 2007", b"someday"))
    assert holds('date :count "eq" :comparator "i;ascii-numeric" "date" "year" "1"')
    assert holds('date :count "eq" :comparator "i;ascii-numeric" "x-missing" "year" "0"')
    assert holds('date :originalzone "from" "year" ""') is False  # From holds no date


def test_currentdate_rfc_5260_section_5_1():
    assert holds('currentdate :zone "+0000" :is "weekday" "0"')
    assert holds('currentdate :zone "+0000" :value "lt" "hour" "09"')
    assert holds('currentdate :zone "+0900" :is "time" "17:30:00"')
    assert holds('allof(currentdate :value "ge" :zone "+0000" "date" "2007-06-30", '
                 'currentdate :value "le" :zone "+0000" "date" "2007-07-07")')
    assert holds('currentdate :count "eq" :comparator "i;ascii-numeric" "year" "1"')
    script = ('require ["date", "variables", "fileinto"];\n'
              'if currentdate :zone "+0000" :matches "month" "*" { set "month" "${1}"; }\n'
              'if currentdate :zone "+0000" :matches "year"  "*" { set "year"  "${1}"; }\n'
              'fileinto "${month}-${year}";')
    assert [d.folder for d in compile_script(script).run(view()).deliveries] == ["07-2007"]


def test_currentdate_defaults_to_the_clock():
    year = str(datetime.now(UTC).year)
    assert holds(f'currentdate :zone "+0000" "year" "{year}"', now=0.0)


def test_field_date_and_parts():
    assert field_date("from x by y; Mon, 26 Feb 2007 10:15:30 +0100") == datetime.fromisoformat(
        "2007-02-26T10:15:30+01:00")
    assert field_date("26 Feb 2007 10:15 GMT") is not None  # no weekday, no seconds
    assert field_date("Mon, 29 Feb 2007 10:15:30 +0100") is None
    assert date_part(datetime(1858, 11, 17, tzinfo=UTC), "julian") == "0"
    assert date_part(datetime(2000, 1, 1, tzinfo=UTC), "julian") == "51544"


def test_zone_and_part_from_variables_are_checked_when_run():
    script = 'require ["date", "variables"];\nset "z" "EST";\nif currentdate :zone "${z}" "year" "x" {}'
    with pytest.raises(SieveRuntimeError, match="time zone"):
        compile_script(script).run(view())
    script = 'require ["date", "variables"];\nset "p" "century";\nif currentdate "${p}" "x" {}'
    with pytest.raises(SieveRuntimeError, match="date-part"):
        compile_script(script).run(view())


def test_checking():
    read = compile_script
    refused_at(read, 'if date "date" "year" "2007" {}', 1, 4, 'require "date"')
    refused_at(read, 'if currentdate "year" "2007" {}', 1, 4, 'require "date"')
    refused_at(read, 'require "date";\nif date :zone "EST" "date" "year" "x" {}', 2, 15, "+hhmm or -hhmm")
    refused_at(read, 'require "date";\nif date :zone "+2400" "date" "year" "x" {}', 2, 15, "no such time zone")
    refused_at(read, 'require "date";\nif date :zone "+0100" :originalzone "date" "year" "x" {}', 2, 23,
               "only one zone")
    refused_at(read, 'require "date";\nif date "date" "century" "x" {}', 2, 16, "no date-part 'century'")
    refused_at(read, 'require "date";\nif currentdate :originalzone "year" "x" {}', 2, 16, "does not take")
    refused_at(read, 'require "date";\nif date "date" "year" {}', 2, 4, "date takes string and string and")
    refused_at(read, 'require "date";\nif date ["date", "received"] "year" "x" {}', 2, 4, "date takes string")
    refused_at(read, 'require "date";\nif date :index 1 "date" "year" "x" {}', 2, 9, 'require "index"')
    refused_at(read, 'require "index";\nif header :last "to" "x" {}', 2, 11, ":last needs :index")
    refused_at(read, 'require "index";\nif header :index 0 "to" "x" {}', 2, 11, "counts from 1")
    refused_at(read, 'require "index";\nif header :index "1" "to" "x" {}', 2, 11, ":index needs a number")
    refused_at(read, 'require "index";\nif exists :index 1 "to" {}', 2, 11, "does not take :index")
