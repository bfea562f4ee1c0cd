"""Atomic, durable delivery of one message to one or more Maildirs.

Follows "How a message is delivered" of https://cr.yp.to/proto/maildir.html:
create a uniquely named file in ``tmp/``, write and fsync it, then rename it
into ``new/``; the rename is the moment of delivery. mailstack also fsyncs
``new/`` before reporting success, so a crash after success loses nothing, and
it shares those directory fsyncs between concurrent deliveries
(:mod:`mailstack.maildir.dirsync`).

Each file is ``Return-Path: <sender>`` (RFC 5321 §4.4) and ``Delivered-To:
<recipient>`` (RFC 9228) followed by the message exactly as received; the
message is never copied per recipient. A delivery to several recipients is all
or nothing: every tmp file is written and fsynced before any is renamed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from mailstack.addresses import InvalidAddress
from mailstack.fsutil import write_fully
from mailstack.maildir.dirsync import DirectorySyncer
from mailstack.maildir.errors import (
    DeliveryError,
    from_os_error,
    invalid_mailbox,
    invalid_sender,
    quota_exceeded,
)
from mailstack.maildir.layout import FILE_MODE, InvalidFolder, MaildirLayout, mailbox_of
from mailstack.maildir.names import escape_hostname, unique_name
from mailstack.maildir.quota import DEFAULT_TTL, UsageCache
from mailstack.metrics import fsync_timer

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorFromThreads
    from twisted.python.threadpool import ThreadPool

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_UNSAFE_IN_HEADER = ("\r", "\n", "\x00")


@dataclass(frozen=True, slots=True)
class Recipient:
    """One local mailbox to deliver to.

    ``address`` is the canonical mailbox address; ``quota`` its limit in bytes
    and ``max_messages`` on its number of messages (0: unlimited); ``delivered_to``
    the address the message was sent to, for the Delivered-To header, when it
    differs (an alias).
    """

    address: str
    quota: int = 0
    delivered_to: str | None = None
    max_messages: int = 0

    def __post_init__(self) -> None:
        if self.quota < 0 or self.max_messages < 0:
            raise ValueError(f"quota must be >= 0, not {self.quota} bytes, {self.max_messages} messages")


@dataclass(slots=True)
class _File:
    """One recipient's copy on its way from tmp/ to new/."""

    recipient: Recipient
    maildir: Path
    mailbox: str
    prefix: bytes
    size: int
    letters: str = ""  # flag letters: the copy goes straight into cur/ with them (":2,FS")
    tmp_path: str = ""
    new_path: str = ""


