"""DKIM verification (RFC 6376 §6) of mail arriving on port 25, with results for RFC 8601.

Each ``DKIM-Signature`` header, up to ``max_signatures`` (the rest are
``policy``, "not checked"), is taken in three steps:

1. its tags are parsed and checked here (a missing or malformed tag is a
   ``permerror`` naming it);
2. its key record, ``<s>._domainkey.<d>``, is looked up through the server's
   twisted.names resolver, on the reactor and never blocking it (no record is a
   ``permerror``, a lookup that failed or timed out a ``temperror``; a record
   that is not a usable key, or an RSA key under 1024 bits, a ``permerror``);
3. dkimpy checks the body hash and the signature with the parsed key handed to
   it (its own DNS is never used): ``pass`` or ``fail``. A message of up to
   :data:`INLINE_LIMIT` octets is checked on the reactor thread: with
   :mod:`mailstack.dkim.speedups` that costs about 0.2 ms for 4 KB, less than
   a hop to a pool thread and back. Larger ones go to the io pool.

Parsed keys are kept by record text, so a sender's key is decoded once.

A message dkimpy cannot parse gives ``permerror``; nothing here raises.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import dkim
from twisted.logger import Logger

from mailstack.authresults import comment
from mailstack.dkim import speedups
from mailstack.dkim.signer import QUIET
from mailstack.dns import DNSError, dns_name
from mailstack.smtp.message import header_values

log = Logger()

MIN_RSA_BITS = 1024  # RFC 8301 §3.2: verifiers must not accept smaller keys
INLINE_LIMIT = 64 * 1024  # larger messages are verified on the io pool
INLINE_FIELD_WORK = 20_000  # dkimpy matches every signed name against every header field: so do we count
MAX_SIGNED_FIELDS = 256  # h= names a signature may list (real ones list 10 to 40)
KEYS_KEPT = 1024
KEPT_RECORD_SIZE = 4096  # an RSA-4096 key record is about 800 octets

LookupTXT = Callable[[str], Awaitable[list[bytes]]]
RunBlocking = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class DKIMResult:
    """One signature's outcome, as RFC 8601 reports it."""

    result: str  # pass, fail, neutral, policy, temperror, permerror
    domain: str = ""  # header.d
    selector: str = ""  # header.s
    b: str = ""  # the start of b=, to tell signatures apart (RFC 6008 header.b)
    reason: str = ""

    def resinfo(self) -> str:
        text = f"dkim={self.result}"
        if self.reason:
            text += f" ({comment(self.reason)})"
        if self.domain:
            text += f" header.d={self.domain}"
        if self.selector:
            text += f" header.s={self.selector}"
        if self.b:
            text += f" header.b={self.b}"
        return text


def signature_headers(message: bytes) -> list[bytes]:
    """The values of the message's DKIM-Signature headers, unfolded, in order."""
    return header_values(message, b"dkim-signature")


