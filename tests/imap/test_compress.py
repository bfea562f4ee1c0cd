"""COMPRESS=DEFLATE (RFC 4978): both directions raw DEFLATE after the OK, bombs bounded."""

from __future__ import annotations

import zlib

from .harness import World


class Deflated:
    """The client's half of a compressed connection over the in-memory server."""

    def __init__(self, client) -> None:
        self.client = client
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.into = zlib.decompressobj(-15)

    def send(self, data: bytes) -> bytes:
        self.client.protocol.dataReceived(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))
        return self.into.decompress(self.client.read())

    def send_raw(self, compressed: bytes) -> bytes:
        self.client.protocol.dataReceived(compressed)
        return self.into.decompress(self.client.read())


def compressing(client) -> Deflated:
    assert client.raw("COMPRESS DEFLATE").endswith(b" OK DEFLATE active\r\n")  # this reply is not compressed
    return Deflated(client)


def test_commands_and_answers_are_compressed_after_the_ok(world, client):
    world.deliver(b"Subject: hello\r\n\r\nbody\r\n")
    z = compressing(client)
    out = z.send(b"a SELECT INBOX\r\nb FETCH 1 (BODY[HEADER.FIELDS (SUBJECT)])\r\n")
    assert b"* 1 EXISTS\r\n" in out and b"Subject: hello" in out and out.endswith(b"b OK FETCH completed\r\n")
    assert z.send(b"c COMPRESS DEFLATE\r\n") == b"c NO [COMPRESSIONACTIVE] Compression is already on\r\n"
    out = z.send(b"d APPEND INBOX {11+}\r\nhello there\r\ne NOOP\r\n")  # a literal inside the stream
    assert b"d OK [APPENDUID" in out and out.endswith(b"e OK NOOP completed\r\n")


def test_compress_needs_login_and_a_known_mechanism(world):
    client = world.connect()
    assert client.cmd("COMPRESS DEFLATE")[1].startswith(b"BAD")
    client.login()
    assert client.cmd("COMPRESS LZMA")[1].startswith(b"BAD")
    assert b" COMPRESS=DEFLATE" in client.ok("CAPABILITY")[0]


def test_a_decompression_bomb_is_inflated_a_step_at_a_time_and_stopped(world, client):
    z = compressing(client)
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    line = bomb.compress(b"A" * 900_000) + bomb.flush(zlib.Z_SYNC_FLUSH)  # an overlong line, under the cap
    assert z.send_raw(line) == b""  # still inside it: nothing to say yet
    assert len(client.protocol.buffer) <= client.protocol.max_buffer + 64 * 1024
    out = z.send_raw(bomb.compress(b"\r\nf NOOP\r\n") + bomb.flush(zlib.Z_SYNC_FLUSH))
    assert out == b"* BAD Line too long\r\nf OK NOOP completed\r\n"
    payload = bomb.compress(b"A" * (200 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)  # 200 MB in about 200 KB
    assert len(payload) < 300_000
    out = z.send_raw(payload)
    assert out == b"* BYE Compressed input inflates past any command's size\r\n" and client.closed
    assert len(client.protocol.buffer) <= client.protocol.max_buffer + 64 * 1024


def test_a_large_compressed_append_is_one_command(tmp_path):
    world = World.create(tmp_path, max_message_size=3 << 20)
    client = world.connect().login()
    z = compressing(client)
    message = b"Subject: big\r\n\r\n" + b"0123456789" * 250_000  # 2.5 MB, inflated from a few KB
    out = z.send(b"g APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
    assert b"g OK [APPENDUID" in out


def test_corrupt_compressed_input_ends_the_session_with_bye(tmp_path):
    world = World.create(tmp_path)
    client = world.connect().login()
    z = compressing(client)
    out = z.send_raw(b"\xff\xff\xff\xff garbage")
    assert out == b"* BYE Compressed input is corrupt\r\n" and client.closed


def test_a_compressed_stream_the_client_ends_ends_the_session(tmp_path):
    world = World.create(tmp_path)
    client = world.connect().login()
    z = compressing(client)
    ended = z.out.compress(b"e NOOP\r\n") + z.out.flush(zlib.Z_FINISH)
    out = z.send_raw(ended + b"anything after the end of the stream")
    assert out == b"e OK NOOP completed\r\n* BYE Compressed input is corrupt\r\n" and client.closed
