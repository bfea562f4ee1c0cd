"""SEARCH: criteria parsing and evaluation (RFC 3501 §6.4.4, RFC 5032 OLDER and
YOUNGER, RFC 5182 "$", RFC 7162 MODSEQ).

Every RFC 3501 search key is supported. String keys match case-insensitively
as substrings (§6.4.4 "In all search keys that use strings..."); header values
are matched after RFC 2047 decoding. FROM, TO, CC and BCC match the parsed
addresses (§6.4.4 "the envelope structure's FROM field"): ``Name <local@domain>``
with quoting removed, the comment naming a person, and group names; HEADER
matches the raw field text. BEFORE/ON/SINCE compare the internal date
and SENTBEFORE/SENTON/SENTSINCE the Date: header, both by date only,
disregarding time and time zone. Keys that need only flags, sizes, dates and
UIDs never open the message file.
"""

from __future__ import annotations

import datetime
import email.utils
import re
from collections.abc import Callable
from dataclasses import dataclass

from mailstack.imap import address, mime
from mailstack.imap.condstore import mod_sequence
from mailstack.imap.parse import (
    Atom,
    ParseError,
    String,
    Token,
    astring,
    number,
    number64,
    resolve_set,
    sequence_set,
)
from mailstack.imap.response import parse_date
from mailstack.maildir.flags import canonical_flag

FLAG_KEYS = {"ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True), "DRAFT": ("\\Draft", True),
             "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True),
             "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False),
             "UNDRAFT": ("\\Draft", False), "UNFLAGGED": ("\\Flagged", False), "UNSEEN": ("\\Seen", False)}
ADDRESS_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "TO": "to"}
DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
CHARSETS = {"US-ASCII", "UTF-8"}
MAX_DEPTH = 100
# Where a needle for an address key may be cut when it is matched against ``Name <local@domain>``
# built from the tokens of the header: each piece between these appears in the raw header.
_ADDRESS_SEPARATORS = re.compile(r'[\s<>@"(),.:;\[\]]+')

Node = tuple  # ("and", [nodes]) ("or", a, b) ("not", a) (key, args...)


@dataclass
class Candidate:
    """What a search can look at for one message; ``load`` reads the file when needed."""

    msn: int
    uid: int
    flags: list[str]
    recent: bool
    size: int
    internal_date: int
    load: Callable[[], bytes]
    modseq: int = 0
    _data: bytes | None = None
    _lower: bytes | None = None  # the header, lower-cased
    _fields: list[tuple[str, bytes]] | None = None
    _header: bytes = b""
    _body: bytes = b""

    def data(self) -> bytes:
        if self._data is None:
            self._data = self.load()
        return self._data

    def fields(self) -> list[tuple[str, bytes]]:
        if self._fields is None:
            self._header, self._body = mime.split_message(self.data())
            self._fields = mime.header_fields(self._header)
        return self._fields

    def _lowered_header(self) -> bytes:
        if self._lower is None:
            self._lower = mime.split_message(self.data())[0].lower()
        return self._lower

    def might_contain(self, needle: str) -> bool:
        """False only when ``needle`` can be in no header field, raw or RFC 2047 encoded.

        Unfolding joins lines at white space, so the needle's words are looked for one by one.
        Bytes are lower-cased as ASCII only, so a needle with other letters is not checked.
        """
        lower = self._lowered_header()
        return b"=?" in lower or not needle.isascii() or all(w.encode("utf-8") in lower for w in needle.split())

    def might_contain_address(self, needle: str) -> bool:
        """False only when no address built from the header's tokens can hold ``needle``."""
        lower = self._lowered_header()
        if b"=?" in lower or b"\\" in lower or not needle.isascii():  # see might_contain
            return True
        return all(p.encode("utf-8") in lower for p in _ADDRESS_SEPARATORS.split(needle) if p)

    def body(self) -> bytes:
        self.fields()
        return self._body

    def get(self, name: str) -> str | None:
        for n, raw in self.fields():
            if n == name:
                return mime.field_value(raw)
        return None


