"""Outbound delivery of one message to the recipients of one domain.

Routing: ``relay.smarthost`` when set, else the domain's MX hosts in order
(``mailstack.dns``: preference order, random among equals, implicit MX, null
MX). Each address of each host is tried until one answers the transaction;
a refused or failed connection, or a whole-transaction 4xx (e.g. a 421
greeting), moves on to the next address. TLS policy: STARTTLS is used
whenever the peer offers it; if the handshake fails, the same host is tried
once more without STARTTLS (opportunistic TLS, RFC 3207 §4.1 between MTAs),
except for a smarthost with credentials, which requires TLS.

Per-recipient results: 2xx delivered, 4xx deferred (retried later), 5xx
failed (bounced). The sender's DSN requests (RFC 3461) go to a next hop that
offers DSN; a success the sender asked to hear of, handed to one that does
not, is marked for a ``relayed`` report. DNS: a temporary failure defers (4.4.3), no such domain or
a null MX fails at once.

A recipient domain's MTA-STS policy (``mailstack.mtasts``) decides which MX
hosts may be used and whether their certificates must verify; a REQUIRETLS
message (RFC 8689) goes only where a policy allows verification, to a server
that offers REQUIRETLS, else it fails with 5.7.30; ``TLS-Required: No`` sets a
policy aside for its message.

An MX address that is not a public one (loopback, private, link-local,
shared, reserved: ``ipaddress``'s ``is_global``) or is one of this server's
own, is skipped unless ``relay.mx_networks`` names it: a domain whose MX points
there is a loop or a misconfiguration, and mail to it is deferred (4.4.4) until
its DNS changes, then bounced. A smarthost is configured, not looked up, and is
never skipped.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from twisted.logger import Logger

from mailstack.config import HostPort
from mailstack.dns import DNSError, MXHost, MXResolver
from mailstack.mtasts import MTASTS, Policy, verified_options
from mailstack.queue.spool import DELIVERED, FAILED, PENDING, QueuedMessage, RecipientState
from mailstack.smtp.client import ClientError, ConnectionCache, TLSFailed, send_message
from mailstack.smtp.message import header_block
from mailstack.smtp.reply import Reply
from mailstack.tlsrpt import TLSReports, result_type

log = Logger()

# A refusal before the transaction says nothing about the recipients: try the next host
# (Postfix's smtp_skip_5xx_greeting); only a 5xx to MAIL/RCPT/DATA is about the message.
NEXT_HOST_STAGES = frozenset({"connect", "greeting", "ehlo", "helo", "starttls"})


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def mx_filter(allowed: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
              own: Sequence[str] = ()) -> Callable[[str], bool]:
    """Whether an MX address may be tried: a public address not among *own*, or one in *allowed*."""
    mine = frozenset(_plain(ipaddress.ip_address(a)) for a in own if a and _is_ip(a))

    def check(address: str) -> bool:
        try:
            ip = _plain(ipaddress.ip_address(address))
        except ValueError:
            return False
        if any(ip in net for net in allowed):
            return True
        public = ip.is_global and not ip.is_multicast and not getattr(ip, "is_site_local", False)
        return public and ip not in mine

    return check


def _plain(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``::ffff:192.0.2.1`` is ``192.0.2.1``."""
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped if mapped is not None else ip


def _usable(hosts: list[MXHost], allowed: Callable[[str], bool]) -> tuple[list[MXHost], list[str]]:
    kept, skipped = [], []
    for host in hosts:
        addresses = tuple(a for a in host.addresses if allowed(a))
        skipped += [f"{host.name}[{a}]" for a in host.addresses if a not in addresses]
        if addresses:
            kept.append(MXHost(host.name, host.preference, addresses))
    return kept, skipped


_TLS_REQUIRED_NO = re.compile(rb"^tls-required[ \t]*:[ \t]*no[ \t]*\r?$", re.I | re.M)


