"""The Twisted ``Protocol`` for POP3: framing, pipelining, STLS, timeouts, streaming.

Framing: command lines end in LF (a preceding CR is stripped) and are at most
255 octets with the CRLF (RFC 2449 §4); a longer line gets ``-ERR`` and is
dropped, and the session goes on. A SASL response line (RFC 5034 §4 lifts the
limit for it) may be up to 8,192 octets. One command is in flight at a time:
pipelined commands (RFC 2449 §6.6) wait in a buffer, reading pauses past
256 KiB of it, and the next command starts when the previous response is
written. After STLS anything already buffered is discarded (RFC 2595 §4 and
the CVE-2011-0411 class of injection) and the session starts again.

RETR and TOP responses: a message up to 256 KiB is read and sent in one
write; a larger one is streamed by :class:`mailstack.pop3.stream.MessageSender`
in 64 KiB chunks as the transport drains.

Idle timeout: 10 minutes without input (RFC 1939 §3 requires at least 10),
then ``-ERR [SYS/TEMP]`` and close without entering UPDATE. While a large
message is being sent, every chunk taken by the transport counts as activity.
"""

from __future__ import annotations

import enum
import inspect
import os
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailstack.pop3 import reply as R
from mailstack.pop3.reply import Reply
from mailstack.pop3.session import Action, Outcome, POP3Session
from mailstack.pop3.stream import MessageSender, WireEncoder, encode_whole
from mailstack.throttle import ConnectionLimiter

log = Logger()

MAX_COMMAND_LINE = 255
MAX_AUTH_LINE = 8192
MAX_BUFFER = 256 * 1024
WHOLE_MESSAGE_LIMIT = 256 * 1024  # send smaller messages with one read and one write
IDLE_TIMEOUT = 600.0
SHUTDOWN_GRACE = 30.0  # a response still streaming at shutdown gets this long
CLOSE_GRACE = 3.0  # then a peer that does not answer the TLS close_notify is cut off
_SKIPPED = b"\0skipped"


class Mode(enum.Enum):
    COMMAND = "command"
    AUTH = "auth"
    CLOSED = "closed"


