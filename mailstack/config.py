"""TOML configuration loaded into frozen, validated settings.

Every key is checked against a schema: an unknown key, a wrong type or an
unparseable value raises :class:`ConfigError` naming the key path, and nothing
downstream parses strings again (paths are absolute, durations are seconds,
addresses are ``(host, port)`` tuples, networks are ``ipaddress`` objects).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from mailstack.addresses import canonical
from mailstack.faults import Rule, RuleError, parse_rule

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A configuration problem at one key path, printable as one line."""

    def __init__(self, key: tuple[str, ...] | str, message: str) -> None:
        self.key = key if isinstance(key, tuple) else tuple(key.split(".")) if key else ()
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ".".join(self.key)
        return f"config error at {where}: {self.message}" if where else f"config error: {self.message}"


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ListenSettings:
    smtp: HostPort | None
    submission: HostPort | None
    submissions: HostPort | None
    pop3: HostPort | None
    pop3s: HostPort | None
    imap: HostPort | None
    imaps: HostPort | None
    managesieve: HostPort | None
    http: HostPort | None  # metrics, health, autoconfig, MTA-STS policy, the lab's API; off when ""
    https: HostPort | None  # the same site over TLS with the server's certificate; off when ""


@dataclass(frozen=True, slots=True)
class StorageSettings:
    accounts: Path
    maildirs: Path
    queue: Path
    dkim: Path
    srs_secret: Path
    vacation: Path
    ratelimit: Path


@dataclass(frozen=True, slots=True)
class TLSSettings:
    cert: Path
    key: Path
    self_signed: bool
    allow_plaintext_auth: bool


@dataclass(frozen=True, slots=True)
class RelaySettings:
    networks: tuple[IPNetwork, ...]
    smarthost: HostPort | None
    smarthost_username: str
    smarthost_password: str
    resolvers: tuple[HostPort, ...]
    port: int
    retry: tuple[float, ...]
    max_age: float
    delay_warning: float | None
    max_received: int
    connections: int
    connections_per_domain: int
    capture: bool  # mail for other domains goes into capture_mailbox, never out
    capture_mailbox: str  # "": capture@ the first local domain
    capture_except: tuple[str, ...]  # domains still relayed in capture mode (a lab's other domains)
    source_address: str  # the local address outbound connections come from; "": the system's choice
    mx_networks: tuple[IPNetwork, ...]  # non-public MX addresses mail may still go to (labs); others refused
    mta_sts: bool = True  # obey recipient domains' MTA-STS policies (RFC 8461)
    ca_file: str = ""  # extra CA certificates (PEM) outbound TLS verification trusts besides the system's
    https_port: int = 443  # where MTA-STS policies are fetched (443; labs and tests may differ)
    messages_per_connection: int = 100  # a session to a server is kept for the next message up to this; 1: never


@dataclass(frozen=True, slots=True)
class HTTPSettings:
    token: str  # clients other than loopback must send "Authorization: Bearer <token>"; "": refused
    faults_api: bool  # /api/v1/faults: failure rules changed at run time


@dataclass(frozen=True, slots=True)
class MTASTSSettings:
    mode: str  # the policy's mode (RFC 8461 §3.2): "testing", "enforce" or "none"
    max_age: float  # seconds a sender may cache the policy
    mx: tuple[str, ...]  # MX host patterns besides hostname ("*.example.org" allowed)


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    message_size: int
    recipients: int
    connections_per_ip: int
    command_timeout: float
    data_timeout: float
    auth_failures: int
    auth_lockout: float
    send_per_hour: int  # messages an authenticated user may submit an hour; 0: no limit
    send_per_hour_domain: int  # messages submitted with senders of one domain an hour; 0: no limit
    send_recipients: int  # recipients of one submitted message; 0: limits.recipients


@dataclass(frozen=True, slots=True)
class ChecksSettings:
    dkim_max_signatures: int
    dmarc_reject: bool
    dmarc_quarantine: bool
    spf_fail: str
    temperror: str
    dnsbl: tuple[str, ...]
    dnswl: tuple[str, ...]
    arc_trusted: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    recipient_delimiter: str  # user+tag@domain goes to user@domain; "" turns it off


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: str  # "text": twistd's log only; "json": JSON lines in ``path`` too (read by ``mailstack trace``)
    path: Path


@dataclass(frozen=True, slots=True)
class Settings:
    hostname: str
    domains: tuple[str, ...]
    listen: ListenSettings
    storage: StorageSettings
    tls: TLSSettings
    relay: RelaySettings
    limits: LimitsSettings
    checks: ChecksSettings
    delivery: DeliverySettings
    log: LogSettings
    http: HTTPSettings
    mta_sts: MTASTSSettings
    faults: tuple[Rule, ...] = ()  # [[faults]]: failure injection rules (mailstack.faults)


