"""TRANSACTION and UPDATE states, framing, pipelining, timeouts, limits, shutdown."""

from __future__ import annotations

import os

import pytest
from twisted.internet.defer import Deferred

from mailstack.notify import MailboxEvents
from mailstack.pop3.stream import encode_whole
from mailstack.throttle import ConnectionLimiter

from .harness import file_bytes, maildir_of, pop3_harness, put

ALICE = "alice@example.test"
M1 = b"From: a@example.test\r\nSubject: one\r\n\r\nfirst\r\n.dot line\r\n"
M2 = b"Subject: two\r\n\r\n" + b"body\r\n" * 10
M3 = b"Subject: three\r\n\r\n.\r\n"


@pytest.fixture
def h(tmp_path):
    for i, m in enumerate((M1, M2, M3)):
        put(tmp_path, ALICE, m, seconds=1700000000 + i)
    h = pop3_harness(tmp_path)
    h.read()
    assert h.login().startswith("+OK")
    return h


def total(*ms):
    return sum(len(m) for m in ms)


def test_stat_list_and_uidl(h):
    uids = [m.base.split(",", 1)[0] for m in h.session.messages]  # the unique name without ,S=
    assert h.reply("STAT\r\n") == f"+OK 3 {total(M1, M2, M3)}"
    assert h.lines("LIST\r\n") == [f"+OK 3 messages ({total(M1, M2, M3)} octets)",
                                   f"1 {len(M1)}", f"2 {len(M2)}", f"3 {len(M3)}", "."]
    assert h.reply("LIST 2\r\n") == f"+OK 2 {len(M2)}"
    assert h.lines("UIDL\r\n")[1:] == [f"1 {uids[0]}", f"2 {uids[1]}", f"3 {uids[2]}", "."]
    assert h.reply("UIDL 3\r\n") == f"+OK 3 {uids[2]}"


@pytest.mark.parametrize("command, expected", [
    ("LIST 4", "-ERR No such message"),
    ("LIST 0", "-ERR No such message"),
    ("LIST x", "-ERR Syntax error in arguments"),
    ("LIST 1 2", "-ERR Syntax error in arguments"),
    ("RETR", "-ERR Syntax error in arguments"),
    ("RETR -1", "-ERR Syntax error in arguments"),
    ("RETR 99999999999", "-ERR Syntax error in arguments"),
    ("TOP 1", "-ERR Syntax error in arguments"),
    ("TOP 1 -1", "-ERR Syntax error in arguments"),
    ("TOP 9 1", "-ERR No such message"),
    ("DELE 4", "-ERR No such message"),
    ("UIDL 4", "-ERR No such message"),
    ("RSET x", "-ERR Syntax error in arguments"),
    ("USER alice@example.test", "-ERR Command not valid in this state"),
    ("PASS x", "-ERR Command not valid in this state"),
    ("AUTH PLAIN", "-ERR Command not valid in this state"),
    ("XTND XMIT", "-ERR Unknown command"),
    ("NOOP", "+OK"),
    ("noop", "+OK"),
])
def test_single_replies_in_transaction(h, command, expected):
    assert h.reply(command + "\r\n") == expected
    assert h.session.state.name == "TRANSACTION"


