"""SMTP TLS Reporting (RFC 8460), the sending side: what became of each TLS session to
domains with an MTA-STS policy, reported once a day to the addresses they publish.

The relay tells :class:`TLSReports` of every session it attempts under a policy
(``success`` or ``failure`` with its RFC 8460 result type, §4.3). Counts are kept per
UTC day, per policy domain and policy (its text, as §4.4's ``policy-string``), and
written to ``<storage.queue>/tls-reports.json`` on the io pool every minute and at stop,
so a restart loses at most a minute. After midnight UTC each domain's day is reported:
its ``_smtp._tls`` TXT record (``v=TLSRPTv1; rua=mailto:...``) is looked up and the report
(§4.4 JSON, gzipped, ``application/tlsrpt+gzip`` in a ``multipart/report;
report-type="tlsrpt"`` message, §5.3) is queued to each ``mailto:`` address, DKIM-signed
like the server's other notices. ``https:`` addresses are not posted to (logged). Memory
is bounded: at most ``MAX_DOMAINS`` domains and ``MAX_DETAILS`` failure rows a domain.
"""

from __future__ import annotations

import base64
import calendar
import gzip
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from mailstack.dns import DNSError, MXResolver
from mailstack.fsutil import replace_file
from mailstack.interfaces import Outbound
from mailstack.smtp.message import rfc2822_date

log = Logger()

MAX_DOMAINS = 10000
MAX_DETAILS = 100
DAY = 86400


def result_type(error: str) -> str:
    """The RFC 8460 §4.3 result type of a failed session, from the client's error text."""
    text = error.lower()
    if "does not offer starttls" in text or "starttls" in text and "refused" in text:
        return "starttls-not-supported"
    if "hostname" in text or "verificationerror" in text or "mismatch" in text:
        return "certificate-host-mismatch"
    if "expired" in text:
        return "certificate-expired"
    if "unable to get local issuer" in text or "self-signed" in text or "self signed" in text \
            or "verify failed" in text or "unknown ca" in text:
        return "certificate-not-trusted"
    return "validation-failure"


@dataclass(slots=True)
class _Policy:
    policy_string: list[str]
    mx: list[str]
    success: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # "type|mx|ip" -> sessions


def parse_rua(texts: list[bytes]) -> list[str]:
    """The ``rua`` addresses of the ``_smtp._tls`` TXT records (exactly one ``v=TLSRPTv1``)."""
    found = [t for t in texts if t.split(b";", 1)[0].strip() == b"v=TLSRPTv1"]
    if len(found) != 1:
        return []
    for part in found[0].decode("ascii", "replace").split(";"):
        key, eq, value = part.strip().partition("=")
        if eq and key.strip() == "rua":
            return [u.strip() for u in value.split(",") if u.strip()]
    return []


