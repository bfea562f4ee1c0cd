"""Group commit of directory fsyncs (mailstack.maildir.dirsync)."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from mailstack.maildir.dirsync import DirectorySyncer

TIMEOUT = 10.0


class ReportingCondition(threading.Condition):
    """Releases ``waiting`` each time a thread starts to wait on it."""

    def __init__(self, waiting: threading.Semaphore) -> None:
        super().__init__()
        self._waiting = waiting

    def wait(self, timeout: float | None = None) -> bool:
        self._waiting.release()
        return super().wait(timeout)


class GatedFsync:
    """os.fsync stand-in: the first call waits for ``gate``; chosen calls fail."""

    def __init__(self, failures: dict[int, int] | None = None) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.calls: list[str] = []
        self._failures = failures or {}
        self._lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self._lock:
            self.calls.append(os.readlink(f"/proc/self/fd/{fd}"))
            number = len(self.calls)
        if number == 1:
            self.entered.set()
            assert self.gate.wait(TIMEOUT)
        if number in self._failures:
            raise OSError(self._failures[number], os.strerror(self._failures[number]))


class Harness:
    def __init__(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: GatedFsync
    ) -> None:
        self.dir = str(tmp_path)
        self.waiting = threading.Semaphore(0)
        self.syncer = DirectorySyncer(
            condition=lambda: ReportingCondition(self.waiting)
        )
        self.fsync = fsync
        self.errors: dict[str, OSError | None] = {}
        self.threads: list[threading.Thread] = []
        monkeypatch.setattr(os, "fsync", fsync)

    def start(self, name: str) -> None:
        def run() -> None:
            try:
                self.syncer.sync(self.dir)
            except OSError as exc:
                self.errors[name] = exc
            else:
                self.errors[name] = None

        thread = threading.Thread(target=run, name=name)
        self.threads.append(thread)
        thread.start()

    def start_syncer_and_three_waiters(self) -> None:
        self.start("first")
        assert self.fsync.entered.wait(TIMEOUT)  # "first" is inside fsync
        for name in ("w1", "w2", "w3"):
            self.start(name)
            assert self.waiting.acquire(timeout=TIMEOUT)  # ... and it waits

    def finish(self) -> None:
        self.fsync.gate.set()
        for thread in self.threads:
            thread.join(TIMEOUT)
            assert not thread.is_alive()


def test_one_fsync_covers_every_thread_that_arrived_during_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, monkeypatch, GatedFsync())
    h.start_syncer_and_three_waiters()
    h.finish()
    assert h.fsync.calls == [str(tmp_path)] * 2
    assert h.syncer.sync_count(str(tmp_path)) == 2 == h.syncer.sync_count()
    assert h.errors == {"first": None, "w1": None, "w2": None, "w3": None}


def test_a_failed_fsync_fails_only_its_own_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, monkeypatch, GatedFsync({1: errno.EIO}))
    h.start_syncer_and_three_waiters()
    h.finish()
    first = h.errors.pop("first")
    assert isinstance(first, OSError) and first.errno == errno.EIO
    assert h.errors == {"w1": None, "w2": None, "w3": None}


def test_every_thread_of_a_failed_batch_sees_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, monkeypatch, GatedFsync({2: errno.ENOSPC}))
    h.start_syncer_and_three_waiters()
    h.finish()
    assert h.errors.pop("first") is None
    assert {n: e.errno if e else None for n, e in h.errors.items()} == {
        "w1": errno.ENOSPC,
        "w2": errno.ENOSPC,
        "w3": errno.ENOSPC,
    }


def test_a_lone_caller_syncs_itself_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsync = GatedFsync()
    fsync.gate.set()
    monkeypatch.setattr(os, "fsync", fsync)
    syncer = DirectorySyncer()
    for _ in range(3):
        syncer.sync(str(tmp_path))
    assert len(fsync.calls) == 3 == syncer.sync_count()


def test_directories_are_synced_independently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsync = GatedFsync()
    fsync.gate.set()
    monkeypatch.setattr(os, "fsync", fsync)
    syncer = DirectorySyncer()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    syncer.sync(str(tmp_path / "a"))
    syncer.sync(str(tmp_path / "b"))
    assert fsync.calls == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert syncer.sync_count(str(tmp_path / "a")) == 1
    assert syncer.sync_count(str(tmp_path / "missing")) == 0


def test_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DirectorySyncer().sync(str(tmp_path / "missing"))


def test_with_two_in_flight_a_caller_need_not_wait_for_a_running_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsync = GatedFsync()
    monkeypatch.setattr(os, "fsync", fsync)
    syncer = DirectorySyncer(max_inflight=2)
    first = threading.Thread(target=syncer.sync, args=(str(tmp_path),))
    first.start()
    assert fsync.entered.wait(TIMEOUT)
    syncer.sync(str(tmp_path))  # returns while the first fsync is still blocked
    assert first.is_alive()
    fsync.gate.set()
    first.join(TIMEOUT)
    assert len(fsync.calls) == 2


def test_max_inflight_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DirectorySyncer(max_inflight=0)
