"""BINARY (RFC 3516): FETCH BINARY[part], BINARY.PEEK, BINARY.SIZE, literal8 in and out."""

from __future__ import annotations

import base64

PAYLOAD = bytes(range(256)) * 3  # every octet value, NUL included

MESSAGE = (b"Subject: files\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"caf=C3=A9 =3D soft=\r\nbreak\r\n"
           b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n") +
           b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n"
           b"--b--\r\n")


def test_binary_undoes_transfer_encodings(world, client):
    world.deliver(MESSAGE)
    client.ok("SELECT INBOX")
    out = client.raw("FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[2])")
    assert out.startswith(b"* 1 FETCH (BINARY[1] {17}\r\ncaf\xc3\xa9 = softbreak BINARY.SIZE[2] 768)\r\n")
    out = client.raw("FETCH 1 (BINARY.PEEK[2])")
    assert out.startswith(b"* 1 FETCH (BINARY[2] ~{768}\r\n" + PAYLOAD + b")\r\n")  # NULs: a literal8
    out = client.raw("FETCH 1 (BINARY.PEEK[2]<256.4> BINARY.PEEK[])")
    assert out.startswith(b"* 1 FETCH (BINARY[2]<256> ~{4}\r\n\x00\x01\x02\x03 BINARY[] {%d}\r\n" % len(MESSAGE))
    assert b"\\Seen" not in client.ok("FETCH 1 FLAGS")[0]  # PEEK
    client.raw("FETCH 1 BINARY[1]")
    assert b"\\Seen" in client.ok("FETCH 1 FLAGS")[0]
    assert b"BINARY" in client.ok("CAPABILITY")[0].split()


def test_an_unknown_encoding_fails_the_fetch_and_marks_nothing(world, client):
    world.deliver(MESSAGE)
    client.ok("SELECT INBOX")
    untagged, tagged = client.cmd("FETCH 1 (BINARY[3])")
    assert tagged.startswith(b"NO [UNKNOWN-CTE]")
    assert b"\\Seen" not in client.ok("FETCH 1 FLAGS")[0]
    assert client.ok("FETCH 1 (BINARY.PEEK[7])") == [b"* 1 FETCH (BINARY[7] NIL)"]  # no such part


def test_append_takes_a_literal8_and_nothing_else_holds_a_nul(client):
    data = b"Subject: raw\r\nContent-Transfer-Encoding: binary\r\n\r\nzero \x00 byte\r\n"
    out = client.send(b"a1 APPEND INBOX ~{%d+}\r\n" % len(data) + data + b"\r\n")
    assert out.startswith(b"a1 OK [APPENDUID")
    client.ok("SELECT INBOX")
    # BODY[] is a plain literal, which may not carry a NUL: it goes as 0x80; BINARY[] gives it as it is
    assert client.raw("FETCH 1 BODY.PEEK[]").startswith(
        b"* 1 FETCH (BODY[] {%d}\r\n" % len(data) + data.replace(b"\0", b"\x80"))
    assert client.raw("FETCH 1 BINARY.PEEK[]").startswith(b"* 1 FETCH (BINARY[] ~{%d}\r\n" % len(data) + data)
    out = client.send(b"a2 APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
    assert out.startswith(b"a2 BAD") and b"NUL" in out  # a plain literal may not carry a NUL
    assert client.send(b"a3 LOGIN ~{1+}\r\nx y\r\n").startswith(b"a3 BAD")
    assert client.send(b"a4 APPEND ~{5+}\r\nINBOX {3+}\r\nabc\r\n").startswith(b"a4 BAD")  # not a name


def single(body: bytes, encoding: str) -> bytes:
    return (f"Subject: one\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n"
            .encode() + body)


def test_damaged_base64_and_padded_quoted_printable(world, client):
    world.deliver(single(b"QUJD\r\nRA\r\n", "base64"))  # the last group lacks its padding
    world.deliver(single(b"ab=\r\ncd=20 \r\nef= \r\ngh", "quoted-printable"))  # RFC 2045 §6.7 padding
    client.ok("SELECT INBOX")
    assert client.raw("FETCH 1 BINARY.PEEK[1]").startswith(b"* 1 FETCH (BINARY[1] {4}\r\nABCD)")
    assert client.raw("FETCH 2 BINARY.PEEK[1]").startswith(b"* 2 FETCH (BINARY[1] {11}\r\nabcd \r\nefgh)")


def test_unknown_cte_in_any_message_fails_the_fetch_before_any_is_seen(world, client):
    world.deliver(single(b"plain\r\n", "7bit"))
    world.deliver(single(b"begin 644 x\r\n", "x-uuencode"))
    client.ok("SELECT INBOX")
    assert client.cmd("FETCH 1:2 BINARY[1]")[1].startswith(b"NO [UNKNOWN-CTE]")
    assert client.ok("SEARCH SEEN") == [b"* SEARCH"]
