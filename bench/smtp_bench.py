"""SMTP load generator: messages/s and end-of-DATA latency of mailstack and of an aiosmtpd peer.

For each concurrency N, N sessions run at once, each over one connection (EHLO
once, then MAIL FROM / RCPT TO / DATA repeated), sending messages of K octets to
one local mailbox until the total for that concurrency is sent. Each target runs
as its own process on loopback, on a fresh temporary directory on the disk that
holds the repository, and is stopped with SIGTERM afterwards; then its Maildir is
checked: every message that got a 250 must be in new/ exactly once, intact.

    python bench/smtp_bench.py                        # both targets, 1,10,50 sessions, 2000 x 4 KB
    python bench/smtp_bench.py --target mailstack --sessions 1,10 --messages 500
    python bench/smtp_bench.py --size 65536 --duration-cap 20 --json results.json

Reported per target and concurrency: messages/s from the first connect to the
last final 250, and p50/p99 of the time from writing the end of the data
(``CRLF.CRLF``) to reading the final 250 for it. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Verification,
    build_message,
    cpu_seconds,
    free_port,
    log_problems,
    message_id,
    stop_process,
    verify_maildir,
    wait_for_port,
)

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DOMAIN = "bench.test"
USER = "user"
RECIPIENT = f"{USER}@{DOMAIN}"
SENDER = "loadgen@sender.example"
TARGETS = ("mailstack", "aiosmtpd")
EXTRA_TARGETS = ("mailstack-checks",)  # mailstack with SPF, DKIM and DMARC checks on (see start_mailstack_checks)
REPLY_TIMEOUT = 120.0  # seconds to wait for any one reply before calling the session failed
WARMUP = 5  # untimed messages per run, so first-use costs (store load, imports) are not measured


# -- the servers ---------------------------------------------------------------------------


@dataclass
class Server:
    target: str
    proc: subprocess.Popen[bytes]
    port: int
    maildir: Path  # the recipient's Maildir
    log: Path
    workdir: Path
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)  # e.g. a DNS server


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("MAILSTACK_CONFIG", None)
    return env


def mailstack_config(workdir: Path, port: int, extra: str = "") -> str:
    return f"""\
# written by bench/smtp_bench.py: only the port-25 role listens
hostname = "mail.{DOMAIN}"
domains = ["{DOMAIN}"]

[listen]
smtp = "{HOST}:{port}"
submission = ""
submissions = ""
pop3 = ""
pop3s = ""
imap = ""
imaps = ""
managesieve = ""

[storage]
accounts = "{workdir}/accounts.sqlite3"
maildirs = "{workdir}/maildirs"
queue = "{workdir}/queue"