class POP3Protocol(Protocol):
    def __init__(self, factory: POP3Factory) -> None:
        self.factory = factory
        self.clock = factory.clock
        self.session: POP3Session | None = None
        self.mode = Mode.COMMAND
        self.buffer = b""
        self.busy = False
        self.paused = False
        self.closing = False
        self.discarding_line = False
        self.tls = factory.implicit_tls
        self.peer_ip = ""
        self.counted = False
        self._timer: Any = None
        self._grace: Any = None
        self._finished: Deferred[None] = Deferred()

    # -- connection lifecycle -------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer_ip = getattr(peer, "host", "") or ""
        f = self.factory
        if not f.limiter.acquire(self.peer_ip):
            log.warn("{role} refused {ip}: too many connections", role=f.role, ip=self.peer_ip)
            self._close_with(R.TOO_MANY_CONNECTIONS)
            return
        self.counted = True
        if f.shutting_down:
            self._close_with(R.SHUTTING_DOWN)
            return
        f.connections.add(self)
        self.session = f.make_session(self.peer_ip, self.tls)
        self._timer = self.clock.callLater(f.idle_timeout, self._timed_out)
        self._write(self.session.greeting())

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.mode = Mode.CLOSED
        if self.counted:
            self.factory.limiter.release(self.peer_ip)
            self.counted = False
        self.factory.connections.discard(self)
        for timer in (self._timer, self._grace):
            if timer is not None and timer.active():
                timer.cancel()
        if self.session is not None:
            self.session.close()  # a dropped connection removes nothing (RFC 1939 §6)
        if not self._finished.called:
            self._finished.callback(None)

    def _timed_out(self) -> None:
        log.info("{role} {session_id} timed out", role=self.factory.role,
                 session_id=self.session.session_id if self.session else "")
        self._close_with(R.TIMEOUT)

    def _close_with(self, reply: Reply) -> None:
        if self.mode is Mode.CLOSED:
            return
        self._write(reply)
        self._hang_up()

    def _hang_up(self) -> None:
        """Close after the last write; over TLS, do not wait on the peer's close_notify for ever."""
        self.mode = Mode.CLOSED
        self.transport.loseConnection()
        if self._grace is None or not self._grace.active():
            self._grace = self.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def shutdown(self) -> Deferred[None]:
        """Say ``-ERR [SYS/TEMP]`` and close without UPDATE; in-flight work is answered first."""
        self.closing = True
        if not self.busy:
            self._close_with(R.SHUTTING_DOWN)
        elif self._grace is None:
            self._grace = self.clock.callLater(SHUTDOWN_GRACE, self.transport.abortConnection)
        return self._finished

    def _write(self, reply: Reply) -> None:
        self.transport.write(reply.to_bytes())

    def _touch(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.factory.idle_timeout)

    # -- input --------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.mode is Mode.CLOSED:
            return
        self._touch()
        self.buffer += data
        if self.busy:
            if len(self.buffer) > MAX_BUFFER and not self.paused:
                self.paused = True
                self.transport.pauseProducing()
            return
        self._process()

    def _process(self) -> None:
        while self.buffer and not self.busy and self.mode is not Mode.CLOSED:
            line = self._next_line()
            if line is None:
                break
            if line is not _SKIPPED:
                self._line_received(line)
        if self.paused and not self.busy and self.mode is not Mode.CLOSED:
            self.paused = False
            self.transport.resumeProducing()

    def _next_line(self) -> bytes | None:
        limit = MAX_AUTH_LINE if self.mode is Mode.AUTH else MAX_COMMAND_LINE
        idx = self.buffer.find(b"\n")
        if idx < 0:
            if len(self.buffer) > limit:  # drop the rest of this line, answer at its end
                self.discarding_line = True
                self.buffer = b""
            return None
        line, self.buffer = self.buffer[:idx], self.buffer[idx + 1:]
        if self.discarding_line or idx + 1 > limit:
            self.discarding_line = False
            self.mode = Mode.COMMAND if self.mode is Mode.AUTH else self.mode
            self._write(R.LINE_TOO_LONG)
            return _SKIPPED
        return line[:-1] if line.endswith(b"\r") else line

    def _line_received(self, raw: bytes) -> None:
        session = self.session
        assert session is not None
        auth = self.mode is Mode.AUTH
        self.mode = Mode.COMMAND
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._write(R.INVALID_CHARACTERS)
            return
        if "\0" in line:
            self._write(R.INVALID_CHARACTERS)
            return
        try:
            result = session.auth_response(line) if auth else session.handle(line)
        except Exception:  # the session boundary: a bug answers -ERR, never a traceback
            log.failure("{role} session error", role=self.factory.role)
            result = Outcome(R.TRY_AGAIN)
        self._dispatch(result)

    # -- responses and actions ------------------------------------------------------

    def _dispatch(self, result: Any) -> None:
        if isinstance(result, Outcome):
            self._apply(result)
            return
        self.busy = True
        d = Deferred.fromCoroutine(result) if inspect.iscoroutine(result) else result
        d.addErrback(self._internal_error)
        d.addCallback(self._resume)

    def _internal_error(self, failure: Failure) -> Outcome:
        log.failure("{role} session error", failure, role=self.factory.role)
        return Outcome(R.TRY_AGAIN)

    def _resume(self, outcome: Outcome | None) -> None:
        self.busy = False
        if self.mode is Mode.CLOSED:
            return
        if outcome is not None:
            self._apply(outcome)
        if self.busy:
            return
        if self.closing and self.mode is not Mode.CLOSED:
            self._close_with(R.SHUTTING_DOWN)
            return
        self._process()

    def _apply(self, outcome: Outcome) -> None:
        action = outcome.action
        if action is Action.SEND:
            self._send(outcome)
            return
        if outcome.reply is not None:
            self._write(outcome.reply)
        if action is Action.CLOSE:
            self._hang_up()
        elif action is Action.AUTH:
            self.transport.write(b"+ \r\n")
            self.mode = Mode.AUTH
        elif action is Action.STLS:
            self._start_tls()

    def _start_tls(self) -> None:
        self.buffer = b""  # RFC 2595 §4: nothing sent before the handshake is a command
        self.transport.startTLS(self.factory.tls_options)
        self.tls = True
        assert self.session is not None
        self.session.tls_started()

    # -- RETR / TOP -----------------------------------------------------------------------

    def _send(self, outcome: Outcome) -> None:
        assert outcome.path is not None and outcome.reply is not None
        try:
            file = self._open(outcome)
        except OSError as e:  # permissions, a directory, I/O errors
            log.error("{role}: cannot read {path}: {error}", role=self.factory.role,
                      path=outcome.path, error=e)
            self._write(R.MESSAGE_UNREADABLE)
            return
        if file is None:
            self._write(R.MESSAGE_GONE)
            return
        size = os.fstat(file.fileno()).st_size
        head = outcome.reply.to_bytes()
        if size <= WHOLE_MESSAGE_LIMIT:
            with file:
                try:
                    content = file.read()
                except OSError as e:
                    log.error("{role}: cannot read {path}: {error}", role=self.factory.role,
                              path=outcome.path, error=e)
                    self._write(R.MESSAGE_UNREADABLE)
                    return
            self.transport.write(head + encode_whole(content, outcome.body_lines))
            return
        self.transport.write(head)
        sender = MessageSender(file, WireEncoder(outcome.body_lines), _Progress(self.transport, self._touch))
        self.busy = True
        d = sender.start()
        d.addCallbacks(lambda _: self._resume(None), self._send_failed)

    @staticmethod
    def _open(outcome: Outcome) -> IO[bytes] | None:
        """The message file; if it moved (new/ to cur/, flags changed) find it again; None if gone."""
        assert outcome.path is not None
        try:
            return open(outcome.path, "rb")
        except FileNotFoundError:
            moved = outcome.relocate() if outcome.relocate is not None else None
        if moved is None:
            return None
        try:
            return open(moved, "rb")
        except FileNotFoundError:
            return None

    def _send_failed(self, failure: Failure) -> None:
        self.busy = False
        if self.mode is Mode.CLOSED:
            return
        log.info("{role}: sending a message stopped: {error}", role=self.factory.role, error=failure.value)
        self.mode = Mode.CLOSED  # the response is cut short: the only safe answer is to hang up
        self.transport.abortConnection()