class MaildirDelivery:
    """Delivers messages into the Maildirs under ``root``.

    ``deliver_sync`` blocks (fsync) and is safe to call from many threads at
    once; ``deliver`` runs it on ``threadpool`` and needs ``reactor``.
    """

    log = Logger()

    def __init__(
        self,
        root: Path | str,
        *,
        hostname: str,
        reactor: IReactorFromThreads | None = None,
        threadpool: ThreadPool | None = None,
        quota_cache_seconds: float = DEFAULT_TTL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = Path(root)
        self._layout = MaildirLayout(self.root)
        self._hostname = escape_hostname(hostname)
        self._reactor = reactor
        self._threadpool = threadpool
        self._syncer = DirectorySyncer()
        self._usage = UsageCache(ttl=quota_cache_seconds, monotonic=monotonic)

    # -- paths and quota ------------------------------------------------------

    def maildir_path(self, address: str, folder: str | None = None) -> Path:
        """The Maildir of ``address`` (or of its Maildir++ ``folder``), not created.

        Raises InvalidAddress or InvalidFolder; the path is always inside root.
        """
        return self._layout.maildir_path(address, folder)

    def check_quota(self, recipient: Recipient, size: int) -> None:
        """Raise DeliveryError if a message of ``size`` bytes would not fit.

        For RCPT time, with the SIZE= parameter (RFC 1870) as ``size``.
        """
        maildir = self._resolve(recipient, None)
        self._check_quota(recipient, str(mailbox_of(maildir)), size)

    @property
    def directory_syncs(self) -> int:
        """Directory fsyncs done so far (each may cover many deliveries)."""
        return self._syncer.sync_count()

    # -- delivery -------------------------------------------------------------

    def deliver_one(
        self,
        address: str,
        message: bytes,
        *,
        sender: str = "",
        folder: str | None = None,
    ) -> str:
        """Deliver to one mailbox without quota; blocks; returns the new file's path."""
        return self.deliver_sync(sender, [Recipient(address)], message, folder)[0]

    def deliver_sync(
        self,
        sender: str,
        recipients: Sequence[Recipient],
        message: bytes,
        folder: str | None = None,
        letters: str = "",
    ) -> list[str]:
        """Deliver ``message`` (CRLF lines) to every recipient, all or nothing; with flag
        ``letters`` (Maildir info, "FS"), into ``cur/`` carrying them.

        Blocks until every copy is in ``new/`` and durable; returns their
        paths in recipient order. Raises DeliveryError, leaving nothing
        visible and no tmp files behind; the one exception is a failed fsync
        of ``new/`` after the renames, where the copies stay visible but are
        not known to be durable (the error is temporary: a retry may deliver
        twice, never lose the message).
        """
        if not recipients:
            return []
        return_path = _return_path(sender)
        files = [
            self._prepare(rcpt, return_path, len(message), folder)
            for rcpt in recipients
        ]
        for f in files:
            f.letters = letters
        for f in files:
            self._create(f)
        self._write_all(files, message)
        self._publish(files)
        self._make_durable(files)
        for f in files:
            self._usage.add(f.mailbox, f.size)
        self.log.debug(
            "delivered {size} bytes to {rcpt_count} mailboxes",
            size=len(message),
            rcpt_count=len(files),
        )
        return [f.new_path for f in files]

    async def deliver(
        self,
        sender: str,
        recipients: Sequence[Recipient],
        message: bytes,
        folder: str | None = None,
        letters: str = "",
    ) -> list[str]:
        """``deliver_sync`` on the thread pool; wrap with Deferred.fromCoroutine.

        Cancelling the wait does not stop a delivery already running.
        """
        if self._reactor is None or self._threadpool is None:
            raise RuntimeError(
                "MaildirDelivery.deliver needs a reactor and a threadpool"
            )
        paths: list[str] = await deferToThreadPool(
            self._reactor,
            self._threadpool,
            self.deliver_sync,
            sender,
            tuple(recipients),
            message,
            folder,
            letters,
        )
        return paths

    # -- phase 0: validate, check quotas, then create directories ---------------

    def _resolve(self, recipient: Recipient, folder: str | None) -> Path:
        try:
            return self._layout.maildir_path(recipient.address, folder)
        except (InvalidAddress, InvalidFolder) as exc:
            self.log.warn(
                "refused delivery to {recipient} folder {folder}: {error}",
                recipient=recipient.address,
                folder=folder,
                error=exc,
            )
            raise invalid_mailbox(recipient.address, exc) from exc

    def _prepare(
        self,
        recipient: Recipient,
        return_path: bytes,
        body_size: int,
        folder: str | None,
    ) -> _File:
        maildir = self._resolve(recipient, folder)
        delivered_to = _header_value(recipient.delivered_to or recipient.address)
        if delivered_to is None:
            raise invalid_mailbox(recipient.address)
        prefix = b"%sDelivered-To: %s\r\n" % (return_path, delivered_to)
        mailbox = str(mailbox_of(maildir))
        size = len(prefix) + body_size
        self._check_quota(recipient, mailbox, size)
        return _File(recipient, maildir, mailbox, prefix, size)

    def _create(self, f: _File) -> None:
        try:
            self._layout.ensure(f.maildir)
        except OSError as exc:
            raise self._failure(exc, f.recipient, "creating the Maildir") from exc

    def _check_quota(self, recipient: Recipient, mailbox: str, size: int) -> None:
        if recipient.quota <= 0 and recipient.max_messages <= 0:
            return
        try:
            used = self._usage.usage(mailbox)
        except OSError as exc:
            raise self._failure(exc, recipient, "measuring the mailbox") from exc
        fits = recipient.quota <= 0 or used.octets + size <= recipient.quota
        if fits and (recipient.max_messages <= 0 or used.messages < recipient.max_messages):
            return
        self.log.info(
            "quota refused {size} bytes for {recipient}: {used} of {quota} bytes, {count} of {limit} messages used",
            size=size,
            recipient=recipient.address,
            used=used.octets,
            quota=recipient.quota or "unlimited",
            count=used.messages,
            limit=recipient.max_messages or "unlimited",
        )
        raise quota_exceeded(recipient.address, message_alone=0 < recipient.quota < size)

    # -- phase 1: write and fsync every tmp file --------------------------------

    def _write_all(self, files: list[_File], message: bytes) -> None:
        for index, f in enumerate(files):
            try:
                self._write_file(f, message)
            except OSError as exc:
                _discard(files[:index])
                raise self._failure(exc, f.recipient, "writing") from exc

    def _write_file(self, f: _File, message: bytes) -> None:
        name = unique_name(self._hostname, f.size)
        maildir = str(f.maildir)
        f.tmp_path = os.path.join(maildir, "tmp", name)
        f.new_path = (os.path.join(maildir, "cur", f"{name}:2,{f.letters}") if f.letters
                      else os.path.join(maildir, "new", name))
        fd = self._open_tmp(f)
        complete = False
        try:
            try:
                write_fully(fd, f.prefix, message)
                with fsync_timer("maildir"):
                    os.fsync(fd)
            finally:
                os.close(fd)
            complete = True
        finally:
            if not complete:
                _unlink_quietly(f.tmp_path)

    def _open_tmp(self, f: _File) -> int:
        try:
            return os.open(f.tmp_path, _OPEN_FLAGS, FILE_MODE)
        except FileNotFoundError:
            # The Maildir was removed since it was created: create it again, once.
            self._layout.forget(f.maildir)
            self._layout.ensure(f.maildir)
            return os.open(f.tmp_path, _OPEN_FLAGS, FILE_MODE)

    # -- phase 2: rename into new/ and make the renames durable -----------------

    def _publish(self, files: list[_File]) -> None:
        for index, f in enumerate(files):
            try:
                os.rename(f.tmp_path, f.new_path)
            except OSError as exc:
                self._withdraw(files[:index])
                _discard(files[index:])
                raise self._failure(exc, f.recipient, "renaming into new/") from exc

    def _withdraw(self, published: list[_File]) -> None:
        """Undo renames already made when a later one failed."""
        for f in published:
            try:
                os.unlink(f.new_path)
            except OSError as exc:
                self.log.error(
                    "could not withdraw {path} after a failed delivery "
                    "(it may be delivered twice): {error}",
                    path=f.new_path,
                    error=exc,
                )

    def _make_durable(self, files: list[_File]) -> None:
        directories = {
            os.path.dirname(f.new_path): f.recipient for f in reversed(files)
        }
        for directory, recipient in directories.items():
            try:
                self._syncer.sync(directory)
            except OSError as exc:
                raise self._failure(
                    exc, recipient, "syncing new/ (message visible)"
                ) from exc

    def _failure(self, exc: OSError, recipient: Recipient, stage: str) -> DeliveryError:
        self.log.error(
            "delivery to {recipient} failed while {stage}: {error}",
            recipient=recipient.address,
            stage=stage,
            error=exc,
        )
        return from_os_error(exc, recipient.address)


def _return_path(sender: str) -> bytes:
    """The Return-Path line (RFC 5321 §4.4); ``""`` or ``"<>"`` is the null sender."""
    value = _header_value("" if sender == "<>" else sender)
    if value is None:
        raise invalid_sender()
    return b"Return-Path: <%s>\r\n" % value


def _header_value(text: str) -> bytes | None:
    """UTF-8 (RFC 6532) bytes of an address for a header; None if unsafe there."""
    if any(c in text for c in _UNSAFE_IN_HEADER):
        return None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None


def _discard(files: list[_File]) -> None:
    for f in files:
        if f.tmp_path:
            _unlink_quietly(f.tmp_path)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        MaildirDelivery.log.warn(
            "could not remove {path}: {error}", path=path, error=exc
        )
