"""Dates for the Sieve date and currentdate tests (RFC 5260 §4, §5).

:func:`field_date` reads the RFC 2822 date-time of a header field (the whole value, or
what follows its last semicolon, as in Received); :func:`date_part` gives one of the
date-parts of §4.2 as the string a key is compared with, in the time zone of ``:zone``,
the date's own (``:originalzone``) or the server's local zone (neither).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from email.utils import format_datetime, parsedate_tz

DATE_PARTS = frozenset({"year", "month", "day", "date", "julian", "hour", "minute", "second", "time", "iso8601",
                        "std11", "zone", "weekday"})
ZONE = re.compile(r"[+-]([0-9]{2})([0-9]{2})\Z")
_MJD_EPOCH = date(1858, 11, 17)  # day 0 of the Modified Julian Day


def zone_error(text: str) -> str | None:
    """What is wrong with a :zone value (RFC 5260 §4.1: "+hhmm" or "-hhmm"), or None."""
    m = ZONE.match(text)
    if m is None:
        return f"a time zone is +hhmm or -hhmm, not {text!r}"
    if int(m.group(1)) > 23 or int(m.group(2)) > 59:
        return f"no such time zone offset {text!r}"
    return None


def zone(text: str) -> timezone:
    """A checked :zone value as a time zone."""
    minutes = int(text[1:3]) * 60 + int(text[3:5])
    return timezone(timedelta(minutes=-minutes if text[0] == "-" else minutes))


def field_date(value: str) -> datetime | None:
    """The date-time in a header field's value, with its own offset; None when there is none
    or it is no real date (February 30th...). -0000 (no known zone, RFC 2822 §3.3) is +0000."""
    text = value.rsplit(";", 1)[-1].strip()
    parsed = parsedate_tz(text)
    if parsed is None:
        return None
    year, month, day, hour, minute, second = parsed[:6]
    offset = parsed[9] or 0
    try:
        return datetime(year, month, day, hour, minute, min(second, 59),
                        tzinfo=timezone(timedelta(seconds=offset)))
    except (ValueError, OverflowError):
        return None


def shifted(moment: datetime, to: timezone | None, original: bool) -> datetime:
    """The moment in the zone a test asks for: ``to``, its own (``original``), else local."""
    if to is not None:
        return moment.astimezone(to)
    if original:
        return moment
    return moment.astimezone()


def now(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def date_part(moment: datetime, part: str) -> str:
    """A date-part (RFC 5260 §4.2) of a moment in the zone it is in."""
    part = part.lower()
    if part == "year":
        return f"{moment.year:04d}"
    if part == "month":
        return f"{moment.month:02d}"
    if part == "day":
        return f"{moment.day:02d}"
    if part == "date":
        return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
    if part == "julian":
        return str((moment.date() - _MJD_EPOCH).days)
    if part == "hour":
        return f"{moment.hour:02d}"
    if part == "minute":
        return f"{moment.minute:02d}"
    if part == "second":
        return f"{moment.second:02d}"
    if part == "time":
        return f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    if part == "iso8601":  # RFC 3339 §5.6, "T" and "Z" upper case, zero offset as "Z"
        text = date_part(moment, "date") + "T" + date_part(moment, "time")
        offset = _offset_minutes(moment)
        return text + ("Z" if offset == 0 else f"{'+' if offset > 0 else '-'}{abs(offset) // 60:02d}:"
                                              f"{abs(offset) % 60:02d}")
    if part == "std11":
        return format_datetime(moment)
    if part == "zone":
        offset = _offset_minutes(moment)
        return f"{'-' if offset < 0 else '+'}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"
    if part == "weekday":  # "0" is Sunday
        return str((moment.weekday() + 1) % 7)
    raise ValueError(f"no date-part {part!r}")


def _offset_minutes(moment: datetime) -> int:
    offset = moment.utcoffset()
    return int(offset.total_seconds() // 60) if offset is not None else 0


__all__ = ["DATE_PARTS", "date_part", "field_date", "now", "shifted", "zone", "zone_error"]
