"""Composition: build the one ``MultiService`` that ``twistd mailstack`` runs.

All wiring lives here, and this is the only module that knows every concrete
class. :func:`build_shared` creates the shared objects once (:class:`Shared`:
account store, thread pools, TLS options, local delivery, queue, router,
POP3's ``Maildrops``, IMAP's ``MailStore``); each listener builder then takes
them plus its own slice of the settings. Every listener is a named child
(``smtp``, ``submission``, ``submissions``, ``pop3``, ``pop3s``, ``imap``,
``imaps``, ``managesieve``); one whose ``[listen]`` entry is empty is not added. Children stop
in reverse order, so listeners stop accepting first, then in-flight work
drains, then the thread pools stop.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, globalLogPublisher, jsonFileLogObserver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from mailstack import managesieve, pop3
from mailstack.accounts import AccountError, SQLiteAccountStore
from mailstack.accounts.cred import AccountChecker
from mailstack.accounts.sqlite import MAX_SCRIPT_SIZE, MAX_SCRIPTS
from mailstack.auth import Authenticator
from mailstack.capture import CaptureBox, CaptureRelay
from mailstack.certwatch import CertificateWatch
from mailstack.checks import (
    ARCVerifier,
    CheckPolicy,
    DKIMVerifier,
    DMARCChecker,
    DNSLists,
    InboundChecks,
    QuarantineFilter,
    SPFChecker,
)
from mailstack.checks.dmarc import organizational_domain
from mailstack.clientconfig import ClientSettings
from mailstack.config import HostPort, LimitsSettings, Settings
from mailstack.delivery import InboxFilter, LocalDelivery
from mailstack.dkim import DKIMSigner, KeyDirectory, KeyStore, PooledSigner, speedups
from mailstack.dns import MXResolver, make_resolver
from mailstack.errors import ListenError, StartupError
from mailstack.faults import FaultRules
from mailstack.imap.listener import imap_factory
from mailstack.imap.protocol import IMAPFactory
from mailstack.imap.session import SessionConfig as IMAPSessionConfig
from mailstack.inbound import InboundPolicy
from mailstack.interfaces import SMTPPolicy
from mailstack.maildir import MaildirDelivery, MaildirLayout, MailStore
from mailstack.maildir.names import escape_hostname
from mailstack.maildir.watch import Watcher
from mailstack.mtasts import MTASTS, HTTPSFetcher, trust_root
from mailstack.notify import MailboxEvents
from mailstack.pop3 import Maildrops, POP3Factory
from mailstack.queue import Spool
from mailstack.queue.relay import Relay, mx_filter
from mailstack.queue.runner import QueueRunner, QueueSettings
from mailstack.ratelimit import SendLimits
from mailstack.routing import Router
from mailstack.sieve.filter import SieveFilter
from mailstack.sieve.replied import VacationMemory
from mailstack.smtp.client import ConnectionCache, bound_endpoint
from mailstack.smtp.protocol import SMTPFactory
from mailstack.smtp.session import SessionConfig, SMTPSession
from mailstack.srs import SRS, load_secret
from mailstack.submission import SubmissionPolicy
from mailstack.throttle import AuthThrottle, ConnectionLimiter
from mailstack.tls import ServerTLS, TLSError, client_options
from mailstack.tlsrpt import TLSReports, TLSReportService
from mailstack.web import JSONResource, build_site, wellknown
from mailstack.web.capture import CaptureAPI
from mailstack.web.faults import FaultsResource
from mailstack.web.ops import HealthResource, MetricsResource

log = Logger()


class ThreadPoolService(Service):
    """Owns a named, bounded thread pool for blocking work (fsync, argon2, SQLite)."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool
        self.setName(f"threadpool-{pool.name}")

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.pool.stop()
        return None


class WatcherService(Service):
    """Reads the folder change reports (:mod:`mailstack.maildir.watch`) while the server runs."""

    def __init__(self, watcher: Watcher, reactor: Any) -> None:
        self.watcher = watcher
        self.reactor = reactor
        self.setName("folder-watcher")

    def startService(self) -> None:
        super().startService()
        self.reactor.addReader(self.watcher)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.reactor.removeReader(self.watcher)
        self.watcher.close()
        return None


