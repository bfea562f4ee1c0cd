"""Checking and running a Sieve script (RFC 5228) against one message at delivery.

:func:`compile_script` parses a script and checks every command and test: that its
extension was named in ``require``, that its tags and arguments are the ones it takes,
that control commands sit where they may. Errors carry the line and column.
:meth:`Script.run` then evaluates it for one message and gives the :class:`Outcome`:
where copies go (with their flags), redirects, a rejection, or nothing (discard).
Running is pure computation over an in-memory view of the message, bounded by
MAX_STEPS commands and tests (a limit hit keeps the message, RFC 5228 §2.10.6 asks
for implicit keep on errors).

Supported: the base language (require, if/elsif/else, stop, keep, discard, redirect;
address, allof, anyof, envelope, exists, false, header, not, size, true; comparators
i;octet and i;ascii-casemap; :is, :contains, :matches; :all, :localpart, :domain) and
the extensions fileinto (RFC 5228 §4.1), envelope, copy (RFC 3894), imap4flags (RFC 5232),
subaddress (RFC 5233: :user and :detail), mailbox (RFC 5490: :create,
mailboxexists), relational (RFC 5231: :count and :value), comparator-i;ascii-numeric
(RFC 4790), reject and ereject (RFC 5429), vacation (RFC 5230: the decision only, a
:class:`~.vacation.Vacation` on the outcome; the delivery side remembers and sends) and
vacation-seconds (RFC 6131), variables (RFC 5229: ``set`` with its modifiers, the ``string``
test, ``${name}`` and the match variables ``${0}``..``${9}`` of :matches in every string
but the ``require`` list, comparator names and relational operators, which must be
constant; imap4flags on named variables; see :mod:`.variables` for the limits),
encoded-character (RFC 5228 §2.4.2.4: decoded in every string before the script is
checked, see :func:`.parser.decode_encoded`) and body (RFC 5173: :raw, :content, :text
over MessageView.body; see :mod:`.body` for what is examined) and regex
(draft-ietf-sieve-regex-01: the :regex match type with i;octet and i;ascii-casemap, match
variables, set :quoteregex; see :mod:`.regex`). Match types and comparators are in
:mod:`.matching`. Also date and index (RFC 5260: the date and currentdate tests with
:zone/:originalzone and every date-part, see :mod:`.date`; :index/:last on header,
address and date) and editheader (RFC 5293: addheader, deleteheader; later tests see the
changed header, and Outcome.header carries it as it is at the end of the run for every
copy; see :mod:`.editheader` for the protected fields and limits) and include (RFC 6609:
include [:personal|:global] [:once] [:optional], return, global and ${global.name}; the
scripts come from MessageView.load_script and are compiled once per text; a missing
script (without :optional), a loop, more than MAX_INCLUDE_DEPTH scripts inside one
another or more than MAX_INCLUDES in a run fail the run).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.header import decode_header, make_header

from mailstack.accounts.directory import canonical_address
from mailstack.addresses import InvalidAddress
from mailstack.imap import address as addresses
from mailstack.imap import mime
from mailstack.sieve import body as bodies
from mailstack.sieve import date as dates
from mailstack.sieve import editheader, regex, vacation
from mailstack.sieve.matching import MATCH_TYPES, Matcher, tag_value
from mailstack.sieve.parser import (
    Argument,
    Command,
    Number,
    SieveSyntaxError,
    StringList,
    Tag,
    Test,
    decode_encoded,
    parse,
)
from mailstack.sieve.vacation import Vacation
from mailstack.sieve.variables import MAX_VALUE as MAX_VARIABLE_VALUE
from mailstack.sieve.variables import (
    MAX_VARIABLES,
    MODIFIERS,
    ExpansionLimit,
    Variables,
    constant,
    name_error,
    octets,
    reference_error,
)

MAX_STEPS = 100_000  # commands and tests one run may evaluate
MAX_REDIRECTS = 10  # redirects one run may make
MAX_INCLUDE_DEPTH = 10  # scripts running inside one another, the main one included (RFC 6609 §3.1 asks for 3)
MAX_INCLUDES = 100  # scripts one run may include
MAX_SCRIPT_NAME = 512  # characters of an included script's name

EXTENSIONS = ("fileinto", "envelope", "copy", "imap4flags", "subaddress", "mailbox", "relational",
              "comparator-i;ascii-numeric", "reject", "ereject", "vacation", "vacation-seconds", "variables",
              "encoded-character", "body", "regex",
              "date", "index", "editheader", "include")
# RFC 5228 §6.1: every implementation has these, and a script may require them
BUILT_IN = ("comparator-i;octet", "comparator-i;ascii-casemap")
# RFC 5228 §5.1: the headers the address test reads (and others holding address lists)
ADDRESS_HEADERS = frozenset({"from", "to", "cc", "bcc", "sender", "reply-to", "resent-from", "resent-to",
                             "resent-cc", "resent-bcc", "resent-sender", "return-receipt-to",
                             "disposition-notification-to", "errors-to"})
COMPARATORS = {"i;octet", "i;ascii-casemap", "i;ascii-numeric"}
_RELATIONS = {"gt", "ge", "lt", "le", "eq", "ne"}


class SieveError(SieveSyntaxError):
    """A script that parses but is not valid Sieve (an unknown command, a missing require...)."""


class SieveRuntimeError(Exception):
    """A run that cannot finish (a limit hit): the message is kept, the error logged."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A copy into a folder (None: INBOX) with IMAP flags."""

    folder: str | None
    flags: tuple[str, ...] = ()
    create: bool = False


@dataclass(slots=True)
class Outcome:
    deliveries: list[Delivery] = field(default_factory=list)
    redirects: list[str] = field(default_factory=list)
    reject: str | None = None  # the reason, for reject/ereject
    ereject: bool = False  # the reject was ereject (a DSN, not an MDN, when it cannot be refused in SMTP)
    discarded: bool = False
    vacation: Vacation | None = None  # a reply to send (RFC 5230), when the message allows one
    header: bytes | None = None  # the header as editheader left it (RFC 5293), for every copy; None: unchanged


