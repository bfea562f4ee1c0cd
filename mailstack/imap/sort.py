"""SORT (RFC 5256 §3) with DISPLAYFROM and DISPLAYTO (RFC 5957).

Keys: ARRIVAL (internal date), CC, DATE (the Date: header in UTC, else the
internal date), FROM, SIZE, SUBJECT (the base subject, §2.1), TO, DISPLAYFROM,
DISPLAYTO, each reversible with REVERSE. Address keys compare the local part
(addr-mailbox) of the header's first address; the DISPLAY keys its display
name, or its address when it has none. Strings compare with i;ascii-casemap
(ASCII letters folded, everything else by code point, which is UTF-8 octet
order); a missing value is the empty string and sorts first. Messages equal on
every key keep mailbox order (§3: by sequence number).
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable
from typing import Any

from mailstack.imap import address, mime
from mailstack.imap.parse import Atom, ParseError, Token, paren_list

KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")
_HEADER_KEYS = {"CC", "DATE", "FROM", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

SortKey = tuple[str, bool]  # (key, reversed)


def sort_criteria(tok: Token) -> list[SortKey]:
    """``(REVERSE DATE SUBJECT)`` -> [("DATE", True), ("SUBJECT", False)]."""
    out: list[SortKey] = []
    reverse = False
    for item in paren_list(tok):
        name = item.upper() if isinstance(item, Atom) else ""
        if name == "REVERSE" and not reverse:
            reverse = True
            continue
        if name not in KEYS:
            raise ParseError("unknown sort key")
        out.append((name, reverse))
        reverse = False
    if not out or reverse:
        raise ParseError("sort criteria need a key after REVERSE, and at least one key")
    return out


def needs_headers(keys: list[SortKey]) -> bool:
    return any(key in _HEADER_KEYS for key, _ in keys)


def sort_messages(msns: list[int], keys: list[SortKey], headers: dict[int, bytes],
                  facts: dict[int, tuple[int, int]]) -> list[int]:
    """``msns`` in the order ``keys`` give; ``facts`` holds (size, internal date) per message."""
    ordered = sorted(msns)  # the final tie-break: mailbox order
    for key, reverse in reversed(keys):  # stable sorts, least significant key first
        value = _value_of(key, headers, facts)
        ordered.sort(key=value, reverse=reverse)
    return ordered


def _value_of(key: str, headers: dict[int, bytes], facts: dict[int, tuple[int, int]]) -> Callable[[int], Any]:
    if key == "ARRIVAL":
        return lambda msn: facts[msn][1]
    if key == "SIZE":
        return lambda msn: facts[msn][0]
    if key == "DATE":
        return lambda msn: _sent(headers.get(msn, b""), facts[msn][1])
    if key == "SUBJECT":
        return lambda msn: _fold(base_subject(_field(headers.get(msn, b""), "subject")))
    field = {"CC": "cc", "FROM": "from", "TO": "to", "DISPLAYFROM": "from", "DISPLAYTO": "to"}[key]
    display = key.startswith("DISPLAY")
    return lambda msn: _fold(_first_address(_field(headers.get(msn, b""), field), display))


def _field(header: bytes, name: str) -> str:
    for n, raw in mime.header_fields(header):
        if n == name:
            return mime.field_value(raw)
    return ""


def _sent(header: bytes, internal_date: int) -> float:
    """The Date: header as UTC seconds; the internal date when it is missing or cannot be read."""
    value = _field(header, "date")
    parsed = email.utils.parsedate_tz(value) if value else None
    if parsed is None:
        return float(internal_date)
    try:
        return float(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return float(internal_date)


def _first_address(value: str, display: bool) -> str:
    for item in address.parse_address_list(value):
        mailboxes = item.members if isinstance(item, address.Group) else (item,)
        for m in mailboxes:
            if not display:
                return m.local
            if m.name:
                return address.decode_words(m.name)
            return f"{m.local}@{m.domain}" if m.domain else m.local
    return ""


def _fold(text: str) -> str:
    return text.translate(_ASCII_FOLD)


# -- the base subject (RFC 5256 §2.1) ---------------------------------------------------------

_WSP_RUN = re.compile(r"[ \t]+")
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])+\Z", re.I)  # subj-trailer, repeatedly
_BLOB = r"\[[^\[\]]*\][ \t]*"
_LEADER = re.compile(rf"(?:(?:{_BLOB})*(?:re|fwd?)[ \t]*(?:{_BLOB})?:|[ \t]+)", re.I)  # subj-leader
_BLOB_PREFIX = re.compile(_BLOB)


def base_subject(subject: str) -> str:
    """The subject without reply and forward markers, list tags and "(fwd)" trailers."""
    text = address.decode_words(subject)
    text = _WSP_RUN.sub(" ", text.replace("\r\n", " ").replace("\n", " ").replace("\t", " "))
    while True:
        text = _TRAILER.sub("", text)  # (2)
        while True:  # (3) and (4), until neither applies
            m = _LEADER.match(text)
            if m and m.end() > 0:
                text = text[m.end():]
                continue
            blob = _BLOB_PREFIX.match(text)
            if blob and blob.end() < len(text):  # only if something is left after it
                text = text[blob.end():]
                continue
            break
        if text[:5].lower() == "[fwd:" and text.endswith("]"):  # (6)
            text = text[5:-1]
            continue
        return text
