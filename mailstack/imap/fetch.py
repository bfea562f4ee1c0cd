"""FETCH: attribute parsing and the FETCH response (RFC 3501 §6.4.5, §7.4.2).

Items: the ALL/FAST/FULL macros, FLAGS, INTERNALDATE, RFC822.SIZE, UID, MODSEQ (RFC 7162),
ENVELOPE, BODY, BODYSTRUCTURE, RFC822, RFC822.HEADER, RFC822.TEXT and
``BODY[section]<partial>`` / ``BODY.PEEK[...]`` with HEADER,
HEADER.FIELDS (.NOT), TEXT, MIME and part numbers, and (RFC 3516)
``BINARY[part]<partial>``, ``BINARY.PEEK[...]`` and ``BINARY.SIZE[part]``: the
part's content with its Content-Transfer-Encoding (base64, quoted-printable)
undone, sent as a literal8 (``~{n}``) when it holds a NUL; an encoding this
server does not know fails the FETCH with NO [UNKNOWN-CTE]. Items that need
only index facts (flags, size, date, UID) never open the message file.
"""

from __future__ import annotations

import binascii
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailstack.imap import address, mime
from mailstack.imap.parse import Atom, ParseError, Token
from mailstack.imap.response import imap_date, nstring, plist, string

MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
SIMPLE = {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "UID", "ENVELOPE", "BODY", "BODYSTRUCTURE",
          "RFC822", "RFC822.HEADER", "RFC822.TEXT", "MODSEQ"}
_SECTION = re.compile(r"^(BODY(?:\.PEEK)?)\[([^\]]*)\](?:<(\d+)\.(\d+)>)?$", re.I | re.A)
_BINARY = re.compile(r"^(BINARY(?:\.PEEK|\.SIZE)?)\[([0-9.]*)\](?:<(\d+)\.(\d+)>)?$", re.I | re.A)
IDENTITY_ENCODINGS = ("", "7bit", "8bit", "binary")
_PADDING = re.compile(rb"[ \t]+(?=\r?\n|\Z)")


class UnknownEncoding(Exception):
    """A BINARY fetch of a part whose Content-Transfer-Encoding cannot be undone (RFC 3516)."""


@dataclass(frozen=True, slots=True)
class Section:
    peek: bool
    parts: tuple[int, ...]
    text: str  # "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...]
    partial: tuple[int, int] | None
    label: str  # the section as echoed in the response

    @property
    def sets_seen(self) -> bool:
        return not self.peek


@dataclass(frozen=True, slots=True)
class Binary:
    """``BINARY[part]<partial>``, its ``.PEEK`` form, or ``BINARY.SIZE[part]`` (RFC 3516)."""

    peek: bool
    size_only: bool
    parts: tuple[int, ...]
    partial: tuple[int, int] | None

    @property
    def label(self) -> str:
        return ".".join(str(p) for p in self.parts)


Item = str | Section | Binary


def parse_items(tok: Token) -> list[Item]:
    """The fetch-att list of a FETCH command."""
    if isinstance(tok, Atom) and tok.upper() in MACROS:
        return list(MACROS[tok.upper()])
    toks = tok if isinstance(tok, list) else [tok]
    if not toks:
        raise ParseError("empty fetch attribute list")
    return [parse_item(t) for t in toks]


def parse_item(tok: Token) -> Item:
    if not isinstance(tok, Atom):
        raise ParseError("bad fetch attribute")
    name = tok.upper()
    if name in SIMPLE:
        return name
    m = _SECTION.match(tok.value)
    if m:
        return parse_section(m.group(2), m.group(1).upper() == "BODY.PEEK", _partial(m))
    m = _BINARY.match(tok.value)
    if not m:
        raise ParseError(f"unknown fetch attribute {tok.value[:40]}")
    kind = m.group(1).upper()
    spec = m.group(2)
    numbers = spec.split(".") if spec else []
    if any(not n.isdigit() or n.startswith("0") or len(n) > 10 for n in numbers):
        raise ParseError("bad section part number")
    partial = _partial(m)
    if kind == "BINARY.SIZE" and partial is not None:
        raise ParseError("BINARY.SIZE takes no partial")
    return Binary(kind == "BINARY.PEEK", kind == "BINARY.SIZE", tuple(int(n) for n in numbers), partial)


