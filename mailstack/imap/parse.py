"""IMAP command parsing: bytes of one complete command (literals included) -> tokens.

RFC 3501 §9 (formal syntax): atoms, quoted strings, literals (``{n}`` and the
RFC 7888 non-synchronizing ``{n+}``), parenthesised lists, NIL. The tokenizer
reads the widest bare word the grammar allows (list-char: ATOM-CHAR, ``]``,
``%``, ``*``; ``[`` is an ATOM-CHAR) and the typed readers (:func:`atom`,
:func:`astring`, :func:`list_mailbox`) narrow it. Fetch attributes such as
``BODY.PEEK[HEADER.FIELDS (A B)]<0.10>`` are read as one atom, the section
included, and taken apart in :mod:`mailstack.imap.fetch`.
Sequence sets (§9 ``sequence-set``) and modified UTF-7 mailbox names
(§5.1.3) live here too. Everything here is pure and raises :class:`ParseError`.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+?)\}\r?\n?$")
_LITERAL = re.compile(rb"\{(\d{1,20})(\+?)\}\r?\n")
_TAG_CHARS = re.compile(r"^[\x21-\x7e]+$")
_ATOM_END = frozenset(b" ()\"")  # RFC 3501 §9 atom-specials that end a token
_NOT_LIST_CHAR = ' (){"\\'  # atom-specials but list-wildcards and resp-specials
_NOT_ASTRING = _NOT_LIST_CHAR + "%*"  # ASTRING-CHAR = ATOM-CHAR / resp-specials
_NOT_ATOM = _NOT_ASTRING + "]"
_SECTION_KEYWORDS = {b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"}
MAX_DEPTH = 64  # parenthesised lists inside one another


class ParseError(ValueError):
    """The command cannot be parsed; the session answers BAD."""


@dataclass(frozen=True, slots=True)
class Atom:
    value: str

    def upper(self) -> str:
        return self.value.upper()


@dataclass(frozen=True, slots=True)
class String:
    """A quoted string or a literal (``literal`` True)."""

    value: bytes
    literal: bool = False
    binary: bool = False  # a literal8 (RFC 3516 §4.3): may hold NUL

    def text(self) -> str:
        try:
            return self.value.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("string is not UTF-8") from None


Token = Atom | String | list  # list holds Tokens


def split_tag(data: bytes) -> tuple[str, str, bytes]:
    """``a1 UID FETCH ...`` -> (tag, command name, rest); raises ParseError."""
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ", 2)
    try:
        tag = parts[0].decode("ascii")
    except UnicodeDecodeError:
        raise ParseError("bad tag") from None
    if not tag or not _TAG_CHARS.match(tag) or any(c in tag for c in '(){%*"\\+'):
        raise ParseError("bad tag")
    if len(parts) < 2 or not parts[1]:
        raise ParseError("missing command")
    try:
        name = parts[1].decode("ascii").upper()
    except UnicodeDecodeError:
        raise ParseError("bad command name") from None
    rest = data[len(parts[0]) + 1 + len(parts[1]):]
    if rest.startswith(b" "):
        rest = rest[1:]
    elif rest:
        raise ParseError("bad command")
    return tag, name, rest


class Tokenizer:
    """Reads tokens from the arguments of one command."""

    def __init__(self, data: bytes) -> None:
        self.data = data  # without the CRLF that ends the command
        self.pos = 0
        self.depth = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def tokens(self) -> list[Token]:
        out = self._sequence(top=True)
        return out

    def _sequence(self, top: bool) -> list[Token]:
        items: list[Token] = []
        first = True
        while True:
            if self.at_end():
                if not top:
                    raise ParseError("unclosed parenthesis")
                return items
            c = self.data[self.pos:self.pos + 1]
            if c == b")":
                if top:
                    raise ParseError("unexpected )")
                self.pos += 1
                self.depth -= 1
                return items
            if not first:
                if c != b" ":
                    raise ParseError("expected space")
                while self.data[self.pos:self.pos + 1] == b" ":  # one SP, but a run is taken too:
                    self.pos += 1  # imapclient puts two between MULTIAPPEND's literals
                if self.at_end() or self.data[self.pos:self.pos + 1] == b")":
                    if not top and self.data[self.pos:self.pos + 1] == b")":
                        raise ParseError("space before )")
                    raise ParseError("unexpected space")
            elif c == b" ":
                raise ParseError("unexpected space")
            items.append(self._token())
            first = False

    def _token(self) -> Token:
        c = self.data[self.pos:self.pos + 1]
        if c == b"(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ParseError("lists nested too deeply")
            self.pos += 1
            if self.data[self.pos:self.pos + 1] == b")":
                self.pos += 1
                self.depth -= 1
                return []
            return self._sequence(top=False)
        if c == b'"':
            return self._quoted()
        binary = c == b"~" and self.data[self.pos + 1:self.pos + 2] == b"{"
        if c == b"{" or binary:
            m = _LITERAL.match(self.data, self.pos + binary)
            if m:
                n = int(m.group(1))
                start = m.end()
                if start + n > len(self.data):
                    raise ParseError("literal is short")
                self.pos = start + n
                value = self.data[start:start + n]
                if not binary and b"\0" in value:  # RFC 3501 §9: CHAR8 is %x01-ff
                    raise ParseError("NUL in a literal (only a literal8, ~{n}, may hold one)")
                return String(value, literal=True, binary=binary)
            if binary:
                raise ParseError("bad literal8")
        return self._atom()

    def _quoted(self) -> String:
        out = bytearray()
        i = self.pos + 1
        data = self.data
        while i < len(data):
            ch = data[i]
            if ch == 0x5C:  # backslash: only \\ and \" are allowed (RFC 3501 §9 quoted-specials)
                if i + 1 < len(data) and data[i + 1] in (0x5C, 0x22):
                    out.append(data[i + 1])
                    i += 2
                    continue
                raise ParseError("bad escape in quoted string")
            if ch == 0x22:
                self.pos = i + 1
                return String(bytes(out))
            if ch in (0x0D, 0x0A, 0x00):
                raise ParseError("CR, LF or NUL in quoted string")
            out.append(ch)
            i += 1
        raise ParseError("unterminated quoted string")

    def _atom(self) -> Atom:
        """An atom, or an astring/list-mailbox run, or a fetch attribute with its section.

        RFC 3501 §9: ``[`` is an ATOM-CHAR and ``]`` a resp-special that ASTRING-CHAR and
        list-char allow, so both may appear in a name (``foo[bar``, ``a]b``). Only after
        ``BODY``, ``BODY.PEEK`` and the RFC 3516 ``BINARY`` forms does ``[`` open a
        ``section``, which runs to its ``]`` and may hold spaces, a header-list and
        quoted field names; when it is never closed the run is read as a plain atom
        (a FETCH then answers BAD for the unknown attribute).
        """
        data = self.data
        start = self.pos
        i = self._atom_run(start, start)
        if data[i:i + 1] == b"[" and data[start:i].upper() in _SECTION_KEYWORDS:
            end = self._section_end(i + 1)
            # the <origin.octets> partial, if any; an unclosed "[" is just an ATOM-CHAR
            i = self._atom_run(end, end) if end is not None else self._atom_run(i, i + 1)
        if i == start:
            raise ParseError("expected an atom")
        self.pos = i
        try:
            return Atom(data[start:i].decode("utf-8"))
        except UnicodeDecodeError:
            raise ParseError("atom is not UTF-8") from None

    def _atom_run(self, start: int, i: int) -> int:
        """The end of a run of ASTRING-CHAR / list-char octets; stops before a section's ``[``."""
        data = self.data
        while i < len(data):
            ch = data[i]
            if ch in _ATOM_END:
                break
            if ch < 0x20 or ch == 0x7F:
                raise ParseError("control character")
            if ch == 0x5B and data[start:i].upper() in _SECTION_KEYWORDS:
                break
            i += 1
        return i

    def _section_end(self, i: int) -> int | None:
        """Just past the ``]`` closing a section whose text starts at ``i``, or None.

        The section text is ``section-spec`` (RFC 3501 §9): part numbers, HEADER,
        TEXT, MIME, and ``HEADER.FIELDS (name ...)`` whose names are astrings, so
        spaces, parentheses, quoted strings and literals are read inside it.
        """
        data = self.data
        while i < len(data):
            ch = data[i]
            if ch == 0x5D:  # "]"
                return i + 1
            if ch == 0x22:  # a quoted field name
                j = i + 1
                while j < len(data) and data[j] != 0x22:
                    j += 2 if data[j] == 0x5C else 1
                if j >= len(data):
                    return None
                i = j + 1
                continue
            if ch == 0x7B:  # a literal field name
                m = _LITERAL.match(data, i)
                if m:
                    i = m.end() + int(m.group(1))
                    continue
            if ch in (0x0D, 0x0A, 0x00, 0x5B):
                return None
            i += 1
        return None


