"""Not-authenticated state: CAPABILITY, NOOP, LOGOUT, ID, LOGIN, AUTHENTICATE PLAIN, STARTTLS
(RFC 3501 §6.1-6.2, RFC 4959, RFC 2971, RFC 5161, RFC 2342)."""

from __future__ import annotations

import base64

from .harness import PASSWORD, USER, World


def plain(user=USER, password=PASSWORD, authz=""):
    return base64.b64encode(f"{authz}\0{user}\0{password}".encode()).decode()


def test_greeting_has_capabilities(world):
    c = world.connect()
    assert c.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    for cap in (b"IDLE", b"UIDPLUS", b"MOVE", b"NAMESPACE", b"SPECIAL-USE", b"ENABLE", b"LITERAL+",
                b"ID", b"UNSELECT", b"CHILDREN", b"SASL-IR", b"STARTTLS", b"AUTH=PLAIN"):
        assert cap in c.greeting


def test_logindisabled_before_tls_without_plaintext(tmp_path):
    w = World.create(tmp_path, allow_plaintext_auth=False)
    c = w.connect()
    [cap], tagged = c.cmd("CAPABILITY")
    assert b"LOGINDISABLED" in cap and b"AUTH=PLAIN" not in cap and b"STARTTLS" in cap
    assert c.cmd(f"LOGIN {USER} {PASSWORD}")[1].startswith(b"NO [PRIVACYREQUIRED]")
    assert c.cmd(f"AUTHENTICATE PLAIN {plain()}")[1].startswith(b"NO [PRIVACYREQUIRED]")


def test_implicit_tls_has_no_starttls(tmp_path):
    w = World.create(tmp_path, allow_plaintext_auth=False, implicit_tls=True)
    c = w.connect()
    c.protocol.tls = True
    assert b"STARTTLS" not in c.greeting


def test_login_ok_and_state_change(world):
    c = world.connect()
    assert c.cmd("SELECT INBOX")[1].startswith(b"BAD")
    untagged, tagged = c.cmd(f'LOGIN {USER} "{PASSWORD}"')
    assert tagged.startswith(b"OK [CAPABILITY IMAP4rev1")
    assert c.cmd(f"LOGIN {USER} {PASSWORD}")[1].startswith(b"BAD")
    assert c.cmd("SELECT INBOX")[1].startswith(b"OK")


def test_login_failure_is_generic_and_delayed(world):
    c = world.connect()
    out = c.raw(f"LOGIN {USER} wrong")
    assert out == b""  # answered after the throttle delay
    world.clock.advance(10)
    assert c.read() == b"t1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    c.raw("LOGIN nobody@example.test wrong")
    world.clock.advance(10)
    assert c.read() == b"t2 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"


def test_lockout_closes_connection(tmp_path):
    w = World.create(tmp_path, max_failures=2)
    c = w.connect()
    for _ in range(2):
        c.raw(f"LOGIN {USER} wrong")
        w.clock.advance(20)
    out = c.read()
    assert b"* BYE" in out and c.closed


def test_authenticate_plain_with_initial_response(world):
    c = world.connect()
    assert c.cmd(f"AUTHENTICATE PLAIN {plain()}")[1].startswith(b"OK")


def test_authenticate_plain_with_continuation(world):
    c = world.connect()
    assert c.raw("AUTHENTICATE PLAIN") == b"+ \r\n"
    assert c.send(plain() + "\r\n").startswith(b"t1 OK")


def test_authenticate_cancel_and_garbage(world):
    c = world.connect()
    c.raw("AUTHENTICATE PLAIN")
    assert c.send("*\r\n").startswith(b"t1 BAD")
    assert c.cmd("AUTHENTICATE PLAIN !!!")[1].startswith(b"BAD")
    assert c.cmd("AUTHENTICATE CRAM-MD5")[1].startswith(b"NO")
    assert c.cmd(f"AUTHENTICATE PLAIN {plain(authz='bob@example.test')}")[1].startswith(b"NO")


def test_noop_id_enable_namespace_logout(client):
    assert client.cmd("NOOP")[1].startswith(b"OK")
    untagged, tagged = client.cmd('ID ("name" "test")')
    assert untagged[0].startswith(b'* ID ("name" "mailstack"') and tagged.startswith(b"OK")
    assert client.cmd("ID NIL")[1].startswith(b"OK")
    assert client.cmd("ENABLE CONDSTORE")[0] == [b"* ENABLED CONDSTORE"]
    assert client.cmd("ENABLE UTF8=ACCEPT")[0] == [b"* ENABLED"]  # nothing it knows
    assert client.cmd("NAMESPACE")[0] == [b'* NAMESPACE (("" ".")) NIL NIL']
    untagged, tagged = client.cmd("LOGOUT")
    assert untagged == [b"* BYE Logging out"] and tagged.startswith(b"OK") and client.closed


def test_unknown_and_malformed_commands_keep_session(client):
    assert client.cmd("FROB")[1].startswith(b"BAD")
    assert client.cmd("NOOP extra")[1].startswith(b"BAD")
    assert client.send(b"\r\n").startswith(b"* BAD")
    assert client.cmd('LIST "unterminated')[1].startswith(b"BAD")
    assert client.cmd("NOOP")[1].startswith(b"OK")
