"""MTA-STS for outbound mail (RFC 8461): each recipient domain's policy, fetched, cached, applied.

Before mail goes to a domain's MX hosts the relay asks :meth:`MTASTS.policy`:

1. ``_mta-sts.<domain>`` TXT through the configured resolvers: one record starting
   ``v=STSv1`` with an ``id`` (none, or several, is no record, §3.1).
2. A cached policy whose id is the record's, or that has not expired while there is no
   record or the lookup failed, is used as it is (§5.1: a policy holds until its max_age
   even when its record goes away, which is what defeats a stripped TXT record).
3. Otherwise ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` is fetched with treq:
   the host's address from the same resolvers and the same address policy as MX hosts,
   its certificate verified against the system's CAs and ``relay.ca_file``, no redirect
   followed (§3.3), 200 only, at most 64 KiB (``MAX_POLICY``), ``FETCH_TIMEOUT`` for all of
   it. A policy that parses is cached (in memory, and in ``<queue>/mta-sts.json`` so it
   survives a restart); a failed fetch leaves the cached policy, or none: the domain is
   then treated as having no policy (§3.3), and mail goes with opportunistic TLS.

A policy in ``enforce`` mode sends mail only to the MX hosts it names, over TLS whose
certificate is valid for the MX host's name (``verified_options``); anything else is a
temporary failure, so mail is deferred, and bounced when it has waited ``relay.max_age``.
``testing`` mode delivers as without a policy and logs what enforcing would have refused.
"""

from __future__ import annotations

import json
import os
import ssl as stdlib_ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import defer, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from mailstack.dns import DNSError, MXResolver, to_ascii

log = Logger()

MAX_POLICY = 64 * 1024  # RFC 8461 §3.2 suggests senders cap it there
FETCH_TIMEOUT = 20.0
MAX_MAX_AGE = 31557600  # RFC 8461 §3.2: at most a year
MODES = ("enforce", "testing", "none")


class PolicyError(Exception):
    """A policy could not be fetched or does not parse; the message says why."""


