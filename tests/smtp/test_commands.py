"""In-memory tests of the ESMTP command set: every reply a client can observe."""

from __future__ import annotations

import pytest

from mailstack.testing import FakeAccounts, smtp_harness


def ehlo(h, name="client.example"):
    out = h.replies(f"EHLO {name}\r\n")
    assert out[-1].startswith("250 "), out
    return out


def test_greeting_names_host_and_esmtp():
    h = smtp_harness(connect=False)
    h.protocol.makeConnection(h.transport)
    assert h.read() == b"220 mail.example.test ESMTP\r\n"


def test_ehlo_lists_extensions_in_multiline_reply():
    h = smtp_harness()
    h.read()
    out = ehlo(h)
    assert out[0] == "250-mail.example.test greets client.example"
    keywords = [line[4:] for line in out[1:]]
    assert keywords == ["PIPELINING", "SIZE 10000", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8",
                        "CHUNKING", "DSN", "STARTTLS", "HELP"]


def test_auth_not_advertised_before_tls_but_with_plaintext_allowed():
    h = smtp_harness(allow_plaintext_auth=True)
    assert "250-AUTH PLAIN LOGIN" in ehlo(h)


def test_auth_advertised_after_tls_and_no_starttls():
    h = smtp_harness(role="submissions", tls=True)
    out = ehlo(h)
    assert "250-AUTH PLAIN LOGIN" in out
    assert not any("STARTTLS" in line for line in out)


def test_helo_gets_plain_reply_without_enhanced_codes():
    h = smtp_harness()
    h.read()
    assert h.replies("HELO client.example\r\n") == ["250 mail.example.test"]
    assert h.replies("FOO\r\n") == ["500 5.5.1 Command unrecognized"]


@pytest.mark.parametrize("line, expected", [
    ("NOOP", "250 2.0.0 OK"),
    ("RSET", "250 2.0.0 Reset state"),
    ("VRFY alice@example.test", "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"),
    ("VRFY nobody@example.test", "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"),
    ("VRFY", "501 5.5.4 Syntax error in parameters or arguments"),
    ("EXPN staff", "502 5.5.1 EXPN is disabled"),
    ("SEND FROM:<a@b.c>", "502 5.5.1 Command not implemented"),
    ("SOML FROM:<a@b.c>", "502 5.5.1 Command not implemented"),
    ("SAML FROM:<a@b.c>", "502 5.5.1 Command not implemented"),
    ("TURN", "502 5.5.1 Command not implemented"),
    ("XYZZY", "500 5.5.1 Command unrecognized"),
    ("RCPT TO:<alice@example.test>", "503 5.5.1 Need MAIL before RCPT"),
    ("DATA", "503 5.5.1 Need MAIL command"),
    ("MAIL FROM:<a@b.c> FOO=BAR", "555 5.5.4 Unsupported parameter FOO"),
    ("MAIL FROM:a@b.c", "501 5.1.7 Bad sender address syntax"),
    ("MAIL FROM:<a@b..c>", "501 5.1.7 Bad sender address syntax"),
    ("MAIL FROM:<a@b.c> SIZE=10001", "552 5.3.4 Message size exceeds fixed maximum message size"),
    ("MAIL FROM:<a@b.c> SIZE=abc", "501 5.5.4 SIZE needs a number"),
    ("MAIL FROM:<a@b.c> BODY=BINARYMIME", "555 5.5.4 BODY must be 7BIT or 8BITMIME"),
    ("MAIL FROM:<a@b.c> SMTPUTF8=yes", "501 5.5.4 SMTPUTF8 takes no value"),
])
def test_single_command_replies(line, expected):
    h = smtp_harness()
    h.read()
    ehlo(h)
    assert h.replies(line + "\r\n") == [expected]


def test_help_is_multiline_214():
    h = smtp_harness()
    h.read()
    ehlo(h)
    out = h.replies("HELP\r\n")
    assert out[0].startswith("214-2.0.0 ") and out[-1].startswith("214 2.0.0 ")


def test_mail_before_helo_is_bad_sequence():
    h = smtp_harness()
    h.read()
    assert h.replies("MAIL FROM:<a@b.c>\r\n") == ["503 5.5.1 Send HELO/EHLO first"]


def test_second_mail_is_bad_sequence_and_rset_clears():
    h = smtp_harness()
    h.read()
    ehlo(h)
    assert h.replies("MAIL FROM:<a@b.c>\r\n") == ["250 2.1.0 Sender OK"]
    assert h.replies("MAIL FROM:<a@b.c>\r\n") == ["503 5.5.1 Sender already specified"]
    assert h.replies("RSET\r\n") == ["250 2.0.0 Reset state"]
    assert h.replies("MAIL FROM:<>\r\n") == ["250 2.1.0 Sender OK"]


def test_data_with_only_rejected_recipients_is_554():
    h = smtp_harness()
    h.read()
    ehlo(h)
    h.replies("MAIL FROM:<a@b.c>\r\n")
    assert h.replies("RCPT TO:<nobody@example.test>\r\n") == ["550 5.1.1 No such user here"]
    assert h.replies("DATA\r\n") == ["554 5.5.1 No valid recipients"]


def test_data_before_rcpt_is_503():
    h = smtp_harness()
    h.read()
    ehlo(h)
    h.replies("MAIL FROM:<a@b.c>\r\n")
    assert h.replies("DATA\r\n") == ["503 5.5.1 Need RCPT command"]


