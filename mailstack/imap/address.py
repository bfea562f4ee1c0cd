"""RFC 5322 address lists for ENVELOPE and the address SEARCH keys.

RFC 5322 §3.4 (mailbox, name-addr, addr-spec, group), §3.2.2 (comments, kept
here: ``user@host (Real Name)`` names its person in a comment), §4.4 (the
obsolete route ``<@relay:user@host>``); RFC 3501 §7.4.2 (the ENVELOPE address
structure: quoting removed, the route in addr-adl, NIL host markers for group
start and end) and §6.4.4 (FROM/TO/CC/BCC match the address structure);
RFC 2047 (encoded words, decoded for searching only). Parsing never fails: a
damaged header yields whatever addresses can be recognised.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from dataclasses import dataclass

# One token: (kind, text, space before it). kind is "a" (atom), "q" (quoted string, quoting
# removed), "c" (comment, its text), "l" (domain literal, brackets kept) or the special itself
# ("<", ">", "@", ",", ":", ";", ".").
_Tok = tuple[str, str, bool]
_SCAN = re.compile(r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<a>[^()<>\[\]:;@\\,."\ \t\r\n]+)
  | "(?P<q>(?:[^"\\]|\\.)*)"
  | (?P<l>\[[^\]]*\])
  | (?P<s>[<>:;@,.])
""", re.X | re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_FOLD = re.compile(r"\r?\n")


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One mailbox; ``name`` is the display name, ``comment`` the last comment outside ``<>``."""

    name: str | None
    adl: str | None
    local: str
    domain: str
    comment: str | None = None

    @property
    def personal(self) -> str | None:
        """The person's name as ENVELOPE gives it: the display name, else the comment."""
        return self.name if self.name else self.comment


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    members: tuple[Mailbox, ...]


EnvelopeAddress = tuple[str | None, str | None, str | None, str | None]  # name, adl, mailbox, host


def _tokens(value: str) -> list[_Tok]:
    out: list[_Tok] = []
    i, n = 0, len(value)
    space = False
    scan = _SCAN.match
    while i < n:
        m = scan(value, i)
        if m is None:
            c = value[i]
            if c == "(":
                text, i = _comment(value, i)
                out.append(("c", text, space))
                space = True
            elif c == '"':  # unterminated: the rest is the string
                out.append(("q", _QUOTED_PAIR.sub(r"\1", _FOLD.sub("", value[i + 1:])), space))
                i = n
            else:  # a stray ")", "]", "[" or backslash carries nothing
                i += 1
            continue
        kind = m.lastgroup
        i = m.end()
        if kind == "ws":
            space = True
            continue
        if kind == "q":
            text = m.group("q")
            if "\\" in text or "\n" in text:
                text = _QUOTED_PAIR.sub(r"\1", _FOLD.sub("", text))
            out.append(("q", text, space))
        elif kind == "l":
            out.append(("l", "".join(m.group("l").split()), space))
        elif kind == "s":
            out.append((m.group("s"), m.group("s"), space))
        else:
            out.append(("a", m.group("a"), space))
        space = False
    return out


def _comment(value: str, i: int) -> tuple[str, int]:
    """The text of the comment starting at ``value[i] == "("`` (nested ones kept) and its end."""
    depth = 0
    buf: list[str] = []
    n = len(value)
    while i < n:
        c = value[i]
        if c == "\\" and i + 1 < n:
            buf.append(value[i + 1])
            i += 2
            continue
        if c == "(":
            depth += 1
            if depth > 1:
                buf.append(c)
        elif c == ")":
            depth -= 1
            if depth == 0:
                return " ".join("".join(buf).split()), i + 1
            buf.append(c)
        else:
            buf.append(c)
        i += 1
    return " ".join("".join(buf).split()), n


def _phrase(toks: list[_Tok]) -> str:
    """A display name or group name: words joined by one space where the header had space."""
    out: list[str] = []
    for kind, text, space in toks:
        if kind == "c":
            continue
        if out and space:
            out.append(" ")
        out.append(text)
    return "".join(out)


def _addr_spec(toks: list[_Tok]) -> tuple[str, str]:
    """(local part without quoting, domain); white space and comments inside are dropped."""
    words = [t[1] for t in toks if t[0] != "c"]
    kinds = [t[0] for t in toks if t[0] != "c"]
    if "@" not in kinds:
        return "".join(words), ""
    at = len(kinds) - 1 - kinds[::-1].index("@")
    return "".join(words[:at]), "".join(words[at + 1:])


def _last_comment(toks: list[_Tok]) -> str | None:
    comments = [t[1] for t in toks if t[0] == "c" and t[1]]
    return comments[-1] if comments else None


