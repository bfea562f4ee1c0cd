"""What vacation remembers: who got a reply, so each sender gets at most one per period.

RFC 5230 §4.1: a reply goes to a sender at most once per ``:days`` (RFC 6131:
``:seconds``) for the same ``:handle``. The memory is a small SQLite database
(``storage.vacation``) of (mailbox, handle, sender) -> the time until which no
other reply goes out. A reply is built when :meth:`replied` says none went out;
once the copy it answers is filed, :meth:`due` checks again and records it in one
transaction, and only then is the reply committed to the queue: a crash between
the two loses that one reply, and never sends it twice; two messages from one
sender at once get one reply. Expired rows are purged as
the memory is used, so it holds only the senders of the current periods.

Blocking (SQLite with fsync): called from the io pool, never the reactor thread.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replied (
    mailbox TEXT NOT NULL,
    handle TEXT NOT NULL,
    sender TEXT NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (mailbox, handle, sender)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS replied_until ON replied (until);
"""
PURGE_EVERY = 1000  # replies decided between two purges of expired rows


class VacationMemory:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=5)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._decided = 0

    def replied(self, mailbox: str, handle: str, sender: str, now: float) -> bool:
        """True when *sender* had a reply for *handle* within its period (a read; nothing kept)."""
        with self._lock:
            row = self._conn.execute("SELECT until FROM replied WHERE mailbox=? AND handle=? AND sender=?",
                                     (mailbox.lower(), handle, sender.lower())).fetchone()
        return row is not None and row[0] > now

    def due(self, mailbox: str, handle: str, sender: str, seconds: int, now: float) -> bool:
        """True when *sender* gets a reply now (then remembered until ``now + seconds``);
        False when one went out within the period. ``seconds`` 0: every time, nothing kept."""
        if seconds <= 0:
            return True
        key = (mailbox.lower(), handle, sender.lower())
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT until FROM replied WHERE mailbox=? AND handle=? AND sender=?",
                                   key).fetchone()
                if row is not None and row[0] > now:
                    conn.execute("COMMIT")
                    return False
                conn.execute("INSERT OR REPLACE INTO replied (mailbox, handle, sender, until) VALUES (?, ?, ?, ?)",
                             (*key, now + seconds))
                self._decided += 1
                if self._decided % PURGE_EVERY == 0:
                    conn.execute("DELETE FROM replied WHERE until <= ?", (now,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return True

    def forget(self, mailbox: str) -> None:
        """Drop what a mailbox's replies remembered (its script changed, the user is gone)."""
        with self._lock:
            self._conn.execute("DELETE FROM replied WHERE mailbox=?", (mailbox.lower(),))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
