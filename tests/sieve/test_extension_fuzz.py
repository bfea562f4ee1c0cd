"""Whatever the input, checking raises only SieveSyntaxError and running only SieveRuntimeError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailstack.sieve.date import field_date
from mailstack.sieve.interpreter import MessageView, SieveRuntimeError, compile_script
from mailstack.sieve.parser import SieveSyntaxError, decode_encoded
from mailstack.sieve.regex import RegexError, compiled

REQUIRE = ('require ["vacation", "vacation-seconds", "variables", "encoded-character", "body", "regex", "date", '
           '"index", "editheader", "include", "fileinto", "imap4flags", "relational", "envelope", '
           '"comparator-i;ascii-numeric", "subaddress", "mailbox", "copy", "reject"];\n')
WORDS = ["if", "elsif", "else", "set", "string", "header", "address", "envelope", "date", "currentdate", "body",
         "addheader", "deleteheader", "include", "return", "global", "vacation", "fileinto", "keep", "discard",
         "stop", "setflag", "addflag", "hasflag", "exists", "not", "anyof", "allof", "true", "false", "size",
         ":is", ":contains", ":matches", ":regex", ":count", ":value", ":comparator", ":index", ":last", ":zone",
         ":originalzone", ":raw", ":content", ":text", ":days", ":seconds", ":subject", ":from", ":addresses",
         ":mime", ":handle", ":lower", ":upper", ":length", ":quotewildcard", ":quoteregex", ":once", ":optional",
         ":global", ":personal", ":flags", ":over", ":under", ":localpart", ":domain", ":detail",
         '"x"', '"${1}"', '"${a}"', '"${global.a}"', '"${hex:41}"', '"${unicode:1F600}"', '"(a|b)*"', '"[[:alpha:]"',
         '"date"', '"received"', '"year"', '"iso8601"', '"+0100"', '"i;ascii-numeric"', '"i;octet"', '"ge"',
         '"a@b.example"', '"subject"', '"to"', '"*"', '"?"', '["a", "b"]', "1", "0", "10K", ";", "{", "}", "(",
         ")", ","]
HEADER = (b"From: a@b.example\r\nTo: c@d.example\r\nSubject: x\r\nDate: Mon, 26 Feb 2007 10:15:30 +0100\r\n"
          b"Received: by x; Mon, 26 Feb 2007 10:15:30 +0100\r\n\r\n")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(WORDS), max_size=25))
def test_scripts_of_extension_words(words):
    text = REQUIRE + " ".join(words)
    try:
        script = compile_script(text)
    except SieveSyntaxError:
        return
    view = MessageView(HEADER, 100, "a@b.example", "c@d.example", body=b"hello",
                       load_script=lambda name, is_global: text if name == "x" else None)
    try:
        script.run(view)
    except SieveRuntimeError:
        pass


@given(st.text(alphabet="${}hexunicod:0123456789abcdefABCDEF \r\n\t\\", max_size=30))
def test_decode_encoded_refuses_only_with_value_error(text):
    try:
        decode_encoded(text)
    except ValueError:
        pass


@given(st.text(alphabet="[]().*+?{}|^$\\:=-a1 lower", max_size=20), st.booleans())
def test_regex_refuses_only_with_regex_error(pattern, casefold):
    try:
        compiled(pattern, casefold)
    except RegexError:
        pass


@given(st.text(max_size=60))
def test_field_date_never_raises(value):
    field_date(value)


STRINGS = ['"x"', '"${1}"', '"${a}"', '"${hex:41}"', '"(a|b)*"', '"*x?"', '""', '["a", "${0}"]', '"X-A"',
           '"1"']
MATCH = [":is", ":contains", ":matches", ":regex", ":count \"ge\"", ":value \"lt\"", ":comparator \"i;octet\"",
         ":comparator \"i;ascii-numeric\""]
# name -> (tags it may take, its positional arguments: lists of choices)
SHAPES = {
    "header": ([*MATCH, ":index 2", ":index 1 :last"], [['"subject"', '["to", "x-a"]'], STRINGS]),
    "address": ([*MATCH, ":localpart", ":domain", ":detail", ":index 1"], [['"to"', '["from", "cc"]'], STRINGS]),
    "envelope": ([*MATCH, ":user", ":all"], [['"from"', '"to"'], STRINGS]),
    "string": (MATCH, [STRINGS, STRINGS]),
    "date": ([*MATCH, ":zone \"+0530\"", ":originalzone", ":index 1 :last"],
             [['"date"', '"received"'], ['"year"', '"julian"', '"iso8601"', '"zone"', '"std11"'], STRINGS]),
    "currentdate": ([*MATCH, ":zone \"-1200\""], [['"weekday"', '"time"'], STRINGS]),
    "body": ([*MATCH, ":raw", ":text", ":content \"text\"", ":content \"\""], [STRINGS]),
    "hasflag": (MATCH, [STRINGS]),
    "exists": ([], [['"subject"', '["x-a", "to"]']]),
}
ACTION_SHAPES = {
    "set": ([":lower", ":upperfirst", ":quotewildcard", ":quoteregex", ":length"], [['"a"', '"b"'], STRINGS]),
    "addheader": ([":last"], [['"X-A"', '"Subject"'], STRINGS]),
    "deleteheader": ([":index 1", ":index 1 :last", ":contains", ":regex"], [['"X-A"', '"received"']]),
    "vacation": ([":days 2", ":seconds 0", ":subject \"s ${1}\"", ":mime", ":handle \"h\"",
                  ":addresses [\"c@d.example\"]"], [STRINGS]),
    "include": ([":once", ":optional", ":global"], [['"x"', '"missing"']]),
    "fileinto": ([":copy", ":create", ":flags \"\\\\Seen\""], [STRINGS]),
    "addflag": ([], [STRINGS]),
    "keep": ([], []),
    "return": ([], []),
    "global": ([], [['"a"', '["a", "b"]']]),
}


def _call(shapes: dict[str, tuple[list[str], list[list[str]]]]) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(shapes)).flatmap(lambda name: st.tuples(
        st.lists(st.sampled_from(shapes[name][0]), max_size=2, unique=True) if shapes[name][0] else st.just([]),
        st.tuples(*(st.sampled_from(choices) for choices in shapes[name][1])),
    ).map(lambda parts: " ".join([name, *parts[0], *parts[1]])))


CALLS = st.tuples(_call(SHAPES), _call(ACTION_SHAPES)).map(lambda pair: f"if {pair[0]} {{ {pair[1]}; }}")


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(CALLS, min_size=1, max_size=4))
def test_structured_scripts(calls):
    test_scripts_of_extension_words.hypothesis.inner_test(["\n".join(calls)])  # type: ignore[attr-defined]
