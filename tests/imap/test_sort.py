"""SORT and UID SORT (RFC 5256 §3), DISPLAYFROM/DISPLAYTO (RFC 5957), base subjects (§2.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.imap.sort import base_subject


def message(subject: str, sender: str, to: str, date: str, body: str = "x") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nCc: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n\r\n{body}\r\n").encode()


@pytest.fixture
def box(world, client):
    world.deliver(message("Re: Budget", "Zed <zed@example.test>", "bob@example.test",
                          "Mon, 23 Nov 2026 10:00:00 +0000", "a longer body than the others"))
    world.deliver(message("[team] budget", "alice@example.test", "Carol <carol@example.test>",
                          "Mon, 23 Nov 2026 12:00:00 +0200"))  # 10:00 UTC: the same instant as #1
    world.deliver(message("Agenda", "=?utf-8?q?=C3=89mile?= <emile@example.test>", "amy@example.test",
                          "Sun, 22 Nov 2026 09:00:00 +0000"))
    world.deliver(b"Subject: no date, no addresses\r\n\r\nbody\r\n")
    client.ok("SELECT INBOX")
    return client


def sort(client, command: str) -> list[int]:
    untagged = client.ok(command)
    [line] = [u for u in untagged if u.startswith(b"* SORT")]
    return [int(x) for x in line.split()[2:]]


@pytest.mark.parametrize("criteria,expected", [
    ("(SUBJECT)", [3, 1, 2, 4]),  # agenda, budget, budget (ties in mailbox order), no date
    ("(REVERSE SUBJECT)", [4, 1, 2, 3]),  # REVERSE turns the key, not the tie-break
    ("(DATE)", [4, 3, 1, 2]),  # no Date: the internal date (now) would be last, so 4... see below
    ("(FROM)", [4, 2, 3, 1]),  # "", alice, emile, zed
    ("(DISPLAYFROM)", [4, 2, 1, 3]),  # "", alice@example.test, Zed, Émile (code points: É after Z)
    ("(TO)", [4, 3, 1, 2]),  # "", amy, bob, carol
    ("(DISPLAYTO)", [4, 3, 1, 2]),  # amy@…, bob@…, Carol
    ("(REVERSE DATE)", [4, 1, 2, 3]),  # the same instant: mailbox order, even reversed
    ("(ARRIVAL)", [1, 2, 3, 4]),  # delivered within one second: mailbox order
    ("(SUBJECT REVERSE DATE)", [3, 1, 2, 4]),
])
def test_sort_keys(box, criteria, expected):
    if criteria == "(DATE)":  # the undated message sorts by its internal date: now, after the others
        expected = [3, 1, 2, 4]
    assert sort(box, f"SORT {criteria} UTF-8 ALL") == expected


def test_sort_with_search_criteria_uid_form_and_errors(box):
    assert sort(box, "SORT (SUBJECT) UTF-8 NOT FROM zed") == [3, 2, 4]
    sizes = {int(line.split()[1]): int(line.rsplit(b" ", 1)[1].rstrip(b")"))
             for line in box.ok("FETCH 1:* RFC822.SIZE")}
    uids = [int(x) for x in box.ok("UID SEARCH ALL")[0].split()[2:]]
    by_size = sorted(sizes, key=lambda n: (-sizes[n], n))
    assert sort(box, "UID SORT (REVERSE SIZE) US-ASCII ALL") == [uids[n - 1] for n in by_size]
    assert sort(box, "SORT (SIZE) UTF-8 ALL") == sorted(sizes, key=lambda n: (sizes[n], n))
    assert box.cmd("SORT (COLOUR) UTF-8 ALL")[1].startswith(b"BAD")
    assert box.cmd("SORT (REVERSE) UTF-8 ALL")[1].startswith(b"BAD")
    assert box.cmd("SORT (DATE) KOI8-R ALL")[1].startswith(b"NO [BADCHARSET")
    assert box.cmd("SORT (DATE) UTF-8")[1].startswith(b"BAD")
    assert {b"SORT", b"SORT=DISPLAY"} <= set(box.ok("CAPABILITY")[0].split())


@pytest.mark.parametrize("subject,base", [
    ("Re: hello", "hello"), ("RE: [list] Re: Fwd: hello (fwd)", "hello"), ("[list] hello", "hello"),
    ("[list]", "[list]"), ("Fwd: [fwd: Re: test]", "test"), ("re[2]: spam", "spam"), ("Re: Re: Re:", ""),
    ("=?utf-8?q?R=C3=A9union?=", "Réunion"), ("many  spaces\t(fwd) (FWD)", "many spaces"),
    ("Fw: [a] [b] x", "x"), ("Return of the King", "Return of the King"),
])
def test_base_subject(subject, base):
    assert base_subject(subject) == base


def post(subject: str, date: str, message_id: str = "", references: str = "", in_reply_to: str = "") -> bytes:
    lines = [f"Subject: {subject}", f"Date: {date}", "From: a@example.test"]
    if message_id:
        lines.append(f"Message-ID: {message_id}")
    if references:
        lines.append(f"References: {references}")
    if in_reply_to:
        lines.append(f"In-Reply-To: {in_reply_to}")
    return ("\r\n".join(lines) + "\r\n\r\nx\r\n").encode()


@pytest.fixture
def threads(world, client):
    for raw in (
        post("Party", "Sun, 1 Nov 2026 00:00:00 +0000", "<a@x>"),
        post("Re: Party", "Mon, 2 Nov 2026 00:00:00 +0000", "<b@x>", "<a@x>"),
        post("Re: Party", "Tue, 3 Nov 2026 00:00:00 +0000", "<c@x>", "<a@x> <b@x>"),
        post("Lunch", "Sun, 1 Nov 2026 12:00:00 +0000", "<d@x>"),
        post("Re: Party", "Wed, 4 Nov 2026 00:00:00 +0000", "<e@x>", in_reply_to="<a@x>"),
        post("Re: Lost", "Fri, 30 Oct 2026 00:00:00 +0000", "<f@x>", "<missing@x>"),  # its parent is not here
        post("Re: Lunch", "Thu, 5 Nov 2026 00:00:00 +0000"),  # no Message-ID, no references: by subject
    ):
        world.deliver(raw)
    client.ok("SELECT INBOX")
    return client


def thread_of(client, command: str) -> bytes:
    [line] = [u for u in client.ok(command) if u.startswith(b"* THREAD")]
    return line[len(b"* THREAD "):]


def test_thread_references(threads):
    """RFC 5256 §4 REFERENCES: chains by References/In-Reply-To, an absent parent's only child
    promoted, a reply without references joined to its subject's thread."""
    assert thread_of(threads, "THREAD REFERENCES UTF-8 ALL") == b"(6)(1 (2 3)(5))(4 7)"
    # Without 1, its replies hang from an empty container for <a@x>: at the top, one with two
    # children stays (step 3B), dated by its first child, so after 4 (Nov 1) and before 7.
    assert thread_of(threads, "THREAD REFERENCES UTF-8 NOT 1") == b"(6)(4 7)((2 3)(5))"


