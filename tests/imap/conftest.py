from __future__ import annotations

import pytest

from .harness import World


@pytest.fixture
def world(tmp_path):
    return World.create(tmp_path / "maildirs")


@pytest.fixture
def client(world):
    return world.connect().login()
