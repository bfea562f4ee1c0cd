"""Sieve at local delivery: the user's active script files each copy (SieveFilter in LocalDelivery)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred

from mailstack.delivery import InboxFilter, LocalDelivery
from mailstack.maildir import MaildirDelivery
from mailstack.notify import MailboxEvents
from mailstack.sieve.filter import SieveFilter
from mailstack.testing import FakeAccounts, SyncReactor, SyncThreadPool

MESSAGE = b"From: bob@example.org\r\nSubject: [dev] release\r\nList-Id: <dev.example.org>\r\n\r\nbody\r\n"


async def inline(fn, *args):
    return fn(*args)


def make(tmp_path: Path, scripts: dict[str, str], **options) -> tuple[LocalDelivery, FakeAccounts]:
    accounts = FakeAccounts(users=["alice@example.test", "bob@example.test"])
    accounts.scripts.update(scripts)
    maildir = MaildirDelivery(tmp_path / "maildirs", hostname="mail.example.test", reactor=SyncReactor(),
                              threadpool=SyncThreadPool())
    sieve = SieveFilter(accounts, InboxFilter(), run=inline, hostname="mail.example.test", **options)
    local = LocalDelivery(accounts, maildir, MailboxEvents(), sieve)
    local.outbox = Outbox()
    return local, accounts


class Outbox:
    """Records what local delivery prepares, commits and withdraws; ``fail`` makes prepare raise."""

    def __init__(self) -> None:
        self.prepared: list = []
        self.committed: list = []
        self.aborted: list = []
        self.fail: Exception | None = None

    async def prepare_outbound(self, outbound, cause):
        if self.fail is not None:
            raise self.fail
        self.prepared.append(outbound)
        return outbound

    async def commit(self, prepared):
        self.committed.append(prepared)

    async def abort(self, prepared):
        self.aborted.append(prepared)


def deliver(local: LocalDelivery, to: dict[str, str], message: bytes = MESSAGE, sender: str = "bob@example.org",
            **options):
    results: list = []
    Deferred.fromCoroutine(local.deliver("QID", sender, to, message, can_hold=True, **options)).addBoth(
        results.append)
    return results[0]


def files(tmp_path: Path, user: str, folder: str = "") -> dict[str, list[str]]:
    base = tmp_path / "maildirs" / "example.test" / user / (f".{folder}" if folder else "")
    return {sub: sorted(p.name for p in (base / sub).iterdir()) if (base / sub).exists() else [] for sub in ("new", "cur")}


def test_fileinto_with_flags_and_a_copy_kept(tmp_path):
    local, _ = make(tmp_path, {"alice@example.test": '''require ["fileinto", "imap4flags", "copy"];
        if header :contains "List-Id" "dev.example.org" { fileinto :copy :flags "\\\\Seen \\\\Flagged" "Lists.dev"; }'''})
    result = deliver(local, {"alice@example.test": "alice@example.test", "bob@example.test": "bob@example.test"})
    assert result.held == {} and set(result.delivered) == {"alice@example.test", "bob@example.test"}
    lists = files(tmp_path, "alice", "Lists.dev")
    assert lists["new"] == [] and len(lists["cur"]) == 1 and lists["cur"][0].endswith(":2,FS")
    assert len(files(tmp_path, "alice")["new"]) == 1  # the implicit keep (:copy)
    assert len(files(tmp_path, "bob")["new"]) == 1  # no script: INBOX


def test_discard_stores_nothing_and_detail_is_seen(tmp_path):
    local, _ = make(tmp_path, {"alice@example.test": '''require ["envelope", "subaddress", "fileinto"];
        if envelope :detail "to" "spam" { discard; stop; }
        fileinto "Tagged";'''})
    result = deliver(local, {"alice@example.test": "alice+spam@example.test"})
    assert result.discarded == {"alice@example.test"} and result.delivered == {} and result.held == {}
    assert files(tmp_path, "alice") == {"new": [], "cur": []}
    deliver(local, {"alice@example.test": "alice+other@example.test"})
    assert len(files(tmp_path, "alice", "Tagged")["new"]) == 1


def test_a_failing_script_keeps_the_message_in_inbox(tmp_path, monkeypatch):
    import mailstack.sieve.interpreter as interpreter

    monkeypatch.setattr(interpreter, "MAX_STEPS", 3)
    local, _ = make(tmp_path, {"alice@example.test": 'require "fileinto"; if allof (true, true, true, true) '
                                                     '{ fileinto "Never"; }'})
    assert deliver(local, {"alice@example.test": "alice@example.test"}).delivered == {"alice@example.test": None}
    assert len(files(tmp_path, "alice")["new"]) == 1 and files(tmp_path, "alice", "Never")["new"] == []


def test_a_stored_script_that_no_longer_compiles_keeps_the_message(tmp_path):
    local, _ = make(tmp_path, {"alice@example.test": "fileinto \"x\";"})  # no require: refused
    assert deliver(local, {"alice@example.test": "alice@example.test"}).delivered == {"alice@example.test": None}


def test_a_copy_that_fails_after_another_copy_of_the_same_mailbox_is_not_queued_again(tmp_path):
    """alice's Junk copy cannot be written ("Junk" is a file), her INBOX copy can: she has the
    message once and is not held (a retry would give her a second INBOX copy); bob is filed
    normally."""
    local, _ = make(tmp_path, {"alice@example.test": 'require ["fileinto", "copy"]; fileinto :copy "Junk";',
                               "bob@example.test": 'require "fileinto"; fileinto "Other";'})
    alice = tmp_path / "maildirs" / "example.test" / "alice"
    alice.mkdir(parents=True)
    (alice / ".Junk").write_text("not a folder")
    result = deliver(local, {"bob@example.test": "bob@example.test", "alice@example.test": "alice@example.test"})
    assert result.held == {} and set(result.delivered) == {"alice@example.test", "bob@example.test"}
    assert len(files(tmp_path, "alice")["new"]) == 1 and len(files(tmp_path, "bob", "Other")["new"]) == 1


def test_inbox_prefixed_folders_are_the_ones_imap_opens(tmp_path):
    local, _ = make(tmp_path, {"alice@example.test": 'require "fileinto"; fileinto "inbox.Lists";'})
    deliver(local, {"alice@example.test": "alice@example.test"})
    assert len(files(tmp_path, "alice", "INBOX.Lists")["new"]) == 1
