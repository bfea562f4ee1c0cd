"""Client autoconfiguration and the MTA-STS policy, as the clients and senders that read them parse them."""

from __future__ import annotations

import plistlib
import xml.etree.ElementTree as ET

import pytest

from mailstack import config
from mailstack.clientconfig import (
    ClientSettings,
    autoconfig_xml,
    autodiscover_xml,
    mobileconfig,
    mta_sts_id,
    mta_sts_policy,
)

# The values of the ConfigFileFormat page that Thunderbird's readFromXML (comm/mail/components/accountcreation) reads
SOCKET_TYPES = {"plain", "SSL", "STARTTLS"}
AUTHENTICATION = {"password-cleartext", "password-encrypted", "NTLM", "GSSAPI", "client-IP-address",
                  "TLS-client-cert", "OAuth2", "none"}


def client(**listen: str) -> ClientSettings:
    defaults = {"smtp": "0.0.0.0:25", "submission": "0.0.0.0:587", "submissions": "0.0.0.0:465",
                "imap": "0.0.0.0:143", "imaps": "0.0.0.0:993", "pop3": "0.0.0.0:110", "pop3s": "0.0.0.0:995"}
    settings = config.from_mapping({"hostname": "mail.example.org", "domains": ["example.org"],
                                    "listen": defaults | listen,
                                    "mta_sts": {"mode": "enforce", "max_age": "30d", "mx": ["*.backup.example"]}})
    return ClientSettings.from_settings(settings)


def test_thunderbird_autoconfig_has_the_fields_it_reads_with_implicit_tls_first() -> None:
    root = ET.fromstring(autoconfig_xml(client(), "example.org"))
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None and provider.get("id") == "example.org"
    assert provider.findtext("domain") == "example.org" and provider.findtext("displayName")
    servers = [(s.tag, s.get("type"), s.findtext("hostname"), int(s.findtext("port") or 0), s.findtext("socketType"))
               for s in provider if s.tag in ("incomingServer", "outgoingServer")]
    assert servers == [
        ("incomingServer", "imap", "mail.example.org", 993, "SSL"),
        ("incomingServer", "imap", "mail.example.org", 143, "STARTTLS"),
        ("incomingServer", "pop3", "mail.example.org", 995, "SSL"),
        ("incomingServer", "pop3", "mail.example.org", 110, "STARTTLS"),
        ("outgoingServer", "smtp", "mail.example.org", 465, "SSL"),
        ("outgoingServer", "smtp", "mail.example.org", 587, "STARTTLS"),
    ]
    for server in provider:
        if server.tag.endswith("Server"):
            assert server.findtext("socketType") in SOCKET_TYPES
            assert server.findtext("authentication") in AUTHENTICATION
            assert server.findtext("username") == "%EMAILADDRESS%"


def test_a_listener_turned_off_is_not_offered() -> None:
    root = ET.fromstring(autoconfig_xml(client(imap="", pop3="", pop3s="", submission=""), "example.org"))
    assert [(s.get("type"), s.findtext("port")) for s in root.iter() if s.tag.endswith("Server")] == [
        ("imap", "993"), ("smtp", "465")]


def test_outlook_autodiscover_names_imap_and_smtp_with_their_encryption() -> None:
    ns = {"r": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}
    root = ET.fromstring(autodiscover_xml(client(), "ann@example.org"))
    protocols = root.findall("r:Response/r:Account/r:Protocol", ns)
    assert [(p.findtext("r:Type", namespaces=ns), p.findtext("r:Port", namespaces=ns),
             p.findtext("r:SSL", namespaces=ns), p.findtext("r:LoginName", namespaces=ns)) for p in protocols] == [
        ("IMAP", "993", "on", "ann@example.org"), ("SMTP", "465", "on", "ann@example.org")]
    starttls = ET.fromstring(autodiscover_xml(client(imaps="", submissions=""), "ann@example.org"))
    assert [p.findtext("r:Encryption", namespaces=ns)
            for p in starttls.findall("r:Response/r:Account/r:Protocol", ns)] == ["TLS", "TLS"]


def test_the_apple_profile_is_a_plist_for_the_address_with_stable_uuids() -> None:
    profile = plistlib.loads(mobileconfig(client(), "ann@example.org"))
    assert profile["PayloadType"] == "Configuration"
    (account,) = profile["PayloadContent"]
    assert account["PayloadType"] == "com.apple.mail.managed"
    assert (account["EmailAddress"], account["IncomingMailServerHostName"], account["IncomingMailServerPortNumber"],
            account["OutgoingMailServerPortNumber"], account["EmailAccountType"]) == (
        "ann@example.org", "mail.example.org", 993, 465, "EmailTypeIMAP")
    again = plistlib.loads(mobileconfig(client(), "ann@example.org"))
    assert again["PayloadUUID"] == profile["PayloadUUID"]  # installed again, it replaces the account
    assert plistlib.loads(mobileconfig(client(), "bo@example.org"))["PayloadUUID"] != profile["PayloadUUID"]
    with pytest.raises(LookupError):
        mobileconfig(client(imap="", imaps="", pop3="", pop3s=""), "ann@example.org")


def test_the_mta_sts_policy_is_rfc_8461_text_and_its_id_follows_it() -> None:
    assert mta_sts_policy(client()) == (b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.org\r\n"
                                        b"mx: *.backup.example\r\nmax_age: 2592000\r\n")
    ident = mta_sts_id(client())
    assert ident.isalnum() and 1 <= len(ident) <= 32
    other = config.from_mapping({"hostname": "mail.example.org", "mta_sts": {"mode": "testing"}})
    assert mta_sts_id(ClientSettings.from_settings(other)) != ident


@pytest.mark.parametrize(("raw", "error"), [({"mode": "strict"}, "mta_sts.mode"),
                                             ({"max_age": "2y"}, "mta_sts.max_age"),
                                             ({"mx": ["bad host"]}, "mta_sts.mx")])
def test_bad_mta_sts_settings_name_the_key(raw: dict, error: str) -> None:
    with pytest.raises(config.ConfigError, match=error):
        config.from_mapping({"mta_sts": raw})


def test_listeners_left_on_loopback_are_not_offered_beside_public_ones() -> None:
    settings = config.from_mapping({"hostname": "mail.example.org", "domains": ["example.org"],
                                    "listen": {"imaps": "0.0.0.0:993", "submission": "[::]:587"}})
    found = ClientSettings.from_settings(settings)  # the other listeners keep their 127.0.0.1 defaults
    assert [(e.protocol, e.port) for e in found.endpoints] == [("imap", 993), ("smtp", 587)]
    everything_local = ClientSettings.from_settings(config.from_mapping({}))  # the quick start
    assert [e.port for e in everything_local.of("smtp")] == [4650, 5870]
