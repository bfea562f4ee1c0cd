"""What a script sends at delivery: redirects, rejection notices and vacation replies come back
with the delivery result for the caller to queue; the vacation memory keeps one reply per period."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import SMTP

import pytest

from mailstack.sieve.replied import VacationMemory
from mailstack.srs import SRS
from tests.sieve.test_filter import deliver, files, make

MESSAGE = (b"From: Bob <bob@example.org>\r\nTo: alice@example.test\r\nSubject: =?utf-8?q?caf=C3=A9?= plans\r\n"
           b"Message-ID: <m1@example.org>\r\n\r\nbody\r\n")
ALICE = {"alice@example.test": "alice@example.test"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_redirect_goes_out_with_an_srs_sender_and_a_delivered_to_line(tmp_path):
    srs = SRS(b"k" * 32)
    local, _ = make(tmp_path, {"alice@example.test": 'redirect "elsewhere@example.net";'}, srs=srs)
    result = deliver(local, ALICE, MESSAGE)
    assert result.delivered == {} and result.discarded == {"alice@example.test"}
    assert files(tmp_path, "alice") == {"new": [], "cur": []}
    [(mailbox, out)] = result.outbound
    assert mailbox == "alice@example.test" and out.kind == "redirect" and not out.notice
    assert out.recipients == ("elsewhere@example.net",)
    assert out.sender.startswith("SRS0=") and out.sender.endswith("@example.test")
    assert srs.reverse(out.sender) == "bob@example.org"
    assert out.message == b"Delivered-To: alice@example.test\r\n" + MESSAGE


def test_redirect_copy_files_and_sends(tmp_path):
    local, _ = make(tmp_path, {"alice@example.test": 'require "copy"; redirect :copy "x@example.net";'})
    result = deliver(local, ALICE, MESSAGE)
    assert result.delivered == {"alice@example.test": None}
    assert [o.recipients for _, o in result.outbound] == [("x@example.net",)]
    assert result.outbound[0][1].sender == "bob@example.org"  # without SRS: the original sender


def test_a_message_redirected_round_a_loop_is_kept_instead(tmp_path):
    local, _ = make(tmp_path, {"alice@example.test": 'redirect "bob@example.test";'})
    looped = b"Delivered-To: <Alice@example.test>\r\n" + MESSAGE
    result = deliver(local, ALICE, looped)
    assert result.outbound == [] and result.delivered == {"alice@example.test": None}
    assert len(files(tmp_path, "alice")["new"]) == 1


def test_reject_refuses_and_sends_an_mdn_to_the_sender(tmp_path):
    local, _ = make(tmp_path, {"alice@example.test": 'require "reject"; reject "I do not want this.";'})
    result = deliver(local, ALICE, MESSAGE)
    assert result.refused == {}  # the caller cannot refuse it: the sender is told by an MDN
    assert result.discarded == {"alice@example.test"} and files(tmp_path, "alice") == {"new": [], "cur": []}
    [(_, out)] = result.outbound
    assert (out.kind, out.sender, out.recipients, out.notice) == ("reject", "", ("bob@example.org",), True)
    mdn = message_from_bytes(out.message, policy=SMTP)
    assert mdn.get_content_type() == "multipart/report"
    assert mdn.get_param("report-type") == "disposition-notification"
    assert mdn["Auto-Submitted"] == "auto-replied"
    parts = list(mdn.iter_parts())
    assert "I do not want this." in parts[0].get_content()
    notification = parts[1].as_bytes()
    assert b"Disposition: automatic-action/MDN-sent-automatically; deleted" in notification
    assert b"Original-Message-ID: <m1@example.org>" in notification
    assert b"Message-ID: <m1@example.org>" in parts[2].as_bytes()  # the original's header


def test_ereject_sends_a_dsn_with_status_5_7_1(tmp_path):
    local, _ = make(tmp_path, {"alice@example.test": 'require "ereject"; ereject "No thanks";'})
    result = deliver(local, ALICE, MESSAGE)
    [(_, out)] = result.outbound
    assert out.kind == "ereject" and out.recipients == ("bob@example.org",)
    assert b"report-type=delivery-status" in out.message and b"Status: 5.7.1" in out.message
    assert b"No thanks" in out.message


def test_reject_from_the_null_sender_sends_nothing(tmp_path):
    local, _ = make(tmp_path, {"alice@example.test": 'require "reject"; reject "no";'})
    result = deliver(local, ALICE, MESSAGE, sender="")
    assert result.outbound == [] and result.discarded == {"alice@example.test"}


VACATION = 'require "vacation"; vacation :days 3 :subject "Away" "I am away until Monday.";'


def test_vacation_replies_once_per_sender_per_period(tmp_path):
    clock = Clock()
    memory = VacationMemory(tmp_path / "vacation.sqlite3")
    local, _ = make(tmp_path, {"alice@example.test": VACATION}, replied=memory, clock=clock)
    first = deliver(local, ALICE, MESSAGE)
    assert first.delivered == {"alice@example.test": None}  # vacation keeps the message
    [(_, out)] = first.outbound
    assert (out.kind, out.sender, out.recipients, out.notice) == ("vacation", "", ("bob@example.org",), True)
    reply = message_from_bytes(out.message, policy=SMTP)
    assert reply["Subject"] == "Away" and reply["To"] == "bob@example.org"
    assert reply["From"] == "alice@example.test" and reply["Auto-Submitted"] == "auto-replied"
    assert reply["In-Reply-To"] == "<m1@example.org>" and reply["References"] == "<m1@example.org>"
    assert reply.get_content().strip() == "I am away until Monday."
    assert deliver(local, ALICE, MESSAGE).outbound == []  # the same sender, within 3 days
    other = deliver(local, ALICE, MESSAGE, sender="carol@example.org")
    assert [o.recipients for _, o in other.outbound] == [("carol@example.org",)]
    clock.now += 3 * 86400 + 1
    assert len(deliver(local, ALICE, MESSAGE).outbound) == 1  # the period is over
    memory.close()


def test_the_vacation_memory_survives_a_restart(tmp_path):
    clock = Clock()
    path = tmp_path / "vacation.sqlite3"
    memory = VacationMemory(path)
    local, _ = make(tmp_path, {"alice@example.test": VACATION}, replied=memory, clock=clock)
    assert len(deliver(local, ALICE, MESSAGE).outbound) == 1
    memory.close()
    again = VacationMemory(path)
    local, _ = make(tmp_path, {"alice@example.test": VACATION}, replied=again, clock=clock)
    assert deliver(local, ALICE, MESSAGE).outbound == []
    again.close()


def test_the_default_subject_quotes_the_original_decoded(tmp_path):
    memory = VacationMemory(tmp_path / "vacation.sqlite3")
    local, _ = make(tmp_path, {"alice@example.test": 'require "vacation"; vacation "Away.";'}, replied=memory,
                    clock=Clock())
    [(_, out)] = deliver(local, ALICE, MESSAGE).outbound
    assert message_from_bytes(out.message, policy=SMTP)["Subject"] == "Auto: café plans"
    assert out.message.isascii()  # encoded for any next hop
    memory.close()


def test_a_mime_reason_becomes_the_body(tmp_path):
    memory = VacationMemory(tmp_path / "vacation.sqlite3")
    script = ('require "vacation"; vacation :mime "Content-Type: text/html; charset=utf-8\r\n\r\n'
              '<p>Away</p>";')
    local, _ = make(tmp_path, {"alice@example.test": script}, replied=memory, clock=Clock())
    [(_, out)] = deliver(local, ALICE, MESSAGE).outbound
    reply = message_from_bytes(out.message, policy=SMTP)
    assert reply.get_content_type() == "text/html" and "<p>Away</p>" in reply.get_content()
    assert reply["Auto-Submitted"] == "auto-replied" and reply["MIME-Version"] == "1.0"
    memory.close()


@pytest.mark.parametrize("extra", [b"List-Id: <dev.example.org>\r\n", b"Precedence: bulk\r\n",
                                   b"Auto-Submitted: auto-generated\r\n"])
def test_no_vacation_reply_to_lists_or_automatic_mail(tmp_path, extra):
    memory = VacationMemory(tmp_path / "vacation.sqlite3")
    local, _ = make(tmp_path, {"alice@example.test": VACATION}, replied=memory, clock=Clock())
    result = deliver(local, ALICE, extra + MESSAGE)
    assert result.outbound == [] and result.delivered == {"alice@example.test": None}
    memory.close()


def test_no_vacation_reply_to_the_null_sender_or_when_not_addressed(tmp_path):
    memory = VacationMemory(tmp_path / "vacation.sqlite3")
    local, _ = make(tmp_path, {"alice@example.test": VACATION}, replied=memory, clock=Clock())
    assert deliver(local, ALICE, MESSAGE, sender="").outbound == []
    bcc = MESSAGE.replace(b"To: alice@example.test", b"To: list@example.org")
    assert deliver(local, ALICE, bcc).outbound == []
    memory.close()


def test_a_held_mailbox_sends_nothing_until_it_is_filed(tmp_path):
    """alice's mailbox is full: she waits in the queue, and her redirect is not sent now (her
    script runs again at the retry); bob is filed."""
    local, accounts = make(tmp_path, {"alice@example.test": 'require "copy"; redirect :copy "x@example.net";'})
    accounts.users["alice@example.test"] = accounts.users["alice@example.test"].__class__(
        "alice@example.test", "", 10)  # a 10-octet quota
    result = deliver(local, {**ALICE, "bob@example.test": "bob@example.test"}, MESSAGE)
    assert set(result.held) == {"alice@example.test"} and result.outbound == []
    assert result.delivered == {"bob@example.test": None}


KEYWORDS = ('require ["imap4flags", "fileinto"]; '
            'fileinto :flags ["$Important \\\\Seen", "Project", "$important"] "Work";')


def _keyword_delivery(tmp_path, store):
    from mailstack.maildir.mailbox import inline_io

    local, _ = make(tmp_path, {"alice@example.test": KEYWORDS})

    async def letters(user, folder, keywords):
        return await store.keyword_letters(user, folder or "INBOX", keywords, inline_io)

    local.keywords = letters
    return local


@pytest.mark.parametrize("open_first", [False, True])
def test_keywords_a_script_sets_are_kept_in_the_folders_table(tmp_path, open_first):
    """Delivered with $Important, \\Seen and Project: an IMAP client sees all three, whether the
    folder was open (its table updated through the open mailbox) or not."""
    from mailstack.maildir.folders import MailStore
    from mailstack.maildir.layout import MaildirLayout
    from mailstack.maildir.mailbox import inline_io
    from tests.imap.harness import run

    store = MailStore(MaildirLayout(tmp_path / "maildirs"), "mail.example.test")
    run(store.setup_user("alice@example.test", inline_io))
    if open_first:
        run(store.create("alice@example.test", "Work", inline_io))
        run(store.open("alice@example.test", "Work", inline_io))
    local = _keyword_delivery(tmp_path, store)
    assert deliver(local, ALICE, MESSAGE).delivered == {"alice@example.test": "Work"}
    [name] = files(tmp_path, "alice", "Work")["cur"]
    assert name.endswith(":2,Sab")
    box = run(store.open("alice@example.test", "Work", inline_io))
    run(box.refresh(force=True))
    [message] = box.messages
    assert sorted(box.flags(message)) == ["$Important", "Project", "\\Seen"]


def _with_folders(tmp_path, script, existing):
    asked = []

    async def folder_exists(mailbox, name):
        asked.append(name)
        return name in existing

    local, _ = make(tmp_path, {"alice@example.test": script}, folder_exists=folder_exists)
    return local, asked


def test_fileinto_a_missing_folder_without_create_keeps_the_copy_in_inbox(tmp_path):
    local, asked = _with_folders(tmp_path, 'require "fileinto"; fileinto "Nowhere";', set())
    assert deliver(local, ALICE, MESSAGE).delivered == {"alice@example.test": None}
    assert asked == ["Nowhere"] and files(tmp_path, "alice", "Nowhere") == {"new": [], "cur": []}


def test_fileinto_create_makes_the_folder(tmp_path):
    local, asked = _with_folders(tmp_path, 'require ["fileinto", "mailbox"]; fileinto :create "Made";', set())
    assert deliver(local, ALICE, MESSAGE).delivered == {"alice@example.test": "Made"}
    assert asked == [] and len(files(tmp_path, "alice", "Made")["new"]) == 1


def test_mailboxexists_is_answered_from_the_folders_there(tmp_path):
    script = ('require ["fileinto", "mailbox"]; if mailboxexists "Work" { fileinto "Work"; } '
              'elsif mailboxexists "Other" { fileinto :create "Other"; }')
    local, asked = _with_folders(tmp_path, script, {"Work"})
    assert deliver(local, ALICE, MESSAGE).delivered == {"alice@example.test": "Work"}
    assert sorted(asked) == ["Other", "Work"]  # each looked up once, though the script ran twice
    local, asked = _with_folders(tmp_path, script, set())
    assert deliver(local, ALICE, MESSAGE).delivered == {"alice@example.test": None}
    assert sorted(asked) == ["Other", "Work"]


def test_vacation_from_is_used_only_when_the_address_is_the_users(tmp_path):
    memory = VacationMemory(tmp_path / "vacation.sqlite3")
    script = 'require "vacation"; vacation :from "{}" "Away.";'
    local, accounts = make(tmp_path, {"alice@example.test": script.format("bob@example.test")}, replied=memory,
                           clock=Clock())
    [(_, out)] = deliver(local, ALICE, MESSAGE).outbound
    assert message_from_bytes(out.message, policy=SMTP)["From"] == "alice@example.test"  # not bob's
    accounts.aliases["sales@example.test"] = ["alice@example.test"]
    accounts.scripts["alice@example.test"] = script.format("sales@example.test")
    [(_, out)] = deliver(local, ALICE, MESSAGE, sender="carol@example.org").outbound
    assert message_from_bytes(out.message, policy=SMTP)["From"] == "sales@example.test"
    memory.close()


def test_the_body_test_sees_the_body_of_the_copy(tmp_path):
    script = 'require ["body", "fileinto"]; if body :text :contains "invoice" { fileinto "Bills"; }'
    local, _ = make(tmp_path, {"alice@example.test": script})
    assert deliver(local, ALICE, MESSAGE.replace(b"body\r\n", b"your invoice\r\n")).delivered == {
        "alice@example.test": "Bills"}
    assert deliver(local, ALICE, MESSAGE).delivered == {"alice@example.test": None}
    big = MESSAGE.replace(b"body\r\n", b"x" * 100_000 + b"\r\ninvoice\r\n")  # run on the pool
    assert deliver(local, ALICE, big).delivered == {"alice@example.test": "Bills"}


def test_a_caller_that_can_refuse_gets_the_reason_and_nothing_is_sent(tmp_path):
    local, _ = make(tmp_path, {"alice@example.test": 'require "reject"; reject "Not here.\r\nGo away.";'})
    result = deliver(local, ALICE, MESSAGE, can_refuse=True)
    assert result.refused == {"alice@example.test": "Not here.\r\nGo away."} and result.outbound == []
    assert local.outbox.prepared == [] and files(tmp_path, "alice") == {"new": [], "cur": []}


def test_a_reject_reason_that_is_not_ascii_is_sent_in_an_mdn_even_when_it_could_be_refused(tmp_path):
    local, _ = make(tmp_path, {"alice@example.test": 'require "reject"; reject "Je suis en congé.";'})
    result = deliver(local, ALICE, MESSAGE, can_refuse=True)
    assert result.refused == {} and [o.kind for _, o in result.outbound] == ["reject"]
    ereject, _ = make(tmp_path / "e", {"alice@example.test": 'require "ereject"; ereject "Je suis en congé.";'})
    assert deliver(ereject, ALICE, MESSAGE, can_refuse=True).refused == {"alice@example.test": "Je suis en congé."}


def test_refusal_reply_lines_are_printable_ascii():
    from mailstack.routing import refusal_reply

    reply = refusal_reply("Not here.\r\nJe suis en congé\rthird\x00line\n\n" + "x" * 1000)
    assert reply.code == 550 and reply.enhanced == "5.7.1"
    assert reply.lines()[:3] == ("Not here.", "Je suis en cong", "third line")
    assert len(reply.lines()[3]) == 400
    wire = reply.to_bytes()
    assert wire.isascii() and wire.count(b"\r\n") == 4 and wire.startswith(b"550-5.7.1 Not here.\r\n")
    assert refusal_reply("\x01\x02").lines() == ("Message refused by the recipient",)


def test_a_redirect_that_cannot_be_queued_keeps_the_copy_in_inbox(tmp_path):
    local, _ = make(tmp_path, {"alice@example.test": 'redirect "elsewhere@example.net";'})
    local.outbox.fail = OSError(28, "No space left on device")
    result = deliver(local, ALICE, MESSAGE)
    assert result.delivered == {"alice@example.test": None} and result.outbound == []
    assert len(files(tmp_path, "alice")["new"]) == 1


def test_a_vacation_reply_waits_for_its_copy_to_be_filed(tmp_path):
    """A held mailbox's reply is withdrawn and not remembered; at the retry it goes out."""
    clock = Clock()
    memory = VacationMemory(tmp_path / "vacation.sqlite3")
    local, accounts = make(tmp_path, {"alice@example.test": VACATION}, replied=memory, clock=clock)
    user = accounts.users["alice@example.test"]
    accounts.users["alice@example.test"] = user.__class__(user.address, "", 10)  # full
    both = {**ALICE, "bob@example.test": "bob@example.test"}
    held = deliver(local, both, MESSAGE)
    assert set(held.held) == {"alice@example.test"} and held.outbound == []
    assert [o.kind for o in local.outbox.aborted] == ["vacation"]
    accounts.users["alice@example.test"] = user  # room again: the queue's retry
    retry = deliver(local, ALICE, MESSAGE)
    assert [o.kind for _, o in retry.outbound] == ["vacation"] and local.outbox.committed == [retry.outbound[0][1]]
    assert deliver(local, ALICE, MESSAGE).outbound == []  # remembered now
    memory.close()


