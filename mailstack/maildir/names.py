"""Unique file names for messages in a Maildir.

The Maildir specification (https://cr.yp.to/proto/maildir.html, "How a message
is delivered") asks for names of the form ``time.unique.hostname`` that no
other delivery, on this host or any other sharing the directory, can produce.
mailstack uses the modern form that Courier and Dovecot write::

    <seconds>.M<microseconds>P<pid>Q<counter>R<random hex>.<hostname>,S=<size>

``Q`` is a per-process delivery counter (unique across threads), ``P`` the
process id (unique across processes on one host), ``R`` 64 random bits (unique
across hosts and pid reuse). ``,S=<size>`` is the Maildir++ size field: the
size in bytes of the file as written, so quota code can sum a mailbox without
a stat per file. In the hostname, ``/`` and ``:`` are written as ``\\057`` and
``\\072`` (maildir.html); ``,`` is written as ``\\054`` as well, so a host name
can never forge a ``,S=`` field, and ``\\`` as ``\\134`` so the escaping can be
undone.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time

_ESCAPES = {"\\": "\\134", "/": "\\057", ":": "\\072", ",": "\\054"}
_SIZE_FIELD = re.compile(r",S=(\d+)(?=,|$)")

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def escape_hostname(hostname: str) -> str:
    """Return ``hostname`` made safe for the host part of a Maildir name.

    Raises ValueError for an empty name or one with control characters or
    white space.
    """
    if not hostname or not hostname.isprintable() or any(c.isspace() for c in hostname):
        raise ValueError(f"unusable Maildir hostname {hostname!r}")
    return "".join(_ESCAPES.get(c, c) for c in hostname)


def _next_counter() -> int:
    with _counter_lock:
        return next(_counter)


def unique_name(escaped_hostname: str, size: int) -> str:
    """A new unique base name (no ``:2,`` info) for a file of ``size`` bytes.

    ``escaped_hostname`` must come from :func:`escape_hostname`.
    """
    now = time.time_ns()
    seconds, rest = divmod(now, 1_000_000_000)
    micros = rest // 1000
    random_hex = os.urandom(8).hex()
    return (
        f"{seconds}.M{micros}P{os.getpid()}Q{_next_counter()}R{random_hex}"
        f".{escaped_hostname},S={size}"
    )


def size_from_name(name: str) -> int | None:
    """The ``,S=`` size of a Maildir file name, or None when it has none.

    The info part (``:2,FLAGS``, maildir.html "What can I do with cur?") is
    ignored.
    """
    base = name.split(":", 1)[0]
    match = _SIZE_FIELD.search(base)
    return int(match.group(1)) if match else None
