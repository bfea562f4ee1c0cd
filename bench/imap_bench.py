"""IMAP benchmark: an imaptest-style, login-heavy mix against mailstack and Dovecot in one run.

1. The mix (``imap_mix.py``): N clients (default 10), each looping over short
   sessions (connect, LOGIN, LIST/STATUS half the time, SELECT INBOX,
   FETCH 1:* (UID FLAGS), UID FETCH of 1 to 3 bodies, STORE +/-\\Seen half the
   time, STORE \\Deleted + EXPUNGE, APPEND, NOOP, LOGOUT) for a fixed time,
   first against mailstack, then against Dovecot (its default setup, then its
   high-performance one, --dovecot-tuning), each over its own copy of the
   same Maildirs. mailstack's accounts are added with its CLI, so their
   passwords are argon2id hashes; Dovecot reads a passwd-file (--dovecot-scheme).
   Reports commands/s, p50/p99 per command, errors, the servers' CPU and the
   peak memory of each server's process tree (sampled from /proc), and the
   ratios mailstack/Dovecot.
2. First SELECT of a big folder (default 100,000 messages, written straight
   into ``cur/``, without any index): a fresh connection and LOGIN, then the
   timed SELECT, which has to build the server's index; then
   UID FETCH 1:* (FLAGS), a SELECT in a second session, SORT (DATE), SORT
   (SUBJECT) and THREAD REFERENCES over the folder (each twice: the second
   finds what the first read in the server's caches; and once more after a
   restart of the server), a QRESYNC resync (a
   client that saw the folder comes back after 100 changes by another session,
   80 flag changes and 20 expunges, and gives SELECT INBOX (QRESYNC (...)); then
   UID FETCH 1:* (FLAGS) (CHANGEDSINCE ... VANISHED)), and a SELECT after a
   restart of the server.

    python bench/imap_bench.py                          # both servers, about 2 minutes
    python bench/imap_bench.py --seconds 5 --big 10000  # a quick run
    python bench/imap_bench.py --no-dovecot --json out.json

Both servers listen on free loopback ports, without TLS and with plaintext
LOGIN allowed (``tls.allow_plaintext_auth = true`` for mailstack), in a fresh
temporary directory that is removed afterwards (--keep keeps it). Dovecot
(``apt-get install dovecot-imapd``) runs as its own foreground instance from a
generated config (``dovecot_peer.py``); a system Dovecot is neither needed nor
touched.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port, log_problems, stop_process, wait_for_port  # noqa: E402
from dovecot_peer import SCHEMES, TUNINGS, Dovecot  # noqa: E402
from imap_mix import STEPS, Connection, MixResult, Stats, _quote, run_mix  # noqa: E402
from proctree import TreeSampler, hwm, rss, tree  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "bench password 1"
DOMAIN = "example.test"


# -- Maildirs -----------------------------------------------------------------------------------


def message(i: int, lines: int = 8) -> bytes:
    """A small message (about 700 octets with the default 8 body lines), CRLF line ends."""
    body = "".join(f"line {n} of message {i}: the quick brown fox jumps over the lazy dog\r\n"
                   for n in range(lines))
    return (f"From: Sender {i % 17} <sender{i % 17}@example.org>\r\nTo: user@{DOMAIN}\r\n"
            f"Subject: benchmark message {i}\r\nDate: Mon, 23 Nov 2026 10:{i % 60:02d}:00 +0000\r\n"
            f"Message-ID: <bench-{i}@example.org>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n{body}").encode()


def fill_maildir(path: Path, count: int, start: int = 1_700_000_000, lines: int = 8) -> None:
    """Write *count* messages straight into ``cur/`` (seen by a client before, no index anywhere).

    Names follow the Maildir++ convention both servers read: ``,S=`` is the size
    (and ``,W=`` the size with CRLF line ends, the same here), ``:2,`` the flags.
    """
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    cur = str(path / "cur")
    flags = ("", "S", "", "FS", "S")
    for i in range(count):
        data = message(i, lines)
        name = f"{cur}/{start + i}.M{i % 1_000_000}P1Q{i}.bench,S={len(data)},W={len(data)}:2,{flags[i % 5]}"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.utime(name, (start + i, start + i))


def link_maildir(source: Path, target: Path) -> None:
    """Hard-link every message of *source* into a new Maildir *target* (the files are never changed in place)."""
    for sub in ("tmp", "new", "cur"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("new", "cur"):
        src, dst = str(source / sub), str(target / sub)
        for name in os.listdir(src):
            os.link(f"{src}/{name}", f"{dst}/{name}")


# -- mailstack ----------------------------------------------------------------------------------


class Mailstack:
    name = "mailstack"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = root / "mailstack.toml"
        self.log = root / "twistd.log"
        self.config.write_text(f"""# generated by bench/imap_bench.py
