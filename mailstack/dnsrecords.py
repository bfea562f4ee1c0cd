"""What a domain must publish in DNS for mailstack to send and receive its mail.

``mailstack dns-records DOMAIN`` prints these in zone-file form:

- MX: the domain's mail goes to ``hostname``;
- SPF (RFC 7208): ``v=spf1 mx -all``, the MX hosts and nothing else may send
  as the domain;
- DKIM (RFC 6376 §3.6): one TXT record per key in use, the signing ones and
  those published ahead of a rotation;
- DMARC (RFC 7489): a starting policy of ``p=none`` with aggregate reports to
  postmaster, to be raised to ``quarantine`` or ``reject`` once the reports show
  only the domain's own servers;
- SRV (RFC 6186, RFC 8314 for ``_submissions``, RFC 5804 for ``_sieve``) so
  mail clients find the servers; a service that is not configured gets the "not available" form
  (target ``.``);
- TLS reporting (RFC 8460): ``_smtp._tls`` asks senders for reports to postmaster;
- with the HTTP listener: ``autoconfig`` and ``autodiscover`` names for this
  host (clients' autoconfiguration); with the HTTPS one also ``mta-sts`` (the
  MTA-STS policy of RFC 8461, fetched over HTTPS only, with a certificate for
  ``mta-sts.DOMAIN``) and the ``_mta-sts`` TXT record whose id follows the policy;
- the PTR the server's public address needs (a comment: the address is not known here).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailstack.dkim.keys import DKIMKey

SRV_SERVICES = (  # (record, standard port, listener that provides it)
    ("_submissions._tcp", 465, "submissions"),
    ("_submission._tcp", 587, "submission"),
    ("_imaps._tcp", 993, "imaps"),
    ("_imap._tcp", 143, "imap"),
    ("_pop3s._tcp", 995, "pop3s"),
    ("_pop3._tcp", 110, "pop3"),
    ("_sieve._tcp", 4190, "managesieve"),  # RFC 5804 §1.8
)


@dataclass(frozen=True, slots=True)
class Record:
    name: str  # fully qualified, with the trailing dot
    type: str
    value: str  # as it goes into a zone file (TXT values quoted and split)
    comment: str = ""

    def line(self, width: int) -> str:
        text = f"{self.name:<{width}} IN {self.type:<4} {self.value}"
        return f"{text}  ; {self.comment}" if self.comment else text


def txt(text: str) -> str:
    """A TXT value: one quoted string, or several of up to 255 octets in parentheses (RFC 1035 §3.3.14)."""
    parts = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
    quoted = " ".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in parts)
    return quoted if len(parts) == 1 else f"( {quoted} )"


def records(domain: str, hostname: str, keys: list[DKIMKey], listeners: set[str],
            mta_sts_id: str | None = None) -> list[Record]:
    """Every record ``domain`` needs, for a server called ``hostname`` with these listeners configured
    (``http`` or ``https`` among them: the web names, and ``mta_sts_id`` for the policy's record)."""
    d, host = f"{domain}.", f"{hostname}."
    out = [
        Record(d, "MX", f"10 {host}"),
        Record(d, "TXT", txt("v=spf1 mx -all"), "SPF: only the MX hosts send for the domain"),
    ]
    for key in keys:
        state = "signing" if key.signing else "published: signs once the older key is retired"
        out.append(Record(f"{key.record_name()}.", "TXT", txt(key.record_text()), f"DKIM {key.algorithm}, {state}"))
    out.append(Record(f"_dmarc.{d}", "TXT", txt(f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}"),
                      "DMARC: raise p= to quarantine, then reject, once the reports look right"))
    for name, port, listener in SRV_SERVICES:
        value = f"0 1 {port} {host}" if listener in listeners else "0 0 0 ."
        out.append(Record(f"{name}.{d}", "SRV", value, "" if listener in listeners else "not offered"))
    out.append(Record(f"_smtp._tls.{d}", "TXT", txt(f"v=TLSRPTv1; rua=mailto:postmaster@{domain}"),
                      "TLS reports (RFC 8460) from sending servers"))
    if listeners & {"http", "https"}:
        for name, what in (("autoconfig", "Thunderbird's autoconfiguration"), ("autodiscover", "Outlook's")):
            out.append(Record(f"{name}.{d}", "CNAME", host, what))
    if "https" in listeners:  # RFC 8461 §3.3: the policy is only ever fetched over HTTPS
        out.append(Record(f"mta-sts.{d}", "CNAME", host, "the MTA-STS policy, over HTTPS on port 443"))
        if mta_sts_id:
            out.append(Record(f"_mta-sts.{d}", "TXT", txt(f"v=STSv1; id={mta_sts_id}"),
                              "MTA-STS (RFC 8461): the id changes with the policy"))
    return out


def zone_text(domain: str, hostname: str, keys: list[DKIMKey], listeners: set[str],
              mta_sts_id: str | None = None) -> str:
    found = records(domain, hostname, keys, listeners, mta_sts_id)
    width = max(len(r.name) for r in found)
    lines = [f"; DNS records for {domain}, served by {hostname} (mailstack dns-records)"]
    if not keys:
        lines.append(f"; no DKIM key yet: mailstack dkim generate {domain}")
    lines += [r.line(width) for r in found]
    lines += [
        f"; PTR: the reverse DNS of {hostname}'s public address must name {host_dot(hostname)}",
        f"; and {hostname} must resolve back to that address (A/AAAA), or receivers distrust the mail.",
    ]
    return "\n".join(lines) + "\n"


def host_dot(hostname: str) -> str:
    return hostname.rstrip(".") + "."
