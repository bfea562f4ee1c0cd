"""Outbound benchmark: messages queued per second and relayed per second.

mailstack runs as its own process with an in-process authoritative DNS server
(``python -m mailstack.testing_dns``) answering MX records for D destination
domains, all pointing at Postfix's ``smtp-sink`` on a loopback port (the remote
MTA). A load generator submits N messages on port 25 from 127.0.0.1 (a relay
network), each to one recipient, spread over the D domains, with C sessions.

Reported: queued/s (N over the time until the last 250: every message was
fsynced into the spool) and relayed/s (N over the time until the spool is empty:
every message was accepted by the sink and its outcome recorded).

    python bench/outbound_bench.py                       # D = 1 and 20, 2000 messages, 10 sessions
    python bench/outbound_bench.py --domains 1,20 --messages 1000 --sessions 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def run_once(domains: int, messages: int, sessions: int, sink: str) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="outbound-bench-", dir=REPO / "var" if (REPO / "var").exists() else None))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sink_port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        procs.append(subprocess.Popen([sink, *user, f"127.0.0.1:{sink_port}", "256"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        names = [f"d{i}.bench.test" for i in range(domains)]
        zones = {n: {"MX": [[10, "mx.bench.test"]]} for n in names}
        zones["mx.bench.test"] = {"A": ["127.0.0.1"]}
        (work / "zones.json").write_text(json.dumps(zones))
        procs.append(subprocess.Popen([sys.executable, "-m", "mailstack.testing_dns", str(work / "zones.json"),
                                       str(work / "dns.port")], env=env()))
        while not (work / "dns.port").exists():
            time.sleep(0.05)
        smtp_port = free_port()
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
port = {sink_port}
mx_networks = ["127.0.0.0/8"]
""")
        log = open(work / "twistd.log", "wb")
        server = subprocess.Popen([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                                   "--pidfile=", "mailstack", "--config", str(config)], stdout=log,
                                  stderr=subprocess.STDOUT, env=env(), cwd=work)
        procs.insert(0, server)
        wait_port(smtp_port)
        wait_port(sink_port)
        rcpts = [f"user{i}@{names[i % domains]}" for i in range(messages)]
        per_session = [rcpts[i::sessions] for i in range(sessions)]
        latencies: list[float] = []

        async def load() -> None:
            await asyncio.gather(*(session(smtp_port, jobs, latencies) for jobs in per_session))

        start = time.monotonic()
        asyncio.run(load())
        queued = time.monotonic() - start
        spool = work / "queue" / "msg"
        while any(spool.iterdir()):
            if time.monotonic() - start > 300:
                raise RuntimeError("the queue did not drain within 300 s")
            time.sleep(0.02)
        relayed = time.monotonic() - start
        failures = (work / "twistd.log").read_bytes().count(b": failed ")
        latencies.sort()
        return {"domains": domains, "messages": messages, "sessions": sessions,
                "queued_per_s": messages / queued, "relayed_per_s": messages / relayed,
                "p50_ms": latencies[len(latencies) // 2] * 1000,
                "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000, "failed": failures}
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", default="1,20")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10)
    args = parser.parse_args()
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(sink).exists():
        sys.exit("smtp-sink (Debian package postfix) is needed as the remote MTA")
    print(f"# outbound_bench {time.strftime('%Y-%m-%d %H:%M:%S %z')}: {os.cpu_count()} CPUs, "
          f"{args.messages} messages of {len(MESSAGE)} octets, {args.sessions} sessions")
    print(f"{'domains':>7} {'messages':>8} {'queued/s':>9} {'relayed/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6}")
    for d in (int(x) for x in args.domains.split(",")):
        r = run_once(d, args.messages, args.sessions, sink)
        print(f"{r['domains']:>7} {r['messages']:>8} {r['queued_per_s']:>9.0f} {r['relayed_per_s']:>9.0f} "
              f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['failed']:>6}")


if __name__ == "__main__":
    main()
