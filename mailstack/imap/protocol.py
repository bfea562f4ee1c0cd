"""The Twisted ``Protocol`` for IMAP on the shared connection skeleton: literals, IDLE, timeouts.

Framing (RFC 3501 §2.2, §4.3, §7.5): a command is one or more lines; a line
ending in ``{n}`` announces a literal of n octets, which the server invites
with a ``+`` continuation, and ``{n+}`` (RFC 7888 LITERAL+) is sent without
waiting. The literal's octets are read by the skeleton's counted raw-octets
mode (``read_octets``), never as lines. Caps: a line may hold 64 KiB, a whole
non-APPEND command 1 MiB, an APPEND literal ``limits.message_size``. A
synchronizing literal over its cap is refused (``NO [TOOBIG]`` / ``BAD``)
before any of it is read; a non-synchronizing one is refused and the
connection closed (RFC 7888 §4), since its octets are already on their way.

Everything else is :mod:`mailstack.lineserver`, as for SMTP and POP3: the
per-listener and per-address caps, one command in flight with iterative
dispatch (any number of pipelined commands is answered in order), at most
100 commands per reactor turn, output backpressure, STARTTLS buffer discard
(RFC 3501 §6.2.1, the command-injection class of CVE-2011-0411), the session
boundary and closing. The autologout timer is 31 minutes (RFC 3501 §5.4 asks
for at least 30; RFC 2177 clients re-issue IDLE every 29) and runs only while
the server waits for the client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailstack.imap.mailboxes import MAX_APPEND_MESSAGES
from mailstack.imap.parse import LITERAL_AT_END, ParseError, split_tag
from mailstack.imap.response import Response, status
from mailstack.imap.session import Action, IMAPSession
from mailstack.lineserver import LineServerFactory, LineServerProtocol, Mode
from mailstack.throttle import ConnectionLimiter

log = Logger()

MAX_LINE = 64 * 1024
MAX_COMMAND = 1 << 20
MAX_BUFFER = 1 << 20
AUTOLOGOUT = 31 * 60.0
CLOSE_GRACE = 2.0
OUTPUT_CHUNK = 64 * 1024


class Replies:
    """What the skeleton says on its own (RFC 3501 §7.1.5 BYE, §7.1.3 BAD)."""

    TOO_MANY_CONNECTIONS = Response(b"* BYE Too many connections, try again later\r\n")
    SHUTTING_DOWN = Response(b"* BYE Server shutting down\r\n")
    TIMEOUT = Response(b"* BYE Autologout; idle for too long\r\n")
    LINE_TOO_LONG = Response(b"* BAD Line too long\r\n")
    TRY_AGAIN = Response(b"* BAD Internal server error, try again\r\n")
    INVALID_CHARACTERS = Response(b"* BAD Invalid characters\r\n")
    LITERAL_TOO_LARGE = Response(b"* BYE Literal too large\r\n")
    CORRUPT_INPUT = Response(b"* BYE Compressed input is corrupt\r\n")
    INFLATED_TOO_LARGE = Response(b"* BYE Compressed input inflates past any command's size\r\n")


class IMAPProtocol(LineServerProtocol):
    replies: ClassVar[Any] = Replies
    max_line = MAX_LINE
    max_auth_line = MAX_LINE
    max_buffer = MAX_BUFFER
    close_grace = CLOSE_GRACE

    def __init__(self, factory: IMAPFactory) -> None:
        super().__init__(factory)
        self.parts: list[bytes] = []  # the lines and literals of the command being read
        self.size = 0
        # A command's responses are gathered and written at its end (or every 64 KiB):
        # one TLS record and one transport write instead of one per response line.
        self._gathering = False
        self._out: list[bytes] = []
        self._out_size = 0
        self._tag = "*"  # the tag of the command in progress (a SASL exchange keeps AUTHENTICATE's)

    # -- hooks ---------------------------------------------------------------------------

    def make_session(self) -> IMAPSession:
        return self.factory.make_session(self.peer_ip, self.tls, self.send)

    def max_inflated(self) -> int:
        return int(self.factory.max_message_size) + MAX_COMMAND  # the largest APPEND and its words

    def greeting(self) -> Response:
        return Response(self.session.greeting())

    def idle_timeout(self) -> float:
        return float(self.factory.autologout)

    def send(self, data: bytes) -> None:
        """The session's one way to the client: finished response bytes."""
        if self.mode is Mode.CLOSED:
            return
        if not self._gathering:
            self.transport.write(data)
            return
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= OUTPUT_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out, self._out_size = [], 0
            if self.mode is not Mode.CLOSED:
                self.transport.write(data)

    def _run(self, work: Any) -> None:
        """Dispatch a session coroutine, gathering what it sends until its outcome is applied."""
        self._gathering = True
        self.dispatch(work)

    def session_closed(self) -> None:
        self.parts, self._out = [], []
        self.session.logout()

    def error_outcome(self, failure: Failure) -> Action:
        log.failure("imap {session_id}: session error", failure, session_id=self.session.session_id)
        # after anything the command already said; the command's tag, so the client stops waiting
        if self._tag == "*":
            self.send(Replies.TRY_AGAIN.data)
        else:
            self.send(status(self._tag, "NO", "Internal error, try again later", "SERVERBUG").data)
        return Action.NONE

    def line_dropped(self) -> None:
        self.parts, self.size = [], 0  # the rest of an overlong command is not a command
        if self.mode is Mode.IDLE:  # not DONE: IDLE ends with BAD (RFC 2177 §3)
            self.mode = Mode.COMMAND
            self.session.idle_done(b"")
        elif self.mode is Mode.AUTH:  # an overlong SASL response cancels the exchange (RFC 3501 §6.2.2)
            self.mode = Mode.COMMAND
            self._run(self.session.sasl_response(b"*"))

    def apply(self, outcome: Action) -> None:
        self._gathering = False
        self._flush()
        if outcome is Action.CLOSE:
            self.hang_up()
        elif outcome is Action.STARTTLS:
            self.parts, self.size = [], 0
            self.start_tls()
        elif outcome is Action.SASL:
            self.mode = Mode.AUTH
        elif outcome is Action.IDLE:
            self.mode = Mode.IDLE
        elif outcome is Action.COMPRESS:  # the OK above went out as it is; all after it is compressed
            self.start_compression()

    # -- framing: lines and literals -------------------------------------------------------

    def line_received(self, raw: bytes) -> None:
        session = self.session
        if self.mode is Mode.AUTH:
            self.mode = Mode.COMMAND
            self._run(session.sasl_response(raw))
            return
        if self.mode is Mode.IDLE:
            self.mode = Mode.COMMAND
            session.idle_done(raw)
            return
        self.size += len(raw) + 2
        m = LITERAL_AT_END.search(raw)
        if m is None:
            self.parts.append(raw)
            command = b"".join(self.parts) if len(self.parts) > 1 else raw
            self.parts, self.size = [], 0
            self._tag = _tag_of(command)
            self._run(session.handle(command))
            return
        self.parts.append(raw + b"\r\n")
        n, nonsync = int(m.group(1)), bool(m.group(2))
        refusal = self._literal_refusal(n)
        if refusal is not None:
            self.parts, self.size = [], 0
            self.send(refusal)
            if nonsync:  # RFC 7888 §4: the octets are already coming; refuse and close
                self.close_with(Replies.LITERAL_TOO_LARGE)
            return
        self.size += n
        if not nonsync:
            self.send(b"+ Ready for literal data\r\n")
        self.read_octets(n, self._literal_octets, _nothing)

    def _literal_octets(self, data: bytes) -> None:
        self.parts.append(data)

    def _literal_refusal(self, n: int) -> bytes | None:
        """None when a literal of ``n`` octets may be read, else the tagged refusal."""
        try:
            tag, name, _ = split_tag(self.parts[0])
        except ParseError:
            tag, name = "*", ""
        if name == "APPEND":  # message literals, plus the command's own words
            if n > self.factory.max_message_size or self.size + n > self.factory.max_message_size + MAX_COMMAND:
                return status(tag, "NO", "Message too large", "TOOBIG").data
            if len(self.parts) > 2 * MAX_APPEND_MESSAGES:  # a line and a literal per message (or part)
                return status(tag, "NO", "Too many literals in one APPEND", "LIMIT").data
            return None
        if self.size + n > MAX_COMMAND:
            return status(tag, "BAD", "Command too long", "TOOBIG").data
        return None