def _mailbox(chunk: list[_Tok]) -> Mailbox | None:
    kinds = [t[0] for t in chunk]
    if "<" not in kinds:
        if all(k == "c" for k in kinds):
            return None
        local, domain = _addr_spec(chunk)
        return Mailbox(None, None, local, domain, _last_comment(chunk) if "c" in kinds else None)
    lt = kinds.index("<")
    gt = kinds.index(">", lt) if ">" in kinds[lt:] else len(chunk)
    inner = [t for t in chunk[lt + 1:gt] if t[0] != "c"]
    adl = None
    if inner and inner[0][0] == "@" and any(t[0] == ":" for t in inner):  # RFC 5322 §4.4 obs-route
        colon = next(k for k, t in enumerate(inner) if t[0] == ":")
        adl = "".join(t[1] for t in inner[:colon])
        inner = inner[colon + 1:]
    local, domain = _addr_spec(inner)
    comment = _last_comment(chunk[:lt] + chunk[gt + 1:]) if "c" in kinds else None
    return Mailbox(_phrase(chunk[:lt]) or None, adl, local, domain, comment)


def parse_address_list(value: str) -> list[Mailbox | Group]:
    """An address-list header value (From, To, Cc, ...) -> mailboxes and groups, in order."""
    out: list[Mailbox | Group] = []
    chunk: list[_Tok] = []
    group_name = ""
    members: list[Mailbox] | None = None  # inside a group
    in_angle = False

    def flush() -> None:
        one = _mailbox(chunk) if chunk else None
        if one is not None:
            if members is not None:
                members.append(one)
            else:
                out.append(one)
        chunk.clear()

    for t in _tokens(value):
        kind = t[0]
        if in_angle:
            in_angle = kind != ">"
        elif kind == ",":
            flush()
            continue
        elif kind == ":" and members is None and not any(x[0] == "@" for x in chunk):
            group_name, members = _phrase(chunk), []
            chunk.clear()
            continue
        elif kind == ";":
            flush()
            if members is not None:
                out.append(Group(group_name, tuple(members)))
                members = None
            continue
        elif kind == "<":
            in_angle = True
        chunk.append(t)
    flush()
    if members is not None:  # a group never closed with ";"
        out.append(Group(group_name, tuple(members)))
    return out


def envelope_addresses(value: str) -> list[EnvelopeAddress]:
    """RFC 3501 §7.4.2 address structures; a group is a ``(NIL NIL name NIL)`` start marker,
    its members and a ``(NIL NIL NIL NIL)`` end marker. A mailbox's own mailbox and host are
    never NIL (an empty string when the header lacks them), so they cannot read as markers."""
    out: list[EnvelopeAddress] = []
    for item in parse_address_list(value):
        if isinstance(item, Group):
            out.append((None, None, item.name, None))
            out.extend((m.personal, m.adl, m.local, m.domain) for m in item.members)
            out.append((None, None, None, None))
        else:
            out.append((item.personal, item.adl, item.local, item.domain))
    return out


def search_texts(value: str) -> list[str]:
    """What FROM/TO/CC/BCC match against (RFC 3501 §6.4.4), with encoded words decoded:
    ``Name <local@domain>`` per mailbox (``<@route:local@domain>`` with a route), the
    mailbox's comment, and each group's name."""
    out: list[str] = []
    for item in parse_address_list(value):
        members = item.members if isinstance(item, Group) else (item,)
        if isinstance(item, Group) and item.name:
            out.append(decode_words(item.name))
        for m in members:
            addr = f"{m.local}@{m.domain}" if m.domain else m.local
            if m.adl:
                addr = f"{m.adl}:{addr}"
            out.append(f"{decode_words(m.name)} <{addr}>" if m.name else addr)
            if m.comment:
                out.append(decode_words(m.comment))
    return out


# -- RFC 2047 encoded words ---------------------------------------------------------------

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(?<=\?=)[ \t\r\n]+(?==\?)")


def decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words; white space between adjacent ones goes (§6.2).
    A word in an unknown charset or with a bad encoding is left as it is."""
    if "=?" not in text:
        return text
    return _ENCODED_WORD.sub(_decode_word, _BETWEEN_WORDS.sub("", text))


def _decode_word(m: re.Match[str]) -> str:
    charset = m.group(1).split("*", 1)[0]  # RFC 2231 §5: charset*language
    try:
        codecs.lookup(charset)
        if m.group(2) in "Qq":
            raw = binascii.a2b_qp(m.group(3).encode("ascii"), header=True)
        else:
            data = m.group(3)
            raw = base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
        return raw.decode(charset, "replace")
    except (LookupError, ValueError, UnicodeEncodeError):
        return m.group(0)
