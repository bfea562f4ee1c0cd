"""MTA-STS for outbound mail (RFC 8461): each recipient domain's policy, fetched, cached, applied.

Before mail goes to a domain's MX hosts the relay asks :meth:`MTASTS.policy`:

1. ``_mta-sts.<domain>`` TXT through the configured resolvers: one record starting
   ``v=STSv1`` with an ``id`` (none, or several, is no record, §3.1).
2. A cached policy whose id is the record's, or that has not expired while there is no
   record or the lookup failed, is used as it is (§5.1: a policy holds until its max_age
   even when its record goes away, which is what defeats a stripped TXT record).
3. Otherwise ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` is fetched with twisted.web's Agent:
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
import re
import ssl as stdlib_ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import defer, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory
from zope.interface import implementer

from mailstack.dns import DNSError, MXResolver, to_ascii
from mailstack.fsutil import replace_file

log = Logger()

MAX_POLICY = 64 * 1024  # RFC 8461 §3.2 suggests senders cap it there
FETCH_TIMEOUT = 20.0
MAX_MAX_AGE = 31557600  # RFC 8461 §3.2: at most a year
MODES = ("enforce", "testing", "none")
MAX_MX = 100  # mx lines a policy may have (a real one has a few)
_HOST = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))+\.?$")  # ASCII LDH labels


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

    def text(self) -> list[str]:
        """The policy's lines, as TLS reports give them (RFC 8460 §4.4 ``policy-string``)."""
        return ["version: STSv1", f"mode: {self.mode}", *(f"mx: {m}" for m in self.mx), f"max_age: {self.max_age}"]

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
    found = [t for t in texts if t.split(b";", 1)[0].strip() == b"v=STSv1"]  # not v=STSv10
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
    if len(mx) > MAX_MX:
        raise PolicyError(f"the policy names more than {MAX_MX} mx")
    for pattern in mx:
        name = pattern[2:] if pattern.startswith("*.") else pattern
        if not _HOST.match(name) or len(name) > 253:
            raise PolicyError(f"the policy's mx {pattern[:60]!r} is not a host name pattern")
    return mode, tuple(m.lower() for m in mx), min(int(age), MAX_MAX_AGE)


def _certificates(pem: bytes) -> list[ssl.Certificate]:
    marker = b"-----BEGIN CERTIFICATE-----"
    return [ssl.Certificate.loadPEM(marker + part) for part in pem.split(marker)[1:]]


SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")


class Trust:
    """The CA certificates outbound TLS is verified against: the system's bundle, and
    ``relay.ca_file``'s. Read once, at the first verification (not at start-up, not per
    connection), and the TLS options for each host name are kept (an OpenSSL context each)."""

    def __init__(self, ca_file: Path | None = None, bundles: tuple[str, ...] | None = None) -> None:
        self.ca_file = ca_file
        paths = stdlib_ssl.get_default_verify_paths()
        self.bundles = bundles if bundles is not None else tuple(
            b for b in (paths.cafile, paths.openssl_cafile, *SYSTEM_BUNDLES) if b)
        self.extra = _certificates(ca_file.read_bytes()) if ca_file is not None else []
        if ca_file is not None and not self.extra:
            raise ValueError(f"{ca_file} holds no PEM certificate")
        self._root: Any = None
        self._options: dict[str, Any] = {}

    def root(self) -> Any:
        if self._root is None:
            system: list[ssl.Certificate] = []
            for bundle in self.bundles:
                try:
                    system = _certificates(Path(bundle).read_bytes())
                except (OSError, SSL.Error, crypto.Error):
                    continue
                if system:
                    break
            if not system:
                log.warn("no system CA bundle found (looked at {paths}): only relay.ca_file is trusted",
                         paths=", ".join(self.bundles))
            self._root = ssl.trustRootFromCertificates(system + self.extra)
        return self._root

    def options(self, hostname: str) -> Any:
        """TLS that checks the peer's chain against these CAs and its name against *hostname*
        (RFC 6125 through service-identity); TLS 1.2 or later."""
        found = self._options.get(hostname)
        if found is None:
            if len(self._options) >= 1024:
                self._options.clear()
            found = self._options[hostname] = ssl.optionsForClientTLS(
                hostname, trustRoot=self.root(), extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2})
        return found


def trust_root(ca_file: Path | None) -> Trust:
    """The :class:`Trust` of ``relay.ca_file``; raises OSError or ValueError for a bad file."""
    return Trust(ca_file)


def verified_options(hostname: str, trust: Trust) -> Any:
    return trust.options(hostname)


