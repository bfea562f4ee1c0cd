"""Maildir storage: atomic, durable local delivery.

Format: https://cr.yp.to/proto/maildir.html (tmp/, new/, cur/; unique names;
rename from tmp/ to new/ as the moment of delivery) with the Maildir++
extensions Courier and Dovecot use (``.Folder`` sub-Maildirs marked by a
``maildirfolder`` file, ``,S=<size>`` in file names).

How a delivery works (:class:`MaildirDelivery`):

1. Validate every recipient: the address goes through
   :func:`mailstack.addresses.parse`, each path component is checked, and the
   resolved path must lie inside the root (:mod:`.layout`). Check quotas from
   a per-mailbox usage cache (:mod:`.quota`). Create missing directories.
2. For every recipient, write ``Return-Path``/``Delivered-To`` plus the shared
   message bytes to a uniquely named file in ``tmp/`` (:mod:`.names`) and fsync
   it. If any write fails, remove the tmp files written so far and fail: no
   recipient got anything.
3. Rename every file into ``new/``, then fsync each ``new/`` directory; fsyncs
   of the same directory by concurrent deliveries are coalesced (:mod:`.dirsync`).
   Only then report success.

Failures are :class:`DeliveryError` values with an RFC 3463 status and a
temporary/permanent flag (:mod:`.errors`).

Reading side (IMAP): :mod:`.folders` (``MailStore``: folders, subscriptions,
special-use), :mod:`.mailbox` (``Mailbox``: UIDs, flags, \\Recent, append,
copy, expunge), :mod:`.index` (the persistent UID index and message-facts
cache), :mod:`.flags` (info-suffix letters and the keyword table).
"""

from __future__ import annotations

from mailstack.maildir.deliver import MaildirDelivery, Recipient
from mailstack.maildir.errors import DeliveryError
from mailstack.maildir.folders import FolderError, MailStore
from mailstack.maildir.layout import InvalidFolder, MaildirLayout
from mailstack.maildir.mailbox import Mailbox

__all__ = [
    "DeliveryError",
    "FolderError",
    "InvalidFolder",
    "MaildirDelivery",
    "MailStore",
    "Mailbox",
    "MaildirLayout",
    "Recipient",
]