[tls]
cert = "{workdir}/tls/cert.pem"
key = "{workdir}/tls/key.pem"
self_signed = true
{extra}"""


def start_mailstack_checks(workdir: Path) -> Server:
    """mailstack with the port-25 checks on: the load generator is not a relay network, and the
    sender's domain publishes SPF (pass for 127.0.0.1), a DKIM key and DMARC p=reject on a local
    DNS server, so every message costs an SPF evaluation, a DKIM verification and a DMARC lookup."""
    from mailstack.dkim import KeyDirectory

    domain = SENDER.rpartition("@")[2]
    key = KeyDirectory(workdir / "sender-dkim").generate(domain, "rsa", selector="bench")
    zones = {domain: {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]}, key.record_name(): {"TXT": [key.record_text()]},
             f"_dmarc.{domain}": {"TXT": ["v=DMARC1; p=reject"]}}
    (workdir / "zones.json").write_text(json.dumps(zones))
    dns = subprocess.Popen([sys.executable, "-m", "mailstack.testing_dns", str(workdir / "zones.json"),
                            str(workdir / "dns.port")], env=_env(), cwd=workdir,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (workdir / "dns.port").exists():
        if time.monotonic() > deadline or dns.poll() is not None:
            raise RuntimeError("the local DNS server did not start")
        time.sleep(0.05)
    port = (workdir / "dns.port").read_text().strip()
    # Not a relay network, so the per-address connection cap applies: raised for 50 sessions from one address.
    extra = f'[relay]\nnetworks = []\nresolvers = ["127.0.0.1:{port}"]\n[limits]\nconnections_per_ip = 200\n'
    server = start_mailstack(workdir, extra)
    server.target = "mailstack-checks"
    server.helpers.append(dns)
    return server


def start_mailstack(workdir: Path, extra: str = "") -> Server:
    port = free_port(HOST)
    config = workdir / "mailstack.toml"
    config.write_text(mailstack_config(workdir, port, extra))
    env = _env()
    add = subprocess.run(
        [sys.executable, "-m", "mailstack.cli", "--config", str(config), "user", "add", RECIPIENT, "--password-stdin"],
        input=b"bench-password\n", capture_output=True, env=env, cwd=workdir, timeout=120,
    )
    if add.returncode != 0:
        raise RuntimeError(f"mailstack user add failed ({add.returncode}): {add.stderr.decode().strip()}")
    log = workdir / "twistd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "mailstack", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir,
        )
    server = Server("mailstack", proc, port, workdir / "maildirs" / DOMAIN / USER, log, workdir)
    _wait(server)
    return server


def start_aiosmtpd(workdir: Path) -> Server:
    port = free_port(HOST)
    log = workdir / "peer.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve().parent / "aiosmtpd_peer.py"),
             "--host", HOST, "--port", str(port), "--maildirs", str(workdir / "maildirs"),
             "--domain", DOMAIN, "--user", USER],
            stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=workdir,
        )
    server = Server("aiosmtpd", proc, port, workdir / "maildirs" / DOMAIN / USER, log, workdir)
    _wait(server)
    return server


def _wait(server: Server) -> None:
    try:
        wait_for_port(HOST, server.port, server.proc, timeout=60)
    except RuntimeError as e:
        stop_process(server.proc, timeout=10)
        tail = server.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{server.target}: {e}\n--- {server.log} (tail) ---\n{tail}") from None


STARTERS = {"mailstack": start_mailstack, "aiosmtpd": start_aiosmtpd, "mailstack-checks": start_mailstack_checks}


def signed_prefix(workdir: Path, prefix: bytes, rest: bytes, mid_width: int) -> bytes:
    """``prefix`` with a DKIM signature of the sender's key in front. Message-ID is left out of
    ``h=``, so the one signature is valid for every message of the run (they differ only there)."""
    import dkim as dkimpy

    from mailstack.dkim import KeyDirectory

    domain = SENDER.rpartition("@")[2]
    [key] = KeyDirectory(workdir / "sender-dkim").keys(domain)
    sample = prefix + b"Message-ID: <" + b"x" * (mid_width - 2) + b">\r\n" + rest[: -len(b".\r\n")]
    names = [b"from", b"to", b"subject", b"date", b"mime-version", b"content-type", b"from"]
    signature = dkimpy.sign(sample, b"bench", domain.encode(), key.private_for_signing(),
                            canonicalize=(b"relaxed", b"relaxed"), include_headers=names)
    return bytes(signature) + prefix


# -- the client ------------------------------------------------------------------------------


class SMTPError(Exception):
    pass


class Conn:
    """One client connection; replies are read whole (multi-line aware)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.extensions: set[str] = set()

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(HOST, port)
        conn = cls(reader, writer)
        code, text = await conn.reply()
        if code != 220:
            raise SMTPError(f"greeting: {text!r}")
        writer.write(b"EHLO loadgen.sender.example\r\n")
        code, text = await conn.reply()
        if code != 250:
            raise SMTPError(f"EHLO: {text!r}")
        conn.extensions = {line[4:].split(b" ")[0].strip().upper().decode() for line in text.split(b"\n")[1:] if line}
        return conn

    async def reply(self) -> tuple[int, bytes]:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT)
            if not line:
                raise ConnectionError("connection closed by server" + (f" after {b''.join(lines)!r}" if lines else ""))
            lines.append(line)
            if line[3:4] != b"-":
                break
        text = b"".join(lines)
        try:
            return int(text[:3]), text
        except ValueError:
            raise SMTPError(f"malformed reply {text!r}") from None

    async def close(self) -> None:
        try:
            self.writer.write(b"QUIT\r\n")
            await self.reply()
        except (TimeoutError, OSError, ConnectionError, SMTPError):
            pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


@dataclass
class LoadResult:
    attempted: int = 0
    acknowledged: set[str] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    first_connect: float = 0.0
    last_ok: float = 0.0
    capped: bool = False


