"""The connection skeleton shared by every server protocol (SMTP, POP3 and IMAP).

What every such server does the same way lives here, once:

- accounting: a per-address connection limit (``ConnectionLimiter``), the set
  of open connections, refusal during shutdown;
- framing: command lines end in LF (a preceding CR is stripped); a line over
  the limit is answered with the protocol's "line too long" reply and dropped
  up to its end, and the session goes on; non-UTF-8 or NUL gets "invalid
  characters";
- counted raw octets (``read_octets``): SMTP BDAT chunks and IMAP literals
  bypass line framing and go to a sink as they arrive, without re-buffering;
- one command in flight: pipelined input waits in a buffer (reading pauses past
  ``max_buffer``) until the previous reply is written; a session method may
  answer at once (an outcome value) or later (a coroutine or Deferred); at
  most ``max_commands_per_turn`` buffered commands are handled before other
  connections get the reactor. Dispatch is iterative: a command whose
  coroutine finishes without waiting is applied in the loop that read it, and
  ``process`` is never re-entered, so any number of pipelined commands
  answers in order without growing the stack;
- output backpressure: the protocol is the transport's streaming producer, so
  when a client does not read its replies and the transport's buffer fills,
  reading (and so answering) stops until the client catches up;
- the session boundary: an unexpected exception becomes the protocol's
  "try again" reply and a logged failure, never a traceback to the peer;
- STARTTLS/STLS: buffered plaintext is discarded before the handshake
  (RFC 3207 §4.2, RFC 2595 §4: the CVE-2011-0411 class of injection);
- compression (IMAP COMPRESS=DEFLATE, RFC 4978): from ``start_compression`` on,
  both directions are raw DEFLATE, every write flushed so that the client can
  read it at once. Input is inflated ``INFLATE_STEP`` octets at a time and only
  as fast as commands are handled, so it never takes more memory than
  uncompressed input may; and what inflates past ``max_inflated`` between two
  commands (a decompression bomb: a small input that would inflate to
  gigabytes, and take the reactor's time doing it) ends the connection;
- an idle timer that only runs while the server waits for the client, and closing: after the last reply the connection is closed,
  and aborted if the peer has not let go within ``close_grace`` seconds (a TLS
  close waits for the peer's close_notify, which it may never send); on
  shutdown an idle session is told at once, a busy one after its reply.

Subclasses supply the session, the greeting, the replies and what an outcome
means (``apply``); SMTP adds DATA streaming through ``take_directly`` and
``consume_special``; IMAP frames commands with literals in ``line_received``.
"""

from __future__ import annotations

import enum
import inspect
import zlib
from collections.abc import Callable
from typing import Any, ClassVar

from OpenSSL import SSL
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailstack import metrics

log = Logger()

_SKIPPED = b"\0skipped"  # marker: an overlong line was answered and dropped
INFLATE_STEP = 64 * 1024  # compressed input is inflated this much at a time


class Mode(enum.Enum):
    COMMAND = "command"
    AUTH = "auth"  # the next line is a SASL response
    DATA = "data"  # SMTP DATA content
    BDAT = "bdat"  # SMTP BDAT chunk
    IDLE = "idle"  # IMAP IDLE: the next line ends it
    CLOSED = "closed"


class LineServerFactory(Factory):
    """Per-listener state shared by its connections."""

    noisy = False

    def __init__(self, *, role: str, clock: Any, limiter: Any, tls_options: Any, implicit_tls: bool,
                 max_connections: int = 1000) -> None:
        self.role = role
        self.max_connections = max_connections
        self.clock = clock
        self.limiter = limiter
        self.tls_options = tls_options
        self.implicit_tls = implicit_tls
        self.connections: set[LineServerProtocol] = set()
        self.shutting_down = False

    def shutdown(self) -> Deferred[Any]:
        """Close every connection once its in-flight work is answered."""
        self.shutting_down = True
        return DeferredList([p.shutdown() for p in list(self.connections)])


