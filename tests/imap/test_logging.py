"""IMAP logs like SMTP and POP3: one session id on every line, and the events an operator follows."""

from __future__ import annotations

from twisted.logger import globalLogPublisher


def _events(world, script):
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        script()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    return [e for e in seen if "session_id" in e]


def test_login_select_append_expunge_logout_are_logged_with_one_session_id(world):
    c = world.connect()

    def script():
        c.login()
        c.ok("SELECT INBOX")
        c.send(b"a APPEND INBOX {19+}\r\nSubject: x\r\n\r\nbody\r\n")
        c.ok("STORE 1 +FLAGS (\\Deleted)")
        c.ok("EXPUNGE")
        c.ok("LOGOUT")

    events = _events(world, script)
    formats = [e["log_format"].split(": ", 1)[1] for e in events]
    assert events[0]["protocol"] == "imap" and events[0]["log_format"].startswith("{protocol} {session_id}: ")
    assert formats == [
        "{user} logged in from {ip}",
        "{user} {verb} {mailbox} ({exists} messages)",
        "{user} appended UID {uid} ({size} octets) to {mailbox}",
        "{user} expunged {count} from {mailbox}",
        "{user} logged out",
    ]
    assert {e["session_id"] for e in events} == {c.protocol.session.session_id}
    assert all(e["user"] == "alice@example.test" for e in events)


def test_two_sessions_have_different_ids(world):
    assert world.connect().protocol.session.session_id != world.connect().protocol.session.session_id
