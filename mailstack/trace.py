"""``mailstack trace``: one message's path, read back from the JSON log (``[log] format = "json"``).

Every log event about a message carries its queue id (``queue_id``); the event of its
acceptance carries the SMTP session's id, the client's HELO, TLS and login, and the
Message-ID. A trace is every event naming the queue id, with the events of the session
that brought it in, in time order; the messages it led to (a bounce, a delay warning,
a redirect or a vacation reply a Sieve script sent) are named at the end, each with
its own queue id to trace in turn. ``--message-id`` finds the queue ids first.

The log is read line by line, and a line is parsed only when it holds the id looked
for, so a large log costs one pass; lines that are not JSON (a crash half-way through a
write) are skipped.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.logger import eventFromJSON, formatEvent

RELATED = ("new_id", "bounce_id", "warning_id")  # fields naming a message this one led to


@dataclass
class Trace:
    queue_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    related: list[str] = field(default_factory=list)  # queue ids of the messages it led to


def _events(lines: Iterable[str], needles: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not any(n in line for n in needles):
            continue
        try:  # Twisted writes RFC 7464 JSON text sequences: each record after an RS character
            event = eventFromJSON(line.lstrip("\x1e"))
        except (ValueError, TypeError, KeyError):
            continue
        if isinstance(event, dict):
            yield event


def queue_ids_of(path: Path, message_id: str) -> list[str]:
    """The queue ids of the messages accepted with this Message-ID, oldest first."""
    wanted = message_id.strip()
    if not wanted.startswith("<"):
        wanted = f"<{wanted}>"
    found: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for event in _events(f, (json.dumps(wanted)[1:-1],)):
            queue_id = event.get("queue_id")
            if event.get("message_id") == wanted and isinstance(queue_id, str) and queue_id not in found:
                found.append(queue_id)
    return found


def trace(path: Path, queue_id: str) -> Trace:
    """Every event of *path* about *queue_id*, with its session's, in time order."""
    out = Trace(queue_id)
    sessions: set[str] = set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for event in _events(f, (queue_id,)):
            if event.get("queue_id") != queue_id:
                continue
            out.events.append(event)
            if isinstance(event.get("session_id"), str) and event["session_id"]:
                sessions.add(event["session_id"])
            for name in RELATED:
                other = event.get(name)
                if isinstance(other, str) and other and other not in out.related:
                    out.related.append(other)
    if sessions:
        with open(path, encoding="utf-8", errors="replace") as f:
            for event in _events(f, tuple(sessions)):
                if event.get("session_id") in sessions and event.get("queue_id") is None:
                    out.events.append(event)
    out.events.sort(key=lambda e: float(e.get("log_time") or 0))
    return out


def lines(found: Trace) -> list[str]:
    """The trace as text: a line per event, UTC time to the millisecond, then what it says."""
    out = []
    for event in found.events:
        moment = datetime.datetime.fromtimestamp(float(event.get("log_time") or 0), datetime.UTC)
        text = formatEvent(event).replace("\n", " ")
        details = [f"{label} {event[key]}" for key, label in (("session_id", "session"), ("helo", "HELO"),
                                                               ("tls", "TLS"), ("auth", "login"),
                                                               ("message_id", "Message-ID"))
                   if event.get(key) and "accepted from" in str(event.get("log_format", ""))]
        if details:
            text += f" ({', '.join(details)})"
        out.append(f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond // 1000:03d}  {text}")
    for other in found.related:
        out.append(f"led to {other} (mailstack trace {other})")
    return out


__all__ = ["Trace", "lines", "queue_ids_of", "trace"]
