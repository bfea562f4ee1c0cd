"""A throwaway Postfix instance for the benchmarks: its own config and queue directories in
a temporary folder, smtpd on a loopback port, relaying to given next hops.

    with PostfixRelay(port, relayhost="[127.0.0.1]:2525") as pf:      # the smarthost path
    with PostfixRelay(port, transports={"d0.bench.test": "[127.0.0.1]:2525"}) as pf:

Postfix resolves MX records through the system's resolver, which the benchmark cannot point
at its own DNS server; the MX workload therefore names each destination domain's next hop
in a transport map (``smtp:[127.0.0.1]:port``): the same SMTP work per message, without the
DNS lookups (which mailstack does, from its cache). Needs root (Postfix's own user and
group, ``postfix`` and ``postdrop``, own the queue) and Debian's ``postfix`` package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

POSTFIX = "/usr/sbin/postfix"


def available() -> str | None:
    """Why Postfix cannot run here, or None."""
    if not Path(POSTFIX).exists():
        return "Postfix is not installed (Debian package postfix)"
    if os.geteuid() != 0:
        return "running a Postfix instance needs root"
    return None


class PostfixRelay:
    def __init__(self, port: int, *, relayhost: str = "", transports: dict[str, str] | None = None) -> None:
        self.port = port
        self.relayhost = relayhost
        self.transports = transports or {}
        self.root = Path(tempfile.mkdtemp(prefix="postfix-bench-"))
        self.config = self.root / "etc"
        self.queue = self.root / "queue"

    def __enter__(self) -> PostfixRelay:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self.root.chmod(0o755)  # Postfix's own user must reach its queue
        self.config.mkdir()
        self.queue.mkdir()
        (self.root / "data").mkdir()
        shutil.chown(self.root / "data", "postfix")
        transport = ""
        if self.transports:
            table = self.config / "transport"
            table.write_text("".join(f"{d} smtp:{hop}\n" for d, hop in self.transports.items()))
            subprocess.run(["postmap", f"texthash:{table}"], check=False, capture_output=True)
            transport = f"transport_maps = texthash:{table}"
        (self.config / "main.cf").write_text(f"""
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.root}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = {self.relayhost}
{transport}
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtp_dns_support_level = disabled
maillog_file = {self.root}/maillog
maillog_file_prefixes = {self.root}
biff = no
default_destination_concurrency_limit = 20
smtp_destination_concurrency_limit = 20
""")
        master = Path("/etc/postfix/master.cf").read_text().splitlines()
        out = [f"127.0.0.1:{self.port} inet n - n - - smtpd"]
        for line in master:
            fields = line.split()
            if not fields or line.startswith(("#", " ", "\t")) or fields[0] == "smtp" and fields[1] == "inet":
                continue
            if len(fields) >= 8 and fields[1] in ("unix", "unix-dgram", "fifo", "pass"):
                fields[4] = "n"  # no chroot: the queue is in a temporary folder
                out.append(" ".join(fields))
        (self.config / "master.cf").write_text("\n".join(out) + "\n")
        subprocess.run([POSTFIX, "-c", str(self.config), "set-permissions"], capture_output=True)
        subprocess.run([POSTFIX, "-c", str(self.config), "check"], capture_output=True)
        result = subprocess.run([POSTFIX, "-c", str(self.config), "start"], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"postfix did not start: {result.stderr.strip() or result.stdout.strip()}")

    def queued(self) -> int:
        """Messages still in the queue (incoming, active, deferred, maildrop)."""
        n = 0
        for name in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(self.queue / name):
                n += len(files)
        return n

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.config), "stop"], capture_output=True)
        time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)