@implementer(IStreamClientEndpoint)
class _ResolvedTLSEndpoint:
    """HTTPS to a host whose addresses come from mailstack's resolvers (not the system's), each
    tried in turn, from ``relay.source_address`` when set."""

    def __init__(self, fetcher: HTTPSFetcher, host: str, creator: Any) -> None:
        self.fetcher, self.host, self.creator = fetcher, host, creator

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory: Any) -> Any:
        f = self.fetcher
        addresses = [a for a in await f.mx.resolve_host(self.host) if f.allowed is None or f.allowed(a)]
        if not addresses:
            raise PolicyError(f"{self.host} has no usable address")
        error: Exception | None = None
        for address in addresses:
            kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            bind = {"bindAddress": (f.source, 0)} if f.source and (":" in f.source) == (":" in address) else {}
            tcp = kind(f.reactor, address, f.port, timeout=f.timeout, **bind)
            try:
                return await wrapClientTLS(self.creator, tcp).connect(factory)
            except (ConnectError, OSError) as e:
                error = e
        raise PolicyError(f"cannot connect to {self.host}: {error}")


@implementer(IAgentEndpointFactory)
class _EndpointFactory:
    def __init__(self, fetcher: HTTPSFetcher) -> None:
        from twisted.web.client import BrowserLikePolicyForHTTPS

        self.fetcher = fetcher
        self.policy = BrowserLikePolicyForHTTPS(trustRoot=fetcher.trust.root())

    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802 (Twisted's interface)
        creator = self.policy.creatorForNetloc(uri.host, self.fetcher.port)
        return _ResolvedTLSEndpoint(self.fetcher, uri.host.decode("ascii"), creator)


class HTTPSFetcher:
    """GETs a policy with twisted.web's Agent: verified TLS, no redirects, 200 and text/plain
    only, capped and timed out as a whole. (treq's conveniences are what a policy fetch must
    not have: it buffers whole bodies, asks for gzip and unpacks before any cap, and keeps
    cookies.)"""

    def __init__(self, reactor: Any, mx: MXResolver, trust: Trust, *, port: int = 443,
                 allowed: Callable[[str], bool] | None = None, timeout: float = FETCH_TIMEOUT,
                 source: str = "") -> None:
        self.reactor = reactor
        self.mx = mx
        self.trust = trust
        self.port = port
        self.allowed = allowed
        self.timeout = timeout
        self.source = source
        self._agent: Any = None

    @property
    def agent(self) -> Any:
        if self._agent is None:  # the HTTP client stack is loaded at the first fetch, not at start-up
            from twisted.web.client import Agent

            self._agent = Agent.usingEndpointFactory(self.reactor, _EndpointFactory(self))
        return self._agent

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

        response = await self.agent.request(b"GET", url.encode("ascii"), Headers({b"User-Agent": [b"mailstack"]}))
        problem = None
        kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0].split(b";")[0].strip().lower()
        if response.code != 200:
            problem = f"HTTP {response.code} (redirects are not followed)"
        elif kind != b"text/plain":  # RFC 8461 §3.3
            problem = f"the policy is served as {kind.decode('ascii', 'replace')[:40]!r}, not text/plain"
        elif response.length is not UNKNOWN_LENGTH and response.length > MAX_POLICY:
            problem = f"the policy is larger than {MAX_POLICY} octets"
        if problem is not None:
            response.deliverBody(_Discard())
            raise PolicyError(f"{url}: {problem}")
        body = _Capped(url)
        response.deliverBody(body)
        return await body.done


