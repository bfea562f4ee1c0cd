# twisted.names has no type annotations:
# mypy: disable-error-code="no-untyped-call"
"""MX routing over twisted.names: which hosts take mail for a domain, in what order.

RFC 5321 §5.1: MX records in preference order, equal preferences in random
order; a domain without MX records has an implicit MX of preference 0 pointing
at the domain itself (its A and AAAA records). RFC 7505: a single MX whose
exchange is the root ``.`` (a null MX) says the domain accepts no mail.

Failure policy (what the queue retries and what it bounces):

- NXDOMAIN for the domain: permanent, ``5.1.2``.
- Null MX: permanent, ``556 5.1.10`` (:class:`NullMX`).
- No MX and the domain has no address (implicit MX unusable): permanent, ``5.1.2``.
- SERVFAIL, refusals, timeouts, CNAME loops or chains longer than the bound:
  temporary, ``4.4.3``.
- MX records present but no exchange has an address: temporary. RFC 5321
  §5.1 only says this "MUST be reported as an error"; it is almost always a
  fixable DNS mistake at the recipient's side, so the message stays queued
  (``4.4.3`` when a lookup failed temporarily, ``4.4.4`` otherwise) and the
  queue's maximum age bounds the wait.

Each MX host's addresses are IPv4 first, then IPv6.
"""

from __future__ import annotations

import functools
import ipaddress
import random
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import idna  # IDNA 2008 + UTS 46; a dependency of Twisted (via hyperlink)
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList
from twisted.names import client, dns, error, hosts, resolve
from twisted.python.failure import Failure

from mailstack.config import HostPort
from mailstack.smtp.reply import Reply

# Per-query retransmission timeouts in seconds (twisted.names retries once per
# entry): 10 s per query in all, instead of twisted's default of a minute.
QUERY_TIMEOUT = (1, 3, 6)

# Errors that prove the name does not exist (NXDOMAIN from a server; an
# in-process authority raises AuthoritativeDomainError).
_NAME_ERRORS = (error.DNSNameError, error.AuthoritativeDomainError)
CACHE_SECONDS = 300.0
NEGATIVE_SECONDS = 60.0
CACHE_ENTRIES = 10_000


def make_resolver(resolvers: tuple[HostPort, ...], reactor: Any, *,
                  timeout: tuple[int, ...] = QUERY_TIMEOUT, resolv_conf: str = "/etc/resolv.conf") -> Any:
    """An ``IResolver`` for MX/A/AAAA lookups.

    With configured ``ip:port`` servers, only those are asked; with none, the
    servers in ``resolv_conf`` are, after ``/etc/hosts`` (as
    ``twisted.names.client.createResolver`` does, but with this reactor and
    shorter timeouts).
    """
    if resolvers:
        servers = [(hp.host, hp.port) for hp in resolvers]
        return client.Resolver(servers=servers, reactor=reactor, timeout=timeout)
    system = client.Resolver(resolv=resolv_conf, reactor=reactor, timeout=timeout)
    return resolve.ResolverChain([hosts.Resolver(b"/etc/hosts"), system])


@dataclass(frozen=True)
class MXHost:
    """One next hop: the exchange's name, its preference, and its addresses."""

    name: str
    preference: int
    addresses: tuple[str, ...]


class DNSError(Exception):
    """Routing failed. ``temporary`` tells the queue to retry; ``status`` is RFC 3463."""

    def __init__(self, message: str, *, temporary: bool, status: str) -> None:
        super().__init__(message)
        self.message = message
        self.temporary = temporary
        self.status = status

    @property
    def reply(self) -> Reply:
        """The failure as an SMTP reply, for DSNs and logs."""
        code = 451 if self.temporary else 550
        return Reply(code, self.status, self.message)


class NullMX(DNSError):
    """RFC 7505: the domain publishes a null MX and accepts no mail."""

    def __init__(self, domain: str) -> None:
        super().__init__(f"Domain {domain} does not accept mail (null MX)", temporary=False, status="5.1.10")
        self.domain = domain

    @property
    def reply(self) -> Reply:
        # RFC 7505 §4.2 / §3: reply code 556, enhanced status 5.1.10.
        return Reply(556, "5.1.10", "Recipient address has null MX")


def _temporary(message: str, status: str = "4.4.3") -> DNSError:
    return DNSError(message, temporary=True, status=status)


