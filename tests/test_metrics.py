"""The metrics module and /healthz without sockets."""

from __future__ import annotations

import json
import time

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from mailstack import metrics
from mailstack.web.ops import STORE_TIMEOUT, HealthResource


def _gauges() -> dict[str, float]:
    text = metrics.exposition()[0].decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name.startswith("mailstack_queue_")}


def test_the_queue_gauges_add_up_the_running_queues_and_forget_a_stopped_one() -> None:
    now = time.time()
    before = _gauges()["mailstack_queue_messages"]  # queues other tests left running
    undo_a = metrics.watch_queue(lambda: (3, now - 100000))
    undo_b = metrics.watch_queue(lambda: (2, None))
    try:
        gauges = _gauges()
        assert gauges["mailstack_queue_messages"] == before + 5
        assert gauges["mailstack_queue_oldest_age_seconds"] >= 100000
    finally:
        undo_a()
    assert _gauges()["mailstack_queue_messages"] == before + 2
    undo_b()
    assert _gauges()["mailstack_queue_messages"] == before


def test_a_refusal_is_counted_by_its_enhanced_code_and_a_drop_without_one() -> None:
    def count(result: str, reason: str) -> float:
        return metrics.MESSAGES.labels("smtp", result, reason)._value.get()

    before = count("rejected", "5.3.4"), count("deferred", "4.3.0"), count("dropped", "")
    metrics.message_received("smtp", 552, "5.3.4")
    metrics.message_received("smtp", 451, "4.3.0")
    metrics.message_received("smtp", None, None)
    assert (count("rejected", "5.3.4"), count("deferred", "4.3.0"), count("dropped", "")) == tuple(
        n + 1 for n in before)


def _health(listeners: dict, store) -> tuple[int, dict]:
    clock = Clock()
    request = DummyRequest([b""])
    HealthResource(listeners, store, clock).render(request)
    clock.advance(STORE_TIMEOUT)
    assert request.finished
    return request.responseCode or 200, json.loads(b"".join(request.written))


def test_healthz_is_ok_when_every_listener_listens_and_the_store_answers() -> None:
    assert _health({"smtp": lambda: True, "imaps": lambda: True}, lambda: succeed(["example.test"])) == (
        200, {"status": "ok", "listening": ["imaps", "smtp"]})


def test_healthz_is_503_naming_a_listener_down_and_a_store_that_fails_or_hangs() -> None:
    from twisted.internet.defer import Deferred

    code, body = _health({"smtp": lambda: True, "imaps": lambda: False},
                         lambda: fail(OSError("database is locked")))
    assert code == 503 and body["status"] == "failing" and body["listening"] == ["smtp"]
    assert body["problems"] == ["imaps is not listening", "the account store failed (see the server's log)"]
    code, body = _health({"smtp": lambda: True}, lambda: Deferred())  # never answers
    assert code == 503 and body["problems"] == ["the account store did not answer within 5 s"]


def test_twenty_parallel_wrong_logins_past_the_limit_are_one_lockout() -> None:
    from twisted.internet.defer import Deferred

    from mailstack.auth import Authenticator
    from mailstack.throttle import AuthThrottle

    from .test_auth_timing import SlowChecker

    clock = Clock()
    auth = Authenticator(SlowChecker(clock, {b"eve@example.test": 0.05}), AuthThrottle(clock, 5, 900), clock)
    failures, lockouts = metrics.AUTH_FAILURES.labels("imap"), metrics.AUTH_LOCKOUTS.labels("imap")
    before = failures._value.get(), lockouts._value.get()
    attempts = [Deferred.fromCoroutine(auth.login("192.0.2.9", "eve@example.test", "guess", protocol="imap"))
                for _ in range(20)]
    while not all(d.called for d in attempts):
        clock.advance(0.05)
    assert (failures._value.get() - before[0], lockouts._value.get() - before[1]) == (20, 1)