class _Capped:
    """Collects a response body up to MAX_POLICY octets; past that, or when the fetch is
    cancelled (its timeout), the connection is dropped and nothing more is kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.parts: list[bytes] = []
        self.size = 0
        self.transport: Any = None
        self.done: defer.Deferred[bytes] = defer.Deferred(self._cancel)

    def _cancel(self, _: object) -> None:
        self.parts = []
        if self.transport is not None:
            self.transport.stopProducing()

    def makeConnection(self, transport: Any) -> None:  # noqa: N802
        self.transport = transport

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.done.called:
            return
        self.size += len(data)
        if self.size > MAX_POLICY:
            self.parts = []
            self.done.errback(PolicyError(f"{self.url}: the policy is larger than {MAX_POLICY} octets"))
            self.transport.stopProducing()
            return
        self.parts.append(data)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        if self.done.called:
            return
        from twisted.web.client import ResponseDone

        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:  # PotentialDataLoss too: a body cut short (a reset, no length) must not count
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
    """Policies of recipient domains, by :meth:`lookup`; the cache is kept in *cache_path*.

    The cache holds at most *max_cached* domains: when full, expired policies go first, then
    those in ``none`` and ``testing`` mode, then the least recently used (so a flood of
    domains is not a way to push an ``enforce`` policy out cheaply). The file is written by
    one writer at a time, through *save* (the io pool), from a snapshot taken on the reactor.
    """

    def __init__(self, mx: MXResolver, fetcher: Any, *, cache_path: Path | None = None,
                 clock: Callable[[], float] = time.time,
                 save: Callable[[Callable[[], None]], defer.Deferred[Any]] | None = None,
                 max_cached: int = 10000) -> None:
        self.mx = mx
        self.fetcher = fetcher
        self.cache_path = cache_path
        self.clock = clock
        self.save = save  # runs the cache write off the reactor thread (the io pool); None: at once
        self.max_cached = max_cached
        self.cache: dict[str, Policy] = self._load()
        self._fetching: dict[str, defer.Deferred[tuple[Policy | None, bool]]] = {}
        self._writing = False
        self._dirty = False

    async def policy(self, domain: str) -> Policy | None:
        """The policy that applies to mail for *domain* now; None when there is none (or it
        cannot be known now: mail goes as without one, RFC 8461 §3.3)."""
        found, _ = await self.lookup(domain)
        return found

    async def lookup(self, domain: str) -> tuple[Policy | None, bool]:
        """(policy, known): *known* is False when there is no policy at hand only because the
        record or the policy could not be read now (DNS or HTTPS trouble): REQUIRETLS waits then."""
        domain = to_ascii(domain).lower()
        now = self.clock()
        cached = self.cache.get(domain)
        if cached is not None and cached.expired(now):
            cached = None
        if cached is not None:  # most recently used last
            self.cache[domain] = self.cache.pop(domain)
        try:
            ident = parse_record(await self.mx.lookup_txt(f"_mta-sts.{domain}", limit=4096))
        except DNSError as e:
            log.info("MTA-STS record of {domain} not read ({error}); cached policy: {cached}", domain=domain,
                     error=str(e), cached=cached.mode if cached else "none")
            return cached, cached is not None or not e.temporary
        if ident is None or (cached is not None and cached.id == ident):
            return cached, True
        pending = self._fetching.get(domain)
        if pending is None:  # one fetch per domain at a time, however many messages wait for it
            pending = defer.Deferred.fromCoroutine(self._refresh(domain, ident, cached))
            self._fetching[domain] = pending
            pending.addBoth(lambda r: (self._fetching.pop(domain, None), r)[1])
        result: tuple[Policy | None, bool] = await _share(pending, (cached, cached is not None))
        return result

    async def _refresh(self, domain: str, ident: str, cached: Policy | None) -> tuple[Policy | None, bool]:
        try:
            mode, mx, max_age = parse_policy(await self.fetcher.fetch(domain))
        except Exception as e:  # PolicyError, or anything else the fetch ran into: no new policy
            log.warn("MTA-STS policy of {domain} (id {id}) not fetched: {error}; using {using}", domain=domain,
                     id=ident, error=str(e), using=f"the cached one ({cached.mode})" if cached else "none")
            return cached, cached is not None
        policy = Policy(domain, ident, mode, mx, max_age, self.clock())
        log.info("MTA-STS policy of {domain}: {mode}, mx {mx}, max_age {max_age}", domain=domain, mode=mode,
                 mx=" ".join(mx), max_age=max_age)
        self.cache.pop(domain, None)
        self.cache[domain] = policy
        self._evict()
        self._store()
        return policy, True

    def _evict(self) -> None:
        if len(self.cache) <= self.max_cached:
            return
        now = self.clock()
        order = sorted(self.cache, key=lambda d: (not self.cache[d].expired(now), self.cache[d].mode == "enforce"))
        for name in order[:len(self.cache) - self.max_cached]:  # sorted() keeps recency order among equals
            del self.cache[name]

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
        """Write the cache file: one writer at a time; changes meanwhile make one more write."""
        if self.cache_path is None:
            return
        if self._writing:
            self._dirty = True
            return
        self._writing, self._dirty = True, False
        path, snapshot = self.cache_path, dict(self.cache)

        def write() -> None:
            try:
                replace_file(path, json.dumps({d: asdict(p) for d, p in snapshot.items()}).encode())
            except OSError as e:
                log.warn("MTA-STS cache {path} not written: {error}", path=str(path), error=e)

        def written(_: object) -> None:
            self._writing = False
            if self._dirty:
                self._store()

        if self.save is None:
            write()
            written(None)
        else:
            self.save(write).addBoth(written)


def _share(d: defer.Deferred[Any], fallback: Any) -> defer.Deferred[Any]:
    """A Deferred with *d*'s result that leaves *d* itself for other waiters; *fallback* if *d* fails."""
    out: defer.Deferred[Any] = defer.Deferred()

    def both(result: Any) -> Any:
        if isinstance(result, Failure):
            log.failure("MTA-STS policy fetch failed", result)
            out.callback(fallback)
            return fallback  # the other waiters get it too
        out.callback(result)
        return result

    d.addBoth(both)
    return out