@dataclass(frozen=True, slots=True)
class MessageView:
    """What a script looks at: the header (raw, with the empty line that ends it), the
    envelope, the size and the body (the octets after the header)."""

    header: bytes
    size: int
    sender: str  # envelope from; "" for the null path
    recipient: str  # envelope to, as it was sent (user+detail@domain)
    mailbox_exists: Callable[[str], bool] = lambda name: True
    delimiter: str = "+"  # delivery.recipient_delimiter: what separates :user from :detail (RFC 5233)
    body: bytes = b""  # the message octets after the header (RFC 5173 body test)
    now: float = 0.0  # the time of delivery, epoch seconds, for currentdate (0.0: when the run starts)
    # include (RFC 6609): a script's text by name, from the user's scripts (False) or the site's (True)
    load_script: Callable[[str, bool], str | None] = lambda name, is_global: None

    def raw_fields(self) -> dict[str, list[str]]:
        """Header field name -> unfolded values (not RFC 2047 decoded), in order; one parse."""
        out: dict[str, list[str]] = {}
        for name, raw in mime.header_fields(self.header):
            out.setdefault(name, []).append(mime.field_value(raw))
        return out


def compile_script(text: str | bytes) -> Script:
    """Parse and check a script; raises SieveSyntaxError (or SieveError) with a position."""
    commands = parse(text)
    required: set[str] = set()
    position = 0
    for i, command in enumerate(commands):
        if command.name != "require":
            break
        position = i + 1
        if command.tests or command.block is not None or len(command.arguments) != 1 or \
                not isinstance(command.arguments[0], StringList):
            raise SieveError("require takes one string list", command.line, command.column)
        for name in command.arguments[0].values:  # capability names are case-sensitive (§6)
            if name not in EXTENSIONS and name not in BUILT_IN:
                arg = command.arguments[0]
                raise SieveError(f"unsupported extension {name!r}", arg.line, arg.column)
            required.add(name)
            if name == "vacation-seconds":  # RFC 6131 §2: implies vacation
                required.add("vacation")
    body = commands[position:]
    if "encoded-character" in required:
        _decode_strings(body)
    _Checker(required).block(body)
    return Script(body, frozenset(required), _size(body))


@dataclass(frozen=True, slots=True)
class Script:
    commands: list[Command]
    required: frozenset[str]
    size: int = 0  # commands and tests in it
    # per test node: its positional arguments and matcher, worked out once (runs share them)
    prepared: dict[int, _Prepared] = field(default_factory=dict, compare=False)

    def run(self, message: MessageView) -> Outcome:
        """The outcome for one message; a run that hits a limit raises SieveRuntimeError."""
        return _Run(message, self.prepared, "variables" in self.required).execute(self.commands)


def _decode_strings(commands: list[Command]) -> None:
    """RFC 5228 §2.4.2.4: every string's encoded characters decoded, in place."""
    stack: list[Command | Test] = list(commands)
    while stack:
        node = stack.pop()
        for i, arg in enumerate(node.arguments):
            if isinstance(arg, StringList) and any("${" in v for v in arg.values):
                try:
                    values = tuple(decode_encoded(v) for v in arg.values)
                except ValueError as e:
                    raise SieveError(str(e), arg.line, arg.column) from None
                node.arguments[i] = StringList(values, arg.single, arg.line, arg.column)
        stack.extend(node.tests)
        if isinstance(node, Command) and node.block:
            stack.extend(node.block)


def _size(commands: list[Command]) -> int:
    """Commands and tests, nested ones included."""
    count = 0
    stack: list[Command | Test] = list(commands)
    while stack:
        node = stack.pop()
        count += 1
        stack.extend(node.tests)
        if isinstance(node, Command) and node.block:
            stack.extend(node.block)
    return count


# -- checking ---------------------------------------------------------------------------------

# name -> (tags that take no value, tags that take a value and its kind, positional kinds)
# kinds: "s" a string, "l" a string list, "n" a number
_COMMANDS: dict[str, tuple[str | None, set[str], dict[str, str], list[str]]] = {
    # name: (extension, flag tags, valued tags, positional)
    "keep": (None, set(), {"flags": "l"}, []),
    "discard": (None, set(), {}, []),
    "stop": (None, set(), {}, []),
    "redirect": (None, {"copy"}, {}, ["s"]),
    "fileinto": ("fileinto", {"copy", "create"}, {"flags": "l"}, ["s"]),
    "reject": ("reject", set(), {}, ["s"]),
    "ereject": ("ereject", set(), {}, ["s"]),
    "setflag": ("imap4flags", set(), {}, ["l"]),
    "addflag": ("imap4flags", set(), {}, ["l"]),
    "removeflag": ("imap4flags", set(), {}, ["l"]),
    "set": ("variables", set(MODIFIERS), {}, ["s", "s"]),
    "addheader": ("editheader", {"last"}, {}, ["s", "s"]),
    "include": ("include", {"personal", "global", "once", "optional"}, {}, ["s"]),
    "return": ("include", set(), {}, []),
    "global": ("include", set(), {}, ["l"]),
    "deleteheader": ("editheader", {"last", "is", "contains", "matches", "regex"},
                     {"index": "n", "comparator": "s", "count": "s", "value": "s"}, ["s"]),
    "vacation": ("vacation", {"mime"}, {"days": "n", "seconds": "n", "subject": "s", "from": "s", "addresses": "l",
                                        "handle": "s"}, ["s"]),
}
_ADDRESS_PARTS = {"all", "localpart", "domain", "user", "detail"}
_TESTS: dict[str, tuple[str | None, list[str]]] = {
    "address": (None, ["l", "l"]),
    "header": (None, ["l", "l"]),
    "envelope": ("envelope", ["l", "l"]),
    "exists": (None, ["l"]),
    "size": (None, ["n"]),
    "true": (None, []),
    "false": (None, []),
    "hasflag": ("imap4flags", ["l"]),
    "mailboxexists": ("mailbox", ["l"]),
    "string": ("variables", ["l", "l"]),
    "body": ("body", ["l"]),
    "date": ("date", ["s", "s", "l"]),
    "currentdate": ("date", ["s", "l"]),
}


