"""Addresses and header values as Sieve reads them (RFC 5228 §2.7.4, §5.1, §5.7; RFC 5233).

The address test reads only the address headers, through the IMAP address-list parser,
never the phrase; a redirect target must be one mail address; header values are RFC 2047
decoded for the header test.
"""

from __future__ import annotations

import re
from email.header import decode_header, make_header

from mailstack.accounts.directory import canonical_address
from mailstack.addresses import InvalidAddress
from mailstack.imap import address as addresses

# RFC 5228 §5.1: the headers the address test reads (and others holding address lists)
ADDRESS_HEADERS = frozenset({"from", "to", "cc", "bcc", "sender", "reply-to", "resent-from", "resent-to",
                             "resent-cc", "resent-bcc", "resent-sender", "return-receipt-to",
                             "disposition-notification-to", "errors-to"})


def addr_spec(text: str) -> str | None:
    """The one address of a redirect target (RFC 5228 §2.4.2.3), or None when it is not one."""
    found = mailboxes_of(text) if "<" in text else [split_address(text.strip())]
    if len(found) != 1:
        return None
    local, domain = found[0]
    if not local or not domain:
        return None
    try:
        return canonical_address(f"{local}@{domain}")
    except InvalidAddress:
        return None


def decode_words(value: str) -> str:
    """RFC 2047 words decoded (RFC 5228 §5.7), as far as they can be."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # a malformed word stays as it was
        return value


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
# the common value, one plain address with or without a phrase of atoms: read without the parser.
# Each atom of the phrase ends at white space or "<", so there is one way to match it (linear time)
_PLAIN = re.compile(rf"[ \t]*(?:((?:{_ATEXT}+[ \t]+)*(?:{_ATEXT}+)?)<)?({_ATEXT}+(?:\.{_ATEXT}+)*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)"
                    rf"(>)?[ \t]*\Z")


def mailboxes_of(value: str) -> list[tuple[str, str]]:
    """(local part, domain) of each address in a header value, groups opened."""
    plain = _PLAIN.match(value)
    if plain is not None and (plain.group(4) is None) == (plain.group(1) is None):
        return [(plain.group(2), plain.group(3))]
    out = []
    for item in addresses.parse_address_list(value):
        for mailbox in item.members if isinstance(item, addresses.Group) else (item,):
            out.append((mailbox.local, mailbox.domain or ""))
    return out


def split_address(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return (local, domain) if local else (address, "")


def address_part(address: tuple[str, str], part: str, delimiter: str = "+") -> str | None:
    """An address part (RFC 5228 §2.7.4, RFC 5233 §4); None when it has none (no detail)."""
    local, domain = address
    if part == "all":
        return f"{local}@{domain}" if domain else local
    if part == "localpart":
        return local
    if part == "domain":
        return domain
    cut = min((i for i in (local.find(c) for c in delimiter) if i > 0), default=-1)
    if part == "user":
        return local[:cut] if cut > 0 else local
    return local[cut + 1:] if cut > 0 else None  # RFC 5233 §4: no separator, no detail


__all__ = ["ADDRESS_HEADERS", "addr_spec", "address_part", "decode_words", "mailboxes_of", "split_address"]
