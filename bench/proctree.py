"""Memory and CPU of a server's process tree, read from /proc (Linux).

:class:`TreeSampler` is a thread that every ``interval`` seconds finds the
processes under a root pid (``/proc/PID/task/TID/children``) and adds up their
resident set sizes (``statm``); it keeps the largest sum seen. Every
``pss_every``-th sample it also adds up the proportional set sizes
(``smaps_rollup``; shared pages, such as libraries mapped by many Dovecot
processes, counted once in all) and reads each process's own high-water mark
(``VmHWM`` in ``status``), which catches a peak shorter than the interval in
any process still alive at that moment. For a single-process server the root's
VmHWM read when it stops is its exact peak.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def tree(root: int) -> list[int]:
    """*root* and all its descendants that are alive now."""
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _kb_field(path: str, name: bytes) -> int:
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def pss(pid: int) -> int:
    return _kb_field(f"/proc/{pid}/smaps_rollup", b"Pss:")


def hwm(pid: int) -> int:
    """Peak resident set size of *pid* since it started (VmHWM)."""
    return _kb_field(f"/proc/{pid}/status", b"VmHWM:")


def tree_cpu(root: int) -> float:
    """CPU seconds of the tree: live processes' own time plus the reaped children's of each."""
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return total / TICK


@dataclass
class Memory:
    peak_rss: int = 0  # largest sum of RSS over the tree in one sample
    peak_pss: int = 0  # largest sum of PSS over the tree in one (less frequent) sample
    peak_hwm: int = 0  # largest VmHWM of a single process
    last_rss: int = 0  # sum of RSS over the tree in the last sample (taken when sampling stops)
    peak_procs: int = 0  # most processes in the tree in one sample
    samples: int = 0
    root_states: dict[str, int] = field(default_factory=dict)  # state letter of the root's main thread -> samples

    def state_share(self, letters: str) -> float:
        """Share of samples (0..1) in which the root's main thread was in one of these states (R, S, D)."""
        total = sum(self.root_states.values())
        return sum(n for s, n in self.root_states.items() if s in letters) / total if total else 0.0


class TreeSampler(threading.Thread):
    def __init__(self, root: int, interval: float = 0.02, pss_every: int = 10) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.pss_every = pss_every
        self.result = Memory()
        self._stop_event = threading.Event()
        self.cpu_start = tree_cpu(root)
        self.cpu = 0.0
        self.wall_start = time.monotonic()
        self.wall = 0.0

    def run(self) -> None:
        r = self.result
        while not self._stop_event.is_set():
            self.sample(full=r.samples % self.pss_every == 0)
            self._stop_event.wait(self.interval)

    def sample(self, full: bool) -> None:
        r = self.result
        pids = tree(self.root)
        r.samples += 1
        try:
            with open(f"/proc/{self.root}/stat", "rb") as f:
                stat = f.read()
            state = stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3].decode()
            r.root_states[state] = r.root_states.get(state, 0) + 1
        except (OSError, ValueError):
            pass
        r.peak_procs = max(r.peak_procs, len(pids))
        r.last_rss = sum(rss(p) for p in pids)
        r.peak_rss = max(r.peak_rss, r.last_rss)
        if full:
            r.peak_pss = max(r.peak_pss, sum(pss(p) for p in pids))
            r.peak_hwm = max([r.peak_hwm, *(hwm(p) for p in pids)])

    def finish(self) -> Memory:
        """Stop sampling (the server must still be running) and return the peaks."""
        self._stop_event.set()
        self.join()
        self.sample(full=True)
        self.cpu = tree_cpu(self.root) - self.cpu_start
        self.wall = time.monotonic() - self.wall_start
        return self.result
