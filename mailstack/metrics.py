"""Prometheus metrics, served as ``/metrics`` on the HTTP listener (``[listen] http``).

The metrics are the process's own (a :class:`CollectorRegistry` of this
module, not prometheus-client's global one): the code that sees an event
counts it here, and :func:`exposition` writes them all in the text format.
Names follow Prometheus' conventions: ``mailstack_`` first, ``_total`` on
counters, seconds as the unit of time. Labels take few values: a listener's
role, an outcome, and for refusals the reply's enhanced status code (RFC 3463),
never an address or a free text.

The queue's size and the age of its oldest message are read from the running
queues when scraped (:func:`watch_queue`); a process normally runs one, the
embedded server of a test suite may run several and they are added up.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest

disable_created_metrics()  # no `_created` series beside every counter: half the samples, nothing lost
REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES = Counter("mailstack_messages_received", "Messages at the end of DATA or BDAT LAST, by listener role "
                   "and result (accepted, rejected, deferred, dropped); reason: the refusal's enhanced status code",
                   ["role", "result", "reason"], registry=REGISTRY)
RECIPIENTS_REFUSED = Counter("mailstack_recipients_refused", "RCPT TO commands refused, by listener role and "
                             "enhanced status code (5.7.1: relaying denied, 5.1.1: no such user...)",
                             ["role", "reason"], registry=REGISTRY)
DELIVERIES = Counter("mailstack_deliveries", "Outcomes per recipient, at the end of DATA (local mailboxes) and "
                     "from the queue: delivered (filed in a local mailbox), relayed (accepted by the next server), "
                     "captured, deferred (tried again later), failed (bounced)", ["outcome"], registry=REGISTRY)
BOUNCES = Counter("mailstack_bounces", "Delivery status notifications sent for failed recipients", registry=REGISTRY)
DELIVERY_SECONDS = Histogram("mailstack_delivery_seconds", "From arrival to delivery of a queued message's "
                             "recipient, by route (local, relayed, captured)", ["route"], registry=REGISTRY,
                             buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 900, 3600, 4 * 3600, 86400,
                                      5 * 86400))
CONNECTIONS = Counter("mailstack_connections", "Connections accepted, by listener role", ["role"],
                      registry=REGISTRY)
CONNECTIONS_REFUSED = Counter("mailstack_connections_refused", "Connections refused at once (connection limits), "
                              "by listener role", ["role"], registry=REGISTRY)
CONNECTIONS_OPEN = Gauge("mailstack_connections_open", "Sessions open now, by listener role", ["role"],
                         registry=REGISTRY)
AUTH_FAILURES = Counter("mailstack_auth_failures", "Failed logins (no such user or a wrong password), by protocol",
                        ["protocol"], registry=REGISTRY)
AUTH_LOCKOUTS = Counter("mailstack_auth_lockouts", "Client addresses locked out after too many failed logins, "
                        "by the protocol of the last failure", ["protocol"], registry=REGISTRY)
TLS_HANDSHAKES = Counter("mailstack_tls_handshakes", "TLS handshakes as a server, by listener role and result "
                         "(ok, failed)", ["role", "result"], registry=REGISTRY)
FSYNC_SECONDS = Histogram("mailstack_fsync_seconds", "fsync of a message file, by store (maildir, queue)",
                          ["store"], registry=REGISTRY,
                          buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))

_queues: list[Callable[[], tuple[int, float | None]]] = []


class _QueueCollector:
    """``mailstack_queue_messages`` and ``mailstack_queue_oldest_age_seconds``, read at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size, oldest = 0, None
        for source in list(_queues):
            n, first = source()
            size += n
            if first is not None:
                oldest = first if oldest is None else min(oldest, first)
        yield GaugeMetricFamily("mailstack_queue_messages", "Messages in the queue (waiting or being tried)",
                                value=size)
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        yield GaugeMetricFamily("mailstack_queue_oldest_age_seconds",
                                "Age of the oldest message in the queue (0 when it is empty)", value=age)

    def describe(self) -> list[Any]:
        return []


REGISTRY.register(_QueueCollector())  # type: ignore[arg-type]


def watch_queue(source: Callable[[], tuple[int, float | None]]) -> Callable[[], None]:
    """Report a running queue's (size, arrival time of its oldest message); returns the undo."""
    _queues.append(source)
    return lambda: _queues.remove(source) if source in _queues else None


def message_received(role: str, code: int | None, enhanced: str | None) -> None:
    """Count the end of one message's transfer by the reply it got (None: the connection was dropped)."""
    if code is None:
        MESSAGES.labels(role, "dropped", "").inc()
    elif code < 400:
        MESSAGES.labels(role, "accepted", "").inc()
    else:
        MESSAGES.labels(role, "deferred" if code < 500 else "rejected", enhanced or str(code)).inc()


def recipient_refused(role: str, code: int, enhanced: str | None) -> None:
    RECIPIENTS_REFUSED.labels(role, enhanced or str(code)).inc()


@contextlib.contextmanager
def fsync_timer(store: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        FSYNC_SECONDS.labels(store).observe(time.perf_counter() - started)


# the text format every Prometheus version reads (prometheus-client's own name for it is newer than 0.20)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE
