"""What the Sieve body test (RFC 5173) matches against: the strings a body transform gives.

* ``:raw`` (§5.1): the body as it is, one string, transfer encodings and MIME structure
  left alone.
* ``:content`` (§5.2): the MIME parts of the given types, each its own string: a leaf
  part's content with its transfer encoding undone and its charset converted to UTF-8;
  a multipart's prologue and epilogue; a message/rfc822's header. The search descends
  into every multipart and message/rfc822 whether or not it matched.
* ``:text`` (§5.3): as ``:content "text"``, which the RFC allows.

The message is read with the project's MIME parser (:mod:`mailstack.imap.mime`). Work
is bounded: MAX_BODY octets of the body are examined (1 MiB; the rest is not seen by
the test) and at most MAX_PARTS MIME parts. A message that is only a header, with no
empty line after it, has no body: every body test is false (§4).
"""

from __future__ import annotations

import binascii
import codecs
import re

from mailstack.imap import mime

MAX_BODY = 1 << 20  # octets of the body a body test examines
MAX_PARTS = 1000  # MIME parts a body test examines

_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_QP_PADDING = re.compile(rb"[ \t]+(?=\r?\n)")


def has_body(header: bytes, body: bytes) -> bool:
    """A header followed by the empty line (or any body at all)."""
    return bool(body) or header in (b"\r\n", b"\n") or header.endswith((b"\n\r\n", b"\n\n"))


def raw(body: bytes) -> list[str]:
    return [_text(body[:MAX_BODY])]


def content(header: bytes, body: bytes, types: list[str]) -> list[str]:
    """The strings of the parts whose types match ``types`` (§5.2), in message order."""
    specs = [t.lower() for t in types if _valid(t)]
    if not specs:
        return []
    root = mime.parse(header + body[:MAX_BODY])
    out: list[str] = []
    stack = [root]
    seen = 0
    while stack and seen < MAX_PARTS:
        part = stack.pop()
        seen += 1
        if any(_matches(spec, part) for spec in specs):
            out.extend(_strings(part))
        if part.message is not None:
            stack.append(part.message)
        stack.extend(reversed(part.children))
    return out


def _valid(spec: str) -> bool:
    """§5.2: a type with a leading or trailing slash, or more than one, matches nothing."""
    return not (spec.startswith("/") or spec.endswith("/") or spec.count("/") > 1)


def _matches(spec: str, part: mime.Part) -> bool:
    if not spec:
        return True
    if "/" in spec:
        return spec == f"{part.type}/{part.subtype}"
    return spec == part.type


def _strings(part: mime.Part) -> list[str]:
    if part.is_multipart():
        return [_text(s) for s in _prologue_epilogue(part)]
    if part.message is not None:
        return [_text(part.message.header)]
    data = _transfer_decoded(part)
    if part.type == "text":
        charset = dict(part.params).get("charset", "us-ascii")
        return [_charset_decoded(data, charset)]
    return [_text(data)]


def _prologue_epilogue(part: mime.Part) -> list[bytes]:
    """The text before the first boundary and after the last (RFC 2046 §5.1.1)."""
    boundary = dict(part.params).get("boundary", "")
    delimiter = re.escape(b"--" + boundary.encode("utf-8", "surrogateescape"))
    first = re.search(rb"(?:^|\r?\n)" + delimiter + rb"[ \t]*(?:\r?\n|$)", part.body)
    if first is None:
        return [part.body]
    last = re.search(rb"(?:^|\r?\n)" + delimiter + rb"--[ \t]*(?:\r?\n|$)", part.body)
    return [part.body[:first.start()], part.body[last.end():] if last is not None else b""]


def _transfer_decoded(part: mime.Part) -> bytes:
    """quoted-printable and base64 undone (RFC 2045 §6); 7bit, 8bit, binary and unknown
    encodings as they are."""
    encoding = (part.get("content-transfer-encoding") or "").strip().lower()
    if encoding == "base64":
        clean = _NOT_BASE64.sub(b"", part.body)  # RFC 2045 §6.8: other characters are ignored
        if len(clean) % 4 == 1:  # a lone sextet is no octet
            clean = clean[:-1]
        return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))
    if encoding == "quoted-printable":
        return binascii.a2b_qp(_QP_PADDING.sub(b"", part.body))
    return part.body


def _charset_decoded(data: bytes, charset: str) -> str:
    """Text in its charset converted to Unicode; an unknown charset read as UTF-8, and what
    cannot be read replaced (RFC 5173 §5.2 lets parts that cannot be converted be read so)."""
    try:
        codec = codecs.lookup(charset.strip().lower() or "us-ascii").name
        if codec != "ascii":  # 8-bit octets in a us-ascii part: most likely UTF-8
            return data.decode(codec, "replace")
    except LookupError:  # unknown, or no text encoding (base64, rot13...)
        pass
    return data.decode("utf-8", "replace")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


__all__ = ["MAX_BODY", "MAX_PARTS", "content", "has_body", "raw"]
