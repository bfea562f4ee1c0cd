"""HAVESPACE, PUTSCRIPT, CHECKSCRIPT, GETSCRIPT, LISTSCRIPTS, SETACTIVE, DELETESCRIPT, RENAMESCRIPT."""

from __future__ import annotations

import pytest

from .harness import ALICE, BOB, GOOD, HeldRun, harness


@pytest.fixture
def h(tmp_path):
    h = harness(tmp_path)
    assert h.login() == 'OK "Logged in"'
    return h


def test_putscript_stores_a_checked_script_and_getscript_returns_it_as_a_literal(h):
    assert h.put("main") == 'OK "Script stored"'
    assert h.store.get_script(ALICE, "main") == GOOD.decode()
    assert h.send('GETSCRIPT "main"\r\n') == b"{%d}\r\n" % len(GOOD) + GOOD + b'\r\nOK "Getscript completed"\r\n'


def test_putscript_replaces_a_script_of_the_same_name(h):
    h.put("main")
    assert h.put("main", b"keep;\r\n") == 'OK "Script stored"'
    assert h.store.get_script(ALICE, "main") == "keep;\r\n"


def test_a_bad_script_is_refused_with_its_line_and_column_and_not_stored(h):
    script = b'require "fileinto";\r\nif true {\r\n  frobnicate;\r\n}\r\n'
    answer = h.put("bad", script)
    assert answer.startswith('NO "line 3, column 3: ') and "frobnicate" in answer
    assert h.store.list_scripts(ALICE) == []
    assert h.reply(f"CHECKSCRIPT {{{len(script)}+}}\r\n".encode() + script + b"\r\n") == answer


def test_a_script_that_requires_an_unsupported_extension_is_refused(h):
    answer = h.put("v", b'require "nonesuch";\r\n')
    assert answer.startswith('NO "line 1, column 9: ') and "nonesuch" in answer


def test_a_script_that_is_not_utf8_is_refused_with_its_position(h):
    assert h.put("x", b'# caf\xe9\r\nkeep;\r\n').startswith('NO "line 1, column ')


def test_checkscript_stores_nothing(h):
    assert h.reply(f"CHECKSCRIPT {{{len(GOOD)}+}}\r\n".encode() + GOOD + b"\r\n") == 'OK "Script is valid"'
    assert h.store.list_scripts(ALICE) == []


def test_an_empty_script_is_refused(h):
    assert h.reply('PUTSCRIPT "e" ""\r\n') == 'NO "An empty script is not allowed"'
    assert h.reply('PUTSCRIPT "e" {0+}\r\n\r\n') == 'NO "An empty script is not allowed"'


def test_listscripts_marks_the_active_one(h):
    h.put("b")
    h.put('a "quoted" name')
    assert h.lines("LISTSCRIPTS\r\n") == ['"a \\"quoted\\" name"', '"b"', 'OK "Listscripts completed"']
    assert h.reply('SETACTIVE "b"\r\n') == 'OK "Script activated"'
    assert h.lines("LISTSCRIPTS\r\n") == ['"a \\"quoted\\" name"', '"b" ACTIVE', 'OK "Listscripts completed"']
    assert h.store.active_script(ALICE) == GOOD.decode()


def test_setactive_of_the_empty_name_deactivates_even_when_nothing_is_active(h):
    h.put("main")
    h.reply('SETACTIVE "main"\r\n')
    assert h.reply('SETACTIVE ""\r\n') == 'OK "No script is active"'
    assert h.store.active_script(ALICE) is None
    assert h.reply('SETACTIVE ""\r\n') == 'OK "No script is active"'


def test_missing_scripts_are_nonexistent(h):
    for command in ('GETSCRIPT "nope"', 'SETACTIVE "nope"', 'DELETESCRIPT "nope"', 'RENAMESCRIPT "nope" "x"'):
        assert h.reply(command + "\r\n") == 'NO (NONEXISTENT) "There is no script by that name"'


def test_the_active_script_cannot_be_deleted_until_deactivated(h):
    h.put("main")
    h.reply('SETACTIVE "main"\r\n')
    assert h.reply('DELETESCRIPT "main"\r\n') == (
        'NO (ACTIVE) "The active script cannot be deleted; make another one active (or none) first"')
    h.reply('SETACTIVE ""\r\n')
    assert h.reply('DELETESCRIPT "main"\r\n') == 'OK "Script deleted"'
    assert h.store.list_scripts(ALICE) == []


def test_renamescript_keeps_the_script_active_and_refuses_a_taken_name(h):
    h.put("old")
    h.put("other")
    h.reply('SETACTIVE "old"\r\n')
    assert h.reply('RENAMESCRIPT "old" "other"\r\n') == 'NO (ALREADYEXISTS) "A script by that name already exists"'
    assert h.reply('RENAMESCRIPT "old" "new"\r\n') == 'OK "Script renamed"'
    assert h.store.list_scripts(ALICE) == [("new", True), ("other", False)]


