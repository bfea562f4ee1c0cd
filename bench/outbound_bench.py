"""Outbound benchmark: messages queued per second and relayed per second, mailstack and
Postfix on the same workload in the same run.

Each server runs as its own process and relays to Postfix's ``smtp-sink`` on a loopback port
(the remote MTA). A load generator submits N messages of 4 KB on its SMTP port from
127.0.0.1 (a relay network), each to one recipient, with C sessions. Workloads:

- ``smarthost``: everything goes to one configured next hop (mailstack ``relay.smarthost``,
  Postfix ``relayhost``);
- ``mx:D``: recipients spread over D destination domains. mailstack looks up their MX
  records in an in-process authoritative DNS server (``python -m mailstack.testing_dns``)
  pointing at the sink; Postfix, which reads the system's resolver, gets each domain's next
  hop from a transport map instead (the same SMTP work, no DNS).

Reported, median of ``--runs``: queued/s (N over the time until the last 250: every message
was fsynced into the queue) and relayed/s (N over the time until the queue is empty: every
message accepted by the sink and its outcome recorded), and mailstack's ratio to Postfix.
Postfix needs root and Debian's ``postfix`` package (``bench/postfix_peer.py``).

    python bench/outbound_bench.py                             # smarthost, mx:1, mx:20; 2000 messages
    python bench/outbound_bench.py --workloads mx:20 --messages 1000 --sessions 20 --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


MESSAGE = (b"From: bench@bench.test\r\nSubject: outbound bench\r\n\r\n"
           + b"".join(b"line %04d of a four kilobyte message body, padded to a typical length......\r\n" % i
                      for i in range(50)))


async def session(port: int, jobs: list[str], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] == b" ":
                return line

    await reply()
    writer.write(b"EHLO load.bench.test\r\n")
    await reply()
    for rcpt in jobs:
        writer.write(b"MAIL FROM:<bench@bench.test>\r\nRCPT TO:<%s>\r\nDATA\r\n" % rcpt.encode())
        for _ in range(3):
            line = await reply()
        assert line.startswith(b"354"), line
        started = time.monotonic()
        writer.write(MESSAGE + b".\r\n")
        line = await reply()
        assert line.startswith(b"250"), line
        latencies.append(time.monotonic() - started)
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()


def start_sink(sink: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([sink, *user, f"127.0.0.1:{port}", "256"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def load(port: int, rcpts: list[str], sessions: int) -> tuple[float, list[float]]:
    per_session = [rcpts[i::sessions] for i in range(sessions)]
    latencies: list[float] = []

    async def run() -> None:
        await asyncio.gather(*(session(port, jobs, latencies) for jobs in per_session))

    start = time.monotonic()
    asyncio.run(run())
    return start, latencies


def drained(start: float, empty: Any, what: str) -> float:
    while not empty():
        if time.monotonic() - start > 300:
            raise RuntimeError(f"{what}: the queue did not drain within 300 s")
        time.sleep(0.01)
    return time.monotonic() - start


def result(messages: int, start: float, queued_at: float, relayed: float, latencies: list[float],
           failed: int) -> dict[str, float]:
    latencies.sort()
    return {"queued_per_s": messages / (queued_at - start), "relayed_per_s": messages / relayed,
            "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000, "failed": failed}


def recipients(workload: str, messages: int) -> list[str]:
    domains = 1 if workload == "smarthost" else int(workload.split(":")[1])
    return [f"user{i}@d{i % domains}.bench.test" for i in range(messages)]


def run_mailstack(workload: str, messages: int, sessions: int, sink: str, profile: str = "") -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="outbound-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sink_proc, sink_port = start_sink(sink)
        procs.append(sink_proc)
        rcpts = recipients(workload, messages)
        names = sorted({r.split("@")[1] for r in rcpts})
        zones: dict[str, Any] = {n: {"MX": [[10, "mx.bench.test"]]} for n in names}
        zones["mx.bench.test"] = {"A": ["127.0.0.1"]}
        (work / "zones.json").write_text(json.dumps(zones))
        procs.append(subprocess.Popen([sys.executable, "-m", "mailstack.testing_dns", str(work / "zones.json"),
                                       str(work / "dns.port")], env=env()))
        while not (work / "dns.port").exists():
            time.sleep(0.05)
        smtp_port = free_port()
        route = (f'smarthost = "127.0.0.1:{sink_port}"' if workload == "smarthost"
                 else f'port = {sink_port}\nmx_networks = ["127.0.0.0/8"]')
        config = work / "mailstack.toml"
        config.write_text(f"""
