"""The decision half of Sieve vacation (RFC 5230, with :seconds from RFC 6131).

The interpreter checks the command and, when a run executes it, asks :func:`reply_allowed`
whether the message may be answered at all; the answer is a :class:`Vacation` on the
outcome, or none. Everything here is decided from the message alone (RFC 5230 §4.5,
§4.6, RFC 3834 §2); remembering whom was answered within the period (§4.2) and
building and sending the reply (§5) belong to the delivery side.

The period: ``:days`` is at least VACATION_MIN_DAYS (one day, §4.1) and ``:seconds``
(RFC 6131 §2) at least VACATION_MIN_SECONDS, which is 0: ``:seconds 0`` means a reply to
every message, as RFC 6131 §2 and its second example describe. The loop guards here
(no reply to the null sender, to Auto-Submitted mail, to lists or daemons) and the
reply's own ``Auto-Submitted: auto-replied`` and null sender keep that from looping.
Both are capped at VACATION_MAX (90 days; RFC 5230 §4.1 asks for more than 30);
without either the period is VACATION_DEFAULT (7 days).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

DAY = 86400
VACATION_MIN_DAYS = 1  # :days below this count as this (RFC 5230 §4.1)
VACATION_MIN_SECONDS = 0  # :seconds 0 replies every time (RFC 6131 §2)
VACATION_MAX = 90 * DAY  # the longest period, for :days and :seconds
VACATION_DEFAULT = 7 * DAY  # neither :days nor :seconds
# RFC 5230 §4.6: a message with any of these is from a list: no reply
LIST_HEADERS = ("list-id", "list-help", "list-subscribe", "list-unsubscribe", "list-post", "list-owner",
                "list-archive")
BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})
# RFC 5230 §4.6 and RFC 3834 §2: local parts used by automated senders (compared in lower case)
DAEMON_LOCALPARTS = frozenset({"mailer-daemon", "mailer", "listserv", "majordomo", "majordom", "uucp",
                               "noreply", "no-reply", "do-not-reply", "donotreply", "bounce", "bounces"})
DAEMON_PREFIXES = ("owner-",)
DAEMON_SUFFIXES = ("-request", "-owner", "-bounces")
# RFC 5230 §4.5: the user's address must be in one of these for a reply
RECIPIENT_HEADERS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")


@dataclass(frozen=True, slots=True)
class Vacation:
    """A reply the delivery side is to send, unless it sent one for ``handle`` to ``to``
    within ``seconds`` (0: always)."""

    reason: str  # the body text (or a MIME entity when mime is True)
    subject: str | None  # :subject, None when not given (the sender side builds "Auto: <original subject>")
    from_: str | None  # :from, an address checked to be one, or None
    mime: bool  # :mime
    handle: str  # :handle, or one derived from reason/subject/from/mime (RFC 5230 §4.2)
    seconds: int  # the period, clamped as the module docstring says
    to: str  # the envelope sender (RFC 5230 §4: the Return-Path)


def period(days: int | None, seconds: int | None) -> int:
    """The period in seconds from :days or :seconds (at most one of them is given)."""
    if seconds is not None:
        return min(max(seconds, VACATION_MIN_SECONDS), VACATION_MAX)
    if days is not None:
        return min(max(days, VACATION_MIN_DAYS) * DAY, VACATION_MAX)
    return VACATION_DEFAULT


def derived_handle(reason: str, subject: str | None, from_: str | None, mime: bool) -> str:
    """A handle from the unexpanded arguments (RFC 5230 §4.2): each one counted, so the same
    text in different arguments gives a different handle."""
    digest = hashlib.sha256()
    for part in (subject, from_, "mime" if mime else None, reason):
        data = b"-" if part is None else b"%d:%s" % (len(part), part.encode("utf-8", "surrogatepass"))
        digest.update(data + b"\0")
    return "sieve:" + digest.hexdigest()[:40]


def is_daemon(address: str) -> bool:
    """A sender that looks like a program or a list (RFC 5230 §4.6, RFC 3834 §2)."""
    local = address.rpartition("@")[0].lower() if "@" in address else address.lower()
    return local in DAEMON_LOCALPARTS or local.startswith(DAEMON_PREFIXES) or local.endswith(DAEMON_SUFFIXES)


def auto_submitted(values: Iterable[str]) -> bool:
    """Auto-Submitted present with a value other than "no" (RFC 3834 §5)."""
    for value in values:
        keyword = value.split(";", 1)[0].split("(", 1)[0].strip().lower()
        if keyword != "no":
            return True
    return False


def reply_allowed(sender: str, own: set[str], fields: Callable[[str], list[str]],
                  addresses: Callable[[str], list[str]]) -> bool:
    """Whether a message may be answered at all. ``own``: the user's addresses in lower case;
    ``fields(name)``: a header's raw values; ``addresses(name)``: the addresses in a header."""
    if not sender:  # the null reverse-path: a bounce or a report (RFC 3834 §2)
        return False
    if sender.lower() in own or is_daemon(sender):
        return False
    if auto_submitted(fields("auto-submitted")):
        return False
    if any(fields(name) for name in LIST_HEADERS):
        return False
    if any(v.strip().lower() in BULK_PRECEDENCE for v in fields("precedence")):
        return False
    return any(a.lower() in own for name in RECIPIENT_HEADERS for a in addresses(name))


def mime_header_is_ascii(reason: str) -> bool:
    """A :mime reason's header part holds no 8-bit text (RFC 5230 §5)."""
    text = reason.replace("\r\n", "\n")
    head = text.split("\n\n", 1)[0]
    return head.isascii()


__all__ = ["VACATION_DEFAULT", "VACATION_MAX", "VACATION_MIN_DAYS", "VACATION_MIN_SECONDS", "Vacation",
           "derived_handle", "period", "reply_allowed"]
