"""The Twisted ``Protocol`` for ESMTP: framing, DATA/BDAT streaming, TLS, timeouts.

Framing: command lines end in LF (a preceding CR is stripped) and are at most
512 octets (RFC 5321 §4.5.3.1.4; a SASL response line may be 12,288, RFC 4954
§4); a longer line gets ``500 5.5.2`` and the session goes on. DATA content is
scanned for ``<CRLF>.<CRLF>`` with bytes.find over each received chunk (no
per-line Python work) and ends on nothing else (RFC 5321 §4.1.1.4); see
``message.py`` for the bare CR/LF policy. BDAT chunks are read by count
(RFC 3030). One command is in flight at a time (RFC 2920 pipelining); the
connection skeleton (limits, framing, timers, STARTTLS buffer discard, closing)
is ``mailstack.lineserver``, shared with POP3.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from mailstack import tls as tlsmod
from mailstack.lineserver import LineServerFactory, LineServerProtocol, Mode
from mailstack.smtp import message as msg
from mailstack.smtp import reply as R
from mailstack.smtp.reply import Reply, SMTPReplyError
from mailstack.smtp.session import Action, Outcome, SMTPSession
from mailstack.throttle import ConnectionLimiter

# RFC 5321 §4.5.3.1.4's 512, plus what the extensions add: 500 for RCPT's NOTIFY and ORCPT
# (RFC 3461 §4), 100 + 500 for MAIL's ENVID/RET and AUTH (RFC 3461, RFC 4954 §5), 26 for SIZE
MAX_COMMAND_LINE = 512 + 100 + 500 + 26
MAX_AUTH_LINE = 12288  # RFC 4954 §4
MAX_BUFFER = 1 << 20  # pause reading when this much pipelined input waits


class ESMTPProtocol(LineServerProtocol):
    replies: ClassVar[Any] = R
    outcome_type: ClassVar[Any] = Outcome
    max_line = MAX_COMMAND_LINE
    max_auth_line = MAX_AUTH_LINE
    max_buffer = MAX_BUFFER

    def __init__(self, factory: SMTPFactory) -> None:
        super().__init__(factory)
        self.rdns_name: str | None = None
        # DATA state
        self._chunks: list[bytes] = []
        self._size = 0
        self._tail = b""
        self._overflow = False
        # BDAT state (the chunk's octets are read by the skeleton's read_octets)
        self._bdat_last = False
        self._bdat_discard = False
        self._bdat_reply: Reply | None = None

    # -- hooks ------------------------------------------------------------------------

    def make_session(self) -> SMTPSession:
        f = self.factory
        session = f.make_session(self.peer_ip, self.tls, self._tls_info, lambda: self.rdns_name)
        if f.reverse_lookup is not None:
            lookup = f.reverse_lookup(self.peer_ip)
            lookup.addCallback(self._got_rdns)
            lookup.addErrback(lambda failure: None)  # no name: the trace header shows [ip] only
        return session

    def idle_timeout(self) -> float:
        in_data = self.mode is Mode.DATA or self.mode is Mode.BDAT
        return self.factory.data_timeout if in_data else self.factory.command_timeout

    def line_limit(self) -> int:
        # RFC 4954 §4: a SASL response, or an AUTH command with an initial response, may be 12,288 octets
        auth = self.mode is Mode.AUTH or self.buffer[:5].upper() == b"AUTH "
        return MAX_AUTH_LINE if auth else MAX_COMMAND_LINE

    def auth_aborted(self) -> None:
        self.session.sasl = None

    def take_directly(self, data: bytes) -> bool:
        if self.mode is Mode.DATA:
            self._data_input(data)
            return True
        return False

    def consume_special(self) -> bool:
        if self.mode is Mode.DATA:
            data = bytes(self.buffer)
            self.buffer.clear()
            self._data_input(data)
            return True
        return False

    def session_closed(self) -> None:
        self._chunks = []

    def error_outcome(self, failure: Failure) -> Outcome:
        if isinstance(failure.value, SMTPReplyError):
            return Outcome(failure.value.reply)
        return super().error_outcome(failure)

    def _got_rdns(self, name: str | None) -> None:
        self.rdns_name = name

    def _tls_info(self) -> str | None:
        return tlsmod.describe(self.transport)

    # -- outcomes ------------------------------------------------------------------------

    def apply(self, outcome: Outcome) -> None:
        action = outcome.action
        if action is Action.BDAT or action is Action.BDAT_DISCARD:
            self._start_bdat(outcome)
            return
        if outcome.reply is not None:
            self.write(outcome.reply)
        if action is Action.NONE:
            return
        if action is Action.CLOSE:
            self.hang_up()
        elif action is Action.DATA:
            self._start_data()
        elif action is Action.AUTH:
            self.mode = Mode.AUTH
        elif action is Action.STARTTLS:
            self.start_tls()  # RFC 3207 §4.2: buffered input is discarded, state reset

    # -- DATA ---------------------------------------------------------------------------

    def _start_data(self) -> None:
        self.mode = Mode.DATA
        self._chunks = []
        self._size = 0
        self._tail = b"\r\n"  # the CRLF that ended the DATA command starts the first line
        self._overflow = False
        self.touch()

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
        self.touch()
        content = b"".join(self._chunks)
        self._chunks = []
        problem = R.MESSAGE_TOO_BIG if self._overflow else None
        self.buffer[0:0] = rest
        self.dispatch(self.session.finish_message(msg.unstuff(content), problem))

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
        self._bdat_last = outcome.last
        self._bdat_discard = outcome.action is Action.BDAT_DISCARD
        self._bdat_reply = outcome.reply
        self._chunks = []
        sink = _discard if self._bdat_discard else self._chunks.append
        self.read_octets(outcome.size, sink, self._bdat_done)

    def _bdat_done(self) -> None:
        self.mode = Mode.COMMAND
        chunk = b"".join(self._chunks)
        self._chunks = []
        if self._bdat_discard:
            assert self._bdat_reply is not None
            self.write(self._bdat_reply)
            return
        self.dispatch(self.session.bdat_chunk(chunk, self._bdat_last))


def _discard(data: bytes) -> None:
    """The sink for a BDAT chunk that was already refused."""


class SMTPFactory(LineServerFactory):
    """Builds one ESMTP protocol per connection for one role (smtp, submission, submissions)."""

    protocol = ESMTPProtocol  # type: ignore[assignment]

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
        super().__init__(role=role, clock=clock, limiter=limiter, tls_options=tls_options,
                         implicit_tls=implicit_tls)
        self.make_session = make_session
        self.max_message_size = max_message_size
        self.command_timeout = command_timeout
        self.data_timeout = data_timeout
        self.reverse_lookup = reverse_lookup

    def buildProtocol(self, addr: Any) -> ESMTPProtocol:
        return ESMTPProtocol(self)