def test_two_replies_prepared_at_once_send_one(tmp_path):
    clock = Clock()
    memory = VacationMemory(tmp_path / "vacation.sqlite3")
    local, _ = make(tmp_path, {"alice@example.test": VACATION}, replied=memory, clock=clock)
    first = deliver(local, ALICE, MESSAGE)
    [(_, reply)] = first.outbound
    assert reply.confirm is not None
    assert not Deferred_result(reply.confirm())  # a second message's reply, confirmed after the first
    memory.close()


def Deferred_result(coroutine):
    from twisted.internet.defer import Deferred

    out: list = []
    Deferred.fromCoroutine(coroutine).addBoth(out.append)
    return out[0]


def test_mailboxexists_several_levels_deep(tmp_path):
    script = ('require ["fileinto", "mailbox"]; if mailboxexists "A" { if mailboxexists "B" { '
              'if mailboxexists "C" { fileinto :create "C"; } } }')
    local, asked = _with_folders(tmp_path, script, {"A", "B", "C"})
    assert deliver(local, ALICE, MESSAGE).delivered == {"alice@example.test": "C"}
    assert sorted(asked) == ["A", "B", "C"]


def test_a_copy_that_falls_back_to_inbox_keeps_the_flags_of_both(tmp_path):
    script = 'require ["fileinto", "imap4flags"]; fileinto :flags "\\\\Flagged" "Missing"; keep :flags "\\\\Seen";'
    local, _ = _with_folders(tmp_path, script, set())
    assert deliver(local, ALICE, MESSAGE).delivered == {"alice@example.test": None}
    [name] = files(tmp_path, "alice")["cur"]
    assert name.endswith(":2,FS")


