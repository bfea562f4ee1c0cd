"""A throwaway Dovecot IMAP server for the benchmarks: generated config, own directories, loopback only.

``Dovecot(root)`` writes ``root/dovecot.conf``: IMAP only, on a free loopback
port, no TLS, plaintext LOGIN allowed, ``mail_location = maildir:`` under
``root/maildirs/<domain>/<localpart>`` (the layout mailstack uses),
passdb from a passwd-file and a static userdb. It runs as
``dovecot -F -c root/dovecot.conf`` (foreground, so the bench owns the
process; its base_dir and state_dir are under root, so it does not touch or
need a system instance) and logs to ``root/dovecot.log``. Everything runs as
the invoking user; as root, Dovecot's mail processes run as ``nobody``, so the
Maildir directories are handed to nobody (the message files only need to be
readable; hard links of one set of files can serve both servers).

Password schemes (``scheme``):

- ``SHA512-CRYPT`` (default): ``crypt(3)`` SHA-512 with 5,000 rounds, the usual
  choice for a Dovecot passwd-file; about a millisecond per login.
- ``ARGON2ID``: an argon2id PHC string made by argon2-cffi with its default
  parameters (m=64 MiB, t=3, p=4), the same hash mailstack stores; Dovecot
  verifies it on every login (it has no verified-login cache; its auth_cache
  keeps the hash, not the result, and is off by default).
- ``PLAIN``: the password in the clear (the cheapest possible login).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from common import wait_for_port

SCHEMES = ("SHA512-CRYPT", "ARGON2ID", "PLAIN")
TUNINGS = ("default", "performance")


def binary() -> str | None:
    found = shutil.which("dovecot")
    if found:
        return found
    return "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None


def password_hash(password: str, scheme: str) -> str:
    if scheme == "PLAIN":
        return "{PLAIN}" + password
    if scheme == "ARGON2ID":
        from argon2 import PasswordHasher

        return "{ARGON2ID}" + PasswordHasher().hash(password)
    if scheme == "SHA512-CRYPT":
        doveadm = shutil.which("doveadm") or "/usr/bin/doveadm"
        out = subprocess.run([doveadm, "pw", "-s", "SHA512-CRYPT", "-p", password], check=True,
                             capture_output=True, text=True).stdout.strip()
        return out
    raise ValueError(f"unknown scheme {scheme!r}; one of {', '.join(SCHEMES)}")


class Dovecot:
    name = "dovecot"

    def __init__(self, root: Path, port: int, password: str, scheme: str = "SHA512-CRYPT",
                 tuning: str = "default", tls: tuple[Path, Path] | None = None) -> None:
        if tuning not in TUNINGS:
            raise ValueError(f"unknown tuning {tuning!r}; one of {', '.join(TUNINGS)}")
        self.tuning = tuning
        self.tls = tls  # (certificate, key): STARTTLS with Dovecot's own TLS defaults
        self.root = root
        self.port = port
        self.password = password
        self.scheme = scheme
        self.users: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self._hash: str | None = None

    @staticmethod
    def available() -> bool:
        return binary() is not None

    def version(self) -> str:
        try:
            return subprocess.run([binary() or "dovecot", "--version"], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except OSError:
            return "?"

    def add_user(self, user: str) -> None:
        self.users.append(user)

    def maildir(self, user: str) -> Path:
        local, domain = user.split("@")
        return self.root / "maildirs" / domain / local

    def _ids(self) -> tuple[int, int]:
        if os.getuid() != 0:
            return os.getuid(), os.getgid()
        nobody = pwd.getpwnam("nobody")  # Dovecot refuses to run mail processes as root
        return nobody.pw_uid, nobody.pw_gid

    def _hand_over(self, uid: int, gid: int) -> None:
        """Give the mail directories (not the message files, which stay readable) to the mail user."""
        for top in (self.root / "maildirs", self.root / "home"):
            top.mkdir(parents=True, exist_ok=True)
            os.chown(top, uid, gid)
            for dirpath, dirnames, _ in os.walk(top):
                for name in dirnames:
                    os.chown(os.path.join(dirpath, name), uid, gid)
        path = self.root
        while path != path.parent:  # the auth and mail processes must reach root's files
            if path.stat().st_mode & 0o005 != 0o005:
                path.chmod(path.stat().st_mode | 0o755)
            path = path.parent

    def write_config(self) -> Path:
        uid, gid = self._ids()
        if self._hash is None:
            self._hash = password_hash(self.password, self.scheme)
        (self.root / "run").mkdir(parents=True, exist_ok=True)
        passwd = self.root / "passwd"
        passwd.write_text("".join(f"{u}:{self._hash}::::::\n" for u in self.users))
        passwd.chmod(0o644)
        self._hand_over(uid, gid)
        login_tuning = imap_tuning = ""
        if self.tuning == "performance":
            # Dovecot's "high-performance mode": login processes serve many connections and stay up,
            # imap processes are reused (safe here: every user has the same uid)
            login_tuning = f"  service_count = 0\n  process_min_avail = {os.cpu_count() or 1}\n"
            imap_tuning = "  service_count = 0\n  process_min_avail = 2\n"
        conf = self.root / "dovecot.conf"
        conf.write_text(f"""# generated by bench/dovecot_peer.py
protocols = imap
listen = 127.0.0.1
base_dir = {self.root}/run
state_dir = {self.root}/run
log_path = {self.root}/dovecot.log
info_log_path = {self.root}/dovecot.log
{f"ssl = yes{chr(10)}ssl_cert = <{self.tls[0]}{chr(10)}ssl_key = <{self.tls[1]}" if self.tls else "ssl = no"}
disable_plaintext_auth = no
auth_mechanisms = plain login
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
{login_tuning}}}
service imap {{
  process_limit = 1024
{imap_tuning}}}
mail_max_userip_connections = 1000
passdb {{
  driver = passwd-file
  args = scheme=CRYPT {passwd}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={self.root}/home/%d/%n
}}
""")
        return conf

    def start(self) -> None:
        conf = self.write_config()
        err = open(self.root / "dovecot.err", "ab")
        self.proc = subprocess.Popen([binary() or "dovecot", "-F", "-c", str(conf)], stdout=err, stderr=err,
                                     start_new_session=True)
        wait_for_port("127.0.0.1", self.port, self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM the master (it stops its children) and wait; SIGKILL its process group if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # children can outlive the master for a moment; wait until the port is free again
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(True for _ in _group_members(self.proc.pid)):
            time.sleep(0.05)


def _group_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    out.append(int(entry))
            except OSError:
                pass
    return out
