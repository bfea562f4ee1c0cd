"""ManageSieve command syntax (RFC 5804 §4): a command atom, then strings and numbers.

The protocol hands a command over as *segments*: the text of its first line;
then, each time a line ends in a literal marker (``{n+}``, or ``{n}``), the
literal's n octets and the text of the next line. Quoted strings and literals
both become octets here (names and scripts are decoded where they are used);
numbers are 32-bit unsigned integers.

Pure functions on bytes, no state: every error is a :class:`ParseError` whose
text can be shown to the client.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# A literal marker at the end of a line. Any count is recognised, so that one too large
# is refused (and its octets dealt with) instead of being read as commands.
LITERAL_AT_END = re.compile(rb"\{([0-9]+)(\+?)\}\Z")
MAX_QUOTED = 1024  # octets between the quotes (RFC 5804 §4 ``quoted``)
MAX_NUMBER = 2**32 - 1  # RFC 5804 §4 ``number``
MAX_ATOM = 1024
_ATOM = re.compile(rb"[!#-'*-\[\]-z|-~]+")  # RFC 5804 §4 ATOM-CHAR
_NUMBER = re.compile(rb"[0-9]+")
_SPACE = b" \t"


class ParseError(ValueError):
    """The command is not well formed; ``str()`` says how."""


@dataclass(frozen=True, slots=True)
class Atom:
    value: str


Token = Atom | bytes | int  # an atom, a string (quoted or literal), a number


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # upper case
    args: tuple[bytes | int, ...]  # strings as octets, numbers as integers


def parse_command(segments: Sequence[bytes]) -> Command:
    """A whole command: its name (an atom) and its arguments (strings and numbers)."""
    tokens = tokenize(segments)
    if not tokens:
        raise ParseError("Empty command")
    name, *rest = tokens
    if not isinstance(name, Atom):
        raise ParseError("A command starts with its name")
    args: list[bytes | int] = []
    for token in rest:
        if isinstance(token, Atom):
            raise ParseError("Strings must be quoted")
        args.append(token)
    return Command(name.value.upper(), tuple(args))


def parse_sasl_response(segments: Sequence[bytes]) -> bytes:
    """A SASL response (RFC 5804 §2.1): one string; a bare word is taken as one too."""
    tokens = tokenize(segments)
    if len(tokens) != 1 or isinstance(tokens[0], int):
        raise ParseError("A SASL response is one string")
    token = tokens[0]
    return token.value.encode("ascii") if isinstance(token, Atom) else token


def tokenize(segments: Sequence[bytes]) -> list[Token]:
    """The tokens of every line, a literal's octets standing where its marker was."""
    tokens: list[Token] = []
    for index in range(0, len(segments), 2):
        line = segments[index]
        marker = LITERAL_AT_END.search(line) if index + 1 < len(segments) else None
        if index + 1 < len(segments) and marker is None:
            raise ParseError("A literal must end its line")
        _line_tokens(line[:marker.start()] if marker else line, tokens)
        if marker is not None:
            tokens.append(segments[index + 1])
    return tokens


def _line_tokens(line: bytes, out: list[Token]) -> None:
    i, n = 0, len(line)
    while i < n:
        c = line[i:i + 1]
        if c in (b" ", b"\t"):
            i += 1
            continue
        if c == b'"':
            i = _quoted(line, i + 1, out)
        elif (m := _NUMBER.match(line, i)) and (m.end() == n or line[m.end():m.end() + 1] in (b" ", b"\t")):
            value = int(m.group())
            if value > MAX_NUMBER:
                raise ParseError("Number too large")
            out.append(value)
            i = m.end()
        elif m := _ATOM.match(line, i):
            if m.end() - i > MAX_ATOM:
                raise ParseError("Word too long")
            if m.end() < n and line[m.end():m.end() + 1] not in (b" ", b"\t"):
                raise ParseError("Unexpected character after a word")
            out.append(Atom(m.group().decode("ascii")))
            i = m.end()
        else:
            raise ParseError("Unexpected character")


def _quoted(line: bytes, i: int, out: list[Token]) -> int:
    """Read a quoted string starting after its opening quote; return the index after the closing one."""
    value = bytearray()
    n = len(line)
    while i < n:
        c = line[i]
        if c == 0x22:  # "
            if len(value) > MAX_QUOTED:
                raise ParseError("Quoted string too long, send a literal")
            if i + 1 < n and line[i + 1] not in _SPACE:
                raise ParseError("Unexpected character after a quoted string")
            out.append(bytes(value))
            return i + 1
        if c == 0x5C:  # backslash: only before a quote or a backslash (QUOTED-SPECIALS)
            if i + 1 >= n or line[i + 1] not in b'"\\':
                raise ParseError("Invalid escape in a quoted string")
            value.append(line[i + 1])
            i += 2
            continue
        if c in (0x00, 0x0D):
            raise ParseError("Invalid character in a quoted string")
        value.append(c)
        i += 1
    raise ParseError("Unterminated quoted string")
