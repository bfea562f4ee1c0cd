"""The DSN parameters of MAIL and RCPT (RFC 3461 §4, RFC 6533 §3), read and written.

``RET=FULL|HDRS`` and ``ENVID=<xtext>`` on MAIL, ``NOTIFY=NEVER|SUCCESS,FAILURE,DELAY``
and ``ORCPT=<addr-type>;<xtext>`` on RCPT. Values are kept decoded; :func:`xtext`
and :func:`orcpt_param` encode them again for the next hop. Each parser raises
:class:`DSNParamError` naming the parameter, which the session answers with 501.
"""

from __future__ import annotations

import re
import unicodedata

from mailstack.envelope import NOTIFY_VALUES, RecipientDSN

MAX_ENVID = 100  # RFC 3461 §4.4, the value as sent
MAX_ORCPT = 500  # RFC 3461 §4.2
_ADDR_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_HEX = "0123456789ABCDEF"
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_UNICODE_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{2,6})\}")


class DSNParamError(ValueError):
    """A DSN parameter is malformed; the message names it."""


def xtext_decode(value: str, name: str) -> str:
    """RFC 3461 §4: ``+HH`` is the octet HH (upper-case hex); other characters are ``!``..``~``
    but ``+`` and ``=``. The decoded text must be printable ASCII or space."""
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "+":
            pair = value[i + 1:i + 3]
            if len(pair) != 2 or any(h not in _HEX for h in pair):
                raise DSNParamError(f"{name}: bad xtext escape {value[i:i + 3]!r}")
            c = chr(int(pair, 16))
            i += 3
        elif "!" <= c <= "~" and c != "=":
            i += 1
        else:
            raise DSNParamError(f"{name}: character {c!r} not allowed in xtext")
        if not " " <= c <= "~":
            raise DSNParamError(f"{name}: the value must be printable ASCII")
        out.append(c)
    return "".join(out)


def xtext(value: str) -> str:
    """The xtext form of printable ASCII *value* (``+``, ``=`` and space escaped)."""
    return "".join(f"+{ord(c):02X}" if c in "+= " or not "!" <= c <= "~" else c for c in value)


def utf8_addr_decode(value: str, name: str) -> str:
    """RFC 6533 §3: utf-8-addr-xtext or -unitext: ``\\x{HEX}`` escapes and xtext escapes; raw UTF-8
    is accepted too (the unitext form, sent under SMTPUTF8)."""
    def unicode(m: re.Match[str]) -> str:
        code = int(m.group(1), 16)
        if code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
            raise DSNParamError(f"{name}: bad \\x{{}} escape")
        return chr(code)

    def visible(text: str) -> str:
        """No controls, format characters (bidi overrides) or line separators in an address."""
        if any(not c.isascii() and unicodedata.category(c) in _HIDDEN for c in text):
            raise DSNParamError(f"{name}: invisible or control characters in the address")
        return text

    out = []
    for part in re.split(r"(\+[0-9A-F]{2})", value):
        if part.startswith("+") and len(part) == 3:
            out.append(xtext_decode(part, name))
            continue
        if any(c in "+=" or ord(c) < 0x21 or ord(c) == 0x7F for c in part):
            raise DSNParamError(f"{name}: character not allowed in the address")
        if "\\" in _UNICODE_ESCAPE.sub("", part):
            raise DSNParamError(f"{name}: a backslash that starts no \\x{{}} escape")
        out.append(_UNICODE_ESCAPE.sub(unicode, part))
    return visible("".join(out))


def utf8_addr_xtext(value: str) -> str:
    """The utf-8-addr-xtext form: ASCII only, with non-ASCII, controls, space, ``+``, ``=`` and
    ``\\`` as ``\\x{HEX}`` (RFC 6533 §3 has no ``+HH`` form)."""
    return "".join(f"\\x{{{ord(c):X}}}" if not "!" <= c <= "~" or c in "+=\\" else c for c in value)


def parse_notify(value: str | None) -> frozenset[str]:
    if not value:
        raise DSNParamError("NOTIFY needs a value")
    items = frozenset(v.upper() for v in value.split(","))
    unknown = sorted(items - NOTIFY_VALUES)
    if unknown or "" in items:
        raise DSNParamError(f"NOTIFY: unknown value {(unknown or [''])[0]!r}")
    if "NEVER" in items and len(items) > 1:
        raise DSNParamError("NOTIFY=NEVER cannot be combined with SUCCESS, FAILURE or DELAY")
    return items


def parse_orcpt(value: str | None) -> tuple[str, str]:
    if not value:
        raise DSNParamError("ORCPT needs a value")
    if len(value) > MAX_ORCPT:
        raise DSNParamError(f"ORCPT longer than {MAX_ORCPT} characters")
    kind, semi, address = value.partition(";")
    if not semi or not _ADDR_TYPE.match(kind) or not address:
        raise DSNParamError("ORCPT must be <address type>;<address>")
    kind = kind.lower()
    address = utf8_addr_decode(address, "ORCPT") if kind == "utf-8" else xtext_decode(address, "ORCPT")
    return kind, address


def parse_ret(value: str | None) -> str:
    if value is None or value.upper() not in ("FULL", "HDRS"):
        raise DSNParamError("RET must be FULL or HDRS")
    return value.upper()


def parse_envid(value: str | None) -> str:
    if not value:
        raise DSNParamError("ENVID needs a value")
    if len(value) > MAX_ENVID:
        raise DSNParamError(f"ENVID longer than {MAX_ENVID} characters")
    return xtext_decode(value, "ENVID")


def rcpt_dsn(params: dict[str, str | None]) -> RecipientDSN | None:
    """NOTIFY and ORCPT from RCPT's parameters (removed from *params*); None when neither."""
    notify = orcpt = None
    if "NOTIFY" in params:
        notify = parse_notify(params.pop("NOTIFY"))
    if "ORCPT" in params:
        orcpt = parse_orcpt(params.pop("ORCPT"))
    if notify is None and orcpt is None:
        return None
    return RecipientDSN(notify, orcpt)


def orcpt_param(orcpt: tuple[str, str]) -> str:
    kind, address = orcpt
    if kind == "utf-8" or not address.isascii():
        return f"utf-8;{utf8_addr_xtext(address)}"
    return f"{kind};{xtext(address)}"


def rcpt_params(dsn: RecipientDSN | None) -> list[str]:
    """The RCPT parameters that pass *dsn* on to a next hop that offers DSN."""
    if dsn is None:
        return []
    out = []
    if dsn.notify is not None:
        out.append("NOTIFY=" + ",".join(v for v in ("NEVER", "SUCCESS", "FAILURE", "DELAY") if v in dsn.notify))
    if dsn.orcpt is not None:
        out.append("ORCPT=" + orcpt_param(dsn.orcpt))
    return out
