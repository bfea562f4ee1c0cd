"""The queue runner: delivers spooled messages, retries, expires and bounces.

One attempt at a message: reload it from the spool (a deleted message is
dropped), then deliver its pending recipients grouped by domain, local
domains through Maildir and the others by MX (or the smarthost), each domain
within the connection limits. Every outcome is recorded in the spool (fsynced)
as soon as its domain is done, before anything else happens, so a recipient
that got a 250 is never sent the message again. Failed recipients are
reported in one bounce to the sender (never for a null sender), queued like
any message; then the message is removed once every recipient is final.
"""

from __future__ import annotations

import errno
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredSemaphore
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailstack import metrics
from mailstack.delivery import LocalDelivery
from mailstack.envelope import new_queue_id
from mailstack.interfaces import Outbound
from mailstack.maildir import DeliveryError
from mailstack.queue.dsn import build_bounce, build_report
from mailstack.queue.spool import (
    BOUNCED,
    DELIVERED,
    FAILED,
    FINAL,
    PENDING,
    QueuedMessage,
    RecipientState,
    Spool,
)
from mailstack.smtp.message import count_received, header_block
from mailstack.srs import SRS

if TYPE_CHECKING:
    from mailstack.capture import CaptureRelay
    from mailstack.queue.relay import Relay

log = Logger()

RETRY_AFTER_ERROR = 60.0  # seconds before retrying a message whose attempt failed unexpectedly
ETRN_INTERVAL = 60.0  # one spool read per ETRN node and minute, however often it is asked


@dataclass(frozen=True, slots=True)
class QueueSettings:
    hostname: str
    retry: tuple[float, ...]
    max_age: float
    max_received: int
    connections: int
    connections_per_domain: int
    delay_warning: float | None = None
    control_interval: float = 1.0
    stop_grace: float = 10.0


def retry_delay(schedule: Sequence[float], attempts: int) -> float:
    """Wait after the ``attempts``-th failed attempt: the schedule, then its last interval forever."""
    if not schedule:
        return 3600.0
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


