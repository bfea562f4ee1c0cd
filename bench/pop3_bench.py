"""POP3 retrieval benchmark: N poplib clients against mailstack and, where installed, Dovecot.

Each client owns one mailbox pre-filled with M messages of about 4 KB and
loops for a fixed time: connect, USER/PASS, LIST, RETR every message, QUIT
(nothing is deleted, so every round retrieves the whole maildrop). A second
phase measures logins alone: connect, USER/PASS, STAT, QUIT. Both servers run
on loopback without TLS and with plaintext logins allowed, over copies of the
same Maildirs. Clients are separate processes, so the load generator is not
held back by one interpreter.

    python bench/pop3_bench.py [--clients 10] [--messages 100] [--size 4096]
                               [--seconds 10] [--no-dovecot]

Dovecot (``apt-get install dovecot-pop3d``) is started as a throwaway
instance on a free loopback port with its own base_dir, a passwd-file of
plaintext passwords and a static userdb; it is stopped at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import poplib
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "bench password 1"
DOMAIN = "example.test"


@dataclass
class Result:
    server: str
    seconds: float
    sessions: int
    messages: int
    octets: int
    logins: int
    login_seconds: float

    def line(self) -> str:
        return (f"{self.server:10s} {self.messages / self.seconds:10.0f} msg/s "
                f"{self.octets / self.seconds / 1e6:8.1f} MB/s {self.sessions / self.seconds:8.1f} sessions/s "
                f"{self.logins / self.login_seconds:9.0f} logins/s")


# -- fixtures ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_greeting(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(100).startswith(b"+OK"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no POP3 greeting on port {port}")


def message(i: int, size: int) -> bytes:
    head = (f"From: sender{i}@remote.example\r\nTo: someone@{DOMAIN}\r\nSubject: benchmark message {i}\r\n"
            f"Message-ID: <bench-{i}@remote.example>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\r\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(head) - 2)]
    return head + body.rsplit(b"\r\n", 1)[0] + b"\r\n"


def fill(maildirs: Path, users: list[str], count: int, size: int) -> None:
    """Write ``count`` messages per user straight into new/, named as delivery names them."""
    pid = os.getpid()
    for user in users:
        local = user.split("@")[0]
        md = maildirs / DOMAIN / local
        for sub in ("tmp", "new", "cur"):
            (md / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            data = message(i, size)
            (md / "new" / f"{1700000000 + i}.M{i}P{pid}Q{i}R00bench.bench.example,S={len(data)}").write_bytes(data)


# -- mailstack -------------------------------------------------------------------------------


def start_mailstack(work: Path, users: list[str], profile: str | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = work / "mailstack.toml"
    config.write_text(f"""hostname = "mail.{DOMAIN}"
