"""The envelope of one message, as the SMTP session hands it to the router."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field


def new_queue_id() -> str:
    """A short, unique, log-friendly message id (time-ordered prefix + randomness)."""
    return f"{time.time_ns() // 1_000_000:011X}{secrets.token_hex(3).upper()}"


@dataclass(frozen=True, slots=True)
class RecipientRoute:
    """One accepted RCPT: the address as given, and where it resolves to.

    ``local`` holds canonical mailbox addresses in local domains (after alias
    expansion); ``remote`` holds addresses to relay (a non-local RCPT, or an
    alias forwarding outside).
    """

    original: str
    local: tuple[str, ...] = ()
    remote: tuple[str, ...] = ()


@dataclass(slots=True)
class Envelope:
    queue_id: str
    sender: str  # "" for the null reverse-path
    recipients: list[RecipientRoute] = field(default_factory=list)
    helo: str = ""
    client_ip: str = ""
    auth_user: str | None = None
    smtputf8: bool = False
    body_8bit: bool = False
    declared_size: int | None = None

    def local_mailboxes(self) -> dict[str, str]:
        """Canonical mailbox -> the original RCPT it came from (first wins, deduplicated)."""
        out: dict[str, str] = {}
        for route in self.recipients:
            for mailbox in route.local:
                out.setdefault(mailbox, route.original)
        return out

    def remote_recipients(self) -> list[str]:
        seen: dict[str, None] = {}
        for route in self.recipients:
            for address in route.remote:
                seen.setdefault(address, None)
        return list(seen)
