"""Sieve include (RFC 6609): include, return, global, and their limits."""

from __future__ import annotations

import pytest

from mailstack.sieve import interpreter
from mailstack.sieve.interpreter import MessageView, SieveRuntimeError, compile_script

from .test_parser import refused_at

HEADER = b"From: boss@example.com\r\nTo: me@example.test\r\nSubject: Make money now\r\nList-ID: sieve.ietf.org\r\n\r\n"


def view(personal: dict[str, str], site: dict[str, str] | None = None, header: bytes = HEADER) -> MessageView:
    site = site or {}
    return MessageView(header, 100, "a@b.example", "me@example.test",
                       load_script=lambda name, is_global: (site if is_global else personal).get(name))


def run(script: str, personal: dict[str, str], site: dict[str, str] | None = None, header: bytes = HEADER):
    return compile_script(script).run(view(personal, site, header))


# RFC 6609 §3.2's scripts
DEFAULT = ('require ["include"];\ninclude :personal "always_allow";\ninclude :global "spam_tests";\n'
           'include :personal "spam_tests";\ninclude :personal "mailing_lists";')
PERSONAL = {
    "always_allow": 'if address :is "from" "boss@example.com" { keep; }\n'
                    'elsif address :is "from" "ceo@example.com" { keep; }',
    "spam_tests": 'require ["reject"];\nif header :contains "Subject" "XXXX" { reject "Subject XXXX is unacceptable."; }\n'
                  'elsif address :is "from" "money@example.com" { reject "Mail from this sender is unwelcome."; }',
    "mailing_lists": 'require ["fileinto"];\nif header :is "List-ID" "sieve.ietf.org" { fileinto "lists.sieve"; }\n'
                     'elsif header :is "List-ID" "ietf-imapext.imc.org" { fileinto "lists.imapext"; }',
}
SITE = {"spam_tests": 'require ["reject"];\nif anyof (header :contains "Subject" "$$", '
                      'header :contains "Subject" "Make money") { reject "No thank you."; }'}


def test_rfc_6609_section_3_2_example():
    outcome = run(DEFAULT, PERSONAL, SITE, HEADER.replace(b"Make money now", b"hello"))
    assert [d.folder for d in outcome.deliveries] == [None, "lists.sieve"]  # keep from always_allow, then the list
    with pytest.raises(SieveRuntimeError, match="reject together with"):  # the site's reject, and the keep
        run(DEFAULT, PERSONAL, SITE)
    no_boss = HEADER.replace(b"boss@", b"someone@").replace(b"List-ID: sieve.ietf.org\r\n", b"")
    assert run(DEFAULT, PERSONAL, SITE, no_boss).reject == "No thank you."


def test_globals_rfc_6609_section_3_4_1_example():
    main = ('require ["fileinto", "include", "variables", "relational"];\nglobal "test";\nglobal "test_mailbox";\n'
            'set "test" "$$";\ninclude "subject_tests";\nset "test" "Make money";\ninclude "subject_tests";\n'
            'if string :count "eq" "${test_mailbox}" "1" {\n  fileinto "${test_mailbox}";\n  stop;\n}')
    scripts = {"subject_tests": 'require ["include", "variables"];\nglobal ["test", "test_mailbox"];\n'
                                'if header :contains "Subject" "${test}" { set "test_mailbox" "spam-${test}"; }'}
    assert [d.folder for d in run(main, scripts).deliveries] == ["spam-Make money"]
    plain = HEADER.replace(b"Make money now", b"hello")
    assert [d.folder for d in run(main, scripts, header=plain).deliveries] == [None]


def test_global_namespace_and_private_variables_rfc_6609_section_3_4_2():
    main = ('require ["include", "variables", "fileinto"];\nglobal "i_am_on_vacation";\n'
            'set "global.i_am_on_vacation" "1"; set "mine" "main";\ninclude "other";\n'
            'fileinto "${i_am_on_vacation}-${mine}-${global.from_other}";')
    other = {"other": 'require ["include", "variables"];\nset "mine" "other"; set "global.from_other" "x";\n'
                      'set "i_am_on_vacation" "private";'}
    assert [d.folder for d in run(main, other).deliveries] == ["1-main-x"]


def test_return_and_stop():
    scripts = {"sub": 'require ["include", "fileinto"];\nfileinto "a";\nreturn;\nfileinto "never";',
               "stopper": 'require ["fileinto"];\nfileinto "s";\nstop;'}
    main = 'require ["include", "fileinto"];\ninclude "sub";\nfileinto "b";'
    assert [d.folder for d in run(main, scripts).deliveries] == ["a", "b"]
    main = 'require ["include", "fileinto"];\ninclude "stopper";\nfileinto "after";'
    assert [d.folder for d in run(main, scripts).deliveries] == ["s"]  # stop ends every script
    assert [d.folder for d in run('require ["include"];\nreturn;\ndiscard;', {}).deliveries] == [None]


