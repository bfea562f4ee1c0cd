"""dkimpy made faster where it spends its time, with the same results.

RSA signatures go through ``cryptography`` (OpenSSL) instead of Python integers.

dkimpy computes an RSA-2048 private-key operation with Python's ``pow`` on its
own parsed key: about 7 ms a message, which capped signed outbound mail at
about 140 messages/s per core (``bench/dkim_bench.py``). Its signer calls the
module-level ``dkim.RSASSA_PKCS1_v1_5_sign(hash, key)``; :func:`install`
replaces that one function with an equivalent that hands the same key numbers
to OpenSSL. RSASSA-PKCS1-v1_5 is deterministic, so the signature bytes are the
same; :func:`install` checks exactly that on a throwaway key before replacing
anything, and leaves dkimpy alone if its function is missing or disagrees.

Verification is the same story in the other direction: dkimpy's
``RSASSA_PKCS1_v1_5_verify`` turns integers into bytes one octet at a time
(0.46 of the 0.69 ms a 4 KB message's check cost on the port-25 path);
:func:`verify` asks OpenSSL instead, with each sender's public key built once.
:func:`install` replaces it only if both agree on a good and a bad signature.
One difference is meant: dkimpy reduces the signature modulo n, so s + n passes
there; here a value that does not fit the modulus is not valid (RFC 8017 §5.2.2).

Relaxed canonicalisation (RFC 6376 §3.4.2, §3.4.4) compresses runs of blanks
with a regular expression that replaces every single space by a space: some
600 replacements for a 4 KB body, a fifth of a verification. The same three
helpers here first look for what they would change (a tab, two spaces, a blank
before a line end, a line break) and return the value untouched when there is
none. Otherwise dkimpy's own helper does the work, except for the compression,
whose pattern here matches only the runs that are not a single space already
(1 MB of text with double blanks: 40 ms down to 14).

Two more of its steps cost more than the signature: it splits the whole
message into lines with a regular expression before looking at the header
(44 µs for 4 KB; ``rfc822_parse`` here walks the header with ``find`` and
slices the body off), and it blanks the b= value with a pattern whose nested
optional white space backtracks (37 µs; :data:`B_TAG` is the same pattern
written without it, 8 µs).

:func:`install` swaps in each group only if it gives dkimpy's own answers (or
raises the same exceptions) on a set of awkward samples.
"""

from __future__ import annotations

import hashlib
import re
import threading
from typing import Any

import dkim
import dkim.canonicalization as canon
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

_HASHES = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}
_keys: dict[int, rsa.RSAPrivateKey] = {}
_public: dict[tuple[int, int], rsa.RSAPublicKey] = {}
_original_verify: Any = None
_lock = threading.Lock()
_install_lock = threading.Lock()
_installed: bool | None = None  # None: not tried yet


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


def _public_key(numbers: dict[str, int]) -> rsa.RSAPublicKey:
    index = (numbers["modulus"], numbers["publicExponent"])
    key = _public.get(index)
    if key is None:
        key = rsa.RSAPublicNumbers(index[1], index[0]).public_key()
        with _lock:
            if len(_public) > 1024:  # senders' keys: bounded, refilled as mail arrives
                _public.clear()
            _public[index] = key
    return key


def verify(hash_object: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """``dkim.RSASSA_PKCS1_v1_5_verify`` done by OpenSSL (same arguments, same answer)."""
    algorithm = _HASHES.get(hash_object.name)
    try:
        key = _public_key(public_key)
    except ValueError:  # numbers OpenSSL will not take as a key: dkimpy's own arithmetic decides
        key = None
    if algorithm is None or key is None:
        return bool(_original_verify(hash_object, signature, public_key))
    size = (key.key_size + 7) // 8
    # dkimpy reads the signature as an integer: leading zero octets, too few or too many, do not
    # matter. One that does not fit the modulus is out of range (RFC 8017 §5.2.2): not valid.
    value = signature.lstrip(b"\0")
    if len(value) > size:
        return False
    try:
        key.verify(value.rjust(size, b"\0"), hash_object.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm()))
    except InvalidSignature:
        return False
    return True


