"""The IMAP extensions side by side with an independent implementation: the same commands
to mailstack and to Dovecot (a throwaway instance on a free loopback port), and the same
answers expected from both, compared by meaning (UIDs, flags, orders, thread trees, decoded
content), not by bytes: mod-sequence numbers, UIDVALIDITY and response texts are each
server's own.

SORT, SORT=DISPLAY, THREAD=ORDEREDSUBJECT/REFERENCES, ESEARCH, CONDSTORE and QRESYNC
(HIGHESTMODSEQ, CHANGEDSINCE, UNCHANGEDSINCE and MODIFIED, SEARCH MODSEQ, VANISHED, SELECT
(QRESYNC) with known UIDs and a sample), BINARY, MULTIAPPEND and CATENATE. Skipped where
Dovecot is not installed (Debian: dovecot-imapd; CI installs it).
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.imap.harness import PASSWORD, USER, World

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from common import free_port  # noqa: E402
from dovecot_peer import Dovecot  # noqa: E402

pytestmark = pytest.mark.skipif(not Dovecot.available(), reason="dovecot not installed (apt-get install dovecot-imapd)")

_LITERAL = re.compile(rb"~?\{(\d+)\+?\}\r\n$")


def split_answer(raw: bytes, tag: bytes) -> tuple[list[bytes], bytes] | None:
    """(untagged responses with literals inlined, tagged line) of a complete answer; None if
    ``raw`` does not hold all of it yet."""
    out: list[bytes] = []
    pos = 0
    current = b""
    while True:
        end = raw.find(b"\r\n", pos)
        if end < 0:
            return None
        line = raw[pos:end + 2]
        pos = end + 2
        m = _LITERAL.search(line)
        if m:
            n = int(m.group(1))
            if len(raw) < pos + n:
                return None
            current += line[:m.start()] + raw[pos:pos + n]
            pos += n
            continue
        current += line[:-2]
        if current.startswith(tag + b" "):
            return out, current[len(tag) + 1:]
        out.append(current)
        current = b""


class Peer:
    """A blocking IMAP client on a socket, with the test harness Client's ``cmd``."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.n = 0
        self.buf = b""
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        self.buf = self.buf.split(b"\r\n", 1)[1]

    def cmd(self, command: str | bytes) -> tuple[list[bytes], bytes]:
        self.n += 1
        tag = b"d%d" % self.n
        self.sock.sendall(tag + b" " + (command.encode() if isinstance(command, str) else command) + b"\r\n")
        while True:
            got = split_answer(self.buf, tag)
            if got is not None:
                self.buf = b""
                return got
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("dovecot closed the connection")
            self.buf += data

    def close(self) -> None:
        self.sock.close()


class Local:
    """mailstack's session through the in-memory harness, answers split the same way."""

    def __init__(self, world: World) -> None:
        self.client = world.connect()
        self.n = 0

    def cmd(self, command: str | bytes) -> tuple[list[bytes], bytes]:
        self.n += 1
        tag = b"m%d" % self.n
        raw = self.client.send(tag + b" " + (command.encode() if isinstance(command, str) else command) + b"\r\n")
        got = split_answer(raw, tag)
        assert got is not None, raw
        return got

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    peer = Dovecot(tmp_path_factory.mktemp("dovecot"), free_port(), PASSWORD, scheme="PLAIN")
    for n in range(20):
        peer.add_user(f"user{n}@example.test")
    peer.start()
    yield peer
    peer.stop()


_users = iter(range(20))


@pytest.fixture
def both(dovecot: Dovecot, tmp_path: Path) -> Iterator[Any]:
    """A function making a logged-in session on each server, for a fresh account on each."""
    world = World.create(tmp_path / "maildirs")
    user = f"user{next(_users)}@example.test"
    sessions: list[Any] = []

    def connect() -> tuple[Any, Any]:
        ours, theirs = Local(world), Peer(dovecot.port)
        ok(ours, f"LOGIN {USER} {PASSWORD}")
        ok(theirs, f"LOGIN {user} {PASSWORD}")
        sessions.extend((ours, theirs))
        return ours, theirs

    yield connect
    for s in sessions:
        s.close()


def ok(session: Any, command: str | bytes) -> list[bytes]:
    untagged, tagged = session.cmd(command)
    assert tagged.startswith(b"OK"), (command, untagged, tagged)
    return untagged


