"""DKIM signing (RFC 6376, RFC 8463) of mail that leaves through the queue.

dkimpy does the canonicalisation and the signature. Its defaults are RFC 6376
§5.4's: every header of its recommended list that the message has, with
``From`` signed once more than it occurs (so none can be added later); no
``l=``. mailstack asks for relaxed/relaxed canonicalisation, which survives the
header rewrapping and whitespace changes of relays.

The signing domain is the domain of the message's ``From:`` address (DMARC
aligns on it), and a message is signed only when that domain has keys: one
signature per algorithm that has a signing key (RSA-SHA256 first, then
Ed25519-SHA256). Signing is CPU work of a millisecond or so per message: the
callers run it on the io pool.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from email.utils import getaddresses
from typing import Any

import dkim
from twisted.logger import Logger

from mailstack.authresults import our_header
from mailstack.dkim import speedups
from mailstack.dkim.keys import DKIMKey, KeyStore
from mailstack.dns import dns_name
from mailstack.smtp.message import header_values

log = Logger()


def from_addresses(message: bytes) -> tuple[int, list[str]]:
    """How many ``From:`` fields the message has, and every address in them.

    A quick parse (this runs on the reactor for every message checked on port 25):
    the fields found by name, their addresses taken by ``email.utils.getaddresses``.
    """
    values = header_values(message, b"from")
    if sum(map(len, values)) > 998:  # longer than a line may be: parsed, never kept
        return len(values), list(_addresses.__wrapped__(tuple(values)))
    return len(values), list(_addresses(tuple(values)))


@functools.lru_cache(maxsize=4096)  # a sender's From field is the same message after message
def _addresses(values: tuple[bytes, ...]) -> tuple[str, ...]:
    return tuple(a for _, a in getaddresses([v.decode("utf-8", "replace") for v in values]) if a)


def from_address(message: bytes) -> str | None:
    """The single address of the single ``From:``, when its domain is a domain name."""
    fields, addresses = from_addresses(message)
    if fields != 1 or len(addresses) != 1:
        return None
    local, at, domain = addresses[0].rpartition("@")
    return addresses[0] if at and local and dns_name(domain) is not None else None


def from_domain(message: bytes) -> str | None:
    """The domain of :func:`from_address` (A-labels, lower case); None when there is none."""
    address = from_address(message)
    return None if address is None else dns_name(address.rpartition("@")[2])


class DKIMSigner:
    """Adds DKIM-Signature headers for the From domain's signing keys (blocking: io pool)."""

    def __init__(self, keys: KeyStore, authserv_id: str = "") -> None:
        self.keys = keys
        self.authserv_id = authserv_id  # whose Authentication-Results an ARC set carries over

    def seal(self, message: bytes, domain: str, queue_id: str = "") -> bytes:
        """``message`` with an ARC set (RFC 8617) of ``domain`` in front, for mail we forward.

        The set carries over our own Authentication-Results (what we checked when the message
        arrived, the ARC chain's validation included, which becomes its ``cv=``), so a receiver
        that trusts us can still see DMARC pass after our forwarding broke SPF alignment. A
        message with ARC sets we did not validate (it did not come through our checks), one
        without a result of ours, or a domain without an RSA key (ARC signs with RSA only) is
        left as it is.
        """
        speedups.install()
        if not self.authserv_id:
            return message
        if header_values(message, b"arc-seal") and b"arc=" not in (our_header(message, self.authserv_id) or b""):
            return message  # a chain we did not validate: its cv= would be a guess
        keys = [k for k in self.keys.signing_keys(domain) if k.algorithm == "rsa"]
        if not keys:
            return message
        key = keys[0]
        try:
            headers = dkim.arc_sign(message, key.selector.encode("ascii"), key.domain.encode("ascii"),
                                    key.private_for_signing(), self.authserv_id.encode("ascii"), logger=QUIET)
        except Exception as e:  # no usable result header, a message dkimpy cannot parse: forwarded unsealed
            log.info("{queue_id} forwarded without an ARC set: {error}", queue_id=queue_id, error=e)
            return message
        return b"".join(headers) + message

    def sign(self, message: bytes, queue_id: str = "") -> bytes:
        """``message`` with a signature per signing key of its From domain prepended, or as it was."""
        speedups.install()  # RSA through OpenSSL: about 7 ms a signature less (see .speedups); once
        domain = from_domain(message)
        if domain is None:
            return message
        keys = self.keys.signing_keys(domain)
        if not keys:
            return message
        headers = []
        for key in keys:
            header = self._one(message, key, queue_id)
            if header:
                headers.append(header)
        return b"".join(headers) + message

    @staticmethod
    def _one(message: bytes, key: DKIMKey, queue_id: str) -> bytes:
        try:
            return bytes(dkim.sign(message, key.selector.encode("ascii"), key.domain.encode("idna"),
                                   key.private_for_signing(), canonicalize=(b"relaxed", b"relaxed"),
                                   signature_algorithm=key.signature_algorithm))
        except Exception as e:  # a damaged key or a message dkimpy cannot parse: sent unsigned, said loudly
            log.error("{queue_id} not DKIM-signed with {selector}._domainkey.{domain}: {error}",
                      queue_id=queue_id, selector=key.selector, domain=key.domain, error=e)
            return b""


class Quiet:
    """A logger for dkimpy, which logs at error level what its callers hear as an exception or a
    result anyway (a failed signature is a result here, not a server error)."""

    def debug(self, *args: object) -> None:
        pass

    info = warning = error = debug


QUIET: Any = Quiet()


class PooledSigner:
    """:class:`~mailstack.interfaces.MessageSigner` running a :class:`DKIMSigner` through ``run`` (the io pool)."""

    def __init__(self, signer: DKIMSigner, run: Callable[..., Awaitable[Any]]) -> None:
        self.signer = signer
        self.run = run

    async def sign(self, message: bytes, queue_id: str) -> bytes:
        signed: bytes = await self.run(self.signer.sign, message, queue_id)
        return signed

    async def seal(self, message: bytes, domain: str, queue_id: str) -> bytes:
        sealed: bytes = await self.run(self.signer.seal, message, domain, queue_id)
        return sealed