@implementer(IPushProducer, IHandshakeListener)
class LineServerProtocol(Protocol):
    """One connection of a line-based server; see the module docstring."""

    transport: Any  # a TCP or TLS transport (startTLS, abortConnection, producers)
    replies: ClassVar[Any]
    """Namespace with TOO_MANY_CONNECTIONS, SHUTTING_DOWN, TIMEOUT, LINE_TOO_LONG,
    TRY_AGAIN, INVALID_CHARACTERS (values with ``to_bytes()``)."""
    outcome_type: ClassVar[Any]
    """Constructor of the session's outcome value from a reply: ``outcome_type(reply)``."""
    max_line: ClassVar[int]
    max_auth_line: ClassVar[int]
    max_buffer: ClassVar[int] = 1 << 20
    max_commands_per_turn: ClassVar[int] = 100
    close_grace: ClassVar[float] = 3.0
    shutdown_grace: ClassVar[float | None] = None  # abort a session still busy this long after shutdown

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.clock = factory.clock
        self.session: Any = None
        self.mode = Mode.COMMAND
        self.buffer = bytearray()  # deleting from the front of a bytearray is cheap (no quadratic copies)
        self.busy = False
        self.paused = False  # reading from the socket is paused
        self.output_blocked = False  # the transport's send buffer is full: the client is not reading
        self._continuation: Any = None
        self.closing = False
        self.discarding_line = False
        self.tls = factory.implicit_tls
        self.peer_ip = ""
        self.counted = False
        self._timer: Any = None
        self._grace: Any = None
        self._finished: Deferred[None] = Deferred()
        self._processing = False  # process() is on the stack: never re-enter it
        # counted raw octets (BDAT chunk, IMAP literal): how many are still to come, and where they go
        self.octets_left = 0
        self._octet_sink: Callable[[bytes], None] | None = None
        self._octets_done: Callable[[], None] | None = None
        # compression (RFC 4978): the inflater, and input not yet inflated
        self._inflater: Any = None
        self._deflated = b""
        self._inflating = False
        self._inflated = 0  # octets inflated since the last command was dispatched

    # -- hooks for subclasses ------------------------------------------------------

    def make_session(self) -> Any:
        raise NotImplementedError

    def greeting(self) -> Any:
        return self.session.greeting()

    def idle_timeout(self) -> float:
        raise NotImplementedError

    def handle_line(self, line: str, *, auth: bool) -> Any:
        """A command line (or a SASL response when ``auth``); returns an outcome or an awaitable."""
        return self.session.auth_response(line) if auth else self.session.handle(line)

    def apply(self, outcome: Any) -> None:
        raise NotImplementedError

    def line_limit(self) -> int:
        return self.max_auth_line if self.mode is Mode.AUTH else self.max_line

    def auth_aborted(self) -> None:
        """An overlong SASL response was dropped."""

    def line_dropped(self) -> None:
        """An overlong line was answered and dropped (IMAP forgets the command's earlier lines)."""
        if self.mode is Mode.AUTH:
            self.mode = Mode.COMMAND
            self.auth_aborted()

    def line_received(self, raw: bytes) -> None:
        """One complete line without its line end: text commands are decoded and handled."""
        auth = self.mode is Mode.AUTH
        if auth:
            self.mode = Mode.COMMAND
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = "\0"
        if "\0" in line:
            if auth:
                self.auth_aborted()
            self.write(self.replies.INVALID_CHARACTERS)
            return
        try:
            result = self.handle_line(line, auth=auth)
        except Exception:  # the session boundary: a bug answers "try again", never a traceback
            result = self.error_outcome(Failure())
        self.dispatch(result)

    def take_directly(self, data: bytes) -> bool:
        """Consume freshly received data without buffering it (SMTP DATA); True if taken."""
        return False

    def consume_special(self) -> bool:
        """Consume buffered input in a non-line mode (SMTP DATA/BDAT); True if it did."""
        return False

    def session_closed(self) -> None:
        """The connection is gone (POP3 releases its maildrop here)."""

    def error_outcome(self, failure: Failure) -> Any:
        log.failure("{role} session error", failure, role=self.factory.role)
        return self.outcome_type(self.replies.TRY_AGAIN)

    # -- connection lifecycle ---------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer_ip = getattr(peer, "host", "") or ""
        f = self.factory
        if len(f.connections) >= f.max_connections:
            log.warn("{role} refused {ip}: {n} connections open", role=f.role, ip=self.peer_ip, n=len(f.connections))
            metrics.CONNECTIONS_REFUSED.labels(f.role).inc()
            self.close_with(self.replies.TOO_MANY_CONNECTIONS)
            return
        if not f.limiter.acquire(self.peer_ip):
            log.warn("{role} refused {ip}: too many connections", role=f.role, ip=self.peer_ip)
            metrics.CONNECTIONS_REFUSED.labels(f.role).inc()
            self.close_with(self.replies.TOO_MANY_CONNECTIONS)
            return
        self.counted = True
        if f.shutting_down:
            self.close_with(self.replies.SHUTTING_DOWN)
            return
        f.connections.add(self)
        metrics.CONNECTIONS.labels(f.role).inc()
        metrics.CONNECTIONS_OPEN.labels(f.role).inc()
        self.transport.registerProducer(self, True)
        self.session = self.make_session()
        self._timer = self.clock.callLater(self.idle_timeout(), self._timed_out)
        self.write(self.greeting())

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        if reason.check(SSL.Error):
            log.warn("{role} TLS failure with {ip}: {error}", role=self.factory.role, ip=self.peer_ip,
                     error=reason.getErrorMessage())
            metrics.TLS_HANDSHAKES.labels(self.factory.role, "failed").inc()
        self.mode = Mode.CLOSED
        if self.counted:
            self.factory.limiter.release(self.peer_ip)
            self.counted = False
        if self in self.factory.connections:
            self.factory.connections.discard(self)
            metrics.CONNECTIONS_OPEN.labels(self.factory.role).dec()
        for timer in (self._timer, self._grace, self._continuation):
            if timer is not None and timer.active():
                timer.cancel()
        if self.session is not None:
            self.session_closed()
        if not self._finished.called:
            self._finished.callback(None)

    def handshakeCompleted(self) -> None:
        metrics.TLS_HANDSHAKES.labels(self.factory.role, "ok").inc()

    def _timed_out(self) -> None:
        log.info("{role} {session_id} timed out", role=self.factory.role,
                 session_id=getattr(self.session, "session_id", ""))
        self.close_with(self.replies.TIMEOUT)

    def close_with(self, reply: Any) -> None:
        if self.mode is Mode.CLOSED:
            return
        self.write(reply)
        self.hang_up()

    def hang_up(self) -> None:
        """Close after the last write; abort if the peer has not let go within ``close_grace``."""
        self.mode = Mode.CLOSED
        if getattr(self.transport, "producer", self) is not None:
            self.transport.unregisterProducer()  # a TLS transport only closes once no producer is registered
        self.transport.loseConnection()
        if self._grace is None or not self._grace.active():
            self._grace = self.clock.callLater(self.close_grace, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self._finished.called:
            self.transport.abortConnection()

    def shutdown(self) -> Deferred[None]:
        """Say the shutdown reply and close; work in flight is answered first."""
        self.closing = True
        if not self.busy:
            self.close_with(self.replies.SHUTTING_DOWN)
        elif self.shutdown_grace is not None and self._grace is None:
            self._grace = self.clock.callLater(self.shutdown_grace, self._abort_if_open)
        return self._finished

    def write(self, reply: Any) -> None:
        self.transport.write(reply.to_bytes())

    def touch(self) -> None:
        """Input or output activity: restart the idle timer."""
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.idle_timeout())

    # -- IPushProducer: the transport tells us when the client stops reading ----------------

    def pauseProducing(self) -> None:
        self.output_blocked = True
        self._update_reading()

    def resumeProducing(self) -> None:
        self.output_blocked = False
        if self.mode is not Mode.CLOSED:
            self.process()

    def stopProducing(self) -> None:
        self.output_blocked = True

    # -- input ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.mode is Mode.CLOSED:
            return
        if self._inflater is not None:
            self.touch()
            self._deflated += data
            self._inflate()
            return
        self._data_in(data)

    def _inflate(self) -> None:
        """Inflate waiting input a step at a time while the commands keep up with it."""
        if self._inflating:  # called from the loop below (through process): it goes on
            return
        self._inflating = True
        try:
            while self._deflated and self.mode is not Mode.CLOSED and len(self.buffer) <= self.max_buffer:
                try:
                    data = self._inflater.decompress(self._deflated, INFLATE_STEP)
                except zlib.error as e:
                    log.info("{role} {session_id}: compressed input is corrupt ({error})", role=self.factory.role,
                             session_id=getattr(self.session, "session_id", ""), error=e)
                    self._deflated = b""
                    self.close_with(self.replies.CORRUPT_INPUT)
                    return
                self._deflated = self._inflater.unconsumed_tail
                self._inflated += len(data)
                if self._inflated > self.max_inflated():  # far more than any one command may be
                    log.info("{role} {session_id}: compressed input inflates past {limit} octets in one command",
                             role=self.factory.role, session_id=getattr(self.session, "session_id", ""),
                             limit=self.max_inflated())
                    self._deflated = b""
                    self.close_with(self.replies.INFLATED_TOO_LARGE)
                    return
                if data:
                    self._data_in(data)
                if self._inflater.eof:  # the stream was ended: nothing after it can be read
                    log.info("{role} {session_id}: the compressed stream was ended", role=self.factory.role,
                             session_id=getattr(self.session, "session_id", ""))
                    self._deflated = b""
                    self.close_with(self.replies.CORRUPT_INPUT)
                    return
                if not data and not self._deflated:
                    break
        finally:
            self._inflating = False
        self._update_reading()

    def _data_in(self, data: bytes) -> None:
        self.touch()
        if self.buffer or self.busy or self.output_blocked or not self._take(data):
            self.buffer += data
        if self.busy or self.output_blocked:
            self._update_reading()
            return
        self.process()

    def max_inflated(self) -> int:
        """Octets compressed input may inflate to between two commands (the largest command)."""
        return self.max_buffer

    def start_compression(self) -> None:
        """RFC 4978: everything after the reply just written is raw DEFLATE, both ways."""
        self.buffer.clear()  # a client waits for the OK before it compresses: the rest is not a command
        self._inflater = zlib.decompressobj(-15)
        self.transport = _Deflating(self.transport)

    def _take(self, data: bytes) -> bool:
        """Fresh data with nothing buffered before it: octets go straight to their sink."""
        if self.octets_left:
            rest = self._feed_octets(data)
            if rest:
                self.buffer += rest
            return True
        return self.take_directly(data)

    def process(self) -> None:
        """Handle buffered input, one command at a time, in one loop (never recursively)."""
        if self._processing:  # a command finished inside the loop below: the loop goes on
            return
        self._processing = True
        try:
            self._process_loop()
        finally:
            self._processing = False
        if self._deflated and not self.busy and not self._inflating:  # room again: inflate what waited
            self._inflate()
            return
        self._update_reading()

    def _process_loop(self) -> None:
        handled = 0
        while self.buffer and not self.busy and not self.output_blocked and self.mode is not Mode.CLOSED:
            if self.octets_left:
                data = bytes(self.buffer[:self.octets_left])
                del self.buffer[:len(data)]
                self._feed_octets(data)
                continue
            if handled >= self.max_commands_per_turn:  # let other connections have the reactor
                if self._continuation is None or not self._continuation.active():
                    self._continuation = self.clock.callLater(0, self.process)
                break
            handled += 1
            if self.consume_special():
                continue
            line = self._next_line()
            if line is None:
                break
            if line is not _SKIPPED:
                self.line_received(line)

    # -- counted raw octets (BDAT, literals) ------------------------------------------------

    def read_octets(self, n: int, sink: Callable[[bytes], None], done: Callable[[], None]) -> None:
        """Hand the next ``n`` octets to ``sink`` as they arrive, then call ``done``."""
        if n <= 0:
            done()
            return
        self.octets_left = n
        self._octet_sink = sink
        self._octets_done = done

    def _feed_octets(self, data: bytes) -> bytes:
        """Give up to ``octets_left`` octets of ``data`` to the sink; return what is left over."""
        take = data[:self.octets_left] if len(data) > self.octets_left else data
        self.octets_left -= len(take)
        assert self._octet_sink is not None
        if take:
            self._octet_sink(take)
        if self.octets_left == 0:
            done, self._octet_sink, self._octets_done = self._octets_done, None, None
            assert done is not None
            done()
        return data[len(take):]

    def _update_reading(self) -> None:
        """Read from the socket only while there is room for input and the client reads our output."""
        if self.mode is Mode.CLOSED:
            return
        # Output backpressure stops the processing of input, not the reading itself (a TLS
        # handshake must still be read); reading stops once unprocessed input piles up.
        stop = (len(self.buffer) > self.max_buffer and (self.busy or self.output_blocked)) or \
            len(self.buffer) > 4 * self.max_buffer or len(self._deflated) > self.max_buffer
        if stop and not self.paused:
            self.paused = True
            self.transport.pauseProducing()
        elif not stop and self.paused:
            self.paused = False
            self.transport.resumeProducing()

    def _next_line(self) -> bytes | None:
        limit = self.line_limit()
        idx = self.buffer.find(b"\n")
        if idx < 0:
            if len(self.buffer) > limit:  # drop the rest of this line, answer at its end
                self.discarding_line = True
                self.buffer.clear()
            return None
        line = bytes(self.buffer[:idx])
        del self.buffer[:idx + 1]
        if self.discarding_line or idx + 1 > limit:
            self.discarding_line = False
            self.write(self.replies.LINE_TOO_LONG)
            self.line_dropped()
            return _SKIPPED
        return line[:-1] if line.endswith(b"\r") else line

    # -- outcomes -------------------------------------------------------------------------

    def dispatch(self, result: Any) -> None:
        """Apply an outcome now, or once an awaitable has produced it (busy until then)."""
        self._inflated = 0
        if not (inspect.iscoroutine(result) or isinstance(result, Deferred)):
            self.apply(result)
            return
        d = Deferred.fromCoroutine(result) if inspect.iscoroutine(result) else result
        d.addErrback(self.error_outcome)
        early: list[Any] = []
        d.addCallback(early.append)
        if early:  # it finished without waiting: apply it here; the caller's loop goes on
            self._settle(early[0])
            return
        self.busy = True
        if self._timer is not None and self._timer.active():  # our turn, not the client's: no idle timeout
            self._timer.cancel()
        d.addCallback(lambda _: self.resume(early[0]))

    def _settle(self, outcome: Any) -> None:
        if outcome is not None:
            self.apply(outcome)
        if self.closing and not self.busy and self.mode is not Mode.CLOSED:
            self.close_with(self.replies.SHUTTING_DOWN)

    def resume(self, outcome: Any) -> None:
        """Work in flight finished: apply its outcome, then go on with buffered input."""
        self.busy = False
        if self.mode is Mode.CLOSED:
            return
        if self._timer is None or not self._timer.active():
            self._timer = self.clock.callLater(self.idle_timeout(), self._timed_out)
        self._settle(outcome)
        if self.busy or self.mode is Mode.CLOSED:
            return
        self.process()

    def start_tls(self) -> None:
        self.buffer.clear()  # nothing sent before the handshake is a command
        self.octets_left = 0
        self._octet_sink = self._octets_done = None
        self.transport.startTLS(self.factory.tls_options)
        self.tls = True
        self.session.tls_started()


class _Deflating:
    """A transport whose writes are compressed (raw DEFLATE, each one flushed: RFC 4978 §4)."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._deflater = zlib.compressobj(6, zlib.DEFLATED, -15)

    def write(self, data: bytes) -> None:
        if data:
            self._transport.write(self._deflater.compress(data) + self._deflater.flush(zlib.Z_SYNC_FLUSH))

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
