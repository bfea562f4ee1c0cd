# twisted.names has no type annotations:
# mypy: disable-error-code="no-untyped-call, assignment"
"""DNS for tests: an in-process authoritative server on loopback, and a fake resolver.

Both read the same zone description, a dict from owner name to its records::

    zones = {
        "example.test": {"MX": [(10, "mx1.example.test"), (20, "mx2.example.test")]},
        "mx1.example.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
        "alias.test": {"CNAME": "example.test"},
        "s1._domainkey.example.test": {"TXT": ["v=DKIM1; k=ed25519; p=..."]},  # strings split at 255
        "nomail.test": {"MX": [(0, ".")]},          # null MX (RFC 7505)
        "empty.test": {},                           # exists, no records (NODATA)
        "broken.test": SERVFAIL,
        "slow.test": TIMEOUT,                        # never answered
    }

Names not listed get NXDOMAIN. Names are case-insensitive, without a trailing dot.

``start_dns_server(zones, reactor)`` serves them over UDP and TCP on one free
127.0.0.1 port (``make_resolver((HostPort("127.0.0.1", port),), reactor)``
then resolves through it); :class:`FakeResolver` answers the same queries in
memory, synchronously, for ``SynchronousTestCase`` tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.names import authority, dns, error, server
from twisted.names.common import ResolverBase
from twisted.python.failure import Failure

SERVFAIL = "SERVFAIL"
TIMEOUT = "TIMEOUT"

Zones = Mapping[str, Any]


class ServerFailure(Exception):
    """Raised by the authority for SERVFAIL names; answered with rcode SERVFAIL."""


def _name(text: str) -> bytes:
    return text.rstrip(".").lower().encode("idna") if not text.isascii() else text.rstrip(".").lower().encode()


def _records(spec: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []
    for rtype, value in spec.items():
        kind = rtype.upper()
        if kind == "MX":
            for pref, host in value:
                out.append(dns.Record_MX(pref, b"" if host in (".", "") else _name(host), ttl=60))
        elif kind == "A":
            out.extend(dns.Record_A(addr, ttl=60) for addr in value)
        elif kind == "AAAA":
            out.extend(dns.Record_AAAA(addr, ttl=60) for addr in value)
        elif kind == "CNAME":
            out.append(dns.Record_CNAME(_name(value), ttl=60))
        elif kind == "SRV":  # [priority, weight, port, target]
            out.extend(dns.Record_SRV(pri, weight, port, _name(target), ttl=60) for pri, weight, port, target in value)
        elif kind == "PTR":
            out.extend(dns.Record_PTR(_name(host), ttl=60) for host in value)
        elif kind == "TXT":  # each value one record, split into strings of up to 255 octets
            for text in value:
                raw = text.encode("utf-8")
                out.append(dns.Record_TXT(*[raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""], ttl=60))
        else:
            raise ValueError(f"unsupported record type {rtype!r}")
    return out


class MemoryAuthority(authority.FileAuthority):
    """An authority for the root zone built from a zones dict (no file)."""

    def __init__(self, zones: Zones) -> None:
        ResolverBase.__init__(self)
        self.soa = (b"", dns.Record_SOA(mname=b"ns.test", rname=b"hostmaster.test", serial=1,
                                        refresh=60, retry=60, expire=60, minimum=60, ttl=60))
        self.records: dict[bytes, list[Any]] = {}
        self.special: dict[bytes, str] = {}
        self.queries: list[tuple[str, int]] = []
        for owner, spec in zones.items():
            if isinstance(spec, str):
                if spec not in (SERVFAIL, TIMEOUT):
                    raise ValueError(f"unknown zone marker {spec!r} for {owner}")
                self.special[_name(owner)] = spec
            else:
                self.records[_name(owner)] = _records(spec)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> defer.Deferred[Any]:
        self.queries.append((name.decode("ascii", "replace").lower(), type))
        special = self.special.get(name.lower())
        if special == SERVFAIL:
            return defer.fail(ServerFailure(name))
        if special == TIMEOUT:
            return defer.Deferred()
        result: defer.Deferred[Any] = super()._lookup(name, cls, type, timeout)
        return result


class _ServerFactory(server.DNSServerFactory):
    def gotResolverError(self, failure: Failure, protocol: Any, message: Any, address: Any) -> None:
        if failure.check(ServerFailure):
            response = self._responseFromMessage(message=message, rCode=dns.ESERVER)
            self.sendReply(protocol, response, address)
            return
        super().gotResolverError(failure, protocol, message, address)


class AuthoritativeDNS:
    """A DNS server for *zones* on 127.0.0.1 (UDP and TCP, same port)."""

    def __init__(self, zones: Zones) -> None:
        self.authority = MemoryAuthority(zones)
        self.factory = _ServerFactory(authorities=[self.authority], verbose=0)
        self.port = 0
        self._listeners: list[Any] = []

    def start(self, reactor: Any, attempts: int = 20, *, interface: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on *port* of *interface* (a free one for 0); returns the port."""
        wanted = port
        for _ in range(attempts if wanted == 0 else 1):
            udp = reactor.listenUDP(wanted, dns.DNSDatagramProtocol(self.factory), interface=interface)
            port = udp.getHost().port
            try:
                tcp = reactor.listenTCP(port, self.factory, interface=interface)
            except CannotListenError:
                udp.stopListening()
                if wanted:
                    raise
                continue
            self._listeners = [udp, tcp]
            self.port = int(port)
            return self.port
        raise CannotListenError(interface, wanted, OSError("no free port for UDP and TCP"))

    def stop(self) -> defer.Deferred[Any]:
        listeners, self._listeners = self._listeners, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in listeners])


