"""SORT (RFC 5256 §3) with DISPLAYFROM and DISPLAYTO (RFC 5957), and THREAD (§4).

Keys: ARRIVAL (internal date), CC, DATE (the Date: header in UTC, else the
internal date), FROM, SIZE, SUBJECT (the base subject, §2.1), TO, DISPLAYFROM,
DISPLAYTO, each reversible with REVERSE. Address keys compare the local part
(addr-mailbox) of the header's first address; the DISPLAY keys its display
name, or its address when it has none. Strings compare with i;ascii-casemap
(ASCII letters folded, everything else by code point, which is UTF-8 octet
order); a missing value is the empty string and sorts first. Messages equal on
every key keep mailbox order (§3: by sequence number).

THREAD=ORDEREDSUBJECT groups by base subject; THREAD=REFERENCES follows
Message-ID, References and In-Reply-To through the seven steps of §4 (empty
containers for messages referred to but absent, no loops, then threads with the
same base subject joined). Both order by the DATE key. A THREAD over more than
MAX_MESSAGES messages is refused with NO [LIMIT]. What they need of each header
(``values_of``) is worked out once per message and key, and kept per mailbox.
"""

from __future__ import annotations

import calendar
import email.utils
import functools
import re
import sys
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from mailstack.imap import address, mime
from mailstack.imap.parse import Atom, ParseError, Token, paren_list
from mailstack.memory import collector_paused

KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")
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


FIELDS = frozenset({"subject", "date", "from", "to", "cc", "message-id", "references", "in-reply-to"})
FIELD_LIMIT = 2048  # octets of each field read for SORT and THREAD (References: its end, the nearest)
MAX_MESSAGES = 100_000  # messages one SORT or THREAD arranges
CACHE_LIMIT = 400_000  # values (a key of a message) kept for all mailboxes together


# What SORT and THREAD need of a header, key by key, each worked out only when asked for:
# "date" (UTC seconds or None), "subject" ((folded base subject, reply?)), "from", "to", "cc"
# (addr-mailbox, folded), "displayfrom", "displayto", "thread" ((Message-ID, references)).
Values = dict[str, dict[int, Any]]  # key -> message -> value
_SORT_NEEDS = {"DATE": "date", "SUBJECT": "subject", "FROM": "from", "TO": "to", "CC": "cc",
               "DISPLAYFROM": "displayfrom", "DISPLAYTO": "displayto"}
THREAD_NEEDS = frozenset({"date", "subject", "thread"})


def needed(keys: list[SortKey]) -> set[str]:
    """The header values a SORT with these keys reads."""
    return {_SORT_NEEDS[key] for key, _ in keys if key in _SORT_NEEDS}


# The fields of FIELDS, each with its folded lines and line end (what mime.header_fields gives):
# found by one scan of the header, without splitting every other field out of it.
# A line ends at CRLF, LF or a lone CR (as bytes.splitlines, which mime.header_fields uses, has it).
_FIELDS_WANTED = re.compile(rb"(?:^|(?<=\r))(subject|date|from|to|cc|message-id|references|in-reply-to)[ \t]*:"
                            rb"[^\r\n]*(?:(?:\r\n|\r|\n)[ \t][^\r\n]*)*(?:\r\n|\r|\n)?", re.I | re.M)
_KEY_FIELDS = {"date": ("date",), "subject": ("subject",), "from": ("from",), "displayfrom": ("from",),
               "to": ("to",), "displayto": ("to",), "cc": ("cc",),
               "thread": ("message-id", "references", "in-reply-to")}


_BLANK_LINE = re.compile(rb"(?:\A|\n|\r(?!\n))(\r\n|\n)")  # an empty line, lines ending as splitlines has it


@functools.lru_cache(maxsize=64)
def _fields_pattern(wanted: frozenset[str]) -> re.Pattern[bytes]:
    """_FIELDS_WANTED for only the fields these keys read."""
    names = sorted({name for key in wanted for name in _KEY_FIELDS[key]})
    return re.compile(_FIELDS_WANTED.pattern.replace(
        b"subject|date|from|to|cc|message-id|references|in-reply-to", "|".join(names).encode()), re.I | re.M)


