"""RFC 3461 DSN parameters on MAIL and RCPT: accepted, kept in the envelope, or refused with 501."""

from __future__ import annotations

import pytest

from mailstack.envelope import Envelope, RecipientDSN, RecipientRoute
from mailstack.smtp.dsnparams import (
    DSNParamError,
    orcpt_param,
    parse_notify,
    parse_orcpt,
    rcpt_params,
    utf8_addr_decode,
    xtext,
    xtext_decode,
)
from mailstack.testing import smtp_harness


def ehlo(h):
    out = h.replies("EHLO client.example\r\n")
    assert out[-1].startswith("250 "), out
    return out


def send(h, mail, *rcpts):
    h.replies(f"{mail}\r\n")
    replies = [h.replies(f"{r}\r\n") for r in rcpts]
    assert h.replies("DATA\r\n")[0].startswith("354")
    final = h.replies("Subject: x\r\n\r\nbody\r\n.\r\n")
    return replies, final


def test_dsn_is_advertised():
    h = smtp_harness()
    h.read()
    assert "250-DSN" in ehlo(h)


def test_parameters_reach_the_envelope_decoded():
    h = smtp_harness()
    h.read()
    ehlo(h)
    replies, final = send(h, "MAIL FROM:<a@b.example> RET=hdrs ENVID=QQ+2B1+3Dx",
                          "RCPT TO:<alice@example.test> NOTIFY=success,Delay ORCPT=rfc822;Alice+2Bx@example.test",
                          "RCPT TO:<bob@example.test> NOTIFY=NEVER")
    assert replies == [["250 2.1.5 Recipient OK"], ["250 2.1.5 Recipient OK"]]
    assert final[0].startswith("250 ")
    envelope, _ = h.router.deliveries[0]
    assert envelope.ret == "HDRS"
    assert envelope.envid == "QQ+1=x"
    alice, bob = envelope.recipients
    assert alice.dsn == RecipientDSN(frozenset({"SUCCESS", "DELAY"}), ("rfc822", "Alice+x@example.test"))
    assert bob.dsn == RecipientDSN(frozenset({"NEVER"}), None)


def test_without_parameters_nothing_is_asked():
    h = smtp_harness()
    h.read()
    ehlo(h)
    send(h, "MAIL FROM:<a@b.example>", "RCPT TO:<alice@example.test>")
    envelope, _ = h.router.deliveries[0]
    assert envelope.ret is None and envelope.envid is None
    assert envelope.recipients[0].dsn is None


@pytest.mark.parametrize(("command", "words"), [
    ("RCPT TO:<alice@example.test> NOTIFY=NEVER,SUCCESS", "NOTIFY=NEVER cannot be combined"),
    ("RCPT TO:<alice@example.test> NOTIFY=SUCCESS,SOMETIMES", "NOTIFY: unknown value 'SOMETIMES'"),
    ("RCPT TO:<alice@example.test> NOTIFY", "NOTIFY needs a value"),
    ("RCPT TO:<alice@example.test> NOTIFY=SUCCESS,", "NOTIFY: unknown value"),
    ("RCPT TO:<alice@example.test> ORCPT=rfc822;a+ZZb@example.test", "ORCPT: bad xtext escape"),
    ("RCPT TO:<alice@example.test> ORCPT=rfc822;a+0Ab@example.test", "ORCPT: the value must be printable"),
    ("RCPT TO:<alice@example.test> ORCPT=rfc822", "ORCPT must be"),
    ("RCPT TO:<alice@example.test> ORCPT=;a@b", "ORCPT must be"),
    ("RCPT TO:<alice@example.test> ORCPT=rfc822;" + "a" * 600, "ORCPT longer than 500"),
])
def test_bad_rcpt_parameters_get_501_naming_them(command, words):
    h = smtp_harness()
    h.read()
    ehlo(h)
    h.replies("MAIL FROM:<a@b.example>\r\n")
    reply = h.replies(command + "\r\n")
    assert len(reply) == 1 and reply[0].startswith("501 5.5.4 "), reply
    assert words in reply[0]
    # the session goes on: the transaction is still open for a good RCPT
    assert h.replies("RCPT TO:<alice@example.test>\r\n") == ["250 2.1.5 Recipient OK"]


@pytest.mark.parametrize(("command", "words"), [
    ("MAIL FROM:<a@b.example> RET=BODY", "RET must be FULL or HDRS"),
    ("MAIL FROM:<a@b.example> RET", "RET must be FULL or HDRS"),
    ("MAIL FROM:<a@b.example> ENVID=" + "x" * 101, "ENVID longer than 100"),
    ("MAIL FROM:<a@b.example> ENVID=ab+1", "ENVID: bad xtext escape"),
    ("MAIL FROM:<a@b.example> RET=FULL RET=HDRS", "duplicate parameter"),
])
def test_bad_mail_parameters_are_refused(command, words):
    h = smtp_harness()
    h.read()
    ehlo(h)
    reply = h.replies(command + "\r\n")
    assert reply[0][:3] in ("501", "555") and words in reply[0], reply
    assert h.replies("MAIL FROM:<a@b.example>\r\n") == ["250 2.1.0 Sender OK"]