class _Checker:
    def __init__(self, required: set[str]) -> None:
        self.required = required
        self.variables = "variables" in required
        self.include = "include" in required
        self.assigned: set[str] = set()  # names given to set so far (RFC 6609 §3.4.1)
        self.names: set[str] = set()  # the variables set anywhere in the script

    def dynamic(self, text: str) -> bool:
        """A string whose value is known only when it runs (RFC 5229 §3)."""
        return self.variables and not constant(text)

    def flag_variable(self, args: list[Argument]) -> bool:
        """Whether imap4flags arguments start with variable names (two positional string lists)."""
        return self.variables and len(_positional(args)) == 2

    def check_names(self, names: StringList) -> None:
        for name in names.values:
            problem = name_error(name, self.include)
            if problem:
                raise SieveError(problem, names.line, names.column)
            self.names.add(name.lower())
        if len(self.names) > MAX_VARIABLES:
            raise SieveError(f"more than {MAX_VARIABLES} variables", names.line, names.column)

    def check_set(self, command: Command) -> None:
        """RFC 5229 §4: a constant, valid name; one modifier per precedence; bounded values."""
        strings = [a for a in command.arguments if isinstance(a, StringList)]
        name, value = strings[0], strings[1]
        problem = name_error(name.values[0], self.include)
        if problem:
            raise SieveError(problem, name.line, name.column)
        self.names.add(name.values[0].lower())
        self.assigned.add(name.values[0].lower())
        if len(self.names) > MAX_VARIABLES:
            raise SieveError(f"more than {MAX_VARIABLES} variables", name.line, name.column)
        if not self.dynamic(value.values[0]) and octets(value.values[0]) > MAX_VARIABLE_VALUE:
            raise SieveError(f"a variable holds at most {MAX_VARIABLE_VALUE} octets", value.line, value.column)
        seen: dict[int, Tag] = {}
        for tag in (a for a in command.arguments if isinstance(a, Tag)):
            if MODIFIERS[tag.name] in seen:
                raise SieveError(f":{tag.name} and :{seen[MODIFIERS[tag.name]].name} cannot go together",
                                 tag.line, tag.column)
            seen[MODIFIERS[tag.name]] = tag
            if tag.name == "quoteregex":
                self.need("regex", tag, ":quoteregex")

    def check_include(self, command: Command, rest: list[Argument]) -> None:
        """RFC 6609 §3.2, §3.4.1: one location and a constant script name; global needs
        variables, and names not set before it."""
        strings = rest[0]
        assert isinstance(strings, StringList)
        if command.name == "global":
            self.need("variables", command, "global")
            for name in strings.values:
                problem = name_error(name)
                if problem:
                    raise SieveError(problem, strings.line, strings.column)
                if name.lower() in self.assigned:
                    raise SieveError(f"{name!r} was set before it was declared global", strings.line, strings.column)
            return
        locations = [a for a in command.arguments if isinstance(a, Tag) and a.name in ("personal", "global")]
        if len(locations) > 1:
            raise SieveError("only one of :personal and :global", locations[1].line, locations[1].column)
        name = strings.values[0]
        if self.variables and not constant(name):
            raise SieveError("an included script's name cannot hold variables", strings.line, strings.column)
        if not name or len(name) > MAX_SCRIPT_NAME or any(
                ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in name):
            raise SieveError(f"{name!r} is not a script name (RFC 5804 §1.6)", strings.line, strings.column)

    def check_edit(self, command: Command, rest: list[Argument]) -> None:
        """RFC 5293 §4, §5: a valid field name (when written out); deleteheader's tags as a test's."""
        field_name = rest[0]
        assert isinstance(field_name, StringList)
        if not self.dynamic(field_name.values[0]):
            problem = editheader.name_error(field_name.values[0])
            if problem:
                raise SieveError(problem, field_name.line, field_name.column)
        if command.name == "deleteheader":
            self.check_tags(command, rest, keys=len(rest) == 2)

    def check_index(self, node: Command | Test, tag: Tag, extension: str) -> None:
        """RFC 5260 §6, RFC 5293 §5: :index counts from 1; :last only with :index."""
        self.need(extension, tag, f":{tag.name}")
        index = _number(node.arguments, "index")
        if tag.name == "last" and index is None:
            raise SieveError(":last needs :index", tag.line, tag.column)
        if tag.name == "index" and index is not None and index < 1:
            raise SieveError(":index counts from 1", tag.line, tag.column)

    def check_date(self, test: Test, rest: list[Argument]) -> None:
        """RFC 5260 §4.1, §4.2: a +hhmm/-hhmm zone, a known date-part (when written out)."""
        zone = _valued(test.arguments, "zone")
        if zone is not None and not self.dynamic(zone.values[0]):
            problem = dates.zone_error(zone.values[0])
            if problem:
                raise SieveError(problem, zone.line, zone.column)
        part = rest[-2]
        assert isinstance(part, StringList)
        if not self.dynamic(part.values[0]) and part.values[0].lower() not in dates.DATE_PARTS:
            raise SieveError(f"no date-part {part.values[0]!r} (year, month, day, date, julian, hour, minute, "
                             "second, time, iso8601, std11, zone, weekday)", part.line, part.column)

    def check_regex(self, node: Command | Test, tag: Tag, rest: list[Argument]) -> None:
        """draft-ietf-sieve-regex: required, with i;octet or i;ascii-casemap, literal patterns valid."""
        self.need("regex", tag, ":regex")
        comparator = tag_value(node.arguments, "comparator") or "i;ascii-casemap"
        if comparator not in ("i;octet", "i;ascii-casemap"):
            raise SieveError(f":regex cannot be used with {comparator}", tag.line, tag.column)
        if not rest:
            return
        keys = rest[-1]
        assert isinstance(keys, StringList)
        for pattern in keys.values:
            if self.dynamic(pattern):
                continue
            try:
                regex.compiled(pattern, comparator == "i;ascii-casemap")
            except regex.RegexError as e:
                raise SieveError(f"bad regular expression {pattern!r}: {e}", keys.line, keys.column) from None

    def need(self, extension: str | None, node: Command | Test | Argument, what: str) -> None:
        if extension is not None and extension not in self.required:
            raise SieveError(f'{what} needs require "{extension}"', node.line, node.column)

    def block(self, commands: list[Command]) -> None:
        previous = ""
        for command in commands:
            name = command.name
            if name in ("if", "elsif", "else"):
                if name != "if" and previous not in ("if", "elsif"):
                    raise SieveError(f"{name} without if before it", command.line, command.column)
                if command.block is None or command.arguments or len(command.tests) != (0 if name == "else" else 1):
                    raise SieveError(f"{name} takes {'a block' if name == 'else' else 'one test and a block'}",
                                     command.line, command.column)
                for test in command.tests:
                    self.test(test)
                self.block(command.block)
            elif name == "require":
                raise SieveError("require must come before any other command", command.line, command.column)
            elif name in _COMMANDS:
                extension, flags, valued, positional = _COMMANDS[name]
                self.need(extension, command, name)
                if command.block is not None or command.tests:
                    raise SieveError(f"{name} takes no test or block", command.line, command.column)
                if name in ("setflag", "addflag", "removeflag") and self.flag_variable(command.arguments):
                    positional = ["s", "l"]  # RFC 5232 §3: a variable name first
                if name == "deleteheader" and len(_positional(command.arguments)) == 2:
                    positional = ["s", "l"]  # RFC 5293 §5: value patterns after the name
                rest = self.arguments(command, command.arguments, flags, valued, positional)
                if name in ("addheader", "deleteheader"):
                    self.check_edit(command, rest)
                if name in ("include", "global"):
                    self.check_include(command, rest)
                if len(rest) == 2 and name in ("setflag", "addflag", "removeflag") and isinstance(rest[0], StringList):
                    self.check_names(rest[0])
                if name == "set":
                    self.check_set(command)
                if name == "redirect" and isinstance(rest[0], StringList) and not self.dynamic(rest[0].values[0]) \
                        and _addr_spec(rest[0].values[0]) is None:
                    raise SieveError("redirect needs one mail address", rest[0].line, rest[0].column)
                for arg in command.arguments:
                    if isinstance(arg, Tag) and arg.name == "flags":
                        self.need("imap4flags", command, ":flags")
                    if isinstance(arg, Tag) and arg.name == "copy":
                        self.need("copy", arg, ":copy")
                    if isinstance(arg, Tag) and arg.name == "create":
                        self.need("mailbox", arg, ":create")
                if name == "vacation":
                    self.check_vacation(command)
            else:
                raise SieveError(f"unknown command {name!r}", command.line, command.column)
            previous = name

    def check_vacation(self, command: Command) -> None:
        """RFC 5230 §4 and RFC 6131 §2: one period tag, addresses that are addresses, a :mime
        reason with an ASCII header."""
        tags = {a.name: a for a in command.arguments if isinstance(a, Tag)}
        if "seconds" in tags:
            self.need("vacation-seconds", tags["seconds"], ":seconds")
            if "days" in tags:
                later = max(tags["seconds"], tags["days"], key=lambda t: (t.line, t.column))
                raise SieveError("vacation takes :days or :seconds, not both", later.line, later.column)
        for tag in ("from", "addresses"):
            value = _valued(command.arguments, tag)
            if value is None:
                continue
            for address in value.values:
                if not self.dynamic(address) and _addr_spec(address) is None:
                    raise SieveError(f":{tag} needs mail addresses, not {address!r}", value.line, value.column)
        reason = [a for a in command.arguments if isinstance(a, StringList)][-1]
        if "mime" in tags and not self.dynamic(reason.values[0]) and \
                not vacation.mime_header_is_ascii(reason.values[0]):
            raise SieveError("a :mime reason has 8-bit text in its header", reason.line, reason.column)

    def arguments(self, node: Command | Test, args: list[Argument], flags: set[str], valued: dict[str, str],
                  positional: list[str]) -> list[Argument]:
        """Check tags and positional arguments; returns the positional ones."""
        rest: list[Argument] = []
        seen: set[str] = set()
        i = 0
        while i < len(args):
            arg = args[i]
            if self.variables and isinstance(arg, StringList):
                for text in arg.values:
                    problem = reference_error(text, self.include) if "${" in text else None
                    if problem:
                        raise SieveError(problem, arg.line, arg.column)
            if isinstance(arg, Tag):
                if rest:  # RFC 5228 §2.6.2: tagged arguments come before the positional ones
                    raise SieveError(f":{arg.name} must come before the other arguments", arg.line, arg.column)
                if arg.name in seen:
                    raise SieveError(f":{arg.name} given twice", arg.line, arg.column)
                seen.add(arg.name)
                if arg.name in flags:
                    i += 1
                    continue
                if arg.name in valued:
                    value = args[i + 1] if i + 1 < len(args) else None
                    if not _kind(value, valued[arg.name]):
                        raise SieveError(f":{arg.name} needs a {_KIND_NAMES[valued[arg.name]]}", arg.line, arg.column)
                    i += 2
                    continue
                raise SieveError(f"{node.name} does not take :{arg.name}", arg.line, arg.column)
            rest.append(arg)
            i += 1
        if len(rest) != len(positional) or not all(_kind(a, k) for a, k in zip(rest, positional, strict=True)):
            want = " and ".join(_KIND_NAMES[k] for k in positional) or "no arguments"
            raise SieveError(f"{node.name} takes {want}", node.line, node.column)
        return rest

    def test(self, test: Test) -> None:
        name = test.name
        if name in ("allof", "anyof"):
            if test.arguments or not test.tests:
                raise SieveError(f"{name} takes a list of tests", test.line, test.column)
            for sub in test.tests:
                self.test(sub)
            return
        if name == "not":
            if test.arguments or len(test.tests) != 1:
                raise SieveError("not takes one test", test.line, test.column)
            self.test(test.tests[0])
            return
        if name not in _TESTS:
            raise SieveError(f"unknown test {name!r}", test.line, test.column)
        if test.tests:
            raise SieveError(f"{name} takes no test", test.line, test.column)
        extension, positional = _TESTS[name]
        self.need(extension, test, name)
        if name == "hasflag" and self.flag_variable(test.arguments):
            positional = ["l", "l"]  # RFC 5232 §4: a list of variables first
        flags: set[str] = set()
        valued: dict[str, str] = {}
        if name in ("address", "header", "envelope", "hasflag", "string", "body", "date", "currentdate"):
            flags |= {"is", "contains", "matches", "regex"}
            valued |= {"comparator": "s", "count": "s", "value": "s"}
        if name in ("address", "envelope"):
            flags |= _ADDRESS_PARTS
        if name == "size":
            flags |= {"over", "under"}
        if name == "body":  # RFC 5173 §5: one body transform
            flags |= {"raw", "text"}
            valued["content"] = "l"
        if name in ("date", "currentdate"):  # RFC 5260 §4.1
            valued["zone"] = "s"
            flags |= {"originalzone"} if name == "date" else set()
        if name in ("header", "address", "date"):  # RFC 5260 §6
            valued["index"] = "n"
            flags.add("last")
        rest = self.arguments(test, test.arguments, flags, valued, positional)
        if name == "hasflag" and len(rest) == 2 and isinstance(rest[0], StringList):
            self.check_names(rest[0])
        self.check_tags(test, rest)
        if name in ("date", "currentdate"):
            self.check_date(test, rest)

    def check_tags(self, node: Command | Test, rest: list[Argument], keys: bool = True) -> None:
        """Tags that exclude each other, and what each needs (match types, comparators...)."""
        name = node.name
        tags = [a for a in node.arguments if isinstance(a, Tag)]
        for group, label in ((MATCH_TYPES, "match type"), (_ADDRESS_PARTS, "address part"), ({"over", "under"}, ""),
                             ({"raw", "content", "text"}, "body transform"), ({"zone", "originalzone"}, "zone")):
            used = [t for t in tags if t.name in group]
            if len(used) > 1:
                raise SieveError(f"only one {label or ':over or :under'}", used[1].line, used[1].column)
        if name == "size" and not any(t.name in ("over", "under") for t in tags):
            raise SieveError("size takes :over or :under", node.line, node.column)
        for tag in tags:
            if tag.name in ("count", "value"):
                self.need("relational", tag, f":{tag.name}")
                relation = tag_value(node.arguments, tag.name)
                if relation not in _RELATIONS:
                    raise SieveError(f":{tag.name} takes one of {', '.join(sorted(_RELATIONS))}", tag.line, tag.column)
            if tag.name in ("user", "detail"):
                self.need("subaddress", tag, f":{tag.name}")
            if tag.name == "regex":
                self.check_regex(node, tag, rest if keys else [])
            if tag.name in ("index", "last"):
                self.check_index(node, tag, "editheader" if name == "deleteheader" else "index")
            if tag.name == "comparator":
                comparator = tag_value(node.arguments, "comparator")
                if comparator not in COMPARATORS:
                    raise SieveError(f"unknown comparator {comparator!r}", tag.line, tag.column)
                if comparator == "i;ascii-numeric":
                    self.need("comparator-i;ascii-numeric", tag, "i;ascii-numeric")
                    if any(t.name in ("contains", "matches") for t in tags):  # RFC 4790 §9.1: no substrings
                        raise SieveError("i;ascii-numeric cannot be used with :contains or :matches",
                                         tag.line, tag.column)