def _permanent(message: str, status: str = "5.1.2") -> DNSError:
    return DNSError(message, temporary=False, status=status)


def to_ascii(domain: str) -> str:
    """The A-label form of *domain* (lower case, no trailing dot) for DNS queries."""
    name = domain.strip().rstrip(".")
    if not name:
        raise _permanent("Empty domain")
    if name.isascii():
        return name.lower()
    try:
        return str(idna.encode(name, uts46=True).decode("ascii")).lower()
    except idna.IDNAError:
        pass
    try:
        return name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise _permanent(f"Invalid domain name {domain!r}") from None


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def dns_name(text: str, min_labels: int = 2) -> str | None:
    """``text`` as a lower-case A-label domain name, or None when it cannot be one."""
    if len(text) > 512:  # no name is that long, even in U-labels with blanks around
        return None
    return _dns_name(text, min_labels)


@functools.lru_cache(maxsize=4096)  # the checks ask for the same few names message after message
def _dns_name(text: str, min_labels: int) -> str | None:
    try:
        name = to_ascii(text.strip())
    except DNSError:
        return None
    labels = name.split(".")
    if len(name) > 253 or len(labels) < min_labels or not all(_LABEL.match(label) for label in labels):
        return None
    return name


def parse_address_literal(domain: str) -> str | None:
    """``[192.0.2.1]`` -> ``192.0.2.1``, ``[IPv6:2001:db8::1]`` -> ``2001:db8::1``; else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return str(ipaddress.IPv6Address(inner[5:]))
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        raise _permanent(f"Invalid address literal {domain}", "5.1.3") from None


def _ip_address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


_HOSTNAME_OK = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


class _NoData(Exception):
    """The name exists but holds no record of the requested type."""


class MXResolver:
    """MX routing for one resolver (an ``IResolver``; see :func:`make_resolver`)."""

    def __init__(self, resolver: Any, *, rng: random.Random | None = None, max_cname_depth: int = 8,
                 clock: Callable[[], float] | None = None) -> None:
        self._resolver = resolver
        self._rng = rng or random.Random()
        self._max_cname_depth = max_cname_depth
        # Answers are kept for their TTL (at most CACHE_SECONDS; a name that does not exist for
        # NEGATIVE_SECONDS): each message's SPF, DKIM and DMARC checks ask for the same few names.
        self._clock = clock
        self._cache: dict[tuple[str, int], tuple[float, list[Any] | None]] = {}

    async def lookup(self, domain: str) -> list[MXHost]:
        """Next hops for *domain*, most preferred first; raises :class:`DNSError`."""
        literal = parse_address_literal(domain)
        if literal is not None:
            return [MXHost(domain, 0, (literal,))]
        name = to_ascii(domain)
        try:
            records = await self._records(name, dns.MX)
        except _NAME_ERRORS:
            raise _permanent(f"Domain {name} not found") from None
        if not records:
            return [await self._implicit_mx(name)]
        exchanges = [(r.preference, r.name.name.decode("ascii", "replace").rstrip(".").lower()) for r in records]
        real = [(pref, host) for pref, host in exchanges if host]
        if not real:
            raise NullMX(name)
        return await self._resolve_exchanges(name, self._order(real))

    async def resolve_host(self, name: str) -> tuple[str, ...]:
        """A and AAAA addresses of a host name (or the address itself); may be empty."""
        literal = _ip_address(name.strip("[]"))
        if literal is not None:
            return (literal,)
        addresses, _ = await self._addresses(to_ascii(name))
        return addresses

    async def reverse(self, ip: str) -> str | None:
        """The PTR name of a global address, for ``Received:`` (unverified); None when unknown.

        Loopback, private and other non-global addresses are never looked up.
        """
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if not address.is_global:
            return None
        try:
            answers, _authority, _additional = await self._resolver.lookupPointer(address.reverse_pointer,
                                                                                 timeout=(2, 4))
        except Exception:  # any failure just means "no name": the trace header says [ip] only
            return None
        for rr in answers:
            if rr.type == dns.PTR:
                name = rr.payload.name.name.decode("ascii", "replace").rstrip(".")
                if name and _HOSTNAME_OK.match(name):
                    return name.lower()
        return None

    def _order(self, exchanges: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """Preference order; random order among equal preferences (RFC 5321 §5.1)."""
        groups: dict[int, list[str]] = {}
        for pref, host in exchanges:
            if host not in groups.setdefault(pref, []):
                groups[pref].append(host)
        ordered: list[tuple[int, str]] = []
        for pref in sorted(groups):
            hosts_ = groups[pref]
            self._rng.shuffle(hosts_)
            ordered.extend((pref, h) for h in hosts_)
        return ordered

    async def _implicit_mx(self, name: str) -> MXHost:
        addresses, temporary = await self._addresses(name)
        if addresses:
            return MXHost(name, 0, addresses)
        if temporary:
            raise _temporary(f"Cannot resolve the address of {name}")
        raise _permanent(f"Domain {name} has no mail server (no MX and no address)")

    async def _resolve_exchanges(self, domain: str, ordered: list[tuple[int, str]]) -> list[MXHost]:
        results = await DeferredList(
            [Deferred.fromCoroutine(self._host_addresses(host)) for _, host in ordered],
            consumeErrors=True,
        )
        usable = []
        any_temporary = False
        for (pref, host), (ok, value) in zip(ordered, results, strict=True):
            if not ok:
                assert isinstance(value, Failure)
                value.raiseException()
            addresses, temporary = value
            any_temporary = any_temporary or temporary
            if addresses:
                usable.append(MXHost(host, pref, addresses))
        if usable:
            return usable
        if any_temporary:
            raise _temporary(f"Cannot resolve the addresses of the mail servers of {domain}")
        raise _temporary(f"No mail server of {domain} has an address", "4.4.4")

    async def _host_addresses(self, host: str) -> tuple[tuple[str, ...], bool]:
        ip = _ip_address(host)
        if ip is not None:
            return (ip,), False
        return await self._addresses(host)

    async def _addresses(self, name: str) -> tuple[tuple[str, ...], bool]:
        """(IPv4 then IPv6 addresses, whether any lookup failed temporarily)."""
        results = await DeferredList(
            [Deferred.fromCoroutine(self._records(name, t)) for t in (dns.A, dns.AAAA)], consumeErrors=True
        )
        addresses: list[str] = []
        temporary = False
        for ok, value in results:
            if ok:
                for record in value:
                    text = record.dottedQuad() if isinstance(record, dns.Record_A) else _ipv6(record)
                    if text not in addresses:
                        addresses.append(text)
            elif isinstance(value, Failure) and value.check(*_NAME_ERRORS):
                continue
            elif isinstance(value, Failure) and value.check(DNSError):
                temporary = temporary or bool(value.value.temporary)
            else:
                temporary = True
        return tuple(addresses), temporary

    async def lookup_txt(self, name: str, limit: int = 65536) -> list[bytes]:
        """The TXT records at ``name``, each with its strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2).

        [] when the name does not exist or has none; :class:`DNSError` (temporary) when the
        lookup failed or timed out. Answers larger than ``limit`` octets in all raise a
        permanent :class:`DNSError`, so an enormous record costs nothing further.
        """
        texts = [b"".join(record.data) for record in await self.lookup_records(name, dns.TXT)]
        if sum(map(len, texts)) > limit:
            raise _permanent(f"TXT records of {name} are larger than {limit} octets")
        return texts

    async def lookup_records(self, name: str, rtype: int) -> list[Any]:
        """Payloads of the ``rtype`` records at ``name`` (A, AAAA, MX, TXT, PTR or SRV), CNAMEs
        followed; [] for NXDOMAIN or NODATA; :class:`DNSError` (temporary) on failure.
        For checks that walk DNS themselves (SPF)."""
        try:
            return await self._records(to_ascii(name), rtype)
        except _NAME_ERRORS:
            return []

    def cached_records(self, name: str, rtype: int) -> list[Any] | None:
        """What :meth:`lookup_records` would answer, from cached answers alone; None when it
        would have to ask (or would fail). Never waits: for checks that evaluate on the reactor."""
        try:
            walk = _Walk(to_ascii(name), rtype, self._max_cname_depth)
            while True:
                answers = self._cached(walk.current, rtype)
                if answers is None:
                    return None
                found = walk.step(answers)
                if found is not None:
                    return found
        except _NAME_ERRORS:
            return []
        except DNSError:
            return None

    async def _records(self, name: str, rtype: int) -> list[Any]:
        """Records of *rtype* at *name*, following CNAMEs; [] for NODATA.

        Raises the resolver's name error for NXDOMAIN and :class:`DNSError`
        (temporary) for every other failure.
        """
        walk = _Walk(name, rtype, self._max_cname_depth)
        while True:
            found = walk.step(await self._query(walk.current, rtype))
            if found is not None:
                return found

    def _cached(self, name: str, rtype: int) -> list[Any] | None:
        """The cached answers for a query, None if there are none; a cached NXDOMAIN raises."""
        if self._clock is None:
            return None
        hit = self._cache.get((name.lower(), rtype))
        if hit is None or hit[0] <= self._clock():
            return None
        if hit[1] is None:
            raise error.DNSNameError(name)
        return hit[1]

    async def _query(self, name: str, rtype: int) -> list[Any]:
        hit = self._cached(name, rtype)
        if hit is not None:
            return hit
        now = self._clock() if self._clock is not None else None
        key = (name.lower(), rtype)
        try:
            answers = await self._ask(name, rtype)
        except _NAME_ERRORS:
            if now is not None:
                self._remember(key, now + NEGATIVE_SECONDS, None)
            raise
        if now is not None:
            ttl = min((rr.ttl for rr in answers), default=NEGATIVE_SECONDS)
            self._remember(key, now + max(0, min(ttl, CACHE_SECONDS)), answers)
        return answers

    def _remember(self, key: tuple[str, int], until: float, answers: list[Any] | None) -> None:
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()  # crude, bounded: the next lookups refill it
        self._cache[key] = (until, answers)

    async def _ask(self, name: str, rtype: int) -> list[Any]:
        try:
            answers, _authority, _additional = await _LOOKUPS[rtype](self._resolver, name)
        except _NAME_ERRORS:
            raise
        except UnicodeError:  # an empty label or one over 63 octets: not a name to ask for
            raise _permanent(f"{name!r} is not a valid domain name") from None
        except error.DomainError as e:  # SERVFAIL, REFUSED, FORMERR, NOTIMP, no server answered
            raise _temporary(f"DNS lookup for {name} failed ({type(e).__name__})") from None
        except (defer.TimeoutError, TimeoutError) as e:  # includes DNSQueryTimeoutError
            raise _temporary(f"DNS lookup for {name} timed out") from e
        except (error.ResolverError, OSError) as e:
            raise _temporary(f"DNS lookup for {name} failed ({e})") from None
        return list(answers)


class _Walk:
    """Following CNAMEs from a name to its records, one answer section at a time."""

    def __init__(self, name: str, rtype: int, max_depth: int) -> None:
        self.name = name
        self.rtype = rtype
        self.max_depth = max_depth
        self.current = name  # the name to ask for next
        self.seen = {name}
        self.depth = 0

    def step(self, answers: list[Any]) -> list[Any] | None:
        """The records, [] for none, or None when :attr:`current` must be asked for next."""
        queried = self.current
        while True:
            found = [rr.payload for rr in answers if _owner(rr) == self.current and rr.type == self.rtype]
            if found:
                return found
            target = next((_target(rr) for rr in answers if _owner(rr) == self.current and rr.type == dns.CNAME),
                          None)
            if target is None:
                break
            self.depth += 1
            if self.depth > self.max_depth or target in self.seen:
                raise _temporary(f"CNAME loop or chain too long at {self.name}")
            self.seen.add(target)
            self.current = target
        return [] if self.current == queried else None


def _owner(rr: Any) -> str:
    return str(rr.name.name.decode("ascii", "replace")).rstrip(".").lower()


def _target(rr: Any) -> str:
    return str(rr.payload.name.name.decode("ascii", "replace")).rstrip(".").lower()


def _ipv6(record: Any) -> str:
    return str(ipaddress.IPv6Address(socket.inet_ntop(socket.AF_INET6, record.address)))


_LOOKUPS = {
    dns.MX: lambda r, n: r.lookupMailExchange(n),
    dns.A: lambda r, n: r.lookupAddress(n),
    dns.AAAA: lambda r, n: r.lookupIPV6Address(n),
    dns.TXT: lambda r, n: r.lookupText(n),
    dns.PTR: lambda r, n: r.lookupPointer(n),
    dns.SRV: lambda r, n: r.lookupService(n),
}

__all__ = ["DNSError", "MXHost", "MXResolver", "NullMX", "dns_name", "make_resolver",
           "parse_address_literal", "to_ascii"]