def test_utf8_orcpt_raw_needs_smtputf8_its_ascii_form_does_not():
    """RFC 6533 §3: utf-8-addr-xtext is 7-bit and safe anywhere; raw UTF-8 only under SMTPUTF8."""
    h = smtp_harness()
    h.read()
    ehlo(h)
    h.replies("MAIL FROM:<a@b.example>\r\n")
    assert h.replies("RCPT TO:<alice@example.test> ORCPT=utf-8;jörg@example.test\r\n")[0].startswith("553")
    assert h.replies("RCPT TO:<alice@example.test> ORCPT=utf-8;j\\x{F6}rg@example.test\r\n") == [
        "250 2.1.5 Recipient OK"]
    h.replies("RSET\r\n")
    h.replies("MAIL FROM:<a@b.example> SMTPUTF8\r\n")
    assert h.replies("RCPT TO:<alice@example.test> ORCPT=utf-8;jörg@example.test\r\n") == [
        "250 2.1.5 Recipient OK"]


def test_xtext_round_trip_and_grammar():
    for text in ("plain", "a+b=c d", "~!\"#$%&'()*,-./:;<>?@[\\]^_`{|}"):
        assert xtext_decode(xtext(text), "X") == text
    assert xtext("a+b") == "a+2Bb"
    for bad in ("a=b", "a b", "a+2b", "a+", "é"):
        with pytest.raises(DSNParamError):
            xtext_decode(bad, "X")


def test_utf8_addresses():
    assert utf8_addr_decode("j\\x{F6}rg@example.test", "ORCPT") == "jörg@example.test"
    assert utf8_addr_decode("jörg@example.test", "ORCPT") == "jörg@example.test"
    assert utf8_addr_decode("a+2Bb@example.test", "ORCPT") == "a+b@example.test"
    for bad in ("a\\x{0}@example.test", "a\\b@example.test", "a\\x{202E}gnp.exe@example.test",
                "a\u2028b@example.test", "a\x85b@example.test"):
        with pytest.raises(DSNParamError):
            utf8_addr_decode(bad, "ORCPT")
    assert orcpt_param(("rfc822", "jörg@example.test")) == "utf-8;j\\x{F6}rg@example.test"
    assert orcpt_param(("utf-8", "a+b=c@example.test")) == "utf-8;a\\x{2B}b\\x{3D}c@example.test"
    assert parse_orcpt("utf-8;a\\x{2B}b@example.test") == ("utf-8", "a+b@example.test")
    assert parse_orcpt(orcpt_param(("rfc822", "jörg@example.test"))) == ("utf-8", "jörg@example.test")
    assert parse_orcpt(orcpt_param(("rfc822", "a+b@example.test"))) == ("rfc822", "a+b@example.test")


def test_rcpt_params_for_the_next_hop():
    assert rcpt_params(None) == []
    assert rcpt_params(RecipientDSN(parse_notify("delay,success"), ("rfc822", "x+y@a.test"))) == [
        "NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;x+2By@a.test"]
    assert rcpt_params(RecipientDSN(frozenset({"NEVER"}))) == ["NOTIFY=NEVER"]


def test_alias_targets_get_the_request_without_success():
    """RFC 3461 §6.2.7: one target takes the request as is; several are told of in an
    "expanded" report, and each keeps the rest of the request. The alias is their ORCPT."""
    asked = RecipientDSN(frozenset({"SUCCESS", "FAILURE"}), None)
    envelope = Envelope("Q1", "s@example.org", [
        RecipientRoute("one@example.test", ("alice@example.test",), (), asked),
        RecipientRoute("team@example.test", ("bob@example.test",), ("carol@remote.test",), asked),
        RecipientRoute("dave@example.test", ("dave@example.test",), ()),
    ])
    dsn = envelope.target_dsn()
    assert dsn["alice@example.test"] == RecipientDSN(asked.notify, ("rfc822", "one@example.test"))
    assert dsn["bob@example.test"] == RecipientDSN(frozenset({"FAILURE"}), ("rfc822", "team@example.test"))
    assert dsn["carol@remote.test"] == dsn["bob@example.test"]
    assert "dave@example.test" not in dsn
    assert [r.original for r in envelope.expanded()] == ["team@example.test"]
    only_success = RecipientDSN(frozenset({"SUCCESS"}))
    assert only_success.without_success().notify == frozenset({"NEVER"})


def test_requiretls_is_offered_and_accepted_on_tls_sessions_only():
    plain = smtp_harness()
    plain.read()
    assert "250-REQUIRETLS" not in ehlo(plain)
    assert plain.replies("MAIL FROM:<a@b.example> REQUIRETLS\r\n") == [
        "530 5.7.10 REQUIRETLS needs a TLS session: issue STARTTLS first"]
    secure = smtp_harness(tls=True)
    secure.read()
    assert "250-REQUIRETLS" in ehlo(secure)
    assert secure.replies("MAIL FROM:<a@b.example> REQUIRETLS=yes\r\n")[0].startswith("501 ")
    replies, final = send(secure, "MAIL FROM:<a@b.example> REQUIRETLS", "RCPT TO:<alice@example.test>")
    assert final[0].startswith("250 ")
    assert secure.router.deliveries[0][0].requiretls
