"""ManageSieve responses as values, with every status line mailstack sends named once.

RFC 5804 §1.2 (``OK`` / ``NO`` / ``BYE``, an optional response code, then
human-readable text as a string), §1.3 (response codes: ``QUOTA/MAXSIZE``,
``QUOTA/MAXSCRIPTS``, ``NONEXISTENT``, ``ALREADYEXISTS``, ``ACTIVE``,
``TRYLATER``, ``ENCRYPT-NEEDED``, ``TAG``), §4 (``string``: a quoted string of
at most 1,024 octets, else a literal ``{n}`` from the server).

Choices where the RFC leaves room:

- Plaintext authentication refused before STARTTLS is ``NO (ENCRYPT-NEEDED)``:
  the client must start TLS first, and trying again as it is would not help.
- An account store that cannot answer, and an internal error, are
  ``NO (TRYLATER)``: the command may succeed later, the session goes on.
- A locked-out address gets ``BYE`` and the connection is closed, as in the
  RFC's own example of "Too many failed authentication attempts".
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_QUOTED = 1024  # octets between the quotes of a quoted string (RFC 5804 §4)


def string(value: str | bytes) -> bytes:
    """A ManageSieve string: quoted when it fits (RFC 5804 §4 ``quoted``), else a literal."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if not any(c in raw for c in b"\r\n\0"):
        quoted = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        if len(quoted) <= MAX_QUOTED:
            return b'"' + quoted + b'"'
    return literal(raw)


def literal(raw: bytes) -> bytes:
    """A server-to-client literal (RFC 5804 §4 ``literal-s2c``): ``{n}`` CRLF, then the octets."""
    return b"{%d}\r\n" % len(raw) + raw


@dataclass(frozen=True, slots=True)
class Reply:
    """Response lines (each with its CRLF), then one status line: OK, NO or BYE."""

    status: str
    text: str = ""
    code: str | None = None
    code_arg: str | None = None  # the string after the code: TAG's echo (RFC 5804 §2.13)
    data: tuple[bytes, ...] = ()

    def to_bytes(self) -> bytes:
        line = self.status.encode("ascii")
        if self.code:
            inner = self.code.encode("ascii")
            if self.code_arg is not None:
                inner += b" " + string(self.code_arg)
            line += b" (" + inner + b")"
        if self.text:
            line += b" " + string(self.text)
        return b"".join(self.data) + line + b"\r\n"

    def with_text(self, text: str) -> Reply:
        return Reply(self.status, text, self.code, self.code_arg, self.data)


def ok(text: str = "", *, code: str | None = None, code_arg: str | None = None,
       data: tuple[bytes, ...] = ()) -> Reply:
    return Reply("OK", text, code, code_arg, data)


def no(text: str, code: str | None = None) -> Reply:
    return Reply("NO", text, code)


def bye(text: str, code: str | None = None) -> Reply:
    return Reply("BYE", text, code)


# RFC 5804 §1.3 response codes
QUOTA_MAXSIZE = "QUOTA/MAXSIZE"
QUOTA_MAXSCRIPTS = "QUOTA/MAXSCRIPTS"
NONEXISTENT = "NONEXISTENT"
ALREADYEXISTS = "ALREADYEXISTS"
ACTIVE = "ACTIVE"
TRYLATER = "TRYLATER"
ENCRYPT_NEEDED = "ENCRYPT-NEEDED"
TAG = "TAG"

# -- connection (what the skeleton says on its own) -------------------------------
TOO_MANY_CONNECTIONS = bye("Too many connections from your address", TRYLATER)
SHUTTING_DOWN = bye("Server shutting down", TRYLATER)
TIMEOUT = bye("Disconnected for inactivity")
LINE_TOO_LONG = no("Line too long")
INVALID_CHARACTERS = no("Invalid characters in command")
TRY_AGAIN = no("Internal error, try again later", TRYLATER)
LITERAL_TOO_LARGE = bye("Literal too large, closing the connection")
LITERAL_REFUSED = no("Literal too large")
CORRUPT_INPUT = bye("Corrupt input")  # the skeleton's compression replies; ManageSieve never compresses
INFLATED_TOO_LARGE = bye("Input too large")