def values_of(header: bytes, wanted: set[str]) -> dict[str, Any]:
    """The ``wanted`` values of one message header (each field read at most FIELD_LIMIT far)."""
    blank = _BLANK_LINE.search(header)
    if blank is not None:  # the header ends at its first empty line, as for mime.header_fields
        header = header[:blank.start(1)]
    raws: dict[str, bytes] = {}
    for m in _fields_pattern(frozenset(wanted)).finditer(header):
        name = m.group(1).decode("ascii").lower()
        if name not in raws:  # the first of each field counts
            raws[name] = m.group(0)
    fields: dict[str, str] = {}
    for name, raw in raws.items():
        if len(raw) > FIELD_LIMIT:
            colon = raw.find(b":") + 1
            raw = raw[:colon] + (raw[-FIELD_LIMIT:] if name == "references" else raw[colon:colon + FIELD_LIMIT])
        fields[name] = mime.field_value(raw)
    out: dict[str, Any] = {}
    for key in wanted:
        if key == "date":
            out[key] = _sent(fields.get("date", ""))
        elif key == "subject":
            subject, reply = _base_subject(fields.get("subject", ""))
            out[key] = (_fold(subject), reply)
        elif key == "thread":
            own = _ids(fields.get("message-id", ""))
            references = _ids(fields.get("references", "")) or _ids(fields.get("in-reply-to", ""))[:1]
            out[key] = (own[0] if own else "", tuple(references[-MAX_REFERENCES:]))
        else:
            display = key.startswith("display")
            out[key] = sys.intern(_fold(_first_address(fields.get(key.removeprefix("display"), ""), display)))
    return out


def from_saved(key: str, raw: Any) -> Any:
    """A value as :func:`values_of` makes it, from its saved JSON form; None when it is not one
    (a damaged or foreign file: the value is then worked out again)."""
    if key == "date":
        if raw is None:
            return None
        return float(raw) if type(raw) in (int, float) and -1e12 < raw < 1e12 else _BAD
    if key == "subject":
        if isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], str) and isinstance(raw[1], bool):
            return (raw[0], raw[1])
        return _BAD
    if key == "thread":
        if (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], str) and isinstance(raw[1], list)
                and len(raw[1]) <= MAX_REFERENCES and all(isinstance(r, str) for r in raw[1])):
            return (raw[0], tuple(raw[1]))
        return _BAD
    return sys.intern(raw) if isinstance(raw, str) else _BAD


_BAD = object()  # what from_saved gives for a value it cannot take


def saved(key: str, raw: dict[int, Any]) -> dict[int, Any]:
    """The usable values of a saved file's ``raw`` ones."""
    out = {}
    with collector_paused():
        for uid, value in raw.items():
            value = from_saved(key, value)
            if value is not _BAD:
                out[uid] = value
    return out


_CACHES: weakref.WeakKeyDictionary[Any, tuple[int, Values]] = weakref.WeakKeyDictionary()


def cached_values(mailbox: Any, keep: frozenset[str] = frozenset()) -> Values:
    """The values already worked out for a mailbox's messages, by key and UID (a message's
    header never changes; a new UIDVALIDITY starts afresh). Expunged messages are dropped
    from it, and all mailboxes together keep at most CACHE_LIMIT values: past that, the
    other mailboxes' values go first, then this one's other keys than ``keep`` (those the
    command at hand needs: it may hold more than the limit until the next command)."""
    entry = _CACHES.get(mailbox)
    if entry is None or entry[0] != mailbox.uidvalidity:
        entry = _CACHES[mailbox] = (mailbox.uidvalidity, {})
    values = entry[1]
    present = len(mailbox.by_uid)
    for key, found in values.items():
        if len(found) > 2 * present + 1000:  # many of them expunged meanwhile
            values[key] = {uid: v for uid, v in found.items() if uid in mailbox.by_uid}
    total = sum(len(found) for entry in _CACHES.values() for found in entry[1].values())
    if total > CACHE_LIMIT:
        for other in list(_CACHES.keys()):
            if other is not mailbox:
                del _CACHES[other]
        if sum(len(found) for found in values.values()) > CACHE_LIMIT:
            for key in [k for k in values if k not in keep]:
                del values[key]
    return values


class Basics(Protocol):
    """What SORT and THREAD read of a message besides its header (a mailbox's message record)."""

    @property
    def size(self) -> int: ...
    @property
    def internal_date(self) -> int: ...