def tokenize(rest: bytes) -> list[Token]:
    return Tokenizer(rest).tokens()


# -- typed argument readers -----------------------------------------------------------


def astring(tok: Token) -> str:
    """``astring`` (RFC 3501 §9): a string, or 1*ASTRING-CHAR (atom chars and ``]``)."""
    if isinstance(tok, String):
        return tok.text()
    if isinstance(tok, Atom) and (not any(c in _NOT_ASTRING for c in tok.value) or (
            tok.value.startswith("\\") and " " not in tok.value)):
        return tok.value
    raise ParseError("expected a string")


def astring_bytes(tok: Token) -> bytes:
    if isinstance(tok, String):
        return tok.value
    return astring(tok).encode("utf-8")


def nstring_or_atom(tok: Token) -> str:
    if isinstance(tok, String):
        return tok.text()
    if isinstance(tok, Atom):
        return tok.value
    raise ParseError("expected a string")


def list_mailbox(tok: Token) -> str:
    """``list-mailbox`` (RFC 3501 §9): an astring that may hold ``%`` and ``*``."""
    if isinstance(tok, String):
        return tok.text()
    if isinstance(tok, Atom) and not any(c in _NOT_LIST_CHAR for c in tok.value):
        return tok.value
    raise ParseError("expected a mailbox pattern")


