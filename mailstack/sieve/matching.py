"""Matching in Sieve: match types with comparators (RFC 5228 §2.7, RFC 5231, RFC 4790).

:class:`Matcher` is worked out once per test node from its tags: ``:is``, ``:contains``,
``:matches`` (a linear scan, never a backtracking regex), ``:count`` and ``:value``
(relational), with i;octet, i;ascii-casemap or i;ascii-numeric. Given the run's
:class:`~.variables.Variables`, a successful ``:matches`` sets the match variables.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from mailstack.sieve import regex
from mailstack.sieve.parser import Argument, StringList, Tag
from mailstack.sieve.variables import Variables, decoded
from mailstack.sieve.variables import captures as glob_captures

MATCH_TYPES = {"is", "contains", "matches", "count", "value", "regex"}


def tag_value(args: list[Argument], name: str) -> str:
    for i, arg in enumerate(args):
        if isinstance(arg, Tag) and arg.name == name:
            value = args[i + 1]
            assert isinstance(value, StringList)
            return value.values[0].lower()
    return ""


class Matcher:
    """A match type with a comparator (RFC 5228 §2.7, RFC 5231, RFC 4790)."""

    def __init__(self, args: list[Argument]) -> None:
        tags = [a.name for a in args if isinstance(a, Tag)]
        self.kind = next((t for t in tags if t in MATCH_TYPES), "is")
        self.relation = tag_value(args, self.kind) if self.kind in ("count", "value") else ""
        self.comparator = tag_value(args, "comparator") or "i;ascii-casemap"
        # :is, :contains and :matches under i;octet or i;ascii-casemap: matched over folded values
        self.quick = self.kind in ("is", "contains", "matches") and self.comparator in ("i;ascii-casemap", "i;octet")
        self.fold = self.comparator == "i;ascii-casemap"

    def match(self, values: Sequence[str | None], keys: Sequence[str], variables: Variables | None = None) -> bool:
        """None stands for an address part that is not there (a detail): counted, never matched.
        With ``variables``, a successful :matches sets the match variables (RFC 5229 §3.2)."""
        if self.kind == "count":
            return any(_relate(_compare_numeric(str(len(values)), key), self.relation) for key in keys)
        if variables is not None and self.kind in ("matches", "regex"):
            for value in values:
                if value is None:
                    continue
                for key in keys:
                    if self.kind == "matches" and not self.one(value, key):
                        continue  # the quick test first: most keys do not match
                    found = self.captures(value, key)
                    if found is not None:
                        variables.matches = found
                        return True
            return False
        return any(self.one(value, key) for value in values if value is not None for key in keys)

    def quick_match(self, keys: Sequence[str]) -> Callable[[Sequence[str | bytes | None]], bool] | None:
        """For :is, :contains and :matches under i;octet or i;ascii-casemap (``self.quick``):
        a match over values made ready by :meth:`quick_value` against these constant keys, the
        keys worked out once. None for the other match types and comparators."""
        if not self.quick:
            return None
        folded = tuple(k.translate(_ASCII_UPPER) if self.fold else k for k in keys)
        if self.kind == "is":
            wanted = frozenset(folded)
            return lambda values: not wanted.isdisjoint(values)  # None is never a key

        if self.kind == "contains":
            def contains(values: Sequence[str | bytes | None]) -> bool:
                for value in values:
                    if value is not None:
                        for key in folded:
                            if key in value:  # type: ignore[operator]
                                return True
                return False
            return contains

        globs = tuple(_glob_function(k.encode("utf-8", "surrogatepass")) for k in folded)

        def matches(values: Sequence[str | bytes | None]) -> bool:  # values as quick_value gives them
            for value in values:
                if value is not None:
                    for glob in globs:
                        if glob(value):  # type: ignore[arg-type]
                            return True
            return False
        return matches

    def quick_value(self, value: str) -> str | bytes:
        """A value as the :meth:`quick_match` match takes it: folded as the comparator sees it
        (RFC 4790 §9.2.1: ASCII letters to upper case), and for :matches as UTF-8 octets
        (RFC 5228 §2.7.1: ``?`` is one octet)."""
        if self.fold:
            value = value.translate(_ASCII_UPPER)
        return value.encode("utf-8", "surrogatepass") if self.kind == "matches" else value

    def captures(self, value: str, key: str) -> list[str] | None:
        """:matches keeping what each wildcard matched; :regex what its groups matched."""
        if self.kind == "regex":
            return regex.search(key, self.comparator == "i;ascii-casemap", value)
        text = value.encode("utf-8", "surrogatepass")
        if self.comparator == "i;ascii-casemap":
            folded = value.translate(_ASCII_UPPER).encode("utf-8", "surrogatepass")
            key = key.translate(_ASCII_UPPER)
        else:
            folded = text
        parts = glob_captures(_glob_tokens(key.encode("utf-8", "surrogatepass")), text, folded)
        return None if parts is None else decoded(parts)

    def one(self, value: str, key: str) -> bool:
        comparator = self.comparator
        if comparator == "i;ascii-numeric":
            return _relate(_compare_numeric(value, key), self.relation or "eq")
        if self.kind == "regex":
            return regex.search(key, comparator == "i;ascii-casemap", value) is not None
        if comparator == "i;ascii-casemap":  # RFC 4790 §9.2.1: ASCII letters to upper case
            value, key = value.translate(_ASCII_UPPER), key.translate(_ASCII_UPPER)
        if self.kind == "is":
            return value == key
        if self.kind == "contains":
            return key in value
        if self.kind == "matches":  # ? is one octet (RFC 5228 §2.7.1): matched as UTF-8
            return _glob(key.encode("utf-8", "surrogatepass"), value.encode("utf-8", "surrogatepass"))
        if self.kind == "value":
            return _relate((value > key) - (value < key), self.relation)
        return False


def _relate(order: int | None, relation: str) -> bool:
    if order is None:  # an undefined comparison (RFC 5231 §4): only "ne" holds
        return relation == "ne"
    return {"gt": order > 0, "ge": order >= 0, "lt": order < 0, "le": order <= 0, "eq": order == 0,
            "ne": order != 0}[relation]


def _compare_numeric(a: str, b: str) -> int | None:
    """i;ascii-numeric (RFC 4790 §9.1): the leading digits as a number; none is positive
    infinity. Compared as digit strings, so a thousand-digit value costs nothing."""
    x, y = _leading_digits(a), _leading_digits(b)
    if x is None and y is None:
        return 0
    if x is None:
        return 1
    if y is None:
        return -1
    if len(x) != len(y):
        return -1 if len(x) < len(y) else 1
    return (x > y) - (x < y)


def _leading_digits(text: str) -> str | None:
    end = 0
    while end < len(text) and "0" <= text[end] <= "9":
        end += 1
    return text[:end].lstrip("0") or "0" if end else None


_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@functools.lru_cache(maxsize=1024)
def _glob_tokens(pattern: bytes) -> tuple[int | None, ...]:
    """A :matches pattern as octets, -1 for ?, None for * (a backslash quotes the next)."""
    tokens: list[int | None] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == 0x5C and i + 1 < len(pattern):  # backslash
            tokens.append(pattern[i + 1])
            i += 2
            continue
        tokens.append(None if c == 0x2A else -1 if c == 0x3F else c)
        i += 1
    return tuple(tokens)


@functools.lru_cache(maxsize=1024)
def _glob_segments(pattern: bytes) -> tuple[bool, tuple[bytes, ...], bool] | None:
    """A pattern without ``?``: (starts with *, the literal runs between stars, ends with *);
    None when it has a ``?`` (the general scan is needed)."""
    tokens = _glob_tokens(pattern)
    if -1 in tokens:
        return None
    segments: list[bytes] = []
    run: list[int] = []
    for token in tokens:
        if token is None:
            segments.append(bytes(run))
            run = []
        else:
            run.append(token)
    segments.append(bytes(run))
    return (not tokens or tokens[0] is None, tuple(segments), bool(tokens) and tokens[-1] is None)


def _glob_function(pattern: bytes) -> Callable[[bytes], bool]:
    """:matches against one constant pattern, the common shapes (no star, ``*text*``) as
    one comparison."""
    plain = _glob_segments(pattern)
    if plain is not None and len(plain[1]) == 1:
        literal = plain[1][0]
        return lambda text: text == literal
    if plain is not None and len(plain[1]) == 3 and not plain[1][0] and not plain[1][2]:
        inner = plain[1][1]
        return lambda text: inner in text
    return functools.partial(_glob, pattern)


def _glob(pattern: bytes, text: bytes) -> bool:
    """:matches (RFC 5228 §2.7.1): ``*`` any run, ``?`` one octet, backslash quotes the next.
    Without ``?``, the literal runs are looked for in order with bytes.find (the first run at
    the start, the last at the end unless a star frees them); otherwise the usual two-pointer
    scan falling back to the last ``*`` only: no exponential backtracking either way."""
    plain = _glob_segments(pattern)
    if plain is not None:
        _, segments, _ = plain
        if len(segments) == 1:  # no star at all
            return text == segments[0]
        first, last = segments[0], segments[-1]
        if not text.startswith(first) or len(text) < len(first) + len(last) or not text.endswith(last):
            return False
        at, end = len(first), len(text) - len(last)
        for segment in segments[1:-1]:
            found = text.find(segment, at, end)
            if found < 0:
                return False
            at = found + len(segment)
        return True
    return glob_captures(_glob_tokens(pattern), text, text) is not None
