"""Sender grants: a user may also send as other addresses or whole domains (a host relaying through
this one), granted and taken back with the CLI, read by the submission policy through ``owns``."""

from __future__ import annotations

import pytest

from mailstack.accounts import AccountError, SQLiteAccountStore


@pytest.fixture
def relay(store: SQLiteAccountStore) -> SQLiteAccountStore:
    store.add_user("relay@example.test", "secret")
    store.add_user("bob@example.test", "secret")
    return store


def test_a_domain_grant_covers_every_address_there_including_srs_ones(relay: SQLiteAccountStore) -> None:
    assert not relay.owns("relay@example.test", "alice@home.example")
    relay.allow_sender("relay@example.test", ["@Home.Example", "news@lists.example"])
    for sender in ("alice@home.example", "SRS0=HHH=TT=other.example=x@home.example", "news@lists.example"):
        assert relay.owns("relay@example.test", sender), sender
    assert not relay.owns("relay@example.test", "other@lists.example")
    assert not relay.owns("relay@example.test", "alice@sub.home.example")  # the domain itself, not below it
    assert not relay.owns("bob@example.test", "alice@home.example")  # only the user granted
    assert relay.list_sender_grants() == [("relay@example.test", "@home.example"),
                                          ("relay@example.test", "news@lists.example")]


def test_grants_are_taken_back_one_or_all_and_go_with_the_user(relay: SQLiteAccountStore) -> None:
    relay.allow_sender("relay@example.test", ["@home.example", "news@lists.example"])
    relay.revoke_sender("relay@example.test", "@home.example")
    assert not relay.owns("relay@example.test", "alice@home.example")
    assert relay.owns("relay@example.test", "news@lists.example")
    relay.revoke_sender("relay@example.test")
    assert relay.list_sender_grants("relay@example.test") == []
    with pytest.raises(AccountError, match="has no sender grants"):
        relay.revoke_sender("relay@example.test")
    relay.allow_sender("bob@example.test", ["@home.example"])
    relay.remove_user("bob@example.test")
    assert relay.list_sender_grants() == []


def test_bad_grants_are_refused_with_a_reason(relay: SQLiteAccountStore) -> None:
    with pytest.raises(AccountError, match="no such user"):
        relay.allow_sender("nobody@example.test", ["@home.example"])
    with pytest.raises(AccountError, match="invalid"):
        relay.allow_sender("relay@example.test", ["@bad..domain"])
    with pytest.raises(AccountError, match="invalid address"):
        relay.allow_sender("relay@example.test", ["../etc@home.example"])
    with pytest.raises(AccountError, match="at least one"):
        relay.allow_sender("relay@example.test", [])
    for local in ("@example.test", "bob@example.test", "postmaster@example.test"):  # would take others' names
        with pytest.raises(AccountError, match="is in a local domain"):
            relay.allow_sender("relay@example.test", [local])


def test_a_granted_domain_that_becomes_local_is_no_longer_a_licence(relay: SQLiteAccountStore) -> None:
    relay.allow_sender("relay@example.test", ["@home.example"])
    relay.add_domain("home.example")
    relay.add_user("boss@home.example", "secret")
    assert not relay.owns("relay@example.test", "boss@home.example")


def test_the_cli_grants_lists_and_revokes(relay: SQLiteAccountStore, store_path, tmp_path, capsys) -> None:
    from mailstack.cli import main

    config = tmp_path / "mailstack.toml"
    config.write_text(f'domains = ["example.test"]\n[storage]\naccounts = "{store_path}"\n')
    assert main(["--config", str(config), "user", "allow-sender", "relay@example.test", "@home.example"]) == 0
    assert capsys.readouterr().out == "relay@example.test\tmay send as\t@home.example\n"
    assert relay.owns("relay@example.test", "alice@home.example")  # the running server's store sees it
    assert main(["--config", str(config), "user", "senders"]) == 0
    assert capsys.readouterr().out == "relay@example.test\tmay send as\t@home.example\n"
    assert main(["--config", str(config), "user", "revoke-sender", "relay@example.test", "@home.example"]) == 0
    assert not relay.directory().owns("relay@example.test", "alice@home.example")  # within recheck_interval
    assert main(["--config", str(config), "user", "revoke-sender", "relay@example.test"]) == 1
    assert capsys.readouterr().err.endswith("relay@example.test has no sender grants\n")
