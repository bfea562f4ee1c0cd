"""Sending one message as a POP3 multi-line response, in bulk and in chunks.

RFC 1939 §3: a multi-line response is CRLF-terminated lines; a line that
starts with ``.`` gets one more ``.`` (byte-stuffing) and the response ends
with ``.CRLF``. RFC 1939 §7 TOP: the headers, the blank line, then the first
``n`` lines of the body.

:class:`WireEncoder` turns raw file chunks into wire bytes with ``bytes``
operations over whole chunks (``replace``, ``find``, ``count``), never a
Python loop per line. Bare LF line ends (files written by other tools) are
sent as CRLF; a chunk never ends in the middle of a CRLF because a trailing
CR is held back for the next chunk. :class:`MessageSender` is a pull producer
that reads the file in 64 KiB chunks as the transport drains, so a 30 MB
message never sits in memory whole.
"""

from __future__ import annotations

from typing import IO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPullProducer
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

CHUNK = 64 * 1024
TERMINATOR = b".\r\n"


class WireEncoder:
    """Raw message bytes -> POP3 wire bytes, optionally cut as TOP asks."""

    def __init__(self, body_lines: int | None = None) -> None:
        self.body_lines = body_lines
        self.done = False  # TOP has all it needs; read no further
        self._in_headers = body_lines is not None
        self._window = b"\r\n"  # so a message starting with CRLF has empty headers
        self._carry = b""
        self._line_start = True

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return b""
        data = self._carry + chunk
        self._carry = b""
        if data.endswith(b"\r"):
            data, self._carry = data[:-1], b"\r"
        return self._stuff(self._cut(_crlf(data)))

    def finish(self) -> bytes:
        """The rest of the response: a held CR, a final CRLF if missing, and ``.CRLF``."""
        tail = b""
        if self._carry and not self.done:
            tail = self._stuff(self._cut(self._carry + b"\n"))
            self._carry = b""
        if not self._line_start:
            tail += b"\r\n"
        return tail + TERMINATOR

    def _cut(self, data: bytes) -> bytes:
        if self.body_lines is None or not data:
            return data
        head = b""
        if self._in_headers:
            search = self._window + data
            idx = search.find(b"\r\n\r\n")
            if idx < 0:
                self._window = search[-2:]
                return data
            end = idx + 4 - len(self._window)
            head, data = data[:end], data[end:]
            self._in_headers = False
        return head + self._body_part(data)

    def _body_part(self, data: bytes) -> bytes:
        left = self.body_lines or 0
        if left == 0:
            self.done = True
            return b""
        if data.count(b"\n") < left:
            self.body_lines = left - data.count(b"\n")
            return data
        pos = -1
        for _ in range(left):
            pos = data.find(b"\n", pos + 1)
        self.body_lines = 0
        self.done = True
        return data[: pos + 1]

    def _stuff(self, data: bytes) -> bytes:
        if not data:
            return data
        if self._line_start and data[:1] == b".":
            data = b"." + data
        data = data.replace(b"\n.", b"\n..")
        self._line_start = data.endswith(b"\n")
        return data


def _crlf(data: bytes) -> bytes:
    """Make every line end CRLF (only when some bare LF is present)."""
    lf = data.count(b"\n")
    if lf and lf != data.count(b"\r\n"):
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data


def encode_whole(content: bytes, body_lines: int | None = None) -> bytes:
    """A whole (small) message as wire bytes, terminator included."""
    encoder = WireEncoder(body_lines)
    return encoder.feed(content) + encoder.finish()


@implementer(IPullProducer)
class MessageSender:
    """Streams one open message file to a consumer; ``start()`` fires when all is written."""

    def __init__(self, file: IO[bytes], encoder: WireEncoder, consumer: IConsumer) -> None:
        self.file = file
        self.encoder = encoder
        self.consumer = consumer
        self.finished: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        self.consumer.registerProducer(self, False)
        return self.finished

    def resumeProducing(self) -> None:
        if self.finished.called:
            return
        try:
            chunk = b"" if self.encoder.done else self.file.read(CHUNK)
        except OSError as e:
            self._stop(e)
            return
        if chunk:
            out = self.encoder.feed(chunk)
            if out:
                self.consumer.write(out)
            if not self.encoder.done:
                return
        self.consumer.write(self.encoder.finish())
        self._stop(None)

    def pauseProducing(self) -> None:  # pull producers are not paused
        pass

    def stopProducing(self) -> None:
        """The transport is going away: it drops us itself, so only clean up."""
        self._stop(ConnectionError("connection lost while sending a message"), unregister=False)

    def _stop(self, error: BaseException | None, *, unregister: bool = True) -> None:
        if self.finished.called:
            return
        self.file.close()
        if unregister:
            self.consumer.unregisterProducer()
        if error is None:
            self.finished.callback(None)
        else:
            self.finished.errback(error)


