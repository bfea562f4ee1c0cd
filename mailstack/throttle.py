"""Per-client-address limits shared by every listener: login failures and connections.

``AuthThrottle`` slows password guessing: each failed login from an address
adds a growing delay before the failure is answered, and after
``max_failures`` failures within ``lockout`` seconds the address is refused
outright until the lockout has passed. ``ConnectionLimiter`` caps concurrent
connections per address; trusted networks are exempt, as in Postfix
(``smtpd_client_event_limit_exceptions``).
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


class AuthThrottle:
    def __init__(self, clock: IReactorTime, max_failures: int, lockout: float,
                 base_delay: float = 0.5, max_delay: float = 8.0) -> None:
        self.clock = clock
        self.max_failures = max_failures
        self.lockout = lockout
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._records: dict[str, _Record] = {}

    def _record(self, ip: str) -> _Record | None:
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
        rec = self._record(ip) or self._records.setdefault(ip, _Record())
        now = self.clock.seconds()
        rec.failures.append(now)
        if len(rec.failures) >= self.max_failures:
            rec.locked_until = now + self.lockout
        return min(self.base_delay * 2 ** (len(rec.failures) - 1), self.max_delay)

    def record_success(self, ip: str) -> None:
        self._records.pop(ip, None)


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
        if self._counts[ip] >= self.max_per_ip and not self.is_exempt(ip):
            if self._counts[ip] == 0:
                del self._counts[ip]
            return False
        self._counts[ip] += 1
        return True

    def release(self, ip: str) -> None:
        n = self._counts.get(ip, 0) - 1
        if n <= 0:
            self._counts.pop(ip, None)
        else:
            self._counts[ip] = n

    def count(self, ip: str) -> int:
        return self._counts.get(ip, 0)
