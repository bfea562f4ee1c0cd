"""TLS context factories for every listener, and the self-signed default.

Server policy: Mozilla's "intermediate" profile, that is TLS 1.3, and TLS 1.2
(RFC 8996 retired 1.0/1.1) with the ECDHE AEAD suites only (AES-GCM and
ChaCha20-Poly1305: no CBC, no SHA-1 MACs, no static RSA key exchange); no
compression (CRIME). When the configured certificate and key are both missing
and ``tls.self_signed`` is true, a certificate for the configured hostname (with
subjectAltName) is generated on first start; the key file is written with mode
0600.

:class:`ServerTLS` is what every listener is given: it hands each new
connection the certificate in use, and :meth:`ServerTLS.use` replaces it
(SIGHUP, or a change to the files; :mod:`mailstack.certwatch`). Connections
already open keep the one they started with.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import extract_patterns, verify_certificate_hostname
from service_identity.hazmat import DNSPattern
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from mailstack.config import TLSSettings

log = Logger()

# Mozilla's "intermediate" TLS 1.2 suites with ECDHE (their server-side order); TLS 1.3's are all AEAD.
INTERMEDIATE_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])


class TLSError(Exception):
    """The certificate or key cannot be used; the message names the file and key."""


def generate_self_signed(hostname: str, cert_path: Path, key_path: Path, *, days: int = 3650) -> None:
    """Write a self-signed ECDSA P-256 certificate for *hostname* and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for path in (cert_path, key_path):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("generated a self-signed certificate for {hostname} in {cert}", hostname=hostname, cert=str(cert_path))


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _exists(path: Path, key: str) -> bool:
    try:
        path.stat()
    except FileNotFoundError:
        return False
    except OSError as e:
        raise TLSError(f"tls.{key}: cannot look at {path}: {e.strerror}") from None
    return True


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSError(f"tls.{key}: {path} does not exist") from None
    except OSError as e:
        raise TLSError(f"tls.{key}: cannot read {path}: {e.strerror}") from None


