"""Content helpers: unstuffing, bare CR/LF normalisation, line limits, trace header."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailstack.smtp.message import (
    count_received,
    has_header,
    has_long_line,
    header_block,
    normalize_line_endings,
    received_header,
    unstuff,
)


def test_unstuff_removes_one_leading_dot_per_line():
    assert unstuff(b"..a\r\n...b\r\nc.\r\n") == b".a\r\n..b\r\nc.\r\n"


def test_long_line_limits():
    assert not has_long_line(b"a" * 998 + b"\r\n")
    assert has_long_line(b"a" * 999 + b"\r\n")
    assert has_long_line(b"ok\r\n" + b"a" * 999)
    assert has_long_line(b"ok\r\n" + b"a" * 500 + b"\r" + b"b" * 999)  # bare CR ends a line too
    assert not has_long_line(b"ok\r\n" + b"a" * 500 + b"\r" + b"b" * 400)


@given(st.binary(max_size=200))
def test_normalised_content_has_only_crlf_line_ends(data):
    out = normalize_line_endings(data)
    assert out.count(b"\r") == out.count(b"\n") == out.count(b"\r\n")
    assert out.replace(b"\r\n", b"") == data.replace(b"\r", b"").replace(b"\n", b"")


def test_header_block_and_received_count():
    msg = b"Received: a\r\nreceived : b\r\nSubject: x\r\n\r\nReceived: not a header\r\n"
    assert header_block(msg) == b"Received: a\r\nreceived : b\r\nSubject: x\r\n"
    assert count_received(header_block(msg)) == 2
    assert has_header(header_block(msg), b"subject") and not has_header(header_block(msg), b"Date")


def test_received_header_fields():
    h = received_header(helo="c.example", client_ip="2001:db8::1", rdns=None, hostname="mx.example",
                        protocol="ESMTPS", queue_id="ABC", tls="TLSv1.3 TLS_AES_256_GCM_SHA384",
                        recipient="a@example", when=0)
    assert h == (b"Received: from c.example ([IPv6:2001:db8::1])\r\n\tby mx.example with ESMTPS id ABC\r\n"
                 b"\t(using TLSv1.3 TLS_AES_256_GCM_SHA384)\r\n\tfor <a@example>; Thu, 01 Jan 1970 00:00:00 +0000\r\n")


def test_lines_at_the_limit_are_legal_in_bulk():
    content = (b"x" * 998 + b"\r\n") * 1024  # 1 MB of legal 998-octet lines (bench/ measures the speed)
    assert not has_long_line(content)
    assert has_long_line(content + b"y" * 999)
