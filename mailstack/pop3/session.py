"""One POP3 session: states, command table and decisions, no transport.

RFC 1939 (§3 states AUTHORIZATION, TRANSACTION, UPDATE; §4-§7 commands),
RFC 2449 (CAPA, PIPELINING, RESP-CODES, IMPLEMENTATION; §4 lines of at most
255 octets), RFC 2595 §4 (STLS, only in AUTHORIZATION), RFC 5034 (AUTH with a
SASL initial response, ``+ `` continuations, ``*`` cancels), RFC 4616 (PLAIN),
RFC 3206 (``[AUTH]``, ``[SYS/TEMP]``, AUTH-RESP-CODE), RFC 2449 §8.1.1
(``[IN-USE]``).

The protocol (``protocol.py``) hands in one command line at a time; the
session answers with an :class:`Outcome`: a :class:`Reply` plus what the
protocol does next (close, start TLS, read a SASL response, send a message
file). Logins go through the shared :class:`mailstack.auth.Authenticator`
(growing delay and lockout per client address); the maildrop is the user's
INBOX in the mail store, opened through :class:`mailstack.pop3.maildrop.Maildrops`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from twisted.logger import Logger

from mailstack import auth as sasl
from mailstack.auth import Outcome as LoginOutcome
from mailstack.envelope import new_queue_id
from mailstack.maildir.folders import FolderError
from mailstack.maildir.mailbox import Mailbox, Message
from mailstack.pop3 import reply as R
from mailstack.pop3.maildrop import Maildrops, unique_id
from mailstack.pop3.reply import Reply

log = Logger()

_NUMBER = re.compile(r"^[0-9]{1,9}$")
IMPLEMENTATION = "mailstack"


class State(enum.Enum):
    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"


class Action(enum.Enum):
    NONE = "none"
    CLOSE = "close"  # write the reply, then close
    STLS = "stls"  # write the reply, drop buffered input, start TLS
    AUTH = "auth"  # write "+ ", the next line is a SASL response for auth_response()
    SEND = "send"  # open ``path`` (else ``await relocate()``); write the reply and the message


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: Reply | None
    action: Action = Action.NONE
    path: str | None = None
    body_lines: int | None = None  # TOP: lines of body after the headers
    relocate: Callable[[], Awaitable[str | None]] | None = None  # where the file went if ``path`` is gone
    size: int = 0  # the message's size from the maildrop listing


@dataclass(frozen=True, slots=True)
class SessionConfig:
    hostname: str
    allow_plaintext_auth: bool
    stls_available: bool  # port 110: STLS offered until TLS is up


Result = Outcome | Awaitable[Outcome]
_Handler = Callable[[str], Result]
_ALL = frozenset(State)
_AUTHORIZATION = frozenset({State.AUTHORIZATION})
_TRANSACTION = frozenset({State.TRANSACTION})


class POP3Session:
    """Per-connection POP3 state machine; every answer is a :class:`Reply` value."""

    def __init__(self, config: SessionConfig, authenticator: sasl.Authenticator, maildrops: Maildrops,
                 *, client_ip: str, tls: bool, session_id: str = "") -> None:
        self.config = config
        self.authenticator = authenticator
        self.maildrops = maildrops
        self.client_ip = client_ip
        self.tls = tls
        self.session_id = session_id or new_queue_id()
        self.state = State.AUTHORIZATION
        self.user: str | None = None  # after USER, before PASS
        self.mailbox: str | None = None  # the locked maildrop's address
        self.box: Mailbox | None = None  # the locked maildrop's INBOX in the mail store
        self.messages: list[Message] = []  # the snapshot taken at login, in UID (delivery) order
        self.deleted: set[int] = set()  # 0-based indexes marked by DELE
        self.closed = False
        self._commands: dict[str, tuple[_Handler, frozenset[State]]] = {
            "CAPA": (self.capa, _ALL),
            "QUIT": (self.quit, _ALL),
            "NOOP": (self.noop, _TRANSACTION),
            "STLS": (self.stls, _AUTHORIZATION),
            "USER": (self.user_cmd, _AUTHORIZATION),
            "PASS": (self.pass_cmd, _AUTHORIZATION),
            "AUTH": (self.auth, _AUTHORIZATION),
            "APOP": (self.apop, _AUTHORIZATION),
            "STAT": (self.stat, _TRANSACTION),
            "LIST": (self.list_cmd, _TRANSACTION),
            "UIDL": (self.uidl, _TRANSACTION),
            "RETR": (self.retr, _TRANSACTION),
            "TOP": (self.top, _TRANSACTION),
            "DELE": (self.dele, _TRANSACTION),
            "RSET": (self.rset, _TRANSACTION),
        }

    # -- entry points ------------------------------------------------------------

    def greeting(self) -> Reply:
        return R.ok(f"{self.config.hostname} POP3 ready")

    def handle(self, line: str) -> Result:
        """Dispatch one command line (without CRLF)."""
        verb, _, args = line.partition(" ")
        entry = self._commands.get(verb.upper())
        if entry is None:
            return Outcome(R.UNKNOWN_COMMAND)
        handler, states = entry
        if self.state not in states:
            return Outcome(R.BAD_STATE)
        return handler(args)

    def tls_started(self) -> None:
        """RFC 2595 §4: after STLS the session starts again from scratch."""
        self.tls = True
        self.user = None

    def close(self) -> None:
        """The connection is gone: release the maildrop without deleting anything."""
        self.closed = True
        self._release()

    def _release(self) -> None:
        if self.mailbox is not None:
            self.maildrops.locks.release(self.mailbox)
            self.mailbox = None

    # -- AUTHORIZATION -------------------------------------------------------------------

    def _login_allowed(self) -> bool:
        return self.tls or self.config.allow_plaintext_auth

    def capa(self, args: str) -> Outcome:
        lines = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state is State.AUTHORIZATION:
            if self._login_allowed():
                lines += ["USER", "SASL PLAIN"]
            if self.config.stls_available and not self.tls:
                lines.append("STLS")
        lines.append(f"IMPLEMENTATION {IMPLEMENTATION}")
        return Outcome(R.ok("Capability list follows", tuple(lines)))

    def stls(self, args: str) -> Outcome:
        if args:
            return Outcome(R.SYNTAX)
        if self.tls:
            return Outcome(R.STLS_ALREADY)
        if not self.config.stls_available:
            return Outcome(R.STLS_UNAVAILABLE)
        return Outcome(R.STLS_GO, Action.STLS)

    def user_cmd(self, args: str) -> Outcome:
        self.user = None
        if not self._login_allowed():
            return Outcome(R.PLAINTEXT_DISALLOWED)
        name = args.strip(" ")
        if not name or " " in name:
            return Outcome(R.SYNTAX)
        self.user = name
        return Outcome(R.USER_OK)

    def pass_cmd(self, args: str) -> Result:
        user, self.user = self.user, None
        if not self._login_allowed():
            return Outcome(R.PLAINTEXT_DISALLOWED)
        if user is None:
            return Outcome(R.NEED_USER)
        if not args:
            return Outcome(R.SYNTAX)
        return self._login(user, args)

    def apop(self, args: str) -> Outcome:
        return Outcome(R.APOP_UNAVAILABLE)

    def auth(self, args: str) -> Result:
        self.user = None
        mechanism, _, initial = args.strip(" ").partition(" ")
        if not mechanism:  # the pre-RFC 5034 listing form that many clients still send
            return Outcome(R.ok("Mechanisms follow", ("PLAIN",) if self._login_allowed() else ()))
        if mechanism.upper() != "PLAIN":
            return Outcome(R.AUTH_BAD_MECHANISM)
        if not self._login_allowed():
            return Outcome(R.PLAINTEXT_DISALLOWED)
        initial = initial.strip(" ")
        if not initial:
            return Outcome(None, Action.AUTH)
        return self._plain("" if initial == "=" else initial)

    def auth_response(self, line: str) -> Result:
        """The client's answer to ``+ ``: base64 PLAIN, or ``*`` to cancel."""
        if line.strip(" ") == "*":
            return Outcome(R.AUTH_CANCELLED)
        return self._plain(line.strip(" "))

    async def _plain(self, encoded: str) -> Outcome:
        return await self._logged_in(await self.authenticator.login_plain(
            self.client_ip, encoded, protocol="pop3", session_id=self.session_id))

    async def _login(self, username: str, password: str) -> Outcome:
        return await self._logged_in(await self.authenticator.login(
            self.client_ip, username, password, protocol="pop3", session_id=self.session_id))

    async def _logged_in(self, result: sasl.LoginResult) -> Outcome:
        if result.outcome is LoginOutcome.MALFORMED:
            return Outcome(R.AUTH_BAD_RESPONSE)
        if result.outcome is LoginOutcome.LOCKED:
            return Outcome(R.LOCKED_OUT, Action.CLOSE)
        if result.outcome is LoginOutcome.UNAVAILABLE:
            return Outcome(R.AUTH_UNAVAILABLE)
        if result.outcome is not LoginOutcome.OK or result.user is None:
            return Outcome(R.AUTH_FAILED)
        return await self._open(result.user)

    async def _open(self, address: str) -> Outcome:
        if self.closed:
            return Outcome(None)
        if not self.maildrops.locks.acquire(address):
            log.info("pop3 {session_id}: maildrop of {user} in use", session_id=self.session_id, user=address)
            return Outcome(R.MAILDROP_IN_USE)
        self.mailbox = address
        try:
            box = await self.maildrops.open(address)
        except (OSError, ValueError, FolderError):
            log.failure("pop3 {session_id}: cannot open maildrop of {user}",
                        session_id=self.session_id, user=address)
            self._release()
            return Outcome(R.MAILDROP_UNAVAILABLE)
        if self.closed:
            self._release()
            return Outcome(None)
        self.box = box
        self.messages = list(box.messages)  # nothing is claimed as \Recent, no file is renamed
        self.deleted = set()
        self.state = State.TRANSACTION
        log.debug("pop3 {session_id}: {user} opened maildrop with {count} messages",
                 session_id=self.session_id, user=address, count=len(self.messages))
        count, octets = self._totals()
        return Outcome(R.LOGGED_IN.with_text(f"Logged in, {count} messages ({octets} octets)"))

    # -- TRANSACTION -------------------------------------------------------------------

    def _totals(self) -> tuple[int, int]:
        live = [m.size for i, m in enumerate(self.messages) if i not in self.deleted]
        return len(live), sum(live)

    def _message_number(self, arg: str) -> int:
        """A 1-based message number naming a live message -> 0-based index."""
        if not _NUMBER.match(arg):
            raise _Refusal(R.SYNTAX)
        index = int(arg) - 1
        if not 0 <= index < len(self.messages):
            raise _Refusal(R.NO_SUCH_MESSAGE)
        if index in self.deleted:
            raise _Refusal(R.ALREADY_DELETED)
        return index

    def _one_arg(self, args: str) -> int:
        parts = args.split(" ")
        if len(parts) != 1:
            raise _Refusal(R.SYNTAX)
        return self._message_number(parts[0])

    def noop(self, args: str) -> Outcome:
        return Outcome(R.NOOP)

    def stat(self, args: str) -> Outcome:
        count, octets = self._totals()
        return Outcome(R.ok(f"{count} {octets}"))

    def list_cmd(self, args: str) -> Outcome:
        return self._listing(args, lambda m: str(m.size))

    def uidl(self, args: str) -> Outcome:
        return self._listing(args, lambda m: unique_id(m.base))

    def _listing(self, args: str, value: Callable[[Message], str]) -> Outcome:
        if args:
            try:
                index = self._one_arg(args)
            except _Refusal as e:
                return Outcome(e.reply)
            return Outcome(R.ok(f"{index + 1} {value(self.messages[index])}"))
        lines = tuple(f"{i + 1} {value(m)}" for i, m in enumerate(self.messages) if i not in self.deleted)
        count, octets = self._totals()
        return Outcome(R.ok(f"{count} messages ({octets} octets)", lines))

    def retr(self, args: str) -> Outcome:
        try:
            index = self._one_arg(args)
        except _Refusal as e:
            return Outcome(e.reply)
        return self._send(index, R.ok(f"{self.messages[index].size} octets"), None)

    def top(self, args: str) -> Outcome:
        parts = args.split(" ")
        if len(parts) != 2 or not _NUMBER.match(parts[1]):
            return Outcome(R.SYNTAX)
        try:
            index = self._message_number(parts[0])
        except _Refusal as e:
            return Outcome(e.reply)
        return self._send(index, R.ok("Top of message follows"), int(parts[1]))

    def _send(self, index: int, head: Reply, body_lines: int | None) -> Outcome:
        box, message = self.box, self.messages[index]
        assert box is not None
        # The store's record follows renames made through it (IMAP flags, new/ to cur/) at once.
        return Outcome(head, Action.SEND, path=box.file_path(message), body_lines=body_lines,
                       relocate=lambda: self._relocate(box, message), size=message.size)

    async def _relocate(self, box: Mailbox, message: Message) -> str | None:
        """Find a file renamed since the store last looked (by another process); None if gone.

        The store lists the folder again and updates every message's record, so
        a maildrop moved wholesale costs one listing, not one per message.
        """
        try:
            return await box.locate(message)
        except OSError:
            log.failure("pop3 {session_id}: cannot look for a message of {user}",
                        session_id=self.session_id, user=self.mailbox)
            return None

    def dele(self, args: str) -> Outcome:
        try:
            index = self._one_arg(args)
        except _Refusal as e:
            return Outcome(e.reply)
        self.deleted.add(index)
        return Outcome(R.ok(f"Message {index + 1} deleted"))

    def rset(self, args: str) -> Outcome:
        if args:
            return Outcome(R.SYNTAX)
        self.deleted = set()
        count, octets = self._totals()
        return Outcome(R.ok(f"Maildrop has {count} messages ({octets} octets)"))

    # -- QUIT and UPDATE ----------------------------------------------------------------

    def quit(self, args: str) -> Result:
        if self.state is not State.TRANSACTION:
            return Outcome(R.QUIT_AUTHORIZATION, Action.CLOSE)
        return self._update()

    async def _update(self) -> Outcome:
        """RFC 1939 §6: remove the messages marked as deleted, then release the maildrop."""
        self.state = State.UPDATE
        address, box = self.mailbox, self.box
        assert address is not None and box is not None
        marked = [self.messages[i] for i in sorted(self.deleted)]
        try:
            failed = await self.maildrops.remove(address, box, marked) if marked else []
        except OSError:
            log.failure("pop3 {session_id}: removing messages of {user} failed",
                        session_id=self.session_id, user=address)
            failed = marked
        finally:
            self._release()
        (log.info if marked else log.debug)(
            "pop3 {session_id}: {user} logged out, {removed} removed, {failed} not removed",
            session_id=self.session_id, user=address, removed=len(marked) - len(failed), failed=len(failed))
        if failed:
            return Outcome(R.UPDATE_FAILED, Action.CLOSE)
        count = len(self.messages) - len(marked)
        return Outcome(R.ok(f"Logging out, {count} messages left"), Action.CLOSE)


class _Refusal(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply
