"""An imaptest-style, login-heavy IMAP load: N clients, each looping over short sessions.

Every session is one connection (the mix of Dovecot's imaptest default profile,
written in Python because imaptest is not packaged in Debian)::

    connect, greeting
    LOGIN                                         100 %
    LIST "" "*"                                    50 %
    STATUS INBOX (MESSAGES UNSEEN UIDNEXT)         50 %
    SELECT INBOX                                  100 %
    FETCH 1:* (UID FLAGS)                         100 %
    UID FETCH <1 to 3 random UIDs> (UID RFC822.SIZE BODY.PEEK[])   100 %
    UID STORE <random UID> +FLAGS or -FLAGS (\\Seen)                50 %
    UID STORE <lowest UID> +FLAGS.SILENT (\\Deleted)   while the folder holds --target or more
    EXPUNGE                                       100 %
    APPEND INBOX (\\Seen) <a 1.2 KB message>      100 % (LITERAL+ when the server offers it)
    NOOP                                          100 %
    LOGOUT                                        100 %

so each session appends one message and deletes one, and every folder stays at
about --target messages. With fewer accounts than clients, clients share
folders, and the checks that depend on a folder's exact content (UIDs per
FETCH, bodies per UID FETCH) are skipped. Each command waits for its tagged reply; its latency is
the time from writing it to reading that reply. Clients run as asyncio tasks
in --procs worker processes (plain sockets, a minimal response reader that skips
literals by their length), so one core drives several thousand commands per
second and the generator is not what limits the servers measured here. A client
starts no new session after --seconds; the rate is the commands completed
divided by the time until the last session ended.

Usable on its own against any IMAP server on loopback::

    python bench/imap_mix.py --port 1430 --password secret --user a@example.test --user b@example.test

``imap_bench.py`` uses it to run the same mix against mailstack and Dovecot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import queue as queue_module
import random
import re
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

# rows of the report, in session order; "connect" (TCP connect + greeting) is not a command
STEPS = ("connect", "LOGIN", "LIST", "STATUS", "SELECT", "FETCH", "FETCH2", "STORE", "DELETE", "EXPUNGE",
         "APPEND", "NOOP", "LOGOUT")

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")
_EXISTS = re.compile(rb"^\* (\d+) EXISTS", re.IGNORECASE)
_UID = re.compile(rb"\bUID (\d+)", re.IGNORECASE)


def append_message(size: int = 1200) -> bytes:
    """A small plain-text message of about *size* octets, CRLF line ends."""
    head = (b"From: Load Generator <load@example.org>\r\n"
            b"To: Bench User <user@example.test>\r\n"
            b"Subject: appended by the IMAP mix\r\n"
            b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
            b"Message-ID: <imap-mix@example.org>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
    line = b"a line of text in a message appended by the benchmark's imaptest-style mix\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


class SessionFailed(Exception):
    """LOGIN or SELECT failed: the session cannot go on."""


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STEPS})
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    sessions: int = 0
    body_octets: int = 0

    def error(self, step: str, detail: str) -> None:
        self.errors[step] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{step}: {detail[:200]}")


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: Stats) -> None:
        self.reader = reader
        self.writer = writer
        self.stats = stats
        self.seq = 0
        self.literals: list[int] = []  # sizes of the literals in the last response

    async def _response(self, tag: bytes) -> tuple[bool, bytes, list[bytes]]:
        untagged: list[bytes] = []
        self.literals = []
        readline = self.reader.readline
        while True:
            line = await readline()
            if not line.endswith(b"\n"):
                raise ConnectionError("connection closed by the server")
            m = _LITERAL.search(line)
            while m:  # a literal: skip its octets by count, then read the rest of the line
                n = int(m.group(1))
                await self.reader.readexactly(n)
                self.literals.append(n)
                rest = await readline()
                if not rest.endswith(b"\n"):
                    raise ConnectionError("connection closed by the server")
                line = line[: m.start()] + rest
                m = _LITERAL.search(line)
            if line.startswith(tag):
                return line[len(tag): len(tag) + 2] == b"OK", line, untagged
            untagged.append(line)

    async def command(self, step: str, text: bytes, literal: bytes | None = None,
                      sync_literal: bool = False) -> tuple[bool, list[bytes]]:
        self.seq += 1
        tag = b"a%d " % self.seq
        start = time.perf_counter()
        if literal is None:
            self.writer.write(tag + text + b"\r\n")
        elif not sync_literal:
            self.writer.write(b"%s%s {%d+}\r\n%s\r\n" % (tag, text, len(literal), literal))
        else:
            self.writer.write(b"%s%s {%d}\r\n" % (tag, text, len(literal)))
            line = await self.reader.readline()
            if not line.startswith(b"+"):
                self.stats.error(step, line.decode("latin-1").rstrip())
                return False, []
            self.writer.write(literal + b"\r\n")
        ok, final, untagged = await self._response(tag)
        self.stats.latencies[step].append(time.perf_counter() - start)
        if not ok:
            self.stats.error(step, final.decode("latin-1").rstrip())
        return ok, untagged


def _quote(s: str) -> bytes:
    return b'"' + s.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


async def session(host: str, port: int, user: str, password: str, target: int, message: bytes,
                  rng: random.Random, stats: Stats, exclusive: bool = True) -> None:
    """One session. *exclusive*: no other client uses this account, so the answers can be checked exactly."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
    try:
        greeting = await reader.readline()
        stats.latencies["connect"].append(time.perf_counter() - start)
        if not greeting.startswith(b"* OK"):
            stats.error("connect", greeting.decode("latin-1").rstrip() or "closed")
            raise SessionFailed
        literal_plus = b"LITERAL+" in greeting.upper()
        c = Connection(reader, writer, stats)
        ok, _ = await c.command("LOGIN", b"LOGIN " + _quote(user) + b" " + _quote(password))
        if not ok:
            raise SessionFailed
        if rng.random() < 0.5:
            await c.command("LIST", b'LIST "" "*"')
        if rng.random() < 0.5:
            await c.command("STATUS", b"STATUS INBOX (MESSAGES UNSEEN UIDNEXT)")
        ok, untagged = await c.command("SELECT", b"SELECT INBOX")
        if not ok:
            raise SessionFailed
        exists = 0
        for line in untagged:
            m = _EXISTS.match(line)
            if m:
                exists = int(m.group(1))
        uids: list[int] = []
        if exists:
            ok, untagged = await c.command("FETCH", b"FETCH 1:* (UID FLAGS)")
            for line in untagged:
                m = _UID.search(line)
                if m:
                    uids.append(int(m.group(1)))
            if ok and exclusive and len(uids) != exists:
                stats.error("FETCH", f"{len(uids)} UIDs for {exists} messages")
        if uids:
            pick = rng.sample(uids, min(len(uids), rng.randint(1, 3)))
            ok, _ = await c.command("FETCH2", b"UID FETCH %s (UID RFC822.SIZE BODY.PEEK[])"
                                    % ",".join(map(str, pick)).encode())
            stats.body_octets += sum(c.literals)
            if ok and exclusive and len(c.literals) != len(pick):
                stats.error("FETCH2", f"{len(c.literals)} bodies for {len(pick)} UIDs")
            if rng.random() < 0.5:
                sign = b"+" if rng.random() < 0.5 else b"-"
                await c.command("STORE", b"UID STORE %d %sFLAGS (\\Seen)" % (rng.choice(uids), sign))
            if len(uids) >= target:
                await c.command("DELETE", b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % min(uids))
        await c.command("EXPUNGE", b"EXPUNGE")
        await c.command("APPEND", b"APPEND INBOX (\\Seen)", literal=message, sync_literal=not literal_plus)
        await c.command("NOOP", b"NOOP")
        await c.command("LOGOUT", b"LOGOUT")
        stats.sessions += 1
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def client(host: str, port: int, user: str, password: str, deadline: float, target: int,
                 seed: int, stats: Stats, session_timeout: float, exclusive: bool) -> None:
    rng = random.Random(seed)
    message = append_message()
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(session(host, port, user, password, target, message, rng, stats, exclusive),
                                   session_timeout)
        except SessionFailed:
            await asyncio.sleep(0.05)  # the error is counted; do not spin on a refusing server
        except (TimeoutError, OSError, EOFError, ConnectionError, asyncio.IncompleteReadError) as e:
            stats.error("session", f"{type(e).__name__}: {e}")
            await asyncio.sleep(0.05)


