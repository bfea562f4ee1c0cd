"""A user's Sieve scripts in the account store, as ManageSieve needs them.

The store (:class:`~mailstack.accounts.store.AccountAdmin`) blocks on disk, so
every call here is one trip to the io pool (``run``), never work on the reactor
thread. Each trip looks and acts together (whether the script exists, whether it
is active, how many there are), and answers with a :class:`Result` that the
session turns into a response code (RFC 5804 §1.3). The store still refuses
what changed in between (another session, the CLI) with an ``AccountError``.

Checking a script (:func:`check`) runs on the pool too: a script may be a
megabyte, and compiling it is work the reactor should not wait on.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any

from mailstack.accounts.store import AccountAdmin
from mailstack.sieve.interpreter import compile_script
from mailstack.sieve.parser import SieveSyntaxError


class Result(enum.Enum):
    DONE = "done"
    NONEXISTENT = "nonexistent"  # no script by that name
    ALREADYEXISTS = "alreadyexists"  # the new name is taken
    ACTIVE = "active"  # not allowed on the active script
    MAXSCRIPTS = "maxscripts"  # one more script would pass the per-user limit


def check(text: bytes) -> SieveSyntaxError | None:
    """None for a valid script, else its first error (with line and column)."""
    try:
        compile_script(text)
    except SieveSyntaxError as e:
        return e
    return None


class Scripts:
    """One store, reached through ``run`` (blocking work on a bounded pool, results on the reactor)."""

    def __init__(self, store: AccountAdmin, run: Callable[..., Awaitable[Any]], *, max_scripts: int) -> None:
        self.store = store
        self.run = run
        self.max_scripts = max_scripts

    def check(self, text: bytes) -> Awaitable[SieveSyntaxError | None]:
        return self.run(check, text)

    def listing(self, user: str) -> Awaitable[list[tuple[str, bool]]]:
        return self.run(self.store.list_scripts, user)

    def get(self, user: str, name: str) -> Awaitable[str | None]:
        """The script's text; None when there is no script by that name."""
        return self.run(self._get, user, name)

    def room_for(self, user: str, name: str) -> Awaitable[Result]:
        """HAVESPACE's count check: DONE if a script by that name could be stored."""
        return self.run(self._room_for, user, name)

    def put(self, user: str, name: str, text: str) -> Awaitable[Result]:
        return self.run(self._put, user, name, text)

    def set_active(self, user: str, name: str | None) -> Awaitable[Result]:
        return self.run(self._set_active, user, name)

    def delete(self, user: str, name: str) -> Awaitable[Result]:
        return self.run(self._delete, user, name)

    def rename(self, user: str, old: str, new: str) -> Awaitable[Result]:
        return self.run(self._rename, user, old, new)

    # -- blocking: on the pool ------------------------------------------------------------

    def _names(self, user: str) -> dict[str, bool]:
        return dict(self.store.list_scripts(user))

    def _get(self, user: str, name: str) -> str | None:
        if name not in self._names(user):
            return None
        return self.store.get_script(user, name)

    def _room_for(self, user: str, name: str) -> Result:
        names = self._names(user)
        return Result.MAXSCRIPTS if name not in names and len(names) >= self.max_scripts else Result.DONE

    def _put(self, user: str, name: str, text: str) -> Result:
        if self._room_for(user, name) is not Result.DONE:
            return Result.MAXSCRIPTS
        self.store.put_script(user, name, text)
        return Result.DONE

    def _set_active(self, user: str, name: str | None) -> Result:
        if name is not None and name not in self._names(user):
            return Result.NONEXISTENT
        self.store.set_active_script(user, name)
        return Result.DONE

    def _delete(self, user: str, name: str) -> Result:
        names = self._names(user)
        if name not in names:
            return Result.NONEXISTENT
        if names[name]:
            return Result.ACTIVE  # RFC 5804 §2.10
        self.store.delete_script(user, name)
        return Result.DONE

    def _rename(self, user: str, old: str, new: str) -> Result:
        names = self._names(user)
        if old not in names:
            return Result.NONEXISTENT
        if new in names:
            return Result.ALREADYEXISTS
        self.store.rename_script(user, old, new)  # an active script stays active (RFC 5804 §2.11)
        return Result.DONE
