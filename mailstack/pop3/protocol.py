"""The Twisted ``Protocol`` for POP3: framing, pipelining, STLS, timeouts, streaming.

Framing: command lines end in LF (a preceding CR is stripped) and are at most
255 octets with the CRLF (RFC 2449 §4); a longer line gets ``-ERR`` and is
dropped, and the session goes on. A SASL response line (RFC 5034 §4 lifts the
limit for it) may be up to 8,192 octets. One command is in flight at a time:
pipelined commands (RFC 2449 §6.6) wait in a buffer, reading pauses past
256 KiB of it, and the next command starts when the previous response is
written. After STLS anything already buffered is discarded (RFC 2595 §4 and
the CVE-2011-0411 class of injection) and the session starts again. That
skeleton (limits, framing, timers, closing) is ``mailstack.lineserver``,
shared with SMTP.

RETR and TOP responses: a message up to 64 KiB is read inline, a larger one
is opened on the io pool; a file renamed since the mail store last looked is
found again through the session (``Outcome.relocate``, one look at the folder
on the io pool). A message up to 256 KiB is read and sent in one
write; a larger one is streamed by :class:`mailstack.pop3.stream.MessageSender`
in 64 KiB chunks as the transport drains.

Idle timeout: 10 minutes without input (RFC 1939 §3 requires at least 10),
then ``-ERR [SYS/TEMP]`` and close without entering UPDATE. While a large
message is being sent, every chunk taken by the transport counts as activity.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailstack.lineserver import LineServerFactory, LineServerProtocol, Mode
from mailstack.pop3 import reply as R
from mailstack.pop3.reply import Reply
from mailstack.pop3.session import Action, Outcome, POP3Session
from mailstack.pop3.stream import MessageSender, WireEncoder, encode_whole
from mailstack.throttle import ConnectionLimiter

log = Logger()

MAX_COMMAND_LINE = 255
MAX_AUTH_LINE = 8192
MAX_BUFFER = 256 * 1024
WHOLE_MESSAGE_LIMIT = 256 * 1024
INLINE_READ_LIMIT = 64 * 1024  # larger messages are opened and read on the io pool  # send smaller messages with one read and one write
IDLE_TIMEOUT = 600.0
SHUTDOWN_GRACE = 30.0  # a response still streaming at shutdown gets this long
CLOSE_GRACE = 3.0  # then a peer that does not answer the TLS close_notify is cut off


class POP3Protocol(LineServerProtocol):
    replies: ClassVar[Any] = R
    outcome_type: ClassVar[Any] = Outcome
    max_line = MAX_COMMAND_LINE
    max_auth_line = MAX_AUTH_LINE
    max_buffer = MAX_BUFFER
    close_grace = CLOSE_GRACE
    shutdown_grace = SHUTDOWN_GRACE

    # -- hooks ---------------------------------------------------------------------------

    def make_session(self) -> POP3Session:
        return self.factory.make_session(self.peer_ip, self.tls)

    def idle_timeout(self) -> float:
        return float(self.factory.idle_timeout)

    def session_closed(self) -> None:
        self.session.close()  # a dropped connection removes nothing (RFC 1939 §6)

    def apply(self, outcome: Outcome) -> None:
        action = outcome.action
        if action is Action.SEND:
            self._send(outcome)
            return
        if outcome.reply is not None:
            self.write(outcome.reply)
        if action is Action.CLOSE:
            self.hang_up()
        elif action is Action.AUTH:
            self.transport.write(b"+ \r\n")
            self.mode = Mode.AUTH
        elif action is Action.STLS:
            self.start_tls()  # RFC 2595 §4: buffered input is discarded, state reset

    # -- RETR / TOP -----------------------------------------------------------------------

    def _send(self, outcome: Outcome) -> None:
        """RETR/TOP: open (and, for a small message, read) the file on the io pool, then send."""
        assert outcome.path is not None
        loaded = None
        if self._inline(outcome):
            # a small file from the page cache costs less than a trip to the pool and back
            loaded = _load(outcome.path, self.factory.role)
            if not loaded.missing or outcome.relocate is None:
                self._send_loaded(outcome, loaded)
                return
        self.busy = True
        d = Deferred.fromCoroutine(self._load_elsewhere(outcome, loaded))
        d.addCallbacks(lambda loaded: self._after_load(outcome, loaded), self._send_failed)

    def _inline(self, outcome: Outcome) -> bool:
        return self.factory.pool is None or outcome.size <= INLINE_READ_LIMIT

    async def _load_elsewhere(self, outcome: Outcome, loaded: _Loaded | None) -> _Loaded:
        """Load on the io pool; a file gone from ``outcome.path`` is looked for once through the session."""
        assert outcome.path is not None
        if loaded is None:
            loaded = await self._load_from(outcome, outcome.path)
        if loaded.missing and outcome.relocate is not None:
            moved = await outcome.relocate()
            if moved is not None:
                loaded = await self._load_from(outcome, moved)
        return loaded

    async def _load_from(self, outcome: Outcome, path: str) -> _Loaded:
        if self._inline(outcome):
            return _load(path, self.factory.role)
        loaded: _Loaded = await deferToThreadPool(self.factory.clock, self.factory.pool, _load, path,
                                                  self.factory.role)
        return loaded

    def _after_load(self, outcome: Outcome, loaded: _Loaded) -> None:
        self.busy = False
        if self.mode is Mode.CLOSED:
            if loaded.file is not None:
                loaded.file.close()
            return
        self._send_loaded(outcome, loaded)
        if not self.busy:
            self.resume(None)

    def _send_loaded(self, outcome: Outcome, loaded: _Loaded) -> None:
        assert outcome.reply is not None
        if loaded.missing:
            self.write(R.MESSAGE_GONE)
            return
        if loaded.error is not None:
            self.write(loaded.error)
            return
        head = outcome.reply.to_bytes()
        if loaded.content is not None:
            self.transport.write(head + encode_whole(loaded.content, outcome.body_lines))
            return
        assert loaded.file is not None
        self.transport.write(head)
        sender = MessageSender(loaded.file, WireEncoder(outcome.body_lines), _Progress(self.transport, self.touch))
        self.busy = True
        self.transport.unregisterProducer()  # the sender is the transport's producer while it streams
        d = sender.start()
        d.addCallbacks(self._sent, self._send_failed)

    def _sent(self, _: object) -> None:
        if self.mode is not Mode.CLOSED:
            self.transport.registerProducer(self, True)
        self.resume(None)

    def _send_failed(self, failure: Failure) -> None:
        self.busy = False
        if self.mode is Mode.CLOSED:
            return
        log.info("{role}: sending a message stopped: {error}", role=self.factory.role, error=failure.value)
        self.mode = Mode.CLOSED  # the response is cut short: the only safe answer is to hang up
        self.transport.abortConnection()


@dataclass(frozen=True, slots=True)
class _Loaded:
    """What the io pool found for RETR/TOP: no file, an error reply, a small message's bytes, or an open file."""

    missing: bool = False
    error: Reply | None = None
    content: bytes | None = None
    file: IO[bytes] | None = None


