"""Sieve encoded-character (RFC 5228 §2.4.2.4): ${hex:...} and ${unicode:...} in strings."""

from __future__ import annotations

import pytest

from mailstack.sieve.interpreter import MessageView, compile_script
from mailstack.sieve.parser import decode_encoded

from .test_parser import refused_at


@pytest.mark.parametrize(("given", "decoded"), [
    ("$${hex:40}", "$@"),
    ("${hex: 40 }", "@"),
    ("${HEX: 40}", "@"),
    ("${hex:40", "${hex:40"),
    ("${hex:400}", "${hex:400}"),
    ("${hex:4${hex:30}}", "${hex:40}"),
    ("${unicode:40}", "@"),
    ("${ unicode:40}", "${ unicode:40}"),
    ("${UNICODE:40}", "@"),
    ("${UnICoDE:0000040}", "@"),
    ("${Unicode:40}", "@"),
    ("${Unicode:Cool}", "${Unicode:Cool}"),
    ("${hex:}", "${hex:}"),
    ("${hex:c3 a9}t${hex:C3}${hex:A9}", "été"),  # octets joined before they are read as UTF-8
    ("${unicode:e9 1F600}", "é\U0001F600"),
    ("a${hex:\r\n 24\t24 }b", "a$$b"),
    ("no encoding", "no encoding"),
])
def test_rfc_5228_examples(given, decoded):
    assert decode_encoded(given) == decoded


@pytest.mark.parametrize("given", ["${unicode:200000}", "${Unicode:DF01}", "${hex:ff}", "${hex:00}",
                                   "${unicode:0}"])
def test_errors(given):
    with pytest.raises(ValueError):
        decode_encoded(given)


def test_discard_example_and_only_when_required():
    header = b"Subject: pay $$$ now\r\n\r\n"
    view = MessageView(header, 100, "a@b.example", "c@d.example")
    script = 'require "encoded-character";\nif header :contains "Subject" "$${hex:24 24}" {\n  discard;\n}'
    assert compile_script(script).run(view).discarded
    assert not compile_script('if header :contains "Subject" "$${hex:24 24}" { discard; }').run(view).discarded


def test_errors_name_the_string():
    refused_at(compile_script, 'require "encoded-character";\nif header :is "Subject"\n  "x${unicode:200000}" {}',
               3, 3, "no Unicode character")
    refused_at(compile_script, 'require ["encoded-character", "fileinto"];\nfileinto "${Unicode:DF01}";', 2, 10,
               "U+DF01")
    # an out-of-range value that is not well-formed is no error (the note in §2.4.2.4)
    compile_script('require "encoded-character";\nif header :is "Subject" "${unicode:200000" {}')


def test_decoded_before_variables_rfc_5229_section_3_1():
    script = ('require ["encoded-character", "variables"];\nset "name" "Ethelbert";\n'
              'if header :contains "Subject" "dear${hex:20 24 7b 4e}ame}" { discard; }')
    view = MessageView(b"Subject: Oh dear Ethelbert\r\n\r\n", 100, "a@b.example", "c@d.example")
    assert compile_script(script).run(view).discarded
    # decoding happens before checking: a redirect target spelt with encodings is checked decoded
    compile_script('require "encoded-character";\nredirect "a${hex:40}b.example";')
    refused_at(compile_script, 'require "encoded-character";\nredirect "a${hex:41}b.example";', 2, 10, "mail address")
