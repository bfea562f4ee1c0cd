"""The Sieve :regex match type (draft-ietf-sieve-regex-01): POSIX extended regular expressions.

Patterns run on RE2 (the google-re2 package): its time is linear in the value, whatever
the pattern, so a script cannot make delivery backtrack for seconds. RE2 is told to
read POSIX syntax and to find the leftmost-longest match, as POSIX regexec does; a
pattern is translated first where POSIX and RE2 read the same text differently (inside
a bracket expression a backslash is an ordinary character, ``[=c=]`` and ``[.c.]`` name
one character). What the draft leaves out of the language is refused: backreferences
and every other backslash before a letter or digit (``\\b``, ``\\w``, ``\\d``...), and
collating elements longer than one character. The value is matched anywhere (``^`` and
``$`` anchor it); ``.`` is any character but a newline.

Comparators: i;octet matches as written, i;ascii-casemap matches without regard to
case (RE2's case folding, which also folds letters beyond ASCII); other comparators are
refused with the script. Patterns are at most MAX_PATTERN characters; a compiled
pattern gets at most MAX_MEMORY octets of RE2 memory; compiled patterns are kept in a
small cache shared by all scripts.
"""

from __future__ import annotations

import functools

import re2

MAX_PATTERN = 1024  # characters of one pattern
MAX_MEMORY = 1 << 20  # octets of RE2 memory for one compiled pattern
_BRACKET_SPECIAL = "\\[]^-"
QUOTE = frozenset("\\.*+?()[]{}|^$")  # what :quoteregex quotes


class RegexError(ValueError):
    """A pattern that is not a POSIX extended regular expression this extension takes."""


def translate(pattern: str) -> str:
    """POSIX ERE -> RE2 syntax, refusing what the draft does not take."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise RegexError("the pattern ends in a backslash")
            escaped = pattern[i + 1]
            if escaped.isalnum():  # backreferences, word boundaries, classes: not POSIX ERE
                raise RegexError(f"\\{escaped} is not part of POSIX extended regular expressions")
            out.append("\\" + escaped)
            i += 2
        elif c == "[":
            bracket, i = _bracket(pattern, i)
            out.append(bracket)
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _bracket(pattern: str, start: int) -> tuple[str, int]:
    """A bracket expression from ``[`` at ``start``: (its RE2 spelling, the index after it)."""
    n = len(pattern)
    parts = ["["]
    j = start + 1
    if j < n and pattern[j] == "^":
        parts.append("^")
        j += 1
    if j < n and pattern[j] == "]":  # a leading ] is an ordinary character
        parts.append("\\]")
        j += 1
    while j < n and pattern[j] != "]":
        if pattern.startswith("[:", j):
            end = pattern.find(":]", j + 2)
            if end < 0:
                raise RegexError("[: without :]")
            parts.append(pattern[j:end + 2])
            j = end + 2
        elif pattern.startswith(("[=", "[."), j):
            close = pattern[j + 1] + "]"
            end = pattern.find(close, j + 2)
            if end < 0:
                raise RegexError(f"{pattern[j:j + 2]} without {close}")
            element = pattern[j + 2:end]
            if len(element) != 1:
                raise RegexError(f"no collating element {element!r}")
            parts.append("\\" + element if element in _BRACKET_SPECIAL else element)
            j = end + 2
        else:
            ch = pattern[j]
            parts.append("\\" + ch if ch in "\\[" else ch)
            j += 1
    if j >= n:
        raise RegexError("[ without ]")
    parts.append("]")
    return "".join(parts), j + 1


@functools.lru_cache(maxsize=512)
def compiled(pattern: str, casefold: bool) -> re2._Regexp:
    """The compiled pattern; raises RegexError with RE2's words."""
    if len(pattern) > MAX_PATTERN:
        raise RegexError(f"a pattern is at most {MAX_PATTERN} characters")
    options = re2.Options()
    options.posix_syntax = True
    options.longest_match = True
    options.one_line = True
    options.log_errors = False
    options.case_sensitive = not casefold
    options.max_mem = MAX_MEMORY
    try:
        return re2.compile(translate(pattern), options)
    except re2.error as e:
        raise RegexError(_words(e)) from None


def _words(error: Exception) -> str:
    text = error.args[0] if error.args else str(error)
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def search(pattern: str, casefold: bool, value: str) -> list[str] | None:
    """The match variables (${0}: what the whole pattern matched, then each group, "" for a
    group that took no part) of the first match in ``value``; None when there is none."""
    found = compiled(pattern, casefold).search(value)
    if found is None:
        return None
    return [found.group(0), *(g or "" for g in found.groups())]


def quote(value: str) -> str:
    """:quoteregex: every character special to a regular expression behind a backslash."""
    return "".join("\\" + c if c in QUOTE else c for c in value)


__all__ = ["MAX_PATTERN", "RegexError", "compiled", "quote", "search", "translate"]