# tags followed by a value (not a positional argument)
_VALUED_TAGS = frozenset({"comparator", "count", "value", "flags", "content", "days", "seconds", "subject", "from",
                          "addresses", "handle", "zone", "index"})
_KIND_NAMES = {"s": "string", "l": "string list", "n": "number"}


def _kind(arg: Argument | None, kind: str) -> bool:
    if kind == "n":
        return isinstance(arg, Number)
    if not isinstance(arg, StringList):
        return False
    return kind == "l" or len(arg.values) == 1


# -- running ----------------------------------------------------------------------------------


class _Stop(Exception):
    pass


class _Return(Exception):
    """return (RFC 6609 §3.3): the end of the script it is in; in the main one, as stop."""


@functools.lru_cache(maxsize=64)
def _included(text: str) -> Script:
    """An included script, compiled once per text (a few are kept)."""
    return compile_script(text)


class _Run:
    def __init__(self, message: MessageView, prepared: dict[int, _Prepared], variables: bool = False) -> None:
        self.message = message
        self.prepared = prepared
        self.shared: dict[str, str] = {}  # global variables (RFC 6609 §3.4)
        self.vars = Variables(self.shared) if variables else None
        self.including: list[tuple[bool, str]] = []  # (global, name) of the included scripts running
        self.included: set[tuple[bool, str]] = set()
        self._bodies: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        self.now = message.now or time.time()  # RFC 5260 §5: one moment for the whole run
        self.edited: list[tuple[str, bytes]] | None = None  # the fields, once editheader changed them
        self.added = 0
        self.linesep = b"\n" if message.header.endswith(b"\n") and not message.header.endswith(b"\r\n") else b"\r\n"
        self.source: list[Argument] | None = None  # the unexpanded arguments of the action running
        self._fields: dict[str, list[str]] | None = None
        self._addresses: dict[str, list[tuple[str, str]]] = {}  # header name -> its mailboxes
        self.steps = 0
        self.flags: list[str] = []  # the internal variable of imap4flags
        self.vacation_run = False  # RFC 5230 §4.7: once per script
        self.outcome = Outcome()
        self.implicit_keep = True

    def raw(self, name: str) -> list[str]:
        """Unfolded values of a header field (the header parsed once per run, and again after
        editheader changed it)."""
        if self._fields is None:
            if self.edited is None:
                self._fields = self.message.raw_fields()
            else:
                self._fields = {}
                for field_name, raw in self.edited:
                    self._fields.setdefault(field_name, []).append(mime.field_value(raw))
        return self._fields.get(name.lower(), [])

    def edit_fields(self) -> list[tuple[str, bytes]]:
        """The header's fields for editheader to change; later tests read the changed ones."""
        if self.edited is None:
            self.edited = mime.header_fields(self.message.header)
        self._fields = None
        self._addresses = {}
        return self.edited

    def add_header(self, name: str, value: str, last: bool) -> None:
        """addheader (RFC 5293 §4): at the top, or the bottom with :last."""
        problem = editheader.name_error(name)
        if problem:
            raise SieveRuntimeError(problem)
        self.added += 1
        if self.added > editheader.MAX_ADDED:
            raise SieveRuntimeError(f"more than {editheader.MAX_ADDED} added header fields")
        try:
            raw = editheader.field(name, value, self.linesep)
        except editheader.EditError as e:
            raise SieveRuntimeError(str(e)) from None
        fields = self.edit_fields()
        fields.insert(len(fields) if last else 0, (name.lower(), raw))

    def delete_header(self, args: list[Argument], strings: list[StringList]) -> None:
        """deleteheader (RFC 5293 §5): the named fields, the :index-th of them, those whose values
        match; never a protected one (§6, silently)."""
        name = strings[0].values[0].lower()
        problem = editheader.name_error(name)
        if problem:
            raise SieveRuntimeError(problem)
        if name in editheader.PROTECTED:
            return
        fields = self.edited if self.edited is not None else mime.header_fields(self.message.header)
        found = [i for i, (field_name, _) in enumerate(fields) if field_name == name]
        index = _number(args, "index")
        if index is not None:
            at = len(found) - index if any(isinstance(a, Tag) and a.name == "last" for a in args) else index - 1
            found = [found[at]] if 0 <= at < len(found) else []
        if len(strings) == 2:  # as the header test would match them
            matcher = Matcher(args)
            found = [i for i in found if matcher.match([_decoded(mime.field_value(fields[i][1]))], strings[1].values)]
        if found:
            fields = self.edit_fields()  # the same fields, now kept as the run's
            for i in reversed(found):
                del fields[i]

    def mailboxes(self, name: str) -> list[tuple[str, str]]:
        """The addresses of a header field's values, parsed once per run."""
        key = name.lower()
        found = self._addresses.get(key)
        if found is None:
            found = self._addresses[key] = [a for v in self.raw(name) for a in _mailboxes(v)]
        return found

    def field(self, names: Sequence[str], index: int, last: bool) -> list[tuple[str, str]]:
        """The index-th of the named header fields, counted in the order of the names (from the
        end with :last), as [(name, raw value)]; none when there are fewer."""
        fields = [(name, value) for name in names for value in self.raw(name)]
        at = len(fields) - index if last else index - 1
        return [fields[at]] if 0 <= at < len(fields) else []

    def date_values(self, name: str, args: list[Argument], positional: list[tuple[str, ...]]) -> list[str]:
        """The date-part a date or currentdate test compares (RFC 5260 §4, §5): none when the
        field has no valid date."""
        zone_arg = _valued(args, "zone")
        zone_text = zone_arg.values[0] if zone_arg is not None else None
        part = positional[-2][0]
        if self.vars is not None and zone_text is not None:
            zone_text = self.vars.expand(zone_text)
        problem = dates.zone_error(zone_text) if zone_text is not None else None
        if problem:
            raise SieveRuntimeError(problem)
        if part.lower() not in dates.DATE_PARTS:
            raise SieveRuntimeError(f"no date-part {part!r}")
        if name == "currentdate":
            moment = dates.now(self.now)
        else:
            index = _number(args, "index")
            last = any(isinstance(a, Tag) and a.name == "last" for a in args)
            chosen = self.field(positional[0][:1], index or 1, last and index is not None)
            found = dates.field_date(chosen[0][1]) if chosen else None
            if found is None:
                return []
            moment = found
        original = any(isinstance(a, Tag) and a.name == "originalzone" for a in args)
        return [dates.date_part(dates.shifted(moment, dates.zone(zone_text) if zone_text else None, original), part)]

    def body_strings(self, args: list[Argument]) -> list[str]:
        """What a body test matches against (RFC 5173 §5), worked out once per run and transform."""
        transform = next((a.name for a in args if isinstance(a, Tag) and a.name in ("raw", "content")), "text")
        types: tuple[str, ...] = ("text",)
        if transform == "content":
            found = _valued(args, "content")
            types = found.values if found is not None else ()
            if self.vars is not None:
                types = self.vars.expand_all(types)
        key = (transform, types)
        strings = self._bodies.get(key)
        if strings is None:
            message = self.message
            if not bodies.has_body(message.header, message.body):
                strings = []
            elif transform == "raw":
                strings = bodies.raw(message.body)
            else:
                strings = bodies.content(message.header, message.body, list(types))
            self._bodies[key] = strings
        return strings

    def decoded(self, name: str) -> list[str]:
        """The same, RFC 2047 words decoded (RFC 5228 §5.7), for the header test."""
        return [_decoded(v) for v in self.raw(name)]

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise SieveRuntimeError(f"more than {MAX_STEPS} steps")

    def execute(self, commands: list[Command]) -> Outcome:
        try:
            self.block(commands)
        except (_Stop, _Return):
            pass
        except ExpansionLimit as e:
            raise SieveRuntimeError(str(e)) from None
        except regex.RegexError as e:  # a pattern made by variables at run time
            raise SieveRuntimeError(f"bad regular expression: {e}") from None
        if self.implicit_keep and self.outcome.reject is None:
            self.deliver(None, tuple(self.flags))
        if self.outcome.reject is not None and (self.outcome.deliveries or self.outcome.redirects):
            # RFC 5429 §2.4: reject with keep, fileinto or redirect is prohibited here
            raise SieveRuntimeError("reject together with keep, fileinto or redirect")
        if self.outcome.reject is not None and self.vacation_run:  # RFC 5230 §4.7
            raise SieveRuntimeError("reject together with vacation")
        if self.edited is not None:
            self.outcome.header = b"".join(raw for _, raw in self.edited) + self.linesep
        return self.outcome

    def block(self, commands: list[Command]) -> None:
        taken = False  # an if/elsif of this chain ran its block
        for command in commands:
            self.step()
            name = command.name
            if name == "if":
                taken = self.test(command.tests[0])
                if taken:
                    self.block(command.block or [])
                continue
            if name == "elsif":
                if not taken and self.test(command.tests[0]):
                    taken = True
                    self.block(command.block or [])
                continue
            if name == "else":
                if not taken:
                    self.block(command.block or [])
                continue
            self.action(command)

    def action(self, command: Command) -> None:
        name, args = command.name, command.arguments
        tags = {a.name for a in args if isinstance(a, Tag)}
        strings = [a for a in args if isinstance(a, StringList)]
        if name == "include":  # the name is never expanded (RFC 6609 §3.2)
            return self.include(strings[0].values[0], tags)
        if name == "return":
            raise _Return
        if name == "global" and self.vars is not None:
            self.vars.global_names.update(v.lower() for v in strings[0].values)
            return None
        if self.vars is not None:
            return self.expanded_action(command, tags, strings)
        if name == "stop":
            raise _Stop
        if name == "keep":
            self.implicit_keep = False
            self.deliver(None, self.flags_from(args))
        elif name == "discard":
            self.implicit_keep = False
            self.outcome.discarded = True
        elif name == "fileinto":
            if "copy" not in tags:
                self.implicit_keep = False
            target = strings[-1].values[0]
            self.deliver(None if target.upper() == "INBOX" else target, self.flags_from(args), "create" in tags)
        elif name == "redirect":
            if "copy" not in tags:
                self.implicit_keep = False
            target = _addr_spec(strings[-1].values[0]) or strings[-1].values[0]
            if target not in self.outcome.redirects:
                if len(self.outcome.redirects) >= MAX_REDIRECTS:
                    raise SieveRuntimeError(f"more than {MAX_REDIRECTS} redirects")
                self.outcome.redirects.append(target)
        elif name in ("reject", "ereject"):
            if self.outcome.reject is not None:  # RFC 5429 §2.4: at most one
                raise SieveRuntimeError("more than one reject")
            self.implicit_keep = False
            self.outcome.reject = strings[-1].values[0]
            self.outcome.ereject = name == "ereject"
        elif name == "vacation":
            if self.vacation_run:  # RFC 5230 §4.7
                raise SieveRuntimeError("more than one vacation")
            self.vacation_run = True
            self.outcome.vacation = self.vacation_reply(args, strings[-1].values[0], "mime" in tags)
        elif name == "addheader":
            self.add_header(strings[0].values[0], strings[1].values[0], "last" in tags)
        elif name == "deleteheader":
            self.delete_header(args, strings)
        elif name == "setflag":
            self.flags = _flag_list(strings[-1].values)
        elif name == "addflag":
            self.flags = _flag_list([*self.flags, *strings[-1].values])
        elif name == "removeflag":
            gone = {f.lower() for f in _flag_list(strings[-1].values)}
            self.flags = [f for f in self.flags if f.lower() not in gone]

    def vacation_reply(self, args: list[Argument], reason: str, mime: bool) -> Vacation | None:
        """The reply a vacation action asks for, or None when the message must not get one."""
        message = self.message
        own = {message.recipient.lower()}
        local, domain = _split(message.recipient)
        user = _part((local, domain), "user", message.delimiter)
        if user is not None and domain:
            own.add(f"{user}@{domain}".lower())
        addresses = _valued(args, "addresses")
        for extra in addresses.values if addresses is not None else ():
            found = _addr_spec(extra)
            if found is not None:
                own.add(found.lower())
        if not vacation.reply_allowed(message.sender, own, self.raw,
                                      lambda name: [_part(a, "all") or "" for a in self.mailboxes(name)]):
            return None
        subject, from_, handle = (_valued(args, t) for t in ("subject", "from", "handle"))
        from_value = from_.values[0] if from_ is not None else None
        if from_value is not None and _addr_spec(from_value) is None:  # §4.3: an invalid one is ignored
            from_value = None
        if handle is None:  # §4.2: from the arguments as written, before variables are expanded
            source = self.source or args
            subject_written, from_written = (_valued(source, t) for t in ("subject", "from"))
            derived = vacation.derived_handle([a for a in source if isinstance(a, StringList)][-1].values[0],
                                              subject_written.values[0] if subject_written else None,
                                              from_written.values[0] if from_written else None, mime)
        return Vacation(
            reason=reason,
            subject=subject.values[0] if subject is not None else None,
            from_=from_value,
            mime=mime,
            handle=handle.values[0] if handle is not None else derived,
            seconds=vacation.period(_number(args, "days"), _number(args, "seconds")),
            to=message.sender,
        )

    def include(self, name: str, tags: set[str]) -> None:
        """Run another of the user's (or the site's) scripts here (RFC 6609 §3.2): with its own
        requires and variables, sharing the globals, the actions and the header edits."""
        key = ("global" in tags, name)
        if "once" in tags and (key in self.included or key in self.including):
            return
        if key in self.including:
            raise SieveRuntimeError(f"script {name!r} includes itself")
        text = self.message.load_script(name, key[0])
        if text is None:
            if "optional" in tags:
                return
            raise SieveRuntimeError(f"no {'global' if key[0] else 'personal'} script {name!r} to include")
        if len(self.including) + 1 >= MAX_INCLUDE_DEPTH:
            raise SieveRuntimeError(f"scripts included more than {MAX_INCLUDE_DEPTH} deep")
        self.included.add(key)
        if len(self.included) > MAX_INCLUDES:
            raise SieveRuntimeError(f"more than {MAX_INCLUDES} scripts included")
        try:
            script = _included(text)
        except SieveSyntaxError as e:
            raise SieveRuntimeError(f"included script {name!r}: {e}") from None
        saved = self.prepared, self.vars
        self.prepared = script.prepared
        self.vars = Variables(self.shared) if "variables" in script.required else None
        self.including.append(key)
        try:
            self.block(script.commands)
        except _Return:
            pass
        finally:
            self.including.pop()
            self.prepared, self.vars = saved

    def expanded_action(self, command: Command, tags: set[str], strings: list[StringList]) -> None:
        """An action of a script with variables: its strings expanded first (RFC 5229 §3)."""
        assert self.vars is not None
        if command.name == "set":
            name, value = strings[0].values[0], strings[1].values[0]
            self.vars.set(name, self.vars.expand(value), [t for t in tags if t in MODIFIERS])
            return
        expand = self.vars.expand_all
        if command.name in ("setflag", "addflag", "removeflag") and len(strings) == 2:  # RFC 5232 §3
            name, given = strings[0].values[0], _flag_list(expand(strings[1].values))
            current = _flag_list([self.vars.get(name)])
            if command.name == "addflag":
                given = _flag_list([*current, *given])
            elif command.name == "removeflag":
                gone = {f.lower() for f in given}
                given = [f for f in current if f.lower() not in gone]
            self.vars.set(name, " ".join(given), [])
            return
        args = [StringList(expand(a.values), a.single, a.line, a.column) if isinstance(a, StringList) and
                any("${" in v for v in a.values) else a for a in command.arguments]
        if command.name == "redirect":
            target = [a for a in args if isinstance(a, StringList)][-1].values[0]
            if _addr_spec(target) is None:
                raise SieveRuntimeError(f"redirect to {target!r}, which is not a mail address")
        self.vars, saved = None, self.vars
        self.source = command.arguments
        try:
            self.action(Command(command.name, args, command.tests, command.block, command.line, command.column))
        finally:
            self.vars = saved
            self.source = None

    def flags_from(self, args: list[Argument]) -> tuple[str, ...]:
        """:flags given to keep/fileinto, else the internal variable (RFC 5232 §5)."""
        value = _valued(args, "flags")
        return tuple(_flag_list(value.values)) if value is not None else tuple(self.flags)

    def deliver(self, folder: str | None, flags: tuple[str, ...], create: bool = False) -> None:
        deliveries = self.outcome.deliveries
        for i, existing in enumerate(deliveries):
            if existing.folder == folder:  # RFC 5228 §2.10.3: one copy per folder; the last flags (RFC 5232 §3)
                deliveries[i] = Delivery(folder, flags, create or existing.create)
                return
        deliveries.append(Delivery(folder, flags, create))

    # -- tests -----------------------------------------------------------------------------

    def test(self, test: Test) -> bool:
        self.step()
        name = test.name
        if name == "true":
            return True
        if name == "false":
            return False
        if name == "not":
            return not self.test(test.tests[0])
        if name == "allof":
            return all(self.test(t) for t in test.tests)
        if name == "anyof":
            return any(self.test(t) for t in test.tests)
        args = test.arguments
        found_prep = self.prepared.get(id(test))
        if found_prep is None:
            lists = [a.values for a in _positional(args)]
            found_prep = self.prepared[id(test)] = (lists, Matcher(args), any("${" in v for x in lists for v in x))
        positional, matcher, dynamic = found_prep
        variables = self.vars
        if variables is not None and dynamic:
            positional = [variables.expand_all(values) for values in positional]
        if name == "size":
            limit = next(a for a in args if isinstance(a, Number)).value
            over = any(isinstance(a, Tag) and a.name == "over" for a in args)
            return self.message.size > limit if over else self.message.size < limit
        if name == "exists":
            return all(self.raw(h) for h in positional[0])
        if name == "mailboxexists":
            return all(self.message.mailbox_exists(m) for m in positional[0])
        if name in ("date", "currentdate"):
            return matcher.match(self.date_values(name, args, positional), positional[-1], variables)
        index = _number(args, "index") if name in ("header", "address") else None
        chosen: list[tuple[str, str]] = []
        if index is not None:  # RFC 5260 §6: one field, counted over the named ones in order
            chosen = self.field(positional[0], index, any(isinstance(a, Tag) and a.name == "last" for a in args))
        if name == "header":
            if index is not None:
                return matcher.match([_decoded(v) for _, v in chosen], positional[1], variables)
            values = [v for h in positional[0] for v in self.decoded(h)]
            return matcher.match(values, positional[1], variables)
        if name == "string":  # RFC 5229 §5: an empty string counts as none
            sources = [v for v in positional[0] if v or matcher.kind != "count"]
            return matcher.match(sources, positional[1], variables)
        if name == "body":  # RFC 5173 §6: never sets match variables
            return matcher.match(self.body_strings(args), positional[0])
        if name == "hasflag":  # RFC 5232 §4: keys are flag lists too
            flags = self.flags
            if len(positional) == 2 and variables is not None:  # the flags in the named variables
                flags = [f for v in positional[0] for f in _flag_list([variables.get(v)])]
            return matcher.match(list(flags), _flag_list(positional[-1]), variables)
        part = next((a.name for a in args if isinstance(a, Tag) and a.name in _ADDRESS_PARTS), "all")
        delimiter = self.message.delimiter
        if name == "address":  # RFC 5228 §5.1: address headers only, never the phrase (not decoded)
            found: list[str | None] = []
            if index is not None:
                found = [_part(a, part, delimiter) for h, v in chosen if h.lower() in ADDRESS_HEADERS
                         for a in _mailboxes(v)]
                return matcher.match(found, positional[1], variables)
            for header in positional[0]:
                if header.lower() in ADDRESS_HEADERS:
                    found += [_part(a, part, delimiter) for a in self.mailboxes(header)]
            return matcher.match(found, positional[1], variables)
        if name == "envelope":
            found = []
            for which in positional[0]:
                which = which.lower()
                address = self.message.sender if which == "from" else self.message.recipient if which == "to" else None
                if address is None:
                    continue
                if address == "":  # RFC 5228 §5.4: the null reverse-path is "" whatever the part;
                    if matcher.kind != "count":  # RFC 5231 §4.2: and counts as no address
                        found.append("")
                else:
                    found.append(_part(_split(address), part, delimiter))
            return matcher.match(found, positional[1], variables)
        raise SieveRuntimeError(f"test {name} cannot run")


