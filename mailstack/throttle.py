"""Per-client-address limits shared by every listener: login failures and connections.

``AuthThrottle`` slows password guessing: each failed login from an address
adds a growing delay before the failure is answered, and after
``max_failures`` failures within ``lockout`` seconds the address is refused
outright until the lockout has passed. A successful login does not forget the
failures (else one valid account would let its owner guess others' passwords
for ever). ``ConnectionLimiter`` caps concurrent connections per address;
trusted networks are exempt, as in Postfix
(``smtpd_client_event_limit_exceptions``). Both count an IPv6 client by its
/64, the block one customer usually holds.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime

from mailstack.config import IPNetwork


@dataclass
class _Record:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0


def client_key(ip: str) -> str:
    """The unit limits apply to: the address itself, or its /64 for IPv6."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class AuthThrottle:
    def __init__(self, clock: IReactorTime, max_failures: int, lockout: float,
                 base_delay: float = 0.5, max_delay: float = 8.0) -> None:
        self.clock = clock
        self.max_failures = max_failures
        self.lockout = lockout
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._records: dict[str, _Record] = {}

    PRUNE_AT = 10_000  # records kept before expired ones are swept

    def _record(self, ip: str) -> _Record | None:
        ip = client_key(ip)
        rec = self._records.get(ip)
        if rec is None:
            return None
        now = self.clock.seconds()
        rec.failures = [t for t in rec.failures if now - t < self.lockout]
        if not rec.failures and rec.locked_until <= now:
            del self._records[ip]
            return None
        return rec

    def is_locked(self, ip: str) -> bool:
        rec = self._record(ip)
        return rec is not None and rec.locked_until > self.clock.seconds()

    def record_failure(self, ip: str) -> float:
        """Note a failure; return the delay (seconds) before answering it."""
        if len(self._records) >= self.PRUNE_AT:
            for key in list(self._records):
                self._record(key)
        rec = self._record(ip) or self._records.setdefault(client_key(ip), _Record())
        now = self.clock.seconds()
        rec.failures.append(now)
        if len(rec.failures) >= self.max_failures:
            rec.locked_until = now + self.lockout
        doublings = min(len(rec.failures) - 1, 64)  # past max_delay long before: 2 ** n stays a small number
        return min(self.base_delay * 2 ** doublings, self.max_delay)

    def record_success(self, ip: str) -> None:
        """A good login forgets nothing: failures expire only with time."""


class ConnectionLimiter:
    def __init__(self, max_per_ip: int, exempt: Iterable[IPNetwork] = ()) -> None:
        self.max_per_ip = max_per_ip
        self.exempt = tuple(exempt)
        self._counts: defaultdict[str, int] = defaultdict(int)

    def is_exempt(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.exempt)

    def acquire(self, ip: str) -> bool:
        """Count a new connection; False (and nothing counted) when over the limit."""
        key = client_key(ip)
        if self._counts.get(key, 0) >= self.max_per_ip and not self.is_exempt(ip):
            return False
        self._counts[key] += 1
        return True

    def release(self, ip: str) -> None:
        key = client_key(ip)
        n = self._counts.get(key, 0) - 1
        if n <= 0:
            self._counts.pop(key, None)
        else:
            self._counts[key] = n

    def count(self, ip: str) -> int:
        return self._counts.get(client_key(ip), 0)
