"""The Twisted ``Protocol`` for ESMTP: framing, DATA/BDAT streaming, TLS, timeouts.

Framing: command lines end in LF (a preceding CR is stripped) and are at most
512 octets (RFC 5321 §4.5.3.1.4; a SASL response line may be 12,288, RFC 4954
§4); a longer line gets ``500 5.5.2`` and the session goes on. DATA content is
scanned for ``<CRLF>.<CRLF>`` with bytes.find over each received chunk (no
per-line Python work) and ends on nothing else (RFC 5321 §4.1.1.4); see
``message.py`` for the bare CR/LF policy. BDAT chunks are read by count
(RFC 3030). One command is in flight at a time: pipelined input waits in a
buffer (reading pauses past a limit) until the previous reply is written
(RFC 2920). After STARTTLS anything already buffered is discarded (RFC 3207
§4.2, the CVE-2011-0411 class of command injection).
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailstack import tls as tlsmod
from mailstack.smtp import message as msg
from mailstack.smtp import reply as R
from mailstack.smtp.reply import Reply, SMTPReplyError
from mailstack.smtp.session import Action, Outcome, SMTPSession
from mailstack.throttle import ConnectionLimiter

log = Logger()

MAX_COMMAND_LINE = 512
MAX_AUTH_LINE = 12288
CLOSE_GRACE = 3.0  # seconds a closing peer gets before the connection is aborted
MAX_BUFFER = 1 << 20  # pause reading when this much pipelined input waits
_SKIPPED = b"\0skipped"  # marker: an overlong line was answered and dropped


class Mode(enum.Enum):
    COMMAND = "command"
    AUTH = "auth"
    DATA = "data"
    BDAT = "bdat"
    CLOSED = "closed"


class ESMTPProtocol(Protocol):
    def __init__(self, factory: SMTPFactory) -> None:
        self.factory = factory
        self.clock = factory.clock
        self.session: SMTPSession | None = None
        self.mode = Mode.COMMAND
        self.buffer = b""
        self.busy = False
        self.paused = False
        self.closing = False
        self.discarding_line = False
        self.tls = factory.implicit_tls
        self.peer_ip = ""
        self.rdns_name: str | None = None
        self.counted = False
        self._timer: Any = None
        self._finished: Deferred[None] = Deferred()
        # DATA state
        self._chunks: list[bytes] = []
        self._size = 0
        self._tail = b""
        self._overflow = False
        # BDAT state
        self._bdat_left = 0
        self._bdat_last = False
        self._bdat_discard = False
        self._bdat_reply: Reply | None = None

    # -- connection lifecycle -------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer_ip = getattr(peer, "host", "") or ""
        f = self.factory
        if not f.limiter.acquire(self.peer_ip):
            log.warn("{role} refused {ip}: too many connections", role=f.role, ip=self.peer_ip)
            self.transport.write(R.TOO_MANY_CONNECTIONS.to_bytes())
            self.mode = Mode.CLOSED
            self._lose()
            return
        self.counted = True
        if f.shutting_down:
            self.transport.write(R.SHUTTING_DOWN.to_bytes())
            self.mode = Mode.CLOSED
            self._lose()
            return
        f.connections.add(self)
        self.session = f.make_session(self.peer_ip, self.tls, self._tls_info, lambda: self.rdns_name)
        if f.reverse_lookup is not None:
            lookup = f.reverse_lookup(self.peer_ip)
            lookup.addCallback(self._got_rdns)
            lookup.addErrback(lambda failure: None)  # no name: the trace header shows [ip] only
        self._timer = self.clock.callLater(f.command_timeout, self._timed_out)
        self._write(self.session.greeting())

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        if reason.check(SSL.Error):
            log.warn("{role} TLS failure with {ip}: {error}", role=self.factory.role, ip=self.peer_ip,
                     error=reason.getErrorMessage())
        self.mode = Mode.CLOSED
        if self.counted:
            self.factory.limiter.release(self.peer_ip)
            self.counted = False
        self.factory.connections.discard(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._chunks = []
        if not self._finished.called:
            self._finished.callback(None)

    def _got_rdns(self, name: str | None) -> None:
        self.rdns_name = name

    def _tls_info(self) -> str | None:
        return tlsmod.describe(self.transport)

    def _timed_out(self) -> None:
        log.info("{role} {session_id} timed out", role=self.factory.role,
                 session_id=self.session.session_id if self.session else "")
        self._close_with(R.TIMEOUT)

    def _close_with(self, reply: Reply) -> None:
        if self.mode is Mode.CLOSED:
            return
        self._write(reply)
        self.mode = Mode.CLOSED
        self._lose()

    def _lose(self) -> None:
        """Close; abort if the peer has not let go within CLOSE_GRACE seconds.

        A TLS close waits for the peer's close_notify, which a client may never
        send; without the abort, one such client would hold up a shutdown.
        """
        self.transport.loseConnection()
        self.clock.callLater(CLOSE_GRACE, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self._finished.called:
            self.transport.abortConnection()

    def shutdown(self) -> Deferred[None]:
        """Say 421 and close; a delivery in flight finishes and is answered first."""
        self.closing = True
        if not self.busy:
            self._close_with(R.SHUTTING_DOWN)
        return self._finished

    def _write(self, reply: Reply) -> None:
        self.transport.write(reply.to_bytes())

    def _touch(self) -> None:
        if self._timer is not None and self._timer.active():
            timeout = self.factory.data_timeout if self.mode in (Mode.DATA, Mode.BDAT) else self.factory.command_timeout
            self._timer.reset(timeout)

    # -- input --------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.mode is Mode.CLOSED:
            return
        self._touch()
        if self.mode is Mode.DATA and not self.buffer and not self.busy:
            self._data_input(data)
        else:
            self.buffer += data
        if self.busy:
            if len(self.buffer) > MAX_BUFFER and not self.paused:
                self.paused = True
                self.transport.pauseProducing()
            return
        self._process()

    def _process(self) -> None:
        while self.buffer and not self.busy and self.mode not in (Mode.CLOSED,):
            if self.mode is Mode.DATA:
                data, self.buffer = self.buffer, b""
                self._data_input(data)
            elif self.mode is Mode.BDAT:
                self._bdat_input()
            else:
                line = self._next_line()
                if line is None:
                    return
                if line is not _SKIPPED:
                    self._line_received(line)
        if self.paused and not self.busy and self.mode is not Mode.CLOSED:
            self.paused = False
            self.transport.resumeProducing()

    def _next_line(self) -> bytes | None:
        # RFC 4954 §4: a SASL response, or an AUTH command with an initial response, may be 12,288 octets
        auth = self.mode is Mode.AUTH or self.buffer[:5].upper() == b"AUTH "
        limit = MAX_AUTH_LINE if auth else MAX_COMMAND_LINE
        idx = self.buffer.find(b"\n")
        if idx < 0:
            if len(self.buffer) > limit:  # RFC 5321 §4.5.3.1.4: drop the rest of this line
                self.discarding_line = True
                self.buffer = b""
            return None
        line, self.buffer = self.buffer[:idx], self.buffer[idx + 1:]
        if self.discarding_line or idx + 1 > limit:
            self.discarding_line = False
            self._write(R.LINE_TOO_LONG)
            if self.mode is Mode.AUTH and self.session is not None:
                self.session.sasl = None
                self.mode = Mode.COMMAND
            return _SKIPPED
        return line[:-1] if line.endswith(b"\r") else line

    def _line_received(self, raw: bytes) -> None:
        session = self.session
        assert session is not None
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._write(R.SYNTAX.with_text("Invalid characters in command"))
            return
        if "\0" in line:
            self._write(R.SYNTAX.with_text("Invalid characters in command"))
            return
        if self.mode is Mode.AUTH:
            self.mode = Mode.COMMAND
            result = session.auth_response(line)
        else:
            result = session.handle(line)
        self._dispatch(result)

    # -- replies and actions ----------------------------------------------------------

    def _dispatch(self, result: Any) -> None:
        if isinstance(result, Outcome):
            self._apply(result)
            return
        self.busy = True
        d = Deferred.fromCoroutine(result) if inspect.iscoroutine(result) else result
        d.addErrback(self._internal_error)
        d.addCallback(self._resume)

    def _internal_error(self, failure: Failure) -> Outcome:
        if failure.check(SMTPReplyError):
            return Outcome(failure.value.reply)
        log.failure("{role} session error", failure, role=self.factory.role)
        return Outcome(R.TRY_AGAIN)

    def _resume(self, outcome: Outcome) -> None:
        self.busy = False
        if self.mode is Mode.CLOSED:
            return
        self._apply(outcome)
        if self.closing and self.mode is not Mode.CLOSED:
            self._close_with(R.SHUTTING_DOWN)
            return
        self._process()

    def _apply(self, outcome: Outcome) -> None:
        action = outcome.action
        if action is Action.BDAT or action is Action.BDAT_DISCARD:
            self._start_bdat(outcome)
            return
        if outcome.reply is not None:
            self._write(outcome.reply)
        if action is Action.NONE:
            return
        if action is Action.CLOSE:
            self.mode = Mode.CLOSED
            self._lose()
        elif action is Action.DATA:
            self._start_data()
        elif action is Action.AUTH:
            self.mode = Mode.AUTH
        elif action is Action.STARTTLS:
            self._start_tls()

    def _start_tls(self) -> None:
        self.buffer = b""  # RFC 3207 §4.2: nothing sent before the handshake is a command
        self.transport.startTLS(self.factory.tls_options)
        self.tls = True
        assert self.session is not None
        self.session.tls_started()

    # -- DATA ---------------------------------------------------------------------------

    def _start_data(self) -> None:
        self.mode = Mode.DATA
        self._chunks = []
        self._size = 0
        self._tail = b"\r\n"  # the CRLF that ended the DATA command starts the first line
        self._overflow = False
        self._touch()

    def _data_input(self, data: bytes) -> None:
        search = self._tail + data
        idx = search.find(b"\r\n.\r\n")
        if idx < 0:
            self._append(data)
            self._tail = search[-4:]
            return
        cut = idx + 2 - len(self._tail)  # keep the CRLF that ends the last line
        if cut >= 0:
            self._append(data[:cut])
        else:
            self._trim(-cut)
        rest = search[idx + 5:]
        self.mode = Mode.COMMAND
        self._touch()
        content = b"".join(self._chunks)
        self._chunks = []
        problem = R.MESSAGE_TOO_BIG if self._overflow else None
        self.buffer = rest + self.buffer
        assert self.session is not None
        self._dispatch(self.session.finish_message(msg.unstuff(content), problem))

    def _append(self, data: bytes) -> None:
        if self._overflow or not data:
            return
        self._size += len(data)
        if self._size > self.factory.max_message_size + 1024:  # slack for dot-stuffing
            self._overflow = True
            self._chunks = []
            return
        self._chunks.append(data)

    def _trim(self, n: int) -> None:
        while n > 0 and self._chunks:
            last = self._chunks[-1]
            if len(last) <= n:
                n -= len(last)
                self._chunks.pop()
            else:
                self._chunks[-1] = last[:-n]
                n = 0

    # -- BDAT ---------------------------------------------------------------------------

    def _start_bdat(self, outcome: Outcome) -> None:
        self.mode = Mode.BDAT
        self._bdat_left = outcome.size
        self._bdat_last = outcome.last
        self._bdat_discard = outcome.action is Action.BDAT_DISCARD
        self._bdat_reply = outcome.reply
        self._chunks = []
        if outcome.size == 0:
            self._bdat_done()

    def _bdat_input(self) -> None:
        take = self.buffer[: self._bdat_left]
        self.buffer = self.buffer[len(take):]
        self._bdat_left -= len(take)
        if not self._bdat_discard:
            self._chunks.append(take)
        if self._bdat_left == 0:
            self._bdat_done()

    def _bdat_done(self) -> None:
        self.mode = Mode.COMMAND
        chunk = b"".join(self._chunks)
        self._chunks = []
        if self._bdat_discard:
            assert self._bdat_reply is not None
            self._write(self._bdat_reply)
            return
        assert self.session is not None
        self._dispatch(self.session.bdat_chunk(chunk, self._bdat_last))


class SMTPFactory(Factory):
    """Builds one ESMTP protocol per connection for one role (smtp, submission, submissions)."""

    protocol = ESMTPProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        *,
        role: str,
        make_session: Callable[[str, bool, Callable[[], str | None], Callable[[], str | None]], SMTPSession],
        clock: IReactorTime,
        limiter: ConnectionLimiter,
        tls_options: Any,
        implicit_tls: bool,
        max_message_size: int,
        command_timeout: float,
        data_timeout: float,
        reverse_lookup: Callable[[str], Deferred[str | None]] | None = None,
    ) -> None:
        self.role = role
        self.reverse_lookup = reverse_lookup
        self.make_session = make_session
        self.clock = clock
        self.limiter = limiter
        self.tls_options = tls_options
        self.implicit_tls = implicit_tls
        self.max_message_size = max_message_size
        self.command_timeout = command_timeout
        self.data_timeout = data_timeout
        self.connections: set[ESMTPProtocol] = set()
        self.shutting_down = False

    def buildProtocol(self, addr: Any) -> ESMTPProtocol:
        p = ESMTPProtocol(self)
        return p

    def shutdown(self) -> Deferred[Any]:
        """Close every connection (421 4.3.2) once its in-flight work is answered."""
        from twisted.internet.defer import DeferredList

        self.shutting_down = True
        return DeferredList([p.shutdown() for p in list(self.connections)])
