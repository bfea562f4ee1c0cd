"""RSA signatures for dkimpy through ``cryptography`` (OpenSSL) instead of Python integers.

dkimpy computes an RSA-2048 private-key operation with Python's ``pow`` on its
own parsed key: about 7 ms a message, which capped signed outbound mail at
about 140 messages/s per core (``bench/dkim_bench.py``). Its signer calls the
module-level ``dkim.RSASSA_PKCS1_v1_5_sign(hash, key)``; :func:`install`
replaces that one function with an equivalent that hands the same key numbers
to OpenSSL. RSASSA-PKCS1-v1_5 is deterministic, so the signature bytes are the
same; :func:`install` checks exactly that on a throwaway key before replacing
anything, and leaves dkimpy alone if its function is missing or disagrees.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

_HASHES = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}
_keys: dict[int, rsa.RSAPrivateKey] = {}
_lock = threading.Lock()
_installed = False


def _key(numbers: dict[str, int]) -> rsa.RSAPrivateKey:
    modulus = numbers["modulus"]
    key = _keys.get(modulus)
    if key is None:
        public = rsa.RSAPublicNumbers(numbers["publicExponent"], modulus)
        key = rsa.RSAPrivateNumbers(numbers["prime1"], numbers["prime2"], numbers["privateExponent"],
                                    numbers["exponent1"], numbers["exponent2"], numbers["coefficient"],
                                    public).private_key()
        with _lock:
            if len(_keys) > 256:
                _keys.clear()
            _keys[modulus] = key
    return key


def sign(hash_object: Any, private_key: dict[str, int]) -> bytes:
    """``dkim.RSASSA_PKCS1_v1_5_sign`` done by OpenSSL (same arguments, same bytes)."""
    algorithm = _HASHES[hash_object.name]()
    return _key(private_key).sign(hash_object.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))


def install() -> bool:
    """Let dkimpy sign RSA through OpenSSL if, on a test key, both give the same bytes."""
    global _installed
    if _installed:
        return True
    original = getattr(dkim, "RSASSA_PKCS1_v1_5_sign", None)
    if original is None:
        return False
    from cryptography.hazmat.primitives import serialization

    test = rsa.generate_private_key(65537, 1024)
    pem = test.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())
    try:
        numbers = dkim.parse_pem_private_key(pem)
        digest = hashlib.sha256(b"mailstack")
        if original(digest.copy(), numbers) != sign(digest.copy(), numbers):
            return False
    except Exception:
        return False
    dkim.RSASSA_PKCS1_v1_5_sign = sign
    _installed = True
    return True