def _partial(m: re.Match[str]) -> tuple[int, int] | None:
    if m.group(3) is None:
        return None
    if len(m.group(3)) > 19 or len(m.group(4)) > 19:
        raise ParseError("bad partial")
    origin, length = int(m.group(3)), int(m.group(4))
    if length == 0:  # RFC 3501 §9: "<" number "." nz-number ">"
        raise ParseError("partial length must be positive")
    if origin >= 2**63 or length >= 2**63 or not m.group(0).isascii():  # RFC 9051 §9: number64
        raise ParseError("bad partial")
    return (origin, length)


def parse_section(spec: str, peek: bool, partial: tuple[int, int] | None) -> Section:
    head, space, fields_part = spec.partition(" ")
    parts: list[int] = []
    rest = head
    while rest and rest[0].isdigit():
        num, _, rest = rest.partition(".")
        if not (num.isascii() and num.isdigit()) or num.startswith("0") or len(num) > 10:
            raise ParseError("bad section part number")
        parts.append(int(num))
    text = rest.upper()
    if text not in ("", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"):
        raise ParseError("bad section")
    if head and head[-1] == ".":
        raise ParseError("bad section")
    if text == "MIME" and not parts:
        raise ParseError("MIME needs a part number")
    fields: tuple[str, ...] = ()
    if text.startswith("HEADER.FIELDS"):
        from mailstack.imap.parse import Tokenizer, astring

        toks = Tokenizer(fields_part.encode("utf-8")).tokens()
        if len(toks) != 1 or not isinstance(toks[0], list) or not toks[0]:
            raise ParseError("HEADER.FIELDS needs a list of field names")
        fields = tuple(astring(t) for t in toks[0])
        label_fields = " (" + " ".join(f.upper() for f in fields) + ")"
    elif space:
        raise ParseError("bad section")
    else:
        label_fields = ""
    label = ".".join(str(p) for p in parts)
    if text:
        label = f"{label}.{text}" if label else text
    return Section(peek, tuple(parts), text, fields, partial, label + label_fields)


def needs_body(items: list[Item]) -> bool:
    return any(isinstance(i, (Section, Binary)) or i in ("ENVELOPE", "BODY", "BODYSTRUCTURE", "RFC822",
                                                           "RFC822.HEADER", "RFC822.TEXT") for i in items)


def sets_seen(items: list[Item]) -> bool:
    return any((isinstance(i, (Section, Binary)) and not i.peek and not getattr(i, "size_only", False))
               or i in ("RFC822", "RFC822.TEXT") for i in items)


def binary_parts(items: list[Item]) -> list[Binary]:
    """The BINARY items that decode a part (and so may fail with UNKNOWN-CTE)."""
    return [i for i in items if isinstance(i, Binary) and i.parts]


def check_binary(items: list[Item], datas: list[bytes | None]) -> None:
    """Raise UnknownEncoding now if a BINARY item of these messages would."""
    wanted = binary_parts(items)
    for data in datas if wanted else []:
        root = mime.parse(data or b"")
        for item in wanted:
            binary_bytes(data or b"", root, item)


def binary_bytes(data: bytes, root: mime.Part | None, item: Binary) -> bytes | None:
    """A part's content with its transfer encoding undone (RFC 3516 §4.2); the whole message
    for ``BINARY[]``; None when there is no such part. Raises UnknownEncoding."""
    if not item.parts:
        return data
    if root is None:
        root = mime.parse(data)
    part = mime.find_part(root, list(item.parts))
    if part is None:
        return None
    if part.is_multipart() or part.message is not None:
        return part.body  # composite parts carry no transfer encoding to undo (RFC 2045 §6.4)
    encoding = (part.get("content-transfer-encoding") or "").strip().lower()
    if encoding in IDENTITY_ENCODINGS:
        return part.body
    if encoding == "base64":
        try:
            return binascii.a2b_base64(part.body)
        except binascii.Error:  # damaged: what can be read of it (RFC 2045 §6.8: ignore junk)
            clean = re.sub(rb"[^A-Za-z0-9+/]", b"", part.body)
            if len(clean) % 4 == 1:  # a lone sextet is no octet
                clean = clean[:-1]
            return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))
    if encoding == "quoted-printable":  # transport padding off the line ends first (RFC 2045 §6.7 (3))
        return binascii.a2b_qp(_PADDING.sub(b"", part.body))
    raise UnknownEncoding(encoding)


# -- section content ----------------------------------------------------------------------


