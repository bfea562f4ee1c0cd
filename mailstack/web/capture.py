"""The capture API and page (``relay.capture``), under ``/api/v1/`` and ``/`` of the HTTP site.

- ``GET /api/v1/messages?to=&from=&subject=&since=&limit=``: summaries, newest first.
  ``to`` and ``from`` match (case-insensitively, as substrings) the header
  addresses and the envelope, ``subject`` the decoded subject, ``since`` is an
  ISO 8601 time or Unix seconds compared with when the message was captured.
- ``GET /api/v1/messages/{id}``: one message: the summary, every header, the
  text part, whether there is an HTML part, and the attachments' metadata.
- ``GET .../raw``, ``.../html`` (sandboxed: no scripts, no remote loads, by its
  Content-Security-Policy), ``.../attachments/{n}`` (always a download).
- ``DELETE /api/v1/messages`` and ``DELETE /api/v1/messages/{id}``.
- ``GET /api/v1/events``: server-sent events: ``message`` with a new message's
  summary, ``deleted`` with ``{"ids": [...]}``, a comment every 15 s.

Messages are read through :class:`~mailstack.capture.CaptureBox` and parsed on
the io pool (the reactor thread never parses a message); summaries are kept in
memory by id, so a listing parses each message once.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import email.utils
import importlib.resources
import json
import re
from collections.abc import Callable
from email.message import EmailMessage, Message
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from mailstack.capture import CaptureBox, Captured
from mailstack.web import ErrorPage, HTTPError, JSONResource, respond, send_error, send_json

log = Logger()

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_STREAMS = 64
PING_INTERVAL = 15.0
SNIPPET = 200
MAX_TEXT = 1024 * 1024  # of the text part given in a message's JSON

HTML_POLICY = (b"sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:")
PAGE_POLICY = (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               b"frame-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'")

__all__ = ["CaptureAPI", "detail", "summarize"]


# -- reading messages (io pool) ------------------------------------------------------------

def _parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _header(message: Message, name: str) -> str:
    try:
        value = message.get(name)
        return "" if value is None else str(value)
    except Exception:  # a header too broken to decode: its raw text
        raw = message.get_all(name, failobj=[])
        return str(raw[0]) if raw else ""


def _addresses(message: Message, name: str) -> list[dict[str, str]]:
    values = []
    for raw in message.get_all(name, failobj=[]):
        try:
            values.append(str(raw))
        except Exception:
            continue
    return [{"name": n, "address": a} for n, a in email.utils.getaddresses(values) if a or n]


def _text_of(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except Exception:
        pass
    payload = part.get_payload(decode=True)
    return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""


def _bodies(message: EmailMessage) -> tuple[Message | None, Message | None]:
    try:
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
    except Exception:
        return None, None
    return text, html


def _leaves(message: Message) -> list[Message]:
    try:
        return [part for part in message.walk() if not part.is_multipart()]
    except Exception:
        return []


def _attachments(message: EmailMessage) -> list[tuple[int, Message]]:
    """Every leaf part that is not the text or HTML body, with its index among the leaves."""
    text, html = _bodies(message)
    return [(i, part) for i, part in enumerate(_leaves(message)) if part is not text and part is not html]


_TAGS = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.S | re.I)
_SPACE = re.compile(r"\s+")


def _snippet(message: EmailMessage) -> str:
    text, html = _bodies(message)
    if text is not None:
        words = _text_of(text)[:SNIPPET * 20]
    elif html is not None:
        words = _TAGS.sub(" ", _text_of(html)[:SNIPPET * 50])
    else:
        return ""
    return _SPACE.sub(" ", words).strip()[:SNIPPET]


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat().replace("+00:00", "Z")


def _date(message: Message) -> str | None:
    try:
        value = email.utils.parsedate_to_datetime(_header(message, "Date"))
    except (TypeError, ValueError, IndexError):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.isoformat()


def _envelope(message: Message) -> dict[str, Any]:
    sender = _header(message, "Return-Path").strip()
    sender = sender[1:-1] if sender.startswith("<") and sender.endswith(">") else sender
    to = [a.strip() for a in _header(message, "X-Original-To").split(",") if a.strip()]
    return {"from": sender, "to": to}


def summarize(data: bytes, captured: Captured) -> dict[str, Any]:
    """A message's summary, as the listing and the event stream give it."""
    message = _parse(data)
    senders = _addresses(message, "From")
    return {
        "id": str(captured.id),
        "from": senders[0] if senders else None,
        "to": _addresses(message, "To"),
        "cc": _addresses(message, "Cc"),
        "subject": _header(message, "Subject"),
        "date": _date(message),
        "received": _iso(captured.date),
        "size": captured.size,
        "snippet": _snippet(message),
        "attachments": len(_attachments(message)),
        "message_id": _header(message, "Message-ID").strip(),
        "envelope": _envelope(message),
    }


