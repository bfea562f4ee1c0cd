"""Helpers shared by the SMTP benchmark: ports, server processes, messages, Maildir checks.

Nothing here imports mailstack: the load generator stays a plain client, and the
servers it measures run in their own processes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

CRLF = b"\r\n"

_WORDS = (
    "the queue runner hands each accepted message to the delivery agent which writes it "
    "into a uniquely named file under tmp then renames it into new after an fsync so that "
    "a crash never leaves half a message behind please find attached the minutes of "
    "yesterday's meeting along with the revised schedule for the migration of the mail "
    "servers to the new rack we expect about two hours of degraded service on saturday "
    "morning and will send a reminder the evening before thanks for your patience regards"
).split()


# -- ports and processes ------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until *port* accepts connections; raise if *proc* exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                # read the greeting and leave politely, so the probe is a clean session
                s.settimeout(2.0)
                try:
                    s.recv(512)
                    s.sendall(b"QUIT\r\n")
                    s.recv(512)
                except OSError:
                    pass
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on {host}:{port} within {timeout:.0f}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> tuple[int | None, float]:
    """SIGTERM *proc*, wait for it; SIGKILL it (this one pid only) if it hangs.

    Returns (exit status or None if it had to be killed, seconds it took to stop).
    """
    start = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        status: int | None = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        status = None
    return status, time.monotonic() - start


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by *pid* and its reaped children (Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return float("nan")
    fields_ = stat[stat.rindex(b")") + 2 :].split()
    # fields after "(comm) ": state=0 ... utime=11 stime=12 cutime=13 cstime=14
    ticks = sum(int(fields_[i]) for i in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


def log_problems(path: Path, limit: int = 60) -> list[str]:
    """Lines of a server log that look like trouble, with tracebacks kept whole."""
    interesting = re.compile(
        r"Traceback|Unhandled|\bcritical\b|#critical|#error|#warn|\bERROR\b|Exception|Error:|failed|refused",
        re.IGNORECASE,
    )
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    out: list[str] = []
    in_traceback = False
    for line in lines:
        if interesting.search(line):
            out.append(line)
            in_traceback = "Traceback" in line
        elif in_traceback and (line.startswith((" ", "\t")) or re.match(r"^\w[\w.]*(Error|Exception)\b", line)):
            out.append(line)
        else:
            in_traceback = False
        if len(out) >= limit:
            out.append(f"... (more in {path})")
            break
    return out


# -- messages ----------------------------------------------------------------------------


def message_id(run: str, session: int, seq: int) -> bytes:
    """Fixed-width unique Message-ID, so every message has the same size."""
    return b"<%s.%03d.%06d@bench.test>" % (run.encode(), session, seq)


def build_message(size: int, *, sender: str, recipient: str, mid_width: int,
                  line_length: int = 72) -> tuple[bytes, bytes]:
    """(prefix, rest) of a realistic message of exactly *size* octets once a Message-ID is inserted.

    The caller sends ``prefix + b"Message-ID: " + mid + CRLF + rest``; *rest* ends in the
    end-of-data ``CRLF . CRLF`` (not counted in *size*). Body lines are at most
    *line_length* characters (default 72; RFC 5322 asks for at most 78, RFC 5321
    allows 998), never start with ".", and every line ends in CRLF.
    """
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    prefix = (
        f"From: Bench Sender <{sender}>\r\n"
        f"To: Bench User <{recipient}>\r\n"
        f"Subject: Load test message: migration schedule and meeting minutes\r\n"
        f"Date: {date}\r\n"
    ).encode()
    headers_after = (
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n"
        b"User-Agent: smtp_bench\r\n"
        b"\r\n"
    )
    fixed = len(prefix) + len(b"Message-ID: ") + mid_width + 2 + len(headers_after)
    body_len = size - fixed
    if body_len < 2:
        raise ValueError(f"--size must be at least {fixed + 2} octets")
    if not 20 <= line_length <= 998:
        raise ValueError("line length must be 20..998")
    lines: list[bytes] = []
    total = 0
    line: list[str] = []
    i = 0
    while total < body_len:
        word = _WORDS[i % len(_WORDS)]
        i += 1
        if len(" ".join(line + [word])) > line_length:
            text = " ".join(line).encode() + CRLF
            lines.append(text)
            total += len(text)
            line = []
        line.append(word)
    text = b"".join(lines)[: body_len - 2]
    if text.endswith(b"\r"):  # the cut split a CRLF: end that line one character earlier
        text = text[:-2] + CRLF
    body = text + CRLF
    assert len(body) == body_len, (len(body), body_len)
    assert all(len(l) <= line_length and not l.startswith(b".") for l in body.split(CRLF)[:-1])
    assert b"\r" not in body.replace(CRLF, b"") and b"\n" not in body.replace(CRLF, b"")
    rest = headers_after + body + b".\r\n"
    return prefix, rest


# -- Maildir verification ------------------------------------------------------------------


@dataclass
class Verification:
    files: int = 0  # files in new/
    tmp_left: int = 0  # files left in tmp/
    missing: list[str] = field(default_factory=list)  # acknowledged with 250, not on disk
    duplicated: dict[str, int] = field(default_factory=dict)  # on disk more than once
    unacknowledged: list[str] = field(default_factory=list)  # on disk without a 250 seen
    unreadable: int = 0  # files without a bench Message-ID
    size_mismatch: int = 0  # files that do not contain the message exactly
    queued: int = 0  # files left in the server's queue directory (informational)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.tmp_left or self.unreadable or self.size_mismatch)

    def summary(self) -> str:
        parts = [f"{self.files} files in new/"]
        if self.missing:
            parts.append(f"{len(self.missing)} acknowledged but MISSING (e.g. {self.missing[:3]})")
        if self.duplicated:
            ex = list(self.duplicated.items())[:3]
            parts.append(f"{len(self.duplicated)} DUPLICATED (e.g. {ex})")
        if self.unacknowledged:
            parts.append(f"{len(self.unacknowledged)} delivered without a 250 seen (e.g. {self.unacknowledged[:3]})")
        if self.tmp_left:
            parts.append(f"{self.tmp_left} files LEFT in tmp/")
        if self.unreadable:
            parts.append(f"{self.unreadable} files without a bench Message-ID")
        if self.size_mismatch:
            parts.append(f"{self.size_mismatch} files whose content does not end with the sent body")
        if self.queued:
            parts.append(f"{self.queued} files left in the queue directory")
        return "; ".join(parts)


_MID = re.compile(rb"^Message-ID: (<[^>\r\n]+>)\r?$", re.MULTILINE | re.IGNORECASE)


def verify_maildir(maildir: Path, acknowledged: set[str], expected_tail: bytes,
                   queue: Path | None = None) -> Verification:
    """Check that every acknowledged Message-ID is in ``maildir/new`` exactly once.

    *expected_tail* is the end of the message as sent (without the end-of-data dot
    line): every file must end with it, so a truncated or altered copy is caught.
    """
    v = Verification()
    seen: Counter[str] = Counter()
    new = maildir / "new"
    tmp = maildir / "tmp"
    names = os.listdir(new) if new.is_dir() else []
    v.files = len(names)
    v.tmp_left = len(os.listdir(tmp)) if tmp.is_dir() else 0
    for name in names:
        with open(new / name, "rb") as f:
            data = f.read()
        m = _MID.search(data)
        if not m:
            v.unreadable += 1
            continue
        seen[m.group(1).decode()] += 1
        if not data.endswith(expected_tail):
            v.size_mismatch += 1
    if queue is not None and queue.is_dir():
        v.queued = sum(len(files) for _, _, files in os.walk(queue))
    v.duplicated = {k: n for k, n in seen.items() if n > 1}
    v.missing = sorted(acknowledged - seen.keys())
    v.unacknowledged = sorted(seen.keys() - acknowledged)
    return v
