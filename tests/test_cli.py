"""Tests for mailstack.cli: the `mailstack` command line, driven through main()."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from mailstack import config
from mailstack.accounts import AccountChecker, SQLiteAccountStore
from mailstack.cli import COMMAND_GROUPS, main, run


@pytest.fixture
def conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILSTACK_CONFIG", raising=False)
    path = tmp_path / "mailstack.toml"
    path.write_text(
        'hostname = "mail.example.test"\n'
        'domains = ["example.test"]\n'
        "[storage]\n"
        f'accounts = "{tmp_path}/var/accounts.sqlite3"\n'
    )
    return path


@pytest.fixture
def accounts(conf: Path) -> Path:
    return conf.parent / "var" / "accounts.sqlite3"


def cli(conf: Path, *argv: str, stdin: str = "", monkeypatch: pytest.MonkeyPatch | None = None) -> int:
    if monkeypatch is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["--config", str(conf), *argv])


def output(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    captured = capsys.readouterr()
    return captured.out, captured.err


def assert_one_error_line(err: str, text: str) -> None:
    assert err == f"mailstack: {text}\n"


# -- domains ------------------------------------------------------------------------------


def test_domain_add_list_del(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(conf, "domain", "add", "Other.TEST") == 0
    assert cli(conf, "domain", "list") == 0
    assert output(capsys)[0] == "added domain other.test\nexample.test\nother.test\n"
    assert cli(conf, "domain", "del", "other.test") == 0
    assert cli(conf, "domain", "list") == 0
    assert output(capsys) == ("removed domain other.test\nexample.test\n", "")


def test_domain_from_config_cannot_be_deleted(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(conf, "domain", "del", "example.test") == 1
    assert_one_error_line(
        output(capsys)[1], f"domain example.test is listed in domains in {conf}; remove it there first"
    )


def test_domain_errors_exit_1(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(conf, "domain", "add", "example.test") == 1
    assert_one_error_line(output(capsys)[1], "domain example.test already exists")
    assert cli(conf, "domain", "add", "bad_domain") == 1
    assert_one_error_line(output(capsys)[1], "invalid domain 'bad_domain'")


# -- users --------------------------------------------------------------------------------


def test_user_add_list_passwd_quota_del(
    conf: Path, accounts: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (
        cli(
            conf,
            "user",
            "add",
            "Alice@Example.test",
            "--password-stdin",
            "--quota",
            "1M",
            stdin=" pass word \n",
            monkeypatch=monkeypatch,
        )
        == 0
    )
    assert cli(conf, "user", "list") == 0
    assert output(capsys) == ("added user alice@example.test\nalice@example.test\t1048576\tunlimited\n", "")
    with SQLiteAccountStore(accounts) as store:
        user = store.get_user("alice@example.test")
        assert user is not None and user.password_hash.startswith("$argon2id$")
        old_hash = user.password_hash
    assert (
        cli(conf, "user", "passwd", "alice@example.test", "--password-stdin", stdin="new\r\n", monkeypatch=monkeypatch)
        == 0
    )
    assert cli(conf, "user", "quota", "alice@example.test", "0", "--messages", "5000") == 0
    assert cli(conf, "user", "quota", "alice@example.test", "0") == 0  # the message limit stays
    assert cli(conf, "user", "list", "example.test") == 0
    assert output(capsys) == (
        "changed password of alice@example.test\n"
        "quota of alice@example.test is unlimited, messages 5000\n"
        "quota of alice@example.test is unlimited\n"
        "alice@example.test\tunlimited\t5000\n",
        "",
    )
    assert cli(conf, "user", "quota", "alice@example.test", "0", "--messages", "many") == 2
    assert "invalid number of messages 'many'" in output(capsys)[1]
    with SQLiteAccountStore(accounts) as store:
        user = store.get_user("alice@example.test")
        assert user is not None and user.password_hash != old_hash
    assert cli(conf, "user", "del", "alice@example.test") == 0
    assert cli(conf, "user", "list") == 0
    assert output(capsys) == ("removed user alice@example.test\n", "")


def test_user_add_errors(conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli(conf, "user", "add", "bob@nope.test", "--password-stdin", stdin="pw\n", monkeypatch=monkeypatch) == 1
    assert_one_error_line(
        output(capsys)[1], "unknown domain nope.test (add it first with: mailstack domain add nope.test)"
    )
    assert cli(conf, "user", "add", "a/b@example.test", "--password-stdin", stdin="pw\n", monkeypatch=monkeypatch) == 1
    assert output(capsys)[1].startswith("mailstack: invalid address 'a/b@example.test': ")
    assert cli(conf, "user", "add", "bob@example.test", "--password-stdin", stdin="\n", monkeypatch=monkeypatch) == 1
    assert_one_error_line(output(capsys)[1], "password must not be empty")
    assert cli(conf, "user", "add", "bob@example.test", "--password-stdin", stdin="", monkeypatch=monkeypatch) == 1
    assert_one_error_line(output(capsys)[1], "password must not be empty")


def test_duplicate_user_exits_1(
    conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli(conf, "user", "add", "bob@example.test", "--password-stdin", stdin="pw\n", monkeypatch=monkeypatch) == 0
    assert cli(conf, "user", "add", "BOB@example.test", "--password-stdin", stdin="pw\n", monkeypatch=monkeypatch) == 1
    assert_one_error_line(output(capsys)[1], "user bob@example.test already exists")


def test_user_commands_on_missing_user_exit_1(
    conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli(conf, "user", "del", "ghost@example.test") == 1
    assert_one_error_line(output(capsys)[1], "no such user: ghost@example.test")
    assert (
        cli(conf, "user", "passwd", "ghost@example.test", "--password-stdin", stdin="x\n", monkeypatch=monkeypatch) == 1
    )
    assert_one_error_line(output(capsys)[1], "no such user: ghost@example.test")
    assert cli(conf, "user", "list", "nope.test") == 1
    assert_one_error_line(output(capsys)[1], "no such domain: nope.test")


def test_password_needs_a_terminal_or_password_stdin(
    conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli(conf, "user", "add", "bob@example.test", stdin="pw\n", monkeypatch=monkeypatch) == 1
    assert_one_error_line(output(capsys)[1], "no terminal to ask for the password; pipe it in with --password-stdin")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_password_is_asked_twice_on_a_terminal(conf: Path, accounts: Path) -> None:
    answers = iter(["one", "two", "same", "same"])
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    out, err = io.StringIO(), io.StringIO()
    argv = ["--config", str(conf), "user", "add", "bob@example.test"]
    assert run(argv, stdin=FakeTTY(), stdout=out, stderr=err, ask_password=ask) == 1
    assert err.getvalue() == "mailstack: passwords do not match\n"
    assert run(argv, stdin=FakeTTY(), stdout=out, stderr=err, ask_password=ask) == 0
    assert prompts == ["Password: ", "Repeat password: "] * 2
    assert out.getvalue() == "added user bob@example.test\n"


def test_cli_change_is_seen_by_a_running_server_and_its_checker(
    conf: Path, accounts: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli(conf, "domain", "list") == 0  # creates the store, as the service would
    server = SQLiteAccountStore(accounts)
    try:
        assert server.get_user("carol@example.test") is None
        assert (
            cli(
                conf, "user", "add", "carol@example.test", "--password-stdin", stdin="s3cret\n", monkeypatch=monkeypatch
            )
            == 0
        )
        assert server.get_user("carol@example.test") is not None

        class Immediate:
            def callFromThread(self, f, *a):  # type: ignore[no-untyped-def]
                f(*a)

            def callInThreadWithCallback(self, on_result, f, *a):  # type: ignore[no-untyped-def]
                on_result(True, f(*a))

        sync = Immediate()
        checker = AccountChecker(server, sync, sync, Clock())  # type: ignore[arg-type]
        results: list[object] = []
        checker.requestAvatarId(UsernamePassword(b"carol@example.test", b"s3cret")).addBoth(results.append)
        assert results == ["carol@example.test"]
        checker.requestAvatarId(UsernamePassword(b"carol@example.test", b"wrong")).addBoth(results.append)
        assert isinstance(results[1], Failure) and results[1].check(UnauthorizedLogin)
    finally:
        server.close()


# -- aliases ------------------------------------------------------------------------------


def test_alias_add_list_del(conf: Path, accounts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(conf, "alias", "add", "Info@example.test", "a@remote.example", "B@Remote.Example") == 0
    assert cli(conf, "alias", "add", "@example.test", "info@example.test") == 0
    assert cli(conf, "alias", "list") == 0
    assert output(capsys)[0] == (
        "added alias info@example.test -> a@remote.example, b@remote.example\n"
        "added alias @example.test -> info@example.test\n"
        "@example.test\tinfo@example.test\n"
        "info@example.test\ta@remote.example\n"
        "info@example.test\tb@remote.example\n"
    )
    with SQLiteAccountStore(accounts) as store:
        assert store.resolve("anyone@example.test") == ("a@remote.example", "b@remote.example")
    assert cli(conf, "alias", "del", "info@example.test", "a@remote.example") == 0
    assert cli(conf, "alias", "del", "@example.test") == 0
    assert cli(conf, "alias", "list") == 0
    assert output(capsys)[0] == (
        "removed alias info@example.test -> a@remote.example\n"
        "removed alias @example.test\n"
        "info@example.test\tb@remote.example\n"
    )


def test_alias_errors_exit_1(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(conf, "alias", "add", "info@remote.example", "a@example.test") == 1
    assert_one_error_line(output(capsys)[1], "alias source info@remote.example is not in a local domain")
    assert cli(conf, "alias", "del", "info@example.test") == 1
    assert_one_error_line(output(capsys)[1], "no such alias: info@example.test")


# -- configuration and usage ----------------------------------------------------------------


def test_check_config_prints_the_effective_configuration(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(conf, "check-config") == 0
    assert output(capsys) == (config.render(config.load(conf)), "")


def test_config_error_is_one_line_and_exit_1(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf.write_text("[limits]\nrecipients = 0\n")
    for argv in (["check-config"], ["user", "list"]):
        assert cli(conf, *argv) == 1
        out, err = output(capsys)
        assert out == ""
        assert_one_error_line(err, "config error at limits.recipients: must be at least 1")


def test_missing_config_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "nope.toml"), "domain", "list"]) == 1
    err = output(capsys)[1]
    assert err.startswith("mailstack: config error: config file ") and err.count("\n") == 1


def test_config_comes_from_mailstack_config_without_option(
    conf: Path, accounts: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILSTACK_CONFIG", str(conf))
    assert main(["domain", "list"]) == 0
    assert output(capsys)[0] == "example.test\n"
    assert accounts.exists()


def test_defaults_without_any_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILSTACK_CONFIG", raising=False)
    assert main(["domain", "list"]) == 0
    assert output(capsys)[0] == "example.test\n"
    assert (tmp_path / "var" / "accounts.sqlite3").exists()


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["user"],
        ["user", "frob"],
        ["user", "add"],
        ["user", "add", "a@example.test", "--quota", "lots"],
        ["alias", "add", "info@example.test"],
        ["domain", "add", "a.test", "b.test"],
    ],
)
def test_bad_usage_exits_2(conf: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert cli(conf, *argv) == 2
    assert "usage: mailstack" in output(capsys)[1]


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "check-config" in output(capsys)[0]


def test_no_traceback_for_user_errors(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (conf.parent / "var").mkdir()
    (conf.parent / "var" / "accounts.sqlite3").mkdir()  # a directory where the store should be
    assert cli(conf, "domain", "list") == 1
    err = output(capsys)[1]
    assert err.startswith("mailstack: cannot open account store ") and "Traceback" not in err
    assert err.count("\n") == 1


def test_command_groups_form_a_table() -> None:
    assert {"domain", "user", "alias", "check-config"} <= set(COMMAND_GROUPS)


def test_limits_past_what_the_store_can_hold_get_one_error_line(conf: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli(conf, "user", "add", "big@example.test", "--password-stdin", "--messages", "9" * 20,
               stdin="pw\n", monkeypatch=monkeypatch) == 1
    assert_one_error_line(output(capsys)[1], "a message limit must be a whole number, 0 for unlimited (got "
                          + "9" * 20 + ")")


# -- sieve ----------------------------------------------------------------------------------


def test_sieve_put_list_activate_get_delete(conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli(conf, "user", "add", "alice@example.test", "--password-stdin", stdin="pw\n",
               monkeypatch=monkeypatch) == 0
    script = tmp_path / "lists.sieve"
    script.write_text('require "fileinto";\nif header :contains "List-Id" "dev" { fileinto "Lists"; }\n')
    assert cli(conf, "sieve", "put", "alice@example.test", "lists", str(script)) == 0
    assert cli(conf, "sieve", "put", "alice@example.test", "plain", stdin="keep;\n", monkeypatch=monkeypatch) == 0
    assert cli(conf, "sieve", "activate", "alice@example.test", "lists") == 0
    assert cli(conf, "sieve", "list", "alice@example.test") == 0
    assert cli(conf, "sieve", "get", "alice@example.test", "plain") == 0
    assert cli(conf, "sieve", "delete", "alice@example.test", "plain") == 0
    assert cli(conf, "sieve", "activate", "alice@example.test") == 0
    assert output(capsys) == (
        "added user alice@example.test\n"
        "stored script 'lists' of alice@example.test\n"
        "stored script 'plain' of alice@example.test\n"
        "active script of alice@example.test: 'lists'\n"
        "lists\tactive\nplain\n"
        "keep;\n"
        "removed script 'plain' of alice@example.test\n"
        "no script runs for alice@example.test\n", "")


def test_sieve_put_refuses_a_broken_script_with_its_position(conf: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli(conf, "user", "add", "alice@example.test", "--password-stdin", stdin="pw\n",
               monkeypatch=monkeypatch) == 0
    capsys.readouterr()
    assert cli(conf, "sieve", "put", "alice@example.test", "bad", stdin='keep;\nfileinto "x";\n',
               monkeypatch=monkeypatch) == 1
    assert_one_error_line(output(capsys)[1], "script 'bad' is not valid: line 2, column 1: "
                                             'fileinto needs require "fileinto"')
    assert cli(conf, "sieve", "list", "alice@example.test") == 0
    assert output(capsys) == ("", "")
    assert cli(conf, "sieve", "delete", "alice@example.test", "nothing") == 1
    assert_one_error_line(output(capsys)[1], "no such script: 'nothing'")


def test_global_sieve_scripts_are_kept_apart_and_reach_the_snapshot(conf: Path, capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mailstack.accounts import SQLiteAccountStore
    from mailstack.config import load

    assert cli(conf, "user", "add", "alice@example.test", "--password-stdin", stdin="pw\n",
               monkeypatch=monkeypatch) == 0
    assert cli(conf, "sieve", "put", ":global", "spam", stdin="discard;\n", monkeypatch=monkeypatch) == 0
    assert cli(conf, "sieve", "put", "alice@example.test", "main", stdin="keep;\n", monkeypatch=monkeypatch) == 0
    assert cli(conf, "sieve", "put", "alice@example.test", "extra", stdin="stop;\n", monkeypatch=monkeypatch) == 0
    assert cli(conf, "sieve", "list", ":global") == 0
    assert cli(conf, "sieve", "get", ":global", "spam") == 0
    assert cli(conf, "sieve", "activate", ":global", "spam") == 1
    out, err = output(capsys)
    assert out.endswith("stored global script 'spam'\nstored script 'main' of alice@example.test\n"
                        "stored script 'extra' of alice@example.test\nspam\ndiscard;\n")
    assert_one_error_line(err, "global scripts are included by users' scripts; none is active by itself")
    store = SQLiteAccountStore(load(conf).storage.accounts)
    try:
        assert store.global_script("spam") == "discard;\n" and store.script("alice@example.test", "extra") is None
        store.set_active_script("alice@example.test", "main")  # her scripts are known once one is active
        assert store.script("alice@example.test", "extra") == "stop;\n"
        assert store.script("Alice@example.test", "main") == "keep;\n"
        store.delete_global_script("spam")
        assert store.global_script("spam") is None and store.list_global_scripts() == []
    finally:
        store.close()