def detail(data: bytes, captured: Captured) -> dict[str, Any]:
    """One message: its summary with every header, the text, and the attachments' metadata."""
    message = _parse(data)
    out = summarize(data, captured)
    text, html = _bodies(message)
    headers = []
    for name, _ in message.raw_items():
        headers.append([name, ""])
    for i, (name, value) in enumerate(message.raw_items()):
        try:
            headers[i][1] = str(message.policy.header_fetch_parse(name, value))
        except Exception:
            headers[i][1] = str(value)
    attachments = []
    for index, part in _attachments(message):
        payload = part.get_payload(decode=True)
        attachments.append({
            "index": index,
            "filename": part.get_filename() or "",
            "content_type": part.get_content_type(),
            "disposition": part.get_content_disposition() or "",
            "content_id": _header(part, "Content-ID").strip(),
            "size": len(payload) if isinstance(payload, bytes) else 0,
        })
    out.update({
        "headers": headers,
        "text": _text_of(text)[:MAX_TEXT] if text is not None else None,
        "html": html is not None,
        "attachments": attachments,
    })
    return out


def html_part(data: bytes) -> bytes | None:
    _, html = _bodies(_parse(data))
    return None if html is None else _text_of(html).encode("utf-8")


def attachment(data: bytes, index: int) -> tuple[str, str, bytes] | None:
    """The leaf part at *index* that is an attachment: its file name, type and decoded content."""
    for i, part in _attachments(_parse(data)):
        if i == index:
            payload = part.get_payload(decode=True)
            return part.get_filename() or f"part-{index}", part.get_content_type(), (
                payload if isinstance(payload, bytes) else b"")
    return None


# -- filters -------------------------------------------------------------------------------