@implementer(IConsumer)
class _Progress:
    """A consumer that forwards to the transport and counts each write as activity."""

    def __init__(self, transport: Any, touch: Callable[[], None]) -> None:
        self.transport = transport
        self.touch = touch

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def write(self, data: bytes) -> None:
        self.touch()
        self.transport.write(data)


class POP3Factory(Factory):
    """Builds one POP3 protocol per connection (``pop3`` with STLS, or ``pop3s``)."""

    protocol = POP3Protocol  # type: ignore[assignment]  # Factory declares a Protocol class
    noisy = False

    def __init__(
        self,
        *,
        role: str,
        make_session: Callable[[str, bool], POP3Session],
        clock: IReactorTime,
        limiter: ConnectionLimiter,
        tls_options: Any,
        implicit_tls: bool,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.role = role
        self.make_session = make_session
        self.clock = clock
        self.limiter = limiter
        self.tls_options = tls_options
        self.implicit_tls = implicit_tls
        self.idle_timeout = idle_timeout
        self.connections: set[POP3Protocol] = set()
        self.shutting_down = False

    def buildProtocol(self, addr: Any) -> POP3Protocol:
        return POP3Protocol(self)

    def shutdown(self) -> Deferred[Any]:
        """Close every session (no UPDATE) once its in-flight response is written."""
        self.shutting_down = True
        return DeferredList([p.shutdown() for p in list(self.connections)])
