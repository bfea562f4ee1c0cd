"""MaildirDelivery.deliver on a thread pool, without a running reactor."""

from __future__ import annotations

import queue
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase

from mailstack.maildir import DeliveryError, MaildirDelivery, Recipient

BODY = b"Subject: async\r\n\r\nhello\r\n"


class ImmediateReactor:
    """callFromThread runs the call at once (everything here is one thread)."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class QueueReactor:
    """callFromThread hands the call to the test's thread through a queue."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            queue.Queue()
        )

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.calls.put((f, args))

    def run_one(self, timeout: float = 10.0) -> None:
        f, args = self.calls.get(timeout=timeout)
        f(*args)


class InlineThreadPool:
    """Runs the work in the calling thread, reporting like ThreadPool does."""

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, Any], None],
        func: Callable[..., Any],
        *args: Any,
    ) -> None:
        try:
            result = func(*args)
        except DeliveryError:
            on_result(False, Failure())
        else:
            on_result(True, result)


class DeliverTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = tempfile.mkdtemp(prefix="maildir-async-")
        self.addCleanup(shutil.rmtree, base)
        self.root = Path(base) / "maildirs"

    def delivery(self, reactor: Any, pool: Any) -> MaildirDelivery:
        return MaildirDelivery(
            self.root, hostname="h", reactor=reactor, threadpool=pool
        )

    def test_deliver_returns_the_paths(self) -> None:
        d = Deferred.fromCoroutine(
            self.delivery(ImmediateReactor(), InlineThreadPool()).deliver(
                "a@example.test", [Recipient("bob@example.test")], BODY
            )
        )
        [path] = self.successResultOf(d)
        self.assertTrue(Path(path).read_bytes().endswith(BODY))

    def test_deliver_failure_arrives_as_delivery_error(self) -> None:
        d = Deferred.fromCoroutine(
            self.delivery(ImmediateReactor(), InlineThreadPool()).deliver(
                "", [Recipient("../x@example.test")], BODY
            )
        )
        failure = self.failureResultOf(d, DeliveryError)
        self.assertEqual(failure.value.status, "5.1.3")

    def test_deliver_on_a_real_thread_pool(self) -> None:
        pool = ThreadPool(minthreads=1, maxthreads=2, name="maildir-test")
        pool.start()
        self.addCleanup(pool.stop)
        reactor = QueueReactor()
        delivery = self.delivery(reactor, pool)
        d = Deferred.fromCoroutine(
            delivery.deliver(
                "", [Recipient("bob@example.test"), Recipient("amy@example.test")], BODY
            )
        )
        self.assertNoResult(d)  # the result only arrives through the reactor
        reactor.run_one()
        paths = self.successResultOf(d)
        self.assertEqual([Path(p).parent.parent.name for p in paths], ["bob", "amy"])

    def test_deliver_without_reactor_or_pool_is_refused(self) -> None:
        d = Deferred.fromCoroutine(
            MaildirDelivery(self.root, hostname="h").deliver(
                "", [Recipient("b@example.test")], BODY
            )
        )
        self.failureResultOf(d, RuntimeError)