def atom(tok: Token) -> str:
    """``atom`` (RFC 3501 §9): no atom-specials, so no ``]`` and no wildcards either."""
    if isinstance(tok, Atom) and not any(c in _NOT_ATOM for c in tok.value):
        return tok.value
    raise ParseError("expected an atom")


def number(tok: Token, *, nonzero: bool = False) -> int:
    if isinstance(tok, Atom) and tok.value.isdigit() and tok.value.isascii() and len(tok.value) <= 10:
        n = int(tok.value)
        if n < 2**32 and (n or not nonzero):
            return n
    raise ParseError("expected a number")


def number64(tok: Token) -> int:
    """RFC 9051 ``number64``: 0 to 2^63-1 (sizes and octet counts)."""
    if isinstance(tok, Atom) and tok.value.isdigit() and tok.value.isascii() and len(tok.value) <= 19:
        n = int(tok.value)
        if n < 2**63:
            return n
    raise ParseError("expected a number")


def paren_list(tok: Token) -> list[Token]:
    if isinstance(tok, list):
        return tok
    raise ParseError("expected a parenthesised list")


# -- sequence sets (RFC 3501 §9 sequence-set; "*" is the largest number in use) --------

SeqSet = list[tuple[int | None, int | None]]  # None is "*"


def sequence_set(tok: Token) -> SeqSet:
    if not isinstance(tok, Atom):
        raise ParseError("expected a sequence set")
    out: SeqSet = []
    for part in tok.value.split(","):
        lo, sep, hi = part.partition(":")
        a = _seq_number(lo)
        b = _seq_number(hi) if sep else a
        out.append((a, b))
    return out


def _seq_number(text: str) -> int | None:
    if text == "*":
        return None
    if not text.isdigit() or not text.isascii() or text.startswith("0") or len(text) > 10:
        raise ParseError("bad sequence number")
    n = int(text)
    if n >= 2**32:
        raise ParseError("bad sequence number")
    return n


def resolve_set(seq: SeqSet, largest: int) -> list[tuple[int, int]]:
    """Ranges with ``*`` replaced by ``largest`` and each ordered low-high."""
    ranges = []
    for a, b in seq:
        lo = largest if a is None else a
        hi = largest if b is None else b
        if lo > hi:
            lo, hi = hi, lo
        ranges.append((lo, hi))
    return ranges


def in_set(n: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= n <= hi for lo, hi in ranges)


# -- modified UTF-7 (RFC 3501 §5.1.3) ------------------------------------------------------


def utf7_decode(name: str) -> str:
    """Modified UTF-7 -> Unicode; raises ParseError for malformed input."""
    out = []
    i = 0
    while i < len(name):
        c = name[i]
        if not (0x20 <= ord(c) <= 0x7E):
            raise ParseError("mailbox name must be 7-bit")
        if c != "&":
            out.append(c)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ParseError("unterminated & in mailbox name")
        chunk = name[i + 1:end]
        if not chunk:
            out.append("&")
        else:
            if not re.fullmatch(r"[A-Za-z0-9+,]+", chunk):
                raise ParseError("bad modified base64")
            b64 = chunk.replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            try:
                raw = base64.b64decode(b64)
                text = raw.decode("utf-16-be")
            except (ValueError, UnicodeDecodeError):
                raise ParseError("bad modified base64") from None
            if not text or any(0x20 <= ord(ch) <= 0x7E for ch in text):
                raise ParseError("needlessly encoded mailbox name")
            out.append(text)
        i = end + 1
    return "".join(out)


def utf7_encode(name: str) -> str:
    out = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)
