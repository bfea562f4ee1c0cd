"""Mailbox size accounting for quotas.

A mailbox's usage is the sum of the sizes of the messages in ``new/`` and
``cur/`` of its Maildir and of each Maildir++ folder (``.<Folder>``) in it, and
their number (for a limit on messages, RFC 9208's MESSAGE resource).
Sizes come from the ``,S=<size>`` field of the file names (Maildir++; see
:mod:`mailstack.maildir.names`), with a stat only for names without one, so a
scan is one ``scandir`` per directory. Files in ``tmp/`` are deliveries in
progress and do not count; names starting with ``.`` are not messages
(https://cr.yp.to/proto/maildir.html).

Usage is cached in memory per mailbox, increased by each delivery made through
this process, and rescanned when the cached figure is older than a few seconds
(so expunges by IMAP/POP3 or other hosts are seen) or missing. Concurrent
deliveries to one mailbox may overshoot the quota by what is in flight; this is
a soft quota, like most Maildir quotas.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from mailstack.maildir.names import size_from_name

DEFAULT_TTL = 5.0
_CACHE_LIMIT = 10_000
_COUNTED = ("new", "cur")


class Usage(NamedTuple):
    octets: int
    messages: int

    def plus(self, octets: int, messages: int) -> Usage:
        return Usage(self.octets + octets, self.messages + messages)


NOTHING = Usage(0, 0)


def directory_usage(path: str) -> Usage:
    """Total message size and count in one ``new/`` or ``cur/`` directory; nothing if missing."""
    total = count = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                size = size_from_name(entry.name)
                if size is None:
                    size = _stat_size(entry)
                total += size
                count += 1
    except FileNotFoundError:
        return NOTHING
    return Usage(total, count)


def _stat_size(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:  # moved to cur/ or expunged while we looked
        return 0


def maildir_usage(maildir: str) -> Usage:
    total = NOTHING
    for sub in _COUNTED:
        total = total.plus(*directory_usage(os.path.join(maildir, sub)))
    return total


def mailbox_usage(mailbox: str) -> Usage:
    """Usage of a mailbox: its own Maildir plus every Maildir++ folder in it."""
    total = maildir_usage(mailbox)
    try:
        with os.scandir(mailbox) as entries:
            for entry in entries:
                if (
                    entry.name.startswith(".")
                    and entry.name not in (".", "..")
                    and entry.is_dir(follow_symlinks=False)
                ):
                    total = total.plus(*maildir_usage(entry.path))
    except FileNotFoundError:
        return total
    return total


class UsageCache:
    """Usage per mailbox, cached for ``ttl`` seconds of ``monotonic``. Thread safe."""

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        monotonic: Callable[[], float] = time.monotonic,
        scan: Callable[[str], Usage] = mailbox_usage,
    ) -> None:
        self._ttl = ttl
        self._monotonic = monotonic
        self._scan = scan
        self._entries: dict[str, tuple[Usage, float]] = {}
        self._lock = threading.Lock()

    def usage(self, mailbox: str) -> Usage:
        """Current usage (octets, messages); rescans if the cached value is stale or missing."""
        now = self._monotonic()
        with self._lock:
            cached = self._entries.get(mailbox)
        if cached is not None and now - cached[1] < self._ttl:
            return cached[0]
        used = self._scan(mailbox)
        with self._lock:
            if len(self._entries) >= _CACHE_LIMIT:
                self._drop_stale(now)
            self._entries[mailbox] = (used, now)
        return used

    def _drop_stale(self, now: float) -> None:
        stale = [m for m, (_, t) in self._entries.items() if now - t >= self._ttl]
        for mailbox in stale:
            del self._entries[mailbox]

    def add(self, mailbox: str, size: int, messages: int = 1) -> None:
        """Count a delivery made in this process (no-op if not cached)."""
        with self._lock:
            cached = self._entries.get(mailbox)
            if cached is not None:
                self._entries[mailbox] = (cached[0].plus(size, messages), cached[1])

    def invalidate(self, mailbox: str | None = None) -> None:
        with self._lock:
            if mailbox is None:
                self._entries.clear()
            else:
                self._entries.pop(mailbox, None)
