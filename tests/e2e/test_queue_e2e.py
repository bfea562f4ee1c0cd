"""Outbound mail end to end: two mailstack instances, a real DNS server, MX routing,
retries, bounces and the queue CLI, all on loopback."""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from .conftest import PASSWORD, Server, cli, free_ports, plugin_env, write_config
from .test_smtp_e2e import tls_context, wait_for

ZONES = {
    "b.test": {"MX": [[10, "mx.b.test"]]},
    "mx.b.test": {"A": ["127.0.0.1"]},
    "c.test": {"MX": [[20, "mx2.c.test"], [10, "mx1.c.test"]]},
    "mx1.c.test": {"A": ["127.0.0.2"]},  # nothing listens there: connection refused
    "mx2.c.test": {"A": ["127.0.0.1"]},
    "d.test": {"A": ["127.0.0.1"]},  # no MX: the implicit MX (RFC 5321 5.1)
    "nullmx.test": {"MX": [[0, "."]]},  # RFC 7505
    "down.test": {"MX": [[10, "mx.down.test"]]},
    "mx.down.test": {"A": ["127.0.0.3"]},
}


class Mesh:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dns_proc = None
        self.a: Server | None = None
        self.b: Server | None = None

    def start_dns(self, extra: dict[str, Any] | None = None) -> int:
        zones = self.root / "zones.json"
        zones.write_text(json.dumps({**ZONES, **(extra or {})}))
        portfile = self.root / "dns.port"
        self.dns_proc = subprocess.Popen([sys.executable, "-m", "mailstack.testing_dns", str(zones), str(portfile)],
                                         env=plugin_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(portfile.exists, what="the DNS server")
        return int(portfile.read_text())

    def stop(self) -> None:
        for srv in (self.a, self.b):
            if srv and srv.proc and srv.proc.poll() is None:
                srv.stop()
        if self.dns_proc:
            self.dns_proc.send_signal(signal.SIGTERM)
            self.dns_proc.wait(10)


def make_server(root: Path, name: str, *, hostname: str, domains: tuple[str, ...], extra: str = "",
                ports: dict[str, int] | None = None) -> Server:
    home = root / name
    home.mkdir()
    ports = ports or dict(zip(("smtp", "submission"), free_ports(2), strict=True))
    config = write_config(home, ports, extra, hostname=hostname, domains=domains)
    return Server(home, config, ports)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    root = tmp_path_factory.mktemp("mesh")
    m = Mesh(root)
    from mailstack.dkim import KeyDirectory

    a_keys = KeyDirectory(root / "a-keys")  # A signs with it; B finds it in DNS
    key = a_keys.generate("a.test", "rsa", selector="mesh-rsa")
    b_keys = KeyDirectory(root / "b-keys")  # B seals what its aliases forward with it (ARC)
    b_key = b_keys.generate("b.test", "rsa", selector="mesh-b")
    a_ports = dict(zip(("smtp", "submission"), free_ports(2), strict=True))  # B forwards to A's port
    dns_port = m.start_dns({key.record_name(): {"TXT": [key.record_text()]},
                            b_key.record_name(): {"TXT": [b_key.record_text()]},
                            "a.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"], "MX": [[10, "mail.a.test"]]},
                            "mail.a.test": {"A": ["127.0.0.1"]},
                            "b.test": {**ZONES["b.test"], "TXT": ["v=spf1 ip4:127.0.0.1 -all"]},  # B sends too
                            "_dmarc.a.test": {"TXT": ["v=DMARC1; p=reject; rua=mailto:postmaster@a.test"]},
                            "_dmarc.q.test": {"TXT": ["v=DMARC1; p=quarantine"]}})
    m.b = make_server(root, "b", hostname="mx.b.test", domains=("b.test", "c.test", "d.test"),
                      extra=f'resolvers = ["127.0.0.1:{dns_port}"]\nport = {a_ports["smtp"]}\nretry = ["2s"]')
    shutil.copytree(root / "b-keys", root / "b" / "var" / "dkim")
    for user in ("bob@b.test", "carol@c.test", "dave@d.test"):
        assert cli(m.b.config, "user", "add", user, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    # Aliases of B that forward to A: one to a real user, one to nobody (its bounce must come home).
    assert cli(m.b.config, "alias", "add", "fwd@b.test", "alice@a.test").returncode == 0
    assert cli(m.b.config, "alias", "add", "lost@b.test", "nobody@a.test").returncode == 0
    m.b.start()
    extra = f'resolvers = ["127.0.0.1:{dns_port}"]\nport = {m.b.ports["smtp"]}\nretry = ["2s"]'
    m.a = make_server(root, "a", hostname="mail.a.test", domains=("a.test",), extra=extra, ports=a_ports)
    shutil.copytree(root / "a-keys", root / "a" / "var" / "dkim")
    assert cli(m.a.config, "user", "add", "alice@a.test", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    m.a.start()
    yield m
    m.stop()
    for srv in (m.a, m.b):
        assert "Traceback" not in srv.log_text(), srv.log_text()


def submit(mesh: Mesh, rcpts: list[str], subject: str) -> bytes:
    message = (f"From: alice@a.test\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
               f"Message-ID: <{uuid.uuid4().hex}@a.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
               "Hello over the wire.\r\n.dot line\r\n").encode()
    with smtplib.SMTP("127.0.0.1", mesh.a.ports["submission"], timeout=20) as s:
        s.starttls(context=tls_context())
        s.login("alice@a.test", PASSWORD)
        s.sendmail("alice@a.test", rcpts, message)
    return message


def find(server: Server, address: str, subject: str) -> list[bytes]:
    return [m for m in server.messages(address) if f"Subject: {subject}\r\n".encode() in m]


def bounce_for(mesh: Mesh, subject: str):
    def look():
        for m in mesh.a.messages("alice@a.test"):
            if m.startswith(b"Return-Path: <>") and f"Subject: {subject}".encode() in m:
                return m
        return None

    raw = wait_for(look, what="a bounce")
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_submitted_on_a_lands_in_b_byte_for_byte(mesh):
    subject = "relay " + uuid.uuid4().hex
    sent = submit(mesh, ["bob@b.test"], subject)
    [stored] = wait_for(lambda: find(mesh.b, "bob@b.test", subject), what="delivery to B")
    assert stored.startswith(b"Return-Path: <alice@a.test>\r\nDelivered-To: bob@b.test\r\nReceived: from mail.a.test")
    assert stored.endswith(sent)
    headers = stored.split(b"\r\n\r\n")[0]
    assert headers.count(b"Received: ") == 2
    assert b"by mx.b.test with ESMTPS id" in headers  # A used STARTTLS to B
    assert b"by mail.a.test with ESMTPSA id" in headers
    wait_for(lambda: "queue is empty" in cli(mesh.a.config, "queue", "list").stdout, what="an empty queue")


def test_b_checks_the_signature_a_made_and_says_so(mesh):
    subject = "checked " + uuid.uuid4().hex
    submit(mesh, ["bob@b.test"], subject)
    [stored] = wait_for(lambda: find(mesh.b, "bob@b.test", subject), what="delivery to B")
    head = stored.split(b"\r\n\r\n")[0]
    assert head.count(b"Authentication-Results: ") == 1
    assert (b"Authentication-Results: mx.b.test;\r\n\tspf=pass smtp.mailfrom=alice@a.test;\r\n"
            b"\tdkim=pass header.d=a.test header.s=mesh-rsa header.b=") in head
    # What B wrote is the first Authentication-Results a reader meets, above A's signature.
    assert head.index(b"Authentication-Results: mx.b.test") < head.index(b"DKIM-Signature: ")


def test_a_forged_result_claiming_b_is_removed_and_unsigned_mail_is_dkim_none(mesh):
    subject = "forged " + uuid.uuid4().hex
    forged = (f"Authentication-Results: mx.b.test; dkim=pass header.d=bank.test\r\n"
              f"From: someone@nowhere.test\r\nTo: bob@b.test\r\nSubject: {subject}\r\n\r\nbody\r\n").encode()
    with smtplib.SMTP("127.0.0.1", mesh.b.ports["smtp"], timeout=20) as s:  # straight to B's MX
        s.sendmail("someone@nowhere.test", ["bob@b.test"], forged)
    [stored] = wait_for(lambda: find(mesh.b, "bob@b.test", subject), what="delivery to B")
    assert b"bank.test" not in stored
    assert (b"Authentication-Results: mx.b.test;\r\n\tspf=none smtp.mailfrom=someone@nowhere.test;\r\n"
            b"\tdkim=none;\r\n\tarc=none;\r\n\tdmarc=none header.from=nowhere.test\r\n") in stored


def test_forged_from_a_sent_straight_to_b_is_refused_by_a_dmarc_reject_policy(mesh):
    subject = "spoof " + uuid.uuid4().hex
    spoof = (f"From: ceo@a.test\r\nTo: bob@b.test\r\nSubject: {subject}\r\n\r\nwire the money\r\n").encode()
    with smtplib.SMTP("127.0.0.1", mesh.b.ports["smtp"], timeout=20) as s:
        s.ehlo("attacker.example")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            s.sendmail("bounce@attacker.example", ["bob@b.test"], spoof)
    assert refused.value.smtp_code == 550
    assert b"5.7.1" in refused.value.smtp_error and b"a.test publishes a DMARC reject policy" in refused.value.smtp_error
    assert find(mesh.b, "bob@b.test", subject) == []
    assert "DMARC fail for a.test (p=reject)" in mesh.b.log_text()


def test_forged_from_a_quarantine_domain_lands_in_junk(mesh):
    subject = "dodgy " + uuid.uuid4().hex
    spoof = (f"From: news@q.test\r\nTo: bob@b.test\r\nSubject: {subject}\r\n\r\nclick here\r\n").encode()
    with smtplib.SMTP("127.0.0.1", mesh.b.ports["smtp"], timeout=20) as s:
        s.sendmail("bounce@attacker.example", ["bob@b.test"], spoof)
    junk = mesh.b.maildir("bob@b.test") / ".Junk" / "new"

    def in_junk() -> list[bytes]:
        return [p.read_bytes() for p in junk.iterdir() if f"Subject: {subject}".encode() in p.read_bytes()] \
            if junk.exists() else []

    [stored] = wait_for(in_junk, what="delivery to Junk")
    assert b"dmarc=fail (p=quarantine dis=quarantine) header.from=q.test" in stored
    assert find(mesh.b, "bob@b.test", subject) == []  # not in INBOX


def test_mail_forwarded_by_b_arrives_back_at_a_with_spf_and_arc_passing(mesh):
    subject = "forwarded " + uuid.uuid4().hex
    submit(mesh, ["fwd@b.test"], subject)  # alice@a.test -> fwd@b.test -> alice@a.test again
    [stored] = wait_for(lambda: find(mesh.a, "alice@a.test", subject), what="the forwarded copy at A")
    head = stored.split(b"\r\n\r\n")[0]
    assert b"Return-Path: <SRS0=" in head and b"=a.test=alice@b.test>" in head  # SRS: B's own domain
    assert b"spf=pass smtp.mailfrom=SRS0=" in head  # so A's SPF check passes for B
    assert b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=b.test; s=mesh-b" in head
    assert b"\tarc=pass" in head and b"dmarc=pass" in head


def test_a_bounce_of_forwarded_mail_finds_its_way_back_to_the_sender(mesh):
    subject = "lost " + uuid.uuid4().hex
    submit(mesh, ["lost@b.test"], subject)  # B forwards to nobody@a.test; A refuses it; B bounces
    bounce = bounce_for(mesh, subject)
    text = bounce.as_string()
    assert "nobody@a.test" in text and "5.1.1" in text


def test_second_mx_used_when_first_refuses_connections(mesh):
    subject = "mx-fallback " + uuid.uuid4().hex
    submit(mesh, ["carol@c.test"], subject)
    wait_for(lambda: find(mesh.b, "carol@c.test", subject), what="delivery via the second MX")


def test_domain_without_mx_uses_its_a_record(mesh):
    subject = "implicit-mx " + uuid.uuid4().hex
    submit(mesh, ["dave@d.test"], subject)
    wait_for(lambda: find(mesh.b, "dave@d.test", subject), what="delivery via the A record")


def test_null_mx_bounces_at_once(mesh):
    subject = "null-mx " + uuid.uuid4().hex
    submit(mesh, ["someone@nullmx.test"], subject)
    bounce = bounce_for(mesh, subject)
    report = bounce.get_payload()[1].get_payload()[1]
    assert report["Final-Recipient"] == "rfc822; someone@nullmx.test"
    assert report["Action"] == "failed" and report["Status"].startswith("5.")


def test_one_recipient_refused_is_bounced_the_other_delivered(mesh):
    subject = "partial " + uuid.uuid4().hex
    submit(mesh, ["bob@b.test", "nobody@b.test"], subject)
    wait_for(lambda: find(mesh.b, "bob@b.test", subject), what="delivery of the good recipient")
    bounce = bounce_for(mesh, subject)
    assert bounce.get_content_type() == "multipart/report"
    report = bounce.get_payload()[1].get_payload()
    assert [r["Final-Recipient"] for r in report[1:]] == ["rfc822; nobody@b.test"]
    assert report[1]["Status"] == "5.1.1"
    assert report[1]["Remote-MTA"] == "dns; mx.b.test"
    assert report[1]["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    assert len(find(mesh.b, "bob@b.test", subject)) == 1


def queued_ids(server: Server) -> list[str]:
    out = cli(server.config, "queue", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ") and "queue is" not in line]


def test_queue_list_flush_delete_against_a_running_server(mesh):
    subject = "stuck " + uuid.uuid4().hex
    submit(mesh, ["x@down.test"], subject)
    [qid] = wait_for(lambda: [i for i in queued_ids(mesh.a) if i], what="the message in the queue")
    listing = cli(mesh.a.config, "queue", "list").stdout
    assert "<alice@a.test> -> x@down.test" in listing
    wait_for(lambda: "attempts 1" in cli(mesh.a.config, "queue", "list").stdout, what="a first attempt")
    result = cli(mesh.a.config, "queue", "flush", qid)
    assert result.returncode == 0 and "flush requested" in result.stdout
    assert cli(mesh.a.config, "queue", "delete", "NOSUCHID").returncode == 1
    result = cli(mesh.a.config, "queue", "delete", qid)
    assert result.returncode == 0, result.stderr
    assert queued_ids(mesh.a) == []
    time.sleep(3)  # past a retry interval: the deleted message is neither retried nor bounced
    assert queued_ids(mesh.a) == []
    assert not any(f"Subject: {subject}".encode() in m for m in mesh.a.messages("alice@a.test"))


def test_restart_resumes_and_delivers_exactly_once(mesh):
    subject = "restart " + uuid.uuid4().hex
    mesh.b.stop()
    try:
        submit(mesh, ["bob@b.test"], subject)
        wait_for(lambda: "attempts 1" in cli(mesh.a.config, "queue", "list").stdout, what="a deferred attempt")
        assert mesh.a.stop() == 0
    finally:
        mesh.b.start()
    mesh.a.start()
    wait_for(lambda: find(mesh.b, "bob@b.test", subject), what="delivery after the restart")
    wait_for(lambda: "queue is empty" in cli(mesh.a.config, "queue", "list").stdout, what="an empty queue")
    time.sleep(2.5)
    assert len(find(mesh.b, "bob@b.test", subject)) == 1


@pytest.mark.skipif(shutil.which("smtp-sink") is None and not Path("/usr/sbin/smtp-sink").exists(),
                    reason="Postfix smtp-sink is not installed (.ci/run installs postfix)")
def test_postfix_smtp_sink_as_the_remote_mx(mesh, tmp_path):
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    port = free_ports(1)[0]
    dump = Path(tempfile.mkdtemp(prefix="smtp-sink-"))  # smtp-sink drops root: needs a path "nobody" can reach
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    dump.chmod(0o777)
    proc = subprocess.Popen([sink, *user, "-c", "-d", str(dump / "%M%S."), f"127.0.0.1:{port}", "10"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(port), what="smtp-sink")
        extra = f'smarthost = "127.0.0.1:{port}"'
        c = make_server(tmp_path, "c", hostname="mail.c-sender.test", domains=("a.test",), extra=extra)
        assert cli(c.config, "user", "add", "alice@a.test", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
        c.start()
        try:
            with smtplib.SMTP("127.0.0.1", c.ports["submission"], timeout=20) as s:
                s.starttls(context=tls_context())
                s.login("alice@a.test", PASSWORD)
                s.sendmail("alice@a.test", ["someone@elsewhere.test"], b"Subject: to the sink\r\n\r\nhi\r\n")
            def dumped() -> bytes:  # smtp-sink creates the file first and writes it as the data arrives
                return b"".join(p.read_bytes() for p in dump.iterdir())

            data = wait_for(lambda: b"Subject: to the sink" in dumped() and dumped(),
                            what="smtp-sink to receive the message")
            assert b"MAIL FROM:<alice@a.test>" in data or b"alice@a.test" in data
            wait_for(lambda: "queue is empty" in cli(c.config, "queue", "list").stdout, what="an empty queue")
        finally:
            c.stop()
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(dump, ignore_errors=True)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _mail_dkim_available() -> bool:
    if shutil.which("perl") is None:
        return False
    return subprocess.run(["perl", "-MMail::DKIM::Verifier", "-MNet::DNS::Resolver", "-e", "1"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not _mail_dkim_available(), reason="Mail::DKIM (libmail-dkim-perl) is not installed")
def test_mail_submitted_on_a_arrives_at_b_with_signatures_mail_dkim_accepts(mesh, tmp_path):
    from mailstack.dkim import KeyDirectory

    for algorithm in ("rsa", "ed25519"):
        selector = f"e2e-{algorithm}"
        if not (mesh.a.root / "var" / "dkim" / "a.test" / f"{selector}.key").exists():
            made = cli(mesh.a.config, "dkim", "generate", "a.test", "--algorithm", algorithm, "--selector", selector)
            assert made.returncode == 0, made.stderr
    subject = "signed " + uuid.uuid4().hex
    submit(mesh, ["bob@b.test"], subject)  # the running server picks the new keys up: no restart
    [stored] = wait_for(lambda: find(mesh.b, "bob@b.test", subject), what="delivery to B")
    head = stored.split(b"\r\n\r\n")[0]
    assert head.count(b"DKIM-Signature: ") == 2 and b"d=a.test;" in head
    # An independent verifier, with the keys in DNS as `mailstack dns-records a.test` prints them.
    keys = KeyDirectory(mesh.a.root / "var" / "dkim").keys("a.test")
    zones = {k.record_name(): {"TXT": [k.record_text()]} for k in keys if k.signing}
    (tmp_path / "zones.json").write_text(json.dumps(zones))
    portfile = tmp_path / "dns.port"
    dns = subprocess.Popen([sys.executable, "-m", "mailstack.testing_dns", str(tmp_path / "zones.json"),
                            str(portfile)], env=plugin_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(portfile.exists, what="the DNS server")
        tool = Path(__file__).parent / "tools" / "dkim_verify.pl"
        checked = subprocess.run(["perl", str(tool), portfile.read_text().strip()], input=stored,
                                 capture_output=True, timeout=60)
    finally:
        dns.send_signal(signal.SIGTERM)
        dns.wait(10)
    lines = checked.stdout.decode().splitlines()
    assert checked.returncode == 0, checked.stderr.decode()
    # Debian 12's Mail::DKIM knows no Ed25519 (it says "unsupported algorithm"): that one is checked below.
    assert "rsa-sha256 a.test pass" in lines and lines[-1] == "result pass", lines
    import dkim

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return next((z["TXT"][0].encode() for n, z in zones.items() if f"{n}.".encode() == name), b"")

    assert [dkim.DKIM(stored).verify(idx=i, dnsfunc=lookup) for i in range(2)] == [True, True]


# -- delivery status notifications (RFC 3461) ---------------------------------------------------------

def submit_dsn(port: int, rcpts: list[str], subject: str, mail_options: list[str], rcpt_options: list[str]) -> None:
    message = (f"From: alice@a.test\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
               f"Message-ID: <{uuid.uuid4().hex}@a.test>\r\n\r\nAsk me how it went.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.starttls(context=tls_context())
        s.login("alice@a.test", PASSWORD)
        s.ehlo()
        assert s.has_extn("dsn")
        s.sendmail("alice@a.test", rcpts, message, mail_options=mail_options, rcpt_options=rcpt_options)


def report_for(server: Server, subject: str):
    def look():
        for m in server.messages("alice@a.test"):
            if m.startswith(b"Return-Path: <>") and f"Subject: {subject}".encode() in m:
                return m
        return None

    return email.message_from_bytes(wait_for(look, what="a delivery report"), policy=email.policy.default)


def test_success_asked_on_a_is_reported_by_b_that_delivered_it(mesh):
    """A passes NOTIFY, ORCPT, RET and ENVID on to B, which offers DSN; B files the message and
    tells the sender itself, through its queue back to A."""
    subject = "dsn success " + uuid.uuid4().hex
    submit_dsn(mesh.a.ports["submission"], ["bob@b.test"], subject, ["RET=HDRS", "ENVID=track+2B42"],
               ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob@b.test"])
    report = report_for(mesh.a, subject)
    assert report["Subject"] == "Successful Mail Delivery Report"
    fields = report.get_payload()[1].get_payload()
    assert fields[0]["Reporting-MTA"] == "dns; mx.b.test"
    assert fields[0]["Original-Envelope-Id"] == "track+42"
    assert fields[1]["Action"] == "delivered"
    assert fields[1]["Final-Recipient"] == "rfc822; bob@b.test"
    assert fields[1]["Original-Recipient"] == "rfc822; Bob@b.test"
    assert len(find(mesh.b, "bob@b.test", subject)) == 1


def test_notify_never_means_no_bounce_even_when_the_next_hop_refuses(mesh):
    subject = "dsn never " + uuid.uuid4().hex
    submit_dsn(mesh.a.ports["submission"], ["nobody@b.test", "bob@b.test"], subject, [], ["NOTIFY=NEVER"])
    wait_for(lambda: find(mesh.b, "bob@b.test", subject), what="delivery of the good recipient")
    wait_for(lambda: "queue is empty" in cli(mesh.a.config, "queue", "list").stdout, what="an empty queue")
    time.sleep(1)
    assert not any(f"Subject: {subject}".encode() in m for m in mesh.a.messages("alice@a.test"))


@pytest.mark.skipif(shutil.which("smtp-sink") is None and not Path("/usr/sbin/smtp-sink").exists(),
                    reason="Postfix smtp-sink is not installed (.ci/run installs postfix)")
@pytest.mark.parametrize("sink_dsn", [True, False], ids=["sink-offers-dsn", "sink-without-dsn"])
def test_dsn_requests_with_postfix_smtp_sink_as_the_next_hop(tmp_path, sink_dsn):
    """Postfix's sink offering DSN receives the requests (its dump shows the MAIL and RCPT
    arguments) and no report comes from here; without DSN (``-N``) the sender is told "relayed"."""
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    port = free_ports(1)[0]
    dump = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    dump.chmod(0o777)
    flags = [] if sink_dsn else ["-N"]
    proc = subprocess.Popen([sink, *user, *flags, "-d", str(dump / "%M%S."), f"127.0.0.1:{port}", "10"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(port), what="smtp-sink")
        c = make_server(tmp_path, "c", hostname="mail.c-sender.test", domains=("a.test",),
                        extra=f'smarthost = "127.0.0.1:{port}"')
        assert cli(c.config, "user", "add", "alice@a.test", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
        c.start()
        try:
            subject = "dsn sink " + uuid.uuid4().hex
            submit_dsn(c.ports["submission"], ["someone@elsewhere.test"], subject, ["RET=FULL", "ENVID=e-1"],
                       ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;someone+2Bx@elsewhere.test"])

            def dumped() -> bytes:
                return b"".join(p.read_bytes() for p in dump.iterdir())

            data = wait_for(lambda: subject.encode() in dumped() and dumped(), what="smtp-sink to get the message")
            wait_for(lambda: "queue is empty" in cli(c.config, "queue", "list").stdout, what="an empty queue")
            if sink_dsn:
                assert b"RET=FULL" in data and b"ENVID=e-1" in data, data[:600]
                assert b"NOTIFY=SUCCESS,DELAY" in data and b"ORCPT=rfc822;someone+2Bx@elsewhere.test" in data
                time.sleep(1)
                assert not any(subject.encode() in m for m in c.messages("alice@a.test"))
            else:
                assert b"NOTIFY=" not in data and b"ENVID=" not in data
                report = report_for(c, subject)
                fields = report.get_payload()[1].get_payload()
                assert fields[0]["Original-Envelope-Id"] == "e-1"
                assert fields[1]["Action"] == "relayed"
                assert fields[1]["Original-Recipient"] == "rfc822; someone+x@elsewhere.test"
        finally:
            c.stop()
        assert "Traceback" not in c.log_text()
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(dump, ignore_errors=True)