async def run_load(port: int, sessions: int, total: int, prefix: bytes, rest: bytes, tag: str,
                   cap: float, pipelining: bool) -> LoadResult:
    res = LoadResult()
    per = [total // sessions + (1 if i < total % sessions else 0) for i in range(sessions)]
    size = len(prefix) + len(b"Message-ID: ") + len(message_id(tag, 0, 0)) + 2 + len(rest) - len(b".\r\n")
    mail_cmd = b"MAIL FROM:<%s> SIZE=%d\r\n" % (SENDER.encode(), size)
    rcpt_cmd = b"RCPT TO:<%s>\r\n" % RECIPIENT.encode()
    envelope_cmds = mail_cmd + rcpt_cmd + b"DATA\r\n"
    head = prefix + b"Message-ID: "
    perf = time.perf_counter
    deadline = math.inf

    def error(what: str) -> None:
        if len(res.errors) < 1000:
            res.errors.append(what)

    async def session(idx: int, count: int) -> None:
        seq = 0
        failures = 0
        while seq < count and failures <= 3:
            try:
                conn = await Conn.open(port)
            except (TimeoutError, OSError, ConnectionError, SMTPError) as e:
                error(f"session {idx}: connect: {e!r}")
                failures += 1
                continue
            pipe = pipelining and "PIPELINING" in conn.extensions
            w, reply = conn.writer, conn.reply
            try:
                while seq < count:
                    if perf() > deadline:
                        res.capped = True
                        break
                    mid = message_id(tag, idx, seq)
                    seq += 1
                    res.attempted += 1
                    if pipe:
                        w.write(envelope_cmds)
                        replies = [await reply(), await reply(), await reply()]
                        bad = [(s, r) for s, r, want in zip(("MAIL", "RCPT", "DATA"), replies, (250, 250, 354), strict=True)
                               if r[0] != want]
                        if bad:
                            error(f"session {idx} {mid.decode()}: " + "; ".join(f"{s}: {r[1]!r}" for s, r in bad))
                            if replies[2][0] == 354:  # refuse the content we would otherwise owe
                                w.write(b".\r\n")
                                await reply()
                            w.write(b"RSET\r\n")
                            await reply()
                            continue
                    else:
                        ok = True
                        for stage, cmd, want in (("MAIL", mail_cmd, 250), ("RCPT", rcpt_cmd, 250), ("DATA", b"DATA\r\n", 354)):
                            w.write(cmd)
                            code, text = await reply()
                            if code != want:
                                error(f"session {idx} {mid.decode()}: {stage}: {text!r}")
                                ok = False
                                break
                        if not ok:
                            w.write(b"RSET\r\n")
                            await reply()
                            continue
                    w.write(head + mid + b"\r\n" + rest)
                    t0 = perf()
                    code, text = await reply()
                    t1 = perf()
                    if code == 250:
                        res.acknowledged.add(mid.decode())
                        res.latencies.append(t1 - t0)
                        if t1 > res.last_ok:
                            res.last_ok = t1
                    else:
                        error(f"session {idx} {mid.decode()}: end of DATA: {text!r}")
            except (TimeoutError, OSError, ConnectionError, SMTPError) as e:
                error(f"session {idx} after {seq} messages: {e!r}")
                failures += 1
                conn.writer.close()
                continue
            await conn.close()
            break

    res.first_connect = perf()
    deadline = res.first_connect + cap
    await asyncio.gather(*(session(i, n) for i, n in enumerate(per) if n))
    return res


async def warm_up(port: int, prefix: bytes, rest: bytes, tag: str) -> set[str]:
    res = await run_load(port, 1, WARMUP, prefix, rest, tag, 60.0, False)
    if res.errors:
        raise RuntimeError("warm-up failed: " + "; ".join(res.errors[:3]))
    return res.acknowledged


# -- one run: start, load, stop, verify --------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class RunResult:
    target: str
    sessions: int
    messages: int  # acknowledged with 250 in the timed part
    attempted: int
    seconds: float
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    delivered: int  # timed-run files found in new/
    verified: bool
    verification: str
    errors: int
    error_samples: list[str]
    server_cpu_s: float
    client_cpu_s: float
    stop_status: int | None
    stop_seconds: float
    capped: bool
    log: str
    log_problems: list[str]


def one_run(target: str, sessions: int, args: argparse.Namespace, base: Path) -> RunResult:
    workdir = Path(tempfile.mkdtemp(prefix=f"smtp-bench-{target}-{sessions}-", dir=base))
    tag = f"{target[:2]}{sessions}x{os.getpid() % 1000:03d}"
    mid_width = len(message_id(tag, 0, 0))
    prefix, rest = build_message(args.size, sender=SENDER, recipient=RECIPIENT, mid_width=mid_width,
                                 line_length=args.line_length)
    expected_tail = rest[: -len(b".\r\n")][-200:]
    server = STARTERS[target](workdir)
    if target == "mailstack-checks":
        prefix = signed_prefix(workdir, prefix, rest, mid_width)
    try:
        warm = asyncio.run(warm_up(server.port, prefix, rest, "warm" + tag))
        cpu0, ccpu0 = cpu_seconds(server.proc.pid), time.process_time()
        load = asyncio.run(run_load(server.port, sessions, args.messages, prefix, rest, tag,
                                    args.duration_cap, args.pipelining))
        cpu1, ccpu1 = cpu_seconds(server.proc.pid), time.process_time()
    finally:
        status, stop_secs = stop_process(server.proc)
        for helper in server.helpers:
            stop_process(helper)
    v: Verification = verify_maildir(server.maildir, load.acknowledged | warm, expected_tail,
                                     queue=workdir / "queue")
    delivered = v.files - len(warm)
    lat = sorted(load.latencies)
    seconds = (load.last_ok - load.first_connect) if load.last_ok else float("nan")
    problems = log_problems(server.log)
    ok = v.ok and not v.unacknowledged
    result = RunResult(
        target=target, sessions=sessions, messages=len(load.acknowledged), attempted=load.attempted,
        seconds=seconds, rate=len(load.acknowledged) / seconds if load.last_ok else 0.0,
        p50_ms=percentile(lat, 0.50) * 1000, p99_ms=percentile(lat, 0.99) * 1000,
        max_ms=(lat[-1] * 1000 if lat else float("nan")), delivered=delivered, verified=ok,
        verification=v.summary(),
        errors=len(load.errors), error_samples=load.errors[:10], server_cpu_s=cpu1 - cpu0,
        client_cpu_s=ccpu1 - ccpu0, stop_status=status, stop_seconds=stop_secs, capped=load.capped,
        log=str(server.log), log_problems=problems,
    )
    if not (args.keep or not ok or load.errors or problems or status != 0):  # otherwise kept for inspection
        shutil.rmtree(workdir, ignore_errors=True)
        result.log = ""
    return result


# -- reporting -----------------------------------------------------------------------------------


COLUMNS = ("target", "sessions", "messages", "seconds", "msg/s", "p50 ms", "p99 ms", "delivered",
           "errors", "srv cpu%", "gen cpu%")


def row(r: RunResult) -> tuple[str, ...]:
    def pct(cpu: float) -> str:
        ok = r.seconds > 0 and not math.isnan(cpu)  # nan compares False
        return f"{100 * cpu / r.seconds:.0f}" if ok else "-"

    delivered = f"{r.delivered}" + ("" if r.verified else " !")
    return (r.target, str(r.sessions), str(r.messages) + ("*" if r.capped else ""), f"{r.seconds:.2f}",
            f"{r.rate:.0f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}", delivered, str(r.errors),
            pct(r.server_cpu_s), pct(r.client_cpu_s))


def table(results: list[RunResult]) -> str:
    rows = [COLUMNS] + [row(r) for r in results]
    widths = [max(len(x[i]) for x in rows) for i in range(len(COLUMNS))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))  # noqa: E731
    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(x) for x in rows[1:]]
    return "\n".join(lines)


