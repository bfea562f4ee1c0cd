"""Outbound rate limits at submission: messages an hour per authenticated user and per sender domain.

A user over a limit is told at MAIL FROM (``451 4.7.1``, try later), not
queued and sent late. The window slides: what counts is the messages accepted
in the last hour. The times are kept in memory, where MAIL reads them on the
reactor thread, and written behind to a small SQLite database
(``storage.ratelimit``) on the io pool, which is read back at start: a restart
does not reset anybody's hour (a crash may forget the last few messages, never
more than were in flight to the pool).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mailstack.interfaces import SendRate
from mailstack.smtp import reply as R
from mailstack.smtp.reply import SMTPReplyError

log = Logger()

WINDOW = 3600.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sent_key_at ON sent (key, at);
CREATE INDEX IF NOT EXISTS sent_at ON sent (at);
"""
PURGE_EVERY = 500  # writes between two purges of rows older than the window


def refuse_if_over(rate: SendRate | None, user: str | None, sender: str) -> None:
    """451 4.7.1 when the authenticated *user* (or *sender*'s domain) has reached a limit."""
    if rate is None or user is None:
        return
    over = rate.over(user, sender.rpartition("@")[2].lower())
    if over is not None:
        raise SMTPReplyError(R.SEND_RATE.with_text(f"Sending limit reached: {over}; try again later"), cause=over)


def admit(rate: SendRate | None, user: str | None, sender: str) -> None:
    """At the end of DATA: refused as at MAIL (sessions in parallel all passed MAIL), else counted.
    Both on the reactor thread, one after the other: no two messages take the last place."""
    refuse_if_over(rate, user, sender)
    if rate is not None and user is not None:
        rate.record(user, sender.rpartition("@")[2].lower())


class SendLimits:
    """*per_user* and *per_domain* messages an hour (0: no limit); *run* puts blocking work on the io pool."""

    def __init__(self, path: Path | str, *, per_user: int, per_domain: int, clock: Callable[[], float],
                 run: Callable[..., Deferred[Any]]) -> None:
        self.limits = {"user": per_user, "domain": per_domain}
        self.clock = clock
        self.run = run
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))  # who sent when: the owner's alone
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=5)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._writes = 0
        self.recent: dict[str, deque[float]] = {}
        since = clock() - WINDOW
        for key, at in self._conn.execute("SELECT key, at FROM sent WHERE at > ? ORDER BY at", (since,)):
            self.recent.setdefault(key, deque()).append(at)

    def over(self, user: str, domain: str) -> str | None:
        """Which limit *user* sending from *domain* has reached, as a sentence; None when neither."""
        now = self.clock()
        for kind, name in (("user", user), ("domain", domain)):
            limit = self.limits[kind]
            if limit and self._count(f"{kind}:{name}", now) >= limit:
                return f"{name} has sent {limit} messages in the last hour"
        return None

    def record(self, user: str, domain: str) -> None:
        """One message accepted from *user* with a sender in *domain*."""
        now = self.clock()
        keys = [f"{kind}:{name}" for kind, name in (("user", user), ("domain", domain)) if self.limits[kind]]
        for key in keys:
            self.recent.setdefault(key, deque()).append(now)
        if keys:
            d = self.run(self._write, keys, now)
            d.addErrback(lambda f: log.failure("rate limits: cannot write {path}", f, path=str(self.path)))

    def _count(self, key: str, now: float) -> int:
        times = self.recent.get(key)
        if times is None:
            return 0
        while times and times[0] <= now - WINDOW:
            times.popleft()
        if not times:
            del self.recent[key]
            return 0
        return len(times)

    def _write(self, keys: list[str], at: float) -> None:
        with self._lock:
            self._conn.executemany("INSERT INTO sent (key, at) VALUES (?, ?)", [(k, at) for k in keys])
            self._writes += 1
            if self._writes % PURGE_EVERY == 0:
                self._conn.execute("DELETE FROM sent WHERE at <= ?", (at - WINDOW,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
