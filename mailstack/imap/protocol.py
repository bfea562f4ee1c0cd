"""The Twisted ``Protocol`` for IMAP: framing, literals, TLS, IDLE, timeouts, shutdown.

Framing (RFC 3501 §2.2, §4.3, §7.5): a command is one or more lines; a line
ending in ``{n}`` announces a literal of n octets, which the server invites
with a ``+`` continuation, and ``{n+}`` (RFC 7888 LITERAL+) is sent without
waiting. Caps: a line may hold 64 KiB, a whole non-APPEND command 1 MiB, an
APPEND literal ``limits.message_size``. A synchronizing literal over its cap
is refused (``NO [TOOBIG]`` / ``BAD``) before any of it is read; a
non-synchronizing one is refused and the connection closed (RFC 7888 §4),
since its octets are already on their way. One command runs at a time;
pipelined input waits. After STARTTLS, buffered plaintext is discarded
(RFC 3501 §6.2.1, the command-injection class of CVE-2011-0411). The
autologout timer is 31 minutes (RFC 3501 §5.4 asks for at least 30; RFC 2177
clients re-issue IDLE every 29).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailstack.imap.parse import LITERAL_AT_END, ParseError, split_tag
from mailstack.imap.response import status
from mailstack.imap.session import Action, IMAPSession
from mailstack.throttle import ConnectionLimiter

log = Logger()

MAX_LINE = 64 * 1024
MAX_COMMAND = 1 << 20
MAX_BUFFER = 1 << 20
AUTOLOGOUT = 31 * 60.0
CLOSE_GRACE = 2.0


class Mode(enum.Enum):
    COMMAND = "command"
    SASL = "sasl"
    IDLE = "idle"
    CLOSED = "closed"


@implementer(IPushProducer)
class IMAPProtocol(Protocol):
    transport: Any  # a TCP or TLS transport (startTLS, producers)
    def __init__(self, factory: IMAPFactory) -> None:
        self.factory = factory
        self.clock = factory.clock
        self.session: IMAPSession | None = None
        self.mode = Mode.COMMAND
        self.buffer = bytearray()  # deleting from the front of a bytearray does not copy the rest
        self.output_blocked = False  # the client is not reading: handle no more commands for now
        self.parts: list[bytes] = []
        self.size = 0
        self.literal_left = 0
        self.discarding_line = False
        self.busy = False
        self.paused = False
        self.closing = False
        self.tls = factory.implicit_tls
        self.peer_ip = ""
        self.counted = False
        self._timer: Any = None
        self._abort: Any = None
        self._finished: Deferred[None] = Deferred()

    # -- lifecycle --------------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer_ip = getattr(peer, "host", "") or ""
        f = self.factory
        if not f.limiter.acquire(self.peer_ip):
            self._close_with(b"* BYE Too many connections from your address\r\n")
            return
        self.counted = True
        if f.shutting_down:
            self._close_with(b"* BYE Server shutting down\r\n")
            return
        f.connections.add(self)
        self.transport.registerProducer(self, True)  # told when the client stops reading
        self.session = f.make_session(self.peer_ip, self.tls, self.write)
        self._timer = self.clock.callLater(f.autologout, self._timed_out)
        self.write(self.session.greeting())

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.mode = Mode.CLOSED
        if self.counted:
            self.factory.limiter.release(self.peer_ip)
            self.counted = False
        self.factory.connections.discard(self)
        for timer in (self._timer, self._abort):
            if timer is not None and timer.active():
                timer.cancel()
        if self.session is not None:
            self.session.logout()
        if not self._finished.called:
            self._finished.callback(None)

    def write(self, data: bytes) -> None:
        if self.mode is not Mode.CLOSED:
            self.transport.write(data)

    def _close_with(self, data: bytes) -> None:
        if self.mode is Mode.CLOSED:
            return
        self.transport.write(data)
        self.mode = Mode.CLOSED
        if getattr(self.transport, "producer", self) is not None:
            self.transport.unregisterProducer()  # a TLS transport only closes once no producer is registered
        self.transport.loseConnection()
        # a TLS close waits for the peer's close_notify; do not wait for ever
        self._abort = self.clock.callLater(CLOSE_GRACE, self._abort_connection)

    def _abort_connection(self) -> None:
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()

    def _timed_out(self) -> None:
        self._close_with(b"* BYE Autologout; idle for too long\r\n")

    # -- IPushProducer: output backpressure ---------------------------------------------------

    def pauseProducing(self) -> None:
        self.output_blocked = True

    def resumeProducing(self) -> None:
        self.output_blocked = False
        if self.mode is not Mode.CLOSED:
            self._process()

    def stopProducing(self) -> None:
        self.output_blocked = True

    def shutdown(self) -> Deferred[None]:
        """``* BYE`` and close; a command in progress is answered first."""
        self.closing = True
        if not self.busy:
            self._close_with(b"* BYE Server shutting down\r\n")
        return self._finished

    # -- input ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.mode is Mode.CLOSED:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.factory.autologout)
        if self.literal_left and not self.buffer and not self.busy and not self.output_blocked:
            # literal octets go straight to the command's parts: no quadratic re-buffering
            take = data[:self.literal_left]
            self.parts.append(take)
            self.literal_left -= len(take)
            data = data[len(take):]
            if not data:
                return
        self.buffer += data
        if self.busy or self.output_blocked:
            if len(self.buffer) > MAX_BUFFER and not self.paused:
                self.paused = True
                self.transport.pauseProducing()
            return
        self._process()

    def _process(self) -> None:
        while self.buffer and not self.busy and not self.output_blocked and self.mode is not Mode.CLOSED:
            if self.literal_left:
                take = bytes(self.buffer[:self.literal_left])
                del self.buffer[:len(take)]
                self.literal_left -= len(take)
                self.parts.append(take)
                continue
            idx = self.buffer.find(b"\n")
            if idx < 0:
                if len(self.buffer) > MAX_LINE:
                    self.discarding_line = True
                    self.buffer.clear()
                return
            line = bytes(self.buffer[:idx + 1])
            del self.buffer[:idx + 1]
            if self.discarding_line or len(line) > MAX_LINE:
                self.discarding_line = False
                self.parts, self.size = [], 0
                self.write(b"* BAD Line too long\r\n")
                continue
            self._line(line)
        if self.paused and not self.busy and not self.output_blocked and self.mode is not Mode.CLOSED:
            self.paused = False
            self.transport.resumeProducing()

    def _line(self, line: bytes) -> None:
        session = self.session
        assert session is not None
        if self.mode is Mode.SASL:
            self.mode = Mode.COMMAND
            self._dispatch(session.sasl_response(line))
            return
        if self.mode is Mode.IDLE:
            self.mode = Mode.COMMAND
            session.idle_done(line)
            return
        self.parts.append(line)
        self.size += len(line)
        m = LITERAL_AT_END.search(line)
        if m is None:
            self.parts[-1] = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            raw = b"".join(self.parts)
            self.parts, self.size = [], 0
            self._dispatch(session.handle(raw))
            return
        n, nonsync = int(m.group(1)), bool(m.group(2))
        refusal = self._literal_refusal(n)
        if refusal is None:
            self.size += n
            self.literal_left = n
            if not nonsync:
                self.write(b"+ Ready for literal data\r\n")
            if n == 0:
                return
            return
        self.parts, self.size = [], 0
        if nonsync:  # RFC 7888 §4: the octets are already coming; refuse and close
            self.write(refusal)
            self._close_with(b"* BYE Literal too large\r\n")
        else:
            self.write(refusal)

    def _literal_refusal(self, n: int) -> bytes | None:
        """None when a literal of ``n`` octets may be read, else the tagged refusal."""
        try:
            tag, name, _ = split_tag(self.parts[0])
        except ParseError:
            tag, name = "*", ""
        if name == "APPEND":
            if n > self.factory.max_message_size:
                return status(tag, "NO", "Message too large", "TOOBIG").data
            return None
        if self.size + n > MAX_COMMAND:
            return status(tag, "BAD", "Command too long", "TOOBIG").data
        return None

    # -- running commands ---------------------------------------------------------------

    def _dispatch(self, result: Awaitable[Action]) -> None:
        self.busy = True
        d: Deferred[Action] = Deferred.fromCoroutine(result)  # type: ignore[arg-type]
        d.addErrback(self._internal_error)
        d.addCallback(self._resume)

    def _internal_error(self, failure: Failure) -> Action:
        log.failure("IMAP session error", failure)
        self.write(b"* BAD Internal server error\r\n")
        return Action.NONE

    def _resume(self, action: Action) -> None:
        self.busy = False
        if self.mode is Mode.CLOSED:
            return
        if action is Action.CLOSE:
            self._close_with(b"")
            return
        if action is Action.STARTTLS:
            self.buffer.clear()
            self.transport.startTLS(self.factory.tls_options)
            self.tls = True
            assert self.session is not None
            self.session.tls_started()
        elif action is Action.SASL:
            self.mode = Mode.SASL
        elif action is Action.IDLE:
            self.mode = Mode.IDLE
        if self.closing:
            self._close_with(b"* BYE Server shutting down\r\n")
            return
        self._process()


class IMAPFactory(Factory):
    """One IMAP protocol per connection (ports 143 and 993)."""

    protocol = IMAPProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, *, make_session: Callable[[str, bool, Callable[[bytes], None]], IMAPSession],
                 clock: IReactorTime, limiter: ConnectionLimiter, tls_options: Any, implicit_tls: bool,
                 max_message_size: int, autologout: float = AUTOLOGOUT) -> None:
        self.make_session = make_session
        self.clock = clock
        self.limiter = limiter
        self.tls_options = tls_options
        self.implicit_tls = implicit_tls
        self.max_message_size = max_message_size
        self.autologout = autologout
        self.connections: set[IMAPProtocol] = set()
        self.shutting_down = False

    def buildProtocol(self, addr: Any) -> IMAPProtocol:
        return IMAPProtocol(self)

    def shutdown(self) -> Deferred[Any]:
        self.shutting_down = True
        return DeferredList([p.shutdown() for p in list(self.connections)])