class JSONLog(Service):
    """``[log] format = "json"``: every log event, one JSON object a line, in ``log.path``
    while the service runs (twistd's own log goes on as before); ``mailstack trace`` reads it."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed at stop)
        except OSError as e:
            raise StartupError(f"log.path: cannot open {path}: {e.strerror}") from None
        self.observer = jsonFileLogObserver(self.file)
        self.setName("json-log")

    def startService(self) -> None:
        super().startService()
        globalLogPublisher.addObserver(self.observer)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        globalLogPublisher.removeObserver(self.observer)
        if self.file is not None:
            self.file.close()
            self.file = None
        return None


class WarmUp(Service):
    """One-time work done on the io pool as the service starts, not on the first message's
    path (nor in the start itself): the Public Suffix List (DMARC's organizational domains,
    about 40 ms) and dkimpy's speedups (a throwaway RSA key to check them against)."""

    def __init__(self, reactor: Any, pool: ThreadPool) -> None:
        self.reactor = reactor
        self.pool = pool
        self.setName("warm-up")

    def startService(self) -> None:
        super().startService()
        d = deferToThreadPool(self.reactor, self.pool, self._work)
        d.addErrback(lambda f: log.failure("start-up warm-up failed", f))

    @staticmethod
    def _work() -> None:
        organizational_domain("example.com")
        speedups.install()


class Closing(Service):
    """Closes a file or database the server holds open, when the service tree stops."""

    def __init__(self, close: Callable[[], None], name: str) -> None:
        self.close = close
        self.setName(name)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.close()
        return None


@dataclass(frozen=True, slots=True)
class Shared:
    """The objects created once per service tree, which listeners are built from.

    ``clock`` and ``threads`` are the same reactor, named by what each user needs
    of it. Configuration is not here: each builder is handed its own slice.
    """

    clock: IReactorTime
    threads: IReactorFromThreads
    io_pool: ThreadPool
    auth_pool: ThreadPool
    """Where SPF evaluations wait on their DNS queries (apart from the io pool's fsyncs)."""
    tls: ServerTLS
    """The certificate of every TLS listener; CertificateWatch replaces it when its files change."""
    store: SQLiteAccountStore
    authenticator: Authenticator
    limiter: ConnectionLimiter
    events: MailboxEvents
    local: LocalDelivery
    queue: QueueRunner
    router: Router
    resolver: MXResolver
    maildrops: Maildrops
    """POP3's locks and snapshots, shared by 110 and 995."""
    mail_store: MailStore
    """IMAP's folders and per-folder state, shared by 143 and 993."""
    srs: SRS
    """The rewritten senders of forwarded mail: made by the router, read back on port 25 and by the queue."""
    io: Callable[..., Deferred[Any]]
    """Blocking work on the io pool, results on the reactor (POP3 maildrops, DKIM)."""
    replied: VacationMemory | None = None
    """Who had a vacation reply (Sieve), on the io pool; closed once the pools have stopped."""
    watcher: Watcher | None = None
    """Reports of changes to open folders; None where inotify is not available."""
    faults: FaultRules | None = None
    """Failure injection for the SMTP listeners ([[faults]], the HTTP API); None when neither is used."""
    rate: SendLimits | None = None
    """Messages an hour at submission (limits.send_per_hour...); None without limits."""


