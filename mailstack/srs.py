"""Sender Rewriting Scheme: forwarded mail leaves with an envelope sender in our own domain.

When an alias forwards mail off-site, the next hop checks SPF against the
envelope sender's domain, which did not authorize us, so the sender is
rewritten to an address of the alias's domain that encodes the original::

    SRS0=<hash>=<day>=<original domain>=<original local part>@<alias domain>

``hash`` is the first 4 characters of base64(HMAC-SHA1(secret, day + domain +
local part)), lower-cased input; ``day`` is the day number modulo 1024 in two
base32 characters. A bounce sent to that address comes back to us; the hash
and the day (at most ``MAX_AGE_DAYS`` old) prove we made it, and it is
relayed to the original sender. Anything else addressed as ``SRS0=`` gets 550,
so the scheme is no open relay. The null sender is never rewritten.

This is the Shevek/libsrs2 form (without SRS1 for forwarding chains: a
forwarded SRS0 address is simply wrapped again).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from pathlib import Path

from mailstack.fsutil import fsync_directory, write_file_synced

MAX_AGE_DAYS = 21
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_PREFIX = "srs0="


class SRS:
    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.clock = clock

    def _day(self) -> int:
        return int(self.clock() // 86400) % 1024

    def _hash(self, day: str, domain: str, local: str) -> str:
        mac = hmac.new(self.secret, (day + domain + local).lower().encode("utf-8"), hashlib.sha1).digest()
        return base64.b64encode(mac).decode("ascii")[:4]

    def forward(self, sender: str, domain: str) -> str:
        """The envelope sender for ``sender``'s mail forwarded from an alias in ``domain``."""
        local, at, original_domain = sender.rpartition("@")
        if not at or not sender or original_domain.lower() == domain.lower():
            return sender
        day = self._day()
        tt = _BASE32[day >> 5] + _BASE32[day & 31]
        return f"SRS0={self._hash(tt, original_domain, local)}={tt}={original_domain}={local}@{domain}"

    def reverse(self, address: str) -> str | None:
        """The original sender an SRS0 address of ours stands for; None when it is not one (or too old)."""
        local, at, _ = address.rpartition("@")
        if not at or not local.lower().startswith(_PREFIX):
            return None
        parts = local[len(_PREFIX):].split("=", 3)
        if len(parts) != 4:
            return None
        given, tt, domain, original_local = parts
        if len(tt) != 2 or not all(c in _BASE32 for c in tt.upper()) or not domain or not original_local:
            return None
        if not hmac.compare_digest(given.lower().encode(), self._hash(tt.upper(), domain, original_local).lower().encode()):
            return None
        day = _BASE32.index(tt[0].upper()) * 32 + _BASE32.index(tt[1].upper())
        if (self._day() - day) % 1024 > MAX_AGE_DAYS:
            return None
        return f"{original_local}@{domain}"

    @staticmethod
    def is_srs(address: str) -> bool:
        return address.rpartition("@")[0].lower().startswith(_PREFIX)


def load_secret(path: Path) -> bytes:
    """The secret in ``path``, made (32 random bytes, mode 0600) the first time (blocking: at start)."""
    try:
        data = path.read_bytes()
        if len(data) >= 16:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp.{os.getpid()}")
    write_file_synced(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, os.urandom(32), mode=0o600)
    os.replace(tmp, path)
    fsync_directory(path.parent)
    return path.read_bytes()
