"""SPF (RFC 7208) for mail arriving on port 25: the MAIL FROM identity, or HELO for a null sender.

pyspf evaluates the record: every mechanism, modifier and macro, the limits of
10 DNS-querying terms and 2 void lookups, and all seven results. It walks DNS
itself, one query after another as the record directs, and expects each answer
at once. So it runs on the reactor thread and is only ever given answers that
are already at hand: those of earlier rounds of this evaluation, or the
server's DNS cache (:meth:`MXResolver.cached_records`). A query that is not
at hand ends the round; it is asked through the server's twisted.names
resolver without blocking anything, and the evaluation starts again from the
top with one more answer. Senders' records are in the cache for their TTL, so
mail from a known sender takes one round, with no thread and no wait; a round
costs tens of microseconds and stops at the first missing answer. A failed or
timed-out query is a ``temperror``, and so is an evaluation that takes longer
than ``timeout`` seconds or more than :data:`MAX_ROUNDS` rounds.

pyspf chooses its DNS through the module-level ``spf.DNSLookup`` hook; it is
set once to :func:`_lookup`, which serves the evaluation under way.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import spf
from twisted.internet.defer import Deferred, gatherResults
from twisted.names import dns

from mailstack.authresults import comment
from mailstack.dns import DNSError, MXResolver

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
_TYPES = {"A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "TXT": dns.TXT, "PTR": dns.PTR}
# Distinct queries one evaluation may need: 10 DNS-querying terms, each "mx" or "ptr" with
# up to 10 address lookups (RFC 7208 §4.6.4), the record itself, exp= and some CNAMEs.
MAX_ROUNDS = 130
# The reactor's time is everyone's: one evaluation, all rounds together, may take this much
# CPU, and what it is given from DNS is bounded, so that a hostile record (thousands of
# terms, names with thousands of addresses, TTL 0) costs little (a permerror) rather than
# seconds. Real records are a few hundred octets: 10 KiB of TXT is far beyond them.
CPU_BUDGET = 0.05
_LIMITS = {dns.TXT: 10240, dns.A: 32, dns.AAAA: 32, dns.MX: 32, dns.PTR: 32}

Answer = list[Any] | DNSError


class _Missing(Exception):
    """The evaluation needs an answer that is not at hand yet."""


_serving: Callable[[str, str], list[Any]] | None = None  # the evaluation under way (reactor thread)


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


class SPFChecker:
    """Evaluates SPF for a client address and envelope (see the module docstring)."""

    def __init__(self, resolver: MXResolver, *, hostname: str, timeout: float = 20.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.resolver = resolver
        self.hostname = hostname
        self.timeout = timeout
        self.clock = clock

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
        result, explanation = await self._evaluate(ip, mail_from, helo)
        result = result if result in RESULTS else "permerror"
        return SPFResult(result, identity, value, "" if result in ("pass", "none") else explanation)

    async def _evaluate(self, ip: str, mail_from: str, helo: str) -> tuple[str, str]:
        """Rounds of pyspf's check until it has every answer it asks for."""
        answers: dict[tuple[str, int], Answer] = {}
        started, cpu = self.clock(), time.thread_time()
        address_type = dns.AAAA if ipaddress.ip_address(ip).version == 6 else dns.A
        for _round in range(MAX_ROUNDS):
            missing: list[tuple[str, int]] = []
            stop: list[str] = []  # why the evaluation cannot go on (a limit of ours), if it cannot
            result = self._round(ip, mail_from, helo, answers, missing, stop, cpu)
            if stop:
                return "permerror", stop[0]
            if not missing:
                return result
            await self._fetch(dict.fromkeys(missing), answers, address_type)
            if self.clock() - started > self.timeout:
                return "temperror", f"SPF evaluation took longer than {self.timeout:g} s"
        return "temperror", f"SPF evaluation needed more than {MAX_ROUNDS} DNS queries"

    async def _fetch(self, wanted: Iterable[tuple[str, int]], answers: dict[tuple[str, int], Answer],
                     address_type: int) -> None:
        """Ask for ``wanted`` side by side; with an MX or PTR answer, also for the addresses
        of the names it gives (at most 10, RFC 7208 §4.6.4), which the next round needs."""

        async def one(key: tuple[str, int]) -> None:
            try:
                answers[key] = await self.resolver.lookup_records(*key)
            except DNSError as e:
                answers[key] = e

        asked = [key for key in wanted if key not in answers]
        await gatherResults([Deferred.fromCoroutine(one(key)) for key in asked])
        follow = []
        for key in asked:
            found = answers[key]
            if key[1] in (dns.MX, dns.PTR) and isinstance(found, list):
                for record in found[:10]:
                    target = (record.name.name.decode("ascii", "replace").lower().rstrip("."), address_type)
                    if target[0] and target not in answers and self.resolver.cached_records(*target) is None:
                        follow.append(target)
        if follow:
            await gatherResults([Deferred.fromCoroutine(one(key)) for key in dict.fromkeys(follow)])

    def _round(self, ip: str, mail_from: str, helo: str, answers: dict[tuple[str, int], Answer],
               missing: list[tuple[str, int]], stop: list[str], cpu: float) -> tuple[str, str]:
        """One run of pyspf's check with the answers at hand; ``missing`` gets what it lacked,
        ``stop`` why it must not go on."""
        global _serving

        def lookup(name: str, qtype: str) -> list[tuple[tuple[str, str], Any]]:
            if time.thread_time() - cpu > CPU_BUDGET:
                stop.append(f"SPF evaluation needs more than {CPU_BUDGET * 1000:g} ms of CPU")
            if stop:
                raise _Missing(name)  # some of pyspf's handlers catch everything: ``stop`` tells
            rtype = _TYPES.get(qtype)
            if rtype is None:
                return []  # pyspf asks for type SPF (99) too: obsolete, RFC 7208 §3.1
            key = (name.lower().rstrip("."), rtype)
            found = answers.get(key)
            if found is None:
                found = self.resolver.cached_records(*key)
            if found is None:
                missing.append(key)
                raise _Missing(name)  # as above: ``missing`` tells
            if isinstance(found, DNSError):
                if found.temporary:
                    raise spf.TempError(f"DNS {found.message}")
                return []
            size = sum(len(b"".join(r.data)) for r in found) if rtype == dns.TXT else len(found)
            if size > _LIMITS[rtype]:
                what = "octets of TXT" if rtype == dns.TXT else "records"
                stop.append(f"{name} has more than {_LIMITS[rtype]} {what} (SPF evaluation limit)")
                raise _Missing(name)
            return [((name, qtype), _value(qtype, record)) for record in found]

        _serving = lookup
        try:
            query = spf.query(i=ip, s=mail_from, h=helo or "unknown", receiver=self.hostname,
                              timeout=self.timeout, querytime=0)
            result, _code, explanation = query.check()
            return str(result), str(explanation)
        except Exception as e:  # a record pyspf cannot take apart: an error, never a crash
            return "permerror", f"SPF evaluation failed: {e}"
        finally:
            _serving = None


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
    if _serving is None:
        raise spf.TempError("no resolver for this evaluation")
    return _serving(name, qtype)


spf.DNSLookup = _lookup