# -- value parsers -----------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def parse_duration(value: object) -> float:
    """``"90s"``, ``"5m"``, ``"1h"``, ``"5d"``, ``"2w"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"5m\"")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"cannot parse duration {value!r} (use e.g. \"30s\", \"5m\", \"1h\", \"5d\")")
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def parse_hostport(value: object, *, default_port: int | None = None) -> HostPort:
    """``"host:port"``, ``"[v6]:port"`` (or ``"host"`` when a default port is given)."""
    if not isinstance(value, str):
        raise ValueError("expected a string \"host:port\"")
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"cannot parse {value!r}: missing ']'")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
        if port_text is None:
            raise ValueError(f"cannot parse {value!r} as \"[host]:port\"")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" not in text:
        host, port_text = text, ""
    else:
        raise ValueError(f"cannot parse {value!r}: write IPv6 addresses as \"[addr]:port\"")
    if not host:
        raise ValueError(f"cannot parse {value!r}: empty host")
    if port_text == "":
        if default_port is None:
            raise ValueError(f"cannot parse {value!r}: missing port (\"host:port\")")
        port = default_port
    else:
        if not port_text.isdigit():
            raise ValueError(f"cannot parse {value!r}: port {port_text!r} is not a number")
        port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0-65535")
    return HostPort(host, port)


def parse_hostname(value: object) -> str:
    if not isinstance(value, str) or not _HOSTNAME.match(value.rstrip(".")):
        raise ValueError(f"{value!r} is not a valid host name")
    return value.rstrip(".").lower()


def _expect(kind: type | tuple[type, ...], what: str) -> Callable[[object], Any]:
    def check(value: object) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise ValueError(f"expected {what}, got a boolean")
        if not isinstance(value, kind):
            raise ValueError(f"expected {what}, got {type(value).__name__} {value!r}")
        return value

    return check


def _count(value: object) -> int:
    v = _expect(int, "an integer")(value)
    if v < 0:
        raise ValueError("must be 0 (no limit) or more")
    return int(v)


def _positive_int(value: object) -> int:
    v = _expect(int, "an integer")(value)
    if v < 1:
        raise ValueError("must be at least 1")
    return int(v)


def _port(value: object) -> int:
    v = _expect(int, "a port number")(value)
    if not 1 <= v <= 65535:
        raise ValueError(f"port {v} out of range 1-65535")
    return int(v)


def _list_of(item: Callable[[object], Any]) -> Callable[[object], tuple[Any, ...]]:
    def check(value: object) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {type(value).__name__}")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item(v))
            except ValueError as e:
                raise ValueError(f"item {i}: {e}") from None
        return tuple(out)

    return check


def _network(value: object) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError("expected a network such as \"127.0.0.0/8\"")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP network") from None


def _optional_hostport(value: object) -> HostPort | None:
    if value == "":
        return None
    return parse_hostport(value)


def _ip_address(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected an IP address as a string")
    if not value:
        return ""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _optional_duration(value: object) -> float | None:
    if value == "":
        return None
    return parse_duration(value)


def _domain(value: object) -> str:
    return parse_hostname(value)


DELIMITER_CHARACTERS = "+-_=~#%&^!$/?'{|}`*"  # may stand between a user and a tag in a local part


def _delimiter(value: object) -> str:
    """Characters that separate a user from a tag (``user+tag``), or "" for none."""
    if not isinstance(value, str) or any(c not in DELIMITER_CHARACTERS for c in value):
        raise ValueError(f"expected \"\" or characters among {DELIMITER_CHARACTERS!r}, got {value!r}")
    return value


def _mx_pattern(value: object) -> str:
    """An MX host name, or ``*.`` and a name (RFC 8461 §3.2)."""
    if isinstance(value, str) and value.startswith("*."):
        return "*." + parse_hostname(value[2:])
    return parse_hostname(value)


def _policy_age(value: object) -> float:
    seconds = parse_duration(value)
    if not 0 < seconds <= 31557600:  # RFC 8461 §3.2: at most 31557600 seconds
        raise ValueError(f"expected a duration up to a year, got {value!r}")
    return seconds


def _one_of(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return str(value)

    return check


# -- schema ---------------------------------------------------------------------

_Str = _expect(str, "a string")
_Bool = _expect(bool, "true or false")

# section -> key -> (parser, default as written in etc/mailstack.toml)
SCHEMA: dict[str, dict[str, tuple[Callable[[object], Any], object]]] = {
    "": {
        "hostname": (parse_hostname, "mail.example.test"),
        "domains": (_list_of(_domain), ["example.test"]),
    },
    "listen": {
        "smtp": (_optional_hostport, "127.0.0.1:2525"),
        "submission": (_optional_hostport, "127.0.0.1:5870"),
        "submissions": (_optional_hostport, "127.0.0.1:4650"),
        "pop3": (_optional_hostport, "127.0.0.1:1100"),
        "pop3s": (_optional_hostport, "127.0.0.1:9950"),
        "imap": (_optional_hostport, "127.0.0.1:1430"),
        "imaps": (_optional_hostport, "127.0.0.1:9930"),
        "managesieve": (_optional_hostport, "127.0.0.1:41900"),
        "http": (_optional_hostport, ""),
        "https": (_optional_hostport, ""),
    },
    "storage": {
        "accounts": (_Str, "var/accounts.sqlite3"),
        "maildirs": (_Str, "maildirs"),
        "queue": (_Str, "var/queue"),
        "dkim": (_Str, "var/dkim"),
        "srs_secret": (_Str, "var/srs.key"),
        "vacation": (_Str, "var/vacation.sqlite3"),
        "ratelimit": (_Str, "var/ratelimit.sqlite3"),
    },
    "tls": {
        "cert": (_Str, "var/tls/cert.pem"),
        "key": (_Str, "var/tls/key.pem"),
        "self_signed": (_Bool, True),
        "allow_plaintext_auth": (_Bool, False),
    },
    "relay": {
        "networks": (_list_of(_network), ["127.0.0.0/8", "::1/128"]),
        "smarthost": (_optional_hostport, ""),
        "smarthost_username": (_Str, ""),
        "smarthost_password": (_Str, ""),
        "resolvers": (_list_of(lambda v: parse_hostport(v, default_port=53)), []),
        "port": (_port, 25),
        "retry": (_list_of(parse_duration), ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]),
        "max_age": (parse_duration, "5d"),
        "delay_warning": (_optional_duration, "4h"),
        "max_received": (_positive_int, 50),
        "connections": (_positive_int, 50),
        "connections_per_domain": (_positive_int, 10),
        "capture": (_Bool, False),
        "capture_mailbox": (_Str, ""),
        "capture_except": (_list_of(_domain), []),
        "source_address": (_ip_address, ""),
        "mx_networks": (_list_of(_network), []),
        "mta_sts": (_Bool, True),
        "ca_file": (_Str, ""),
        "https_port": (_port, 443),
        "messages_per_connection": (_positive_int, 100),
    },
    "limits": {
        "message_size": (_positive_int, 36700160),
        "recipients": (_positive_int, 100),
        "connections_per_ip": (_positive_int, 20),
        "command_timeout": (parse_duration, "5m"),
        "data_timeout": (parse_duration, "10m"),
        "auth_failures": (_positive_int, 10),
        "auth_lockout": (parse_duration, "15m"),
        "send_per_hour": (_count, 0),
        "send_per_hour_domain": (_count, 0),
        "send_recipients": (_count, 0),
    },
    "checks": {
        "dkim_max_signatures": (_positive_int, 5),
        "dmarc_reject": (_Bool, True),
        "dmarc_quarantine": (_Bool, True),
        "spf_fail": (_one_of("tag", "reject"), "tag"),
        "temperror": (_one_of("accept", "defer"), "accept"),
        "dnsbl": (_list_of(_domain), []),
        "dnswl": (_list_of(_domain), []),
        "arc_trusted": (_list_of(_domain), []),
    },
    "delivery": {
        "recipient_delimiter": (_delimiter, "+"),
    },
    "log": {
        "format": (_one_of("text", "json"), "text"),
        "path": (_Str, "var/log/mailstack.jsonl"),
    },
    "http": {
        "token": (_Str, ""),
        "faults_api": (_Bool, False),
    },
    "mta_sts": {
        "mode": (_one_of("testing", "enforce", "none"), "testing"),
        "max_age": (_policy_age, "7d"),
        "mx": (_list_of(_mx_pattern), []),
    },
}

_SECTION_TYPES: dict[str, type] = {
    "listen": ListenSettings,
    "storage": StorageSettings,
    "tls": TLSSettings,
    "relay": RelaySettings,
    "limits": LimitsSettings,
    "checks": ChecksSettings,
    "delivery": DeliverySettings,
    "log": LogSettings,
    "http": HTTPSettings,
    "mta_sts": MTASTSSettings,
}


def _parse_section(name: str, raw: Mapping[str, object]) -> dict[str, Any]:
    schema = SCHEMA[name]
    for key in raw:
        if key not in schema:
            path = (name, key) if name else (key,)
            raise ConfigError(path, f"unknown key (known: {', '.join(sorted(schema))})")
    out: dict[str, Any] = {}
    for key, (parser, default) in schema.items():
        value = raw.get(key, default)
        try:
            out[key] = parser(value)
        except ValueError as e:
            raise ConfigError((name, key) if name else (key,), str(e)) from None
    return out


def from_mapping(raw: Mapping[str, object], base: Path | str | None = None) -> Settings:
    """Validate a parsed TOML mapping; relative paths resolve against *base*."""
    base_dir = Path(base if base is not None else os.getcwd()).absolute()
    top = {k: v for k, v in raw.items() if not isinstance(v, dict) and k != "faults"}
    faults = _faults(raw.get("faults", []))
    for key, value in raw.items():
        if isinstance(value, dict) and key not in _SECTION_TYPES:
            raise ConfigError((key,), f"unknown section (known: {', '.join(sorted(_SECTION_TYPES))})")
    values = _parse_section("", top)
    sections: dict[str, Any] = {}
    for name, cls in _SECTION_TYPES.items():
        section = raw.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError((name,), "expected a table")
        parsed = _parse_section(name, section)
        if name in ("storage", "tls", "log"):
            for key, value in parsed.items():
                if isinstance(value, str) and (name != "log" or key == "path"):
                    if not value:
                        raise ConfigError((name, key), "must not be empty")
                    parsed[key] = (base_dir / value).absolute()
        sections[name] = cls(**parsed)
    relay: RelaySettings = sections["relay"]
    if relay.ca_file:
        sections["relay"] = relay = replace(relay, ca_file=str((base_dir / relay.ca_file).absolute()))
    if relay.smarthost_username and relay.smarthost is None:
        raise ConfigError(("relay", "smarthost_username"), "set relay.smarthost too")
    if relay.capture:
        sections["relay"] = relay = replace(relay, capture_mailbox=_capture_mailbox(relay.capture_mailbox,
                                                                                  values["domains"]))
    return Settings(hostname=values["hostname"], domains=values["domains"], faults=faults, **sections)


def _faults(raw: object) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        raise ConfigError(("faults",), "expected an array of tables ([[faults]])")
    rules = []
    for i, entry in enumerate(raw):
        try:
            rules.append(parse_rule(entry))
        except RuleError as e:
            raise ConfigError((f"faults[{i}]", e.key), e.message) from None
    return tuple(rules)


def _capture_mailbox(value: str, domains: tuple[str, ...]) -> str:
    if not value:
        if not domains:
            raise ConfigError(("relay", "capture_mailbox"), "set it: there is no local domain to put it in")
        return f"capture@{domains[0]}"
    try:
        return canonical(value)
    except ValueError as e:
        raise ConfigError(("relay", "capture_mailbox"), str(e)) from None


def load(path: Path | str | None = None, base: Path | str | None = None) -> Settings:
    """Load settings from *path*; ``None`` gives the built-in defaults."""
    if path is None:
        return from_mapping({}, base)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError((), f"config file {str(path)!r} not found") from None
    except OSError as e:
        raise ConfigError((), f"cannot read {str(path)!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError((), f"{path}: invalid TOML: {e}") from None
    return from_mapping(raw, base)


def default_path(environ: Mapping[str, str] | None = None, cwd: Path | str | None = None) -> Path | None:
    """``$MAILSTACK_CONFIG``, else ``etc/mailstack.toml`` in *cwd*, else None (defaults)."""
    env = os.environ if environ is None else environ
    if env.get("MAILSTACK_CONFIG"):
        return Path(env["MAILSTACK_CONFIG"])
    candidate = Path(cwd if cwd is not None else os.getcwd()) / "etc" / "mailstack.toml"
    return candidate if candidate.exists() else None


def render(settings: Settings) -> str:
    """The effective configuration as TOML (for ``mailstack check-config``)."""

    def value(v: object) -> str:
        if v is None:
            return '""'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return repr(int(v)) if float(v).is_integer() else repr(v)
        if isinstance(v, tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"hostname = {value(settings.hostname)}", f"domains = {value(settings.domains)}"]
    for name in _SECTION_TYPES:
        section = getattr(settings, name)
        lines.append("")
        lines.append(f"[{name}]")
        for f in fields(section):
            v = getattr(section, f.name)
            if f.name in ("smarthost_password", "token") and v:
                v = "********"
            lines.append(f"{f.name} = {value(v)}")
    for rule in settings.faults:
        lines += ["", "[[faults]]"]
        lines += [f"{f.name} = {value(getattr(rule, f.name))}" for f in fields(rule)
                  if f.name not in ("id", "hits") and getattr(rule, f.name) != f.default]
    return "\n".join(lines) + "\n"
