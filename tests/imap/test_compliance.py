"""RFC 3501 compliance: brackets in atoms, sections of encapsulated messages,
ENVELOPE addresses and address SEARCH keys, each checked on the exact bytes a
client reads (RFC 3501 §6.4.4, §6.4.5, §7.4.2, §9; RFC 5322 §3.4)."""

from __future__ import annotations

import pytest

from mailstack.imap.fetch import Section, parse_items
from mailstack.imap.parse import Atom, ParseError, String, astring, atom, list_mailbox, tokenize


class TestBracketsInAtoms:
    """RFC 3501 §9: ``[`` is an ATOM-CHAR; ``]`` is a resp-special that ASTRING-CHAR and
    list-char allow; only ``BODY[``/``BODY.PEEK[``/``BINARY[`` open a section."""

    def test_create_select_and_list_a_name_with_an_open_bracket(self, client):
        assert client.raw("CREATE foo[bar") == b"t2 OK CREATE completed\r\n"
        assert client.raw('LIST "" foo[bar*') == (
            b'* LIST (\\HasNoChildren) "." foo[bar\r\nt3 OK LIST completed\r\n')
        assert client.raw("STATUS foo[bar (MESSAGES)") == (
            b"* STATUS foo[bar (MESSAGES 0)\r\nt4 OK STATUS completed\r\n")
        assert client.raw("SELECT foo[bar").endswith(b"t5 OK [READ-WRITE] SELECT completed\r\n")

    def test_close_bracket_in_an_astring_and_a_list_pattern(self, client):
        assert client.raw("CREATE a]b") == b"t2 OK CREATE completed\r\n"
        # "]" is not an ATOM-CHAR, so the server quotes the name it sends
        assert client.raw('LIST "" a]*') == b'* LIST (\\HasNoChildren) "." "a]b"\r\nt3 OK LIST completed\r\n'
        assert client.raw('LIST "" %]%') == b'* LIST (\\HasNoChildren) "." "a]b"\r\nt4 OK LIST completed\r\n'

    def test_brackets_in_reference_and_pattern(self, client):
        client.ok("CREATE x[1].y]")
        assert client.raw('LIST x[1]. %') == (
            b'* LIST (\\HasNoChildren) "." "x[1].y]"\r\nt3 OK LIST completed\r\n')

    def test_a_name_that_looks_like_a_section_keyword(self, client):
        assert client.raw("CREATE BODY[x") == b"t2 OK CREATE completed\r\n"
        assert client.raw("CREATE body[a b]").startswith(b"t3 BAD ")  # two arguments, not one

    def test_fetch_sections_still_parse(self, world, client):
        world.deliver(b"Subject: hi\r\nX-A: 1\r\n\r\nbody\r\n")
        client.ok("SELECT INBOX")
        assert client.raw('FETCH 1 (BODY.PEEK[HEADER.FIELDS ("subject")]<0.8>)') == (
            b'* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)]<0> {8}\r\nSubject:)\r\n'
            b"t3 OK FETCH completed\r\n")


class TestAtomGrammar:
    """The tokenizer and the typed readers against RFC 3501 §9."""

    @pytest.mark.parametrize("raw,value", [
        (b"foo[bar", "foo[bar"), (b"a]b", "a]b"), (b"[", "["), (b"]", "]"), (b"[]", "[]"),
        (b"x[y]z", "x[y]z"), (b"BODY[TEXT", "BODY[TEXT"), (b"body.peek[1]<0.5>", "body.peek[1]<0.5>"),
    ])
    def test_brackets_are_atom_chars(self, raw, value):
        assert tokenize(raw) == [Atom(value)]

    def test_section_keeps_spaces_parens_and_quotes_inside(self):
        assert tokenize(b'1 (BODY[1.2.3.HEADER.FIELDS (A "B c")]<0.10> UID)') == [
            Atom("1"), [Atom('BODY[1.2.3.HEADER.FIELDS (A "B c")]<0.10>'), Atom("UID")]]
        assert tokenize(b"BINARY.PEEK[1 2] X") == [Atom("BINARY.PEEK[1 2]"), Atom("X")]

    def test_section_with_a_literal_field_name(self):
        [tok] = tokenize(b"BODY[HEADER.FIELDS ({7}\r\nSubject)]")
        assert parse_items(tok) == [Section(False, (), "HEADER.FIELDS", ("Subject",), None,
                                            "HEADER.FIELDS (SUBJECT)")]

    def test_unclosed_section_is_a_plain_atom_up_to_the_space(self):
        assert tokenize(b"BODY[HEADER.FIELDS (A)") == [Atom("BODY[HEADER.FIELDS"), [Atom("A")]]

    def test_astring_allows_close_bracket_atom_does_not(self):
        assert astring(Atom("a]b")) == "a]b"
        assert astring(Atom("a[b")) == "a[b"
        assert atom(Atom("a[b")) == "a[b"
        with pytest.raises(ParseError):
            atom(Atom("a]b"))

    @pytest.mark.parametrize("text", ["%", "*", "a%b", "foo*", "a]%"])
    def test_wildcards_only_in_list_mailbox(self, text):
        assert list_mailbox(Atom(text)) == text
        with pytest.raises(ParseError):
            astring(Atom(text))

    @pytest.mark.parametrize("text", ["a b", "BODY[a b]", "a{b", 'a"b', "a\\b"])
    def test_atom_specials_refused_in_astring(self, text):
        with pytest.raises(ParseError):
            astring(Atom(text))
        with pytest.raises(ParseError):
            list_mailbox(Atom(text))

    def test_quoted_strings_carry_any_specials(self):
        assert tokenize(b'"a]b[c%*"') == [String(b"a]b[c%*")]
        assert astring(String(b"a b")) == "a b"

    @pytest.mark.parametrize("raw", [b"foo[\x01]", b"a\x7fb", b"x[\r\n]"])
    def test_control_characters_refused(self, raw):
        with pytest.raises(ParseError):
            tokenize(raw)