LONG_REASON = "Je suis absent jusqu'à lundi.\r\nUne ligne\rseule\n" + "très longue " * 500


def _all_lines_short(data: bytes) -> bool:
    return all(len(line) <= 998 for line in data.split(b"\r\n"))


def test_rejection_notices_carry_any_reason_in_7_bit_lines(tmp_path):
    from mailstack.sieve import actions

    for extended in (False, True):
        out = actions.rejection(MESSAGE, sender="bob@example.org", mailbox="alice@example.test",
                                original="alice@example.test", reason=LONG_REASON, extended=extended,
                                hostname="mail.example.test", queue_id="QID", arrival=0.0, now=0.0)
        assert out.message.isascii() and _all_lines_short(out.message) and b"\r" not in out.message.replace(
            b"\r\n", b"")
        notice = message_from_bytes(out.message, policy=SMTP)
        human = next(notice.iter_parts()).get_content().replace("\r\n", "\n")
        assert "Je suis absent jusqu'à lundi.\nUne ligne\nseule\n" in human and human.count("très longue") == 500
    assert b"Diagnostic-Code: smtp; 550 5.7.1 Je suis absent jusqu' lundi. Une ligne seule" in out.message


def test_a_mime_vacation_reason_is_made_7_bit(tmp_path):
    from mailstack.sieve import actions

    reason = ("Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; "
              "charset=utf-8\r\n\r\n" + "été " * 400 + "\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>été</p>\r\n--b--\r\n")
    out = actions.vacation(MESSAGE, to="bob@example.org", sender_address="alice@example.test", reason=reason,
                           subject=None, mime_reason=True, hostname="mail.example.test", now=0.0)
    assert out.message.isascii() and _all_lines_short(out.message)
    reply = message_from_bytes(out.message, policy=SMTP)
    plain, html = reply.iter_parts()
    assert plain.get_content().count("été") == 400 and "<p>été</p>" in html.get_content()


def test_a_reply_to_an_address_that_is_not_ascii_keeps_it_whole(tmp_path):
    from mailstack.sieve import actions

    out = actions.vacation(MESSAGE, to="jörg@example.org", sender_address="alice@example.test", reason="Away.",
                           subject=None, mime_reason=False, hostname="mail.example.test", now=0.0)
    assert "To: jörg@example.org\r\n".encode() in out.message and b"=?" not in out.message.split(b"Subject")[0]


def _stored(tmp_path, user: str, folder: str = "") -> list[bytes]:
    base = tmp_path / "maildirs" / "example.test" / user / (f".{folder}" if folder else "")
    return [p.read_bytes() for sub in ("new", "cur") if (base / sub).exists() for p in sorted((base / sub).iterdir())]


def test_editheader_changes_the_filed_copy_and_the_redirect(tmp_path):
    script = ('require ["editheader", "copy"]; addheader "X-Filtered" "yes"; deleteheader "Subject"; '
              'redirect :copy "x@example.net";')
    local, _ = make(tmp_path, {"alice@example.test": script})
    result = deliver(local, ALICE, MESSAGE)
    [stored] = _stored(tmp_path, "alice")
    assert b"X-Filtered: yes\r\n" in stored and b"Subject:" not in stored and stored.endswith(b"\r\n\r\nbody\r\n")
    [(_, out)] = result.outbound
    assert b"X-Filtered: yes\r\n" in out.message and b"Subject:" not in out.message
    bob = deliver(local, {"bob@example.test": "bob@example.test"}, MESSAGE)  # no script: as it came
    assert bob.delivered == {"bob@example.test": None} and b"Subject:" in _stored(tmp_path, "bob")[0]