def _exit(status: int | None) -> str:
    if status is None:
        return "HUNG (killed)"
    if status < 0:
        return f"ENDED BY SIGNAL {signal.Signals(-status).name} (not a clean exit)"
    return "exit 0" if status == 0 else f"EXIT STATUS {status}"


def versions() -> str:
    def v(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    return (f"Python {platform.python_version()}, Twisted {v('Twisted')}, aiosmtpd {v('aiosmtpd')}, "
            f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}")


def disk_ceiling(base: Path, threads: int, seconds: float = 1.5, size: int = 4096) -> float:
    """Durable deliveries/s the disk allows with no server at all: write a file in tmp/,
    fsync it, rename it into new/, fsync new/ (what every 250 costs both targets)."""
    import threading

    root = Path(tempfile.mkdtemp(prefix="disk-", dir=base))
    (root / "tmp").mkdir()
    (root / "new").mkdir()
    data = b"x" * size
    done = [0] * threads
    stop = time.monotonic() + seconds

    def work(tid: int) -> None:
        n = 0
        new_fd = os.open(root / "new", os.O_RDONLY)
        try:
            while time.monotonic() < stop:
                name = f"{tid}.{n}"
                fd = os.open(root / "tmp" / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, data)
                os.fsync(fd)
                os.close(fd)
                os.rename(root / "tmp" / name, root / "new" / name)
                os.fsync(new_fd)
                n += 1
        finally:
            os.close(new_fd)
        done[tid] = n

    started = time.monotonic()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    shutil.rmtree(root, ignore_errors=True)
    return sum(done) / elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--sessions", default="1,10,50", help="comma-separated concurrencies (default 1,10,50)")
    p.add_argument("--messages", type=int, default=2000, help="messages per concurrency, all sessions together (default 2000)")
    p.add_argument("--size", type=int, default=4096, help="message size in octets (default 4096)")
    p.add_argument("--line-length", type=int, default=72, metavar="L",
                   help="body line length in characters, 20..998 (default 72; RFC 5322 recommends <= 78)")
    p.add_argument("--target", choices=TARGETS + EXTRA_TARGETS + ("both", "checks"), default="both",
                   help="both: mailstack and aiosmtpd; checks: mailstack with checks off, then on")
    p.add_argument("--duration-cap", type=float, default=30.0, metavar="S",
                   help="stop starting new messages after S seconds per run (default 30); capped runs are marked *")
    p.add_argument("--pipelining", action="store_true",
                   help="send MAIL, RCPT and DATA in one write where the server offers PIPELINING (RFC 2920)")
    p.add_argument("--repeat", type=int, default=1, metavar="R",
                   help="run every target and concurrency R times and tabulate the median run (default 1)")
    p.add_argument("--workdir", type=Path, default=REPO / "var" / "bench",
                   help="where temporary server directories go; put it on the disk you measure (default var/bench)")
    p.add_argument("--keep", action="store_true", help="keep each run's directory (config, log, Maildir)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    try:
        concurrencies = [int(x) for x in args.sessions.split(",") if x.strip()]
    except ValueError:
        p.error("--sessions takes comma-separated integers, e.g. 1,10,50")
    if not concurrencies or min(concurrencies) < 1 or args.messages < 1:
        p.error("--sessions and --messages must be positive")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if not 20 <= args.line_length <= 998:
        p.error("--line-length must be between 20 and 998")
    targets = {"both": TARGETS, "checks": ("mailstack", "mailstack-checks")}.get(args.target, (args.target,))
    args.workdir.mkdir(parents=True, exist_ok=True)

    print(f"# smtp_bench {time.strftime('%Y-%m-%d %H:%M:%S %z')}: {versions()}", flush=True)
    print(f"# {args.messages} messages of {args.size} octets (body lines <= {args.line_length} characters) per "
          f"concurrency, duration cap {args.duration_cap:.0f}s, "
          f"{'pipelined' if args.pipelining else 'lock-step'} commands, workdir {args.workdir}", flush=True)
    print(f"# disk ceiling (no server: tmp/ write + fsync, rename, fsync new/): "
          f"{disk_ceiling(args.workdir, 1):.0f}/s with 1 thread, {disk_ceiling(args.workdir, 10):.0f}/s with 10",
          flush=True)
    results: list[RunResult] = []
    failed = False
    # interleaved (each concurrency on every target in turn), so drift in the machine's
    # background load does not all land on one target
    for rep, n, target in ((rep, n, t) for n in concurrencies for rep in range(args.repeat) for t in targets):
        load1 = os.getloadavg()[0]
        again = f" run {rep + 1}/{args.repeat}" if args.repeat > 1 else ""
        print(f"{target}, {n} session(s){again} [load {load1:.2f}] ...", end=" ", flush=True)
        try:
            r = one_run(target, n, args, args.workdir)
        except Exception as e:  # report and go on with the next run
            print(f"FAILED: {e}", flush=True)
            failed = True
            continue
        results.append(r)
        print(f"{r.messages} in {r.seconds:.2f}s = {r.rate:.0f}/s, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms; "
              f"{'verified' if r.verified else 'VERIFICATION FAILED'}: {r.verification}; "
              f"SIGTERM: {_exit(r.stop_status)} in {r.stop_seconds:.1f}s", flush=True)
        for e in r.error_samples:
            print(f"    error: {e}", flush=True)
        if r.errors > len(r.error_samples):
            print(f"    ... {r.errors - len(r.error_samples)} more errors", flush=True)
        if r.log_problems:
            print(f"    log lines worth a look ({r.log}):", flush=True)
            for line in r.log_problems:
                print(f"    | {line}", flush=True)
        failed |= not r.verified or bool(r.errors) or r.stop_status != 0
    print()
    shown = []
    for target in targets:
        for n in concurrencies:
            runs = sorted((r for r in results if r.target == target and r.sessions == n), key=lambda r: r.rate)
            if runs:
                shown.append(runs[(len(runs) - 1) // 2])
    if args.repeat > 1:
        print(f"median run (by msg/s) of {args.repeat} per row; every run is listed above")
    print(table(shown))
    if any(r.capped for r in results):
        print("* stopped early by --duration-cap")
    if any(not r.verified for r in results):
        print("! Maildir verification failed (see the run lines above)")
    if any(r.stop_status != 0 for r in results):
        print("some servers did not exit 0 after SIGTERM (see the run lines above)")
    if args.json:
        args.json.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "env": versions(),
                                         "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": [asdict(r) for r in results]}, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