hostname = "mail.{DOMAIN}"
domains = ["{DOMAIN}"]
[listen]
smtp = ""
submission = ""
submissions = ""
pop3 = ""
pop3s = ""
imap = "127.0.0.1:{self.port}"
imaps = ""
managesieve = ""
[storage]
accounts = "{root}/var/accounts.sqlite3"
maildirs = "{root}/maildirs"
queue = "{root}/var/queue"
[tls]
cert = "{root}/var/tls/cert.pem"
key = "{root}/var/tls/key.pem"
self_signed = true
allow_plaintext_auth = true
[limits]
connections_per_ip = 1000
""")
        self.proc: subprocess.Popen[bytes] | None = None
        self.bad_exits: list[int | None] = []  # statuses other than 0 after SIGTERM (None: had to be killed)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def add_user(self, user: str) -> None:
        """``mailstack user add --password-stdin``: the store keeps an argon2id hash."""
        subprocess.run([sys.executable, "-m", "mailstack.cli", "--config", str(self.config), "user", "add",
                        user, "--password-stdin"], input=PASSWORD + "\n", text=True, check=True,
                       env=self.env(), capture_output=True)

    def maildir(self, user: str) -> Path:
        local, domain = user.split("@")
        return self.root / "maildirs" / domain / local

    def version(self) -> str:
        try:
            rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, timeout=10).stdout.strip()
        except OSError:
            rev = "?"
        return f"mailstack {rev}, Python {platform.python_version()}, Twisted {metadata.version('twisted')}"

    def start(self) -> None:
        """``twistd -n mailstack --config ...`` with this checkout on PYTHONPATH."""
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                                      "-n", "--pidfile=", "mailstack", "--config", str(self.config)],
                                     cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=self.env())
        wait_for_port("127.0.0.1", self.port, self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            status, _ = stop_process(self.proc)
            if status != 0:
                self.bad_exits.append(status)

    def problems(self) -> list[str]:
        return log_problems(self.log, limit=20)


def make_dovecot(root: Path, scheme: str, tuning: str) -> Dovecot:
    d = Dovecot(root, free_port(), PASSWORD, scheme, tuning)
    if tuning != "default":
        d.name = f"dovecot-{tuning[:4]}"
    return d


def dovecot_problems(d: Dovecot) -> list[str]:
    out = []
    for name in ("dovecot.log", "dovecot.err"):
        for line in log_problems(d.root / name, limit=20):
            if "Killed with signal 15" not in line:  # its master logs how the bench stopped it
                out.append(line)
    return out


# -- the mix ------------------------------------------------------------------------------------


def measure_mix(server, users: list[str], args: argparse.Namespace) -> dict[str, object]:  # type: ignore[no-untyped-def]
    server.start()
    try:
        sampler = TreeSampler(server.pid, interval=args.sample_interval)
        sampler.start()
        result = run_mix("127.0.0.1", server.port, users, PASSWORD, clients=args.clients, seconds=args.seconds,
                         procs=args.procs, target=args.target)
        memory = sampler.finish()
        root_hwm = hwm(server.pid)
    finally:
        server.stop()
    return {"result": result, "memory": memory, "root_hwm": root_hwm, "server_cpu": sampler.cpu,
            "wall": sampler.wall, "loadavg": os.getloadavg()[0]}


def print_mix(runs: dict[str, dict[str, object]], args: argparse.Namespace, title: str = "") -> None:
    names = list(runs)
    width = 15
    print(f"\n{title}IMAP mix: {args.clients} clients, {args.seconds:g} s, folders kept at {args.target} messages")
    others = names[1:]
    head = f"{'':31s}" + "".join(f"{n:>{width}s}" for n in names)
    head += "".join(f"{'ms/' + n:>{width + 3}s}" for n in others)
    print(head)

    def row(label: str, values: list[float], fmt: str = "{:.0f}", ratio: bool = True) -> None:
        line = f"{label:31s}" + "".join(f"{fmt.format(v):>{width}s}" for v in values)
        if ratio:
            line += "".join(f"{(values[0] / v) if v else float('nan'):>{width + 3}.2f}" for v in values[1:])
        print(line)

    results: list[MixResult] = [runs[n]["result"] for n in names]  # type: ignore[misc]
    mems = [runs[n]["memory"] for n in names]
    row("commands/s", [r.rate for r in results])
    row("sessions (logins)/s", [r.sessions / r.seconds for r in results])
    row("p50 ms, all commands", [r.all_p50 for r in results], "{:.2f}")
    row("p99 ms, all commands", [r.all_p99 for r in results], "{:.2f}")
    row("errors", [r.errors for r in results], ratio=False)
    row("peak RSS MB, sum over the tree", [m.peak_rss / 1e6 for m in mems])  # type: ignore[attr-defined]
    row("RSS MB at the end, sum", [m.last_rss / 1e6 for m in mems])  # type: ignore[attr-defined]
    row("peak PSS MB, sum over the tree", [m.peak_pss / 1e6 for m in mems])  # type: ignore[attr-defined]
    row("largest VmHWM MB, one process", [max(m.peak_hwm, runs[n]["root_hwm"]) / 1e6  # type: ignore[attr-defined]
                                           for n, m in zip(names, mems, strict=True)])
    row("processes (most at once)", [m.peak_procs for m in mems], ratio=False)  # type: ignore[attr-defined]
    row("server CPU % of one core", [100 * runs[n]["server_cpu"] / runs[n]["wall"] for n in names])  # type: ignore[operator]
    row("main thread running, % (R)", [100 * m.state_share("R") for m in mems], ratio=False)  # type: ignore[attr-defined]
    row("main thread in disk wait, % (D)", [100 * m.state_share("D") for m in mems], ratio=False)  # type: ignore[attr-defined]
    row("generator CPU % of one core", [100 * r.generator_cpu / r.seconds for r in results], ratio=False)
    row("load average (1 min) after", [runs[n]["loadavg"] for n in names], "{:.2f}", ratio=False)  # type: ignore[misc]

    cell = 29
    print(f"\n{'p50 / p99 ms (count)':16s}" + "".join(f"{n:>{cell}s}" for n in names))
    for step in STEPS:
        cells = []
        for r in results:
            s = r.per_step[step]
            err = f" !{int(s['errors'])}" if s["errors"] else ""
            cells.append(f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f} ({int(s['count'])}){err}")
        print(f"{step:16s}" + "".join(f"{c:>{cell}s}" for c in cells))
    for n, r in zip(names, results, strict=True):
        if r.per_step["session"]["errors"]:
            print(f"{n}: {int(r.per_step['session']['errors'])} sessions broke off")
        for ex in r.examples:
            print(f"{n} error: {ex}")


# -- the big folder -----------------------------------------------------------------------------


async def _select_once(port: int, user: str, fetch_flags: bool, index: Path | None) -> dict[str, float]:
    stats = Stats()
    t = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    try:
        await reader.readline()
        c = Connection(reader, writer, stats)
        ok, _ = await c.command("LOGIN", b"LOGIN " + _quote(user) + b" " + _quote(PASSWORD))
        login = time.perf_counter() - t
        if not ok:
            raise RuntimeError(f"LOGIN failed: {stats.examples}")
        index_before = float(index is not None and index.exists())
        t = time.perf_counter()
        ok, untagged = await c.command("SELECT", b"SELECT INBOX")
        select = time.perf_counter() - t
        if not ok:
            raise RuntimeError(f"SELECT failed: {stats.examples}")
        exists = next(int(line.split()[1]) for line in untagged if line.upper().endswith(b" EXISTS\r\n"))
        out = {"login": login, "select": select, "exists": exists, "index_before_select": index_before}
        if fetch_flags:
            t = time.perf_counter()
            ok, untagged = await c.command("FETCH", b"UID FETCH 1:* (FLAGS)")
            out["fetch_flags"] = time.perf_counter() - t
            out["fetched"] = len(untagged)
        await c.command("LOGOUT", b"LOGOUT")
        return out
    finally:
        writer.close()


def select_once(port: int, user: str, fetch_flags: bool = False, index: Path | None = None) -> dict[str, float]:
    """Connect, LOGIN, time one SELECT INBOX (and UID FETCH 1:* (FLAGS)), LOGOUT.

    *index* is the server's index file for the folder: whether it existed after
    LOGIN, before SELECT, is reported (the first SELECT is meant to build it).
    """
    return asyncio.run(_select_once(port, user, fetch_flags, index))


SORT_THREAD = (("sort_date", b"SORT (DATE) US-ASCII ALL"), ("sort_subject", b"SORT (SUBJECT) US-ASCII ALL"),
               ("thread_refs", b"THREAD REFERENCES US-ASCII ALL"))


async def _sort_thread(port: int, user: str, attempts: tuple[str, ...] = ("", "_again")) -> dict[str, float]:
    """SORT by date and by subject, THREAD REFERENCES over the whole folder: each twice, ms."""
    stats = Stats()
    stats.latencies.update({key: [] for key, _ in SORT_THREAD})
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 26)
    try:
        await reader.readline()
        c = Connection(reader, writer, stats)
        await c.command("LOGIN", b"LOGIN " + _quote(user) + b" " + _quote(PASSWORD))
        await c.command("SELECT", b"SELECT INBOX")
        out: dict[str, float] = {}
        for attempt in attempts:
            for key, command in SORT_THREAD:
                t = time.perf_counter()
                ok, untagged = await c.command(key, command)
                out[key + attempt + "_ms"] = (time.perf_counter() - t) * 1000 if ok else float("nan")
        await c.command("LOGOUT", b"LOGOUT")
        return out
    finally:
        writer.close()


async def _session(port: int, user: str) -> tuple[Connection, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 26)
    await reader.readline()
    stats = Stats()
    stats.latencies = collections.defaultdict(list)  # any command name
    c = Connection(reader, writer, stats)
    ok, _ = await c.command("LOGIN", b"LOGIN " + _quote(user) + b" " + _quote(PASSWORD))
    if not ok:
        raise RuntimeError("LOGIN failed")
    return c, writer


def _code(lines: list[bytes], name: bytes) -> int:
    for line in lines:
        if b"[" + name + b" " in line:
            return int(line.split(b"[" + name + b" ", 1)[1].split(b"]", 1)[0])
    raise RuntimeError(f"no {name.decode()} in the SELECT answer")


async def _qresync(port: int, user: str, changes: int) -> dict[str, float]:
    """A client that saw the folder comes back after ``changes`` changes by another session
    (four in five flag changes, the rest expunges): time its SELECT (QRESYNC ...), which
    must bring exactly those changes, and a UID FETCH (CHANGEDSINCE) of the same."""
    c, writer = await _session(port, user)
    await c.command("ENABLE", b"ENABLE QRESYNC")
    ok, lines = await c.command("SELECT", b"SELECT INBOX")
    uidvalidity, modseq = _code(lines, b"UIDVALIDITY"), _code(lines, b"HIGHESTMODSEQ")
    exists = next(int(line.split()[1]) for line in lines if line.upper().endswith(b" EXISTS\r\n"))
    await c.command("LOGOUT", b"LOGOUT")
    writer.close()
    step = max(1, exists // changes)
    picked = list(range(1, exists + 1, step))[:changes]  # spread over the folder (UIDs are 1..n)
    flagged, deleted = picked[: changes * 4 // 5], picked[changes * 4 // 5:]
    c, writer = await _session(port, user)
    await c.command("SELECT", b"SELECT INBOX")
    await c.command("STORE", b"UID STORE " + ",".join(map(str, flagged)).encode() + b" +FLAGS.SILENT (\\Flagged)")
    await c.command("STORE", b"UID STORE " + ",".join(map(str, deleted)).encode() + b" +FLAGS.SILENT (\\Deleted)")
    await c.command("EXPUNGE", b"UID EXPUNGE " + ",".join(map(str, deleted)).encode())
    await c.command("LOGOUT", b"LOGOUT")
    writer.close()
    c, writer = await _session(port, user)
    await c.command("ENABLE", b"ENABLE QRESYNC")
    t = time.perf_counter()
    ok, lines = await c.command("SELECT", b"SELECT INBOX (QRESYNC (%d %d))" % (uidvalidity, modseq))
    resync = time.perf_counter() - t
    fetches = sum(1 for line in lines if b" FETCH " in line)
    vanished = [line for line in lines if line.startswith(b"* VANISHED")]
    told = sum(len(range(int(a), int(b or a) + 1)) for part in
               (vanished[0].split()[-1].split(b",") if vanished else [])
               for a, _, b in [part.partition(b":")])
    t = time.perf_counter()
    ok2, again = await c.command("FETCH", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % modseq)
    changedsince = time.perf_counter() - t
    await c.command("LOGOUT", b"LOGOUT")
    writer.close()
    if not ok or fetches != len(flagged) or told != len(deleted):
        print(f"  QRESYNC: {fetches} FETCH for {len(flagged)} flagged, VANISHED of {told} for {len(deleted)} "
              f"expunged {'' if ok else '(SELECT failed)'}")
    return {"qresync_ms": resync * 1000, "changedsince_ms": changedsince * 1000 if ok2 else float("nan"),
            "qresync_fetches": fetches, "qresync_vanished": told}


def measure_big(server, user: str, source: Path, count: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    link_maildir(source, server.maildir(user))
    linked = time.perf_counter() - t
    server.start()
    try:
        sampler = TreeSampler(server.pid, interval=0.02)
        sampler.start()
        index = server.maildir(user) / ("mailstack-index" if isinstance(server, Mailstack) else "dovecot-uidlist")
        first = select_once(server.port, user, fetch_flags=True, index=index)
        if first["index_before_select"]:
            print(f"  {server.name}: {index.name} existed before the first SELECT (built at LOGIN?)")
        rss_after = sum(rss(p) for p in tree(server.pid))
        again = select_once(server.port, user)
        sorting = asyncio.run(_sort_thread(server.port, user))
        sorting.update(asyncio.run(_qresync(server.port, user, 100)))
        memory = sampler.finish()
        root_hwm = hwm(server.pid)
    finally:
        server.stop()
    server.start()
    try:
        restarted = select_once(server.port, user)
        sorting.update(asyncio.run(_sort_thread(server.port, user, ("_restarted",))))
    finally:
        server.stop()
    if first["exists"] != count or first.get("fetched") != count:
        print(f"  {server.name}: SELECT saw {first['exists']} messages, FETCH returned {first.get('fetched')}, "
              f"expected {count}")
    return {"count": count, "login_ms": first["login"] * 1000, "first_ms": first["select"] * 1000,
            "fetch_flags_ms": first["fetch_flags"] * 1000, "again_ms": again["select"] * 1000,
            "restart_ms": restarted["select"] * 1000, "restart_login_ms": restarted["login"] * 1000,
            "rss_after_mb": rss_after / 1e6, "peak_rss_mb": memory.peak_rss / 1e6, "largest_hwm_mb": max(memory.peak_hwm, root_hwm) / 1e6,
            "linked_s": linked, **sorting}


def print_sorting(rows: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\n{'server':12s} {'messages':>8s} {'SORT DATE':>10s} {'again':>7s} {'restarted':>9s} "
          f"{'SORT SUBJECT':>12s} {'again':>7s} {'restarted':>9s} {'THREAD REFS':>11s} {'again':>7s} "
          f"{'restarted':>9s}   (ms)")
    for name, r in rows:
        print(f"{name:12s} {int(r['count']):8d} {r['sort_date_ms']:10.0f} {r['sort_date_again_ms']:7.0f} "
              f"{r['sort_date_restarted_ms']:9.0f} {r['sort_subject_ms']:12.0f} {r['sort_subject_again_ms']:7.0f} "
              f"{r['sort_subject_restarted_ms']:9.0f} {r['thread_refs_ms']:11.0f} {r['thread_refs_again_ms']:7.0f} "
              f"{r['thread_refs_restarted_ms']:9.0f}")


def print_resync(rows: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\n{'server':12s} {'messages':>8s} {'SELECT (QRESYNC) after 100 changes':>35s} "
          f"{'UID FETCH (CHANGEDSINCE VANISHED)':>34s}   (ms)")
    for name, r in rows:
        print(f"{name:12s} {int(r['count']):8d} {r['qresync_ms']:35.1f} {r['changedsince_ms']:34.1f}")


def print_big(rows: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\n{'server':12s} {'messages':>8s} {'LOGIN':>7s} {'first SELECT':>12s} {'FETCH FLAGS':>11s} "
          f"{'again':>7s} {'restarted':>9s} {'RSS after':>9s} {'peak RSS':>8s} {'VmHWM':>6s}   (ms; MB)")
    for name, r in rows:
        print(f"{name:12s} {int(r['count']):8d} {r['login_ms']:7.0f} {r['first_ms']:12.0f} {r['fetch_flags_ms']:11.0f} "
              f"{r['again_ms']:7.0f} {r['restart_ms']:9.0f} {r['rss_after_mb']:9.0f} {r['peak_rss_mb']:8.0f} "
              f"{r['largest_hwm_mb']:6.0f}")


# -- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients in the mix (default 10)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each mix run (default 20)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the mix this many times, the servers taking turns (default 1)")
    parser.add_argument("--procs", type=int, default=1, help="load generator processes (default 1)")
    parser.add_argument("--target", type=int, default=30, help="messages per mix folder (default 30)")
    parser.add_argument("--users", type=int, default=0, help="accounts for the mix (default: one per client)")
    parser.add_argument("--big", default="100000",
                        help="comma-separated sizes of the big-folder SELECT test; 0 skips it (default 100000)")
    parser.add_argument("--no-mix", action="store_true", help="skip the mix")
    parser.add_argument("--no-dovecot", action="store_true")
    parser.add_argument("--dovecot-scheme", choices=SCHEMES, default="SHA512-CRYPT",
                        help="password scheme in Dovecot's passwd-file (default SHA512-CRYPT)")
    parser.add_argument("--dovecot-tuning", default="default,performance",
                        help="comma-separated Dovecot setups to run the mix against: 'default' (a new login and "
                             "imap process per connection) and/or 'performance' (long-lived, reused processes); "
                             "the big-folder test uses the first (default: default,performance)")
    parser.add_argument("--sample-interval", type=float, default=0.02, help="seconds between RSS samples")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", type=Path, help="write all figures here")
    args = parser.parse_args()
    big_counts = [int(x) for x in args.big.split(",") if int(x) > 0]
    tunings = [t for t in args.dovecot_tuning.split(",") if t]
    for t in tunings:
        if t not in TUNINGS:
            parser.error(f"--dovecot-tuning: {t!r} is not one of {', '.join(TUNINGS)}")

    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="imap-bench-", dir=args.workdir))
    base.chmod(0o755)  # Dovecot's auth and mail processes run as other users
    use_dovecot = not args.no_dovecot and Dovecot.available()
    if not args.no_dovecot and not use_dovecot:
        print("dovecot not installed (apt-get install dovecot-imapd): mailstack only")
    mailstack = Mailstack(base / "mailstack")
    dovecots = [make_dovecot(base / f"dovecot-{t}", args.dovecot_scheme, t) for t in tunings] if use_dovecot else []
    dovecot = dovecots[0] if dovecots else None
    servers: list[Mailstack | Dovecot] = [mailstack, *dovecots]
    print(f"{mailstack.version()}; {('Dovecot ' + dovecot.version() + ', passwd-file ' + args.dovecot_scheme) if dovecot else 'no Dovecot'}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {base}")
    report: dict[str, object] = {"args": {k: str(v) for k, v in vars(args).items()},
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "loadavg_start": os.getloadavg()}
    failed = False
    try:
        users = [f"user{i}@{DOMAIN}" for i in range(args.users or args.clients)]
        big_users = [f"big{n}@{DOMAIN}" for n in big_counts]
        for server in servers:
            for user in users + big_users:
                server.add_user(user)
        if not args.no_mix:
            source = base / "mix-source"
            fill_maildir(source, args.target)
            for server in servers:
                for user in users:
                    link_maildir(source, server.maildir(user))
            rounds: list[dict[str, dict[str, object]]] = []
            for n in range(args.rounds):
                runs = {}
                for server in servers:
                    runs[server.name] = measure_mix(server, users, args)
                    r: MixResult = runs[server.name]["result"]  # type: ignore[assignment]
                    print(f"round {n + 1}, {server.name}: {r.rate:.0f} commands/s, {r.errors} errors, "
                          f"load average {runs[server.name]['loadavg']:.2f}")
                    failed |= bool(r.errors)
                rounds.append(runs)
                print_mix(runs, args, f"round {n + 1} of {args.rounds}: " if args.rounds > 1 else "")
            if args.rounds > 1:
                print("\ncommands/s by round (median)")
                for server in servers:
                    rates = [rn[server.name]["result"].rate for rn in rounds]  # type: ignore[attr-defined]
                    print(f"  {server.name:14s} " + "  ".join(f"{x:6.0f}" for x in rates)
                          + f"   ({statistics.median(rates):.0f})")
            report["mix"] = [{n: {"result": v["result"].to_json(), "memory": vars(v["memory"]),  # type: ignore[attr-defined]
                                  "root_hwm": v["root_hwm"], "server_cpu_s": v["server_cpu"], "wall_s": v["wall"],
                                  "loadavg": v["loadavg"]}
                              for n, v in runs.items()} for runs in rounds]
        big_rows: list[tuple[str, dict[str, float]]] = []
        for count, user in zip(big_counts, big_users, strict=True):
            source = base / f"big-source-{count}"
            t = time.perf_counter()
            fill_maildir(source, count)
            print(f"\nwrote {count} messages into {source}/cur in {time.perf_counter() - t:.1f} s")
            for server in servers[:2]:  # mailstack and the first Dovecot setup
                big_rows.append((server.name, measure_big(server, user, source, count)))
            shutil.rmtree(source)
        if big_rows:
            print_big(big_rows)
            print_sorting(big_rows)
            print_resync(big_rows)
            report["big"] = [{"server": n, **r} for n, r in big_rows]
        for server in servers:
            problems = server.problems() if isinstance(server, Mailstack) else dovecot_problems(server)
            if problems:
                print(f"\n{server.name} log ({len(problems)} lines that look like trouble):")
                for line in problems[:20]:
                    print("  " + line)
        if mailstack.bad_exits:
            print(f"mailstack did not exit 0 after SIGTERM: {mailstack.bad_exits} (None: killed)")
            failed = True
    except BaseException:
        failed = True  # keep the directory and its logs
        raise
    finally:
        for server in servers:
            server.stop()
        if args.keep or failed:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\nwhole run: {time.monotonic() - started:.0f} s; load average now {os.getloadavg()[0]:.2f}")
    report["loadavg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
