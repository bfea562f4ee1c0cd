"""The Sieve grammar (RFC 5228 §2 and §8): tokens, then commands, tests and blocks.

A script is text (UTF-8, RFC 5228 §2.1). The lexer knows white space, ``#`` and
``/* */`` comments, identifiers, ``:tags``, numbers with an optional K, M or G
quantifier (§2.4.1), quoted strings with ``\\"`` and ``\\\\`` escapes (a backslash
before any other character stands for that character, §2.4.2) and multi-line
``text:`` strings ending in a line holding one dot, with leading ``..`` dot-stuffing
undone. The parser builds :class:`Command` and :class:`Test` nodes; every node and
argument keeps the line and column where it starts, and every error says where it is.

Bounds, so a hostile script costs little: MAX_SCRIPT octets, MAX_NESTING of blocks
and tests, MAX_LIST strings in one list, and numbers below 2^63 after the quantifier.
What a command means (which arguments it takes, whether its extension was required)
is checked by :mod:`.interpreter`, not here.

:func:`decode_encoded` is the "encoded-character" step (§2.4.2.4): ``${hex:...}`` and
``${unicode:...}`` decoded after escapes and dot-unstuffing. It is lexical, so it lives
here, but it applies only where a script requires "encoded-character", which the
checker knows: :func:`~.interpreter.compile_script` calls it on every string of such a
script before checking it, and its errors name the string's line and column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

MAX_SCRIPT = 1 << 20  # octets of one script
MAX_NESTING = 64  # blocks and tests inside one another
MAX_LIST = 10_000  # strings in one string list
_QUANTIFIERS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class SieveSyntaxError(Exception):
    """A script that is not Sieve: ``str()`` says what and where (``line 3, column 7: ...``)."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.message = message
        self.line = line
        self.column = column


@dataclass(frozen=True, slots=True)
class Tag:
    name: str  # lower case, without the colon
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Number:
    value: int
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class StringList:
    """A string or a list of strings; ``single``: written as one string, not as a list."""

    values: tuple[str, ...]
    single: bool
    line: int
    column: int


Argument = Tag | Number | StringList


@dataclass(slots=True)
class Test:
    __test__: ClassVar[bool] = False  # a Sieve test, not a pytest one

    name: str  # lower case
    arguments: list[Argument]
    tests: list[Test]  # a test-list (allof, anyof) or one test (not)
    line: int
    column: int
    # what running the test needs, worked out once by the interpreter at its first run
    prepared: Any = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class Command:
    name: str  # lower case
    arguments: list[Argument]
    tests: list[Test]  # the test of if/elsif, else none
    block: list[Command] | None  # None: the command ended with ";"
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "id", "tag", "num", "str", "text", or a punctuation character
    value: object
    line: int
    column: int


def parse(script: str | bytes) -> list[Command]:
    """The commands of a script; raises SieveSyntaxError."""
    if isinstance(script, bytes):
        raw = script
        if len(raw) > MAX_SCRIPT:
            raise SieveSyntaxError(f"script larger than {MAX_SCRIPT} octets", 1, 1)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise SieveSyntaxError("script is not UTF-8", line, e.start - raw.rfind(b"\n", 0, e.start)) from None
    else:
        text = script
        if len(text.encode("utf-8", "surrogatepass")) > MAX_SCRIPT:
            raise SieveSyntaxError(f"script larger than {MAX_SCRIPT} octets", 1, 1)
    return _Parser(_tokens(text)).commands()


# -- the lexer ------------------------------------------------------------------------------


