"""Tests for mailstack.accounts.passwords (argon2id hashing)."""

from __future__ import annotations

from argon2 import PasswordHasher

from mailstack.accounts.passwords import DEFAULT_HASHER, dummy_hash, hash_password, needs_rehash, verify_password

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def test_hash_verifies_with_right_password_only() -> None:
    stored = hash_password("correct horse", CHEAP)
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "correct horse")
    assert verify_password(stored, b"correct horse")
    assert not verify_password(stored, "Correct horse")
    assert not verify_password(stored, "")


def test_same_password_gets_a_new_salt_each_time() -> None:
    assert hash_password("pw", CHEAP) != hash_password("pw", CHEAP)


def test_unicode_password_is_utf8() -> None:
    stored = hash_password("pässwörd", CHEAP)
    assert verify_password(stored, "pässwörd".encode())
    assert not verify_password(stored, "pässwörd".encode("latin-1"))


def test_verify_never_raises_on_malformed_hashes() -> None:
    for bad in ["", "plain", "$argon2id$garbage", "$2b$12$abcdefghijklmnopqrstuv", "$argon2id$v=19$m=8,t=1,p=1$$"]:
        assert verify_password(bad, "pw") is False


def test_dummy_hash_uses_default_parameters_and_is_stable() -> None:
    dummy = dummy_hash()
    assert dummy is dummy_hash()
    assert dummy.startswith("$argon2id$")
    assert not needs_rehash(dummy)
    assert f"m={DEFAULT_HASHER.memory_cost},t={DEFAULT_HASHER.time_cost},p={DEFAULT_HASHER.parallelism}" in dummy
    assert not verify_password(dummy, "")


def test_needs_rehash_for_cheaper_or_foreign_hashes() -> None:
    assert needs_rehash(hash_password("pw", CHEAP))
    assert needs_rehash("not a hash")
