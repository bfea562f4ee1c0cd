# Failure() and connectProtocol() are not annotated in Twisted:
# mypy: disable-error-code="no-untyped-call"
"""Outbound ESMTP client: one transaction to one host, per-recipient results.

``send_message(...)`` connects to one address, reads the greeting, says EHLO
(HELO when EHLO is refused with 5xx), upgrades with STARTTLS when offered,
authenticates with AUTH PLAIN when asked (only over TLS), checks SIZE,
SMTPUTF8 and 8BITMIME against what the peer advertises, then sends MAIL, every
RCPT and DATA, pipelined when the peer offers PIPELINING (RFC 2920), and the
dot-stuffed content. The sender's DSN requests (RFC 3461) go on MAIL and RCPT when
the peer offers DSN; ``TransactionResult.dsn`` says whether it did. It returns a :class:`TransactionResult`; failures that
end the whole transaction raise :class:`ClientError`.

TLS fallback policy (RFC 3207 §4.1, RFC 7435 opportunistic security):

- ``starttls="opportunistic"`` (MX delivery): STARTTLS is used when offered. A
  refused STARTTLS (454) continues in plaintext on the same connection. A
  failed handshake raises :class:`TLSFailed` (stage ``"starttls"``, temporary):
  the connection is unusable, and the caller may retry *the same host* at once
  with ``starttls="off"`` so that a peer with a broken TLS stack still gets
  mail; that retry happens once per host and is logged.
- ``starttls="required"`` (smarthosts, or when the caller insists): no
  STARTTLS offered, STARTTLS refused or a failed handshake all raise
  (``TLSFailed`` for the handshake); the caller must not fall back to plaintext.
- ``starttls="off"``: never send STARTTLS.

Timeouts follow RFC 5321 §4.5.3.2 (:class:`ClientTimeouts`) and run on the
given reactor's ``callLater``, so tests drive them with a ``task.Clock``.
A hostile peer cannot make the client buffer without bound: reply lines are
limited to ``MAX_LINE`` octets and a multi-line reply to ``MAX_REPLY``.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from twisted.internet import defer, error, interfaces
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailstack.envelope import RecipientDSN
from mailstack.smtp.dsnparams import rcpt_params, xtext
from mailstack.smtp.reply import Reply

log = Logger()

MAX_LINE = 4096          # RFC 5321 §4.5.3.1.5 says 512; be lenient, but bounded
MAX_REPLY = 64 * 1024    # all lines of one reply (EHLO lists are the longest)
MAX_QUEUED_REPLIES = 1000
CHUNK = 64 * 1024

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")
STARTTLS_MODES = ("opportunistic", "required", "off")


@dataclass(frozen=True)
class ClientTimeouts:
    """Seconds to wait, per RFC 5321 §4.5.3.2 (connect, EHLO, STARTTLS and QUIT are ours)."""

    connect: float = 60.0
    greeting: float = 300.0
    ehlo: float = 300.0
    starttls: float = 120.0
    mail: float = 300.0
    rcpt: float = 300.0
    data_init: float = 120.0
    data_block: float = 180.0
    data_end: float = 600.0
    quit: float = 10.0


@dataclass
class TransactionResult:
    """Final answer per recipient: accepted ones get ``data_reply``, refused keep their RCPT reply.

    ``data_reply`` is None when no recipient was accepted (DATA was not sent).
    """

    per_recipient: dict[str, Reply]
    data_reply: Reply | None
    remote_host: str
    tls: bool
    dsn: bool = False
    """The peer offers DSN (RFC 3461): the sender's requests were passed on, and it reports."""
    verified: bool = False
    """The peer's certificate was verified (set by the relay when a policy asked for it)."""


class ClientError(Exception):
    """The whole transaction failed at ``stage`` with ``reply`` (the peer's, or one made here)."""

    def __init__(self, reply: Reply, temporary: bool, stage: str) -> None:
        super().__init__(f"{stage}: {reply.code} {reply.enhanced or ''} {' '.join(reply.lines())}".strip())
        self.reply = reply
        self.temporary = temporary
        self.stage = stage


