from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.logger import globalLogPublisher


@pytest.fixture
def logged() -> Iterator[list[dict]]:
    """Every log event emitted while the test runs."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)
