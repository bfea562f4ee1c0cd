"""The command grammar (RFC 5804 §4): atoms, quoted strings, literals, numbers; every error a ParseError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.managesieve.parse import Atom, Command, ParseError, parse_command, parse_sasl_response, tokenize
from mailstack.managesieve.reply import string


def test_a_command_name_is_case_insensitive_and_its_strings_are_octets():
    assert parse_command([b'putScript "my script" "keep;"']) == Command("PUTSCRIPT", (b"my script", b"keep;"))


def test_quoted_strings_unescape_quote_and_backslash_only():
    assert parse_command([rb'NOOP "a\"b\\c"']).args == (b'a"b\\c',)
    with pytest.raises(ParseError, match="escape"):
        parse_command([rb'NOOP "a\nb"'])


def test_numbers_are_32_bit():
    assert parse_command([b'HAVESPACE "x" 4294967295']).args == (b"x", 2**32 - 1)
    with pytest.raises(ParseError, match="too large"):
        parse_command([b'HAVESPACE "x" 4294967296'])


def test_a_literal_stands_where_its_marker_was_and_the_command_goes_on_after_it():
    segments = [b'PUTSCRIPT "a" {5+}', b"ab\r\nc", b""]
    assert parse_command(segments) == Command("PUTSCRIPT", (b"a", b"ab\r\nc"))
    assert tokenize([b"RENAMESCRIPT {1+}", b"a", b' "b"']) == [Atom("RENAMESCRIPT"), b"a", b"b"]
    assert tokenize([b"CHECKSCRIPT {0}", b"", b""]) == [Atom("CHECKSCRIPT"), b""]


@pytest.mark.parametrize("line, error", [
    (b"", "Empty"),
    (b'"NOOP"', "starts with its name"),
    (b"GETSCRIPT foo", "quoted"),
    (b'NOOP "open', "Unterminated"),
    (b'NOOP "a"b', "after a quoted"),
    (b"NOOP (x)", "Unexpected character"),
    (b'NOOP "a\0b"', "Invalid character"),
    (b'NOOP "' + b"x" * 1025 + b'"', "too long"),
])
def test_malformed_commands_are_parse_errors(line, error):
    with pytest.raises(ParseError, match=error):
        parse_command([line])


def test_a_sasl_response_is_one_string_or_a_bare_word():
    assert parse_sasl_response([b'"AGFsaWNl"']) == b"AGFsaWNl"
    assert parse_sasl_response([b"{4+}", b"AGFs", b""]) == b"AGFs"
    assert parse_sasl_response([b"AGFs+/=="]) == b"AGFs+/=="
    assert parse_sasl_response([b'"*"']) == b"*"
    with pytest.raises(ParseError):
        parse_sasl_response([b'"a" "b"'])


@given(st.binary(max_size=300))
def test_any_line_parses_or_is_a_parse_error(line):
    try:
        parse_command([line])
    except ParseError:
        pass


@given(st.binary(max_size=2000))
def test_what_the_server_sends_as_a_string_reads_back_the_same(value):
    encoded = string(value)
    if encoded.startswith(b"{"):
        head, _, rest = encoded.partition(b"\r\n")
        assert int(head[1:-1]) == len(rest) and rest == value
    else:
        assert parse_command([b"NOOP " + encoded]).args == (value,)
