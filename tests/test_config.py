"""Configuration: defaults equal the quick-start file; every bad value names its key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from mailstack import config
from mailstack.config import ConfigError, HostPort

REPO = Path(__file__).resolve().parents[1]


def load_text(tmp_path, text):
    p = tmp_path / "m.toml"
    p.write_text(text)
    return config.load(p, base=tmp_path)


def test_builtin_defaults_equal_the_quick_start_file_but_for_the_http_listener():
    from dataclasses import replace

    quick = config.load(REPO / "etc/mailstack.toml", base=REPO)
    assert quick.listen.http == config.HostPort("127.0.0.1", 8080)  # metrics, health, autoconfig on loopback
    assert config.load(None, base=REPO).listen.http is None  # off unless a configuration asks for it
    assert replace(quick, listen=replace(quick.listen, http=None)) == config.load(None, base=REPO)


def test_values_are_typed_and_paths_resolve_against_the_base(tmp_path):
    s = load_text(tmp_path, """
hostname = "MX.Example.ORG."
domains = ["example.org", "Example.NET"]
[listen]
smtp = "0.0.0.0:25"
imap = "[::1]:143"
pop3 = ""
[storage]
maildirs = "/srv/mail"
[relay]
networks = ["10.0.0.0/8"]
retry = ["30s", "2m", 3600]
max_age = "2d"
resolvers = ["192.0.2.53", "[2001:db8::53]:5353"]
""")
    assert s.hostname == "mx.example.org"
    assert s.domains == ("example.org", "example.net")
    assert s.listen.smtp == HostPort("0.0.0.0", 25)
    assert s.listen.imap == HostPort("::1", 143)
    assert s.listen.pop3 is None
    assert s.storage.maildirs == Path("/srv/mail")
    assert s.storage.accounts == tmp_path / "var/accounts.sqlite3"
    assert s.relay.networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert s.relay.retry == (30.0, 120.0, 3600.0)
    assert s.relay.max_age == 172800.0
    assert s.relay.resolvers == (HostPort("192.0.2.53", 53), HostPort("2001:db8::53", 5353))


@pytest.mark.parametrize("text, key, words", [
    ('hostnme = "x"', "hostnme", "unknown key"),
    ("[listen]\nsmpt = \"127.0.0.1:25\"", "listen.smpt", "unknown key"),
    ("[listn]\nsmtp = \"x:1\"", "listn", "unknown section"),
    ('[listen]\nsmtp = "127.0.0.1"', "listen.smtp", "missing port"),
    ('[listen]\nsmtp = "127.0.0.1:99999"', "listen.smtp", "out of range"),
    ('[listen]\nsmtp = "::1:25"', "listen.smtp", "IPv6"),
    ("[listen]\nsmtp = 25", "listen.smtp", "host:port"),
    ('[limits]\nrecipients = "100"', "limits.recipients", "expected an integer"),
    ("[limits]\nrecipients = 0", "limits.recipients", "at least 1"),
    ("[limits]\nmessage_size = true", "limits.message_size", "boolean"),
    ('[relay]\nmax_age = "soon"', "relay.max_age", "cannot parse duration"),
    ('[relay]\nretry = ["1m", "x"]', "relay.retry", "item 1"),
    ('[relay]\nnetworks = ["10.0.0.0/33"]', "relay.networks", "not an IP network"),
    ('[relay]\nport = 0', "relay.port", "out of range"),
    ('[tls]\nself_signed = "yes"', "tls.self_signed", "true or false"),
    ('[storage]\nmaildirs = ""', "storage.maildirs", "must not be empty"),
    ('hostname = "bad host"', "hostname", "not a valid host name"),
    ('domains = ["ok.test", "-bad"]', "domains", "item 1"),
    ('[relay]\nsmarthost_username = "u"', "relay.smarthost_username", "smarthost"),
    ('[checks]\narc_trusted = ["lists.example.org", "not a name"]', "checks.arc_trusted", "item 1"),
])
def test_bad_values_name_their_key(tmp_path, text, key, words):
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text)
    assert ".".join(e.value.key) == key
    message = str(e.value)
    assert message.startswith(f"config error at {key}: ") and words in message
    assert "\n" not in message


def test_invalid_toml_and_missing_file_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, "hostname = ")
    assert "invalid TOML" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        config.load(tmp_path / "nope.toml")
    assert "not found" in str(e.value)


def test_default_path_prefers_environment_then_etc(tmp_path):
    assert config.default_path({"MAILSTACK_CONFIG": "/x.toml"}, cwd=tmp_path) == Path("/x.toml")
    assert config.default_path({}, cwd=tmp_path) is None
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/mailstack.toml").write_text("")
    assert config.default_path({}, cwd=tmp_path) == tmp_path / "etc/mailstack.toml"


def test_render_round_trips_through_load(tmp_path):
    s = config.load(None, base=tmp_path)
    again = load_text(tmp_path, config.render(s))
    assert again == s


def test_render_hides_the_smarthost_password(tmp_path):
    s = load_text(tmp_path, '[relay]\nsmarthost = "relay.example:587"\nsmarthost_username = "u"\n'
                            'smarthost_password = "hunter2"')
    assert "hunter2" not in config.render(s)


def test_recipient_delimiter(tmp_path: Path) -> None:
    assert config.from_mapping({}, base=tmp_path).delivery.recipient_delimiter == "+"
    assert config.from_mapping({"delivery": {"recipient_delimiter": ""}}, base=tmp_path).delivery.recipient_delimiter == ""
    with pytest.raises(config.ConfigError, match=r"delivery\.recipient_delimiter"):
        config.from_mapping({"delivery": {"recipient_delimiter": "@"}}, base=tmp_path)
