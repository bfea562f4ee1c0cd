"""IMAP load benchmark: mailstack against Dovecot (when installed) on the same messages.

Each of N client processes loops over one IMAP session: LOGIN, SELECT INBOX,
FETCH the headers of the newest 50 messages, SEARCH, STORE flags, FETCH one
body, LOGOUT, timing every command. Prints commands/s and p50/p99 latency per
server, then SELECT times on 10,000 and 100,000 message folders (Maildirs
written file by file, as a delivery agent would): the first SELECT, which
builds the UID index, and one after a restart, which reads it.

    python bench/imap_bench.py [--clients 10] [--seconds 20] [--messages 500] [--no-dovecot] [--no-big]
"""

from __future__ import annotations

import argparse
import imaplib
import multiprocessing
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
PASSWORD = "bench-password"
DOMAIN = "example.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.recv(100)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def message(i: int) -> bytes:
    body = f"line of text for message {i} in the benchmark mailbox\r\n" * 40
    return (f"From: Sender {i % 17} <sender{i % 17}@example.org>\r\nTo: user@{DOMAIN}\r\n"
            f"Subject: benchmark message {i}\r\nDate: Mon, 23 Nov 2026 10:{i % 60:02d}:00 +0000\r\n"
            f"Message-ID: <bench-{i}@example.org>\r\n\r\n{body}").encode()


def fill_maildir(path: Path, count: int, start: float = 1_700_000_000) -> None:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        data = message(i)
        name = f"{int(start) + i}.M{i % 1000000}P1Q{i}.bench,S={len(data)}"
        (path / "new" / name).write_bytes(data)


# -- servers -----------------------------------------------------------------------------