def section_bytes(data: bytes, root: mime.Part | None, sec: Section) -> bytes | None:
    """The octets of one section (RFC 3501 §6.4.5), or None when the message has no such part."""
    if not sec.parts and sec.text == "":
        return data
    if root is None:
        root = mime.parse(data)
    part = mime.find_part(root, list(sec.parts)) if sec.parts else root
    if part is None:
        return None
    if sec.text == "MIME":
        return part.header
    if sec.text == "":
        return part.body
    target = part
    if sec.parts:  # HEADER/TEXT after a part number: that message/rfc822 part's message
        if part.message is None:
            return None
        target = part.message
    if sec.text == "TEXT":
        return target.body
    if sec.text == "HEADER":
        return target.header
    wanted = {f.lower() for f in sec.fields}
    keep = sec.text == "HEADER.FIELDS"
    chosen = [raw for name, raw in target.fields if (name in wanted) == keep and name]
    return b"".join(line if line.endswith(b"\n") else line + b"\r\n" for line in chosen) + b"\r\n"


def partial(data: bytes | None, spec: tuple[int, int] | None) -> bytes | None:
    if spec is None or data is None:
        return data
    start, length = spec
    return data[start:start + length]


# -- ENVELOPE and BODYSTRUCTURE (RFC 3501 §7.4.2) -------------------------------------------


def _addresses(addrs: list[address.EnvelopeAddress]) -> bytes:
    if not addrs:
        return b"NIL"
    return b"(" + b"".join(plist([nstring(x) for x in a]) for a in addrs) + b")"


def envelope(part: mime.Part) -> bytes:
    def parsed(name: str) -> list[address.EnvelopeAddress]:
        value = part.get(name)
        return address.envelope_addresses(value) if value else []

    get = part.get
    from_ = parsed("from")
    # RFC 3501 §7.4.2: a Sender or Reply-To that is absent or empty is the From
    items = [
        nstring(get("date")), nstring(get("subject")),
        _addresses(from_), _addresses(parsed("sender") or from_), _addresses(parsed("reply-to") or from_),
        _addresses(parsed("to")), _addresses(parsed("cc")), _addresses(parsed("bcc")),
        nstring(get("in-reply-to")), nstring(get("message-id")),
    ]
    return plist(items)


def _params(params: list[tuple[str, str]]) -> bytes:
    if not params:
        return b"NIL"
    return plist([b for k, v in params for b in (string(k.upper()), string(v))])


def _lines(body: bytes) -> int:
    n = body.count(b"\n")
    return n + 1 if body and not body.endswith(b"\n") else n


def body_structure(part: mime.Part, extended: bool) -> bytes:
    if part.is_multipart():
        children = b"".join(body_structure(c, extended) for c in part.children) or \
            b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0)'
        out = children + b" " + string(part.subtype.upper())
        if extended:
            out += b" " + b" ".join([_params([p for p in part.params]), *_extension(part)])
        return b"(" + out + b")"
    encoding = (part.get("content-transfer-encoding") or "7BIT").upper()
    fields = [string(part.type.upper()), string(part.subtype.upper()), _params(part.params),
              nstring(part.get("content-id")), nstring(part.get("content-description")),
              string(encoding), str(len(part.body)).encode()]
    if part.type == "message" and part.subtype in mime.ENCAPSULATING and part.message is not None:
        fields += [envelope(part.message), body_structure(part.message, extended),
                   str(_lines(part.body)).encode()]
    elif part.type == "text":
        fields.append(str(_lines(part.body)).encode())
    if extended:
        fields += [nstring(part.get("content-md5")), *_extension(part)]
    return plist(fields)


def _extension(part: mime.Part) -> list[bytes]:
    disp = part.get("content-disposition")
    parsed = mime.parse_disposition(disp) if disp else None
    disposition = plist([string(parsed[0]), _params(parsed[1])]) if parsed else b"NIL"
    lang = part.get("content-language")
    if lang:
        langs = [x.strip() for x in lang.split(",") if x.strip()]
        language = string(langs[0]) if len(langs) == 1 else plist([string(x) for x in langs])
    else:
        language = b"NIL"
    return [disposition, language, nstring(part.get("content-location"))]


# -- one FETCH response -----------------------------------------------------------------------