class DKIMVerifier:
    """Verifies every signature of a message (see the module docstring)."""

    def __init__(self, lookup_txt: LookupTXT, run_blocking: RunBlocking, *, max_signatures: int = 5) -> None:
        self.lookup_txt = lookup_txt
        self.run_blocking = run_blocking
        self.max_signatures = max_signatures
        self._keys: dict[bytes, tuple[Any, ...]] = {}  # record -> dkimpy's parsed key

    async def verify(self, message: bytes) -> list[DKIMResult]:
        """One result per DKIM-Signature header checked, in order, and one ``policy`` result for
        any beyond ``max_signatures``; [] when the message has none."""
        results = []
        values = signature_headers(message)
        for index, value in enumerate(values[:self.max_signatures]):
            results.append(await self._one(message, index, value))
        if len(values) > self.max_signatures:  # one result for all the rest, however many
            results.append(DKIMResult("policy", reason=f"{len(values) - self.max_signatures} more signatures "
                                                         f"not checked (at most {self.max_signatures} are)"))
        return results

    async def _one(self, message: bytes, index: int, value: bytes) -> DKIMResult:
        tags: dict[bytes, bytes] = {}
        try:
            tags = dkim.parse_tag_value(value)
            dkim.validate_signature_fields(tags)
        except dkim.ValidationError as e:
            if "x= value is past" in str(e):  # well formed, but past its x= (RFC 6376 §3.5)
                return DKIMResult("fail", _name(tags.get(b"d", b"")) or "", _name(tags.get(b"s", b""), 1) or "",
                                  reason="signature expired")
            return DKIMResult("permerror", reason=f"malformed signature: {e}")
        except Exception as e:  # InvalidTagValueList and friends: the header is broken
            return DKIMResult("permerror", reason=f"malformed signature: {e}")
        domain = _name(tags.get(b"d", b""))
        selector = _name(tags.get(b"s", b""), 1)
        if domain is None or selector is None:  # never looked up, never copied into our header
            return DKIMResult("permerror", reason="malformed signature: d= or s= is not a domain name")
        signed_fields = tags.get(b"h", b"").count(b":") + 1
        if signed_fields > MAX_SIGNED_FIELDS:  # checking them costs fields x header lines
            return DKIMResult("permerror", domain, selector,
                              reason=f"signs {signed_fields} header fields, more than {MAX_SIGNED_FIELDS}")
        b = _text(tags.get(b"b", b"")).replace(" ", "")[:8]
        found = DKIMResult("neutral", domain, selector, b)
        name = f"{selector}._domainkey.{domain}"
        try:
            records = await self.lookup_txt(name)
        except DNSError as e:
            if not e.temporary:  # a name that cannot be asked for, or an enormous answer
                return _with(found, "permerror", f"key lookup: {e.message}")
            return _with(found, "temperror", f"key lookup: {e.message}")
        if not records:
            return _with(found, "permerror", "no key")
        record = records[0]  # RFC 6376 §3.6.2.2: several records give undefined results; take the first
        try:
            key = self._key(name, record)
        except Exception as e:  # KeyFormatError and friends: the record is not a usable key
            return _with(found, "permerror", f"bad key: {e}")
        _pk, keysize, ktag, _ = key
        if ktag == b"rsa" and keysize is not None and keysize < MIN_RSA_BITS:
            return _with(found, "permerror", f"key too short ({keysize} bits)")
        try:
            if len(message) <= INLINE_LIMIT and signed_fields * _header_lines(message) <= INLINE_FIELD_WORK:
                ok = _verify(message, index, value, tags, key)
            else:
                ok = await self.run_blocking(_verify, message, index, value, tags, key)
        except dkim.ValidationError as e:  # the body hash does not match: the message was changed
            return _with(found, "fail", str(e).split(" (", 1)[0])
        except dkim.DKIMException as e:
            return _with(found, "permerror", f"unverifiable: {e}")
        except Exception as e:  # a message dkimpy cannot take apart
            log.info("DKIM check of a signature by {domain} failed: {error}", domain=domain, error=e)
            return _with(found, "permerror", f"unverifiable: {e}")
        return _with(found, "pass" if ok else "fail", "" if ok else "signature did not verify")

    def _key(self, name: str, record: bytes) -> tuple[Any, ...]:
        """dkimpy's parse of a key record (pk, bits, k=, tlsrpt), kept for the next message."""
        key = self._keys.get(record)
        if key is None:
            key = tuple(dkim.evaluate_pk(name.encode("ascii", "replace"), record))
            if len(record) <= KEPT_RECORD_SIZE:  # nothing a sender made enormous is kept
                if len(self._keys) >= KEYS_KEPT:
                    self._keys.clear()
                self._keys[record] = key
        return key


def _header_lines(message: bytes) -> int:
    end = message.find(b"\r\n\r\n")
    return message.count(b"\r\n", 0, len(message) if end < 0 else end) + 1


def _with(base: DKIMResult, result: str, reason: str) -> DKIMResult:
    return DKIMResult(result, base.domain, base.selector, base.b, reason)


def _name(value: bytes, labels: int = 2) -> str | None:
    """A d= (two labels at least) or s= (one) value as a lower-case A-label name, or None."""
    return dns_name(_text(value), min_labels=labels)


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").strip()


class _KeyedDKIM(dkim.DKIM):  # type: ignore[misc]
    """dkimpy's verification of one signature whose tags were parsed and checked, and whose
    key was looked up and parsed, before: neither is done a second time."""

    def __init__(self, message: bytes, value: bytes, tags: dict[bytes, bytes], key: tuple[Any, ...]) -> None:
        super().__init__(message, logger=QUIET)
        self.value = value  # the signature header's value, unfolded, as the tags were read from it
        self.tags = tags
        self.key = key

    def verify_headerprep(self, idx: int = 0) -> Any:
        signatures = [(x, y) for x, y in self.headers if x.lower() == b"dkim-signature"]
        if len(signatures) <= idx or signatures[idx][1].replace(b"\r\n", b"") != self.value:
            return super().verify_headerprep(idx)  # not the header the tags came from: dkimpy reads it
        self.signature_fields = self.tags
        self.domain, self.selector = self.tags[b"d"], self.tags[b"s"]
        include_headers = [x.lower() for x in _H_SEPARATOR.split(self.tags[b"h"])]
        self.include_headers = tuple(include_headers)
        return self.tags, include_headers, signatures

    def verify_sig(self, sig: dict[bytes, bytes], include_headers: Any, sig_header: Any, dnsfunc: Any) -> bool:
        if sig is not self.tags:
            return False  # dkimpy read another header than the one the key was fetched for
        self.pk, self.keysize, self.ktag, self.seqtlsrpt = self.key
        return bool(self.verify_sig_process(sig, include_headers, sig_header, dnsfunc))


_H_SEPARATOR = re.compile(rb"\s*:\s*")


def _verify(message: bytes, index: int, value: bytes, tags: dict[bytes, bytes], key: tuple[Any, ...]) -> bool:
    """dkimpy's check of signature ``index`` with its parsed tags and key (on the io pool for large messages)."""
    speedups.install()  # RSA through OpenSSL, fast canonicalisation: 0.5 of 0.7 ms less (see .speedups); once
    return bool(_KeyedDKIM(message, value, tags, key).verify(idx=index, dnsfunc=_no_dns))


def _no_dns(name: bytes, timeout: int = 5) -> bytes:
    return b""
