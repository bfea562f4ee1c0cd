"""Failure injection: rules that make the SMTP listeners misbehave on purpose, for testing senders.

A lab or a test suite checks how a sending application or MTA copes with a
receiving server that refuses, defers, stalls or hangs up. Each :class:`Rule`
matches the envelope (recipient, sender, recipient domain: shell-style
patterns, case-insensitive; empty matches all) at one stage of the SMTP
transaction and does one thing:

- ``reply``: answer ``code`` with ``status`` and ``text`` instead of going on
  (``451 4.3.0``, ``550 5.1.1``, ...);
- ``disconnect``: close the connection without a reply (at ``data``: after the
  whole message was read and before it is stored: the sender never learns
  whether it arrived, and it did not);
- ``delay``: wait ``seconds`` before the command is handled as usual;
- ``greylist``: ``451 4.7.1`` for the first ``seconds`` after a (client,
  sender, recipient) triple is first seen, then accept as usual (stage ``rcpt``);
- ``full``: a full mailbox: ``452 4.2.2`` at ``rcpt``, ``552 5.2.2`` with
  ``permanent``.

``times`` limits a rule to its first N matches (0: always), so "fail twice,
then deliver" is one rule. ``role`` limits it to one SMTP listener's role
(``smtp``, ``submission``, ``submissions``). Rules come from the ``[[faults]]``
tables of the configuration and can be changed at run time through the HTTP
API (``/api/v1/faults``, when ``http.faults_api`` is on) and ``mailstack lab
fail``. Everything here runs on the reactor thread.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from mailstack.smtp.reply import Reply

log = Logger()

ACTIONS = ("reply", "disconnect", "delay", "greylist", "full")
STAGES = ("mail", "rcpt", "data")
ROLES = ("", "smtp", "submission", "submissions")
MAX_RULES = 1000
MAX_SECONDS = 3600.0
MAX_GREYLIST = 100_000  # triples remembered; the oldest are forgotten first

__all__ = ["Fault", "FaultRules", "Rule", "parse_rule"]


class RuleError(ValueError):
    """A rule that cannot be used; ``key`` names the field."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(slots=True)
class Rule:
    action: str
    stage: str = "rcpt"
    recipient: str = ""
    sender: str = ""
    domain: str = ""
    role: str = ""
    code: int = 0
    status: str = ""
    text: str = ""
    seconds: float = 0.0
    permanent: bool = False
    times: int = 0
    id: str = ""
    hits: int = 0  # how often it applied

    def matches(self, role: str, sender: str, recipient: str) -> bool:
        if self.role and self.role != role:
            return False
        if self.sender and not fnmatch.fnmatchcase(sender.lower(), self.sender):
            return False
        if self.recipient and not fnmatch.fnmatchcase(recipient.lower(), self.recipient):
            return False
        domain = recipient.rpartition("@")[2].lower()
        return not self.domain or fnmatch.fnmatchcase(domain, self.domain)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


_FIELDS: dict[str, type | tuple[type, ...]] = {"action": str, "stage": str, "recipient": str, "sender": str, "domain": str, "role": str,
           "code": int, "status": str, "text": str, "seconds": (int, float), "permanent": bool, "times": int}


def parse_rule(raw: Mapping[str, Any]) -> Rule:
    """A rule from its JSON or TOML form; RuleError names the field that is wrong."""
    if not isinstance(raw, Mapping):
        raise RuleError("rule", "expected an object")
    for key, value in raw.items():
        kind = _FIELDS.get(key)
        if kind is None:
            raise RuleError(key, f"unknown field (known: {', '.join(sorted(_FIELDS))})")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise RuleError(key, f"expected {'a number' if kind is not str and kind is not bool else kind.__name__}")
    if "action" not in raw:
        raise RuleError("action", f"required: one of {', '.join(ACTIONS)}")
    rule = Rule(**{k: (v.lower() if k in ("recipient", "sender", "domain") else v) for k, v in raw.items()})
    if rule.action not in ACTIONS:
        raise RuleError("action", f"one of {', '.join(ACTIONS)}")
    if rule.stage not in STAGES:
        raise RuleError("stage", f"one of {', '.join(STAGES)}")
    if rule.role not in ROLES:
        raise RuleError("role", f"one of {', '.join(r for r in ROLES if r)}, or empty for all")
    if not 0 <= rule.seconds <= MAX_SECONDS:
        raise RuleError("seconds", f"from 0 to {MAX_SECONDS:g}")
    if rule.times < 0:
        raise RuleError("times", "0 (always) or more")
    if rule.action in ("delay", "greylist") and rule.seconds <= 0:
        raise RuleError("seconds", f"a {rule.action} rule needs a number of seconds")
    if rule.action == "greylist" and rule.stage != "rcpt":
        raise RuleError("stage", "greylisting happens at rcpt")
    if rule.action == "full" and rule.stage == "mail":
        raise RuleError("stage", "a mailbox is full at rcpt or data")
    if rule.action == "reply":
        if not 400 <= rule.code <= 599:
            raise RuleError("code", "a reply rule needs a 4xx or 5xx code")
        if rule.status and not _status_fits(rule.status, rule.code):
            raise RuleError("status", f"an enhanced status code of class {rule.code // 100} (like "
                                      f"{rule.code // 100}.0.0)")
    for key in ("text", "status"):
        value = getattr(rule, key)
        if len(value) > 200 or any(c in value for c in "\r\n\0"):
            raise RuleError(key, "one line of at most 200 characters")
    return rule


