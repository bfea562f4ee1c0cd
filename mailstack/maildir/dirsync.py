"""Group commit for directory fsyncs.

A Maildir delivery is durable only once the directory entry made by the
rename into ``new/`` is on disk (https://cr.yp.to/proto/maildir.html: the
rename is the moment of delivery), which takes an fsync of ``new/``. When many
threads rename into the same ``new/`` at about the same time, one fsync that
starts after all those renames covers them all.

Per directory there is one pending batch and at most ``max_inflight`` fsyncs
running (default one). A thread that has renamed joins the pending batch
(creating it if needed): that batch's fsync has not started, so it will start
after the rename. If fewer than ``max_inflight`` fsyncs are running, the thread
takes the batch and becomes its syncer; otherwise it waits until one finishes,
and then either a waiter becomes the syncer of the pending batch or the batch
is already done. Batches are numbered, so each directory has a generation
counter; an fsync error fails every thread of its batch and no other.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable

from mailstack.fsutil import fsync_directory


class _Batch:
    __slots__ = ("done", "error", "generation")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.done = False
        self.error: OSError | None = None


class _Directory:
    __slots__ = ("cond", "pending", "running", "generation", "syncs")

    def __init__(self, cond: threading.Condition) -> None:
        self.cond = cond
        self.pending: _Batch | None = None
        self.running = 0  # fsyncs in progress
        self.generation = 0  # number of the last batch created
        self.syncs = 0  # fsyncs started


class DirectorySyncer:
    """Coalesces concurrent fsyncs of the same directory. Thread safe.

    ``max_inflight`` bounds the fsyncs of one directory running at once (one
    gives the most coalescing; more lets a caller start at once while another
    fsync runs). ``condition`` makes the per-directory condition variable
    (tests pass one that reports when a thread starts waiting).
    """

    def __init__(
        self,
        *,
        max_inflight: int = 1,
        condition: Callable[[], threading.Condition] = threading.Condition,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self._max_inflight = max_inflight
        self._condition = condition
        self._directories: dict[str, _Directory] = {}
        self._lock = threading.Lock()

    def sync(self, path: str) -> None:
        """Return once an fsync of ``path`` begun after this call has succeeded.

        Raises the OSError of that fsync if it failed.
        """
        state = self._directory(path)
        with state.cond:
            batch = state.pending
            if batch is None:
                state.generation += 1
                batch = state.pending = _Batch(state.generation)
            while not batch.done:
                if state.pending is batch and state.running < self._max_inflight:
                    self._run(path, state, batch)
                else:
                    state.cond.wait()
        if batch.error is not None:
            err = batch.error
            raise OSError(err.errno, err.strerror, path)

    def sync_count(self, path: str | None = None) -> int:
        """fsyncs started, for one directory or all of them."""
        with self._lock:
            if path is not None:
                state = self._directories.get(path)
                return state.syncs if state else 0
            return sum(d.syncs for d in self._directories.values())

    def _directory(self, path: str) -> _Directory:
        state = self._directories.get(path)
        if state is None:
            with self._lock:
                state = self._directories.setdefault(
                    path, _Directory(self._condition())
                )
        return state

    def _run(self, path: str, state: _Directory, batch: _Batch) -> None:
        """Sync ``batch`` with the condition released; called holding it."""
        state.pending = None
        state.running += 1
        state.syncs += 1
        error: OSError | None = OSError(errno.EIO, "directory sync interrupted")
        state.cond.release()
        try:
            fsync_directory(path)
            error = None
        except OSError as exc:
            error = exc
        finally:
            state.cond.acquire()
            batch.error = error
            batch.done = True
            state.running -= 1
            state.cond.notify_all()
