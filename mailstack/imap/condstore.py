"""CONDSTORE and QRESYNC (RFC 7162): the arguments they add, and the VANISHED (EARLIER) answer.

The session keeps two switches (``condstore``, ``qresync`` in :class:`.view.ViewMixin`);
the mailbox keeps a mod-sequence per message, its HIGHESTMODSEQ and the UIDs it
expunged (:mod:`mailstack.maildir.index`). This module reads what clients send:

- ``mod-sequence-value`` (1 to 2^63-1) and ``mod-sequence-valzer`` (0 too), §7;
- SELECT/EXAMINE parameters: ``(CONDSTORE)`` and
  ``(QRESYNC (uidvalidity modseq [known-uids [(known-sequence-set known-uid-set)]]))``, §3.2.5;
- FETCH modifiers ``(CHANGEDSINCE n [VANISHED])`` (§3.1.4.1, §3.2.6) and the STORE
  modifier ``(UNCHANGEDSINCE n)`` (§3.1.3);

and works out which UIDs a VANISHED (EARLIER) names: those expunged after the
client's mod-sequence, among the UIDs it says it knows, above the last
message-number/UID pair of its sample that still matches (§3.2.5.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailstack.imap.parse import Atom, ParseError, Token, number, paren_list, sequence_set
from mailstack.maildir.index import MAX_MODSEQ

MAX_MATCH_PAIRS = 100_000  # sequence-number/UID pairs of a QRESYNC sample that are looked at

Ranges = list[tuple[int, int]]


def mod_sequence(tok: Token, *, zero: bool = False) -> int:
    """A ``mod-sequence-value`` (or ``mod-sequence-valzer`` with ``zero``); ParseError otherwise."""
    if isinstance(tok, Atom) and tok.value.isdigit() and tok.value.isascii() and len(tok.value) <= 19:
        n = int(tok.value)
        if n <= MAX_MODSEQ and (n or zero):
            return n
    raise ParseError("expected a mod-sequence (1 to 9223372036854775807)")


def known_set(tok: Token) -> Ranges:
    """A sequence set without ``*`` (known-uids, known-sequence-set), as merged ascending ranges."""
    seq = sequence_set(tok)
    ranges = []
    for a, b in seq:
        if a is None or b is None:
            raise ParseError("'*' is not allowed here")
        ranges.append((min(a, b), max(a, b)))
    return merge(ranges)


def merge(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def intersect(a: Ranges, b: Ranges) -> Ranges:
    """Two merged ascending range lists -> their common part."""
    out: Ranges = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def contains(ranges: Ranges, n: int) -> bool:
    lo, hi = 0, len(ranges)
    while lo < hi:
        mid = (lo + hi) // 2
        if ranges[mid][1] < n:
            lo = mid + 1
        else:
            hi = mid
    return lo < len(ranges) and ranges[lo][0] <= n


def ranges_text(ranges: Ranges) -> str:
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in ranges)


@dataclass(frozen=True, slots=True)
class QResync:
    """The QRESYNC select parameter (RFC 7162 §3.2.5)."""

    uidvalidity: int
    modseq: int
    known: Ranges | None  # None: 1 to UIDNEXT-1
    sample: tuple[list[int], list[int]] | None  # (message numbers, their UIDs), ascending


@dataclass(frozen=True, slots=True)
class SelectParams:
    condstore: bool = False
    qresync: QResync | None = None


def select_params(args: list[Token]) -> SelectParams:
    """What follows the mailbox name of SELECT/EXAMINE (RFC 4466 select-params)."""
    if not args:
        return SelectParams()
    if len(args) != 1:
        raise ParseError("unexpected SELECT arguments")
    condstore = False
    qresync = None
    items = paren_list(args[0])
    i = 0
    while i < len(items):
        name = items[i]
        if not isinstance(name, Atom):
            raise ParseError("expected a SELECT parameter")
        key = name.upper()
        if key == "CONDSTORE" and not condstore:
            condstore = True
            i += 1
        elif key == "QRESYNC" and qresync is None and i + 1 < len(items):
            qresync = _qresync(items[i + 1])
            i += 2
        else:
            raise ParseError(f"unknown SELECT parameter {key[:20]}")
    return SelectParams(condstore, qresync)


def _qresync(tok: Token) -> QResync:
    parts = paren_list(tok)
    if not 2 <= len(parts) <= 4:
        raise ParseError("QRESYNC needs (uidvalidity modseq [known-uids [sample]])")
    uidvalidity = number(parts[0], nonzero=True)
    modseq = mod_sequence(parts[1])
    known = None
    sample = None
    rest = parts[2:]
    if rest and not isinstance(rest[0], list):
        known = known_set(rest.pop(0))
    if rest:
        pair = paren_list(rest.pop(0))
        if len(pair) != 2 or rest:
            raise ParseError("QRESYNC sample is (known-sequence-set known-uid-set)")
        sample = (_expand(pair[0]), _expand(pair[1]))
    return QResync(uidvalidity, modseq, known, sample)


def _expand(tok: Token) -> list[int]:
    """An ascending sequence set without ``*``, as numbers; at most MAX_MATCH_PAIRS looked at."""
    out: list[int] = []
    for a, b in sequence_set(tok):
        if a is None or b is None:
            raise ParseError("'*' is not allowed here")
        lo, hi = min(a, b), max(a, b)
        room = MAX_MATCH_PAIRS - len(out)
        out.extend(range(lo, min(hi, lo + room - 1) + 1))
        if len(out) >= MAX_MATCH_PAIRS:
            break
    return out


@dataclass(frozen=True, slots=True)
class FetchModifiers:
    changed_since: int | None = None
    vanished: bool = False


def fetch_modifiers(tok: Token) -> FetchModifiers:
    """``(CHANGEDSINCE n [VANISHED])`` after FETCH's items (RFC 4466 fetch-modifiers)."""
    items = paren_list(tok)
    changed = None
    vanished = False
    i = 0
    while i < len(items):
        name = items[i]
        key = name.upper() if isinstance(name, Atom) else ""
        if key == "CHANGEDSINCE" and changed is None and i + 1 < len(items):
            changed = mod_sequence(items[i + 1])  # RFC 7162 §7: not 0
            i += 2
        elif key == "VANISHED" and not vanished:
            vanished = True
            i += 1
        else:
            raise ParseError("unknown FETCH modifier")
    if not items:
        raise ParseError("empty FETCH modifier list")
    return FetchModifiers(changed, vanished)