def _status_fits(status: str, code: int) -> bool:
    parts = status.split(".")
    return (len(parts) == 3 and all(p.isdigit() and len(p) <= 3 for p in parts)
            and parts[0] == str(code // 100))


@dataclass(frozen=True, slots=True)
class Fault:
    """What a session does instead of (or before) handling a command: a reply, a hang-up, or a wait."""

    reply: Reply | None = None
    disconnect: bool = False
    delay: float = 0.0
    rule: str = ""


@dataclass(slots=True)
class FaultRules:
    """The rules in force, in order: the first one that matches a command applies."""

    clock: IReactorTime
    rules: list[Rule] = field(default_factory=list)
    _ids: Iterable[int] = field(default_factory=lambda: itertools.count(1))
    _seen: dict[tuple[str, str, str], float] = field(default_factory=dict)  # greylisting: first attempts

    def add(self, rule: Rule) -> Rule:
        if len(self.rules) >= MAX_RULES:
            raise RuleError("rule", f"at most {MAX_RULES} rules")
        rule.id = str(next(self._ids))  # type: ignore[call-overload]
        rule.hits = 0
        self.rules.append(rule)
        log.info("fault rule {id} added: {rule}", id=rule.id, rule=describe(rule))
        return rule

    def remove(self, id: str) -> bool:
        for rule in self.rules:
            if rule.id == id:
                self.rules.remove(rule)
                log.info("fault rule {id} removed", id=id)
                return True
        return False

    def clear(self) -> int:
        count = len(self.rules)
        self.rules.clear()
        self._seen.clear()
        if count:
            log.info("{n} fault rule(s) removed", n=count)
        return count

    def check(self, stage: str, role: str, client_ip: str, sender: str, recipient: str = "") -> Fault | None:
        """The fault for this command, if a rule applies (and counts it)."""
        if not self.rules:
            return None
        for rule in self.rules:
            if rule.stage != stage or not rule.matches(role, sender, recipient):
                continue
            if rule.times and rule.hits >= rule.times:
                continue
            fault = self._fault(rule, client_ip, sender, recipient)
            if fault is None:
                continue
            rule.hits += 1
            return fault
        return None

    def _fault(self, rule: Rule, client_ip: str, sender: str, recipient: str) -> Fault | None:
        if rule.action == "reply":
            status = rule.status or f"{rule.code // 100}.0.0"
            return Fault(Reply(rule.code, status, rule.text or "Refused by a fault rule"), rule=rule.id)
        if rule.action == "disconnect":
            return Fault(disconnect=True, rule=rule.id)
        if rule.action == "delay":
            return Fault(delay=rule.seconds, rule=rule.id)
        if rule.action == "full":
            if rule.permanent:
                return Fault(Reply(552, "5.2.2", rule.text or "Mailbox full"), rule=rule.id)
            return Fault(Reply(452, "4.2.2", rule.text or "Mailbox full, try again later"), rule=rule.id)
        key = (client_ip, sender.lower(), recipient.lower())  # greylist
        now = self.clock.seconds()
        first = self._seen.get(key)
        if first is None:
            if len(self._seen) >= MAX_GREYLIST:
                del self._seen[next(iter(self._seen))]
            self._seen[key] = first = now
        waited = now - first
        if waited >= rule.seconds:
            return None
        return Fault(Reply(451, "4.7.1", rule.text or f"Greylisted, try again in {rule.seconds - waited:.0f} s"),
                     rule=rule.id)

    def sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(self.clock, seconds, lambda: None)

    def as_json(self) -> list[dict[str, Any]]:
        return [rule.as_json() for rule in self.rules]


def describe(rule: Rule) -> str:
    what = {"reply": f"{rule.code} {rule.status}".strip(), "delay": f"delay {rule.seconds:g} s",
            "greylist": f"greylist {rule.seconds:g} s", "disconnect": "disconnect",
            "full": "mailbox full" + (" (permanent)" if rule.permanent else "")}[rule.action]
    matching = [f"{key}={getattr(rule, key)}" for key in ("recipient", "sender", "domain", "role") if getattr(rule, key)]
    return f"{what} at {rule.stage}" + (f" for {' '.join(matching)}" if matching else "") + (
        f", {rule.times} time(s)" if rule.times else "")
