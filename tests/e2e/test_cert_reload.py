"""A renewed certificate is used without a restart: SIGHUP puts it on every TLS listener, new
handshakes see it, sessions already open go on, and a broken new pair is refused."""

from __future__ import annotations

import imaplib
import signal
import smtplib
import ssl
import time
from pathlib import Path

import pytest
import trustme

from .conftest import Server, free_ports, write_config

HOST = "mail.example.test"


def _install(ca: trustme.CA, root: Path) -> bytes:
    """A new certificate for HOST from *ca* in the server's files; its DER form."""
    leaf = ca.issue_cert(HOST)
    tls = root / "var/tls"
    tls.mkdir(parents=True, exist_ok=True)
    (tls / "key.tmp").write_bytes(leaf.private_key_pem.bytes())
    (tls / "cert.tmp").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    (tls / "key.tmp").replace(tls / "key.pem")
    (tls / "cert.tmp").replace(tls / "cert.pem")
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def _context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def _imaps_cert(port: int, context: ssl.SSLContext) -> tuple[imaplib.IMAP4_SSL, bytes]:
    client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=_server_name(context))
    return client, client.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]


def _server_name(context: ssl.SSLContext) -> ssl.SSLContext:
    context.check_hostname = False  # the address is 127.0.0.1; the chain is still verified
    return context


def _wait_for_log(server: Server, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the log:\n{server.log_text()[-2000:]}")
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path: Path):
    ports = dict(zip(("smtp", "submission", "imaps"), free_ports(3), strict=True))
    ca = trustme.CA()
    first = _install(ca, tmp_path)
    server = Server(tmp_path, write_config(tmp_path, ports), ports)
    server.start()
    yield server, ca, first
    server.stop()


def test_sighup_puts_a_renewed_certificate_on_new_handshakes_and_open_sessions_go_on(server) -> None:
    server, ca, first = server
    context = _context(ca)
    old_session, seen = _imaps_cert(server.ports["imaps"], context)
    assert seen == first
    second = _install(ca, server.root)
    assert second != first
    server.proc.send_signal(signal.SIGHUP)
    _wait_for_log(server, "tls: certificate reloaded")
    new_session, seen = _imaps_cert(server.ports["imaps"], context)
    assert seen == second
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=10) as smtp:  # STARTTLS too
        smtp.starttls(context=_server_name(_context(ca)))
        assert smtp.sock.getpeercert(binary_form=True) == second  # type: ignore[union-attr]
    assert old_session.noop()[0] == "OK"  # the session from before the reload goes on
    assert old_session.sock.getpeercert(binary_form=True) == first  # type: ignore[attr-defined]
    for client in (old_session, new_session):
        client.logout()
    assert server.proc.poll() is None


def test_a_broken_new_key_is_refused_and_the_old_certificate_stays(server) -> None:
    server, ca, first = server
    other = trustme.CA().issue_cert(HOST)
    (server.root / "var/tls/key.pem").write_bytes(other.private_key_pem.bytes())  # does not match the cert
    server.proc.send_signal(signal.SIGHUP)
    _wait_for_log(server, "tls: the new certificate is refused, the one in use stays: tls.key:")
    client, seen = _imaps_cert(server.ports["imaps"], _context(ca))
    assert seen == first
    client.logout()
    assert "Traceback" not in server.log_text()
