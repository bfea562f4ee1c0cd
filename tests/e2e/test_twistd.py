"""The twistd plugin as a self-hoster runs it: start, generated certificate, SIGTERM, bad config."""

from __future__ import annotations

import subprocess
import sys
import time

from .conftest import Server, free_ports, plugin_env, twistd_command, write_config


def test_twistd_help_lists_config_option():
    result = subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                             "mailstack", "--help"], capture_output=True, text=True, env=plugin_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_starts_creates_certificate_and_stops_on_sigterm(tmp_path):
    ports = dict(zip(("smtp", "submission", "submissions"), free_ports(3), strict=True))
    server = Server(tmp_path, write_config(tmp_path, ports), ports)
    server.start()
    cert, key = tmp_path / "var/tls/cert.pem", tmp_path / "var/tls/key.pem"
    assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert key.stat().st_mode & 0o777 == 0o600
    started = time.monotonic()
    assert server.stop(timeout=10) == 0
    assert time.monotonic() - started < 5
    log = server.log_text()
    assert "Traceback" not in log
    assert "Server Shut Down" in log or "Main loop terminated" in log


def test_bad_config_stops_start_with_one_line_naming_the_key(tmp_path):
    config = write_config(tmp_path, {"smtp": free_ports(1)[0]}, extra='retry = ["soon"]')
    result = subprocess.run(twistd_command(config), capture_output=True, text=True, cwd=tmp_path,
                            env=plugin_env(), timeout=60)
    assert result.returncode != 0
    assert "mailstack: config error at relay.retry: item 0: cannot parse duration 'soon'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_mismatched_certificate_is_a_clear_startup_error(tmp_path):
    ports = {"smtp": free_ports(1)[0]}
    from mailstack.tls import generate_self_signed

    generate_self_signed("a.example", tmp_path / "var/tls/cert.pem", tmp_path / "other.pem")
    generate_self_signed("b.example", tmp_path / "unused.pem", tmp_path / "var/tls/key.pem")
    result = subprocess.run(twistd_command(write_config(tmp_path, ports)), capture_output=True, text=True,
                            cwd=tmp_path, env=plugin_env(), timeout=60)
    assert result.returncode != 0
    assert "does not match the certificate" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_installed_plugin_is_found_without_the_checkout(tmp_path):
    """After ``pip install .`` the plugin ships in the wheel: no PYTHONPATH needed."""
    import os
    from importlib import metadata
    from pathlib import Path

    import pytest

    repo = Path(__file__).resolve().parents[2]
    for dist in metadata.distributions(name="mailstack"):  # the checkout's egg-info may come first
        plugin = Path(str(dist.locate_file("twisted/plugins/mailstack_plugin.py"))).resolve()
        if plugin.exists() and plugin != repo / "twisted/plugins/mailstack_plugin.py":
            break
    else:
        pytest.skip("mailstack is not installed from a wheel (CI installs it with pip install .)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                             "mailstack", "--help"], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_a_port_in_use_stops_start_with_one_line_naming_the_listener_and_address(tmp_path):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        ports = {"smtp": free_ports(1)[0], "submission": port}
        command = [arg for arg in twistd_command(write_config(tmp_path, ports)) if arg != "--pidfile="]
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=plugin_env(), timeout=60)
    finally:
        taken.close()
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"mailstack: listen.submission: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert "Traceback" not in result.stdout and "cannot listen on" in result.stdout  # the log has it too
    assert not (tmp_path / "twistd.pid").exists()  # the next start is not told of a stale pid file


def test_uid_and_gid_drop_privileges_after_binding_and_the_files_belong_to_that_user(tmp_path):
    """As root with --uid nobody: the ports are bound, then every file the server makes is nobody's."""
    import os
    import pwd
    import shutil
    import smtplib
    import ssl
    import tempfile
    from pathlib import Path

    import pytest

    from .conftest import PASSWORD, Server, cli

    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    import stat

    import twisted

    from .conftest import REPO

    for code in (REPO, Path(twisted.__file__).parent):  # what the server may still import after the drop
        if not all(p.stat().st_mode & stat.S_IXOTH for p in (code, *code.parents)):
            pytest.skip(f"{code} is not reachable by other users")
    nobody = pwd.getpwnam("nobody")
    root = Path(tempfile.mkdtemp(prefix="mailstack-uid-"))  # pytest's own folders are root's alone
    try:
        os.chmod(root, 0o755)
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        ports = dict(zip(("smtp", "submission"), free_ports(2), strict=True))
        config = write_config(root, ports)
        # the administrator adds the user, then gives the folder to the mail user (the interpreter
        # may live where that user cannot start it)
        assert cli(config, "user", "add", "alice@example.test", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
        for path in [root, *root.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        from mailstack.tls import generate_self_signed

        # a certificate as certbot keeps it: the key root's alone, in a folder only root may enter
        tls = root / "certs"
        tls.mkdir(mode=0o700)
        generate_self_signed("mail.example.test", tls / "cert.pem", tls / "key.pem")
        config.write_text(config.read_text().replace(f"{root}/var/tls/", f"{tls}/"))
        server = Server(root, config, ports)
        command = twistd_command(config)
        server_command = [*command[:3], "--uid", "nobody", "--gid", str(nobody.pw_gid), *command[3:]]
        log = open(root / "twistd.log", "ab")  # noqa: SIM115 (closed below)
        server.log = root / "twistd.log"
        server.proc = subprocess.Popen(server_command, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                       env=plugin_env())
        log.close()
        try:
            from .conftest import wait_for_port

            for port in ports.values():
                try:
                    wait_for_port(port, server.proc)
                except RuntimeError:
                    raise AssertionError(server.log_text()[-2000:]) from None
            server.wait_until_serving()
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=20) as smtp:
                smtp.starttls(context=context)
                smtp.login("alice@example.test", PASSWORD)
                smtp.sendmail("alice@example.test", ["alice@example.test"], b"Subject: mine\r\n\r\nhi\r\n")
            delivered = list((root / "maildirs/example.test/alice/new").iterdir())
            assert len(delivered) == 1
            made = [delivered[0], root / "var/srs.key", root / "var/vacation.sqlite3", root / "var/queue",
                    root / "maildirs/example.test/alice"]
            assert {str(p): (p.stat().st_uid, p.stat().st_gid) for p in made} == {
                str(p): (nobody.pw_uid, nobody.pw_gid) for p in made}
            assert server.stop() == 0
        finally:
            if server.proc.poll() is None:
                server.proc.kill()
        assert "Traceback" not in server.log_text()
    finally:
        shutil.rmtree(root, ignore_errors=True)
