"""Checking and running Sieve scripts (RFC 5228 and the extensions the interpreter offers)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailstack.sieve.interpreter import (
    Delivery,
    MessageView,
    SieveError,
    SieveRuntimeError,
    compile_script,
)

from .test_parser import refused_at

HEADER = (b"From: Bob Example <bob@example.org>\r\n"
          b"To: alice+lists@example.test, Carol <carol@example.net>\r\n"
          b"Cc: undisclosed-recipients:;\r\n"
          b"Subject: =?utf-8?q?Caf=C3=A9?= meeting: make money fast\r\n"
          b"List-Id: <dev.lists.example.org>\r\n"
          b"X-Spam-Score: 12\r\n"
          b"\r\n")


def message(**kw) -> MessageView:
    values = {"header": HEADER, "size": 5000, "sender": "bob@example.org", "recipient": "alice+lists@example.test"}
    values.update(kw)
    return MessageView(**values)


def run(script: str, **kw):
    return compile_script(script).run(message(**kw))


def folders(script: str, **kw) -> list[str | None]:
    return [d.folder for d in run(script, **kw).deliveries]


def test_no_script_action_keeps():
    assert run("").deliveries == [Delivery(None)]
    assert run("keep;").deliveries == [Delivery(None)]


def test_fileinto_if_elsif_else_and_stop():
    script = '''require ["fileinto"];
    if header :contains "List-Id" "dev.lists" { fileinto "Lists.dev"; stop; }
    elsif header :is "subject" "nothing" { fileinto "Other"; }
    else { fileinto "Rest"; }
    fileinto "Never";'''
    assert folders(script) == ["Lists.dev"]
    assert folders(script, header=b"Subject: nothing\r\n\r\n") == ["Other", "Never"]
    assert folders(script, header=b"Subject: x\r\n\r\n") == ["Rest", "Never"]


def test_header_match_types_and_comparators():
    assert folders('require "fileinto"; if header :matches "subject" "*money*fast" { fileinto "Spam"; }') == ["Spam"]
    assert folders('require "fileinto"; if header :is "subject" "café meeting: make money fast" '
                   '{ fileinto "Decoded"; }') == ["Decoded"]  # RFC 2047 decoded, ASCII case folded
    assert folders('require "fileinto"; if header :is :comparator "i;octet" "subject" '
                   '"CAFÉ MEETING: MAKE MONEY FAST" { fileinto "X"; }') == [None]
    assert folders('require "fileinto"; if header :matches "to" "alice?lists@*" { fileinto "Q"; }') == ["Q"]
    assert folders('require "fileinto"; if header :matches "subject" "\\\\*" { fileinto "Star"; }') == [None]


def test_address_and_envelope_parts_with_subaddress():
    script = '''require ["fileinto", "envelope", "subaddress"];
    if envelope :detail "to" "lists" { fileinto "Tagged"; }
    if address :domain :is "from" "example.org" { fileinto "Org"; }
    if address :user "to" "alice" { fileinto "User"; }
    if address :localpart :is "to" "carol" { fileinto "Carol"; }
    if envelope :all :is "from" "bob@example.org" { fileinto "Env"; }'''
    assert folders(script) == ["Tagged", "Org", "User", "Carol", "Env"]
    assert folders(script, recipient="alice@example.test")[0] == "Org"  # no detail: :detail matches nothing


def test_exists_size_and_not():
    script = '''require "fileinto";
    if allof (exists ["List-Id", "X-Spam-Score"], not exists "X-Never", size :over 1K, not size :under 10)
    { fileinto "A"; }'''
    assert folders(script) == ["A"]
    assert folders(script, size=100) == [None]


def test_relational_and_numeric_comparator():
    script = '''require ["fileinto", "relational", "comparator-i;ascii-numeric"];
    if header :value "ge" :comparator "i;ascii-numeric" "X-Spam-Score" "10" { fileinto "Junk"; }
    if address :count "eq" :comparator "i;ascii-numeric" "to" "2" { fileinto "Two"; }'''
    assert folders(script) == ["Junk", "Two"]
    assert folders(script, header=b"X-Spam-Score: 9\r\nTo: a@b\r\n\r\n") == [None]


def test_imap4flags_copy_and_redirects():
    script = '''require ["fileinto", "imap4flags", "copy"];
    addflag "\\\\Flagged work";
    fileinto :copy :flags "\\\\Seen" "Archive";
    redirect :copy "backup@example.net";
    removeflag "work";
    keep;'''
    outcome = run(script)
    assert outcome.deliveries == [Delivery("Archive", ("\\Seen",)), Delivery(None, ("\\Flagged",))]
    assert outcome.redirects == ["backup@example.net"]


def test_discard_reject_and_implicit_keep():
    assert run("discard;").deliveries == [] and run("discard;").discarded
    rejected = run('require "reject"; reject "go away";')
    assert rejected.reject == "go away" and rejected.deliveries == []
    assert run('redirect "x@example.net";').deliveries == []


def test_a_runaway_script_stops_at_the_step_limit(monkeypatch):
    import mailstack.sieve.interpreter as interpreter

    monkeypatch.setattr(interpreter, "MAX_STEPS", 50)
    script = "if allof (" + ", ".join(["true"] * 100) + ") { keep; }"
    with pytest.raises(SieveRuntimeError):
        run(script)
    monkeypatch.setattr(interpreter, "MAX_REDIRECTS", 2)
    with pytest.raises(SieveRuntimeError):
        run('redirect "a@x.test"; redirect "b@x.test"; redirect "c@x.test";')


@pytest.mark.parametrize("script, line, column, words", [
    ('fileinto "x";', 1, 1, 'needs require "fileinto"'),
    ('require "vacation-seconds-x";', 1, 9, "unsupported extension"),
    ("keep; require \"fileinto\";", 1, 7, "require must come before"),
    ("frobnicate;", 1, 1, "unknown command"),
    ("if frob { keep; }", 1, 4, "unknown test"),
    ("elsif true { keep; }", 1, 1, "without if"),
    ("if true keep;", 1, 1, "one test and a block"),
    ('if header :is "a" { keep; }', 1, 4, "header takes string list and string list"),
    ('if header :is :contains "a" "b" { keep; }', 1, 15, "only one match type"),
    ('if header :frob "a" "b" { keep; }', 1, 11, "does not take :frob"),
    ('if header :comparator "i;frob" "a" "b" { keep; }', 1, 11, "unknown comparator"),
    ('if header :count "eq" "a" "b" { keep; }', 1, 11, 'needs require "relational"'),
    ('require "relational"; if header :value "xx" "a" "b" { keep; }', 1, 33, "takes one of"),
    ("if size 10 { keep; }", 1, 4, "size takes :over or :under"),
    ('require "fileinto"; fileinto ["a", "b"];', 1, 21, "fileinto takes string"),
    ('redirect :copy "a@b";', 1, 10, 'needs require "copy"'),
    ("keep :flags \"x\";", 1, 1, 'needs require "imap4flags"'),
    ("stop { keep; }", 1, 1, "takes no test or block"),
])
def test_invalid_scripts_say_where(script, line, column, words):
    error = refused_at(compile_script, script, line, column, words)
    assert isinstance(error, SieveError)


def test_one_copy_per_folder_and_inbox_is_the_keep():
    assert folders('require "fileinto"; fileinto "A"; fileinto "A"; fileinto "INBOX"; keep;') == ["A", None]


def test_empty_keys_and_missing_headers():
    assert folders('require "fileinto"; if header :contains "subject" "" { fileinto "Any"; }') == ["Any"]
    assert folders('require "fileinto"; if header :contains "x-missing" "" { fileinto "None"; }') == [None]
    assert folders('require ["fileinto", "envelope"]; if envelope :is "from" "" { fileinto "Bounce"; }',
                   sender="") == ["Bounce"]


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="ab*?\\\\", max_size=8), st.text(alphabet="ab*?\\\\", max_size=10))
def test_matches_agrees_with_a_regular_expression(pattern, text):
    """:matches (RFC 5228 §2.7.1) by literal runs or by the scan: the same as the regex reading."""
    import re

    from mailstack.sieve import matching
    from mailstack.sieve.variables import captures

    tokens = matching._glob_tokens(pattern.encode())
    regex = "".join("(.*?)" if t is None else "(.)" if t == -1 else re.escape(chr(t)) for t in tokens)
    found = re.fullmatch(regex, text.encode().decode("latin-1"), re.S)
    assert matching._glob(pattern.encode(), text.encode()) == (found is not None)
    # the match variables (RFC 5229 §3.2): each wildcard as short as the match allows, as the lazy regex
    parts = captures(tokens, text.encode(), text.encode())
    assert (parts is None) == (found is None)
    if found is not None and parts is not None:
        assert [p.decode("latin-1") for p in parts] == [found.group(0), *found.groups()]
