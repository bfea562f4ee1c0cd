"""The capture page (``/`` of ``[listen] http``) in a real headless Chromium.

The browser is driven over the DevTools protocol on a pipe (``tests/e2e/tools/cdp.py``); the
mail server is :class:`~mailstack.embedded.MailServer` in capture mode, and mail for an outside
domain sent to it over SMTP is what the page lists. Skipped where no Chromium is installed
(Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import json
import smtplib
import threading
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mailstack.embedded import MailServer
from tests.e2e.tools.cdp import Browser, find_chromium

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary found (Debian package: chromium; "
                                                          "or set $CHROMIUM to one)")
TOKEN = "page-token"
LIVE = "document.documentElement.dataset.state === 'live'"
ROWS = "document.querySelectorAll('#messages li')"


class Recorder(ThreadingHTTPServer):
    """An HTTP server on loopback that answers every GET with a tiny image and notes its path."""

    daemon_threads = True

    def __init__(self) -> None:
        self.hits: list[str] = []
        super().__init__(("127.0.0.1", 0), _RecordingHandler)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _RecordingHandler(BaseHTTPRequestHandler):
    server: Recorder
    GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        self.send_response(200)
        self.send_header("content-type", "image/gif")
        self.send_header("access-control-allow-origin", "*")
        self.send_header("content-length", str(len(self.GIF)))
        self.end_headers()
        self.wfile.write(self.GIF)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def mail() -> Iterator[MailServer]:
    with MailServer(settings={"relay": {"capture": True}, "listen": {"http": "127.0.0.1:0"},
                              "http": {"token": TOKEN}}) as server:
        yield server


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    assert CHROMIUM is not None
    with Browser(CHROMIUM, tmp_path / "profile") as opened:
        yield opened


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, name="recorder", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def page_address(mail: MailServer) -> str:
    return f"http://{mail.http.host}:{mail.http.port}/?token={TOKEN}"


def send(mail: MailServer, message: EmailMessage) -> None:
    with smtplib.SMTP(*mail.smtp) as client:
        client.send_message(message)


def message(subject: str, text: str, html: str | None = None) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "Shop <orders@shop.example>"
    m["To"] = "Customer <customer@elsewhere.example>"
    m["Subject"] = subject
    m.set_content(text)
    if html is not None:
        m.add_alternative(html, subtype="html")
    return m


def open_first(browser: Browser, subject: str) -> None:
    browser.wait_for(f"{ROWS}.length === 1 && {ROWS}[0].querySelector('.subject').textContent === {json.dumps(subject)}",
                     "the message in the list")
    browser.evaluate(f"{ROWS}[0].querySelector('a').click()")
    browser.wait_for(f"!document.getElementById('view').hidden && "
                     f"document.getElementById('subject').textContent === {json.dumps(subject)}", "the message's view")


def test_a_message_appears_live_opens_and_vanishes_when_deleted(mail: MailServer, browser: Browser,
                                                                 tmp_path: Path) -> None:
    browser.navigate(page_address(mail))
    browser.wait_for(f"{LIVE} && !document.getElementById('empty').hidden", "the empty list, live")
    browser.evaluate("window.sameDocument = true")  # gone if the page were loaded again

    subject = '<b>Invoice</b> & "receipt" für you'  # markup in the data stays text
    mail_message = message(subject, "Thank you for your order.\nTotal: 42 EUR\n", "<p>Thank you!</p>")
    mail_message.add_attachment(b"%PDF-1.4 not really", maintype="application", subtype="pdf",
                                filename="invoice-42.pdf")
    send(mail, mail_message)  # after the page loaded: it comes by the event stream

    open_first(browser, subject)
    assert browser.evaluate("window.sameDocument") is True
    assert browser.evaluate(f"{ROWS}[0].querySelector('.clip').textContent") == "1"
    assert browser.evaluate("document.querySelector('#messages b, #subject b')") is None
    browser.evaluate("document.getElementById('tab-text').click()")
    text = browser.evaluate("document.getElementById('text').textContent")
    assert text.splitlines() == ["Thank you for your order.", "Total: 42 EUR"]
    summary = browser.evaluate("[...document.querySelectorAll('#summary tr')].map(r => r.textContent)")
    assert "FromShop <orders@shop.example>" in summary
    assert "ToCustomer <customer@elsewhere.example>" in summary
    id = browser.evaluate(f"{ROWS}[0].dataset.id")
    links = browser.evaluate("""({raw: document.getElementById('raw').href,
        html: document.getElementById('html').getAttribute('src'),
        sandbox: document.getElementById('html').getAttribute('sandbox'),
        attachments: [...document.querySelectorAll('#attachments a')].map(a => [a.textContent, a.href])})""")
    assert links["raw"].endswith(f"/api/v1/messages/{id}/raw?token={TOKEN}")
    assert links["html"] == f"/api/v1/messages/{id}/html?token={TOKEN}"
    assert links["sandbox"] == ""
    assert [name for name, _ in links["attachments"]] == ["invoice-42.pdf"]
    assert "/attachments/" in links["attachments"][0][1]

    shot = tmp_path / "capture-page.png"
    browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

    browser.resize(390, 800)  # a phone: one pane at a time
    assert browser.evaluate("document.getElementById('list-pane').offsetParent") is None
    browser.evaluate("document.querySelector('.back').click()")
    browser.wait_for("document.getElementById('list-pane').offsetParent !== null", "the list again")

    request = urllib.request.Request(f"http://{mail.http.host}:{mail.http.port}/api/v1/messages/{id}",
                                     method="DELETE")
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 204
    browser.wait_for(f"{ROWS}.length === 0 && !document.getElementById('empty').hidden", "the row to vanish")
    assert browser.exceptions() == []


def test_html_part_runs_no_script_and_loads_nothing_remote(mail: MailServer, browser: Browser,
                                                           recorder: Recorder) -> None:
    at = recorder.base
    html = f"""<!doctype html><html><head><title>untouched</title>
<link rel="stylesheet" href="{at}/style.css"></head>
<body><h1 id="greeting">Hello from HTML</h1>
<img src="{at}/x.png" alt="a remote image">
<div style="background-image: url({at}/background.png)">styled</div>
<script>
  document.title = "script ran"; window.scriptRan = true;
  try {{ const x = new XMLHttpRequest(); x.open("GET", "{at}/xhr", false); x.send(); }} catch (e) {{}}
  fetch("{at}/fetch"); parent.postMessage("script ran", "*");
</script>
<img src="data:," onerror="document.title = 'handler ran'; new Image().src = '{at}/onerror.png'">
</body></html>"""
    browser.navigate(page_address(mail))
    browser.wait_for(LIVE, "the page, live")
    browser.evaluate("window.addEventListener('message', e => { window.heard = String(e.data); }); true")
    send(mail, message("Newsletter", "The text part.", html))

    open_first(browser, "Newsletter")
    frame = browser.frame("/html")  # loaded: its images were fetched or refused, its sync XHR sent
    assert browser.evaluate("document.getElementById('greeting').textContent", frame) == "Hello from HTML"
    assert browser.evaluate("document.title", frame) == "untouched"
    assert browser.evaluate("typeof window.scriptRan", frame) == "undefined"
    assert browser.evaluate("typeof window.heard") == "undefined"
    assert recorder.hits == []
    assert browser.exceptions() == []

    browser.navigate(f"{at}/control")  # the browser can reach the recorder: nothing above was blocked by chance
    assert "/control" in recorder.hits
