"""Per-connection IMAP state machine: command table, states, login, capability.

RFC 3501 §3 (states: not authenticated, authenticated, selected, logout),
§6.1 (any state: CAPABILITY, NOOP, LOGOUT), §6.2 (STARTTLS, AUTHENTICATE,
LOGIN; LOGINDISABLED before TLS), RFC 4959 (SASL-IR), RFC 2971 (ID),
RFC 5161 (ENABLE: CONDSTORE and QRESYNC, RFC 7162, and IMAP4rev2, RFC 9051), RFC 2177 (IDLE), RFC 4978 (COMPRESS=DEFLATE), RFC 3516 (BINARY:
literal8 only in APPEND). Mailbox-level commands live in
:mod:`.mailboxes`, selected-state commands in :mod:`.selected`, the
selected-mailbox view in :mod:`.view`.

The session never touches the transport: it writes finished response bytes
through ``send`` and returns an :class:`Action` for the protocol (close,
start TLS, read a SASL line, idle). Errors are raised as :class:`Bad` or
:class:`No` and turned into tagged replies in one place, :meth:`handle`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailstack.auth import Authenticator, Outcome, SASLError, b64decode, decode_plain
from mailstack.envelope import new_queue_id
from mailstack.imap.fetch import UnknownEncoding
from mailstack.imap.mailboxes import MailboxCommands
from mailstack.imap.parse import Atom, ParseError, String, Token, astring, atom, split_tag, tokenize
from mailstack.imap.response import Response, status, string
from mailstack.imap.selected import SelectedCommands
from mailstack.imap.view import Bad, No, State
from mailstack.maildir.folders import FolderError, MailStore
from mailstack.maildir.mailbox import Mailbox, MailboxGone
from mailstack.notify import MailboxEvents

log = Logger()

BASE_CAPABILITIES = ("IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE UNSELECT "
                     "CHILDREN SPECIAL-USE STATUS=SIZE ESEARCH SEARCHRES WITHIN COMPRESS=DEFLATE MULTIAPPEND "
                     "SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT THREAD=REFERENCES QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE "
                     "BINARY LIST-EXTENDED LIST-STATUS CATENATE CREATE-SPECIAL-USE CONDSTORE QRESYNC IMAP4rev2 "
                     "ESORT CONTEXT=SEARCH CONTEXT=SORT")


class Action(enum.Enum):
    NONE = "none"
    CLOSE = "close"
    STARTTLS = "starttls"
    SASL = "sasl"  # read one line of SASL response next
    IDLE = "idle"  # read lines until DONE
    COMPRESS = "compress"  # compress both directions from now on (RFC 4978)


@dataclass(frozen=True)
class SessionConfig:
    hostname: str
    max_message_size: int
    allow_plaintext_auth: bool
    starttls_available: bool


NA, AU, SE = State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED
ANY = frozenset({NA, AU, SE})
AUTHED = frozenset({AU, SE})
SEL = frozenset({SE})

COMMANDS: dict[str, tuple[str, frozenset[State]]] = {
    "CAPABILITY": ("cmd_capability", ANY), "NOOP": ("cmd_noop", ANY), "LOGOUT": ("cmd_logout", ANY),
    "ID": ("cmd_id", ANY),
    "STARTTLS": ("cmd_starttls", frozenset({NA})), "LOGIN": ("cmd_login", frozenset({NA})),
    "AUTHENTICATE": ("cmd_authenticate", frozenset({NA})),
    "ENABLE": ("cmd_enable", AUTHED), "COMPRESS": ("cmd_compress", AUTHED), "SELECT": ("cmd_select", AUTHED), "EXAMINE": ("cmd_examine", AUTHED),
    "CREATE": ("cmd_create", AUTHED), "DELETE": ("cmd_delete", AUTHED), "RENAME": ("cmd_rename", AUTHED),
    "SUBSCRIBE": ("cmd_subscribe", AUTHED), "UNSUBSCRIBE": ("cmd_unsubscribe", AUTHED),
    "LIST": ("cmd_list", AUTHED), "LSUB": ("cmd_lsub", AUTHED), "STATUS": ("cmd_status", AUTHED),
    "APPEND": ("cmd_append", AUTHED), "GETQUOTAROOT": ("cmd_getquotaroot", AUTHED),
    "GETQUOTA": ("cmd_getquota", AUTHED), "SETQUOTA": ("cmd_setquota", AUTHED), "NAMESPACE": ("cmd_namespace", AUTHED), "IDLE": ("cmd_idle", AUTHED),
    "CHECK": ("cmd_check", SEL), "CLOSE": ("cmd_close", SEL), "UNSELECT": ("cmd_unselect", SEL),
    "EXPUNGE": ("cmd_expunge", SEL), "SEARCH": ("cmd_search", SEL), "SORT": ("cmd_sort", SEL),
    "THREAD": ("cmd_thread", SEL), "FETCH": ("cmd_fetch", SEL),
    "STORE": ("cmd_store", SEL), "COPY": ("cmd_copy", SEL), "MOVE": ("cmd_move", SEL), "UID": ("cmd_uid", SEL),
    "CANCELUPDATE": ("cmd_cancelupdate", SEL),
}
# Clients poll with these: look at the directories at once, not at most once a second.
EAGER_REFRESH = frozenset({"NOOP", "CHECK", "IDLE", "SELECT", "EXAMINE", "STATUS"})
# Commands that may end the kept results (RFC 5267 §4.3): not worked out again before them.
LEAVING = frozenset({"CANCELUPDATE", "SELECT", "EXAMINE", "UNSELECT", "CLOSE", "LOGOUT"})
# RFC 3501 §7.4.1: no EXPUNGE responses while answering these (their UID forms may).
NO_EXPUNGE_NOTICE = frozenset({"FETCH", "STORE", "SEARCH", "SORT", "THREAD"})


class IMAPSession(MailboxCommands, SelectedCommands):
    def __init__(self, config: SessionConfig, store: MailStore, authenticator: Authenticator,
                 events: MailboxEvents, *, client_ip: str, tls: bool, send: Callable[[bytes], None],
                 io: Callable[..., Awaitable[Any]], session_id: str = "") -> None:
        super().__init__()
        self.session_id = session_id or new_queue_id()
        self.config = config
        self.store = store
        self.authenticator = authenticator
        self.events = events
        self.client_ip = client_ip
        self.tls = tls
        self.send: Callable[[bytes], None] = send
        self.io = io
        self.state = State.NOT_AUTHENTICATED
        self.user: str | None = None
        self._sasl_tag: str | None = None
        self._idle_tag: str | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._pending: set[Deferred[None]] = set()  # IDLE updates under way
        self.compressed = False

    # -- dispatch ---------------------------------------------------------------------

    def greeting(self) -> bytes:
        return status("*", "OK", f"{self.config.hostname} IMAP4rev1 ready",
                      "CAPABILITY " + self.capabilities()).data

    def capabilities(self) -> str:
        caps = [BASE_CAPABILITIES, f"APPENDLIMIT={self.config.max_message_size}"]
        if self.state is State.NOT_AUTHENTICATED:
            if not self.tls and self.config.starttls_available:
                caps.append("STARTTLS")
            if self.login_allowed():
                caps.append("AUTH=PLAIN")
            else:
                caps.append("LOGINDISABLED")
        return " ".join(caps)

    def login_allowed(self) -> bool:
        return self.tls or self.config.allow_plaintext_auth

    async def handle(self, raw: bytes) -> Action:
        """Run one complete command (literals included); write its responses."""
        try:
            tag, name, rest = split_tag(raw)
        except ParseError as e:
            tag = "*"
            self.send(status("*", "BAD", f"Error in IMAP command: {e}").data)
            return Action.NONE
        try:
            return await self._run(tag, name, rest)
        except Bad as e:
            self.send(status(tag, "BAD", str(e) or "Invalid arguments").data)
        except ParseError as e:
            self.send(status(tag, "BAD", f"Error in IMAP command {name}: {e}").data)
        except No as e:
            self._after_command(name)
            self.send(status(tag, "NO", str(e), e.code).data)
        except FolderError as e:
            self.send(status(tag, "NO", str(e).capitalize(), e.code).data)
        except UnknownEncoding as e:  # RFC 3516 §4.2: a BINARY fetch this server cannot decode
            self._after_command(name)
            self.send(status(tag, "NO", f"Cannot undo Content-Transfer-Encoding {str(e)[:40]!r}",
                             "UNKNOWN-CTE").data)
        except MailboxGone:
            self._after_command(name)
            self.send(status(tag, "NO", "Mailbox was removed on the server", "NONEXISTENT").data)
        except Exception:  # never a traceback to the peer; the session goes on
            if self.state is State.LOGOUT:  # the connection went away mid-command
                return Action.CLOSE
            log.failure("imap {session_id}: {name} failed for {user}", session_id=self.session_id, name=name,
                        user=self.user)
            self.send(status(tag, "NO", "Internal error, try again later", "SERVERBUG").data)
        return Action.NONE

    async def _run(self, tag: str, name: str, rest: bytes) -> Action:
        entry = COMMANDS.get(name)
        if entry is None:
            raise Bad(f"Unknown command {name[:20]}")
        method_name, states = entry
        if self.state not in states:
            raise Bad(f"{name} is not valid in the {self.state.value} state")
        args = tokenize(rest)
        if name != "APPEND" and _has_literal8(args):
            raise Bad("A literal8 (~{n}) is only for APPEND's message")
        if self.view is not None:  # changes by other processes, found on the io pool
            await self.view.box.refresh(eager=name in EAGER_REFRESH)
            if self.view is not None and self.view.contexts and name not in LEAVING:
                await self.refresh_contexts()  # RFC 5267 §4.3: others' changes first
        method = getattr(self, method_name)
        result = await method(tag, args)
        if self.view is not None and self.view.contexts:  # RFC 5267 §4.3: and this command's own
            await self.refresh_contexts()
        return result if isinstance(result, Action) else Action.NONE

    def _after_command(self, name: str, hold_expunges: bool = False) -> None:
        if self.state is State.SELECTED and self.view is not None:
            self.sync(allow_expunge=name not in NO_EXPUNGE_NOTICE and not hold_expunges)

    def ok(self, tag: str, name: str, text: str = "", code: str = "", *, hold_expunges: bool = False) -> Action:
        """Send pending mailbox updates, then the tagged OK (RFC 3501 §7.1). ``hold_expunges``:
        a UID command whose arguments hold message numbers (RFC 7162 §3.2.10, RFC 9051 §7.5.1)."""
        self._after_command(name, hold_expunges)
        self.send(status(tag, "OK", text or f"{name} completed", code).data)
        return Action.NONE

    @staticmethod
    def no_args(args: list[Token]) -> None:
        if args:
            raise Bad("Unexpected arguments")

    # -- any state (RFC 3501 §6.1) --------------------------------------------------------

    async def cmd_capability(self, tag: str, args: list[Token]) -> Action:
        self.no_args(args)
        self.send(Response.untagged("CAPABILITY " + self.capabilities()).data)
        return self.ok(tag, "CAPABILITY")

    async def cmd_noop(self, tag: str, args: list[Token]) -> Action:
        self.no_args(args)  # the selected mailbox was refreshed before every command
        return self.ok(tag, "NOOP")

    async def cmd_compress(self, tag: str, args: list[Token]) -> Action:
        """RFC 4978: COMPRESS DEFLATE; both directions compress right after the OK."""
        if len(args) != 1 or not isinstance(args[0], Atom):
            raise Bad("COMPRESS needs a mechanism")
        if args[0].upper() != "DEFLATE":
            raise Bad("Unknown compression mechanism")
        if self.compressed:
            raise No("Compression is already on", "COMPRESSIONACTIVE")
        self.compressed = True
        self.ok(tag, "COMPRESS", "DEFLATE active")
        return Action.COMPRESS

    async def cmd_logout(self, tag: str, args: list[Token]) -> Action:
        self.no_args(args)
        self.send(Response.untagged("BYE Logging out").data)
        self.send(status(tag, "OK", "LOGOUT completed").data)
        self.logout()
        return Action.CLOSE

    async def cmd_id(self, tag: str, args: list[Token]) -> Action:
        if len(args) != 1 or not (isinstance(args[0], list) or atom(args[0]).upper() == "NIL"):
            raise Bad("ID needs a parameter list or NIL")  # RFC 2971 §3.1
        self.send(b'* ID ("name" "mailstack" "vendor" "mailstack")\r\n')
        return self.ok(tag, "ID")

    def logout(self) -> None:
        if self.user is not None and self.state is not State.LOGOUT:
            log.info("imap {session_id}: {user} logged out", session_id=self.session_id, user=self.user)
        self.state = State.LOGOUT
        self.deselect()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # -- not authenticated (RFC 3501 §6.2) -----------------------------------------------

    async def cmd_starttls(self, tag: str, args: list[Token]) -> Action:
        self.no_args(args)
        if self.tls or not self.config.starttls_available:
            raise Bad("TLS is already active")
        self.send(status(tag, "OK", "Begin TLS negotiation now").data)
        return Action.STARTTLS

    def tls_started(self) -> None:
        self.tls = True

    def _require_privacy(self) -> None:
        if not self.login_allowed():
            raise No("Log in after STARTTLS", "PRIVACYREQUIRED")

    async def cmd_login(self, tag: str, args: list[Token]) -> Action:
        if len(args) != 2:
            raise Bad("LOGIN needs a user name and a password")
        user, password = astring(args[0]), astring(args[1])
        self._require_privacy()
        return await self._login(tag, user, password)

    async def cmd_authenticate(self, tag: str, args: list[Token]) -> Action:
        if not args or len(args) > 2:
            raise Bad("AUTHENTICATE needs a mechanism")
        if atom(args[0]).upper() != "PLAIN":
            raise No("Unsupported authentication mechanism", "CANNOT")
        self._require_privacy()
        if len(args) == 2:  # RFC 4959 initial response; "=" is an empty one
            initial = atom(args[1])
            return await self._plain(tag, "" if initial == "=" else initial)
        self._sasl_tag = tag
        self.send(b"+ \r\n")
        return Action.SASL

    async def sasl_response(self, line: bytes) -> Action:
        tag, self._sasl_tag = self._sasl_tag or "*", None
        text = line.decode("ascii", "replace").strip()
        if text == "*":
            self.send(status(tag, "BAD", "Authentication cancelled").data)
            return Action.NONE
        return await self._plain(tag, text)

    async def _plain(self, tag: str, text: str) -> Action:
        try:
            authzid, user, password = decode_plain(b64decode(text))
        except SASLError as e:
            self.send(status(tag, "BAD", f"Invalid SASL response: {e}").data)
            return Action.NONE
        if authzid and authzid.lower() != user.lower():
            self.send(status(tag, "NO", "Proxy authorization is not allowed", "AUTHORIZATIONFAILED").data)
            return Action.NONE
        return await self._login(tag, user, password)

    async def _login(self, tag: str, user: str, password: str) -> Action:
        result = await self.authenticator.login(self.client_ip, user, password, protocol="imap",
                                                session_id=self.session_id)
        if result.outcome is Outcome.LOCKED:
            self.send(status("*", "BYE", "Too many failed logins, try again later").data)
            self.send(status(tag, "NO", "Authentication failed", "AUTHENTICATIONFAILED").data)
            return Action.CLOSE
        if result.outcome is Outcome.UNAVAILABLE:
            self.send(status(tag, "NO", "Temporary failure, try again later", "UNAVAILABLE").data)
            return Action.NONE
        if result.outcome is not Outcome.OK or result.user is None:
            self.send(status(tag, "NO", "Authentication failed", "AUTHENTICATIONFAILED").data)
            return Action.NONE
        self.user = result.user
        await self.store.setup_user(self.user, self.io)
        self.state = State.AUTHENTICATED
        self._unsubscribe = self.events.subscribe(self.user, self._mailbox_changed)
        self.send(status(tag, "OK", "Logged in", "CAPABILITY " + self.capabilities()).data)
        return Action.NONE

    # -- authenticated extras ------------------------------------------------------------

    async def cmd_enable(self, tag: str, args: list[Token]) -> Action:
        """RFC 5161; CONDSTORE and QRESYNC (RFC 7162 §3.2.3: QRESYNC brings CONDSTORE along)."""
        if not args:
            raise Bad("ENABLE needs capability names")
        names = [atom(a).upper() for a in args]
        enabled = []
        for name in dict.fromkeys(names):  # each once, in the client's order
            if name == "CONDSTORE" and not self.condstore:
                enabled.append(name)
            elif name == "QRESYNC" and not self.qresync:
                self.qresync = True
                enabled.append(name)
            elif name == "IMAP4REV2" and not self.rev2:  # RFC 9051 §6.3.1
                self.rev2 = True
                enabled.append("IMAP4rev2")
                if self.view is not None:  # from now on: no \Recent (RFC 9051 §2.3.2)
                    self.view.recent = set()
        if "CONDSTORE" in names or "QRESYNC" in names:
            self.enable_condstore()
        self.send(("* ENABLED" + "".join(" " + n for n in enabled) + "\r\n").encode())
        return self.ok(tag, "ENABLE")

    async def cmd_namespace(self, tag: str, args: list[Token]) -> Action:
        self.no_args(args)
        self.send(b'* NAMESPACE (("" ".")) NIL NIL\r\n')  # RFC 2342 §5
        return self.ok(tag, "NAMESPACE")

    async def cmd_idle(self, tag: str, args: list[Token]) -> Action:
        self.no_args(args)
        self._idle_tag = tag
        self._after_command("IDLE")
        self.send(b"+ idling\r\n")
        return Action.IDLE

    def idle_done(self, line: bytes) -> None:
        """The line that ends IDLE (RFC 2177 §3: ``DONE``)."""
        tag, self._idle_tag = self._idle_tag or "*", None
        if line.strip().upper() != b"DONE":
            self.send(status(tag, "BAD", "Expected DONE").data)
            return
        self.ok(tag, "IDLE", "IDLE terminated")

    @property
    def idling(self) -> bool:
        return self._idle_tag is not None

    def publish_change(self, folder: str | None) -> None:
        """Tell the user's other sessions (IDLE) about a change made through the shared Mailbox."""
        self.store.own_change = True  # it is in memory already: nobody needs to look at the disk
        try:
            self.events.publish(self.user, folder)
        finally:
            self.store.own_change = False

    def _mailbox_changed(self, address: str, folder: str | None) -> None:
        view = self.view
        if view is None:
            return
        if (folder or "INBOX").upper() == "INBOX" and view.name != "INBOX":
            return
        if folder and folder != view.name and folder.upper() != "INBOX":
            return
        if not self.store.own_change:
            view.box.mark_stale()  # a delivery wrote into new/: the next command looks
        if self.idling:
            pending = Deferred.fromCoroutine(self._idle_update(view.box))
            self._pending.add(pending)
            pending.addBoth(self._idle_update_done, pending)

    async def _idle_update(self, box: Mailbox) -> None:
        await box.refresh()  # a delivery by another writer: find it on the io pool
        if self.idling and self.view is not None and self.view.box is box:
            self.sync(allow_expunge=True)
            await self.refresh_contexts()

    def _idle_update_done(self, result: object, pending: Deferred[None]) -> None:
        self._pending.discard(pending)
        if isinstance(result, Failure):
            log.failure("imap {session_id}: IDLE update failed for {user}", result, session_id=self.session_id,
                        user=self.user)

    def quote(self, text: str) -> bytes:
        return string(text)


def _has_literal8(tokens: list[Token]) -> bool:
    return any(_has_literal8(t) if isinstance(t, list) else isinstance(t, String) and t.binary for t in tokens)
