"""Sieve variables (RFC 5229): expansion, set and its modifiers, the string test, match variables, limits."""

from __future__ import annotations

import pytest

from mailstack.sieve.interpreter import MessageView, SieveRuntimeError, compile_script
from mailstack.sieve.variables import MAX_VALUE, MAX_VARIABLES, Variables, modify

from .test_parser import refused_at

HEADER = (b"From: Coyote <coyote@desert.example.org>\r\n"
          b"To: coyote@ACME.Example.COM\r\n"
          b"List-ID: Users <acme-users@lists.example.org>\r\n"
          b"Subject: [acme-users] [fwd] version 1.0 is out\r\n\r\n")


def view(header: bytes = HEADER, **kw) -> MessageView:
    values = {"size": 100, "sender": "coyote@desert.example.org", "recipient": "coyote@acme.example.com"}
    values.update(kw)
    return MessageView(header, **values)


def folders(script: str, **kw) -> list[str | None]:
    return [d.folder for d in compile_script(script).run(view(**kw)).deliveries]


def variable(script: str, name: str, **kw) -> str:
    """The value of ``name`` after the script: filed into a folder named after it."""
    found = folders('require ["variables", "fileinto"];\n' + script + f'\nfileinto "v:${{{name}}}";', **kw)
    return next(f for f in found if f and f.startswith("v:"))[2:]


def test_expansion_rfc_5229_section_3():
    values = Variables()
    values.set("company", "ACME", [])
    assert values.expand("&%${}!") == "&%${}!"
    assert values.expand("${doh!}") == "${doh!}"
    assert values.expand("${full}") == ""
    assert values.expand("${company}") == "ACME"
    assert values.expand("${BAD${Company}") == "${BADACME"
    assert values.expand("${President, ${Company} Inc.}") == "${President, ACME Inc.}"


def test_quoting_is_resolved_first_rfc_5229_section_3_1():
    assert variable(r'set "foo" "x"; set "r" "${fo\o}";', "r") == "x"
    assert variable(r'set "foo" "x"; set "r" "${fo\\o}";', "r") == r"${fo\o}"
    assert variable(r'set "foo" "x"; set "r" "\${foo}";', "r") == "x"
    assert variable(r'set "foo" "x"; set "r" "\\${foo}";', "r") == "\\x"
    assert variable('set "dollar" "$"; set "text" "regarding ${dollar}{beep}";', "text") == "regarding ${beep}"


@pytest.mark.parametrize(("script", "value"), [
    ('set "b" "${a}";', "juMBlEd lETteRS"),
    ('set :length "b" "${a}";', "15"),
    ('set :lower "b" "${a}";', "jumbled letters"),
    ('set :upperfirst "b" "${a}";', "JuMBlEd lETteRS"),
    ('set :upperfirst :lower "b" "${a}";', "Jumbled letters"),
    ('set :lower :upperfirst "b" "${a}";', "Jumbled letters"),
    ('set :quotewildcard "b" "Rock*";', "Rock\\*"),
    ('set :upper "b" "${a}";', "JUMBLED LETTERS"),
    ('set :lowerfirst "b" "${a}";', "juMBlEd lETteRS"),
    ('set :length :quotewildcard "b" "a*?";', "5"),  # quotewildcard (20) before length (10)
])
def test_modifiers_rfc_5229_section_4_1(script, value):
    assert variable('set "a" "juMBlEd lETteRS";\n' + script, "b") == value


def test_case_modifiers_leave_non_ascii():
    assert modify("éa", ["upper"]) == "éA"
    assert modify("Été", ["lowerfirst"]) == "Été"
    assert modify("ab", ["length"]) == "2"


def test_names_are_case_insensitive_and_unknown_is_empty():
    script = 'set "honorific" "Mr"; set "first_name" "Wile"; set "last_name" "Coyote";\n' \
             'set "vacation" text:\nDear ${HONORIFIC} ${last_name},\nI\'m out.\n.\n;'
    assert variable(script, "VACATION") == "Dear Mr Coyote,\r\nI'm out.\r\n"
    assert variable("", "nothing") == ""


def test_match_variables_rfc_5229_section_3_2():
    script = 'if header :matches "List-ID" "*<*@*" { fileinto "INBOX.lists.${2}"; stop; }'
    assert folders('require ["fileinto", "variables"];\n' + script) == ["INBOX.lists.acme-users"]
    script = ('if header :matches "Subject" "[*] *" { set "one" "${1}"; set "two" "${2}"; }')
    assert variable(script, "one") == "acme-users"
    assert variable(script, "two") == "[fwd] version 1.0 is out"
    script = ('if address :matches ["To", "Cc"] ["coyote@**.com", "wile@**.com"] {\n'
              '  set "zero" "${0}"; set "one" "${1}"; set "two" "${2}"; }')
    assert variable(script, "zero") == "coyote@ACME.Example.COM"
    assert variable(script, "one") == ""
    assert variable(script, "two") == "ACME.Example"
    # a test never evaluated (short-circuit) sets nothing; neither does a failed match
    script = 'if anyof (true, address :domain :matches "To" "*.com") { set "r" "[${1}]"; }'
    assert variable(script, "r") == "[]"
    script = ('if header :matches "Subject" "[*]*" { }\nif header :matches "Subject" "nothing*" { }\n'
              'set "r" "${1}";')
    assert variable(script, "r") == "acme-users"


