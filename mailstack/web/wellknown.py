"""The public resources of the HTTP listener: client autoconfiguration and the MTA-STS policy.

- ``/.well-known/autoconfig/mail/config-v1.1.xml`` and ``/mail/config-v1.1.xml``
  (Thunderbird; ``?emailaddress=`` names the domain, else the first local one);
- ``POST /autodiscover/autodiscover.xml`` (Outlook; the address is in the body);
- ``/mobileconfig?emailaddress=`` (an Apple configuration profile);
- ``/.well-known/mta-sts.txt`` (RFC 8461 §3.3).

Only addresses in a local domain get an answer (404 otherwise): the server
says nothing about domains it does not serve. Whether a domain is local is
asked of the account store's in-memory snapshot, as SMTP asks it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import unescape

from twisted.web.resource import IResource
from twisted.web.server import Request

from mailstack.addresses import InvalidAddress, canonical
from mailstack.clientconfig import ClientSettings, autoconfig_xml, autodiscover_xml, mobileconfig, mta_sts_policy
from mailstack.web import MAX_BODY, HTTPError, JSONResource, respond

_EMAIL = re.compile(rb"<EMailAddress>\s*([^<\s]{1,320})\s*</EMailAddress>", re.IGNORECASE)

IsLocal = Callable[[str], bool]


def _send(request: Request, body: bytes, content_type: bytes, filename: str | None = None) -> None:
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", str(len(body)).encode())
    request.setHeader(b"x-content-type-options", b"nosniff")
    if filename:
        request.setHeader(b"content-disposition", f'attachment; filename="{filename}"'.encode())
    request.write(body)


def _address(raw: bytes | str | None) -> str:
    if not raw:
        raise HTTPError(400, "emailaddress is required")
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        return canonical(text)
    except (InvalidAddress, ValueError):
        raise HTTPError(400, "emailaddress is not a mail address") from None


class _ClientResource(JSONResource):
    isLeaf = True

    def __init__(self, client: ClientSettings, is_local: IsLocal, first_domain: str) -> None:
        super().__init__()
        self.client = client
        self.is_local = is_local
        self.first_domain = first_domain

    def _local(self, domain: str) -> str:
        if not self.is_local(domain):
            raise HTTPError(404, "no such domain here")
        return domain


class Autoconfig(_ClientResource):
    def render_GET(self, request: Request) -> Any:
        given = request.args.get(b"emailaddress", [b""])[0]

        async def work() -> Callable[[Request], None]:
            domain = _address(given).rpartition("@")[2] if given else self.first_domain
            body = autoconfig_xml(self.client, self._local(domain))
            return lambda r: _send(r, body, b"application/xml; charset=utf-8")

        return respond(request, work)


class Autodiscover(_ClientResource):
    def render_POST(self, request: Request) -> Any:
        content = request.content
        data = b""
        if content is not None:
            content.seek(0)
            data = content.read(MAX_BODY)

        async def work() -> Callable[[Request], None]:
            found = _EMAIL.search(data)
            address = _address(unescape(found.group(1).decode("utf-8", "replace"), {"&quot;": '"', "&apos;": "'"})
                               if found else None)
            self._local(address.rpartition("@")[2])
            body = autodiscover_xml(self.client, address)
            return lambda r: _send(r, body, b"application/xml; charset=utf-8")

        return respond(request, work)

    def render_GET(self, request: Request) -> Any:  # some clients probe with GET first
        return self.render_POST(request)


class MobileConfig(_ClientResource):
    def render_GET(self, request: Request) -> Any:
        given = request.args.get(b"emailaddress", [b""])[0]

        async def work() -> Callable[[Request], None]:
            address = _address(given)
            self._local(address.rpartition("@")[2])
            try:
                body = mobileconfig(self.client, address)
            except LookupError as e:
                raise HTTPError(404, str(e)) from None
            return lambda r: _send(r, body, b"application/x-apple-aspen-config",
                                   filename=f"{address.partition('@')[0]}.mobileconfig")

        return respond(request, work)


class MTASTSPolicy(JSONResource):
    isLeaf = True

    def __init__(self, client: ClientSettings) -> None:
        super().__init__()
        self.body = mta_sts_policy(client)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")  # RFC 8461 §3.2: media type text/plain
        request.setHeader(b"cache-control", f"max-age={300}".encode())
        return self.body


def add_to(children: dict[bytes, IResource], public: set[bytes], client: ClientSettings, is_local: IsLocal,
           first_domain: str) -> None:
    """Put every resource of this module under the site's root, and name them public."""
    autoconfig = Autoconfig(client, is_local, first_domain)
    well_known = JSONResource()
    well_known.putChild(b"mta-sts.txt", MTASTSPolicy(client))
    well_known.putChild(b"autoconfig", autoconfig_dir := JSONResource())
    autoconfig_dir.putChild(b"mail", mail := JSONResource())
    mail.putChild(b"config-v1.1.xml", autoconfig)
    children[b".well-known"] = well_known
    children[b"mail"] = top_mail = JSONResource()
    top_mail.putChild(b"config-v1.1.xml", autoconfig)
    discover = Autodiscover(client, is_local, first_domain)
    for name in (b"autodiscover", b"Autodiscover"):
        children[name] = folder = JSONResource()
        for leaf in (b"autodiscover.xml", b"Autodiscover.xml"):
            folder.putChild(leaf, discover)
    children[b"mobileconfig"] = MobileConfig(client, is_local, first_domain)
    public.update({b".well-known", b"mail", b"autodiscover", b"Autodiscover", b"mobileconfig"})
