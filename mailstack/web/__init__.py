"""The HTTP listener (``[listen] http``): one twisted.web site for every HTTP resource.

``build_site`` puts the resources the running services offer (metrics and
health, client autoconfiguration and the MTA-STS policy, the capture API and
page, the failure rules of a lab) under one root that decides who may ask: the
public resources (what mail clients and other servers fetch: autoconfiguration,
the MTA-STS policy, health) anyone; the others clients on loopback always, any
other only with ``Authorization: Bearer <http.token>`` (or ``?token=`` for the
page's event stream, which browsers cannot give a header), and nobody else when
no token is set. Every answer the
site makes itself is JSON (``{"error": ...}``) with a clear status; requests
are small (a 64 KiB body at most) and idle connections close after a minute.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

log = Logger()

MAX_BODY = 64 * 1024
IDLE_TIMEOUT = 60.0

__all__ = ["HTTPError", "JSONResource", "build_site", "respond", "send_json"]


class HTTPError(Exception):
    """An answer other than 200 for the client: its status and a sentence for ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def send_json(request: Request, value: Any, status: int = 200) -> None:
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"content-length", str(len(body)).encode())
    request.write(body)


def send_error(request: Request, status: int, message: str) -> bytes:
    send_json(request, {"error": message}, status)
    return b""


def respond(request: Request, work: Callable[[], Awaitable[Callable[[Request], None] | None]]) -> Any:
    """Run *work* (a coroutine function giving a writer for the answer, or None for 204) and answer
    when it ends; an :class:`HTTPError` becomes its JSON error, anything else a 500 and a log line.
    A client that went away meanwhile is not written to."""
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def done(writer: Callable[[Request], None] | None) -> None:
        if gone:
            return
        if writer is None:
            request.setResponseCode(204)
        else:
            writer(request)
        request.finish()

    def failed(failure: Failure) -> None:
        error = failure.value
        if isinstance(error, HTTPError):
            if not gone:
                send_error(request, error.status, error.message)
                request.finish()
            return
        log.failure("http: {method} {path} failed", failure, method=request.method.decode("ascii", "replace"),
                    path=request.path.decode("ascii", "replace"))
        if not gone:
            send_error(request, 500, "internal error, logged on the server")
            request.finish()

    d = Deferred.fromCoroutine(_call(work))
    d.addCallbacks(done, failed)
    return NOT_DONE_YET


async def _call(work: Callable[[], Awaitable[Any]]) -> Any:
    return await work()


def read_json(request: Request) -> Any:
    """The request's body as JSON; a 400 or 413 HTTPError when it is not."""
    content = request.content
    if content is None:
        raise HTTPError(400, "a JSON body is required")
    content.seek(0)
    data = content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise HTTPError(413, f"the body is larger than {MAX_BODY} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HTTPError(400, f"malformed JSON: {e}") from None


class JSONResource(Resource):
    """A resource whose unknown children and methods are JSON errors."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return ErrorPage(404, "no such resource")

    def render(self, request: Request) -> Any:
        method = request.method.decode("ascii", "replace")
        if not hasattr(self, f"render_{'GET' if method == 'HEAD' else method}"):
            allowed = sorted(name[7:] for name in dir(self) if name.startswith("render_") and name[7:].isupper()
                             and (name != "render_HEAD" or hasattr(self, "render_GET")))
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            return send_error(request, 405, f"{method} is not allowed here (allowed: {', '.join(allowed)})")
        return super().render(request)

    def render_HEAD(self, request: Request) -> Any:
        """GET's headers without its body (twisted.web's own HEAD writes the body, and warns)."""
        answer = self.render_GET(request)  # type: ignore[attr-defined]
        return b"" if isinstance(answer, bytes) else answer


class ErrorPage(Resource):
    isLeaf = True

    def __init__(self, status: int, message: str) -> None:
        super().__init__()
        self.status = status
        self.message = message

    def render(self, request: Request) -> bytes:
        return send_error(request, self.status, self.message)


def _loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.removeprefix("::ffff:"))
    except ValueError:
        return False
    return address.is_loopback


class Root(JSONResource):
    """Checks the client, then hands the request to the resource named by its first path segment."""

    def __init__(self, children: Mapping[bytes, IResource], token: str, public: frozenset[bytes] = frozenset()) -> None:
        super().__init__()
        self.token = token.encode("utf-8")
        self.public = public
        for name, child in children.items():
            self.putChild(name, child)

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        refusal = None if path in self.public else self._refusal(request)
        if refusal is not None:
            log.info("http: refused {client}: {why}", client=_client(request), why=refusal.message)
            return ErrorPage(refusal.status, refusal.message)
        content = request.content
        if content is not None and content.seek(0, 2) > MAX_BODY:
            return ErrorPage(413, f"the body is larger than {MAX_BODY} bytes")
        return super().getChildWithDefault(path, request)

    def _refusal(self, request: Request) -> HTTPError | None:
        if _loopback(_client(request)):
            return None
        if not self.token:
            return HTTPError(403, "only loopback clients may use this API (set http.token to allow others)")
        given = b""
        authorization = request.getHeader(b"authorization") or b""
        if authorization.lower().startswith(b"bearer "):
            given = authorization[7:].strip()
        elif b"token" in request.args:
            given = request.args[b"token"][0]
        if not given:
            return HTTPError(401, "a token is required: Authorization: Bearer <token>")
        if not hmac.compare_digest(given, self.token):
            return HTTPError(403, "wrong token")
        return None

def _client(request: Request) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", ""))


class _Site(Site):
    def log(self, request: Any) -> None:  # one line per request, through the structured log
        # a scrape or health probe every few seconds is not news: debug, unless it failed
        level = LogLevel.debug if request.path in _POLLED and request.code < 400 else LogLevel.info
        log.emit(level, "http: {client} {method} {path} {status}", client=_client(request),
                 method=request.method.decode("ascii", "replace"),
                 path=request.path.decode("ascii", "replace")[:200], status=request.code)


_POLLED = frozenset({b"/metrics", b"/healthz"})


def build_site(children: Mapping[bytes, IResource], token: str, public: frozenset[bytes] = frozenset()) -> Site:
    """The site for ``[listen] http``: *children* by their first path segment (``b""`` is ``/``);
    those named in *public* are for anyone, the others as the module docstring says."""
    site = _Site(Root(children, token, public), timeout=IDLE_TIMEOUT)
    site.displayTracebacks = False
    site.noisy = False
    return site
