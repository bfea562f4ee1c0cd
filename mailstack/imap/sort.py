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
MAX_THREADED messages is refused with NO [LIMIT].
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


FIELDS = frozenset({"subject", "date", "from", "to", "cc", "message-id", "references", "in-reply-to"})
FIELD_LIMIT = 2048  # octets of each field kept for SORT and THREAD (References: its end, the nearest)


def trim_header(header: bytes) -> bytes:
    """What SORT and THREAD read of a header, and no more: their fields, each at most
    FIELD_LIMIT octets, so that 100,000 messages' worth stays small in memory."""
    kept = []
    for name, raw in mime.header_fields(header):
        if name in FIELDS:
            if len(raw) > FIELD_LIMIT:
                colon = raw.find(b":") + 1
                raw = raw[:colon] + (raw[-FIELD_LIMIT:] if name == "references" else raw[colon:colon + FIELD_LIMIT])
                raw = raw.rstrip(b"\r\n") + b"\r\n"
            kept.append(raw)
    return b"".join(kept)


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
MAX_THREADED = 100_000  # messages one THREAD or SORT command may arrange
MAX_DEPTH = 1000  # a reply chain deeper than this is cut (not linked further down)
MAX_REFERENCES = 100  # the nearest message IDs of References that are followed
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


def thread(algorithm: str, msns: list[int], headers: dict[int, bytes], facts: dict[int, tuple[int, int]]) -> str:
    """The THREAD response data, e.g. ``(1 (2)(3))(4)``, for the messages ``msns``."""
    sent = {msn: _sent(headers.get(msn, b""), facts[msn][1]) for msn in msns}
    subjects = {msn: _base_subject(_field(headers.get(msn, b""), "subject")) for msn in msns}
    if algorithm == "ORDEREDSUBJECT":
        return _ordered_subject(msns, sent, {msn: _fold(s) for msn, (s, _) in subjects.items()})
    return _references(msns, headers, sent, subjects)


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


def _references(msns: list[int], headers: dict[int, bytes], sent: dict[int, float],
                subjects: dict[int, tuple[str, bool]]) -> str:
    """REFERENCES: threads by Message-ID, References and In-Reply-To, then by base subject."""
    table: dict[str, _Node] = {}
    containers: list[_Node] = []
    for msn in msns:  # (1)
        header = headers.get(msn, b"")
        own = _ids(_field(header, "message-id"))
        node = table.get(own[0]) if own else None
        if node is not None and node.msn == 0:
            node.msn = msn  # the empty container a reference made for this message
        else:  # no Message-ID, or one another message has: a container of its own
            node = _Node(msn)
            containers.append(node)
            if own and own[0] not in table:
                table[own[0]] = node
        references = (_ids(_field(header, "references")) or _ids(_field(header, "in-reply-to"))[:1])[-MAX_REFERENCES:]
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
    roots = _gathered(roots, subjects)  # (5)
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
    while not node.msn and node.children:
        node = node.children[0]
    return (sent.get(node.msn, 0.0), node.msn)


def _sort_siblings(nodes: list[_Node], sent: dict[int, float]) -> None:
    nodes.sort(key=lambda n: _date(n, sent))


def _sort_tree(root: _Node, sent: dict[int, float]) -> None:
    stack = [root]
    while stack:
        node = stack.pop()
        for child in node.children:
            stack.append(child)
        _sort_siblings(node.children, sent)


def _subject_of(node: _Node, subjects: dict[int, tuple[str, bool]]) -> tuple[str, bool]:
    if not node.msn:
        node = node.children[0] if node.children else node
    base, reply = subjects.get(node.msn, ("", False))
    return _fold(base), reply


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
