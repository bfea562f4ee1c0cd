"""A durable aiosmtpd server to compare mailstack against: same disk, same Maildir promise.

    python bench/aiosmtpd_peer.py --port 2526 --maildirs /tmp/x/maildirs --domain bench.test --user user

Accepts mail for ``<user>@<domain>`` (550 for anything else) and, before the 250
to the end of DATA, writes each message into ``<maildirs>/<domain>/<user>/`` the
Maildir way (https://cr.yp.to/proto/maildir.html): a uniquely named file in tmp/,
written and fsynced, renamed into new/, then new/ itself fsynced, so a 250 means
the message survives a crash, as mailstack promises. The file work runs on a
thread pool (``run_in_executor``) so the event loop keeps serving other sessions
while a delivery waits on the disk. Like mailstack, each file starts with
Return-Path and Delivered-To and then holds the message exactly as received.

Prints ``ready <host>:<port>`` once listening; stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


class MaildirWriter:
    """Blocking, durable Maildir delivery; safe to call from many threads."""

    def __init__(self, maildir: Path, hostname: str) -> None:
        self.maildir = maildir
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.tmp = str(maildir / "tmp")
        self.new = str(maildir / "new")
        self.host = hostname.replace("/", "\\057").replace(":", "\\072")
        self.pid = os.getpid()
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def _unique(self) -> str:
        with self._lock:
            seq = next(self._seq)
        now = time.time()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        return f"{sec}.M{usec}P{self.pid}Q{seq}.{self.host}"

    def deliver(self, prefix: bytes, message: bytes) -> str:
        name = self._unique()
        tmp_path = os.path.join(self.tmp, name)
        fd = os.open(tmp_path, _FLAGS, 0o600)
        try:
            try:
                view = memoryview(prefix + message)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            new_path = os.path.join(self.new, f"{name},S={len(prefix) + len(message)}")
            os.rename(tmp_path, new_path)
        except BaseException:
            try:
                os.unlink(tmp_path)
            except OSError:
                pass
            raise
        dfd = os.open(self.new, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return new_path


class MaildirHandler:
    def __init__(self, writer: MaildirWriter, mailbox: str, executor: ThreadPoolExecutor) -> None:
        self.writer = writer
        self.mailbox = mailbox.lower()
        self.executor = executor
        self.delivered = 0
        self.failed = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.lower() != self.mailbox:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content
        assert isinstance(content, bytes)
        prefix = (f"Return-Path: <{envelope.mail_from or ''}>\r\n"
                  f"Delivered-To: {self.mailbox}\r\n").encode()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.executor, self.writer.deliver, prefix, content)
        except OSError as e:
            self.failed += 1
            print(f"delivery failed: {e}", file=sys.stderr, flush=True)
            return "451 4.3.0 Local delivery failed, try again later"
        self.delivered += 1
        return "250 2.0.0 OK: message delivered"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--maildirs", type=Path, required=True, help="root: <maildirs>/<domain>/<user>/")
    p.add_argument("--domain", default="bench.test")
    p.add_argument("--user", default="user")
    p.add_argument("--hostname", default="peer.bench.test")
    p.add_argument("--threads", type=int, default=32, help="file-work thread pool size")
    args = p.parse_args(argv)

    maildir = args.maildirs / args.domain / args.user
    writer = MaildirWriter(maildir, args.hostname)
    executor = ThreadPoolExecutor(max_workers=args.threads, thread_name_prefix="maildir")
    handler = MaildirHandler(writer, f"{args.user}@{args.domain}", executor)
    controller = Controller(
        handler,
        hostname=args.host,
        port=args.port,
        server_hostname=args.hostname,
        ident="aiosmtpd_peer",
        decode_data=False,
        enable_SMTPUTF8=True,
        data_size_limit=36700160,
    )

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    controller.start()
    print(f"ready {args.host}:{args.port} pid {os.getpid()}", flush=True)
    stop.wait()
    controller.stop()
    executor.shutdown(wait=True)
    print(f"stopped: {handler.delivered} delivered, delivery errors: {handler.failed}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