def _worker(host: str, port: int, users: list[str], password: str, seconds: float, target: int,
            seeds: list[int], session_timeout: float, exclusive: bool,
            queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    stats = Stats()

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(client(host, port, u, password, deadline, target, s, stats, session_timeout,
                                      exclusive)
                               for u, s in zip(users, seeds, strict=True)))

    asyncio.run(main())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    queue.put((stats.latencies, dict(stats.errors), stats.examples, stats.sessions, stats.body_octets,
               usage.ru_utime + usage.ru_stime))


# -- results -----------------------------------------------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, int(-(-p * len(sorted_values) // 1)) - 1))
    return sorted_values[k]


@dataclass
class MixResult:
    clients: int
    seconds: float  # from the start of the first session to the end of the last
    sessions: int
    commands: int  # IMAP commands answered (connects not counted)
    errors: int
    per_step: dict[str, dict[str, float]]  # step -> count, p50_ms, p99_ms, errors
    examples: list[str]
    body_octets: int
    generator_cpu: float  # CPU seconds of the worker processes

    @property
    def rate(self) -> float:
        return self.commands / self.seconds if self.seconds else 0.0

    @property
    def all_p50(self) -> float:
        return self.per_step["all"]["p50_ms"]

    @property
    def all_p99(self) -> float:
        return self.per_step["all"]["p99_ms"]

    def to_json(self) -> dict[str, object]:
        return {"clients": self.clients, "seconds": self.seconds, "sessions": self.sessions,
                "commands": self.commands, "commands_per_s": self.rate, "errors": self.errors,
                "per_step": self.per_step, "examples": self.examples, "generator_cpu_s": self.generator_cpu}

    def table(self) -> str:
        rows = [f"{'step':8s} {'count':>7s} {'per s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'errors':>6s}"]
        for step in (*STEPS, "session", "all"):
            r = self.per_step.get(step)
            if r is None or (not r["count"] and not r["errors"]):
                continue
            rows.append(f"{step:8s} {int(r['count']):7d} {r['count'] / self.seconds:7.0f} {r['p50_ms']:7.2f} "
                        f"{r['p99_ms']:7.2f} {int(r['errors']):6d}")
        return "\n".join(rows)