def test_recipient_limit_gives_452_4_5_3():
    h = smtp_harness(accounts=FakeAccounts(aliases={"@example.test": ["alice@example.test"]},
                                           users=["alice@example.test"]), max_recipients=2)
    h.read()
    ehlo(h)
    h.replies("MAIL FROM:<a@b.c>\r\n")
    assert h.replies("RCPT TO:<a1@example.test>\r\n") == ["250 2.1.5 Recipient OK"]
    assert h.replies("RCPT TO:<a2@example.test>\r\n") == ["250 2.1.5 Recipient OK"]
    assert h.replies("RCPT TO:<a3@example.test>\r\n") == ["452 4.5.3 Too many recipients"]


def test_rcpt_parameters_are_refused_with_555():
    h = smtp_harness()
    h.read()
    ehlo(h)
    h.replies("MAIL FROM:<a@b.c>\r\n")
    assert h.replies("RCPT TO:<alice@example.test> XFORWARD=1\r\n") == [
        "555 5.5.4 Unsupported parameter XFORWARD"]


def test_postmaster_without_domain_is_accepted():
    accounts = FakeAccounts(users=["postmaster@example.test"])
    h = smtp_harness(accounts=accounts)
    h.read()
    ehlo(h)
    h.replies("MAIL FROM:<a@b.c>\r\n")
    assert h.replies("RCPT TO:<Postmaster>\r\n") == ["250 2.1.5 Recipient OK"]


def test_quit_says_221_and_closes():
    h = smtp_harness()
    h.read()
    ehlo(h)
    assert h.replies("QUIT\r\n") == ["221 2.0.0 mail.example.test closing connection"]
    assert h.transport.disconnecting


def test_overlong_command_line_gets_500_5_5_2_and_session_continues():
    h = smtp_harness()
    h.read()
    ehlo(h)
    h.replies("MAIL FROM:<a@b.c>\r\n")
    assert h.replies("RCPT TO:<" + "x" * 1200 + "@example.test>\r\n") == ["500 5.5.2 Line too long"]
    # the transaction survives the bad line
    assert h.replies("RCPT TO:<alice@example.test>\r\n") == ["250 2.1.5 Recipient OK"]


def test_overlong_line_split_across_packets_is_discarded_up_to_its_end():
    h = smtp_harness()
    h.read()
    ehlo(h)
    assert h.send(b"NOOP " + b"y" * 700) == b""
    assert h.send(b"z" * 700) == b""
    assert h.replies(b"zz\r\nNOOP\r\n") == ["500 5.5.2 Line too long", "250 2.0.0 OK"]


def test_non_utf8_command_is_501():
    h = smtp_harness()
    h.read()
    ehlo(h)
    assert h.replies(b"MAIL FROM:<\xff@b.c>\r\n") == ["501 5.5.4 Invalid characters in command"]


def test_bad_ehlo_argument_is_501():
    h = smtp_harness()
    h.read()
    assert h.replies("EHLO\r\n") == ["501 5.5.4 Invalid domain name"]
    assert h.replies("EHLO a(b)\r\n") == ["501 5.5.4 Invalid domain name"]


def test_pipelined_commands_get_replies_in_order():
    h = smtp_harness()
    h.read()
    out = h.replies("EHLO c.example\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<alice@example.test>\r\n"
                    "RCPT TO:<nobody@example.test>\r\nNOOP\r\n")
    assert out[-4:] == ["250 2.1.0 Sender OK", "250 2.1.5 Recipient OK", "550 5.1.1 No such user here",
                        "250 2.0.0 OK"]


def test_utf8_address_needs_smtputf8():
    accounts = FakeAccounts(domains=["example.test"], users=["jürgen@example.test"])
    h = smtp_harness(accounts=accounts)
    h.read()
    ehlo(h)
    assert h.replies("MAIL FROM:<jörg@b.example>\r\n") == ["553 5.6.7 Non-ASCII address requires SMTPUTF8"]
    assert h.replies("MAIL FROM:<jörg@b.example> SMTPUTF8\r\n") == ["250 2.1.0 Sender OK"]
    assert h.replies("RCPT TO:<jürgen@example.test>\r\n") == ["250 2.1.5 Recipient OK"]


@pytest.mark.parametrize("helo", ["a\x1b[2J", "host\x07name", "bad(host)", "a;b"])
def test_helo_with_control_or_special_characters_is_refused(helo):
    h = smtp_harness()
    h.read()
    assert h.replies(f"EHLO {helo}\r\n") == ["501 5.5.4 Invalid domain name"]


def test_helo_accepts_address_literals_and_idn():
    h = smtp_harness()
    h.read()
    ehlo(h, "[192.0.2.1]")
    ehlo(h, "[IPv6:2001:db8::1]")
    ehlo(h, "bücher.example")


def test_non_ascii_digits_are_not_numbers():
    h = smtp_harness()
    h.read()
    ehlo(h)
    assert h.replies("MAIL FROM:<a@b.c> SIZE=\u00b2\r\n") == ["501 5.5.4 SIZE needs a number"]
    h.replies("MAIL FROM:<a@b.c>\r\nRCPT TO:<alice@example.test>\r\n")
    assert h.replies("BDAT \u0661 LAST\r\n") == ["501 5.5.4 Usage: BDAT <size> [LAST]"]


def test_too_many_errors_close_the_session():
    h = smtp_harness()
    h.read()
    ehlo(h)
    h.replies("MAIL FROM:<a@b.c>\r\n")
    out = h.replies("".join(f"RCPT TO:<nobody{i}@example.test>\r\n" for i in range(25)))
    assert out[:19] == ["550 5.1.1 No such user here"] * 19
    assert out[19:] == ["421 4.7.0 Too many errors, closing connection"]
    assert h.transport.disconnecting
