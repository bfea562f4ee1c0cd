"""RFC 5321 paths and ESMTP parameters, with RFC 6531 UTF-8 extensions.

``parse_mail_from("FROM:<a@b> SIZE=10")`` and ``parse_rcpt_to("TO:<c@d>")``
return a :class:`Path` or raise :class:`PathSyntaxError`. Grammar: RFC 5321
§4.1.2 (Path, Mailbox, Local-part, Domain, address-literal, esmtp-param),
§4.1.1.3 (``<Postmaster>``), §4.5.3.1 (length limits); RFC 6531 §3.3 (UTF-8 in
atext, qtext and sub-domains). A source route (``<@a,@b:user@c>``) is accepted
and ignored, as RFC 5321 §4.1.2 and Appendix C require.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Each class holds every non-ASCII character (RFC 6531 UTF8-non-ascii), so it is written as the
# ASCII characters it leaves out: a class spanning up to U+10FFFF costs ~1 ms to compile, its
# complement nothing (the sets are the same)
_ATOM = r'[^\x00-\x20"(),.:;<>@\[\\\]\x7f]+'  # atext (RFC 5322 §3.2.3) or UTF-8
_DOT_STRING = re.compile(f"^{_ATOM}(?:\\.{_ATOM})*$")
_QUOTED = re.compile(r'^"((?:[^\x00-\x1f"\\\x7f]|\\[\x20-\x7e])*)"$')  # qtextSMTP or UTF-8, quoted-pairSMTP
_LET_DIG = r"[^\x00-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]"  # a letter, digit or UTF-8
_LDH = r"[^\x00-\x2c\x2e\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]"  # and the hyphen
_SUBDOMAIN = f"{_LET_DIG}(?:{_LDH}*{_LET_DIG})?"
_DOMAIN = re.compile(f"^{_SUBDOMAIN}(?:\\.{_SUBDOMAIN})*$")
_IPV4 = re.compile(r"^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$")
_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_VALUE = re.compile(r"^[^\x00-\x20=\x7f]+$")  # esmtp-value (RFC 5321 §4.1.2, RFC 6531 §3.3)
_ADL = re.compile(f"^@{_SUBDOMAIN}(?:\\.{_SUBDOMAIN})*(?:,@{_SUBDOMAIN}(?:\\.{_SUBDOMAIN})*)*:")


class PathSyntaxError(ValueError):
    """The path or a parameter does not follow the grammar; ``param`` tells which part."""

    def __init__(self, message: str, *, param: bool = False) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Path:
    """A parsed reverse- or forward-path. ``local``/``domain`` are empty for ``<>``."""

    local: str
    domain: str
    params: dict[str, str | None] = field(default_factory=dict)
    quoted: bool = False

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain

    @property
    def address(self) -> str:
        if self.is_null:
            return ""
        local = self.local
        if self.quoted:
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{local}@{self.domain}" if self.domain else local

    @property
    def is_ascii(self) -> bool:
        return self.address.isascii()

    def __str__(self) -> str:
        return f"<{self.address}>"


def _split_path(text: str, verb: str) -> tuple[str, str]:
    """``FROM:<path> params`` -> (path inside brackets, params text)."""
    prefix = verb + ":"
    if not text[: len(prefix)].upper() == prefix:
        raise PathSyntaxError(f"expected {prefix}<address>")
    rest = text[len(prefix):].lstrip(" ")
    if not rest.startswith("<"):
        raise PathSyntaxError("address must be enclosed in <>")
    end = _closing_bracket(rest)
    if end < 0:
        raise PathSyntaxError("missing closing >")
    inner, params = rest[1:end], rest[end + 1:]
    if params and not params.startswith(" "):
        raise PathSyntaxError("parameters must follow the address after a space")
    return inner, params.strip(" ")


def _closing_bracket(text: str) -> int:
    """Index of the ``>`` that closes the path, skipping quoted strings."""
    in_quote = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\" and in_quote:
            escaped = True
        elif ch == '"':
            in_quote = not in_quote
        elif ch == ">" and not in_quote:
            return i
    return -1


def parse_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    if not text:
        return params
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key):
            raise PathSyntaxError(f"bad parameter {item!r}", param=True)
        if eq and not _VALUE.match(value):
            raise PathSyntaxError(f"bad value for {key}", param=True)
        ukey = key.upper()
        if ukey in params:
            raise PathSyntaxError(f"duplicate parameter {key}", param=True)
        params[ukey] = value if eq else None
    return params


def parse_domain(domain: str) -> str:
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        if _IPV4.match(literal):
            return domain
        if literal[:5].upper() == "IPV6:":
            import ipaddress

            try:
                ipaddress.IPv6Address(literal[5:])
            except ValueError:
                raise PathSyntaxError("bad IPv6 address literal") from None
            return domain
        raise PathSyntaxError("bad address literal")
    if not _DOMAIN.match(domain) or len(domain.encode("utf-8")) > 255:
        raise PathSyntaxError("bad domain")
    return domain.lower()


def parse_mailbox(text: str) -> tuple[str, str, bool]:
    """``local@domain`` -> (local, domain, quoted). Local parts keep their case."""
    if text.startswith('"'):
        close = _closing_quote(text)
        if close < 0 or close + 1 >= len(text) or text[close + 1] != "@":
            raise PathSyntaxError("bad quoted local part")
        local_text, domain = text[: close + 1], text[close + 2:]
        m = _QUOTED.match(local_text)
        if not m:
            raise PathSyntaxError("bad quoted local part")
        local = re.sub(r"\\(.)", r"\1", m.group(1))
        quoted = not _DOT_STRING.match(local)  # RFC 5321 §4.1.2: prefer the unquoted form
    else:
        local, at, domain = text.rpartition("@")
        if not at or not _DOT_STRING.match(local):
            raise PathSyntaxError("bad local part")
        quoted = False
    if not local or len(local.encode("utf-8")) > 64:  # RFC 5321 §4.5.3.1.1
        raise PathSyntaxError("local part empty or longer than 64 octets")
    return local, parse_domain(domain), quoted


def _closing_quote(text: str) -> int:
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return -1


def _parse_path(inner: str) -> tuple[str, str, bool]:
    if len(inner.encode("utf-8")) > 256:  # RFC 5321 §4.5.3.1.3
        raise PathSyntaxError("path longer than 256 octets")
    m = _ADL.match(inner)
    if m:  # RFC 5321 §4.1.2: source route accepted, ignored
        inner = inner[m.end():]
    return parse_mailbox(inner)


def parse_mail_from(text: str) -> Path:
    inner, params = _split_path(text, "FROM")
    parsed = parse_params(params)
    if inner == "":
        return Path("", "", parsed)
    local, domain, quoted = _parse_path(inner)
    return Path(local, domain, parsed, quoted)


def parse_rcpt_to(text: str, postmaster_domain: str) -> Path:
    inner, params = _split_path(text, "TO")
    parsed = parse_params(params)
    if inner.lower() == "postmaster":  # RFC 5321 §4.1.1.3
        return Path("postmaster", postmaster_domain, parsed)
    if inner == "":
        raise PathSyntaxError("empty recipient")
    local, domain, quoted = _parse_path(inner)
    return Path(local, domain, parsed, quoted)
