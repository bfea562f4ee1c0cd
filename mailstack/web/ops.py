"""``/metrics`` (Prometheus' text format) and ``/healthz`` on the HTTP listener.

``/healthz`` answers 200 ``{"status": "ok"}`` when every mail listener has its
port and the account store answers a query (on the io pool, within a few
seconds), else 503 with what is wrong: what a load balancer or a supervisor
asks before sending traffic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from mailstack import metrics
from mailstack.web import JSONResource, respond, send_json

STORE_TIMEOUT = 5.0


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
                 store_answers: Callable[[], Awaitable[object]], clock: IReactorTime) -> None:
        super().__init__()
        self.listeners = listeners
        self.store_answers = store_answers
        self.clock = clock

    def render_GET(self, request: Request) -> Any:
        return respond(request, self._check)

    async def _check(self) -> Callable[[Request], None]:
        problems = [f"{name} is not listening" for name, up in self.listeners.items() if not up()]
        try:
            query = Deferred.fromCoroutine(_await(self.store_answers()))
            query.addTimeout(STORE_TIMEOUT, self.clock)
            await query
        except defer.TimeoutError:
            problems.append(f"the account store did not answer within {STORE_TIMEOUT:g} s")
        except Exception as e:  # a timeout or the store's own error: unhealthy, said in the answer
            problems.append(f"the account store does not answer: {type(e).__name__}: {e}"[:300])
        listening = sorted(name for name, up in self.listeners.items() if up())
        if problems:
            return lambda request: send_json(request, {"status": "failing", "problems": problems,
                                                       "listening": listening}, 503)
        return lambda request: send_json(request, {"status": "ok", "listening": listening})


async def _await(awaitable: Awaitable[object]) -> object:
    return await awaitable