class TLSFailed(ClientError):
    """The TLS handshake after STARTTLS failed; see the module's fallback policy."""


def dot_stuff(message: bytes) -> bytes:
    """RFC 5321 §4.5.2 transparency, plus a final CRLF if missing; without the terminator."""
    if message.startswith(b"."):
        message = b"." + message
    if b"\r\n." in message:
        message = message.replace(b"\r\n.", b"\r\n..")
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message


def _local(code: int, enhanced: str, text: str) -> Reply:
    return Reply(code, enhanced, text)


class _Lost(Exception):
    pass


class _ReplyTimeout(Exception):
    pass


class _ProtocolViolation(Exception):
    pass


def parse_reply(lines: list[bytes]) -> Reply:
    """One complete reply (lines without CRLF) -> Reply; enhanced codes split off."""
    code = int(lines[0][:3])
    texts = [line[4:].decode("utf-8", "replace") for line in lines]
    enhanced = None
    m = _ENHANCED.match(texts[-1]) or _ENHANCED.match(texts[0])
    if m and m.group(1) == str(code)[0]:
        enhanced = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        prefix = re.compile(r"^" + re.escape(enhanced) + r" ?")
        texts = [prefix.sub("", t, count=1) for t in texts]
    return Reply(code, enhanced, texts[0] if len(texts) == 1 else tuple(texts))


