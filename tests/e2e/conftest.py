"""Loopback end-to-end fixtures: a real ``twistd -n mailstack`` on free 127.0.0.1 ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LISTENERS = ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps", "managesieve")
PASSWORD = "correct horse battery staple"


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def built_listeners() -> list[str]:
    """The listeners this version of mailstack can start."""
    from mailstack.service import listener_builders

    return [name for name in LISTENERS if name in listener_builders()]


def all_ports() -> dict[str, int]:
    names = built_listeners()
    return dict(zip(names, free_ports(len(names)), strict=True))


def plugin_env() -> dict[str, str]:
    """Environment for subprocesses: find the twistd plugin even when not installed."""
    env = dict(os.environ)
    env.pop("MAILSTACK_CONFIG", None)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def twistd_command(config: Path) -> list[str]:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "mailstack", "--config", str(config)]


def cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailstack.cli", "--config", str(config), *args],
                          input=stdin, capture_output=True, text=True, env=plugin_env(), timeout=60)


def write_config(root: Path, ports: dict[str, int], extra: str = "", *, hostname: str = "mail.example.test",
                 domains: tuple[str, ...] = ("example.test",), host: str = "127.0.0.1") -> Path:
    listen = "\n".join(f'{name} = "{host}:{ports[name]}"' if name in ports else f'{name} = ""'
                       for name in (*LISTENERS, "http"))
    config = root / "mailstack.toml"
    config.write_text(f"""
hostname = "{hostname}"
domains = [{", ".join(f'"{d}"' for d in domains)}]

[listen]
{listen}

[storage]
accounts = "{root}/var/accounts.sqlite3"
maildirs = "{root}/maildirs"
queue = "{root}/var/queue"
dkim = "{root}/var/dkim"

[tls]
cert = "{root}/var/tls/cert.pem"
key = "{root}/var/tls/key.pem"
self_signed = true

[relay]
networks = []
mx_networks = ["127.0.0.0/8", "::1/128"]
{extra}
""")
    return config


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mailstack exited with {proc.returncode}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


@dataclass
class Server:
    root: Path
    config: Path
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)
    host: str = "127.0.0.1"  # the loopback address it listens on

    def start(self) -> None:
        self.log = self.root / "twistd.log"
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(twistd_command(self.config), cwd=self.root, stdout=out,
                                     stderr=subprocess.STDOUT, env=plugin_env())
        out.close()
        for port in self.ports.values():
            wait_for_port(port, self.proc, host=self.host)
        self.wait_until_serving()

    def wait_until_serving(self, timeout: float = 20.0) -> None:
        """Ports are bound before the reactor runs; a greeting proves it is running."""
        plain = [self.ports[n] for n in ("smtp", "submission", "pop3", "imap") if n in self.ports]
        if not plain:
            return
        with socket.create_connection((self.host, plain[0]), timeout=timeout) as s:
            s.recv(1)

    def stop(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def maildir(self, address: str, folder: str = "") -> Path:
        local, domain = address.split("@")
        base = self.root / "maildirs" / domain / local
        return base / f".{folder}" if folder else base

    def messages(self, address: str) -> list[bytes]:
        new = self.maildir(address) / "new"
        if not new.exists():
            return []
        from mailstack.maildir.files import delivery_order  # names hold seconds and microseconds unpadded

        return [p.read_bytes() for p in sorted(new.iterdir(), key=lambda p: delivery_order(p.name))]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One running mailstack per test module, with alice and bob in example.test."""
    root = tmp_path_factory.mktemp("mailstack")
    ports = all_ports()
    config = write_config(root, ports)
    for user in ("alice@example.test", "bob@example.test"):
        result = cli(config, "user", "add", user, "--password-stdin", stdin=PASSWORD + "\n")
        assert result.returncode == 0, result.stderr
    srv = Server(root, config, ports)
    srv.start()
    yield srv
    if srv.proc and srv.proc.poll() is None:
        srv.stop()
    assert "Traceback" not in srv.log_text(), srv.log_text()
