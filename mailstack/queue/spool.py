"""The durable spool: one file per message, one append-only state log per message.

Layout under ``storage.queue``::

    tmp/<id>      being written (never read; removed at start-up)
    msg/<id>      line 1: the envelope as JSON; then the message bytes, as accepted
    state/<id>    JSON lines, appended and fsynced: per-recipient outcomes
    ctl/          requests from ``mailstack queue flush|delete`` to a running server

A message is in the queue exactly when ``msg/<id>`` exists: it is written to
``tmp/``, fsynced, renamed into ``msg/`` and ``msg/`` is fsynced before the
SMTP 250 (directory fsyncs shared between concurrent writers, as Maildir
delivery does). Progress is recorded by appending a line to ``state/<id>`` and
fsyncing it *before* the next step, so a recipient recorded as delivered is
never tried again after a crash; the last line about a recipient wins. When
every recipient is final, ``state/`` then ``msg/`` are removed.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from mailstack.envelope import NO_DSN, RecipientDSN
from mailstack.fsutil import write_file_synced
from mailstack.maildir.dirsync import DirectorySyncer

log = Logger()

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"  # permanent failure, to be reported in a bounce
BOUNCED = "bounced"  # the failure was reported (or needs no report)
FINAL = frozenset({DELIVERED, BOUNCED})


class SpoolError(Exception):
    """The spool could not be written; nothing was queued. ``full``: out of disk space."""

    def __init__(self, message: str, error: OSError | None = None) -> None:
        super().__init__(message)
        self.full = error is not None and error.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass(slots=True)
class RecipientState:
    address: str
    status: str = PENDING
    attempts: int = 0
    next_try: float = 0.0
    last_error: str = ""
    status_code: str = ""  # RFC 3463 code of the last outcome, e.g. "4.4.1"
    remote_mta: str = ""
    diagnostic: str = ""  # the remote reply, for Diagnostic-Code
    warned: bool = False  # a delay warning was sent for it
    delivered_to: list[str] = field(default_factory=list)
    """Local mailboxes that already have the message, for an address that stands for several
    (an alias queued unresolved, a bounce to a local sender): a retry skips them."""
    notice: str = ""
    """A success the sender asked to be told of (RFC 3461 NOTIFY=SUCCESS) and not told yet: the
    DSN action, ``delivered`` or ``relayed``. Cleared once the notice is queued."""


@dataclass(slots=True)
class QueuedMessage:
    """What the spool knows of one message (the body stays on disk)."""

    queue_id: str
    sender: str
    created: float
    recipients: dict[str, RecipientState]
    smtputf8: bool = False
    body_8bit: bool = False
    is_bounce: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    ret: str | None = None  # RFC 3461 RET and ENVID of the message
    envid: str | None = None
    dsn: dict[str, RecipientDSN] = field(default_factory=dict)  # address -> NOTIFY/ORCPT, when asked
    requiretls: bool = False  # RFC 8689: only over verified TLS, to servers that offer REQUIRETLS

    def wants(self, address: str, event: str) -> bool:
        """Whether the sender is to be told of *event* (SUCCESS, FAILURE, DELAY) for *address*."""
        return self.dsn.get(address, NO_DSN).wants(event)

    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients.values() if r.status == PENDING]

    def failed(self) -> list[RecipientState]:
        return [r for r in self.recipients.values() if r.status == FAILED]

    def unreported(self) -> list[RecipientState]:
        return [r for r in self.recipients.values() if r.status == DELIVERED and r.notice]

    def done(self) -> bool:
        return all(r.status in FINAL and not r.notice for r in self.recipients.values())

    def next_try(self) -> float:
        times = [r.next_try for r in self.pending()]
        return min(times) if times else 0.0

    def attempts(self) -> int:
        return max((r.attempts for r in self.recipients.values()), default=0)


def _envelope_line(msg: QueuedMessage) -> bytes:
    head = {
        "id": msg.queue_id, "sender": msg.sender, "created": msg.created,
        "recipients": list(msg.recipients), "smtputf8": msg.smtputf8, "body_8bit": msg.body_8bit,
        "is_bounce": msg.is_bounce,
    }
    if msg.ret:
        head["ret"] = msg.ret
    if msg.envid is not None:
        head["envid"] = msg.envid
    if msg.dsn:
        head["dsn"] = {a: d.to_json() for a, d in msg.dsn.items()}
    if msg.requiretls:
        head["requiretls"] = True
    return json.dumps(head, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


class Spool:
    """The on-disk queue. Methods block (fsync): call them from a thread pool."""

    def __init__(self, root: Path | str, syncer: DirectorySyncer | None = None) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.msg = self.root / "msg"
        self.state = self.root / "state"
        self.ctl = self.root / "ctl"
        self.syncer = syncer or DirectorySyncer()

    def ensure(self) -> None:
        for d in (self.tmp, self.msg, self.state, self.ctl):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- writing -----------------------------------------------------------------

    def prepare(self, msg: QueuedMessage, message: bytes) -> str:
        """Write envelope + message to tmp/ and fsync it; returns the tmp path (not queued yet)."""
        path = str(self.tmp / msg.queue_id)
        try:
            write_file_synced(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _envelope_line(msg), message,
                              store="queue")
        except OSError as e:
            self._unlink(path)
            raise SpoolError(f"cannot write {path}: {e.strerror}", e) from e
        return path

    def commit(self, queue_id: str) -> None:
        """Make a prepared message part of the queue (rename + directory fsync)."""
        try:
            os.rename(self.tmp / queue_id, self.msg / queue_id)
            self.syncer.sync(str(self.msg))
        except OSError as e:
            raise SpoolError(f"cannot commit {queue_id}: {e.strerror}", e) from e

    def abort(self, queue_id: str) -> None:
        self._unlink(str(self.tmp / queue_id))

    def add(self, msg: QueuedMessage, message: bytes) -> None:
        self.prepare(msg, message)
        try:
            self.commit(msg.queue_id)
        except SpoolError:
            self.abort(msg.queue_id)
            raise

    def record(self, queue_id: str, states: list[RecipientState]) -> None:
        """Append recipient outcomes and fsync before returning."""
        lines = b"".join(json.dumps(asdict(s), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                         + b"\n" for s in states)
        path = str(self.state / queue_id)
        try:
            existed = os.path.exists(path)
            write_file_synced(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, lines, store="queue")
            if not existed:
                self.syncer.sync(str(self.state))
        except OSError as e:
            raise SpoolError(f"cannot record state of {queue_id}: {e.strerror}", e) from e

    def remove(self, queue_id: str, *, strict: bool = False) -> None:
        """Forget a finished (or deleted) message: the message first (durably), then its state.

        In that order a crash in between leaves an orphan state log (cleaned at
        start-up), never a message whose recorded outcomes are gone. With *strict* the
        removal stands for the last outcomes, which are not recorded otherwise (see the
        runner): a directory that cannot be synced raises :class:`SpoolError`.
        """
        self._unlink(str(self.msg / queue_id))
        try:
            self.syncer.sync(str(self.msg))
        except OSError as e:
            if strict:
                raise SpoolError(f"cannot remove {queue_id} durably: {e.strerror}", e) from e
            log.warn("cannot sync spool directory after removing {queue_id}: {error}", queue_id=queue_id, error=e)
        self._unlink(str(self.state / queue_id))

    # -- reading -----------------------------------------------------------------

    def exists(self, queue_id: str) -> bool:
        return (self.msg / queue_id).exists()

    def load(self, queue_id: str) -> QueuedMessage | None:
        """The message's envelope with every recipient's latest state; None if gone."""
        try:
            with open(self.msg / queue_id, "rb") as f:
                head = json.loads(f.readline())
            recipients = {a: RecipientState(a) for a in head["recipients"]}
            msg = QueuedMessage(head["id"], head["sender"], head["created"], recipients,
                                head.get("smtputf8", False), head.get("body_8bit", False),
                                head.get("is_bounce", False), ret=head.get("ret"), envid=head.get("envid"),
                                dsn={a: RecipientDSN.from_json(d) for a, d in head.get("dsn", {}).items()},
                                requiretls=head.get("requiretls") is True)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            log.error("unreadable spool file {queue_id}: {error}", queue_id=queue_id, error=e)
            return None
        for state in self._states(queue_id):
            if state.address in recipients:
                recipients[state.address] = state
        return msg

    def _states(self, queue_id: str) -> Iterator[RecipientState]:
        try:
            with open(self.state / queue_id, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return
        for line in lines:
            if not line:
                continue
            try:
                yield RecipientState(**json.loads(line))
            except (ValueError, TypeError):  # a torn last line after a crash: ignore it
                log.warn("ignoring a damaged state line of {queue_id}", queue_id=queue_id)

    def body(self, queue_id: str) -> bytes:
        """The message bytes (after the envelope line)."""
        with open(self.msg / queue_id, "rb") as f:
            f.readline()
            return f.read()

    def ids(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.msg) if e.is_file())
        except FileNotFoundError:
            return []

    def load_all(self) -> list[QueuedMessage]:
        out = []
        for qid in self.ids():
            msg = self.load(qid)
            if msg is not None:
                out.append(msg)
        return out

    def clean_tmp(self) -> int:
        """Remove leftovers: uncommitted writes (a crash before the 250) and state logs
        of messages that are gone (deleted while an attempt was running)."""
        n = 0
        for directory, orphan in ((self.tmp, lambda name: True),
                                  (self.state, lambda name: not (self.msg / name).exists())):
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            for e in entries:
                if orphan(e.name):
                    self._unlink(e.path)
                    n += 1
        return n

    # -- control requests (CLI -> running server) ---------------------------------

    def request(self, action: str, queue_id: str = "") -> None:
        """Leave a flush/delete request for a running server to pick up."""
        self.ctl.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{time.time_ns():020d}-{action}-{queue_id or 'all'}"
        (self.ctl / name).write_bytes(b"")

    def take_requests(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        try:
            entries = list(os.scandir(self.ctl))
        except FileNotFoundError:
            return out
        for e in sorted(entries, key=lambda e: e.name):
            _, action, queue_id = (e.name.split("-", 2) + ["", ""])[:3]
            self._unlink(e.path)
            out.append((action, "" if queue_id == "all" else queue_id))
        return out

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warn("cannot remove {path}: {error}", path=path, error=e)
