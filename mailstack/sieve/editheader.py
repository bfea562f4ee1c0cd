"""Sieve editheader (RFC 5293): the header fields a script adds and deletes.

A run keeps the fields as raw ``(lower-case name, raw field)`` pairs once a script first
changes them; later tests read the changed header (§7) and the outcome carries it, so
the delivered copies have it. Added fields are folded and, when not ASCII, RFC 2047
encoded (§4 lets an implementation encode rather than refuse).

Local policy (§6): ``Received`` and ``Auto-Submitted`` may never be deleted, and neither
may ``Delivered-To`` here, which redirect's loop check reads; an attempt is silently
ignored, as §6 says. A field is at most MAX_FIELD octets once encoded, and a run adds at
most MAX_ADDED fields; past either the run fails (the original copy is kept).
"""

from __future__ import annotations

import re
from email.header import Header

PROTECTED = frozenset({"received", "auto-submitted", "delivered-to"})  # never deleted
MAX_FIELD = 8192  # octets of one added field, encoded and folded
MAX_ADDED = 100  # fields one run may add
FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+\Z")  # RFC 5322 §3.6.8 field-name


class EditError(ValueError):
    """A field that cannot be added (too long)."""


def name_error(name: str) -> str | None:
    if not FIELD_NAME.match(name):
        return f"{name!r} is not a header field name"
    return None


def field(name: str, value: str, linesep: bytes) -> bytes:
    """One header field, folded, RFC 2047 encoded when not ASCII (RFC 5293 §4)."""
    unfolded = " ".join(value.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    charset = "us-ascii" if unfolded.isascii() else "utf-8"
    sep = linesep.decode("ascii")
    encoded = Header(unfolded, charset, header_name=name).encode(linesep=sep) if unfolded else ""
    raw = f"{name}: {encoded}{sep}".encode("ascii", "replace")
    if len(raw) > MAX_FIELD:
        raise EditError(f"an added {name} field is longer than {MAX_FIELD} octets")
    return raw


__all__ = ["MAX_ADDED", "MAX_FIELD", "PROTECTED", "EditError", "field", "name_error"]
