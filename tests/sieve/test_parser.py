"""The Sieve grammar (RFC 5228 §2, §8): what parses to what, and where errors are reported."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailstack.sieve.parser import MAX_NESTING, Command, Number, SieveSyntaxError, StringList, Tag, Test, parse

# RFC 5228 §9 (the example script), as written there
EXAMPLE = """#
# Example Sieve Filter
# Declare any optional features or extension used by the script
#
require ["fileinto"];

#
# Handle messages from known mailing lists
# Move messages from IETF filter discussion list to filter mailbox
#
if header :is "Sender" "owner-ietf-mta-filters@imc.org"
        {
        fileinto "filter";  # move to "filter" mailbox
        }
#
# Keep all messages to or from people in my company
#
elsif address :DOMAIN :is ["From", "To"] "example.com"
        {
        keep;               # keep in "In" mailbox
        }

#
# Try and catch unsolicited email.  If a message is not to me,
# or it contains a subject known to be used by spammers, reject it.
# Note that this is  mailbox.
#
elsif anyof (NOT address :all :contains
               ["To", "Cc", "Bcc"] "me@example.com",
             header :matches "subject"
               ["*make*money*fast*", "*university*dipl*mas*"])
        {
        fileinto "spam";   # move to "spam" mailbox
        }
else
        {
        # Move all other (non-company) mail to "personal"
        # mailbox.
        fileinto "personal";
        }
"""


def test_the_rfc_example_parses():
    commands = parse(EXAMPLE)
    assert [c.name for c in commands] == ["require", "if", "elsif", "elsif", "else"]
    require, first, second, third, last = commands
    assert require.arguments == [StringList(("fileinto",), False, 5, 9)]
    assert first.tests[0].name == "header" and first.tests[0].arguments[0] == Tag("is", 11, 11)
    assert [c.name for c in first.block or []] == ["fileinto"]
    assert [a.name for a in second.tests[0].arguments if isinstance(a, Tag)] == ["domain", "is"]  # lower case
    anyof = third.tests[0]
    assert anyof.name == "anyof" and [t.name for t in anyof.tests] == ["not", "header"]
    assert anyof.tests[0].tests[0].name == "address"
    assert last.name == "else" and last.tests == [] and last.block and last.block[0].arguments[0].values == ("personal",)


def test_strings_numbers_and_comments():
    [command] = parse('vacation :days 7 :subject "a \\"quoted\\" \\\\ and \\x" /* c\nomment */ 100K;')
    args = command.arguments
    assert args[1] == Number(7, 1, 16)
    assert args[3].values == ('a "quoted" \\ and x',)  # an escaped other character is that character
    assert args[4] == Number(100 * 1024, 2, 11)
    assert parse("x 1G;")[0].arguments[0].value == 1 << 30  # type: ignore[union-attr]


def test_multiline_strings_undo_dot_stuffing():
    script = 'vacation text: # a comment\r\nline one\r\n..dotted\r\n.\r\n;\nkeep;\n'
    vacation, keep = parse(script)
    assert vacation.arguments[0] == StringList(("line one\r\n.dotted\r\n",), True, 1, 10)
    assert keep.line == 6


def test_nodes():
    [command] = parse('if not exists ["a","b"] { discard; stop; }')
    assert isinstance(command, Command) and isinstance(command.tests[0], Test)
    assert command.tests[0].tests[0].arguments[0].values == ("a", "b")  # type: ignore[union-attr]
    assert [c.name for c in command.block or []] == ["discard", "stop"]


@pytest.mark.parametrize("script, line, column, words", [
    ("keep", 1, 5, "expected ; or {"),
    ("if true { keep;", 1, 9, "block not closed"),
    ('fileinto "a;', 1, 10, "string not closed"),
    ("keep; /* open", 1, 7, "comment not closed"),
    ("vacation text:\nno end", 1, 10, "single dot"),
    ("vacation text: x\n.\n;", 1, 10, "end of the line"),
    ('x ["a" "b"];', 1, 8, "expected , or ]"),
    ("x [];", 1, 4, "expected a string"),
    ("x (true;", 1, 8, "expected , or )"),
    ("x 99999999999999999999;", 1, 3, "number too large"),
    ("x 9999999999G;", 1, 3, "number too large"),
    ("x : ;", 1, 3, "a tag is"),
    ("{ keep; }", 1, 1, "expected a command"),
    ("\n\n  @", 3, 3, "unexpected character"),
    ("x ( 1 );", 1, 5, "expected a test"),
])
def test_errors_say_where(script, line, column, words):
    refused_at(parse, script, line, column, words)


def refused_at(read: Callable[[str], object], script: str, line: int, column: int, words: str) -> SieveSyntaxError:
    """``read(script)`` refuses the script at that line and column, saying ``words``."""
    with pytest.raises(SieveSyntaxError) as error:
        read(script)
    assert (error.value.line, error.value.column) == (line, column), str(error.value)
    assert words in error.value.message, str(error.value)
    assert str(error.value).startswith(f"line {line}, column {column}: ")
    return error.value


def test_bounds():
    with pytest.raises(SieveSyntaxError, match="nested deeper"):
        parse("if true {" * (MAX_NESTING + 1) + "}" * (MAX_NESTING + 1))
    with pytest.raises(SieveSyntaxError, match="nested deeper"):
        parse("if " + "not " * 10_000 + "true {}")
    with pytest.raises(SieveSyntaxError, match="larger than"):
        parse(b"#" * (1 << 20) + b"x")
    with pytest.raises(SieveSyntaxError, match="not UTF-8") as error:
        parse(b'keep;\nfileinto "\xff";')
    assert (error.value.line, error.value.column) == (2, 11)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='ifkeep"[],;(){}:#/*\\ \n\r\ttext.0123456789KMGé', max_size=80))
def test_any_text_parses_or_says_where_not(text):
    try:
        parse(text)
    except SieveSyntaxError as e:
        assert e.line >= 1 and e.column >= 1