def _item(text: str):
    [tok] = tokenize(text.encode())
    [item] = parse_items(tok)
    return item


class TestSectionGrammar:
    """RFC 3501 §9 ``section``, ``section-spec`` and the ``<origin.octets>`` partial."""

    def test_deep_header_fields_with_partial(self):
        assert _item("BODY.PEEK[1.2.3.HEADER.FIELDS (A B)]<0.10>") == Section(
            True, (1, 2, 3), "HEADER.FIELDS", ("A", "B"), (0, 10), "1.2.3.HEADER.FIELDS (A B)")

    @pytest.mark.parametrize("text,parts,kind,label", [
        ("BODY[]", (), "", ""), ("BODY[HEADER]", (), "HEADER", "HEADER"), ("BODY[text]", (), "TEXT", "TEXT"),
        ("BODY[1]", (1,), "", "1"), ("BODY[1.2.MIME]", (1, 2), "MIME", "1.2.MIME"),
        ("BODY[12.1.TEXT]", (12, 1), "TEXT", "12.1.TEXT"),
        ("BODY[2.HEADER.FIELDS.NOT (x-a)]", (2,), "HEADER.FIELDS.NOT", "2.HEADER.FIELDS.NOT (X-A)"),
    ])
    def test_section_specs(self, text, parts, kind, label):
        item = _item(text)
        assert (item.parts, item.text, item.label, item.peek) == (parts, kind, label, False)

    @pytest.mark.parametrize("text", [
        "BODY[0]", "BODY[1.0]", "BODY[01]", "BODY[1.]", "BODY[.1]", "BODY[1..2]", "BODY[MIME]",
        "BODY[HEADER.FIELDS]", "BODY[HEADER.FIELDS ()]", "BODY[TEXT (A)]", "BODY[HEADER ]", "BODY[ ]",
        "BODY[1.HEADERS]", "BODY[TEXT.1]", "BODY[²]", "BODY[]<0.0>", "BODY[]<1>", "BODY[]<a.1>",
        "BODY[]<0.4294967296>", "BODY[]<-1.2>", "BODY[1]]", "BODY[TEXT", "BODY.PEEK", "BODY[HEADER.FIELDS (A)",
        "BINARY[1]", "RFC822[1]", "BODY[1]<0.5>x",
    ])
    def test_bad_sections_get_bad(self, world, client, text):
        world.deliver(b"Subject: hi\r\n\r\nbody\r\n")
        client.ok("SELECT INBOX")
        untagged, tagged = client.cmd(f"FETCH 1 ({text})")
        assert untagged == [] and tagged.startswith(b"BAD "), (text, tagged)

    def test_partials_on_the_wire(self, world, client):
        world.deliver(b"Subject: hi\r\n\r\n0123456789\r\n")
        client.ok("SELECT INBOX")
        assert client.raw("FETCH 1 (BODY.PEEK[TEXT]<2.3> BODY.PEEK[TEXT]<0.10> BODY.PEEK[TEXT]<11.9>)") == (
            b"* 1 FETCH (BODY[TEXT]<2> {3}\r\n234 BODY[TEXT]<0> {10}\r\n0123456789 "
            b"BODY[TEXT]<11> {1}\r\n\n)\r\nt3 OK FETCH completed\r\n")