class TLSReports:
    """Counts per UTC day and policy domain; :meth:`send_due` reports the days that ended."""

    def __init__(self, *, hostname: str, contact: str, mx: MXResolver, outbox: Any,
                 path: Path | None = None, clock: Callable[[], float] = time.time,
                 save: Callable[[Callable[[], None]], defer.Deferred[Any]] | None = None) -> None:
        self.hostname = hostname
        self.contact = contact  # the From address and contact-info: postmaster of the first domain
        self.mx = mx
        self.outbox = outbox  # prepare_outbound/commit: the queue
        self.path = path
        self.clock = clock
        self.save = save
        self.days: dict[str, dict[str, dict[str, _Policy]]] = self._load()  # day -> domain -> policy key

    # -- recording (reactor thread, by the relay) ----------------------------------------------

    def _entry(self, domain: str, policy_string: list[str], mx: list[str]) -> _Policy | None:
        day = time.strftime("%Y-%m-%d", time.gmtime(self.clock()))
        domains = self.days.setdefault(day, {})
        if domain not in domains and len(domains) >= MAX_DOMAINS:
            return None
        policies = domains.setdefault(domain, {})
        key = "\n".join(policy_string)
        if key not in policies:
            policies[key] = _Policy(policy_string, mx)
        return policies[key]

    def success(self, domain: str, policy_string: list[str], mx: list[str]) -> None:
        entry = self._entry(domain, policy_string, mx)
        if entry is not None:
            entry.success += 1

    def failure(self, domain: str, policy_string: list[str], mx: list[str], kind: str, mx_host: str,
                ip: str) -> None:
        entry = self._entry(domain, policy_string, mx)
        if entry is None:
            return
        key = f"{kind}|{mx_host}|{ip}"
        if key in entry.failures or len(entry.failures) < MAX_DETAILS:
            entry.failures[key] = entry.failures.get(key, 0) + 1

    # -- reporting ------------------------------------------------------------------------------

    def report(self, day: str, domain: str) -> dict[str, Any]:
        """The RFC 8460 §4.4 report of *domain*'s *day* (``YYYY-MM-DD``)."""
        policies = []
        for entry in self.days.get(day, {}).get(domain, {}).values():
            failed = sum(entry.failures.values())
            item: dict[str, Any] = {
                "policy": {"policy-type": "sts", "policy-string": entry.policy_string, "policy-domain": domain,
                           "mx-host": entry.mx},
                "summary": {"total-successful-session-count": entry.success,
                            "total-failure-session-count": failed},
            }
            if entry.failures:
                item["failure-details"] = [
                    {"result-type": kind, "receiving-mx-hostname": mx_host, "receiving-ip": ip,
                     "failed-session-count": n}
                    for (kind, mx_host, ip), n in ((k.split("|", 2), n) for k, n in entry.failures.items())]
            policies.append(item)
        return {
            "organization-name": self.hostname,
            "date-range": {"start-datetime": f"{day}T00:00:00Z", "end-datetime": f"{day}T23:59:59Z"},
            "contact-info": self.contact,
            "report-id": f"{day}.{domain}.{secrets.token_hex(4)}@{self.hostname}",
            "policies": policies,
        }

    def message(self, day: str, domain: str, to: list[str]) -> bytes:
        """The report mail (RFC 8460 §5.3): a human part and the gzipped JSON."""
        report = self.report(day, domain)
        data = gzip.compress(json.dumps(report, separators=(",", ":")).encode())
        start = calendar.timegm(time.strptime(day, "%Y-%m-%d"))
        name = f"{self.hostname}!{domain}!{start}!{start + DAY - 1}!{secrets.token_hex(4)}.json.gz"
        boundary = f"tlsrpt.{secrets.token_hex(8)}"
        encoded = base64.encodebytes(data).decode("ascii").replace("\n", "\r\n")
        lines = [
            f"From: TLS reports <{self.contact}>",
            f"To: {', '.join(f'<{a}>' for a in to)}",
            f"Subject: Report Domain: {domain} Submitter: {self.hostname} Report-ID: <{report['report-id']}>",
            f"Date: {rfc2822_date(self.clock())}",
            f"Message-ID: <{secrets.token_hex(8)}.tlsrpt@{self.hostname}>",
            f"TLS-Report-Domain: {domain}",
            f"TLS-Report-Submitter: {self.hostname}",
            "Auto-Submitted: auto-generated",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/report; report-type="tlsrpt"; boundary="{boundary}"',
            "",
            f"--{boundary}",
            "Content-Type: text/plain; charset=utf-8",
            "",
            f"This is the SMTP TLS report (RFC 8460) of {self.hostname} for {domain} on {day}.",
            "",
            f"--{boundary}",
            f'Content-Type: application/tlsrpt+gzip; name="{name}"',
            "Content-Transfer-Encoding: base64",
            f'Content-Disposition: attachment; filename="{name}"',
            "",
        ]
        return ("\r\n".join(lines) + "\r\n" + encoded + f"\r\n--{boundary}--\r\n").encode("ascii")

    async def send_due(self) -> int:
        """Report every domain of every day before today; returns the reports queued."""
        today = time.strftime("%Y-%m-%d", time.gmtime(self.clock()))
        sent = 0
        for day in sorted(d for d in self.days if d < today):
            for domain in list(self.days[day]):
                sent += await self._send(day, domain)
                del self.days[day][domain]
            del self.days[day]
            self.store()
        return sent

    async def _send(self, day: str, domain: str) -> int:
        try:
            rua = parse_rua(await self.mx.lookup_txt(f"_smtp._tls.{domain}", limit=4096))
        except DNSError as e:
            log.info("TLS report of {domain} for {day} not sent: {error}", domain=domain, day=day, error=str(e))
            return 0
        to = [u[len("mailto:"):].split("?")[0] for u in rua if u.lower().startswith("mailto:")]
        for other in (u for u in rua if not u.lower().startswith("mailto:")):
            log.info("TLS report of {domain} for {day}: {uri} is not a mailto: address; not sent there",
                     domain=domain, day=day, uri=other)
        to = [a for a in to if "@" in a and all(c not in a for c in "\r\n<> ")]
        if not to:
            return 0
        outbound = Outbound("tls-report", self.contact, tuple(to), self.message(day, domain, to))
        handle = await self.outbox.prepare_outbound(outbound, f"tlsrpt-{day}-{domain}")
        await self.outbox.commit(handle)
        log.info("TLS report of {domain} for {day} queued to {to}", domain=domain, day=day, to=", ".join(to))
        return 1

    # -- the file ---------------------------------------------------------------------------------

    def _load(self) -> dict[str, dict[str, dict[str, _Policy]]]:
        if self.path is None:
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {day: {dom: {k: _Policy(**p) for k, p in pols.items()} for dom, pols in doms.items()}
                    for day, doms in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError) as e:
            log.warn("TLS report counts {path} not read ({error}); starting empty", path=str(self.path), error=e)
            return {}

    def store(self, *, now: bool = False) -> defer.Deferred[Any] | None:
        """Write the counts (a snapshot) through *save*, off the reactor thread; with *now* at
        once (at stop: a small file, and the pools may already be stopping)."""
        if self.path is None:
            return None
        path = self.path
        data = json.dumps({day: {dom: {k: {"policy_string": p.policy_string, "mx": p.mx, "success": p.success,
                                           "failures": dict(p.failures)} for k, p in pols.items()}
                                 for dom, pols in doms.items()} for day, doms in self.days.items()})

        def write() -> None:
            try:
                replace_file(path, data.encode())
            except OSError as e:
                log.warn("TLS report counts {path} not written: {error}", path=str(path), error=e)

        if self.save is None or now:
            write()
            return None
        return self.save(write)


class TLSReportService(Service):
    """Writes the counts every minute (and at stop) and sends the reports of ended days."""

    def __init__(self, reports: TLSReports, clock: Any, interval: float = 60.0) -> None:
        self.reports = reports
        self.clock = clock
        self.interval = interval
        self._timer: Any = None
        self.setName("tls-reports")

    def startService(self) -> None:
        super().startService()
        self._tick()

    def _tick(self) -> None:
        d = defer.Deferred.fromCoroutine(self.reports.send_due())
        d.addErrback(lambda f: log.failure("TLS reports could not be sent", f))
        d.addBoth(lambda _: self.reports.store())
        if self.running:
            self._timer = self.clock.callLater(self.interval, self._tick)

    def stopService(self) -> None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.reports.store(now=True)
