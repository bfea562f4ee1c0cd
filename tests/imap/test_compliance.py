"""RFC 3501 compliance: brackets in atoms, sections of encapsulated messages,
ENVELOPE addresses and address SEARCH keys, each checked on the exact bytes a
client reads (RFC 3501 §6.4.4, §6.4.5, §7.4.2, §9; RFC 5322 §3.4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.imap import address
from mailstack.imap.fetch import Section, parse_items
from mailstack.imap.parse import Atom, ParseError, String, astring, atom, list_mailbox, tokenize

from .messages import NESTED

# A top-level message/rfc822 whose message is not multipart.
FORWARD = (b"From: a@example.test\r\nSubject: fwd\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n"
           b"From: b@example.test\r\nSubject: inner\r\n\r\ninner text\r\n")
# 1 multipart (1.1 text, 1.2 message/rfc822 holding a multipart/alternative whose part 2 is
# another message/rfc822), 2 text.
DEEP = (b"From: a@example.test\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n"
        b"--b1\r\nContent-Type: multipart/mixed; boundary=b2\r\n\r\n"
        b"--b2\r\nContent-Type: text/plain\r\n\r\npart 1.1\r\n"
        b"--b2\r\nContent-Type: message/rfc822\r\n\r\n"
        b"From: c@example.test\r\nSubject: attached\r\nContent-Type: multipart/alternative; boundary=b3\r\n\r\n"
        b"--b3\r\nContent-Type: text/plain\r\n\r\nalt plain\r\n"
        b"--b3\r\nContent-Type: message/rfc822\r\n\r\nSubject: deepest\r\nX-A: 1\r\nX-B: 2\r\n\r\ndeepest body\r\n"
        b"--b3--\r\n--b2--\r\n--b1\r\nContent-Type: text/plain\r\n\r\nlast\r\n--b1--\r\n")
# RFC 2046 §5.1.5: the parts of a digest are message/rfc822 unless they say otherwise.
DIGEST = (b"From: list@example.test\r\nSubject: digest\r\nContent-Type: multipart/digest; boundary=d\r\n\r\n"
          b"--d\r\n\r\nSubject: one\r\n\r\nfirst\r\n"
          b"--d\r\nContent-Type: message/rfc822\r\n\r\nSubject: two\r\n\r\nsecond\r\n--d--\r\n")


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
        "BODY[]<0.9223372036854775808>", "BODY[]<" + "9" * 5000 + ".1>", "BODY[]<-1.2>", "BODY[1]]", "BODY[TEXT", "BODY.PEEK", "BODY[HEADER.FIELDS (A)",
        "BINARY[0]", "BINARY[1.]", "BINARY[TEXT]", "BINARY.SIZE[1]<0.5>", "RFC822[1]", "BODY[1]<0.5>x",
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


def _section(client, msn: int, section: str) -> bytes:
    """The value of one BODY.PEEK[section] item as the client reads it."""
    out = client.raw(f"FETCH {msn} BODY.PEEK[{section}]")
    head = f"* {msn} FETCH (BODY[{section}] ".encode()
    assert out.startswith(head) and out.endswith(b")\r\n" + f"t{client.n} OK FETCH completed\r\n".encode()), out
    return out[len(head):-len(f")\r\nt{client.n} OK FETCH completed\r\n")]


def _untagged(client, command: str) -> bytes:
    """The untagged responses to one command that must complete with OK."""
    out = client.raw(command)
    name = " ".join(command.split(" ", 2)[:2]) if command.startswith("UID ") else command.split(" ", 1)[0]
    done = f"t{client.n} OK {name} completed\r\n".encode()
    assert out.endswith(done), out
    return out[:-len(done)]


def _lit(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


class TestEncapsulatedMessageSections:
    """RFC 3501 §6.4.5: part numbers of a message/rfc822 part are those of its message;
    HEADER/TEXT after such a part number are its message's header and text; a message
    that is not multipart has one part, 1, its body."""

    @pytest.fixture
    def box(self, world, client):
        for message in (FORWARD, DEEP, DIGEST, NESTED):
            world.deliver(message)
        client.ok("SELECT INBOX")
        return client

    @pytest.mark.parametrize("section,expected", [
        ("1", _lit(b"From: b@example.test\r\nSubject: inner\r\n\r\ninner text\r\n")),
        ("1.HEADER", _lit(b"From: b@example.test\r\nSubject: inner\r\n\r\n")),
        ("1.TEXT", _lit(b"inner text\r\n")),
        ("1.1", _lit(b"inner text\r\n")),
        ("1.HEADER.FIELDS (SUBJECT)", _lit(b"Subject: inner\r\n\r\n")),
        ("1.MIME", _lit(b"From: a@example.test\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
                        b"Content-Type: message/rfc822\r\n\r\n")),
        ("TEXT", _lit(b"From: b@example.test\r\nSubject: inner\r\n\r\ninner text\r\n")),
        ("2", b"NIL"), ("1.2", b"NIL"), ("1.1.1", b"NIL"), ("1.1.TEXT", b"NIL"),
    ])
    def test_top_level_message_rfc822(self, box, section, expected):
        assert _section(box, 1, section) == expected

    @pytest.mark.parametrize("section,expected", [
        ("1.1", _lit(b"part 1.1")),
        ("1.2.MIME", _lit(b"Content-Type: message/rfc822\r\n\r\n")),
        ("1.2.HEADER", _lit(b"From: c@example.test\r\nSubject: attached\r\n"
                            b"Content-Type: multipart/alternative; boundary=b3\r\n\r\n")),
        ("1.2.TEXT", _lit(b"--b3\r\nContent-Type: text/plain\r\n\r\nalt plain\r\n--b3\r\n"
                          b"Content-Type: message/rfc822\r\n\r\nSubject: deepest\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
                          b"deepest body\r\n--b3--")),
        ("1.2.1", _lit(b"alt plain")),
        ("1.2.1.MIME", _lit(b"Content-Type: text/plain\r\n\r\n")),
        ("1.2.2", _lit(b"Subject: deepest\r\nX-A: 1\r\nX-B: 2\r\n\r\ndeepest body")),
        ("1.2.2.HEADER", _lit(b"Subject: deepest\r\nX-A: 1\r\nX-B: 2\r\n\r\n")),
        ("1.2.2.TEXT", _lit(b"deepest body")),
        ("1.2.2.1", _lit(b"deepest body")),
        ("1.2.2.HEADER.FIELDS (X-A X-B)", _lit(b"X-A: 1\r\nX-B: 2\r\n\r\n")),
        ("1.2.2.HEADER.FIELDS.NOT (X-A)", _lit(b"Subject: deepest\r\nX-B: 2\r\n\r\n")),
        ("2", _lit(b"last")),
        ("1.3", b"NIL"), ("1.2.3", b"NIL"), ("1.2.2.2", b"NIL"), ("1.1.TEXT", b"NIL"), ("2.HEADER", b"NIL"),
    ])
    def test_message_rfc822_nested_in_multiparts(self, box, section, expected):
        assert _section(box, 2, section) == expected

    @pytest.mark.parametrize("section,expected", [
        ("1", _lit(b"Subject: one\r\n\r\nfirst")), ("1.HEADER", _lit(b"Subject: one\r\n\r\n")),
        ("1.1", _lit(b"first")), ("1.MIME", _lit(b"\r\n")), ("2.TEXT", _lit(b"second")), ("2.1", _lit(b"second")),
    ])
    def test_digest_parts_are_messages(self, box, section, expected):
        assert _section(box, 3, section) == expected

    def test_partial_of_an_encapsulated_text(self, box):
        assert _untagged(box, "FETCH 2 BODY.PEEK[1.2.2.TEXT]<8.4>") == (
            b"* 2 FETCH (BODY[1.2.2.TEXT]<8> {4}\r\nbody)\r\n")

    def test_bodystructure_of_a_top_level_message_rfc822(self, box):
        assert _untagged(box, "FETCH 1 BODYSTRUCTURE") == (
            b'* 1 FETCH (BODYSTRUCTURE ("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 52 '
            b'(NIL "inner" ((NIL NIL "b" "example.test")) ((NIL NIL "b" "example.test")) '
            b'((NIL NIL "b" "example.test")) NIL NIL NIL NIL NIL) '
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 12 1 NIL NIL NIL NIL) 4 NIL NIL NIL NIL))\r\n')

    def test_body_of_message_rfc822_nested_in_multiparts(self, box):
        assert _untagged(box, "FETCH 2 BODY") == (
            b'* 2 FETCH (BODY ((("TEXT" "PLAIN" NIL NIL NIL "7BIT" 8 1)'
            b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 232 (NIL "attached" ((NIL NIL "c" "example.test")) '
            b'((NIL NIL "c" "example.test")) ((NIL NIL "c" "example.test")) NIL NIL NIL NIL NIL) '
            b'(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 9 1)("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 48 '
            b'(NIL "deepest" NIL NIL NIL NIL NIL NIL NIL NIL) '
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 12 1) 5) "ALTERNATIVE") 17) "MIXED")'
            b'("TEXT" "PLAIN" NIL NIL NIL "7BIT" 4 1) "MIXED"))\r\n')

    def test_bodystructure_of_digest_parts(self, box):
        assert _untagged(box, "FETCH 3 BODYSTRUCTURE") == (
            b'* 3 FETCH (BODYSTRUCTURE (("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 21 '
            b'(NIL "one" NIL NIL NIL NIL NIL NIL NIL NIL) '
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 5 1 NIL NIL NIL NIL) 3 NIL NIL NIL NIL)'
            b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 22 (NIL "two" NIL NIL NIL NIL NIL NIL NIL NIL) '
            b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 6 1 NIL NIL NIL NIL) 3 NIL NIL NIL NIL) '
            b'"DIGEST" ("BOUNDARY" "d") NIL NIL NIL))\r\n')

    def test_fetching_a_part_of_an_encapsulated_message_sets_seen(self, box):
        assert _untagged(box, "FETCH 1 (BODY[1.1] FLAGS)") == (
            b"* 1 FETCH (BODY[1.1] {12}\r\ninner text\r\n FLAGS (\\Seen \\Recent))\r\n")


def _envelope_of(world, client, header: bytes) -> bytes:
    world.deliver(header + b"\r\nbody\r\n")
    client.ok("SELECT INBOX")
    out = _untagged(client, "FETCH 1 ENVELOPE")
    assert out.startswith(b"* 1 FETCH (ENVELOPE (") and out.endswith(b"))\r\n"), out
    return out[len(b"* 1 FETCH (ENVELOPE "):-len(b")\r\n")]


class TestEnvelopeAddresses:
    """RFC 3501 §7.4.2 address structures from RFC 5322 §3.4 syntax."""

    def test_comment_names_the_person_when_there_is_no_display_name(self, world, client):
        env = _envelope_of(world, client, b"From: user@example.test (Real Name)\r\nSubject: s\r\n")
        assert env == (b'(NIL "s" (("Real Name" NIL "user" "example.test")) (("Real Name" NIL "user" '
                       b'"example.test")) (("Real Name" NIL "user" "example.test")) NIL NIL NIL NIL NIL)')

    def test_display_name_wins_over_a_comment(self, world, client):
        env = _envelope_of(world, client, b"From: Real Name <user@example.test> (work)\r\n"
                                          b"To: (first) a@example.test (second), b@example.test ()\r\n")
        assert env == (b'(NIL NIL (("Real Name" NIL "user" "example.test")) (("Real Name" NIL "user" '
                       b'"example.test")) (("Real Name" NIL "user" "example.test")) '
                       b'(("second" NIL "a" "example.test")(NIL NIL "b" "example.test")) NIL NIL NIL NIL)')

    def test_route_gives_the_adl(self, world, client):
        env = _envelope_of(world, client, b"From: Joe <@relay1.example,@relay2.example:joe@example.test>\r\n"
                                          b"To: <@relay.example:ann@example.test>\r\n")
        assert env == (b'(NIL NIL (("Joe" "@relay1.example,@relay2.example" "joe" "example.test")) '
                       b'(("Joe" "@relay1.example,@relay2.example" "joe" "example.test")) '
                       b'(("Joe" "@relay1.example,@relay2.example" "joe" "example.test")) '
                       b'((NIL "@relay.example" "ann" "example.test")) NIL NIL NIL NIL)')

    def test_groups_have_nil_host_markers(self, world, client):
        env = _envelope_of(world, client, b"From: a@example.test\r\nTo: undisclosed-recipients:;\r\n"
                                          b'Cc: "The Team": Carol <carol@example.test>, dave@example.test;, '
                                          b"eve@example.test\r\nBcc: empty: ;\r\n")
        assert env == (b'(NIL NIL ((NIL NIL "a" "example.test")) ((NIL NIL "a" "example.test")) '
                       b'((NIL NIL "a" "example.test")) '
                       b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) '
                       b'((NIL NIL "The Team" NIL)("Carol" NIL "carol" "example.test")'
                       b'(NIL NIL "dave" "example.test")(NIL NIL NIL NIL)(NIL NIL "eve" "example.test")) '
                       b'((NIL NIL "empty" NIL)(NIL NIL NIL NIL)) NIL NIL)')

    def test_quoting_is_removed_and_specials_survive(self, world, client):
        env = _envelope_of(world, client, b'From: "Smith, John \\"JJ\\"" <"john doe"@example.test>\r\n'
                                          b"To: Alice A. <a@[192.0.2.1]>, x@y (a \\(b\\) (c))\r\n")
        assert env == (b'(NIL NIL (("Smith, John \\"JJ\\"" NIL "john doe" "example.test")) '
                       b'(("Smith, John \\"JJ\\"" NIL "john doe" "example.test")) '
                       b'(("Smith, John \\"JJ\\"" NIL "john doe" "example.test")) '
                       b'(("Alice A." NIL "a" "[192.0.2.1]")("a (b) (c)" NIL "x" "y")) NIL NIL NIL NIL)')

    def test_encoded_words_are_sent_as_written(self, world, client):
        env = _envelope_of(world, client, b"From: =?utf-8?q?J=C3=B6rg?= <j@example.test>\r\n")
        assert env.startswith(b'(NIL NIL (("=?utf-8?q?J=C3=B6rg?=" NIL "j" "example.test"))')

    def test_folded_header_and_empty_sender_and_reply_to(self, world, client):
        env = _envelope_of(world, client, b"From: Ann\r\n <ann@example.test>,\r\n\tbob@example.test\r\n"
                                          b"Sender:\r\nReply-To: (nobody)\r\n")
        both = b'(("Ann" NIL "ann" "example.test")(NIL NIL "bob" "example.test"))'
        assert env == b"(NIL NIL " + both + b" " + both + b" " + both + b" NIL NIL NIL NIL NIL)"

    def test_a_mailbox_without_a_host_is_not_a_group_marker(self, world, client):
        env = _envelope_of(world, client, b"From: alice\r\nTo: <>\r\n")
        assert env == (b'(NIL NIL ((NIL NIL "alice" "")) ((NIL NIL "alice" "")) ((NIL NIL "alice" "")) '
                       b'((NIL NIL "" "")) NIL NIL NIL NIL)')


ADDRESSED = [
    b'From: "Smith, John \\"JJ\\"" <john.smith@example.test>\r\nTo: alice@example.test\r\nSubject: one\r\n\r\nx\r\n',
    b"From: jdoe@example.test (Jane Doe)\r\nTo: Alice  Liddell\r\n <alice@example.test>\r\nSubject: two\r\n\r\nx\r\n",
    b"From: =?utf-8?q?J=C3=B6rg?= =?utf-8?q?_M=C3=BCller?= <jm@example.test>\r\nSubject: three\r\n\r\nx\r\n",
    b"From: x@example.test\r\nTo: <@relay.example:ann@example.test>\r\nCc: The Team: carol@example.test;\r\n"
    b"Bcc: \"bob\"@Example.TEST (=?iso-8859-1?q?B=F6b?=)\r\nSubject: four\r\n\r\nx\r\n",
]


class TestAddressSearch:
    """RFC 3501 §6.4.4: FROM/TO/CC/BCC are case-insensitive substrings of the addresses."""

    @pytest.fixture
    def box(self, world, client):
        for message in ADDRESSED:
            world.deliver(message)
        client.ok("SELECT INBOX")
        return client

    @pytest.mark.parametrize("criteria,expected", [
        ('FROM "smith, john"', b"1"), ('FROM "John \\"JJ\\""', b"1"), ("FROM john.smith@example.test", b"1"),
        ('FROM "JJ\\" <john.smith@"', b"1"),
        ('FROM "jane doe"', b"2"), ("FROM JDOE@EXAMPLE", b"2"), ('TO "alice liddell <alice@"', b"2"),
        ('CHARSET UTF-8 FROM "jörg müller"', b"3"), ("CHARSET UTF-8 FROM JÖRG", b"3"), ("FROM jm@", b"3"),
        ("TO ann@example.test", b"4"), ("TO @relay.example", b"4"), ('CC "the team"', b"4"),
        ("CC carol@example", b"4"), ("BCC bob@example.test", b"4"), ("CHARSET UTF-8 BCC böb", b"4"),
        ("FROM example.test", b"1 2 3 4"), ("TO alice", b"1 2"), ('FROM ""', b"1 2 3 4"),
        ('CC ""', b"4"), ("FROM nobody", b""), ("TO jane", b""),
        ("OR FROM jane TO ann", b"2 4"), ("NOT FROM example", b""),
    ])
    def test_address_keys(self, box, criteria, expected):
        assert _untagged(box, f"SEARCH {criteria}") == b"* SEARCH" + (b" " + expected if expected else b"") + b"\r\n"

    def test_header_key_still_matches_the_raw_text(self, box):
        assert _untagged(box, 'SEARCH HEADER From "(Jane Doe)"') == b"* SEARCH 2\r\n"
        assert _untagged(box, 'SEARCH FROM "(Jane Doe)"') == b"* SEARCH\r\n"

    def test_uid_search_by_address(self, box):
        assert _untagged(box, 'UID SEARCH FROM "jane"') == b"* SEARCH 2\r\n"

    def test_addresses_are_parsed_only_for_address_keys(self, box, monkeypatch):
        from mailstack.imap import address

        calls = []
        real = address.search_texts
        monkeypatch.setattr(address, "search_texts", lambda v: calls.append(v) or real(v))
        assert _untagged(box, "SEARCH SUBJECT three") == b"* SEARCH 3\r\n"
        assert calls == []
        # a message whose text holds none of the needle's words is refused before its header
        # is parsed; quoted-pairs (message 1) and encoded words (3, 4) can hide words
        assert _untagged(box, "SEARCH FROM zebra") == b"* SEARCH\r\n"
        assert [v[:10] for v in calls] == ['"Smith, Jo', "=?utf-8?q?", "x@example."]
        calls.clear()
        assert _untagged(box, "SEARCH FROM jane") == b"* SEARCH 2\r\n"
        assert "jdoe@example.test (Jane Doe)" in calls


class TestAddressGrammar:
    """mailstack.imap.address against RFC 5322 §3.4 / §4.4 and RFC 2047."""

    @pytest.mark.parametrize("value,expected", [
        ("a@b", [(None, None, "a", "b")]),
        ("a@b (Real Name)", [("Real Name", None, "a", "b")]),
        ("(Real Name) a@b", [("Real Name", None, "a", "b")]),
        ("a@b (one) (two)", [("two", None, "a", "b")]),
        ("Name <a@b> (c)", [("Name", None, "a", "b")]),
        ("<a(inside)@b>", [(None, None, "a", "b")]),
        ("a @ b . c", [(None, None, "a", "b.c")]),
        ('"a b"@c', [(None, None, "a b", "c")]),
        ("John Q. Public <jqp@example.test>", [("John Q. Public", None, "jqp", "example.test")]),
        ('"Joe \\\\ Q" <j@x>', [("Joe \\ Q", None, "j", "x")]),
        ("<@a,@b:c@d>", [(None, "@a,@b", "c", "d")]),
        ("Name <@a.example:c@d>", [("Name", "@a.example", "c", "d")]),
        ("g:;", [(None, None, "g", None), (None, None, None, None)]),
        ("g: a@b, <c@d>; e@f", [(None, None, "g", None), (None, None, "a", "b"), (None, None, "c", "d"),
                                (None, None, None, None), (None, None, "e", "f")]),
        ("g: a@b", [(None, None, "g", None), (None, None, "a", "b"), (None, None, None, None)]),
        ("a@b,, ,c@d", [(None, None, "a", "b"), (None, None, "c", "d")]),
        ("a@[IPv6:2001:db8::1]", [(None, None, "a", "[IPv6:2001:db8::1]")]),
        ("(unterminated a@b", []),
        ('"unterminated <a@b>', [(None, None, "unterminated <a@b>", "")]),
        ("", []), ("  ", []),
    ])
    def test_envelope_addresses(self, value, expected):
        assert address.envelope_addresses(value) == expected

    def test_search_texts(self):
        assert address.search_texts('"A, B" <a@b> (note), g: =?utf-8?q?caf=C3=A9?= <c@d>;, <@r:e@f>') == [
            "A, B <a@b>", "note", "g", "café <c@d>", "@r:e@f"]

    @pytest.mark.parametrize("text,decoded", [
        ("=?utf-8?q?caf=C3=A9?=", "café"), ("=?UTF-8?B?Y2Fmw6k=?=", "café"), ("=?utf-8?b?Y2Fmw6k?=", "café"),
        ("=?iso-8859-1?q?a_b?= =?iso-8859-1?q?=E9?=", "a bé"), ("x =?utf-8?q?y?= z", "x y z"),
        ("=?utf-8*en?q?hi?=", "hi"), ("=?x-unknown?q?hi?=", "=?x-unknown?q?hi?="),
        ("=?utf-8?b?!!!?=", "=?utf-8?b?!!!?="), ("plain", "plain"),
    ])
    def test_decode_words(self, text, decoded):
        assert address.decode_words(text) == decoded

    @given(st.text(alphabet='ab@.,:;<>()"\\[] \t\r\n=?', max_size=40))
    def test_parser_never_fails_and_markers_balance(self, value):
        addrs = address.envelope_addresses(value)
        depth = 0
        for name, _adl, mailbox, host in addrs:
            if host is None:
                depth += 1 if mailbox is not None else -1
                assert name is None and depth in (0, 1)
            else:
                assert mailbox is not None
        assert depth == 0


class TestHeaderSearchPrefilter:
    """The cheap look at the raw header must never hide a match (RFC 3501 §6.4.4)."""

    def test_folded_subject_matches_across_the_fold(self, world, client):
        world.deliver(b"From: a@example.test\r\nSubject: Hello\r\n world\r\n\r\nbody\r\n")
        world.deliver(b"From: a@example.test\r\nSubject: other\r\n\r\nHello world\r\n")
        client.ok("SELECT INBOX")
        assert _untagged(client, 'SEARCH SUBJECT "hello world"') == b"* SEARCH 1\r\n"
        assert _untagged(client, 'SEARCH HEADER Subject "hello world"') == b"* SEARCH 1\r\n"

    def test_a_word_only_in_the_body_does_not_match_a_header_key(self, world, client):
        world.deliver(b"From: a@example.test\r\nSubject: s\r\n\r\nJane\r\n")
        client.ok("SELECT INBOX")
        assert _untagged(client, "SEARCH FROM jane") == b"* SEARCH\r\n"

    def test_raw_utf8_header_matches_case_insensitively(self, world, client):
        world.deliver("From: JÖRG <j@example.test>\r\nSubject: CAFÉ\r\n\r\nbody\r\n".encode())
        client.ok("SELECT INBOX")
        assert _untagged(client, "SEARCH CHARSET UTF-8 SUBJECT café") == b"* SEARCH 1\r\n"
        assert _untagged(client, "SEARCH CHARSET UTF-8 FROM jörg") == b"* SEARCH 1\r\n"


def _part(ctype: bytes, body: bytes) -> bytes:
    return b"Content-Type: " + ctype + b"\r\n\r\n" + body


def _multipart(boundary: bytes, subtype: bytes, *parts: bytes) -> bytes:
    inner = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    return _part(b"multipart/" + subtype + b"; boundary=" + boundary, inner + b"--" + boundary + b"--")


def _message(subject: bytes, body_part: bytes) -> bytes:
    return b"Subject: " + subject + b"\r\n" + body_part


# The example of RFC 3501 §6.4.5, with each leaf's body naming its part number.
RFC3501_EXAMPLE = _message(b"top", _multipart(
    b"m0", b"mixed",
    _part(b"text/plain", b"part 1"),
    _part(b"application/octet-stream", b"part 2"),
    _part(b"message/rfc822", _message(b"three", _multipart(
        b"m3", b"mixed", _part(b"text/plain", b"part 3.1"), _part(b"application/octet-stream", b"part 3.2")))),
    _multipart(b"m4", b"mixed",
               _part(b"image/gif", b"part 4.1"),
               _part(b"message/rfc822", _message(b"four-two", _multipart(
                   b"m42", b"mixed", _part(b"text/plain", b"part 4.2.1"),
                   _multipart(b"m422", b"alternative", _part(b"text/plain", b"part 4.2.2.1"),
                              _part(b"text/richtext", b"part 4.2.2.2")))))),
))


class TestRFC3501SectionExample:
    """Every part specifier of the RFC 3501 §6.4.5 example names the part the RFC says."""

    @pytest.fixture
    def box(self, world, client):
        world.deliver(RFC3501_EXAMPLE)
        client.ok("SELECT INBOX")
        return client

    @pytest.mark.parametrize("section", ["1", "2", "3.1", "3.2", "4.1", "4.2.1", "4.2.2.1", "4.2.2.2"])
    def test_leaf_parts(self, box, section):
        assert _section(box, 1, section) == _lit(f"part {section}".encode())

    @pytest.mark.parametrize("section,ctype", [
        ("1", b"text/plain"), ("2", b"application/octet-stream"), ("3", b"message/rfc822"),
        ("4", b"multipart/mixed; boundary=m4"), ("4.1", b"image/gif"), ("4.2", b"message/rfc822"),
        ("4.2.2", b"multipart/alternative; boundary=m422"), ("4.2.2.2", b"text/richtext"),
    ])
    def test_mime_headers(self, box, section, ctype):
        assert _section(box, 1, f"{section}.MIME") == _lit(b"Content-Type: " + ctype + b"\r\n\r\n")

    @pytest.mark.parametrize("section,subject", [("HEADER", b"top"), ("3.HEADER", b"three"),
                                                 ("4.2.HEADER", b"four-two")])
    def test_message_headers(self, box, section, subject):
        assert _section(box, 1, section).split(b"\r\n")[1] == b"Subject: " + subject

    def test_message_texts(self, box):
        assert _section(box, 1, "3.TEXT").split(b"\r\n")[1] == b"--m3"
        assert _section(box, 1, "4.2.TEXT").split(b"\r\n")[1] == b"--m42"
        assert _section(box, 1, "TEXT").split(b"\r\n")[1] == b"--m0"

    @pytest.mark.parametrize("section", ["4.HEADER", "4.1.TEXT", "5", "3.3", "4.2.3", "4.2.2.3", "1.1"])
    def test_parts_the_message_does_not_have_are_nil(self, box, section):
        assert _section(box, 1, section) == b"NIL"


def test_message_global_parts_are_messages_too(world, client):
    """RFC 9051 §6.4.5.1: a message/global part has part numbers of its own, and its
    BODYSTRUCTURE carries envelope and body like message/rfc822 (§9: body-type-msg)."""
    world.deliver(b"From: a@example.test\r\nSubject: outer\r\nMIME-Version: 1.0\r\n"
                  b"Content-Type: message/global\r\n\r\n"
                  b"From: b@example.test\r\nSubject: inner\r\n\r\ninner text\r\n")
    client.ok("SELECT INBOX")
    [line] = [x for x in client.ok("FETCH 1 (BODYSTRUCTURE)") if b"BODYSTRUCTURE" in x]
    assert b'("MESSAGE" "GLOBAL" NIL NIL NIL "7BIT" ' in line and b'"inner"' in line
    assert b"inner text" in b"".join(client.ok("FETCH 1 (BODY.PEEK[1.TEXT])"))


def test_a_transfer_encoded_message_global_part_is_decoded_not_descended(world, client):
    """RFC 6532 §3.7: message/global may be base64; then it is a leaf for BINARY (RFC 3516)."""
    import base64

    inner = b"From: b@example.test\r\nSubject: inner\r\n\r\ninner text\r\n"
    world.deliver(b"From: a@example.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n"
                  b"--q\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
                  b"--q\r\nContent-Type: message/global\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                  + base64.encodebytes(inner) + b"--q--\r\n")
    client.ok("SELECT INBOX")
    assert inner.replace(b"\r\n", b"") in b"".join(client.ok("FETCH 1 (BINARY.PEEK[2])"))