def test_match_variables_are_shortest_and_question_marks():
    script = 'if string :matches "aXbXc" "*X*" { set "a" "${1}"; set "b" "${2}"; }'
    assert (variable(script, "a"), variable(script, "b")) == ("a", "bXc")
    script = 'if string :matches "abcde" "?*?d?" { set "r" "${1}|${2}|${3}|${4}|${5}"; }'
    assert variable(script, "r") == "a|b|c|e|"
    script = 'if string :matches "report-2024" "*-????" { set "r" "${0}/${1}/${5}/${10}"; }'
    with pytest.raises(Exception, match=r"\$\{9\}"):
        compile_script('require "variables";\n' + script)
    script = 'if string :matches "report-2024" "*-????" { set "r" "${0}/${1}/${5}/${09}"; }'
    assert variable(script, "r") == "report-2024/report/4/"


def test_match_variables_casemap_keeps_the_original_case():
    script = 'if header :matches "To" "COYOTE@*.com" { set "d" "${1}"; }'
    assert variable(script, "d") == "ACME.Example"
    script = 'if header :matches :comparator "i;octet" "To" "COYOTE@*.com" { set "d" "${1}"; }'
    assert variable(script, "d") == ""


def test_string_test_rfc_5229_section_5():
    script = 'set "state" "${state} pending";\nif string :matches " ${state} " "* pending *" { set "r" "yes"; }'
    assert variable(script, "r") == "yes"
    script = 'if string :count "eq" :comparator "i;ascii-numeric" ["", "a", "b"] "2" { set "r" "two"; }'
    assert folders('require ["variables", "fileinto", "relational", "comparator-i;ascii-numeric"];\n'
                   + script + ' fileinto "${r}";') == ["two"]
    assert variable('if string :is "" "" { set "r" "empty"; }', "r") == "empty"
    assert variable('if string :contains ["abc", "x"] "b" { set "r" "b"; }', "r") == "b"


def test_expansion_in_tests_and_actions():
    script = ('require ["variables", "fileinto", "imap4flags"];\nset "h" "subject"; set "k" "*version*";\n'
              'set "flag" "\\\\Seen";\n'
              'if header :matches "${h}" "${k}" { addflag "${flag}"; fileinto "Lists/${h}"; }')
    outcome = compile_script(script).run(view())
    assert [(d.folder, d.flags) for d in outcome.deliveries] == [("Lists/subject", ("\\Seen",))]
    script = 'require "variables";\nset "to" "elsewhere@example.net";\nredirect "${to}";'
    assert compile_script(script).run(view()).redirects == ["elsewhere@example.net"]
    with pytest.raises(SieveRuntimeError, match="not a mail address"):
        compile_script('require "variables";\nset "to" "nobody";\nredirect "${to}";').run(view())


def test_values_current_when_control_reaches_the_statement():
    script = 'set "a" "1"; set "b" "${a}"; set "a" "2"; set "c" "${a}${b}";'
    assert variable(script, "c") == "21"


def test_without_require_no_expansion():
    assert folders('require "fileinto"; fileinto "${x}";') == ["${x}"]


def test_checking():
    read = compile_script
    refused_at(read, 'set "a" "b";', 1, 1, 'require "variables"')
    refused_at(read, 'if string "a" "b" { }', 1, 4, 'require "variables"')
    refused_at(read, 'require "variables";\nset "1" "b";', 2, 5, "match variables")
    refused_at(read, 'require "variables";\nset "a.b" "b";', 2, 5, "not a variable name")
    refused_at(read, 'require "variables";\nset "a-b" "b";', 2, 5, "not a variable name")
    refused_at(read, 'require "variables";\nset "${a}" "b";', 2, 5, "not a variable name")
    refused_at(read, 'require "variables";\nset "' + "a" * 65 + '" "b";', 2, 5, "at most 64")
    refused_at(read, 'require "variables";\nset :lower :upper "a" "b";', 2, 12, "cannot go together")
    refused_at(read, 'require "variables";\nset :upperfirst :lowerfirst "a" "b";', 2, 17, "cannot go together")
    refused_at(read, 'require "variables";\nset :reverse "a" "b";', 2, 5, "does not take :reverse")
    refused_at(read, 'require "variables";\nset "a";', 2, 1, "set takes string and string")
    refused_at(read, 'require "variables";\nset "a" "' + "x" * (MAX_VALUE + 1) + '";', 2, 9, "at most 4096 octets")
    refused_at(read, 'require "variables";\nset "a" "${env.x}";', 2, 9, "namespace 'env'")
    refused_at(read, 'require "variables";\nif header :is "${a.b.c}" "x" {}', 2, 15, "namespace 'a.b'")
    refused_at(read, 'require "variables";\nset "a" "${10}";', 2, 9, "${9}")
    many = "".join(f'set "v{i}" "x";\n' for i in range(MAX_VARIABLES + 1))
    refused_at(read, 'require "variables";\n' + many, MAX_VARIABLES + 2, 5, f"more than {MAX_VARIABLES} variables")
    # a literal redirect address is still checked; one made by variables at run time
    refused_at(read, 'require "variables";\nredirect "nobody";', 2, 10, "mail address")
    compile_script('require "variables";\nredirect "${to}";')
    compile_script('require ["variables", "vacation"];\nvacation :from "${me}" :addresses ["${a}"] "away";')


def test_runtime_values_are_truncated_not_errors():
    script = 'set "a" "' + "é" * 1500 + '"; set "b" "${a}${a}";'  # 3000 octets, then 6000
    value = variable(script, "b")
    assert len(value.encode()) <= MAX_VALUE and value == "é" * (MAX_VALUE // 2)


def test_expansion_is_bounded_per_run():
    big = 'set "a" "' + "x" * 4000 + '"; set "a" "${a}";\n'
    script = 'require "variables";\n' + big + 'if header :contains "subject" ["' + '${a}${a}${a}${a}", "' * 1500 + '"] {}'
    with pytest.raises(SieveRuntimeError, match="expanded"):
        compile_script(script).run(view())


def test_vacation_handle_from_the_unexpanded_arguments():
    script = ('require ["vacation", "variables"];\nif header :matches "subject" "*" {\n'
              '  vacation :subject "Automatic response to: ${1}" "I\'m away";\n}')
    personal = HEADER.replace(b"List-ID: Users <acme-users@lists.example.org>\r\n", b"")
    first = compile_script(script).run(view(header=personal)).vacation
    second = compile_script(script).run(view(header=personal.replace(b"1.0", b"2.0"))).vacation
    assert first is not None and second is not None
    assert first.subject == "Automatic response to: [acme-users] [fwd] version 1.0 is out"
    assert first.subject != second.subject and first.handle == second.handle
    script = 'require ["vacation", "variables"];\nset "me" "not an address";\nvacation :from "${me}" "away";'
    found = compile_script(script).run(view(header=personal)).vacation
    assert found is not None and found.from_ is None  # RFC 5230 §4.3: an invalid :from is ignored


def test_imap4flags_with_variables_rfc_5232():
    script = ('require ["variables", "fileinto", "imap4flags"];\n'
              'if header :contains "from" "coyote@desert.example.org" {\n'
              '  setflag "flagvar" "\\\\Flagged";\n  fileinto :flags "${flagvar}" "INBOX.From Boss";\n}')
    outcome = compile_script(script).run(view())
    assert [(d.folder, d.flags) for d in outcome.deliveries] == [("INBOX.From Boss", ("\\Flagged",))]
    script = ('require ["variables", "fileinto", "imap4flags"];\n'
              'addflag "flagvar" "$MDNRequired"; addflag "flagvar" ["\\\\Deleted", "\\\\Answered"];\n'
              'removeflag "flagvar" "$MDNRequired";\nfileinto :flags "${flagvar}" "INBOX.imap-list";')
    outcome = compile_script(script).run(view())
    assert [(d.folder, d.flags) for d in outcome.deliveries] == [("INBOX.imap-list", ("\\Deleted", "\\Answered"))]
    outcome = compile_script(script.replace('fileinto :flags "${flagvar}"', "keep; fileinto")).run(view())
    assert [d.flags for d in outcome.deliveries] == [(), ()]  # the internal variable is untouched


@pytest.mark.parametrize(("test", "result"), [
    ('hasflag :contains "MyVar" "Junk"', True),
    ('hasflag :contains "MyVar" "forward"', True),
    ('hasflag :contains "MyVar" ["label", "forward"]', True),
    ('hasflag :contains "MyVar" ["junk", "forward"]', True),
    ('hasflag :contains "MyVar" "junk forward"', True),
    ('hasflag :contains "MyVar" "label"', False),
    ('hasflag :contains "MyVar" ["label1", "label2"]', False),
    ('hasflag :count "ge" :comparator "i;ascii-numeric" "MyFlags" "2"', True),
    ('hasflag :count "ge" :comparator "i;ascii-numeric" "MyFlags" "3"', False),
    ('hasflag :is "b A"', False),  # the internal variable is empty
])
def test_hasflag_on_variables_rfc_5232_section_4(test, result):
    script = ('require ["variables", "imap4flags", "relational", "comparator-i;ascii-numeric"];\n'
              'set "MyVar" "NonJunk Junk gnus-forward $Forwarded NotJunk JunkRecorded $Junk $NotJunk";\n'
              'set "MyFlags" "A B";\n'
              f'if {test} {{ discard; }}')
    assert compile_script(script).run(view()).discarded is result


def test_imap4flags_variable_names_checked():
    refused_at(compile_script, 'require ["variables", "imap4flags"];\nsetflag "1" "x";', 2, 9, "match variables")
    refused_at(compile_script, 'require ["variables", "imap4flags"];\nif hasflag ["a", "b.c"] "x" {}', 2, 12,
               "not a variable name")
    refused_at(compile_script, 'require "imap4flags";\nsetflag "v" "x";', 2, 1, "setflag takes string list")