def render(items: list[Item], *, uid: int, flags: list[str], size: int, internal_date: int,
           data: bytes | None, modseq: int = 0) -> bytes:
    """The parenthesised data of ``* n FETCH (...)``; ``data`` is None when not needed."""
    out: list[bytes] = []
    root: mime.Part | None = None

    def parsed() -> mime.Part:
        nonlocal root
        if root is None:
            root = mime.parse(data or b"")
        return root

    for item in items:
        if isinstance(item, Binary):
            tree = parsed() if item.parts else None
            decoded = binary_bytes(data or b"", tree, item)
            if item.size_only:
                out.append(f"BINARY.SIZE[{item.label}] ".encode() + str(len(decoded or b"")).encode())
                continue
            content = partial(decoded, item.partial)
            origin = f"<{item.partial[0]}>" if item.partial else ""
            out.append(f"BINARY[{item.label}]{origin} ".encode()
                       + (b"NIL" if content is None else _binary_literal(content)))
        elif isinstance(item, Section):
            tree = parsed() if (item.parts or item.text) else None
            content = partial(section_bytes(data or b"", tree, item), item.partial)
            origin = f"<{item.partial[0]}>" if item.partial else ""
            out.append(f"BODY[{item.label}]{origin} ".encode() + (b"NIL" if content is None else _literal_or_quoted(content)))
        elif item == "UID":
            out.append(b"UID %d" % uid)
        elif item == "MODSEQ":
            out.append(b"MODSEQ (%d)" % modseq)
        elif item == "FLAGS":
            out.append(b"FLAGS (" + " ".join(flags).encode("utf-8") + b")")
        elif item == "INTERNALDATE":
            out.append(b'INTERNALDATE "' + imap_date(internal_date).encode() + b'"')
        elif item == "RFC822.SIZE":
            out.append(b"RFC822.SIZE %d" % size)
        elif item == "ENVELOPE":
            out.append(b"ENVELOPE " + envelope(parsed()))
        elif item == "BODY":
            out.append(b"BODY " + body_structure(parsed(), False))
        elif item == "BODYSTRUCTURE":
            out.append(b"BODYSTRUCTURE " + body_structure(parsed(), True))
        elif item == "RFC822":
            out.append(b"RFC822 " + _literal_or_quoted(data or b""))
        elif item == "RFC822.HEADER":
            out.append(b"RFC822.HEADER " + _literal_or_quoted(parsed().header))
        elif item == "RFC822.TEXT":
            out.append(b"RFC822.TEXT " + _literal_or_quoted(parsed().body))
    return b"(" + b" ".join(out) + b")"


_METADATA = {"UID": b"UID %d", "FLAGS": b"FLAGS (%s)", "RFC822.SIZE": b"RFC822.SIZE %d",
             "INTERNALDATE": b'INTERNALDATE "%s"', "MODSEQ": b"MODSEQ (%d)"}
_FACT = {"UID": 1, "FLAGS": 2, "RFC822.SIZE": 3, "INTERNALDATE": 4, "MODSEQ": 5}


@dataclass(frozen=True, slots=True)
class MetadataFetch:
    """A FETCH whose items need neither the file nor its parse (UID, FLAGS, RFC822.SIZE,
    INTERNALDATE, MODSEQ): one template for the whole command instead of :func:`render` per
    message. ``pick`` takes (msn, uid, flags, size, date, modseq) to the template's arguments."""

    template: bytes
    pick: Callable[[tuple[int, int, bytes, int, bytes, int]], tuple[Any, ...]]
    dated: bool


def metadata_fetch(items: list[Item]) -> MetadataFetch | None:
    """The :class:`MetadataFetch` for ``items``, or None when one of them needs the message."""
    if not all(isinstance(i, str) and i in _METADATA for i in items):
        return None
    template = b"* %d FETCH (" + b" ".join(_METADATA[str(i)] for i in items) + b")\r\n"
    where = [_FACT[str(i)] for i in items]
    return MetadataFetch(template, operator.itemgetter(0, *where), 4 in where)


def _literal_or_quoted(content: bytes) -> bytes:
    """A literal; a NUL, which no literal may carry (RFC 3501 §9 CHAR8), is sent as 0x80
    (a message APPENDed as a literal8 can hold one; BINARY gets it as it is)."""
    if b"\0" in content:
        content = content.replace(b"\0", b"\x80")
    return b"{%d}\r\n" % len(content) + content


def _binary_literal(content: bytes) -> bytes:
    """A literal8 (RFC 3516 §4.3) for decoded content with a NUL; a literal otherwise."""
    return (b"~{%d}\r\n" if b"\0" in content else b"{%d}\r\n") % len(content) + content


__all__ = ["Binary", "Item", "MetadataFetch", "Section", "UnknownEncoding", "metadata_fetch", "needs_body",
           "parse_items", "render", "sets_seen"]
