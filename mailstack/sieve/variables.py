"""Sieve variables (RFC 5229): ``${name}`` in strings, ``set`` with its modifiers, match variables.

A string is expanded in one pass when control reaches the statement it is part of
(§3): ``${name}`` (names case-insensitive, an unknown one is empty) and ``${0}`` to
``${9}``, the match variables of the last successful ``:matches`` (§3.2) or ``:regex``.
No extension here makes internal state available in a namespace, so ``${ns.name}`` is
refused when the script is checked, as is a match variable above ``${9}`` (§6).

Limits (RFC 5229 §6 asks for at least 128 variables, names of 32 characters, values
of 4000 characters): MAX_VARIABLES distinct names a script may set (checked with the
script), MAX_NAME characters in a name, MAX_VALUE octets in a value (a longer literal
is refused with the script; a longer value made at run time is cut at a character
boundary, §6: not an error), and MAX_EXPANDED characters that one run, with the scripts
it includes, may produce by expanding strings (a script of a thousand ``${big}${big}...`` strings would otherwise
cost gigabytes): past it the run fails and the message is kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mailstack.sieve import regex

MAX_VARIABLES = 256  # distinct variables one script may set
MAX_NAME = 64  # characters in a variable name
MAX_VALUE = 4096  # octets in a variable's value
MAX_MATCH = 9  # ${0}..${9}
MAX_EXPANDED = 16 << 20  # characters one run (its included scripts too) may produce by expansion

MODIFIERS = {"lower": 40, "upper": 40, "lowerfirst": 30, "upperfirst": 30, "quotewildcard": 20, "quoteregex": 20,
             "length": 10}

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
NAME = re.compile(rf"{_IDENTIFIER}\Z")
# RFC 5229 §3: "${" [namespace] variable-name "}"; namespace = identifier "." *(variable-name ".")
REFERENCE = re.compile(rf"\$\{{((?:{_IDENTIFIER}\.(?:(?:{_IDENTIFIER}|[0-9]+)\.)*)?)({_IDENTIFIER}|[0-9]+)\}}")
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class ExpansionLimit(Exception):
    """A run produced more than MAX_EXPANDED characters by expansion."""


def reference_error(text: str, global_namespace: bool = False) -> str | None:
    """What is wrong with the variable references of a string (a namespace, a match variable
    past ${9}), or None. ``global_namespace``: "include" is required, so ${global.name} is
    one (RFC 6609 §3.4.2)."""
    for m in REFERENCE.finditer(text):
        namespace, name = m.group(1), m.group(2)
        if namespace and not (global_namespace and namespace.lower() == "global." and not name.isdigit()):
            return f"no extension provides the variable namespace {namespace[:-1]!r}"
        if name.isdigit() and int(name) > MAX_MATCH:
            return f"match variables go up to ${{{MAX_MATCH}}}, not ${{{name}}}"
    return None


class Variables:
    """The variables of one script in a run, and its match variables. ``shared`` holds the
    run's global variables (RFC 6609 §3.4): those this script declared with ``global``
    (``global_names``) or names as ``global.name``."""

    __slots__ = ("expanded", "global_names", "matches", "shared", "values")

    def __init__(self, shared: dict[str, str] | None = None, expanded: list[int] | None = None) -> None:
        self.values: dict[str, str] = {}
        self.shared: dict[str, str] = {} if shared is None else shared
        self.global_names: set[str] = set()
        self.matches: list[str] = []  # ${0}, ${1}...: the last successful :matches
        self.expanded = [0] if expanded is None else expanded  # characters expanded in the run, shared

    def scope(self, name: str) -> tuple[dict[str, str], str]:
        """Where a variable lives, and its key there."""
        key = name.lower()
        if key.startswith("global."):
            return self.shared, key[7:]
        return (self.shared if key in self.global_names else self.values), key

    def get(self, name: str) -> str:
        where, key = self.scope(name)
        return where.get(key, "")

    def expand(self, text: str) -> str:
        """The string with its references replaced (RFC 5229 §3: one pass)."""
        if "${" not in text:
            return text
        out = REFERENCE.sub(self._value, text)
        self.expanded[0] += len(out)
        if self.expanded[0] > MAX_EXPANDED:
            raise ExpansionLimit(f"more than {MAX_EXPANDED} characters of expanded strings")
        return out

    def expand_all(self, texts: Sequence[str]) -> tuple[str, ...]:
        return tuple(self.expand(t) for t in texts)

    def _value(self, m: re.Match[str]) -> str:
        name = m.group(2)
        if name.isdigit():
            index = int(name)
            return self.matches[index] if index < len(self.matches) else ""
        return self.get(m.group(1) + name)

    def set(self, name: str, value: str, modifiers: Sequence[str]) -> None:
        where, key = self.scope(name)
        where[key] = truncate(modify(value, modifiers))


def modify(value: str, modifiers: Sequence[str]) -> str:
    """Modifiers applied highest precedence first (RFC 5229 §4.1)."""
    for modifier in sorted(modifiers, key=lambda m: -MODIFIERS[m]):
        if modifier == "lower":
            value = value.translate(_LOWER)
        elif modifier == "upper":
            value = value.translate(_UPPER)
        elif modifier == "lowerfirst":
            value = value[:1].translate(_LOWER) + value[1:]
        elif modifier == "upperfirst":
            value = value[:1].translate(_UPPER) + value[1:]
        elif modifier == "quotewildcard":
            value = value.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
        elif modifier == "quoteregex":  # draft-ietf-sieve-regex (with "regex" required)
            value = regex.quote(value)
        elif modifier == "length":
            value = str(len(value))
    return value


def truncate(value: str) -> str:
    """At most MAX_VALUE octets, cut between characters."""
    data = value.encode("utf-8", "surrogatepass")
    if len(data) <= MAX_VALUE:
        return value
    return data[:MAX_VALUE].decode("utf-8", "ignore")


def octets(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def name_error(name: str, global_namespace: bool = False) -> str | None:
    """What is wrong with a name given to set (RFC 5229 §4), or None; with ``global_namespace``
    a name may be global.<identifier> (RFC 6609 §3.4.2)."""
    if global_namespace and name.lower().startswith("global."):
        name = name[7:]
    if not NAME.match(name):
        return f"{name!r} is not a variable name (match variables and namespaces cannot be set)"
    if len(name) > MAX_NAME:
        return f"variable names are at most {MAX_NAME} characters"
    return None


def captures(tokens: Sequence[int | None], text: bytes, folded: bytes) -> list[bytes] | None:
    """A :matches pattern (its tokens: an octet, -1 for ?, None for *) against ``folded``
    (the value as the comparator sees it): the match variables taken from ``text`` (the
    same octets unfolded), ${0} the whole value, then one per wildcard, each ``*`` as short
    as the match allows (RFC 5229 §3.2); None when it does not match. The two-pointer
    scan that falls back to the last ``*`` only: O(len(text) * len(tokens)) at worst."""
    starts = [0] * len(tokens)
    t = p = 0
    star = -1
    mark = 0
    n = len(folded)
    while t < n:
        token = tokens[p] if p < len(tokens) else 0
        if p < len(tokens) and token is not None and (token == -1 or token == folded[t]):
            starts[p] = t
            t += 1
            p += 1
        elif p < len(tokens) and token is None:
            starts[p] = t
            star, mark = p, t
            p += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            t = mark
        else:
            return None
    while p < len(tokens) and tokens[p] is None:
        starts[p] = t
        p += 1
    if p != len(tokens):
        return None
    out = [text]
    for i, token in enumerate(tokens):
        if token == -1:
            out.append(text[starts[i]:starts[i] + 1])
        elif token is None:
            out.append(text[starts[i]:starts[i + 1] if i + 1 < len(tokens) else n])
    return out


def decoded(parts: Sequence[bytes]) -> list[str]:
    return [part.decode("utf-8", "replace") for part in parts]


def constant(text: str) -> bool:
    """No variable reference in it (RFC 5229 §3: a constant string)."""
    return REFERENCE.search(text) is None


__all__ = ["MAX_EXPANDED", "MAX_MATCH", "MAX_NAME", "MAX_VALUE", "MAX_VARIABLES", "MODIFIERS", "Variables",
           "captures", "constant", "modify", "name_error", "reference_error"]
