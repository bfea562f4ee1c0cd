"""The messages a Sieve script's actions send: redirects, vacation replies, rejection notices.

Each builder is pure (the message and envelope of an :class:`~mailstack.interfaces.Outbound`);
:class:`~mailstack.sieve.filter.SieveFilter` decides when to call them and the queue sends them.

* **redirect** (RFC 5228 §4.2): the message as it came, under the envelope sender SRS
  makes of the original one in the mailbox's domain (so the next hop's SPF check passes,
  and a bounce finds its way back), with ``Delivered-To: <mailbox>`` on top (RFC 9228).
  A message that already carries this mailbox's ``Delivered-To`` has been round a loop:
  :func:`looped` says so, and it is kept instead of redirected again.
* **vacation** (RFC 5230 §5, RFC 3834 §3): from the null reverse-path to the envelope
  sender; ``From`` the recipient (or ``:from``), ``Subject`` ``Auto: `` and the original's
  (or ``:subject``), ``In-Reply-To``/``References`` to the original, ``Auto-Submitted:
  auto-replied``. With ``:mime`` the reason is a MIME entity whose header fields go on
  top. The text is encoded for 7-bit transport (quoted-printable or base64 as needed).
* **reject** (RFC 5429 §2.2, an MDN after RFC 8098 with ``Disposition:
  automatic-action/MDN-sent-automatically; deleted``) and **ereject** (a DSN, RFC 3464,
  status 5.7.1), both from the null reverse-path, with the original's header; never to
  the null sender.
"""

from __future__ import annotations

import quopri
import re
import secrets
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP
from typing import cast

from mailstack.imap import mime
from mailstack.imap.address import decode_words
from mailstack.interfaces import Outbound
from mailstack.queue.dsn import build_bounce
from mailstack.queue.spool import FAILED, RecipientState
from mailstack.smtp.message import header_block, rfc2822_date
from mailstack.srs import SRS

MAX_REASON = 64 << 10  # octets of a vacation or reject reason carried into a reply


def redirect(message: bytes, *, sender: str, mailbox: str, target: str, srs: SRS | None) -> Outbound:
    """*message* redirected by *mailbox*'s script to *target*."""
    domain = mailbox.rpartition("@")[2]
    envelope_sender = srs.forward(sender, domain) if srs is not None and sender else sender
    return Outbound("redirect", envelope_sender, (target,), f"Delivered-To: {mailbox}\r\n".encode() + message)


def looped(header: bytes, mailbox: str) -> bool:
    """True when the message has been delivered to *mailbox* before (RFC 9228 loop detection)."""
    wanted = mailbox.lower()
    return any(name == "delivered-to" and mime.field_value(raw).strip().strip("<>").lower() == wanted
               for name, raw in mime.header_fields(header))


def _quoted_printable(text: str) -> str:
    """Text as quoted-printable UTF-8 with CRLF line ends, no line over 76 characters."""
    return quopri.encodestring(text.encode("utf-8")).decode("ascii").replace("\n", "\r\n").rstrip("\r\n")


def _first(header: bytes, name: str) -> str | None:
    for field_name, raw in mime.header_fields(header):
        if field_name == name:
            return mime.field_value(raw).strip()
    return None


def _bounded(text: str) -> str:
    data = text.encode("utf-8", "surrogatepass")
    return text if len(data) <= MAX_REASON else data[:MAX_REASON].decode("utf-8", "ignore")


_DOT_ATOM = re.compile(r"[^\x00-\x20\x7f\"(),.:;<>@\[\\\]]+(?:\.[^\x00-\x20\x7f\"(),.:;<>@\[\\\]]+)*\Z")


def _mailbox_header(address: str) -> str:
    """An address for a From/To field: as it is when its local part is a dot-atom (UTF-8 ones
    too, RFC 6532), else with the local part quoted."""
    local, _, domain = address.rpartition("@")
    if not local or _DOT_ATOM.match(local):
        return address
    quoted = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}"@{domain}'