def sort_messages(ids: list[int], keys: list[SortKey], values: Values, basics: Mapping[int, Basics]) -> list[int]:
    """``ids`` in the order ``keys`` give; ``basics`` holds size and internal date per message."""
    ordered = sorted(ids)  # the final tie-break: mailbox order
    for key, reverse in reversed(keys):  # stable sorts, least significant key first
        ordered.sort(key=_value_of(key, values, basics), reverse=reverse)
    return ordered


def _value_of(key: str, values: Values, basics: Mapping[int, Basics]) -> Callable[[int], Any]:
    if key == "ARRIVAL":
        return lambda i: basics[i].internal_date
    if key == "SIZE":
        return lambda i: basics[i].size
    if key == "DATE":
        dates = values.get("date", {})
        sent = {i: float(basics[i].internal_date) if (d := dates.get(i)) is None else d for i in basics}
        return sent.__getitem__
    if key == "SUBJECT":
        subjects = values.get("subject", {})
        return lambda i: subjects.get(i, ("", False))[0]
    found = values.get(_SORT_NEEDS[key], {})
    return lambda i: found.get(i, "")


def _date_of(sent: float | None, internal_date: int) -> float:
    return float(internal_date) if sent is None else sent


# The usual RFC 5322 form, "Mon, 23 Nov 2026 10:00:00 +0100", read without email.utils (a
# third of a first SORT by date); anything else (comments, zone names, "-0000") goes there.
_USUAL_DATE = re.compile(r"(?:[A-Za-z]{3}, ?)?(\d{1,2}) ([A-Za-z]{3}) (\d{4}) (\d\d):(\d\d)(?::(\d\d))? "
                         r"([+-])(\d\d)(\d\d)", re.A)
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                       "dec"), 1)}


def _sent(value: str) -> float | None:
    """A Date: header as UTC seconds; None when it is missing or cannot be read."""
    usual = _USUAL_DATE.fullmatch(value)
    if usual is not None:
        day, month, year, hour, minute, second, sign, zone_h, zone_m = usual.groups()
        number = _MONTHS.get(month.lower())
        offset = int(zone_h) * 3600 + int(zone_m) * 60
        # "-0000": no known zone (RFC 5322 §3.3); years below 100 are two-digit years to email.utils
        if number is not None and (offset or sign == "+") and year[0] != "0":
            return float(calendar.timegm((int(year), number, int(day), int(hour), int(minute), int(second or 0)))
                         - (offset if sign == "+" else -offset))
    parsed = email.utils.parsedate_tz(value) if value else None
    if parsed is None:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


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

SUBJECT_LIMIT = 1024  # characters of a subject that count for sorting and threading
_WSP_RUN = re.compile(r"[ \t]+")
_REFWD = re.compile(r"(?:re|fwd?)[ \t]*(?:\[[^\[\]]*\][ \t]*)?:", re.I)  # subj-refwd
_BLOB = re.compile(r"\[[^\[\]]*\][ \t]*")  # subj-blob


def base_subject(subject: str) -> str:
    """The subject without reply and forward markers, list tags and "(fwd)" trailers."""
    return _base_subject(subject)[0]


def _base_subject(subject: str) -> tuple[str, bool]:
    """The base subject, and whether a reply or forward marker was taken off it (§4 step 5).

    One pass from the left with a moving position for steps 3 and 4 (a run of blobs before
    "Re:" comes off blob by blob, which leaves the same text), so a hostile subject costs
    time in proportion to its length; only the first SUBJECT_LIMIT characters count.
    """
    reply = False
    text = address.decode_words(subject[:4 * SUBJECT_LIMIT])
    text = _WSP_RUN.sub(" ", text.replace("\r\n", " ").replace("\n", " ").replace("\t", " "))[:SUBJECT_LIMIT]
    while True:
        text = _without_trailers(text)  # (2)
        pos = 0
        while pos < len(text):  # (3) and (4), until neither applies
            if text[pos] == " ":
                pos += 1
                continue
            m = _REFWD.match(text, pos)
            if m:
                reply = True
                pos = m.end()
                continue
            m = _BLOB.match(text, pos)
            if m and m.end() < len(text):  # a blob comes off only if something is left after it
                pos = m.end()
                continue
            break
        text = text[pos:]
        if text[:5].lower() == "[fwd:" and text.endswith("]"):  # (6)
            text = text[5:-1]
            reply = True
            continue
        return text, reply


