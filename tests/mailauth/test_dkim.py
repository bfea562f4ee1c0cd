"""DKIM keys, signing (RFC 6376, RFC 8463), the CLI and the DNS records a domain needs."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import dkim
import pytest

from mailstack.dkim import DKIMKeyError, DKIMSigner, KeyDirectory, KeyStore, from_domain
from mailstack.dnsrecords import records, txt

MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: bob@remote.example\r\nSubject: hello\r\n"
           b"Date: Tue, 01 Dec 2026 00:00:00 +0000\r\nMessage-ID: <m1@example.test>\r\n\r\nHi Bob.\r\n")


def dns_of(directory: KeyDirectory, domain: str = "example.test"):
    """A dnsfunc for dkimpy answering with the TXT records ``dns-records`` prints."""
    answers = {f"{k.record_name()}.".encode(): k.record_text().encode() for k in directory.keys(domain)}

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return answers.get(name, b"")

    return lookup


def signatures(message: bytes) -> list[dict[bytes, bytes]]:
    d = dkim.DKIM(message)
    return [dkim.parse_tag_value(v) for k, v in d.headers if k.lower() == b"dkim-signature"]


def verify_all(message: bytes, lookup) -> list[bool]:
    d = dkim.DKIM(message)
    count = len(signatures(message))
    return [d.verify(idx=i, dnsfunc=lookup) for i in range(count)]


def test_keys_are_private_files_and_the_first_of_each_algorithm_signs(tmp_path):
    keys = KeyDirectory(tmp_path / "dkim")
    rsa_key = keys.generate("Example.TEST", "rsa", now=1_700_000_000)
    ed_key = keys.generate("example.test", "ed25519", now=1_700_000_001)
    assert (rsa_key.selector, ed_key.selector) == ("202311-rsa", "202311-ed25519")
    assert rsa_key.signing and ed_key.signing
    for name in os.listdir(tmp_path / "dkim" / "example.test"):
        assert stat.S_IMODE(os.stat(tmp_path / "dkim" / "example.test" / name).st_mode) == 0o600
    assert rsa_key.private_pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert rsa_key.record_text().startswith("v=DKIM1; k=rsa; p=MIIBIjAN")  # 2048-bit SubjectPublicKeyInfo
    assert len(base64.b64decode(ed_key.public_value())) == 32  # RFC 8463 §4.2: the raw key


def test_rotation_publishes_first_and_switches_at_retirement(tmp_path):
    keys = KeyDirectory(tmp_path / "dkim")
    store = KeyStore(keys)
    old = keys.generate("example.test", "rsa", now=1_700_000_000)
    assert [k.selector for k in store.signing_keys("example.test")] == [old.selector]
    new = keys.generate("example.test", "rsa", now=1_800_000_000)
    assert not new.signing and [k.selector for k in keys.keys("example.test")] == [old.selector, new.selector]
    assert [k.selector for k in store.signing_keys("example.test")] == [old.selector]  # published only
    keys.retire("example.test", old.selector)
    assert [k.selector for k in store.signing_keys("example.test")] == [new.selector]  # no restart
    assert (tmp_path / "dkim" / "example.test" / "retired" / f"{old.selector}.key").exists()
    with pytest.raises(DKIMKeyError):
        keys.retire("example.test", old.selector)
    with pytest.raises(DKIMKeyError):
        keys.generate("example.test", "rsa", selector=old.selector)  # never reused, even retired
    with pytest.raises(DKIMKeyError):
        keys.generate("example.test", "rsa", selector="bad_selector!")
    with pytest.raises(DKIMKeyError):
        keys.generate("example.test", "dsa")


@pytest.mark.parametrize("algorithms", [("rsa",), ("ed25519",), ("rsa", "ed25519")])
def test_signatures_verify_with_the_published_records(tmp_path, algorithms):
    keys = KeyDirectory(tmp_path / "dkim")
    for algorithm in algorithms:
        keys.generate("example.test", algorithm)
    signed = DKIMSigner(KeyStore(keys)).sign(MESSAGE, "Q1")
    assert signed.endswith(MESSAGE)
    found = signatures(signed)
    assert [s[b"a"] for s in found] == [b"rsa-sha256" if a == "rsa" else b"ed25519-sha256" for a in algorithms]
    for s in found:
        assert s[b"d"] == b"example.test" and s[b"c"] == b"relaxed/relaxed" and b"l" not in s
        signed_headers = [h.strip().lower() for h in s[b"h"].split(b":")]
        assert signed_headers.count(b"from") == 2  # over-signed: no From can be added (RFC 6376 §5.4)
        assert {b"subject", b"date", b"to", b"message-id"} <= set(signed_headers)
    assert verify_all(signed, dns_of(keys)) == [True] * len(algorithms)
    tampered = signed.replace(b"Subject: hello", b"Subject: hullo")
    assert verify_all(tampered, dns_of(keys)) == [False] * len(algorithms)
    added_from = signed.replace(b"\r\n\r\nHi", b"\r\nFrom: mallory@evil.example\r\n\r\nHi")
    assert verify_all(added_from, dns_of(keys)) == [False] * len(algorithms)


def test_messages_not_from_a_domain_with_keys_are_left_alone(tmp_path):
    keys = KeyDirectory(tmp_path / "dkim")
    keys.generate("example.test", "ed25519")
    signer = DKIMSigner(KeyStore(keys))
    other = MESSAGE.replace(b"alice@example.test", b"alice@other.example")
    two_froms = MESSAGE.replace(b"To:", b"From: eve@example.test\r\nTo:")
    no_from = MESSAGE.replace(b"From: Alice <alice@example.test>\r\n", b"")
    group = MESSAGE.replace(b"Alice <alice@example.test>", b"a@example.test, b@example.test")
    for message in (other, two_froms, no_from, group, b"garbage without headers"):
        assert signer.sign(message) == message
    assert from_domain(MESSAGE) == "example.test"


def test_a_damaged_key_sends_the_message_unsigned_and_says_so(tmp_path):
    from twisted.logger import globalLogPublisher

    keys = KeyDirectory(tmp_path / "dkim")
    key = keys.generate("example.test", "rsa")
    (tmp_path / "dkim" / "example.test" / f"{key.selector}.key").write_bytes(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n")
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        assert DKIMSigner(KeyStore(keys)).sign(MESSAGE, "Q9") == MESSAGE
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert any(e.get("queue_id") == "Q9" and "not DKIM-signed" in e["log_format"] for e in logged)


def test_dns_records_for_a_domain(tmp_path):
    keys = KeyDirectory(tmp_path / "dkim")
    keys.generate("example.test", "rsa")
    found = {(r.name, r.type): r for r in records("example.test", "mail.example.test",
                                                  keys.keys("example.test"), {"submissions", "imaps"})}
    assert found[("example.test.", "MX")].value == "10 mail.example.test."
    assert found[("example.test.", "TXT")].value == '"v=spf1 mx -all"'
    assert found[("_dmarc.example.test.", "TXT")].value == '"v=DMARC1; p=none; rua=mailto:postmaster@example.test"'
    assert found[("_submissions._tcp.example.test.", "SRV")].value == "0 1 465 mail.example.test."
    assert found[("_pop3._tcp.example.test.", "SRV")].value == "0 0 0 ."  # RFC 6186 §3.4: not offered
    assert found[("_sieve._tcp.example.test.", "SRV")].value == "0 0 0 ."
    sieve = {(r.name, r.type): r for r in records("example.test", "mail.example.test", [], {"managesieve"})}
    assert sieve[("_sieve._tcp.example.test.", "SRV")].value == "0 1 4190 mail.example.test."  # RFC 5804 §1.8
    [dkim_record] = [r for r in found.values() if "_domainkey" in r.name]
    assert dkim_record.value.startswith('( "v=DKIM1; k=rsa; p=') and all(
        len(part) <= 255 for part in dkim_record.value[3:-3].split('" "'))
    assert txt('a"b') == '"a\\"b"'


# -- the command line ------------------------------------------------------------------


@pytest.fixture
def conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILSTACK_CONFIG", raising=False)
    path = tmp_path / "mailstack.toml"
    path.write_text('hostname = "mail.example.test"\ndomains = ["example.test"]\n[storage]\n'
                    f'accounts = "{tmp_path}/var/accounts.sqlite3"\ndkim = "{tmp_path}/keys"\n')
    return path


def test_cli_generate_list_retire_and_dns_records(conf, tmp_path, capsys):
    from mailstack.cli import main

    assert main(["--config", str(conf), "dkim", "generate", "example.test", "--selector", "s1"]) == 0
    out = capsys.readouterr().out
    assert "s1 (rsa): signs now" in out and 's1._domainkey.example.test. IN TXT ( "v=DKIM1; k=rsa; p=' in out
    assert main(["--config", str(conf), "dkim", "generate", "example.test", "--algorithm", "ed25519",
                 "--selector", "e1"]) == 0
    assert main(["--config", str(conf), "dkim", "generate", "example.test", "--selector", "s2"]) == 0
    capsys.readouterr()
    assert main(["--config", str(conf), "dkim", "list"]) == 0
    listed = [line.split()[1::3] for line in capsys.readouterr().out.splitlines()]
    assert listed == [["s1", "signing"], ["e1", "signing"], ["s2", "published"]]
    assert main(["--config", str(conf), "dkim", "retire", "example.test", "s1"]) == 0
    assert main(["--config", str(conf), "dns-records", "example.test"]) == 0
    zone = capsys.readouterr().out
    assert "s1._domainkey" not in zone and "s2._domainkey.example.test." in zone and "e1._domainkey" in zone
    assert (tmp_path / "keys" / "example.test" / "s2.key").exists()
    assert main(["--config", str(conf), "dkim", "generate", "nowhere.test"]) == 1
    assert capsys.readouterr().err == ("mailstack: nowhere.test is not a local domain "
                                       "(add it with: mailstack domain add nowhere.test)\n")


def test_forwarded_mail_gets_an_arc_set_receivers_can_verify(tmp_path):
    keys = KeyDirectory(tmp_path / "dkim")
    keys.generate("example.test", "rsa", selector="a1")
    signer = DKIMSigner(KeyStore(keys), "mx.example.test")
    arrived = (b"Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=alice@sender.example;\r\n"
               b" dkim=pass header.d=sender.example; dmarc=pass header.from=sender.example\r\n"
               + MESSAGE.replace(b"alice@example.test", b"alice@sender.example"))
    sealed = signer.seal(arrived, "example.test", "Q1")
    assert sealed.endswith(arrived)
    head = sealed[:len(sealed) - len(arrived)]
    assert head.count(b"ARC-") == 3 and b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.test; s=a1;" in head
    assert b"ARC-Authentication-Results: i=1; mx.example.test" in head
    result, _, reason = dkim.arc_verify(sealed, dnsfunc=dns_of(keys))
    assert result == b"pass", reason
    tampered = sealed.replace(b"Hi Bob.", b"Hi Eve.")
    assert dkim.arc_verify(tampered, dnsfunc=dns_of(keys))[0] == b"fail"


def test_no_arc_set_without_our_results_an_rsa_key_or_as_a_later_hop(tmp_path):
    keys = KeyDirectory(tmp_path / "dkim")
    signer = DKIMSigner(KeyStore(keys), "mx.example.test")
    ours = b"Authentication-Results: mx.example.test; dkim=none\r\n" + MESSAGE
    assert signer.seal(ours, "example.test") == ours  # no key at all
    keys.generate("example.test", "ed25519", selector="e1")
    assert signer.seal(ours, "example.test") == ours  # ARC signs with RSA only
    keys.generate("example.test", "rsa", selector="a1")
    assert signer.seal(MESSAGE, "example.test") == MESSAGE  # nothing we checked to carry over
    earlier = b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=x.test; s=s; b=AAAA\r\n" + ours
    assert signer.seal(earlier, "example.test") == earlier  # a chain we have not validated
    assert signer.seal(ours, "example.test") != ours


def test_rsa_signatures_through_openssl_are_the_same_bytes_as_dkimpys_own(tmp_path):
    import hashlib

    import dkim.crypto

    from mailstack.dkim import speedups

    assert speedups.install() and dkim.RSASSA_PKCS1_v1_5_sign is speedups.sign
    key = KeyDirectory(tmp_path / "dkim").generate("example.test", "rsa")
    numbers = dkim.parse_pem_private_key(key.private_pem)
    for algorithm in ("sha256", "sha1"):
        digest = hashlib.new(algorithm, b"some headers")
        assert speedups.sign(digest.copy(), numbers) == dkim.crypto.RSASSA_PKCS1_v1_5_sign(digest.copy(), numbers)
        signature = speedups.sign(digest.copy(), numbers)
        public = {"modulus": numbers["modulus"], "publicExponent": numbers["publicExponent"]}
        for candidate in (signature, signature[1:], b"\0" + signature, bytes([signature[0] ^ 1]) + signature[1:]):
            assert speedups.verify(digest.copy(), candidate, public) is bool(
                dkim.crypto.RSASSA_PKCS1_v1_5_verify(digest.copy(), candidate, public))


def _fresh(name: str) -> Any:
    """A module as its file defines it, apart from the one in sys.modules (which may be patched)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outcome(fn: Any, value: bytes) -> Any:
    try:
        return fn(value)
    except Exception as e:
        return type(e).__name__


