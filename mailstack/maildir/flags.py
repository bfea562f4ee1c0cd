"""Message flags in Maildir file names and the per-folder keyword table.

Maildir (https://cr.yp.to/proto/maildir.html, "What can I do with cur?") keeps
flags in the info suffix ``:2,<letters>`` in ASCII order: ``D`` draft,
``F`` flagged, ``R`` replied, ``S`` seen, ``T`` trashed. IMAP system flags
(RFC 3501 §2.3.2) map to them one to one. Keywords map to the lower-case
letters ``a``-``z`` through a per-folder ``mailstack-keywords`` file holding one
keyword per line (line n is letter n), the scheme Dovecot's
``dovecot-keywords`` uses; so a folder can hold at most 26 distinct keywords.
``\\Recent`` is never stored: it is session state (RFC 3501 §2.3.2).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

SYSTEM_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
LETTER_FLAGS = {v: k for k, v in SYSTEM_LETTERS.items()}
SYSTEM_FLAGS = frozenset(SYSTEM_LETTERS)
_CANONICAL = {k.lower(): k for k in SYSTEM_LETTERS} | {"\\recent": "\\Recent"}
KEYWORDS_FILE = "mailstack-keywords"
MAX_KEYWORDS = 26


class TooManyKeywords(Exception):
    """The folder already uses all 26 keyword letters."""


def canonical_flag(flag: str) -> str:
    """``\\SEEN`` -> ``\\Seen``; keywords are kept as given (compared case-insensitively)."""
    return _CANONICAL.get(flag.lower(), flag)


def split_name(name: str) -> tuple[str, str]:
    """``base:2,FS`` -> (``base``, ``FS``); a name without info has ``""``."""
    base, sep, info = name.partition(":")
    if sep and info.startswith("2,"):
        return base, info[2:]
    return base, ""


class Keywords:
    """The keyword <-> letter table of one folder, persisted on change."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / KEYWORDS_FILE
        self.names: list[str] = []
        self._mtime = -1
        self.load()

    def load(self) -> None:
        self.apply(self.read())

    def read(self) -> tuple[int, list[str]] | None:
        """The file's (mtime, names) if it changed since it was last applied; thread safe."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return (-1, [])
        if st.st_mtime_ns == self._mtime:
            return None
        try:
            text = self.path.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return (-1, [])
        return st.st_mtime_ns, [line.strip() for line in text.splitlines() if line.strip()][:MAX_KEYWORDS]

    def apply(self, read: tuple[int, list[str]] | None) -> None:
        """Take what :meth:`read` found (on the thread that owns the in-memory state)."""
        if read is not None:
            self._mtime, self.names = read

    def letter(self, keyword: str, *, create: bool) -> str | None:
        low = keyword.lower()
        for i, name in enumerate(self.names):
            if name.lower() == low:
                return chr(ord("a") + i)
        if not create:
            return None
        if len(self.names) >= MAX_KEYWORDS:
            raise TooManyKeywords(keyword)
        self.names.append(keyword)
        self._save()
        return chr(ord("a") + len(self.names) - 1)

    def _save(self) -> None:
        self.apply(self.write(self.names))

    def write(self, names: list[str]) -> tuple[int, list[str]]:
        """Store ``names`` as the table (blocking; thread safe); what :meth:`apply` then takes."""
        tmp = self.path.with_name(f"{self.path.name}.tmp.{os.getpid()}.{threading.get_ident()}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(n + "\n" for n in names))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return self.path.stat().st_mtime_ns, list(names)

    def missing(self, flags: set[str] | frozenset[str] | list[str]) -> list[str]:
        """Keywords among ``flags`` that have no letter yet (in order, without repeats)."""
        out: list[str] = []
        for flag in flags:
            if flag.startswith("\\") or self.letter(flag, create=False) is not None:
                continue
            if flag.lower() not in (o.lower() for o in out):
                out.append(flag)
        return out

    def flags_of(self, letters: str) -> list[str]:
        out = []
        for ch in letters:
            if ch in LETTER_FLAGS:
                out.append(LETTER_FLAGS[ch])
            elif "a" <= ch <= "z":
                i = ord(ch) - ord("a")
                if i < len(self.names):
                    out.append(self.names[i])
        return out

    def letters_of(self, flags: set[str] | frozenset[str] | list[str]) -> str:
        """Flags -> sorted info letters, creating keyword letters as needed."""
        letters = set()
        for flag in flags:
            if flag in SYSTEM_LETTERS:
                letters.add(SYSTEM_LETTERS[flag])
            elif not flag.startswith("\\"):
                letter = self.letter(flag, create=True)
                assert letter is not None
                letters.add(letter)
        return "".join(sorted(letters))