def _without_trailers(text: str) -> str:
    """Step 2: white space and "(fwd)" off the end, as often as they are there."""
    end = len(text)
    while True:
        while end and text[end - 1] in " \t":
            end -= 1
        if end >= 5 and text[end - 5:end].lower() == "(fwd)":
            end -= 5
            continue
        return text[:end]


# -- THREAD (RFC 5256 §4) ------------------------------------------------------------------

THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
MAX_DEPTH = 1000  # a reply chain deeper than this is cut (not linked further down)
MAX_REFERENCES = 20  # the nearest message IDs of References that are followed
_MSG_ID = re.compile(r"<([^<>\s]+)>")


class _Node:
    """A container of the REFERENCES algorithm: a message, or an empty one for a message
    that is referred to but not among those threaded."""

    __slots__ = ("children", "msn", "parent")

    def __init__(self, msn: int = 0) -> None:
        self.msn = msn  # 0: empty
        self.parent: _Node | None = None
        self.children: list[_Node] = []

    def reaches(self, other: _Node) -> bool:
        """Is ``other`` this container or below it? Found by walking up from ``other``; a
        chain deeper than MAX_DEPTH counts as reaching (no link is made: never a loop)."""
        node: _Node | None = other
        for _ in range(MAX_DEPTH):
            if node is None:
                return False
            if node is self:
                return True
            node = node.parent
        return True

    def adopt(self, child: _Node) -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)


def thread(algorithm: str, ids: list[int], values: Values, basics: Mapping[int, Basics]) -> str:
    """The THREAD response data, e.g. ``(1 (2)(3))(4)``, for the messages ``ids``."""
    dates, subjects = values.get("date", {}), values.get("subject", {})
    sent = {i: _date_of(dates.get(i), basics[i].internal_date) for i in ids}
    if algorithm == "ORDEREDSUBJECT":
        return _ordered_subject(ids, sent, {i: subjects.get(i, ("", False))[0] for i in ids})
    return _references(ids, values, sent)


def _ordered_subject(msns: list[int], sent: dict[int, float], subjects: dict[int, str]) -> str:
    """ORDEREDSUBJECT: one thread per base subject, its earliest message the parent of the
    others (in date order); threads in the order of their first messages' dates."""
    groups: dict[str, list[int]] = {}
    for msn in sorted(msns, key=lambda n: (subjects[n], sent[n], n)):
        groups.setdefault(subjects[msn], []).append(msn)
    out = []
    for first, *rest in sorted(groups.values(), key=lambda g: (sent[g[0]], g[0])):
        if len(rest) == 1:  # thread-nested needs two lists: one child follows its parent
            out.append(f"({first} {rest[0]})")
        else:
            out.append(f"({first}" + (" " + "".join(f"({n})" for n in rest) if rest else "") + ")")
    return "".join(out)


def _ids(value: str) -> list[str]:
    return _MSG_ID.findall(value)


def _references(ids: list[int], values: Values, sent: dict[int, float]) -> str:
    """REFERENCES: threads by Message-ID, References and In-Reply-To, then by base subject."""
    table: dict[str, _Node] = {}
    containers: list[_Node] = []
    threading = values.get("thread", {})
    for msn in ids:  # (1)
        message_id, references = threading.get(msn, ("", ()))
        node = table.get(message_id) if message_id else None
        if node is not None and node.msn == 0:
            node.msn = msn  # the empty container a reference made for this message
        else:  # no Message-ID, or one another message has: a container of its own
            node = _Node(msn)
            containers.append(node)
            if message_id and message_id not in table:
                table[message_id] = node
        previous: _Node | None = None
        for ref in references:  # (1B): each reference the parent of the next, unless linked or a loop
            link = table.get(ref)
            if link is None:
                link = table[ref] = _Node()
                containers.append(link)
            if previous is not None and link.parent is None and not link.reaches(previous) \
                    and not previous.reaches(link):
                previous.adopt(link)
            previous = link
        if node.parent is not None:  # (1C): the last reference is the parent, whatever came before
            node.parent.children.remove(node)
            node.parent = None
        if previous is not None and not node.reaches(previous):
            previous.adopt(node)
    roots = _pruned([n for n in containers if n.parent is None], top=True)  # (2), (3)
    for root in roots:
        _sort_siblings(root.children, sent)
    _sort_siblings(roots, sent)  # (4)
    roots = _gathered(roots, values.get("subject", {}))  # (5)
    for root in roots:  # (6)
        _sort_tree(root, sent)
    _sort_siblings(roots, sent)
    return "".join(f"({_render(root)})" for root in roots)  # (7)


