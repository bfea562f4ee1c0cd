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
