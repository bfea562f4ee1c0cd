"""Values worked out of messages that never change, kept per folder across restarts.

SORT and THREAD need a few values of each message's header (its date, base
subject, first address, Message-ID and references). Reading 100,000 headers
takes seconds; reading what was worked out before takes a fraction of that. So
each kind of value has a file in the folder, ``mailstack-derived.<name>``::

    mailstack-derived 1 <uidvalidity>
    [[uid, value], [uid, value], ...]      one JSON line per batch that was worked out
    ...

A message's header never changes, so a value once written stays true for its
UID under that UIDVALIDITY; the file of another UIDVALIDITY is ignored and
replaced. It is a cache: written without fsync, a torn or damaged line costs
only its own values (worked out again), and a file that cannot be read is as if
it were not there. When it holds many batches, or many values of messages that
are gone, it is written again as one line (temp file and rename). Blocking: call
these on the io pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mailstack.memory import collector_paused

PREFIX = "mailstack-derived."
_MAGIC = "mailstack-derived 1"
MAX_BATCHES = 64  # lines before the file is written again as one
MAX_FILE = 256 << 20  # a bigger file is not read (damage, or not ours)


def _path(folder: Path, name: str) -> Path:
    if not name.isalnum():
        raise ValueError(f"bad derived value name {name!r}")
    return folder / f"{PREFIX}{name}"


def load(folder: Path, uidvalidity: int, name: str) -> tuple[dict[int, Any], int]:
    """The saved values (UID -> value, JSON types: tuples come back as lists) and how many
    batch lines the file has; ({}, 0) when there is none for this UIDVALIDITY."""
    path = _path(folder, name)
    try:
        if path.stat().st_size > MAX_FILE:
            return {}, 0
        with open(path, encoding="utf-8") as f:
            head = f.readline()
            if head.rstrip("\n") != f"{_MAGIC} {uidvalidity}":
                return {}, 0
            out: dict[int, Any] = {}
            batches = 0
            with collector_paused():  # a few hundred thousand objects at once
                for line in f:
                    batches += 1
                    _take(line, out)
            return out, batches
    except (OSError, UnicodeDecodeError):
        return {}, 0


def _take(line: str, out: dict[int, Any]) -> None:
    """The pairs of one batch line into ``out``; a line torn by a crash gives nothing."""
    try:
        pairs = json.loads(line)
    except (ValueError, RecursionError):  # torn, or not ours
        return
    if isinstance(pairs, list):
        for pair in pairs:
            if isinstance(pair, list) and len(pair) == 2 and type(pair[0]) is int:
                out[pair[0]] = pair[1]


def append(folder: Path, uidvalidity: int, name: str, items: Iterable[tuple[int, Any]], batches: int,
           everything: dict[int, Any] | None = None) -> int:
    """Add a batch of values; returns the file's batch count after. With ``batches`` at
    MAX_BATCHES (or 0: no file yet, or one of another UIDVALIDITY) the file is written anew,
    from ``everything`` when given (every value known, ``items`` among them), else from
    ``items`` alone. Strings are written as JSON escapes (ASCII), so any text goes."""
    path = _path(folder, name)
    pairs = list(items)
    if batches == 0 or batches >= MAX_BATCHES:
        source = everything if everything is not None else dict(pairs)
        tmp = folder / f"{PREFIX}{name}.tmp.{os.getpid()}.{threading.get_ident()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(f"{_MAGIC} {uidvalidity}\n")
                f.write(json.dumps(list(source.items()), separators=(",", ":")) + "\n")
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return 1
    line = (json.dumps(pairs, separators=(",", ":")) + "\n").encode("utf-8")
    head = f"{_MAGIC} {uidvalidity}\n".encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    try:
        # the file may be another folder's by now (deleted, and one made again under the name)
        if os.pread(fd, len(head), 0) != head:
            return 0
        while line:
            line = line[os.write(fd, line):]
    finally:
        os.close(fd)
    return batches + 1