def vacation(header: bytes, *, to: str, sender_address: str, reason: str, subject: str | None, mime_reason: bool,
             hostname: str, now: float) -> Outbound:
    """The vacation reply to a message with *header* (RFC 5230 §5)."""
    body = _bounded(reason)
    reply = EmailMessage(policy=SMTP)
    if mime_reason:  # the reason is a MIME entity: its content fields, then ours on top
        entity = message_from_bytes(body.encode("utf-8", "surrogatepass"), policy=SMTP)
        if entity.get_content_type() != "text/plain" or "content-type" in entity:
            for name in set(entity.keys()):
                if not name.lower().startswith("content-"):
                    del entity[name]
            reply = cast(EmailMessage, entity)
            _seven_bit(reply)
        else:  # no MIME header at all: plain text
            mime_reason = False
    if subject is None:
        original = decode_words(_first(header, "subject") or "")
        subject = f"Auto: {original}" if original else "Automatic reply"
    for name, value in (("From", _mailbox_header(sender_address)), ("To", _mailbox_header(to)),
                        ("Subject", " ".join(subject.split())), ("Date", rfc2822_date(now)),
                        ("Message-ID", f"<{secrets.token_hex(12)}.vacation@{hostname}>")):
        reply[name] = value
    original_id = _first(header, "message-id")
    if original_id:
        reply["In-Reply-To"] = original_id
        references = _first(header, "references")
        reply["References"] = f"{references} {original_id}" if references else original_id
    reply["Auto-Submitted"] = "auto-replied"
    if mime_reason:
        reply["MIME-Version"] = "1.0"
    else:
        text = _lines(body)
        reply.set_content(text, cte="7bit" if text.isascii() and _short(text) else "quoted-printable")
    utf8 = not (to.isascii() and sender_address.isascii())  # addresses as they are (RFC 6532), not encoded
    return Outbound("vacation", "", (to,), reply.as_bytes(policy=SMTP.clone(utf8=True) if utf8 else SMTP),
                    notice=True)


def _lines(text: str) -> str:
    """Text with every line end LF (CR LF, bare CR and bare LF alike)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _short(text: str) -> bool:
    return all(len(line) <= 76 for line in text.split("\n"))


def _seven_bit(entity: EmailMessage) -> None:
    """Re-encode the leaves of a MIME entity that are 8-bit or have long lines, for any next hop."""
    for part in entity.walk():
        if part.is_multipart() or part.get_content_maintype() == "message":
            continue
        encoding = str(part.get("content-transfer-encoding", "7bit")).strip().lower()
        payload = part.get_payload(decode=False)
        raw = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
        if encoding in ("base64", "quoted-printable") or (raw.isascii() and all(len(x) <= 998 for x in
                                                                                 raw.splitlines())):
            continue
        data = cast(bytes, part.get_payload(decode=True) or b"")
        maintype, subtype = part.get_content_maintype(), part.get_content_subtype()
        part_ = cast(EmailMessage, part)
        if maintype == "text":
            charset = part.get_content_charset() or "utf-8"
            try:
                text = data.decode(charset, "replace")
            except LookupError:  # an unknown charset: taken as UTF-8
                text = data.decode("utf-8", "replace")
            part_.set_content(_lines(text), subtype=subtype, cte="quoted-printable")
        else:
            part_.set_content(data, maintype, subtype, cte="base64")


def rejection(message: bytes, *, sender: str, mailbox: str, original: str, reason: str, extended: bool,
              hostname: str, queue_id: str, arrival: float, now: float) -> Outbound:
    """The notice that *mailbox*'s script refused the message: an MDN for reject, a DSN for
    ereject. Not for the null sender (the caller checks)."""
    reason = _bounded(reason)
    if extended:  # the reason in full in the text, and made one short ASCII line for the machine
        short = " ".join("".join(c if " " <= c <= "~" else " " for c in reason).split())[:400]
        state = RecipientState(original or mailbox, FAILED, 1, 0.0, "refused by the recipient", "5.7.1", "",
                               f"550 5.7.1 {short}".rstrip())
        dsn = build_bounce(hostname=hostname, queue_id=queue_id, sender=sender, arrival=arrival, failed=[state],
                           original=message, now=now, explanation=_lines(reason))
        return Outbound("ereject", "", (sender,), dsn, notice=True)
    boundary = f"{queue_id}.{secrets.token_hex(8)}/{hostname}"
    original_id = _first(header_block(message), "message-id")
    utf8 = not all(a.isascii() for a in (sender, mailbox, original))
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        "Subject: Message refused by its recipient",
        f"Date: {rfc2822_date(now)}",
        f"Message-ID: <{queue_id}.reject.{secrets.token_hex(4)}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=disposition-notification; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
        "",
        _quoted_printable(f"Your message to <{original or mailbox}> was refused automatically by its recipient:"
                          f"\n\n{_lines(reason)}\n"),
        f"--{boundary}",
        f"Content-Type: {'message/global-disposition-notification' if utf8 else 'message/disposition-notification'}",
        "",
        f"Reporting-UA: {hostname}; mailstack",
        f"Original-Recipient: rfc822; {original or mailbox}",
        f"Final-Recipient: rfc822; {mailbox}",
        *([f"Original-Message-ID: {original_id}"] if original_id else []),
        "Disposition: automatic-action/MDN-sent-automatically; deleted",
        "",
        f"--{boundary}",
        f"Content-Type: {'message/global-headers' if utf8 else 'text/rfc822-headers'}",
        "",
    ]
    text = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    headers = header_block(message)
    mdn = text + headers + (b"" if headers.endswith(b"\r\n") or not headers else b"\r\n") \
        + f"\r\n--{boundary}--\r\n".encode()
    return Outbound("reject", "", (sender,), mdn, notice=True)