class QueueRunner(Service):
    def __init__(
        self,
        spool: Spool,
        settings: QueueSettings,
        *,
        reactor: Any,
        clock: Any,
        pool: Any,
        local: LocalDelivery,
        relay: Relay,
        now: Callable[[], float] | None = None,
        signer: Callable[[bytes, str], bytes] | None = None,
        srs: SRS | None = None,
        capture: CaptureRelay | None = None,
    ) -> None:
        self.spool = spool
        self.settings = settings
        self.reactor = reactor
        self.clock = clock
        self.pool = pool
        self.local = local
        self.relay = relay
        self.signer = signer  # DKIM for the notices the queue writes (blocking: runs on the pool)
        self.srs = srs  # a forwarded message's rewritten sender: its notices go to the original one
        self.capture = capture  # capture mode: every remote recipient goes into one local mailbox instead
        self.now = now or clock.seconds
        self.timers: dict[str, Any] = {}
        self.active: dict[str, Deferred[None]] = {}
        self.connections = DeferredSemaphore(settings.connections)
        self.per_domain: defaultdict[str, DeferredSemaphore] = defaultdict(
            lambda: DeferredSemaphore(settings.connections_per_domain))
        self._control: IDelayedCall | None = None  # the next look at the control requests
        # queue id -> arrival time, of the messages loaded (at the start or an attempt): the metrics' oldest
        self.arrived: dict[str, float] = {}
        self._etrn: dict[tuple[str, bool], tuple[float, int]] = {}  # node -> (when asked, messages started)
        self._unwatch: Callable[[], None] | None = None
        self.setName("queue")

    # -- blocking work off the reactor thread ------------------------------------

    def _thread(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self.pool, fn, *args)

    # -- service -------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._unwatch = metrics.watch_queue(self.size)
        d = Deferred.fromCoroutine(self._resume())
        d.addErrback(lambda f: log.failure("queue start-up failed", f))
        self._next_control()

    async def _resume(self) -> None:
        await self._thread(self.spool.ensure)
        cleaned = await self._thread(self.spool.clean_tmp)
        if cleaned:
            log.info("removed {n} uncommitted spool file(s)", n=cleaned)
        messages = await self._thread(self.spool.load_all)
        for msg in messages:
            self.arrived[msg.queue_id] = msg.created
            self._schedule(msg.queue_id, msg.next_try())
        if messages:
            log.info("queue resumed with {n} message(s)", n=len(messages))

    def size(self) -> tuple[int, float | None]:
        """How many messages are queued (waiting or being tried), and when the oldest arrived."""
        ids = self.timers.keys() | self.active.keys()
        times = [self.arrived[i] for i in ids if i in self.arrived]
        return len(ids), min(times) if times else None

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._control is not None and self._control.active():
            self._control.cancel()
        self._control = None
        for timer in self.timers.values():
            if timer.active():
                timer.cancel()
        self.timers.clear()
        # Attempts in flight finish (their outcomes are recorded) before the pools stop; one
        # still talking to a slow remote after stop_grace is cancelled and simply retried after
        # the restart (its recipients were not recorded as delivered).
        in_flight = list(self.active.values())
        close = getattr(self.relay, "close", None)
        if not in_flight:
            if close is not None:
                close()
            return DeferredList([])

        def cancel_stragglers() -> None:
            for d in list(self.active.values()):
                d.cancel()

        straggler_timer = self.clock.callLater(self.settings.stop_grace, cancel_stragglers)
        done = DeferredList(in_flight, consumeErrors=True)

        def stopped(result: object) -> object:
            if straggler_timer.active():
                straggler_timer.cancel()
            if close is not None:
                close()  # the kept sessions say QUIT
            return result

        return done.addBoth(stopped)

    # -- scheduling ------------------------------------------------------------------

    def _schedule(self, queue_id: str, when: float) -> None:
        if not self.running:
            return
        old = self.timers.pop(queue_id, None)
        if old is not None and old.active():
            old.cancel()
        delay = max(0.0, when - self.now())
        self.timers[queue_id] = self.clock.callLater(delay, self._start_attempt, queue_id)

    def flush(self, queue_id: str = "") -> None:
        """Try now: one message, or every message when ``queue_id`` is empty."""
        targets = [queue_id] if queue_id else list(self.timers)
        for qid in targets:
            self._schedule(qid, 0)

    def _start_attempt(self, queue_id: str) -> None:
        self.timers.pop(queue_id, None)
        if queue_id in self.active:
            return
        d = Deferred.fromCoroutine(self._attempt(queue_id))

        def failed(failure: Failure) -> None:
            if failure.check(CancelledError):
                log.info("{queue_id}: attempt cancelled by shutdown; retried after restart", queue_id=queue_id)
                return
            log.failure("delivery attempt for {queue_id} failed", failure, queue_id=queue_id)
            self._schedule(queue_id, self.now() + RETRY_AFTER_ERROR)  # never leave a message without a timer

        d.addErrback(failed)
        self.active[queue_id] = d

        def finished(_: object) -> None:
            self.active.pop(queue_id, None)

        d.addBoth(finished)

    async def start_domain(self, domain: str, subdomains: bool) -> int:
        """ETRN: every message with a recipient pending in *domain* (or below it) is tried now.

        The spool is read once per node and ``ETRN_INTERVAL``: a repeat within it gets the first
        answer and starts nothing more (-1 while the first read still runs: started, count unknown)."""
        if not self.running:
            raise OSError(errno.ESHUTDOWN, "the queue is stopping")
        now = self.now()
        for old in [k for k, (at, _) in self._etrn.items() if now - at >= ETRN_INTERVAL]:
            del self._etrn[old]
        key = (domain, subdomains)
        if key in self._etrn:
            return self._etrn[key][1]
        self._etrn[key] = (now, -1)
        try:
            started = await self._start_domain(domain, subdomains)
        except BaseException:
            self._etrn.pop(key, None)
            raise
        self._etrn[key] = (now, started)
        return started

    async def _start_domain(self, domain: str, subdomains: bool) -> int:
        def wanted(address: str) -> bool:
            found = address.rpartition("@")[2].lower()
            return found == domain or (subdomains and found.endswith("." + domain))

        messages = await self._thread(self.spool.load_all)
        started = 0
        for msg in messages:
            if any(wanted(r.address) for r in msg.pending()):
                self._schedule(msg.queue_id, 0)
                started += 1
        log.info("ETRN for {domain}: {n} message(s) tried now", domain=("@" if subdomains else "") + domain,
                 n=started)
        return started

    def _next_control(self) -> None:
        """Look at the control requests (``mailstack queue flush|delete``) again in a while: on
        this runner's clock (task.LoopingCall would install the global reactor)."""
        def look() -> None:
            self._control = None
            d = self._poll_control()
            d.addErrback(lambda f: log.failure("queue control requests could not be read", f))
            d.addBoth(lambda _: self._next_control() if self.running else None)

        self._control = self.clock.callLater(self.settings.control_interval, look)

    def _poll_control(self) -> Deferred[None]:
        d = self._thread(self.spool.take_requests)

        def apply(requests: list[tuple[str, str]]) -> None:
            for action, queue_id in requests:
                if action == "flush":
                    log.info("flush requested for {what}", what=queue_id or "all messages")
                    if queue_id and queue_id not in self.timers and queue_id not in self.active:
                        self._schedule(queue_id, 0)  # not known yet (queued by another process)
                    else:
                        self.flush(queue_id)
                elif action == "delete" and queue_id:
                    self.arrived.pop(queue_id, None)
                    timer = self.timers.pop(queue_id, None)
                    if timer is not None and timer.active():
                        timer.cancel()

        d.addCallback(apply)
        return d

    # -- accepting new mail (called by the router) --------------------------------------

    async def prepare(self, msg: QueuedMessage, message: bytes) -> None:
        await self._thread(self.spool.prepare, msg, message)

    async def commit(self, msg: QueuedMessage) -> None:
        await self._thread(self.spool.commit, msg.queue_id)
        log.info("{queue_id} queued for {recipients}", queue_id=msg.queue_id,
                 recipients=", ".join(msg.recipients))
        self._schedule(msg.queue_id, 0)

    async def abort(self, msg: QueuedMessage) -> None:
        await self._thread(self.spool.abort, msg.queue_id)

    async def prepare_outbound(self, outbound: Outbound, cause: str) -> QueuedMessage:
        """Spool a message a filter sends for the message *cause* (a queue id), not yet visible:
        :meth:`commit` or :meth:`abort` it (the ``Outbox`` of local delivery). A notice is
        DKIM-signed and goes to the original of an SRS address."""
        recipients = {r: RecipientState(r) for r in outbound.recipients}
        if outbound.notice:  # to the original of an SRS address, or a local sender's own mailboxes
            recipients = {a: s for r in outbound.recipients for a, s in self._report_recipients(r).items()}
        header = header_block(outbound.message)
        msg = QueuedMessage(new_queue_id(), outbound.sender, self.now(), recipients,
                            smtputf8=not outbound.sender.isascii() or not all(r.isascii() for r in recipients)
                            or not header.isascii(),
                            body_8bit=not outbound.message.isascii(), is_bounce=outbound.notice)
        await self._thread(self._prepare_notice if outbound.notice else self.spool.prepare, msg, outbound.message)
        log.info("{queue_id} {kind} prepared as {new_id} for {recipients}", queue_id=cause, kind=outbound.kind,
                 new_id=msg.queue_id, recipients=", ".join(recipients))
        return msg

    def _prepare_notice(self, notice: QueuedMessage, data: bytes) -> None:
        if self.signer is not None:
            data = self.signer(data, notice.queue_id)
        self.spool.prepare(notice, data)

    # -- one attempt -------------------------------------------------------------------

    async def _attempt(self, queue_id: str) -> None:
        msg = await self._thread(self.spool.load, queue_id)
        if msg is None:
            self.arrived.pop(queue_id, None)
            log.info("{queue_id} is no longer in the queue", queue_id=queue_id)
            return
        self.arrived[queue_id] = msg.created
        body = b""
        if msg.pending() or msg.failed() or msg.unreported():  # read once; notices quote its headers
            body = await self._thread(self.spool.body, queue_id)
        if msg.pending():
            await self._deliver_pending(msg, body)
        if msg.failed():
            await self._bounce(msg, body)
        if msg.unreported():
            await self._report_success(msg, body)
        if msg.pending():
            await self._maybe_warn(msg, body)
        if msg.done():
            if not msg.extra.get("removed"):
                await self._thread(self.spool.remove, queue_id)
            self.arrived.pop(queue_id, None)
            log.info("{queue_id} removed from the queue: every recipient is done", queue_id=queue_id)
        elif msg.pending():
            self._schedule(queue_id, msg.next_try())
        elif msg.unreported():  # the success report could not be queued: again later
            self._schedule(queue_id, self.now() + retry_delay(self.settings.retry, msg.attempts()))

    async def _deliver_pending(self, msg: QueuedMessage, body: bytes) -> None:
        pending = msg.pending()
        now = self.now()
        if now - msg.created > self.settings.max_age:
            await self._finish(msg, [_fail(r, "4.4.7", r.last_error or "delivery time expired",  # RFC 3463 X.4.7
                                           r.remote_mta, r.diagnostic) for r in pending], "")
            return
        if count_received(header_block(body)) > self.settings.max_received:
            await self._finish(msg, [_fail(r, "5.4.6", "too many Received: headers, mail loop")
                                     for r in pending], "")
            return
        by_domain: defaultdict[str, list[RecipientState]] = defaultdict(list)
        for r in pending:
            by_domain[r.address.rpartition("@")[2].lower()].append(r)
        local = [r for d, rs in by_domain.items() if self.local.is_local_domain(d) for r in rs]
        jobs = []
        if local:
            jobs.append(Deferred.fromCoroutine(self._deliver_local(msg, local, body)))
        remote = {d: rs for d, rs in by_domain.items() if not self.local.is_local_domain(d)}
        if self.capture is not None:  # one copy for all the captured ones, whatever their domains
            captured = [r for d, rs in remote.items() if self.capture.captures(d) for r in rs]
            if captured:
                jobs.append(Deferred.fromCoroutine(self._capture(msg, captured, body)))
            remote = {d: rs for d, rs in remote.items() if not self.capture.captures(d)}
        for domain, rcpts in remote.items():
            jobs.append(Deferred.fromCoroutine(self._deliver_remote(msg, domain, rcpts, body)))
        results = await DeferredList(jobs, consumeErrors=True)
        for ok, result in results:
            if not ok:  # e.g. the outcome could not be recorded (a full disk): the whole attempt failed,
                cast(Failure, result).raiseException()  # and is retried after RETRY_AFTER_ERROR, not at once

    async def _finish(self, msg: QueuedMessage, states: list[RecipientState], route: str) -> None:
        """Record outcomes durably (fsynced) before anything else, then update the in-memory view.
        *route* (``local``, ``relayed``, ``captured``) is where the delivered ones went."""
        attempts_now = self.now()
        for s in states:
            if s.status == PENDING:
                s.next_try = attempts_now + retry_delay(self.settings.retry, s.attempts)
            previous = msg.recipients.get(s.address)
            s.warned = s.warned or (previous is not None and previous.warned)
            if s.status == DELIVERED and route != "relayed" and msg.wants(s.address, "SUCCESS"):
                s.notice = "delivered"  # RFC 3461 §6.2.4 (the relay says "relayed" itself)
            if previous is not None and previous.delivered_to and s.status != DELIVERED:
                s.delivered_to = sorted(set(s.delivered_to) | set(previous.delivered_to))
        given = {s.address for s in states}
        if (all(s.status == DELIVERED and not s.notice for s in states)
                and all(r.status in FINAL and not r.notice for a, r in msg.recipients.items() if a not in given)):
            # The last outcomes finish the message: removing it (durably) is their record, one
            # state write and its fsyncs fewer. Nothing is left that could be sent again.
            await self._thread(partial(self.spool.remove, msg.queue_id, strict=True))
            msg.extra["removed"] = True
        else:
            await self._thread(self.spool.record, msg.queue_id, states)
        for s in states:
            msg.recipients[s.address] = s
            log.info("{queue_id} to <{rcpt}>: {status} {code} {error}", queue_id=msg.queue_id, rcpt=s.address,
                     status=s.status if s.status != PENDING else "deferred", code=s.status_code,
                     error=s.diagnostic or s.last_error)
            if s.status == DELIVERED:
                metrics.DELIVERIES.labels("delivered" if route == "local" else route).inc()
                metrics.DELIVERY_SECONDS.labels(route).observe(max(0.0, attempts_now - msg.created))
            else:
                metrics.DELIVERIES.labels("deferred" if s.status == PENDING else "failed").inc()

    async def _deliver_local(self, msg: QueuedMessage, rcpts: list[RecipientState], body: bytes) -> None:
        """Local recipients (a bounce to a local sender, a full mailbox's retry) through local delivery.

        Each recipient's outcome is its own: one whose mailbox is still full is
        deferred while the others are delivered.
        """
        mailboxes: dict[str, str] = {}  # mailbox -> queued address
        owners: dict[str, tuple[str, ...]] = {}  # queued address -> its mailboxes still to do
        unknown, finished = [], []
        for r in rcpts:
            route = self.local.route_queued(r.address)
            if route.remote:
                log.warn("{queue_id} <{rcpt}> now forwards to {remote}, which is not queued from here",
                         queue_id=msg.queue_id, rcpt=r.address, remote=", ".join(route.remote))
            if not route.local:
                unknown.append(r)
                continue
            owners[r.address] = tuple(m for m in route.local if m not in r.delivered_to)
            if not owners[r.address]:  # every mailbox got it at an earlier try
                finished.append(r)
            for mailbox in owners[r.address]:
                mailboxes.setdefault(mailbox, r.address)
        known = [r for r in rcpts if r not in unknown and r not in finished]
        outcomes = [_fail(r, "5.1.1", "no such local recipient") for r in unknown]
        outcomes += [_done(r, self.settings.hostname, "") for r in finished]
        if outcomes:
            await self._finish(msg, outcomes, "local")
        if not known:
            return
        try:
            result = await self.local.deliver(msg.queue_id, msg.sender, mailboxes, body, can_hold=True)
        except DeliveryError as e:
            make = _defer if e.temporary else _fail
            await self._finish(msg, [make(r, e.status, e.message) for r in known], "local")
            return
        states = []
        for r in known:
            errors = [result.held[m] for m in owners[r.address] if m in result.held]
            if not errors:
                states.append(_done(r, self.settings.hostname, ""))
                continue
            state = (_defer if errors[0].temporary else _fail)(r, errors[0].status, errors[0].message)
            # The mailboxes that have it now are remembered (merged with earlier ones in _finish),
            # so the retry gives it only to the others: every mailbox gets it exactly once.
            state.delivered_to = sorted(m for m in owners[r.address] if m in result.delivered or m in result.discarded)
            states.append(state)
        await self._finish(msg, states, "local")

    async def _deliver_remote(self, msg: QueuedMessage, domain: str, rcpts: list[RecipientState],
                              body: bytes) -> None:
        async def attempt() -> list[RecipientState]:
            return await self.relay.deliver(domain, msg, [r.address for r in rcpts], body)

        limited = self.per_domain[domain].run(lambda: self.connections.run(
            lambda: Deferred.fromCoroutine(attempt())))
        outcomes = await limited
        by_address = {o.address: o for o in outcomes}
        states = []
        for r in rcpts:
            o = by_address.get(r.address)
            if o is None:
                states.append(_defer(r, "4.3.0", "no result"))
            else:
                o.attempts = r.attempts + 1
                states.append(o)
        await self._finish(msg, states, "relayed")

    async def _capture(self, msg: QueuedMessage, rcpts: list[RecipientState], body: bytes) -> None:
        assert self.capture is not None
        error = await self.capture.deliver(msg, [r.address for r in rcpts], body)
        if error is None:
            await self._finish(msg, [_done(r, "capture", f"captured in <{self.capture.mailbox}>") for r in rcpts],
                               "captured")
        else:
            make = _defer if error.temporary else _fail
            await self._finish(msg, [make(r, error.status, error.message, "capture") for r in rcpts], "captured")

    def _add_notice(self, notice: QueuedMessage, data: bytes) -> None:
        """Spool a report written here, signed like users' mail (pool thread). One that returns
        8-bit content (the RFC 6532/6533 types are body parts) goes with BODY=8BITMIME."""
        notice.body_8bit = not data.isascii()
        if self.signer is not None:
            data = self.signer(data, notice.queue_id)
        self.spool.add(notice, data)

    def _report_recipients(self, sender: str) -> dict[str, RecipientState]:
        """Where a bounce or warning goes: a local sender's alias is expanded here, so a
        forward to another domain is relayed like any remote recipient."""
        targets: tuple[str, ...] = (sender,)
        original = self.srs.reverse(sender) if self.srs is not None else None
        if original is not None:
            return {original: RecipientState(original)}
        if self.local.is_local_domain(sender.rpartition("@")[2]):
            route = self.local.route(sender)
            targets = (*route.local, *route.remote) or (sender,)
        return {t: RecipientState(t) for t in targets}

    async def _maybe_warn(self, msg: QueuedMessage, body: bytes) -> None:
        """Once, after ``delay_warning``: tell the sender delivery is still being retried (for the
        recipients whose NOTIFY, if any, asks for DELAY)."""
        after = self.settings.delay_warning
        pending = [r for r in msg.pending() if msg.wants(r.address, "DELAY")]
        if (after is None or not msg.sender or msg.is_bounce or not pending or self.now() - msg.created < after
                or any(r.warned for r in msg.recipients.values())):
            return
        dsn = build_bounce(hostname=self.settings.hostname, queue_id=msg.queue_id, sender=msg.sender,
                           arrival=msg.created, failed=pending, original=body, now=self.now(),
                           retry_until=msg.created + self.settings.max_age, **_dsn_fields(msg))
        warning = QueuedMessage(new_queue_id(), "", self.now(), self._report_recipients(msg.sender),
                                smtputf8=not msg.sender.isascii(), is_bounce=True)
        await self._thread(self._add_notice, warning, dsn)
        self._schedule(warning.queue_id, 0)
        marked = [replace(r, warned=True) for r in msg.pending()]
        await self._thread(self.spool.record, msg.queue_id, marked)
        for s in marked:
            msg.recipients[s.address] = s
        log.info("{queue_id} delay warning {warning_id} to <{sender}>", queue_id=msg.queue_id,
                 warning_id=warning.queue_id, sender=msg.sender)

    async def notify(self, *, queue_id: str, sender: str, arrival: float,
                     entries: Sequence[tuple[RecipientState, str]], body: bytes, envid: str | None = None,
                     orcpt: dict[str, tuple[str, str]] | None = None, quote: bool = True) -> str:
        """Queue a success report (RFC 3461: ``delivered``, ``relayed``, ``expanded``) to *sender*
        about the message *queue_id*; returns the report's queue id. Raises SpoolError."""
        report = build_report(hostname=self.settings.hostname, queue_id=queue_id, sender=sender, arrival=arrival,
                              entries=entries, original=body, now=self.now(), envid=envid, orcpt=orcpt,
                              quote=quote)
        notice = QueuedMessage(new_queue_id(), "", self.now(), self._report_recipients(sender),
                               smtputf8=not sender.isascii(), is_bounce=True)
        await self._thread(self._add_notice, notice, report)
        self._schedule(notice.queue_id, 0)
        log.info("{queue_id} delivery report {report_id} to <{sender}> for {recipients}", queue_id=queue_id,
                 report_id=notice.queue_id, sender=sender,
                 recipients=", ".join(f"<{r.address}> {a}" for r, a in entries))
        return notice.queue_id

    async def _report_success(self, msg: QueuedMessage, body: bytes) -> None:
        """The successes the sender asked to hear of, in one report; then they are marked told."""
        told = msg.unreported()
        if msg.sender and not msg.is_bounce:
            fields = _dsn_fields(msg)
            try:
                await self.notify(queue_id=msg.queue_id, sender=msg.sender, arrival=msg.created,
                                  entries=[(r, r.notice) for r in told], body=body, envid=fields["envid"],
                                  orcpt=fields["orcpt"], quote=fields["quote"])
            except Exception as e:  # a full spool, say: tried again later, given up after max_age
                if self.now() - msg.created <= self.settings.max_age:
                    log.error("{queue_id} delivery report not queued, tried again later: {error}",
                              queue_id=msg.queue_id, error=str(e))
                    return
                log.error("{queue_id} delivery report given up after relay.max_age: {error}",
                          queue_id=msg.queue_id, error=str(e))
        done = [replace(r, notice="") for r in told]
        await self._thread(self.spool.record, msg.queue_id, done)
        for s in done:
            msg.recipients[s.address] = s

    async def _bounce(self, msg: QueuedMessage, body: bytes) -> None:
        failed = [r for r in msg.failed() if msg.wants(r.address, "FAILURE")]
        unwanted = [r for r in msg.failed() if r not in failed]
        if unwanted:
            log.info("{queue_id} failed for {recipients}; no bounce, as the sender asked (NOTIFY)",
                     queue_id=msg.queue_id, recipients=", ".join(f"<{r.address}>" for r in unwanted))
        if failed and msg.sender and not msg.is_bounce:
            dsn = build_bounce(hostname=self.settings.hostname, queue_id=msg.queue_id, sender=msg.sender,
                               arrival=msg.created, failed=failed, original=body, now=self.now(),
                               **_dsn_fields(msg))
            bounce = QueuedMessage(new_queue_id(), "", self.now(), self._report_recipients(msg.sender),
                                   smtputf8=not msg.sender.isascii(), is_bounce=True)
            await self._thread(self._add_notice, bounce, dsn)
            metrics.BOUNCES.inc()
            log.info("{queue_id} bounce {bounce_id} to <{sender}> for {n} recipient(s)", queue_id=msg.queue_id,
                     bounce_id=bounce.queue_id, sender=msg.sender, n=len(failed))
            self._schedule(bounce.queue_id, 0)
        elif failed:
            log.warn("{queue_id} failed for {n} recipient(s); no bounce for a null sender",
                     queue_id=msg.queue_id, n=len(failed))
        done = [RecipientState(r.address, BOUNCED, r.attempts, 0.0, r.last_error, r.status_code, r.remote_mta,
                               r.diagnostic) for r in msg.failed()]
        await self._thread(self.spool.record, msg.queue_id, done)
        for s in done:
            msg.recipients[s.address] = s


def _dsn_fields(msg: QueuedMessage) -> dict[str, Any]:
    """What a report about *msg* returns of the sender's DSN request: ENVID, RET, the ORCPTs."""
    # RFC 8689 §5: a report on a REQUIRETLS message may travel without TLS: never with its body
    return {"envid": msg.envid, "ret": None if msg.requiretls else msg.ret, "quote": not msg.requiretls,
            "orcpt": {a: d.orcpt for a, d in msg.dsn.items() if d.orcpt is not None}}


def _done(r: RecipientState, remote: str, diagnostic: str) -> RecipientState:
    return RecipientState(r.address, DELIVERED, r.attempts + 1, 0.0, "", "2.0.0", remote, diagnostic)


def _fail(r: RecipientState, status: str, error: str, remote: str = "", diagnostic: str = "") -> RecipientState:
    return RecipientState(r.address, FAILED, r.attempts + 1, 0.0, error, status, remote, diagnostic)


def _defer(r: RecipientState, status: str, error: str, remote: str = "", diagnostic: str = "") -> RecipientState:
    return RecipientState(r.address, PENDING, r.attempts + 1, 0.0, error, status, remote, diagnostic)