def run_mix(host: str, port: int, users: list[str], password: str, *, clients: int = 10, seconds: float = 20.0,
            procs: int = 1, target: int = 30, seed: int = 1, session_timeout: float = 60.0) -> MixResult:
    """Run the mix with *clients* clients (client i logs in as ``users[i % len(users)]``)."""
    procs = max(1, min(procs, clients))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    shares: list[tuple[list[str], list[int]]] = [([], []) for _ in range(procs)]
    for i in range(clients):
        shares[i % procs][0].append(users[i % len(users)])
        shares[i % procs][1].append(seed * 1000 + i)
    exclusive = len(set(users)) >= clients  # else clients share folders and see each other's expunges
    workers = [ctx.Process(target=_worker, args=(host, port, u, password, seconds, target, s, session_timeout,
                                                 exclusive, queue))
               for u, s in shares]
    start = time.monotonic()
    for w in workers:
        w.start()
    try:
        results = [queue.get(timeout=seconds + session_timeout + 30) for _ in workers]
    except queue_module.Empty:
        for w in workers:
            if w.is_alive():
                w.terminate()
        raise RuntimeError("a load generator process did not report back") from None
    elapsed = time.monotonic() - start
    for w in workers:
        w.join()
    latencies: dict[str, list[float]] = {s: [] for s in STEPS}
    errors: Counter[str] = Counter()
    examples: list[str] = []
    sessions = body = 0
    cpu = 0.0
    for lat, err, ex, n, octets, used in results:
        for step, values in lat.items():
            latencies[step].extend(values)
        errors.update(err)
        examples.extend(ex)
        sessions += n
        body += octets
        cpu += used
    per_step: dict[str, dict[str, float]] = {}
    every: list[float] = []
    for step in STEPS:
        values = sorted(latencies[step])
        if step != "connect":
            every.extend(values)
        per_step[step] = {"count": len(values), "p50_ms": percentile(values, 0.50) * 1000,
                          "p99_ms": percentile(values, 0.99) * 1000, "errors": errors.get(step, 0)}
    per_step["session"] = {"count": 0, "p50_ms": 0.0, "p99_ms": 0.0, "errors": errors.get("session", 0)}
    every.sort()
    total_errors = sum(errors.values())
    per_step["all"] = {"count": len(every), "p50_ms": percentile(every, 0.50) * 1000,
                       "p99_ms": percentile(every, 0.99) * 1000, "errors": total_errors}
    return MixResult(clients=clients, seconds=elapsed, sessions=sessions, commands=len(every), errors=total_errors,
                     per_step=per_step, examples=examples[:10], body_octets=body, generator_cpu=cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", action="append", required=True, help="account to log in as (repeatable)")
    parser.add_argument("--password", required=True)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--procs", type=int, default=1, help="worker processes sharing the clients")
    parser.add_argument("--target", type=int, default=30, help="messages each folder is kept at")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        parser.error("loopback only")
    r = run_mix(args.host, args.port, args.user, args.password, clients=args.clients, seconds=args.seconds,
                procs=args.procs, target=args.target)
    print(r.table())
    print(f"{r.commands / r.seconds:.0f} commands/s, {r.sessions} sessions in {r.seconds:.1f} s, "
          f"{r.errors} errors, generator CPU {100 * r.generator_cpu / r.seconds:.0f} % of one core")
    for ex in r.examples:
        print("  error:", ex)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r.to_json(), f, indent=1)
    sys.exit(1 if r.errors else 0)


if __name__ == "__main__":
    main()
