"""The ``Authentication-Results`` header (RFC 8601) mailstack adds, and forged ones it removes.

RFC 8601 §5: a border MTA adds one header naming itself (the ``authserv-id``,
here ``hostname``) and removes any incoming one that claims that name, since
only it can have written them and a sender could otherwise forge a pass.
"""

from __future__ import annotations

import re

_NAME = re.compile(rb"^authentication-results[ \t]*:", re.IGNORECASE)
_COMMENT = re.compile(rb"\([^()]*\)")


def header(authserv_id: str, resinfo: list[str]) -> bytes:
    """``Authentication-Results: <id>; <method>=<result> ...`` folded one method per line."""
    if not resinfo:
        return f"Authentication-Results: {authserv_id}; none\r\n".encode()
    body = ";\r\n\t".join([authserv_id, *resinfo])
    return f"Authentication-Results: {body}\r\n".encode()


def _authserv_id(value: bytes) -> bytes:
    """The authserv-id a header value names (comments and whitespace dropped, lower case)."""
    first = value.split(b";", 1)[0]
    while True:
        stripped = _COMMENT.sub(b" ", first)
        if stripped == first:
            break
        first = stripped
    words = first.split()
    return words[0].lower() if words else b""


def strip_claims(message: bytes, authserv_id: str) -> bytes:
    """``message`` without the Authentication-Results headers that claim ``authserv_id``."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message
    ours = authserv_id.lower().encode("ascii", "replace")
    lines = message[:end].split(b"\r\n")
    kept: list[bytes] = []
    dropping = False
    changed = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            i += 1
            continue
        dropping = False
        if _NAME.match(line):
            field = [line]
            j = i + 1
            while j < len(lines) and lines[j][:1] in (b" ", b"\t"):
                field.append(lines[j])
                j += 1
            if _authserv_id(b" ".join(field).split(b":", 1)[1]) == ours:
                dropping = changed = True
                i += 1
                continue
        kept.append(line)
        i += 1
    if not changed:
        return message
    return b"\r\n".join(kept) + message[end:]


def our_header(message: bytes, authserv_id: str) -> bytes | None:
    """The value of the first Authentication-Results header that names ``authserv_id``, unfolded."""
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[:end]
    ours = authserv_id.lower().encode("ascii", "replace")
    lines = head.split(b"\r\n")
    for i, line in enumerate(lines):
        if not _NAME.match(line):
            continue
        field = [line]
        for more in lines[i + 1:]:
            if more[:1] not in (b" ", b"\t"):
                break
            field.append(more)
        value = b" ".join(field).split(b":", 1)[1]
        if _authserv_id(value) == ours:
            return value
    return None