@dataclass(frozen=True, slots=True)
class Policy:
    domain: str
    id: str
    mode: str
    mx: tuple[str, ...]
    max_age: int
    fetched: float

    def expired(self, now: float) -> bool:
        return now >= self.fetched + self.max_age

    def matches(self, host: str) -> bool:
        """Whether MX host *host* is one the policy names (a ``*.`` pattern covers one label)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, dot, rest = host.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:]
    return host == pattern


def parse_record(texts: list[bytes]) -> str | None:
    """The policy id of the ``_mta-sts`` TXT records; None unless exactly one is STSv1 with an id."""
    found = [t for t in texts if t.startswith(b"v=STSv1")]
    if len(found) != 1:
        return None
    fields: dict[str, str] = {}
    for part in found[0].decode("ascii", "replace").split(";"):
        key, eq, value = part.strip().partition("=")
        if eq:
            fields.setdefault(key.strip(), value.strip())
    if fields.get("v") != "STSv1":
        return None
    ident = fields.get("id", "")
    if not (1 <= len(ident) <= 32 and ident.isascii() and ident.isalnum()):
        return None
    return ident


def parse_policy(body: bytes) -> tuple[str, tuple[str, ...], int]:
    """(mode, mx patterns, max_age) of a policy body; raises :class:`PolicyError`."""
    if len(body) > MAX_POLICY:
        raise PolicyError(f"the policy is larger than {MAX_POLICY} octets")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("the policy is not UTF-8") from None
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PolicyError(f"not a policy line: {line[:60]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value)
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError("the policy's version is not STSv1")
    mode = fields.get("mode", "")
    if mode not in MODES:
        raise PolicyError(f"the policy's mode {mode[:20]!r} is not enforce, testing or none")
    age = fields.get("max_age", "")
    if not (age.isascii() and age.isdigit() and len(age) <= 10):
        raise PolicyError("the policy's max_age is not a number")
    if mode != "none" and not mx:
        raise PolicyError("the policy names no mx")
    for pattern in mx:
        name = pattern[2:] if pattern.startswith("*.") else pattern
        if not name or "*" in name or not all(p and len(p) <= 63 for p in name.rstrip(".").split(".")):
            raise PolicyError(f"the policy's mx {pattern[:60]!r} is not a host name pattern")
    return mode, tuple(m.lower() for m in mx), min(int(age), MAX_MAX_AGE)


def _certificates(pem: bytes) -> list[ssl.Certificate]:
    marker = b"-----BEGIN CERTIFICATE-----"
    return [ssl.Certificate.loadPEM(marker + part) for part in pem.split(marker)[1:]]


def trust_root(ca_file: Path | None) -> Any:
    """What outbound certificates are checked against: the system's CAs, and those of *ca_file*
    (``relay.ca_file``) when given. Raises OSError or ValueError for a bad file."""
    if ca_file is None:
        return ssl.platformTrust()
    extra = _certificates(ca_file.read_bytes())
    if not extra:
        raise ValueError(f"{ca_file} holds no PEM certificate")
    system: list[ssl.Certificate] = []
    bundle = stdlib_ssl.get_default_verify_paths().cafile
    if bundle:
        try:
            system = _certificates(Path(bundle).read_bytes())
        except (OSError, SSL.Error, crypto.Error) as e:
            log.warn("system CA bundle {path} not read: {error}", path=bundle, error=e)
    return ssl.trustRootFromCertificates(system + extra)


def verified_options(hostname: str, trust: Any) -> Any:
    """TLS that checks the peer's certificate chain against *trust* and its name against *hostname*
    (RFC 6125 through service-identity); TLS 1.2 or later."""
    return ssl.optionsForClientTLS(hostname, trustRoot=trust,
                                   extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2})


@implementer(IStreamClientEndpoint)
class _ResolvedTLSEndpoint:
    """HTTPS to a host whose address comes from mailstack's resolvers (not the system's)."""

    def __init__(self, reactor: Any, mx: MXResolver, host: str, port: int, creator: Any,
                 allowed: Callable[[str], bool] | None) -> None:
        self.reactor, self.mx, self.host, self.port, self.creator = reactor, mx, host, port, creator
        self.allowed = allowed

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory: Any) -> Any:
        addresses = [a for a in await self.mx.resolve_host(self.host)
                     if self.allowed is None or self.allowed(a)]
        if not addresses:
            raise PolicyError(f"{self.host} has no usable address")
        kind = TCP6ClientEndpoint if ":" in addresses[0] else TCP4ClientEndpoint
        tcp = kind(self.reactor, addresses[0], self.port, timeout=FETCH_TIMEOUT)
        return await wrapClientTLS(self.creator, tcp).connect(factory)


@implementer(IAgentEndpointFactory)
class _EndpointFactory:
    def __init__(self, reactor: Any, mx: MXResolver, trust: Any, port: int,
                 allowed: Callable[[str], bool] | None) -> None:
        from twisted.web.client import BrowserLikePolicyForHTTPS

        self.reactor, self.mx, self.port, self.allowed = reactor, mx, port, allowed
        self.policy = BrowserLikePolicyForHTTPS(trustRoot=trust)

    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802 (Twisted's interface)
        host = uri.host.decode("ascii")
        return _ResolvedTLSEndpoint(self.reactor, self.mx, host, self.port,
                                    self.policy.creatorForNetloc(uri.host, self.port), self.allowed)


class HTTPSFetcher:
    """GETs a policy with treq: verified TLS, no redirects, capped and timed out."""

    def __init__(self, reactor: Any, mx: MXResolver, trust: Any, *, port: int = 443,
                 allowed: Callable[[str], bool] | None = None, timeout: float = FETCH_TIMEOUT) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self._endpoints = (mx, trust, port, allowed)
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:  # the HTTP client stack is loaded at the first fetch, not at start-up
            import treq.client
            from twisted.web.client import Agent

            endpoints = _EndpointFactory(self.reactor, *self._endpoints)
            self._client = treq.client.HTTPClient(Agent.usingEndpointFactory(self.reactor, endpoints))
        return self._client

    async def fetch(self, domain: str) -> bytes:
        url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
        d = defer.Deferred.fromCoroutine(self._fetch(url))
        late = PolicyError(f"{url}: no answer within {self.timeout:g} s")
        d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=lambda result, timeout: Failure(late))
        try:
            return await d
        except PolicyError:
            raise
        except Exception as e:  # TLS, connection and HTTP errors alike: the fetch failed
            raise PolicyError(f"{url}: {_describe(e)}") from None

    async def _fetch(self, url: str) -> bytes:
        from twisted.web.http_headers import Headers

        response = await self.client.get(url, allow_redirects=False, headers=Headers({b"User-Agent": [b"mailstack"]}))
        if response.code != 200:
            response.deliverBody(_Discard())
            raise PolicyError(f"{url}: HTTP {response.code} (redirects are not followed)")
        body = _Capped(url)
        response.deliverBody(body)
        return await body.done


class _Capped:
    """Collects a response body up to MAX_POLICY octets; past that the connection is dropped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.parts: list[bytes] = []
        self.size = 0
        self.transport: Any = None
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def makeConnection(self, transport: Any) -> None:  # noqa: N802
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.done.called:
            return
        self.size += len(data)
        if self.size > MAX_POLICY:
            self.done.errback(PolicyError(f"{self.url}: the policy is larger than {MAX_POLICY} octets"))
            self.transport.stopProducing()
            return
        self.parts.append(data)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        if self.done.called:
            return
        from twisted.web.client import PotentialDataLoss, ResponseDone

        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(PolicyError(f"{self.url}: the body was cut short ({reason.getErrorMessage()})"))