class Criteria:
    def __init__(self, tokens: list[Token], *, charset: str | None = None, saved: frozenset[int] = frozenset(),
                 now: float = 0.0) -> None:
        self.tokens = tokens
        self.pos = 0
        self.charset = charset
        self.saved = saved  # UIDs "$" stands for (RFC 5182)
        self.now = now  # for OLDER and YOUNGER (RFC 5032)
        if not tokens:
            raise ParseError("missing search criteria")
        nodes = []
        while self.pos < len(tokens):
            nodes.append(self._key())
        self.root: Node = ("and", nodes)
        self.uses_modseq = _uses_modseq(self.root)  # RFC 7162 §3.1.5: answers then carry (MODSEQ n)
        self.uses_numbers = _any_key(self.root, _is_seq)  # message numbers: no expunge may be told
        self.everything = all(node == ("all",) for node in nodes)  # ALL: every message, nothing to test
        self.uses_saved = _any_key(self.root, _is_saved)  # "$" (RFC 5182)
        self.drifts = _any_key(self.root, _drifts)  # matches change with time or new UIDs, not the message
        self.needs_data = _needs_data(self.root)
        self.needs_body = _needs_body(self.root)

    def _next(self) -> Token:
        if self.pos >= len(self.tokens):
            raise ParseError("search key needs an argument")
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def _string(self) -> str:
        tok = self._next()
        if isinstance(tok, String):
            try:
                return tok.value.decode("utf-8")
            except UnicodeDecodeError:
                raise ParseError("search string is not UTF-8") from None
        return astring(tok)

    def _key(self) -> Node:
        self.depth = getattr(self, "depth", 0) + 1
        try:
            if self.depth > MAX_DEPTH:
                raise ParseError("search criteria nested too deeply")
            return self._key_inner()
        finally:
            self.depth -= 1

    def _key_inner(self) -> Node:
        tok = self._next()
        if isinstance(tok, list):
            if not tok:
                raise ParseError("empty parenthesised search key")
            sub = Criteria.__new__(Criteria)
            sub.tokens, sub.pos, sub.charset, sub.depth = tok, 0, self.charset, self.depth
            sub.saved, sub.now = self.saved, self.now
            nodes = []
            while sub.pos < len(tok):
                nodes.append(sub._key())
            return ("and", nodes)
        if not isinstance(tok, Atom):
            raise ParseError("expected a search key")
        key = tok.upper()
        if key == "ALL":
            return ("all",)
        if key in FLAG_KEYS:
            flag, want = FLAG_KEYS[key]
            return ("flag", flag, want)
        if key in ("NEW", "OLD", "RECENT"):
            return (key.lower(),)
        if key in ("KEYWORD", "UNKEYWORD"):
            kw = self._next()
            if not isinstance(kw, Atom):
                raise ParseError("expected a keyword")
            return ("flag", canonical_flag(kw.value), key == "KEYWORD")
        if key in ADDRESS_KEYS:
            return ("address", ADDRESS_KEYS[key], self._string().lower())
        if key == "SUBJECT":
            return ("header", "subject", self._string().lower())
        if key == "HEADER":
            name = self._string().lower()
            return ("header", name, self._string().lower())
        if key in ("BODY", "TEXT"):
            return (key.lower(), self._string().lower())
        if key in DATE_KEYS:
            tok = self._next()
            text = tok.value.decode("ascii", "replace") if isinstance(tok, String) else (
                tok.value if isinstance(tok, Atom) else "")
            date = parse_date(text)
            if date is None:
                raise ParseError("bad search date")
            return ("date", key, datetime.date(*date))
        if key in ("LARGER", "SMALLER"):  # RFC 9051 §9: number64
            return (key.lower(), number64(self._next()))
        if key == "NOT":
            return ("not", self._key())
        if key == "OR":
            return ("or", self._key(), self._key())
        if key in ("OLDER", "YOUNGER"):  # RFC 5032: seconds before now, by internal date
            seconds = number(self._next())
            if seconds < 1:
                raise ParseError(f"{key} needs a positive number of seconds")
            return (key.lower(), self.now - seconds)
        if key == "UID":
            arg = self._next()
            if isinstance(arg, Atom) and arg.value == "$":
                return ("saved", self.saved)
            return ("uid", sequence_set(arg))
        if key == "MODSEQ":  # RFC 7162 §3.1.5; one mod-sequence per message: entry names are ignored
            tok = self._next()
            if isinstance(tok, String):
                name = tok.value.decode("ascii", "replace").lower()
                kind = self._next()
                if not name.startswith("/flags/") or not isinstance(kind, Atom) or \
                        kind.upper() not in ("PRIV", "SHARED", "ALL"):
                    raise ParseError("MODSEQ takes \"/flags/<flag>\" priv|shared|all before the mod-sequence")
                tok = self._next()
            return ("modseq", mod_sequence(tok, zero=True))
        if key == "$":  # RFC 5182: the messages of the saved result
            return ("saved", self.saved)
        if key[:1].isdigit() or key[:1] == "*":
            return ("seq", sequence_set(tok))
        raise ParseError(f"unknown search key {key[:30]}")

    def matches(self, c: Candidate, largest_msn: int, largest_uid: int) -> bool:
        return bool(_eval(self.root, c, largest_msn, largest_uid))

    def prefilter(self, c: Candidate, largest_msn: int, largest_uid: int) -> bool | None:
        """The answer from flags, sizes, dates and UIDs alone; None when the file must be read."""
        return _eval(self.root, c, largest_msn, largest_uid, cheap=True)


def _any_key(node: Node, test: Callable[[Node], bool]) -> bool:
    """Whether ``test`` holds for a search key anywhere under ``node``."""
    kind = node[0]
    if kind == "and":
        return any(_any_key(n, test) for n in node[1])
    if kind == "or":
        return _any_key(node[1], test) or _any_key(node[2], test)
    if kind == "not":
        return _any_key(node[1], test)
    return test(node)


