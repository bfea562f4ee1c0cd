"""TLS: self-signed generation and clear errors for unusable files."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest
from cryptography import x509
from OpenSSL import SSL

from mailstack.config import TLSSettings
from mailstack.tls import TLSError, generate_self_signed, server_options


def settings(tmp_path, self_signed=True):
    return TLSSettings(tmp_path / "tls/cert.pem", tmp_path / "tls/key.pem", self_signed, False)


def test_self_signed_certificate_for_hostname_with_san_and_private_key(tmp_path):
    s = settings(tmp_path)
    server_options(s, "mail.example.test")
    cert = x509.load_pem_x509_certificate(s.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.test"]
    assert s.key.stat().st_mode & 0o777 == 0o600
    first = s.cert.read_bytes()
    server_options(s, "mail.example.test")  # second start: reused, not regenerated
    assert s.cert.read_bytes() == first


def test_missing_file_without_self_signed_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(TLSError, match=r"^tls.cert: .* does not exist"):
        server_options(settings(tmp_path, self_signed=False), "h.test")


def test_one_file_missing_is_an_error_even_with_self_signed(tmp_path):
    s = settings(tmp_path)
    generate_self_signed("h.test", s.cert, s.key)
    s.key.unlink()
    with pytest.raises(TLSError, match=r"^tls.key: "):
        server_options(s, "h.test")


def test_garbage_and_mismatched_files_are_errors(tmp_path):
    s = settings(tmp_path)
    generate_self_signed("h.test", s.cert, s.key)
    other = tmp_path / "other"
    generate_self_signed("o.test", other / "c.pem", other / "k.pem")
    s.key.write_bytes((other / "k.pem").read_bytes())
    with pytest.raises(TLSError, match="does not match"):
        server_options(s, "h.test")
    s.cert.write_text("not a certificate")
    with pytest.raises(TLSError, match="^tls.cert: .*no PEM certificate"):
        server_options(s, "h.test")


def _handshake(tmp_path, cipher: str | None, version: ssl.TLSVersion) -> tuple[str, str] | None:
    """What a client offering only *cipher* at *version* negotiates; None when it is refused."""
    ctx = server_options(settings(tmp_path), "h.test").getContext()
    server_sock, client_sock = socket.socketpair()
    conn = SSL.Connection(ctx, server_sock)
    conn.set_accept_state()

    def serve():
        try:
            conn.do_handshake()
        except SSL.Error:
            server_sock.close()

    t = threading.Thread(target=serve)
    t.start()
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.minimum_version = client.maximum_version = version
    if cipher:
        client.set_ciphers(cipher + ":@SECLEVEL=0")
    try:
        with client.wrap_socket(client_sock) as tls:
            return tls.version() or "", tls.cipher()[0]  # type: ignore[index]
    except (ssl.SSLError, OSError):
        return None
    finally:
        t.join(5)


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                                    "ECDHE-ECDSA-CHACHA20-POLY1305"])
def test_tls_1_2_takes_the_ecdhe_aead_suites_of_the_intermediate_profile(tmp_path, cipher):
    assert _handshake(tmp_path, cipher, ssl.TLSVersion.TLSv1_2) == ("TLSv1.2", cipher)


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES256-SHA", "ECDHE-ECDSA-AES128-SHA",
                                    "ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384"])
def test_tls_1_2_refuses_the_cbc_suites(tmp_path, cipher):
    assert _handshake(tmp_path, cipher, ssl.TLSVersion.TLSv1_2) is None


def test_tls_1_3_is_offered(tmp_path):
    result = _handshake(tmp_path, None, ssl.TLSVersion.TLSv1_3)
    assert result is not None and result[0] == "TLSv1.3"


def test_context_completes_a_tls_1_2_handshake(tmp_path):
    result = _handshake(tmp_path, None, ssl.TLSVersion.TLSv1_2)
    assert result is not None and result[0] == "TLSv1.2"


def test_check_config_warns_of_a_certificate_near_its_end_or_not_for_the_hostname(tmp_path):
    import datetime

    import trustme

    from mailstack.tls import certificate_warnings

    s = settings(tmp_path, self_signed=False)
    s.cert.parent.mkdir(parents=True)
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=10, hours=1)
    leaf = trustme.CA().issue_cert("*.example.org", not_after=soon)
    s.cert.write_bytes(leaf.cert_chain_pems[0].bytes())
    s.key.write_bytes(leaf.private_key_pem.bytes())
    warnings = certificate_warnings(s, {"mail.example.org": "hostname", "a.b.example.org": "hostname",
                                        "mta-sts.example.org": "the MTA-STS policy"})
    assert warnings == [
        f"tls.cert: the certificate expires in 10 days, on {soon:%Y-%m-%d %H:%M} UTC",
        "tls.cert: the certificate does not cover a.b.example.org (hostname); it names *.example.org",
    ]
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=400)
    assert certificate_warnings(s, {"mail.example.org": "hostname"}, now=later)[0].startswith(
        "tls.cert: the certificate expired on ")
    assert certificate_warnings(settings(tmp_path / "fresh"), {"h.test": "hostname"}) == []  # made at first start
