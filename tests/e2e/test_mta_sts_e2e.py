"""MTA-STS end to end: a sending mailstack, a real DNS server, an HTTPS policy host whose
certificate comes from a throwaway CA (trusted through relay.ca_file), and receiving mailstacks:
one with a certificate for its MX name from that CA, one with a self-signed certificate (a
man in the middle), and Postfix's smtp-sink without STARTTLS (a stripped STARTTLS)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import trustme

from .conftest import PASSWORD, Server, cli, free_ports, plugin_env, write_config
from .test_queue_e2e import _listening
from .test_smtp_e2e import tls_context, wait_for

POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmax_age: 604800\r\n"


class PolicyHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.server.fetches += 1  # type: ignore[attr-defined]
        if self.path != "/.well-known/mta-sts.txt":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(POLICY)))
        self.end_headers()
        self.wfile.write(POLICY)

    def log_message(self, *args: object) -> None:
        pass


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = trustme.CA()
        self.ca_file = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.dns_proc: subprocess.Popen[bytes] | None = None
        self.https: http.server.ThreadingHTTPServer | None = None
        self.servers: list[Server] = []

    def start_https(self) -> int:
        cert = self.ca.issue_cert("mta-sts.sts.test")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self.https = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PolicyHandler)
        self.https.fetches = 0  # type: ignore[attr-defined]
        self.https.socket = context.wrap_socket(self.https.socket, server_side=True)
        threading.Thread(target=self.https.serve_forever, daemon=True).start()
        return self.https.server_address[1]

    def start_dns(self) -> int:
        zones = {
            "sts.test": {"MX": [[10, "mx.sts.test"]]},
            "mx.sts.test": {"A": ["127.0.0.1"]},
            "_mta-sts.sts.test": {"TXT": ["v=STSv1; id=20261202"]},
            "mta-sts.sts.test": {"A": ["127.0.0.1"]},
            "plain.test": {"MX": [[10, "mx.plain.test"]]},  # no policy: opportunistic as before
            "mx.plain.test": {"A": ["127.0.0.1"]},
        }
        path = self.root / "zones.json"
        path.write_text(json.dumps(zones))
        portfile = self.root / "dns.port"
        self.dns_proc = subprocess.Popen([sys.executable, "-m", "mailstack.testing_dns", str(path), str(portfile)],
                                         env=plugin_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(portfile.exists, what="the DNS server")
        return int(portfile.read_text())

    def receiver(self, name: str, port: int, *, trusted: bool) -> Server:
        home = self.root / name
        home.mkdir()
        ports = {"smtp": port, "submission": free_ports(1)[0]}
        config = write_config(home, ports, hostname="mx.sts.test", domains=("sts.test", "plain.test"))
        if trusted:
            tls = home / "var" / "tls"
            tls.mkdir(parents=True)
            cert = self.ca.issue_cert("mx.sts.test")
            cert.private_key_pem.write_to_path(str(tls / "key.pem"))
            (tls / "cert.pem").write_bytes(b"".join(c.bytes() for c in cert.cert_chain_pems))
        server = Server(home, config, ports)
        for user in ("rcpt@sts.test", "rcpt@plain.test"):
            assert cli(config, "user", "add", user, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
        self.servers.append(server)
        return server

    def stop(self) -> None:
        for server in self.servers:
            if server.proc and server.proc.poll() is None:
                server.stop()
        if self.https:
            self.https.shutdown()
        if self.dns_proc:
            self.dns_proc.send_signal(signal.SIGTERM)
            self.dns_proc.wait(10)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("mta-sts"))
    https_port = w.start_https()
    dns_port = w.start_dns()
    w.mx_port = free_ports(1)[0]
    home = w.root / "sender"
    home.mkdir()
    ports = dict(zip(("smtp", "submission"), free_ports(2), strict=True))
    extra = (f'resolvers = ["127.0.0.1:{dns_port}"]\nport = {w.mx_port}\nretry = ["1s"]\n'
             f'https_port = {https_port}\nca_file = "{w.ca_file}"')
    w.sender = Server(home, write_config(home, ports, extra, hostname="mail.a.test", domains=("a.test",)), ports)
    assert cli(w.sender.config, "user", "add", "alice@a.test", "--password-stdin",
               stdin=PASSWORD + "\n").returncode == 0
    w.sender.start()
    w.servers.append(w.sender)
    yield w
    w.stop()
    for server in w.servers:
        assert "Traceback" not in server.log_text(), server.log_text()


def submit(world: World, rcpt: str, subject: str, mail_options: tuple[str, ...] = ()) -> None:
    with smtplib.SMTP("127.0.0.1", world.sender.ports["submission"], timeout=20) as s:
        s.starttls(context=tls_context())
        s.login("alice@a.test", PASSWORD)
        s.sendmail("alice@a.test", [rcpt], f"From: alice@a.test\r\nSubject: {subject}\r\n\r\nhi\r\n".encode(),
                   mail_options=list(mail_options))


def arrived(server: Server, address: str, subject: str) -> bool:
    return any(f"Subject: {subject}".encode() in m for m in server.messages(address))


def queue_listing(world: World) -> str:
    return cli(world.sender.config, "queue", "list").stdout


def test_enforce_policy_with_a_valid_mx_certificate_delivers_over_verified_tls(world):
    good = world.receiver("good", world.mx_port, trusted=True)
    good.start()
    try:
        subject = "sts ok " + uuid.uuid4().hex
        submit(world, "rcpt@sts.test", subject)
        wait_for(lambda: arrived(good, "rcpt@sts.test", subject), what="delivery under the policy")
        assert world.https.fetches >= 1
        [message] = [m for m in good.messages("rcpt@sts.test") if subject.encode() in m]
        assert b"TLS" in message.split(b"\r\n\r\n")[0]  # the Received: line names the TLS session
        assert "MTA-STS policy of sts.test: enforce" in world.sender.log_text()
        assert "with TLS (certificate verified)" in world.sender.log_text()
    finally:
        good.stop()


def test_enforce_policy_refuses_a_man_in_the_middle_and_a_stripped_starttls(world):
    """The same MX name, but a certificate no CA vouches for, then no STARTTLS at all: the
    message waits in the queue, named as refused by the policy; mail to a domain without a
    policy still goes. Once the real MX is back, the waiting message is delivered."""
    fake = world.receiver("mitm", world.mx_port, trusted=False)
    fake.start()
    subject = "sts mitm " + uuid.uuid4().hex
    other = "no policy " + uuid.uuid4().hex
    try:
        submit(world, "rcpt@sts.test", subject)
        submit(world, "rcpt@plain.test", other)
        wait_for(lambda: arrived(fake, "rcpt@plain.test", other), what="delivery to the domain without a policy")
        wait_for(lambda: "MTA-STS" in queue_listing(world), what="the policy's refusal in the queue")
        time.sleep(2.5)  # retries come every second: none may deliver
        assert not arrived(fake, "rcpt@sts.test", subject)
        assert "4.7.5" in queue_listing(world)
    finally:
        fake.stop()
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if Path(sink).exists():
        dump = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
        dump.chmod(0o777)
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        # -e: no ESMTP at all, so no STARTTLS: what a stripping attacker shows
        proc = subprocess.Popen([sink, *user, "-e", "-d", str(dump / "%M%S."), f"127.0.0.1:{world.mx_port}", "10"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: _listening(world.mx_port), what="smtp-sink")
            time.sleep(2.5)
            assert not any(subject.encode() in p.read_bytes() for p in dump.iterdir())
            assert "MTA-STS" in queue_listing(world)
        finally:
            proc.terminate()
            proc.wait(10)
            shutil.rmtree(dump, ignore_errors=True)
    good = world.receiver("good-again", world.mx_port, trusted=True)
    good.start()
    try:
        wait_for(lambda: arrived(good, "rcpt@sts.test", subject), what="delivery once the real MX is back")
        wait_for(lambda: "queue is empty" in queue_listing(world), what="an empty queue")
    finally:
        good.stop()



def test_requiretls_goes_over_verified_tls_or_bounces_with_5_7_30(world):
    """RFC 8689: a REQUIRETLS message reaches the domain with a policy and a verified MX that
    offers REQUIRETLS; to a domain without a policy it comes back to the sender with 5.7.30."""
    good = world.receiver("requiretls", world.mx_port, trusted=True)
    good.start()
    try:
        kept = "requiretls ok " + uuid.uuid4().hex
        refused = "requiretls refused " + uuid.uuid4().hex
        submit(world, "rcpt@sts.test", kept, ("REQUIRETLS",))
        submit(world, "rcpt@plain.test", refused, ("REQUIRETLS",))
        wait_for(lambda: arrived(good, "rcpt@sts.test", kept), what="the REQUIRETLS message")

        def bounce() -> bytes | None:
            for m in world.sender.messages("alice@a.test"):
                if m.startswith(b"Return-Path: <>") and b"Final-Recipient: rfc822; rcpt@plain.test" in m:
                    return m
            return None

        report = wait_for(bounce, what="the 5.7.30 bounce")
        assert b"Action: failed\r\nStatus: 5.7.30\r\n" in report
        assert b"publishes no MTA-STS policy" in report
        assert not arrived(good, "rcpt@plain.test", refused)
        # it may travel without TLS, so nothing of the message comes back in it (RFC 8689 §5)
        assert refused.encode() not in report and b"rfc822-headers" not in report
    finally:
        good.stop()
