"""The Twisted ``Protocol`` for ManageSieve on the shared connection skeleton: literals, SASL, timeouts.

Framing (RFC 5804 §1.1, §4): a command is one line, or several when a line
ends in a literal marker: ``{n+}`` (what RFC 5804 §4 has clients send) or
``{n}`` (taken the same way; ManageSieve has no continuation request, so a
client sends the octets at once either way). The literal's octets are read by
the skeleton's counted raw-octets mode (``read_octets``), never as lines, and
the command goes to the session whole. Caps: a line may hold 8 KiB; a literal
of PUTSCRIPT or CHECKSCRIPT may hold one script (the store's and the Sieve
parser's limit), any other literal 8 KiB. A literal over its cap is read and
dropped, and the command is answered ``NO`` (``QUOTA/MAXSIZE`` for PUTSCRIPT)
once it ends, so the session goes on; one far larger (over 16 MiB) ends the
connection with ``BYE``, since reading it would only waste the link.

A SASL exchange (RFC 5804 §2.1) writes an empty challenge (``""``) and reads
one string, quoted or literal, as the response.

Everything else is :mod:`mailstack.lineserver`, as for SMTP, POP3 and IMAP:
the per-listener and per-address caps, one command in flight with iterative
dispatch, at most 100 commands per reactor turn, output backpressure,
STARTTLS buffer discard (after which the capabilities are re-issued, RFC 5804
§2.2), the session boundary and closing. The idle timeout is 31 minutes once
authenticated (RFC 5804 §1.2 asks for at least 30) and 5 minutes before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailstack.lineserver import LineServerFactory, LineServerProtocol, Mode
from mailstack.managesieve import reply as R
from mailstack.managesieve.parse import LITERAL_AT_END
from mailstack.managesieve.reply import Reply
from mailstack.managesieve.session import Action, ManageSieveSession, Outcome, State
from mailstack.throttle import ConnectionLimiter

log = Logger()

MAX_LINE = 8192
MAX_BUFFER = 1 << 20
DISCARD_LIMIT = 16 << 20  # a literal over its cap but under this is read and dropped; a larger one ends the session
SCRIPT_COMMANDS = frozenset({b"PUTSCRIPT", b"CHECKSCRIPT"})
PREAUTH_TIMEOUT = 5 * 60.0
AUTOLOGOUT = 31 * 60.0
CLOSE_GRACE = 2.0
EMPTY_CHALLENGE = b'""\r\n'  # RFC 5804 §2.1: PLAIN's first challenge is empty


class ManageSieveProtocol(LineServerProtocol):
    replies: ClassVar[Any] = R
    outcome_type: ClassVar[Any] = Outcome
    max_line = MAX_LINE
    max_auth_line = MAX_LINE
    max_buffer = MAX_BUFFER
    close_grace = CLOSE_GRACE

    def __init__(self, factory: ManageSieveFactory) -> None:
        super().__init__(factory)
        self.parts: list[bytes] = []  # the lines and literals of the command being read
        self.size = 0
        self.refusal: Reply | None = None  # the answer of a command whose literal was too large
        self._literal = bytearray()

    # -- hooks ---------------------------------------------------------------------------

    def make_session(self) -> ManageSieveSession:
        return self.factory.make_session(self.peer_ip, self.tls)

    def idle_timeout(self) -> float:
        authenticated = self.session is not None and self.session.state is State.AUTH
        return float(self.factory.autologout if authenticated else self.factory.idle_timeout)

    def session_closed(self) -> None:
        self.parts, self._literal = [], bytearray()
        self.session.close()

    def error_outcome(self, failure: Failure) -> Outcome:
        log.failure("managesieve {session_id}: session error", failure,
                    session_id=getattr(self.session, "session_id", ""))
        return Outcome(R.TRY_AGAIN)

    def line_dropped(self) -> None:
        self.parts, self.size, self.refusal = [], 0, None  # the rest of an overlong command is not a command
        super().line_dropped()

    def auth_aborted(self) -> None:
        self.session.sasl_aborted()

    def apply(self, outcome: Outcome) -> None:
        self.touch()  # the timer restarts with this state's timeout (longer once logged in)
        if outcome.reply is not None:
            self.write(outcome.reply)
        action = outcome.action
        if action is Action.CLOSE:
            self.hang_up()
        elif action is Action.STARTTLS:
            self.parts, self.size, self.refusal = [], 0, None
            self.start_tls()
            self.write(self.session.capabilities(R.TLS_ACTIVE))  # RFC 5804 §2.2
        elif action is Action.SASL:
            self.transport.write(EMPTY_CHALLENGE)
            self.mode = Mode.AUTH

    # -- framing: lines and literals -------------------------------------------------------

    def line_received(self, raw: bytes) -> None:
        self.size += len(raw) + 2
        self.parts.append(raw)
        marker = LITERAL_AT_END.search(raw)
        if marker is not None:
            self._literal_announced(int(marker.group(1)))
            return
        segments, refusal = self.parts, self.refusal
        self.parts, self.size, self.refusal = [], 0, None
        sasl = self.mode is Mode.AUTH
        if sasl:
            self.mode = Mode.COMMAND
        if refusal is not None:  # the command was read to its end; now it gets its answer
            self.write(refusal)
            return
        try:
            result = self.session.sasl_response(segments) if sasl else self.session.handle(segments)
        except Exception:  # the session boundary: a bug answers "try again", never a traceback
            result = self.error_outcome(Failure())
        self.dispatch(result)

    def _literal_announced(self, n: int) -> None:
        refusal = self.refusal or self._literal_refusal(n)
        if refusal is None:
            self.size += n
            self.read_octets(n, self._literal.extend, self._literal_done)
            return
        if n > max(DISCARD_LIMIT, 4 * self.factory.max_script_size):
            log.info("managesieve {session_id}: a literal of {n} octets; closing", n=n,
                     session_id=self.session.session_id)
            self.parts, self.size, self.refusal = [], 0, None
            self.close_with(R.LITERAL_TOO_LARGE)
            return
        self.refusal = refusal
        self.read_octets(n, _drop, self._literal_done)

    def _literal_done(self) -> None:
        self.parts.append(bytes(self._literal))
        self._literal = bytearray()

    def _literal_refusal(self, n: int) -> Reply | None:
        """None when a literal of ``n`` octets may be read into the command, else its answer."""
        name = self.parts[0].split(b" ", 1)[0].upper() if self.mode is not Mode.AUTH else b""
        cap = self.factory.max_script_size if name in SCRIPT_COMMANDS else MAX_LINE
        if n <= cap and self.size + n <= cap + 2 * MAX_LINE:
            return None
        log.info("managesieve {session_id}: a literal of {n} octets refused", n=n,
                 session_id=self.session.session_id)
        if name in SCRIPT_COMMANDS:
            return R.script_too_large(cap, quota=name == b"PUTSCRIPT")
        return R.LITERAL_REFUSED


def _drop(data: bytes) -> None:
    """The octets of a literal that was refused."""


class ManageSieveFactory(LineServerFactory):
    """One ManageSieve protocol per connection (``managesieve``, STARTTLS offered)."""

    protocol = ManageSieveProtocol  # type: ignore[assignment]  # Factory declares a Protocol class

    def __init__(self, *, make_session: Callable[[str, bool], ManageSieveSession], clock: IReactorTime,
                 limiter: ConnectionLimiter, tls_options: Any, max_script_size: int,
                 idle_timeout: float = PREAUTH_TIMEOUT, autologout: float = AUTOLOGOUT) -> None:
        super().__init__(role="managesieve", clock=clock, limiter=limiter, tls_options=tls_options,
                         implicit_tls=False)
        self.make_session = make_session
        self.max_script_size = max_script_size
        self.idle_timeout = idle_timeout
        self.autologout = autologout

    def buildProtocol(self, addr: Any) -> ManageSieveProtocol:
        return ManageSieveProtocol(self)