def _positional(args: list[Argument]) -> list[StringList]:
    out: list[StringList] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if isinstance(arg, Tag):
            skip = arg.name in _VALUED_TAGS and i + 1 < len(args)
            continue
        if isinstance(arg, StringList):
            out.append(arg)
    return out


def _valued(args: list[Argument], name: str) -> StringList | None:
    for i, arg in enumerate(args):
        if isinstance(arg, Tag) and arg.name == name and i + 1 < len(args):
            value = args[i + 1]
            return value if isinstance(value, StringList) else None
    return None


def _number(args: list[Argument], name: str) -> int | None:
    for i, arg in enumerate(args):
        if isinstance(arg, Tag) and arg.name == name and i + 1 < len(args):
            value = args[i + 1]
            return value.value if isinstance(value, Number) else None
    return None


_FLAG = re.compile(r"\\?[!#$&'+\-.0-9;<>=?@A-Z\[^_`a-z|}~:/,]+\Z")  # an IMAP flag (RFC 3501 §9 atom)


def _flag_list(values: Sequence[str]) -> list[str]:
    """Flags from strings that may each hold several, space separated; each once, \\Recent and
    what is no IMAP flag left out (RFC 5232 §2, §3)."""
    out: list[str] = []
    seen: set[str] = set()
    for value in values:
        for flag in value.split(" "):
            lowered = flag.lower()
            if not flag or lowered == "\\recent" or not _FLAG.match(flag) or lowered in seen:
                continue
            seen.add(lowered)
            out.append(flag)
    return out


