"""The envelope of one message, as the SMTP session hands it to the router."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field


def new_queue_id() -> str:
    """A short, unique, log-friendly message id (time-ordered prefix + randomness)."""
    return f"{time.time_ns() // 1_000_000:011X}{secrets.token_hex(3).upper()}"


NOTIFY_VALUES = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})


@dataclass(frozen=True, slots=True)
class RecipientDSN:
    """What the sender asked to be told about one recipient (RFC 3461 NOTIFY and ORCPT)."""

    notify: frozenset[str] | None = None
    """None: not asked; failures and delays are reported, as RFC 3461 §4.1 suggests."""
    orcpt: tuple[str, str] | None = None
    """(address type, address) the sender gave as the original recipient, decoded."""

    def wants(self, event: str) -> bool:
        """Whether *event* (SUCCESS, FAILURE, DELAY) is to be reported."""
        if self.notify is None:
            return event in ("FAILURE", "DELAY")
        return event in self.notify

    def without_success(self) -> RecipientDSN:
        """For the addresses an alias expands to (RFC 3461 §6.2.7.3): the sender was told of the
        expansion, not of each delivery."""
        if self.notify is None or "SUCCESS" not in self.notify:
            return self
        rest = self.notify - {"SUCCESS"}
        return RecipientDSN(rest or frozenset({"NEVER"}), self.orcpt)

    def to_json(self) -> list[object]:
        return [sorted(self.notify) if self.notify is not None else None, list(self.orcpt) if self.orcpt else None]

    @classmethod
    def from_json(cls, value: list[object]) -> RecipientDSN:
        notify, orcpt = value
        return cls(frozenset(notify) if isinstance(notify, list) else None,
                   (str(orcpt[0]), str(orcpt[1])) if isinstance(orcpt, list) and len(orcpt) == 2 else None)


NO_DSN = RecipientDSN()


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
    dsn: RecipientDSN | None = None

    def targets(self) -> tuple[str, ...]:
        return self.local + self.remote


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
    ret: str | None = None  # RFC 3461 RET: FULL or HDRS
    envid: str | None = None  # RFC 3461 ENVID, decoded
    requiretls: bool = False  # RFC 8689: relayed only over verified TLS to servers that promise the same

    def target_dsn(self) -> dict[str, RecipientDSN]:
        """The DSN request of each target address (mailbox or forward) that has one: passed on as
        is for an address that stands alone, without SUCCESS for one of an alias's several targets;
        the alias is the original recipient when the sender named none (RFC 3461 §4.2, §6.2.7)."""
        out: dict[str, RecipientDSN] = {}
        for route in self.recipients:
            targets = route.targets()
            dsn = route.dsn
            if targets != (route.original,) and (dsn is None or dsn.orcpt is None):
                kind = "rfc822" if route.original.isascii() else "utf-8"
                dsn = RecipientDSN(dsn.notify if dsn else None, (kind, route.original))
            if dsn is None:
                continue
            if len(targets) > 1:
                dsn = dsn.without_success()
            for target in targets:
                out.setdefault(target, dsn)
        return out

    def expanded(self) -> list[RecipientRoute]:
        """The recipients whose sender asked for SUCCESS and that an alias expanded to several
        addresses: their DSN says ``expanded`` (RFC 3461 §6.2.7.3)."""
        return [r for r in self.recipients if r.dsn is not None and r.dsn.wants("SUCCESS") and len(r.targets()) > 1]

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
