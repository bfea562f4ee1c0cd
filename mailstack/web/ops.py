"""``/metrics`` (Prometheus' text format) and ``/healthz`` on the HTTP listener.

``/healthz`` answers 200 ``{"status": "ok"}`` when every mail listener has its
port and the account store answers a query (on the io pool, within a few
seconds), else 503 with what is wrong: what a load balancer or a supervisor
asks before sending traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.server import Request

from mailstack import metrics
from mailstack.web import JSONResource, respond, send_json

STORE_TIMEOUT = 5.0

log = Logger()


class MetricsResource(JSONResource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        body, content_type = metrics.exposition()
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body


class HealthResource(JSONResource):
    """*listeners*: name -> "is it listening?"; *store_answers*: a query of the account store."""

    isLeaf = True

    def __init__(self, listeners: Mapping[str, Callable[[], bool]],
                 store_answers: Callable[[], Deferred[Any]], clock: IReactorTime) -> None:
        super().__init__()
        self.listeners = listeners
        self.store_answers = store_answers
        self.clock = clock

    def render_GET(self, request: Request) -> Any:
        return respond(request, self._check)

    async def _check(self) -> Callable[[Request], None]:
        problems = [f"{name} is not listening" for name, up in self.listeners.items() if not up()]
        try:
            await self.store_answers().addTimeout(STORE_TIMEOUT, self.clock)
        except defer.TimeoutError:
            log.error("healthz: the account store did not answer within {seconds:g} s", seconds=STORE_TIMEOUT)
            problems.append(f"the account store did not answer within {STORE_TIMEOUT:g} s")
        except Exception:  # the store's own error: in the log, not in the public answer
            log.failure("healthz: the account store failed")
            problems.append("the account store failed (see the server's log)")
        listening = sorted(name for name, up in self.listeners.items() if up())
        if problems:
            return lambda request: send_json(request, {"status": "failing", "problems": problems,
                                                       "listening": listening}, 503)
        return lambda request: send_json(request, {"status": "ok", "listening": listening})

