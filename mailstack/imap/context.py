"""ESORT and CONTEXT=SEARCH/SORT (RFC 5267): result options, partial results, updates.

The result options of ``SEARCH RETURN (...)`` (RFC 4731: MIN MAX ALL COUNT; RFC 5182:
SAVE) gain CONTEXT (a hint, taken and ignored, §4.2), PARTIAL lo:hi (§4.4: that slice of
the results, in their order) and UPDATE (§4.3: the client is told of later changes to
the result with ADDTO and REMOVEFROM). SORT takes the same options (ESORT, §3), and
then answers with ESEARCH in sort order: MIN and MAX are the first and last in that
order, ALL lists them in it (ascending runs only as ranges, §3.2).

Updates are kept for UID SEARCH and UID SORT whose criteria hold no message numbers,
no "$", no "*" in a UID set and no OLDER/YOUNGER (their meaning is fixed when the command
arrives, §4.3, or changes with time rather than with the messages): each keeps its last
result as UIDs and is worked out again after a command or an IDLE wake-up that found
the mailbox changed. A session keeps at most MAX_UPDATES of them; others, and those
of SEARCH and SORT by message number, are refused with ``* NO [NOUPDATE "tag"]``
(§4.3.1), their other options still answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailstack.imap.parse import Atom, ParseError, Token, paren_list

MAX_UPDATES = 5  # update contexts per session
RESULT_OPTIONS = ("MIN", "MAX", "ALL", "COUNT", "SAVE", "CONTEXT", "UPDATE", "PARTIAL")


@dataclass(frozen=True, slots=True)
class Returns:
    """What a ``RETURN (...)`` asked for."""

    options: frozenset[str]
    partial: tuple[int, int] | None = None  # PARTIAL lo:hi, lo <= hi
    partial_text: str = ""  # the range as the client wrote it, echoed back (§4.4)

    def __contains__(self, option: str) -> bool:
        return option in self.options


def parse_returns(tok: Token, *, sort: bool = False) -> Returns:
    """The options of ``RETURN (...)``; an empty list means ALL (RFC 4731 §3.1, RFC 5267 §3.3)."""
    options: set[str] = set()
    partial = None
    text = ""
    items = paren_list(tok)
    i = 0
    while i < len(items):
        item = items[i]
        name = item.upper() if isinstance(item, Atom) else ""
        if name not in RESULT_OPTIONS or name in options or (sort and name == "SAVE"):
            raise ParseError("unknown or repeated RETURN option")
        if name == "PARTIAL":
            arg = items[i + 1] if i + 1 < len(items) else None
            if not isinstance(arg, Atom):
                raise ParseError("PARTIAL needs a range such as 1:100")
            text = arg.value
            partial = _range(text)
            i += 1
        options.add(name)
        i += 1
    if "ALL" in options and "PARTIAL" in options:  # §4.4: one of them at most
        raise ParseError("ALL and PARTIAL cannot both be asked for")
    if not options - {"CONTEXT", "UPDATE"}:
        options.add("ALL")
    return Returns(frozenset(options), partial, text)


def _range(text: str) -> tuple[int, int]:
    """``partial-range``: nz-number ":" nz-number, either way round (§5)."""
    lo, colon, hi = text.partition(":")
    if not colon or not all(p.isdigit() and p.isascii() and 0 < len(p) <= 10 and p[0] != "0" for p in (lo, hi)):
        raise ParseError("PARTIAL needs a range such as 1:100")
    a, b = int(lo), int(hi)
    if not (0 < a < 2**32 and 0 < b < 2**32):
        raise ParseError("PARTIAL range out of bounds")
    return (min(a, b), max(a, b))


def ordered_set(numbers: list[int]) -> str:
    """Numbers in a given order as a sequence set: ascending runs as ranges, nothing else
    reordered (RFC 5267 §3.2: ``5,3:4`` is 5, 3, 4)."""
    parts: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(str(numbers[i]) if i == j else f"{numbers[i]}:{numbers[j]}")
        i = j + 1
    return ",".join(parts)


def result_items(hits: list[int], returns: Returns, *, sorted_order: bool) -> list[str]:
    """The return data of an ESEARCH for ``hits`` (in the requested order): MIN MAX COUNT ALL
    PARTIAL. For a SEARCH, ``hits`` are ascending and MIN/MAX are the lowest and highest;
    for a SORT, the first and last in sort order (§3.1)."""
    parts = []
    if hits and "MIN" in returns:
        parts.append(f"MIN {hits[0] if sorted_order else min(hits)}")
    if hits and "MAX" in returns:
        parts.append(f"MAX {hits[-1] if sorted_order else max(hits)}")
    if "COUNT" in returns:
        parts.append(f"COUNT {len(hits)}")
    if hits and "ALL" in returns:
        parts.append(f"ALL {ordered_set(hits)}")
    if returns.partial is not None:
        lo, hi = returns.partial
        part = hits[lo - 1:hi]
        parts.append(f"PARTIAL ({returns.partial_text} {ordered_set(part) if part else 'NIL'})")
    return parts


@dataclass(slots=True)
class UpdateContext:
    """One UPDATE result kept current (§4.3): a UID SEARCH or UID SORT."""

    tag: str
    criteria: list[Token]
    charset: str | None
    sort_keys: list[tuple[str, bool]] | None  # None: a SEARCH (mailbox order)
    result: list[int]  # UIDs, in the requested order
    version: tuple[int, int, int]  # what the result was worked out against (selected._stamp)
    modseq: int  # the mailbox's HIGHESTMODSEQ then: messages changed since are looked at again
    last_uid: int  # the highest UID the client had been told of then: those above are new
    pending: bool = field(default=False)  # being worked out again


def changes(old: list[int], new: list[int], *, sorted_order: bool) -> list[str]:
    """REMOVEFROM and ADDTO items taking ``old`` to ``new`` (§4.3.3, §4.3.4), processed in order.

    A SEARCH result is kept in mailbox order, so position 0 serves (the client puts each
    UID where it belongs). A SORT result is changed by position: removals from the end
    backwards (each position holds before its own removal), then insertions from the front
    (each position is the one in the new result). Sort keys never change, so what stays
    keeps its order.
    """
    kept = set(new)
    gone = [u for u in old if u not in kept]
    before = set(old)
    came = [u for u in new if u not in before]
    if not gone and not came:
        return []
    items = []
    if not sorted_order:
        if gone:
            items.append(f"REMOVEFROM (0 {ordered_set(sorted(gone))})")
        if came:
            items.append(f"ADDTO (0 {ordered_set(sorted(came))})")
        return items
    if gone:
        runs = _runs([i for i, u in enumerate(old) if u not in kept], old)
        items.append("REMOVEFROM (" + " ".join(f"{pos} {ordered_set(uids)}" for pos, uids in reversed(runs)) + ")")
    if came:
        runs = _runs([i for i, u in enumerate(new) if u not in before], new)
        items.append("ADDTO (" + " ".join(f"{pos} {ordered_set(uids)}" for pos, uids in runs) + ")")
    return items


def _runs(indexes: list[int], values: list[int]) -> list[tuple[int, list[int]]]:
    """Consecutive indexes grouped: (1-based position of the first, the values there)."""
    runs: list[tuple[int, list[int]]] = []
    for i in indexes:
        if runs and runs[-1][0] + len(runs[-1][1]) - 1 == i:
            runs[-1][1].append(values[i])
        else:
            runs.append((i + 1, [values[i]]))
    return runs
