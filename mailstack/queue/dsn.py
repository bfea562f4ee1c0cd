"""Delivery status notifications: RFC 3464 multipart/report, for failures, delays and successes.

A report goes to the envelope sender of the message, from the null
reverse-path, so it can never cause another report. It has three parts
(RFC 6522 ``multipart/report; report-type=delivery-status``): a human
readable explanation, the machine readable ``message/delivery-status`` (per
message: Original-Envelope-Id when the sender gave ENVID, Reporting-MTA,
Arrival-Date; per recipient: Original-Recipient when known, Final-Recipient,
Action, Status, Remote-MTA, Diagnostic-Code, Last-Attempt-Date), and the
message's header (``text/rfc822-headers``), or the whole message
(``message/rfc822``) in a failure report the sender asked ``RET=FULL`` for
(RFC 3461 §4.3; success reports never carry the body). When an address or the
header is not ASCII the RFC 6533 forms are used (``message/global-delivery-status``,
``utf-8;`` address type, ``message/global-headers``, ``message/global``).
``Auto-Submitted: auto-replied`` (RFC 3834) marks it as automatic.

Actions: ``failed`` (a bounce), ``delayed`` (a warning while retrying),
``delivered`` (filed in a local mailbox), ``relayed`` (handed to a next hop that
does not offer DSN), ``expanded`` (an alias turned into several addresses).
"""

from __future__ import annotations

import quopri
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from mailstack.queue.spool import RecipientState
from mailstack.smtp.dsnparams import utf8_addr_xtext
from mailstack.smtp.message import header_block, rfc2822_date

FULL_LIMIT = 2 * 1024 * 1024
"""RET=FULL returns a message up to this size whole; a larger one by its header only."""

_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "success": "Successful Mail Delivery Report",
}
_SUCCESS = frozenset({"delivered", "relayed", "expanded"})


def _address_field(kind: str, address: str, utf8: bool = True) -> str:
    """``type; address``; a UTF-8 address in an ASCII report in RFC 6533's utf-8-addr-xtext form."""
    if address.isascii():
        return f"{kind}; {address}"
    return f"utf-8; {address}" if utf8 else f"utf-8; {utf8_addr_xtext(address)}"


def _explain(action: str, retry_until: float | None) -> str:
    if action == "failed":
        return "Your message could not be delivered to one or more recipients."
    if action == "delayed":
        return ("Your message has not been delivered yet to the recipients below; delivery will be retried"
                f" until {rfc2822_date(retry_until or 0)}. You do not need to send it again.")
    return "This is the report on your message's delivery that you asked for."


def _line_for(action: str, state: RecipientState, hostname: str) -> str:
    if action == "delivered":
        return f"<{state.address}>: delivered to a mailbox at {hostname}"
    if action == "relayed":
        where = f" to {state.remote_mta}" if state.remote_mta else ""
        return (f"<{state.address}>: relayed{where}, which will not report delivery"
                + (f" ({state.diagnostic})" if state.diagnostic else ""))
    if action == "expanded":
        return f"<{state.address}>: an alias; the message went on to the addresses it stands for"
    return f"<{state.address}>: {state.diagnostic or state.last_error or 'delivery failed'}"