def _since(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPError(400, f"since: {value!r} is neither an ISO 8601 time nor Unix seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _matcher(args: dict[bytes, list[bytes]]) -> tuple[Callable[[dict[str, Any]], bool], int]:
    def arg(name: str) -> str:
        values = args.get(name.encode())
        return values[0].decode("utf-8", "replace").strip() if values else ""

    to, sender, subject, since, limit_text = arg("to").lower(), arg("from").lower(), arg("subject").lower(), \
        arg("since"), arg("limit")
    after = _since(since) if since else None
    limit = DEFAULT_LIMIT
    if limit_text:
        if not limit_text.isdigit() or not 0 < int(limit_text) <= MAX_LIMIT:
            raise HTTPError(400, f"limit: a number from 1 to {MAX_LIMIT}")
        limit = int(limit_text)

    def addresses(people: list[dict[str, str]]) -> str:
        return " ".join(f"{p['name']} {p['address']}" for p in people).lower()

    def match(s: dict[str, Any]) -> bool:
        if to and to not in addresses(s["to"] + s["cc"]) + " " + " ".join(s["envelope"]["to"]).lower():
            return False
        if sender and sender not in addresses([s["from"]] if s["from"] else []) + " " + s["envelope"]["from"].lower():
            return False
        if subject and subject not in s["subject"].lower():
            return False
        return after is None or datetime.datetime.fromisoformat(s["received"]).timestamp() >= after

    return match, limit


def _message_id(segment: bytes) -> int:
    text = segment.decode("ascii", "replace")
    if not text.isdigit() or len(text) > 10:
        raise HTTPError(404, f"no message {text!r}")
    return int(text)


# -- the API ---------------------------------------------------------------------------------

class CaptureAPI:
    """The state behind the resources: summaries by id, and the open event streams (reactor thread)."""

    def __init__(self, box: CaptureBox, io: Callable[..., Any], clock: Any) -> None:
        self.box = box
        self.io = io
        self.clock = clock
        self.summaries: dict[int, dict[str, Any]] = {}
        self.known: set[int] | None = None  # the ids the streams were told of; None: not looked yet
        self.streams: list[Request] = []
        self.stalled: dict[Request, bool] = {}  # a stream's client is not reading: its buffer is full
        self._syncing = False
        self._again = False
        self._ping: IDelayedCall | None = None
        self._unsubscribe = box.subscribe(self._changed)

    def add_to(self, children: dict[bytes, Any]) -> None:
        """Put the API under ``/api/v1`` (made here, or shared with others) and the page at ``/``."""
        api = children.setdefault(b"api", JSONResource())
        version = api.children.get(b"v1")
        if version is None:
            api.putChild(b"v1", version := JSONResource())
        version.putChild(b"messages", Messages(self))
        version.putChild(b"events", Events(self))
        children[b""] = Page()
        children[b"static"] = Static()

    async def listing(self) -> list[tuple[Captured, dict[str, Any]]]:
        """Every captured message with its summary, newest first (parsing the new ones on the pool)."""
        found = await self.box.messages()
        for item in found:
            if item.id not in self.summaries:
                data = await self.box.read(item.id)
                if data is None:
                    continue
                self.summaries[item.id] = await self.io(summarize, data, item)
        present = {item.id for item in found}
        for gone in set(self.summaries) - present:
            del self.summaries[gone]
        return [(item, self.summaries[item.id]) for item in reversed(found) if item.id in self.summaries]

    async def one(self, id: int) -> tuple[Captured, bytes]:
        for item in await self.box.messages():
            if item.id == id:
                data = await self.box.read(id)
                if data is not None:
                    return item, data
        raise HTTPError(404, f"no message {id}")

    # -- the event streams --------------------------------------------------------------

    def _changed(self) -> None:
        if self.known is None or not self.streams:
            self.known = None  # nobody listens: look again when someone does
            return
        if self._syncing:
            self._again = True
            return
        self._syncing = True
        d = Deferred.fromCoroutine(self._sync())
        d.addErrback(lambda f: log.failure("capture: reading the capture mailbox for the event stream failed", f))
        d.addBoth(self._synced)

    def _synced(self, _: object) -> None:
        self._syncing = False
        if self._again:
            self._again = False
            self._changed()

    async def _sync(self) -> None:
        """Tell every stream what came and went since the last look."""
        listing = await self.listing()
        now = {item.id for item, _ in listing}
        before = self.known if self.known is not None else now
        self.known = now
        for item, summary in reversed(listing):  # oldest first
            if item.id not in before:
                self._broadcast("message", summary)
        deleted = sorted(before - now)
        if deleted:
            self._broadcast("deleted", {"ids": [str(i) for i in deleted]})

    def _broadcast(self, event: str, value: Any) -> None:
        frame = f"event: {event}\ndata: {json.dumps(value, ensure_ascii=False, separators=(',', ':'))}\n\n"
        self._write_all(frame.encode("utf-8"))

    def _write_all(self, data: bytes) -> None:
        for request in list(self.streams):
            if self.stalled.get(request):  # its client stopped reading: let it go (it reconnects and reloads)
                log.info("capture: an event stream whose client stopped reading is closed")
                self._close_stream(request)
                request.loseConnection()
                continue
            request.write(data)

    async def open_stream(self, request: Request) -> None:
        gone: list[bool] = []

        def finished(_: object) -> None:
            gone.append(True)
            self._close_stream(request)

        request.notifyFinish().addBoth(finished)
        if self.known is None:
            listing = await self.listing()
            if self.known is None:
                self.known = {item.id for item, _ in listing}
        if gone:  # the client left while the mailbox was read
            return
        self.streams.append(request)
        self.stalled[request] = False
        request.registerProducer(_Backlog(self.stalled, request), True)
        # the headers go out once the stream is registered: a client that loads its list when the
        # stream opens misses nothing in between
        request.write(b"retry: 2000\n\n")
        if self._ping is None:
            self._ping = self.clock.callLater(PING_INTERVAL, self._send_ping)

    def _close_stream(self, request: Request) -> None:
        self.stalled.pop(request, None)
        if request in self.streams:
            self.streams.remove(request)
        if not self.streams and self._ping is not None and self._ping.active():
            self._ping.cancel()
            self._ping = None

    def _send_ping(self) -> None:
        self._ping = None
        self._write_all(b": ping\n\n")
        if self.streams:
            self._ping = self.clock.callLater(PING_INTERVAL, self._send_ping)

    def close(self) -> None:
        """End every event stream (the service stops)."""
        self._unsubscribe()
        for request in list(self.streams):
            self._close_stream(request)
            request.unregisterProducer()
            request.finish()
        if self._ping is not None and self._ping.active():
            self._ping.cancel()
        self._ping = None


class _Backlog:
    """The push producer of one event stream: the transport says when its buffer is full."""

    def __init__(self, stalled: dict[Request, bool], request: Request) -> None:
        self.stalled = stalled
        self.request = request

    def pauseProducing(self) -> None:
        if self.request in self.stalled:
            self.stalled[self.request] = True

    def resumeProducing(self) -> None:
        if self.request in self.stalled:
            self.stalled[self.request] = False

    def stopProducing(self) -> None:
        self.stalled.pop(self.request, None)


class Messages(JSONResource):
    """``/api/v1/messages``."""

    def __init__(self, api: CaptureAPI) -> None:
        super().__init__()
        self.api = api

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"":
            return self
        return OneMessage(self.api, path)

    def render_GET(self, request: Request) -> Any:
        async def work() -> Callable[[Request], None]:
            match, limit = _matcher(request.args)
            found = [summary for _, summary in await self.api.listing() if match(summary)]
            return lambda r: send_json(r, {"total": len(found), "messages": found[:limit]})
        return respond(request, work)

    def render_DELETE(self, request: Request) -> Any:
        async def work() -> Callable[[Request], None]:
            removed = await self.api.box.delete()
            log.info("capture: {n} message(s) deleted over HTTP", n=len(removed))
            return lambda r: send_json(r, {"deleted": len(removed)})
        return respond(request, work)


class OneMessage(JSONResource):
    """``/api/v1/messages/{id}`` and what lies below it."""

    def __init__(self, api: CaptureAPI, segment: bytes) -> None:
        super().__init__()
        self.api = api
        self.segment = segment

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"":
            return self
        if path in (b"raw", b"html"):
            return MessagePart(self.api, self.segment, path.decode())
        if path == b"attachments" and request.postpath and request.postpath[0].isdigit():
            index = int(request.postpath.pop(0))
            if request.prepath is not None:
                request.prepath.append(str(index).encode())
            return MessagePart(self.api, self.segment, "attachment", index)
        return ErrorPage(404, "no such resource")

    def render_GET(self, request: Request) -> Any:
        async def work() -> Callable[[Request], None]:
            item, data = await self.api.one(_message_id(self.segment))
            value = await self.api.io(detail, data, item)
            return lambda r: send_json(r, value)
        return respond(request, work)

    def render_DELETE(self, request: Request) -> Any:
        async def work() -> None:
            id = _message_id(self.segment)
            if not await self.api.box.delete([id]):
                raise HTTPError(404, f"no message {id}")
            log.info("capture: message {id} deleted over HTTP", id=id)
        return respond(request, work)


class MessagePart(JSONResource):
    isLeaf = True

    def __init__(self, api: CaptureAPI, segment: bytes, kind: str, index: int = 0) -> None:
        super().__init__()
        self.api = api
        self.segment = segment
        self.kind = kind
        self.index = index

    def render_GET(self, request: Request) -> Any:
        async def work() -> Callable[[Request], None]:
            _, data = await self.api.one(_message_id(self.segment))
            if self.kind == "raw":
                return lambda r: _send_bytes(r, data, b"text/plain; charset=utf-8")
            if self.kind == "html":
                html = await self.api.io(html_part, data)
                if html is None:
                    raise HTTPError(404, "the message has no HTML part")

                def send_html(r: Request) -> None:
                    r.setHeader(b"content-security-policy", HTML_POLICY)
                    r.setHeader(b"referrer-policy", b"no-referrer")
                    _send_bytes(r, html, b"text/html; charset=utf-8")
                return send_html
            found = await self.api.io(attachment, data, self.index)
            if found is None:
                raise HTTPError(404, f"the message has no attachment {self.index}")
            filename, _, content = found

            def send_attachment(r: Request) -> None:
                safe = re.sub(r'[^A-Za-z0-9._ -]', "_", filename)[:200] or "attachment"
                r.setHeader(b"content-disposition", f'attachment; filename="{safe}"'.encode("ascii"))
                _send_bytes(r, content, b"application/octet-stream")
            return send_attachment
        return respond(request, work)


def _send_bytes(request: Request, data: bytes, content_type: bytes) -> None:
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", str(len(data)).encode())
    request.write(data)


class Events(JSONResource):
    """``/api/v1/events``: the server-sent event stream."""

    isLeaf = True

    def __init__(self, api: CaptureAPI) -> None:
        super().__init__()
        self.api = api

    def render_GET(self, request: Request) -> Any:
        if len(self.api.streams) >= MAX_STREAMS:
            return send_error(request, 503, f"too many event streams open (at most {MAX_STREAMS})")

        def failed(failure: Failure) -> None:
            log.failure("capture: opening an event stream failed", failure)
            request.finish()

        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        Deferred.fromCoroutine(self.api.open_stream(request)).addErrback(failed)
        return NOT_DONE_YET


# -- the page ----------------------------------------------------------------------------------

def _static(name: str) -> bytes:
    return importlib.resources.files("mailstack.web").joinpath("static", name).read_bytes()


_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
          ".css": b"text/css; charset=utf-8", ".svg": b"image/svg+xml"}


def _send_static(request: Request, name: str) -> bytes:
    try:
        data = _static(name)
    except (FileNotFoundError, IsADirectoryError):
        request.setResponseCode(404)
        return b""
    suffix = name[name.rfind("."):]
    request.setHeader(b"content-type", _TYPES.get(suffix, b"application/octet-stream"))
    request.setHeader(b"content-security-policy", PAGE_POLICY)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"referrer-policy", b"no-referrer")
    return data


class Page(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            return ErrorPage(404, "no such page").render(request)
        return _send_static(request, "index.html")


class Static(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        name = b"/".join(request.postpath or []).decode("ascii", "replace")
        if not re.fullmatch(r"[a-z0-9_-]+\.(js|css|svg|html)", name):
            return ErrorPage(404, "no such file").render(request)
        return _send_static(request, name)