def test_thread_orderedsubject_and_uid_form(threads):
    assert thread_of(threads, "THREAD ORDEREDSUBJECT UTF-8 ALL") == b"(6)(1 (2)(3)(5))(4 7)"  # one child: no nesting
    uids = [int(x) for x in threads.ok("UID SEARCH ALL")[0].split()[2:]]
    expected = "({}) ({} ({})({})({}))".format(*(uids[n - 1] for n in (6, 1, 2, 3, 5))).replace(") (", ")(")
    assert thread_of(threads, "UID THREAD ORDEREDSUBJECT UTF-8 NOT SUBJECT lunch").decode() == expected
    assert thread_of(threads, "THREAD REFERENCES UTF-8 SUBJECT nothing-matches") == b""
    assert threads.cmd("THREAD BYMOON UTF-8 ALL")[1].startswith(b"BAD")
    assert {b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES"} <= set(threads.ok("CAPABILITY")[0].split())


def test_thread_survives_loops_and_duplicate_message_ids(world, client):
    world.deliver(post("A", "Sun, 1 Nov 2026 00:00:00 +0000", "<p@x>", "<q@x>"))
    world.deliver(post("B", "Mon, 2 Nov 2026 00:00:00 +0000", "<q@x>", "<p@x>"))  # each the other's parent
    world.deliver(post("C", "Tue, 3 Nov 2026 00:00:00 +0000", "<p@x>"))  # the same Message-ID as the first
    world.deliver(post("D", "Wed, 4 Nov 2026 00:00:00 +0000", "<r@x>", "<r@x>"))  # its own parent
    client.ok("SELECT INBOX")
    # 1 is filed under <q@x> first; 2 then may not become 1's child (a loop): 2 is the root
    assert thread_of(client, "THREAD REFERENCES UTF-8 ALL") == b"(2 1)(3)(4)"


def test_thread_over_too_many_messages_is_refused(threads, monkeypatch):
    from mailstack.imap import selected

    monkeypatch.setattr(selected, "MAX_MESSAGES", 3)
    assert threads.cmd("THREAD REFERENCES UTF-8 ALL")[1].startswith(b"NO [LIMIT]")
    assert thread_of(threads, "THREAD REFERENCES UTF-8 1:3") == b"(1 2 3)"


def test_a_reply_chain_deeper_than_the_stack_threads_and_is_cut_at_the_limit(world, client, monkeypatch):
    from mailstack.imap import sort as sort_module

    depth = 1100  # deeper than Python's recursion limit: pruning and rendering do not recurse
    for n in range(depth):
        parent = f"<m{n - 1}@x>" if n else ""
        world.deliver(post(f"step {n}", f"Sun, 1 Nov 2026 00:{n // 60 % 60:02d}:{n % 60:02d} +0000",
                           f"<m{n}@x>", parent))
    client.ok("SELECT INBOX")
    monkeypatch.setattr(sort_module, "MAX_DEPTH", 2000)
    assert thread_of(client, "THREAD REFERENCES UTF-8 ALL") == (
        "(" + " ".join(str(n) for n in range(1, depth + 1)) + ")").encode()
    monkeypatch.setattr(sort_module, "MAX_DEPTH", 500)  # past it a chain is cut, never looped
    import mailstack.imap.selected as selected

    selected._THREADS.clear()  # the same question again would be answered from the last answer
    out = thread_of(client, "THREAD REFERENCES UTF-8 ALL")
    numbers = out.replace(b"(", b" ").replace(b")", b" ").split()
    assert sorted(int(n) for n in numbers) == list(range(1, depth + 1))  # each message once
    assert out.startswith(b"(1 2 3 ") and out.count(b"(") >= 2 and out.count(b"(") == out.count(b")")


def test_what_sort_and_thread_worked_out_is_read_back_after_a_restart(world, box, monkeypatch):
    """The values SORT and THREAD take from headers are kept in the folder, so the first SORT
    after a restart reads no message file (bench: 100,000 messages)."""
    import mailstack.imap.selected as selected
    from mailstack.maildir.derived import PREFIX

    from .harness import USER, World

    expected = {c: sort(box, f"SORT {c} UTF-8 ALL") for c in ("(SUBJECT)", "(DATE)", "(FROM)", "(DISPLAYTO)")}
    threads = box.ok("THREAD REFERENCES UTF-8 ALL")
    path = world.store.layout.maildir_path(USER, None)
    assert {p.name for p in path.iterdir() if p.name.startswith(PREFIX)} == {
        PREFIX + k for k in ("subject", "date", "from", "displayto", "thread")}
    read: list[object] = []
    real = selected._header_of
    monkeypatch.setattr(selected, "_header_of", lambda p: (read.append(p), real(p))[1])
    again = World.create(world.root).connect().login()
    again.ok("SELECT INBOX")
    assert {c: sort(again, f"SORT {c} UTF-8 ALL") for c in expected} == expected
    assert again.ok("THREAD REFERENCES UTF-8 ALL") == threads
    assert read == []
    world.deliver(message("Zebra", "a@example.test", "b@example.test", "Mon, 23 Nov 2026 09:00:00 +0000"))
    third = World.create(world.root).connect().login()
    third.ok("SELECT INBOX")
    assert sort(third, "SORT (SUBJECT) UTF-8 ALL") == [3, 1, 2, 4, 5]
    assert len(read) == 1  # only the new message's header


def test_a_damaged_or_foreign_values_file_is_worked_out_again(world, box):
    from mailstack.maildir.derived import PREFIX

    from .harness import USER, World

    expected = sort(box, "SORT (SUBJECT) UTF-8 ALL")
    path = world.store.layout.maildir_path(USER, None)
    good = (path / (PREFIX + "subject")).read_text()
    for damage in ("garbage\n", good + '[[1, ["zzz", 7]], [2, 5], "x"]\n' + "[[3,", good.replace("[", "{", 3),
                   good.split("\n")[0] + "\n" + '[[1, "not a subject"], [2, [1, 2, 3]]]\n'):
        (path / (PREFIX + "subject")).write_text(damage)
        again = World.create(world.root).connect().login()
        again.ok("SELECT INBOX")
        assert sort(again, "SORT (SUBJECT) UTF-8 ALL") == expected
    (path / (PREFIX + "subject")).write_text(good.replace("mailstack-derived 1 ", "mailstack-derived 1 9"))
    again = World.create(world.root).connect().login()
    again.ok("SELECT INBOX")
    assert sort(again, "SORT (SUBJECT) UTF-8 ALL") == expected  # another UIDVALIDITY's: ignored


def test_the_values_file_is_written_again_when_it_has_many_batches(world, box, monkeypatch):
    import mailstack.maildir.derived as derived

    from .harness import USER

    monkeypatch.setattr(derived, "MAX_BATCHES", 3)
    sort(box, "SORT (SUBJECT) UTF-8 ALL")
    path = world.store.layout.maildir_path(USER, None) / (derived.PREFIX + "subject")
    for i in range(5):
        world.deliver(message(f"More {i}", "a@example.test", "b@example.test", "Mon, 23 Nov 2026 09:00:00 +0000"))
        box.ok("NOOP")
        sort(box, "SORT (SUBJECT) UTF-8 ALL")
        assert len(path.read_text().splitlines()) <= 1 + 3
    values, _ = derived.load(path.parent, int(box.ok("STATUS INBOX (UIDVALIDITY)")[0].split()[-1].rstrip(b")")),
                             "subject")
    assert len(values) == 9


def _reference_values(header: bytes, wanted: set[str]) -> dict:
    """values_of as first written: every field split out by mime.header_fields, dates read by
    email.utils. The faster one must give the same."""
    import email.utils
    import sys

    from mailstack.imap import mime
    from mailstack.imap import sort as S

    fields: dict[str, str] = {}
    for name, raw in mime.header_fields(header):
        if name in S.FIELDS and name not in fields:
            if len(raw) > S.FIELD_LIMIT:
                colon = raw.find(b":") + 1
                raw = raw[:colon] + (raw[-S.FIELD_LIMIT:] if name == "references" else raw[colon:colon + S.FIELD_LIMIT])
            fields[name] = mime.field_value(raw)
    out: dict = {}
    for key in wanted:
        if key == "date":
            parsed = email.utils.parsedate_tz(fields.get("date", "")) if fields.get("date") else None
            try:
                out[key] = float(email.utils.mktime_tz(parsed)) if parsed else None
            except (OverflowError, ValueError):
                out[key] = None
        elif key == "subject":
            subject, reply = S._base_subject(fields.get("subject", ""))
            out[key] = (S._fold(subject), reply)
        elif key == "thread":
            own = S._ids(fields.get("message-id", ""))
            refs = S._ids(fields.get("references", "")) or S._ids(fields.get("in-reply-to", ""))[:1]
            out[key] = (own[0] if own else "", tuple(refs[-S.MAX_REFERENCES:]))
        else:
            out[key] = sys.intern(S._fold(S._first_address(fields.get(key.removeprefix("display"), ""),
                                                           key.startswith("display"))))
    return out


_NAMES = st.sampled_from(["Subject", "SUBJECT", "subject ", "Date", "From", "To", "Cc", "Message-ID",
                          "References", "In-Reply-To", "X-Subject", "Subject2", "Received", "DATE"])
_VALUES = st.sampled_from(["Re: [list] Hello", "Mon, 23 Nov 2026 10:00:00 +0100", "23 Nov 2026 10:00 -0000",
                           "Tue, 1 Dec 2026 01:02:03 +0000 (UTC)", "Bob <bob@example.test>", "<a@b> <c@d>",
                           "=?utf-8?q?=C3=89mile?= <e@x>", "", "x" * 3000, "line\r\n\tfolded", "a\n b",
                           "a\rb", "x\rSubject: hidden", "c\r\r\n d"])


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=8), st.sampled_from(["\r\n", "\n"]))
def test_values_of_reads_what_the_full_header_parse_reads(fields, end):
    from mailstack.imap.sort import values_of

    header = "".join(f"{n}: {v}{end}" for n, v in fields).encode() + end.encode()
    wanted = {"date", "subject", "from", "to", "cc", "displayfrom", "displayto", "thread"}
    assert values_of(header, wanted) == _reference_values(header, wanted)


