"""imap/parse.py: tokens, literals, sequence sets, modified UTF-7 (RFC 3501 §5.1.3, §9)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.imap.parse import (
    Atom,
    ParseError,
    String,
    resolve_set,
    sequence_set,
    split_tag,
    tokenize,
    utf7_decode,
    utf7_encode,
)


def test_split_tag_and_command():
    assert split_tag(b"a1 uid fetch 1:* FLAGS") == ("a1", "UID", b"fetch 1:* FLAGS")
    assert split_tag(b"a1 NOOP") == ("a1", "NOOP", b"")


@pytest.mark.parametrize("line", [b"", b" NOOP", b"a1", b"a*b NOOP", b"a1  NOOP"])
def test_bad_tags_and_commands(line):
    with pytest.raises(ParseError):
        split_tag(line)


def test_tokens_atoms_strings_lists_literals():
    toks = tokenize(b'INBOX "a \\"q\\" b" (\\Seen foo) {3}\r\nx y NIL')
    assert toks == [Atom("INBOX"), String(b'a "q" b'), [Atom("\\Seen"), Atom("foo")],
                    String(b"x y", literal=True), Atom("NIL")]


def test_nonsync_literal_and_empty_list():
    assert tokenize(b"{2+}\r\nab ()") == [String(b"ab", literal=True), []]


def test_fetch_section_is_one_atom():
    toks = tokenize(b"1 (BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.10> UID)")
    assert toks == [Atom("1"), [Atom("BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.10>"), Atom("UID")]]


def test_brackets_outside_a_section_are_atom_chars():
    # RFC 3501 §9: "[" is an ATOM-CHAR and "]" an ASTRING-CHAR; an unclosed section is no error here
    assert tokenize(b"foo[bar a]b BODY[TEXT") == [Atom("foo[bar"), Atom("a]b"), Atom("BODY[TEXT")]


@pytest.mark.parametrize("raw", [b"(a", b"a)", b'"abc', b" a", b"a ", b"(a )", b'"a\\b"', b"a{b}c\x01"])
def test_malformed(raw):
    with pytest.raises(ParseError):
        tokenize(raw)


def test_sequence_sets():
    assert resolve_set(sequence_set(Atom("1:3,5,*")), 9) == [(1, 3), (5, 5), (9, 9)]
    assert resolve_set(sequence_set(Atom("7:*")), 4) == [(4, 7)]
    for bad in ("0", "1:", "a", "1,,2", "01"):
        with pytest.raises(ParseError):
            sequence_set(Atom(bad))


def test_modified_utf7_examples():
    # RFC 3501 §5.1.3 example
    assert utf7_decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e"
    assert utf7_encode("\u53f0\u5317") == "&U,BTFw-"
    assert utf7_encode("a&b") == "a&-b" and utf7_decode("a&-b") == "a&b"
    for bad in ("&", "&U,BTFw", "&AGE-", "caf\u00e9"):
        with pytest.raises(ParseError):
            utf7_decode(bad)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_utf7_round_trip(text):
    assert utf7_decode(utf7_encode(text)) == text


@given(st.binary(max_size=200))
def test_tokenizer_never_crashes(data):
    try:
        tokenize(data)
    except ParseError:
        pass


@given(st.text(alphabet="ab.[]%*-_&~/", min_size=1, max_size=20))
def test_bare_names_with_brackets_and_wildcards_are_one_token(name):
    # RFC 3501 §9 list-char = ATOM-CHAR / list-wildcards / resp-specials
    [tok] = tokenize(name.encode())
    assert tok == Atom(name)


@given(st.lists(st.integers(1, 99), max_size=4),
       st.sampled_from(["", "HEADER", "TEXT", "MIME", "HEADER.FIELDS (A B)", "HEADER.FIELDS.NOT (X)"]),
       st.one_of(st.none(), st.tuples(st.integers(0, 500), st.integers(1, 500))))
def test_sections_parse_back(parts, text, partial):
    from mailstack.imap.fetch import Section, parse_items

    if text == "MIME" and not parts:
        return
    spec = ".".join([str(p) for p in parts] + ([text] if text else []))
    raw = f"BODY.PEEK[{spec}]" + (f"<{partial[0]}.{partial[1]}>" if partial else "")
    [item] = parse_items(Atom(raw))
    assert isinstance(item, Section) and item.parts == tuple(parts) and item.partial == partial
    assert item.label == spec and item.text == text.split(" ")[0]
    assert tokenize(f"1 ({raw} UID)".encode()) == [Atom("1"), [Atom(raw), Atom("UID")]]


def test_a_run_of_spaces_between_arguments_is_one_separator():
    """RFC 3501 asks for one SP; imapclient's MULTIAPPEND sends two between literals."""
    assert tokenize(b"a  b   (c  d)") == [Atom("a"), Atom("b"), [Atom("c"), Atom("d")]]