# -- any state ----------------------------------------------------------------------
UNKNOWN_COMMAND = no("Unknown command")
CAPABILITY_DONE = ok("Capability completed")
NOOP_DONE = ok("NOOP completed")
LOGOUT = ok("Logout completed")

# -- non-authenticated state (RFC 5804 §2.1, §2.2) ----------------------------------
NOT_AUTHENTICATED = no("Authenticate first")
ALREADY_AUTHENTICATED = no("Already authenticated")
STARTTLS_GO = ok("Begin TLS negotiation now")
TLS_ACTIVE = ok("TLS is active")  # after the capabilities re-issued once TLS is up (RFC 5804 §2.2)
TLS_ALREADY = no("TLS is already active")
TLS_UNAVAILABLE = no("STARTTLS is not available")
LOGGED_IN = ok("Logged in")
AUTH_FAILED = no("Authentication failed")
AUTH_BAD_MECHANISM = no("Unsupported authentication mechanism")
AUTH_BAD_RESPONSE = no("Invalid SASL response")
AUTH_CANCELLED = no("Authentication cancelled")
AUTH_NEEDS_TLS = no("Plaintext authentication is not allowed without TLS, use STARTTLS", ENCRYPT_NEEDED)
AUTH_UNAVAILABLE = no("Temporary authentication failure, try again later", TRYLATER)
LOCKED_OUT = bye("Too many failed authentication attempts, try again later")

# -- authenticated state (RFC 5804 §2.5-§2.14) ---------------------------------------
UNAUTHENTICATED = ok("Back in non-authenticated state")
HAVE_SPACE = ok("Putscript would succeed")
STORED = ok("Script stored")
VALID = ok("Script is valid")
ACTIVATED = ok("Script activated")
DEACTIVATED = ok("No script is active")
DELETED = ok("Script deleted")
RENAMED = ok("Script renamed")
SCRIPT_DONE = ok("Getscript completed")
LISTED = ok("Listscripts completed")
EMPTY_SCRIPT = no("An empty script is not allowed")
NO_SUCH_SCRIPT = no("There is no script by that name", NONEXISTENT)
SCRIPT_EXISTS = no("A script by that name already exists", ALREADYEXISTS)
SCRIPT_ACTIVE = no("The active script cannot be deleted; make another one active (or none) first", ACTIVE)
STORE_UNAVAILABLE = no("The script store is not available, try again later", TRYLATER)


# -- with details ------------------------------------------------------------------------


def greeting(hostname: str) -> Reply:
    return ok(f"{hostname} ManageSieve ready")


def syntax_error(detail: str) -> Reply:
    return no(f"Syntax error: {detail}")


def tagged(tag: str) -> Reply:
    """NOOP with a string: OK with the TAG code echoing it (RFC 5804 §2.13)."""
    return ok("Done", code=TAG, code_arg=tag)


def script_error(line: int, column: int, message: str) -> Reply:
    """A script that is not valid Sieve: where its first error is (RFC 5804 §2.6)."""
    return no(f"line {line}, column {column}: {message}")


def invalid_name(why: str) -> Reply:
    return no(f"Invalid script name: {why}")


def script_too_large(limit: int, *, quota: bool = True) -> Reply:
    """PUTSCRIPT and HAVESPACE say QUOTA/MAXSIZE; CHECKSCRIPT checks no quota (RFC 5804 §2.12)."""
    return no(f"Scripts may be at most {limit} octets", QUOTA_MAXSIZE if quota else None)


def too_many_scripts(limit: int) -> Reply:
    return no(f"At most {limit} scripts; delete one first", QUOTA_MAXSCRIPTS)


def store_refused(message: str) -> Reply:
    """The account store refused a change made meanwhile by someone else; its words are for users."""
    return no(message)