class _Discard:
    def makeConnection(self, transport: Any) -> None:  # noqa: N802
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        pass

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        pass


def _describe(e: BaseException) -> str:
    reasons = getattr(e, "reasons", None)  # twisted.web's ResponseNeverReceived and friends
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return str(e) or e.__class__.__name__


class MTASTS:
    """Policies of recipient domains, by :meth:`policy`; the cache is kept in *cache_path*."""

    def __init__(self, mx: MXResolver, fetcher: Any, *, cache_path: Path | None = None,
                 clock: Callable[[], float] = time.time, save: Callable[[Callable[[], None]], Any] | None = None,
                 max_cached: int = 10000) -> None:
        self.mx = mx
        self.fetcher = fetcher
        self.cache_path = cache_path
        self.clock = clock
        self.save = save  # runs the cache write off the reactor thread (the io pool); None: at once
        self.max_cached = max_cached
        self.cache: dict[str, Policy] = self._load()
        self._fetching: dict[str, defer.Deferred[Policy | None]] = {}

    async def policy(self, domain: str) -> Policy | None:
        """The policy that applies to mail for *domain* now; None when there is none."""
        domain = to_ascii(domain).lower()
        now = self.clock()
        cached = self.cache.get(domain)
        if cached is not None and cached.expired(now):
            cached = None
        try:
            ident = parse_record(await self.mx.lookup_txt(f"_mta-sts.{domain}", limit=4096))
        except DNSError as e:
            log.info("MTA-STS record of {domain} not read ({error}); cached policy: {cached}", domain=domain,
                     error=str(e), cached=cached.mode if cached else "none")
            return cached
        if ident is None or (cached is not None and cached.id == ident):
            return cached
        pending = self._fetching.get(domain)
        if pending is None:  # one fetch per domain at a time, however many messages wait for it
            pending = defer.Deferred.fromCoroutine(self._refresh(domain, ident, cached))
            self._fetching[domain] = pending
            pending.addBoth(lambda r: (self._fetching.pop(domain, None), r)[1])
        result: Policy | None = await _share(pending)
        return result

    async def _refresh(self, domain: str, ident: str, cached: Policy | None) -> Policy | None:
        try:
            mode, mx, max_age = parse_policy(await self.fetcher.fetch(domain))
        except Exception as e:  # PolicyError, or anything else the fetch ran into: no new policy
            log.warn("MTA-STS policy of {domain} (id {id}) not fetched: {error}; using {using}", domain=domain,
                     id=ident, error=str(e), using=f"the cached one ({cached.mode})" if cached else "none")
            return cached
        policy = Policy(domain, ident, mode, mx, max_age, self.clock())
        log.info("MTA-STS policy of {domain}: {mode}, mx {mx}, max_age {max_age}", domain=domain, mode=mode,
                 mx=" ".join(mx), max_age=max_age)
        self.cache[domain] = policy
        if len(self.cache) > self.max_cached:
            now = self.clock()
            for name in [n for n, p in self.cache.items() if p.expired(now)] or [next(iter(self.cache))]:
                del self.cache[name]
        self._store()
        return policy

    def _load(self) -> dict[str, Policy]:
        if self.cache_path is None:
            return {}
        try:
            raw = json.loads(self.cache_path.read_text())
            return {d: Policy(**{**p, "mx": tuple(p["mx"])}) for d, p in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.warn("MTA-STS cache {path} not read ({error}); starting empty", path=str(self.cache_path), error=e)
            return {}

    def _store(self) -> None:
        if self.cache_path is None:
            return
        path = self.cache_path
        data = json.dumps({d: asdict(p) for d, p in self.cache.items()}).encode()

        def write() -> None:
            tmp = path.with_name(path.name + ".tmp")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, path)
            except OSError as e:
                log.warn("MTA-STS cache {path} not written: {error}", path=str(path), error=e)

        if self.save is None:
            write()
        else:
            self.save(write)


def _share(d: defer.Deferred[Any]) -> defer.Deferred[Any]:
    """A Deferred with *d*'s result (which never fails) that leaves *d* itself for other waiters."""
    out: defer.Deferred[Any] = defer.Deferred()

    def both(result: Any) -> Any:
        out.callback(result)
        return result

    d.addCallback(both)
    return out
