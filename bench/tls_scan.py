"""TLS policy of every TLS port, as sslscan sees it: mailstack beside Dovecot's defaults.

    python bench/tls_scan.py

Starts mailstack (twistd, generated certificate) with every TLS listener on free
loopback ports, and Dovecot (when installed) with STARTTLS on IMAP and the same
certificate, then runs Debian's ``sslscan --xml=-`` against each: implicit TLS
on submissions, imaps, pop3s and https, STARTTLS on submission, imap and pop3.
Prints the protocols and suites each accepts and whether any is TLS 1.0/1.1 or
a CBC suite; exits 1 when mailstack accepts either (its policy is Mozilla's
"intermediate": TLS 1.3, and TLS 1.2 with ECDHE AEAD suites only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from common import free_port, stop_process, wait_for_port
from dovecot_peer import Dovecot

REPO = Path(__file__).resolve().parents[1]

# listener -> how sslscan reaches TLS on it
SCANS = {
    "submissions": [], "imaps": [], "pop3s": [], "https": [],
    "submission": ["--starttls-smtp"], "imap": ["--starttls-imap"], "pop3": ["--starttls-pop3"],
}


def scan(port: int, how: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(enabled protocols, accepted (protocol, suite)) of 127.0.0.1:port."""
    result = subprocess.run(["sslscan", "--no-colour", "--xml=-", "--no-heartbleed", "--no-renegotiation",
                             "--no-compression", "--no-fallback", *how, f"127.0.0.1:{port}"],
                            capture_output=True, text=True, timeout=300)
    start = result.stdout.find("<?xml")
    if start < 0:
        raise RuntimeError(f"sslscan gave no XML for port {port}: {result.stderr.strip()[:300]}")
    root = ET.fromstring(result.stdout[start:])
    protocols = [f"{p.get('type', '').upper()}v{p.get('version')}" for p in root.iter("protocol")
                 if p.get("enabled") == "1"]
    suites = [(c.get("sslversion", ""), c.get("cipher", "")) for c in root.iter("cipher")
              if c.get("status") in ("accepted", "preferred")]
    return protocols, suites


def problems(protocols: list[str], suites: list[tuple[str, str]]) -> list[str]:
    found = [p for p in protocols if p in ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1")]
    found += [suite for version, suite in suites
              if version == "TLSv1.2" and not any(aead in suite for aead in ("GCM", "CHACHA20", "CCM"))]
    found += [suite for version, suite in suites if version == "TLSv1.2" and not suite.startswith("ECDHE-")]
    return found


def report(name: str, protocols: list[str], suites: list[tuple[str, str]]) -> bool:
    bad = problems(protocols, suites)
    print(f"{name:<26} {', '.join(protocols):<20} {len(suites):>2} suites  "
          f"{'ok' if not bad else 'accepts ' + ', '.join(dict.fromkeys(bad))}")
    return not bad


def main() -> int:
    if shutil.which("sslscan") is None:
        print("sslscan is not installed (apt-get install sslscan)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="tls-scan-"))
    ports = {name: free_port() for name in SCANS}
    listen = "\n".join(f'{name} = "127.0.0.1:{ports[name]}"' for name in SCANS)
    config = root / "mailstack.toml"
    config.write_text(f"""hostname = "mail.example.test"
domains = ["example.test"]
[listen]
smtp = ""
managesieve = ""
{listen}
[storage]
accounts = "{root}/var/accounts.sqlite3"
maildirs = "{root}/maildirs"
queue = "{root}/var/queue"
""")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(root / "twistd.log", "ab")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                             "--pidfile=", "mailstack", "--config", str(config)], cwd=root, stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    log.close()
    dovecot = None
    ok = True
    try:
        for port in ports.values():
            wait_for_port("127.0.0.1", port, proc)
        print(f"{'server and port':<26} {'protocols':<20} suites")
        for name, how in SCANS.items():
            ok &= report(f"mailstack {name}", *scan(ports[name], how))
        if Dovecot.available():
            dovecot = Dovecot(root / "dovecot", free_port(), "unused",
                              tls=(root / "var/tls/cert.pem", root / "var/tls/key.pem"))
            dovecot.start()
            report("dovecot imap (defaults)", *scan(dovecot.port, ["--starttls-imap"]))
        else:
            print("dovecot is not installed: no peer to compare with")
    finally:
        if dovecot is not None:
            dovecot.stop()
        stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)
    print("mailstack:", "no TLS 1.0/1.1, no CBC or non-ECDHE suite on any port" if ok else "POLICY VIOLATED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
