"""DKIM keys: one per domain and selector, under ``storage.dkim``.

Layout::

    <storage.dkim>/<domain>/<selector>.key      the private key, PEM, mode 0600
    <storage.dkim>/<domain>/<selector>.json     {"algorithm": "rsa" | "ed25519", "created": <epoch>}
    <storage.dkim>/<domain>/retired/...          keys taken out of use (kept, never used)

RSA keys are 2048-bit, written as PKCS#1 (``RSA PRIVATE KEY``); Ed25519 keys
(RFC 8463) as PKCS#8. Both are what ``openssl pkey`` reads.

Which key signs: for each domain and algorithm, the oldest key that is not
retired. A key generated while an older one of its algorithm is in use is
*published*: ``mailstack dns-records`` lists it so it can go into DNS, but it
does not sign. Retiring the old key (``mailstack dkim retire``) switches
signing to it. That is the rotation RFC 6376 §3.1 leaves to operators: the new
selector is in DNS before any signature names it.

Files are written atomically (temp file, fsync, rename) by the CLI and read by
the server, which looks at a domain's directory again when its modification
time changes (:class:`KeyStore`), so key changes need no restart.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailstack.fsutil import fsync_directory, write_file_synced

ALGORITHMS = ("rsa", "ed25519")
RSA_BITS = 2048
_SELECTOR = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")


class DKIMKeyError(Exception):
    """A key operation was refused (bad selector, unknown key, ...); the message says why."""


@dataclass(frozen=True, slots=True)
class DKIMKey:
    domain: str
    selector: str
    algorithm: str  # "rsa" or "ed25519"
    created: float
    private_pem: bytes
    signing: bool = False  # the one key of its algorithm that signs for the domain

    @property
    def signature_algorithm(self) -> bytes:
        return b"rsa-sha256" if self.algorithm == "rsa" else b"ed25519-sha256"

    def private_for_signing(self) -> bytes:
        """The private key in the form the signer takes: PEM for RSA, the base64 seed for Ed25519."""
        if self.algorithm == "rsa":
            return self.private_pem
        key = serialization.load_pem_private_key(self.private_pem, password=None)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        return base64.b64encode(raw)

    def public_value(self) -> str:
        """The ``p=`` of the DNS record (RFC 6376 §3.6.1; RFC 8463 §4.2 for Ed25519: the raw key)."""
        key = serialization.load_pem_private_key(self.private_pem, password=None)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return base64.b64encode(raw).decode("ascii")
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode("ascii")

    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def record_text(self) -> str:
        """The TXT record's text: ``v=DKIM1; k=...; p=...``."""
        return f"v=DKIM1; k={self.algorithm}; p={self.public_value()}"


def default_selector(algorithm: str, now: float | None = None) -> str:
    """``YYYYMM-rsa`` / ``YYYYMM-ed25519`` for the current month (UTC)."""
    return time.strftime("%Y%m", time.gmtime(now)) + f"-{algorithm}"


def check_selector(selector: str) -> str:
    selector = selector.lower()
    if not _SELECTOR.match(selector) or len(selector) > 200:
        raise DKIMKeyError(f"invalid selector {selector!r}: DNS labels of letters, digits and hyphens")
    return selector


