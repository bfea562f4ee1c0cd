"""In-process change notifications for mailboxes.

Whoever changes a Maildir in this process (local delivery, the queue, an IMAP
or POP3 session) calls :meth:`MailboxEvents.publish`; sessions that watch a
mailbox (IMAP IDLE, untagged EXISTS/EXPUNGE/FETCH updates) subscribe to it.
All calls happen on the reactor thread. Changes made by other processes are
not seen here; IMAP also rescans the Maildir when a command arrives.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from twisted.logger import Logger

log = Logger()

Callback = Callable[[str, "str | None"], None]


class MailboxEvents:
    """Publish/subscribe keyed by canonical mailbox address; ``folder`` None is INBOX."""

    def __init__(self) -> None:
        self._subscribers: defaultdict[str, list[Callback]] = defaultdict(list)

    def subscribe(self, address: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback(address, folder)`` on every change; returns the unsubscribe function."""
        self._subscribers[address].append(callback)

        def unsubscribe() -> None:
            subs = self._subscribers.get(address)
            if subs and callback in subs:
                subs.remove(callback)
                if not subs:
                    del self._subscribers[address]

        return unsubscribe

    def publish(self, address: str, folder: str | None = None) -> None:
        for callback in list(self._subscribers.get(address, ())):
            try:
                callback(address, folder)
            except Exception:  # one broken watcher must not stop delivery
                log.failure("mailbox change callback for {address} failed", address=address)

    def watched(self, address: str) -> bool:
        return address in self._subscribers
