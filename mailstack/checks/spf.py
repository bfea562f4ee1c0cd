"""SPF (RFC 7208) for mail arriving on port 25: the MAIL FROM identity, or HELO for a null sender.

pyspf evaluates the record: every mechanism, modifier and macro, the limits of
10 DNS-querying terms and 2 void lookups, and all seven results. It walks DNS
itself, one query after another as the record directs, so it runs on its own
small thread pool (``checks``); each query it makes is answered by the
server's twisted.names resolver on the reactor (``blockingCallFromThread``),
never by a resolver of its own. A failed or timed-out query is a
``temperror``; the whole evaluation is bounded by ``timeout`` seconds.

pyspf chooses its DNS through the module-level ``spf.DNSLookup`` hook; it is
set once to :func:`_lookup`, which serves the query of the thread it runs on.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import spf
from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool
from twisted.names import dns
from twisted.python.threadpool import ThreadPool

from mailstack.authresults import comment
from mailstack.dns import DNSError, MXResolver

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
_TYPES = {"A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "TXT": dns.TXT, "PTR": dns.PTR}
_current = threading.local()

RunInPool = Callable[..., Awaitable[Any]]
CallFromPool = Callable[..., Any]  # run an async function on the reactor from a pool thread, wait for it


@dataclass(frozen=True, slots=True)
class SPFResult:
    result: str  # one of RESULTS
    identity: str  # "mailfrom" or "helo" (RFC 8601 §2.7.2: smtp.mailfrom / smtp.helo)
    value: str  # the address or name checked
    reason: str = ""

    @property
    def domain(self) -> str:
        return self.value.rpartition("@")[2].lower()

    def resinfo(self) -> str:
        text = f"spf={self.result}"
        if self.reason:
            text += f" ({comment(self.reason)})"
        return f"{text} smtp.{self.identity}={self.value}"


def pooled(reactor: Any, pool: ThreadPool) -> tuple[RunInPool, CallFromPool]:
    """How the checker runs pyspf on ``pool`` and how pyspf's queries reach the reactor."""

    def run(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return deferToThreadPool(reactor, pool, fn, *args)

    def call(fn: Callable[..., Any], *args: Any) -> Any:
        return blockingCallFromThread(reactor, lambda: Deferred.fromCoroutine(fn(*args)))

    return run, call


class SPFChecker:
    """Evaluates SPF for a client address and envelope (see the module docstring)."""

    def __init__(self, resolver: MXResolver, run_in_pool: RunInPool, call_from_pool: CallFromPool, *,
                 hostname: str, timeout: float = 20.0) -> None:
        self.resolver = resolver
        self.run_in_pool = run_in_pool
        self.call_from_pool = call_from_pool
        self.hostname = hostname
        self.timeout = timeout

    async def check(self, ip: str, sender: str, helo: str) -> SPFResult:
        """SPF for MAIL FROM ``sender``, or for the HELO name when the sender is null."""
        if sender:
            identity, value = "mailfrom", sender
        else:
            identity, value = "helo", helo
        if not value or (identity == "helo" and _is_address_literal(value)):
            return SPFResult("none", identity, value or "unknown", "no identity to check")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return SPFResult("none", identity, value, "no client address")
        mail_from = sender or f"postmaster@{helo}"
        result, _code, explanation = await self.run_in_pool(self._evaluate, ip, mail_from, helo)
        result = result if result in RESULTS else "permerror"
        return SPFResult(result, identity, value, "" if result in ("pass", "none") else explanation)

    def _evaluate(self, ip: str, mail_from: str, helo: str) -> tuple[str, int, str]:
        """pyspf's check (pool thread), its queries answered through the reactor."""
        _current.lookup = self._blocking_lookup
        try:
            # querytime bounds the whole evaluation, every lookup included (pyspf's timeout= alone
            # only reaches the DNS driver, which is ours); past it pyspf answers temperror.
            query = spf.query(i=ip, s=mail_from, h=helo or "unknown", receiver=self.hostname,
                              timeout=self.timeout, querytime=self.timeout)
            return tuple(query.check())  # type: ignore[return-value]
        except Exception as e:  # a record pyspf cannot take apart: an error, never a crash
            return ("permerror", 550, f"SPF evaluation failed: {e}")
        finally:
            _current.lookup = None

    def _blocking_lookup(self, name: str, qtype: str) -> list[tuple[tuple[str, str], Any]]:
        rtype = _TYPES.get(qtype)
        if rtype is None:
            return []  # pyspf asks for type SPF (99) too: obsolete, RFC 7208 §3.1
        try:
            found = self.call_from_pool(self.resolver.lookup_records, name, rtype)
        except DNSError as e:
            if e.temporary:
                raise spf.TempError(f"DNS {e.message}") from None
            return []
        return [((name, qtype), _value(qtype, record)) for record in found]


def _value(qtype: str, record: Any) -> Any:
    """A twisted.names payload in the form pyspf's DNS drivers give."""
    if qtype in ("A", "AAAA"):
        return record.dottedQuad() if qtype == "A" else str(ipaddress.IPv6Address(record.address))
    if qtype == "MX":
        return (record.preference, record.name.name.decode("ascii", "replace"))
    if qtype == "PTR":
        return record.name.name.decode("ascii", "replace")
    return list(record.data)  # TXT: the strings, to be joined by pyspf


def _is_address_literal(helo: str) -> bool:
    return helo.startswith("[") and helo.endswith("]")


def _lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list[Any]:
    lookup: Callable[[str, str], list[Any]] | None = getattr(_current, "lookup", None)
    if lookup is None:
        raise spf.TempError("no resolver for this evaluation")
    return lookup(name, qtype)


spf.DNSLookup = _lookup
