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
    return _base_subject(subject)[0]


def _base_subject(subject: str) -> tuple[str, bool]:
    """The base subject, and whether a reply or forward marker was taken off it (§4 step 5)."""
    reply = False
    text = address.decode_words(subject)
    text = _WSP_RUN.sub(" ", text.replace("\r\n", " ").replace("\n", " ").replace("\t", " "))
    while True:
        text = _TRAILER.sub("", text)  # (2)
        while True:  # (3) and (4), until neither applies
            m = _LEADER.match(text)
            if m and m.end() > 0:
                reply = reply or text[m.end() - 1:m.end()] == ":"
                text = text[m.end():]
                continue
            blob = _BLOB_PREFIX.match(text)
            if blob and blob.end() < len(text):  # only if something is left after it
                text = text[blob.end():]
                continue
            break
        if text[:5].lower() == "[fwd:" and text.endswith("]"):  # (6)
            text = text[5:-1]
            reply = True
            continue
        return text, reply


# -- THREAD (RFC 5256 §4) ------------------------------------------------------------------

THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
MAX_THREADED = 100_000  # messages one THREAD command may arrange
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
        """Is ``other`` this container or below it?"""
        stack = [self]
        while stack:
            node = stack.pop()
            if node is other:
                return True
            stack.extend(node.children)
        return False

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
        references = _ids(_field(header, "references")) or _ids(_field(header, "in-reply-to"))[:1]
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
    parent, except at the top, where only a single child is promoted."""
    out: list[_Node] = []
    for node in nodes:
        node.children = _pruned(node.children, top=False)
        for child in node.children:
            child.parent = node
        if node.msn:
            out.append(node)
        elif not node.children:
            continue
        elif not top or len(node.children) == 1:
            for child in node.children:
                child.parent = node.parent
            out.extend(node.children)
        else:
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


def _render(node: _Node) -> str:
    """A thread's members: ``1 2 (3)(4 5)``; an empty container only its children's threads."""
    if not node.msn:
        return "".join(f"({_render(child)})" for child in node.children)
    parts = [str(node.msn)]
    while len(node.children) == 1 and node.children[0].msn:
        node = node.children[0]
        parts.append(str(node.msn))
    if node.children:
        parts.append("".join(f"({_render(child)})" for child in node.children))
    return " ".join(parts)
