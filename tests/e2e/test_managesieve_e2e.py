"""ManageSieve over loopback with Debian's sieve-connect: STARTTLS with a certificate from a throwaway CA,
AUTHENTICATE PLAIN, upload, activate, list, download; a bad script refused with its position; and mail
sent over SMTP afterwards filed where the uploaded script says."""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PASSWORD, Server, all_ports, cli, write_config

pytestmark = [
    pytest.mark.skipif(shutil.which("sieve-connect") is None, reason="sieve-connect is not installed"),
    pytest.mark.skipif("managesieve" not in __import__("mailstack.service", fromlist=["x"]).listener_builders(),
                       reason="no ManageSieve"),
]

HOSTNAME = "mail.example.test"
USER = "sieve-user@example.test"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """A running mailstack whose certificate a throwaway CA issued; yields it and the CA's PEM file."""
    import trustme

    root = tmp_path_factory.mktemp("managesieve")
    ca = trustme.CA()
    cert = ca.issue_cert(HOSTNAME, "127.0.0.1")
    tls = root / "var" / "tls"
    tls.mkdir(parents=True)
    cert.private_key_pem.write_to_path(str(tls / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tls / "cert.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(tls / "cert.pem"), append=True)
    ca_file = root / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ports = all_ports()
    config = write_config(root, ports, hostname=HOSTNAME)
    assert cli(config, "user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    server = Server(root, config, ports)
    server.start()
    yield server, ca_file
    if server.proc and server.proc.poll() is None:
        server.stop()
    assert "Traceback" not in server.log_text(), server.log_text()


def sieve_connect(server: Server, ca_file: Path, *args: str, password: str = PASSWORD,
                  user: str = USER) -> subprocess.CompletedProcess[str]:
    """One sieve-connect run: STARTTLS verified against the test CA, then PLAIN; no DNS (--nosrv)."""
    read, write = os.pipe()
    os.write(write, password.encode() + b"\n")
    os.close(write)
    try:
        return subprocess.run(
            ["sieve-connect", "--nosrv", "--server", "127.0.0.1", "--port", str(server.ports["managesieve"]),
             "--tlscafile", str(ca_file), "--tlshostname", HOSTNAME, "--noclearchan",
             "--user", user, "--passwordfd", str(read), "--authmech", "PLAIN", *args],
            pass_fds=(read,), capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(server.root)},
            stdin=subprocess.DEVNULL)
    finally:
        os.close(read)


FILING = b"""require ["fileinto", "mailbox"];
# files the e2e subject into its own folder
if header :contains "subject" "[sieve-e2e]" {
    fileinto :create "Filed.E2E";
    stop;
}
"""

BROKEN = b"""require "fileinto";
if header :contains "subject" "x" {
    fileinto "A"
}
"""


def test_upload_activate_list_and_download_with_sieve_connect(tls_server, tmp_path):
    server, ca_file = tls_server
    script = tmp_path / "filing.sieve"
    script.write_bytes(FILING)
    uploaded = sieve_connect(server, ca_file, "--upload", "--localsieve", str(script), "--remotesieve", "filing")
    assert uploaded.returncode == 0, uploaded.stderr
    activated = sieve_connect(server, ca_file, "--activate", "--remotesieve", "filing")
    assert activated.returncode == 0, activated.stderr
    listed = sieve_connect(server, ca_file, "--list")
    assert listed.returncode == 0, listed.stderr
    assert '"filing" ACTIVE' in listed.stdout.splitlines()
    fetched = tmp_path / "fetched.sieve"
    downloaded = sieve_connect(server, ca_file, "--download", "--remotesieve", "filing", "--localsieve", str(fetched))
    assert downloaded.returncode == 0, downloaded.stderr
    assert fetched.read_bytes() == FILING
    assert cli(server.config, "sieve", "list", USER).stdout.split() == ["filing", "active"]


def test_a_bad_script_is_refused_with_its_line_and_column(tls_server, tmp_path):
    server, ca_file = tls_server
    script = tmp_path / "broken.sieve"
    script.write_bytes(BROKEN)
    refused = sieve_connect(server, ca_file, "--upload", "--localsieve", str(script), "--remotesieve", "broken")
    assert refused.returncode != 0
    assert "PUTSCRIPT(broken) failed" in refused.stderr and "line 4, column 1" in refused.stderr, refused.stderr
    checked = sieve_connect(server, ca_file, "--checkscript", "--localsieve", str(script))
    assert checked.returncode != 0 and "line 4, column 1" in checked.stderr, checked.stderr
    assert "broken" not in cli(server.config, "sieve", "list", USER).stdout


def test_a_wrong_password_is_refused(tls_server):
    server, ca_file = tls_server
    refused = sieve_connect(server, ca_file, "--list", password="not the password")
    assert refused.returncode != 0 and "Authentication refused by server" in refused.stderr, refused.stderr


def test_the_script_activated_over_managesieve_files_mail_sent_by_smtp(tls_server, tmp_path):
    server, ca_file = tls_server
    script = tmp_path / "filing.sieve"
    script.write_bytes(FILING)
    for args in (("--upload", "--localsieve", str(script), "--remotesieve", "delivery"),
                 ("--activate", "--remotesieve", "delivery")):
        done = sieve_connect(server, ca_file, *args)
        assert done.returncode == 0, done.stderr
    marker = uuid.uuid4().hex
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
        for subject in (f"[sieve-e2e] {marker}", f"plain {marker}"):
            message = f"From: bob@remote.example\r\nTo: {USER}\r\nSubject: {subject}\r\n\r\nbody\r\n"
            assert s.sendmail("bob@remote.example", [USER], message.encode()) == {}
    filed = [p.read_bytes() for p in (server.maildir(USER, "Filed.E2E") / "new").iterdir()]
    assert [m for m in filed if marker.encode() in m and b"[sieve-e2e]" in m]
    inbox = [m for m in server.messages(USER) if marker.encode() in m]
    assert len(inbox) == 1 and b"Subject: plain" in inbox[0]


def test_plaintext_login_is_refused_before_starttls(tls_server):
    server, _ = tls_server
    with socket.create_connection(("127.0.0.1", server.ports["managesieve"]), timeout=10) as raw:
        reader = raw.makefile("rb")
        greeting = _until_status(reader)
        assert b'"STARTTLS"\r\n' in greeting and b'"SASL" ""\r\n' in greeting
        raw.sendall(b'AUTHENTICATE "PLAIN" "AGFsaWNlAHNlY3JldA=="\r\n')
        assert reader.readline().startswith(b"NO (ENCRYPT-NEEDED)")
        raw.sendall(b"STARTTLS\r\n")
        assert reader.readline() == b'OK "Begin TLS negotiation now"\r\n'
        ctx = ssl.create_default_context(cafile=str(tls_server[1]))
        with ctx.wrap_socket(raw, server_hostname=HOSTNAME) as tls:
            caps = _until_status(tls.makefile("rb"))
            assert b'"SASL" "PLAIN"\r\n' in caps and b"STARTTLS" not in caps


def _until_status(reader) -> bytes:
    out = b""
    while True:
        line = reader.readline()
        assert line, out
        out += line
        if line.startswith((b"OK", b"NO", b"BYE")):
            return out