class Listener(MultiService):
    """One listening port, named by its ``[listen]`` key, with implicit TLS when given *tls*: a port
    that cannot be bound (taken, no permission, no such address) is a :class:`ListenError` naming the
    key and the address."""

    def __init__(self, name: str, address: HostPort, factory: Any, reactor: Any, tls: ServerTLS | None = None) -> None:
        super().__init__()
        self.address = address
        self.setName(name)
        wire = TLSMemoryBIOFactory(tls, False, factory, clock=reactor) if tls is not None else factory
        wire.noisy = False
        self.port = strports.service(endpoint_description(address), wire, reactor=reactor)
        self.port.setServiceParent(self)

    def privilegedStartService(self) -> None:
        with self._explained():
            super().privilegedStartService()

    def startService(self) -> None:
        with self._explained():
            super().startService()

    def listening(self) -> bool:
        try:
            self.bound_port()
        except RuntimeError:
            return False
        return bool(self.running)

    def bound_port(self) -> int:
        """The port number bound (the address may ask for port 0); RuntimeError before the start."""
        found: list[Any] = []

        def keep(port: Any) -> Any:
            found.append(port)
            return port

        self.port._waitingForPort.addCallback(keep)  # type: ignore[union-attr]
        if not found or found[0] is None:  # not started, or stopped since
            raise RuntimeError(f"{self.name} did not start listening")
        return int(found[0].getHost().port)

    @contextlib.contextmanager
    def _explained(self) -> Iterator[None]:
        try:
            yield
        except CannotListenError as e:
            reason = e.socketError
            why = getattr(reason, "strerror", None) or str(reason)
            raise ListenError(f"listen.{self.name}: cannot listen on {self.address}: {why.lower()}") from None


def endpoint_description(address: HostPort) -> str:
    """A strports description for a TCP listener (implicit TLS is layered on the factory)."""
    host = address.host.replace(":", "\\:")
    return f"tcp:{address.port}:interface={host}"


def _open_store(settings: Settings) -> SQLiteAccountStore:
    try:
        store = SQLiteAccountStore(settings.storage.accounts,
                                   recipient_delimiter=settings.delivery.recipient_delimiter)
        store.ensure_domains(settings.domains)
    except (AccountError, OSError) as e:
        raise StartupError(f"storage.accounts: cannot open {settings.storage.accounts}: {e}") from None
    except Exception as e:  # sqlite3.Error and friends: one line, not a traceback
        raise StartupError(f"storage.accounts: cannot open {settings.storage.accounts}: {e}") from None
    return store


def _prepare_dirs(settings: Settings) -> None:
    for key, path in (("storage.maildirs", settings.storage.maildirs), ("storage.queue", settings.storage.queue)):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StartupError(f"{key}: cannot create {path}: {e.strerror}") from None
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            raise StartupError(f"{key}: {path} is not readable and writable by this user (uid {os.geteuid()})")


def build_queue(settings: Settings, reactor: Any, local: LocalDelivery, pool: ThreadPool,
                mx: MXResolver, signer: DKIMSigner | None = None, srs: SRS | None = None) -> QueueRunner:
    relay_settings = settings.relay
    spool = Spool(settings.storage.queue)
    auth = None
    if relay_settings.smarthost_username:
        auth = (relay_settings.smarthost_username, relay_settings.smarthost_password)
    source = relay_settings.source_address
    listening = [getattr(settings.listen, f.name) for f in fields(settings.listen)]
    own = [a.host for a in listening if a is not None and a.host not in ("0.0.0.0", "::")]
    allowed = mx_filter(relay_settings.mx_networks, [*own, relay_settings.source_address])
    try:
        trust = trust_root(Path(relay_settings.ca_file) if relay_settings.ca_file else None)
    except (OSError, ValueError) as e:
        raise StartupError(f"relay.ca_file: cannot load {relay_settings.ca_file}: {e}") from None
    mta_sts = None
    if relay_settings.mta_sts and relay_settings.smarthost is None:
        fetcher = HTTPSFetcher(reactor, mx, trust, port=relay_settings.https_port, allowed=allowed, source=source)
        mta_sts = MTASTS(mx, fetcher, cache_path=settings.storage.queue / "mta-sts.json", clock=reactor.seconds,
                         save=lambda write: deferToThreadPool(reactor, pool, write))
    reports = None
    if mta_sts is not None:
        contact = f"postmaster@{settings.domains[0] if settings.domains else settings.hostname}"
        reports = TLSReports(hostname=settings.hostname, contact=contact, mx=mx, outbox=None,
                             path=settings.storage.queue / "tls-reports.json", clock=reactor.seconds,
                             save=lambda write: deferToThreadPool(reactor, pool, write))
    relay = Relay(reactor=reactor, mx=mx, hostname=settings.hostname, port=relay_settings.port,
                  mx_allowed=allowed, mta_sts=mta_sts, trust=trust, tls_reports=reports,
                  connections=ConnectionCache(reactor, per_connection=relay_settings.messages_per_connection,
                                              max_idle=relay_settings.connections),
                  tls_options=client_options(), smarthost=relay_settings.smarthost, smarthost_auth=auth,
                  endpoint_factory=bound_endpoint(source) if source else None)
    queue_settings = QueueSettings(
        hostname=settings.hostname, retry=relay_settings.retry, max_age=relay_settings.max_age,
        max_received=relay_settings.max_received, connections=relay_settings.connections,
        delay_warning=relay_settings.delay_warning,
        connections_per_domain=relay_settings.connections_per_domain,
    )
    capture = None
    if relay_settings.capture:
        capture = CaptureRelay(local, relay_settings.capture_mailbox, settings.hostname,
                               relayed=frozenset(relay_settings.capture_except))
        log.info("capture mode: mail for other domains goes to <{mailbox}>", mailbox=relay_settings.capture_mailbox)
    runner = QueueRunner(spool, queue_settings, reactor=reactor, clock=reactor, pool=pool, local=local, relay=relay,
                         signer=signer.sign if signer is not None else None, srs=srs, capture=capture)
    if reports is not None:
        reports.outbox = runner  # the reports go out through the queue, signed like other notices
    return runner