domains = ["{DOMAIN}"]
[listen]
smtp = ""
submission = ""
submissions = ""
pop3 = "127.0.0.1:{port}"
pop3s = ""
imap = ""
imaps = ""
managesieve = ""
[storage]
accounts = "{work}/var/accounts.sqlite3"
maildirs = "{work}/maildirs"
queue = "{work}/var/queue"
[tls]
cert = "{work}/var/tls/cert.pem"
key = "{work}/var/tls/key.pem"
self_signed = true
allow_plaintext_auth = true
[relay]
networks = []
[limits]
connections_per_ip = 1000
""")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MAILSTACK_CONFIG", None)
    for user in users:
        subprocess.run([sys.executable, "-m", "mailstack.cli", "--config", str(config), "user", "add", user,
                        "--password-stdin"], input=PASSWORD + "\n", text=True, check=True, env=env,
                       capture_output=True)
    log = open(work / "mailstack.log", "wb")
    profiling = ["--profile", profile, "--profiler", "cprofile", "--savestats"] if profile else []
    proc = subprocess.Popen([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                             "--pidfile=", *profiling, "mailstack", "--config", str(config)],
                            cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    wait_for_greeting(port, proc)
    return proc, port


# -- Dovecot -----------------------------------------------------------------------------------


def start_dovecot(work: Path, users: list[str]) -> tuple[subprocess.Popen[bytes], int] | None:
    binary = shutil.which("dovecot") or ("/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None)
    if binary is None or not Path("/usr/lib/dovecot/pop3").exists():
        return None
    port = free_port()
    root = work / "dovecot"
    # Dovecot will not run mail processes as root: use "nobody" and give it the copy.
    nobody = pwd.getpwnam("nobody")
    uid, gid = nobody.pw_uid, nobody.pw_gid
    for d in ("run", "state", "home"):
        (root / d).mkdir(parents=True, exist_ok=True)
    passwd = root / "passwd"
    passwd.write_text("".join(f"{u}:{{PLAIN}}{PASSWORD}::::::\n" for u in users))
    root.chmod(0o755)
    passwd.chmod(0o644)  # a throwaway instance with throwaway passwords
    for path in [work / "dovecot-maildirs", root / "home"]:
        for dirpath, _dirnames, filenames in os.walk(path):
            os.chown(dirpath, uid, gid)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), uid, gid)
    conf = root / "dovecot.conf"
    conf.write_text(f"""protocols = pop3
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = {uid}
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:{work}/dovecot-maildirs/%d/%n
pop3_uidl_format = %f
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
}}
""")
    proc = subprocess.Popen([binary, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(root / "stderr.log", "wb"))
    try:
        wait_for_greeting(port, proc)
    except RuntimeError as e:
        print(f"dovecot did not start ({e}); see {root}/dovecot.log", file=sys.stderr)
        stop(proc)
        return None
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- load ----------------------------------------------------------------------------------------


def retrieve_loop(port: int, user: str, seconds: float) -> tuple[int, int, int]:
    sessions = messages = octets = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        p = poplib.POP3("127.0.0.1", port, timeout=30)
        p.user(user)
        p.pass_(PASSWORD)
        _, listing, _ = p.list()
        for n in range(1, len(listing) + 1):
            _, lines, size = p.retr(n)
            messages += 1
            octets += size
        p.quit()
        sessions += 1
    return sessions, messages, octets


def login_loop(port: int, user: str, seconds: float) -> int:
    logins = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        p = poplib.POP3("127.0.0.1", port, timeout=30)
        p.user(user)
        p.pass_(PASSWORD)
        p.stat()
        p.quit()
        logins += 1
    return logins


def measure(name: str, port: int, users: list[str], seconds: float) -> Result:
    login_loop(port, users[0], 0.2)  # warm caches (credential cache, page cache)
    with multiprocessing.Pool(len(users)) as pool:
        start = time.monotonic()
        done = pool.starmap(retrieve_loop, [(port, u, seconds) for u in users])
        elapsed = time.monotonic() - start
        login_seconds = max(2.0, seconds / 3)
        start = time.monotonic()
        logins = sum(pool.starmap(login_loop, [(port, u, login_seconds) for u in users]))
        login_elapsed = time.monotonic() - start
    return Result(name, elapsed, sum(d[0] for d in done), sum(d[1] for d in done), sum(d[2] for d in done),
                  logins, login_elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--messages", type=int, default=100, help="messages per mailbox")
    parser.add_argument("--size", type=int, default=4096, help="octets per message")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-dovecot", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--profile", metavar="PATH", help="run mailstack under cProfile, stats to PATH")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pop3-bench-"))
    work.chmod(0o755)  # Dovecot's auth process runs as the dovecot user and reads the passwd-file
    users = [f"user{i}@{DOMAIN}" for i in range(args.clients)]
    fill(work / "maildirs", users, args.messages, args.size)
    shutil.copytree(work / "maildirs", work / "dovecot-maildirs")
    print(f"{args.clients} clients, {args.messages} messages of {args.size} octets per mailbox, "
          f"{args.seconds:.0f} s per server; {os.cpu_count()} CPUs")
    results = []
    try:
        proc, port = start_mailstack(work, users, args.profile)
        try:
            results.append(measure("mailstack", port, users, args.seconds))
        finally:
            stop(proc)
        print(results[-1].line(), flush=True)
        if not args.no_dovecot:
            started = start_dovecot(work, users)
            if started is None:
                print("dovecot: not installed or did not start (apt-get install dovecot-pop3d)")
            else:
                proc, port = started
                try:
                    results.append(measure("dovecot", port, users, args.seconds))
                finally:
                    stop(proc)
                print(results[-1].line(), flush=True)
    finally:
        if args.keep:
            print(f"work directory: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