def build_report(
    *,
    hostname: str,
    queue_id: str,
    sender: str,
    arrival: float,
    entries: Sequence[tuple[RecipientState, str]],
    original: bytes,
    now: float,
    retry_until: float | None = None,
    explanation: str = "",
    envid: str | None = None,
    ret: str | None = None,
    orcpt: Mapping[str, tuple[str, str]] | None = None,
    quote: bool = True,
) -> bytes:
    """The whole DSN message (headers and body, CRLF line ends) for *entries*: each recipient's
    state with its RFC 3464 action (``failed``, ``delayed``, ``delivered``, ``relayed``, ``expanded``).

    A delayed recipient is retried until ``retry_until``. ``explanation`` (LF lines) is added to
    the human-readable part, which is quoted-printable when it is not short ASCII lines. The
    message comes back whole (``message/rfc822``) in a failure report when the sender asked
    ``RET=FULL``, else by its header (RFC 3461 §4.3); ``envid`` and ``orcpt`` (address ->
    ORCPT) are the sender's identifiers, returned as Original-Envelope-Id and Original-Recipient.
    Without *quote* nothing of the message is returned (a REQUIRETLS message's report, which
    may travel without TLS: RFC 8689 §5).
    """
    orcpt = orcpt or {}
    actions = {a for _, a in entries}
    kind = "failed" if "failed" in actions else "delayed" if "delayed" in actions else "success"
    utf8 = not sender.isascii() or any(not r.address.isascii() for r, _ in entries)
    boundary = f"{queue_id}.{secrets.token_hex(8)}/{hostname}"
    status_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    headers = header_block(original)
    full = kind == "failed" and ret == "FULL" and len(original) <= FULL_LIMIT
    if full:
        returned_type = "message/global" if not headers.isascii() else "message/rfc822"
    else:
        returned_type = "message/global-headers" if utf8 or not headers.isascii() else "text/rfc822-headers"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        f"Subject: {_SUBJECTS[kind]}",
        f"Date: {rfc2822_date(now)}",
        f"Message-ID: <{queue_id}.{'report' if kind == 'success' else 'bounce'}.{secrets.token_hex(4)}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
    ]
    notification = [f"This is the mail system at host {hostname}.", ""]
    said: set[str] = set()
    for action in ("failed", "delayed", "delivered", "relayed", "expanded"):
        group = [r for r, a in entries if a == action]
        if not group:
            continue
        intro = "success" if action in _SUCCESS else action
        if intro not in said:
            said.add(intro)
            notification += [_explain(intro, retry_until), ""]
        notification += [_line_for(action, r, hostname) for r in group]
        notification.append("")
    notification.pop()
    if kind == "failed" and ret == "FULL" and not full:
        notification += ["", f"The message is larger than {FULL_LIMIT} octets; only its header is returned."]
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
    lines += ["", f"--{boundary}", f"Content-Type: {status_type}", "Content-Description: Delivery report", ""]
    if envid is not None:  # RFC 3464 §2.2: the per-message fields, in this order
        lines.append(f"Original-Envelope-Id: {envid}")
    lines += [
        f"Reporting-MTA: dns; {hostname}",
        f"Arrival-Date: {rfc2822_date(arrival)}",
        f"X-Queue-ID: {queue_id}",
    ]
    for r, action in entries:
        lines.append("")
        original_rcpt = orcpt.get(r.address)
        if original_rcpt is not None:
            lines.append(f"Original-Recipient: {_address_field(*original_rcpt, utf8=utf8)}")
        default_status = {"failed": "5.0.0", "delayed": "4.0.0"}.get(action, "2.0.0")
        lines += [f"Final-Recipient: {_address_field('rfc822', r.address)}", f"Action: {action}",
                  f"Status: {r.status_code or default_status}"]
        if r.remote_mta and action not in ("delivered", "expanded"):  # filed here: there is no remote MTA
            lines.append(f"Remote-MTA: dns; {r.remote_mta}")
        if r.diagnostic:
            lines.append(f"Diagnostic-Code: smtp; {r.diagnostic}")
        elif r.last_error and action in ("failed", "delayed"):
            lines.append(f"Diagnostic-Code: X-mailstack; {r.last_error}")
        lines.append(f"Last-Attempt-Date: {rfc2822_date(now)}")
        if action == "delayed" and retry_until is not None:
            lines.append(f"Will-Retry-Until: {rfc2822_date(retry_until)}")
    description = "Undelivered message" if full else ("Undelivered message headers" if kind != "success"
                                                      else "Message headers")
    if not quote:
        text = "\r\n".join(lines).encode("utf-8") + b"\r\n"
        return text + f"\r\n--{boundary}--\r\n".encode()
    returned = original if full else headers
    lines += ["", f"--{boundary}", f"Content-Type: {returned_type}", f"Content-Description: {description}"]
    if not returned.isascii():  # RFC 6152: the queue sends the report with BODY=8BITMIME
        lines.append("Content-Transfer-Encoding: 8bit")
    lines.append("")
    text = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    if returned and not returned.endswith(b"\r\n"):
        returned += b"\r\n"
    return text + returned + f"\r\n--{boundary}--\r\n".encode()


def build_bounce(*, failed: Sequence[RecipientState], retry_until: float | None = None, **fields: Any) -> bytes:
    """A failure report for *failed*, or with ``retry_until`` a delay warning for them; *fields*
    are :func:`build_report`'s others."""
    action = "delayed" if retry_until is not None else "failed"
    return build_report(entries=[(r, action) for r in failed], retry_until=retry_until, **fields)