def test_the_faster_parsing_and_canonicalisation_give_dkimpys_own_answers():
    import dkim.canonicalization as canon

    from mailstack.dkim import speedups

    assert speedups.install() and dkim.RE_BTAG is speedups.B_TAG
    pristine, pristine_canon = _fresh("dkim"), _fresh("dkim.canonicalization")
    messages = [MESSAGE, MESSAGE.replace(b"\r\n", b"\n"), b"X: a\r\n\tb\r\n c\r\nFrom bob\r\nY:\r\n\r\n\r\nbody\r\n\r\n",
                b"Bad line\r\n\r\n", b" lead\r\n", b"Only: header", b"", b"A: 1\r\r\n\r\nb"]
    for message in messages:
        assert _outcome(dkim.rfc822_parse, message) == _outcome(pristine.rfc822_parse, message)
    values = [b"v=1; a=rsa-sha256; b=abc\r\n\tdef=;\r\n bh=xyz", b"b=", b"; b =\r\n ab \r\n", b"x;b=a b\r\n"]
    for value in values:
        assert dkim.RE_BTAG.sub(rb"\1", value) == pristine.RE_BTAG.sub(rb"\1", value)
    texts = [b"a  b\t c \r\nd\r\n", b"plain words only", b"x \t\r\n", b"fold\r\n\tme", b""]
    for text in texts:
        for name in ("compress_whitespace", "strip_trailing_whitespace", "unfold_header_value"):
            assert getattr(pristine_canon, name)(text) == getattr(canon, name)(text)
    assert canon.compress_whitespace is not pristine_canon.compress_whitespace  # the fast one is in place