def _split_pem_chain(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    parts = []
    for chunk in data.split(marker)[:-1]:
        start = chunk.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            parts.append(chunk[start:] + marker + b"\n")
    return parts


def server_options(settings: TLSSettings, hostname: str) -> ssl.CertificateOptions:
    """Load (or first generate) the certificate and key; raise TLSError when unusable."""
    ensure_certificate(settings, hostname)
    return load_options(settings)[0]


def ensure_certificate(settings: TLSSettings, hostname: str) -> None:
    """Generate the self-signed pair when both files are missing and that is allowed; TLSError when
    one is missing and cannot be made."""
    cert_missing = not _exists(settings.cert, "cert")
    key_missing = not _exists(settings.key, "key")
    if cert_missing and key_missing and settings.self_signed:
        generate_self_signed(hostname, settings.cert, settings.key)
    elif cert_missing or key_missing:
        which = "cert" if cert_missing else "key"
        path = settings.cert if cert_missing else settings.key
        hint = "" if settings.self_signed else " (or set tls.self_signed = true with both files absent)"
        raise TLSError(f"tls.{which}: {path} does not exist{hint}")


def _load_chain(settings: TLSSettings) -> list[x509.Certificate]:
    """The certificate chain of ``tls.cert``, leaf first; TLSError when there is none."""
    chain_pem = _split_pem_chain(_read(settings.cert, "cert"))
    if not chain_pem:
        raise TLSError(f"tls.cert: no PEM certificate in {settings.cert}")
    try:
        return [x509.load_pem_x509_certificate(pem) for pem in chain_pem]
    except ValueError:
        raise TLSError(f"tls.cert: {settings.cert} is not a valid PEM certificate") from None


def load_options(settings: TLSSettings) -> tuple[ssl.CertificateOptions, x509.Certificate]:
    """The server options of the certificate and key files as they are now, and the certificate;
    TLSError when they are missing, malformed or do not match."""
    chain = _load_chain(settings)
    try:
        key = serialization.load_pem_private_key(_read(settings.key, "key"), password=None)
    except (ValueError, TypeError):
        raise TLSError(f"tls.key: {settings.key} is not a valid unencrypted PEM private key") from None
    options = ssl.CertificateOptions(  # pyOpenSSL takes cryptography objects; Twisted's hints still say X509/PKey
        privateKey=key,  # type: ignore[arg-type]
        certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=chain[1:],  # type: ignore[arg-type]
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(INTERMEDIATE_CIPHERS),
        enableSessions=True,
    )
    try:
        ctx = options.getContext()
        ctx.check_privatekey()
    except SSL.Error:
        raise TLSError(f"tls.key: {settings.key} does not match the certificate {settings.cert}") from None
    return options, chain[0]


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The server side of TLS for every listener, implicit and STARTTLS alike, with a certificate
    that can be replaced while the server runs."""

    def __init__(self, settings: TLSSettings, hostname: str) -> None:
        self.settings = settings
        self.options = server_options(settings, hostname)
        self.stamp = file_stamp(settings)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.options.getContext(), None)

    def use(self, options: ssl.CertificateOptions, stamp: tuple[int, ...] | None) -> None:
        """From now on, new connections get *options* (made by :func:`load_options`)."""
        self.options = options
        self.stamp = stamp


EXPIRY_WARNING = datetime.timedelta(days=21)


def certificate_warnings(settings: TLSSettings, names: dict[str, str],
                         now: datetime.datetime | None = None) -> list[str]:
    """What ``mailstack check-config`` warns of: a certificate that expires within 21 days (or has
    expired), or that does not cover one of *names* (name -> why it must be covered)."""
    if not settings.cert.exists():
        return [] if settings.self_signed and not settings.key.exists() else [f"tls.cert: {settings.cert} does not exist"]
    try:
        cert = _load_chain(settings)[0]
    except TLSError as e:
        return [str(e)]
    now = now or datetime.datetime.now(datetime.UTC)
    warnings = []
    expires = cert.not_valid_after_utc
    if expires <= now:
        warnings.append(f"tls.cert: the certificate expired on {expires:%Y-%m-%d %H:%M} UTC")
    elif expires - now <= EXPIRY_WARNING:
        days = (expires - now).days
        warnings.append(f"tls.cert: the certificate expires in {days} day{'s' if days != 1 else ''}, "
                        f"on {expires:%Y-%m-%d %H:%M} UTC")
    for name, why in names.items():
        try:  # the matching clients do (RFC 6125), by service-identity
            verify_certificate_hostname(cert, name)
        except (VerificationError, CertificateError):
            named = [p.pattern.decode("ascii", "replace") for p in extract_patterns(cert) if isinstance(p, DNSPattern)]
            warnings.append(f"tls.cert: the certificate does not cover {name} ({why}); it names "
                            f"{', '.join(named) or 'no DNS name'}")
    return warnings


def file_stamp(settings: TLSSettings) -> tuple[int, ...] | None:
    """What tells a changed certificate or key file apart (device, inode, size, mtime of both); None
    when one cannot be read. Blocking: call it off the reactor."""
    try:
        stats = [os.stat(path) for path in (settings.cert, settings.key)]
    except OSError:
        return None
    return tuple(n for st in stats for n in (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


def client_options() -> ssl.CertificateOptions:
    """Opportunistic outbound TLS (RFC 3207 §4.1 between MTAs): TLS 1.2+, no verification."""
    return ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_2, verify=False)


def describe(transport: object) -> str | None:
    """The negotiated protocol and cipher of a TLS transport, e.g. ``TLSv1.3 TLS_AES_256_GCM_SHA384``."""
    getter = getattr(transport, "getHandle", None)
    conn = getter() if getter else None
    try:
        version = conn.get_protocol_version_name()  # type: ignore[union-attr]
        cipher = conn.get_cipher_name()  # type: ignore[union-attr]
    except (AttributeError, SSL.Error):
        return None
    if not version or not cipher:
        return None
    return f"{version} {cipher}"
