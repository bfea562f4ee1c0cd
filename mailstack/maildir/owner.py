"""One owner per piece of Maildir state: its changes run one at a time, in order, each to its end.

A change is a coroutine. :meth:`Owner.run` starts it once the changes queued
before it have finished, and lets it finish even when the caller stops
waiting (a lost connection cancels its command's Deferred): a change that
renamed a file and logged its UID must also record it in memory, or disk and
memory would disagree. Used on the reactor thread only.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger
from twisted.python.failure import Failure

T = TypeVar("T")

log = Logger()


class Owner:
    """The queue of changes to one thing (a folder, a user's folder tree), named for the log."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = DeferredLock()
        self._background: set[Deferred[Any]] = set()

    @property
    def busy(self) -> bool:
        return bool(self._lock.locked)

    def run(self, work: Coroutine[Any, Any, T]) -> Deferred[T]:
        """Run ``work`` after the changes queued before it; the answer may be cancelled, the work not."""

        async def serially() -> T:
            async with self._lock:
                return await work

        inner = Deferred.fromCoroutine(serially())
        outer: Deferred[T] = Deferred(lambda _: None)

        def done(result: T | Failure) -> None:
            if outer.called:
                if isinstance(result, Failure):
                    log.failure("change of {name} failed after its caller left", result, name=self.name)
                return
            if isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)

        inner.addBoth(done)
        return outer

    def in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Queue ``work`` with nobody waiting for it; a failure is logged."""
        d = self.run(work)
        self._background.add(d)

        def finished(result: Any) -> None:
            self._background.discard(d)
            if isinstance(result, Failure):
                log.failure("background change of {name} failed", result, name=self.name)

        d.addBoth(finished)