def tls_not_required(message: bytes) -> bool:
    """The sender's ``TLS-Required: No`` (RFC 8689 §5): deliver even where a policy says no TLS, no mail."""
    header = re.sub(rb"\r?\n[ \t]+", b" ", header_block(message))  # unfolded
    return _TLS_REQUIRED_NO.search(header) is not None


def _reply_text(reply: Reply) -> str:
    code = f"{reply.code} {reply.enhanced} " if reply.enhanced else f"{reply.code} "
    return code + " ".join(reply.lines())


def _status(reply: Reply) -> str:
    if reply.enhanced:
        return reply.enhanced
    return f"{reply.code // 100}.0.0"


class Relay:
    def __init__(
        self,
        *,
        reactor: Any,
        mx: MXResolver,
        hostname: str,
        port: int,
        tls_options: Any,
        smarthost: HostPort | None = None,
        smarthost_auth: tuple[str, str] | None = None,
        send: Any = send_message,
        endpoint_factory: Any = None,
        mx_allowed: Callable[[str], bool] | None = None,
        mta_sts: MTASTS | None = None,
        trust: Any = None,
        connections: ConnectionCache | None = None,
        tls_reports: TLSReports | None = None,
    ) -> None:
        self.reactor = reactor
        self.mx = mx
        self.hostname = hostname
        self.port = port
        self.tls_options = tls_options
        self.smarthost = smarthost
        self.smarthost_auth = smarthost_auth
        self.send = send
        self.endpoint_factory = endpoint_factory
        self.mx_allowed = mx_allowed  # None: every MX address is tried
        self.mta_sts = mta_sts  # None: recipient domains' MTA-STS policies are not looked at
        self.trust = trust  # the CAs MX certificates are verified against (MTA-STS)
        self.connections = connections  # sessions kept for the next message to the same server
        self.tls_reports = tls_reports  # what became of TLS under MTA-STS policies (RFC 8460)

    def close(self) -> None:
        """Say QUIT on the kept sessions (the queue is stopping)."""
        if self.connections is not None:
            self.connections.close()

    async def _hosts(self, domain: str) -> tuple[list[MXHost], int]:
        if self.smarthost is None:
            return await self.mx.lookup(domain), self.port
        host = self.smarthost.host
        if _is_ip(host):
            return [MXHost(host, 0, (host,))], self.smarthost.port
        addresses = await self.mx.resolve_host(host)
        return [MXHost(host, 0, addresses)], self.smarthost.port

    async def deliver(self, domain: str, msg: QueuedMessage, recipients: Sequence[str],
                      body: bytes) -> list[RecipientState]:
        try:
            hosts, port = await self._hosts(domain)
        except DNSError as e:
            status = PENDING if e.temporary else FAILED
            log.info("{queue_id} DNS for {domain}: {error}", queue_id=msg.queue_id, domain=domain, error=str(e))
            return [RecipientState(r, status, 0, 0.0, str(e), e.status) for r in recipients]
        last_error = "no usable mail exchanger"
        last_status = "4.4.1"
        last_remote = ""
        if self.smarthost is None and self.mx_allowed is not None:
            hosts, skipped = _usable(hosts, self.mx_allowed)
            if skipped:
                log.warn("{queue_id} MX of {domain} not tried (not public, or this server's own): {skipped}",
                         queue_id=msg.queue_id, domain=domain, skipped=", ".join(skipped))
                last_error = f"the MX hosts of {domain} are not public addresses: {', '.join(skipped)}"
                last_status = "4.4.4"
        policy, known = None, True
        if self.smarthost is None and self.mta_sts is not None and hosts:
            policy, known = await self.mta_sts.lookup(domain)
        if msg.requiretls and hosts:
            if not known:
                why = f"REQUIRETLS: the MTA-STS policy of {domain} cannot be looked up now"
                return [RecipientState(r, PENDING, 0, 0.0, why, "4.7.5") for r in recipients]
            refusal = self._requiretls_refusal(domain, policy)
            if refusal is not None:
                log.info("{queue_id} REQUIRETLS for {domain}: {refusal}", queue_id=msg.queue_id, domain=domain,
                         refusal=refusal)
                return [RecipientState(r, FAILED, 0, 0.0, refusal, "5.7.30") for r in recipients]
            if policy is not None and policy.mode == "testing":  # RFC 8689 §4.2.1: testing counts as enforce
                policy = replace(policy, mode="enforce")
        elif policy is not None and policy.mode != "none" and tls_not_required(body):
            log.info("{queue_id} TLS-Required: No: the MTA-STS policy of {domain} is not applied",
                     queue_id=msg.queue_id, domain=domain)
            policy = None
        if policy is not None and policy.mode != "none":
            named = [h for h in hosts if policy.matches(h.name)]
            if len(named) < len(hosts):
                others = ", ".join(h.name for h in hosts if h not in named)
                log.warn("{queue_id} MTA-STS policy of {domain} ({mode}) does not name MX {others}",
                         queue_id=msg.queue_id, domain=domain, mode=policy.mode, others=others)
                if self.tls_reports is not None:
                    for h in hosts:
                        if h not in named:
                            self.tls_reports.failure(domain, policy.text(), list(policy.mx), "validation-failure",
                                                     h.name, h.addresses[0] if h.addresses else "")
                if policy.mode == "enforce":
                    hosts = named
                    last_error = f"the MTA-STS policy of {domain} names none of its MX hosts ({others})"
                    last_status = "4.7.5"
        tries = refusals = 0  # sessions, and those refused for want of REQUIRETLS
        for host in hosts:
            for address in host.addresses:
                tries += 1
                try:
                    result = await self._send(host, address, port, msg, recipients, body, policy)
                except ClientError as e:
                    refusals += e.reply.enhanced == "5.7.30"
                    last_error = f"{host.name}[{address}]: {_reply_text(e.reply)}"
                    last_status, last_remote = _status(e.reply), host.name
                    if e.temporary or e.stage in NEXT_HOST_STAGES:
                        log.info("{queue_id} {host}[{address}] {stage}: {error}", queue_id=msg.queue_id,
                                 host=host.name, address=address, stage=e.stage, error=_reply_text(e.reply))
                        continue
                    return [RecipientState(r, FAILED, 0, 0.0, last_error, last_status, host.name,
                                           _reply_text(e.reply)) for r in recipients]
                return self._outcomes(host, address, recipients, result, msg)
        if msg.requiretls and tries and refusals == tries:  # no server of the domain offers REQUIRETLS
            return [RecipientState(r, FAILED, 0, 0.0, last_error, last_status, last_remote) for r in recipients]
        return [RecipientState(r, PENDING, 0, 0.0, last_error, last_status, last_remote) for r in recipients]

    def _requiretls_refusal(self, domain: str, policy: Policy | None) -> str | None:
        """Why a REQUIRETLS message can never go to *domain* from here (RFC 8689 §4.2.1); None if it can."""
        if self.smarthost is not None:
            if _is_ip(self.smarthost.host):
                return "REQUIRETLS: the smarthost is configured by address, so its certificate cannot be verified"
            return None
        if policy is None or policy.mode == "none":
            return (f"REQUIRETLS: {domain} publishes no MTA-STS policy, so its servers' certificates cannot be "
                    "verified as the sender asked")
        return None

    async def _send(self, host: MXHost, address: str, port: int, msg: QueuedMessage,
                    recipients: Sequence[str], body: bytes, policy: Policy | None = None) -> Any:
        required = self.smarthost is not None and self.smarthost_auth is not None
        kwargs = dict(reactor=self.reactor, host=address, port=port, helo=self.hostname, sender=msg.sender,
                      recipients=list(recipients), message=body, smtputf8=msg.smtputf8, body_8bit=msg.body_8bit,
                      tls_options=self.tls_options, auth=self.smarthost_auth if self.smarthost else None)
        if self.endpoint_factory is not None:
            kwargs["endpoint_factory"] = self.endpoint_factory
        if msg.ret or msg.envid is not None or msg.dsn:  # passed on when the peer offers DSN
            kwargs.update(ret=msg.ret, envid=msg.envid, rcpt_dsn=msg.dsn)
        user = self.smarthost_auth[0] if self.smarthost and self.smarthost_auth else ""

        async def go(starttls: str, verify: bool = False) -> Any:
            extra: dict[str, Any] = {}
            if verify:
                extra["tls_options"] = verified_options(host.name, self.trust)
            if self.connections is not None:  # one kept session per server, TLS mode and its checks
                extra.update(cache=self.connections,
                             cache_key=(address, port, starttls, host.name if verify else "", user))
            result = await self.send(starttls=starttls, **{**kwargs, **extra})
            result.verified = verify
            return result

        if msg.requiretls:
            kwargs["requiretls"] = True
            if self.smarthost is not None:  # RFC 8689: verified TLS to the smarthost's name, and its promise
                return await go("required", verify=True)
        if policy is not None and policy.mode != "none" and policy.matches(host.name):
            reports = self.tls_reports
            try:
                result = await go("required", verify=True)
            except ClientError as e:
                if (e.stage not in ("starttls", "ehlo") and not isinstance(e, TLSFailed)) or e.reply.enhanced == "5.7.30":
                    if reports is not None and e.stage not in ("connect", "greeting", "ehlo", "starttls"):
                        reports.success(policy.domain, policy.text(), list(policy.mx))  # TLS held; the rest failed
                    raise  # past TLS (the transaction's own outcome), or no REQUIRETLS there
                if reports is not None and e.stage != "connect":
                    reports.failure(policy.domain, policy.text(), list(policy.mx), result_type(_reply_text(e.reply)),
                                    host.name, address)
                reason = f"no valid TLS with {host.name} as its MTA-STS policy asks: {_reply_text(e.reply)}"
                if policy.mode == "enforce":
                    log.warn("{queue_id} {host}[{address}] {reason}", queue_id=msg.queue_id, host=host.name,
                             address=address, reason=reason)
                    raise ClientError(Reply(451, "4.7.5", reason), True, "starttls") from None
                log.warn("{queue_id} {host}[{address}] {reason} (testing mode: sent anyway)",
                         queue_id=msg.queue_id, host=host.name, address=address, reason=reason)
            else:
                if reports is not None:
                    reports.success(policy.domain, policy.text(), list(policy.mx))
                return result
        try:
            return await go("required" if required else "opportunistic")
        except TLSFailed as e:
            if required:
                raise
            log.warn("{queue_id} TLS with {host}[{address}] failed ({error}); retrying without STARTTLS",
                     queue_id=msg.queue_id, host=host.name, address=address, error=_reply_text(e.reply))
            return await go("off")

    def _outcomes(self, host: MXHost, address: str, recipients: Sequence[str], result: Any,
                  msg: QueuedMessage) -> list[RecipientState]:
        out = []
        for r in recipients:
            reply = result.per_recipient.get(r)
            if reply is None:
                out.append(RecipientState(r, PENDING, 0, 0.0, "no reply", "4.4.2", host.name))
                continue
            text = _reply_text(reply)
            notice = ""
            if reply.code < 400:
                status = DELIVERED
                if not getattr(result, "dsn", False) and msg.wants(r, "SUCCESS"):
                    notice = "relayed"  # RFC 3461 §5.2.2: the next hop will not report delivery
            elif reply.code < 500:
                status = PENDING
            else:
                status = FAILED
            out.append(RecipientState(r, status, 0, 0.0, "" if status == DELIVERED else text, _status(reply),
                                      host.name, text, notice=notice))
        log.info("{queue_id} relayed via {host}[{address}]{tls}: {summary}", queue_id=msg.queue_id,
                 host=host.name, address=address,
                 tls=" with TLS" + (" (certificate verified)" if result.verified else "") if result.tls else "",
                 summary=", ".join(f"<{o.address}> {o.status}" for o in out))
        return out
