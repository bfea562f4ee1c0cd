"""Sieve against the RFC text, case by case: matching, comparators, address parts, flags, reject,
redirect targets and input that is not valid (RFC 5228, 5231, 5232, 5233, 4790, 5429, 5804)."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from mailstack.accounts import AccountError, SQLiteAccountStore
from mailstack.cli import run as cli_run
from mailstack.sieve.interpreter import MessageView, SieveError, SieveRuntimeError, compile_script
from mailstack.sieve.parser import SieveSyntaxError

HDR = b"From: Bob <bob@example.org>\r\nTo: alice+lists@example.test\r\nSubject: hi\r\n\r\n"


def msg(header: bytes = HDR, sender: str = "bob@example.org", recipient: str = "alice+lists@example.test"):
    return MessageView(header, 100, sender, recipient)


def discarded(script: str, **kw) -> bool:
    return compile_script(script).run(msg(**kw)).discarded


# :matches is compiled to a backtracking regex: cubic time on attacker-sized headers -----------
def test_matches_is_not_superlinear():
    script = compile_script('if header :matches "subject" "*make*money*fast*" { discard; }')  # RFC 5228 §9 example
    header = b"Subject: " + b"make money " * 2000 + b"\r\n\r\n"  # 22 KB, no "fast"
    assert not script.run(msg(header)).discarded  # a scan, not a backtracking regex (bench: 22 KB in ms)


# every header name re-parses the whole header: cost = names x header size, not bounded by steps -----
def test_header_parsed_once_per_run():
    names = ",".join(f'"x-{i}"' for i in range(3000))
    script = compile_script(f'if header :is [{names}] "z" {{ discard; }}')
    header = b"".join(b"X-F%d: v\r\n" % i for i in range(3000)) + b"\r\n"
    assert not script.run(msg(header)).discarded  # the header is parsed once per run, not once per name


# i;ascii-numeric converts the digits with int(): >4300 digits raises ValueError out of run() ------
def test_ascii_numeric_long_digit_string():
    script = compile_script('require ["relational", "comparator-i;ascii-numeric"];'
                            'if header :value "gt" :comparator "i;ascii-numeric" "x-n" "1" { discard; }')
    assert script.run(msg(b"X-N: " + b"9" * 5000 + b"\r\n\r\n")).discarded


# RFC 2047 decoding happens before address parsing: the phrase can forge an address -----------------
def test_encoded_display_name_is_not_an_address():
    header = b"From: =?utf-8?q?Boss_=3Cboss=40corp=2Eexample=3E=2C?= <mallory@evil.example>\r\n\r\n"
    assert not discarded('if address :is "from" "boss@corp.example" { discard; }', header=header)


# envelope with the null reverse-path (RFC 5228 §5.4, RFC 5231 §4.2) -----------------------------
def test_null_sender_matches_empty_for_every_address_part():
    assert discarded('require "envelope"; if envelope :localpart :is "from" "" { discard; }', sender="")
    assert discarded('require "envelope"; if envelope :domain :is "from" "" { discard; }', sender="")


def test_null_sender_counts_zero():
    assert discarded('require ["envelope", "relational", "comparator-i;ascii-numeric"];'
                     'if envelope :count "eq" :comparator "i;ascii-numeric" "from" "0" { discard; }', sender="")


# require rules (RFC 5228 §2.7.3, §6, §6.1) -----------------------------------------------------
def test_comparator_capabilities_may_be_required():
    compile_script('require ["comparator-i;octet", "comparator-i;ascii-casemap"]; keep;')


def test_capability_strings_are_case_sensitive():
    with pytest.raises(SieveError):
        compile_script('require "FILEINTO"; fileinto "x";')


# tagged arguments after positional ones are accepted (RFC 5228 §2.6.2) and then misread ----------
def test_tag_after_positional_is_refused():
    script = 'require ["fileinto", "imap4flags"]; fileinto "Work" :flags "\\\\Seen";'
    try:
        outcome = compile_script(script).run(msg())
    except SieveError:
        return  # refused: correct
    assert [d.folder for d in outcome.deliveries] == ["Work"]  # today: filed into "\Seen"


# duplicate keep/fileinto: "the last flag list value MUST win" (RFC 5232 §3) ---------------------
def test_last_flags_win():
    out = compile_script('require ["fileinto", "imap4flags"]; fileinto :flags "a" "X"; fileinto :flags "b" "X";'
                         ).run(msg())
    assert [d.flags for d in out.deliveries] == [("b",)]
    out = compile_script('require ["fileinto", "copy", "imap4flags"]; fileinto :copy "INBOX"; addflag "\\\\Seen";'
                         ).run(msg())
    assert [d.flags for d in out.deliveries] == [("\\Seen",)]


# hasflag keys are flag lists too (RFC 5232 §2, §4 example 'hasflag :is "b A"') -------------------
def test_hasflag_key_with_spaces():
    assert discarded('require "imap4flags"; setflag "A B"; if hasflag :is "b A" { discard; }')


# \Recent and invalid flags MUST be ignored (RFC 5232 §2) -------------------------------------------
def test_recent_is_ignored():
    out = compile_script('require "imap4flags"; setflag "\\\\Recent \\\\Seen";').run(msg())
    assert out.deliveries[0].flags == ("\\Seen",)


# more than one reject MUST be prohibited (RFC 5429 §2.4) ----------------------------------------
def test_second_reject_is_an_error():
    with pytest.raises(SieveRuntimeError):
        compile_script('require ["reject", "ereject"]; reject "a"; ereject "b";').run(msg())


# i;ascii-numeric has no substring operation: :contains/:matches with it is an error --------------
def test_numeric_comparator_with_contains_is_refused():
    with pytest.raises(SieveError):
        compile_script('require "comparator-i;ascii-numeric";'
                       'if header :contains :comparator "i;ascii-numeric" "subject" "1" { keep; }')


# i;ascii-casemap orders after mapping to UPPER case (RFC 4790 §9.2.1) ---------------------------
def test_casemap_ordering_uses_upper_case():
    # "_" (0x5F) > "A" (0x41); the code folds to lower case and compares "_" < "a"
    assert discarded('require "relational"; if header :value "gt" "subject" "a" { discard; }',
                     header=b"Subject: _\r\n\r\n")


# the address test MUST be restricted to address headers (RFC 5228 §5.1) ----------------------------
def test_address_test_on_subject_does_not_match():
    assert not discarded('if address :is "subject" "hi" { discard; }')


# an outbound address that is not a sieve-address is an error (RFC 5228 §2.4.2.3) -------------------
@pytest.mark.parametrize("target", ["not an address", "a@example.org, b@example.org", "grp: a@example.org;"])
def test_redirect_to_a_non_address_is_an_error(target):
    with pytest.raises((SieveError, SieveRuntimeError)):
        compile_script(f'redirect "{target}";').run(msg())


# "?" is one octet for i;octet and i;ascii-casemap (RFC 5228 §2.7.1) -------------------------------
def test_question_mark_is_one_octet():
    header = "Subject: é\r\n\r\n".encode()
    assert not discarded('if header :matches "subject" "?" { discard; }', header=header)
    assert discarded('if header :matches "subject" "??" { discard; }', header=header)


# storage/CLI: input that is not UTF-8 escapes as a raw exception ------------------------------------
def test_script_name_with_lone_surrogate(tmp_path: Path):
    with SQLiteAccountStore(tmp_path / "a.sqlite3", hasher=PasswordHasher(time_cost=1, memory_cost=8,
                                                                          parallelism=1)) as s:
        s.ensure_domains(["example.test"])
        s.add_user("u@example.test", "pw")
        with pytest.raises(AccountError):
            s.put_script("u@example.test", "bad\udcff", "keep;")  # what argv gives for a non-UTF-8 name


def test_cli_put_non_utf8_stdin(tmp_path: Path):
    conf = tmp_path / "m.toml"
    conf.write_text(f'hostname = "mail.example.test"\ndomains = ["example.test"]\n[storage]\n'
                    f'accounts = "{tmp_path}/accounts.sqlite3"\n')
    assert cli_run(["--config", str(conf), "user", "add", "u@example.test", "--password-stdin"],
                   stdin=io.StringIO("pw\n"), stdout=io.StringIO(), stderr=io.StringIO()) == 0
    err = io.StringIO()
    stdin = io.TextIOWrapper(io.BytesIO(b"keep; # caf\xe9\n"), encoding="utf-8")
    assert cli_run(["--config", str(conf), "sieve", "put", "u@example.test", "s"],
                   stdin=stdin, stdout=io.StringIO(), stderr=err) == 1


# an unencoded NUL is not allowed in strings (RFC 5228 §2.4.2) ------------------------------------
def test_nul_in_string_is_refused():
    with pytest.raises(SieveSyntaxError):
        compile_script('require "reject"; reject "a\x00b";')
