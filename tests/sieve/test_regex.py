"""Sieve :regex (draft-ietf-sieve-regex): POSIX extended regular expressions on RE2."""

from __future__ import annotations

import time

import pytest

from mailstack.sieve import regex
from mailstack.sieve.interpreter import MessageView, SieveRuntimeError, compile_script

from .test_parser import refused_at

HEADER = (b"From: Bob <bob@example.org>\r\nTo: me+lists@company.com\r\nCc: other@example.net\r\n"
          b"Subject: MAKE MONEY FAST 100%\r\n\r\n")


def view(header: bytes = HEADER) -> MessageView:
    return MessageView(header, 100, "bob@example.org", "me@company.com")


def discarded(test: str, header: bytes = HEADER, extra: str = "") -> bool:
    script = f'require ["regex"{extra}];\nif {test} {{ discard; }}'
    return compile_script(script).run(view(header)).discarded


def test_the_draft_example():
    script = ('require "regex";\nif anyof (\n  not address :regex ["to", "cc", "bcc"]\n'
              '    "me(\\\\+.*)?@company\\\\.com",\n'
              '  header :regex :comparator "i;octet" "subject"\n    "^[^[:lower:]]+$" ) {\n  discard;\n}')
    assert compile_script(script).run(view()).discarded  # the subject has no lower case letter
    mixed = HEADER.replace(b"MAKE MONEY FAST", b"Make money fast")
    assert compile_script(script).run(view(mixed)).discarded is False  # to me, and lower case in it
    elsewhere = mixed.replace(b"me+lists@company.com", b"you@company.com")
    assert compile_script(script).run(view(elsewhere)).discarded  # not to me (with or without +detail)


@pytest.mark.parametrize(("test", "result"), [
    ('header :regex "subject" "money"', True),  # i;ascii-casemap by default
    ('header :regex :comparator "i;octet" "subject" "money"', False),
    ('header :regex "subject" "^make (money|cash) fast [0-9]{3}%$"', True),
    ('header :regex "subject" "^money"', False),
    ('header :regex "subject" "[[:digit:]]+"', True),
    ('header :regex "subject" "[[=%=]]"', True),
    ('header :regex "subject" "[[.M.]]AKE"', True),
    ('header :regex "subject" "a\\\\.b"', False),
    ('header :regex "subject" "[\\\\]"', False),  # a backslash in brackets is itself
    ('header :regex "from" "bob@example[.]org"', True),
    ('address :regex :domain "to" "^company\\\\.(com|net)$"', True),
    ('envelope :regex "from" "^bob@"', True),
    ('header :regex "x-missing" ".*"', False),
])
def test_matching(test, result):
    extra = ', "envelope"' if test.startswith("envelope") else ""
    assert discarded(test, extra=extra) is result


def test_match_variables():
    script = ('require ["regex", "variables", "fileinto"];\n'
              'if address :regex "to" "^([^+@]*)(\\\\+([^@]*))?@(.*)$" {\n'
              '  fileinto "${1}/${3}/${4}/${0}/${2}/${9}";\n}')
    assert [d.folder for d in compile_script(script).run(view()).deliveries] == [
        "me/lists/company.com/me+lists@company.com/+lists/"]
    script = ('require ["regex", "variables", "fileinto"];\n'
              'if header :regex "subject" "(MONEY)|(CASH)" { fileinto "[${1}][${2}]"; }')
    assert [d.folder for d in compile_script(script).run(view()).deliveries] == ["[MONEY][]"]


def test_leftmost_longest():
    assert regex.search("a|ab", False, "xabc") == ["ab"]  # POSIX: the longest at the leftmost place
    assert regex.search("(a*)(a*)", False, "aaa") == ["aaa", "aaa", ""]


def test_quoteregex():
    script = ('require ["regex", "variables"];\nset :quoteregex "q" "a.b*(c)?[d]{1}|^$\\\\";\n'
              'if string :regex "a.b*(c)?[d]{1}|^$\\\\" "^${q}$" { discard; }')
    assert compile_script(script).run(view()).discarded
    assert regex.quote("1+1=2?") == "1\\+1=2\\?"
    refused_at(compile_script, 'require "variables";\nset :quoteregex "a" "b";', 2, 5, 'require "regex"')
    refused_at(compile_script, 'require ["regex", "variables"];\nset :quoteregex :quotewildcard "a" "b";', 2, 17,
               "cannot go together")


def test_patterns_from_variables_are_checked_when_run():
    script = 'require ["regex", "variables"];\nset "p" "(unclosed";\nif string :regex "x" "${p}" { discard; }'
    with pytest.raises(SieveRuntimeError, match="regular expression"):
        compile_script(script).run(view())


def test_linear_time():
    header = b"Subject: " + b"a" * 20000 + b"!\r\n\r\n"
    started = time.perf_counter()
    assert not discarded('header :regex "subject" "^(a+)+$"', header)
    assert not discarded('header :regex "subject" "(a|aa)*c"', header)
    assert time.perf_counter() - started < 1.0  # a backtracking engine takes ages on these


def test_checking():
    read = compile_script
    refused_at(read, 'if header :regex "subject" "x" {}', 1, 11, 'require "regex"')
    refused_at(read, 'require "regex";\nif header :regex "subject" "(x" {}', 2, 28, "bad regular expression")
    refused_at(read, 'require "regex";\nif header :regex "subject" ["a", "\\\\1"] {}', 2, 28, "\\1 is not part")
    refused_at(read, 'require "regex";\nif header :regex "subject" "\\\\bword" {}', 2, 28, "\\b is not part")
    refused_at(read, 'require "regex";\nif header :regex "subject" "(?i)x" {}', 2, 28, "bad regular expression")
    refused_at(read, 'require "regex";\nif header :regex "subject" "[[=ab=]]" {}', 2, 28, "collating element")
    refused_at(read, 'require "regex";\nif header :regex "subject" "[abc" {}', 2, 28, "[ without ]")
    refused_at(read, 'require "regex";\nif header :regex "subject" "x\\\\" {}', 2, 28, "ends in a backslash")
    refused_at(read, 'require "regex";\nif header :regex "subject" "' + "a" * (regex.MAX_PATTERN + 1) + '" {}', 2, 28,
               "at most")
    refused_at(read, 'require ["regex", "comparator-i;ascii-numeric"];\n'
                     'if header :regex :comparator "i;ascii-numeric" "subject" "1" {}', 2, 11, "cannot be used with")
    refused_at(read, 'require "regex";\nif header :regex :matches "subject" "x" {}', 2, 18, "only one match type")
    compile_script('require ["regex", "variables"];\nif header :regex "subject" "${unchecked" {}')
