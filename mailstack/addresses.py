"""Mailbox addresses as the account store and Maildir see them.

One canonical form everywhere: ``localpart@domain`` with the domain lowercased
(and, for internationalised domains, kept as lowercase U-labels), the local part
lowercased too (mailstack treats local parts case-insensitively, as most mail
systems do; RFC 5321 §2.4 allows a server to). Local parts that could not be
used safely as a single path component are refused: no ``/``, ``\\``, NUL,
control characters, ``..``, leading or trailing dots, and nothing over 64 octets
(RFC 5321 §4.5.3.1.1). Non-ASCII addresses (RFC 6531) may not contain Unicode
control, format, separator, private-use or unassigned characters.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_LABEL = re.compile(r"^[a-z0-9\u0080-\U0010ffff]([a-z0-9\u0080-\U0010ffff-]{0,61}[a-z0-9\u0080-\U0010ffff])?$")
_FORBIDDEN_LOCAL = re.compile(r"[\x00-\x20\x7f/\\\"(),:;<>@\[\]]")


# Unicode control, format, surrogate, private-use, unassigned and separator characters
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})


def _check_unicode(text: str, original: str) -> None:
    """Non-ASCII text may not hide invisible or control characters (ASCII ones the regexes refuse)."""
    if text.isascii():
        return
    for ch in text:
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            raise InvalidAddress(f"{original!r} has a control or invisible character")


class InvalidAddress(ValueError):
    """The text is not an address mailstack can store or deliver to."""


@dataclass(frozen=True, slots=True)
class Address:
    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def normalize_domain(domain: str) -> str:
    """Lowercase a domain and check every label; raises InvalidAddress."""
    d = domain.strip().rstrip(".").lower()
    if not d or len(d.encode("utf-8")) > 253:
        raise InvalidAddress(f"invalid domain {domain!r}")
    for label in d.split("."):
        if not _LABEL.match(label):
            raise InvalidAddress(f"invalid domain {domain!r}")
    _check_unicode(d, domain)
    return d


def check_local_part(local: str) -> str:
    """Lowercase and validate a local part for storage and path use."""
    lp = local.lower()
    if not lp or len(lp.encode("utf-8")) > 64:
        raise InvalidAddress("local part must be 1 to 64 octets")
    if _FORBIDDEN_LOCAL.search(lp):
        raise InvalidAddress(f"local part {local!r} has a forbidden character")
    if lp.startswith(".") or lp.endswith(".") or ".." in lp:
        raise InvalidAddress(f"local part {local!r} has a misplaced dot")
    _check_unicode(lp, local)
    return lp


def parse(text: str) -> Address:
    """Parse ``local@domain`` into its canonical form; raises InvalidAddress."""
    if not isinstance(text, str) or text.count("@") != 1:
        raise InvalidAddress(f"{text!r} is not of the form local@domain")
    local, domain = text.strip().split("@")
    return Address(check_local_part(local), normalize_domain(domain))


def canonical(text: str) -> str:
    return str(parse(text))
