"""SMTP replies as values, with every code mailstack sends named once.

RFC 5321 §4.2 (reply codes), RFC 3463 / RFC 2034 (enhanced status codes: RFC
2034 §3 has them preface almost every reply; mailstack sends them on all but
the greeting and the EHLO/HELO replies, as Postfix does).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str | None
    text: str | tuple[str, ...]

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    @property
    def is_success(self) -> bool:
        return self.code < 400

    def lines(self) -> tuple[str, ...]:
        return (self.text,) if isinstance(self.text, str) else self.text

    def to_bytes(self, enhanced: bool = True) -> bytes:
        """Wire form; multi-line replies use ``250-`` continuation (RFC 5321 §4.2.1)."""
        lines = self.lines()
        prefix = f"{self.enhanced} " if enhanced and self.enhanced else ""
        out = []
        last = len(lines) - 1
        for i, line in enumerate(lines):
            sep = " " if i == last else "-"
            out.append(f"{self.code}{sep}{prefix}{line}\r\n")
        return "".join(out).encode("utf-8", "replace")

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)


class SMTPReplyError(Exception):
    """Raised by policy or guards: the session answers with ``reply``; ``cause`` is for the log."""

    def __init__(self, reply: Reply, cause: str | None = None) -> None:
        super().__init__(cause or reply.lines()[0])
        self.reply = reply
        self.cause = cause


def r(code: int, enhanced: str | None, text: str | tuple[str, ...]) -> Reply:
    return Reply(code, enhanced, text)


# 2xx
OK = r(250, "2.0.0", "OK")
SENDER_OK = r(250, "2.1.0", "Sender OK")
RECIPIENT_OK = r(250, "2.1.5", "Recipient OK")
RESET_OK = r(250, "2.0.0", "Reset state")
NOOP_OK = r(250, "2.0.0", "OK")
VRFY_CANNOT = r(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
AUTH_OK = r(235, "2.7.0", "Authentication successful")
HELP = r(214, "2.0.0", ("Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY STARTTLS AUTH",
                        "See RFC 5321; send mail to postmaster for help"))
# 3xx
START_DATA = r(354, None, "End data with <CR><LF>.<CR><LF>")
# 4xx
SHUTTING_DOWN = r(421, "4.3.2", "Service shutting down, try again later")
SEND_RATE = r(451, "4.7.1", "Sending limit reached; try again later")
TIMEOUT = r(421, "4.4.2", "Timeout exceeded, closing connection")
TOO_MANY_CONNECTIONS = r(421, "4.7.0", "Too many connections from your address, try again later")
AUTH_LOCKED_OUT = r(421, "4.7.0", "Too many failed authentications, try again later")
TOO_MANY_ERRORS = r(421, "4.7.0", "Too many errors, closing connection")
TRY_AGAIN = r(451, "4.3.0", "Temporary failure, try again later")
CHECKS_TEMPFAIL = r(451, "4.4.3", "Temporary DNS failure while checking the sender, try again later")
NO_RELAY_YET = r(451, "4.3.0", "Cannot relay to this domain right now, try again later")
TOO_MANY_RECIPIENTS = r(452, "4.5.3", "Too many recipients")
STORAGE_FULL = r(452, "4.3.1", "Insufficient system storage")
TLS_NOT_AVAILABLE = r(454, "4.7.0", "TLS not available")
AUTH_TEMP_FAILURE = r(454, "4.7.0", "Temporary authentication failure")
# 5xx
UNKNOWN_COMMAND = r(500, "5.5.1", "Command unrecognized")
LINE_TOO_LONG = r(500, "5.5.2", "Line too long")
SYNTAX = r(501, "5.5.4", "Syntax error in parameters or arguments")
INVALID_CHARACTERS = r(501, "5.5.4", "Invalid characters in command")
BAD_SENDER_SYNTAX = r(501, "5.1.7", "Bad sender address syntax")
BAD_RCPT_SYNTAX = r(501, "5.1.3", "Bad recipient address syntax")
NOT_IMPLEMENTED = r(502, "5.5.1", "Command not implemented")
EXPN_DISABLED = r(502, "5.5.1", "EXPN is disabled")
BAD_SEQUENCE = r(503, "5.5.1", "Bad sequence of commands")
PARAM_NOT_IMPLEMENTED = r(504, "5.5.4", "Command parameter not implemented")
AUTH_MECH_UNKNOWN = r(504, "5.5.4", "Unrecognized authentication mechanism")
AUTH_REQUIRED = r(530, "5.7.0", "Authentication required")
TLS_REQUIRED = r(530, "5.7.0", "Must issue a STARTTLS command first")
REQUIRETLS_NEEDS_TLS = r(530, "5.7.10", "REQUIRETLS needs a TLS session: issue STARTTLS first")
AUTH_FAILED = r(535, "5.7.8", "Authentication credentials invalid")
AUTH_CANCELLED = r(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_BASE64 = r(501, "5.5.2", "Cannot decode response")
AUTH_ENCRYPTION_REQUIRED = r(538, "5.7.11", "Encryption required for requested authentication mechanism")
NO_SUCH_USER = r(550, "5.1.1", "No such user here")
RELAY_DENIED = r(554, "5.7.1", "Relay access denied")
DMARC_REJECT = r(550, "5.7.1", "Message rejected: the sender's domain publishes a DMARC reject policy "
                               "and neither SPF nor DKIM confirms it sent this message")
BLOCK_LISTED = r(554, "5.7.1", "Client host is listed in a DNS block list")
SPF_FAIL = r(550, "5.7.23", "Message rejected: the sender's domain does not allow this server to send for it (SPF)")
MESSAGE_TOO_BIG = r(552, "5.3.4", "Message size exceeds fixed maximum message size")
MAILBOX_FULL = r(552, "5.2.2", "Mailbox full")
SENDER_NOT_OWNED = r(553, "5.7.1", "Sender address not owned by authenticated user")
BAD_DATA = r(554, "5.6.0", "Message rejected: malformed content")
TOO_MANY_HOPS = r(554, "5.4.6", "Too many hops, mail loop detected")
NO_VALID_RECIPIENTS = r(554, "5.5.1", "No valid recipients")
UTF8_REQUIRED = r(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
PARAM_UNKNOWN = r(555, "5.5.4", "Unsupported MAIL/RCPT parameter")
