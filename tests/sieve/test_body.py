"""Sieve body (RFC 5173): :raw, :content and :text, transfer encodings, charsets and bounds."""

from __future__ import annotations

import base64

import pytest

from mailstack.imap.mime import split_message
from mailstack.sieve import body as bodies
from mailstack.sieve.interpreter import MessageView, compile_script

from .test_parser import refused_at

# RFC 5173 §5.2's example message; its markers (&, $, %, !) are kept as text so each test can
# see which lines it searched.
EXAMPLE = b"""From: Whomever
To: Someone
Date: Whenever
Subject: whatever
Content-Type: multipart/mixed; boundary=outer

& This is a multi-part message in MIME format.
&
--outer
Content-Type: multipart/alternative; boundary=inner

& This is a nested multi-part message in MIME format.
&
--inner
Content-Type: text/plain; charset="us-ascii"

$ Hello
$
--inner
Content-Type: text/html; charset="us-ascii"

% <html><body>Hello</body></html>
%
--inner--
&
& This is the end of the inner MIME multipart.
&
--outer
Content-Type: message/rfc822

! From: Someone Else
! Subject: hello request

$ Please say Hello
$
--outer--
&
& This is the end of the outer MIME multipart.
""".replace(b"\n", b"\r\n").replace(b"\r\n! ", b"\r\n")  # the nested header is a header


def view(message: bytes = EXAMPLE) -> MessageView:
    header, body = split_message(message)
    return MessageView(header, len(message), "a@b.example", "c@d.example", body=body)


def matches(test: str, message: bytes = EXAMPLE) -> bool:
    script = f'require ["body", "comparator-i;ascii-numeric", "relational"];\nif {test} {{ discard; }}'
    return compile_script(script).run(view(message)).discarded


def test_content_rfc_5173_section_5_2():
    assert matches('body :content "multipart" :contains "MIME"')
    assert matches('body :content "multipart" :contains "end of the inner"')
    assert not matches('body :content "multipart" :contains "Hello"')  # nested parts are not part of it
    assert matches('body :content "text/plain" :contains "Hello"')
    assert matches('body :content "text/plain" :contains "Please say"')  # inside the message/rfc822
    assert not matches('body :content "text/plain" :contains "html"')
    assert matches('body :content "text/html" :contains "Hello"')
    assert not matches('body :content "text/html" :contains "Please"')
    assert matches('body :content "text" :contains "<html>"')
    assert matches('body :content "message/rfc822" :contains "hello request"')
    assert not matches('body :content "message/rfc822" :contains "Please say"')  # only its header
    assert matches('body :content "" :contains "Please say"')
    for bad in ("/plain", "text/", "text/plain/x"):
        assert not matches(f'body :content "{bad}" :contains ""')


def test_each_part_on_its_own_and_counts():
    # search expressions do not match across parts: no single string holds both
    assert not matches('body :content "text" :matches "*Hello*Please*"')
    # :text is :content "text": the plain part, the html part, the nested plain part
    assert matches('body :text :count "eq" :comparator "i;ascii-numeric" "3"')
    assert matches('body :count "eq" :comparator "i;ascii-numeric" "3"')  # :text is the default


def test_raw_rfc_5173_section_5_1():
    assert matches('body :raw :contains "Content-Type: text/html"')  # MIME headers are content here
    assert matches('body :raw :contains "--inner--"')
    encoded = (b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + base64.encodebytes(b"MAKE MONEY FAST"))
    assert not matches('body :raw :contains "MAKE MONEY FAST"', encoded)
    assert matches('body :text :contains "MAKE MONEY FAST"', encoded)


@pytest.mark.parametrize(("header", "content", "found"), [
    (b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n",
     b"caf=E9 cr=E8me =\r\nbr=FBl=E9e\r\n", "café crème brûlée"),
    (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n",
     base64.encodebytes("café crème".encode()), "café crème"),
    (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n", "naïve".encode(), "naïve"),
    (b"Content-Type: text/plain; charset=koi8-r\r\n", "привет".encode("koi8-r"), "привет"),
    (b"Content-Type: text/plain; charset=no-such-charset\r\n", "été".encode(), "été"),
    (b"Content-Type: text/plain; charset=base64\r\n", b"plain", "plain"),
    (b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n", b"aGVsbG8gd29y!!bGQ", "hello world"),
])
def test_decoded_and_converted(header, content, found):
    message = b"Subject: x\r\nMIME-Version: 1.0\r\n" + header + b"\r\n" + content
    assert matches(f'body :contains "{found}"', message)


def test_no_body_and_empty_body():
    assert not matches('body :raw :contains ""', b"Subject: only a header\r\n")  # §4: not even ""
    assert matches('body :raw :is ""', b"Subject: x\r\n\r\n")
    assert matches('body :raw :is ""', b"\r\n")


def test_bounded():
    big = b"Subject: x\r\n\r\n" + b"a" * bodies.MAX_BODY + b"needle"
    assert not matches('body :raw :contains "needle"', big)
    assert matches('body :raw :contains "needle"', big[:1000] + b"needle")
    many = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"".join(
        b"--b\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(bodies.MAX_PARTS + 10)) + b"--b--\r\n"
    assert matches('body :contains "part 10"', many)
    assert not matches(f'body :contains "part {bodies.MAX_PARTS + 5}"', many)


def test_with_variables_no_match_variables_but_expanded_keys():
    script = ('require ["body", "variables"];\nset "t" "text/html"; set "k" "Hello";\n'
              'if string :matches "abc" "a*" {}\n'
              'if body :content "${t}" :matches "*${k}*" { set "r" "${1}"; }\n'
              'if string :is "${r}" "bc" { discard; }')
    assert compile_script(script).run(view()).discarded  # ${1} is still the string test's


def test_checking():
    read = compile_script
    refused_at(read, 'if body :contains "x" {}', 1, 4, 'require "body"')
    refused_at(read, 'require "body";\nif body :raw :text "x" {}', 2, 14, "only one body transform")
    refused_at(read, 'require "body";\nif body :content :contains "x" {}', 2, 9, ":content needs a string list")
    refused_at(read, 'require "body";\nif body "a" "b" {}', 2, 4, "body takes string list")
    refused_at(read, 'require "body";\nif body :over "a" {}', 2, 9, "does not take :over")