def test_havespace_checks_the_size_and_the_number_of_scripts(tmp_path):
    h = harness(tmp_path, max_script_size=100, max_scripts=2)
    h.login()
    assert h.reply('HAVESPACE "a" 100\r\n') == 'OK "Putscript would succeed"'
    assert h.reply('HAVESPACE "a" 101\r\n') == 'NO (QUOTA/MAXSIZE) "Scripts may be at most 100 octets"'
    h.put("a", b"keep;\r\n")
    h.put("b", b"keep;\r\n")
    assert h.reply('HAVESPACE "c" 10\r\n') == 'NO (QUOTA/MAXSCRIPTS) "At most 2 scripts; delete one first"'
    assert h.reply('HAVESPACE "a" 10\r\n') == 'OK "Putscript would succeed"'  # a replacement needs no room
    assert h.put("c", b"keep;\r\n") == 'NO (QUOTA/MAXSCRIPTS) "At most 2 scripts; delete one first"'
    assert h.reply('HAVESPACE "a" "ten"\r\n') == 'NO "Syntax error: HAVESPACE takes a name and a number"'


@pytest.mark.parametrize("name, why", [
    ('""', "it is empty"),
    ('"' + "n" * 129 + '"', "longer than 128 characters"),
    ("{3+}\r\na\tb", "control characters are not allowed"),
    ("{4+}\r\na\xc2\x85b", "control characters are not allowed"),
    ('"a\u2028b"', "control characters are not allowed"),
    ('"e\u0301"', "not in Unicode normal form C"),
])
def test_invalid_script_names_are_refused(h, name, why):
    wire = name.encode("utf-8") if not name.startswith("{4+}") else b"{4+}\r\na\xc2\x85b"
    assert h.reply(b"PUTSCRIPT " + wire + b' "keep;"\r\n') == f'NO "Invalid script name: {why}"'
    assert h.store.list_scripts(ALICE) == []


def test_a_name_of_128_characters_and_any_script_name_in_utf8_are_fine(h):
    assert h.put("n" * 128) == 'OK "Script stored"'
    assert h.put("Ferien – Sommer") == 'OK "Script stored"'
    assert [name for name, _ in h.store.list_scripts(ALICE)] == ["Ferien – Sommer", "n" * 128]


def test_each_user_sees_only_their_own_scripts(tmp_path):
    alice = harness(tmp_path)
    alice.login()
    alice.put("mine")
    bob = harness(tmp_path, store=alice.store)
    bob.login(BOB)
    assert bob.lines("LISTSCRIPTS\r\n") == ['OK "Listscripts completed"']
    assert bob.reply('GETSCRIPT "mine"\r\n').startswith("NO (NONEXISTENT)")


def test_a_change_made_by_someone_else_in_between_is_a_no_not_a_session_error(h):
    h.put("a")
    h.put("b")
    real = h.store.rename_script

    def raced(user, old, new):
        h.store.put_script(user, new, "keep;")
        return real(user, old, new)

    h.store.rename_script = raced  # the CLI stores "c" between the look and the rename
    assert h.reply('RENAMESCRIPT "a" "c"\r\n') == 'NO "a script called \'c\' exists already"'
    assert h.reply("NOOP\r\n") == 'OK "NOOP completed"'


def test_store_calls_wait_for_the_pool_and_the_reactor_never_runs_them(tmp_path):
    run = HeldRun()
    h = harness(tmp_path, run=run)
    h.login()
    assert h.send('LISTSCRIPTS\r\nNOOP\r\n') == b""  # nothing answered while the pool works
    assert [fn.__name__ for fn, _, _ in run.calls] == ["list_scripts"]
    run.release()
    assert h.read() == b'OK "Listscripts completed"\r\nOK "NOOP completed"\r\n'
    h.send(f'PUTSCRIPT "s" {{{len(GOOD)}+}}\r\n'.encode() + GOOD + b"\r\n")
    assert [fn.__name__ for fn, _, _ in run.calls] == ["check"]  # checking the script is pool work too
    run.release()
    assert [fn.__name__ for fn, _, _ in run.calls] == ["_put"]
    run.release()
    assert h.read() == b'OK "Script stored"\r\n'


def test_a_store_failure_is_trylater_and_the_session_goes_on(h):
    def broken(user):
        raise OSError("disk on fire")

    h.store.list_scripts = broken
    assert h.reply("LISTSCRIPTS\r\n") == 'NO (TRYLATER) "Internal error, try again later"'
    assert h.reply("NOOP\r\n") == 'OK "NOOP completed"'


def test_script_bodies_are_not_logged(tmp_path, logged):
    h = harness(tmp_path)
    h.login()
    h.put("secret-rules", b'# SECRET-BODY\r\nkeep;\r\n')
    h.put("bad", b'# SECRET-BODY\r\nfrobnicate "SECRET-ARG";\r\n')
    stored = [e for e in logged if "stored script" in e.get("log_format", "")]
    assert stored and stored[0]["session_id"] == h.session.session_id
    assert not any("SECRET" in repr(e) for e in logged)
