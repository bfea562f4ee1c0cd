"""What mail clients and other servers fetch to find this server: generated from the listeners
and the hostname, never written by hand.

- Thunderbird's autoconfig file (``config-v1.1.xml``; the fields and socketType
  values Thunderbird reads: ``SSL``, ``STARTTLS``).
- Microsoft's Autodiscover answer (the "POX" Outlook schema of 2006).
- An Apple configuration profile (``.mobileconfig``) for one address.
- The MTA-STS policy (RFC 8461 §3.2) and the id its ``_mta-sts`` TXT record
  carries, which changes whenever the policy does.

Implicit TLS comes first where both are offered (RFC 8314 §3 prefers it).
Clients log in with the whole address and a password sent over TLS only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import plistlib
import uuid
from dataclasses import dataclass
from xml.sax.saxutils import escape

from mailstack.config import MTASTSSettings, Settings


@dataclass(frozen=True, slots=True)
class Endpoint:
    protocol: str  # "imap", "pop3", "smtp"
    port: int
    implicit_tls: bool


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """The slice of the settings the files are made from."""

    hostname: str
    endpoints: tuple[Endpoint, ...]  # in order of preference within each protocol
    mta_sts: MTASTSSettings

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientSettings:
        listen = settings.listen
        wanted = (("imaps", "imap", True), ("imap", "imap", False), ("pop3s", "pop3", True),
                  ("pop3", "pop3", False), ("submissions", "smtp", True), ("submission", "smtp", False))
        found = [(Endpoint(protocol, address.port, tls), _loopback(address.host)) for name, protocol, tls in wanted
                 if (address := getattr(listen, name)) is not None]
        # a listener on loopback is not for clients elsewhere, unless every one is (the quick start, a lab)
        outside = [endpoint for endpoint, loopback in found if not loopback]
        endpoints = tuple(outside) if outside else tuple(endpoint for endpoint, _ in found)
        return cls(settings.hostname, endpoints, settings.mta_sts)

    def of(self, protocol: str) -> list[Endpoint]:
        return [e for e in self.endpoints if e.protocol == protocol]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# -- Thunderbird -------------------------------------------------------------------------


def autoconfig_xml(client: ClientSettings, domain: str) -> bytes:
    host, name = escape(client.hostname), escape(domain)

    def server(tag: str, e: Endpoint) -> str:
        kind = "pop3" if e.protocol == "pop3" else e.protocol
        return (f'    <{tag} type="{kind}">\n'
                f"      <hostname>{host}</hostname>\n"
                f"      <port>{e.port}</port>\n"
                f"      <socketType>{'SSL' if e.implicit_tls else 'STARTTLS'}</socketType>\n"
                f"      <username>%EMAILADDRESS%</username>\n"
                f"      <authentication>password-cleartext</authentication>\n"
                f"    </{tag}>\n")

    incoming = "".join(server("incomingServer", e) for e in client.of("imap") + client.of("pop3"))
    outgoing = "".join(server("outgoingServer", e) for e in client.of("smtp"))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<clientConfig version="1.1">\n'
            f'  <emailProvider id="{name}">\n'
            f"    <domain>{name}</domain>\n"
            f"    <displayName>{name}</displayName>\n"
            f"    <displayShortName>{name}</displayShortName>\n"
            f"{incoming}{outgoing}"
            "  </emailProvider>\n"
            "</clientConfig>\n").encode()


# -- Outlook -----------------------------------------------------------------------------

AUTODISCOVER_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


def autodiscover_xml(client: ClientSettings, address: str) -> bytes:
    def protocol(kind: str, e: Endpoint) -> str:
        tls = "      <SSL>on</SSL>\n" if e.implicit_tls else "      <Encryption>TLS</Encryption>\n"
        return ("    <Protocol>\n"
                f"      <Type>{kind}</Type>\n"
                f"      <Server>{escape(client.hostname)}</Server>\n"
                f"      <Port>{e.port}</Port>\n"
                f"      <LoginName>{escape(address)}</LoginName>\n"
                "      <DomainRequired>off</DomainRequired>\n"
                "      <SPA>off</SPA>\n"
                f"{tls}"
                "      <AuthRequired>on</AuthRequired>\n"
                "    </Protocol>\n")

    chosen = [("IMAP", e) for e in client.of("imap")[:1]] or [("POP3", e) for e in client.of("pop3")[:1]]
    chosen += [("SMTP", e) for e in client.of("smtp")[:1]]
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            f'<Autodiscover xmlns="{AUTODISCOVER_RESPONSE}">\n'
            f'  <Response xmlns="{OUTLOOK_RESPONSE}">\n'
            "  <Account>\n"
            "    <AccountType>email</AccountType>\n"
            "    <Action>settings</Action>\n"
            f"{''.join(protocol(kind, e) for kind, e in chosen)}"
            "  </Account>\n"
            "  </Response>\n"
            "</Autodiscover>\n").encode()


# -- Apple -------------------------------------------------------------------------------


def mobileconfig(client: ClientSettings, address: str) -> bytes:
    """An unsigned configuration profile for *address*; the same address gives the same UUIDs, so
    installing it again replaces the account instead of adding a second one."""
    incoming = (client.of("imap") or client.of("pop3"))[:1]
    outgoing = client.of("smtp")[:1]
    if not incoming or not outgoing:
        raise LookupError("no IMAP or POP3 listener, or no submission listener, to configure")
    inbox, sender = incoming[0], outgoing[0]
    domain = address.rpartition("@")[2]

    def stable(kind: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{kind}.{address}.{client.hostname}")).upper()

    account = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{_reverse(client.hostname)}.mail.{stable('account')}",
        "PayloadUUID": stable("account"),
        "PayloadDisplayName": address,
        "EmailAccountDescription": address,
        "EmailAccountName": address,
        "EmailAccountType": "EmailTypeIMAP" if inbox.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerHostName": client.hostname,
        "IncomingMailServerPortNumber": inbox.port,
        "IncomingMailServerUseSSL": True,  # a profile has no STARTTLS setting: implicit TLS is listed first
        "IncomingMailServerUsername": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": client.hostname,
        "OutgoingMailServerPortNumber": sender.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingPasswordSameAsIncomingPassword": True,
        "SMIMEEnabled": False,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{_reverse(client.hostname)}.profile.{stable('profile')}",
        "PayloadUUID": stable("profile"),
        "PayloadDisplayName": f"Mail for {address}",
        "PayloadDescription": f"The mail account {address} on {client.hostname}",
        "PayloadOrganization": domain,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [account],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


def _reverse(hostname: str) -> str:
    return ".".join(reversed(hostname.split(".")))


# -- MTA-STS (RFC 8461) ------------------------------------------------------------------


def mta_sts_policy(client: ClientSettings) -> bytes:
    """The policy file (§3.2): CRLF lines, this host as the MX, then the configured patterns."""
    policy = client.mta_sts
    lines = ["version: STSv1", f"mode: {policy.mode}"]
    seen = []
    for mx in (client.hostname, *policy.mx):
        if mx not in seen:
            seen.append(mx)
    lines += [f"mx: {mx}" for mx in seen]
    lines.append(f"max_age: {int(policy.max_age)}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def mta_sts_id(client: ClientSettings) -> str:
    """The ``id=`` of the ``_mta-sts`` TXT record (§3.1: 1 to 32 letters and digits), from the policy
    itself: it changes exactly when the policy does, so senders fetch the new one."""
    return hashlib.sha256(mta_sts_policy(client)).hexdigest()[:20]