def _load(path: str, role: str) -> _Loaded:
    """Blocking: open the message; read it whole when small (one read, one write)."""
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        return _Loaded(missing=True)  # renamed (new/ to cur/, flags) or removed since the store looked
    except OSError as e:  # permissions, a directory, I/O errors
        log.error("{role}: cannot read {path}: {error}", role=role, path=path, error=e)
        return _Loaded(error=R.MESSAGE_UNREADABLE)
    try:
        if os.fstat(file.fileno()).st_size > WHOLE_MESSAGE_LIMIT:
            return _Loaded(file=file)
        with file:
            return _Loaded(content=file.read())
    except OSError as e:
        file.close()
        log.error("{role}: cannot read {path}: {error}", role=role, path=path, error=e)
        return _Loaded(error=R.MESSAGE_UNREADABLE)


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


class POP3Factory(LineServerFactory):
    """Builds one POP3 protocol per connection (``pop3`` with STLS, or ``pop3s``)."""

    protocol = POP3Protocol  # type: ignore[assignment]  # Factory declares a Protocol class

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
        pool: Any = None,
    ) -> None:
        super().__init__(role=role, clock=clock, limiter=limiter, tls_options=tls_options,
                         implicit_tls=implicit_tls)
        self.make_session = make_session
        self.idle_timeout = idle_timeout
        self.pool = pool  # message files are opened and read here (None: inline, for tests)

    def buildProtocol(self, addr: Any) -> POP3Protocol:
        return POP3Protocol(self)
