"""The quick paths of running a script agree with the general ones.

A test over constant names and keys (header, address, envelope with :is, :contains or
:matches under i;octet or i;ascii-casemap) is matched over values the run keeps folded;
plain addresses are read without the address-list parser; a well-formed header is read
with one pattern. Each must answer as the general path does, for any input.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailstack.imap import address as address_lists
from mailstack.imap import mime
from mailstack.sieve.addressing import mailboxes_of
from mailstack.sieve.interpreter import MessageView, compile_script
from mailstack.sieve.matching import Matcher
from mailstack.sieve.parser import StringList, Tag

TEXT = st.text(alphabet="aAbB.*?\\@+-é \x00", max_size=8)


def matcher(kind: str, comparator: str) -> Matcher:
    relation = [StringList(("eq",), True, 1, 1)] if kind in ("count", "value") else []
    return Matcher([Tag(kind, 1, 1), *relation, Tag("comparator", 1, 1), StringList((comparator,), True, 1, 1)])


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(["is", "contains", "matches"]), st.sampled_from(["i;octet", "i;ascii-casemap"]),
       st.lists(st.one_of(st.none(), TEXT), max_size=4), st.lists(TEXT, min_size=1, max_size=3))
def test_quick_match_agrees_with_the_general_match(kind, comparator, values, keys):
    m = matcher(kind, comparator)
    quick = m.quick_match(keys)
    assert quick is not None
    assert quick([None if v is None else m.quick_value(v) for v in values]) == m.match(values, keys)


def test_quick_match_is_only_for_the_plain_match_types():
    assert matcher("count", "i;ascii-numeric").quick_match(["1"]) is None
    assert matcher("is", "i;ascii-numeric").quick_match(["1"]) is None
    assert matcher("regex", "i;octet").quick_match(["a"]) is None


def _parsed(value: str) -> list[tuple[str, str]]:
    out = []
    for item in address_lists.parse_address_list(value):
        for mailbox in item.members if isinstance(item, address_lists.Group) else (item,):
            out.append((mailbox.local, mailbox.domain or ""))
    return out


ADDRESS_PIECES = ["Bob", " ", "\t", "<", ">", "@", ".", "a", "B", "ex", "org", "-", "+", "'", "=?", "?=", '"', "é",
                  "(c)", ",", ":", ";", "x.y", "@ex.org", "[1.2.3.4]", "\\"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(ADDRESS_PIECES), max_size=10))
def test_plain_addresses_read_as_the_parser_reads_them(pieces):
    value = "".join(pieces)
    assert mailboxes_of(value) == _parsed(value)


def test_plain_addresses_in_common_shapes():
    assert mailboxes_of("Bob Smith <Bob.S@Example.ORG>") == [("Bob.S", "Example.ORG")]
    assert mailboxes_of("  bob@example.org ") == [("bob", "example.org")]
    assert mailboxes_of("<bob@example.org>") == [("bob", "example.org")]
    assert mailboxes_of("bob@example.org (Bob)") == [("bob", "example.org")]  # a comment: the parser
    assert mailboxes_of("a@b.c, d@e.f") == [("a", "b.c"), ("d", "e.f")]


@pytest.mark.parametrize("value", [
    "a" * 5000, "undisclosed-recipients:;", "postmaster-notifications-team", "Mail Delivery Subsystem "
    "<mailer-daemon@example.com>, alice@example.org", "a " * 3000 + "<", "a" * 3000 + "@", "a." * 3000,
    "Bob " * 2000 + "<bob@example.org>", "x@" + "a-" * 3000,
])
def test_long_values_are_read_in_one_pass(value):
    # a pattern that could match a run of atoms in many ways would take 2**n steps on these
    assert mailboxes_of(value) == _parsed(value)


HEADER_PIECES = [b"Subject", b"To", b"X-A", b":", b" :", b" ", b"\t", b"\r\n", b"\n", b"\r", b"a", b"\x1f",
                 b"\xc3\xa9", b"x:y", b"\r\n ", b"\r\n\t", b"\r\n\r\n", b"\x00", b"\x7f"]


def _by_lines(header: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, raw in mime.header_fields(header):
        out.setdefault(name, []).append(mime.field_value(raw))
    return out


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(HEADER_PIECES), max_size=16))
def test_field_values_read_as_the_line_reader_reads_them(pieces):
    header = b"".join(pieces)
    assert mime.field_values(header) == _by_lines(header)


def test_field_values_of_a_folded_header():
    header = b"Subject: one\r\n two\r\nTO : a@b.c\r\nsubject:\tthree\r\n\r\nBody: no\r\n"
    assert mime.field_values(header) == {"subject": ["one two", "three"], "to": ["a@b.c"]}


# The same tests, once with constant keys (the quick path) and once with keys a variable
# makes (the general path: "${e}" is the empty string)
HEADER_NAMES = ["subject", "from", "to", "x-tag"]
TESTS = st.tuples(st.sampled_from(["header", "address", "envelope"]), st.sampled_from(["is", "contains", "matches"]),
                  st.sampled_from(["i;octet", "i;ascii-casemap"]), st.sampled_from(["all", "localpart", "domain",
                                                                                      "user", "detail"]),
                  st.sampled_from(["bob", "BOB", "*b*", "example.org", "?ob", "", "tag", "*", "Re: *", "é"]))
FIELD_VALUES = st.sampled_from(["Bob <bob@example.org>", "BOB+tag@Example.ORG", "Re: hello", "é <x@y.z>",
                                "a@b.c, bob@example.org", "", "undisclosed-recipients:;", "=?utf-8?q?B=C3=B6b?= <b@c.d>"])


def _script(tests, dynamic: bool) -> str:
    lines = ['require ["fileinto", "envelope", "subaddress", "variables", "imap4flags"];']
    for i, (kind, match, comparator, part, key) in enumerate(tests):
        name = {"header": '["subject", "x-tag"]', "address": '["from", "to"]', "envelope": '["from", "to"]'}[kind]
        part_tag = f":{part} " if kind != "header" else ""
        key = key.replace("\\", "\\\\").replace('"', '\\"')
        key = "${e}" + key if dynamic else key
        lines.append(f'if {kind} {part_tag}:{match} :comparator "{comparator}" {name} "{key}" '
                     f'{{ addflag "t{i}"; }}')
    lines.append('keep;')
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TESTS, min_size=1, max_size=6), st.lists(st.tuples(st.sampled_from(HEADER_NAMES), FIELD_VALUES),
                                                          max_size=5),
       st.sampled_from(["", "bob@example.org", "Bob+tag@Example.org"]))
def test_scripts_answer_alike_on_either_path(tests, fields, sender):
    header = "".join(f"{name}: {value}\r\n" for name, value in fields).encode() + b"\r\n"
    view = MessageView(header, len(header), sender, "alice+work@example.test")
    quick = compile_script(_script(tests, dynamic=False)).run(view)
    general = compile_script(_script(tests, dynamic=True)).run(view)
    assert quick.deliveries == general.deliveries
