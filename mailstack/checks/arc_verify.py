"""ARC chain validation (RFC 8617 §5.2) of mail arriving on port 25.

The keys every ARC-Seal and ARC-Message-Signature names are fetched first,
through the server's resolver on the reactor; dkimpy then validates the chain
on the io pool with those records handed to it. The result is what our
Authentication-Results says (``arc=pass``, ``fail`` or ``none``), and what an
ARC set we add when forwarding the message carries on as its ``cv=``.

For a chain that passes, the newest seal's ``d=`` is kept, with whether that
hop's ARC-Authentication-Results reports ``dmarc=pass``: a forwarder or mailing
list named in ``checks.arc_trusted`` that saw DMARC pass vouches for a message
whose DMARC fails here only because the hop changed it (RFC 8617 §7.2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import dkim

from mailstack.authresults import comment
from mailstack.checks.dkim_verify import LookupTXT, RunBlocking, _name
from mailstack.dkim import speedups
from mailstack.dkim.signer import QUIET
from mailstack.dns import DNSError
from mailstack.smtp.message import header_values

MAX_SETS = 50  # RFC 8617 §4.2.1: i= goes up to 50


@dataclass(frozen=True, slots=True)
class ARCResult:
    result: str  # none, pass, fail, temperror
    sets: int = 0
    reason: str = ""
    sealer: str = ""  # d= of the newest ARC-Seal, when the chain passed
    sealer_saw_dmarc_pass: bool = False  # its ARC-Authentication-Results says dmarc=pass

    def resinfo(self) -> str:
        text = f"arc={self.result}"
        if self.reason:
            text += f" ({comment(self.reason)})"
        return text


class ARCVerifier:
    def __init__(self, lookup_txt: LookupTXT, run_blocking: RunBlocking) -> None:
        self.lookup_txt = lookup_txt
        self.run_blocking = run_blocking

    async def verify(self, message: bytes) -> ARCResult:
        seals = header_values(message, b"arc-seal")
        signatures = header_values(message, b"arc-message-signature")
        if not seals and not signatures:
            return ARCResult("none")
        if len(seals) > MAX_SETS or len(signatures) > MAX_SETS:
            return ARCResult("fail", len(seals), "too many ARC sets")
        names = set()
        newest: tuple[int, str] = (0, "")  # (i=, d=) of the newest seal
        for index, value in enumerate(seals + signatures):
            try:
                tags = dkim.parse_tag_value(value)
            except Exception:
                return ARCResult("fail", len(seals), "malformed ARC header")
            domain, selector = _name(tags.get(b"d", b"")), _name(tags.get(b"s", b""), 1)
            if domain is None or selector is None:
                return ARCResult("fail", len(seals), "malformed ARC header")
            names.add(f"{selector}._domainkey.{domain}")
            if index < len(seals):
                newest = max(newest, (_instance(tags.get(b"i", b"")), domain))
        records: dict[bytes, bytes] = {}
        for name in sorted(names):
            try:
                found = await self.lookup_txt(name)
            except DNSError as e:
                if e.temporary:
                    return ARCResult("temperror", len(seals), f"key lookup: {e.message}")
                found = []
            if found:
                records[(name + ".").encode("ascii")] = found[0]
        try:
            cv, _results, reason = await self.run_blocking(_validate, message, records)
        except Exception as e:  # a message dkimpy cannot take apart: not a valid chain
            return ARCResult("fail", len(seals), f"unverifiable: {e}")
        result = cv.decode("ascii", "replace") if isinstance(cv, bytes) else str(cv)
        if result not in ("pass", "fail", "none"):
            result = "fail"
        if result != "pass":
            return ARCResult(result, len(seals), str(reason or ""))
        instance, sealer = newest
        saw = any(_instance(_tag(value, "i")) == instance and _says_dmarc_pass(value)
                  for value in header_values(message, b"arc-authentication-results"))
        return ARCResult(result, len(seals), sealer=sealer, sealer_saw_dmarc_pass=saw)


def _instance(value: bytes) -> int:
    try:
        return int(value.strip())
    except ValueError:
        return 0


def _tag(value: bytes, name: str) -> bytes:
    """The value of the first ``name=`` tag of an ARC-Authentication-Results header (``i=``)."""
    first = value.split(b";", 1)[0]
    key, _, tag_value = first.partition(b"=")
    return tag_value if key.strip().lower() == name.encode() else b""


_COMMENT = re.compile(rb"\([^()]*\)")


def _says_dmarc_pass(value: bytes) -> bool:
    """Does an ARC-Authentication-Results value report ``dmarc=pass`` (outside comments)?"""
    text = value
    for _ in range(8):  # comments nest (RFC 5322 §3.2.2): peel them from the inside out
        text, removed = _COMMENT.subn(b"", text)
        if not removed:
            break
    return any(part.replace(b" ", b"").replace(b"\t", b"").lower().startswith(b"dmarc=pass")
               for part in text.replace(b"\r\n", b"").split(b";")[2:])


def _validate(message: bytes, records: dict[bytes, bytes]) -> tuple[Any, Any, Any]:
    """dkimpy's chain validation with the key records given (blocking: io pool)."""
    speedups.install()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name.lower(), b"")

    return tuple(dkim.arc_verify(message, logger=QUIET, dnsfunc=dnsfunc))  # type: ignore[return-value]