def build_shared(settings: Settings, reactor: Any, tls: ServerTLS | None = None) -> Shared:
    """Create every shared object once. ``reactor`` provides time, threads, TCP and name resolution;
    *tls*, when given, is the server certificate already loaded (twistd loads it before the tree is
    built as the ``--uid`` user, so a key only root may read still serves)."""
    _prepare_dirs(settings)
    try:
        tls = tls or ServerTLS(settings.tls, settings.hostname)
    except TLSError as e:
        raise StartupError(str(e)) from None
    store = _open_store(settings)
    io_pool = ThreadPool(minthreads=0, maxthreads=32, name="io")
    auth_pool = ThreadPool(minthreads=0, maxthreads=2, name="auth")
    checker = AccountChecker(store, reactor, auth_pool, renew=store)
    maildir = MaildirDelivery(settings.storage.maildirs, hostname=settings.hostname, reactor=reactor,
                              threadpool=io_pool)
    events = MailboxEvents()
    io = pop3.pool_io(reactor, io_pool)  # blocking work for the mail store, POP3 maildrops and DKIM signing
    watcher = Watcher.create()
    mail_store = MailStore(MaildirLayout(settings.storage.maildirs), escape_hostname(settings.hostname),
                           accounts=store, watcher=watcher, events=events)

    async def junk_folder(user: str) -> str:
        return await mail_store.folder_with_use(user, "\\Junk", io)

    try:
        srs = SRS(load_secret(settings.storage.srs_secret))
    except OSError as e:
        raise StartupError(f"storage.srs_secret: cannot read or create {settings.storage.srs_secret}: "
                           f"{e.strerror}") from None
    try:
        replied = VacationMemory(settings.storage.vacation)
    except (OSError, sqlite3.Error) as e:
        raise StartupError(f"storage.vacation: cannot open {settings.storage.vacation}: {e}") from None
    # The Filter step: DMARC quarantine files into the user's \Junk folder; the user's Sieve script
    # files the rest; without one, INBOX.
    sieve = SieveFilter(store, InboxFilter(), run=io, delimiter=settings.delivery.recipient_delimiter,
                        hostname=settings.hostname, srs=srs, replied=replied, clock=reactor.seconds,
                        folder_exists=lambda user, name: mail_store.exists(user, name, io))

    async def keyword_letters(user: str, folder: str | None, keywords: list[str]) -> str:
        return await mail_store.keyword_letters(user, folder or "INBOX", keywords, io)

    local = LocalDelivery(store, maildir, events, filter=QuarantineFilter(settings.hostname, sieve, junk_folder),
                          keywords=keyword_letters)
    resolver = MXResolver(make_resolver(settings.relay.resolvers, reactor), clock=reactor.seconds)
    dkim = DKIMSigner(KeyStore(KeyDirectory(settings.storage.dkim)), settings.hostname)  # keys reread on change
    queue = build_queue(settings, reactor, local, io_pool, resolver, dkim, srs)
    local.outbox = queue  # redirects, vacation replies and rejection notices of Sieve scripts
    throttle = AuthThrottle(reactor, settings.limits.auth_failures, settings.limits.auth_lockout)
    rate = None
    if settings.limits.send_per_hour or settings.limits.send_per_hour_domain:
        try:
            rate = SendLimits(settings.storage.ratelimit, per_user=settings.limits.send_per_hour,
                              per_domain=settings.limits.send_per_hour_domain, clock=reactor.seconds, run=io)
        except (OSError, sqlite3.Error) as e:
            raise StartupError(f"storage.ratelimit: cannot open {settings.storage.ratelimit}: {e}") from None
    faults = None
    if settings.faults or (settings.http.faults_api and (settings.listen.http or settings.listen.https)):
        faults = FaultRules(reactor)
        for rule in settings.faults:
            faults.add(replace(rule))
    return Shared(
        clock=reactor, threads=reactor, io_pool=io_pool, auth_pool=auth_pool, tls=tls,
        store=store,
        authenticator=Authenticator(checker, throttle, reactor),
        limiter=ConnectionLimiter(settings.limits.connections_per_ip, settings.relay.networks),
        events=events, local=local, queue=queue, router=Router(local, queue=queue, signer=PooledSigner(dkim, io), srs=srs), resolver=resolver,
        maildrops=Maildrops(mail_store, io=io, events=events),
        mail_store=mail_store, srs=srs, io=io, replied=replied, watcher=watcher, faults=faults, rate=rate,
    )