def _agree_on_verify(original: Any) -> bool:
    """Do dkimpy and :func:`verify` give the same answers on a throwaway key?"""
    test = rsa.generate_private_key(65537, 1024)
    numbers = test.public_key().public_numbers()
    public = {"modulus": numbers.n, "publicExponent": numbers.e}
    digest = hashlib.sha256(b"mailstack")
    good = test.sign(digest.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    bad = bytes([good[0] ^ 1]) + good[1:]
    return all(bool(original(digest.copy(), s, public)) is verify(digest.copy(), s, public) for s in (good, bad))


def _fast(original: Any, *needles: bytes) -> Any:
    """``original``, skipped for a value that holds none of ``needles`` (it would come back unchanged)."""

    def helper(content: bytes) -> bytes:
        for needle in needles:
            if needle in content:
                return original(content)  # type: ignore[no-any-return]
        return content

    helper.__name__ = original.__name__
    helper.__doc__ = f"dkimpy's {original.__name__}, skipped when there is nothing to change."
    return helper


_RUNS = re.compile(rb"\t[\t ]*| [\t ]+")  # the blank runs that are not a single space already


def _compress_whitespace(content: bytes) -> bytes:
    """Every run of blanks as one space (RFC 6376 §3.4.2), replacing only the runs that change."""
    if b"\t" not in content and b"  " not in content:
        return content
    return _RUNS.sub(b" ", content)


_CANON_SAMPLES = (b"", b" ", b"\t", b"  ", b"\t\t", b" \t", b"\t ", b"a b", b"a  b", b"a\tb", b"a \t b", b"a\t \t b c  d",
                  b"x \r\n", b"x\t\r\ny", b"x\r\n \r\n", b"a\r\n b", b"a\n\tb", b"a\rb", b"plain text\r\nlines\r\n",
                  b"trail  \r\n\r\n", b"\r\n\r\n", b"a \xa0 b", b"a\x0b\x0cb")
_CANON_HELPERS: dict[str, Any] = {"compress_whitespace": _compress_whitespace,
                                  "strip_trailing_whitespace": (b" \r\n", b"\t\r\n"), "unfold_header_value": (b"\n",)}


def _canonicalisation_helpers() -> dict[str, Any] | None:
    """The fast helpers, each checked against dkimpy's own on the samples; None if any differs."""
    fast = {}
    for name, how in _CANON_HELPERS.items():
        original = getattr(canon, name, None)
        if original is None:
            return None
        helper = how if callable(how) else _fast(original, *how)
        if any(helper(sample) != original(sample) for sample in _CANON_SAMPLES):
            return None
        fast[name] = helper
    return fast


_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")
# dkimpy's pattern for the b= value in a signature header, FWS = (?:(?:\s*\r?\n)?\s+)?, which matches
# exactly the runs of white space: the same pattern written as \s*, possessive, does not backtrack.
B_TAG = re.compile(rb"([;\s]b\s*+=)(?:\s*+[a-zA-Z0-9+/=])*+(?:\r?\n\Z)?")


def _parse_with(original: Any) -> Any:
    def rfc822_parse(message: bytes) -> tuple[list[list[bytes]], bytes]:
        """dkimpy's split of a message into header fields and body, by ``find`` rather than
        a regular-expression split of every line; a message with a bare LF goes to dkimpy."""
        if message.count(b"\n") != message.count(b"\r\n"):
            return original(message)  # type: ignore[no-any-return]
        headers: list[list[bytes]] = []
        pos, size = 0, len(message)
        while pos <= size:
            nl = message.find(b"\r\n", pos)
            line = message[pos:] if nl < 0 else message[pos:nl]
            following = size + 1 if nl < 0 else nl + 2
            if not line:  # the blank line: the body follows it
                return headers, message[following:]
            if line[0] in (0x09, 0x20):
                headers[-1][1] += line + b"\r\n"
            else:
                match = _FIELD_NAME.match(line)
                if match is not None:
                    headers.append([match.group(1), line[match.end(0):] + b"\r\n"])
                elif not line.startswith(b"From "):
                    raise dkim.MessageFormatError(f"Unexpected characters in RFC822 header: {line!r}")
            pos = following
        return headers, b""

    return rfc822_parse


_MESSAGES = (b"", b"\r\n", b"\r\nbody", b"A: 1\r\n", b"A: 1", b"A: 1\r\n\r\n", b"A: 1\r\nB:2\r\n\r\nbody\r\n.\r\n",
             b"A: 1\r\n\tmore\r\n more\r\nB: 2\r\n\r\nx\r\n\r\ny", b"From someone\r\nA: 1\r\n\r\nb",
             b"A: 1\r\nbroken line\r\n\r\nb", b" lead\r\nA: 1\r\n", b"A: 1\nB: 2\n\nlf body\n", b"A: 1\r\r\n\r\nb",
             b"A:1\r\n\r\n\r\n", b"X-\xff: 1\r\n\r\n", b"A :1\r\n\r\n", b"A: 1\r\n\r\nbody\r\nB: 2\r\n")
_SIGNATURES = (b" v=1; b=abc\r\n def;\r\n", b"b=x", b"; b = a b c\r\n", b"bh=xyz; b=\r\n", b";b=\r\n\t abc=\r\n",
               b" b=ab\r\n \r\n", b"x; b=ab;c", b"; b=\r\n", b"; b=ab\r\n\r\n", b"; b=a\n b\n", b"\tb=a \r\n b \r\n",
               b"; b=a\r\n\r\n b", b";B=abc", b"a=1;\r\n\tb=abc; bh=def", b"; b=" + b"A/+=" * 100 + b"\r\n")


def _same(one: Any, other: Any, sample: bytes) -> bool:
    """Do both give the same answer, or raise the same exception, for ``sample``?"""
    answers = []
    for fn in (one, other):
        try:
            answers.append(("=", fn(sample)))
        except Exception as e:
            answers.append(("!", type(e)))
    return answers[0] == answers[1]


def _parsing_helpers() -> dict[str, Any] | None:
    original = getattr(dkim, "rfc822_parse", None)
    btag = getattr(dkim, "RE_BTAG", None)
    if original is None or btag is None:
        return None
    parse = _parse_with(original)
    if not all(_same(parse, original, m) for m in _MESSAGES):
        return None
    if not all(_same(lambda v: B_TAG.sub(rb"\1", v), lambda v: btag.sub(rb"\1", v), s) for s in _SIGNATURES):
        return None
    return {"rfc822_parse": parse, "RE_BTAG": B_TAG}


def _rsa_functions() -> dict[str, Any] | None:
    """:func:`sign` and :func:`verify`, if they agree with dkimpy's own on a throwaway key."""
    global _original_verify
    original = getattr(dkim, "RSASSA_PKCS1_v1_5_sign", None)
    original_verify = getattr(dkim, "RSASSA_PKCS1_v1_5_verify", None)
    if original is None or original_verify is None:
        return None
    from cryptography.hazmat.primitives import serialization

    test = rsa.generate_private_key(65537, 1024)
    pem = test.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())
    _original_verify = original_verify
    try:
        numbers = dkim.parse_pem_private_key(pem)
        digest = hashlib.sha256(b"mailstack")
        if original(digest.copy(), numbers) != sign(digest.copy(), numbers) or not _agree_on_verify(original_verify):
            return None
    except Exception:
        return None
    return {"RSASSA_PKCS1_v1_5_sign": sign, "RSASSA_PKCS1_v1_5_verify": verify}


def install() -> bool:
    """Swap in each group of speedups that gives dkimpy's own answers; True if all of them did.

    A group that disagrees (a dkimpy release that changed underneath) is left out, and
    dkimpy keeps its own code there: slower, never different.
    """
    global _installed
    if _installed is None:
        with _install_lock:
            if _installed is not None:  # another thread did it meanwhile
                return bool(_installed)
            rsa_functions, parsing = _rsa_functions(), _parsing_helpers()
            canonicalisation = _canonicalisation_helpers()
            for module, group in ((dkim, rsa_functions), (dkim, parsing), (canon, canonicalisation)):
                for name, replacement in (group or {}).items():
                    setattr(module, name, replacement)
            _installed = None not in (rsa_functions, parsing, canonicalisation)
    return bool(_installed)