class Mailstack:
    name = "mailstack"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = root / "mailstack.toml"
        self.config.write_text(f"""
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

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        return env

    def add_user(self, user: str) -> None:
        subprocess.run([sys.executable, "-m", "mailstack.cli", "--config", str(self.config), "user", "add",
                        user, "--password-stdin"], input=PASSWORD + "\n", text=True, check=True,
                       env=self.env(), capture_output=True)

    def maildir(self, user: str) -> Path:
        local, domain = user.split("@")
        return self.root / "maildirs" / domain / local

    def start(self) -> None:
        log = open(self.root / "twistd.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                                      "-n", "--pidfile=", "mailstack", "--config", str(self.config)],
                                     cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=self.env())
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


class Dovecot:
    name = "dovecot"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.users: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("dovecot") is not None or Path("/usr/sbin/dovecot").exists()

    def add_user(self, user: str) -> None:
        self.users.append(user)

    def maildir(self, user: str) -> Path:
        local, domain = user.split("@")
        return self.root / "maildirs" / domain / local

    def start(self) -> None:
        (self.root / "run").mkdir(parents=True, exist_ok=True)
        (self.root / "passwd").write_text("".join(f"{u}:{{PLAIN}}{PASSWORD}::::::\n" for u in self.users))
        uid, gid = os.getuid(), os.getgid()
        if uid == 0:  # Dovecot refuses to run mail processes as root: hand the files to nobody
            import pwd

            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
            for top in (self.root / "maildirs", self.root / "home"):
                top.mkdir(parents=True, exist_ok=True)
                os.chown(top, uid, gid)
                for dirpath, dirnames, filenames in os.walk(top):
                    for name in dirnames + filenames:
                        os.chown(os.path.join(dirpath, name), uid, gid)
            self.root.chmod(0o755)
        conf = self.root / "dovecot.conf"
        conf.write_text(f"""
protocols = imap
listen = 127.0.0.1
base_dir = {self.root}/run
state_dir = {self.root}/run
log_path = {self.root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 0
mail_uid = {uid}
mail_gid = {gid}
mail_location = maildir:{self.root}/maildirs/%d/%n
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  process_min_avail = 2
}}
service imap {{
  process_limit = 1024
}}
passdb {{
  driver = passwd-file
  args = {self.root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={self.root}/home/%d/%n
}}
""")
        binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        self.proc = subprocess.Popen([binary, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "dovecot.err", "ab"))
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


# -- load ------------------------------------------------------------------------------------


def client_loop(port: int, user: str, seconds: float, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    timings: list[tuple[str, float]] = []
    errors = 0
    deadline = time.monotonic() + seconds

    def timed(fn, *args):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        result = fn(*args)
        timings.append((fn.__name__, time.perf_counter() - t))
        return result

    while time.monotonic() < deadline:
        try:
            imap = imaplib.IMAP4("127.0.0.1", port, timeout=30)
            timed(imap.login, user, PASSWORD)
            typ, data = timed(imap.select, "INBOX")
            exists = int(data[0])
            low = max(1, exists - 49)
            timed(imap.fetch, f"{low}:{exists}", "(UID FLAGS BODY.PEEK[HEADER])")
            timed(imap.search, None, "FROM", "sender3", "UNSEEN")
            timed(imap.store, str(exists), "+FLAGS", "(\\Flagged)")
            timed(imap.fetch, str(max(1, exists - 3)), "(BODY.PEEK[])")
            timed(imap.logout)
        except (OSError, imaplib.IMAP4.error):
            errors += 1
    queue.put((timings, errors))


def run_load(server, users: list[str], clients: int, seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [multiprocessing.Process(target=client_loop, args=(server.port, users[i % len(users)], seconds, queue))
             for i in range(clients)]
    start = time.monotonic()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - start
    named = [t for r in results for t in r[0]]
    timings = sorted(t for _, t in named)
    by_command: dict[str, list[float]] = {}
    for name, t in named:
        by_command.setdefault(name, []).append(t)
    for name, ts in sorted(by_command.items()):
        ts.sort()
        print(f"    {name:8s} p50 {ts[len(ts) // 2] * 1000:7.1f} ms  p99 {ts[min(len(ts) - 1, int(len(ts) * 0.99))] * 1000:7.1f} ms")
    errors = sum(r[1] for r in results)
    n = len(timings)
    return {"commands": n, "ops": n / elapsed if elapsed else 0.0,
            "p50": timings[n // 2] * 1000 if n else 0.0,
            "p99": timings[min(n - 1, int(n * 0.99))] * 1000 if n else 0.0, "errors": errors}


def select_time(port: int, user: str) -> tuple[float, int]:
    imap = imaplib.IMAP4("127.0.0.1", port, timeout=600)
    imap.login(user, PASSWORD)
    t = time.perf_counter()
    typ, data = imap.select("INBOX")
    elapsed = time.perf_counter() - t
    t2 = time.perf_counter()
    imap.uid("FETCH", "1:*", "(FLAGS)")
    fetch_flags = time.perf_counter() - t2
    imap.logout()
    return elapsed, int(data[0]), fetch_flags  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--no-dovecot", action="store_true")
    parser.add_argument("--no-big", action="store_true")
    args = parser.parse_args()
    users = [f"user{i}@{DOMAIN}" for i in range(args.clients)]
    base = Path(tempfile.mkdtemp(prefix="imap-bench-"))
    base.chmod(0o755)  # Dovecot's auth process runs as its own user and reads the passwd file
    servers = [Mailstack(base / "mailstack")]
    if not args.no_dovecot and Dovecot.available():
        servers.append(Dovecot(base / "dovecot"))
    elif not args.no_dovecot:
        print("dovecot not installed (apt-get install dovecot-imapd): mailstack only")
    try:
        for server in servers:
            server.root.mkdir(parents=True, exist_ok=True)
            for user in users:
                server.add_user(user)
                fill_maildir(server.maildir(user), args.messages)
            server.start()
            # warm-up: first SELECT builds each index
            for user in users:
                select_time(server.port, user)
            result = run_load(server, users, args.clients, args.seconds)
            print(f"{server.name:10s} {args.clients} clients, {args.messages} msgs/mailbox: "
                  f"{result['ops']:.0f} commands/s, p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms, "
                  f"{result['commands']} commands, {result['errors']} session errors")
            server.stop()
        if not args.no_big:
            for count in (10_000, 100_000):
                for server in servers:
                    user = f"big{count}@{DOMAIN}"
                    server.add_user(user)
                    t = time.perf_counter()
                    fill_maildir(server.maildir(user), count)
                    made = time.perf_counter() - t
                    server.start()
                    cold, exists, flags_cold = select_time(server.port, user)
                    warm, _, flags_warm = select_time(server.port, user)
                    server.stop()
                    server.start()
                    restarted, _, flags_restart = select_time(server.port, user)
                    server.stop()
                    print(f"{server.name:10s} SELECT {exists} msgs: first {cold * 1000:.0f} ms, again "
                          f"{warm * 1000:.0f} ms, after restart {restarted * 1000:.0f} ms; "
                          f"UID FETCH 1:* (FLAGS) {flags_warm * 1000:.0f} ms "
                          f"(maildir written in {made:.1f} s)")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