class SequentialMultiService(MultiService):
    """Stops its children one at a time, last added first, each after the previous finished.

    Listeners stop accepting, then their sessions drain, and only then do the
    thread pools that in-flight deliveries run on stop.
    """

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            if child.running:  # a start that failed part way started only those before it
                await maybeDeferred(child.stopService)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        d = Deferred.fromCoroutine(self._stop_children())
        d.addErrback(lambda f: log.failure("error while stopping", f))
        return d


ListenerFactory = SMTPFactory | POP3Factory | IMAPFactory | managesieve.ManageSieveFactory


class Drain(Service):
    """Stops a listener's open sessions cleanly (421 after in-flight work) on shutdown."""

    def __init__(self, factory: ListenerFactory) -> None:
        self.factory = factory

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        return self.factory.shutdown()


def smtp_config(settings: Settings, *, implicit_tls: bool, submission: bool = False) -> SessionConfig:
    """The slice of the settings an ESMTP session needs (a submission listener's own recipient cap)."""
    limits = settings.limits
    return SessionConfig(
        hostname=settings.hostname,
        max_message_size=limits.message_size,
        max_recipients=limits.send_recipients if submission and limits.send_recipients else limits.recipients,
        max_received=settings.relay.max_received,
        allow_plaintext_auth=settings.tls.allow_plaintext_auth,
        starttls_available=not implicit_tls,
        postmaster_domain=settings.domains[0] if settings.domains else settings.hostname,
        # REQUIRETLS mail can leave only where certificates can be verified (MTA-STS or a smarthost)
        requiretls=settings.relay.mta_sts or settings.relay.smarthost is not None,
    )


def smtp_factory(shared: Shared, role: str, policy: SMTPPolicy, config: SessionConfig,
                 limits: LimitsSettings) -> SMTPFactory:
    limiter = shared.limiter

    def make_session(ip: str, tls: bool, tls_info: Callable[[], str | None],
                     rdns: Callable[[], str | None]) -> SMTPSession:
        return SMTPSession(config, policy, shared.router, shared.authenticator, client_ip=ip,
                           trusted_network=limiter.is_exempt(ip), tls=tls, tls_info=tls_info, rdns=rdns,
                           faults=shared.faults, role=role, queue=shared.queue if role == "smtp" else None)

    def reverse_lookup(ip: str) -> Deferred[str | None]:
        return Deferred.fromCoroutine(shared.resolver.reverse(ip))

    return SMTPFactory(
        role=role, make_session=make_session, clock=shared.clock, limiter=limiter,
        tls_options=shared.tls, implicit_tls=not config.starttls_available,
        max_message_size=limits.message_size, command_timeout=limits.command_timeout,
        data_timeout=limits.data_timeout, reverse_lookup=reverse_lookup,
    )


