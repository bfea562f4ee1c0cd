"""``/metrics`` and ``/healthz`` of a running server: the counters a self-hoster graphs move after
one delivery, one failed login and one bounce, and the scrape parses as Prometheus reads it."""

from __future__ import annotations

import json
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import PASSWORD, Server, cli, free_ports, write_config

ALICE, BOB = "alice@example.test", "bob@example.test"


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.ports['http']}/metrics", timeout=10) as answer:
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def submit(server: Server, to: str, *, password: str = PASSWORD) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = ALICE, to, "metrics"
    message.set_content("hello\n")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=20) as smtp:
        smtp.starttls(context=context)
        smtp.ehlo()
        smtp.user, smtp.password = ALICE, password
        smtp.auth("PLAIN", smtp.auth_plain)  # one attempt (login() goes on to the next mechanism)
        smtp.send_message(message)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root: Path = tmp_path_factory.mktemp("metrics")
    ports = dict(zip(("smtp", "submission", "imaps", "http"), free_ports(4), strict=True))
    # mail for other domains goes to this server's own port 25, which refuses to relay it (5.7.1): a bounce
    config = write_config(root, ports, extra=f'smarthost = "127.0.0.1:{ports["smtp"]}"\nretry = ["1s"]')
    for user in (ALICE, BOB):
        assert cli(config, "user", "add", user, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    server = Server(root, config, ports)
    server.start()
    yield server
    server.stop()
    assert "Traceback" not in server.log_text()


def test_a_delivery_a_failed_login_and_a_bounce_move_their_counters(server: Server) -> None:
    before = scrape(server)
    submit(server, BOB)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        submit(server, BOB, password="wrong")
    submit(server, "someone@elsewhere.test")
    deadline = time.monotonic() + 20
    while len(server.messages(ALICE)) < 1:  # the bounce comes back to alice
        assert time.monotonic() < deadline, server.log_text()[-3000:]
        time.sleep(0.1)
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("mailstack_messages_received_total", role="submission", result="accepted", reason="") == 2
    assert moved("mailstack_deliveries_total", outcome="delivered") >= 2  # bob's copy, and the bounce to alice
    assert moved("mailstack_deliveries_total", outcome="failed") == 1
    assert moved("mailstack_bounces_total") == 1
    assert moved("mailstack_recipients_refused_total", role="smtp", reason="5.7.1") == 1  # relaying denied
    assert moved("mailstack_auth_failures_total", protocol="smtp") == 1
    assert moved("mailstack_connections_total", role="submission") == 3
    assert moved("mailstack_tls_handshakes_total", role="submission", result="ok") == 3
    assert moved("mailstack_delivery_seconds_count", route="local") >= 1
    assert moved("mailstack_fsync_seconds_count", store="maildir") >= 2
    assert moved("mailstack_fsync_seconds_count", store="queue") >= 2
    assert value(after, "mailstack_queue_messages") == 0
    assert value(after, "mailstack_queue_oldest_age_seconds") == 0


def test_a_head_request_gets_the_headers_alone(server: Server) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{server.ports['http']}/metrics", method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200 and answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert answer.read() == b""
    assert "is returning a message body" not in server.log_text()


def test_healthz_is_ok_while_every_listener_listens(server: Server) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.ports['http']}/healthz", timeout=10) as answer:
        assert answer.status == 200
        assert json.loads(answer.read()) == {"status": "ok", "listening": ["imaps", "smtp", "submission"]}


def fetch(server: Server, path: str, data: bytes | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.ports['http']}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers["content-type"], answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read()


def test_thunderbird_finds_the_settings_for_a_local_domain_only(server: Server) -> None:
    import xml.etree.ElementTree as ET

    for path in ("/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=alice%40example.test",
                 "/mail/config-v1.1.xml?emailaddress=alice@example.test"):
        status, content_type, body = fetch(server, path)
        assert (status, content_type) == (200, "application/xml; charset=utf-8")
        servers = [(s.get("type"), s.findtext("port"), s.findtext("socketType"))
                   for s in ET.fromstring(body).iter() if s.tag.endswith("Server")]
        assert servers == [("imap", str(server.ports["imaps"]), "SSL"),
                           ("smtp", str(server.ports["submission"]), "STARTTLS")]
    status, _, body = fetch(server, "/mail/config-v1.1.xml?emailaddress=eve@elsewhere.test")
    assert status == 404 and json.loads(body) == {"error": "no such domain here"}


def test_outlook_and_apple_get_their_settings_and_senders_the_mta_sts_policy(server: Server) -> None:
    import plistlib

    request = (b'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/'
               b'exchange/autodiscover/outlook/requestschema/2006"><Request><EMailAddress>alice@example.test'
               b"</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/"
               b"outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>")
    status, _, body = fetch(server, "/autodiscover/autodiscover.xml", data=request)
    assert status == 200 and b"<LoginName>alice@example.test</LoginName>" in body
    status, content_type, body = fetch(server, "/mobileconfig?emailaddress=alice@example.test")
    assert (status, content_type) == (200, "application/x-apple-aspen-config")
    assert plistlib.loads(body)["PayloadContent"][0]["IncomingMailServerPortNumber"] == server.ports["imaps"]
    status, content_type, body = fetch(server, "/.well-known/mta-sts.txt")
    assert (status, content_type) == (200, "text/plain")
    assert body == b"version: STSv1\r\nmode: testing\r\nmx: mail.example.test\r\nmax_age: 604800\r\n"


def test_port_25_offers_etrn_and_refuses_it_outside_the_relay_networks(server: Server) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as smtp:
        smtp.ehlo("client.example")
        assert smtp.has_extn("etrn")
        assert smtp.docmd("ETRN", "example.org") == (
            459, b"4.7.1 Node not allowed: ETRN is for the relay networks only")
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=10) as smtp:
        smtp.ehlo("client.example")
        assert not smtp.has_extn("etrn")


def test_bad_addresses_and_bodies_get_a_clear_400(server: Server) -> None:
    status, _, body = fetch(server, "/mobileconfig?emailaddress=not-an-address")
    assert status == 400 and json.loads(body) == {"error": "emailaddress is not a mail address"}
    status, _, body = fetch(server, "/mobileconfig")
    assert status == 400 and json.loads(body) == {"error": "emailaddress is required"}
    status, _, body = fetch(server, "/autodiscover/autodiscover.xml", data=b"<Autodiscover>no address</Autodiscover>")
    assert status == 400 and json.loads(body) == {"error": "emailaddress is required"}
    request = urllib.request.Request(f"http://127.0.0.1:{server.ports['http']}/healthz", method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as answer:  # a JSON resource's HEAD: its headers alone
        assert answer.status == 200 and answer.read() == b""
