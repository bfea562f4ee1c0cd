"""``mailstack lab``: a world of several mail domains on one machine, for integration labs.

Each lab domain gets the whole mailstack service tree of its own (the one
``twistd mailstack`` runs), on a loopback address of its own (127.0.0.11,
127.0.0.12, ...) and the usual ports (25, 587, 465, 143, 993, 110, 995, 4190
when run as root; 2525, 5870, 4650, 1430, 9930, 1100, 9950, 41900 otherwise),
all in this one process on one reactor. An authoritative DNS server
(twisted.names, :mod:`mailstack.testing_dns`) publishes for every domain its
MX, the mail host's A and PTR, SPF, the DKIM keys made at start, DMARC
(``p=reject``) and the SRV records of RFC 6186; every domain resolves through
it only. Outbound connections come from the domain's own address
(``relay.source_address``), so SPF holds, and nothing is trusted for being on
loopback: mail from a.test to b.test is submitted, DKIM-signed, routed by MX
over SMTP with STARTTLS, and checked (SPF, DKIM, DMARC) as on the internet.

Mail for a domain outside the lab never leaves: it is captured
(``relay.capture``) in ``capture@<domain>``, readable over IMAP and the HTTP
API (``http://<address>:8025/``), which also carries the failure rules
(``/api/v1/faults``, ``mailstack lab fail``).

``lab.json`` in the lab's directory says where everything is while the lab
runs (the CLI's ``lab fail`` reads it); everything else there (accounts,
Maildirs, queues, keys, the JSON log ``mailstack.jsonl`` that ``mailstack
trace --log`` reads) stays after the lab stops, for a look or a second run.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mailstack import config
from mailstack.config import ConfigError, HostPort
from mailstack.faults import Rule, RuleError, parse_rule

STANDARD_PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "imap": 143, "imaps": 993,
                  "pop3": 110, "pop3s": 995, "managesieve": 4190, "http": 8025}
HIGH_PORTS = {"smtp": 2525, "submission": 5870, "submissions": 4650, "imap": 1430, "imaps": 9930,
              "pop3": 1100, "pop3s": 9950, "managesieve": 41900, "http": 8025}
FIRST_ADDRESS = ipaddress.IPv4Address("127.0.0.11")
LAB_RETRY = ["5s", "15s", "30s", "1m", "5m"]  # a lab shows retries in seconds, not hours
MAX_DOMAINS = 200
MAX_USERS = 1000

__all__ = ["LabDomain", "LabSpec", "load_spec", "make_spec", "run"]


@dataclass(frozen=True, slots=True)
class LabDomain:
    name: str
    address: str
    users: Mapping[str, str] = field(default_factory=dict)  # address -> password
    faults: tuple[Rule, ...] = ()
    capture: bool = True

    @property
    def hostname(self) -> str:
        return f"mail.{self.name}"


@dataclass(frozen=True, slots=True)
class LabSpec:
    directory: Path
    domains: tuple[LabDomain, ...]
    ports: Mapping[str, int]
    dns: HostPort
    token: str = ""


# -- the description: command line or lab.toml ------------------------------------------------

def _default_ports() -> str:
    return "standard" if hasattr(os, "geteuid") and os.geteuid() == 0 else "high"


def _ports(kind: str) -> dict[str, int]:
    if kind == "standard":
        return dict(STANDARD_PORTS)
    if kind == "high":
        return dict(HIGH_PORTS)
    raise ConfigError(("ports",), f"{kind!r}: standard or high")


def _address(i: int) -> str:
    return str(FIRST_ADDRESS + i)


def _users(domain: str, count: int) -> dict[str, str]:
    return {f"user{n}@{domain}": secrets.token_urlsafe(12) for n in range(1, count + 1)}


def _check_domain(name: object, key: tuple[str, ...]) -> str:
    try:
        return config.SCHEMA[""]["domains"][0]([name])[0]  # the main configuration's rule for domains
    except ValueError as e:
        raise ConfigError(key, str(e)) from None


def make_spec(domains: Sequence[str], *, directory: Path, users: int = 2, ports: str | None = None,
              dns: str | None = None, capture: bool = True) -> LabSpec:
    """The lab the command line describes: DOMAIN... with ``users`` users each."""
    if not domains:
        raise ConfigError(("domains",), "name at least one domain")
    if len(domains) > MAX_DOMAINS:
        raise ConfigError(("domains",), f"at most {MAX_DOMAINS}")
    if not 0 <= users <= MAX_USERS:
        raise ConfigError(("users",), f"from 0 to {MAX_USERS}")
    names = [_check_domain(d, ("domains",)) for d in domains]
    if len(set(names)) != len(names):
        raise ConfigError(("domains",), "a domain is named twice")
    port_map = _ports(ports or _default_ports())
    return LabSpec(directory=directory.absolute(), ports=port_map, dns=_dns(dns, port_map),
                   domains=tuple(LabDomain(name, _address(i), _users(name, users), capture=capture)
                                 for i, name in enumerate(names)))


def _dns(value: str | None, ports: Mapping[str, int]) -> HostPort:
    default = "127.0.0.10:53" if ports["smtp"] == 25 else "127.0.0.10:5353"
    try:
        return config.parse_hostport(value or default, default_port=53)
    except ValueError as e:
        raise ConfigError(("dns",), str(e)) from None


_TOP_KEYS = {"dir": str, "users": int, "ports": str, "dns": str, "capture": bool, "token": str, "domain": list}
_DOMAIN_KEYS = {"name": str, "address": str, "users": (int, dict), "capture": bool, "faults": list}


def load_spec(path: Path, *, directory: Path | None = None) -> LabSpec:
    """The lab a ``lab.toml`` describes; a wrong key stops with a one-line ConfigError naming it::

        dir = "lab"                 # relative to the file
        users = 2                   # made in every domain without its own list
        ports = "high"              # or "standard"
        dns = "127.0.0.10:5353"
        capture = true

        [[domain]]
        name = "a.test"
        address = "127.0.0.21"      # optional
        users = { alice = "secret one", bob = "secret two" }   # or a number

        [[domain.faults]]           # failure rules for this domain's SMTP listeners
        action = "greylist"
        seconds = 30
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(("lab",), f"cannot read {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(("lab",), f"{path} is not valid TOML: {e}") from None
    _check_keys(raw, _TOP_KEYS, ())
    base = path.absolute().parent
    where = directory if directory is not None else base / raw.get("dir", "mailstack-lab")
    users = raw.get("users", 2)
    if not 0 <= users <= MAX_USERS:
        raise ConfigError(("users",), f"from 0 to {MAX_USERS}")
    port_map = _ports(raw.get("ports", _default_ports()))
    entries = raw.get("domain", [])
    if not entries:
        raise ConfigError(("domain",), "describe at least one [[domain]]")
    domains = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        key = (f"domain[{i}]",)
        if not isinstance(entry, dict):
            raise ConfigError(key, "expected a table")
        _check_keys(entry, _DOMAIN_KEYS, key)
        if "name" not in entry:
            raise ConfigError((*key, "name"), "required")
        name = _check_domain(entry["name"], (*key, "name"))
        if name in seen:
            raise ConfigError((*key, "name"), f"{name} is named twice")
        seen.add(name)
        address = entry.get("address", _address(i))
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError((*key, "address"), f"{address!r} is not an IP address") from None
        if not ip.is_loopback:
            raise ConfigError((*key, "address"), "a lab lives on loopback addresses (127.0.0.0/8, ::1)")
        given = entry.get("users", users)
        if isinstance(given, int):
            accounts = _users(name, given)
        else:
            accounts = {}
            for local, password in given.items():
                if not isinstance(password, str) or not password:
                    raise ConfigError((*key, "users", local), "a password, as a string")
                accounts[local if "@" in local else f"{local}@{name}"] = password
        rules = []
        for j, rule in enumerate(entry.get("faults", [])):
            try:
                rules.append(parse_rule(rule))
            except RuleError as e:
                raise ConfigError((*key, f"faults[{j}]", e.key), e.message) from None
        domains.append(LabDomain(name, str(ip), accounts, tuple(rules), entry.get("capture", raw.get("capture", True))))
    return LabSpec(directory=Path(where).absolute(), domains=tuple(domains), ports=port_map,
                   dns=_dns(raw.get("dns"), port_map), token=raw.get("token", ""))


def _check_keys(raw: Mapping[str, Any], known: Mapping[str, Any], key: tuple[str, ...]) -> None:
    for name, value in raw.items():
        kind = known.get(name)
        if kind is None:
            raise ConfigError((*key, name), f"unknown key (known: {', '.join(sorted(known))})")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError((*key, name), f"expected {_kind_name(kind)}")


def _kind_name(kind: Any) -> str:
    names = {str: "a string", int: "a number", bool: "true or false", list: "an array", dict: "a table"}
    if isinstance(kind, tuple):
        return " or ".join(names[k] for k in kind)
    return names[kind]


# -- one domain's settings and DNS ---------------------------------------------------------------

def domain_settings(spec: LabSpec, domain: LabDomain) -> config.Settings:
    """The configuration of one lab domain's service tree, as ``mailstack.toml`` would hold it."""
    others = [d.name for d in spec.domains if d is not domain]
    listen = {name: f"{domain.address}:{port}" for name, port in spec.ports.items()}
    raw: dict[str, Any] = {
        "hostname": domain.hostname,
        "domains": [domain.name],
        "listen": listen,
        "storage": {"accounts": "accounts.sqlite3", "maildirs": "maildirs", "queue": "queue", "dkim": "dkim",
                    "srs_secret": "srs.key", "vacation": "vacation.sqlite3"},
        "tls": {"cert": "tls/cert.pem", "key": "tls/key.pem", "self_signed": False},
        "relay": {"networks": [], "resolvers": [str(spec.dns)], "port": spec.ports["smtp"],
                  "source_address": domain.address, "retry": LAB_RETRY, "capture": domain.capture,
                  "capture_except": others, "mx_networks": ["127.0.0.0/8", "::1/128"]},  # the lab's MXs
        "checks": {"temperror": "defer"},
        "http": {"faults_api": True, "token": spec.token},
        "faults": [_rule_table(rule) for rule in domain.faults],
    }
    return config.from_mapping(raw, spec.directory / domain.name)


def _rule_table(rule: Rule) -> dict[str, Any]:
    return {k: v for k, v in rule.as_json().items() if k not in ("id", "hits")}


def reverse_name(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


def zones(spec: LabSpec, keys: Mapping[str, list[Any]]) -> dict[str, Any]:
    """Every lab domain's records, for :class:`~mailstack.testing_dns.AuthoritativeDNS`.

    ``keys`` maps a domain to its DKIM keys (``DKIMKey``: selector, record text)."""
    out: dict[str, Any] = {}
    srv = {"_submission._tcp": "submission", "_submissions._tcp": "submissions", "_imap._tcp": "imap",
           "_imaps._tcp": "imaps", "_pop3._tcp": "pop3", "_pop3s._tcp": "pop3s", "_sieve._tcp": "managesieve"}
    for domain in spec.domains:
        d, host = domain.name, domain.hostname
        out[d] = {"MX": [(10, host)], "TXT": ["v=spf1 mx -all"]}
        out[host] = {"A": [domain.address]}
        out[reverse_name(domain.address)] = {"PTR": [host]}
        out[f"_dmarc.{d}"] = {"TXT": [f"v=DMARC1; p=reject; rua=mailto:postmaster@{d}"]}
        for key in keys.get(d, []):
            out[key.record_name()] = {"TXT": [key.record_text()]}
        for name, listener in srv.items():
            out[f"{name}.{d}"] = {"SRV": [(0, 1, spec.ports[listener], host)]}
        out[f"autoconfig.{d}"] = {"A": [domain.address]}
    return out


# -- running ----------------------------------------------------------------------------------------

@dataclass
class Running:
    """What a started lab is: for the table, ``lab.json`` and stopping."""

    spec: LabSpec
    dns_port: int
    services: Any
    dns_stop: Any
    passwords: dict[str, dict[str, str]]  # domain -> address -> password
    ca_files: dict[str, Path]

    def description(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "dns": f"{self.spec.dns.host}:{self.dns_port}",
            "domains": {
                d.name: {
                    "address": d.address, "hostname": d.hostname,
                    "ports": dict(self.spec.ports),
                    "http": f"http://{d.address}:{self.spec.ports['http']}",
                    "users": self.passwords[d.name], "ca": str(self.ca_files[d.name]),
                    "capture": f"capture@{d.name}" if d.capture else None,
                } for d in self.spec.domains},
        }


def start(spec: LabSpec, reactor: Any) -> Running:
    """Prepare every domain's files, start the DNS server and every service tree (reactor not running yet)."""
    from twisted.application.service import MultiService

    from mailstack.accounts.sqlite import SQLiteAccountStore
    from mailstack.dkim import KeyDirectory
    from mailstack.embedded import _write_tls
    from mailstack.errors import StartupError
    from mailstack.service import build_service
    from mailstack.testing_dns import AuthoritativeDNS

    spec.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys: dict[str, list[Any]] = {}
    passwords: dict[str, dict[str, str]] = {}
    ca_files: dict[str, Path] = {}
    settings_of = {}
    for domain in spec.domains:
        settings = domain_settings(spec, domain)
        settings_of[domain.name] = settings
        tls_dir = spec.directory / domain.name / "tls"
        if not (tls_dir / "cert.pem").exists():
            _write_tls(tls_dir, domain.hostname, (domain.address,))
        ca_files[domain.name] = tls_dir / "ca.pem"
        directory = KeyDirectory(settings.storage.dkim)
        found = directory.keys(domain.name)
        if not found:
            found = [directory.generate(domain.name, "rsa")]
        keys[domain.name] = found
        settings.storage.accounts.parent.mkdir(parents=True, exist_ok=True)
        store = SQLiteAccountStore(settings.storage.accounts)
        try:
            store.ensure_domains([domain.name])
            accounts = dict(domain.users)
            if domain.capture:
                accounts.setdefault(f"capture@{domain.name}", secrets.token_urlsafe(12))
            for address, password in accounts.items():
                if store.get_user(address) is None:
                    store.add_user(address, password)
                else:
                    store.set_password(address, password)
            passwords[domain.name] = accounts
        finally:
            store.close()
    dns_server = AuthoritativeDNS(zones(spec, keys))
    try:
        dns_port = dns_server.start(reactor, interface=spec.dns.host, port=spec.dns.port)
    except Exception as e:
        raise StartupError(f"dns: cannot listen on {spec.dns}: {e}") from None
    top = MultiService()
    try:
        for domain in spec.domains:
            settings = settings_of[domain.name]
            if dns_port != spec.dns.port:  # a free port was asked for: resolve through the one given
                settings = config.from_mapping(_with_resolver(settings, spec.dns.host, dns_port),
                                               spec.directory / domain.name)
            service = build_service(settings, reactor)
            service.setName(domain.name)
            service.setServiceParent(top)
    except BaseException:
        dns_server.stop()
        raise
    return Running(spec, dns_port, top, dns_server.stop, passwords, ca_files)


def _with_resolver(settings: config.Settings, host: str, port: int) -> dict[str, Any]:
    """The settings as a mapping again, resolving through host:port (for a DNS server on a free port)."""
    raw = tomllib.loads(config.render(settings))
    raw["relay"]["resolvers"] = [f"{host}:{port}"]
    return raw


def table(running: Running) -> str:
    """What a person needs to use the lab: endpoints, DNS, users."""
    spec = running.spec
    ports = "  ".join(f"{name} {spec.ports[name]}" for name in
                      ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "managesieve"))
    names = ", ".join(d.name for d in spec.domains)
    lines = [f"mailstack lab: {len(spec.domains)} domain(s) in {spec.directory}",
             f"DNS: {spec.dns.host} port {running.dns_port}, authoritative for {names}",
             f"ports on every domain's address: {ports}", ""]
    for d in spec.domains:
        lines.append(f"{d.name}  {d.address}  MX {d.hostname}")
        web = "captured mail and failure rules" if d.capture else "failure rules"
        lines.append(f"  http://{d.address}:{spec.ports['http']}/  ({web})")
        lines.append(f"  TLS certificates signed by {running.ca_files[d.name]}")
        for address, password in running.passwords[d.name].items():
            lines.append(f"  user {address:<32} password {password}")
        lines.append("")
    if any(d.capture for d in spec.domains):
        lines.append("Mail for domains outside the lab is captured (capture@<domain>), never sent.")
    lines += [f"Log: {spec.directory / 'mailstack.jsonl'} (mailstack trace --log ... QUEUE_ID). Ctrl-C stops the lab."]
    return "\n".join(lines)


def run(spec: LabSpec, out: TextIO = sys.stdout) -> int:
    """Run the lab in the foreground until SIGINT or SIGTERM; the exit status."""
    from twisted.internet import reactor as global_reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from mailstack.errors import StartupError
    from mailstack.service import JSONLog

    reactor: Any = global_reactor
    spec.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)  # Twisted's own chatter stays out
    predicate.setLogLevelForNamespace("mailstack", LogLevel.info)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(textFileLogObserver(out), [predicate])],
                                     redirectStandardIO=False)
    journal = JSONLog(spec.directory / "mailstack.jsonl")
    try:
        running = start(spec, reactor)
    except (StartupError, ConfigError) as e:
        print(f"mailstack lab: {e}", file=sys.stderr)
        return 1
    journal.startService()
    state = spec.directory / "lab.json"
    status = {"code": 0}

    def started() -> None:
        try:
            running.services.startService()
        except Exception as e:  # a port taken: one line, then stop
            print(f"mailstack lab: {_one_line(e)}", file=sys.stderr)
            status["code"] = 1
            reactor.stop()
            return
        tmp = state.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(running.description(), indent=2))
        tmp.replace(state)
        print(table(running), file=out, flush=True)

    async def stopping() -> None:
        state.unlink(missing_ok=True)
        if running.services.running:
            await running.services.stopService()
        await running.dns_stop()
        journal.stopService()

    def before_shutdown() -> Any:
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(stopping())

    reactor.callWhenRunning(started)
    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    reactor.run()
    return status["code"]


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def read_state(directory: Path) -> dict[str, Any]:
    """``lab.json`` of a running lab; ConfigError when none runs there."""
    path = directory.absolute() / "lab.json"
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ConfigError(("dir",), f"no lab is running in {directory} (no lab.json)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(("dir",), f"cannot read {path}: {e}") from None
