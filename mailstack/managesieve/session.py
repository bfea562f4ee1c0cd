"""One ManageSieve session: states, command table and decisions, no transport.

RFC 5804 §2 (commands valid before authentication: AUTHENTICATE, CAPABILITY,
STARTTLS, LOGOUT, NOOP; every other one is refused with NO), §1.7 and §2.4
(capabilities, re-issued after STARTTLS), §2.1 and RFC 4616 (SASL PLAIN, with
the initial response inline or after an empty challenge, ``"*"`` cancels; no
re-authentication), §2.5-§2.13 (HAVESPACE, PUTSCRIPT, LISTSCRIPTS, SETACTIVE,
GETSCRIPT, DELETESCRIPT, RENAMESCRIPT, CHECKSCRIPT, NOOP), §2.14.1
(UNAUTHENTICATE), §1.6 (script names).

The protocol (``protocol.py``) hands in one whole command at a time, literals
included; the session answers with an :class:`Outcome`: a :class:`Reply` plus
what the protocol does next (close, start TLS, read a SASL response). Logins
go through the shared :class:`mailstack.auth.Authenticator` (growing delay and
lockout per client address, for every protocol together); scripts are read
and written through :class:`mailstack.managesieve.scripts.Scripts`, on the io
pool. Script bodies and passwords are never logged.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from twisted.logger import Logger

from mailstack import auth as sasl
from mailstack.accounts.store import AccountError
from mailstack.auth import Outcome as LoginOutcome
from mailstack.envelope import new_queue_id
from mailstack.managesieve import reply as R
from mailstack.managesieve.parse import ParseError, parse_command, parse_sasl_response
from mailstack.managesieve.reply import Reply, string
from mailstack.managesieve.scripts import Result, Scripts
from mailstack.sieve import interpreter

log = Logger()

IMPLEMENTATION = "mailstack"
VERSION = "1.0"  # RFC 5804 §1.7
MAX_NAME = 128  # characters of a script name: what RFC 5804 §1.6 requires, and the store's limit
_FORBIDDEN_IN_NAMES = frozenset("\u2028\u2029")  # with every control character (RFC 5804 §1.6)


class State(enum.Enum):
    NONAUTH = "non-authenticated"
    AUTH = "authenticated"
    LOGOUT = "logout"


class Action(enum.Enum):
    NONE = "none"
    CLOSE = "close"  # write the reply, then close
    STARTTLS = "starttls"  # write the reply, drop buffered input, start TLS, re-issue the capabilities
    SASL = "sasl"  # write the empty challenge; the next string is a SASL response for sasl_response()


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: Reply | None
    action: Action = Action.NONE


@dataclass(frozen=True, slots=True)
class SessionConfig:
    hostname: str
    allow_plaintext_auth: bool
    max_script_size: int  # octets of one script (the store's and the Sieve parser's limit)
    max_scripts: int  # scripts per user (the store's limit)
    starttls_available: bool = True


Answer = Outcome | Awaitable[Outcome]
_Handler = Callable[[tuple[bytes | int, ...]], Answer]
_ANY = frozenset(State)
_NONAUTH = frozenset({State.NONAUTH})
_AUTH = frozenset({State.AUTH})


class ManageSieveSession:
    """Per-connection state machine; every answer is a :class:`Reply` value."""

    def __init__(self, config: SessionConfig, authenticator: sasl.Authenticator, scripts: Scripts,
                 *, client_ip: str, tls: bool, session_id: str = "") -> None:
        self.config = config
        self.authenticator = authenticator
        self.scripts = scripts
        self.client_ip = client_ip
        self.tls = tls
        self.session_id = session_id or new_queue_id()
        self.state = State.NONAUTH
        self.user: str | None = None
        self._commands: dict[str, tuple[_Handler, frozenset[State]]] = {
            "CAPABILITY": (self.capability, _ANY),
            "LOGOUT": (self.logout, _ANY),
            "NOOP": (self.noop, _ANY),
            "STARTTLS": (self.starttls, _NONAUTH),
            "AUTHENTICATE": (self.authenticate, _NONAUTH),
            "UNAUTHENTICATE": (self.unauthenticate, _AUTH),
            "HAVESPACE": (self.havespace, _AUTH),
            "PUTSCRIPT": (self.putscript, _AUTH),
            "CHECKSCRIPT": (self.checkscript, _AUTH),
            "GETSCRIPT": (self.getscript, _AUTH),
            "LISTSCRIPTS": (self.listscripts, _AUTH),
            "SETACTIVE": (self.setactive, _AUTH),
            "DELETESCRIPT": (self.deletescript, _AUTH),
            "RENAMESCRIPT": (self.renamescript, _AUTH),
        }

    # -- entry points ------------------------------------------------------------------

    def greeting(self) -> Reply:
        """RFC 5804 §1.7: the capabilities, sent unasked on connection."""
        return self.capabilities(R.greeting(self.config.hostname))

    def handle(self, segments: Sequence[bytes]) -> Answer:
        """Dispatch one whole command: its lines and literals (see :mod:`.parse`)."""
        try:
            command = parse_command(segments)
        except ParseError as e:
            return Outcome(R.syntax_error(str(e)))
        entry = self._commands.get(command.name)
        if entry is None:
            return Outcome(R.UNKNOWN_COMMAND)
        handler, states = entry
        if self.state not in states:
            return Outcome(R.NOT_AUTHENTICATED if self.state is State.NONAUTH else R.ALREADY_AUTHENTICATED)
        try:
            return handler(command.args)
        except _Refusal as e:
            return Outcome(e.reply)

    def tls_started(self) -> None:
        self.tls = True

    def close(self) -> None:
        """The connection is gone."""
        if self.state is State.AUTH:
            log.info("managesieve {session_id}: {user} disconnected", session_id=self.session_id, user=self.user)
        self.state = State.LOGOUT

    # -- capabilities (RFC 5804 §1.7) --------------------------------------------------------

    def _login_allowed(self) -> bool:
        return self.tls or self.config.allow_plaintext_auth

    def capabilities(self, status: Reply) -> Reply:
        """The capability lines, then ``status``; what they say depends on TLS and the state."""
        lines = [("IMPLEMENTATION", IMPLEMENTATION),
                 ("SASL", "PLAIN" if self._login_allowed() else ""),
                 ("SIEVE", " ".join(interpreter.EXTENSIONS)),  # what the interpreter supports now
                 ("MAXREDIRECTS", str(interpreter.MAX_REDIRECTS)),
                 ("VERSION", VERSION),
                 ("UNAUTHENTICATE", None)]
        if self.config.starttls_available and not self.tls and self.state is State.NONAUTH:
            lines.append(("STARTTLS", None))
        if self.user is not None:
            lines.append(("OWNER", self.user))
        data = tuple(string(name) + (b" " + string(value) if value is not None else b"") + b"\r\n"
                     for name, value in lines)
        return replace(status, data=data)

    def capability(self, args: tuple[bytes | int, ...]) -> Outcome:
        _arity(args, 0)
        return Outcome(self.capabilities(R.CAPABILITY_DONE))

    def logout(self, args: tuple[bytes | int, ...]) -> Outcome:
        _arity(args, 0)
        if self.state is State.AUTH:
            log.info("managesieve {session_id}: {user} logged out", session_id=self.session_id, user=self.user)
        self.state = State.LOGOUT
        return Outcome(R.LOGOUT, Action.CLOSE)

    def noop(self, args: tuple[bytes | int, ...]) -> Outcome:
        _arity(args, 0, 1)
        if not args:
            return Outcome(R.NOOP_DONE)
        tag = _text(args[0], "tag")
        return Outcome(R.tagged(tag))

    # -- non-authenticated state ---------------------------------------------------------------

    def starttls(self, args: tuple[bytes | int, ...]) -> Outcome:
        _arity(args, 0)
        if self.tls:
            return Outcome(R.TLS_ALREADY)
        if not self.config.starttls_available:
            return Outcome(R.TLS_UNAVAILABLE)
        return Outcome(R.STARTTLS_GO, Action.STARTTLS)

    def authenticate(self, args: tuple[bytes | int, ...]) -> Answer:
        _arity(args, 1, 2)
        mechanism = _text(args[0], "mechanism")
        if mechanism.upper() != "PLAIN":
            return Outcome(R.AUTH_BAD_MECHANISM)
        if not self._login_allowed():
            return Outcome(R.AUTH_NEEDS_TLS)
        if len(args) == 1:
            return Outcome(None, Action.SASL)  # an empty challenge; the response is the next string
        initial = args[1]
        if not isinstance(initial, bytes):
            raise _Refusal(R.AUTH_BAD_RESPONSE)
        return self._plain(initial)

    def sasl_response(self, segments: Sequence[bytes]) -> Answer:
        """The client's answer to the empty challenge: base64 PLAIN, or ``"*"`` to cancel."""
        try:
            response = parse_sasl_response(segments)
        except ParseError:
            return Outcome(R.AUTH_BAD_RESPONSE)
        if response == b"*":
            return Outcome(R.AUTH_CANCELLED)
        return self._plain(response)

    def sasl_aborted(self) -> None:
        """The SASL response was dropped (an overlong line): the exchange is over, nothing changes."""

    async def _plain(self, encoded: bytes) -> Outcome:
        result = await self.authenticator.login_plain(self.client_ip, encoded, protocol="managesieve",
                                                      session_id=self.session_id)
        if result.outcome is not LoginOutcome.OK or result.user is None:
            refusal = _LOGIN_REFUSALS.get(result.outcome, Outcome(R.AUTH_FAILED))
            if refusal.action is Action.CLOSE:
                self.state = State.LOGOUT
            return refusal
        if self.state is not State.NONAUTH:  # the connection went away meanwhile
            return Outcome(None)
        self.state = State.AUTH
        self.user = result.user
        return Outcome(R.LOGGED_IN)

    # -- authenticated state ---------------------------------------------------------------------

    def unauthenticate(self, args: tuple[bytes | int, ...]) -> Outcome:
        _arity(args, 0)
        log.info("managesieve {session_id}: {user} unauthenticated", session_id=self.session_id, user=self.user)
        self.state = State.NONAUTH
        self.user = None
        return Outcome(R.UNAUTHENTICATED)

    def havespace(self, args: tuple[bytes | int, ...]) -> Answer:
        _arity(args, 2)
        name = _name(args[0])
        size = args[1]
        if not isinstance(size, int):
            raise _Refusal(R.syntax_error("HAVESPACE takes a name and a number"))
        if size > self.config.max_script_size:
            return Outcome(R.script_too_large(self.config.max_script_size))
        return self._store(self._havespace(name))

    async def _havespace(self, name: str) -> Outcome:
        if await self.scripts.room_for(self._user(), name) is Result.MAXSCRIPTS:
            return Outcome(R.too_many_scripts(self.config.max_scripts))
        return Outcome(R.HAVE_SPACE)

    def putscript(self, args: tuple[bytes | int, ...]) -> Answer:
        _arity(args, 2)
        name = _name(args[0])
        text = self._script(args[1])
        return self._store(self._putscript(name, text))

    async def _putscript(self, name: str, text: bytes) -> Outcome:
        refusal = await self._check(text, name)
        if refusal is not None:
            return refusal
        user = self._user()
        if await self.scripts.put(user, name, text.decode("utf-8")) is Result.MAXSCRIPTS:
            return Outcome(R.too_many_scripts(self.config.max_scripts))
        log.info("managesieve {session_id}: {user} stored script {name!r} ({size} octets)",
                 session_id=self.session_id, user=user, name=name, size=len(text))
        return Outcome(R.STORED)

    def checkscript(self, args: tuple[bytes | int, ...]) -> Answer:
        _arity(args, 1)
        return self._store(self._checkscript(self._script(args[0])))

    async def _checkscript(self, text: bytes) -> Outcome:
        return await self._check(text, None) or Outcome(R.VALID)

    async def _check(self, text: bytes, name: str | None) -> Outcome | None:
        """None for a valid script, else NO naming the line and column of its first error."""
        error = await self.scripts.check(text)
        if error is None:
            return None
        log.info("managesieve {session_id}: {user} sent a script{named} with an error at line {line}, "
                 "column {column}", session_id=self.session_id, user=self.user,
                 named=f" for {name!r}" if name is not None else "", line=error.line, column=error.column)
        return Outcome(R.script_error(error.line, error.column, error.message))

    def getscript(self, args: tuple[bytes | int, ...]) -> Answer:
        _arity(args, 1)
        return self._store(self._getscript(_name(args[0])))

    async def _getscript(self, name: str) -> Outcome:
        text = await self.scripts.get(self._user(), name)
        if text is None:
            return Outcome(R.NO_SUCH_SCRIPT)
        script = text.encode("utf-8")
        # RFC 5804 §2.9: the script as a literal, CRLF, then OK
        return Outcome(replace(R.SCRIPT_DONE, data=(R.literal(script) + b"\r\n",)))

    def listscripts(self, args: tuple[bytes | int, ...]) -> Answer:
        _arity(args, 0)
        return self._store(self._listscripts())

    async def _listscripts(self) -> Outcome:
        scripts = await self.scripts.listing(self._user())
        data = tuple(string(name) + (b" ACTIVE" if active else b"") + b"\r\n" for name, active in scripts)
        return Outcome(replace(R.LISTED, data=data))

    def setactive(self, args: tuple[bytes | int, ...]) -> Answer:
        _arity(args, 1)
        raw = args[0]
        name = None if raw == b"" else _name(raw)  # RFC 5804 §2.8: "" deactivates
        return self._store(self._setactive(name))

    async def _setactive(self, name: str | None) -> Outcome:
        user = self._user()
        if await self.scripts.set_active(user, name) is Result.NONEXISTENT:
            return Outcome(R.NO_SUCH_SCRIPT)
        log.info("managesieve {session_id}: {user} made {name} active", session_id=self.session_id, user=user,
                 name=repr(name) if name is not None else "no script")
        return Outcome(R.ACTIVATED if name is not None else R.DEACTIVATED)

    def deletescript(self, args: tuple[bytes | int, ...]) -> Answer:
        _arity(args, 1)
        return self._store(self._deletescript(_name(args[0])))

    async def _deletescript(self, name: str) -> Outcome:
        user = self._user()
        result = await self.scripts.delete(user, name)
        if result is Result.NONEXISTENT:
            return Outcome(R.NO_SUCH_SCRIPT)
        if result is Result.ACTIVE:
            return Outcome(R.SCRIPT_ACTIVE)
        log.info("managesieve {session_id}: {user} deleted script {name!r}", session_id=self.session_id,
                 user=user, name=name)
        return Outcome(R.DELETED)

    def renamescript(self, args: tuple[bytes | int, ...]) -> Answer:
        _arity(args, 2)
        return self._store(self._renamescript(_name(args[0]), _name(args[1])))

    async def _renamescript(self, old: str, new: str) -> Outcome:
        user = self._user()
        result = await self.scripts.rename(user, old, new)
        if result is Result.NONEXISTENT:
            return Outcome(R.NO_SUCH_SCRIPT)
        if result is Result.ALREADYEXISTS:
            return Outcome(R.SCRIPT_EXISTS)
        log.info("managesieve {session_id}: {user} renamed script {old!r} to {new!r}",
                 session_id=self.session_id, user=user, old=old, new=new)
        return Outcome(R.RENAMED)

    # -- helpers ----------------------------------------------------------------------------

    def _user(self) -> str:
        assert self.user is not None
        return self.user

    def _script(self, arg: bytes | int) -> bytes:
        if not isinstance(arg, bytes):
            raise _Refusal(R.syntax_error("a script is a string"))
        if not arg:
            raise _Refusal(R.EMPTY_SCRIPT)  # RFC 5804 §2.6: SHOULD be refused
        if len(arg) > self.config.max_script_size:
            raise _Refusal(R.script_too_large(self.config.max_script_size))
        return arg

    async def _store(self, work: Awaitable[Outcome]) -> Outcome:
        """A command that reads or writes the store: refusals by the store become NO, not a session error."""
        try:
            return await work
        except AccountError as e:  # changed in between by another session or the CLI
            log.info("managesieve {session_id}: {user}: the store refused: {error}", session_id=self.session_id,
                     user=self.user, error=e.message)
            return Outcome(R.store_refused(e.message))


