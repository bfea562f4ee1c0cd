"""Delivery status notifications (bounces): RFC 3464 multipart/report.

A bounce goes to the envelope sender of the failed message, from the null
reverse-path, so it can never cause another bounce. It has three parts
(RFC 3462/6522 ``multipart/report; report-type=delivery-status``): a human
readable explanation, the machine readable ``message/delivery-status`` (per
message: Reporting-MTA, Arrival-Date; per recipient: Final-Recipient, Action,
Status, Remote-MTA, Diagnostic-Code, Last-Attempt-Date), and the original
message's headers (``text/rfc822-headers``). When an address is not ASCII the
RFC 6533 forms are used (``message/global-delivery-status``, ``utf-8;``
address type, ``message/global-headers``). ``Auto-Submitted: auto-replied``
(RFC 3834) marks it as automatic.
"""

from __future__ import annotations

import quopri
import secrets
from collections.abc import Sequence

from mailstack.queue.spool import RecipientState
from mailstack.smtp.message import header_block, rfc2822_date


def _address_field(address: str) -> str:
    return f"rfc822; {address}" if address.isascii() else f"utf-8; {address}"


def build_bounce(
    *,
    hostname: str,
    queue_id: str,
    sender: str,
    arrival: float,
    failed: Sequence[RecipientState],
    original: bytes,
    now: float,
    retry_until: float | None = None,
    explanation: str = "",
) -> bytes:
    """The whole DSN message (headers and body, CRLF line ends).

    With ``retry_until`` it is a delay warning (``Action: delayed``) for
    recipients still being retried, instead of a failure report. ``explanation``
    (LF lines) is added to the human-readable part, which is quoted-printable when
    it is not short ASCII lines.
    """
    delayed = retry_until is not None
    utf8 = not sender.isascii() or any(not r.address.isascii() for r in failed)
    boundary = f"{queue_id}.{secrets.token_hex(8)}/{hostname}"
    status_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    headers_type = "message/global-headers" if utf8 else "text/rfc822-headers"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        "Subject: " + ("Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"),
        f"Date: {rfc2822_date(now)}",
        f"Message-ID: <{queue_id}.bounce.{secrets.token_hex(4)}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
    ]
    notification = [
        f"This is the mail system at host {hostname}.",
        "",
        ("Your message has not been delivered yet to the recipients below; delivery will be retried"
         f" until {rfc2822_date(retry_until)}. You do not need to send it again." if delayed
         else "Your message could not be delivered to one or more recipients."),
        "",
    ]
    for r in failed:
        reason = r.diagnostic or r.last_error or "delivery failed"
        notification.append(f"<{r.address}>: {reason}")
    if explanation:
        notification += ["", *explanation.split("\n")]
    human = "\n".join(notification)
    plain = human.isascii() and all(len(line) <= 900 for line in notification)
    lines += [
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Description: Notification",
    ]
    if plain:
        lines += ["", *notification]
    else:
        encoded = quopri.encodestring(human.encode("utf-8")).decode("ascii")
        lines += ["Content-Transfer-Encoding: quoted-printable", "", *encoded.split("\n")]
    lines += [
        "",
        f"--{boundary}",
        f"Content-Type: {status_type}",
        "Content-Description: Delivery report",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-Queue-ID: {queue_id}",
        f"Arrival-Date: {rfc2822_date(arrival)}",
    ]
    for r in failed:
        default_status = "4.0.0" if delayed else "5.0.0"
        lines += ["", f"Final-Recipient: {_address_field(r.address)}", f"Action: {'delayed' if delayed else 'failed'}",
                  f"Status: {r.status_code or default_status}"]
        if r.remote_mta:
            lines.append(f"Remote-MTA: dns; {r.remote_mta}")
        if r.diagnostic:
            lines.append(f"Diagnostic-Code: smtp; {r.diagnostic}")
        elif r.last_error:
            lines.append(f"Diagnostic-Code: X-mailstack; {r.last_error}")
        lines.append(f"Last-Attempt-Date: {rfc2822_date(now)}")
        if retry_until is not None:
            lines.append(f"Will-Retry-Until: {rfc2822_date(retry_until)}")
    lines += ["", f"--{boundary}", f"Content-Type: {headers_type}", "Content-Description: Undelivered message headers", ""]
    text = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    headers = header_block(original)
    return text + headers + (b"" if headers.endswith(b"\r\n") or not headers else b"\r\n") + f"\r\n--{boundary}--\r\n".encode()