def _tag_of(command: bytes) -> str:
    """The command's tag for a last-resort answer (the session checks the grammar)."""
    end = command.find(b" ", 0, 100)
    tag = command[:end] if end > 0 else b""
    return tag.decode("ascii") if tag and tag.isascii() and tag.isalnum() else "*"


def _nothing() -> None:
    """A literal's end: the command goes on with its next line."""


class IMAPFactory(LineServerFactory):
    """One IMAP protocol per connection (``imap`` on 143 with STARTTLS, ``imaps`` on 993)."""

    protocol = IMAPProtocol  # type: ignore[assignment]  # Factory declares a Protocol class

    def __init__(self, *, make_session: Callable[[str, bool, Callable[[bytes], None]], IMAPSession],
                 clock: IReactorTime, limiter: ConnectionLimiter, tls_options: Any, implicit_tls: bool,
                 max_message_size: int, autologout: float = AUTOLOGOUT) -> None:
        super().__init__(role="imaps" if implicit_tls else "imap", clock=clock, limiter=limiter,
                         tls_options=tls_options, implicit_tls=implicit_tls)
        self.make_session = make_session
        self.max_message_size = max_message_size
        self.autologout = autologout

    def buildProtocol(self, addr: Any) -> IMAPProtocol:
        return IMAPProtocol(self)
