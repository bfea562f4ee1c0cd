"""Response values and their wire form (RFC 3501 §7, §9): strings, lists, dates.

Everything the server sends is built from these helpers and written by the
protocol in one place. Strings that are 7-bit printable are quoted; anything
else (8-bit, CR, LF, very long) goes out as a literal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, slots=True)
class Response:
    """One complete response: ``tag`` is ``*`` for untagged, ``+`` for continuations."""

    data: bytes

    def to_bytes(self) -> bytes:
        """The connection skeleton's reply shape."""
        return self.data

    @staticmethod
    def untagged(text: str | bytes) -> Response:
        raw = text.encode("utf-8") if isinstance(text, str) else text
        return Response(b"* " + raw + b"\r\n")


def status(tag: str, kind: str, text: str, code: str = "") -> Response:
    """``a1 OK [CODE] text`` / ``* BYE text`` (RFC 3501 §7.1). The text is ASCII (RFC 3501 §9
    ``text``; RFC 9051 allows UTF-8 only after ENABLE IMAP4rev2): anything else is ``?``."""
    body = f"[{code}] {text}" if code else text
    return Response(f"{tag} {kind} {body}\r\n".encode("ascii", "replace"))


def string(value: bytes | str, *, utf8: bool = False) -> bytes:
    """An IMAP ``string``: quoted when safe, else a literal. With ``utf8`` (RFC 9051 §4.3.1,
    after ENABLE IMAP4rev2) a quoted string may hold UTF-8 too."""
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if len(raw) < 1000 and all(0x20 <= b < 0x7F or (utf8 and b >= 0x80) for b in raw) and (
            not utf8 or raw.isascii() or _is_utf8(raw)):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def nstring(value: bytes | str | None) -> bytes:
    return b"NIL" if value is None else string(value)


def astring(value: str, *, utf8: bool = False) -> bytes:
    """A mailbox name or similar: atom when possible, else a string."""
    if value and all(c.isascii() and c.isprintable() and c not in ' (){%*"\\]' for c in value):
        return value.encode("ascii")
    return string(value, utf8=utf8)


def plist(items: list[bytes]) -> bytes:
    return b"(" + b" ".join(items) + b")"


def imap_date(epoch: int) -> str:
    """``17-Jul-1996 02:44:25 +0000`` (RFC 3501 §9 date-time), in UTC."""
    day, second = divmod(epoch, 86400)
    prefix = _DAYS.get(day)
    if prefix is None:  # the date part is worked out once per day (FETCH 1:* INTERNALDATE)
        t = time.gmtime(day * 86400)
        prefix = f"{t.tm_mday:2d}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year:04d} "
        if len(_DAYS) >= 4096:
            _DAYS.clear()
        _DAYS[day] = prefix
    hour, rest = divmod(second, 3600)
    return f"{prefix}{hour:02d}:{rest // 60:02d}:{rest % 60:02d} +0000"


_DAYS: dict[int, str] = {}


def parse_date_time(text: str) -> int | None:
    """RFC 3501 §9 ``date-time`` (APPEND) -> epoch seconds, or None."""
    import re

    m = re.fullmatch(r" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})", text)
    if not m:
        return None
    month = m.group(2).capitalize()
    if month not in _MONTHS:
        return None
    import calendar

    try:
        base = calendar.timegm((int(m.group(3)), _MONTHS.index(month) + 1, int(m.group(1)),
                                int(m.group(4)), int(m.group(5)), int(m.group(6)), 0, 0, 0))
        time.strptime(f"{m.group(1)}-{month}-{m.group(3)}", "%d-%b-%Y")
    except (ValueError, OverflowError):
        return None
    offset = (int(m.group(8)) * 60 + int(m.group(9))) * 60
    return base - offset if m.group(7) == "+" else base + offset


def parse_date(text: str) -> tuple[int, int, int] | None:
    """RFC 3501 §9 ``date`` (SEARCH): ``1-Feb-1994`` -> (1994, 2, 1)."""
    import re

    m = re.fullmatch(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})", text)
    if not m or m.group(2).capitalize() not in _MONTHS:
        return None
    try:
        time.strptime(f"{m.group(1)}-{m.group(2).capitalize()}-{m.group(3)}", "%d-%b-%Y")
    except ValueError:
        return None
    return int(m.group(3)), _MONTHS.index(m.group(2).capitalize()) + 1, int(m.group(1))
