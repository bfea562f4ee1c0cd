"""Local delivery with a 50-rule Sieve script against no script, in the same run.

Delivers N messages (default 2,000 of 4 KB) through mailstack's one local-delivery
path (LocalDelivery -> the Filter chain -> MaildirDelivery: tmp/ + fsync, rename,
directory fsync) on a real Twisted reactor with the io thread pool, C at a time
(default 10), into a fresh Maildir root: without a script, and with the user's
active script being 50 rules (header, address and envelope tests, each filing into
a folder), each round in the other order, and prints deliveries/s, the cost of
filtering as a share of throughput (round by round, so the disk's drift over a run
cancels), and the CPU time per message of running the script alone.

    python bench/sieve_bench.py                  # 2,000 messages, 10 at a time
    python bench/sieve_bench.py --messages 500 --concurrency 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer, task  # noqa: E402
from twisted.python.threadpool import ThreadPool  # noqa: E402

from mailstack.delivery import InboxFilter, LocalDelivery  # noqa: E402
from mailstack.maildir import MaildirDelivery  # noqa: E402
from mailstack.notify import MailboxEvents  # noqa: E402
from mailstack.pop3 import pool_io  # noqa: E402
from mailstack.sieve.filter import SieveFilter  # noqa: E402
from mailstack.sieve.interpreter import MessageView, compile_script  # noqa: E402
from mailstack.testing import FakeAccounts  # noqa: E402

USER = "alice@example.test"


def script_of(rules: int) -> str:
    """``rules`` rules over headers, addresses and the envelope; none matches the bench mail,
    so every rule is evaluated and the message is kept (the costliest path)."""
    out = ['require ["fileinto", "envelope", "subaddress", "imap4flags"];']
    for i in range(rules):
        kind = i % 5
        if kind == 0:
            out.append(f'if header :contains "List-Id" "list{i}.example.org" {{ fileinto "Lists.l{i}"; stop; }}')
        elif kind == 1:
            out.append(f'if address :domain :is "from" "sender{i}.example" {{ fileinto "From.s{i}"; stop; }}')
        elif kind == 2:
            out.append(f'if header :matches "subject" "*[topic{i}]*" {{ addflag "\\\\Flagged"; fileinto "T{i}"; }}')
        elif kind == 3:
            out.append(f'if envelope :detail "to" "tag{i}" {{ fileinto "Tag.t{i}"; stop; }}')
        else:
            out.append(f'if anyof (header :is "x-rule" "{i}", address :localpart :is "to" "nobody{i}") '
                       f'{{ fileinto "R{i}"; }}')
    return "\n".join(out) + "\n"


def message(i: int, size: int = 4096) -> bytes:
    head = (f"From: Bob <bob@example.org>\r\nTo: Alice <{USER}>\r\nSubject: message {i} about nothing much\r\n"
            f"Message-ID: <{i}.bench@example.org>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n").encode()
    line = b"the quick brown fox jumps over the lazy dog and then some more words for the body\r\n"
    return head + line * ((size - len(head)) // len(line) + 1)


async def _deliver_all(local: LocalDelivery, messages: list[bytes], concurrency: int) -> float:
    sem = defer.DeferredSemaphore(concurrency)
    t = time.perf_counter()

    async def one(i: int, data: bytes) -> None:
        await local.deliver(f"Q{i}", "bob@example.org", {USER: USER}, data, can_hold=False)

    await defer.gatherResults([sem.run(lambda i=i, d=d: defer.ensureDeferred(one(i, d)))
                               for i, d in enumerate(messages)])
    return time.perf_counter() - t


def run(reactor: object, args: argparse.Namespace) -> defer.Deferred[None]:
    return defer.ensureDeferred(_run(reactor, args))


async def _run(reactor: object, args: argparse.Namespace) -> None:
    messages = [message(i) for i in range(args.messages)]
    text = script_of(args.rules)
    pool = ThreadPool(minthreads=0, maxthreads=32, name="io")
    pool.start()
    io = pool_io(reactor, pool)  # type: ignore[arg-type]
    rows: dict[str, list[float]] = {"no script": [], f"{args.rules}-rule script": []}
    try:
        for round_no in range(args.rounds):
            labels = list(rows)  # each round in the other order: a disk that slows down as a round
            for label in labels if round_no % 2 == 0 else labels[::-1]:  # goes on favours neither
                root = Path(tempfile.mkdtemp(prefix="sieve-bench-", dir=args.workdir))
                accounts = FakeAccounts(users=[USER])
                if label != "no script":
                    accounts.scripts[USER] = text
                maildir = MaildirDelivery(root, hostname="bench.example.test", reactor=reactor, threadpool=pool)  # type: ignore[arg-type]
                local = LocalDelivery(accounts, maildir, MailboxEvents(), SieveFilter(accounts, InboxFilter(), run=io))
                seconds = await _deliver_all(local, messages, args.concurrency)
                delivered = sum(1 for _ in os.scandir(root / "example.test" / "alice" / "new"))
                if delivered != len(messages):
                    print(f"{label}: {delivered} of {len(messages)} delivered")
                rows[label].append(len(messages) / seconds)
                shutil.rmtree(root, ignore_errors=True)
    finally:
        pool.stop()
    script = compile_script(text)
    view = MessageView(messages[0].split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n", len(messages[0]), "bob@example.org", USER)
    t = time.process_time()
    for _ in range(1000):
        script.run(view)
    per_run = (time.process_time() - t) / 1000
    base, filtered = rows.values()
    cost = statistics.median(1 - f / b for b, f in zip(base, filtered, strict=True))  # round by round: the disk drifts
    print(f"\n{args.messages} messages of 4 KB, {args.concurrency} at a time, median of {args.rounds} rounds")
    for label, values in rows.items():
        print(f"  {label:20s} {statistics.median(values):8.0f} deliveries/s   ({', '.join(f'{v:.0f}' for v in values)})")
    print(f"  filtering costs {100 * cost:.1f}% of throughput, the median of the rounds' costs (goal: under 20%)")
    print(f"  running the script alone: {per_run * 1e6:.0f} µs of CPU per message")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rules", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temporary Maildir roots")
    args = parser.parse_args()
    task.react(run, (args,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
