"""The embedded default account store: one SQLite file in WAL mode.

Tables (created on first open, together with the parent directory)::

    domains(name PRIMARY KEY)
    users(address PRIMARY KEY, domain, password_hash, quota, max_messages)
                                        -- quota in bytes, max_messages a count; 0 = unlimited
    aliases(source, target, domain)                            -- source "local@domain" or "@domain"
    sieve_scripts(address, name, script, active)               -- a user's Sieve scripts, one active
    sieve_global_scripts(name, script)                         -- scripts any user may include :global
    sender_grants(address, sender)                             -- a user may also send as sender
                                                                  ("local@domain" or "@domain")

``PRAGMA user_version`` records the schema version; a store of an older version is
brought up to date when opened (version 2 added ``users.max_messages``, 3 the Sieve
scripts, 4 the global ones, 5 the sender grants), and one of a newer version is refused.

Administrative methods (:class:`~mailstack.accounts.store.AccountAdmin`) are
synchronous and write through their own connection in short ``BEGIN
IMMEDIATE`` transactions; the CLI runs them in another process while servers
keep running.

How lookups avoid stalling the reactor
--------------------------------------
Servers call :meth:`SQLiteAccountStore.is_local_domain`, ``get_user``,
``resolve`` and ``owns`` on the reactor thread. They are answered from an
immutable in-memory :class:`~mailstack.accounts.directory.Directory` snapshot.
Each lookup first asks SQLite for ``PRAGMA data_version`` on a separate read
connection, which reads a counter from the shared-memory WAL index — no disk
read, and in WAL mode readers never wait for a writer. The value changes only
when another connection (the CLI, or this store's own admin connection) has
committed, and only then is the snapshot rebuilt, in one read transaction
(a few milliseconds for thousands of accounts) and swapped in whole. So a user
added with ``mailstack user add`` is seen by a running server on its next
lookup, with no restart and no polling timer. If the database cannot be read,
the last good snapshot keeps serving and the error is logged; without one the
lookup raises :class:`~mailstack.accounts.store.AccountError`.

Password hashing (slow by design) never happens in a lookup: ``get_user``
returns the stored hash and the cred checker verifies it in a thread pool.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError
from twisted.logger import Logger

from mailstack.accounts.directory import (
    Directory,
    canonical_address,
    canonical_alias_source,
    canonical_domain,
    domain_of,
)
from mailstack.accounts.passwords import DEFAULT_HASHER, hash_password
from mailstack.accounts.store import AccountError, User
from mailstack.addresses import InvalidAddress

__all__ = ["SCHEMA_VERSION", "SQLiteAccountStore"]

SCHEMA_VERSION = 5
MAX_SCRIPT_NAME = 128  # characters of a Sieve script's name
MAX_SCRIPTS = 100  # Sieve scripts per user
MAX_SCRIPT_SIZE = 1 << 20  # octets of one script

_SCHEMA = """
CREATE TABLE IF NOT EXISTS domains (
    name TEXT PRIMARY KEY NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    address TEXT PRIMARY KEY NOT NULL,
    domain TEXT NOT NULL REFERENCES domains(name),
    password_hash TEXT NOT NULL,
    quota INTEGER NOT NULL DEFAULT 0 CHECK (quota >= 0),
    max_messages INTEGER NOT NULL DEFAULT 0 CHECK (max_messages >= 0)
);
CREATE INDEX IF NOT EXISTS users_domain ON users(domain);
CREATE TABLE IF NOT EXISTS aliases (
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    domain TEXT NOT NULL REFERENCES domains(name),
    UNIQUE (source, target)
);
CREATE INDEX IF NOT EXISTS aliases_domain ON aliases(domain);
CREATE TABLE IF NOT EXISTS sieve_scripts (
    address TEXT NOT NULL REFERENCES users(address) ON DELETE CASCADE,
    name TEXT NOT NULL,
    script TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
    PRIMARY KEY (address, name)
);
CREATE UNIQUE INDEX IF NOT EXISTS sieve_one_active ON sieve_scripts(address) WHERE active = 1;
CREATE TABLE IF NOT EXISTS sieve_global_scripts (
    name TEXT PRIMARY KEY,
    script TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sender_grants (
    address TEXT NOT NULL REFERENCES users(address) ON DELETE CASCADE,
    sender TEXT NOT NULL,
    PRIMARY KEY (address, sender)
) WITHOUT ROWID;
"""

# (version, statement): what brings a store of an older version up to that version
_MIGRATIONS = (
    (2, "ALTER TABLE users ADD COLUMN max_messages INTEGER NOT NULL DEFAULT 0 CHECK (max_messages >= 0)"),
)

_BUSY_TIMEOUT = 5.0  # seconds an admin write waits for another writer


FRESH_INTERVAL = 0.05  # seconds a checked snapshot answers even a "no" (see SQLiteAccountStore.directory)


class SQLiteAccountStore:
    """Accounts in one SQLite file; implements AccountLookup and AccountAdmin.

    *hasher* chooses the argon2 parameters for new hashes (tests pass a cheap
    one); the default is argon2-cffi's argon2id defaults.
    """

    log = Logger()

    def __init__(self, path: Path | str, *, hasher: PasswordHasher | None = None,
                 recheck_interval: float = 0.25, monotonic: Callable[[], float] = time.monotonic,
                 recipient_delimiter: str = "+") -> None:
        self.path = Path(path)
        self.recipient_delimiter = recipient_delimiter  # delivery.recipient_delimiter (Directory)
        self._recheck_interval = recheck_interval
        self._monotonic = monotonic
        self._checked_at = -1e18
        self._hasher = hasher
        self._admin_lock = threading.Lock()
        self._reader_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self._directory: Directory | None = None
        self._data_version: int | None = None
        self._admin = self._connect(create=True)
        self._create_schema()

    # -- connections and schema ------------------------------------------------

    def _connect(self, *, create: bool = False) -> sqlite3.Connection:
        try:
            if create and not self.path.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))  # password hashes inside
            # mode=rw: never create an empty database by accident (schema is made by create=True)
            uri = "file:" + urllib.parse.quote(str(self.path.absolute())) + "?mode=rw"
            conn = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise AccountError(f"account store {self.path}: cannot switch to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            return conn
        except (sqlite3.Error, OSError) as e:
            raise AccountError(f"cannot open account store {self.path}: {e}") from e

    def _create_schema(self) -> None:
        with self._transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise AccountError(
                    f"account store {self.path} has schema version {version}; this mailstack knows {SCHEMA_VERSION}"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            for number, statement in _MIGRATIONS:
                if 0 < version < number:  # a store made by an older mailstack (0: just created above)
                    conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the admin connection; sqlite errors become AccountError."""
        with self._admin_lock:
            conn = self._admin
            committed = False
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
                committed = True
                self._checked_at = -1e18  # our own change: the next lookup rechecks
            except sqlite3.Error as e:
                raise AccountError(f"account store {self.path}: {e}") from e
            finally:
                if not committed and conn.in_transaction:
                    conn.execute("ROLLBACK")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._admin_lock:
            try:
                yield self._admin
            except sqlite3.Error as e:
                raise AccountError(f"account store {self.path}: {e}") from e

    def close(self) -> None:
        """Close both connections; the store must not be used afterwards."""
        with self._admin_lock:
            self._admin.close()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def __enter__(self) -> SQLiteAccountStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- lookups (reactor thread) -------------------------------------------------

    def directory(self, *, fresh: bool = True, within: float = 0.0) -> Directory:
        """The current snapshot, rebuilt first if the database changed.

        With ``fresh=False`` a snapshot checked within ``recheck_interval``
        seconds is used as it is: ``PRAGMA data_version`` costs a file lock, and
        SMTP asks several questions per recipient. A "no" answer is re-asked of a
        fresh snapshot (see the lookups below), so a user the CLI just added is found
        at once; a removal shows within the interval. A fresh snapshot may be one
        checked *within* seconds: ``is_local_domain`` takes one of ``FRESH_INTERVAL``
        (50 ms), since every message for another domain is a "no" to it, and a stream of
        them must cost one check per interval, not one per question.
        """
        if self._directory is not None and self._monotonic() - self._checked_at < (
                self._recheck_interval if not fresh else within):
            return self._directory
        with self._reader_lock:
            try:
                return self._current()
            except (sqlite3.Error, AccountError) as e:
                if self._directory is None:
                    if isinstance(e, AccountError):
                        raise
                    raise AccountError(f"account store {self.path}: {e}") from e
                self.log.failure("account store {path} unreadable; serving the last snapshot", path=str(self.path))
                return self._directory

    def _current(self) -> Directory:
        if self._reader is None:
            self._reader = self._connect()
            self._reader.execute("PRAGMA query_only=ON")
        version = self._reader.execute("PRAGMA data_version").fetchone()[0]
        self._checked_at = self._monotonic()
        if self._directory is None or version != self._data_version:
            self._directory = _load_directory(self._reader, self.recipient_delimiter)
            self._data_version = version
            self.log.debug(
                "account store {path} loaded: {domains} domains, {users} users, {aliases} aliases",
                path=str(self.path),
                domains=len(self._directory.domains),
                users=len(self._directory.users),
                aliases=len(self._directory.aliases),
            )
        return self._directory

    def is_local_domain(self, domain: str) -> bool:
        return (self.directory(fresh=False).is_local_domain(domain)
                or self.directory(within=FRESH_INTERVAL).is_local_domain(domain))

    def get_user(self, address: str) -> User | None:
        return self.directory(fresh=False).get_user(address) or self.directory().get_user(address)

    def resolve(self, address: str) -> tuple[str, ...]:
        return self.directory(fresh=False).resolve(address) or self.directory().resolve(address)

    def owns(self, user_address: str, sender_address: str) -> bool:
        return (self.directory(fresh=False).owns(user_address, sender_address)
                or self.directory().owns(user_address, sender_address))

    # -- domains ---------------------------------------------------------------------

    def add_domain(self, domain: str) -> None:
        name = _domain(domain)
        with self._transaction() as conn:
            if _domain_exists(conn, name):
                raise AccountError(f"domain {name} already exists")
            conn.execute("INSERT INTO domains(name) VALUES (?)", (name,))
        self.log.info("added domain {domain}", domain=name)

    def remove_domain(self, domain: str) -> None:
        name = _domain(domain)
        with self._transaction() as conn:
            if not _domain_exists(conn, name):
                raise AccountError(f"no such domain: {name}")
            users = conn.execute("SELECT count(*) FROM users WHERE domain = ?", (name,)).fetchone()[0]
            aliases = conn.execute("SELECT count(*) FROM aliases WHERE domain = ?", (name,)).fetchone()[0]
            if users or aliases:
                left = f"{_plural(users, 'user')} and {_plural(aliases, 'alias')}"
                raise AccountError(f"domain {name} still has {left}; remove them first")
            conn.execute("DELETE FROM domains WHERE name = ?", (name,))
        self.log.info("removed domain {domain}", domain=name)

    def list_domains(self) -> list[str]:
        with self._reading() as conn:
            return [row[0] for row in conn.execute("SELECT name FROM domains ORDER BY name")]

    def ensure_domains(self, domains: Iterable[str]) -> None:
        wanted = {_domain(d) for d in domains}
        missing = wanted - set(self.list_domains())
        if not missing:
            return
        with self._transaction() as conn:
            conn.executemany("INSERT OR IGNORE INTO domains(name) VALUES (?)", [(d,) for d in sorted(missing)])

    # -- users -------------------------------------------------------------------------

    def add_user(self, address: str, password: str, quota: int = 0, max_messages: int = 0) -> None:
        addr = _address(address)
        _check_password(password)
        _check_quota(quota)
        _check_count(max_messages)
        with self._reading() as conn:
            self._check_new_user(conn, addr)
        password_hash = hash_password(password, self._hasher)  # slow: outside the lock
        with self._transaction() as conn:
            self._check_new_user(conn, addr)
            conn.execute(
                "INSERT INTO users(address, domain, password_hash, quota, max_messages) VALUES (?, ?, ?, ?, ?)",
                (addr, domain_of(addr), password_hash, quota, max_messages),
            )
        self.log.info("added user {address}", address=addr)

    def _check_new_user(self, conn: sqlite3.Connection, addr: str) -> None:
        domain = domain_of(addr)
        if not _domain_exists(conn, domain):
            raise AccountError(f"unknown domain {domain} (add it first with: mailstack domain add {domain})")
        if _user_exists(conn, addr):
            raise AccountError(f"user {addr} already exists")

    def remove_user(self, address: str) -> None:
        addr = _address(address)
        with self._transaction() as conn:
            if conn.execute("DELETE FROM users WHERE address = ?", (addr,)).rowcount == 0:
                raise AccountError(f"no such user: {addr}")
        self.log.info("removed user {address}", address=addr)

    def set_password(self, address: str, password: str) -> None:
        addr = _address(address)
        _check_password(password)
        password_hash = hash_password(password, self._hasher)
        with self._transaction() as conn:
            cursor = conn.execute("UPDATE users SET password_hash = ? WHERE address = ?", (password_hash, addr))
            if cursor.rowcount == 0:
                raise AccountError(f"no such user: {addr}")
        self.log.info("changed password of {address}", address=addr)

    def needs_rehash(self, password_hash: str) -> bool:
        """True when ``password_hash`` was made with other cost parameters than new hashes get."""
        hasher = self._hasher or DEFAULT_HASHER
        try:
            return hasher.check_needs_rehash(password_hash)
        except (InvalidHashError, ValueError):
            return False  # not ours to replace: it cannot have verified

    def rehash_password(self, address: str, old_hash: str, password: str) -> bool:
        """Store a fresh hash of ``password`` (just verified against ``old_hash``) with today's
        parameters; nothing happens if the password was changed meanwhile. Blocking."""
        addr = _address(address)
        password_hash = hash_password(password, self._hasher)
        with self._transaction() as conn:
            cursor = conn.execute("UPDATE users SET password_hash = ? WHERE address = ? AND password_hash = ?",
                                  (password_hash, addr, old_hash))
        if cursor.rowcount:
            self.log.info("password hash of {address} renewed with current parameters", address=addr)
        return bool(cursor.rowcount)

    def set_quota(self, address: str, quota: int, max_messages: int | None = None) -> None:
        addr = _address(address)
        _check_quota(quota)
        if max_messages is not None:
            _check_count(max_messages)
        with self._transaction() as conn:
            cursor = conn.execute("UPDATE users SET quota = ?, max_messages = coalesce(?, max_messages) "
                                  "WHERE address = ?", (quota, max_messages, addr))
            if cursor.rowcount == 0:
                raise AccountError(f"no such user: {addr}")

    def list_users(self, domain: str | None = None) -> list[User]:
        with self._reading() as conn:
            if domain is None:
                rows = conn.execute("SELECT address, password_hash, quota, max_messages FROM users ORDER BY address")
            else:
                name = _domain(domain)
                if not _domain_exists(conn, name):
                    raise AccountError(f"no such domain: {name}")
                rows = conn.execute(
                    "SELECT address, password_hash, quota, max_messages FROM users WHERE domain = ? ORDER BY address",
                    (name,),
                )
            return [User(*row) for row in rows]

    # -- aliases ---------------------------------------------------------------------

    def add_alias(self, source: str, targets: str | Iterable[str]) -> None:
        src = _alias_source(source)
        wanted = _alias_targets(src, [targets] if isinstance(targets, str) else list(targets))
        with self._transaction() as conn:
            if not _domain_exists(conn, domain_of(src)):
                raise AccountError(f"alias source {src} is not in a local domain")
            existing = {row[0] for row in conn.execute("SELECT target FROM aliases WHERE source = ?", (src,))}
            new = [t for t in wanted if t not in existing]
            if not new:
                raise AccountError(f"alias {src} -> {', '.join(wanted)} already exists")
            for target in new:
                _check_local_target(conn, src, target)
            conn.executemany(
                "INSERT INTO aliases(source, target, domain) VALUES (?, ?, ?)",
                [(src, t, domain_of(src)) for t in new],
            )
        self.log.info("added alias {source} -> {targets}", source=src, targets=", ".join(new))

    def remove_alias(self, source: str, target: str | None = None) -> None:
        src = _alias_source(source)
        with self._transaction() as conn:
            if target is None:
                _delete(conn, "aliases WHERE source = ?", (src,), f"no such alias: {src}")
            else:
                tgt = _address(target)
                _delete(conn, "aliases WHERE source = ? AND target = ?", (src, tgt), f"no such alias: {src} -> {tgt}")
        self.log.info("removed alias {source}", source=src)

    # -- sender grants -----------------------------------------------------------------

    def allow_sender(self, address: str, senders: Iterable[str]) -> None:
        user = _address(address)
        wanted = [_sender(s) for s in senders]
        if not wanted:
            raise AccountError("name at least one address or @domain to allow")
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM users WHERE address = ?", (user,)).fetchone() is None:
                raise AccountError(f"no such user: {user}")
            for sender in wanted:  # a local address has its owner, or is an alias: that is how it is shared
                if _domain_exists(conn, sender.rpartition("@")[2]):
                    raise AccountError(f"{sender} is in a local domain: make {user} a target of an alias "
                                       "instead (mailstack alias add)")
            conn.executemany("INSERT OR IGNORE INTO sender_grants(address, sender) VALUES (?, ?)",
                             [(user, s) for s in wanted])
        self.log.info("{user} may send as {senders}", user=user, senders=", ".join(wanted))

    def revoke_sender(self, address: str, sender: str | None = None) -> None:
        user = _address(address)
        with self._transaction() as conn:
            if sender is None:
                _delete(conn, "sender_grants WHERE address = ?", (user,), f"{user} has no sender grants")
            else:
                name = _sender(sender)
                _delete(conn, "sender_grants WHERE address = ? AND sender = ?", (user, name),
                        f"{user} may not send as {name} anyway")
        self.log.info("{user} may no longer send as {senders}", user=user, senders=sender or "granted senders")

    def list_sender_grants(self, address: str | None = None) -> list[tuple[str, str]]:
        with self._reading() as conn:
            if address is None:
                rows = conn.execute("SELECT address, sender FROM sender_grants ORDER BY address, sender")
            else:
                rows = conn.execute("SELECT address, sender FROM sender_grants WHERE address = ? ORDER BY sender",
                                    (_address(address),))
            return [(a, s) for a, s in rows]

    # -- Sieve scripts (RFC 5228; managed by ManageSieve and the CLI) -------------------------

    def put_script(self, address: str, name: str, script: str) -> None:
        """Store (or replace) a script; checking that it is valid Sieve is the caller's job."""
        addr = _address(address)
        _check_script_name(name)
        _check_script_text(script)
        with self._transaction() as conn:
            if not _user_exists(conn, addr):
                raise AccountError(f"no such user: {addr}")
            count = conn.execute("SELECT count(*) FROM sieve_scripts WHERE address = ? AND name != ?",
                                 (addr, name)).fetchone()[0]
            if count >= MAX_SCRIPTS:
                raise AccountError(f"{addr} has {MAX_SCRIPTS} scripts already")
            conn.execute("INSERT INTO sieve_scripts(address, name, script) VALUES (?, ?, ?) "
                         "ON CONFLICT (address, name) DO UPDATE SET script = excluded.script", (addr, name, script))
        self.log.info("stored Sieve script {name!r} of {address}", name=name, address=addr)

    def get_script(self, address: str, name: str) -> str:
        addr = _address(address)
        with self._reading() as conn:
            row = conn.execute("SELECT script FROM sieve_scripts WHERE address = ? AND name = ?", (addr, name)).fetchone()
        if row is None:
            raise AccountError(f"no such script: {name!r}")
        return str(row[0])

    def list_scripts(self, address: str) -> list[tuple[str, bool]]:
        """(name, active) of a user's scripts, by name."""
        addr = _address(address)
        with self._reading() as conn:
            rows = conn.execute("SELECT name, active FROM sieve_scripts WHERE address = ? ORDER BY name", (addr,))
            return [(str(name), bool(active)) for name, active in rows]

    def set_active_script(self, address: str, name: str | None) -> None:
        """Make ``name`` the user's one active script; None: no script runs."""
        addr = _address(address)
        with self._transaction() as conn:
            if name is not None and conn.execute("SELECT 1 FROM sieve_scripts WHERE address = ? AND name = ?",
                                                 (addr, name)).fetchone() is None:
                raise AccountError(f"no such script: {name!r}")
            conn.execute("UPDATE sieve_scripts SET active = 0 WHERE address = ? AND active = 1", (addr,))
            if name is not None:
                conn.execute("UPDATE sieve_scripts SET active = 1 WHERE address = ? AND name = ?", (addr, name))
        self.log.info("active Sieve script of {address}: {name}", address=addr, name=repr(name) if name else "none")

    def delete_script(self, address: str, name: str) -> None:
        """Refused for the active script (RFC 5804 §2.10: deactivate it first)."""
        addr = _address(address)
        with self._transaction() as conn:
            row = conn.execute("SELECT active FROM sieve_scripts WHERE address = ? AND name = ?",
                               (addr, name)).fetchone()
            if row is None:
                raise AccountError(f"no such script: {name!r}")
            if row[0]:
                raise AccountError(f"script {name!r} is active; make another one active (or none) first")
            conn.execute("DELETE FROM sieve_scripts WHERE address = ? AND name = ?", (addr, name))

    def rename_script(self, address: str, old: str, new: str) -> None:
        addr = _address(address)
        _check_script_name(new)
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM sieve_scripts WHERE address = ? AND name = ?", (addr, new)).fetchone():
                raise AccountError(f"a script called {new!r} exists already")
            if conn.execute("UPDATE sieve_scripts SET name = ? WHERE address = ? AND name = ?",
                            (new, addr, old)).rowcount == 0:
                raise AccountError(f"no such script: {old!r}")

    def active_script(self, address: str) -> str | None:
        """The text of the user's active script, from the in-memory snapshot (reactor thread)."""
        return self.directory().active_script(address)

    def script(self, address: str, name: str) -> str | None:
        """A script of a user who has an active one (RFC 6609 :personal), from the snapshot."""
        return self.directory().script(address, name)

    def global_script(self, name: str) -> str | None:
        """A global script (RFC 6609 :global), from the snapshot."""
        return self.directory().global_script(name)

    # -- global Sieve scripts (RFC 6609 :global), managed with the CLI -----------------------

    def put_global_script(self, name: str, script: str) -> None:
        _check_script_name(name)
        _check_script_text(script)
        with self._transaction() as conn:
            count = conn.execute("SELECT count(*) FROM sieve_global_scripts WHERE name != ?", (name,)).fetchone()[0]
            if count >= MAX_SCRIPTS:
                raise AccountError(f"there are {MAX_SCRIPTS} global scripts already")
            conn.execute("INSERT INTO sieve_global_scripts(name, script) VALUES (?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET script = excluded.script", (name, script))
        self.log.info("stored global Sieve script {name!r}", name=name)

    def get_global_script(self, name: str) -> str:
        with self._reading() as conn:
            row = conn.execute("SELECT script FROM sieve_global_scripts WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise AccountError(f"no such global script: {name!r}")
        return str(row[0])

    def list_global_scripts(self) -> list[str]:
        with self._reading() as conn:
            return [str(row[0]) for row in conn.execute("SELECT name FROM sieve_global_scripts ORDER BY name")]

    def delete_global_script(self, name: str) -> None:
        with self._transaction() as conn:
            if conn.execute("DELETE FROM sieve_global_scripts WHERE name = ?", (name,)).rowcount == 0:
                raise AccountError(f"no such global script: {name!r}")

    def list_aliases(self) -> list[tuple[str, str]]:
        with self._reading() as conn:
            return [(s, t) for s, t in conn.execute("SELECT source, target FROM aliases ORDER BY source, rowid")]


# -- helpers ---------------------------------------------------------------------------


def _load_directory(conn: sqlite3.Connection, recipient_delimiter: str = "+") -> Directory:
    """Read all three tables in one read transaction (a consistent view)."""
    conn.execute("BEGIN")
    try:
        domains = frozenset(row[0] for row in conn.execute("SELECT name FROM domains"))
        users = {row[0]: User(*row)
                 for row in conn.execute("SELECT address, password_hash, quota, max_messages FROM users")}
        targets: dict[str, list[str]] = {}
        for source, target in conn.execute("SELECT source, target FROM aliases ORDER BY rowid"):
            targets.setdefault(source, []).append(target)
        scripts = {a: s for a, s in conn.execute("SELECT address, script FROM sieve_scripts WHERE active = 1")}
        # every script of the users with an active one, which may include them (RFC 6609), and the global ones
        named = {(a, n): s for a, n, s in conn.execute(
            "SELECT address, name, script FROM sieve_scripts WHERE address IN "
            "(SELECT address FROM sieve_scripts WHERE active = 1)")}
        global_scripts = {n: s for n, s in conn.execute("SELECT name, script FROM sieve_global_scripts")}
        granted: dict[str, set[str]] = {}
        for address, sender in conn.execute("SELECT address, sender FROM sender_grants"):
            granted.setdefault(address, set()).add(sender)
    finally:
        conn.execute("COMMIT")
    return Directory(domains, users, {source: tuple(t) for source, t in targets.items()}, recipient_delimiter,
                     scripts, named, global_scripts, {a: frozenset(s) for a, s in granted.items()})


def _domain(domain: str) -> str:
    try:
        return canonical_domain(domain)
    except InvalidAddress as e:
        raise AccountError(str(e)) from None


def _address(address: str) -> str:
    try:
        return canonical_address(address)
    except InvalidAddress as e:
        raise AccountError(f"invalid address {address!r}: {e}") from None


def _delete(conn: sqlite3.Connection, rows: str, params: tuple[str, ...], missing: str) -> None:
    """``DELETE FROM`` *rows*; AccountError(*missing*) when there was none."""
    if conn.execute(f"DELETE FROM {rows}", params).rowcount == 0:
        raise AccountError(missing)


def _sender(sender: str) -> str:
    """A grant: an address, or ``@domain``."""
    if sender.startswith("@"):
        return "@" + _domain(sender[1:])
    return _address(sender)


def _alias_source(source: str) -> str:
    try:
        return canonical_alias_source(source)
    except InvalidAddress as e:
        raise AccountError(f"invalid alias source {source!r}: {e}") from None


def _alias_targets(source: str, targets: list[str]) -> list[str]:
    if not targets:
        raise AccountError(f"alias {source} needs at least one target")
    out: dict[str, None] = {}
    for target in targets:
        if isinstance(target, str) and target.strip().startswith("@"):
            raise AccountError(f"alias target {target!r} must be a full address, not a domain")
        out.setdefault(_address(target))
    return list(out)


def _check_local_target(conn: sqlite3.Connection, source: str, target: str) -> None:
    """A target in a local domain must lead somewhere (user, alias or catch-all)."""
    domain = domain_of(target)
    if not _domain_exists(conn, domain) or _user_exists(conn, target):
        return
    if target == source:
        raise AccountError(f"alias {source} cannot point to itself unless {source} is a user")
    sources = (target, "@" + domain)
    if conn.execute("SELECT 1 FROM aliases WHERE source IN (?, ?) LIMIT 1", sources).fetchone() is None:
        raise AccountError(f"alias target {target} is in a local domain but is no user or alias")


def _check_password(password: str) -> None:
    if not isinstance(password, str) or password == "":
        raise AccountError("password must not be empty")


def _check_script_name(name: str) -> None:
    """RFC 5804 §1.6: a script name is 1 to 128 Unicode characters, no controls (and NFC)."""
    if not 0 < len(name) <= MAX_SCRIPT_NAME or any(unicodedata.category(c) in ("Cc", "Cs") or c in "\u2028\u2029"
                                                    for c in name) or not unicodedata.is_normalized("NFC", name):
        raise AccountError(f"bad script name {name!r}: 1 to {MAX_SCRIPT_NAME} characters, no control characters")


def _check_script_text(script: str) -> None:
    try:
        size = len(script.encode("utf-8"))
    except UnicodeEncodeError:
        raise AccountError("script is not UTF-8") from None
    if size > MAX_SCRIPT_SIZE:
        raise AccountError(f"script larger than {MAX_SCRIPT_SIZE} octets")


def _check_count(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit < 2**63:
        raise AccountError(f"a message limit must be a whole number, 0 for unlimited (got {limit!r})")


def _check_quota(quota: int) -> None:
    if isinstance(quota, bool) or not isinstance(quota, int) or not 0 <= quota < 2**63:
        raise AccountError(f"quota must be a whole number of bytes, 0 for unlimited (got {quota!r})")


def _domain_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone() is not None


def _user_exists(conn: sqlite3.Connection, address: str) -> bool:
    return conn.execute("SELECT 1 FROM users WHERE address = ?", (address,)).fetchone() is not None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}es" if word.endswith("s") else f"{n} {word}s"
