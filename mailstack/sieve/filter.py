"""Sieve at local delivery: the :class:`~mailstack.interfaces.Filter` that runs a user's script.

For each local copy, the mailbox's active script (``AccountLookup.active_script``,
from the account store's in-memory snapshot) is compiled once per text (a small
cache) and run on a thread pool, over the message's header, size and envelope (the
address it was sent to, so ``:detail`` sees ``user+tag``). Its outcome becomes a
:class:`~mailstack.interfaces.Filing`: the folders with their flags, or nothing for
``discard``. A mailbox without a script gets what the next filter gives (INBOX).

A script never loses mail (RFC 5228 §2.10.6): a script that fails (a limit hit, an
error) files the copy into INBOX, logged with the user and the queue id. redirect and
reject are not carried out yet: such a copy is kept in INBOX too, and the log says so.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.logger import Logger

from mailstack.accounts.store import AccountLookup
from mailstack.imap.mime import split_message
from mailstack.interfaces import INBOX, Filing, Filter, LocalCopy
from mailstack.sieve.interpreter import MessageView, Outcome, Script, compile_script
from mailstack.sieve.parser import SieveSyntaxError

log = Logger()
COMPILED = 256  # compiled scripts kept (by text)
INLINE_NODES = 400  # commands and tests of a script run on the reactor thread (a few hundred µs at most)
INLINE_HEADER = 16 << 10  # octets of header a script run on the reactor thread may read


class SieveFilter:
    def __init__(self, store: AccountLookup, then: Filter, *, run: Callable[..., Awaitable[Any]],
                 delimiter: str = "+") -> None:
        self.store = store
        self.then = then
        self.run = run  # blocking work on a bounded pool
        self.delimiter = delimiter
        self._compiled: OrderedDict[str, Script | SieveSyntaxError] = OrderedDict()

    async def file(self, copy: LocalCopy) -> Filing:
        text = self.store.active_script(copy.mailbox)
        if text is None:
            return await self.then.file(copy)
        try:
            script = self._script(text)
            header = split_message(copy.message)[0]
            view = MessageView(header, len(copy.message), copy.sender, copy.original, delimiter=self.delimiter)
            # A small script over a small header costs less than the trip to the pool: run on the
            # reactor thread; anything bigger (up to MAX_STEPS, over a long header) on the pool.
            inline = script.size <= INLINE_NODES and len(header) <= INLINE_HEADER
            outcome: Outcome = script.run(view) if inline else await self.run(script.run, view)
        except Exception as e:  # a limit hit, a broken script: the copy is kept (RFC 5228 §2.10.6)
            log.warn("{queue_id} Sieve script of <{mailbox}> failed ({error}); filed into INBOX",
                     queue_id=copy.queue_id, mailbox=copy.mailbox, error=e)
            return INBOX
        copies = tuple((d.folder, d.flags) for d in outcome.deliveries)
        if outcome.redirects or outcome.reject is not None:
            log.warn("{queue_id} Sieve script of <{mailbox}> asks for {what}, not carried out yet; kept in INBOX",
                     queue_id=copy.queue_id, mailbox=copy.mailbox,
                     what="redirect" if outcome.redirects else "reject")
            if not any(folder is None for folder, _ in copies):
                copies += ((None, ()),)
        return Filing(copies)

    def _script(self, text: str) -> Script:
        """The compiled script for a text (kept, so a busy mailbox compiles it once)."""
        found = self._compiled.get(text)
        if found is None:
            try:
                found = compile_script(text)
            except SieveSyntaxError as e:  # stored before a checker change, say: failing, not crashing
                found = e
            self._compiled[text] = found
            if len(self._compiled) > COMPILED:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(text)
        if isinstance(found, SieveSyntaxError):  # a new one each time: a kept one would keep its frames
            raise SieveSyntaxError(found.message, found.line, found.column)
        return found