_Prepared = tuple[list[tuple[str, ...]], Matcher, bool]  # per test: positional values, matcher, has "${"


def _addr_spec(text: str) -> str | None:
    """The one address of a redirect target (RFC 5228 §2.4.2.3), or None when it is not one."""
    found = _mailboxes(text) if "<" in text else [_split(text.strip())]
    if len(found) != 1:
        return None
    local, domain = found[0]
    if not local or not domain:
        return None
    try:
        return canonical_address(f"{local}@{domain}")
    except InvalidAddress:
        return None


def _decoded(value: str) -> str:
    """RFC 2047 words decoded (RFC 5228 §5.7), as far as they can be."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # a malformed word stays as it was
        return value


def _mailboxes(value: str) -> list[tuple[str, str]]:
    """(local part, domain) of each address in a header value, groups opened."""
    out = []
    for item in addresses.parse_address_list(value):
        for mailbox in item.members if isinstance(item, addresses.Group) else (item,):
            out.append((mailbox.local, mailbox.domain or ""))
    return out


def _split(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return (local, domain) if local else (address, "")


def _part(address: tuple[str, str], part: str, delimiter: str = "+") -> str | None:
    """An address part (RFC 5228 §2.7.4, RFC 5233 §4); None when it has none (no detail)."""
    local, domain = address
    if part == "all":
        return f"{local}@{domain}" if domain else local
    if part == "localpart":
        return local
    if part == "domain":
        return domain
    cut = min((i for i in (local.find(c) for c in delimiter) if i > 0), default=-1)
    if part == "user":
        return local[:cut] if cut > 0 else local
    return local[cut + 1:] if cut > 0 else None  # RFC 5233 §4: no separator, no detail


__all__ = ["EXTENSIONS", "Delivery", "MessageView", "Outcome", "Script", "SieveError", "SieveRuntimeError",
           "Vacation", "compile_script"]
