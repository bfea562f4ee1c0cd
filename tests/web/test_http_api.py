"""The HTTP site as a client sees it: who may ask, the capture API, its event stream, the failure rules."""

from __future__ import annotations

import http.client
import io
import json
import re
import smtplib
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from mailstack.embedded import MailServer
from mailstack.web import ErrorPage, Root, build_site
from mailstack.web.capture import CaptureAPI


@pytest.fixture(scope="module")
def mail() -> Iterator[MailServer]:
    with MailServer(settings={"http": {"faults_api": True}}) as server:
        yield server


@pytest.fixture(autouse=True)
def empty(mail: MailServer) -> None:
    call(mail, "DELETE", "/api/v1/messages")
    call(mail, "DELETE", "/api/v1/faults")


def call(mail: MailServer, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(*mail.http, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def get_json(mail: MailServer, path: str) -> Any:
    status, _, body = call(mail, "GET", path)
    assert status == 200, body
    return json.loads(body)


def send(mail: MailServer, to: str, subject: str, body: str = "hello", extra: str = "") -> None:
    with smtplib.SMTP(*mail.smtp, timeout=10) as smtp:
        smtp.sendmail("app@example.org", [to], f"From: App <app@example.org>\r\nTo: {to}\r\nSubject: {subject}\r\n"
                      f"{extra}\r\n{body}\r\n".encode())


def captured(mail: MailServer, count: int, query: str = "") -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        found = get_json(mail, f"/api/v1/messages{query}")
        if found["total"] >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_listing_filters_and_newest_first(mail: MailServer) -> None:
    send(mail, "ann@one.example", "first invoice")
    send(mail, "bob@two.example", "second reminder")
    found = captured(mail, 2)
    assert [m["subject"] for m in found["messages"]] == ["second reminder", "first invoice"]
    assert [m["subject"] for m in get_json(mail, "/api/v1/messages?to=ANN@one")["messages"]] == ["first invoice"]
    assert get_json(mail, "/api/v1/messages?subject=REMIND")["total"] == 1
    assert get_json(mail, "/api/v1/messages?from=app@example.org&limit=1") == {
        "total": 2, "messages": found["messages"][:1]}
    assert get_json(mail, "/api/v1/messages?since=2999-01-01T00:00:00Z")["total"] == 0
    assert get_json(mail, f"/api/v1/messages?since={int(time.time()) - 60}")["total"] == 2


def test_one_message_its_parts_and_its_deletion(mail: MailServer) -> None:
    send(mail, "ann@one.example", "with html", extra="MIME-Version: 1.0\r\nContent-Type: text/html\r\n",
         body="<p onclick=x()>Hi</p><script>parent.hacked=1</script><img src=http://127.0.0.1:9/x.png>")
    [summary] = captured(mail, 1)["messages"]
    detail = get_json(mail, f"/api/v1/messages/{summary['id']}")
    assert detail["html"] is True and detail["text"] is None
    assert ["Subject", "with html"] in detail["headers"]
    status, headers, body = call(mail, "GET", f"/api/v1/messages/{summary['id']}/html")
    assert status == 200 and body.startswith(b"<p onclick=x()>Hi</p>")
    policy = headers["content-security-policy"]
    assert policy.startswith("sandbox;") and "default-src 'none'" in policy and "script" not in policy
    status, headers, body = call(mail, "GET", f"/api/v1/messages/{summary['id']}/raw")
    assert status == 200 and b"X-Original-To: ann@one.example\r\n" in body
    assert headers["x-content-type-options"] == "nosniff"
    assert call(mail, "GET", f"/api/v1/messages/{summary['id']}/attachments/0")[0] == 404
    assert call(mail, "DELETE", f"/api/v1/messages/{summary['id']}")[0] == 204
    status, _, body = call(mail, "DELETE", f"/api/v1/messages/{summary['id']}")
    assert (status, json.loads(body)) == (404, {"error": f"no message {summary['id']}"})
    assert get_json(mail, "/api/v1/messages")["total"] == 0


def test_an_attachment_is_a_download(mail: MailServer) -> None:
    send(mail, "ann@one.example", "attached", extra=(
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n'),
        body=('--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: text/html\r\n'
              'Content-Disposition: attachment; filename="../../evil\\".html"\r\n\r\n<script>x</script>\r\n--b--'))
    [summary] = captured(mail, 1)["messages"]
    [attachment] = get_json(mail, f"/api/v1/messages/{summary['id']}")["attachments"]
    status, headers, body = call(mail, "GET", f"/api/v1/messages/{summary['id']}/attachments/{attachment['index']}")
    assert status == 200 and body == b"<script>x</script>"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-disposition"] == 'attachment; filename=".._.._evil_.html"'


@pytest.mark.parametrize(("method", "path", "status", "error"), [
    ("GET", "/api/v1/messages/99999", 404, "no message 99999"),
    ("GET", "/api/v1/messages/abc", 404, "no message 'abc'"),
    ("GET", "/api/v1/messages/1/nothing", 404, "no such resource"),
    ("GET", "/api/v2/messages", 404, "no such resource"),
    ("GET", "/api/v1/messages?since=yesterday", 400,
     "since: 'yesterday' is neither an ISO 8601 time nor Unix seconds"),
    ("GET", "/api/v1/messages?limit=0", 400, "limit: a number from 1 to 1000"),
    ("PUT", "/api/v1/messages", 405, "PUT is not allowed here (allowed: DELETE, GET, HEAD)"),
    ("GET", "/static/..%2fcapture.py", 404, "no such file"),
    ("GET", "/nothing-here", 404, "no such resource"),
])
def test_bad_requests_get_json_errors(mail: MailServer, method: str, path: str, status: int, error: str) -> None:
    got, headers, body = call(mail, method, path)
    assert (got, json.loads(body)) == (status, {"error": error})
    assert headers["content-type"] == "application/json; charset=utf-8"


def test_the_page_and_its_files_are_served_with_a_strict_policy(mail: MailServer) -> None:
    status, headers, body = call(mail, "GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8" and b"<html" in body
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"


def test_the_event_stream_tells_of_new_and_deleted_messages(mail: MailServer) -> None:
    stream = socket.create_connection(mail.http, timeout=10)
    try:
        stream.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        seen = b""
        while b"retry: 2000" not in seen:
            seen += stream.recv(4096)
        assert b"content-type: text/event-stream" in seen.lower()
        time.sleep(0.2)  # the stream registers once it has looked at the mailbox
        send(mail, "ann@one.example", "streamed")
        while (found := re.search(rb"event: message\ndata: (.*)\n\n", seen)) is None:
            seen += stream.recv(4096)
        summary = json.loads(found.group(1))
        assert summary["subject"] == "streamed"
        call(mail, "DELETE", "/api/v1/messages")
        while b"event: deleted" not in seen:
            seen += stream.recv(4096)
        assert json.dumps({"ids": [summary["id"]]}, separators=(",", ":")).encode() in seen
    finally:
        stream.close()


def test_failure_rules_over_http(mail: MailServer) -> None:
    rule = {"action": "reply", "code": 451, "status": "4.7.0", "text": "not now", "recipient": "carol@*"}
    status, _, body = call(mail, "POST", "/api/v1/faults", json.dumps(rule).encode())
    assert status == 201
    added = json.loads(body)
    assert added["id"] and added["hits"] == 0
    with smtplib.SMTP(*mail.smtp, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("app@example.org")
        assert smtp.rcpt("carol@three.example") == (451, b"4.7.0 not now")
        assert smtp.rcpt("dave@three.example")[0] == 250
    assert get_json(mail, "/api/v1/faults")["rules"][0]["hits"] == 1
    assert call(mail, "DELETE", f"/api/v1/faults/{added['id']}")[0] == 204
    assert call(mail, "DELETE", f"/api/v1/faults/{added['id']}")[0] == 404
    assert get_json(mail, "/api/v1/faults") == {"rules": []}


@pytest.mark.parametrize(("body", "status", "error"), [
    (b"{not json", 400, "malformed JSON"),
    (b"[1, 2]", 400, "rule field rule: expected an object"),
    (b'{"action": "greylist"}', 400, "rule field seconds: a greylist rule needs a number of seconds"),
    (b'{"action": "delay", "seconds": 1, "x": ' + b"1" * 70_000 + b"}", 413, "the body is larger than 65536 bytes"),
])
def test_bad_rules_are_refused_with_the_field_named(mail: MailServer, body: bytes, status: int, error: str) -> None:
    got, _, answer = call(mail, "POST", "/api/v1/faults", body, {"content-type": "application/json"})
    assert got == status
    assert json.loads(answer)["error"].startswith(error)


# -- who may ask -------------------------------------------------------------------------------

def request_from(host: str, headers: dict[bytes, bytes] | None = None, args: dict[bytes, list[bytes]] | None = None
                 ) -> DummyRequest:
    address = IPv6Address("TCP", host, 40000) if ":" in host else IPv4Address("TCP", host, 40000)
    request = DummyRequest([b"api"])
    request.getClientAddress = lambda: address  # type: ignore[method-assign]
    request.content = io.BytesIO()
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    request.args = args or {}
    return request


def decide(root: Root, request: DummyRequest) -> Any:
    return root.getChildWithDefault(b"api", request)


def test_loopback_is_served_without_a_token() -> None:
    root = Root({b"api": ErrorPage(200, "here")}, token="")
    assert decide(root, request_from("127.0.0.1")).message == "here"
    assert decide(root, request_from("::1")).message == "here"


def test_others_are_refused_without_a_configured_token() -> None:
    root = Root({b"api": ErrorPage(200, "here")}, token="")
    refused = decide(root, request_from("192.0.2.7"))
    assert (refused.status, refused.message) == (
        403, "only loopback clients may use this API (set http.token to allow others)")


def test_others_need_the_right_token() -> None:
    root = Root({b"api": ErrorPage(200, "here")}, token="s3cret")
    assert decide(root, request_from("192.0.2.7")).status == 401
    assert decide(root, request_from("192.0.2.7", {b"authorization": b"Bearer wrong"})).status == 403
    assert decide(root, request_from("192.0.2.7", {b"authorization": b"Bearer s3cret"})).message == "here"
    assert decide(root, request_from("192.0.2.7", args={b"token": [b"s3cret"]})).message == "here"
    assert decide(root, request_from("::ffff:192.0.2.7", {b"authorization": b"bearer s3cret"})).message == "here"


def test_build_site_hides_tracebacks() -> None:
    site = build_site({}, token="")
    assert site.displayTracebacks is False


class _Box:
    """Just enough of a CaptureBox for the event streams."""

    async def messages(self) -> list:
        return []

    def subscribe(self, callback: Any) -> Any:
        return lambda: None


def test_an_event_stream_whose_client_stops_reading_is_closed_not_buffered_for_ever() -> None:
    api = CaptureAPI(_Box(), io=None, clock=Clock())  # type: ignore[arg-type]
    reading, stuck = DummyRequest([b""]), DummyRequest([b""])
    for request in (reading, stuck):
        request.loseConnection = lambda request=request: request.written.append(b"<closed>")
        # DummyRequest drives every producer as a pull producer, in a loop until it unregisters:
        # a transport only keeps a push producer and calls it when its buffer fills or drains
        request.registerProducer = lambda producer, streaming, request=request: setattr(
            request, "producer", producer
        )
        assert Deferred.fromCoroutine(api.open_stream(request)).called
    stuck.producer.pauseProducing()
    api._broadcast("message", {"id": "1"})
    assert reading.written[-1] == b'event: message\ndata: {"id":"1"}\n\n'
    assert stuck.written[-1] == b"<closed>" and stuck not in api.streams
    reading.producer.pauseProducing()
    reading.producer.resumeProducing()  # it caught up: it stays
    api._broadcast("deleted", {"ids": ["1"]})
    assert reading.written[-1].startswith(b"event: deleted") and api.streams == [reading]


def test_the_public_resources_are_served_to_anyone_and_the_others_still_need_the_token() -> None:
    root = Root({b"api": ErrorPage(200, "here"), b".well-known": ErrorPage(200, "policy")}, token="s3cret",
                public=frozenset({b".well-known"}))
    outsider = request_from("192.0.2.7")
    assert root.getChildWithDefault(b".well-known", outsider).message == "policy"
    assert decide(root, request_from("192.0.2.7")).status == 401