def _smtp(shared: Shared, settings: Settings) -> SMTPFactory:
    wanted = settings.checks
    checks = InboundChecks(settings.hostname,
                           DKIMVerifier(shared.resolver.lookup_txt, shared.io,
                                        max_signatures=wanted.dkim_max_signatures),
                           SPFChecker(shared.resolver, hostname=settings.hostname, clock=shared.clock.seconds),
                           DMARCChecker(shared.resolver.lookup_txt),
                           CheckPolicy(dmarc_reject=wanted.dmarc_reject, dmarc_quarantine=wanted.dmarc_quarantine,
                                       spf_reject=wanted.spf_fail == "reject",
                                       defer_temperror=wanted.temperror == "defer",
                                       arc_trusted=wanted.arc_trusted),
                           DNSLists(shared.resolver, wanted.dnsbl, wanted.dnswl) if wanted.dnsbl else None,
                           ARCVerifier(shared.resolver.lookup_txt, shared.io))
    return smtp_factory(shared, "smtp", InboundPolicy(shared.store, checks, shared.srs, shared.rate),
                        smtp_config(settings, implicit_tls=False), settings.limits)


def _submission(implicit_tls: bool) -> ListenerBuilder:
    def build(shared: Shared, settings: Settings) -> SMTPFactory:
        policy = SubmissionPolicy(shared.store, settings.hostname, shared.rate)
        return smtp_factory(shared, "submissions" if implicit_tls else "submission", policy,
                            smtp_config(settings, implicit_tls=implicit_tls, submission=True),
                            settings.limits)
    return build


def _pop3(implicit_tls: bool) -> ListenerBuilder:
    def build(shared: Shared, settings: Settings) -> POP3Factory:
        config = pop3.SessionConfig(hostname=settings.hostname,
                                    allow_plaintext_auth=settings.tls.allow_plaintext_auth,
                                    stls_available=not implicit_tls)
        return pop3.build_factory(config, shared.maildrops, authenticator=shared.authenticator,
                                  limiter=shared.limiter, tls_options=shared.tls, clock=shared.clock,
                                  pool=shared.io_pool)
    return build


def _imap(implicit_tls: bool) -> ListenerBuilder:
    def build(shared: Shared, settings: Settings) -> IMAPFactory:
        config = IMAPSessionConfig(
            hostname=settings.hostname, max_message_size=settings.limits.message_size,
            allow_plaintext_auth=settings.tls.allow_plaintext_auth, starttls_available=not implicit_tls)
        return imap_factory(config, store=shared.mail_store, authenticator=shared.authenticator,
                            events=shared.events, limiter=shared.limiter, tls_options=shared.tls,
                            clock=shared.clock, threads=shared.threads, pool=shared.io_pool)
    return build


def _managesieve(shared: Shared, settings: Settings) -> managesieve.ManageSieveFactory:
    config = managesieve.SessionConfig(hostname=settings.hostname,
                                       allow_plaintext_auth=settings.tls.allow_plaintext_auth,
                                       max_script_size=MAX_SCRIPT_SIZE, max_scripts=MAX_SCRIPTS)
    return managesieve.build_factory(config, shared.store, authenticator=shared.authenticator,
                                     limiter=shared.limiter, tls_options=shared.tls, clock=shared.clock,
                                     run=shared.io)


ListenerBuilder = Callable[[Shared, Settings], ListenerFactory]


def listener_builders() -> dict[str, ListenerBuilder]:
    """Name -> factory builder for every listener mailstack knows."""
    return {
        "smtp": _smtp,
        "submission": _submission(implicit_tls=False),
        "submissions": _submission(implicit_tls=True),
        "pop3": _pop3(implicit_tls=False),
        "pop3s": _pop3(implicit_tls=True),
        "imap": _imap(implicit_tls=False),
        "imaps": _imap(implicit_tls=True),
        "managesieve": _managesieve,
    }


