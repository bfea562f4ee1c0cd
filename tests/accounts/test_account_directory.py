"""Tests for mailstack.accounts.directory: canonical forms and alias resolution."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailstack.accounts.directory import (
    MAX_ALIAS_DEPTH,
    Directory,
    canonical_address,
    canonical_alias_source,
)
from mailstack.accounts.store import User
from mailstack.addresses import InvalidAddress


def make(users: list[str], aliases: dict[str, list[str]], domains: tuple[str, ...] = ("example.test",)) -> Directory:
    return Directory(
        frozenset(domains),
        {u: User(u, "$hash", 0) for u in users},
        {s: tuple(t) for s, t in aliases.items()},
    )


@pytest.mark.parametrize(
    "bad",
    [
        "a/b@example.test",
        "..@example.test",
        "a..b@example.test",
        "a\x00b@example.test",
        "a\x01b@example.test",
        ".a@example.test",
        "a.@example.test",
        "a\\b@example.test",
        "a b@example.test",
        "a\x7fb@example.test",
        "a\u0085b@example.test",
        "a\u200bb@example.test",
        "a\u2028b@example.test",
        "@example.test",
        "a@",
        "a@b@example.test",
        "noat",
        "a@exa_mple.test",
        "a@-example.test",
        "x" * 65 + "@example.test",
    ],
)
def test_bad_addresses_are_refused(bad: str) -> None:
    with pytest.raises(InvalidAddress):
        canonical_address(bad)


def test_canonical_lowercases_local_part_and_domain() -> None:
    assert canonical_address("Alice.Smith@Example.TEST") == "alice.smith@example.test"
    assert canonical_address("Jörg@Bücher.Example") == "jörg@bücher.example"
    assert canonical_alias_source("@Example.TEST") == "@example.test"
    assert canonical_alias_source("Info@Example.TEST") == "info@example.test"


def test_user_resolves_to_itself_case_insensitively() -> None:
    d = make(["alice@example.test"], {})
    assert d.resolve("ALICE@Example.Test") == ("alice@example.test",)
    assert d.get_user("Alice@EXAMPLE.test") == User("alice@example.test", "$hash", 0)


def test_unknown_local_recipient_resolves_to_nothing() -> None:
    assert make(["alice@example.test"], {}).resolve("bob@example.test") == ()


def test_invalid_address_resolves_to_nothing() -> None:
    d = make(["alice@example.test"], {})
    assert d.resolve("a/b@example.test") == ()
    assert d.get_user("a/b@example.test") is None
    assert not d.is_local_domain("bad domain")


def test_address_outside_local_domains_comes_back_unchanged() -> None:
    assert make([], {}).resolve("Bob@Remote.Example") == ("bob@remote.example",)


def test_exact_alias_wins_over_user_and_catch_all() -> None:
    d = make(
        ["alice@example.test", "bob@example.test", "post@example.test"],
        {"alice@example.test": ["bob@example.test"], "@example.test": ["post@example.test"]},
    )
    assert d.resolve("alice@example.test") == ("bob@example.test",)


def test_user_wins_over_catch_all() -> None:
    d = make(["alice@example.test", "post@example.test"], {"@example.test": ["post@example.test"]})
    assert d.resolve("alice@example.test") == ("alice@example.test",)
    assert d.resolve("anything@example.test") == ("post@example.test",)


def test_catch_all_is_per_domain() -> None:
    d = make(["post@example.test"], {"@example.test": ["post@example.test"]}, ("example.test", "other.test"))
    assert d.resolve("x@other.test") == ()


def test_one_to_many_alias_keeps_order_and_drops_repeats() -> None:
    d = make(
        ["a@example.test", "b@example.test", "c@example.test"],
        {
            "team@example.test": [
                "c@example.test",
                "a@example.test",
                "c@example.test",
                "ext@remote.test",
                "b@example.test",
            ]
        },
    )
    assert d.resolve("team@example.test") == ("c@example.test", "a@example.test", "ext@remote.test", "b@example.test")


def test_alias_to_self_keeps_a_copy_and_forwards() -> None:
    d = make(["alice@example.test"], {"alice@example.test": ["alice@example.test", "alice@remote.test"]})
    assert d.resolve("alice@example.test") == ("alice@example.test", "alice@remote.test")


def test_chains_are_followed_and_deduplicated() -> None:
    d = make(
        ["alice@example.test", "bob@example.test"],
        {
            "all@example.test": ["staff@example.test", "sales@example.test"],
            "staff@example.test": ["alice@example.test", "bob@example.test"],
            "sales@example.test": ["bob@example.test", "ext@remote.test"],
        },
    )
    assert d.resolve("all@example.test") == ("alice@example.test", "bob@example.test", "ext@remote.test")


def test_loop_without_users_resolves_to_nothing() -> None:
    d = make([], {"a@example.test": ["b@example.test"], "b@example.test": ["a@example.test"]})
    assert d.resolve("a@example.test") == ()


def test_cycle_through_a_forwarding_user_is_cut_consistently() -> None:
    # a's alias wins over a's mailbox, so a keeps nothing, whichever end the mail enters
    d = make(
        ["a@example.test"],
        {"a@example.test": ["b@example.test"], "b@example.test": ["a@example.test", "c@remote.test"]},
    )
    assert d.resolve("a@example.test") == ("c@remote.test",)
    assert d.resolve("b@example.test") == ("c@remote.test",)


def test_cycle_through_a_user_who_keeps_a_copy() -> None:
    d = make(
        ["a@example.test"],
        {"a@example.test": ["a@example.test", "b@example.test"], "b@example.test": ["a@example.test"]},
    )
    assert d.resolve("a@example.test") == ("a@example.test",)
    assert d.resolve("b@example.test") == ("a@example.test",)


def test_catch_all_pointing_into_its_own_domain_does_not_loop() -> None:
    d = make([], {"@example.test": ["nobody@example.test"]})
    assert d.resolve("x@example.test") == ()


def chain(length: int) -> Directory:
    """a0 -> a1 -> ... -> a<length>, the last a user."""
    hops = {f"a{i}@example.test": [f"a{i + 1}@example.test"] for i in range(length)}
    return make([f"a{length}@example.test"], hops)


def test_chain_at_the_depth_limit_is_followed() -> None:
    assert chain(MAX_ALIAS_DEPTH).resolve("a0@example.test") == (f"a{MAX_ALIAS_DEPTH}@example.test",)


def test_chain_past_the_depth_limit_is_cut() -> None:
    assert chain(MAX_ALIAS_DEPTH + 1).resolve("a0@example.test") == ()


def test_owns_own_address_and_exact_aliases_only() -> None:
    d = make(
        ["alice@example.test", "bob@example.test"],
        {
            "info@example.test": ["alice@example.test"],
            "team@example.test": ["alice@example.test", "bob@example.test"],
            "bobby@example.test": ["bob@example.test"],
            "@example.test": ["alice@example.test"],
        },
    )
    assert d.owns("alice@example.test", "Alice@Example.Test")
    assert d.owns("alice@example.test", "info@example.test")
    assert d.owns("alice@example.test", "team@example.test")
    assert d.owns("bob@example.test", "team@example.test")
    assert not d.owns("alice@example.test", "bobby@example.test")
    assert not d.owns("alice@example.test", "random@example.test")  # catch-all does not count
    assert not d.owns("alice@example.test", "bob@example.test")
    assert not d.owns("alice@example.test", "alice@remote.test")
    assert not d.owns("alice@example.test", "a/b@example.test")


LOCALS = [f"{n}@example.test" for n in "abcdef"]
TARGETS = st.sampled_from([*LOCALS, "x@remote.test", "y@remote.test"])


@settings(max_examples=200, deadline=None)
@given(
    users=st.sets(st.sampled_from(LOCALS)),
    aliases=st.dictionaries(st.sampled_from([*LOCALS, "@example.test"]), st.lists(TARGETS, min_size=1, max_size=4)),
    address=st.sampled_from([*LOCALS, "zz@example.test"]),
)
def test_resolution_always_ends_in_users_or_external_addresses(
    users: set[str], aliases: dict[str, list[str]], address: str
) -> None:
    d = make(sorted(users), aliases)
    result = d.resolve(address)
    assert len(result) == len(set(result))
    for target in result:
        assert target in users or target.endswith("@remote.test")
    if address in users and address not in aliases:
        assert result == (address,)


def test_a_tag_after_the_delimiter_reaches_the_user() -> None:
    """Subaddressing (delivery.recipient_delimiter): the whole address first, then the address
    without its tag (a user, or an alias), then the catch-all."""
    d = make(["alice@example.test", "post@example.test", "news+x@example.test"],
             {"team@example.test": ["alice@example.test", "post@example.test"],
              "alice+spam@example.test": ["post@example.test"], "@example.test": ["post@example.test"]})
    assert d.resolve("alice+lists@example.test") == ("alice@example.test",)
    assert d.resolve("alice+a+b@example.test") == ("alice@example.test",)  # at the first delimiter
    assert d.resolve("team+x@example.test") == ("alice@example.test", "post@example.test")
    assert d.resolve("alice+spam@example.test") == ("post@example.test",)  # an alias for the whole address
    assert d.resolve("news+x@example.test") == ("news+x@example.test",)  # a user named so
    assert d.resolve("nobody+x@example.test") == ("post@example.test",)  # neither: the catch-all
    assert d.resolve("+alice@example.test") == ("post@example.test",)  # no user before the delimiter
    assert d.owns("alice@example.test", "alice+shop@example.test")
    assert not d.owns("alice@example.test", "post+alice@example.test")


def test_recipient_delimiters_can_be_several_or_none() -> None:
    users = {"alice@example.test": User("alice@example.test", "$hash", 0)}
    several = Directory(frozenset({"example.test"}), users, {}, "+-")
    assert several.resolve("alice-x@example.test") == several.resolve("alice+x@example.test") == ("alice@example.test",)
    off = Directory(frozenset({"example.test"}), users, {}, "")
    assert off.resolve("alice+x@example.test") == ()
    assert not off.owns("alice@example.test", "alice+x@example.test")