def test_include_reads_the_users_and_the_global_scripts(tmp_path):
    script = ('require ["include", "fileinto"]; include :personal "lists"; include :global "spam"; '
              'fileinto "Rest";')
    local, accounts = make(tmp_path, {"alice@example.test": script})
    accounts.named[("alice@example.test", "lists")] = ('require "fileinto"; '
                                                       'if header :contains "subject" "plans" { fileinto "Plans"; }')
    accounts.global_scripts["spam"] = 'require "imap4flags"; addflag "\\\\Flagged";'
    assert deliver(local, ALICE, MESSAGE).delivered == {"alice@example.test": "Plans"}
    del accounts.global_scripts["spam"]  # a missing include without :optional: the run fails, the copy is kept
    assert deliver(local, ALICE, MESSAGE).delivered == {"alice@example.test": None}


def test_currentdate_reads_the_delivery_clock(tmp_path):
    clock = Clock()  # 2027-01-15 08:00:00 UTC
    script = ('require ["date", "relational", "fileinto"]; '
              'if currentdate :zone "+0000" :value "eq" "date" "2027-01-15" { fileinto "Today"; }')
    local, _ = make(tmp_path, {"alice@example.test": script}, clock=clock)
    assert deliver(local, ALICE, MESSAGE).delivered == {"alice@example.test": "Today"}
    clock.now += 86400
    assert deliver(local, ALICE, MESSAGE).delivered == {"alice@example.test": None}