def _pruned(nodes: list[_Node], *, top: bool) -> list[_Node]:
    """(3): empty containers without children go; those with children give them to their
    parent, except at the top, where only a single child is promoted. Children are pruned
    before their parents, without recursion (reply chains may be thousands deep)."""
    order: list[_Node] = []
    stack = list(nodes)
    while stack:  # every container below the top, parents before children
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):  # children first
        kept: list[_Node] = []
        for child in node.children:
            if child.msn:
                kept.append(child)
            elif child.children:  # an empty one below the top: its children move up
                for grandchild in child.children:
                    grandchild.parent = node
                kept.extend(child.children)
        node.children = kept
    out: list[_Node] = []
    for node in nodes:
        if node.msn:
            out.append(node)
        elif len(node.children) == 1 or (node.children and not top):
            for child in node.children:
                child.parent = node.parent
            out.extend(node.children)
        elif node.children:
            out.append(node)
    return out


def _date(node: _Node, sent: dict[int, float]) -> tuple[float, int]:
    """A container's date: its message's, or (empty) its first child's."""
    msn = node.msn
    if msn:
        return (sent.get(msn, 0.0), msn)
    while not node.msn and node.children:
        node = node.children[0]
    return (sent.get(node.msn, 0.0), node.msn)


def _sort_siblings(nodes: list[_Node], sent: dict[int, float]) -> None:
    if len(nodes) > 1:  # most containers have none or one: nothing to order
        nodes.sort(key=lambda n: _date(n, sent))


def _sort_tree(root: _Node, sent: dict[int, float]) -> None:
    stack = [root]
    while stack:
        node = stack.pop()
        children = node.children
        if children:
            stack.extend(children)
            if len(children) > 1:
                children.sort(key=lambda n: _date(n, sent))


def _subject_of(node: _Node, subjects: dict[int, tuple[str, bool]]) -> tuple[str, bool]:
    if not node.msn:
        node = node.children[0] if node.children else node
    return subjects.get(node.msn, ("", False))  # type: ignore[no-any-return]


def _gathered(roots: list[_Node], subjects: dict[int, tuple[str, bool]]) -> list[_Node]:
    """(5): top-level threads with the same base subject become one."""
    table: dict[str, _Node] = {}
    for root in roots:  # (5A): which container stands for each subject
        subject, reply = _subject_of(root, subjects)
        if not subject:
            continue
        held = table.get(subject)
        if held is None or (not root.msn and held.msn) or \
                (held.msn and root.msn and _subject_of(held, subjects)[1] and not reply):
            table[subject] = root
    made: list[_Node] = []
    for root in roots:  # (5B): the others join it
        if root.parent is not None:
            continue  # already joined to another
        subject, reply = _subject_of(root, subjects)
        held = table.get(subject) if subject else None
        if held is None or held is root:
            continue
        if not held.msn and not root.msn:  # both empty: one takes the other's children
            for child in list(root.children):
                held.adopt(child)
        elif not held.msn:  # the empty one takes the message as one more child
            held.adopt(root)
        elif not root.msn:
            root.adopt(held)
            table[subject] = root
        elif reply and not _subject_of(held, subjects)[1]:
            held.adopt(root)  # a reply to the thread's original
        elif not reply and _subject_of(held, subjects)[1]:
            root.adopt(held)  # they were the wrong way round
            table[subject] = root
        else:  # both replies, or neither: siblings under a new empty container
            container = _Node()
            container.adopt(held)
            container.adopt(root)
            table[subject] = container
            made.append(container)
    return [n for n in roots + made if n.parent is None and (n.msn or n.children)]


def _render(root: _Node) -> str:
    """A thread's members: ``1 2 (3)(4 5)``; an empty container only its children's threads.
    Written with an explicit stack: reply chains may be thousands deep."""
    out: list[str] = []
    stack: list[_Node | str] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        node = item
        if node.msn:
            out.append(str(node.msn))
            while len(node.children) == 1 and node.children[0].msn:
                node = node.children[0]
                out.append(f" {node.msn}")
            if not node.children:
                continue
            out.append(" ")
        later: list[_Node | str] = []
        for child in node.children:
            later += ["(", child, ")"]
        stack.extend(reversed(later))
    return "".join(out)