def each(pair: tuple[Any, Any], command: str | bytes) -> tuple[list[bytes], list[bytes]]:
    return ok(pair[0], command), ok(pair[1], command)


# -- reading answers by meaning -----------------------------------------------------------------


def numbers(text: bytes) -> list[int]:
    out: list[int] = []
    for part in text.split(b","):
        lo, _, hi = part.partition(b":")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return sorted(out)


def code(lines: list[bytes] | bytes, name: bytes) -> int:
    for line in [lines] if isinstance(lines, bytes) else lines:
        m = re.search(rb"\[" + name + rb" (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise AssertionError((name, lines))


def vanished(lines: list[bytes]) -> list[int]:
    found = [numbers(line.split()[-1]) for line in lines if line.startswith(b"* VANISHED")]
    return sorted(u for group in found for u in group)


def fetched(lines: list[bytes]) -> dict[int, frozenset[bytes]]:
    """UID -> flags (without \\Recent, which two servers need not agree on) of FETCH lines."""
    out = {}
    for line in lines:
        m = re.match(rb"\* \d+ FETCH \((.*)\)$", line, re.S)
        if m:
            uid = re.search(rb"UID (\d+)", m.group(1))
            flags = re.search(rb"FLAGS \(([^)]*)\)", m.group(1))
            assert uid is not None, line
            out[int(uid.group(1))] = frozenset(flags.group(1).split() if flags else []) - {b"\\Recent"}
    return out


def esearch(lines: list[bytes]) -> dict[str, Any]:
    [line] = [x for x in lines if x.startswith(b"* ESEARCH")]
    words = re.sub(rb'^\* ESEARCH \(TAG "[^"]*"\)', b"", line).split()
    out: dict[str, Any] = {}
    i = 0
    while i < len(words):
        key = words[i].decode().upper()
        if key == "UID":
            out["UID"] = True
            i += 1
            continue
        if key == "PARTIAL":  # (range set-or-NIL)
            out[key] = (words[i + 1].lstrip(b"("), words[i + 2].rstrip(b")"))
            i += 3
            continue
        value = words[i + 1]
        out[key] = numbers(value) if key == "ALL" else int(value)
        i += 2
    out.pop("MODSEQ", None)  # each server's own numbers
    return out


def _sorted_esearch(lines: list[bytes]) -> dict[bytes, bytes]:
    """An ESORT answer without its tag: item -> value as written (an ALL set is in sort order)."""
    [line] = [x for x in lines if x.startswith(b"* ESEARCH")]
    words = re.sub(rb'^\* ESEARCH \(TAG "[^"]*"\)', b"", line).split()
    if words and words[0] == b"UID":
        words = words[1:]
    return dict(zip(words[::2], words[1::2], strict=True))


def answer(lines: list[bytes], name: bytes) -> bytes:
    [line] = [x for x in lines if x.startswith(b"* " + name)]
    return re.sub(rb" \(MODSEQ \d+\)$", b"", line)


# -- the scenarios ------------------------------------------------------------------------------

MESSAGES = [
    # (subject, from, to, cc, date, message-id, references, internal date)
    ("Re: Budget", "Zed <zed@example.test>", "bob@example.test", "", "Mon, 23 Nov 2026 10:00:00 +0000",
     "<b2@x>", "<b1@x>", "23-Nov-2026 10:05:00 +0000"),
    ("[team] Budget", "alice@example.test", "Carol <carol@example.test>", "dan@example.test",
     "Mon, 23 Nov 2026 09:00:00 +0000", "<b1@x>", "", "23-Nov-2026 09:05:00 +0000"),
    # an encoded word whose text is ASCII: with non-ASCII display names Dovecot sorts by its
    # I18NLEVEL=1 collation (RFC 5255), this server by i;ascii-casemap (RFC 5256 §3)
    ("Agenda", "=?utf-8?q?Emile_M?= <emile@example.test>", "amy@example.test", "",
     "Sun, 22 Nov 2026 09:00:00 +0000", "<a1@x>", "", "22-Nov-2026 09:05:00 +0000"),
    ("Fwd: Agenda", "bob@example.test", "amy@example.test", "carol@example.test",
     "Tue, 24 Nov 2026 08:00:00 -0500", "<a2@x>", "<a1@x>", "24-Nov-2026 13:05:00 +0000"),
    ("Re: Re: Budget", "carol@example.test", "zed@example.test", "",
     "Tue, 24 Nov 2026 12:00:00 +0100", "<b3@x>", "<b1@x> <b2@x>", "24-Nov-2026 11:05:00 +0000"),
    ("Unrelated", "Amy <amy@example.test>", "", "", "", "", "", "25-Nov-2026 00:00:00 +0000"),
    ("Re: Lost parent", "dan@example.test", "bob@example.test", "", "Wed, 25 Nov 2026 10:00:00 +0000",
     "<c2@x>", "<c1@x>", "25-Nov-2026 10:05:00 +0000"),
    ("Lost parent (fwd)", "erin@example.test", "bob@example.test", "", "Wed, 25 Nov 2026 11:00:00 +0000",
     "<c3@x>", "<c2@x>", "25-Nov-2026 11:05:00 +0000"),
]


def message(subject: str, sender: str, to: str, cc: str, date: str, mid: str, refs: str, body: str) -> bytes:
    head = [f"Subject: {subject}", f"From: {sender}"]
    head += [f"To: {to}"] if to else []
    head += [f"Cc: {cc}"] if cc else []
    head += [f"Date: {date}"] if date else []
    head += [f"Message-ID: {mid}"] if mid else []
    head += [f"References: {refs}"] if refs else []
    return ("\r\n".join(head) + "\r\n\r\n" + body + "\r\n").encode()


def fill(pair: tuple[Any, Any], folder: str = "INBOX") -> None:
    for i, (subject, sender, to, cc, date, mid, refs, internal) in enumerate(MESSAGES):
        data = message(subject, sender, to, cc, date, mid, refs, "x" * (i * 37 % 11 + 1))
        each(pair, b'APPEND %s "%s" {%d+}\r\n%s' % (folder.encode(), internal.encode(), len(data), data))


def test_sort_thread_and_esearch_answer_as_dovecot_does(both):
    pair = both()
    fill(pair)
    each(pair, "SELECT INBOX")
    for command in ("SORT (SUBJECT) UTF-8 ALL", "SORT (REVERSE DATE) UTF-8 ALL", "SORT (ARRIVAL) US-ASCII ALL",
                    "SORT (FROM SUBJECT) UTF-8 ALL", "SORT (TO) UTF-8 ALL", "SORT (CC REVERSE SIZE) UTF-8 ALL",
                    "SORT (DISPLAYFROM) UTF-8 ALL", "SORT (DISPLAYTO) UTF-8 ALL", "UID SORT (SIZE) UTF-8 ALL",
                    "SORT (DATE) UTF-8 SUBJECT budget"):
        ours, theirs = each(pair, command)
        assert answer(ours, b"SORT") == answer(theirs, b"SORT"), command
    for command in ("THREAD ORDEREDSUBJECT UTF-8 ALL", "THREAD REFERENCES UTF-8 ALL",
                    "UID THREAD REFERENCES UTF-8 NOT SUBJECT agenda"):
        ours, theirs = each(pair, command)
        assert answer(ours, b"THREAD") == answer(theirs, b"THREAD"), command
    for command in ("SEARCH RETURN (MIN MAX COUNT ALL) TO bob", "UID SEARCH RETURN (ALL) OR FROM amy CC carol",
                    "SEARCH RETURN (COUNT) UNSEEN", "SEARCH RETURN () SINCE 24-Nov-2026",
                    "SEARCH RETURN (MIN) SUBJECT nothing-like-it", "SEARCH RETURN (PARTIAL 2:4) ALL",
                    "UID SEARCH RETURN (PARTIAL 7:20 COUNT) ALL"):
        ours, theirs = each(pair, command)
        assert esearch(ours) == esearch(theirs), command
    for command in ("SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL", "UID SORT RETURN () (REVERSE DATE) UTF-8 ALL",
                    "SORT RETURN (COUNT) (FROM) UTF-8 SUBJECT budget"):  # ESORT (RFC 5267 §3)
        ours, theirs = each(pair, command)
        assert _sorted_esearch(ours) == _sorted_esearch(theirs), command


def test_condstore_and_qresync_answer_as_dovecot_does(both):
    first = both()
    fill(first)
    for s in first:
        ok(s, "ENABLE QRESYNC")
    selected = each(first, "SELECT INBOX")
    state = [(code(lines, b"UIDVALIDITY"), code(lines, b"HIGHESTMODSEQ")) for lines in selected]
    # another session changes flags, expunges, and a new message arrives
    other = both()
    each(other, "SELECT INBOX")
    each(other, "UID STORE 2 +FLAGS (\\Flagged)")
    each(other, "UID STORE 5 +FLAGS ($Label1)")
    each(other, "UID STORE 3,6 +FLAGS (\\Deleted)")
    each(other, "UID EXPUNGE 3,6")
    data = message("Late", "x@example.test", "", "", "", "", "", "late")
    each(other, b"APPEND INBOX {%d+}\r\n%s" % (len(data), data))
    # the first client sees it all as VANISHED and FETCH with MODSEQ
    ours, theirs = each(first, "NOOP")
    assert vanished(ours) == vanished(theirs) == [3, 6]
    assert fetched(ours) == fetched(theirs)
    # a client coming back: only what changed, in all three forms of SELECT (QRESYNC)
    back = both()
    for s in back:
        ok(s, "ENABLE QRESYNC")
    for tail in ("", " 1:8", " 1:9 (2,4 2,4)", " 2:4"):
        answers = [ok(s, f"SELECT INBOX (QRESYNC ({uv} {hms}{tail}))") for s, (uv, hms) in zip(back, state, strict=True)]
        assert vanished(answers[0]) == vanished(answers[1]), tail
        assert fetched(answers[0]) == fetched(answers[1]), tail
        answers = [ok(s, f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {hms} VANISHED)")
                   for s, (_, hms) in zip(back, state, strict=True)]
        assert vanished(answers[0]) == vanished(answers[1]) and fetched(answers[0]) == fetched(answers[1])
    # SEARCH MODSEQ finds the same messages; a conditional STORE is refused for the same ones
    answers = [ok(s, f"UID SEARCH MODSEQ {hms + 1}") for s, (_, hms) in zip(back, state, strict=True)]
    assert answer(answers[0], b"SEARCH") == answer(answers[1], b"SEARCH")
    tagged = [s.cmd(f"UID STORE 1:* (UNCHANGEDSINCE {hms}) +FLAGS.SILENT (\\Answered)")[1]
              for s, (_, hms) in zip(back, state, strict=True)]
    assert [numbers(code_set(t)) for t in tagged] == [[2, 5, 9]] * 2  # changed since the client looked
    answers = [ok(s, "UID FETCH 1:* (FLAGS)") for s in back]
    assert fetched(answers[0]) == fetched(answers[1])


def code_set(tagged: bytes) -> bytes:
    m = re.search(rb"\[MODIFIED ([0-9:,]+)\]", tagged)
    assert m is not None, tagged
    return m.group(1)


BINARY = (b"From: a@example.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n"
          b"--zz\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
          b"caf=C3=A9 =\r\nsoft break and =3D sign\r\n"
          b"--zz\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
          b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g\r\nISIj\r\n"
          b"--zz--\r\n")


def test_binary_multiappend_and_catenate_answer_as_dovecot_does(both):
    pair = both()
    each(pair, b"APPEND INBOX {%d+}\r\n%s" % (len(BINARY), BINARY))
    each(pair, b"APPEND INBOX (\\Seen) {5+}\r\nfirst {6+}\r\nsecond")  # MULTIAPPEND
    each(pair, "SELECT INBOX")
    for item in ("BINARY.PEEK[1]", "BINARY.PEEK[2]", "BINARY.SIZE[1]", "BINARY.SIZE[2]", "BINARY.PEEK[2]<4.10>"):
        ours, theirs = each(pair, f"FETCH 1 ({item})")
        assert ours == theirs, item
    ours, theirs = each(pair, "FETCH 2:3 (FLAGS BODY.PEEK[])")
    assert [re.sub(rb" ?\\Recent", b"", x) for x in ours] == [re.sub(rb" ?\\Recent", b"", x) for x in theirs]
    url = "/INBOX;UIDVALIDITY={}/;UID=1/;SECTION=1"
    uidvalidity = [code(ok(s, "STATUS INBOX (UIDVALIDITY)")[0].replace(b"(", b"[").replace(b")", b"]"),
                        b"UIDVALIDITY") for s in pair]
    for s, uv in zip(pair, uidvalidity, strict=True):
        ok(s, f'APPEND INBOX CATENATE (TEXT {{14+}}\r\nSubject: cat\r\n URL "{url.format(uv)}" TEXT {{2+}}\r\n!!)')
    ours, theirs = each(pair, "FETCH 4 (BODY.PEEK[])")
    assert ours == theirs
