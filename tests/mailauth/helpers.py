"""Running coroutines whose blocking work and DNS answers come at once (inline io, fake resolver)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def settle(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired (raised if it failed)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "still waiting"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def run(coro: Any) -> Any:
    return settle(Deferred.fromCoroutine(coro))


async def inline(fn: Any, *args: Any) -> Any:
    """``io`` that runs the work at once, on the calling thread."""
    return fn(*args)
