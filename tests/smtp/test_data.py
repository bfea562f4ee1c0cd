"""DATA and BDAT: content handling, trace header, size and line limits, delivery outcomes."""

from __future__ import annotations

import pytest

from mailstack.smtp import reply as R
from mailstack.smtp.reply import SMTPReplyError
from mailstack.testing import smtp_harness

MESSAGE = b"Subject: hi\r\nFrom: a@b.example\r\n\r\nline one\r\n..dotted\r\n.\r\n"


def start(h, rcpts=("alice@example.test",), mail="MAIL FROM:<a@b.example>"):
    h.read()
    h.replies("EHLO c.example\r\n")
    assert h.replies(mail + "\r\n") == ["250 2.1.0 Sender OK"]
    for r in rcpts:
        assert h.replies(f"RCPT TO:<{r}>\r\n") == ["250 2.1.5 Recipient OK"]


def body_of(h, index=0):
    envelope, message = h.router.deliveries[index]
    assert message.startswith(b"Received: from c.example ([192.0.2.10])\r\n\tby mail.example.test with ESMTP id "
                              + envelope.queue_id.encode())
    return message.split(b"\r\n", 3)[3]


def test_data_delivers_unstuffed_content_with_received_header():
    h = smtp_harness()
    start(h)
    assert h.replies("DATA\r\n") == ["354 End data with <CR><LF>.<CR><LF>"]
    out = h.replies(MESSAGE)
    envelope, message = h.router.deliveries[0]
    assert out == [f"250 2.0.0 OK queued as {envelope.queue_id}"]
    assert envelope.sender == "a@b.example"
    assert [r.original for r in envelope.recipients] == ["alice@example.test"]
    assert b"\tfor <alice@example.test>; " in message
    assert body_of(h) == b"Subject: hi\r\nFrom: a@b.example\r\n\r\nline one\r\n.dotted\r\n"


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7])
def test_terminator_split_across_packets_at_any_point(chunk):
    h = smtp_harness()
    start(h)
    h.replies("DATA\r\n")
    for i in range(0, len(MESSAGE), chunk):
        h.protocol.dataReceived(MESSAGE[i:i + chunk])
    assert h.read().startswith(b"250 2.0.0 OK queued as")
    assert body_of(h) == b"Subject: hi\r\nFrom: a@b.example\r\n\r\nline one\r\n.dotted\r\n"


def test_empty_message_is_delivered():
    h = smtp_harness()
    start(h)
    h.replies("DATA\r\n")
    assert h.replies(".\r\n")[0].startswith("250 2.0.0")
    assert h.router.deliveries[0][1].endswith(b"; " + h.router.deliveries[0][1].rsplit(b"; ", 1)[1])


def test_leading_dot_on_first_line_is_unstuffed():
    h = smtp_harness()
    start(h)
    h.replies("DATA\r\n")
    h.replies(b"..x\r\n.\r\n")
    assert body_of(h) == b".x\r\n"


def test_pipelined_commands_after_data_are_answered_after_the_250():
    h = smtp_harness()
    start(h)
    h.replies("DATA\r\n")
    out = h.replies(b"x\r\n.\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@example.test>\r\nQUIT\r\n")
    assert out[0].startswith("250 2.0.0 OK queued as")
    assert out[1:] == ["250 2.1.0 Sender OK", "250 2.1.5 Recipient OK",
                       "221 2.0.0 mail.example.test closing connection"]


def test_reply_waits_for_delivery_and_pipelined_input_waits_too():
    h = smtp_harness()
    h.router.hold = True
    start(h)
    h.replies("DATA\r\n")
    assert h.send(b"x\r\n.\r\nNOOP\r\n") == b""
    h.router.release()
    out = h.read().decode().split("\r\n")
    assert out[0].startswith("250 2.0.0 OK queued as") and out[1] == "250 2.0.0 OK"


def test_message_over_size_limit_gets_552_and_session_continues():
    h = smtp_harness(max_message_size=1000)
    start(h)
    h.replies("DATA\r\n")
    out = h.replies(b"Subject: big\r\n\r\n" + (b"a" * 70 + b"\r\n") * 100 + b".\r\n")
    assert out == ["552 5.3.4 Message size exceeds fixed maximum message size"]
    assert h.router.deliveries == []
    assert h.replies("MAIL FROM:<a@b.example>\r\n") == ["250 2.1.0 Sender OK"]


def test_text_line_over_1000_octets_gets_500_5_5_2_and_session_continues():
    h = smtp_harness()
    start(h)
    h.replies("DATA\r\n")
    assert h.replies(b"Subject: long\r\n\r\n" + b"b" * 1200 + b"\r\n.\r\n") == ["500 5.5.2 Line too long"]
    assert h.router.deliveries == []
    assert h.replies("MAIL FROM:<a@b.example>\r\n") == ["250 2.1.0 Sender OK"]


