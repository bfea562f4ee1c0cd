"""Maildir delivery throughput: messages/s and fsyncs/s at several concurrencies.

Delivers N messages of K bytes with C threads calling
``MaildirDelivery.deliver_sync`` (what the delivery thread pool does), into a
temporary directory on the disk that holds the Maildirs, and prints one line
per concurrency. Every delivery is fsynced (file and new/ directory,
https://cr.yp.to/proto/maildir.html), so the figures are bounded by the disk's
fsync rate; compare them with the raw fsynced-write rate printed first.

    python bench/maildir_bench.py                 # defaults: N=3000, K=4096, C=1,10,50
    python bench/maildir_bench.py -n 10000 -k 65536 -c 1,4,16 --mailboxes 20
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailstack.maildir import MaildirDelivery, Recipient  # noqa: E402


class FsyncCounter:
    """Counts os.fsync calls process-wide while installed."""

    def __init__(self) -> None:
        self._calls = itertools.count()
        self._real = os.fsync

    def __enter__(self) -> FsyncCounter:
        real = self._real
        calls = self._calls

        def counting_fsync(fd: Any) -> None:
            next(calls)
            real(fd)

        os.fsync = counting_fsync
        return self

    def __exit__(self, *exc: object) -> None:
        os.fsync = self._real

    def count(self) -> int:
        return next(self._calls)  # the probe itself is not a call: callers diff


def message(size: int) -> bytes:
    head = (
        b"From: bench@example.test\r\nTo: user@example.test\r\nSubject: bench\r\n\r\n"
    )
    line = b"x" * 76 + b"\r\n"
    body = line * (max(0, size - len(head)) // len(line) + 1)
    return (head + body)[:size]


def run_threads(count: int, work: Callable[[int], None]) -> float:
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def raw_fsync_rate(base: Path, count: int, size: int, threads: int) -> float:
    """Fsynced writes of new files per second, no Maildir logic."""
    target = Path(tempfile.mkdtemp(prefix="raw-", dir=base))
    data = b"x" * size
    per_thread = count // threads

    def work(tid: int) -> None:
        for i in range(per_thread):
            fd = os.open(
                target / f"{tid}.{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
            )
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)

    elapsed = run_threads(threads, work)
    shutil.rmtree(target)
    return per_thread * threads / elapsed


def bench(base: Path, n: int, k: int, concurrency: int, mailboxes: int) -> None:
    root = Path(tempfile.mkdtemp(prefix=f"c{concurrency}-", dir=base))
    delivery = MaildirDelivery(root, hostname="bench.example.test")
    body = message(k)
    recipients = [[Recipient(f"user{i}@example.test")] for i in range(mailboxes)]
    for rcpts in recipients:  # create the Maildirs outside the timing
        delivery.deliver_sync("", rcpts, b"warm-up\r\n")
    jobs = itertools.count()
    dir_syncs_before = delivery.directory_syncs

    def work(_: int) -> None:
        while (job := next(jobs)) < n:
            delivery.deliver_sync(
                "sender@example.test", recipients[job % mailboxes], body
            )

    with FsyncCounter() as counter:
        before = counter.count()
        elapsed = run_threads(concurrency, work)
        fsyncs = counter.count() - before - 1
    dir_syncs = delivery.directory_syncs - dir_syncs_before
    print(
        f"C={concurrency:<3} {n / elapsed:8.0f} msg/s  "
        f"{fsyncs / elapsed:8.0f} fsync/s  "
        f"{fsyncs / n:5.2f} fsync/msg  (new/ fsyncs {dir_syncs}, {elapsed:.2f} s)"
    )
    shutil.rmtree(root)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-n", "--messages", type=int, default=3000, help="messages per run"
    )
    parser.add_argument(
        "-k", "--size", type=int, default=4096, help="message size in bytes"
    )
    parser.add_argument(
        "-c", "--concurrency", default="1,10,50", help="comma-separated thread counts"
    )
    parser.add_argument(
        "--mailboxes", type=int, default=1, help="spread over this many"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to create the temporary Maildirs (default: var/ of the checkout)",
    )
    args = parser.parse_args(argv)
    base_parent = args.dir or Path(__file__).resolve().parent.parent / "var"
    base_parent.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="maildir-bench-", dir=base_parent))
    try:
        print(
            f"{args.messages} messages of {args.size} bytes into {args.mailboxes} "
            f"mailbox(es) under {base}"
        )
        for threads in (1, 10):
            rate = raw_fsync_rate(base, min(args.messages, 2000), args.size, threads)
            print(
                f"raw fsynced {args.size}-byte writes, {threads} thread(s): "
                f"{rate:8.0f}/s"
            )
        for c in (int(x) for x in args.concurrency.split(",")):
            bench(base, args.messages, args.size, c, args.mailboxes)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
