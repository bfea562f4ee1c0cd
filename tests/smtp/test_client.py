"""The outbound ESMTP client: scripted peers in memory (iosim, task.Clock), then loopback peers
(mailstack's own server with STARTTLS, a TLS-breaking peer, and Postfix's smtp-sink when installed)."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import SkipTest

from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailstack.config import TLSSettings
from mailstack.envelope import RecipientDSN
from mailstack.smtp.client import (
    MAX_LINE,
    ClientError,
    ClientTimeouts,
    ConnectionCache,
    SMTPClientProtocol,
    TLSFailed,
    TransactionResult,
    dot_stuff,
    parse_reply,
    send_message,
)
from mailstack.smtp.reply import Reply
from mailstack.testing import smtp_harness
from mailstack.tls import client_options, server_options

Answer = bytes | None | Callable[[str], bytes | None]

DEFAULT_EHLO = (b"mx.peer.test greets you", b"PIPELINING", b"SIZE 100000", b"8BITMIME", b"SMTPUTF8")


def ehlo_reply(extensions: tuple[bytes, ...]) -> bytes:
    lines = list(extensions) or [b"mx.peer.test"]
    return b"".join(b"250" + (b" " if i == len(lines) - 1 else b"-") + line + b"\r\n" for i, line in enumerate(lines))


def rcpt_by_name(line: str) -> bytes:
    address = line.partition("<")[2].partition(">")[0]
    if address.startswith("bad"):
        return b"550 5.1.1 No such user\r\n"
    if address.startswith("temp"):
        return b"451 4.2.0 Try later\r\n"
    return b"250 2.1.5 OK\r\n"


class ScriptedServer(Protocol):
    """Answers each command verb from ``answers`` (bytes, None = stay silent, or a function of the line)."""

    def __init__(self, *, greeting: bytes | None = b"220 mx.peer.test ESMTP\r\n",
                 extensions: tuple[bytes, ...] = DEFAULT_EHLO, answers: dict[str, Answer] | None = None,
                 data_end: bytes | None = b"250 2.0.0 queued as X1\r\n") -> None:
        self.greeting = greeting
        self.answers: dict[str, Answer] = {
            "EHLO": ehlo_reply(extensions),
            "HELO": b"250 mx.peer.test\r\n",
            "MAIL": b"250 2.1.0 OK\r\n",
            "RCPT": rcpt_by_name,
            "DATA": b"354 go ahead\r\n",
            "RSET": b"250 2.0.0 OK\r\n",
            "QUIT": b"221 2.0.0 bye\r\n",
            "STARTTLS": b"454 4.7.0 TLS not available\r\n",
            "AUTH": b"235 2.7.0 OK\r\n",
        }
        self.answers.update(answers or {})
        self.data_end = data_end
        self.commands: list[str] = []
        self.received: list[bytes] = []
        self.messages: list[bytes] = []
        self._buffer = b""
        self._in_data = False
        self.lost = False

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        self._buffer += data
        while True:
            if self._in_data:
                if self._buffer.startswith(b".\r\n"):
                    end, skip = 0, 3
                else:
                    idx = self._buffer.find(b"\r\n.\r\n")
                    if idx < 0:
                        return
                    end, skip = idx + 2, idx + 5
                self.messages.append(self._buffer[:end])
                self._buffer = self._buffer[skip:]
                self._in_data = False
                if self.data_end:
                    self.transport.write(self.data_end)
                continue
            idx = self._buffer.find(b"\r\n")
            if idx < 0:
                return
            line, self._buffer = self._buffer[:idx].decode("utf-8"), self._buffer[idx + 2:]
            self.commands.append(line)
            verb = line.split(" ", 1)[0].upper()
            answer = self.answers.get(verb, b"500 5.5.1 unknown\r\n")
            if callable(answer):
                answer = answer(line)
            if answer:
                self.transport.write(answer)
                if verb == "DATA" and answer.startswith(b"354"):
                    self._in_data = True
                if verb == "QUIT":
                    self.transport.loseConnection()
                if answer.startswith(b"221") or answer.startswith(b"421"):
                    self.transport.loseConnection()
            self.after(verb)

    def after(self, verb: str) -> None:
        """Hook for subclasses."""


class MemoryEndpoint:
    """An IStreamClientEndpoint that connects the client to a ScriptedServer through iosim."""

    def __init__(self, server: Protocol | None, clock: Any, fail: Exception | None = None,
                 hang: bool = False) -> None:
        self.server = server
        self.clock = clock
        self.fail = fail
        self.hang = hang
        self.pump: iosim.IOPump | None = None
        self.client_writes: list[bytes] = []
        self.client_transport: iosim.FakeTransport | None = None

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        if self.fail is not None:
            return defer.fail(self.fail)
        if self.hang:
            return defer.Deferred()
        assert self.server is not None
        client = factory.buildProtocol(None)
        ctransport = iosim.FakeTransport(client, isServer=False)
        stransport = iosim.FakeTransport(self.server, isServer=True)
        original = ctransport.write

        def recording_write(data: bytes) -> None:
            self.client_writes.append(data)
            original(data)

        ctransport.write = recording_write  # type: ignore[method-assign]
        self.client_transport = ctransport
        self.pump = iosim.connect(self.server, stransport, client, ctransport, greet=False)
        return defer.succeed(client)

    def flush(self) -> None:
        if self.pump is not None:
            for _ in range(50):
                if not self.pump.pump():
                    break


MESSAGE = b"Subject: hi\r\n\r\nHello\r\n.dot line\r\n"
NO_PIPELINING = (b"mx.peer.test", b"SIZE 100000", b"8BITMIME", b"SMTPUTF8")


class ClientTestCase(SynchronousTestCase):
    def start(self, server: ScriptedServer | None, *, endpoint: MemoryEndpoint | None = None,
              **kw: Any) -> tuple[defer.Deferred[TransactionResult], MemoryEndpoint]:
        self.clock = Clock()
        ep = endpoint or MemoryEndpoint(server, self.clock)
        args: dict[str, Any] = dict(
            reactor=self.clock, host="192.0.2.1", port=25, helo="out.example.test",
            sender="alice@example.test", recipients=["bob@peer.test"], message=MESSAGE,
            smtputf8=False, body_8bit=False, tls_options=None,
            endpoint_factory=lambda reactor, host, port, timeout: ep,
        )
        args.update(kw)
        d = defer.Deferred.fromCoroutine(send_message(**args))
        ep.flush()
        return d, ep

    def send(self, server: ScriptedServer, **kw: Any) -> TransactionResult:
        d, _ = self.start(server, **kw)
        return self.successResultOf(d)

    def error(self, server: ScriptedServer | None, **kw: Any) -> ClientError:
        d, ep = self.start(server, **kw)
        return self.failureResultOf(d, ClientError).value  # type: ignore[no-any-return]


class DotStuffTests(SynchronousTestCase):
    def test_leading_and_inner_dots(self) -> None:
        self.assertEqual(dot_stuff(b".a\r\n.b\r\nc.\r\n..d\r\n"), b"..a\r\n..b\r\nc.\r\n...d\r\n")

    def test_adds_final_crlf(self) -> None:
        self.assertEqual(dot_stuff(b"a\r\nb"), b"a\r\nb\r\n")
        self.assertEqual(dot_stuff(b"a\r\n."), b"a\r\n..\r\n")
        self.assertEqual(dot_stuff(b""), b"")


class ParseReplyTests(SynchronousTestCase):
    def test_enhanced_code_split_off(self) -> None:
        self.assertEqual(parse_reply([b"550 5.1.1 No such user"]), Reply(550, "5.1.1", "No such user"))

    def test_multiline(self) -> None:
        reply = parse_reply([b"250-2.0.0 one", b"250 2.0.0 two"])
        self.assertEqual(reply, Reply(250, "2.0.0", ("one", "two")))

    def test_mismatched_class_is_text(self) -> None:
        self.assertEqual(parse_reply([b"250 5.0.0 odd"]), Reply(250, None, "5.0.0 odd"))
        self.assertEqual(parse_reply([b"220"]), Reply(220, None, ""))


class TransactionTests(ClientTestCase):
    def test_pipelined_transaction(self) -> None:
        server = ScriptedServer()
        d, ep = self.start(server, recipients=["bob@peer.test", "bad@peer.test", "carol@peer.test"])
        result = self.successResultOf(d)
        self.assertEqual(result.data_reply, Reply(250, "2.0.0", "queued as X1"))
        self.assertEqual(result.per_recipient["bob@peer.test"], result.data_reply)
        self.assertEqual(result.per_recipient["carol@peer.test"], result.data_reply)
        self.assertEqual(result.per_recipient["bad@peer.test"], Reply(550, "5.1.1", "No such user"))
        self.assertEqual((result.remote_host, result.tls), ("192.0.2.1", False))
        # MAIL, every RCPT and DATA in one write (RFC 2920)
        self.assertIn(b"MAIL FROM:<alice@example.test> SIZE=%d\r\nRCPT TO:<bob@peer.test>\r\n"
                      b"RCPT TO:<bad@peer.test>\r\nRCPT TO:<carol@peer.test>\r\nDATA\r\n" % len(MESSAGE),
                      ep.client_writes)
        self.assertEqual(server.messages, [b"Subject: hi\r\n\r\nHello\r\n..dot line\r\n"])
        self.assertEqual(server.commands[-1], "QUIT")
        self.assertTrue(server.lost)

    def test_lockstep_without_pipelining(self) -> None:
        server = ScriptedServer(extensions=NO_PIPELINING)
        d, ep = self.start(server, recipients=["bob@peer.test", "temp@peer.test"])
        result = self.successResultOf(d)
        self.assertEqual(result.per_recipient["temp@peer.test"].code, 451)
        self.assertEqual(result.per_recipient["bob@peer.test"].code, 250)
        self.assertEqual(server.commands, ["EHLO out.example.test",
                                           f"MAIL FROM:<alice@example.test> SIZE={len(MESSAGE)}",
                                           "RCPT TO:<bob@peer.test>", "RCPT TO:<temp@peer.test>", "DATA", "QUIT"])
        self.assertFalse(any(b"RCPT" in w and b"MAIL" in w for w in ep.client_writes))

    def test_no_recipient_accepted_lockstep(self) -> None:
        server = ScriptedServer(extensions=NO_PIPELINING)
        result = self.send(server, recipients=["bad@peer.test", "temp@peer.test"])
        self.assertIsNone(result.data_reply)
        self.assertEqual([r.code for r in result.per_recipient.values()], [550, 451])
        self.assertEqual(server.commands[-2:], ["RSET", "QUIT"])
        self.assertNotIn("DATA", server.commands)
        self.assertEqual(server.messages, [])

    def test_no_recipient_accepted_pipelined(self) -> None:
        server = ScriptedServer(answers={"DATA": b"554 5.5.1 No valid recipients\r\n"})
        result = self.send(server, recipients=["bad@peer.test"])
        self.assertIsNone(result.data_reply)
        self.assertEqual(server.commands[-2:], ["RSET", "QUIT"])
        self.assertEqual(server.messages, [])

    def test_no_recipient_but_data_accepted_sends_empty_end(self) -> None:
        server = ScriptedServer(data_end=b"554 5.5.1 no recipients\r\n")
        result = self.send(server, recipients=["bad@peer.test"])
        self.assertIsNone(result.data_reply)
        self.assertEqual(server.messages, [b""])

    def test_data_refused(self) -> None:
        server = ScriptedServer(extensions=NO_PIPELINING, answers={"DATA": b"451 4.3.0 later\r\n"})
        result = self.send(server)
        self.assertEqual(result.data_reply, Reply(451, "4.3.0", "later"))
        self.assertEqual(result.per_recipient["bob@peer.test"], result.data_reply)

    def test_end_of_data_rejected(self) -> None:
        server = ScriptedServer(data_end=b"554 5.7.1 spam\r\n")
        result = self.send(server, recipients=["bob@peer.test", "bad@peer.test"])
        self.assertEqual(result.per_recipient["bob@peer.test"], Reply(554, "5.7.1", "spam"))
        self.assertEqual(result.per_recipient["bad@peer.test"].code, 550)

    def test_large_message_in_chunks(self) -> None:
        body = b"".join(b".line %06d\r\n" % i for i in range(20000))
        server = ScriptedServer(extensions=(b"mx", b"PIPELINING"))
        result = self.send(server, message=body)
        self.assertEqual(result.data_reply.code if result.data_reply else None, 250)
        self.assertEqual(server.messages, [dot_stuff(body)])

    def test_message_without_final_crlf(self) -> None:
        server = ScriptedServer()
        self.send(server, message=b"Subject: x\r\n\r\nno newline")
        self.assertEqual(server.messages, [b"Subject: x\r\n\r\nno newline\r\n"])

    def test_quit_errors_ignored(self) -> None:
        server = ScriptedServer(answers={"QUIT": None})
        d, ep = self.start(server)
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(d).data_reply.code, 250)  # type: ignore[union-attr]

    def test_arguments_with_line_breaks_refused(self) -> None:
        self.failureResultOf(defer.Deferred.fromCoroutine(send_message(
            reactor=Clock(), host="192.0.2.1", port=25, helo="x", sender="a@b\r\nRSET",
            recipients=["c@d"], message=b"", smtputf8=False, body_8bit=False, tls_options=None)), ValueError)


class GreetingAndHelloTests(ClientTestCase):
    def test_multiline_greeting(self) -> None:
        server = ScriptedServer(greeting=b"220-mx.peer.test ESMTP\r\n220-more\r\n220 welcome\r\n")
        self.assertEqual(self.send(server).data_reply.code, 250)  # type: ignore[union-attr]

    def test_greeting_554_is_permanent(self) -> None:
        err = self.error(ScriptedServer(greeting=b"554 5.7.1 go away\r\n"))
        self.assertEqual((err.stage, err.temporary, err.reply.code), ("greeting", False, 554))

    def test_greeting_421_is_temporary(self) -> None:
        err = self.error(ScriptedServer(greeting=b"421 4.3.2 busy\r\n"))
        self.assertEqual((err.stage, err.temporary), ("greeting", True))

    def test_helo_fallback(self) -> None:
        server = ScriptedServer(answers={"EHLO": b"502 5.5.1 what\r\n"})
        result = self.send(server, recipients=["bob@peer.test", "bad@peer.test"])
        self.assertEqual(server.commands[:3], ["EHLO out.example.test", "HELO out.example.test",
                                               "MAIL FROM:<alice@example.test>"])
        self.assertEqual(result.per_recipient["bob@peer.test"].code, 250)

    def test_helo_refused(self) -> None:
        server = ScriptedServer(answers={"EHLO": b"500 no\r\n", "HELO": b"550 5.7.1 no\r\n"})
        err = self.error(server)
        self.assertEqual((err.stage, err.temporary), ("helo", False))

    def test_ehlo_temporary_failure(self) -> None:
        err = self.error(ScriptedServer(answers={"EHLO": b"451 4.3.0 later\r\n"}))
        self.assertEqual((err.stage, err.temporary), ("ehlo", True))


class MailTests(ClientTestCase):
    def test_mail_refused_permanent(self) -> None:
        server = ScriptedServer(extensions=NO_PIPELINING, answers={"MAIL": b"550 5.7.1 sender refused\r\n"})
        err = self.error(server)
        self.assertEqual((err.stage, err.temporary, err.reply.enhanced), ("mail", False, "5.7.1"))
        self.assertNotIn("RCPT TO:<bob@peer.test>", server.commands)
        self.assertEqual(server.commands[-1], "QUIT")

    def test_mail_refused_temporary_pipelined(self) -> None:
        server = ScriptedServer(answers={"MAIL": b"451 4.3.0 later\r\n", "RCPT": b"503 5.5.1 need MAIL\r\n",
                                         "DATA": b"503 5.5.1 need MAIL\r\n"})
        err = self.error(server)
        self.assertEqual((err.stage, err.temporary), ("mail", True))
        self.assertEqual(server.messages, [])

    def test_421_during_rcpt(self) -> None:
        server = ScriptedServer(extensions=NO_PIPELINING, answers={"RCPT": b"421 4.3.2 shutting down\r\n"})
        err = self.error(server)
        self.assertEqual((err.stage, err.temporary, err.reply.code), ("rcpt", True, 421))

    def test_size_exceeded_not_sent(self) -> None:
        server = ScriptedServer(extensions=(b"mx", b"SIZE 10"))
        err = self.error(server)
        self.assertEqual((err.reply.code, err.reply.enhanced, err.temporary), (552, "5.3.4", False))
        self.assertFalse(any(c.startswith("MAIL") for c in server.commands))
        self.assertEqual(server.commands[-1], "QUIT")

    def test_size_zero_means_no_limit(self) -> None:
        server = ScriptedServer(extensions=(b"mx", b"SIZE 0"))
        self.assertEqual(self.send(server).data_reply.code, 250)  # type: ignore[union-attr]

    def test_smtputf8_required(self) -> None:
        err = self.error(ScriptedServer(extensions=(b"mx", b"8BITMIME")), smtputf8=True)
        self.assertEqual((err.reply.enhanced, err.temporary), ("5.6.7", False))

    def test_8bit_required(self) -> None:
        err = self.error(ScriptedServer(extensions=(b"mx", b"SMTPUTF8")), body_8bit=True)
        self.assertEqual((err.reply.enhanced, err.temporary), ("5.6.3", False))

    def test_mail_parameters(self) -> None:
        server = ScriptedServer()
        self.send(server, smtputf8=True, body_8bit=True, sender="ålice@example.test",
                  recipients=["bøb@peer.test"])
        self.assertIn(f"MAIL FROM:<ålice@example.test> SIZE={len(MESSAGE)} BODY=8BITMIME SMTPUTF8", server.commands)
        self.assertIn("RCPT TO:<bøb@peer.test>", server.commands)

    def test_null_sender_without_size(self) -> None:
        server = ScriptedServer(extensions=(b"mx",))
        self.send(server, sender="")
        self.assertIn("MAIL FROM:<>", server.commands)


class TLSAndAuthTests(ClientTestCase):
    def test_starttls_refused_continues_in_plaintext(self) -> None:
        server = ScriptedServer(extensions=(b"mx", b"STARTTLS", b"PIPELINING"))
        result = self.send(server, tls_options=object())
        self.assertFalse(result.tls)
        self.assertIn("STARTTLS", server.commands)
        self.assertEqual(result.data_reply.code, 250)  # type: ignore[union-attr]

    def test_starttls_required_but_refused(self) -> None:
        server = ScriptedServer(extensions=(b"mx", b"STARTTLS"))
        err = self.error(server, tls_options=object(), starttls="required")
        self.assertEqual((err.stage, err.temporary, err.reply.code), ("starttls", True, 454))

    def test_starttls_required_but_not_offered(self) -> None:
        err = self.error(ScriptedServer(extensions=(b"mx",)), tls_options=object(), starttls="required")
        self.assertEqual((err.stage, err.temporary, err.reply.enhanced), ("starttls", True, "4.7.10"))

    def test_starttls_off(self) -> None:
        server = ScriptedServer(extensions=(b"mx", b"STARTTLS"))
        self.send(server, tls_options=object(), starttls="off")
        self.assertNotIn("STARTTLS", server.commands)

    def pretend_tls(self) -> None:
        """STARTTLS 'succeeds' at once: tests the dialogue after the handshake without TLS in memory."""
        def start_tls(proto: SMTPClientProtocol, options: Any, timeout: float) -> defer.Deferred[None]:
            proto.tls = True
            return defer.succeed(None)
        self.patch(SMTPClientProtocol, "start_tls", start_tls)

    def tls_server(self, auth: bytes = b"AUTH LOGIN PLAIN", **answers: Any) -> ScriptedServer:
        return ScriptedServer(extensions=(b"mx", b"STARTTLS", auth, b"PIPELINING"),
                              answers={"STARTTLS": b"220 2.0.0 go\r\n", **answers})

    def test_auth_plain_after_starttls(self) -> None:
        self.pretend_tls()
        server = self.tls_server()
        result = self.send(server, tls_options=object(), starttls="required", auth=("user@x.test", "pässword"))
        self.assertTrue(result.tls)
        token = base64.b64encode(b"\0user@x.test\0p\xc3\xa4ssword").decode()
        self.assertEqual(server.commands[:4], ["EHLO out.example.test", "STARTTLS", "EHLO out.example.test",
                                               f"AUTH PLAIN {token}"])

    def test_auth_refused_is_temporary(self) -> None:
        self.pretend_tls()
        server = self.tls_server(AUTH=b"535 5.7.8 bad credentials\r\n")
        err = self.error(server, tls_options=object(), starttls="required", auth=("u", "p"))
        self.assertEqual((err.stage, err.temporary, err.reply.code), ("auth", True, 535))
        self.assertFalse(any(c.startswith("MAIL") for c in server.commands))

    def test_auth_without_plain(self) -> None:
        self.pretend_tls()
        err = self.error(self.tls_server(auth=b"AUTH CRAM-MD5"), tls_options=object(), auth=("u", "p"))
        self.assertEqual((err.stage, err.temporary), ("auth", True))

    def test_ehlo_after_starttls_refreshes_extensions(self) -> None:
        self.pretend_tls()
        ehlo = iter([b"250-mx\r\n250 STARTTLS\r\n", b"250-mx\r\n250 SIZE 10\r\n"])
        server = self.tls_server(EHLO=lambda line: next(ehlo))
        err = self.error(server, tls_options=object())
        self.assertEqual(err.reply.enhanced, "5.3.4")

    def test_no_auth_without_tls(self) -> None:
        server = ScriptedServer(extensions=(b"mx", b"AUTH PLAIN LOGIN"))
        err = self.error(server, auth=("user", "pw"))
        self.assertEqual((err.stage, err.temporary), ("auth", True))
        self.assertFalse(any(c.startswith("AUTH") for c in server.commands))

    def test_bad_starttls_mode(self) -> None:
        self.failureResultOf(defer.Deferred.fromCoroutine(send_message(
            reactor=Clock(), host="192.0.2.1", port=25, helo="x", sender="a@b", recipients=["c@d"],
            message=b"", smtputf8=False, body_8bit=False, tls_options=None, starttls="maybe")), ValueError)


class ConnectionTests(ClientTestCase):
    def test_connection_refused(self) -> None:
        ep = MemoryEndpoint(None, None, fail=ConnectionRefusedError())
        err = self.error(None, endpoint=ep)
        self.assertEqual((err.stage, err.temporary, err.reply.enhanced), ("connect", True, "4.4.1"))

    def test_connect_timeout(self) -> None:
        ep = MemoryEndpoint(None, None, hang=True)
        d, _ = self.start(None, endpoint=ep, timeouts=ClientTimeouts(connect=30))
        self.assertNoResult(d)
        self.clock.advance(30)
        err = self.failureResultOf(d, ClientError).value
        self.assertEqual((err.stage, err.temporary), ("connect", True))

    def test_greeting_timeout(self) -> None:
        d, ep = self.start(ScriptedServer(greeting=None))
        self.clock.advance(299)
        self.assertNoResult(d)
        self.clock.advance(1)
        err = self.failureResultOf(d, ClientError).value
        self.assertEqual((err.stage, err.temporary, err.reply.enhanced), ("greeting", True, "4.4.2"))
        ep.flush()
        self.assertTrue(ep.client_transport.disconnecting)  # type: ignore[union-attr]

    def test_rcpt_timeout(self) -> None:
        server = ScriptedServer(extensions=NO_PIPELINING, answers={"RCPT": None})
        d, ep = self.start(server, timeouts=ClientTimeouts(rcpt=7))
        self.clock.advance(7)
        self.assertEqual(self.failureResultOf(d, ClientError).value.stage, "rcpt")

    def test_data_end_timeout(self) -> None:
        d, ep = self.start(ScriptedServer(data_end=None))
        self.clock.advance(599)
        self.assertNoResult(d)
        self.clock.advance(1)
        err = self.failureResultOf(d, ClientError).value
        self.assertEqual((err.stage, err.temporary), ("data", True))

    def test_connection_lost_mid_session(self) -> None:
        server = ScriptedServer(extensions=NO_PIPELINING, answers={"MAIL": None})
        d, ep = self.start(server)
        server.transport.loseConnection()
        ep.flush()
        err = self.failureResultOf(d, ClientError).value
        self.assertEqual((err.stage, err.temporary), ("mail", True))


class HostilePeerTests(ClientTestCase):
    def test_endless_line(self) -> None:
        err = self.error(ScriptedServer(greeting=b"220 " + b"x" * (MAX_LINE + 10)))
        self.assertEqual((err.stage, err.temporary, err.reply.enhanced), ("greeting", True, "4.5.0"))

    def test_endless_multiline_reply(self) -> None:
        lines = b"".join(b"250-%s\r\n" % (b"y" * 1000) for _ in range(100))
        err = self.error(ScriptedServer(answers={"EHLO": lines}))
        self.assertEqual((err.stage, err.reply.enhanced), ("ehlo", "4.5.0"))

    def test_malformed_reply(self) -> None:
        err = self.error(ScriptedServer(greeting=b"hello there\r\n"))
        self.assertEqual(err.reply.enhanced, "4.5.0")

    def test_code_changes_within_reply(self) -> None:
        err = self.error(ScriptedServer(greeting=b"220-a\r\n250 b\r\n"))
        self.assertEqual(err.reply.enhanced, "4.5.0")

    def test_unsolicited_replies_bounded(self) -> None:
        proto = SMTPClientProtocol(Clock())
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"250 spam\r\n" * 2000)
        self.assertTrue(transport.disconnecting)
        self.failureResultOf(proto.next_reply(10))


# -- loopback -----------------------------------------------------------------------------


class TLSBreakingServer(ScriptedServer):
    """Says 220 to STARTTLS, then answers the client's TLS hello with garbage."""

    def __init__(self) -> None:
        super().__init__(extensions=(b"mx", b"STARTTLS", b"PIPELINING"),
                         answers={"STARTTLS": b"220 2.0.0 go ahead\r\n"})
        self.broken = False

    def after(self, verb: str) -> None:
        if verb == "STARTTLS":
            self.broken = True

    def dataReceived(self, data: bytes) -> None:
        if self.broken:
            self.transport.write(b"this is not TLS\r\n" * 20)
            self.transport.loseConnection()
            return
        super().dataReceived(data)


class LoopbackTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor

    def listen(self, factory: Any) -> int:
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def send(self, port: int, **kw: Any) -> TransactionResult:
        args: dict[str, Any] = dict(
            reactor=self.reactor, host="127.0.0.1", port=port, helo="out.example.test",
            sender="sender@remote.test", recipients=["alice@example.test"], message=MESSAGE,
            smtputf8=False, body_8bit=False, tls_options=client_options(),
            timeouts=ClientTimeouts(greeting=20, ehlo=20, starttls=20, mail=20, rcpt=20, data_end=20, quit=5),
        )
        args.update(kw)
        return await send_message(**args)

    def test_mailstack_server_starttls_pipelining(self) -> defer.Deferred[None]:
        tmp = Path(tempfile.mkdtemp(prefix="mailstack-tls-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        options = server_options(TLSSettings(tmp / "cert.pem", tmp / "key.pem", True, False), "mail.example.test")
        harness = smtp_harness("smtp", tls_options=options, connect=False, max_recipients=10)
        port = self.listen(harness.factory)
        writes: list[bytes] = []
        original = SMTPClientProtocol.send

        def recording_send(proto: SMTPClientProtocol, data: bytes) -> None:
            writes.append(data)
            original(proto, data)
        self.patch(SMTPClientProtocol, "send", recording_send)

        async def go() -> None:
            recipients = ["alice@example.test", "nobody@example.test", "bob@example.test"]
            result = await self.send(port, recipients=recipients, body_8bit=True,
                                     message=b"Subject: caf\xc3\xa9\r\n\r\n.leading dot\r\n")
            self.assertTrue(result.tls)
            self.assertEqual(result.per_recipient["nobody@example.test"].code, 550)
            self.assertEqual(result.per_recipient["alice@example.test"], result.data_reply)
            self.assertEqual(result.data_reply.code if result.data_reply else None, 250)
            [(envelope, content)] = harness.router.deliveries
            self.assertTrue(content.endswith(b"Subject: caf\xc3\xa9\r\n\r\n.leading dot\r\n"))
            self.assertIn(b"ESMTPS", content)
            self.assertIn(b"STARTTLS\r\n", writes)
            pipelined = [w for w in writes if w.startswith(b"MAIL FROM:")]
            self.assertEqual(len(pipelined), 1)
            self.assertTrue(pipelined[0].endswith(b"RCPT TO:<bob@example.test>\r\nDATA\r\n"))
        return defer.Deferred.fromCoroutine(go())

    def test_smarthost_auth_plain_over_tls(self) -> defer.Deferred[None]:
        tmp = Path(tempfile.mkdtemp(prefix="mailstack-tls-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        options = server_options(TLSSettings(tmp / "cert.pem", tmp / "key.pem", True, False), "mail.example.test")
        harness = smtp_harness("submission", tls_options=options, connect=False)
        port = self.listen(harness.factory)

        async def go() -> None:
            result = await self.send(port, sender="alice@example.test", recipients=["someone@remote.test"],
                                     starttls="required", auth=("alice@example.test", "secret"))
            self.assertTrue(result.tls)
            self.assertEqual(result.data_reply.code if result.data_reply else None, 250)
            [(envelope, content)] = harness.router.deliveries
            self.assertIn(b"ESMTPSA", content)
        return defer.Deferred.fromCoroutine(go())

    def test_tls_failure_then_plaintext_retry(self) -> defer.Deferred[None]:
        server = TLSBreakingServer()
        plain = ScriptedServer(extensions=(b"mx", b"STARTTLS", b"PIPELINING"))
        servers = iter([server, plain])
        port = self.listen(Factory.forProtocol(lambda: next(servers)))

        async def go() -> None:
            try:
                await self.send(port)
            except TLSFailed as e:
                self.assertEqual((e.stage, e.temporary, e.reply.enhanced), ("starttls", True, "4.7.5"))
            else:
                self.fail("TLSFailed not raised")
            result = await self.send(port, starttls="off")
            self.assertFalse(result.tls)
            self.assertEqual(result.data_reply.code if result.data_reply else None, 250)
            self.assertNotIn("STARTTLS", plain.commands)
        return defer.Deferred.fromCoroutine(go())

    def test_connection_refused(self) -> defer.Deferred[None]:
        async def go() -> None:
            listening = self.reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
            closed = listening.getHost().port
            await listening.stopListening()
            with self.assertRaises(ClientError) as caught:
                await self.send(closed)
            self.assertEqual((caught.exception.stage, caught.exception.temporary), ("connect", True))
        return defer.Deferred.fromCoroutine(go())

    def test_smtp_sink(self) -> defer.Deferred[None]:
        binary = shutil.which("smtp-sink") or next(
            (p for p in ("/usr/sbin/smtp-sink", "/usr/lib/postfix/smtp-sink") if os.path.exists(p)), None)
        if binary is None:
            raise SkipTest("Postfix's smtp-sink is not installed (Debian package postfix)")
        tmp = Path(tempfile.mkdtemp(prefix="mailstack-sink-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        dump = tmp / "dump"
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        command = [binary, "-D", str(dump), f"127.0.0.1:{port}", "10"]
        if os.geteuid() == 0:
            command[1:1] = ["-u", "nobody"]
            tmp.chmod(0o777)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def stop() -> None:
            process.terminate()
            process.wait(10)
            assert process.stderr is not None
            process.stderr.close()
        self.addCleanup(stop)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)

        async def go() -> None:
            recipients = [f"user{i}@sink.test" for i in range(5)]
            result = await self.send(port, recipients=recipients, body_8bit=True, tls_options=None,
                                     message=b"Subject: sink\r\n\r\n.one\r\n..two\r\nthree")
            self.assertEqual(sorted(result.per_recipient), recipients)
            self.assertTrue(all(r.code == 250 for r in result.per_recipient.values()))
            self.assertEqual(result.data_reply.code if result.data_reply else None, 250)
            deadline = time.monotonic() + 5
            while not (dump.exists() and b"three" in dump.read_bytes()) and time.monotonic() < deadline:
                await task.deferLater(self.reactor, 0.05, lambda: None)
            content = dump.read_bytes()
            self.assertIn(b"\n.one", content.replace(b"\r\n", b"\n"))
            self.assertIn(b"\n..two", content.replace(b"\r\n", b"\n"))
        return defer.Deferred.fromCoroutine(go())


class DSNTests(ClientTestCase):
    """RFC 3461 §5.2.2: the sender's DSN requests go to a next hop that offers DSN, and only then."""

    DSN_REQUEST = dict(ret="HDRS", envid="id+1 2", recipients=["bob@peer.test", "carol@peer.test"],
                       rcpt_dsn={"bob@peer.test": RecipientDSN(frozenset({"SUCCESS", "FAILURE"}),
                                                               ("rfc822", "bob+x@peer.test"))})

    def test_passed_on_when_offered(self) -> None:
        server = ScriptedServer(extensions=(*DEFAULT_EHLO, b"DSN"))
        result = self.send(server, **self.DSN_REQUEST)
        self.assertTrue(result.dsn)
        self.assertEqual(server.commands[1:4], [
            f"MAIL FROM:<alice@example.test> SIZE={len(MESSAGE)} RET=HDRS ENVID=id+2B1+202",
            "RCPT TO:<bob@peer.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+2Bx@peer.test",
            "RCPT TO:<carol@peer.test>"])

    def test_left_out_when_not_offered(self) -> None:
        server = ScriptedServer()
        result = self.send(server, **self.DSN_REQUEST)
        self.assertFalse(result.dsn)
        self.assertEqual(server.commands[1:4], [f"MAIL FROM:<alice@example.test> SIZE={len(MESSAGE)}",
                                                "RCPT TO:<bob@peer.test>", "RCPT TO:<carol@peer.test>"])


class RequireTLSTests(ClientTestCase):
    def test_not_sent_to_a_server_without_tls_or_requiretls(self) -> None:
        failure = self.error(ScriptedServer(extensions=(*DEFAULT_EHLO, b"REQUIRETLS")), requiretls=True)
        self.assertEqual((failure.reply.code, failure.reply.enhanced, failure.stage), (550, "5.7.30", "ehlo"))
        self.assertFalse(failure.temporary)


class ConnectionCacheTests(SynchronousTestCase):
    """Several messages to one server over one session; a session the server closed meanwhile
    is replaced before anything is sent twice."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.servers: list[ScriptedServer] = []
        self.endpoints: list[MemoryEndpoint] = []
        self.cache = ConnectionCache(self.clock, idle=2.0, per_connection=3)

    def endpoint(self, reactor: Any, host: str, port: int, timeout: float) -> MemoryEndpoint:
        server = ScriptedServer()
        self.servers.append(server)
        ep = MemoryEndpoint(server, self.clock)
        self.endpoints.append(ep)
        return ep

    def send(self, rcpt: str) -> TransactionResult:
        d = defer.Deferred.fromCoroutine(send_message(
            reactor=self.clock, host="192.0.2.1", port=25, helo="out.example.test", sender="alice@example.test",
            recipients=[rcpt], message=MESSAGE, endpoint_factory=self.endpoint, cache=self.cache,
            cache_key=("192.0.2.1", 25)))
        for ep in self.endpoints:
            ep.flush()
        return self.successResultOf(d)

    def test_one_session_carries_several_messages_up_to_the_limit(self) -> None:
        for rcpt in ("a@peer.test", "b@peer.test", "c@peer.test", "d@peer.test"):
            self.assertEqual(self.send(rcpt).per_recipient[rcpt].code, 250)
        first, second = self.servers
        self.assertEqual([c.split(":")[0] for c in first.commands if c.startswith(("EHLO", "MAIL"))],
                         ["EHLO out.example.test", "MAIL FROM", "MAIL FROM", "MAIL FROM"])
        self.assertEqual(first.commands[-1], "QUIT")  # the third message was its last
        self.assertEqual(len(first.messages), 3)
        self.assertEqual(len(second.messages), 1)
        self.cache.close()
        self.endpoints[1].flush()
        self.assertEqual(second.commands[-1], "QUIT")

    def test_an_idle_session_is_closed_after_its_time(self) -> None:
        self.send("a@peer.test")
        self.clock.advance(2.0)
        self.endpoints[0].flush()
        self.assertEqual(self.servers[0].commands[-1], "QUIT")
        self.send("b@peer.test")
        self.assertEqual(len(self.servers), 2)

    def test_a_session_the_server_closed_is_replaced_without_a_second_copy(self) -> None:
        self.send("a@peer.test")
        self.servers[0].transport.loseConnection()  # the server's own idle timeout
        self.endpoints[0].flush()
        result = self.send("b@peer.test")
        self.assertEqual(result.per_recipient["b@peer.test"].code, 250)
        self.assertEqual([len(s.messages) for s in self.servers], [1, 1])

    def test_a_421_at_the_next_mail_is_a_closed_session_too(self) -> None:
        self.send("a@peer.test")
        self.servers[0].answers["MAIL"] = b"421 4.4.2 idle too long\r\n"
        result = self.send("b@peer.test")
        self.assertEqual(result.per_recipient["b@peer.test"].code, 250)
        self.assertEqual([len(s.messages) for s in self.servers], [1, 1])
