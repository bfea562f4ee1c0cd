"""MIME structure of a stored message, for FETCH sections, ENVELOPE and BODYSTRUCTURE.

RFC 3501 §6.4.5 (section numbering), §7.4.2 (BODY, BODYSTRUCTURE), RFC 2045/2046
(headers, multipart boundaries, message/rfc822); addresses are in
:mod:`mailstack.imap.address`. Parsing works on bytes and never fails: a damaged
message is described as well as it can be (as text/plain when in doubt).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_HEADER_END = re.compile(rb"\r?\n\r?\n")
# message subtypes that hold a whole message, with its own part numbers (RFC 9051 §6.4.5.1:
# message/global, RFC 6532, is one like message/rfc822)
ENCAPSULATING = frozenset({"rfc822", "global"})
_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:", re.M)


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def split_message(data: bytes) -> tuple[bytes, bytes]:
    """(header including the blank line that ends it, body)."""
    if data.startswith(b"\r\n"):
        return b"\r\n", data[2:]
    if data.startswith(b"\n"):
        return b"\n", data[1:]
    m = _HEADER_END.search(data)
    if m is None:
        return data, b""
    return data[:m.end()], data[m.end():]


def header_fields(header: bytes) -> list[tuple[str, bytes]]:
    """Raw fields: (lower-case name, raw bytes of the whole field including folding and CRLF)."""
    out: list[tuple[str, bytes]] = []
    lines = header.splitlines(keepends=True)
    current: list[bytes] = []
    name = ""
    for line in lines:
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        if current:
            out.append((name, b"".join(current)))
        m = _FIELD.match(line)
        name = _text(m.group(1)).lower() if m else ""
        current = [line]
    if current:
        out.append((name, b"".join(current)))
    return out


_FOLD = re.compile(rb"\r?\n(?=[ \t])")


def field_value(raw: bytes) -> str:
    """The unfolded value of one raw field."""
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    if b"\n" in value:
        value = _FOLD.sub(b"", value)
    return _text(value).strip()


# one well-formed field, folded lines and all, at a position (field_values)
_WHOLE_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)(?:\r?\n|\Z)")


def field_values(header: bytes) -> dict[str, list[str]]:
    """Lower-case field name -> the unfolded values (:func:`field_value`) in order: one pass of
    one pattern over a well-formed header, through :func:`header_fields` otherwise."""
    out: dict[str, list[str]] = {}
    match = _WHOLE_FIELD.match
    at, end = 0, len(header)
    while at < end and not header.startswith(b"\n", at) and not header.startswith(b"\r\n", at):
        m = match(header, at)
        if m is None:  # a line that is not a field, a bare CR: the line by line reading
            out = {}
            for name, raw in header_fields(header):
                out.setdefault(name, []).append(field_value(raw))
            return out
        value = m.group(2)
        if b"\n" in value:
            value = _FOLD.sub(b"", value)
        out.setdefault(m.group(1).decode("ascii").lower(), []).append(_text(value).strip())
        at = m.end()
    return out


@dataclass
class Part:
    header: bytes
    body: bytes
    fields: list[tuple[str, bytes]]
    type: str = "text"
    subtype: str = "plain"
    params: list[tuple[str, str]] = field(default_factory=list)
    children: list[Part] = field(default_factory=list)
    message: Part | None = None  # the encapsulated message of a message/rfc822 part

    def get(self, name: str) -> str | None:
        for n, raw in self.fields:
            if n == name:
                return field_value(raw)
        return None

    def is_multipart(self) -> bool:
        return self.type == "multipart"


def parse(data: bytes, default_type: tuple[str, str] = ("text", "plain"), depth: int = 0) -> Part:
    header, body = split_message(data)
    fields = header_fields(header)
    part = Part(header, body, fields)
    ctype = part.get("content-type")
    part.type, part.subtype = default_type
    if ctype:
        parsed = parse_content_type(ctype)
        if parsed is not None:
            part.type, part.subtype, part.params = parsed
        elif default_type != ("text", "plain"):
            part.type, part.subtype = "text", "plain"
    if not ctype and default_type == ("text", "plain"):
        part.params = [("charset", "us-ascii")]
    if depth > 50:
        return part
    if part.type == "multipart":
        boundary = dict(part.params).get("boundary")
        if not boundary:
            part.type, part.subtype, part.params = "text", "plain", [("charset", "us-ascii")]
            return part
        child_default = ("message", "rfc822") if part.subtype == "digest" else ("text", "plain")
        part.children = [parse(p, child_default, depth + 1) for p in split_multipart(body, boundary)]
    elif part.type == "message" and part.subtype in ENCAPSULATING and (
            part.subtype == "rfc822" or (part.get("content-transfer-encoding") or "7bit").strip().lower()
            in ("7bit", "8bit", "binary")):  # RFC 6532 §3.7: message/global may be base64 or QP
        part.message = parse(body, ("text", "plain"), depth + 1)
    return part


def split_multipart(body: bytes, boundary: str) -> list[bytes]:
    """Body parts between ``--boundary`` lines (RFC 2046 §5.1.1); preamble/epilogue dropped."""
    delim = b"--" + boundary.encode("utf-8", "surrogateescape")
    parts: list[bytes] = []
    pattern = re.compile(rb"(?:^|\r?\n)" + re.escape(delim) + rb"(--)?[ \t]*(?:\r?\n|$)", re.M)
    start = None
    for m in pattern.finditer(body):
        # the match must begin at a line start
        if m.start() != 0 and body[m.start():m.start() + 1] not in (b"\r", b"\n"):
            continue
        if start is not None:
            parts.append(body[start:m.start()])
        if m.group(1):
            return parts
        start = m.end()
    if start is not None:
        parts.append(body[start:])
    return parts


_TOKEN = r"[^\x00-\x20()<>@,;:\\\"/\[\]?=\x7f]+"
_CT = re.compile(r"^\s*(" + _TOKEN + r")\s*/\s*(" + _TOKEN + r")\s*(.*)$", re.S)
_PARAM = re.compile(r';\s*(' + _TOKEN + r')\s*=\s*("(?:[^"\\]|\\.)*"|' + _TOKEN + r')\s*', re.S)


def _strip_comments(value: str) -> str:
    out, depth, quoted, i = [], 0, False, 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            if depth == 0:
                out.append(value[i:i + 2])
            i += 2
            continue
        if c == '"' and depth == 0:
            quoted = not quoted
        elif not quoted and c == "(":
            depth += 1
        elif not quoted and c == ")" and depth:
            depth -= 1
            i += 1
            continue
        if depth == 0:
            out.append(c)
        i += 1
    return "".join(out)


def parse_params(rest: str) -> list[tuple[str, str]]:
    params = []
    for m in _PARAM.finditer(rest):
        value = m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params.append((m.group(1).lower(), value))
    return params


def parse_content_type(value: str) -> tuple[str, str, list[tuple[str, str]]] | None:
    m = _CT.match(_strip_comments(value))
    if m is None:
        return None
    return m.group(1).lower(), m.group(2).lower(), parse_params(m.group(3))


def parse_disposition(value: str) -> tuple[str, list[tuple[str, str]]] | None:
    m = re.match(r"^\s*(" + _TOKEN + r")\s*(.*)$", _strip_comments(value), re.S)
    if m is None:
        return None
    return m.group(1), parse_params(m.group(2))


def find_part(root: Part, numbers: list[int]) -> Part | None:
    """RFC 3501 §6.4.5 part numbers: ``[2, 1]`` is part 1 of part 2.

    A multipart's parts are its children. A message that is not multipart has
    one part, numbered 1: its body (the message itself here, whose ``body`` is
    that part's content). The parts of a message/rfc822 part are the parts of
    the message it encapsulates, at any depth, so ``[1, 1]`` of a top-level
    message/rfc822 is the body of the encapsulated message.
    """
    container: Part | None = root  # the message or multipart whose parts are numbered next
    part: Part | None = None
    for n in numbers:
        if container is None:
            return None
        if container.is_multipart():
            if not 1 <= n <= len(container.children):
                return None
            part = container.children[n - 1]
        elif n == 1:
            part = container
        else:
            return None
        if part.message is not None:
            container = part.message
        elif part.is_multipart():
            container = part
        else:
            container = None
    return part
