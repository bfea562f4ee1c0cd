"""POP3 over loopback with real clients: poplib (STLS on 110, implicit TLS on 995) and mpop.

Mail goes in through port 25 (smtplib) and comes out over POP3; every
retrieved message must be byte-for-byte the Maildir file.
"""

from __future__ import annotations

import base64
import poplib
import shutil
import smtplib
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest

from .conftest import PASSWORD

pytestmark = pytest.mark.skipif(
    "pop3" not in __import__("mailstack.service", fromlist=["x"]).listener_builders(), reason="no POP3")


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def deliver(server, rcpt: str, subject: str, body: bytes = b"Hello.\r\n.leading dot\r\n\r\n-- \r\nBob\r\n") -> bytes:
    msg = (f"From: bob@remote.example\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{uuid.uuid4().hex}@remote.example>\r\n\r\n").encode() + body
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
        assert s.sendmail("bob@remote.example", [rcpt], msg) == {}
    return msg


def files(server, address: str) -> dict[str, bytes]:
    """POP3 unique-id (the unique name, see maildrop.py) -> bytes of every message file in the INBOX."""
    from mailstack.pop3.maildrop import base_name, unique_id

    out = {}
    for sub in ("new", "cur"):
        d = server.maildir(address) / sub
        if d.exists():
            for p in d.iterdir():
                out[unique_id(base_name(p.name))] = p.read_bytes()
    return out


def stls_client(server, user: str = "alice@example.test") -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
    p.stls(tls_context())
    p.user(user)
    p.pass_(PASSWORD)
    return p


def joined(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


def test_stls_list_uidl_top_retr_dele_quit(server):
    user = "alice@example.test"
    deliver(server, user, "one")
    deliver(server, user, "two", b"".join(b"line %d\r\n" % i for i in range(2000)))
    on_disk = files(server, user)
    p = stls_client(server, user)
    count, octets = p.stat()
    assert count == len(on_disk) and octets == sum(len(b) for b in on_disk.values())
    _, uidl, _ = p.uidl()
    uids = [line.split()[1].decode() for line in uidl]
    assert sorted(uids) == sorted(on_disk)
    _, listing, _ = p.list()
    for n, (entry, uid) in enumerate(zip(listing, uids, strict=True), 1):
        assert entry == f"{n} {len(on_disk[uid])}".encode()
        _, lines, size = p.retr(n)
        assert joined(lines) == on_disk[uid]
    last = on_disk[uids[-1]]
    _, top, _ = p.top(len(uids), 3)
    head, _, body = last.partition(b"\r\n\r\n")
    assert joined(top) == head + b"\r\n\r\n" + joined(body.split(b"\r\n")[:3])
    p.dele(1)
    assert p.quit().startswith(b"+OK")
    assert uids[0] not in files(server, user) and uids[1] in files(server, user)

    p = stls_client(server, user)  # unique-ids are stable across sessions
    assert [line.split()[1].decode() for line in p.uidl()[1]] == uids[1:]
    p.quit()


def test_implicit_tls_on_995_and_rset(server):
    user = "bob@example.test"
    deliver(server, user, "for bob")
    p = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], timeout=10, context=tls_context())
    assert "STLS" not in p.capa()
    p.user(user)
    p.pass_(PASSWORD)
    count, _ = p.stat()
    p.dele(1)
    p.rset()
    assert p.stat()[0] == count
    p.quit()
    assert len(files(server, user)) == count


@pytest.mark.parametrize("listener", ["pop3", "pop3s"])
def test_large_message_streams_over_tls(server, listener):
    user = "bob@example.test"
    body = b"".join(b".line %07d of a large message, dot-stuffed on the wire\r\n" % i for i in range(40_000))
    deliver(server, user, f"large via {listener}", body)
    if listener == "pop3":
        p = stls_client(server, user)
    else:
        p = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], timeout=30, context=tls_context())
        p.user(user)
        p.pass_(PASSWORD)
    on_disk = files(server, user)
    uids = [line.split()[1].decode() for line in p.uidl()[1]]
    n = len(uids)
    assert len(on_disk[uids[-1]]) > 2_000_000
    _, lines, _ = p.retr(n)
    assert joined(lines) == on_disk[uids[-1]]
    _, top, _ = p.top(n, 2)
    assert joined(top).endswith(b"\r\n\r\n" + joined(body.split(b"\r\n")[:2]))
    p.dele(n)
    p.quit()
    assert uids[-1] not in files(server, user)


def test_login_refused_before_stls_and_auth_plain_after(server):
    p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
    assert "USER" not in p.capa() and "STLS" in p.capa()
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.user("alice@example.test")
    p.stls(tls_context())
    assert "SASL" in p.capa()
    plain = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode()).decode()
    assert p._shortcmd(f"AUTH PLAIN {plain}").startswith(b"+OK")
    p.quit()


