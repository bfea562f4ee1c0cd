"""The ``Authentication-Results`` header (RFC 8601) mailstack adds, and forged ones it removes.

RFC 8601 §5: a border MTA adds one header naming itself (the ``authserv-id``,
here ``hostname``) and removes any incoming one that claims that name, since
only it can have written them and a sender could otherwise forge a pass.

Every scan here is one linear pass (a sender controls these headers, and they
are read on the reactor): the authserv-id is read with a comment-depth counter
that also knows quoted strings, and a message without a blank line is all
header.
"""

from __future__ import annotations

from collections.abc import Iterator

from mailstack.smtp.message import header_values

_NAME = b"authentication-results"


def header(authserv_id: str, resinfo: list[str]) -> bytes:
    """``Authentication-Results: <id>; <method>=<result> ...`` folded one method per line."""
    if not resinfo:
        return f"Authentication-Results: {authserv_id}; none\r\n".encode()
    body = ";\r\n\t".join([authserv_id, *resinfo])
    return f"Authentication-Results: {body}\r\n".encode()


def comment(text: str) -> str:
    """``text`` safe inside a comment of our header: no parentheses, backslashes or line breaks, short."""
    cleaned = text.translate({ord(c): " " for c in "()\\\r\n"})
    return " ".join(cleaned.split())[:120]


def authserv_id(value: bytes) -> bytes:
    """The authserv-id a header value names: its first token, outside comments, unquoted, lower case."""
    out = bytearray()
    depth = 0
    quoted = False
    escaped = False
    for byte in value[:4096]:  # a host name, perhaps after a comment: never the whole of a huge header
        c = bytes((byte,))
        if escaped:
            escaped = False
            if depth == 0:
                out += c
            continue
        if c == b"\\" and (quoted or depth):
            escaped = True
            continue
        if quoted:
            if c == b'"':
                quoted = False
            else:
                out += c
            continue
        if depth:
            depth += {b"(": 1, b")": -1}.get(c, 0)
            continue
        if c == b"(":
            depth = 1
        elif c == b'"':
            quoted = True
        elif c == b";":
            break
        elif c in b" \t\r\n":
            if out:
                break
        else:
            out += c
    return bytes(out).lower()


def _fields(message: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(start, end, name) of each header field in turn (offsets into ``message``)."""
    end = message.find(b"\r\n\r\n")
    limit = len(message) if end < 0 else end + 2
    field: tuple[int, int, bytes] | None = None
    pos = 0
    while pos < limit:
        nl = message.find(b"\r\n", pos, limit)
        stop = limit if nl < 0 else nl + 2
        if message[pos:pos + 1] in (b" ", b"\t") and field is not None:
            field = (field[0], stop, field[2])  # a continuation line: the field goes on
        else:
            if field is not None:
                yield field
            colon = message.find(b":", pos, stop)
            name = message[pos:colon].rstrip(b" \t").lower() if colon >= 0 else b""
            field = (pos, stop, name)
        pos = stop
    if field is not None:
        yield field


def strip_claims(message: bytes, authserv: str) -> bytes:
    """``message`` without the Authentication-Results headers that claim ``authserv``."""
    if not header_values(message, _NAME):
        return message  # no Authentication-Results header at all (found by one C-level search)
    ours = authserv.lower().encode("ascii", "replace")
    drop = [(start, stop) for start, stop, name in _fields(message)
            if name == _NAME and authserv_id(_value(message, start, stop)) == ours]
    if not drop:
        return message
    parts, pos = [], 0
    for start, stop in drop:
        parts.append(message[pos:start])
        pos = stop
    parts.append(message[pos:])
    return b"".join(parts)


def our_header(message: bytes, authserv: str) -> bytes | None:
    """The value of the first Authentication-Results header that names ``authserv``."""
    ours = authserv.lower().encode("ascii", "replace")
    for start, stop, name in _fields(message):  # ours comes first: the rest is never read
        if name == _NAME:
            value = _value(message, start, stop)
            if authserv_id(value) == ours:
                return value
    return None


def _value(message: bytes, start: int, stop: int) -> bytes:
    field = message[start:stop]
    return field.split(b":", 1)[1] if b":" in field else b""
