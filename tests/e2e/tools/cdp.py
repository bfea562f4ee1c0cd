"""A small Chrome DevTools Protocol client for the browser tests: headless Chromium over a pipe.

Chromium is started with ``--remote-debugging-pipe``: it reads commands (JSON, each ended
by a NUL byte) on its fd 3 and writes answers and events on its fd 4, so no port is opened
and only the standard library is needed. One :class:`Browser` has one page; frames of
another origin that Chromium runs apart (a sandboxed iframe) are attached as they appear,
so that :meth:`Browser.evaluate` can run in them too.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

# What a test browser on a machine with no network needs (no update checks, no sign-in, no
# background requests that the closed network would refuse), headless and as root.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-extensions", "--disable-default-apps", "--mute-audio",
         "--disable-dev-shm-usage", "--remote-debugging-pipe")


_PLACE_FDS = """
import fcntl, os, sys
given = [int(sys.argv[1]), int(sys.argv[2])]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in given]  # out of the way of 3 and 4 first
for fd in given + high:
    if fd > 4 and fd not in high:
        os.close(fd)
os.dup2(high[0], 3)
os.dup2(high[1], 4)
for fd in high:
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""


class CDPError(Exception):
    pass


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) binary: $CHROMIUM, else the first found on $PATH."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """Headless Chromium with one page; every call waits for its answer (at most *timeout* s)."""

    def __init__(self, executable: str, profile: Path, *, width: int = 1200, height: int = 800,
                 timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self._buffer = b""
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # a small Python step puts the pipes at the fds Chromium reads and writes (3 and 4), then execs it
        self._process = subprocess.Popen(
            [sys.executable, "-c", _PLACE_FDS, str(to_browser_r), str(from_browser_w), executable, *FLAGS,
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.frames: dict[str, str] = {}  # target id -> session id of the frames run in another process
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime"):
                self.call(f"{domain}.enable", session=self.session)
            self.call("Target.setAutoAttach", session=self.session, autoAttach=True,
                      waitForDebuggerOnStart=False, flatten=True)
            self.resize(width, height)
        except BaseException:
            self.close()
            raise

    # -- the protocol -------------------------------------------------------------------

    def call(self, method: str, session: str | None = None, wait: float | None = None,
             **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer (*wait* s, else the browser's timeout); events
        that come meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (wait or self.timeout)
        while True:
            answer = self._read(deadline, method)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise CDPError(f"{method}: {answer['error'].get('message')}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            self._event(answer)

    def _read(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise CDPError(f"{waiting_for}: no answer from the browser in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise CDPError(f"{waiting_for}: the browser closed its pipe (exit code {self._process.poll()})")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message: dict[str, Any] = json.loads(raw)
        return message

    def _event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        params = event.get("params", {})
        if event.get("method") == "Target.attachedToTarget" and params["targetInfo"]["type"] == "iframe":
            self.frames[params["targetInfo"]["targetId"]] = params["sessionId"]
        elif event.get("method") == "Target.detachedFromTarget":
            self.frames = {k: v for k, v in self.frames.items() if v != params.get("sessionId")}

    # -- the page -----------------------------------------------------------------------

    def evaluate(self, expression: str, where: dict[str, Any] | None = None, wait: float | None = None) -> Any:
        """The value of a JavaScript expression (a promise is awaited) in the page, or *where* a
        :meth:`frame` is."""
        where = where or {"session": self.session}
        result = self.call("Runtime.evaluate", wait=wait, expression=expression, returnByValue=True,
                           awaitPromise=True, **where)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError(f"{expression[:80]!r}: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 5.0, where: dict[str, Any] | None = None) -> Any:
        """Wait (in the browser, looking every 25 ms) until *expression* is truthy; its value."""
        poll = f"""new Promise((resolve, reject) => {{
            const end = performance.now() + {timeout * 1000};
            (function poll() {{
                let value;
                try {{ value = ({expression}); }} catch (e) {{ value = undefined; }}
                if (value) resolve(value);
                else if (performance.now() > end) reject(new Error("timed out"));
                else setTimeout(poll, 25);
            }})();
        }})"""
        try:
            return self.evaluate(poll, where, wait=timeout + self.timeout)
        except CDPError as e:
            raise AssertionError(f"waited {timeout:g} s for {what}: {e}") from None

    def frame(self, address_part: str, timeout: float = 5.0) -> dict[str, Any]:
        """Where to evaluate in the loaded frame whose address holds *address_part*: the frame's own
        session when Chromium runs it in another process, else an isolated world of it in the page's."""
        deadline = time.monotonic() + timeout
        while True:
            places = [{"session": session} for session in list(self.frames.values())]
            tree = self.call("Page.getFrameTree", session=self.session)["frameTree"]
            for child in tree.get("childFrames", []):
                if address_part in child["frame"]["url"]:
                    world = self.call("Page.createIsolatedWorld", session=self.session, frameId=child["frame"]["id"])
                    places.append({"session": self.session, "contextId": world["executionContextId"]})
            for where in places:
                try:
                    if self.evaluate(f"document.readyState === 'complete' && location.href.includes("
                                     f"{json.dumps(address_part)})", where):
                        return where
                except CDPError:  # a frame that went away meanwhile
                    continue
            if time.monotonic() > deadline:
                raise AssertionError(f"no frame of {address_part!r} loaded within {timeout:g} s")
            self.evaluate("new Promise(resolve => setTimeout(resolve, 25))")  # events come in meanwhile

    def navigate(self, url: str) -> None:
        """Load *url* in the page and wait for its load event."""
        self.evaluate("window.leftBehind = true")  # a mark on the old document, gone with it
        answer = self.call("Page.navigate", session=self.session, url=url)
        if answer.get("errorText"):
            raise CDPError(f"loading {url}: {answer['errorText']}")
        self.wait_for("!window.leftBehind && document.readyState === 'complete'", f"{url} to load")

    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", session=self.session, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", session=self.session, format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def exceptions(self) -> list[str]:
        """The uncaught exceptions the page (not its frames) reported so far."""
        return [e["params"]["exceptionDetails"].get("exception", {}).get("description", str(e["params"]))
                for e in self.events if e.get("method") == "Runtime.exceptionThrown"
                and e.get("sessionId") == self.session]

    def close(self) -> None:
        try:
            os.write(self._to_browser, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        except OSError:
            pass
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