def test_wrong_password_and_in_use(server):
    p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
    p.stls(tls_context())
    p.user("alice@example.test")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed"):
        p.pass_("wrong")
    p.quit()
    first = stls_client(server)
    second = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], timeout=10, context=tls_context())
    second.user("alice@example.test")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_(PASSWORD)
    first.quit()
    second.user("alice@example.test")
    assert second.pass_(PASSWORD).startswith(b"+OK")
    second.quit()


def mpop_config(tmp_path: Path, server, port: int, *, starttls: bool, auth: str) -> tuple[Path, Path]:
    mbox = tmp_path / f"mbox-{port}"
    conf = tmp_path / f"mpoprc-{port}"
    conf.write_text(f"""account default
host 127.0.0.1
port {port}
user alice@example.test
password {PASSWORD}
auth {auth}
tls on
tls_starttls {"on" if starttls else "off"}
tls_certcheck off
uidls_file {tmp_path}/uidls-{port}
delivery mbox {mbox}
keep off
""")
    conf.chmod(0o600)
    return conf, mbox


@pytest.mark.skipif(shutil.which("mpop") is None, reason="mpop is not installed (apt-get install mpop)")
@pytest.mark.parametrize("listener, starttls, auth", [("pop3", True, "plain"), ("pop3s", False, "user")])
def test_mpop_fetches_into_mbox(server, tmp_path, listener, starttls, auth):
    subject = f"mpop via {listener}"
    deliver(server, "alice@example.test", subject, b"Hi from mpop.\r\n.dotted\r\n")
    before = files(server, "alice@example.test")
    conf, mbox = mpop_config(tmp_path, server, server.ports[listener], starttls=starttls, auth=auth)
    result = subprocess.run(["mpop", "-C", str(conf), "-q"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = mbox.read_bytes()
    assert f"Subject: {subject}".encode() in text and b"\n.dotted\n" in text
    assert text.count(b"\nFrom ") + text.startswith(b"From ") == len(before)
    assert files(server, "alice@example.test") == {}  # keep off: fetched mail is deleted


def test_sigterm_with_open_sessions_closes_them_without_update(tmp_path):
    from .conftest import Server, all_ports, cli, write_config

    ports = all_ports()
    config = write_config(tmp_path, ports)
    assert cli(config, "user", "add", "alice@example.test", "--password-stdin",
               stdin=PASSWORD + "\n").returncode == 0
    srv = Server(tmp_path, config, ports)
    srv.start()
    try:
        deliver(srv, "alice@example.test", "kept")
        p = stls_client(srv)
        p.dele(1)
        idle = poplib.POP3("127.0.0.1", ports["pop3"], timeout=10)
        idle.capa()
        assert srv.stop() == 0
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] Server shutting down"):
            p._getresp()  # the line waits in the socket; sending first could meet a reset
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] Server shutting down"):
            idle._getresp()
    finally:
        if srv.proc and srv.proc.poll() is None:
            srv.stop()
    assert len(files(srv, "alice@example.test")) == 1
    assert "Traceback" not in srv.log_text(), srv.log_text()


@pytest.mark.skipif(shutil.which("fetchmail") is None,
                    reason="fetchmail is not installed (apt-get install fetchmail)")
@pytest.mark.parametrize("listener", ["pop3", "pop3s"])
def test_fetchmail_fetches_through_an_mda(server, tmp_path, listener):
    subject = f"fetchmail via {listener}"
    deliver(server, "alice@example.test", subject, b"Hi from fetchmail.\r\n.dotted\r\n")
    count = len(files(server, "alice@example.test"))
    out = tmp_path / "out"
    out.mkdir()
    tls = "ssl" if listener == "pop3s" else "sslproto 'TLS1.2+'"  # on 110 fetchmail uses STLS
    rc = tmp_path / "fetchmailrc"
    rc.write_text(f"""set no bouncemail
poll 127.0.0.1 service {server.ports[listener]} protocol pop3 auth password
  user "alice@example.test" there with password "{PASSWORD}" is root here
  {tls} no sslcertck
  mda "/bin/sh -c 'cat > {out}/$$.eml'"
""")
    rc.chmod(0o600)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FETCHMAILHOME": str(tmp_path)}
    result = subprocess.run(["fetchmail", "-f", str(rc), "--nodetach", "-v"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    fetched = [p.read_bytes() for p in out.iterdir()]
    assert len(fetched) == count
    assert any(f"Subject: {subject}".encode() in m and b"\n.dotted\n" in m for m in fetched)
    assert files(server, "alice@example.test") == {}