def _is_modseq(node: Node) -> bool:
    return node[0] == "modseq"


def _is_seq(node: Node) -> bool:
    return node[0] == "seq"


def _is_saved(node: Node) -> bool:
    return node[0] == "saved"


def _drifts(node: Node) -> bool:
    """OLDER/YOUNGER (the clock) and a UID set with ``*`` (the highest UID) match other
    messages as time passes or mail arrives, without a change to the messages."""
    return node[0] in ("older", "younger") or (node[0] == "uid" and any(a is None or b is None for a, b in node[1]))


def _reads_file(node: Node) -> bool:
    kind = node[0]
    return kind in ("header", "address", "body", "text") or (kind == "date" and node[1].startswith("SENT"))


def _reads_body(node: Node) -> bool:
    return node[0] in ("body", "text")


def _uses_modseq(node: Node) -> bool:
    return _any_key(node, _is_modseq)


def _needs_data(node: Node) -> bool:
    return _any_key(node, _reads_file)


def _needs_body(node: Node) -> bool:
    return _any_key(node, _reads_body)


def _decoded(value: str) -> str:
    return address.decode_words(value)


def _header_values(c: Candidate, name: str) -> list[str]:
    return [_decoded(mime.field_value(raw)) for n, raw in c.fields() if n == name]


def _address_matches(c: Candidate, name: str, needle: str) -> bool:
    """RFC 3501 §6.4.4 FROM/TO/CC/BCC: a substring of an address of that field."""
    if needle and not c.might_contain_address(needle):
        return False
    for n, raw in c.fields():
        if n != name:
            continue
        if not needle:
            return True
        value = mime.field_value(raw)
        texts = address.search_texts(value) or [_decoded(value)]  # no address at all: the text
        if any(needle in t.lower() for t in texts):
            return True
    return False


def _sent_date(c: Candidate) -> datetime.date | None:
    value = c.get("date")
    if not value:
        return None
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    try:
        return datetime.date(parsed[0], parsed[1], parsed[2])
    except ValueError:
        return None


def _eval(node: Node, c: Candidate, largest_msn: int, largest_uid: int,  # noqa: C901
          cheap: bool = False) -> bool | None:
    """Three-valued when ``cheap``: keys that need the file answer None (unknown)."""
    kind = node[0]
    if kind == "and":
        result: bool | None = True
        for n in node[1]:
            r = _eval(n, c, largest_msn, largest_uid, cheap)
            if r is False:
                return False
            if r is None:
                result = None
        return result
    if kind == "or":
        a = _eval(node[1], c, largest_msn, largest_uid, cheap)
        if a is True:
            return True
        b = _eval(node[2], c, largest_msn, largest_uid, cheap)
        if b is True:
            return True
        return None if a is None or b is None else False
    if kind == "not":
        r = _eval(node[1], c, largest_msn, largest_uid, cheap)
        return None if r is None else not r
    if cheap and _needs_data(node):
        return None
    if kind == "all":
        return True
    if kind == "flag":
        lower = node[1].lower()
        return any(f.lower() == lower for f in c.flags) == node[2]
    if kind == "new":
        return c.recent and "\\Seen" not in c.flags
    if kind == "old":
        return not c.recent
    if kind == "recent":
        return c.recent
    if kind == "modseq":
        return c.modseq >= node[1]
    if kind == "larger":
        return c.size > node[1]
    if kind == "smaller":
        return c.size < node[1]
    if kind == "uid":
        return any(lo <= c.uid <= hi for lo, hi in resolve_set(node[1], largest_uid))
    if kind == "saved":
        return c.uid in node[1]
    if kind == "older":
        return c.internal_date <= node[1]
    if kind == "younger":
        return c.internal_date > node[1]
    if kind == "seq":
        return any(lo <= c.msn <= hi for lo, hi in resolve_set(node[1], largest_msn))
    if kind == "date":
        key, want = node[1], node[2]
        if key.startswith("SENT"):
            have = _sent_date(c)
            if have is None:
                return False
            key = key[4:]
        else:
            have = datetime.datetime.fromtimestamp(c.internal_date, datetime.UTC).date()
        return have < want if key == "BEFORE" else have == want if key == "ON" else have >= want
    if kind == "header":
        if node[2] and not c.might_contain(node[2]):
            return False
        values = _header_values(c, node[1])
        return any(node[2] in v.lower() for v in values) if node[2] else bool(values)
    if kind == "address":
        return _address_matches(c, node[1], node[2])
    if kind == "body":
        return node[1] in c.body().decode("utf-8", "replace").lower()
    if kind == "text":
        return node[1] in c.data().decode("utf-8", "replace").lower() or any(
            node[1] in _decoded(mime.field_value(raw)).lower() for _, raw in c.fields())
    raise ParseError("bad search node")
