"""Forwarding through a third server: A sends, F forwards by alias, B receives.

Three mailstack instances on three loopback addresses, one port number for all
of them (each relays to that port, and DNS says which address is which domain's
MX), with a real DNS server. A signs its mail; F checks it, seals an ARC set,
rewrites the envelope sender with SRS and relays it; B checks it again. What B
sees proves that SPF still passes after the hop (for F's SRS address), that A's
signature survived it, and that F's ARC set is valid, as an independent verifier
(Mail::DKIM) agrees. Bounces on that path find their way back to A's user.
"""

from __future__ import annotations

import email
import email.policy
import json
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PASSWORD, Server, cli, plugin_env, write_config
from .test_queue_e2e import _mail_dkim_available, wait_for
from .test_smtp_e2e import tls_context

HOSTS = {"a": "127.0.0.21", "f": "127.0.0.22", "b": "127.0.0.23"}


def free_port_on(hosts: list[str]) -> int:
    """A port number that is free on every one of ``hosts``."""
    for _ in range(50):
        probe = socket.socket()
        probe.bind((hosts[0], 0))
        port = probe.getsockname()[1]
        held = [probe]
        try:
            for host in hosts[1:]:
                s = socket.socket()
                held.append(s)
                s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no port free on every address")


class Chain:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dns: subprocess.Popen[bytes] | None = None
        self.dns_port = 0
        self.servers: dict[str, Server] = {}

    def start_dns(self, zones: dict[str, object]) -> None:
        (self.root / "zones.json").write_text(json.dumps(zones))
        portfile = self.root / "dns.port"
        self.dns = subprocess.Popen([sys.executable, "-m", "mailstack.testing_dns", str(self.root / "zones.json"),
                                     str(portfile)], env=plugin_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        wait_for(portfile.exists, what="the DNS server")
        self.dns_port = int(portfile.read_text())

    def stop(self) -> None:
        for srv in self.servers.values():
            if srv.proc and srv.proc.poll() is None:
                srv.stop()
        if self.dns:
            self.dns.send_signal(signal.SIGTERM)
            self.dns.wait(10)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    from mailstack.dkim import KeyDirectory

    root = tmp_path_factory.mktemp("chain")
    c = Chain(root)
    smtp = free_port_on(list(HOSTS.values()))
    submission = free_port_on([HOSTS["a"]])
    keys = {name: KeyDirectory(root / f"{name}-keys") for name in ("a", "f")}
    a_key = keys["a"].generate("a.test", "rsa", selector="chain-a")  # A signs with it
    f_key = keys["f"].generate("f.test", "rsa", selector="chain-f")  # F seals forwarded mail with it
    spf = {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]}  # every instance's connections leave from 127.0.0.1
    c.start_dns({
        "a.test": {**spf, "MX": [[10, "mail.a.test"]]}, "mail.a.test": {"A": [HOSTS["a"]]},
        "f.test": {**spf, "MX": [[10, "mx.f.test"]]}, "mx.f.test": {"A": [HOSTS["f"]]},
        "b.test": {**spf, "MX": [[10, "mx.b.test"]]}, "mx.b.test": {"A": [HOSTS["b"]]},
        "_dmarc.a.test": {"TXT": ["v=DMARC1; p=reject"]},
        a_key.record_name(): {"TXT": [a_key.record_text()]},
        f_key.record_name(): {"TXT": [f_key.record_text()]},
    })
    relay = f'resolvers = ["127.0.0.1:{c.dns_port}"]\nport = {smtp}\nretry = ["2s"]'
    for name, hostname, domain in (("b", "mx.b.test", "b.test"), ("f", "mx.f.test", "f.test"),
                                   ("a", "mail.a.test", "a.test")):
        home = root / name
        home.mkdir()
        ports = {"smtp": smtp, **({"submission": submission} if name == "a" else {})}
        config = write_config(home, ports, relay, hostname=hostname, domains=(domain,), host=HOSTS[name])
        if name in keys:
            shutil.copytree(root / f"{name}-keys", home / "var" / "dkim")
        c.servers[name] = Server(home, config, ports, host=HOSTS[name])
    for server, user in ((c.servers["a"], "alice@a.test"), (c.servers["b"], "bob@b.test")):
        assert cli(server.config, "user", "add", user, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    f = c.servers["f"].config
    assert cli(f, "alias", "add", "fwd@f.test", "bob@b.test").returncode == 0  # forwarded to B
    assert cli(f, "alias", "add", "lost@f.test", "nobody@b.test").returncode == 0  # B refuses it
    for server in c.servers.values():
        server.start()
    yield c
    c.stop()
    for server in c.servers.values():
        assert "Traceback" not in server.log_text(), server.log_text()


def send(chain: Chain, rcpt: str, subject: str) -> None:
    message = (f"From: Alice <alice@a.test>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
               f"Message-ID: <{uuid.uuid4().hex}@a.test>\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\n"
               "Forwarded twice over.\r\n").encode()
    with smtplib.SMTP(HOSTS["a"], chain.servers["a"].ports["submission"], timeout=20) as s:
        s.starttls(context=tls_context())
        s.login("alice@a.test", PASSWORD)
        s.sendmail("alice@a.test", [rcpt], message)


def arrived(server: Server, address: str, subject: str) -> list[bytes]:
    return [m for m in server.messages(address) if f"Subject: {subject}\r\n".encode() in m]


def results_of(message: bytes, authserv: bytes) -> bytes:
    """The unfolded Authentication-Results header ``authserv`` wrote."""
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    for value in parsed.get_all("Authentication-Results", []):
        text = " ".join(str(value).split()).encode()
        if text.startswith(authserv + b";"):
            return text
    raise AssertionError(f"no Authentication-Results from {authserv!r}")


def test_mail_forwarded_by_a_third_server_keeps_spf_dkim_dmarc_passing_with_a_valid_arc_set(chain, tmp_path):
    subject = "via f " + uuid.uuid4().hex
    send(chain, "fwd@f.test", subject)
    [stored] = wait_for(lambda: arrived(chain.servers["b"], "bob@b.test", subject), what="the forwarded copy at B")
    head = stored.split(b"\r\n\r\n")[0]
    # F rewrote the envelope sender into its own domain (SRS), so B's SPF check asks f.test
    assert head.startswith(b"Return-Path: <SRS0=") and b"=a.test=alice@f.test>" in head.split(b"\r\n")[0]
    at_b = results_of(stored, b"mx.b.test")
    assert b"spf=pass smtp.mailfrom=SRS0=" in at_b and b"@f.test" in at_b
    assert b"dkim=pass header.d=a.test header.s=chain-a" in at_b  # A's signature survived the hop
    assert b"arc=pass" in at_b and b"dmarc=pass (p=reject dis=none) header.from=a.test" in at_b
    # F's set: its seal, and what F itself found when the message reached it from A
    assert b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=f.test; s=chain-f" in head
    sealed = " ".join(str(email.message_from_bytes(stored).get("ARC-Authentication-Results")).split())
    assert sealed.startswith("i=1; mx.f.test;") and "spf=pass smtp.mailfrom=alice@a.test" in sealed
    assert "dmarc=pass" in sealed
    if _mail_dkim_available():  # an independent ARC validator, keys from the same DNS
        tool = Path(__file__).parent / "tools" / "arc_verify.pl"
        checked = subprocess.run(["perl", str(tool), str(chain.dns_port)], input=stored, capture_output=True,
                                 timeout=60)
        assert checked.returncode == 0, checked.stderr.decode()
        assert checked.stdout.decode().splitlines()[0] == "result pass", checked.stdout.decode()


def test_a_bounce_on_the_forwarding_path_returns_to_the_sender(chain):
    subject = "lost via f " + uuid.uuid4().hex
    send(chain, "lost@f.test", subject)  # F forwards to nobody@b.test; B refuses it; F bounces

    def bounce() -> bytes | None:
        for m in chain.servers["a"].messages("alice@a.test"):
            if m.startswith(b"Return-Path: <>") and f"Subject: {subject}".encode() in m:
                return m
        return None

    text = email.message_from_bytes(wait_for(bounce, what="the bounce at A"), policy=email.policy.default).as_string()
    assert "nobody@b.test" in text and "5.1.1" in text


def test_a_later_bounce_to_the_srs_address_is_passed_back_to_the_sender(chain):
    subject = "srs return " + uuid.uuid4().hex
    send(chain, "fwd@f.test", subject)
    [stored] = wait_for(lambda: arrived(chain.servers["b"], "bob@b.test", subject), what="the forwarded copy at B")
    srs = stored.split(b"\r\n", 1)[0].removeprefix(b"Return-Path: <").removesuffix(b">").decode()
    # B (or any server after F) bouncing later: a null-sender report sent to F's SRS address
    report = (f"From: MAILER-DAEMON@b.test\r\nTo: <{srs}>\r\nSubject: Undelivered: {subject}\r\n"
              f"Message-ID: <{uuid.uuid4().hex}@b.test>\r\nAuto-Submitted: auto-replied\r\n\r\n"
              "The mailbox is gone.\r\n").encode()
    with smtplib.SMTP(HOSTS["f"], chain.servers["f"].ports["smtp"], timeout=20) as s:
        s.ehlo("mx.b.test")
        s.sendmail("", [srs], report)
    [back] = wait_for(lambda: arrived(chain.servers["a"], "alice@a.test", f"Undelivered: {subject}"),
                      what="the report at A")
    assert back.startswith(b"Return-Path: <>")
    # and a made-up SRS address in F's domain is refused, not relayed anywhere
    forged = srs.replace("SRS0=", "SRS0=x", 1)
    with smtplib.SMTP(HOSTS["f"], chain.servers["f"].ports["smtp"], timeout=20) as s:
        s.ehlo("mx.b.test")
        s.mail("")
        code, _ = s.rcpt(forged)
        assert code == 550
