"""What the capture API says of a message: summaries and details from the message bytes alone."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailstack.capture import Captured, envelope_header
from mailstack.web.capture import attachment, detail, html_part, summarize

ITEM = Captured(id=7, size=100, date=1_700_000_000)

MULTIPART = envelope_header("app@example.test", ["bob@remote.test", "carol@other.test"]) + (
    b"From: App <app@example.test>\r\nTo: Bob <bob@remote.test>\r\nCc: carol@other.test\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= menu\r\nDate: Tue, 01 Dec 2026 10:00:00 +0100\r\n"
    b"Message-ID: <m1@example.test>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    b"Content-Type: multipart/alternative; boundary=c\r\n\r\n--c\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nHello   Bob,\r\nthe menu.\r\n--c\r\n"
    b"Content-Type: text/html\r\n\r\n<p>Hello <b>Bob</b></p><script>alert(1)</script>\r\n--c--\r\n--b\r\n"
    b"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"menu.pdf\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n")


def test_summary_of_a_multipart_message():
    s = summarize(MULTIPART, ITEM)
    assert s["id"] == "7"
    assert s["from"] == {"name": "App", "address": "app@example.test"}
    assert s["to"] == [{"name": "Bob", "address": "bob@remote.test"}]
    assert s["cc"] == [{"name": "", "address": "carol@other.test"}]
    assert s["subject"] == "café menu"
    assert s["date"] == "2026-12-01T10:00:00+01:00"
    assert s["received"] == "2023-11-14T22:13:20Z"
    assert s["snippet"] == "Hello Bob, the menu."
    assert s["attachments"] == 1
    assert s["message_id"] == "<m1@example.test>"
    assert s["envelope"] == {"from": "app@example.test", "to": ["bob@remote.test", "carol@other.test"]}


def test_detail_has_headers_text_and_attachments():
    d = detail(MULTIPART, ITEM)
    assert ["Subject", "café menu"] in d["headers"]
    assert d["headers"][0] == ["Return-Path", "<app@example.test>"]
    assert d["text"].startswith("Hello   Bob,")
    assert d["html"] is True
    assert d["attachments"] == [{"index": 2, "filename": "menu.pdf", "content_type": "application/pdf",
                                 "disposition": "attachment", "content_id": "", "size": 5}]
    assert attachment(MULTIPART, 2) == ("menu.pdf", "application/pdf", b"%PDF-")
    assert attachment(MULTIPART, 0) is None and attachment(MULTIPART, 1) is None  # the bodies are not
    assert html_part(MULTIPART).startswith(b"<p>Hello")


def test_bounce_envelope_and_html_only_snippet():
    data = envelope_header("", ["app@remote.test"]) + (
        b"Subject: x\r\nContent-Type: text/html\r\n\r\n<style>p{}</style><p>Only   <i>html</i></p>\r\n")
    s = summarize(data, ITEM)
    assert s["envelope"] == {"from": "", "to": ["app@remote.test"]}
    assert s["snippet"] == "Only html"
    assert s["from"] is None and s["date"] is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_give_a_summary_and_detail(data):
    s = summarize(data, ITEM)
    d = detail(data, ITEM)
    assert s["id"] == d["id"] == "7"
    html_part(data)
    attachment(data, 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"Subject: =?utf-8?b?!!?=\r\n", b"From: <<>>@@\r\n", b"To: \"unterminated\r\n",
                                 b"Date: 99 Foo 99999 99:99\r\n", b"Content-Type: multipart/mixed; boundary=\r\n",
                                 b"Content-Type: text/plain; charset=x-unknown\r\n",
                                 b"Content-Transfer-Encoding: base64\r\n", b"\r\n", b"--\r\n", b"=ZZ\r\n",
                                 b"\xff\xfe\r\n"]), max_size=30))
def test_malformed_headers_give_a_summary(lines):
    data = b"".join(lines)
    assert summarize(data, ITEM)["size"] == 100
    detail(data, ITEM)