hostname = "mail.bench.test"
domains = ["bench.test"]
[listen]
smtp = "127.0.0.1:{smtp_port}"
submission = ""
submissions = ""
pop3 = ""
pop3s = ""
imap = ""
imaps = ""
managesieve = ""
[storage]
accounts = "{work}/accounts.sqlite3"
maildirs = "{work}/maildirs"
queue = "{work}/queue"
[tls]
cert = "{work}/cert.pem"
key = "{work}/key.pem"
[relay]
resolvers = ["127.0.0.1:{(work / 'dns.port').read_text()}"]
{route}
""")
        log = open(work / "twistd.log", "wb")
        profiling = ["--profile", profile, "--profiler", "cprofile", "--savestats"] if profile else []
        server = subprocess.Popen([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                                   "--pidfile=", *profiling, "mailstack", "--config", str(config)], stdout=log,
                                  stderr=subprocess.STDOUT, env=env(), cwd=work)
        procs.insert(0, server)
        wait_port(smtp_port)
        start, latencies = load(smtp_port, rcpts, sessions)
        queued_at = time.monotonic()
        spool = work / "queue" / "msg"
        relayed = drained(start, lambda: not any(spool.iterdir()), "mailstack")
        failed = (work / "twistd.log").read_bytes().count(b": failed ")
        return result(messages, start, queued_at, relayed, latencies, failed)
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


def run_postfix(workload: str, messages: int, sessions: int, sink: str) -> dict[str, float]:
    from postfix_peer import PostfixRelay

    procs: list[subprocess.Popen[bytes]] = []
    try:
        sink_proc, sink_port = start_sink(sink)
        procs.append(sink_proc)
        rcpts = recipients(workload, messages)
        hop = f"[127.0.0.1]:{sink_port}"
        if workload == "smarthost":
            relay = PostfixRelay(free_port(), relayhost=hop)
        else:
            relay = PostfixRelay(free_port(), transports={d: hop for d in sorted({r.split("@")[1] for r in rcpts})})
        with relay:
            wait_port(relay.port)
            start, latencies = load(relay.port, rcpts, sessions)
            queued_at = time.monotonic()
            relayed = drained(start, lambda: relay.queued() == 0, "Postfix")
            log = relay.log()
            failed = log.count("status=bounced") + log.count("status=deferred")
        return result(messages, start, queued_at, relayed, latencies, failed)
    finally:
        stop(procs)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="smarthost,mx:1,mx:20")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-postfix", action="store_true", help="mailstack alone")
    parser.add_argument("--profile", default="", help="mailstack runs under cProfile; its stats go to this file "
                        "(one run: read them with python -m pstats)")
    args = parser.parse_args()
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(sink).exists():
        sys.exit("smtp-sink (Debian package postfix) is needed as the remote MTA")
    sys.path.insert(0, str(Path(__file__).parent))
    from postfix_peer import available

    why = "left out (--no-postfix)" if args.no_postfix else available()
    print(f"# outbound_bench {time.strftime('%Y-%m-%d %H:%M:%S %z')}: {os.cpu_count()} CPUs, "
          f"{args.messages} messages of {len(MESSAGE)} octets, {args.sessions} sessions, median of {args.runs}")
    if why:
        print(f"# Postfix: {why}")
    print(f"{'workload':>10} {'server':>9} {'queued/s':>9} {'relayed/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'failed':>6} {'ratio':>6}")
    for workload in args.workloads.split(","):
        ours = [run_mailstack(workload, args.messages, args.sessions, sink, args.profile) for _ in range(args.runs)]
        theirs = [] if why else [run_postfix(workload, args.messages, args.sessions, sink) for _ in range(args.runs)]
        for name, runs in (("mailstack", ours), ("Postfix", theirs)):
            if not runs:
                continue
            ratio = ""
            if name == "mailstack" and theirs:
                ratio = f"{median(ours, 'relayed_per_s') / median(theirs, 'relayed_per_s'):.2f}x"
            print(f"{workload:>10} {name:>9} {median(runs, 'queued_per_s'):>9.0f} {median(runs, 'relayed_per_s'):>9.0f} "
                  f"{median(runs, 'p50_ms'):>7.1f} {median(runs, 'p99_ms'):>7.1f} "
                  f"{max(r['failed'] for r in runs):>6.0f} {ratio:>6}", flush=True)


if __name__ == "__main__":
    main()
