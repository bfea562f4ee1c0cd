"""`mailstack lab` as a user runs it: a subprocess with two domains, its own DNS, real MX routing."""

from __future__ import annotations

import imaplib
import json
import signal
import smtplib
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import pytest

from tests.e2e.conftest import plugin_env

A, B = "127.0.0.221", "127.0.0.222"  # not the default 127.0.0.11+: a lab someone runs by hand is left alone

LAB_TOML = f"""
users = 0
ports = "high"
dns = "127.0.0.220:0"

[[domain]]
name = "a.test"
address = "{A}"
users = {{ alice = "alice password" }}

[[domain]]
name = "b.test"
address = "{B}"
users = {{ bob = "bob password" }}
"""


def mailstack(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailstack.cli", *args], capture_output=True, text=True,
                          env=plugin_env(), timeout=timeout)


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "lab"
        (root / "lab.toml").write_text(LAB_TOML)
        self.out = open(root / "lab.out", "wb")  # noqa: SIM115 (closed at stop)
        self.proc = subprocess.Popen([sys.executable, "-m", "mailstack.cli", "lab", "--config",
                                      str(root / "lab.toml"), "--dir", str(self.dir)],
                                     stdout=self.out, stderr=subprocess.STDOUT, env=plugin_env())
        deadline = time.monotonic() + 30
        while not (self.dir / "lab.json").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the lab did not start:\n{self.output()}")
            time.sleep(0.05)
        self.state = json.loads((self.dir / "lab.json").read_text())

    def output(self) -> str:
        if not self.out.closed:
            self.out.flush()
        return (self.root / "lab.out").read_text(errors="replace")

    def domain(self, name: str) -> dict:
        return self.state["domains"][name]

    def context(self, name: str) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.domain(name)["ca"])

    def submit(self, sender: str, password: str, recipients: list[str], subject: str) -> str:
        d = self.domain(sender.rpartition("@")[2])
        with smtplib.SMTP(d["address"], d["ports"]["submission"], timeout=10) as s:
            s.starttls(context=self.context(sender.rpartition("@")[2]))
            s.login(sender, password)
            _, reply = s.docmd("MAIL", f"FROM:<{sender}>")
            for rcpt in recipients:
                s.docmd("RCPT", f"TO:<{rcpt}>")
            code, reply = s.data(f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n\r\n"
                                 f"sent through the lab\r\n".encode())
            assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[-1]  # "OK queued as <id>"

    def inbox(self, user: str, password: str, subject: str, timeout: float = 30) -> bytes:
        """The message with *subject* in *user*'s INBOX, read over IMAPS, waiting for it."""
        d = self.domain(user.rpartition("@")[2])
        deadline = time.monotonic() + timeout
        while True:
            with imaplib.IMAP4_SSL(d["address"], d["ports"]["imaps"],
                                   ssl_context=self.context(user.rpartition("@")[2])) as imap:
                imap.login(user, password)
                imap.select("INBOX")
                _, found = imap.search(None, "SUBJECT", f'"{subject}"')
                if found[0]:
                    _, data = imap.fetch(found[0].split()[-1], "(BODY.PEEK[])")
                    return data[0][1]
            if time.monotonic() > deadline:
                raise AssertionError(f"{subject!r} did not reach {user}\n{self.output()[-4000:]}")
            time.sleep(0.3)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.out.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    running = Lab(tmp_path_factory.mktemp("lab"))
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.stop()


def test_mail_from_a_reaches_b_by_mx_with_dkim_spf_and_dmarc_passing(lab: Lab) -> None:
    lab.submit("alice@a.test", "alice password", ["bob@b.test"], "across the lab")
    message = message_from_bytes(lab.inbox("bob@b.test", "bob password", "across the lab"))
    results = message["Authentication-Results"]
    assert results.startswith("mail.b.test;")
    for check in ("spf=pass", "dkim=pass header.d=a.test", "dmarc=pass"):
        assert check in results, results
    received = message.get_all("Received")
    assert f"from mail.a.test ([{A}])" in received[0] and "by mail.b.test with ESMTPS" in received[0]


def test_a_failure_rule_makes_the_queue_retry_then_deliver(lab: Lab) -> None:
    added = mailstack("lab", "fail", "add", "b.test", "--action", "reply", "--code", "451", "--status", "4.3.0",
                      "--text", "try later", "--recipient", "bob@b.test", "--times", "1", "--dir", str(lab.dir))
    assert added.returncode == 0, added.stderr
    rule_id = added.stdout.split()[1]
    queue_id = lab.submit("alice@a.test", "alice password", ["bob@b.test"], "after a retry")
    lab.inbox("bob@b.test", "bob password", "after a retry")
    listed = mailstack("lab", "fail", "list", "b.test", "--dir", str(lab.dir))
    assert f"{rule_id}: 451 4.3.0 at rcpt for recipient=bob@b.test, 1 time(s) (applied 1 time(s))" in listed.stdout
    trace = mailstack("trace", "--log", str(lab.dir / "mailstack.jsonl"), queue_id)
    assert trace.returncode == 0, trace.stderr
    text = trace.stdout
    assert "451 4.3.0 try later" in text and text.index("451 4.3.0") < text.index("delivered"), text
    assert mailstack("lab", "fail", "clear", "b.test", "--dir", str(lab.dir)).stdout.strip() == \
        "1 rule(s) removed from b.test"


def test_mail_for_outside_the_lab_is_captured_and_shown_over_http(lab: Lab) -> None:
    lab.submit("alice@a.test", "alice password", ["someone@example.org"], "to the outside")
    api = lab.domain("a.test")["http"] + "/api/v1/messages?subject=outside"
    deadline = time.monotonic() + 20
    while True:
        found = json.load(urllib.request.urlopen(api, timeout=5))
        if found["total"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert found["total"] == 1
    summary = found["messages"][0]
    assert summary["envelope"] == {"from": "alice@a.test", "to": ["someone@example.org"]}
    assert summary["subject"] == "to the outside"


def test_unknown_lab_config_key_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "lab.toml"
    bad.write_text('[[domain]]\nname = "a.test"\ncolour = "red"\n')
    result = mailstack("lab", "--lab-config", str(bad), "--dir", str(tmp_path / "lab"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "mailstack: config error at domain[0].colour: unknown key (known: address, capture, faults, name, users)"]


def test_fail_without_a_running_lab_says_so(tmp_path: Path) -> None:
    result = mailstack("lab", "fail", "list", "a.test", "--dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip() == f"mailstack: config error at dir: no lab is running in {tmp_path} (no lab.json)"


def test_ctrl_c_stops_the_lab_cleanly(lab: Lab) -> None:
    assert lab.stop() == 0
    assert not (lab.dir / "lab.json").exists()
    assert "Traceback" not in lab.output()
