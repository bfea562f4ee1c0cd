"""How long the ``mailstack`` pytest fixture takes to start and stop, against aiosmtpd's Controller.

Two figures for each:

* the first start in a fresh Python process, imports included (what the first test of
  a suite waits), the median of R processes;
* a start and a stop once imported (what every further test waits with the default
  function scope), the median of N in one process.

mailstack's fixture is the whole system (SMTP, submission, IMAP, POP3 and their TLS
ports, a CA made for the run, the account store, the queue); aiosmtpd's Controller is
one SMTP listener in a thread, the usual in-process server of Python test suites (given
a free port: it cannot take port 0).
aiosmtpd comes with ``pip install '.[bench]'``; without it only mailstack is measured.

    python bench/fixture_bench.py                 # R=5 fresh processes, N=50 starts
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FIRST = {
    "mailstack": """
import time; t = time.perf_counter()
from mailstack.embedded import MailServer
server = MailServer().start(); started = time.perf_counter() - t
server.stop(); print(started)
""",
    "aiosmtpd": """
import time; t = time.perf_counter()
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink
import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
controller = Controller(Sink(), hostname="127.0.0.1", port=port); controller.start(); started = time.perf_counter() - t
controller.stop(); print(started)
""",
}

AGAIN = {
    "mailstack": """
import time, statistics
from mailstack.embedded import MailServer
MailServer().start().stop()
starts, stops = [], []
for _ in range({n}):
    t = time.perf_counter(); server = MailServer().start(); starts.append(time.perf_counter() - t)
    t = time.perf_counter(); server.stop(); stops.append(time.perf_counter() - t)
print(statistics.median(starts), statistics.median(stops))
""",
    "aiosmtpd": """
import time, statistics
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink
starts, stops = [], []
import socket
for _ in range({n}):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    t = time.perf_counter(); c = Controller(Sink(), hostname="127.0.0.1", port=port); c.start()
    starts.append(time.perf_counter() - t)
    t = time.perf_counter(); c.stop(); stops.append(time.perf_counter() - t)
print(statistics.median(starts), statistics.median(stops))
""",
}


def available(name: str) -> bool:
    module = "mailstack.embedded" if name == "mailstack" else "aiosmtpd.controller"
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, cwd=REPO).returncode == 0


def python(code: str) -> list[float]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return [float(x) for x in done.stdout.split()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=5, help="fresh processes for the first start")
    parser.add_argument("--starts", type=int, default=50, help="starts and stops in one process")
    args = parser.parse_args()
    print(f"{'':12s} {'first start (imports too)':>26s} {'start again':>12s} {'stop':>10s}")
    for name in FIRST:
        if not available(name):
            print(f"{name:12s} not installed")
            continue
        first = statistics.median(python(FIRST[name])[0] for _ in range(args.processes))
        start, stop = python(AGAIN[name].format(n=args.starts))
        print(f"{name:12s} {first * 1000:23.0f} ms {start * 1000:9.1f} ms {stop * 1000:7.1f} ms")
    print("(goal for mailstack: a start under 500 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
