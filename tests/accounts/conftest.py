"""Fixtures for the account store tests: a cheap argon2 hasher and a fresh store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from mailstack.accounts import SQLiteAccountStore

# argon2id at the minimum cost: microseconds instead of ~90 ms per hash
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "accounts.sqlite3"


@pytest.fixture
def store(store_path: Path) -> Iterator[SQLiteAccountStore]:
    s = SQLiteAccountStore(store_path, hasher=CHEAP_HASHER)
    s.ensure_domains(["example.test"])
    yield s
    s.close()
