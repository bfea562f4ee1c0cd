"""POP3 replies as values, with every status line mailstack sends named once.

RFC 1939 §3 (``+OK`` / ``-ERR`` status indicators, multi-line responses ended
by a line holding a single ``.``, lines starting with ``.`` byte-stuffed),
RFC 2449 §8 (extended response codes in brackets: ``[IN-USE]``,
``[LOGIN-DELAY]``), RFC 3206 (``[SYS/TEMP]``, ``[SYS/PERM]``, ``[AUTH]``).

Choices where the RFCs leave room:

- A refused plaintext login (USER or AUTH before STLS) is ``-ERR [AUTH]``: the
  client must change how it authenticates, so retrying later as it is would
  not help (Dovecot answers the same way).
- A lockout after repeated failures is ``-ERR [SYS/TEMP]``: the credentials
  were not even checked, and the right move is to try again later.
- POP3 has no unsolicited responses; on shutdown or idle timeout the server
  sends one ``-ERR [SYS/TEMP]`` line before closing, which a client reads as
  the answer to its next command (what Dovecot and Courier do).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """One status line, optionally followed by a multi-line body (already unstuffed)."""

    ok: bool
    text: str = ""
    code: str | None = None
    lines: tuple[str, ...] | None = None

    def to_bytes(self) -> bytes:
        status = "+OK" if self.ok else "-ERR"
        parts = [status]
        if self.code:
            parts.append(f"[{self.code}]")
        if self.text:
            parts.append(self.text)
        out = [" ".join(parts)]
        if self.lines is not None:
            out.extend("." + line if line.startswith(".") else line for line in self.lines)
            out.append(".")
        return ("\r\n".join(out) + "\r\n").encode("utf-8", "replace")

    def with_text(self, text: str) -> Reply:
        return Reply(self.ok, text, self.code, self.lines)


def ok(text: str = "", lines: tuple[str, ...] | None = None) -> Reply:
    return Reply(True, text, None, lines)


def err(text: str, code: str | None = None) -> Reply:
    return Reply(False, text, code)


# RFC 2449 §8.1 / RFC 3206 codes
IN_USE = "IN-USE"
SYS_TEMP = "SYS/TEMP"
SYS_PERM = "SYS/PERM"
AUTH = "AUTH"

# -- generic ----------------------------------------------------------------------
UNKNOWN_COMMAND = err("Unknown command")
BAD_STATE = err("Command not valid in this state")
SYNTAX = err("Syntax error in arguments")
LINE_TOO_LONG = err("Line too long")
INVALID_CHARACTERS = err("Invalid characters in command")
TRY_AGAIN = err("Internal error, try again later", SYS_TEMP)
NOOP = ok()
QUIT_AUTHORIZATION = ok("Logging out")

# -- connection -------------------------------------------------------------------
TIMEOUT = err("Disconnected for inactivity", SYS_TEMP)
SHUTTING_DOWN = err("Server shutting down", SYS_TEMP)
TOO_MANY_CONNECTIONS = err("Too many connections from your address", SYS_TEMP)

# -- STLS (RFC 2595 §4) -----------------------------------------------------------
STLS_GO = ok("Begin TLS negotiation")
STLS_ALREADY = err("TLS is already active")
STLS_UNAVAILABLE = err("STLS not available")

# -- login (RFC 1939 §7, RFC 5034, RFC 3206) --------------------------------------
USER_OK = ok("Send PASS")
NEED_USER = err("Send USER first")
LOGGED_IN = ok("Logged in, maildrop ready")
AUTH_FAILED = err("Authentication failed", AUTH)
PLAINTEXT_DISALLOWED = err("Plaintext authentication disallowed on non-secure connection, use STLS", AUTH)
LOCKED_OUT = err("Too many failed logins, try again later", SYS_TEMP)
AUTH_UNAVAILABLE = err("Temporary authentication failure, try again later", SYS_TEMP)
MAILDROP_IN_USE = err("Mailbox is in use by another POP3 session", IN_USE)
MAILDROP_UNAVAILABLE = err("Cannot open the maildrop, try again later", SYS_TEMP)
AUTH_CANCELLED = err("Authentication cancelled")
AUTH_BAD_MECHANISM = err("Unsupported authentication mechanism")
AUTH_BAD_RESPONSE = err("Invalid SASL response")
APOP_UNAVAILABLE = err("APOP not supported")

# -- transaction (RFC 1939 §5) ----------------------------------------------------
NO_SUCH_MESSAGE = err("No such message")
ALREADY_DELETED = err("Message already deleted")
MESSAGE_GONE = err("Message was removed by another session")
MESSAGE_UNREADABLE = err("Cannot read message, try again later", SYS_TEMP)
UPDATE_FAILED = err("Some deleted messages were not removed", SYS_TEMP)
