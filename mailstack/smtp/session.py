"""One ESMTP session: state, command table and decisions, no transport.

RFC 5321 (commands, sequencing §4.1.4, replies §4.2), RFC 1870 (SIZE), RFC 6152
(8BITMIME), RFC 2920 (PIPELINING), RFC 2034 (ENHANCEDSTATUSCODES), RFC 6531
(SMTPUTF8), RFC 3030 (CHUNKING/BDAT), RFC 3207 (STARTTLS), RFC 4954 (AUTH),
RFC 3461 (DSN: its parameters are kept in the envelope), RFC 1985 (ETRN).

The protocol layer (``protocol.py``) hands in complete command lines and
message content; the session answers with an :class:`Outcome` (a reply plus
what the protocol must do next: read DATA, read a BDAT chunk, start TLS, read
a SASL response, close). Policy (which senders and recipients are accepted)
and delivery come in through the ``SMTPPolicy`` and ``MessageRouter``
interfaces.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from twisted.logger import Logger

from mailstack import auth as sasl
from mailstack import metrics
from mailstack.addresses import InvalidAddress, normalize_domain
from mailstack.envelope import Envelope, RecipientDSN, new_queue_id
from mailstack.interfaces import ClientInfo, FaultInjector, MessageRouter, QueueStarter, SMTPPolicy
from mailstack.smtp import message as msg
from mailstack.smtp import reply as R
from mailstack.smtp.address import PathSyntaxError, parse_mail_from, parse_rcpt_to
from mailstack.smtp.dsnparams import DSNParamError, parse_envid, parse_ret, rcpt_dsn
from mailstack.smtp.reply import Reply, SMTPReplyError

log = Logger()

# RFC 5321 §4.1.1.1: a domain or an address literal (UTF-8 letters allowed for U-labels, no controls)
_HELO_ARG = re.compile(r"^[A-Za-z0-9._:\-\[\]\u00a0-\U0010ffff]{1,255}$")
_BDAT_ARGS = re.compile(r"^([0-9]{1,12})(?: +(LAST))? *$", re.IGNORECASE)
MAX_ERRORS = 20  # like Postfix's smtpd_hard_error_limit: then 421 and close


def _printable(text: str) -> bool:
    return text.isascii() or all(unicodedata.category(c)[0] != "C" for c in text)



# the Message-ID field's value (RFC 5322 §3.6.4), for the log
_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:[ \t]*(?:\r?\n[ \t]+)?(<[^>\r\n]{1,998}>)", re.I | re.M)

class Action(enum.Enum):
    NONE = "none"
    CLOSE = "close"
    DATA = "data"  # read message content up to <CRLF>.<CRLF>
    BDAT = "bdat"  # read ``size`` octets, hand them to bdat_chunk()
    BDAT_DISCARD = "bdat-discard"  # read and drop ``size`` octets, then send the reply
    STARTTLS = "starttls"  # send the reply, drop buffered input, start TLS
    AUTH = "auth"  # the next line is a SASL response for auth_response()


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: Reply | None
    action: Action = Action.NONE
    size: int = 0
    last: bool = False




@dataclass(frozen=True, slots=True)
class SessionConfig:
    hostname: str
    max_message_size: int
    max_recipients: int
    max_received: int
    allow_plaintext_auth: bool
    starttls_available: bool
    postmaster_domain: str
    requiretls: bool = True  # RFC 8689 offered (on TLS sessions)


@dataclass(slots=True)
class _Transaction:
    envelope: Envelope
    rcpt_attempts: int = 0
    bdat_chunks: list[bytes] = field(default_factory=list)
    bdat_size: int = 0


@dataclass(slots=True)
class _SASL:
    mechanism: str
    username: str | None = None


Result = Outcome | Awaitable[Outcome]


class SMTPSession:
    """Per-connection ESMTP state machine; every reply it gives is a :class:`Reply` value."""

    def __init__(
        self,
        config: SessionConfig,
        policy: SMTPPolicy,
        router: MessageRouter,
        authenticator: sasl.Authenticator | None,
        *,
        client_ip: str,
        trusted_network: bool,
        tls: bool,
        tls_info: Callable[[], str | None] = lambda: None,
        rdns: Callable[[], str | None] = lambda: None,
        session_id: str = "",
        faults: FaultInjector | None = None,
        role: str = "",
        queue: QueueStarter | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.router = router
        self.authenticator = authenticator
        self.client_ip = client_ip
        self.trusted_network = trusted_network
        self.tls = tls
        self.tls_info = tls_info
        self.rdns = rdns
        self.session_id = session_id or new_queue_id()
        self.faults = faults  # failure injection (labs, tests); None in normal service
        self.role = role
        self.queue = queue  # ETRN on port 25 (RFC 1985); None elsewhere
        self.helo: str | None = None
        self.esmtp = False
        self.auth_user: str | None = None
        self.txn: _Transaction | None = None
        self.sasl: _SASL | None = None
        self.errors = 0
        self._commands: dict[str, Callable[[str], Result]] = {
            "EHLO": self.ehlo, "HELO": self.helo_cmd, "MAIL": self.mail, "RCPT": self.rcpt,
            "DATA": self.data, "BDAT": self.bdat, "RSET": self.rset, "NOOP": self.noop,
            "QUIT": self.quit, "HELP": self.help, "VRFY": self.vrfy, "EXPN": self.expn,
            "STARTTLS": self.starttls, "AUTH": self.auth,
        }
        if queue is not None:
            self._commands["ETRN"] = self.etrn

    # -- helpers ------------------------------------------------------------

    def greeting(self) -> Reply:
        return Reply(220, None, f"{self.config.hostname} ESMTP")

    def client(self) -> ClientInfo:
        return ClientInfo(self.client_ip, self.helo or "", self.tls, self.auth_user, self.trusted_network)

    def _require_hello(self) -> None:
        if self.helo is None:
            raise SMTPReplyError(R.BAD_SEQUENCE.with_text("Send HELO/EHLO first"))

    def _auth_offered(self) -> bool:
        return self.authenticator is not None and (self.tls or self.config.allow_plaintext_auth)

    def handle(self, line: str) -> Result:
        """Dispatch one command line (without CRLF)."""
        verb, _, args = line.partition(" ")
        verb = verb.upper()
        handler = self._commands.get(verb)
        if handler is None:
            outcome = Outcome(R.NOT_IMPLEMENTED if verb in ("SEND", "SOML", "SAML", "TURN", "ATRN", "ETRN")
                              else R.UNKNOWN_COMMAND)
        else:
            try:
                result = handler(args.strip(" "))
            except SMTPReplyError as e:
                result = Outcome(e.reply)
            if verb == "RCPT":
                result = self._counted(result, self._count_recipient)
            if not isinstance(result, Outcome):
                return result
            outcome = result
        return self._count_errors(outcome)

    def _count_errors(self, outcome: Outcome) -> Outcome:
        """After MAX_ERRORS refused commands the client is cut off (address harvesting, junk)."""
        if outcome.reply is not None and outcome.reply.code >= 400 and outcome.action is Action.NONE:
            self.errors += 1
            if self.errors >= MAX_ERRORS:
                log.warn("{session_id} from {ip}: too many errors, disconnecting", session_id=self.session_id,
                         ip=self.client_ip)
                return Outcome(R.TOO_MANY_ERRORS, Action.CLOSE)
        return outcome

    # -- HELO/EHLO ------------------------------------------------------------

    def _hello(self, args: str) -> None:
        if not _HELO_ARG.match(args) or not _printable(args):
            raise SMTPReplyError(R.SYNTAX.with_text("Invalid domain name"))
        self.helo = args
        self.txn = None  # RFC 5321 §4.1.4: EHLO/HELO implies RSET

    def ehlo(self, args: str) -> Outcome:
        self._hello(args)
        self.esmtp = True
        lines = [
            f"{self.config.hostname} greets {args}",
            "PIPELINING",
            f"SIZE {self.config.max_message_size}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            "CHUNKING",
            "DSN",
        ]
        if self.config.starttls_available and not self.tls:
            lines.append("STARTTLS")
        if self._auth_offered():
            lines.append("AUTH PLAIN LOGIN")
        if self.queue is not None:
            lines.append("ETRN")
        if self.tls and self.config.requiretls:  # RFC 8689 §4: only where the client's own hop was encrypted
            lines.append("REQUIRETLS")
        lines.append("HELP")
        return Outcome(Reply(250, None, tuple(lines)))

    def helo_cmd(self, args: str) -> Outcome:
        self._hello(args)
        self.esmtp = False
        return Outcome(Reply(250, None, self.config.hostname))

    # -- simple commands ------------------------------------------------------

    def rset(self, args: str) -> Outcome:
        if args:
            return Outcome(R.SYNTAX)
        self.txn = None
        return Outcome(R.RESET_OK)

    def noop(self, args: str) -> Outcome:
        return Outcome(R.NOOP_OK)

    def quit(self, args: str) -> Outcome:
        return Outcome(Reply(221, "2.0.0", f"{self.config.hostname} closing connection"), Action.CLOSE)

    def help(self, args: str) -> Outcome:
        return Outcome(R.HELP)

    def vrfy(self, args: str) -> Outcome:
        if not args:
            return Outcome(R.SYNTAX)
        return Outcome(R.VRFY_CANNOT)

    def expn(self, args: str) -> Outcome:
        return Outcome(R.EXPN_DISABLED)

    def starttls(self, args: str) -> Outcome:
        if args:
            return Outcome(R.SYNTAX)
        if self.tls:
            return Outcome(R.BAD_SEQUENCE.with_text("TLS already active"))
        if not self.config.starttls_available:
            return Outcome(R.TLS_NOT_AVAILABLE)
        self._require_hello()
        return Outcome(Reply(220, "2.0.0", "Ready to start TLS"), Action.STARTTLS)

    def tls_started(self) -> None:
        """RFC 3207 §4.2: forget everything learned before TLS; EHLO is needed again."""
        self.tls = True
        self.helo = None
        self.esmtp = False
        self.auth_user = None
        self.txn = None
        self.sasl = None

    # -- transaction --------------------------------------------------------------

    def mail(self, args: str) -> Result:
        self._require_hello()
        if self.txn is not None:
            return Outcome(R.BAD_SEQUENCE.with_text("Sender already specified"))
        if self.policy.auth_required and self.auth_user is None:
            return Outcome(R.AUTH_REQUIRED)
        try:
            path = parse_mail_from(args)
        except PathSyntaxError as e:
            return Outcome(R.PARAM_UNKNOWN.with_text(str(e)) if e.param else R.BAD_SENDER_SYNTAX)
        envelope = Envelope(
            queue_id=new_queue_id(), sender=path.address, helo=self.helo or "",
            client_ip=self.client_ip, auth_user=self.auth_user,
        )
        error = self._mail_params(path.params, envelope)
        if error is not None:
            return Outcome(error)
        if not path.is_ascii and not envelope.smtputf8:
            return Outcome(R.UTF8_REQUIRED)
        return self._unless_fault("mail", envelope.sender, "", lambda: self._accept_sender(envelope))

    def _accept_sender(self, envelope: Envelope) -> Outcome:
        if self.txn is not None:  # a delayed MAIL: another may have come meanwhile
            return Outcome(R.BAD_SEQUENCE.with_text("Sender already specified"))
        self.policy.check_sender(self.client(), envelope.sender)
        self.txn = _Transaction(envelope)
        return Outcome(R.SENDER_OK)

    def _mail_params(self, params: dict[str, str | None], envelope: Envelope) -> Reply | None:
        for key, value in params.items():
            if key == "SIZE":  # RFC 1870 §6
                if value is None or not (value.isascii() and value.isdigit()):
                    return R.SYNTAX.with_text("SIZE needs a number")
                if int(value) > self.config.max_message_size:
                    return R.MESSAGE_TOO_BIG
                envelope.declared_size = int(value)
            elif key == "BODY":  # RFC 6152
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    return R.PARAM_UNKNOWN.with_text("BODY must be 7BIT or 8BITMIME")
                envelope.body_8bit = value.upper() == "8BITMIME"
            elif key == "SMTPUTF8":  # RFC 6531 §3.4
                if value is not None:
                    return R.SYNTAX.with_text("SMTPUTF8 takes no value")
                envelope.smtputf8 = True
            elif key == "AUTH":  # RFC 4954 §5: accepted, not trusted
                continue
            elif key == "REQUIRETLS" and self.config.requiretls:  # RFC 8689 §4.1
                if value is not None:
                    return R.SYNTAX.with_text("REQUIRETLS takes no value")
                if not self.tls:
                    return R.REQUIRETLS_NEEDS_TLS
                envelope.requiretls = True
            elif key in ("RET", "ENVID"):  # RFC 3461 §4.3, §4.4
                try:
                    if key == "RET":
                        envelope.ret = parse_ret(value)
                    else:
                        envelope.envid = parse_envid(value)
                except DSNParamError as e:
                    return R.SYNTAX.with_text(str(e))
            else:
                return R.PARAM_UNKNOWN.with_text(f"Unsupported parameter {key}")
        return None

    def rcpt(self, args: str) -> Result:
        self._require_hello()
        txn = self.txn
        if txn is None:
            return Outcome(R.BAD_SEQUENCE.with_text("Need MAIL before RCPT"))
        if txn.bdat_chunks or txn.bdat_size:
            return Outcome(R.BAD_SEQUENCE.with_text("BDAT in progress"))
        txn.rcpt_attempts += 1
        try:
            path = parse_rcpt_to(args, self.config.postmaster_domain)
        except PathSyntaxError as e:
            return Outcome(R.PARAM_UNKNOWN.with_text(str(e)) if e.param else R.BAD_RCPT_SYNTAX)
        params = dict(path.params)
        try:
            dsn = rcpt_dsn(params)  # RFC 3461 §4.1, §4.2
        except DSNParamError as e:
            return Outcome(R.SYNTAX.with_text(str(e)))
        if params:
            return Outcome(R.PARAM_UNKNOWN.with_text(f"Unsupported parameter {next(iter(params))}"))
        if not (path.params.get("ORCPT") or "").isascii() and not txn.envelope.smtputf8:
            return Outcome(R.UTF8_REQUIRED)  # RFC 6533 §3: raw UTF-8 (unitext) under SMTPUTF8 only
        if not path.is_ascii and not txn.envelope.smtputf8:
            return Outcome(R.UTF8_REQUIRED)
        if len(txn.envelope.recipients) >= self.config.max_recipients:
            return Outcome(R.TOO_MANY_RECIPIENTS)
        return self._unless_fault("rcpt", txn.envelope.sender, path.address,
                                  lambda: self._accept_recipient(txn, path.address, dsn))

    def _accept_recipient(self, txn: _Transaction, address: str, dsn: RecipientDSN | None = None) -> Outcome:
        if self.txn is not txn:  # a delayed RCPT whose transaction ended meanwhile
            return Outcome(R.BAD_SEQUENCE.with_text("Need MAIL before RCPT"))
        route = self.policy.check_rcpt(self.client(), address)
        if route.remote and not self.router.can_relay():
            return Outcome(R.NO_RELAY_YET)
        txn.envelope.recipients.append(route if dsn is None else replace(route, dsn=dsn))
        return Outcome(R.RECIPIENT_OK)

    def _require_recipients(self) -> _Transaction:
        self._require_hello()
        txn = self.txn
        if txn is None:
            raise SMTPReplyError(R.BAD_SEQUENCE.with_text("Need MAIL command"))
        if not txn.envelope.recipients:
            if txn.rcpt_attempts:
                raise SMTPReplyError(R.NO_VALID_RECIPIENTS)
            raise SMTPReplyError(R.BAD_SEQUENCE.with_text("Need RCPT command"))
        return txn

    def data(self, args: str) -> Outcome:
        if args:
            return Outcome(R.SYNTAX)
        txn = self._require_recipients()
        if txn.bdat_chunks or txn.bdat_size:
            return Outcome(R.BAD_SEQUENCE.with_text("BDAT in progress"))
        return Outcome(R.START_DATA, Action.DATA)

    def bdat(self, args: str) -> Outcome:
        m = _BDAT_ARGS.match(args)
        if not m:
            return Outcome(R.SYNTAX.with_text("Usage: BDAT <size> [LAST]"))
        size, last = int(m.group(1)), m.group(2) is not None
        try:
            txn = self._require_recipients()
        except SMTPReplyError as e:  # RFC 3030 §2: the chunk is still read, then refused
            return Outcome(e.reply, Action.BDAT_DISCARD, size=size)
        if txn.bdat_size + size > self.config.max_message_size:
            self.txn = None
            self._count_message(R.MESSAGE_TOO_BIG)
            return Outcome(R.MESSAGE_TOO_BIG, Action.BDAT_DISCARD, size=size)
        return Outcome(None, Action.BDAT, size=size, last=last)

    def bdat_chunk(self, data: bytes, last: bool) -> Result:
        txn = self.txn
        assert txn is not None
        txn.bdat_chunks.append(data)
        txn.bdat_size += len(data)
        if not last:
            return Outcome(Reply(250, "2.0.0", f"{len(data)} octets received"))
        content = b"".join(txn.bdat_chunks)
        txn.bdat_chunks = []
        return self.finish_message(content, None)

    # -- ETRN (RFC 1985) ----------------------------------------------------------------

    def etrn(self, args: str) -> Result:
        self._require_hello()
        if self.txn is not None:
            return Outcome(R.BAD_SEQUENCE.with_text("ETRN is not allowed inside a mail transaction"))
        node = args.strip(" ")
        if not node or " " in node or not _printable(node):
            return Outcome(R.SYNTAX.with_text("Syntax: ETRN <domain> | @<domain>"))
        if not self.trusted_network:
            log.info("{session_id} ETRN refused for {ip}", session_id=self.session_id, ip=self.client_ip)
            return Outcome(Reply(459, "4.7.1", "Node not allowed: ETRN is for the relay networks only"))
        if node.startswith("#"):  # §5.2: a named queue; there are none here
            return Outcome(Reply(458, "4.3.0", "Unable to queue messages for that node: there are no named queues"))
        subdomains = node.startswith("@")
        try:
            domain = normalize_domain(node[1:] if subdomains else node)
        except InvalidAddress:
            return Outcome(R.SYNTAX.with_text("Syntax: ETRN <domain> | @<domain>"))
        return self._start(domain, subdomains, ("@" if subdomains else "") + domain)

    async def _start(self, domain: str, subdomains: bool, shown: str) -> Outcome:
        assert self.queue is not None
        try:
            started = await self.queue.start_domain(domain, subdomains)
        except OSError:
            log.failure("{session_id} ETRN {node}: the queue could not be read", session_id=self.session_id,
                        node=shown)
            return Outcome(Reply(458, "4.3.0", f"Unable to queue messages for node {shown}"))
        if started < 0:  # asked again while the first look runs
            return Outcome(Reply(250, "2.0.0", f"OK, queuing for node {shown} started"))
        if not started:
            return Outcome(Reply(251, "2.0.0", f"OK, no messages waiting for node {shown}"))
        return Outcome(Reply(252, "2.0.0", f"OK, pending messages for node {shown} started"))

    # -- end of data ----------------------------------------------------------------

    def finish_message(self, content: bytes, problem: Reply | None) -> Result:
        """The message content has been read (dot-unstuffed for DATA); deliver it."""
        if self.txn is None:
            return Outcome(R.BAD_SEQUENCE)
        return self._counted(self._finish_message(content, problem), self._count_message)

    def _finish_message(self, content: bytes, problem: Reply | None) -> Result:
        txn = self.txn
        assert txn is not None  # finish_message checked
        self.txn = None  # RFC 5321 §4.1.1.4: the transaction ends with the reply, whatever it is
        if problem is None and len(content) > self.config.max_message_size:
            problem = R.MESSAGE_TOO_BIG
        if problem is None and msg.has_long_line(content):
            problem = R.LINE_TOO_LONG
        if problem is not None:
            log.info("{session_id} message {queue_id} refused: {reason}", session_id=self.session_id,
                     queue_id=txn.envelope.queue_id, reason=problem.lines()[0])
            return Outcome(problem)
        envelope = txn.envelope
        return self._unless_fault("data", envelope.sender, [r.original for r in envelope.recipients],
                                  lambda: self._deliver(envelope, msg.normalize_line_endings(content)))

    # -- metrics ----------------------------------------------------------------------------

    def _count_message(self, reply: Reply | None) -> None:
        metrics.message_received(self.role, reply.code if reply else None, reply.enhanced if reply else None)

    def _count_recipient(self, reply: Reply | None) -> None:
        if reply is not None and not reply.is_success:
            metrics.recipient_refused(self.role, reply.code, reply.enhanced)

    @staticmethod
    def _counted(result: Result, count: Callable[[Reply | None], None]) -> Result:
        """*result*, counted by its reply once it is known."""
        if isinstance(result, Outcome):
            count(result.reply)
            return result

        async def later() -> Outcome:
            try:
                outcome = await result
            except SMTPReplyError as e:
                count(e.reply)
                raise
            count(outcome.reply)
            return outcome

        return later()

    # -- failure injection ----------------------------------------------------------------

    def _unless_fault(self, stage: str, sender: str, recipients: str | list[str],
                      go: Callable[[], Result]) -> Result:
        """``go()``, unless a failure-injection rule says otherwise for this command."""
        if self.faults is None:
            return go()
        for recipient in [recipients] if isinstance(recipients, str) else recipients:
            fault = self.faults.check(stage, self.role, self.client_ip, sender, recipient)
            if fault is not None:
                break
        else:
            return go()
        what = (f"delay {fault.delay:g}s" if fault.delay else "disconnect" if fault.disconnect
                else fault.reply.lines()[0] if fault.reply is not None else "")
        log.info("{session_id} fault rule {rule} at {stage}: {what}", session_id=self.session_id, rule=fault.rule,
                 stage=stage, what=what)
        if fault.delay:
            return self._after(fault.delay, go)
        if fault.disconnect:
            return Outcome(None, Action.CLOSE)
        return Outcome(fault.reply)

    async def _after(self, seconds: float, go: Callable[[], Result]) -> Outcome:
        assert self.faults is not None
        await self.faults.sleep(seconds)
        result = go()
        return result if isinstance(result, Outcome) else await result

    async def _deliver(self, envelope: Envelope, content: bytes) -> Outcome:
        headers = msg.header_block(content)
        if msg.count_received(headers) >= self.config.max_received:
            return Outcome(R.TOO_MANY_HOPS)
        tls = self.tls_info() if self.tls else None  # for Received: and the log line
        try:
            content = await self.policy.check_message(self.client(), envelope, content)
            extra = self.policy.prepare_message(envelope, headers)
            trace = msg.received_header(
                helo=envelope.helo, client_ip=envelope.client_ip, rdns=self.rdns(),
                hostname=self.config.hostname,
                protocol=msg.protocol_name(esmtp=self.esmtp, tls=self.tls, auth=self.auth_user is not None,
                                           utf8=envelope.smtputf8),
                queue_id=envelope.queue_id, tls=tls,
                recipient=envelope.recipients[0].original if len(envelope.recipients) == 1 else None,
            )
            await self.router.deliver(envelope, trace + extra + content)
        except SMTPReplyError as e:
            log.info("{session_id} message {queue_id} not accepted: {cause}", session_id=self.session_id,
                     queue_id=envelope.queue_id, cause=e.cause or e.reply.lines()[0])
            return Outcome(e.reply)
        except Exception:  # the session boundary: our fault, never a traceback to the peer
            log.failure("{session_id} delivery of {queue_id} failed", session_id=self.session_id,
                        queue_id=envelope.queue_id)
            return Outcome(R.TRY_AGAIN)
        found = _MESSAGE_ID.search(headers)
        # the fields past the text are for the JSON log and `mailstack trace`
        log.info("{queue_id} accepted from <{sender}> [{ip}] for {recipients}, {size} octets",
                 queue_id=envelope.queue_id, sender=envelope.sender, ip=envelope.client_ip,
                 recipients=", ".join(f"<{r.original}>" for r in envelope.recipients), size=len(content),
                 session_id=self.session_id, helo=envelope.helo, tls=tls,
                 auth=self.auth_user, message_id=found.group(1).decode("utf-8", "replace") if found else None)
        return Outcome(Reply(250, "2.0.0", f"OK queued as {envelope.queue_id}"))

    # -- AUTH (RFC 4954) ---------------------------------------------------------------

    def auth(self, args: str) -> Result:
        self._require_hello()
        if self.auth_user is not None:
            return Outcome(R.BAD_SEQUENCE.with_text("Already authenticated"))
        if self.txn is not None:
            return Outcome(R.BAD_SEQUENCE.with_text("AUTH not permitted during a mail transaction"))
        if self.authenticator is None:
            return Outcome(R.NOT_IMPLEMENTED)
        if not self._auth_offered():
            return Outcome(R.TLS_REQUIRED)
        if self.authenticator.is_locked(self.client_ip):
            return Outcome(R.AUTH_LOCKED_OUT, Action.CLOSE)
        mechanism, _, initial = args.partition(" ")
        mechanism = mechanism.upper()
        initial = initial.strip(" ")
        if mechanism == "PLAIN":
            self.sasl = _SASL("PLAIN")
            if initial:
                return self.auth_response(initial)
            return Outcome(Reply(334, None, ""), Action.AUTH)
        if mechanism == "LOGIN":
            self.sasl = _SASL("LOGIN")
            if initial:
                return self.auth_response(initial)
            return Outcome(Reply(334, None, "VXNlcm5hbWU6"), Action.AUTH)  # "Username:"
        return Outcome(R.AUTH_MECH_UNKNOWN)

    def auth_response(self, line: str) -> Result:
        state = self.sasl
        if state is None:
            return Outcome(R.BAD_SEQUENCE)
        if line == "*":  # RFC 4954 §4: the client cancels
            self.sasl = None
            return Outcome(R.AUTH_CANCELLED)
        try:
            decoded = sasl.b64decode(line) if line != "=" else b""
            if state.mechanism == "PLAIN":
                authzid, username, password = sasl.decode_plain(decoded)
                if authzid and authzid != username:
                    self.sasl = None
                    return Outcome(R.AUTH_FAILED)
            elif state.username is None:
                state.username = decoded.decode("utf-8")
                return Outcome(Reply(334, None, "UGFzc3dvcmQ6"), Action.AUTH)  # "Password:"
            else:
                username, password = state.username, decoded.decode("utf-8")
        except (sasl.SASLError, UnicodeDecodeError):
            self.sasl = None
            return Outcome(R.AUTH_BAD_BASE64)
        self.sasl = None
        return self._check_password(username, password)

    async def _check_password(self, username: str, password: str) -> Outcome:
        assert self.authenticator is not None
        result = await self.authenticator.login(self.client_ip, username, password, protocol="smtp",
                                                session_id=self.session_id)
        if result.outcome is sasl.Outcome.OK:
            self.auth_user = result.user
            return Outcome(R.AUTH_OK)
        if result.outcome is sasl.Outcome.LOCKED:
            return Outcome(R.AUTH_LOCKED_OUT, Action.CLOSE)
        if result.outcome is sasl.Outcome.UNAVAILABLE:
            return Outcome(R.AUTH_TEMP_FAILURE)
        return Outcome(R.AUTH_FAILED)