def start_dns_server(zones: Zones, reactor: Any) -> tuple[int, Callable[[], defer.Deferred[Any]]]:
    """Serve *zones*; return the port and a function that stops the server."""
    dns_server = AuthoritativeDNS(zones)
    port = dns_server.start(reactor)
    return port, dns_server.stop


class FakeResolver:
    """An in-memory ``IResolver`` subset (MX, A, AAAA, CNAME, TXT, PTR, SRV) over a zones dict.

    Answers fire synchronously; NXDOMAIN raises ``DNSNameError``, SERVFAIL
    ``DNSServerError`` and TIMEOUT ``DNSQueryTimeoutError``, as
    ``twisted.names.client.Resolver`` does. ``queries`` records (name, type).
    """

    def __init__(self, zones: Zones) -> None:
        self._authority = MemoryAuthority(zones)
        self.queries = self._authority.queries

    def _lookup(self, name: str | bytes, rtype: int) -> defer.Deferred[Any]:
        qname = name if isinstance(name, bytes) else _name(name)
        d = self._authority._lookup(qname, dns.IN, rtype)
        special = self._authority.special.get(qname.lower())
        if special == TIMEOUT:
            return defer.fail(error.DNSQueryTimeoutError(qname))

        def translate(f: Failure) -> Failure:
            if f.check(ServerFailure):
                return Failure(error.DNSServerError(qname))
            if f.check(error.AuthoritativeDomainError):
                return Failure(error.DNSNameError(qname))
            return f

        return d.addErrback(translate)

    def lookupMailExchange(self, name: str | bytes, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup(name, dns.MX)

    def lookupAddress(self, name: str | bytes, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup(name, dns.A)

    def lookupIPV6Address(self, name: str | bytes, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup(name, dns.AAAA)

    def lookupCanonicalName(self, name: str | bytes, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup(name, dns.CNAME)

    def lookupText(self, name: str | bytes, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup(name, dns.TXT)

    def lookupPointer(self, name: str | bytes, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup(name, dns.PTR)

    def lookupService(self, name: str | bytes, timeout: Any = None) -> defer.Deferred[Any]:
        return self._lookup(name, dns.SRV)


def main(argv: list[str] | None = None) -> None:
    """``python -m mailstack.testing_dns ZONES.json PORTFILE``: serve until SIGTERM.

    Writes the port to PORTFILE once listening (for tests and benchmarks that
    run mailstack in another process).
    """
    import json
    import sys
    from pathlib import Path

    from twisted.internet import reactor

    args = sys.argv[1:] if argv is None else argv
    zones = json.loads(Path(args[0]).read_text())
    port = AuthoritativeDNS(zones).start(reactor)
    tmp = Path(args[1] + ".tmp")
    tmp.write_text(str(port))
    tmp.rename(args[1])
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
