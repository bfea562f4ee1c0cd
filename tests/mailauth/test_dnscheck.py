"""``mailstack dns-check``: the records ``dns-records`` prints, looked up in DNS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet.defer import Deferred

from mailstack.dkim import KeyDirectory
from mailstack.dns import MXResolver
from mailstack.dnscheck import check_domain
from mailstack.testing_dns import FakeResolver

from .helpers import settle


def zones_for(keys: KeyDirectory, *, dkim: bool = True, ptr: str = "mail.example.org") -> dict:
    zones: dict = {
        "example.org": {"MX": [(10, "mail.example.org")], "TXT": ["v=spf1 mx -all"]},
        "mail.example.org": {"A": ["192.0.2.25"]},
        "25.2.0.192.in-addr.arpa": {"PTR": [ptr]},
        "_dmarc.example.org": {"TXT": ["v=DMARC1; p=quarantine"]},
        "_submissions._tcp.example.org": {"SRV": [(0, 1, 465, "mail.example.org")]},
    }
    if dkim:
        for key in keys.keys("example.org"):
            zones[key.record_name()] = {"TXT": [key.record_text()]}
    return zones


def findings(zones: dict, keys: KeyDirectory) -> dict[str, str]:
    resolver = MXResolver(FakeResolver(zones))
    found = settle(Deferred.fromCoroutine(check_domain(resolver, "example.org", "mail.example.org",
                                                       keys.keys("example.org"), {"submissions", "imaps"})))
    return {f.what: f.state + ("!" if f.wrong else "") for f in found}


def test_a_domain_with_everything_published(tmp_path):
    keys = KeyDirectory(tmp_path / "dkim")
    key = keys.generate("example.org", "rsa", selector="s1")
    got = findings(zones_for(keys), keys)
    assert got["MX example.org"] == "ok" and got["SPF example.org"] == "ok"
    assert got[f"DKIM {key.record_name()}"] == "ok" and got["DMARC _dmarc.example.org"] == "ok"
    assert got["PTR 192.0.2.25"] == "ok" and got["SRV _submissions._tcp.example.org"] == "ok"
    assert got["SRV _imaps._tcp.example.org"] == "missing"  # optional: not a problem
    assert not any(state.endswith("!") for state in got.values())


def test_missing_and_different_records_are_problems(tmp_path):
    keys = KeyDirectory(tmp_path / "dkim")
    key = keys.generate("example.org", "rsa", selector="s1")
    zones = zones_for(keys, dkim=False, ptr="host.isp.example")
    zones["example.org"] = {"MX": [(10, "mx.elsewhere.example")], "TXT": ["v=spf1 include:isp.example -all"]}
    del zones["_dmarc.example.org"]
    other = KeyDirectory(tmp_path / "other")
    other.generate("example.org", "rsa", selector="s1")
    zones[key.record_name()] = {"TXT": [other.keys("example.org")[0].record_text()]}  # a stale key
    got = findings(zones, keys)
    assert got["MX example.org"] == "differs!"
    assert got["SPF example.org"] == "differs"  # a policy of their own: reported, not wrong
    assert got[f"DKIM {key.record_name()}"] == "differs!"
    assert got["DMARC _dmarc.example.org"] == "missing!"
    assert got["PTR 192.0.2.25"] == "differs!"


def test_the_command_asks_the_configured_resolvers_and_exits_1_on_a_problem(tmp_path):
    config = tmp_path / "mailstack.toml"
    keys = KeyDirectory(tmp_path / "dkim")
    keys.generate("example.org", "ed25519", selector="e1")
    zones = zones_for(keys)
    (tmp_path / "zones.json").write_text(json.dumps(zones))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    dns = subprocess.Popen([sys.executable, "-m", "mailstack.testing_dns", str(tmp_path / "zones.json"),
                            str(tmp_path / "port")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "port").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        port = (tmp_path / "port").read_text().strip()
        config.write_text(f'hostname = "mail.example.org"\ndomains = ["example.org"]\n[storage]\n'
                          f'accounts = "{tmp_path}/accounts.sqlite3"\ndkim = "{tmp_path}/dkim"\n'
                          f'[relay]\nresolvers = ["127.0.0.1:{port}"]\n')

        def check() -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "mailstack.cli", "--config", str(config), "dns-check",
                                   "example.org"], env=env, capture_output=True, text=True, timeout=60)

        good = check()
        assert good.returncode == 0, good.stdout + good.stderr
        assert "ok                  DKIM e1._domainkey.example.org" in good.stdout
        assert good.stdout.endswith("example.org: all required records are in place\n")
        keys.generate("example.org", "rsa", selector="r1")  # a new key, not yet in DNS
        bad = check()
        assert bad.returncode == 1 and "missing             DKIM r1._domainkey.example.org" in bad.stdout
        assert bad.stdout.endswith("example.org: 1 problem(s)\n")
    finally:
        dns.send_signal(signal.SIGTERM)
        dns.wait(10)
