"""Unique Maildir file names (mailstack.maildir.names)."""

from __future__ import annotations

import re
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.maildir.names import escape_hostname, size_from_name, unique_name

NAME = re.compile(
    r"^(?P<sec>\d+)\.M(?P<usec>\d{1,6})P(?P<pid>\d+)Q(?P<q>\d+)R(?P<rand>[0-9a-f]{16})"
    r"\.(?P<host>[^/:,]+),S=(?P<size>\d+)$"
)


def test_name_has_the_modern_maildir_form() -> None:
    name = unique_name("mail.example.test", 4242)
    match = NAME.match(name)
    assert match, name
    assert match["host"] == "mail.example.test"
    assert match["size"] == "4242"


def test_hostname_slash_and_colon_are_escaped_as_octal() -> None:
    assert escape_hostname("a/b:c") == "a\\057b\\072c"


def test_hostname_comma_and_backslash_are_escaped_so_size_cannot_be_forged() -> None:
    escaped = escape_hostname("evil,S=1\\x")
    assert escaped == "evil\\054S=1\\134x"
    assert size_from_name(unique_name(escaped, 99)) == 99


@pytest.mark.parametrize("bad", ["", "a b", "a\nb", "a\x00b", "\t"])
def test_unusable_hostnames_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        escape_hostname(bad)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("1.M2P3Q4R00.host,S=120", 120),
        ("1.M2P3Q4R00.host,S=120:2,S", 120),
        ("1.M2P3Q4R00.host,S=120,W=124:2,RS", 120),
        ("1234.5678.host", None),
        ("1234.5678.host:2,S=5", None),  # flags, not a size field
        ("1.host,S=", None),
    ],
)
def test_size_is_read_from_the_name_not_the_info(name: str, size: int | None) -> None:
    assert size_from_name(name) == size


@given(
    host=st.text(
        st.characters(
            blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp", "Cf", "Co", "Cn")
        ),
        min_size=1,
    ),
    size=st.integers(min_value=0, max_value=2**40),
)
def test_any_printable_hostname_gives_a_safe_name_with_its_size(
    host: str, size: int
) -> None:
    name = unique_name(escape_hostname(host), size)
    assert "/" not in name and ":" not in name and "\x00" not in name
    assert name.count(",") == 1
    assert size_from_name(name) == size
    assert size_from_name(name + ":2,RS") == size


def test_names_are_unique_across_threads() -> None:
    names: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def make(bucket: list[str]) -> None:
        start.wait()
        bucket.extend(unique_name("h", 1) for _ in range(2000))

    threads = [threading.Thread(target=make, args=(b,)) for b in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [n for bucket in names for n in bucket]
    assert len(set(everything)) == len(everything) == 16000