@implementer(interfaces.IHandshakeListener)
class SMTPClientProtocol(Protocol):
    """Reply framing, waiters with timeouts, TLS switch; the dialogue lives in ``_Dialogue``."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._buffer = b""
        self._lines: list[bytes] = []
        self._reply_size = 0
        self._replies: deque[Reply] = deque()
        self._waiters: deque[tuple[Deferred[Reply], Any]] = deque()
        self._handshake: Deferred[None] | None = None
        self._failure: Exception | None = None
        self.tls = False

    # -- Twisted callbacks ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._failure is not None:
            return
        self._buffer += data
        while self._failure is None:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    self._violation("reply line too long")
                return
            line, self._buffer = self._buffer[:end].rstrip(b"\r"), self._buffer[end + 1:]
            if len(line) > MAX_LINE:
                self._violation("reply line too long")
                return
            self._line(line)

    def handshakeCompleted(self) -> None:
        self.tls = True
        d, self._handshake = self._handshake, None
        if d is not None:
            d.callback(None)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self._fail(_Lost(reason.getErrorMessage() if isinstance(reason, Failure) else str(reason)))

    # -- framing -------------------------------------------------------------------

    def _line(self, line: bytes) -> None:
        if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3:4] not in (b" ", b"-")):
            self._violation(f"malformed reply line {line[:40]!r}")
            return
        if self._lines and line[:3] != self._lines[0][:3]:
            self._violation("reply code changed within a multi-line reply")
            return
        self._reply_size += len(line)
        if self._reply_size > MAX_REPLY:
            self._violation("reply too long")
            return
        self._lines.append(line)
        if line[3:4] == b"-":
            return
        lines, self._lines, self._reply_size = self._lines, [], 0
        self._deliver(parse_reply(lines))

    def _deliver(self, reply: Reply) -> None:
        if self._waiters:
            d, timer = self._waiters.popleft()
            timer.cancel()
            d.callback(reply)
        elif len(self._replies) >= MAX_QUEUED_REPLIES:
            self._violation("too many unsolicited replies")
        else:
            self._replies.append(reply)

    def _violation(self, why: str) -> None:
        self._replies.clear()
        self._fail(_ProtocolViolation(why))
        self.abort()

    def _fail(self, exc: Exception) -> None:
        if self._failure is None:
            self._failure = exc
        waiters, self._waiters = self._waiters, deque()
        for d, timer in waiters:
            if timer.active():
                timer.cancel()
            d.errback(self._failure)
        handshake, self._handshake = self._handshake, None
        if handshake is not None:
            handshake.errback(self._failure)

    # -- API for the dialogue ------------------------------------------------------

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def next_reply(self, timeout: float) -> Deferred[Reply]:
        if self._replies:
            return defer.succeed(self._replies.popleft())
        if self._failure is not None:
            return defer.fail(self._failure)
        d: Deferred[Reply] = Deferred()

        def expire() -> None:
            self._waiters = deque(w for w in self._waiters if w[0] is not d)
            d.errback(_ReplyTimeout())
            self.abort()

        self._waiters.append((d, self.clock.callLater(timeout, expire)))
        return d

    def start_tls(self, options: Any, timeout: float) -> Deferred[None]:
        """Switch to TLS now; fires when the handshake completes."""
        # Anything the peer sent after its 220 is plaintext injection: drop it.
        self._buffer, self._lines, self._reply_size = b"", [], 0
        self._replies.clear()
        d: Deferred[None] = Deferred()
        self._handshake = d
        self._tcp.startTLS(options)
        timer = self.clock.callLater(timeout, lambda: self._handshake_timeout(d))
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return d

    def _handshake_timeout(self, d: Deferred[None]) -> None:
        if self._handshake is d:
            self._handshake = None
            d.errback(_ReplyTimeout())
            self.abort()

    def usable(self) -> bool:
        """Still connected, with nothing unread: a kept connection may carry another transaction."""
        return (self._failure is None and self.transport is not None and not self._replies
                and not getattr(self.transport, "disconnecting", False))

    @property
    def _tcp(self) -> Any:
        """The transport with its TCP/TLS methods (``ITransport`` declares none of them)."""
        assert self.transport is not None
        return self.transport

    def abort(self) -> None:
        if self.transport is not None:
            self._tcp.abortConnection()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


@implementer(interfaces.IPullProducer)
class _ContentProducer:
    """Writes the stuffed content in chunks as the transport drains (data block timeout)."""

    def __init__(self, proto: SMTPClientProtocol, content: bytes, block_timeout: float) -> None:
        self._proto = proto
        self._content = memoryview(content)
        self._offset = 0
        self._block_timeout = block_timeout
        self._timer: Any = None
        self._registered = False
        self.done: Deferred[None] = Deferred()

    def start(self) -> None:
        self._arm()
        self._registered = True
        self._proto._tcp.registerProducer(self, False)

    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._proto.clock.callLater(self._block_timeout, self._expired)

    def _expired(self) -> None:
        self._finish(Failure(_ReplyTimeout()))
        self._proto.abort()

    def resumeProducing(self) -> None:
        if self.done.called:
            return
        chunk = self._content[self._offset:self._offset + CHUNK]
        self._offset += len(chunk)
        self._arm()
        self._proto.send(bytes(chunk))
        if self._offset >= len(self._content):
            self._finish(None)

    def stopProducing(self) -> None:
        self._finish(Failure(_Lost("connection lost while sending data")))

    def _finish(self, result: Failure | None) -> None:
        if self.done.called:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._registered and self._proto.transport is not None:
            self._registered = False
            try:
                self._proto._tcp.unregisterProducer()
            except (RuntimeError, AttributeError):  # already gone with the connection
                pass
        if result is None:
            self.done.callback(None)
        else:
            self.done.errback(result)


def default_endpoint(reactor: Any, host: str, port: int, timeout: float) -> Any:
    endpoint = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
    return endpoint(reactor, host, port, timeout=timeout)


def bound_endpoint(source: str) -> Callable[[Any, str, int, float], Any]:
    """Endpoints whose connections come from the local address *source* (to a peer of its family)."""
    def endpoint(reactor: Any, host: str, port: int, timeout: float) -> Any:
        if (":" in host) != (":" in source):
            return default_endpoint(reactor, host, port, timeout)
        kind = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        return kind(reactor, host, port, timeout=timeout, bindAddress=(source, 0))
    return endpoint


async def send_message(
    *,
    reactor: Any,
    host: str,
    port: int,
    helo: str,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    smtputf8: bool = False,
    body_8bit: bool = False,
    tls_options: Any = None,
    starttls: str = "opportunistic",
    auth: tuple[str, str] | None = None,
    timeouts: ClientTimeouts = ClientTimeouts(),
    endpoint_factory: Callable[[Any, str, int, float], Any] | None = None,
    ret: str | None = None,
    envid: str | None = None,
    rcpt_dsn: Mapping[str, RecipientDSN] | None = None,
    requiretls: bool = False,
    cache: ConnectionCache | None = None,
    cache_key: Hashable = None,
) -> TransactionResult:
    """Deliver *message* to *recipients* through the SMTP server at *host*:*port*.

    *host* is an IP address (the caller resolved MX names). *tls_options* is a
    client ``CertificateOptions`` (``mailstack.tls.client_options()``); without
    it STARTTLS is not attempted. *endpoint_factory(reactor, host, port,
    connect_timeout)* returns an ``IStreamClientEndpoint`` (tests, proxies).
    *ret*, *envid* and *rcpt_dsn* (recipient -> NOTIFY/ORCPT) are the sender's DSN
    requests, passed on when the peer offers DSN (RFC 3461 §5.2.2). With *requiretls*
    (RFC 8689) the peer must offer REQUIRETLS once TLS is up, and MAIL carries it; a peer
    that does not is refused with 550 5.7.30 at stage ``ehlo`` (the next host may).

    With a *cache*, the connection is left open after the transaction for the next message
    with the same *cache_key* (which the caller makes name everything the session depends
    on: address, port, TLS mode and its checks, credentials), and a connection left there
    is used instead of a new one. A kept connection that the server closed meanwhile is
    noticed before any reply and replaced by a new one, so the message goes once.
    """
    if starttls not in STARTTLS_MODES:
        raise ValueError(f"starttls must be one of {STARTTLS_MODES}")
    for text in (helo, sender, *recipients):
        if "\r" in text or "\n" in text:
            raise ValueError("CR or LF in an SMTP argument")
    if not recipients:
        raise ValueError("no recipients")
    args: dict[str, Any] = dict(sender=sender, recipients=list(recipients), message=message, smtputf8=smtputf8,
                body_8bit=body_8bit)
    if cache is not None:
        kept = cache.take(cache_key)
        if kept is not None:
            proto, dialogue = kept
            dialogue.ret, dialogue.envid, dialogue.rcpt_dsn = ret, envid, rcpt_dsn or {}
            dialogue.requiretls = requiretls
            try:
                result = await dialogue.again(**args)
            except _Stale:
                proto.abort()
                log.debug("a kept connection to {host} was closed by the server; opening another", host=host)
            except BaseException:
                _finish_connection(proto, dialogue, None, None)
                raise
            else:
                _finish_connection(proto, dialogue, cache, cache_key)
                return result
    proto = SMTPClientProtocol(reactor)
    factory = endpoint_factory or default_endpoint
    try:
        connecting = connectProtocol(factory(reactor, host, port, timeouts.connect), proto)
        connecting.addTimeout(timeouts.connect, reactor)
        await connecting
    except (error.ConnectError, error.TimeoutError, defer.TimeoutError, defer.CancelledError, OSError) as e:
        raise ClientError(_local(421, "4.4.1", f"Cannot connect to {host}:{port}: {_describe(e)}"),
                          True, "connect") from None
    dialogue = _Dialogue(proto, host, timeouts, ret, envid, rcpt_dsn or {}, requiretls, keep=cache is not None)
    try:
        result = await dialogue.run(helo=helo, tls_options=tls_options, starttls=starttls, auth=auth, **args)
    except BaseException:
        _finish_connection(proto, dialogue, None, None)
        raise
    _finish_connection(proto, dialogue, cache, cache_key)
    return result


def _finish_connection(proto: SMTPClientProtocol, dialogue: _Dialogue, cache: ConnectionCache | None,
                       key: Hashable) -> None:
    """After a transaction: into the cache when it takes it, else QUIT (abort when unusable)."""
    if dialogue.must_abort:
        proto.abort()
        return
    if dialogue.finished:  # QUIT was said
        proto.close()
        return
    dialogue.sent += 1
    if cache is not None and cache.give(key, proto, dialogue):
        return
    if dialogue.keep:  # the transaction left the session open for another: close it properly
        d = Deferred.fromCoroutine(dialogue.quit())
        d.addBoth(lambda _: proto.close())
    else:
        proto.close()


class _Stale(Exception):
    """A kept connection turned out closed before the server said anything about this message."""


class ConnectionCache:
    """Connections kept after a transaction for the next one to the same server (RFC 5321 §3.3:
    another MAIL may follow a completed transaction), as Postfix's connection cache does.

    A connection is kept for ``idle`` seconds and used for at most ``per_connection``
    messages; at most ``max_idle`` are kept in all. :meth:`close` says QUIT to every kept one.
    """

    def __init__(self, clock: Any, *, idle: float = 2.0, per_connection: int = 100, max_idle: int = 50) -> None:
        self.clock = clock
        self.idle = idle
        self.per_connection = per_connection
        self.max_idle = max_idle
        self._kept: dict[Hashable, list[tuple[SMTPClientProtocol, _Dialogue, Any]]] = {}
        self._count = 0
        self.closed = False

    def take(self, key: Hashable) -> tuple[SMTPClientProtocol, _Dialogue] | None:
        entries = self._kept.get(key)
        while entries:
            proto, dialogue, timer = entries.pop()
            self._count -= 1
            if timer.active():
                timer.cancel()
            if proto.usable():
                if not entries:
                    del self._kept[key]
                return proto, dialogue
            proto.abort()
        self._kept.pop(key, None)
        return None

    def give(self, key: Hashable, proto: SMTPClientProtocol, dialogue: _Dialogue) -> bool:
        if (self.closed or not dialogue.keep or dialogue.sent >= self.per_connection or self._count >= self.max_idle
                or not proto.usable()):
            return False
        entry: list[Any] = [proto, dialogue, None]
        entry[2] = self.clock.callLater(self.idle, self._expire, key, entry)
        self._kept.setdefault(key, []).append((proto, dialogue, entry[2]))
        self._count += 1
        return True

    def _expire(self, key: Hashable, entry: list[Any]) -> None:
        proto, dialogue, timer = entry
        entries = self._kept.get(key, [])
        for i, (p, _, _) in enumerate(entries):
            if p is proto:
                del entries[i]
                self._count -= 1
                break
        if not entries:
            self._kept.pop(key, None)
        self._quit(proto, dialogue)

    @staticmethod
    def _quit(proto: SMTPClientProtocol, dialogue: _Dialogue) -> None:
        d = Deferred.fromCoroutine(dialogue.quit())
        d.addBoth(lambda _: proto.close())

    def close(self) -> None:
        """QUIT every kept connection; none is kept from now on."""
        self.closed = True
        kept, self._kept, self._count = self._kept, {}, 0
        for entries in kept.values():
            for proto, dialogue, timer in entries:
                if timer.active():
                    timer.cancel()
                self._quit(proto, dialogue)


def _describe(e: BaseException) -> str:
    if isinstance(e, (defer.TimeoutError, error.TimeoutError, defer.CancelledError)):
        return "timed out"
    return e.__class__.__name__ if not str(e) else str(e).strip()


class _Dialogue:
    """The command sequence of one connection."""

    def __init__(self, proto: SMTPClientProtocol, host: str, timeouts: ClientTimeouts, ret: str | None = None,
                 envid: str | None = None, rcpt_dsn: Mapping[str, RecipientDSN] | None = None,
                 requiretls: bool = False, keep: bool = False) -> None:
        self.proto = proto
        self.host = host
        self.t = timeouts
        self.ret = ret
        self.envid = envid
        self.rcpt_dsn = rcpt_dsn or {}
        self.requiretls = requiretls
        self.keep = keep  # the session stays open after the transaction (a connection cache)
        self.sent = 0  # transactions finished on this connection
        self.lost = False  # the connection went away
        self.finished = False  # QUIT was sent
        self.replies = 0  # replies read in the current transaction
        self.extensions: dict[str, str] = {}
        self.must_abort = False

    async def command(self, line: str, timeout: float, stage: str) -> Reply:
        self.proto.send(line.encode("utf-8") + b"\r\n")
        return await self.reply(timeout, stage)

    async def reply(self, timeout: float, stage: str) -> Reply:
        try:
            reply = await self.proto.next_reply(timeout)
            self.replies += 1
            return reply
        except _ReplyTimeout:
            self.must_abort = True
            raise ClientError(_local(421, "4.4.2", f"Timeout waiting for {self.host} ({stage})"), True, stage) from None
        except _Lost:
            self.must_abort = self.lost = True
            raise ClientError(_local(421, "4.4.2", f"Connection to {self.host} lost ({stage})"), True, stage) from None
        except _ProtocolViolation as e:
            self.must_abort = True
            raise ClientError(_local(451, "4.5.0", f"Protocol error from {self.host}: {e}"), True, stage) from None

    async def fail(self, reply: Reply, stage: str, temporary: bool | None = None) -> NoReturn:
        """Say QUIT (best effort) and raise."""
        await self.quit()
        raise ClientError(reply, reply.is_temporary if temporary is None else temporary, stage)

    async def quit(self) -> None:
        if self.must_abort or self.finished:
            return
        self.finished = True
        try:
            await self.command("QUIT", self.t.quit, "quit")
        except ClientError:
            pass

    def check(self, reply: Reply, stage: str) -> Reply:
        """Any 421 ends the session (RFC 5321 §3.8)."""
        if reply.code == 421:
            self.must_abort = True
            raise ClientError(reply, True, stage)
        return reply

    async def again(self, *, sender: str, recipients: list[str], message: bytes, smtputf8: bool,
                    body_8bit: bool) -> TransactionResult:
        """The next transaction on a kept connection; :class:`_Stale` when the server had closed it
        before answering anything of this one (nothing was delivered: a new connection may try)."""
        self.replies = 0
        try:
            await self.check_capabilities(message, smtputf8, body_8bit)
            return await self.transaction(sender, recipients, message, smtputf8, body_8bit)
        except ClientError as e:
            if (self.replies == 0 and self.lost) or (self.replies == 1 and e.reply.code == 421 and e.stage == "mail"):
                raise _Stale() from None
            raise

    async def run(self, *, helo: str, sender: str, recipients: list[str], message: bytes, smtputf8: bool,
                  body_8bit: bool, tls_options: Any, starttls: str, auth: tuple[str, str] | None) -> TransactionResult:
        greeting = self.check(await self.reply(self.t.greeting, "greeting"), "greeting")
        if greeting.code != 220:
            await self.fail(greeting, "greeting")
        await self.hello(helo)
        await self.maybe_starttls(helo, tls_options, starttls)
        if auth is not None:
            await self.authenticate(*auth)
        await self.check_capabilities(message, smtputf8, body_8bit)
        return await self.transaction(sender, recipients, message, smtputf8, body_8bit)

    async def hello(self, helo: str) -> None:
        reply = self.check(await self.command(f"EHLO {helo}", self.t.ehlo, "ehlo"), "ehlo")
        if reply.code == 250:
            self.extensions = _extensions(reply)
            return
        if reply.is_temporary:
            await self.fail(reply, "ehlo")
        reply = self.check(await self.command(f"HELO {helo}", self.t.ehlo, "helo"), "helo")
        if reply.code != 250:
            await self.fail(reply, "helo")
        self.extensions = {}

    async def maybe_starttls(self, helo: str, tls_options: Any, mode: str) -> None:
        if mode == "off":
            return
        if "STARTTLS" not in self.extensions or tls_options is None:
            if mode == "required":
                await self.fail(_local(451, "4.7.10", f"{self.host} does not offer STARTTLS"), "starttls", True)
            return
        reply = self.check(await self.command("STARTTLS", self.t.ehlo, "starttls"), "starttls")
        if reply.code != 220:
            if mode == "required":
                await self.fail(reply, "starttls", True)
            log.info("{host} refused STARTTLS ({code}); continuing without TLS", host=self.host, code=reply.code)
            return
        try:
            await self.proto.start_tls(tls_options, self.t.starttls)
        except (_Lost, _ReplyTimeout, _ProtocolViolation) as e:
            self.must_abort = True
            raise TLSFailed(_local(421, "4.7.5", f"TLS handshake with {self.host} failed: {e or 'timeout'}"),
                            True, "starttls") from None
        reply = self.check(await self.command(f"EHLO {helo}", self.t.ehlo, "ehlo"), "ehlo")
        if reply.code != 250:
            await self.fail(reply, "ehlo")
        self.extensions = _extensions(reply)

    async def authenticate(self, username: str, password: str) -> None:
        if not self.proto.tls:
            await self.fail(_local(451, "4.7.10", f"Not sending credentials to {self.host} without TLS"),
                            "auth", True)
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" not in mechanisms:
            await self.fail(_local(451, "4.7.8", f"{self.host} does not offer AUTH PLAIN"), "auth", True)
        token = base64.b64encode(b"\0" + username.encode("utf-8") + b"\0" + password.encode("utf-8")).decode()
        self.proto.send(f"AUTH PLAIN {token}\r\n".encode("ascii"))
        reply = self.check(await self.reply(self.t.ehlo, "auth"), "auth")
        if reply.code != 235:
            # Our credentials or the smarthost's set-up: not the message's fault, so retry.
            await self.fail(reply, "auth", True)

    async def check_capabilities(self, message: bytes, smtputf8: bool, body_8bit: bool) -> None:
        if self.requiretls and not (self.proto.tls and "REQUIRETLS" in self.extensions):
            await self.fail(_local(550, "5.7.30", f"{self.host} does not support REQUIRETLS, which the sender "
                                   "asked for"), "ehlo", False)
        size = self.extensions.get("SIZE", "")
        if size.isdigit() and int(size) > 0 and len(message) > int(size):
            await self.fail(_local(552, "5.3.4", f"Message size exceeds the maximum of {self.host} ({size})"),
                            "mail", False)
        if smtputf8 and "SMTPUTF8" not in self.extensions:
            # RFC 6531 §3.2: no downgrade; the message cannot go to this server.
            await self.fail(_local(553, "5.6.7", f"{self.host} does not support SMTPUTF8"), "mail", False)
        if body_8bit and "8BITMIME" not in self.extensions:
            await self.fail(_local(554, "5.6.3", f"{self.host} does not support 8BITMIME and conversion is not done"),
                            "mail", False)

    def mail_command(self, sender: str, size: int, smtputf8: bool, body_8bit: bool) -> str:
        params = []
        if "SIZE" in self.extensions:
            params.append(f"SIZE={size}")
        if body_8bit:
            params.append("BODY=8BITMIME")
        if smtputf8:
            params.append("SMTPUTF8")
        if self.requiretls:
            params.append("REQUIRETLS")
        if "DSN" in self.extensions:
            if self.ret:
                params.append(f"RET={self.ret}")
            if self.envid is not None:
                params.append(f"ENVID={xtext(self.envid)}")
        return " ".join([f"MAIL FROM:<{sender}>", *params])

    def rcpt_command(self, recipient: str) -> str:
        params = rcpt_params(self.rcpt_dsn.get(recipient)) if "DSN" in self.extensions else []
        return " ".join([f"RCPT TO:<{recipient}>", *params])

    async def transaction(self, sender: str, recipients: list[str], message: bytes, smtputf8: bool,
                          body_8bit: bool) -> TransactionResult:
        content = dot_stuff(message) + b".\r\n"
        mail = self.mail_command(sender, len(message), smtputf8, body_8bit)
        rcpts = [self.rcpt_command(r) for r in recipients]
        per_recipient: dict[str, Reply] = {}
        if "PIPELINING" in self.extensions:
            self.proto.send("".join(f"{c}\r\n" for c in [mail, *rcpts, "DATA"]).encode("utf-8"))
            mail_reply = self.check(await self.reply(self.t.mail, "mail"), "mail")
            for r in recipients:
                per_recipient[r] = self.check(await self.reply(self.t.rcpt, "rcpt"), "rcpt")
            data_reply = self.check(await self.reply(self.t.data_init, "data"), "data")
            if mail_reply.code != 250:
                if data_reply.code == 354:
                    await self.abandon_data()
                await self.fail(mail_reply, "mail")
        else:
            mail_reply = self.check(await self.command(mail, self.t.mail, "mail"), "mail")
            if mail_reply.code != 250:
                await self.fail(mail_reply, "mail")
            for r, line in zip(recipients, rcpts, strict=True):
                per_recipient[r] = self.check(await self.command(line, self.t.rcpt, "rcpt"), "rcpt")
            if not any(rep.is_success for rep in per_recipient.values()):
                await self.reset_and_quit()
                return TransactionResult(per_recipient, None, self.host, self.proto.tls, "DSN" in self.extensions)
            data_reply = self.check(await self.command("DATA", self.t.data_init, "data"), "data")
        accepted = [r for r, rep in per_recipient.items() if rep.is_success]
        if not accepted:
            if data_reply.code == 354:
                await self.abandon_data()
            await self.reset_and_quit()
            return TransactionResult(per_recipient, None, self.host, self.proto.tls, "DSN" in self.extensions)
        if data_reply.code != 354:
            final = data_reply
        else:
            final = await self.send_content(content)
        for r in accepted:
            per_recipient[r] = final
        if not self.keep:
            await self.quit()
        return TransactionResult(per_recipient, final, self.host, self.proto.tls, "DSN" in self.extensions)

    async def send_content(self, content: bytes) -> Reply:
        producer = _ContentProducer(self.proto, content, self.t.data_block)
        producer.start()
        try:
            await producer.done
        except (_Lost, _ReplyTimeout):
            self.must_abort = True
            raise ClientError(_local(421, "4.4.2", f"Connection to {self.host} failed while sending data"),
                              True, "data") from None
        return self.check(await self.reply(self.t.data_end, "data"), "data")

    async def abandon_data(self) -> None:
        """RFC 2920 §3.1: DATA was accepted with no valid recipient: send an empty message's end."""
        self.proto.send(b".\r\n")
        await self.reply(self.t.data_end, "data")

    async def reset_and_quit(self) -> None:
        """After a transaction with no recipient: RSET, then QUIT unless the session is kept."""
        try:
            await self.command("RSET", self.t.mail, "rset")
        except ClientError:
            return
        if not self.keep:
            await self.quit()


def _extensions(reply: Reply) -> dict[str, str]:
    """EHLO keywords (upper case) -> parameters."""
    out: dict[str, str] = {}
    for line in reply.lines()[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            out[keyword.upper()] = params.strip()
    return out


__all__ = ["ClientError", "ClientTimeouts", "SMTPClientProtocol", "TLSFailed", "TransactionResult",
           "dot_stuff", "parse_reply", "send_message"]