IMPLICIT_TLS = frozenset({"submissions", "pop3s", "imaps"})


def build_service(
    settings: Settings,
    reactor: Any,
    builders: dict[str, ListenerBuilder] | None = None,
    tls: ServerTLS | None = None,
) -> SequentialMultiService:
    """The whole mail system as one service tree (nothing runs until it is started)."""
    shared = build_shared(settings, reactor, tls)
    top = SequentialMultiService()
    if settings.log.format == "json":
        JSONLog(settings.log.path).setServiceParent(top)  # first to start, last to stop
    Closing(shared.store.close, "account-store").setServiceParent(top)  # these stop last, after the pools
    if shared.replied is not None:
        Closing(shared.replied.close, "vacation-memory").setServiceParent(top)
    if shared.rate is not None:
        Closing(shared.rate.close, "send-limits").setServiceParent(top)
    ThreadPoolService(shared.io_pool).setServiceParent(top)
    WarmUp(reactor, shared.io_pool).setServiceParent(top)
    ThreadPoolService(shared.auth_pool).setServiceParent(top)
    if shared.watcher is not None:
        WatcherService(shared.watcher, reactor).setServiceParent(top)
    CertificateWatch(shared.tls, clock=reactor, threads=reactor, run=shared.io).setServiceParent(top)
    shared.queue.setServiceParent(top)  # stops after the listeners, before the pools
    reports = shared.queue.relay.tls_reports
    if reports is not None:
        TLSReportService(reports, reactor).setServiceParent(top)  # counts written before the queue stops
    listeners: dict[str, Listener] = {}
    for name, build in (builders if builders is not None else listener_builders()).items():
        address = getattr(settings.listen, name)
        if address is None:
            continue
        factory = build(shared, settings)
        Drain(factory).setServiceParent(top)
        listeners[name] = Listener(name, address, factory, reactor, shared.tls if name in IMPLICIT_TLS else None)
        listeners[name].setServiceParent(top)
        log.info("{name} on {address}", name=name, address=str(address))
    if settings.listen.http is not None or settings.listen.https is not None:
        _http(shared, settings, reactor, listeners).setServiceParent(top)
    return top


def _http(shared: Shared, settings: Settings, reactor: Any, listeners: dict[str, Listener]) -> MultiService:
    """The HTTP listener, and the HTTPS one (the same site, with the server's certificate): metrics
    and health, autoconfig and the MTA-STS policy, and whatever the settings turn on (the capture
    API and page, the fault rules)."""
    parts = MultiService()
    children: dict[bytes, Any] = {
        b"metrics": MetricsResource(),
        b"healthz": HealthResource({name: listener.listening for name, listener in listeners.items()},
                                   lambda: shared.io(shared.store.list_domains), reactor),
    }
    public = {b"healthz"}
    wellknown.add_to(children, public, ClientSettings.from_settings(settings),
                     shared.store.is_local_domain,
                     settings.domains[0] if settings.domains else "")
    closers = []
    if settings.http.faults_api and shared.faults is not None:
        children[b"api"] = api_root = JSONResource()
        api_root.putChild(b"v1", v1 := JSONResource())
        v1.putChild(b"faults", FaultsResource(shared.faults))
    if settings.relay.capture:
        box = CaptureBox(shared.mail_store, settings.relay.capture_mailbox, shared.io, shared.events)
        api = CaptureAPI(box, shared.io, reactor)
        api.add_to(children)
        closers.append(Closing(api.close, "capture-api"))  # event streams end before the port closes
    site = build_site(children, settings.http.token, frozenset(public))
    if settings.listen.http is not None:
        Listener("http", settings.listen.http, site, reactor).setServiceParent(parts)
        log.info("http on {address}", address=str(settings.listen.http))
    if settings.listen.https is not None:
        Listener("https", settings.listen.https, site, reactor, shared.tls).setServiceParent(parts)
        log.info("https on {address}", address=str(settings.listen.https))
    for closer in closers:
        closer.setServiceParent(parts)
    parts.setName("web")
    return parts


__all__ = ["IService", "Shared", "build_service", "build_shared"]