def test_line_of_998_octets_is_fine():
    h = smtp_harness()
    start(h)
    h.replies("DATA\r\n")
    assert h.replies(b"b" * 998 + b"\r\n.\r\n")[0].startswith("250 2.0.0")


def test_router_refusal_is_passed_on_and_transaction_ends():
    h = smtp_harness()
    h.router.error = SMTPReplyError(R.MAILBOX_FULL)
    start(h)
    h.replies("DATA\r\n")
    assert h.replies(MESSAGE) == ["552 5.2.2 Mailbox full"]
    assert h.replies("RCPT TO:<alice@example.test>\r\n") == ["503 5.5.1 Need MAIL before RCPT"]


def test_unexpected_router_error_is_451_not_a_traceback():
    h = smtp_harness()

    async def broken(envelope, message):
        raise RuntimeError("disk on fire")

    h.router.deliver = broken
    start(h)
    h.replies("DATA\r\n")
    assert h.replies(MESSAGE) == ["451 4.3.0 Temporary failure, try again later"]
    assert h.replies("NOOP\r\n") == ["250 2.0.0 OK"]


def test_too_many_received_headers_is_a_loop_554_5_4_6():
    h = smtp_harness(max_received=3)
    start(h)
    h.replies("DATA\r\n")
    hops = b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * 3
    assert h.replies(hops + b"Subject: loop\r\n\r\nbody\r\n.\r\n") == ["554 5.4.6 Too many hops, mail loop detected"]
    assert h.router.deliveries == []


def test_multiple_recipients_one_delivery_without_for_clause():
    h = smtp_harness()
    start(h, rcpts=("alice@example.test", "bob@example.test"))
    h.replies("DATA\r\n")
    h.replies(MESSAGE)
    envelope, message = h.router.deliveries[0]
    assert len(h.router.deliveries) == 1
    assert envelope.local_mailboxes() == {"alice@example.test": "alice@example.test",
                                          "bob@example.test": "bob@example.test"}
    assert b"for <" not in message.split(b"\r\n\r\n")[0]


# -- BDAT (RFC 3030) --------------------------------------------------------------


def test_bdat_chunks_are_joined_verbatim():
    h = smtp_harness()
    start(h)
    assert h.replies(b"BDAT 14\r\nSubject: x\r\n\r\n") == ["250 2.0.0 14 octets received"]
    out = h.replies(b"BDAT 10 LAST\r\n.body\r\n.\r\n")
    assert out[0].startswith("250 2.0.0 OK queued as")
    assert body_of(h) == b"Subject: x\r\n\r\n.body\r\n.\r\n"


def test_bdat_pipelined_with_following_commands():
    h = smtp_harness()
    h.read()
    out = h.replies(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.test>\r\n"
                    b"BDAT 5 LAST\r\nhelloNOOP\r\n")
    assert out[-2].startswith("250 2.0.0 OK queued as") and out[-1] == "250 2.0.0 OK"
    assert body_of(h) == b"hello"


def test_bdat_without_transaction_reads_and_discards_the_chunk():
    h = smtp_harness()
    h.read()
    h.replies("EHLO c\r\n")
    assert h.replies(b"BDAT 10\r\nNOOP\r\nXY\r\nNOOP\r\n") == ["503 5.5.1 Need MAIL command", "250 2.0.0 OK"]


def test_bdat_over_size_limit_gets_552():
    h = smtp_harness(max_message_size=100)
    start(h)
    assert h.replies(b"BDAT 150 LAST\r\n" + b"x" * 150) == [
        "552 5.3.4 Message size exceeds fixed maximum message size"]
    assert h.router.deliveries == []


def test_bdat_bad_syntax_is_501():
    h = smtp_harness()
    start(h)
    assert h.replies(b"BDAT ten\r\n") == ["501 5.5.4 Usage: BDAT <size> [LAST]"]


def test_data_during_bdat_is_bad_sequence():
    h = smtp_harness()
    start(h)
    h.replies(b"BDAT 3\r\nabc")
    assert h.replies(b"DATA\r\n") == ["503 5.5.1 BDAT in progress"]


def test_bdat_zero_last_completes():
    h = smtp_harness()
    start(h)
    h.replies(b"BDAT 3\r\nabc")
    assert h.replies(b"BDAT 0 LAST\r\n")[0].startswith("250 2.0.0 OK queued as")
    assert body_of(h) == b"abc"


def test_received_header_names_the_reverse_dns_when_known():
    from twisted.internet.defer import succeed

    looked_up = []

    def reverse(ip):
        looked_up.append(ip)
        return succeed("client.example.net")

    h = smtp_harness(reverse_lookup=reverse)
    start(h)
    h.replies("DATA\r\n")
    h.replies(MESSAGE)
    assert looked_up == ["192.0.2.10"]
    assert h.router.deliveries[0][1].startswith(b"Received: from c.example (client.example.net [192.0.2.10])\r\n")
