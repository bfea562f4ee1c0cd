"""Knowing that an open folder did not change, without looking: inotify on its new/ and cur/ (Linux).

A client that polls (NOOP, SELECT, STATUS, a POP3 login) must see what other
programs did to the folder, so before such a command the mail store used to
list the folder on the io pool. With a watch on ``new/`` and ``cur/`` the
kernel reports every file created, removed or renamed there, and a folder
with no report since it was last read is known to be unchanged: the command
is answered from memory, with no trip to the io pool.

The process's own changes (APPEND, flag renames, EXPUNGE, COPY, MOVE) also
cause reports. Each such change announces its files first (:meth:`Watcher.expect`,
before the system call), and a report that was announced is not a change by
someone else. Anything else marks the folder stale: an unannounced name, a
watched directory removed or moved (a restore from backup), a lost watch, or
a queue overflow (every folder is then stale).

Limits: only changes made through this machine's kernel are reported (not
those made on another NFS client), so the store still looks at least once a
second (``RECHECK_SECONDS`` in :mod:`.mailbox`). Where inotify is missing or
its watch limit is reached (``fs.inotify.max_user_watches``), a folder simply
has no watch and is listed before each polling command, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

log = Logger()

IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_SELF = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
EXPECTED_LIMIT = 200_000  # announced names not yet reported; past this the table is dropped


class Watch:
    """The watches of one folder; ``since`` is when they were all in place (monotonic)."""

    def __init__(self, watcher: Watcher, since: float) -> None:
        self._watcher = watcher
        self.wds: list[int] = []
        self.since = since
        self.alive = True  # False once a watched directory went away (or the watch was lost)

    def close(self) -> None:
        self._watcher.forget(self)


class Watcher:
    """One inotify instance for the process. The reactor reads it; folders are added from any thread."""

    def __init__(self, fd: int, libc: Any, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._fd = fd
        self._libc = libc
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._targets: dict[int, tuple[str, Callable[[], None], Watch]] = {}  # wd -> directory, on_change, watch
        self._expected: dict[tuple[str, str], int] = {}
        self._watched: dict[str, int] = {}  # directory -> how many watches name it
        self._full_logged = False

    @classmethod
    def create(cls, monotonic: Callable[[], float] = time.monotonic) -> Watcher | None:
        """A watcher, or None where inotify is not available."""
        if not sys.platform.startswith("linux"):
            return None
        try:  # the process's own symbols, libc's among them (find_library would run ldconfig)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            return None
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            log.warn("inotify is not available ({error}): folders are listed before each poll",
                     error=os.strerror(ctypes.get_errno()))
            return None
        return cls(fd, libc, monotonic)

    # -- the reactor's side (IReadDescriptor) ------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "inotify"

    def doRead(self) -> None:
        self.drain()

    def connectionLost(self, reason: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        self._targets.clear()
        self._watched.clear()

    # -- folders -------------------------------------------------------------------------------

    def watch(self, directories: list[str], on_change: Callable[[], None]) -> Watch | None:
        """Watch ``directories`` (blocking: a path lookup each; call it on the io pool).

        ``on_change`` is called on the reactor thread for every change not announced
        with :meth:`expect`. None when a watch cannot be added (the limit is reached).
        """
        watch = Watch(self, 0.0)
        with self._lock:  # the reactor must not read a report before its directory is known
            for path in directories:
                wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), MASK) if self._fd >= 0 else -1
                if wd < 0:
                    err = ctypes.get_errno()
                    for done in watch.wds:
                        self._libc.inotify_rm_watch(self._fd, done)
                        self._drop(done)
                    if err == errno.ENOSPC and not self._full_logged:
                        self._full_logged = True
                        log.warn("inotify watch limit reached (fs.inotify.max_user_watches): "
                                 "further folders are listed before each poll")
                    return None
                self._targets[wd] = (path, on_change, watch)
                self._watched[path] = self._watched.get(path, 0) + 1
                watch.wds.append(wd)
        watch.since = self._monotonic()
        return watch

    def forget(self, watch: Watch) -> None:
        with self._lock:
            watch.alive = False
            for wd in watch.wds:
                if self._drop(wd) and self._fd >= 0:
                    self._libc.inotify_rm_watch(self._fd, wd)
            watch.wds = []

    def _drop(self, wd: int) -> bool:
        """Forget a watch descriptor (the lock is held); False when it was not known."""
        target = self._targets.pop(wd, None)
        if target is None:
            return False
        left = self._watched.get(target[0], 0) - 1
        if left > 0:
            self._watched[target[0]] = left
        else:
            self._watched.pop(target[0], None)
        return True

    def expect(self, directory: str, name: str) -> None:
        """This process is about to create, remove or rename ``directory/name`` (any thread)."""
        key = (directory, name)
        with self._lock:
            if directory not in self._watched:
                return  # no report will come
            if len(self._expected) >= EXPECTED_LIMIT:  # reports that never came (a failed call)
                self._expected.clear()
            self._expected[key] = self._expected.get(key, 0) + 1

    # -- reports -------------------------------------------------------------------------------

    def drain(self) -> None:
        """Read every queued report and tell the folders changed by others (reactor thread).

        Non-blocking: the descriptor is O_NONBLOCK and holds only the kernel's queue.
        """
        changed: list[Callable[[], None]] = []
        with self._lock:
            while self._fd >= 0:
                try:
                    data = os.read(self._fd, 65536)
                except BlockingIOError:
                    break
                except OSError as e:
                    log.warn("reading inotify reports failed: {error}", error=e)
                    self._lose_all(changed)
                    break
                self._parse(data, changed)
        for on_change in dict.fromkeys(changed):
            on_change()

    def _lose_all(self, changed: list[Callable[[], None]]) -> None:
        for _, on_change, watch in self._targets.values():
            watch.alive = False
            changed.append(on_change)

    def _parse(self, data: bytes, changed: list[Callable[[], None]]) -> None:
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            raw = data[offset + _HEADER.size:offset + _HEADER.size + length]
            offset += _HEADER.size + length
            if mask & IN_Q_OVERFLOW:  # reports were lost: every folder may have changed
                changed.extend(target[1] for target in self._targets.values())
                continue
            target = self._targets.get(wd)
            if target is None:
                continue
            directory, on_change, watch = target
            if mask & _SELF:  # removed, moved away (a restore) or otherwise lost: look, and keep looking
                watch.alive = False
                if mask & IN_IGNORED:
                    self._drop(wd)
                changed.append(on_change)
                continue
            name = os.fsdecode(raw.rstrip(b"\0"))
            if name.startswith("."):
                continue  # not a message (https://cr.yp.to/proto/maildir.html)
            key = (directory, name)
            count = self._expected.get(key)
            if count:
                if count == 1:
                    del self._expected[key]
                else:
                    self._expected[key] = count - 1
                continue
            changed.append(on_change)