_LOGIN_REFUSALS = {
    LoginOutcome.MALFORMED: Outcome(R.AUTH_BAD_RESPONSE),
    LoginOutcome.LOCKED: Outcome(R.LOCKED_OUT, Action.CLOSE),  # RFC 5804 §2.1's example: BYE, then close
    LoginOutcome.UNAVAILABLE: Outcome(R.AUTH_UNAVAILABLE),
}


def _arity(args: tuple[bytes | int, ...], least: int, most: int | None = None) -> None:
    if not least <= len(args) <= (least if most is None else most):
        raise _Refusal(R.syntax_error("wrong number of arguments"))


def _text(arg: bytes | int, what: str) -> str:
    if not isinstance(arg, bytes):
        raise _Refusal(R.syntax_error(f"the {what} is a string"))
    try:
        return arg.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refusal(R.syntax_error(f"the {what} is not UTF-8")) from None


def _name(arg: bytes | int) -> str:
    """A script name as RFC 5804 §1.6 allows it: 1 to 128 characters, UTF-8, NFC, no control characters."""
    name = _text(arg, "script name")
    if not name:
        raise _Refusal(R.invalid_name("it is empty"))
    if len(name) > MAX_NAME:
        raise _Refusal(R.invalid_name(f"longer than {MAX_NAME} characters"))
    if any(unicodedata.category(c) in ("Cc", "Cs") or c in _FORBIDDEN_IN_NAMES for c in name):
        raise _Refusal(R.invalid_name("control characters are not allowed"))
    if not unicodedata.is_normalized("NFC", name):  # Net-Unicode (RFC 5198 §2)
        raise _Refusal(R.invalid_name("not in Unicode normal form C"))
    return name


class _Refusal(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply
