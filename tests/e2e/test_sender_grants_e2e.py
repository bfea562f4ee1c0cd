"""A host that relays through this one: its account may send as the host's domain once granted."""

from __future__ import annotations

import smtplib
import ssl
import time

import pytest

from .conftest import PASSWORD, Server, cli

MESSAGE = b"From: alice@home.example\r\nSubject: from the home server\r\n\r\nhello\r\n"


def _submit(server: Server, sender: str) -> dict:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=20) as smtp:
        smtp.starttls(context=context)
        smtp.login("alice@example.test", PASSWORD)
        return smtp.sendmail(sender, ["bob@example.test"], MESSAGE)


def test_an_account_sends_as_a_granted_domain_and_no_longer_once_revoked(server: Server) -> None:
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        _submit(server, "alice@home.example")
    assert refused.value.smtp_code == 553
    granted = cli(server.config, "user", "allow-sender", "alice@example.test", "@home.example")
    assert granted.returncode == 0, granted.stderr
    before = len(server.messages("bob@example.test"))
    assert _submit(server, "alice@home.example") == {}
    assert _submit(server, "SRS0=abcd=TT=elsewhere.example=carol@home.example") == {}  # its forwards too
    assert len(server.messages("bob@example.test")) == before + 2
    assert cli(server.config, "user", "revoke-sender", "alice@example.test").returncode == 0
    time.sleep(0.3)  # a running server sees a withdrawn permission within a quarter of a second
    with pytest.raises(smtplib.SMTPSenderRefused):
        _submit(server, "alice@home.example")


def test_the_hourly_sending_limit_is_a_451_at_mail_and_holds_across_a_restart(tmp_path) -> None:
    from .conftest import all_ports, write_config

    ports = all_ports()
    config = write_config(tmp_path, ports)
    config.write_text(config.read_text() + "\n[limits]\nsend_per_hour = 2\n")
    assert cli(config, "user", "add", "alice@example.test", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    assert cli(config, "user", "add", "bob@example.test", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    server = Server(tmp_path, config, ports)
    server.start()
    try:
        assert _submit(server, "alice@example.test") == {}
        assert _submit(server, "alice@example.test") == {}
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            _submit(server, "alice@example.test")
        assert refused.value.smtp_code == 451 and refused.value.smtp_error.startswith(b"4.7.1 Sending limit")
        assert server.stop() == 0
        server.start()
        with pytest.raises(smtplib.SMTPSenderRefused):
            _submit(server, "alice@example.test")
        assert len(server.messages("bob@example.test")) == 2
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