def test_once_optional_missing_and_loops():
    scripts = {"counter": 'require ["include", "variables"];\nglobal "n";\nset "n" "${n}x";',
               "a": 'require "include";\ninclude "b";', "b": 'require "include";\ninclude "a";',
               "self_once": 'require "include";\ninclude :once "self_once";'}
    main = ('require ["include", "variables", "fileinto"];\nglobal "n";\ninclude :once "counter";\n'
            'include :once "counter";\ninclude "counter";\nfileinto "${n}";')
    assert [d.folder for d in run(main, scripts).deliveries] == ["xx"]
    assert [d.folder for d in run('require "include";\ninclude :optional "nothing";', {}).deliveries] == [None]
    with pytest.raises(SieveRuntimeError, match="no personal script 'nothing'"):
        run('require "include";\ninclude "nothing";', {})
    with pytest.raises(SieveRuntimeError, match="no global script 'counter'"):
        run('require "include";\ninclude :global "counter";', scripts)
    with pytest.raises(SieveRuntimeError, match="includes itself"):
        run('require "include";\ninclude "a";', scripts)
    run('require "include";\ninclude "self_once";', scripts)  # :once of a script running is no error


def test_included_scripts_have_their_own_requires():
    with pytest.raises(SieveRuntimeError, match="needs require"):
        run('require ["include", "fileinto"];\ninclude "bad";', {"bad": 'fileinto "x";'})
    with pytest.raises(SieveRuntimeError, match="included script 'broken'"):
        run('require "include";\ninclude "broken";', {"broken": "if {"})


def test_editheader_changes_go_both_ways_rfc_6609_section_3_5():
    scripts = {"sub": 'require ["editheader", "fileinto"];\nif exists "X-Added" { fileinto "saw-it"; }\n'
                      'deleteheader "subject";'}
    main = ('require ["include", "editheader", "fileinto"];\naddheader "X-Added" "1";\ninclude "sub";\n'
            'if not exists "subject" { fileinto "gone"; }')
    outcome = run(main, scripts)
    assert [d.folder for d in outcome.deliveries] == ["saw-it", "gone"]
    assert b"Subject" not in outcome.header


def test_limits(monkeypatch):
    chain = {f"s{i}": f'require "include";\ninclude "s{i + 1}";' for i in range(20)}
    with pytest.raises(SieveRuntimeError, match="deep"):
        run('require "include";\ninclude "s0";', chain)
    many = {"leaf": "keep;"}
    script = 'require "include";\n' + "".join(f'include :optional "x{i}";\n' for i in range(5)) + 'include "leaf";'
    assert run(script, many).deliveries
    monkeypatch.setattr(interpreter, "MAX_INCLUDES", 3)
    wide = {f"w{i}": "keep;" for i in range(5)}
    with pytest.raises(SieveRuntimeError, match="more than 3 scripts"):
        run('require "include";\n' + "".join(f'include "w{i}";\n' for i in range(5)), wide)


def test_checking():
    read = compile_script
    refused_at(read, 'include "x";', 1, 1, 'require "include"')
    refused_at(read, 'return;', 1, 1, 'require "include"')
    refused_at(read, 'require "include";\nglobal "x";', 2, 1, 'require "variables"')
    refused_at(read, 'require "variables";\nglobal "x";', 2, 1, 'require "include"')
    refused_at(read, 'require "include";\ninclude :personal :global "x";', 2, 19, "only one of :personal")
    refused_at(read, 'require "include";\ninclude "";', 2, 9, "not a script name")
    refused_at(read, 'require "include";\ninclude "a\\u0001b";'.replace("\\u0001", "\x01"), 2, 9, "not a script name")
    refused_at(read, 'require ["include", "variables"];\ninclude "${name}";', 2, 9, "cannot hold variables")
    refused_at(read, 'require ["include", "variables"];\nglobal "1";', 2, 8, "not a variable name")
    refused_at(read, 'require ["include", "variables"];\nglobal "global.x";', 2, 8, "not a variable name")
    refused_at(read, 'require ["include", "variables"];\nset "x" "1";\nglobal "x";', 3, 8, "set before")
    refused_at(read, 'require ["include", "variables"];\nset "global.a.b" "1";', 2, 5, "not a variable name")
    refused_at(read, 'require ["include", "variables"];\nset "global.12" "1";', 2, 5, "not a variable name")
    refused_at(read, 'require "variables";\nset "global.x" "1";', 2, 5, "not a variable name")
    refused_at(read, 'require "variables";\nset "a" "${global.x}";', 2, 9, "namespace 'global'")
    refused_at(read, 'require "include";\nreturn "x";', 2, 1, "return takes no arguments")
    compile_script('require ["include", "variables"];\nset "a" "${global.x}";\ninclude :global :once :optional "x";')


def test_expansion_budget_is_the_runs(monkeypatch):
    from mailstack.sieve import variables

    monkeypatch.setattr(variables, "MAX_EXPANDED", 1000)
    scripts = {"big": 'require "variables";\nset "a" "' + "x" * 300 + '";\nset "b" "${a}";'}
    main = 'require ["include", "variables"];\nset "z" "${z}";\n' + 'include "big";\n' * 2
    run(main, scripts)  # 600 characters in all
    with pytest.raises(SieveRuntimeError, match="expanded"):
        run(main + 'include "big";\ninclude "big";\n', scripts)  # 1200: over, though each script made 300
