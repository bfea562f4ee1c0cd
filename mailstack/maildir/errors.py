"""Delivery failures as values the SMTP and queue layers can act on.

Each failure carries an RFC 3463 enhanced status code and says whether it is
temporary (4.x.x: try again later) or permanent (5.x.x: bounce). The message is
safe to show a client; the underlying cause (an OSError, a path) is kept in
``cause`` for the log only.
"""

from __future__ import annotations

import errno

# RFC 3463 §3.2 X.2.2 mailbox full, §3.4 X.3.1 mail system full,
# X.3.0 other mail system status, §3.2 X.1.3 bad destination mailbox syntax,
# X.1.7 bad sender's mailbox address syntax.
QUOTA_FULL = "4.2.2"
QUOTA_TOO_BIG = "5.2.2"
SYSTEM_FULL = "4.3.1"
SYSTEM_ERROR = "4.3.0"
BAD_MAILBOX = "5.1.3"
BAD_SENDER = "5.1.7"

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DeliveryError(Exception):
    """A delivery was refused or failed; nothing was made visible."""

    def __init__(
        self,
        message: str,
        *,
        temporary: bool,
        status: str,
        recipient: str | None = None,
        cause: BaseException | None = None,
    ) -> None:
        if status[:1] != ("4" if temporary else "5"):
            raise ValueError(f"status {status} does not match temporary={temporary}")
        super().__init__(message)
        self.message = message
        self.temporary = temporary
        self.status = status
        self.recipient = recipient
        self.cause = cause

    def __repr__(self) -> str:
        return (
            f"DeliveryError({self.message!r}, temporary={self.temporary}, "
            f"status={self.status!r}, recipient={self.recipient!r})"
        )


def quota_exceeded(recipient: str, *, message_alone: bool) -> DeliveryError:
    """Mailbox full (temporary) or message bigger than the whole quota (permanent)."""
    if message_alone:
        return DeliveryError(
            "message exceeds the mailbox quota",
            temporary=False,
            status=QUOTA_TOO_BIG,
            recipient=recipient,
        )
    return DeliveryError(
        "mailbox full", temporary=True, status=QUOTA_FULL, recipient=recipient
    )


def invalid_mailbox(
    recipient: str | None, cause: BaseException | None = None
) -> DeliveryError:
    """The address or folder cannot name a Maildir (permanent 5.1.3)."""
    return DeliveryError(
        "invalid mailbox name",
        temporary=False,
        status=BAD_MAILBOX,
        recipient=recipient,
        cause=cause,
    )


def invalid_sender(cause: BaseException | None = None) -> DeliveryError:
    """The sender cannot be written into a Return-Path header (permanent 5.1.7)."""
    return DeliveryError(
        "invalid sender address", temporary=False, status=BAD_SENDER, cause=cause
    )


def from_os_error(exc: OSError, recipient: str | None = None) -> DeliveryError:
    """Map a file system failure: out of space 4.3.1, anything else 4.3.0."""
    if exc.errno in _FULL_ERRNOS:
        return DeliveryError(
            "insufficient system storage",
            temporary=True,
            status=SYSTEM_FULL,
            recipient=recipient,
            cause=exc,
        )
    return DeliveryError(
        "local delivery failed",
        temporary=True,
        status=SYSTEM_ERROR,
        recipient=recipient,
        cause=exc,
    )
