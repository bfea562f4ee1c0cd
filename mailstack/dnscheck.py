"""``mailstack dns-check DOMAIN``: are the records ``dns-records`` prints really in DNS?

Each record is looked up through the configured resolvers (``relay.resolvers``,
else the system's) and reported as ``ok``, ``missing`` or ``differs``. What
makes the command fail (exit 1):

- MX: ``hostname`` is not among the domain's mail exchangers;
- SPF: no ``v=spf1`` record (another SPF policy than the suggested one only differs);
- DKIM: a key in use is not published with exactly its public key;
- DMARC: no ``v=DMARC1`` record (another policy only differs);
- PTR: an address of ``hostname`` whose reverse name is not ``hostname``.

SRV records are reported but optional.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.names import dns

from mailstack.dkim.keys import DKIMKey
from mailstack.dns import DNSError, MXResolver
from mailstack.dnsrecords import SRV_SERVICES


@dataclass(frozen=True, slots=True)
class Finding:
    state: str  # ok, missing, differs, error
    what: str  # e.g. "MX example.org"
    detail: str = ""
    required: bool = True

    @property
    def wrong(self) -> bool:
        return self.required and self.state != "ok"

    def line(self) -> str:
        mark = self.state if self.required or self.state == "ok" else f"{self.state} (optional)"
        return f"{mark:<19} {self.what}" + (f": {self.detail}" if self.detail else "")


async def check_domain(resolver: MXResolver, domain: str, hostname: str, keys: list[DKIMKey],
                       listeners: set[str]) -> list[Finding]:
    out: list[Finding] = []
    host = hostname.lower().rstrip(".")

    async def records(name: str, rtype: int) -> list[Any] | None:
        try:
            return list(await resolver.lookup_records(name, rtype))
        except DNSError as e:
            out.append(Finding("error", f"{dns.QUERY_TYPES.get(rtype, rtype)} {name}", e.message))
            return None

    mx = await records(domain, dns.MX)
    if mx is not None:
        names = sorted(_name(r.name) for r in mx)
        out.append(Finding("ok" if host in names else ("missing" if not names else "differs"), f"MX {domain}",
                           f"points to {', '.join(names) or 'nothing'}; expected {host}"))
    texts = await _texts(records, domain)
    if texts is not None:
        spf = [t for t in texts if t.lower().startswith("v=spf1")]
        state = "missing" if not spf else ("ok" if "v=spf1 mx -all" in spf else "differs")
        out.append(Finding(state, f"SPF {domain}", "; ".join(spf) or "no v=spf1 record",
                           required=state == "missing"))
    for key in keys:
        found = await _texts(records, key.record_name())
        if found is None:
            continue
        published = [t for t in found if "p=" in t]
        want = key.public_value()
        state = "ok" if any(_tag(t, "p") == want for t in published) else ("differs" if published else "missing")
        out.append(Finding(state, f"DKIM {key.record_name()}",
                           "signing key" if key.signing else "published ahead of a rotation"))
    dmarc = await _texts(records, f"_dmarc.{domain}")
    if dmarc is not None:
        policy = [t for t in dmarc if t.replace(" ", "").startswith("v=DMARC1")]
        out.append(Finding("ok" if policy else "missing", f"DMARC _dmarc.{domain}", "; ".join(policy)))
    for service, port, listener in SRV_SERVICES:
        name = f"{service}.{domain}"
        found_srv = await records(name, dns.SRV)
        if found_srv is None:
            continue
        targets = [(r.port, _name(r.target)) for r in found_srv]
        want_srv = (port, host) if listener in listeners else (0, "")
        state = "ok" if want_srv in targets else ("missing" if not targets else "differs")
        out.append(Finding(state, f"SRV {name}", ", ".join(f"{t} port {p}" for p, t in targets), required=False))
    out += await _ptr(resolver, host)
    return out


async def _texts(records: Callable[[str, int], Awaitable[list[Any] | None]], name: str) -> list[str] | None:
    found = await records(name, dns.TXT)
    if found is None:
        return None
    return [b"".join(r.data).decode("utf-8", "replace") for r in found]


def _tag(text: str, tag: str) -> str:
    for part in text.split(";"):
        name, _, value = part.partition("=")
        if name.strip() == tag:
            return "".join(value.split())
    return ""


def _name(name: object) -> str:
    return str(getattr(name, "name", b"").decode("ascii", "replace")).lower().rstrip(".")


async def _ptr(resolver: MXResolver, host: str) -> list[Finding]:
    try:
        addresses = await resolver.resolve_host(host)
    except DNSError as e:
        return [Finding("error", f"A/AAAA {host}", e.message)]
    if not addresses:
        return [Finding("missing", f"A/AAAA {host}", "the host name has no address")]
    out = []
    for address in addresses:
        name = ipaddress.ip_address(address).reverse_pointer
        try:
            found = await resolver.lookup_records(name, dns.PTR)
        except DNSError as e:
            out.append(Finding("error", f"PTR {address}", e.message))
            continue
        names = sorted(_name(r.name) for r in found)  # type: ignore[attr-defined]
        state = "ok" if host in names else ("missing" if not names else "differs")
        out.append(Finding(state, f"PTR {address}", f"{', '.join(names) or 'nothing'}; expected {host}"))
    return out