class KeyDirectory:
    """The key files of every domain (blocking file work: the CLI, or the server's io pool)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _domain_dir(self, domain: str) -> Path:
        domain = domain.lower().rstrip(".")
        if not domain or "/" in domain or domain.startswith("."):
            raise DKIMKeyError(f"invalid domain {domain!r}")
        return self.root / domain

    def generate(self, domain: str, algorithm: str = "rsa", selector: str | None = None,
                 now: float | None = None) -> DKIMKey:
        """Make and store a new key; it signs at once if the domain has no key of its algorithm."""
        if algorithm not in ALGORITHMS:
            raise DKIMKeyError(f"unknown algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
        created = time.time() if now is None else now
        folder = self._domain_dir(domain)
        if selector is None:
            base = default_selector(algorithm, created)
            selector, n = base, 1
            while (folder / f"{selector}.key").exists() or (folder / "retired" / f"{selector}.key").exists():
                n += 1
                selector = f"{base}-{n}"
        selector = check_selector(selector)
        if (folder / f"{selector}.key").exists() or (folder / "retired" / f"{selector}.key").exists():
            raise DKIMKeyError(f"{domain} already has a key with selector {selector!r}")
        if algorithm == "rsa":
            private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = rsa.generate_private_key(65537, RSA_BITS)
            pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
        else:
            private = ed25519.Ed25519PrivateKey.generate()
            pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        meta = json.dumps({"algorithm": algorithm, "created": created}).encode() + b"\n"
        _write_new(folder / f"{selector}.json", meta)
        _write_new(folder / f"{selector}.key", pem)  # last: a key file always has its metadata
        for key in self.keys(domain):
            if key.selector == selector:
                return key
        raise DKIMKeyError(f"the new key {selector!r} of {domain} cannot be read back")

    def retire(self, domain: str, selector: str) -> None:
        """Take a key out of use (moved to ``retired/``); the next key of its algorithm signs."""
        folder = self._domain_dir(domain)
        selector = check_selector(selector)
        if not (folder / f"{selector}.key").exists():
            raise DKIMKeyError(f"{domain} has no key with selector {selector!r} in use")
        (folder / "retired").mkdir(exist_ok=True, mode=0o700)
        os.replace(folder / f"{selector}.key", folder / "retired" / f"{selector}.key")
        if (folder / f"{selector}.json").exists():
            os.replace(folder / f"{selector}.json", folder / "retired" / f"{selector}.json")
        fsync_directory(folder)

    def domains(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []

    def keys(self, domain: str) -> list[DKIMKey]:
        """A domain's keys in use, oldest first, with the one signing key per algorithm marked."""
        folder = self._domain_dir(domain)
        found = []
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return []
        for name in names:
            if not name.endswith(".key"):
                continue
            selector = name[:-4]
            try:
                meta = json.loads((folder / f"{selector}.json").read_text("utf-8"))
                pem = (folder / name).read_bytes()
                algorithm, created = str(meta["algorithm"]), float(meta["created"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # half-written or damaged: not a key to sign with
            if algorithm in ALGORITHMS:
                found.append(DKIMKey(folder.name, selector, algorithm, created, pem))
        found.sort(key=lambda k: (k.created, k.selector))
        out, signing = [], set()
        for key in found:
            if key.algorithm not in signing:
                signing.add(key.algorithm)
                key = DKIMKey(key.domain, key.selector, key.algorithm, key.created, key.private_pem, True)
            out.append(key)
        return out


class KeyStore:
    """The server's view of the keys: each domain's signing keys, reread when its directory changes.

    Blocking (a stat per lookup, a read after a change): call it on the io pool.
    """

    def __init__(self, directory: KeyDirectory) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, list[DKIMKey]]] = {}  # domain -> (directory mtime, keys)

    def signing_keys(self, domain: str) -> list[DKIMKey]:
        """The keys that sign for ``domain`` (RSA first, then Ed25519); none when it has none."""
        try:
            folder = self.directory._domain_dir(domain)
        except DKIMKeyError:
            return []
        try:
            stamp = os.stat(folder).st_mtime_ns
        except (OSError, ValueError):  # no such domain, or a name no file system takes (NUL, too long)
            return []
        with self._lock:
            cached = self._cache.get(folder.name)
        if cached is None or cached[0] != stamp:
            keys = [k for k in self.directory.keys(domain) if k.signing]
            keys.sort(key=lambda k: ALGORITHMS.index(k.algorithm))
            with self._lock:
                self._cache[folder.name] = (stamp, keys)
            return keys
        return cached[1]


def _write_new(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp.{os.getpid()}")
    write_file_synced(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, data, mode=0o600)
    os.replace(tmp, path)
    fsync_directory(path.parent)