def _tokens(text: str) -> list[_Token]:  # noqa: C901 - one pass over the script, case by case
    out: list[_Token] = []
    i, line, line_start = 0, 1, 0
    n = len(text)

    def where(at: int) -> tuple[int, int]:
        return line, at - line_start + 1

    while i < n:
        c = text[i]
        if c == "\n":
            i += 1
            line, line_start = line + 1, i
            continue
        if c in " \t\r":
            i += 1
            continue
        if c == "#":  # hash-comment to the end of the line
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if c == "/" and text.startswith("/*", i):  # bracket-comment
            end = text.find("*/", i + 2)
            if end < 0:
                raise SieveSyntaxError("comment not closed with */", *where(i))
            chunk = text[i:end + 2]
            if "\n" in chunk:
                line += chunk.count("\n")
                line_start = i + chunk.rfind("\n") + 1
            i = end + 2
            continue
        if c.isalpha() and c.isascii() or c == "_":
            start = i
            while i < n and (text[i].isascii() and text[i].isalnum() or text[i] == "_"):
                i += 1
            word = text[start:i]
            if word.lower() == "text" and i < n and text[i] == ":":  # a multi-line string
                token, i, line, line_start = _multiline(text, i + 1, line, line_start, start)
                out.append(token)
                continue
            out.append(_Token("id", word.lower(), *where(start)))
            continue
        if c == ":":
            start = i
            i += 1
            while i < n and (text[i].isascii() and text[i].isalnum() or text[i] == "_"):
                i += 1
            name = text[start + 1:i]
            if not name or not (name[0].isalpha() or name[0] == "_"):
                raise SieveSyntaxError("a tag is a colon and an identifier, like :is", *where(start))
            out.append(_Token("tag", name.lower(), *where(start)))
            continue
        if c.isdigit() and c.isascii():
            start = i
            while i < n and text[i].isdigit() and text[i].isascii():
                i += 1
            digits = text[start:i]
            scale = 1
            if i < n and text[i].upper() in _QUANTIFIERS:
                scale = _QUANTIFIERS[text[i].upper()]
                i += 1
            if len(digits.lstrip("0")) > 19 or int(digits) * scale >= 2**63:
                raise SieveSyntaxError("number too large", *where(start))
            out.append(_Token("num", int(digits) * scale, *where(start)))
            continue
        if c == '"':
            start = i
            i += 1
            chars: list[str] = []
            start_line, start_column = where(start)
            while True:
                if i >= n:
                    raise SieveSyntaxError("string not closed with \"", start_line, start_column)
                ch = text[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\" and i + 1 < n:
                    ch = text[i + 1]  # \" and \\, and any other escaped character as itself
                    i += 1
                if ch == "\n":
                    line, line_start = line + 1, i + 1
                if ch == "\0":  # RFC 5228 §2.4.2: no NUL in a string
                    raise SieveSyntaxError("NUL in a string", *where(i))
                chars.append(ch)
                i += 1
            out.append(_Token("str", "".join(chars), start_line, start_column))
            continue
        if c in "[](){},;":
            out.append(_Token(c, c, *where(i)))
            i += 1
            continue
        raise SieveSyntaxError(f"unexpected character {c!r}", *where(i))
    out.append(_Token("end", None, *where(n)))
    return out


def _multiline(text: str, i: int, line: int, line_start: int, start: int) -> tuple[_Token, int, int, int]:
    """A ``text:`` string (§2.4.2): optional blanks and a hash comment, a line break, then
    lines up to one holding a lone ``.``; a line starting ``..`` loses one dot."""
    token_line, token_column = line, start - line_start + 1
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i < n and text[i] == "#":
        end = text.find("\n", i)
        i = n if end < 0 else end
    if i < n and text[i] == "\r":
        i += 1
    if i >= n or text[i] != "\n":
        raise SieveSyntaxError("text: must be followed by the end of the line", token_line, token_column)
    i += 1
    line, line_start = line + 1, i
    lines: list[str] = []
    while True:
        if i >= n:
            raise SieveSyntaxError("multi-line string not ended by a line with a single dot", token_line, token_column)
        end = text.find("\n", i)
        end = n if end < 0 else end
        raw = text[i:end]
        i = min(end + 1, n)
        line, line_start = line + 1, i
        content = raw[:-1] if raw.endswith("\r") else raw
        if content == ".":
            break
        if "\0" in content:
            raise SieveSyntaxError("NUL in a string", line - 1, content.index("\0") + 1)
        lines.append(content[1:] if content.startswith("..") else content)
    value = "".join(part + "\r\n" for part in lines)
    return _Token("text", value, token_line, token_column), i, line, line_start


# -- the parser -----------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def error(self, message: str, token: _Token | None = None) -> SieveSyntaxError:
        token = token or self.peek()
        return SieveSyntaxError(message, token.line, token.column)

    def commands(self) -> list[Command]:
        out = []
        while self.peek().kind != "end":
            out.append(self.command())
        return out

    def command(self) -> Command:
        token = self.take()
        if token.kind != "id":
            raise self.error("expected a command", token)
        arguments, tests = self.arguments(allow_tests=True)
        block = None
        end = self.take()
        if end.kind == "{":
            block = self.block(end)
        elif end.kind != ";":
            raise self.error(f"expected ; or {{ after the arguments of {token.value}", end)
        return Command(str(token.value), arguments, tests, block, token.line, token.column)

    def block(self, opening: _Token) -> list[Command]:
        self.enter(opening)
        out = []
        while self.peek().kind != "}":
            if self.peek().kind == "end":
                raise self.error("block not closed with }", opening)
            out.append(self.command())
        self.take()
        self.depth -= 1
        return out

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"nested deeper than {MAX_NESTING}", token)

    def arguments(self, *, allow_tests: bool) -> tuple[list[Argument], list[Test]]:
        arguments: list[Argument] = []
        while True:
            token = self.peek()
            if token.kind == "tag":
                self.take()
                arguments.append(Tag(str(token.value), token.line, token.column))
            elif token.kind == "num":
                self.take()
                arguments.append(Number(int(token.value), token.line, token.column))  # type: ignore[call-overload]
            elif token.kind in ("str", "text", "["):
                arguments.append(self.string_list())
            else:
                break
        tests: list[Test] = []
        token = self.peek()
        if token.kind == "(":
            self.take()
            self.enter(token)
            tests.append(self.test())
            while self.peek().kind == ",":
                self.take()
                tests.append(self.test())
            if self.take().kind != ")":
                raise self.error("expected , or ) in the test list", self.tokens[self.pos - 1])
            self.depth -= 1
        elif token.kind == "id" and allow_tests:
            tests.append(self.test())
        return arguments, tests

    def test(self) -> Test:
        token = self.take()
        if token.kind != "id":
            raise self.error("expected a test", token)
        self.enter(token)
        arguments, tests = self.arguments(allow_tests=True)
        self.depth -= 1
        return Test(str(token.value), arguments, tests, token.line, token.column)

    def string_list(self) -> StringList:
        token = self.take()
        if token.kind in ("str", "text"):
            return StringList((str(token.value),), True, token.line, token.column)
        values = []
        while True:
            item = self.take()
            if item.kind not in ("str", "text"):
                raise self.error("expected a string in the list", item)
            values.append(str(item.value))
            if len(values) > MAX_LIST:
                raise self.error(f"more than {MAX_LIST} strings in a list", item)
            after = self.take()
            if after.kind == "]":
                break
            if after.kind != ",":
                raise self.error("expected , or ] in the string list", after)
        return StringList(tuple(values), False, token.line, token.column)