def test_past_the_memory_limit_values_come_from_the_files_not_the_headers(world, client, monkeypatch):
    """With more values wanted than the in-memory limit holds, each header is still read once."""
    import mailstack.imap.selected as selected
    import mailstack.imap.sort as S

    monkeypatch.setattr(S, "CACHE_LIMIT", 10)  # stands for 400,000: 5 keys x 100,000 messages
    for i in range(4):
        world.deliver(message(f"s{i}", f"u{i}@example.test", f"t{i}@example.test", "Mon, 23 Nov 2026 10:00:00 +0000"))
    client.ok("SELECT INBOX")
    read: list[object] = []
    real = selected._header_of
    monkeypatch.setattr(selected, "_header_of", lambda p: (read.append(p), real(p))[1])
    first = sort(client, "SORT (DATE SUBJECT FROM TO CC) UTF-8 ALL")
    for _ in range(3):
        assert sort(client, "SORT (DATE SUBJECT FROM TO CC) UTF-8 ALL") == first
    assert len(read) == 4


def test_a_values_file_from_elsewhere_costs_only_its_values(world, client):
    from mailstack.maildir import derived

    from .harness import USER, World, uidvalidity

    world.deliver(message("a", "u@example.test", "t@example.test", "Mon, 23 Nov 2026 10:00:00 +0000"))
    uv = uidvalidity(client.ok("SELECT INBOX"))
    root = world.store.layout.maildir_path(USER, None)
    (root / (derived.PREFIX + "date")).write_text(f"mailstack-derived 1 {uv}\n[[1,{10**400}]]\n")
    (root / (derived.PREFIX + "subject")).write_text(f"mailstack-derived 1 {uv}\n" + "[" * 100_000 + "\n")
    again = World.create(world.root).connect().login()
    again.ok("SELECT INBOX")
    assert sort(again, "SORT (DATE) UTF-8 ALL") == [1] and sort(again, "SORT (SUBJECT) UTF-8 ALL") == [1]
    # a batch for another folder of the same name is not appended to this one's file
    assert derived.append(root, uv + 1, "date", [(1, 5.0)], 1) == 0
    assert "5.0" not in (root / (derived.PREFIX + "date")).read_text()


def test_the_same_thread_again_is_answered_from_the_last_answer_until_something_changes(world, threads,
                                                                                         monkeypatch):
    import mailstack.imap.sort as sort_module

    first = thread_of(threads, "THREAD REFERENCES UTF-8 ALL")
    calls: list[int] = []
    real = sort_module.thread
    import mailstack.imap.selected as selected

    monkeypatch.setattr(selected, "thread", lambda *a: (calls.append(1), real(*a))[1])
    assert thread_of(threads, "THREAD REFERENCES UTF-8 ALL") == first and calls == []
    assert thread_of(threads, "UID THREAD REFERENCES UTF-8 ALL") == first and calls == []  # UIDs = numbers here
    threads.ok("STORE 1 +FLAGS (\\Deleted)")
    threads.ok("EXPUNGE")
    assert thread_of(threads, "THREAD REFERENCES UTF-8 ALL") != first and calls == [1]
    assert thread_of(threads, "UID THREAD REFERENCES UTF-8 ALL") != first and calls == [1, 1]  # now they differ
