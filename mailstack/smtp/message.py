"""Message content handling after DATA/BDAT, in bulk bytes operations.

Bare CR / bare LF policy (SMTP smuggling defence): only ``<CRLF>.<CRLF>`` ends
DATA (RFC 5321 §4.1.1.4). After dot-unstuffing, every bare CR and bare LF in
the content is normalised to CRLF, so no later hop, which may end data on
``<LF>.<LF>``, can read one stored or relayed message as two: a line holding
only ``.`` becomes an ordinary line that outbound SMTP and POP3 dot-stuff.
"""

from __future__ import annotations

import datetime
import email.utils
import re
import time

_BARE = re.compile(rb"\r\n|\r|\n")
_HEADER_END = re.compile(rb"\r\n\r\n")
_RECEIVED = re.compile(rb"^Received[ \t]*:", re.MULTILINE | re.IGNORECASE)
# RFC 5321 §4.5.3.1.6: a text line is at most 998 octets plus CRLF.


def unstuff(content: bytes) -> bytes:
    """RFC 5321 §4.5.2: drop the leading dot of every line that starts with one."""
    if content.startswith(b"."):
        content = content[1:]
    if b"\r\n." in content:
        content = content.replace(b"\r\n.", b"\r\n")
    return content


def normalize_line_endings(content: bytes) -> bytes:
    """Bare CR and bare LF become CRLF; content already in CRLF form is returned as is."""
    crlf = content.count(b"\r\n")
    if content.count(b"\n") == crlf and content.count(b"\r") == crlf:
        return content
    return _BARE.sub(b"\r\n", content)


def has_long_line(content: bytes) -> bool:
    """True when a line (ended by CR or LF) exceeds 998 octets: one linear C-level pass."""
    if len(content) <= 998:
        return False
    return max(map(len, content.replace(b"\r", b"\n").split(b"\n"))) > 998


def header_block(message: bytes) -> bytes:
    """The header section including its final CRLF (the whole message if there is no body)."""
    if message.startswith(b"\r\n"):
        return b""
    m = _HEADER_END.search(message)
    return message[: m.start() + 2] if m else message


def header_values(message: bytes, name: bytes) -> list[bytes]:
    """The values of every header field called ``name`` (case-insensitive), unfolded, in order."""
    if message.startswith(b"\r\n"):
        return []  # no header at all: what follows is body
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[:end]
    wanted = name.lower()
    if wanted not in head.lower():  # one C-level search: most messages lack most fields asked for
        return []
    out: list[bytes] = []
    current: list[bytes] | None = None
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        if current is not None:
            out.append(b"".join(current))
        field, colon, value = line.partition(b":")
        current = [value] if colon and field.rstrip(b" \t").lower() == wanted else None
    if current is not None:
        out.append(b"".join(current))
    return out


def count_received(headers: bytes) -> int:
    return len(_RECEIVED.findall(headers))


def has_header(headers: bytes, name: bytes) -> bool:
    return re.search(rb"^" + re.escape(name) + rb"[ \t]*:", headers, re.MULTILINE | re.IGNORECASE) is not None


def rfc2822_date(when: float | None = None) -> str:
    """RFC 5322 §3.3 date in UTC with a ``+0000`` zone."""
    moment = datetime.datetime.fromtimestamp(when if when is not None else time.time(), datetime.UTC)
    return email.utils.format_datetime(moment)


def message_id(hostname: str, queue_id: str) -> str:
    return f"<{queue_id}.{time.time_ns() % 1_000_000_000:09d}@{hostname}>"


def received_header(
    *,
    helo: str,
    client_ip: str,
    rdns: str | None,
    hostname: str,
    protocol: str,
    queue_id: str,
    tls: str | None,
    recipient: str | None,
    when: float | None = None,
) -> bytes:
    """RFC 5321 §4.4 trace header (``from``, ``by``, ``with``, ``id``, ``for``; date)."""
    literal = f"[IPv6:{client_ip}]" if ":" in client_ip else f"[{client_ip}]"
    tcp_info = f"{rdns} {literal}" if rdns else literal
    lines = [f"Received: from {helo or 'unknown'} ({tcp_info})", f"\tby {hostname} with {protocol} id {queue_id}"]
    if tls:
        lines.append(f"\t(using {tls})")
    if recipient:
        lines.append(f"\tfor <{recipient}>")
    lines[-1] += f"; {rfc2822_date(when)}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def protocol_name(*, esmtp: bool, tls: bool, auth: bool, utf8: bool) -> str:
    """RFC 3848 / RFC 6531 §3.7.3 ``with`` keywords (ESMTP, ESMTPS, ESMTPSA, UTF8SMTPSA, ...)."""
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if utf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if auth else "")
