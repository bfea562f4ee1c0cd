"""APPEND (RFC 3501 §6.3.11) with flags, internal date, synchronizing and LITERAL+ literals
(RFC 7888), APPENDUID (RFC 4315), size limits ([TOOBIG])."""

from __future__ import annotations

from .harness import World


def test_append_with_flags_and_date(client):
    out = client.send(b'a1 APPEND Drafts (\\Draft \\Seen) "05-Jan-2026 10:20:30 +0200" {14}\r\n')
    assert out == b"+ Ready for literal data\r\n"
    out = client.send(b"Subject: x\r\n\r\n\r\n")
    assert out.startswith(b"a1 OK [APPENDUID ") and out.split()[4] == b"1]"
    client.ok("SELECT Drafts")
    untagged = client.ok("FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
    assert b"FLAGS (\\Draft \\Seen \\Recent)" in untagged[0]
    assert b'INTERNALDATE " 5-Jan-2026 08:20:30 +0000"' in untagged[0]
    assert b"RFC822.SIZE 14" in untagged[0]


def test_append_literal_plus_needs_no_continuation(client):
    out = client.send(b"a1 APPEND INBOX {5+}\r\nhello\r\n")
    assert out.startswith(b"a1 OK [APPENDUID")


def test_append_to_selected_mailbox_announces_exists(client):
    client.ok("SELECT INBOX")
    untagged, tagged = client.cmd("APPEND INBOX {5+}\r\nhello")
    assert b"* 1 EXISTS" in untagged and b"* 1 RECENT" in untagged


def test_append_errors(client):
    assert client.cmd("APPEND Nope {1+}\r\nx")[1].startswith(b"NO [TRYCREATE]")
    assert client.cmd('APPEND INBOX "quoted message"')[1].startswith(b"BAD")
    assert client.cmd("APPEND INBOX (\\Bogus) {1+}\r\nx")[1].startswith(b"BAD")
    assert client.cmd('APPEND INBOX "31-Feb-2026 00:00:00 +0000" {1+}\r\nx')[1].startswith(b"BAD")
    assert client.cmd("APPEND INBOX")[1].startswith(b"BAD")


def test_oversized_sync_literal_refused_before_reading(tmp_path):
    w = World.create(tmp_path, max_message_size=100)
    c = w.connect().login()
    out = c.send(b"a1 APPEND INBOX {101}\r\n")
    assert out == b"a1 NO [TOOBIG] Message too large\r\n"
    assert not c.closed
    assert c.cmd("NOOP")[1].startswith(b"OK")


def test_oversized_nonsync_literal_closes(tmp_path):
    w = World.create(tmp_path, max_message_size=100)
    c = w.connect().login()
    out = c.send(b"a1 APPEND INBOX {101+}\r\n" + b"x" * 101 + b"\r\n")
    assert out.startswith(b"a1 NO [TOOBIG]") and b"* BYE" in out and c.closed


def test_non_append_literal_cap(client):
    out = client.send(b"a1 LOGIN {2000000}\r\n")
    assert out.startswith(b"a1 BAD [TOOBIG]")


def test_large_literal_arrives_in_many_chunks(tmp_path):
    w = World.create(tmp_path, max_message_size=8 << 20)
    c = w.connect().login()
    body = b"Subject: big\r\n\r\n" + b"x" * (6 << 20)
    assert c.send(b"a1 APPEND INBOX {%d}\r\n" % len(body)) == b"+ Ready for literal data\r\n"
    for i in range(0, len(body), 16384):
        c.protocol.dataReceived(body[i:i + 16384])
    assert c.send(b"\r\n").startswith(b"a1 OK [APPENDUID")
    c.ok("SELECT INBOX")
    assert f"RFC822.SIZE {len(body)}".encode() in c.ok("FETCH 1 RFC822.SIZE")[0]


def test_multiappend_puts_every_message_in_or_none(world, client, monkeypatch):
    """RFC 3502: one APPEND, several messages with their own flags and dates; APPENDUID names all."""
    client.ok("SELECT INBOX")
    untagged, tagged = client.cmd(b'APPEND INBOX (\\Seen) {7+}\r\nfirst\r\n "05-Jan-2026 10:20:30 +0000" {8+}\r\n'
                                  b"second\r\n () {7+}\r\nthird\r\n")
    assert tagged.startswith(b"OK [APPENDUID ") and tagged.split()[3] == b"1:3]"
    assert b"* 3 EXISTS" in untagged
    flags = client.ok("FETCH 1:3 (FLAGS INTERNALDATE)")
    assert b"\\Seen" in flags[0] and b"\\Seen" not in flags[1] and b" 5-Jan-2026 10:20:30" in flags[1]
    assert b"MULTIAPPEND" in client.ok("CAPABILITY")[0].split()
    # A message too large, or a failure on the way, and none of them is added.
    out = client.send(b"a9 APPEND INBOX {2+}\r\nok {100001}\r\n")  # refused before the second is sent
    assert out == b"a9 NO [TOOBIG] Message too large\r\n"
    from mailstack.maildir import mailbox as mailbox_module

    def broken(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mailbox_module.Mailbox, "_publish", broken)
    assert client.cmd(b"APPEND INBOX {4+}\r\nfour {4+}\r\nfive")[1].startswith(b"NO")
    monkeypatch.undo()
    assert len(client.ok("FETCH 1:* FLAGS")) == 3
    tmp = world.store.layout.maildir_path("alice@example.test", None) / "tmp"
    assert list(tmp.iterdir()) == []  # nothing written for them stays behind
    assert client.cmd(b"APPEND INBOX (\\Seen) {1+}\r\nx (\\Seen)")[1].startswith(b"BAD")  # flags without a message


def test_an_empty_literal_cancels_a_multiappend_and_the_count_is_bounded(client, monkeypatch):
    """RFC 3502: a zero-length message literal fails the APPEND; nothing is added."""
    client.ok("SELECT INBOX")
    assert client.cmd(b"APPEND INBOX {5+}\r\nhello {0+}\r\n")[1].startswith(b"NO")
    from mailstack.imap import mailboxes, protocol

    monkeypatch.setattr(mailboxes, "MAX_APPEND_MESSAGES", 2)
    monkeypatch.setattr(protocol, "MAX_APPEND_MESSAGES", 2)
    out = client.send(b"a7 APPEND INBOX {1+}\r\na {1+}\r\nb {1}\r\n")  # the third is refused unread
    assert out == b"a7 NO [LIMIT] Too many literals in one APPEND\r\n"
    assert client.ok("STATUS INBOX (MESSAGES)") == [b"* STATUS INBOX (MESSAGES 0)"]


def test_catenate_builds_a_message_from_text_and_parts_of_the_users_own(world, client):
    """RFC 4469 CATENATE with RFC 5092 URLs: TEXT literals and parts of existing messages."""
    world.deliver(b"Subject: source\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
                  b"--b\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
                  b"second part\r\n--b--\r\n")
    lines = client.ok("SELECT INBOX")
    validity = int(next(line for line in lines if b"UIDVALIDITY" in line).split(b"UIDVALIDITY ")[1].split(b"]")[0])
    uid = int(client.ok("UID SEARCH ALL")[0].split()[2])
    head = b"Subject: built\r\n\r\n"
    url = f"/INBOX;UIDVALIDITY={validity}/;UID={uid}/;SECTION=2"
    plain = url.replace(f";UIDVALIDITY={validity}", "")[:-1] + "1/;PARTIAL=0.5"  # UIDVALIDITY may be left out
    out = client.send(b"a1 APPEND Drafts CATENATE (TEXT {%d+}\r\n" % len(head) + head +
                      f' URL "{url}" URL "{plain}")\r\n'.encode())
    assert out.startswith(b"a1 OK [APPENDUID"), out
    client.ok("SELECT Drafts")
    assert client.raw("FETCH 1 BODY.PEEK[]").startswith(b"* 1 FETCH (BODY[] {34}\r\nSubject: built\r\n\r\nsecond partfirst)")
    assert b"CATENATE" in client.ok("CAPABILITY")[0].split()
    for bad in (f"/INBOX;UIDVALIDITY={validity + 1}/;UID={uid}", f"/INBOX;UIDVALIDITY={validity}/;UID={uid + 9}",
                f"/INBOX;UIDVALIDITY={validity}/;UID={uid}/;SECTION=7", "/Nowhere;UIDVALIDITY=1/;UID=1",
                f"imap://alice%40example.test@h/INBOX;UIDVALIDITY={validity}/;UID={uid}",  # absolute: URLAUTH
                "http://example.test/x"):
        tagged = client.cmd(f'APPEND Drafts CATENATE (URL "{bad}")')[1]
        assert tagged.startswith(b"NO [BADURL " + bad.encode() + b"]"), (bad, tagged)
    tagged = client.cmd('APPEND Drafts CATENATE (URL "/a]b")')[1]
    assert tagged.startswith(b"NO [BADURL] ")  # a URL that cannot stand in the code is left out of it
    assert client.cmd(b"APPEND Drafts CATENATE (TEXT {0+}\r\n)")[1].startswith(b"NO Empty")
    big = f"/INBOX;UIDVALIDITY={validity}/;UID={uid}"
    many = " ".join(f'URL "{big}"' for _ in range(101))
    assert client.cmd(f"APPEND Drafts CATENATE ({many})")[1].startswith(b"NO [LIMIT]")
    assert client.cmd("APPEND Drafts CATENATE (TEXT)")[1].startswith(b"BAD")
    assert client.cmd('APPEND Drafts CATENATE (BODY "x")')[1].startswith(b"BAD")
    assert len(client.ok("FETCH 1:* FLAGS")) == 1  # nothing added by the refused ones


def test_catenate_copies_count_against_one_appends_size(world, client):
    """A short URL can name a large message: all of an APPEND's messages together are held
    to one message's size plus 1 MiB, as literals are."""
    world.deliver(b"Subject: big\r\n\r\n" + b"x" * 90_000 + b"\r\n")
    client.ok("SELECT INBOX")
    uid = int(client.ok("UID SEARCH ALL")[0].split()[2])
    one = f'CATENATE (URL "/INBOX/;UID={uid}")'
    assert client.cmd(f"APPEND Drafts {one} {one}")[1].startswith(b"OK [APPENDUID")
    assert client.cmd("APPEND Drafts " + " ".join([one] * 13))[1].startswith(b"NO [TOOBIG]")
    assert client.ok("STATUS Drafts (MESSAGES)") == [b"* STATUS Drafts (MESSAGES 2)"]