@pytest.mark.parametrize("command", ["STAT", "LIST", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 1", "UIDL"])
def test_transaction_commands_refused_before_login(tmp_path, command):
    h = pop3_harness(tmp_path)
    h.read()
    assert h.reply(command + "\r\n") == "-ERR Command not valid in this state"


def test_retr_sends_the_file_byte_stuffed(h):
    out = h.send("RETR 1\r\n")
    assert out == f"+OK {len(M1)} octets\r\n".encode() + encode_whole(M1)
    assert b"\r\n..dot line\r\n.\r\n" in out
    assert h.send("RETR 3\r\n") == f"+OK {len(M3)} octets\r\n".encode() + b"Subject: three\r\n\r\n..\r\n.\r\n"


def test_top(h):
    assert h.send("TOP 2 0\r\n") == b"+OK Top of message follows\r\nSubject: two\r\n\r\n.\r\n"
    assert h.send("TOP 2 2\r\n") == b"+OK Top of message follows\r\nSubject: two\r\n\r\nbody\r\nbody\r\n.\r\n"
    assert h.send("TOP 1 99\r\n") == b"+OK Top of message follows\r\n" + encode_whole(M1)


def test_dele_rset_and_deleted_messages_are_hidden(h):
    assert h.reply("DELE 1\r\n") == "+OK Message 1 deleted"
    assert h.reply("DELE 1\r\n") == "-ERR Message already deleted"
    assert h.reply("RETR 1\r\n") == "-ERR Message already deleted"
    assert h.reply("LIST 1\r\n") == "-ERR Message already deleted"
    assert h.reply("STAT\r\n") == f"+OK 2 {total(M2, M3)}"
    assert h.lines("LIST\r\n")[1:-1] == [f"2 {len(M2)}", f"3 {len(M3)}"]
    assert h.reply("RSET\r\n") == f"+OK Maildrop has 3 messages ({total(M1, M2, M3)} octets)"
    assert h.reply("STAT\r\n") == f"+OK 3 {total(M1, M2, M3)}"


def test_quit_removes_marked_messages_and_publishes(tmp_path):
    for m in (M1, M2, M3):
        put(tmp_path, ALICE, m)
    events = MailboxEvents()
    seen = []
    events.subscribe(ALICE, lambda a, f: seen.append(a))
    h = pop3_harness(tmp_path, events=events)
    h.read()
    h.login()
    keep = h.session.messages[1].base
    h.reply("DELE 1\r\n")
    h.reply("DELE 3\r\n")
    assert h.reply("QUIT\r\n") == "+OK Logging out, 1 messages left"
    assert h.transport.disconnecting
    assert list(file_bytes(tmp_path, ALICE)) == [keep]
    assert seen == [ALICE]
    assert not h.maildrops.locks.held(ALICE)


def test_quit_reports_messages_that_could_not_be_removed(tmp_path):
    put(tmp_path, ALICE, M1)
    (maildir_of(tmp_path, ALICE) / "new" / "1800000000.M1P1.host,S=3").mkdir()
    h = pop3_harness(tmp_path)
    h.read()
    h.login()
    h.reply("DELE 1\r\n")
    h.reply("DELE 2\r\n")
    assert h.reply("QUIT\r\n") == "-ERR [SYS/TEMP] Some deleted messages were not removed"
    assert h.transport.disconnecting
    assert list(file_bytes(tmp_path, ALICE)) == []
    assert os.listdir(maildir_of(tmp_path, ALICE) / "new") == ["1800000000.M1P1.host,S=3"]


def test_dropped_connection_removes_nothing(h, tmp_path):
    h.reply("DELE 1\r\n")
    h.protocol.connectionLost()
    assert len(file_bytes(tmp_path, ALICE)) == 3
    assert not h.maildrops.locks.held(ALICE)


def test_quit_in_authorization_removes_nothing(tmp_path):
    h = pop3_harness(tmp_path)
    h.read()
    assert h.reply("QUIT\r\n") == "+OK Logging out"
    assert h.transport.disconnecting


def test_snapshot_ignores_mail_delivered_during_the_session(h, tmp_path):
    put(tmp_path, ALICE, b"Subject: late\r\n\r\n")
    assert h.reply("STAT\r\n") == f"+OK 3 {total(M1, M2, M3)}"


def test_message_moved_to_cur_is_still_retrieved(h, tmp_path):
    m = h.session.messages[0]
    maildir = maildir_of(tmp_path, ALICE)
    os.rename(maildir / "new" / m.filename(), maildir / "cur" / (m.filename() + ":2,S"))
    assert h.send("RETR 1\r\n").endswith(encode_whole(M1))


def test_message_removed_by_another_session(h, tmp_path):
    m = h.session.messages[0]
    os.unlink(maildir_of(tmp_path, ALICE) / "new" / m.filename())
    assert h.reply("RETR 1\r\n") == "-ERR Message was removed by another session"
    assert h.reply("NOOP\r\n") == "+OK"


def test_pipelined_commands_get_responses_in_order(h):
    out = h.send("STAT\r\nRETR 3\r\nDELE 3\r\nNOOP\r\nLIST 3\r\n")
    assert out == (f"+OK 3 {total(M1, M2, M3)}\r\n+OK {len(M3)} octets\r\n".encode()
                   + encode_whole(M3) + b"+OK Message 3 deleted\r\n+OK\r\n-ERR Message already deleted\r\n")


def test_lines_split_across_packets_and_bare_lf(h):
    assert h.send("ST") == b""
    assert h.send("AT\r") == b""
    assert h.send("\nNOOP\n") == f"+OK 3 {total(M1, M2, M3)}\r\n+OK\r\n".encode()


def test_overlong_line_is_refused_and_the_session_goes_on(h):
    assert h.reply("NOOP " + "x" * 300 + "\r\n") == "-ERR Line too long"
    assert h.send("x" * 1000) == b""
    assert h.send("y" * 1000 + "\r\nNOOP\r\n") == b"-ERR Line too long\r\n+OK\r\n"
    line = "LIST " + "1".rjust(248, " ")  # 253 octets + CRLF = 255: allowed
    assert len(line) + 2 == 255
    assert h.reply(line + "\r\n") == "-ERR Syntax error in arguments"


def test_invalid_bytes(h):
    assert h.reply(b"NOOP \xff\r\n") == "-ERR Invalid characters in command"
    assert h.reply(b"NO\0OP\r\n") == "-ERR Invalid characters in command"
    assert h.reply("NOOP\r\n") == "+OK"


def test_large_message_is_streamed_in_chunks(tmp_path):
    body = b"".join(b".line %d of a long message\r\n" % i for i in range(100_000))
    content = b"Subject: big\r\n\r\n" + body
    put(tmp_path, ALICE, content)
    h = pop3_harness(tmp_path)
    h.read()
    h.login()
    h.protocol.dataReceived(b"RETR 1\r\nNOOP\r\n")
    assert h.transport.producer not in (None, h.protocol) and h.protocol.busy
    first = bytes(h.transport.value())
    assert len(first) < 200_000  # not the whole message at once
    pulls = 0
    while h.transport.producer is not h.protocol:  # the sender streams; then the session is producer again
        h.transport.producer.resumeProducing()
        pulls += 1
    assert pulls > 10
    out = bytes(h.transport.value())
    assert out == f"+OK {len(content)} octets\r\n".encode() + encode_whole(content) + b"+OK\r\n"


def test_idle_timeout_is_ten_minutes_and_removes_nothing(h, tmp_path):
    h.reply("DELE 1\r\n")
    h.clock.advance(599)
    assert h.reply("NOOP\r\n") == "+OK"
    h.clock.advance(599)
    assert not h.transport.disconnecting
    h.clock.advance(1)
    assert h.read() == b"-ERR [SYS/TEMP] Disconnected for inactivity\r\n"
    assert h.transport.disconnecting
    h.protocol.connectionLost()
    assert len(file_bytes(tmp_path, ALICE)) == 3


def test_connection_limit_per_address(tmp_path):
    limiter = ConnectionLimiter(1)
    h1 = pop3_harness(tmp_path, limiter=limiter)
    assert h1.read().startswith(b"+OK")
    h2 = pop3_harness(tmp_path, limiter=limiter, clock=h1.clock)
    assert h2.read() == b"-ERR [SYS/TEMP] Too many connections from your address\r\n"
    assert h2.transport.disconnecting
    h2.protocol.connectionLost()
    assert limiter.count("192.0.2.10") == 1
    h1.protocol.connectionLost()
    assert limiter.count("192.0.2.10") == 0


def test_shutdown_closes_without_update(h, tmp_path):
    h.reply("DELE 1\r\n")
    d = h.factory.shutdown()
    assert h.read() == b"-ERR [SYS/TEMP] Server shutting down\r\n"
    assert h.transport.disconnecting
    assert not d.called and not h.transport.disconnected
    h.clock.advance(3)  # a TLS peer that never answers close_notify is cut off
    assert h.transport.disconnected
    h.protocol.connectionLost()
    assert d.called
    assert len(file_bytes(tmp_path, ALICE)) == 3


def test_shutdown_waits_for_a_login_in_flight(tmp_path):
    h = pop3_harness(tmp_path)
    h.read()
    h.reply("USER alice@example.test\r\n")
    h.send("PASS wrong\r\n")  # the failure delay is running
    d: Deferred = h.factory.shutdown()
    assert h.read() == b""
    h.clock.advance(10)
    assert h.read() == b"-ERR [AUTH] Authentication failed\r\n-ERR [SYS/TEMP] Server shutting down\r\n"
    h.protocol.connectionLost()
    assert d.called


def test_new_connection_during_shutdown(tmp_path):
    h = pop3_harness(tmp_path, connect=False)
    h.factory.shutting_down = True
    h.protocol.makeConnection(h.transport)
    assert h.read() == b"-ERR [SYS/TEMP] Server shutting down\r\n"
    assert h.transport.disconnecting


def test_internal_error_is_sys_temp_without_traceback(h):
    def broken(*args):
        raise RuntimeError("boom")

    h.session._send = broken
    assert h.reply("RETR 1\r\n") == "-ERR [SYS/TEMP] Internal error, try again later"
    assert h.reply("NOOP\r\n") == "+OK"


def test_ten_thousand_messages_stat_and_list_without_reading_bodies(tmp_path):
    import time

    maildir = maildir_of(tmp_path, ALICE)
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for i in range(10_000):  # empty files whose names claim 4096 octets: LIST must trust the name
        (maildir / "new" / f"{1700000000 + i}.M{i}P1Q{i}R0.host,S=4096").touch()
    h = pop3_harness(tmp_path)
    h.read()
    start = time.perf_counter()
    assert h.login() == "+OK Logged in, 10000 messages (40960000 octets)"
    assert h.reply("STAT\r\n") == "+OK 10000 40960000"
    lines = h.lines("LIST\r\n")
    assert len(lines) == 10_002 and lines[-2] == "10000 4096"
    assert len(h.lines("UIDL\r\n")) == 10_002
    assert time.perf_counter() - start < 3.0


def test_unreadable_message_is_sys_temp(tmp_path):
    (maildir_of(tmp_path, ALICE) / "new").mkdir(parents=True)
    (maildir_of(tmp_path, ALICE) / "new" / "1700000000.M1P1.host,S=3").mkdir()
    h = pop3_harness(tmp_path)
    h.read()
    h.login()
    assert h.reply("RETR 1\r\n") == "-ERR [SYS/TEMP] Cannot read message, try again later"
    assert h.reply("TOP 1 0\r\n") == "-ERR [SYS/TEMP] Cannot read message, try again later"
    assert h.reply("NOOP\r\n") == "+OK"


def test_maildrop_moved_wholesale_by_imap_is_listed_once(h, tmp_path):
    maildir = maildir_of(tmp_path, ALICE)
    for m in h.session.messages:
        os.rename(maildir / "new" / m.filename(), maildir / "cur" / (m.filename() + ":2,S"))
    calls = []
    box = h.session.box
    original = box._refresh_work
    box._refresh_work = lambda *args: calls.append(args) or original(*args)
    for n, content in enumerate((M1, M2, M3), 1):
        assert h.send(f"RETR {n}\r\n").endswith(encode_whole(content))
    assert len(calls) == 1
    h.reply("DELE 2\r\n")
    assert h.reply("QUIT\r\n").startswith("+OK")
    assert len(file_bytes(tmp_path, ALICE)) == 2


def test_pipelined_retrievals_of_files_renamed_by_another_process(h, tmp_path):
    maildir = maildir_of(tmp_path, ALICE)
    for m in h.session.messages:
        os.rename(maildir / "new" / m.filename(), maildir / "cur" / (m.filename() + ":2,S"))
    out = h.send("RETR 1\r\nRETR 2\r\nTOP 3 0\r\nNOOP\r\n")
    expected = (b"+OK %d octets\r\n" % len(M1) + encode_whole(M1) + b"+OK %d octets\r\n" % len(M2)
                + encode_whole(M2) + b"+OK Top of message follows\r\n" + encode_whole(M3, 0) + b"+OK\r\n")
    assert out == expected
