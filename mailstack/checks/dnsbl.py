"""DNS block and allow lists (RFC 5782) for clients delivering on port 25.

A client address is looked up as ``<reversed address>.<zone>`` (IPv4 octets,
IPv6 nibbles): an A record in 127.0.0.0/8 means listed. Spamhaus and others
answer 127.255.255.x to say the query itself was refused (a public resolver,
too many queries); that is not a listing. A lookup that fails counts as not
listed and is logged: the lists are advisory, never a reason to lose mail.

A client on an allow list (``checks.dnswl``) is not looked up in the block lists.
"""

from __future__ import annotations

import ipaddress

from twisted.logger import Logger
from twisted.names import dns

from mailstack.dns import DNSError, MXResolver

log = Logger()

_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_REFUSED = ipaddress.ip_network("127.255.255.0/24")
_DNSWL_REFUSED = ipaddress.ip_address("127.0.0.255")  # list.dnswl.org: "too many queries", not a listing


def query_name(ip: str, zone: str) -> str | None:
    """``1.2.0.192.<zone>`` for 192.0.2.1 (RFC 5782 §2.1, §2.4); None for something that is not an address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # an IPv4 client on a dual-stack listener
    if address.version == 4:
        labels = reversed(str(address).split("."))
    else:
        labels = reversed(address.exploded.replace(":", ""))
    return ".".join(labels) + "." + zone.strip(".")


class DNSLists:
    def __init__(self, resolver: MXResolver, block: tuple[str, ...], allow: tuple[str, ...] = ()) -> None:
        self.resolver = resolver
        self.block = block
        self.allow = allow

    async def blocked_by(self, ip: str) -> str | None:
        """The first block list that lists ``ip`` (None when none does, or an allow list does)."""
        if not self.block or await self._first_listing(ip, self.allow, allow=True):
            return None
        return await self._first_listing(ip, self.block)

    async def _first_listing(self, ip: str, zones: tuple[str, ...], allow: bool = False) -> str | None:
        for zone in zones:
            name = query_name(ip, zone)
            if name is None:
                return None
            try:
                found = await self.resolver.lookup_records(name, dns.A)
            except DNSError as e:
                log.warn("DNS list {zone} not asked about {ip}: {error}", zone=zone, ip=ip, error=e.message)
                continue
            for record in found:
                answer = ipaddress.ip_address(record.dottedQuad())
                if answer in _LOOPBACK and answer not in _REFUSED and not (allow and answer == _DNSWL_REFUSED):
                    return zone
        return None