def store_modifiers(tok: Token) -> int:
    """``(UNCHANGEDSINCE n)`` (RFC 7162 §3.1.3; only one, and 0 allowed)."""
    items = paren_list(tok)
    if len(items) != 2 or not isinstance(items[0], Atom) or items[0].upper() != "UNCHANGEDSINCE":
        raise ParseError("the STORE modifier is (UNCHANGEDSINCE mod-sequence)")
    return mod_sequence(items[1], zero=True)


def sample_cutoff(sample: tuple[list[int], list[int]] | None, uids: list[int]) -> int:
    """The UID up to which the client knows every expunge (RFC 7162 §3.2.5.2): that of the
    last pair of its sample, taken in order, whose message number still names that UID."""
    if sample is None:
        return 0
    cutoff = 0
    for msn, uid in zip(*sample, strict=False):
        if not 0 < msn <= len(uids) or uids[msn - 1] != uid:
            break
        cutoff = uid
    return cutoff


def vanished_earlier(expunged: Ranges, known: Ranges, above: int) -> bytes:
    """``* VANISHED (EARLIER) ...`` for the expunged UIDs the client knows, above ``above``; b""
    when there are none."""
    wanted = intersect(expunged, known)
    if above:
        wanted = intersect(wanted, [(above + 1, 2**32 - 1)])
    if not wanted:
        return b""
    return b"* VANISHED (EARLIER) " + ranges_text(wanted).encode() + b"\r\n"


__all__ = ["FetchModifiers", "QResync", "SelectParams", "contains", "fetch_modifiers", "intersect", "known_set",
           "merge", "mod_sequence", "sample_cutoff", "select_params", "store_modifiers", "vanished_earlier"]
