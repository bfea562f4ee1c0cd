"""Sieve editheader (RFC 5293): addheader, deleteheader, what later tests see, protected fields."""

from __future__ import annotations

from email.header import decode_header, make_header

import pytest

from mailstack.imap.mime import header_fields
from mailstack.sieve import editheader
from mailstack.sieve.interpreter import MessageView, SieveRuntimeError, compile_script

from .test_parser import refused_at

HEADER = (b"Received: from a.example by mx.example.test; Mon, 26 Feb 2007 10:15:30 +0100\r\n"
          b"Auto-Submitted: no\r\n"
          b"Delivered-To: kim@job.example.com\r\n"
          b"X-Hello: one\r\nX-Hello: two\r\nX-Hello: three\r\n"
          b"Subject: hello\r\n\r\n")


def run(script: str, header: bytes = HEADER):
    return compile_script('require ["editheader", "fileinto", "index", "variables", "regex"];\n' + script).run(
        MessageView(header, 100, "a@b.example", "kim@job.example.com"))


def names(header: bytes | None) -> list[str]:
    assert header is not None
    return [name for name, _ in header_fields(header)]


def values(header: bytes | None, name: str) -> list[bytes]:
    header = HEADER if header is None else header  # None: unchanged
    return [raw.split(b":", 1)[1].strip() for n, raw in header_fields(header) if n == name]


def test_unchanged_header_is_none():
    assert run("keep;").header is None


def test_addheader_first_or_last_rfc_5293_section_4():
    outcome = run('addheader "X-Sieve-Filtered" "<kim@job.example.com>";\naddheader :last "X-End" "end";')
    assert names(outcome.header)[0] == "x-sieve-filtered" and names(outcome.header)[-1] == "x-end"
    assert outcome.header.endswith(b"X-End: end\r\n\r\n")
    assert outcome.header.count(b"\r\n\r\n") == 1


def test_the_rfc_redirect_example():
    script = ('if not header :contains "X-Sieve-Filtered" ["<kim@job.example.com>", "<kim@home.example.com>"] {\n'
              '  addheader "X-Sieve-Filtered" "<kim@job.example.com>";\n  redirect "kim@home.example.com";\n}')
    outcome = run(script)
    assert outcome.redirects == ["kim@home.example.com"] and b"X-Sieve-Filtered: <kim@job.example.com>" in outcome.header
    again = run(script, outcome.header)
    assert again.redirects == [] and again.header is None


def test_later_tests_see_the_changes_rfc_5293_section_7():
    assert [d.folder for d in run('addheader "X-Hello" "World";\n'
                                  'if header :contains "X-Hello" "World" { fileinto "international"; }'
                                  ).deliveries] == ["international"]
    assert [d.folder for d in run('deleteheader "subject";\nif exists "subject" { fileinto "still"; }'
                                  ).deliveries] == [None]
    # addheader then deleting the first X-Hello leaves the message unchanged
    outcome = run('addheader "X-Hello" "World";\ndeleteheader :index 1 "X-Hello";')
    assert outcome.header == HEADER


def test_deleteheader_index_counts_after_each_change():
    outcome = run('deleteheader :index 1 "X-Hello";\ndeleteheader :index 2 "X-Hello";')
    assert values(outcome.header, "x-hello") == [b"two"]  # the first and the third
    assert values(run('deleteheader :index 1 :last "x-hello";').header, "x-hello") == [b"one", b"two"]
    assert run('deleteheader :index 4 "X-Hello";').header is None  # past the end: nothing, no error


@pytest.mark.parametrize(("script", "left"), [
    ('deleteheader "X-Hello";', []),
    ('deleteheader "X-Hello" "two";', [b"one", b"three"]),
    ('deleteheader :contains "X-Hello" ["o", "x"];', [b"three"]),
    ('deleteheader :matches "X-Hello" "t*";', [b"one"]),
    ('deleteheader :regex "X-Hello" "^(one|three)$";', [b"two"]),
    ('deleteheader :index 1 :contains "X-Hello" "two";', [b"one", b"two", b"three"]),  # counting first
    ('deleteheader :index 2 :contains "X-Hello" "two";', [b"one", b"three"]),
    ('deleteheader :comparator "i;octet" "X-Hello" "TWO";', [b"one", b"two", b"three"]),
    ('set "n" "x-hello"; deleteheader "${n}" "one";', [b"two", b"three"]),
])
def test_deleteheader_rfc_5293_section_5(script, left):
    assert values(run(script).header, "x-hello") == left


@pytest.mark.parametrize("name", ["Received", "received", "Auto-Submitted", "Delivered-To"])
def test_protected_fields_are_silently_kept(name):
    outcome = run(f'deleteheader "{name}";')
    assert outcome.header is None  # §6: silently ignored


def test_subject_may_be_added_and_deleted():
    outcome = run('deleteheader "Subject"; addheader "Subject" "[filtered] hello";')
    assert values(outcome.header, "subject") == [b"[filtered] hello"]


def test_values_are_encoded_and_folded():
    outcome = run('addheader "X-Note" "café crème";')
    (encoded,) = values(outcome.header, "x-note")
    assert encoded.isascii() and str(make_header(decode_header(encoded.decode()))) == "café crème"
    long = " ".join(["word"] * 100)
    raw = [raw for n, raw in header_fields(run(f'addheader "X-Long" "{long}";').header) if n == "x-long"][0]
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    outcome = run('addheader "X-Multi" text:\nfirst\nsecond\n.\n;')
    assert values(outcome.header, "x-multi") == [b"first second"]  # no bare line breaks in a field


def test_bare_lf_messages_keep_their_line_ends():
    header = b"Subject: x\n\n"
    outcome = run('addheader :last "X-A" "b";', header)
    assert outcome.header == b"Subject: x\nX-A: b\n\n"


def test_limits():
    script = "".join('addheader "X-N" "v";\n' for _ in range(editheader.MAX_ADDED + 1))
    with pytest.raises(SieveRuntimeError, match="added header fields"):
        run(script)
    with pytest.raises(SieveRuntimeError, match="longer than"):
        run('set "a" "' + "x " * 2000 + '"; addheader "X-Big" "${a}${a}${a}";')
    with pytest.raises(SieveRuntimeError, match="not a header field name"):
        run('set "n" "bad name"; addheader "${n}" "v";')


def test_checking():
    read = compile_script
    refused_at(read, 'addheader "X-A" "b";', 1, 1, 'require "editheader"')
    refused_at(read, 'require "editheader";\naddheader "X A" "b";', 2, 11, "not a header field name")
    refused_at(read, 'require "editheader";\naddheader "X:A" "b";', 2, 11, "not a header field name")
    refused_at(read, 'require "editheader";\ndeleteheader "";', 2, 14, "not a header field name")
    refused_at(read, 'require "editheader";\naddheader "X-A";', 2, 1, "addheader takes string and string")
    refused_at(read, 'require "editheader";\ndeleteheader :last "X-A";', 2, 14, ":last needs :index")
    refused_at(read, 'require "editheader";\ndeleteheader :index 0 "X-A";', 2, 14, "counts from 1")
    refused_at(read, 'require "editheader";\ndeleteheader :is :contains "X-A" "b";', 2, 18, "only one match type")
    refused_at(read, 'require "editheader";\ndeleteheader :comparator "i;nope" "X-A" "b";', 2, 14,
               "unknown comparator")
    refused_at(read, 'require "editheader";\naddheader :index 1 "X-A" "b";', 2, 11, "does not take :index")
    compile_script('require "editheader";\ndeleteheader :index 1 :last :contains "X-A" ["b", "c"];')
