"""Tests for mailstack.accounts.sqlite: the embedded SQLite account store."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from mailstack.accounts import AccountError, AccountLookup, SQLiteAccountStore, User
from mailstack.accounts.passwords import verify_password
from mailstack.accounts.sqlite import SCHEMA_VERSION

CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


# -- opening ------------------------------------------------------------------------


def test_first_open_creates_directory_schema_and_wal(store_path: Path, store: SQLiteAccountStore) -> None:
    assert store_path.exists()
    conn = sqlite3.connect(store_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"domains", "users", "aliases", "sender_grants"} <= tables
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    finally:
        conn.close()
    assert stat.S_IMODE(store_path.stat().st_mode) == 0o600


def test_reopening_keeps_data(store_path: Path, store: SQLiteAccountStore) -> None:
    store.add_user("alice@example.test", "pw")
    with SQLiteAccountStore(store_path) as again:
        assert again.get_user("alice@example.test") is not None


def test_a_version_1_store_is_brought_up_to_date(tmp_path: Path) -> None:
    """A store written before message limits: users keep their data and get no limit."""
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE domains (name TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID;"
        "CREATE TABLE users (address TEXT PRIMARY KEY NOT NULL, domain TEXT NOT NULL REFERENCES domains(name),"
        " password_hash TEXT NOT NULL, quota INTEGER NOT NULL DEFAULT 0 CHECK (quota >= 0));"
        "CREATE TABLE aliases (source TEXT NOT NULL, target TEXT NOT NULL,"
        " domain TEXT NOT NULL REFERENCES domains(name), UNIQUE (source, target));"
        "INSERT INTO domains VALUES ('example.test');"
        "INSERT INTO users VALUES ('old@example.test', 'example.test', '$argon2id$x', 2048);"
        "PRAGMA user_version = 1;")
    conn.close()
    with SQLiteAccountStore(path, hasher=CHEAP_HASHER) as store:
        assert store.get_user("old@example.test") == User("old@example.test", "$argon2id$x", 2048, 0)
        store.set_quota("old@example.test", 4096, 10)
        store.add_user("new@example.test", "pw", quota=1, max_messages=7)
    with SQLiteAccountStore(path) as store:
        assert store.get_user("old@example.test") == User("old@example.test", "$argon2id$x", 4096, 10)
        assert [(u.address, u.max_messages) for u in store.list_users()] == [("new@example.test", 7),
                                                                            ("old@example.test", 10)]
        with pytest.raises(AccountError, match="message limit"):
            store.set_quota("old@example.test", 0, -1)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_store_from_a_newer_version_is_refused(store_path: Path, store: SQLiteAccountStore) -> None:
    store.close()
    conn = sqlite3.connect(store_path)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(AccountError, match="schema version 99"):
        SQLiteAccountStore(store_path)


def test_unopenable_path_gives_an_account_error(tmp_path: Path) -> None:
    with pytest.raises(AccountError, match="cannot open account store"):
        SQLiteAccountStore(tmp_path)  # a directory


def test_store_provides_the_lookup_interface(store: SQLiteAccountStore) -> None:
    assert isinstance(store, AccountLookup)


def test_default_hasher_stores_argon2id(tmp_path: Path) -> None:
    with SQLiteAccountStore(tmp_path / "a.sqlite3") as s:
        s.add_domain("example.test")
        s.add_user("alice@example.test", "s3cret")
        user = s.get_user("alice@example.test")
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    assert verify_password(user.password_hash, "s3cret")


# -- domains ----------------------------------------------------------------------------


def test_domains_are_added_listed_and_removed_case_insensitively(store: SQLiteAccountStore) -> None:
    store.add_domain("Other.TEST")
    assert store.list_domains() == ["example.test", "other.test"]
    assert store.is_local_domain("OTHER.test")
    with pytest.raises(AccountError, match="domain other.test already exists"):
        store.add_domain("other.test")
    store.remove_domain("OTHER.TEST")
    assert store.list_domains() == ["example.test"]
    assert not store.is_local_domain("other.test")


def test_ensure_domains_is_idempotent(store: SQLiteAccountStore) -> None:
    store.ensure_domains(["example.test", "New.Test", "new.test."])
    store.ensure_domains(["new.test"])
    assert store.list_domains() == ["example.test", "new.test"]


def test_invalid_domain_is_refused(store: SQLiteAccountStore) -> None:
    with pytest.raises(AccountError, match="invalid domain"):
        store.add_domain("bad domain")


def test_remove_unknown_domain_is_refused(store: SQLiteAccountStore) -> None:
    with pytest.raises(AccountError, match="no such domain: nope.test"):
        store.remove_domain("nope.test")


def test_domain_with_users_or_aliases_cannot_be_removed(store: SQLiteAccountStore) -> None:
    store.add_user("alice@example.test", "pw")
    store.add_alias("info@example.test", "alice@example.test")
    with pytest.raises(AccountError, match="still has 1 user and 1 alias; remove them first"):
        store.remove_domain("example.test")
    store.remove_alias("info@example.test")
    with pytest.raises(AccountError, match="still has 1 user and 0 aliases"):
        store.remove_domain("example.test")
    store.remove_user("alice@example.test")
    store.remove_domain("example.test")
    assert store.list_domains() == []


# -- users --------------------------------------------------------------------------------


def test_add_user_stores_canonical_address_hash_and_quota(store: SQLiteAccountStore) -> None:
    store.add_user("Alice@Example.TEST", "pw", quota=1024)
    user = store.get_user("alice@example.test")
    assert user is not None
    assert user.address == "alice@example.test"
    assert user.quota == 1024
    assert verify_password(user.password_hash, "pw")
    assert store.list_users() == [user]


def test_lookups_ignore_case(store: SQLiteAccountStore) -> None:
    store.add_user("alice@example.test", "pw")
    assert store.get_user("ALICE@EXAMPLE.TEST") is not None
    assert store.resolve("Alice@Example.Test") == ("alice@example.test",)


def test_duplicate_user_is_refused_whatever_the_case(store: SQLiteAccountStore) -> None:
    store.add_user("alice@example.test", "pw")
    with pytest.raises(AccountError, match="user alice@example.test already exists"):
        store.add_user("ALICE@example.TEST", "other")


def test_user_in_unknown_domain_is_refused(store: SQLiteAccountStore) -> None:
    with pytest.raises(AccountError, match="unknown domain nope.test"):
        store.add_user("alice@nope.test", "pw")


def test_empty_password_is_refused(store: SQLiteAccountStore) -> None:
    with pytest.raises(AccountError, match="password must not be empty"):
        store.add_user("alice@example.test", "")
    assert store.get_user("alice@example.test") is None


@pytest.mark.parametrize(
    "local", ["a/b", "..", "a..b", "a\x00b", "a\x1bb", ".a", "a.", "a\\b", "a b", "a\u0085b", "a\u202eb", ""]
)
def test_bad_local_parts_are_refused(store: SQLiteAccountStore, local: str) -> None:
    with pytest.raises(AccountError, match="invalid address"):
        store.add_user(f"{local}@example.test", "pw")
    assert store.list_users() == []


@pytest.mark.parametrize("quota", [-1, 1.5, True, "10"])
def test_bad_quota_is_refused(store: SQLiteAccountStore, quota: object) -> None:
    with pytest.raises(AccountError, match="quota must be"):
        store.add_user("alice@example.test", "pw", quota=quota)  # type: ignore[arg-type]


def test_remove_user(store: SQLiteAccountStore) -> None:
    store.add_user("alice@example.test", "pw")
    store.remove_user("Alice@example.test")
    assert store.get_user("alice@example.test") is None
    with pytest.raises(AccountError, match="no such user: alice@example.test"):
        store.remove_user("alice@example.test")


def test_set_password_replaces_the_hash(store: SQLiteAccountStore) -> None:
    store.add_user("alice@example.test", "old")
    store.set_password("alice@example.test", "new")
    user = store.get_user("alice@example.test")
    assert user is not None
    assert verify_password(user.password_hash, "new")
    assert not verify_password(user.password_hash, "old")
    with pytest.raises(AccountError, match="password must not be empty"):
        store.set_password("alice@example.test", "")
    with pytest.raises(AccountError, match="no such user: bob@example.test"):
        store.set_password("bob@example.test", "pw")


def test_set_quota(store: SQLiteAccountStore) -> None:
    store.add_user("alice@example.test", "pw")
    store.set_quota("alice@example.test", 5000)
    assert store.get_user("alice@example.test") == User("alice@example.test", store.list_users()[0].password_hash, 5000)
    with pytest.raises(AccountError, match="no such user"):
        store.set_quota("bob@example.test", 1)


def test_list_users_by_domain(store: SQLiteAccountStore) -> None:
    store.add_domain("other.test")
    for address in ["bob@example.test", "alice@example.test", "carol@other.test"]:
        store.add_user(address, "pw")
    assert [u.address for u in store.list_users()] == ["alice@example.test", "bob@example.test", "carol@other.test"]
    assert [u.address for u in store.list_users("Other.Test")] == ["carol@other.test"]
    with pytest.raises(AccountError, match="no such domain"):
        store.list_users("nope.test")


# -- aliases ------------------------------------------------------------------------------


def test_alias_and_catch_all_resolution(store: SQLiteAccountStore) -> None:
    store.add_user("alice@example.test", "pw")
    store.add_user("postmaster@example.test", "pw")
    store.add_alias("Info@Example.TEST", ["ALICE@example.test"])
    store.add_alias("@example.test", "postmaster@example.test")
    assert store.resolve("info@example.test") == ("alice@example.test",)
    assert store.resolve("alice@example.test") == ("alice@example.test",)
    assert store.resolve("whoever@example.test") == ("postmaster@example.test",)
    assert store.list_aliases() == [
        ("@example.test", "postmaster@example.test"),
        ("info@example.test", "alice@example.test"),
    ]


def test_one_to_many_alias_with_forwarding_keeps_order(store: SQLiteAccountStore) -> None:
    for name in ["carol", "alice", "bob"]:
        store.add_user(f"{name}@example.test", "pw")
    store.add_alias("team@example.test", ["carol@example.test", "friend@Remote.Example", "alice@example.test"])
    store.add_alias("team@example.test", "bob@example.test")
    assert store.resolve("team@example.test") == (
        "carol@example.test",
        "friend@remote.example",
        "alice@example.test",
        "bob@example.test",
    )
    store.remove_alias("team@example.test", "friend@remote.example")
    assert store.resolve("team@example.test") == ("carol@example.test", "alice@example.test", "bob@example.test")
    store.remove_alias("team@example.test")
    assert store.resolve("team@example.test") == ()


def test_alias_chains_and_loops(store: SQLiteAccountStore) -> None:
    store.add_user("alice@example.test", "pw")
    store.add_alias("a@example.test", "alice@example.test")
    store.add_alias("b@example.test", "a@example.test")
    store.add_alias("a@example.test", "b@example.test")  # now a loop a <-> b, with alice inside
    assert store.resolve("b@example.test") == ("alice@example.test",)
    assert store.resolve("a@example.test") == ("alice@example.test",)


def test_alias_source_outside_local_domains_is_refused(store: SQLiteAccountStore) -> None:
    with pytest.raises(AccountError, match="not in a local domain"):
        store.add_alias("info@remote.example", "alice@example.test")
    with pytest.raises(AccountError, match="not in a local domain"):
        store.add_alias("@remote.example", "alice@example.test")


def test_alias_targets_are_validated(store: SQLiteAccountStore) -> None:
    with pytest.raises(AccountError, match="invalid address"):
        store.add_alias("info@example.test", ["ok@remote.example", "a/b@remote.example"])
    with pytest.raises(AccountError, match="full address"):
        store.add_alias("info@example.test", "@remote.example")
    with pytest.raises(AccountError, match="at least one target"):
        store.add_alias("info@example.test", [])
    with pytest.raises(AccountError, match="invalid alias source"):
        store.add_alias("a..b@example.test", "x@remote.example")
    with pytest.raises(AccountError, match="no user or alias"):
        store.add_alias("info@example.test", "nobody@example.test")
    with pytest.raises(AccountError, match="cannot point to itself"):
        store.add_alias("info@example.test", "info@example.test")
    assert store.list_aliases() == []


def test_duplicate_alias_is_refused(store: SQLiteAccountStore) -> None:
    store.add_alias("info@example.test", "x@remote.example")
    with pytest.raises(AccountError, match="already exists"):
        store.add_alias("INFO@example.test", "X@remote.example")


def test_remove_missing_alias_is_refused(store: SQLiteAccountStore) -> None:
    with pytest.raises(AccountError, match="no such alias: info@example.test"):
        store.remove_alias("info@example.test")
    store.add_alias("info@example.test", "x@remote.example")
    with pytest.raises(AccountError, match="no such alias: info@example.test -> y@remote.example"):
        store.remove_alias("info@example.test", "y@remote.example")


def test_owns_uses_exact_aliases(store: SQLiteAccountStore) -> None:
    store.add_user("alice@example.test", "pw")
    store.add_alias("info@example.test", "alice@example.test")
    store.add_alias("@example.test", "alice@example.test")
    assert store.owns("alice@example.test", "ALICE@example.test")
    assert store.owns("alice@example.test", "info@example.test")
    assert not store.owns("alice@example.test", "random@example.test")


# -- visibility across processes ------------------------------------------------------------


def test_changes_by_another_connection_are_seen_without_reopening(store_path: Path, store: SQLiteAccountStore) -> None:
    now = [0.0]
    server = SQLiteAccountStore(store_path, hasher=CHEAP_HASHER, monotonic=lambda: now[0])
    try:
        assert server.get_user("alice@example.test") is None
        store.add_user("alice@example.test", "pw")
        assert server.get_user("alice@example.test") is not None  # a "no" is always rechecked
        store.add_domain("late.test")
        assert not server.is_local_domain("late.test")  # a domain "no" may be 50 ms old
        now[0] += 0.05
        assert server.is_local_domain("late.test")
        store.add_alias("info@example.test", "alice@example.test")
        assert server.resolve("info@example.test") == ("alice@example.test",)
        store.remove_user("alice@example.test")
        now[0] += 0.05
        assert server.get_user("alice@example.test") is not None  # a "yes" may be 0.25 s old
        now[0] += 0.25
        assert server.get_user("alice@example.test") is None
    finally:
        server.close()


def test_positive_answers_within_the_interval_do_not_touch_sqlite(store_path: Path,
                                                                  store: SQLiteAccountStore) -> None:
    now = [0.0]
    server = SQLiteAccountStore(store_path, hasher=CHEAP_HASHER, monotonic=lambda: now[0])
    try:
        store.add_user("alice@example.test", "pw")
        assert server.get_user("alice@example.test") is not None
        reader = server._reader
        server._reader = None  # any query would reconnect and show up here
        for _ in range(100):
            assert server.is_local_domain("example.test")
            assert server.resolve("alice@example.test") == ("alice@example.test",)
        assert server._reader is None
        server._reader = reader
    finally:
        server.close()


def test_own_changes_are_seen_by_own_lookups(store: SQLiteAccountStore) -> None:
    assert store.get_user("alice@example.test") is None
    store.add_user("alice@example.test", "pw")
    assert store.get_user("alice@example.test") is not None


def test_snapshot_is_reused_while_nothing_changes(store: SQLiteAccountStore) -> None:
    first = store.directory()
    assert store.directory() is first
    store.add_domain("other.test")
    second = store.directory()
    assert second is not first
    assert store.directory() is second


def test_last_snapshot_serves_when_the_database_cannot_be_read(store: SQLiteAccountStore) -> None:
    store.add_user("alice@example.test", "pw")
    assert store.get_user("alice@example.test") is not None
    assert store._reader is not None
    store._reader.close()  # every further read on it fails
    assert store.get_user("alice@example.test") is not None
    assert store.resolve("alice@example.test") == ("alice@example.test",)


def test_sieve_scripts_one_active_per_user(store: SQLiteAccountStore) -> None:
    store.add_user("alice@example.test", "pw")
    store.put_script("alice@example.test", "vacation", "keep;")
    store.put_script("alice@example.test", "lists", 'require "fileinto"; fileinto "Lists";')
    store.put_script("alice@example.test", "lists", "discard;")  # replaced
    assert store.get_script("alice@example.test", "lists") == "discard;"
    assert store.active_script("alice@example.test") is None
    store.set_active_script("alice@example.test", "lists")
    assert store.active_script("ALICE@example.test") == "discard;"
    store.set_active_script("alice@example.test", "vacation")
    assert store.list_scripts("alice@example.test") == [("lists", False), ("vacation", True)]
    with pytest.raises(AccountError, match="is active"):
        store.delete_script("alice@example.test", "vacation")
    store.rename_script("alice@example.test", "vacation", "away")
    assert store.active_script("alice@example.test") == "keep;"
    with pytest.raises(AccountError, match="exists already"):
        store.rename_script("alice@example.test", "lists", "away")
    store.delete_script("alice@example.test", "lists")
    store.set_active_script("alice@example.test", None)
    assert store.active_script("alice@example.test") is None and store.list_scripts("alice@example.test") == [
        ("away", False)]
    for bad in ("", "x" * 129, "a\nb", "e\u0301"):
        with pytest.raises(AccountError, match="bad script name"):
            store.put_script("alice@example.test", bad, "keep;")
    with pytest.raises(AccountError, match="no such user"):
        store.put_script("nobody@example.test", "x", "keep;")
    with pytest.raises(AccountError, match="no such script"):
        store.set_active_script("alice@example.test", "missing")
    store.remove_user("alice@example.test")  # the scripts go with the user
    store.add_user("alice@example.test", "pw")
    assert store.list_scripts("alice@example.test") == []


def test_a_no_is_checked_again_after_50_ms_not_for_every_question(tmp_path):
    """A stream of questions about other domains costs one data_version check per 50 ms."""
    from mailstack.accounts import SQLiteAccountStore

    now = [100.0]
    reader = SQLiteAccountStore(tmp_path / "a.sqlite3")
    reader._monotonic = lambda: now[0]
    writer = SQLiteAccountStore(tmp_path / "a.sqlite3")
    assert not reader.is_local_domain("new.test")
    writer.add_domain("new.test")
    assert not reader.is_local_domain("new.test")  # within 50 ms of the last check
    now[0] += 0.06
    assert reader.is_local_domain("new.test")
    reader.close()
    writer.close()