# RFC 5228 §2.4.2.4: "${hex:" hex-pair-seq "}" and "${unicode:" unicode-hex-seq "}" (case-insensitive)
_ENCODED = re.compile(r"\$\{(hex|unicode):([ \t\r\n]*[0-9A-Fa-f]+(?:[ \t\r\n]+[0-9A-Fa-f]+)*[ \t\r\n]*)\}",
                      re.IGNORECASE)


def decode_encoded(text: str) -> str:
    """A string with its encoded characters decoded (one pass); a sequence that does not fit
    the grammar stays as it is. Raises ValueError for a code point outside Unicode (or a
    surrogate), octets that are not UTF-8, or a NUL."""
    if "${" not in text:
        return text
    out: list[bytes] = []
    at = 0
    for m in _ENCODED.finditer(text):
        groups = m.group(2).split()
        if m.group(1).lower() == "hex":
            if any(len(g) > 2 for g in groups):  # hex-pair = 1*2HEXDIG: not an encoding
                continue
            decoded = bytes(int(g, 16) for g in groups)
        else:
            points = [int(g, 16) for g in groups]
            bad = next((p for p in points if p > 0x10FFFF or 0xD800 <= p <= 0xDFFF), None)
            if bad is not None:
                raise ValueError(f"{m.group(0)!r} names no Unicode character (U+{bad:X})")
            decoded = "".join(chr(p) for p in points).encode("utf-8")
        out += [text[at:m.start()].encode("utf-8", "surrogatepass"), decoded]
        at = m.end()
    if not out:
        return text
    out.append(text[at:].encode("utf-8", "surrogatepass"))
    try:
        result = b"".join(out).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("encoded octets that are not UTF-8") from None
    if "\0" in result:
        raise ValueError("NUL in a string")
    return result
